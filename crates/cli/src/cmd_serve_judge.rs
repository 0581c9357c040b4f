//! `arlrr serve-judge`: serves the OpenAI chat completions protocol from a local model (the
//! fetched SmolLM2 GGUF, or any model the `policy` crate loads), so the HTTP judge works with
//! no outside service. Slow on CPU; the protocol is the point.

use anyhow::Result;
use judge::serve::{ChatCall, ChatError, ChatModel, ChatOutput, ServeOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct ServeJudgeArgs {
    /// Model: a `.gguf` file or an HF folder (default: the fetched SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on; loopback by default, since the server has no authentication.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Model name reported by /v1/models (default: the file name without extension).
    #[arg(long)]
    name: Option<String>,
    /// `max_tokens` for requests that give none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// Base seed of sampling; request n uses seed + n.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The matmul weights decoding reads: `f32` (the model's own), `bf16`, `int8` or `int4`
    /// (see `arlrr generate --precision`); packed once at startup.
    #[arg(long, default_value = "f32", value_parser = crate::cmd_generate::parse_precision)]
    precision: policy::Precision,
}

/// The policy crate's model behind the server's [`ChatModel`] trait.
struct PolicyChat {
    /// Its transformer is the sampling copy at `precision`.
    model: policy::Model,
    precision: policy::Precision,
    name: String,
    seed: u64,
    requests: AtomicU64,
}

impl ChatModel for PolicyChat {
    fn id(&self) -> String {
        self.name.clone()
    }

    fn chat(&self, request: &ChatCall<'_>) -> Result<ChatOutput, ChatError> {
        let ChatCall {
            messages,
            max_tokens,
            temperature,
            cancelled,
        } = *request;
        let failed = |e: policy::Error| ChatError::Failed(e.to_string());
        let prompt = self.model.tokenizer.chat_prompt(messages).map_err(failed)?;
        let context = self.model.config.max_position_embeddings;
        if prompt.len() + max_tokens > context {
            return Err(ChatError::Invalid(format!(
                "the prompt is {} tokens and max_tokens is {max_tokens}: {} tokens exceed the \
                 model's context of {context}; shorten the messages or lower max_tokens",
                prompt.len(),
                prompt.len() + max_tokens
            )));
        }
        let seed = self
            .seed
            .wrapping_add(self.requests.fetch_add(1, Ordering::Relaxed));
        let generation = policy::generate::generate_cancellable(
            &self.model.transformer,
            std::slice::from_ref(&prompt),
            &policy::GenerationConfig {
                precision: self.precision,
                ..self.model.generation_config(max_tokens, temperature)
            },
            &mut policy::seeded_rng(seed),
            || cancelled.load(Ordering::Relaxed),
        )
        .map_err(failed)?
        .pop()
        .ok_or_else(|| ChatError::Failed("the model returned no answer".into()))?;
        Ok(ChatOutput {
            text: self
                .model
                .tokenizer
                .decode(&generation.tokens, true)
                .map_err(failed)?,
            prompt_tokens: prompt.len(),
            completion_tokens: generation.tokens.len(),
            truncated: !generation.finished,
        })
    }
}

pub fn run(args: ServeJudgeArgs) -> Result<()> {
    let options = ServeOptions {
        default_max_tokens: args.default_max_tokens,
        ..ServeOptions::default()
    };
    let limit = options.max_tokens_limit;
    anyhow::ensure!(
        (1..=limit).contains(&options.default_max_tokens),
        "--default-max-tokens must be in 1..={limit}, got {}",
        options.default_max_tokens
    );
    let path = match args.model {
        Some(p) => p,
        None => rubric::assets::smollm2_gguf().map_err(anyhow::Error::msg)?,
    };
    // policy's error names the file and the cause; as context it would say both twice
    let mut model =
        policy::Model::load(&path).map_err(|e| anyhow::anyhow!("cannot load the model: {e}"))?;
    model.transformer = model
        .transformer
        .sampling_copy(args.precision)?
        .into_owned();
    let name = args.name.unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "local".into(), |s| s.to_string_lossy().into_owned())
    });
    let chat = Arc::new(PolicyChat {
        model,
        precision: args.precision,
        name: name.clone(),
        seed: args.seed,
        requests: AtomicU64::new(0),
    });
    crate::serve_http(
        &args.host,
        args.port,
        |addr| format!("serving {name} on http://{addr}/v1"),
        |listener| async move { Ok(judge::serve::serve(listener, chat, options).await?) },
    )
}
