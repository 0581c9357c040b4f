//! The `arlrr` binary: parses arguments and calls the library crates. One module per command.

/// `print!` that returns the write error instead of panicking: a reader that closed the pipe
/// (`arlrr data stats f | head -1`) is not a crash; `main` exits 0 quietly on it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `println!` that returns the write error instead of panicking (see `out!`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod cmd_bench;
mod cmd_compare;
mod cmd_data;
mod cmd_eval;
mod cmd_export;
mod cmd_fetch;
mod cmd_generate;
mod cmd_grade;
mod cmd_serve;
mod cmd_serve_judge;
mod cmd_sft;
mod cmd_study;
mod cmd_train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "arlrr", version, about = "Alternating RL with rubric rewards")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download, verify (sha256) and unpack the real assets into the cache folder.
    Fetch(cmd_fetch::Args),
    /// Inspect rubric data files.
    Data(cmd_data::DataArgs),
    /// Score graded responses exactly as HealthBench does.
    Score(cmd_data::ScoreArgs),
    /// Sample a reply from a model (.gguf or HF folder), streaming tokens to stdout.
    Generate(cmd_generate::Args),
    /// Grade responses criterion by criterion with a judge (rules, HTTP LLM, embeddings).
    Grade(cmd_grade::GradeArgs),
    /// Serve the OpenAI chat completions protocol from a local GGUF model (a local judge).
    ServeJudge(cmd_serve_judge::ServeJudgeArgs),
    /// Serve ARL-RR rewards and the phase schedule to distributed RL engines over HTTP.
    Serve(cmd_serve::Args),
    /// Train a policy with GRPO on rubric rewards (ARL-RR or a baseline objective).
    Train(cmd_train::Args),
    /// Build a warm start: BPE tokenizer + tiny transformer + supervised fine-tuning.
    Sft(cmd_sft::Args),
    /// Train ARL-RR and the baselines over several seeds and compare them on a test split.
    Compare(cmd_compare::Args),
    /// Run a grid of regimes × methods × seeds (tuned alike) and write the regime map.
    Study(cmd_study::Args),
    /// Score a trained policy on a data file, overall and per meta-class.
    Eval(cmd_eval::Args),
    /// Time whole GRPO steps of a run config (`arlrr bench grpo`).
    Bench(cmd_bench::Args),
    /// Write a trained run's model as a Hugging Face folder (LoRA merged, or base + PEFT adapter).
    Export(cmd_export::Args),
}

fn main() -> ExitCode {
    policy::keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = policy::check_isa_env() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Fetch(a) => cmd_fetch::run(a),
        Command::Data(a) => cmd_data::run_data(a),
        Command::Score(a) => cmd_data::run_score(a),
        Command::Generate(a) => cmd_generate::run(a),
        Command::Grade(a) => cmd_grade::run(a),
        Command::ServeJudge(a) => cmd_serve_judge::run(a),
        Command::Serve(a) => cmd_serve::run(a),
        Command::Train(a) => cmd_train::run(a),
        Command::Sft(a) => cmd_sft::run(a),
        Command::Compare(a) => cmd_compare::run(a),
        Command::Study(a) => cmd_study::run(a),
        Command::Eval(a) => cmd_eval::run(a),
        Command::Bench(a) => cmd_bench::run(a),
        Command::Export(a) => cmd_export::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // the reader of our stdout went away (`| head`): nothing left to say to anyone
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Binds `host:port` on a multi-threaded runtime, prints one line with the bound address (port 0
/// picks a free one, and scripts and tests wait for that line), then serves until shutdown.
fn serve_http<F, Fut>(
    host: &str,
    port: u16,
    banner: impl FnOnce(std::net::SocketAddr) -> String,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    use std::io::Write;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .with_context(|| format!("binding {host}:{port}"))?;
        outln!("{}", banner(listener.local_addr()?))?;
        std::io::stdout().flush()?;
        serve(listener).await
    })
}
