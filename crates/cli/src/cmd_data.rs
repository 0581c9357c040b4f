//! `arlrr data stats` and `arlrr score`.

use anyhow::Result;
use rubric::{score::score_table, DataStats, Format};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand)]
enum DataCommand {
    /// Counts: examples, criteria (positive/negative), per axis, per theme, turns.
    Stats {
        file: PathBuf,
        /// healthbench, native or writingbench (default: recognised from the first record).
        #[arg(long)]
        format: Option<Format>,
        #[arg(long)]
        json: bool,
    },
    /// Split a data file into train.jsonl, val.jsonl and test.jsonl (seeded; stratified by
    /// the examples' `theme:` tag; records copied verbatim).
    Split {
        file: PathBuf,
        /// Folder to write train.jsonl, val.jsonl and test.jsonl into.
        #[arg(long)]
        out: PathBuf,
        /// Validation examples.
        #[arg(long)]
        val: usize,
        /// Test examples.
        #[arg(long)]
        test: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// healthbench, native or writingbench (default: recognised from the first record).
        #[arg(long)]
        format: Option<Format>,
    },
    /// Write the built-in patient-message task (train/validation/test, native format).
    Builtin {
        /// Folder to write train.jsonl, validation.jsonl and test.jsonl into.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        spec: BuiltinArgs,
    },
}

/// `arlrr data builtin`'s sizes, seed and knobs ([`rubric::builtin::BuiltinSpec`]).
#[derive(clap::Args)]
struct BuiltinArgs {
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 240)]
    train: usize,
    #[arg(long, default_value_t = 48)]
    validation: usize,
    #[arg(long, default_value_t = 96)]
    test: usize,
    /// Share of prompts whose rubric carries the cross-class (length) tensions, in [0, 1]:
    /// 1 is the original task, 0 makes the classes independent.
    #[arg(long, default_value_t = 1.0)]
    conflict: f64,
    /// builtin (the task's own layout) or healthbench (criteria counts, axes, signs and
    /// points drawn from the fetched HealthBench sample).
    #[arg(long, default_value = "builtin")]
    shape: rubric::builtin::Shape,
}

impl From<BuiltinArgs> for rubric::builtin::BuiltinSpec {
    fn from(a: BuiltinArgs) -> Self {
        rubric::builtin::BuiltinSpec {
            seed: a.seed,
            train: a.train,
            validation: a.validation,
            test: a.test,
            conflict: a.conflict,
            shape: a.shape,
        }
    }
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// The rubric data the grades refer to.
    #[arg(long)]
    data: PathBuf,
    /// Grades JSONL: `{"prompt_id", "met": [...]}` per graded response.
    #[arg(long)]
    grades: PathBuf,
    #[arg(long)]
    format: Option<Format>,
    /// Seed of the bootstrap resampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
    /// Write the table to this file instead of stdout (atomically: no partial file on error).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn load(file: &PathBuf, format: Option<Format>) -> Result<rubric::Dataset> {
    Ok(match format {
        Some(f) => rubric::load_as(file, f)?,
        None => rubric::load(file)?,
    })
}

pub fn run_data(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Stats { file, format, json } => {
            let stats = DataStats::of(&load(&file, format)?);
            if json {
                outln!("{}", serde_json::to_string_pretty(&stats)?)?;
            } else {
                out!("{stats}")?;
            }
        }
        DataCommand::Split {
            file,
            out,
            val,
            test,
            seed,
            format,
        } => {
            let data = load(&file, format)?;
            let split = rubric::split::split(&data, val, test, seed).map_err(anyhow::Error::msg)?;
            for (path, n) in rubric::split::write_split(&data, &split, &out)? {
                outln!("{n:>6} {}", path.display())?;
            }
        }
        DataCommand::Builtin { out, spec } => {
            for (name, path) in rubric::builtin::write_splits(spec.into(), &out)? {
                outln!("{name:<11} {}", path.display())?;
            }
        }
    }
    Ok(())
}

pub fn run_score(args: ScoreArgs) -> Result<()> {
    let data = load(&args.data, args.format)?;
    let grades = rubric::read_grades(&args.grades, &data)?;
    let table = score_table(&data, &grades, args.seed);
    let text = if args.json {
        serde_json::to_string_pretty(&table)? + "\n"
    } else {
        render_table(&table)
    };
    match args.out {
        Some(path) => Ok(rubric::runfile::write_atomic(&path, text.as_bytes())?),
        None => {
            out!("{text}")?;
            Ok(())
        }
    }
}

fn render_table(table: &rubric::ScoreTable) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} responses over {} examples ({} left out for failed verdicts, {} undefined)",
        table.n_responses, table.n_examples, table.n_failed, table.n_undefined
    );
    let _ = writeln!(s, "{:<30} {:>8} {:>8} {:>6}", "", "score", "std", "n");
    let _ = writeln!(
        s,
        "{:<30} {:>8.4} {:>8.4} {:>6}",
        "overall", table.overall, table.overall_std, table.n_responses
    );
    for (title, group) in [("axis", &table.axes), ("theme", &table.themes)] {
        for (name, x) in group {
            let _ = writeln!(
                s,
                "{:<30} {:>8.4} {:>8.4} {:>6}",
                format!("{title}:{name}"),
                x.score,
                x.std,
                x.n
            );
        }
    }
    s
}
