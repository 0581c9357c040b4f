//! `arlrr compare`: ARL-RR against the baselines over several seeds with the same budget.

use anyhow::{Context, Result};
use arl::TrainConfig;
use lab::compare::{CompareSpec, Method};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Base run config; without it, the built-in task with the categorical phrase policy
    /// (configs/builtin-categorical.toml: seconds per run). A config with
    /// `[policy] model = "warm-start"` (configs/builtin.toml) compares on the tiny transformer.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Test split (required with --config unless it sets `data.builtin`; the built-in test
    /// split otherwise).
    #[arg(long)]
    test: Option<PathBuf>,
    /// Comma-separated methods: `alternating:<selector>` (lookahead, gradient, deficit, ucb,
    /// round_robin, shuffled, fixed), `scalarized`, `scalarized+subsample` (each response
    /// graded on 1/K of its criteria, the unbiased estimate as reward), `gdpo`.
    #[arg(long, default_value = "alternating:lookahead,scalarized,gdpo")]
    methods: String,
    /// Seeds per method (0, 1, ..., N-1).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Training steps per run (the budget); default: the config's.
    #[arg(long)]
    steps: Option<u64>,
    /// Responses per test example.
    #[arg(long, default_value_t = 4)]
    test_samples: usize,
    /// Output folder (default: runs/compare, runs/compare-2, ...).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    // before the folder or the built-in data are written
    let seeds = usize::try_from(a.seeds).unwrap_or(usize::MAX);
    lab::compare::check_counts(seeds, a.test_samples)?;
    let out = match a.out {
        Some(o) => o,
        None => {
            let mut d = PathBuf::from("runs/compare");
            let mut n = 1;
            while d.exists() {
                n += 1;
                d = PathBuf::from(format!("runs/compare-{n}"));
            }
            d
        }
    };
    let mut base = match a.config {
        Some(path) => {
            let mut cfg = TrainConfig::from_file(&path)?;
            cfg.run.dir = out.clone();
            cfg
        }
        None => crate::cmd_train::builtin_config(
            crate::cmd_train::BUILTIN_CATEGORICAL,
            Some(out.clone()),
        )?,
    };
    crate::cmd_train::prepare(&mut base, false)?;
    let test = a
        .test
        .or_else(|| base.data.test.clone())
        .context("--test TEST.jsonl is required with a config that names no test split")?;
    // each run is scored on the test split once, at its end, by the comparison itself
    base.data.test = None;
    if let Some(s) = a.steps {
        base.run.steps = s;
        base.eval.every = base.eval.every.min(s.div_ceil(5).max(1));
        base.phases.length = base.phases.length.min(s.div_ceil(6).max(1));
    }
    let methods = a
        .methods
        .split(',')
        .map(|m| Method::parse(m.trim()))
        .collect::<Result<Vec<_>>>()?;
    let spec = CompareSpec {
        base,
        test,
        methods,
        seeds: (0..a.seeds).collect(),
        out: out.clone(),
        test_samples: a.test_samples,
    };
    std::fs::create_dir_all(&out)?;
    let results = lab::compare::run(&spec, |m, s| eprintln!("training {m} seed {s}"))?;
    let classes = arl::setup::load_task(&spec.base)?.classes.names;
    let verdict = lab::compare::write_report(&out, &spec, &results, &classes)?;
    outln!("{verdict}\nreport {}", out.join("compare.md").display())?;
    Ok(())
}
