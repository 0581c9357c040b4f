//! The embedding judge on the real all-MiniLM-L6-v2 asset (fetched on first use).
//! The model is loaded once per test binary: it is 90 MB and loading dominates the run time.

use judge::embedding::cosine;
use judge::{EmbeddingJudge, EmbeddingJudgeConfig, GradeTask, Judge, SentenceEmbedder};
use rubric::{Criterion, Example, Message};
use std::sync::{Arc, OnceLock};

fn embedder() -> &'static Arc<SentenceEmbedder> {
    static E: OnceLock<Arc<SentenceEmbedder>> = OnceLock::new();
    E.get_or_init(|| Arc::new(SentenceEmbedder::load_default().unwrap_or_else(|e| panic!("{e}"))))
}

#[test]
fn embeddings_are_unit_length_and_independent_of_batch_padding() {
    let e = embedder();
    let short = "See a doctor.";
    let long = "If the pain gets worse over the next few days, or you develop a fever, please \
                book an appointment with your general practitioner as soon as possible.";
    let alone = e.embed(&[short]).unwrap();
    let batched = e.embed(&[short, long]).unwrap();
    assert_eq!(alone[0].len(), 384);
    for v in alone.iter().chain(&batched) {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    // Padding the short text to the long one's length must not change its embedding.
    let drift = cosine(&alone[0], &batched[0]);
    assert!(
        drift > 0.9999,
        "cosine between padded and unpadded embedding: {drift}"
    );
}

/// Cosine similarities from an independent reference run: HF transformers on the same
/// all-MiniLM-L6-v2 weights, mean pooling over the attention mask, L2 normalisation (what
/// sentence-transformers does for this model). A drift beyond 1e-4 means the tokenizer,
/// encoder, pooling or normalisation differs from the reference.
const REFERENCE_TOLERANCE: f32 = 1e-4;

#[test]
fn similarity_of_a_reference_pair_matches_the_reference_run() {
    let v = embedder()
        .embed(&["A man is eating food.", "A man is eating a piece of bread."])
        .unwrap();
    let sim = cosine(&v[0], &v[1]);
    assert!((sim - 0.75534).abs() < REFERENCE_TOLERANCE, "cosine {sim}");
}

#[test]
fn paraphrase_and_unrelated_similarities_match_the_reference_run() {
    let v = embedder()
        .embed(&[
            "Recommends that the user see a doctor",
            "You should make an appointment with your physician.",
            "The stock market closed higher on Friday.",
        ])
        .unwrap();
    let (para, unrelated) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(
        (para - 0.57888).abs() < REFERENCE_TOLERANCE,
        "paraphrase {para}"
    );
    assert!(
        (unrelated - -0.00274).abs() < REFERENCE_TOLERANCE,
        "unrelated {unrelated}"
    );
}

fn example() -> Example {
    let crit = |text: &str| Criterion {
        text: text.into(),
        points: 5.0,
        tags: vec![],
        check: None,
    };
    Example {
        id: "e".into(),
        prompt: vec![Message {
            role: "user".into(),
            content: "My ankle is swollen".into(),
        }],
        criteria: vec![
            crit("Advises the user to see a doctor"),
            crit("Discusses stock market investments"),
        ],
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: 1,
    }
}

#[tokio::test]
async fn judge_matches_the_best_sentence_against_the_threshold() {
    // batches of 2 texts: the texts are embedded sorted by length, in several batches, and
    // each vector must still come back to its own sentence or criterion
    for batch_size in [32, 2] {
        let config = EmbeddingJudgeConfig {
            batch_size,
            ..EmbeddingJudgeConfig::default()
        };
        judge_grades_sentences(&EmbeddingJudge::new(embedder().clone(), &config).unwrap()).await;
    }
}

async fn judge_grades_sentences(judge: &EmbeddingJudge) {
    let ex = example();
    let response = "Rest and keep the ankle raised.\n- Put ice on it.\n- If the swelling lasts a week, get it checked.\nYou should see a doctor.";
    let grades = judge
        .grade(&[
            GradeTask {
                example: &ex,
                response,
                criteria: None,
            },
            GradeTask {
                example: &ex,
                response: "",
                criteria: Some(&[0, 5]),
            },
        ])
        .await;
    assert_eq!(
        grades[0][0].outcome,
        Ok(1.0),
        "{}",
        grades[0][0].explanation
    );
    assert!(
        grades[0][0].explanation.contains("see a doctor"),
        "{}",
        grades[0][0].explanation
    );
    assert_eq!(
        grades[0][1].outcome,
        Ok(0.0),
        "{}",
        grades[0][1].explanation
    );
    assert_eq!(grades[1][0].outcome, Ok(0.0));
    assert!(grades[1][0].explanation.contains("empty response"));
    assert!(grades[1][1].outcome.is_err(), "index 5 does not exist");
    assert_eq!(judge.id(), "embedding:all-MiniLM-L6-v2:t=0.350");
    assert_eq!(judge.stats().verdicts, 4);
}

#[test]
fn a_missing_model_folder_is_named_in_the_error() {
    let err = SentenceEmbedder::load("/nonexistent/minilm")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/minilm/config.json"), "{err}");
    let bad = EmbeddingJudgeConfig {
        threshold: 1.5,
        ..EmbeddingJudgeConfig::default()
    };
    assert!(EmbeddingJudge::new(embedder().clone(), &bad)
        .err()
        .unwrap()
        .contains("threshold"));
}
