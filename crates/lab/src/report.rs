//! `report.md`: what the run did, read back from its own `metrics.jsonl` and `schedule.jsonl`.

use anyhow::Result;
use arl::completions::{CompletionLine, Split};
use arl::config::TrainConfig;
use arl::eval::{EvalLine, EvalReport};
use arl::metrics::{Resampled, StepMetrics};
use arl::noise::Confusion;
pub use arl::records::{RunData, RunRecords};
use rubric::runfile::write_atomic;
use schedule::stats::mean;
use schedule::DecisionRecord;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The ARL-RR variants a run turns on (alternating runs only; empty by default).
pub fn variants(c: &TrainConfig) -> Vec<String> {
    let mut v = Vec::new();
    if c.objective.kind != schedule::ObjectiveKind::Alternating {
        return v;
    }
    if let Some(d) = c.phases.guard_drop {
        v.push(format!("phase guard {d}"));
    }
    if let Some(f) = c.phases.end_flat {
        v.push(format!(
            "end_flat (share {} over {} steps)",
            f.share, f.window
        ));
    }
    if c.phases.paired {
        v.push("paired selection".to_string());
    }
    if c.objective.anchor < 1.0 {
        v.push(format!("anchored λ={} (our extension)", c.objective.anchor));
    }
    v
}

/// Writes `report.md` and the run's plots into the folder of the finished run `d`.
pub fn write_run(d: &RunData) -> Result<()> {
    write(&d.dir, &d.config, &d.classes, &d.records)
}

/// Writes `report.md` and the run's plots into `run_dir`.
pub fn write(run_dir: &Path, c: &TrainConfig, classes: &[String], run: &RunRecords) -> Result<()> {
    let RunRecords {
        metrics,
        schedule,
        evals,
        tests,
        completions,
    } = run;
    let mut r = String::new();
    header(&mut r, c)?;
    let vals: Vec<(u64, &EvalReport)> = evals.iter().map(|e| (e.step, &e.report)).collect();
    validation(&mut r, &vals, classes)?;
    test_split(&mut r, c, tests, classes)?;
    what_the_model_writes(&mut r, completions)?;
    judge_noise(&mut r, c, metrics)?;
    schedule_section(&mut r, c, schedule, metrics)?;
    diagnostics(&mut r, c, metrics, classes)?;
    if !metrics.is_empty() {
        let plots = crate::plots::write_run_plots(run_dir, metrics, &vals, classes)?;
        writeln!(r, "\n## Plots\n")?;
        for p in plots {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            writeln!(r, "![{name}]({name})")?;
        }
    }
    Ok(write_atomic(&run_dir.join("report.md"), r.as_bytes())?)
}

/// "What the model writes": the response logged on each validation prompt at step 0 beside the
/// one at the last validation that logged responses, with their overall scores.
fn what_the_model_writes(r: &mut String, lines: &[CompletionLine]) -> Result<()> {
    let val: Vec<&CompletionLine> = lines.iter().filter(|l| l.split == Split::Val).collect();
    let start: Vec<&&CompletionLine> = val.iter().filter(|l| l.step == 0).collect();
    let last = val.iter().map(|l| l.step).max().unwrap_or(0);
    if start.is_empty() || last == 0 {
        return Ok(());
    }
    writeln!(r, "\n## What the model writes\n")?;
    writeln!(
        r,
        "One sampled response on each of the first validation prompts, at step 0 and at step \
         {last}, with its overall score (— where not scored). All logged responses are in \
         `completions.jsonl`.\n"
    )?;
    writeln!(r, "| prompt | step 0 | score | step {last} | score |")?;
    writeln!(r, "|---|---|---:|---|---:|")?;
    let score = |l: Option<&CompletionLine>| match l.and_then(|l| l.overall) {
        Some(x) => format!("{x:.3}"),
        None => "—".to_string(),
    };
    for a in start {
        let b = val
            .iter()
            .find(|l| l.step == last && l.prompt_id == a.prompt_id)
            .copied();
        writeln!(
            r,
            "| {} | {} | {} | {} | {} |",
            cell(&a.prompt),
            cell(&a.completion),
            score(Some(a)),
            b.map_or(String::new(), |b| cell(&b.completion)),
            score(b),
        )?;
    }
    writeln!(r)?;
    Ok(())
}

/// `s` as the text of one markdown table cell: HTML and `|` escaped, line breaks as `<br>`.
pub fn cell(s: &str) -> String {
    let s = s
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .replace("\r\n", "\n");
    s.trim().replace('\n', "<br>")
}

/// The title line (objective, selector, sizes, seed, variants) and the embedding judge's
/// warning.
fn header(r: &mut String, c: &TrainConfig) -> Result<()> {
    writeln!(r, "# arlrr run report\n")?;
    let variants = variants(c);
    writeln!(
        r,
        "objective `{:?}`, selector `{:?}` (phase length {}), {} steps, {} prompts × {} samples per step, seed {}{}\n",
        c.objective.kind, c.phases.selector, c.phases.length, c.run.steps,
        c.grpo.prompts_per_step, c.grpo.group_size, c.run.seed,
        if variants.is_empty() { String::new() } else { format!("; variants: {}", variants.join(", ")) }
    )?;
    if c.judge.kind == judge::JudgeKind::Embedding {
        // Its figures must never pass for an LLM grader's.
        writeln!(
            r,
            "**Judge: `embedding` (MiniLM sentence similarity): approximate.** Every score below \
             is the embedding judge's, not a grading LLM's.\n"
        )?;
    }
    Ok(())
}

/// Validation scores at the first and the last validation.
fn validation(r: &mut String, vals: &[(u64, &EvalReport)], classes: &[String]) -> Result<()> {
    let (Some((s0, first)), Some((s1, last))) = (vals.first(), vals.last()) else {
        return Ok(());
    };
    writeln!(r, "## Validation (mean ± bootstrap std)\n")?;
    writeln!(r, "| | step {s0} | step {s1} |\n|---|---|---|")?;
    let fmt = |s: &rubric::Summary| format!("{:.3} ± {:.3} (n={})", s.score, s.std, s.n);
    writeln!(
        r,
        "| overall | {} | {} |",
        fmt(&first.overall),
        fmt(&last.overall)
    )?;
    for name in classes {
        if let (Some(a), Some(b)) = (first.classes.get(name), last.classes.get(name)) {
            writeln!(r, "| {name} | {} | {} |", fmt(a), fmt(b))?;
        }
    }
    writeln!(r)?;
    Ok(())
}

/// The held-out test split at the start and the end, when it was scored at both.
fn test_split(
    r: &mut String,
    c: &TrainConfig,
    tests: &[EvalLine],
    classes: &[String],
) -> Result<()> {
    let (Some(first), Some(last)) = (tests.first(), tests.last()) else {
        return Ok(());
    };
    if last.step <= first.step {
        return Ok(());
    }
    let (a, b) = (&first.report.overall, &last.report.overall);
    let test = c.data.test.as_deref().map(|p| p.display().to_string());
    writeln!(r, "## Test split (held out; mean ± bootstrap std)\n")?;
    writeln!(
        r,
        "`{}`, {} responses per example, scored once at the start and once at the end.\n",
        test.unwrap_or_default(),
        c.eval.samples
    )?;
    writeln!(
        r,
        "**Test score: {:.3} ± {:.3} at the start (step {}) → {:.3} ± {:.3} after step {} ({:+.3}).**\n",
        a.score, a.std, first.step, b.score, b.std, last.step, b.score - a.score
    )?;
    writeln!(r, "| | start | end | change |\n|---|---|---|---|")?;
    let fmt = |s: &rubric::Summary| format!("{:.3} ± {:.3}", s.score, s.std);
    writeln!(
        r,
        "| overall | {} | {} | {:+.3} |",
        fmt(a),
        fmt(b),
        b.score - a.score
    )?;
    for name in classes {
        if let (Some(x), Some(y)) = (
            first.report.classes.get(name),
            last.report.classes.get(name),
        ) {
            writeln!(
                r,
                "| {name} | {} | {} | {:+.3} |",
                fmt(x),
                fmt(y),
                y.score - x.score
            )?;
        }
    }
    writeln!(r)?;
    Ok(())
}

/// The simulated judge noise and the training verdicts' measured macro F1.
fn judge_noise(r: &mut String, c: &TrainConfig, metrics: &[StepMetrics]) -> Result<()> {
    let Some(noise) = &c.judge.noise else {
        return Ok(());
    };
    let tally = metrics
        .iter()
        .filter_map(|m| m.judge_noise)
        .fold(Confusion::default(), |t, m| t.plus(m.step));
    writeln!(r, "## Judge noise\n")?;
    writeln!(
        r,
        "Training and selection verdicts read through simulated judge errors (`[judge.noise]`: {}); validation and test graded clean.\n",
        toml::to_string(noise)?.trim().replace('\n', ", ")
    )?;
    writeln!(
        r,
        "**Macro F1 of the noisy training verdicts against the clean judge: {} over {:.0} verdicts** (HealthBench's GPT-4.1 grader against physicians: 0.709).\n",
        tally.macro_f1().map_or("-".into(), |f| format!("{f:.3}")),
        tally.verdicts()
    )?;
    Ok(())
}

/// The phases each class got, their sequence, early ends and the selection's cost.
fn schedule_section(
    r: &mut String,
    c: &TrainConfig,
    schedule: &[DecisionRecord],
    metrics: &[StepMetrics],
) -> Result<()> {
    if schedule.is_empty() {
        return Ok(());
    }
    writeln!(r, "## Schedule\n")?;
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for d in schedule {
        *phases.entry(d.chosen.as_str()).or_default() += 1;
    }
    for (k, n) in &phases {
        writeln!(r, "- {k}: {n} phase(s)")?;
    }
    let seq: Vec<&str> = schedule.iter().map(|d| d.chosen.as_str()).collect();
    writeln!(r, "\nsequence: {}\n", seq.join(" → "))?;
    let trips = |flat: bool| {
        let trips = schedule.iter().filter_map(|d| d.guard.as_ref());
        trips.filter(|g| g.flat.is_some() == flat).count()
    };
    if c.phases.guard_drop.is_some() {
        writeln!(
            r,
            "phases ended early by the phase guard: {}\n",
            trips(false)
        )?;
    }
    if let Some(f) = c.phases.end_flat {
        writeln!(
            r,
            "phases ended early by end_flat (zero-spread share ≥ {} over {} steps): {}\n",
            f.share,
            f.window,
            trips(true)
        )?;
    }
    if let Some(line) = selection_cost(schedule, metrics) {
        writeln!(r, "{line}\n")?;
    }
    Ok(())
}

/// Per-step diagnostics averaged (or summed) over the run's steps.
fn diagnostics(
    r: &mut String,
    c: &TrainConfig,
    metrics: &[StepMetrics],
    classes: &[String],
) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let avg = |f: &dyn Fn(&StepMetrics) -> f64| mean(&metrics.iter().map(f).collect::<Vec<_>>());
    writeln!(r, "## Diagnostics (means over steps)\n")?;
    writeln!(
        r,
        "- share of zero-spread groups: {:.3}",
        avg(&|m| m.zero_spread_share)
    )?;
    if c.grpo.resample_flat.is_some() {
        let re = |f: &dyn Fn(&Resampled) -> f64| avg(&|m| m.resample.as_ref().map_or(0.0, f));
        writeln!(
            r,
            "- `grpo.resample_flat`: the share above counts every sampled group; of the groups trained on, {:.3} had zero spread; {:.2} generation rounds and {:.1} groups sampled per step",
            re(&|s| s.trained_zero_spread_share),
            re(&|s| s.rounds as f64),
            re(&|s| s.sampled_groups as f64)
        )?;
    }
    writeln!(
        r,
        "- within-group std, overall (points-scalarized) reward: {:.4}",
        avg(&|m| m.overall.group_std.unwrap_or(0.0))
    )?;
    writeln!(
        r,
        "- within-group std, reward driving the advantages: {:.4}",
        avg(&|m| m.objective_group_std)
    )?;
    for name in classes {
        let v: Vec<f64> = metrics
            .iter()
            .filter_map(|m| m.classes.get(name)?.group_std)
            .collect();
        if !v.is_empty() {
            writeln!(r, "- within-group std, {name}: {:.4}", mean(&v))?;
        }
    }
    let sum = |f: &dyn Fn(&StepMetrics) -> f64| metrics.iter().map(f).sum::<f64>();
    writeln!(
        r,
        "- non-finite updates skipped: {}",
        sum(&|m| m.update.nonfinite_skips as f64)
    )?;
    writeln!(
        r,
        "- samples excluded for judge failures: {}",
        sum(&|m| m.excluded_samples as f64)
    )?;
    writeln!(
        r,
        "- judge verdicts: {}, calls: {}, cache hits: {}",
        sum(&|m| m.judge.verdicts as f64),
        sum(&|m| m.judge.calls as f64),
        sum(&|m| m.judge.cache_hits as f64)
    )?;
    writeln!(
        r,
        "- time (s): generate {:.1}, judge {:.1}, train {:.1}, select {:.1}, eval {:.1}",
        sum(&|m| m.time_s.generate),
        sum(&|m| m.time_s.judge),
        // the optimizer's steps, timed apart since the step bench, still count as training
        sum(&|m| m.time_s.train + m.time_s.optimizer),
        sum(&|m| m.time_s.select),
        sum(&|m| m.time_s.eval)
    )?;
    Ok(())
}

/// The cost per phase boundary: the selection's wall time (the `time_s.select` of the phase's
/// first metrics line: measurements and probes, less the probe steps kept as training steps),
/// its probe steps and the fixed batch; `None` without recorded costs.
fn selection_cost(schedule: &[DecisionRecord], metrics: &[StepMetrics]) -> Option<String> {
    let costs: Vec<_> = schedule.iter().filter_map(|d| Some((d, d.cost?))).collect();
    let (_, first) = costs.first()?;
    let n = costs.len() as f64;
    let secs: Vec<f64> = costs
        .iter()
        .filter_map(|(d, _)| metrics.iter().find(|m| m.step == d.step + 1))
        .map(|m| m.time_s.select)
        .collect();
    let sum =
        |f: &dyn Fn(&schedule::SelectCost) -> u64| costs.iter().map(|(_, c)| f(c)).sum::<u64>();
    let skipped: usize = costs.iter().map(|(d, _)| d.skipped.len()).sum();
    let time = match schedule::mean_std(secs.iter().copied()) {
        Some((mean, _)) => format!(
            "{mean:.1} s (max {:.1} s)",
            secs.iter().copied().fold(0.0, f64::max)
        ),
        None => "-".into(),
    };
    Some(format!(
        "**Selection cost per phase boundary: {time}** over {} boundaries; {:.1} probe steps per boundary ({} of {} kept as training steps); {} class probes skipped for zero spread; fixed batch {} examples × {} responses.",
        costs.len(),
        sum(&|c| c.probe_steps) as f64 / n,
        sum(&|c| c.kept_steps),
        sum(&|c| c.probe_steps),
        skipped,
        first.select_size,
        first.select_samples
    ))
}
