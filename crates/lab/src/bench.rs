//! The figures of `arlrr bench grpo`: where whole GRPO steps spend their time, the tokens they
//! generate and train per second, and the peak memory, from the trainer's own step metrics.
//! Wall-clock figures are printed and written, never asserted (the machine may be shared).

use anyhow::{Context, Result};
use arl::metrics::StepMetrics;
use arl::TrainConfig;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One step's figures, or (with `step` absent) the median of each figure over the steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepFigures {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// The step without its validation: generate + prefix + judge + train + optimizer + select.
    pub total_s: f64,
    pub generate_s: f64,
    /// The prompt prefill timed apart from `generate_s` (0 until it is).
    pub prefix_s: f64,
    /// Grading the rollout.
    pub judge_s: f64,
    /// Teacher-forced forward and backward passes.
    pub train_s: f64,
    /// AdamW steps.
    pub optimizer_s: f64,
    /// Selector work at a phase boundary (alternating runs only).
    pub select_s: f64,
    /// Completion tokens of the rollout.
    pub generated_tokens: f64,
    /// `generated_tokens / (prefix_s + generate_s)`: the whole generation, prefill included.
    pub generated_tokens_per_s: f64,
    /// Completion tokens in the update (rows with a defined advantage).
    pub trained_tokens: f64,
    /// `trained_tokens / train_s`.
    pub trained_tokens_per_s: f64,
}

impl StepFigures {
    pub fn of(m: &StepMetrics) -> StepFigures {
        let t = &m.time_s;
        let generated = m.generated_tokens as f64;
        let trained = m.update.tokens as f64;
        StepFigures {
            step: Some(m.step),
            total_s: t.generate + t.prefix + t.judge + t.train + t.optimizer + t.select,
            generate_s: t.generate,
            prefix_s: t.prefix,
            judge_s: t.judge,
            train_s: t.train,
            optimizer_s: t.optimizer,
            select_s: t.select,
            generated_tokens: generated,
            generated_tokens_per_s: per_s(generated, t.prefix + t.generate),
            trained_tokens: trained,
            trained_tokens_per_s: per_s(trained, t.train),
        }
    }

    /// The median of each figure on its own (so the medians need not add up).
    pub fn median(steps: &[StepFigures]) -> StepFigures {
        let m = |f: fn(&StepFigures) -> f64| median(steps.iter().map(f).collect());
        StepFigures {
            step: None,
            total_s: m(|s| s.total_s),
            generate_s: m(|s| s.generate_s),
            prefix_s: m(|s| s.prefix_s),
            judge_s: m(|s| s.judge_s),
            train_s: m(|s| s.train_s),
            optimizer_s: m(|s| s.optimizer_s),
            select_s: m(|s| s.select_s),
            generated_tokens: m(|s| s.generated_tokens),
            generated_tokens_per_s: m(|s| s.generated_tokens_per_s),
            trained_tokens: m(|s| s.trained_tokens),
            trained_tokens_per_s: m(|s| s.trained_tokens_per_s),
        }
    }

    fn row(&self) -> String {
        let label = self.step.map_or("median".to_string(), |s| s.to_string());
        format!(
            "{label:<7}{:>9.2}{:>10.2}{:>8.2}{:>8.2}{:>8.2}{:>11.2}{:>8.2}{:>11.0}{:>11.1}{:>11.0}{:>11.1}",
            self.total_s,
            self.generate_s,
            self.prefix_s,
            self.judge_s,
            self.train_s,
            self.optimizer_s,
            self.select_s,
            self.generated_tokens,
            self.generated_tokens_per_s,
            self.trained_tokens,
            self.trained_tokens_per_s,
        )
    }
}

/// Tokens per second; 0 when nothing was timed (JSON has no infinity).
fn per_s(tokens: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens / seconds
    } else {
        0.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // the middle element, or the mean of the middle two
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

/// The figures of one benched config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoBench {
    pub config: String,
    /// CPU model and the number of CPUs the process may use.
    pub machine: String,
    /// The CPU's instruction sets and the kernels that ran (`policy::cpu_paths`); empty in
    /// figures written before it was recorded.
    #[serde(default)]
    pub cpu: String,
    pub steps: Vec<StepFigures>,
    pub median: StepFigures,
    /// Peak resident memory of the process (VmHWM), MiB; `None` off Linux.
    pub peak_rss_mib: Option<f64>,
}

impl GrpoBench {
    pub fn new(
        config: String,
        cpu: String,
        steps: Vec<StepFigures>,
        peak_rss_mib: Option<f64>,
    ) -> GrpoBench {
        GrpoBench {
            config,
            machine: machine(),
            cpu,
            median: StepFigures::median(&steps),
            steps,
            peak_rss_mib,
        }
    }

    /// One plain table: a row per step, the medians, then the peak memory.
    pub fn table(&self) -> String {
        let mut s = format!(
            "GRPO step bench: {}, {} steps, {}\n",
            self.config,
            self.steps.len(),
            self.machine
        );
        if !self.cpu.is_empty() {
            let _ = writeln!(s, "{}", self.cpu);
        }
        s.push_str(
            "step     total s  generate  prefix   judge   train  optimizer  select  gen tokens  gen tok/s  trn tokens  trn tok/s\n",
        );
        for f in self.steps.iter().chain([&self.median]) {
            let _ = writeln!(s, "{}", f.row());
        }
        let rss = self
            .peak_rss_mib
            .map_or("n/a (not Linux)".to_string(), |m| format!("{m:.0} MiB"));
        let _ = write!(s, "peak RSS (VmHWM) {rss}");
        s
    }
}

/// This machine in words: the CPU model and the CPUs available to the process.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!("{model}, {cpus} CPUs")
}

/// The HealthBench bench config trains on the split that `arlrr data split` makes of the
/// fetched 500-item sample (the files configs/healthbench-smollm2.toml names). When the
/// config's train, val and test files are all missing and are that split's files in a folder
/// named `healthbench`, writes the split there first, with the documented settings (50
/// validation, 50 test, seed 0). Returns the folder when it wrote it.
pub fn write_missing_healthbench_split(cfg: &TrainConfig) -> Result<Option<PathBuf>> {
    let d = &cfg.data;
    let Some(test) = &d.test else {
        return Ok(None);
    };
    let Some(dir) = d.train.parent() else {
        return Ok(None);
    };
    let files = [&d.train, &d.val, test];
    let is_split = dir.file_name() == Some("healthbench".as_ref())
        && files
            .iter()
            .zip(rubric::split::SPLIT_FILES)
            .all(|(p, name)| {
                p.parent() == Some(dir) && p.file_name() == Some(name.as_ref()) && !p.exists()
            });
    if d.builtin || !is_split {
        return Ok(None);
    }
    let sample = rubric::assets::healthbench_sample().map_err(anyhow::Error::msg)?;
    let data = rubric::load(&sample)?;
    let split = rubric::split::split(&data, 50, 50, 0).map_err(anyhow::Error::msg)?;
    rubric::split::write_split(&data, &split, dir)
        .with_context(|| format!("writing the HealthBench split into {}", dir.display()))?;
    Ok(Some(dir.to_path_buf()))
}

/// Reads a JSON list of [`GrpoBench`] (what `arlrr bench grpo --json` writes).
pub fn read_json(path: &Path) -> Result<Vec<GrpoBench>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read bench figures {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not bench figures", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_taken_figure_by_figure() {
        let step = |i: u64, total_s: f64, generate_s: f64| StepFigures {
            step: Some(i),
            total_s,
            generate_s,
            ..Default::default()
        };
        let steps = [step(1, 3.0, 1.0), step(2, 1.0, 5.0), step(3, 2.0, 4.0)];
        let m = StepFigures::median(&steps);
        assert_eq!((m.step, m.total_s, m.generate_s), (None, 2.0, 4.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(per_s(10.0, 0.0), 0.0);
    }
}
