//! `arlrr bench grpo`: trains a run config for a few GRPO steps and prints where each step's
//! time goes, the tokens generated and trained per second, and the peak memory
//! (docs/benchmarks.md, "GRPO step"). Figures only: nothing here asserts a timing.

use anyhow::{bail, Context, Result};
use arl::TrainConfig;
use lab::bench::{GrpoBench, StepFigures};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Time whole GRPO steps of a run config: generate, prefix, train, optimizer, tokens/s, peak RSS.
    Grpo(GrpoArgs),
}

#[derive(clap::Args)]
struct GrpoArgs {
    /// Run config (TOML); default: the four configs/bench-grpo-*.toml (SmolLM2 on the
    /// built-in task and at HealthBench length, each in f32 and with the bf16 speed
    /// settings), each in its own process.
    #[arg(long)]
    config: Option<PathBuf>,
    /// GRPO steps to train and time (at least 3: the table gives their median).
    #[arg(long, default_value_t = 3)]
    steps: u64,
    /// Keep the run here (one folder per config without --config); default: a temporary
    /// folder, removed at the end.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the figures here as JSON: a list with one entry per config.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The shipped bench configs, run one after the other when no `--config` is given.
const SHIPPED: [&str; 4] = [
    "configs/bench-grpo-smollm2.toml",
    "configs/bench-grpo-smollm2-bf16.toml",
    "configs/bench-grpo-healthbench.toml",
    "configs/bench-grpo-healthbench-bf16.toml",
];

pub fn run(a: Args) -> Result<()> {
    let What::Grpo(a) = a.what;
    if a.steps < 3 {
        bail!(
            "--steps {}: the bench needs at least 3 steps (it prints their median)",
            a.steps
        );
    }
    let figures = match &a.config {
        Some(config) => vec![bench(config, a.steps, a.out.as_deref())?],
        None => {
            let mut all = Vec::new();
            for config in SHIPPED {
                all.extend(in_own_process(Path::new(config), &a)?);
            }
            all
        }
    };
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&figures)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Benches one config in a child `arlrr bench grpo --config`, so that each config's peak
/// memory is its own (the allocator keeps what a finished run freed).
fn in_own_process(config: &Path, a: &GrpoArgs) -> Result<Vec<GrpoBench>> {
    if !config.exists() {
        bail!(
            "{} not found: run from the repository root or give --config",
            config.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let json = tmp.path().join("figures.json");
    let mut child = std::process::Command::new(std::env::current_exe()?);
    child.args(["bench", "grpo", "--steps", &a.steps.to_string()]);
    child.arg("--config").arg(config).arg("--json").arg(&json);
    if let Some(out) = &a.out {
        let stem = config.file_stem().context("a config file name")?;
        child.arg("--out").arg(out.join(stem));
    }
    let status = child.status().context("starting arlrr bench grpo")?;
    if !status.success() {
        bail!(
            "the bench of {} failed (its error is above)",
            config.display()
        );
    }
    lab::bench::read_json(&json)
}

/// Trains `config` for `steps` GRPO steps in `out` (or a temporary folder) and prints the table.
fn bench(config: &Path, steps: u64, out: Option<&Path>) -> Result<GrpoBench> {
    let mut cfg = TrainConfig::from_file(config)?;
    cfg.run.steps = steps;
    // removed when the bench returns, on error too; unused with --out
    let tmp = tempfile::Builder::new().prefix("arlrr-bench-").tempdir()?;
    cfg.run.dir = out.map_or_else(|| tmp.path().join("run"), Path::to_path_buf);
    if let Some(dir) = lab::bench::write_missing_healthbench_split(&cfg)? {
        eprintln!(
            "wrote the HealthBench split (50 validation, 50 test, seed 0) into {}",
            dir.display()
        );
    }
    let origin = config.display().to_string();
    let mut trainer = crate::cmd_train::start(&mut cfg, &origin, false)?;
    eprintln!(
        "benching {origin}: {steps} GRPO steps in {}",
        cfg.run.dir.display()
    );
    let mut figures = Vec::new();
    let finished = trainer.run(|m| {
        let f = StepFigures::of(m);
        eprintln!(
            "step {}/{steps}: {:.1} s (generate {:.1}, train {:.1}, optimizer {:.1})",
            m.step, f.total_s, f.generate_s, f.train_s, f.optimizer_s
        );
        figures.push(f);
    })?;
    lab::report::write_run(&finished)?;
    let bench = GrpoBench::new(
        origin,
        policy::cpu_paths(),
        figures,
        policy::bench::peak_rss_mib(),
    );
    outln!("{}", bench.table())?;
    Ok(bench)
}
