//! `arlrr study`: a grid of regimes × methods × seeds, each method tuned alike, summarized as
//! a regime map.

use anyhow::Result;
use lab::study::{self, Grid, Made};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The grid (TOML): `[study]` base config, methods, seeds, steps and learning rates;
    /// `[regimes]` axes; `[variants]` parameters. See configs/study.toml.
    #[arg(long)]
    grid: PathBuf,
    /// Output folder; a folder holding an interrupted study of the same grid resumes it.
    #[arg(long, default_value = "study")]
    out: PathBuf,
    /// Runs at once (default: the grid's `jobs`, else the core count).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// No line per finished run.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let grid = Grid::from_file(&a.grid)?;
    let per_run = match grid.budget {
        0 => format!("{} steps per run", grid.steps),
        b => format!("{b} judge verdicts per run (at most {} steps)", grid.steps),
    };
    eprintln!(
        "study {}: {} regimes × {} methods, {} seeds, {} learning rates, {per_run} → {}",
        a.grid.display(),
        grid.regimes.len(),
        grid.methods.len(),
        grid.seeds,
        grid.lrs.len(),
        a.out.display()
    );
    let quiet = a.quiet;
    let outcome = study::run(&grid, &a.out, a.jobs, &|label, s, made| {
        let why = match made {
            Made::Reused => return,
            Made::Trained => String::new(),
            Made::Retrained { was } => format!(
                ", trained again: the folder's run was made by code {}, this is code {}",
                was.as_deref().unwrap_or("unrecorded"),
                lab::CODE_VERSION
            ),
        };
        if !quiet {
            eprintln!(
                "done {label}: validation {:.3}, test {:.3} ({:.1} s){why}",
                s.val_final, s.test_final, s.wall_s
            );
        }
    })?;
    let headline = study::write_report(&a.out, &grid, &outcome)?;
    outln!(
        "{headline}trained {} run(s) ({} replacing runs made by other code), reused {} in {:.0} s\nreport {}",
        outcome.trained,
        outcome.retrained,
        outcome.reused,
        outcome.wall_s,
        a.out.join("report.md").display()
    )?;
    Ok(())
}
