//! The sentence embedder and the judge over it (feature `embedding`).

use super::EmbeddingJudgeConfig;
use crate::text::sentences;
use crate::{GradeTask, Judge, JudgeFailure, JudgeStats, Verdict};
use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Why the embedder could not be loaded or run; names the file where there is one.
#[derive(Debug, thiserror::Error)]
#[error("embedding model {}: {message}", path.display())]
pub struct EmbeddingError {
    pub path: PathBuf,
    pub message: String,
}

/// A BERT sentence embedder: mean pooling over the attention mask, then L2 normalisation, as
/// sentence-transformers does for all-MiniLM-L6-v2.
pub struct SentenceEmbedder {
    dir: PathBuf,
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl SentenceEmbedder {
    /// Loads the model folder (CPU, f32).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, EmbeddingError> {
        let dir = dir.as_ref().to_path_buf();
        let err = |file: &str, message: String| EmbeddingError {
            path: dir.join(file),
            message,
        };
        let device = Device::Cpu;
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| err("config.json", format!("cannot read: {e}")))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| err("config.json", format!("not a BERT config: {e}")))?;
        let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &device)
            .map_err(|e| err("model.safetensors", format!("cannot load: {e}")))?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| {
            err(
                "model.safetensors",
                format!("weights do not fit config.json: {e}"),
            )
        })?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| err("tokenizer.json", format!("cannot load: {e}")))?;
        // Pad each batch to its longest text (the file pads everything to 128), and truncate
        // at the length the model was trained with.
        let max_len = max_seq_length(&dir).min(config.max_position_embeddings);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| err("tokenizer.json", format!("cannot set truncation: {e}")))?;
        Ok(SentenceEmbedder {
            dir,
            model,
            tokenizer,
            device,
        })
    }

    /// Loads the fetched all-MiniLM-L6-v2 asset.
    pub fn load_default() -> Result<Self, EmbeddingError> {
        let dir = rubric::assets::minilm_dir().map_err(|message| EmbeddingError {
            path: rubric::assets::dir().join(rubric::assets::MINILM_DIR),
            message,
        })?;
        Self::load(dir)
    }

    /// Unit-length embeddings of `texts`, one per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.embed_batch(texts).map_err(|message| EmbeddingError {
            path: self.dir.clone(),
            message,
        })
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| format!("tokenizing: {e}"))?;
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let ids: Vec<u32> = encodings
            .iter()
            .flat_map(|e| e.get_ids().to_vec())
            .collect();
        let mask: Vec<u32> = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (texts.len(), len), &self.device)?;
            let mask = Tensor::from_vec(mask, (texts.len(), len), &self.device)?;
            let types = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (b, t, h)
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, t, 1)
            let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (b, h)
            let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?; // (b, 1)
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        run().map_err(|e| format!("forward pass: {e}"))
    }
}

/// `max_seq_length` from sentence-transformers' `sentence_bert_config.json`, else 256.
fn max_seq_length(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["max_seq_length"].as_u64())
        .map_or(256, |n| n as usize)
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The judge. Embedding runs on a blocking thread so async callers keep their executor.
pub struct EmbeddingJudge {
    embedder: Arc<SentenceEmbedder>,
    threshold: f32,
    batch_size: usize,
    verdicts: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

impl EmbeddingJudge {
    /// Wraps a loaded embedder (shareable: several judges may use one model).
    pub fn new(
        embedder: impl Into<Arc<SentenceEmbedder>>,
        config: &EmbeddingJudgeConfig,
    ) -> Result<Self, String> {
        config.validate()?;
        Ok(EmbeddingJudge {
            embedder: embedder.into(),
            threshold: config.threshold,
            batch_size: config.batch_size,
            verdicts: Arc::default(),
            failures: Arc::default(),
            calls: Arc::default(),
        })
    }

    /// Loads the model named by the config (or the fetched asset) and builds the judge.
    pub fn from_config(config: &EmbeddingJudgeConfig) -> Result<Self, String> {
        config.validate()?; // before the model load, which takes seconds
        let embedder = match &config.model_dir {
            Some(dir) => SentenceEmbedder::load(dir),
            None => SentenceEmbedder::load_default(),
        }
        .map_err(|e| e.to_string())?;
        Self::new(embedder, config)
    }

    pub fn embedder(&self) -> &SentenceEmbedder {
        &self.embedder
    }
}

/// One criterion to grade, owned so it can cross to the blocking thread.
struct Job {
    task: usize,
    criterion: usize,
    text: Option<String>,
}

/// Embeds every distinct text once, in batches of texts of similar length (by characters):
/// a batch is padded to its longest text, so batching in arrival order padded a response's
/// short sentences to the longest criterion among them.
fn embed_unique(
    embedder: &SentenceEmbedder,
    texts: &[String],
    batch: usize,
    calls: &AtomicU64,
) -> Result<Vec<Vec<f32>>, EmbeddingError> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut out = vec![Vec::new(); texts.len()];
    for chunk in order.chunks(batch) {
        let refs: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
        calls.fetch_add(1, Ordering::Relaxed);
        for (&i, v) in chunk.iter().zip(embedder.embed(&refs)?) {
            out[i] = v;
        }
    }
    Ok(out)
}

#[async_trait]
impl Judge for EmbeddingJudge {
    fn id(&self) -> String {
        format!("embedding:{}:t={:.3}", self.embedder_name(), self.threshold)
    }

    async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
        let responses: Vec<String> = tasks.iter().map(|t| t.response.to_string()).collect();
        let jobs: Vec<Job> = tasks
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                t.criterion_indices().into_iter().map(move |ci| Job {
                    task: ti,
                    criterion: ci,
                    text: t.example.criteria.get(ci).map(|c| c.text.clone()),
                })
            })
            .collect();
        let (embedder, batch, calls) = (self.embedder.clone(), self.batch_size, self.calls.clone());
        let job_count = jobs.len();
        let computed = tokio::task::spawn_blocking(move || {
            // Distinct texts: each response sentence and criterion is embedded once per batch.
            let mut index: HashMap<String, usize> = HashMap::new();
            let mut texts: Vec<String> = Vec::new();
            let mut intern = |s: &str| -> usize {
                *index.entry(s.to_string()).or_insert_with(|| {
                    texts.push(s.to_string());
                    texts.len() - 1
                })
            };
            let response_sentences: Vec<Vec<(usize, String)>> = responses
                .iter()
                .map(|r| {
                    sentences(r)
                        .into_iter()
                        .map(|s| (intern(s), s.to_string()))
                        .collect()
                })
                .collect();
            let criterion_ids: Vec<Option<usize>> = jobs
                .iter()
                .map(|j| j.text.as_deref().map(&mut intern))
                .collect();
            let vectors = embed_unique(&embedder, &texts, batch, &calls)?;
            Ok::<_, EmbeddingError>((jobs, response_sentences, criterion_ids, vectors))
        })
        .await;

        let mut out: Vec<Vec<Verdict>> = tasks.iter().map(|_| Vec::new()).collect();
        let fail = |criterion: usize, message: String| Verdict {
            criterion,
            outcome: Err(JudgeFailure::Other(message)),
            explanation: String::new(),
            judge: self.id(),
            cached: false,
            attempts: 0,
        };
        self.verdicts.fetch_add(job_count as u64, Ordering::Relaxed);
        match computed {
            Ok(Ok((jobs, response_sentences, criterion_ids, vectors))) => {
                for (job, cid) in jobs.iter().zip(criterion_ids) {
                    let grade = match cid {
                        None => crate::rules::out_of_range(&tasks[job.task], job.criterion),
                        Some(cid) => self.verdict(
                            job,
                            &vectors[cid],
                            &response_sentences[job.task],
                            &vectors,
                        ),
                    };
                    if grade.outcome.is_err() {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    out[job.task].push(grade);
                }
            }
            Ok(Err(e)) => self.fail_all(tasks, &mut out, |c| fail(c, e.to_string())),
            Err(join) => self.fail_all(tasks, &mut out, |c| {
                fail(c, format!("embedding thread failed: {join}"))
            }),
        }
        out
    }

    fn stats(&self) -> JudgeStats {
        JudgeStats {
            verdicts: self.verdicts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            ..JudgeStats::default()
        }
    }
}

impl EmbeddingJudge {
    /// The model folder's name, e.g. `all-MiniLM-L6-v2`, for the judge id.
    fn embedder_name(&self) -> String {
        self.embedder
            .dir
            .file_name()
            .map_or_else(|| "bert".into(), |n| n.to_string_lossy().into_owned())
    }

    fn verdict(
        &self,
        job: &Job,
        criterion: &[f32],
        sentences: &[(usize, String)],
        vectors: &[Vec<f32>],
    ) -> Verdict {
        let best = sentences
            .iter()
            .map(|(id, s)| (cosine(criterion, &vectors[*id]), s))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let (met, explanation) = match best {
            None => (false, "empty response: no sentence to match".to_string()),
            Some((sim, sentence)) => {
                let met = sim >= self.threshold;
                let cmp = if met { ">=" } else { "<" };
                (
                    met,
                    format!(
                        "best sentence similarity {sim:.3} {cmp} {:.3}: {sentence:?}",
                        self.threshold
                    ),
                )
            }
        };
        Verdict {
            criterion: job.criterion,
            outcome: Ok(if met { 1.0 } else { 0.0 }),
            explanation,
            judge: self.id(),
            cached: false,
            attempts: 0,
        }
    }

    fn fail_all(
        &self,
        tasks: &[GradeTask<'_>],
        out: &mut [Vec<Verdict>],
        fail: impl Fn(usize) -> Verdict,
    ) {
        for (ti, t) in tasks.iter().enumerate() {
            for ci in t.criterion_indices() {
                self.failures.fetch_add(1, Ordering::Relaxed);
                out[ti].push(fail(ci));
            }
        }
    }
}
