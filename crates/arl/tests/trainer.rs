//! The trainer end to end on the categorical policy and the rule judge.

mod common;

use anyhow::Result;
use arl::completions::{CompletionLine, Split};
use arl::{EvalReport, Parts, StepMetrics, Trainer};
use async_trait::async_trait;
use common::*;
use judge::rules::RuleJudge;
use judge::{GradeTask, Judge, JudgeFailure, JudgeStats, Verdict};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn train(extra: &str) -> (EvalReport, EvalReport, Vec<StepMetrics>, tempfile::TempDir) {
    train_with(extra, |_| {})
}

fn train_with(
    extra: &str,
    edit: impl FnOnce(&mut arl::TrainConfig),
) -> (EvalReport, EvalReport, Vec<StepMetrics>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), RUBRIC, VOCAB, extra);
    edit(&mut cfg);
    let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
    let before = t.validate().unwrap();
    let mut steps = Vec::new();
    t.run(|m| steps.push(m.clone())).unwrap();
    let after = t.validate().unwrap();
    eprintln!(
        "{extra}\nbefore {}\nafter  {}",
        before.table(),
        after.table()
    );
    (before, after, steps, dir)
}

fn class(r: &EvalReport, name: &str) -> f64 {
    r.classes[name].score
}

#[test]
fn scalarized_points_raises_the_overall_score() {
    let (before, after, steps, _d) =
        train("[objective]\nkind = \"scalarized\"\nweights = \"points\"");
    assert_eq!(steps.len(), 30);
    assert!(
        after.overall.score > before.overall.score + 0.2,
        "{} -> {}",
        before.overall.score,
        after.overall.score
    );
    assert!(steps.iter().all(|m| m.active_class.is_none()));
}

#[test]
fn scalarized_equal_raises_the_mean_class_score() {
    let (before, after, _, _d) = train("[objective]\nkind = \"scalarized\"\nweights = \"equal\"");
    let mean =
        |r: &EvalReport| r.classes.values().map(|s| s.score).sum::<f64>() / r.classes.len() as f64;
    assert!(
        mean(&after) > mean(&before) + 0.15,
        "{} -> {}",
        mean(&before),
        mean(&after)
    );
}

#[test]
fn custom_weights_raise_the_weighted_class() {
    let (before, after, _, _d) =
        train("[objective]\nkind = \"scalarized\"\nweights = { instruction_following = 1.0 }");
    let (b, a) = (
        class(&before, "instruction_following"),
        class(&after, "instruction_following"),
    );
    assert!(a > 0.9 && a > b + 0.4, "{b} -> {a}");
}

#[test]
fn gdpo_raises_the_sum_of_class_scores() {
    let (before, after, steps, _d) = train("[objective]\nkind = \"gdpo\"");
    let sum = |r: &EvalReport| r.classes.values().map(|s| s.score).sum::<f64>();
    assert!(
        sum(&after) > sum(&before) + 0.5,
        "{} -> {}",
        sum(&before),
        sum(&after)
    );
    assert!(steps.iter().all(|m| m.update.applied <= 1));
}

#[test]
fn alternating_fixed_raises_the_fixed_class() {
    for k in ["instruction_following", "context_awareness"] {
        let (before, after, steps, dir) = train(&format!(
            "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"fixed\"\nfixed_class = \"{k}\"\nlength = 10"
        ));
        let (b, a) = (class(&before, k), class(&after, k));
        assert!(a > 0.9 && a > b + 0.4, "{k}: {b} -> {a}");
        assert!(steps.iter().all(|m| m.active_class.as_deref() == Some(k)));
        let schedule = std::fs::read_to_string(dir.path().join("run/schedule.jsonl")).unwrap();
        assert_eq!(schedule.lines().count(), 3, "30 steps / length 10");
    }
}

#[test]
fn grading_only_the_active_class_grades_fewer_criteria() {
    let (_, after, steps, _d) = train(
        "[objective]\nkind = \"alternating\"\ngrade_active_class_only = true\n[phases]\nselector = \"fixed\"\nfixed_class = \"instruction_following\"\nlength = 30",
    );
    assert!(class(&after, "instruction_following") > 0.9);
    let m = &steps[0];
    assert_eq!(
        m.judge.verdicts, 32,
        "4 prompts × 8 samples × the class's single criterion"
    );
    assert_eq!(
        m.classes.len(),
        1,
        "other classes are not graded: no signal, not zero"
    );
}

#[test]
fn lookahead_picks_the_class_that_lifts_the_overall_score() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        LOOKAHEAD_RUBRIC,
        LOOKAHEAD_VOCAB,
        "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"lookahead\"\nprobe_steps = 4\nlength = 5\nselect_samples = 16",
    );
    let mut cfg = cfg;
    cfg.run.steps = 5;
    let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
    t.run(|_| {}).unwrap();
    let line = std::fs::read_to_string(dir.path().join("run/schedule.jsonl")).unwrap();
    let d: arl::DecisionRecord = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(d.chosen, "accuracy", "{d:?}");
    let score = |n: &str| d.candidates.iter().find(|c| c.class == n).unwrap().score;
    let base = d.base_score.unwrap();
    assert!(score("accuracy") > base, "{d:?}");
    assert!(
        score("completeness") < base,
        "training completeness lowers the overall score: {d:?}"
    );
    assert_eq!(
        d.candidates.len(),
        2,
        "classes without positive points are not candidates"
    );
}

#[test]
fn every_selector_runs_and_logs_its_numbers() {
    for sel in [
        "gradient",
        "deficit",
        "ucb",
        "round_robin",
        "shuffled",
        "lookahead",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(
            dir.path(),
            RUBRIC,
            VOCAB,
            &format!("[objective]\nkind = \"alternating\"\n[phases]\nselector = \"{sel}\"\nlength = 2\nprobe_steps = 1\ntop_m = 2\nselect_samples = 2"),
        );
        cfg.run.steps = 8;
        let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
        t.run(|_| {}).unwrap();
        let text = std::fs::read_to_string(dir.path().join("run/schedule.jsonl")).unwrap();
        let ds: Vec<arl::DecisionRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(ds.len(), 4, "{sel}");
        for d in &ds {
            let expected = match sel {
                "round_robin" | "shuffled" => 1,
                "lookahead" => 2,
                _ => 5,
            };
            assert_eq!(d.candidates.len(), expected, "{sel}: {d:?}");
            let measures = !matches!(sel, "round_robin" | "shuffled");
            assert_eq!(d.base_score.is_some(), measures, "{sel}");
        }
        if sel == "shuffled" {
            // the first cycle's order at the run seed (7): four of the five classes
            let names = rubric::MetaClasses::axes().names;
            let order = schedule::shuffled_order(7, 0, &[0, 1, 2, 3, 4]);
            let want: Vec<&str> = order[..4].iter().map(|&k| names[k].as_str()).collect();
            let got: Vec<&str> = ds.iter().map(|d| d.chosen.as_str()).collect();
            assert_eq!(got, want);
        }
        if sel == "round_robin" {
            let order: Vec<&str> = ds.iter().map(|d| d.chosen.as_str()).collect();
            assert_eq!(
                order,
                [
                    "accuracy",
                    "completeness",
                    "communication_quality",
                    "context_awareness"
                ]
            );
        }
        if sel == "ucb" {
            // untried arms first: four phases, four different classes
            let mut c: Vec<&str> = ds.iter().map(|d| d.chosen.as_str()).collect();
            c.dedup();
            assert_eq!(c.len(), 4);
        }
    }
}

fn decisions(run: &std::path::Path) -> Vec<arl::DecisionRecord> {
    let text = std::fs::read_to_string(run.join("schedule.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_phase_guard_ends_a_phase_early_on_a_drop() {
    // training completeness adds "more detail", which accuracy penalizes more than
    // completeness rewards: with a large step size the overall score falls within a phase
    let extra = "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"fixed\"\nfixed_class = \"completeness\"\nlength = 10\nselect_samples = 2\nguard_drop = 0.01";
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), LOOKAHEAD_RUBRIC, LOOKAHEAD_VOCAB, extra);
    cfg.optim.lr = 1.0;
    cfg.run.steps = 20;
    let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
    t.run(|_| {}).unwrap();
    let ds = decisions(&dir.path().join("run"));
    assert!(ds.iter().any(|d| d.step % 10 != 0), "{ds:?}");
    assert_eq!(ds[0].guard, None);
    // a phase runs its 10 steps unless the guard ended it, and then the decision says so
    for pair in ds.windows(2) {
        let ran = pair[1].step - pair[0].step;
        match &pair[1].guard {
            Some(trip) => {
                assert!(ran < 10 && trip.step == pair[1].step, "{pair:?}");
                assert!(trip.drop.unwrap() > 0.01, "{trip:?}");
            }
            None => assert_eq!(ran, 10, "{pair:?}"),
        }
    }
}

/// `phases.end_flat`: a phase ends after the first of its steps whose last `window` steps'
/// zero-spread shares average at least `share` (unless it ends there anyway), and only then;
/// the next decision records those shares.
#[test]
fn end_flat_ends_a_phase_when_its_groups_stop_spreading() {
    let (share, window, length) = (0.5, 2, 10);
    let extra = format!("[objective]\nkind = \"alternating\"\n[phases]\nselector = \"round_robin\"\nlength = {length}\nend_flat = {{ share = {share}, window = {window} }}");
    let (_, _, steps, dir) = train(&extra);
    let ds = decisions(&dir.path().join("run"));
    let mut trips = 0;
    for (i, d) in ds.iter().enumerate() {
        let end = ds.get(i + 1).map_or(30, |n| n.step);
        let shares: Vec<f64> = steps
            .iter()
            .filter(|m| m.step > d.step && m.step <= end)
            .map(|m| m.zero_spread_share)
            .collect();
        let flat_at = shares
            .windows(window)
            .position(|w| w.iter().sum::<f64>() / window as f64 >= share)
            .map(|j| d.step + (j + window) as u64);
        match ds.get(i + 1).and_then(|n| n.guard.as_ref()) {
            Some(trip) => {
                trips += 1;
                assert!(end - d.step < length, "{d:?}");
                assert_eq!(Some(trip.step), flat_at, "{trip:?}");
                let last = &shares[shares.len() - window..];
                assert_eq!(trip.flat.as_deref(), Some(last), "{trip:?}");
            }
            // the phase ran out (or the run ended) before any flat window, or at it
            None => {
                assert!(end - d.step == length || end == 30, "{d:?}");
                assert!(flat_at.is_none_or(|s| s == end), "{d:?} {shares:?}");
            }
        }
    }
    assert!(trips > 0, "the constructed run goes flat: {ds:?}");
}

/// `grpo.resample_flat`: rounds go on until `prompts_per_step` groups spread (or the last
/// round), the update holds no flat group when enough spread, and every sampled group counts.
#[test]
fn resample_flat_trains_on_groups_with_spread_and_counts_every_sampled_group() {
    let extra =
        "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"round_robin\"\nlength = 5";
    let resample = |c: &mut arl::TrainConfig| {
        c.grpo.resample_flat = Some(arl::grpo::ResampleFlat { max_rounds: 3 })
    };
    let (_, _, steps, _dir) = train_with(extra, resample);
    for m in &steps {
        let r = m.resample.expect("every step records its rounds");
        let flat = (m.zero_spread_share * m.groups as f64).round() as usize;
        let spread = m.groups - flat;
        assert_eq!((r.sampled_groups, r.trained_groups), (m.groups, 4), "{m:?}");
        assert_eq!(m.samples, 8 * m.groups);
        assert!(
            (1..=3).contains(&r.rounds) && m.groups <= 4 + 2 * 4,
            "{m:?}"
        );
        if r.rounds < 3 {
            assert!(spread >= 4, "stopped early only with enough spread: {m:?}");
        }
        let missing = 4usize.saturating_sub(spread);
        assert_eq!(r.trained_zero_spread_share, missing as f64 / 4.0, "{m:?}");
        // a flat group adds no row: 8 per trained group with spread
        assert_eq!(m.update.rows, 8 * (4 - missing), "{m:?}");
    }
    assert!(steps.iter().any(|m| m.resample.unwrap().rounds > 1));
    // off: nothing recorded
    let (_, _, plain, dir) = train_with(extra, |c| c.run.steps = 2);
    assert!(plain.iter().all(|m| m.resample.is_none() && m.groups == 4));
    let text = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    assert!(!text.contains("resample"), "{text}");
}

#[test]
fn paired_selection_logs_each_gain_with_its_standard_error() {
    let on = "\npaired = true";
    for paired in ["", on] {
        let extra = format!("[objective]\nkind = \"alternating\"\n[phases]\nselector = \"lookahead\"\nlength = 2\nprobe_steps = 1\nselect_samples = 2{paired}");
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), RUBRIC, VOCAB, &extra);
        cfg.run.steps = 4;
        let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
        t.run(|_| {}).unwrap();
        for d in decisions(&dir.path().join("run")) {
            for c in &d.candidates {
                assert_eq!(c.gain_se.is_some(), paired == on, "{d:?}");
                // every example is scored: the paired gain is the score's gain
                let gain = c.score - d.base_score.unwrap();
                assert!((c.detail - gain).abs() < 1e-9, "{d:?}");
            }
        }
    }
}

#[test]
fn resume_from_a_checkpoint_reproduces_the_metrics() {
    let variants =
        "\nguard_drop = 0.01\npaired = true\n[objective]\nkind = \"alternating\"\nanchor = 0.5";
    for extra in ["", variants] {
        resume_reproduces(&format!("\nprobe_steps = 1{extra}"), 4);
    }
}

/// `shuffled`: ten one-step phases over the five classes, resumed at step 4 (mid-cycle); the
/// resumed run goes on with the same order, and each cycle visits every class once.
#[test]
fn shuffled_resumes_mid_cycle_in_the_same_order() {
    let shuffled = |c: &mut arl::TrainConfig| {
        c.phases.selector = schedule::SelectorKind::Shuffled;
        c.phases.length = 1;
    };
    let (_dir, run) = resume_reproduces_with("", 4, shuffled);
    let chosen: Vec<String> = decisions(&run).into_iter().map(|d| d.chosen).collect();
    assert_eq!(chosen.len(), 10);
    let names = rubric::MetaClasses::axes().names;
    for cycle in [0, 1] {
        let want: Vec<&String> = schedule::shuffled_order(7, cycle, &[0, 1, 2, 3, 4])
            .into_iter()
            .map(|k| &names[k])
            .collect();
        let got: Vec<&String> = chosen[5 * cycle as usize..][..5].iter().collect();
        assert_eq!(got, want, "cycle {cycle}");
    }
    assert_ne!(chosen[..5], chosen[5..], "two cycles, two orders");
}

/// The coarse mapping (`configs/classes/builtin-coarse.toml`: content, delivery) on the
/// five-axis task: two meta-classes, alternated by `shuffled`, and the run trains.
#[test]
fn two_coarse_classes_alternate_and_train() {
    let coarse = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/classes/builtin-coarse.toml");
    let (before, after, steps, dir) = train_with(
        "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"shuffled\"\nlength = 3",
        |c| c.data.classes.scheme = rubric::ClassScheme::Mapping(coarse),
    );
    let names: Vec<&String> = after.classes.keys().collect();
    assert_eq!(names, ["content", "delivery"]);
    assert!(
        after.overall.score > before.overall.score + 0.2,
        "{} -> {}",
        before.overall.score,
        after.overall.score
    );
    let active: std::collections::BTreeSet<&str> = steps
        .iter()
        .map(|m| m.active_class.as_deref().unwrap())
        .collect();
    assert_eq!(
        active.into_iter().collect::<Vec<_>>(),
        ["content", "delivery"]
    );
    let chosen: Vec<String> = decisions(&dir.path().join("run"))
        .into_iter()
        .map(|d| d.chosen)
        .collect();
    assert_eq!(chosen.len(), 10, "30 steps / length 3");
    for pair in chosen.chunks(2) {
        assert_ne!(pair[0], pair[1], "each cycle visits both: {chosen:?}");
    }
}

/// `end_flat` (its window's shares are phase state, one in it at the checkpoint) and
/// `resample_flat` (further rounds draw on the run's rng) resume bit for bit.
#[test]
fn end_flat_and_resample_flat_resume_bit_for_bit() {
    // a large step size: classes saturate within the 10 steps
    let flat = "\nprobe_steps = 1\nend_flat = { share = 0.125, window = 2 }";
    let (_dir, run) = resume_reproduces_with(flat, 4, |c| c.optim.lr = 1.0);
    let schedule = std::fs::read_to_string(run.join("schedule.jsonl")).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let shares: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<StepMetrics>(l)
                .unwrap()
                .zero_spread_share
        })
        .collect();
    assert!(
        schedule.contains("\"flat\""),
        "end_flat trips: {shares:?} {schedule}"
    );
    // the window that tripped (steps 4 and 5) spans the checkpoint resumed from (4)
    let trip = decisions(&run).into_iter().find_map(|d| d.guard).unwrap();
    assert_eq!((trip.step, trip.flat.unwrap().len()), (5, 2));
    // with kept probe steps (the phase's first steps, counted in the window)
    let kept = format!("{flat}\nkeep_probe = true");
    let (_dir, run) = resume_reproduces_with(&kept, 4, |c| c.optim.lr = 1.0);
    let schedule = std::fs::read_to_string(run.join("schedule.jsonl")).unwrap();
    assert!(schedule.contains("\"flat\""), "{schedule}");
    let resample = |c: &mut arl::TrainConfig| {
        c.grpo.resample_flat = Some(arl::grpo::ResampleFlat { max_rounds: 3 })
    };
    let (_dir, run) = resume_reproduces_with("\nprobe_steps = 1\nkeep_probe = true", 4, resample);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"rounds\":2") || metrics.contains("\"rounds\":3"),
        "{metrics}"
    );
}

/// `keep_probe`: boundaries at 0, 3, 6, 9 with two kept steps each (not at 9: they would run
/// past step 10), a validation due inside the kept steps (4), a checkpoint on the last kept
/// step (5), resumed from there across the boundaries at 6 and 9.
#[test]
fn keep_probe_resumes_bit_for_bit_across_a_boundary() {
    let (_dir, run) =
        resume_reproduces("\nprobe_steps = 2\nkeep_probe = true\nskip_flat = true", 5);
    let kept: Vec<u64> = decisions(&run)
        .iter()
        .map(|d| d.cost.unwrap().kept_steps)
        .collect();
    assert!(kept[..3].contains(&2) && kept[3] == 0, "{kept:?}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<StepMetrics> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = lines.iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>(), "one line per step");
    // the selection's verdicts are counted on the phase's first line, as without keep_probe
    if kept[0] == 2 {
        assert!(
            lines[0].train_verdicts > 2 * lines[1].train_verdicts,
            "{lines:?}"
        );
    }
    let evals = std::fs::read_to_string(run.join("eval.jsonl")).unwrap();
    let eval_steps: Vec<u64> = evals
        .lines()
        .map(|l| serde_json::from_str::<arl::eval::EvalLine>(l).unwrap().step)
        .collect();
    assert_eq!(eval_steps, [0, 4, 8, 10]);
}

/// The lookahead's candidates share their first probe step's rollouts (sampled once,
/// replayed): the run is bit for bit the one whose every probe samples afresh. Kept probe
/// steps, a second probe step (from each candidate's own weights: not shared), grading only
/// the active class (each candidate grades the shared responses its own way), dynamic
/// sampling's further rounds and the KL reference (memoized by rows) all take part.
#[test]
fn shared_probe_rollouts_give_the_bits_of_fresh_ones() {
    let extra = "[phases]\nselector = \"lookahead\"\nlength = 3\nselect_samples = 2\n\
                 probe_steps = 2\nkeep_probe = true\n\
                 [objective]\nkind = \"alternating\"\ngrade_active_class_only = true";
    let run = |share: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), RUBRIC, VOCAB, extra);
        cfg.grpo.kl_beta = 0.05;
        cfg.grpo.micro_batch = 5;
        cfg.grpo.resample_flat = Some(arl::grpo::ResampleFlat { max_rounds: 2 });
        cfg.run.steps = 10;
        cfg.eval.every = 4;
        let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
        t.share_probe_rollouts = share;
        t.run(|_| {}).unwrap();
        let run = dir.path().join("run");
        let read = |f: &str| std::fs::read(run.join(f)).unwrap();
        let mut generate = Vec::new();
        let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let time = v.as_object_mut().unwrap().remove("time_s").unwrap();
                generate.push(time["generate"].as_f64().unwrap());
                v
            })
            .collect();
        let last = arl::checkpoint::latest(&run).unwrap().unwrap().0;
        let weights = std::fs::read(last.join("policy.safetensors")).unwrap();
        let files = (read("schedule.jsonl"), read("eval.jsonl"));
        (metrics, files.0, files.1, weights, generate)
    };
    let (shared, fresh) = (run(true), run(false));
    let candidates = String::from_utf8_lossy(&shared.1)
        .matches("\"class\"")
        .count();
    assert!(
        candidates >= 8,
        "several candidates per boundary: {candidates}"
    );
    // a kept step whose rollout was replayed did not sample (its chosen class was not the
    // first probed): the sharing took place
    let replayed = |generate: &[f64]| generate.iter().filter(|g| **g == 0.0).count();
    assert!(replayed(&shared.4) > 0, "no replayed step: {:?}", shared.4);
    assert_eq!(replayed(&fresh.4), 0, "{:?}", fresh.4);
    assert!(shared.0 == fresh.0, "metrics differ");
    assert!(shared.1 == fresh.1, "schedule.jsonl differs");
    assert!(shared.2 == fresh.2, "eval.jsonl differs");
    assert!(shared.3 == fresh.3, "weights differ");
}

/// Runs 10 steps, then 7 with checkpoints every `every` (the last one's removed) resumed to
/// 10 from step `every`; both must agree bit for bit (metrics without times, schedule,
/// final weights and optimizer). Returns the resumed run (its folder, and the folder's owner).
fn resume_reproduces(variants: &str, every: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    resume_reproduces_with(variants, every, |_| {})
}

/// [`resume_reproduces`] with `edit` applied to every config.
fn resume_reproduces_with(
    variants: &str,
    every: u64,
    edit: impl Fn(&mut arl::TrainConfig),
) -> (tempfile::TempDir, std::path::PathBuf) {
    let strip = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("time_s");
                v
            })
            .collect()
    };
    let objective = if variants.contains("[objective]") {
        ""
    } else {
        "\n[objective]\nkind = \"alternating\""
    };
    let extra = format!(
        "[phases]\nselector = \"lookahead\"\nlength = 3\nselect_samples = 2{variants}{objective}"
    );
    let base = |dir: &std::path::Path, steps: u64, every: u64| {
        let mut cfg = config(dir, RUBRIC, VOCAB, &extra);
        cfg.grpo.kl_beta = 0.05;
        cfg.grpo.ppo_epochs = 2;
        cfg.grpo.micro_batch = 5;
        cfg.run.steps = steps;
        cfg.run.checkpoint_every = every;
        cfg.eval.every = 4;
        edit(&mut cfg);
        cfg
    };
    let a = tempfile::tempdir().unwrap();
    let cfg = base(a.path(), 10, 0);
    Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap())
        .unwrap()
        .run(|_| {})
        .unwrap();
    let full = std::fs::read_to_string(a.path().join("run/metrics.jsonl")).unwrap();

    // the interrupted run: 7 steps with a checkpoint at `every` (and 7), then back there
    let b = tempfile::tempdir().unwrap();
    let mut cfg = base(b.path(), 7, every);
    cfg.run.keep_checkpoints = 0;
    Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap())
        .unwrap()
        .run(|_| {})
        .unwrap();
    let run = b.path().join("run");
    std::fs::remove_dir_all(run.join("checkpoints/step-00000007")).unwrap();
    // resume with the full step count
    let mut cfg = base(b.path(), 10, every);
    cfg.run.dir = run.clone();
    let parts = Parts::from_config(&cfg).unwrap();
    let mut t = Trainer::resume_with(&run, cfg, parts).unwrap();
    assert_eq!(t.state.step, every);
    t.run(|_| {}).unwrap();
    let resumed = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(strip(&full), strip(&resumed));
    for f in [
        "schedule.jsonl",
        "eval.jsonl",
        "completions.jsonl",
        "checkpoints/step-00000010/policy.safetensors",
        "checkpoints/step-00000010/optimizer.safetensors",
    ] {
        let full = std::fs::read(a.path().join("run").join(f)).unwrap();
        assert!(full == std::fs::read(run.join(f)).unwrap(), "{f} differs");
    }
    if variants.contains("guard_drop") {
        let s_full = std::fs::read_to_string(run.join("schedule.jsonl")).unwrap();
        assert!(s_full.contains("\"guard\""), "the guard trips: {s_full}");
    }
    (b, run)
}

/// A short run's `completions.jsonl` lines, with the config's data.
fn completions_run(log: &str, steps: u64) -> (Vec<CompletionLine>, arl::TrainConfig, Parts) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), RUBRIC, VOCAB, log);
    cfg.run.steps = steps;
    cfg.eval.every = 2;
    Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap())
        .unwrap()
        .run(|_| {})
        .unwrap();
    let path = dir.path().join("run/completions.jsonl");
    let parts = Parts::from_config(&cfg).unwrap();
    (rubric::runfile::read_jsonl(&path).unwrap(), cfg, parts)
}

/// `completions.jsonl` holds every response of the first `log.completions_per_step` groups of
/// each step, each with the rewards its logged verdicts give, and validation's first response
/// on the first `log.val_completions` prompts at step 0 and at the last step only.
#[test]
fn completions_are_logged_with_the_rewards_of_their_verdicts() {
    let log = "[log]\ncompletions_per_step = 2\nval_completions = 3";
    let (lines, cfg, parts) = completions_run(log, 5);
    let data = parts.data;
    let k = data.classes.len();
    let train: Vec<&CompletionLine> = lines.iter().filter(|l| l.split == Split::Train).collect();
    for step in 1..=5 {
        let at: Vec<_> = train.iter().filter(|l| l.step == step).collect();
        assert_eq!(at.len(), 2 * cfg.grpo.group_size, "step {step}");
        assert!(at
            .iter()
            .all(|l| l.group < 2 && l.sample < cfg.grpo.group_size));
    }
    assert_eq!(train.len(), 5 * 2 * cfg.grpo.group_size);
    let mut graded = 0;
    for l in &lines {
        let (set, classes) = match l.split {
            Split::Train => (&data.train, &data.train_classes),
            Split::Val => (&data.val, &data.val_classes),
        };
        let i = set
            .examples
            .iter()
            .position(|e| e.id == l.prompt_id)
            .unwrap();
        assert!(l.prompt.contains("pregnant"), "{}", l.prompt);
        let verdicts: Vec<rubric::Verdict> = l
            .verdicts
            .iter()
            .map(|v| rubric::Verdict {
                criterion: v.criterion,
                outcome: Ok(v.met.unwrap()),
                explanation: String::new(),
                judge: String::new(),
                cached: false,
                attempts: 0,
            })
            .collect();
        let want = rubric::score::reward_vector(&set.examples[i], &classes[i], k, &verdicts);
        assert_eq!(l.overall, want.overall, "{l:?}");
        let got: Vec<Option<f64>> = data.classes.names.iter().map(|n| l.classes[n]).collect();
        assert_eq!(got, want.classes);
        assert_eq!(l.verdicts.len(), set.examples[i].criteria.len());
        graded += l.overall.is_some() as usize;
    }
    assert!(graded > 0);
    assert!(
        train.iter().any(|l| l.advantage.is_some()),
        "some responses trained on"
    );
    let val = |step| -> Vec<String> {
        let at = lines
            .iter()
            .filter(|l| l.split == Split::Val && l.step == step);
        at.map(|l| l.prompt_id.clone()).collect()
    };
    assert_eq!(val(0), ["v0", "v1", "v2"]);
    assert_eq!(val(5), val(0), "the same prompts at the end");
    assert!(
        val(2).is_empty() && val(4).is_empty(),
        "only the start and the end"
    );
    let vals = lines.iter().filter(|l| l.split == Split::Val).count();
    assert_eq!(vals, 6);
}

/// `log.completions_per_step = 0` logs no training responses.
#[test]
fn no_training_completions_are_logged_when_switched_off() {
    let (lines, _, _) = completions_run("[log]\ncompletions_per_step = 0", 3);
    assert!(lines.iter().all(|l| l.split == Split::Val), "{lines:?}");
    assert_eq!(lines.len(), 6);
}

/// Makes every log-prob NaN on the chosen calls.
struct NanPolicy {
    inner: arl::CategoricalPolicy,
    calls: std::cell::Cell<usize>,
    poison: Vec<usize>,
}

impl arl::Policy for NanPolicy {
    fn generate(
        &mut self,
        p: &[&rubric::Example],
        n: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<Vec<Vec<arl::Completion>>> {
        self.inner.generate(p, n, rng)
    }
    fn log_probs(&self, p: &[&rubric::Example], c: &[&[u32]]) -> Result<arl::TokenLogProbs> {
        let call = self.calls.get();
        self.calls.set(call + 1);
        let mut lp = self.inner.log_probs(p, c)?;
        if self.poison.contains(&call) {
            lp.log_probs = (lp.log_probs * f64::NAN)?;
        }
        Ok(lp)
    }
    fn vars(&self) -> Vec<(String, candle_core::Var)> {
        self.inner.vars()
    }
    fn device(&self) -> candle_core::Device {
        self.inner.device()
    }
}

#[test]
fn nonfinite_loss_skips_the_update_and_training_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        dir.path(),
        RUBRIC,
        VOCAB,
        "[objective]\nkind = \"scalarized\"",
    );
    cfg.run.steps = 6;
    let pc = arl::CategoricalConfig {
        vocab: serde_json::from_str(VOCAB).unwrap(),
        max_tokens: 6,
        condition_on_tag: None,
        buckets: 1,
        temperature: 1.0,
    };
    let policy = NanPolicy {
        inner: arl::CategoricalPolicy::new(pc).unwrap(),
        calls: Default::default(),
        poison: vec![1],
    };
    let data = arl::setup::load_task(&cfg).unwrap();
    let parts = Parts {
        policy: Box::new(policy),
        judge: Arc::new(RuleJudge::new()),
        data,
    };
    let mut t = Trainer::new(cfg.clone(), parts).unwrap();
    let mut steps = Vec::new();
    let mut weights = Vec::new();
    t.run(|m| steps.push(m.clone())).unwrap();
    for m in &steps {
        weights.push(m.update.applied);
    }
    assert_eq!(steps[1].update.nonfinite_skips, 1, "{:?}", steps[1].update);
    assert_eq!(steps[1].update.applied, 0);
    assert_eq!(steps[1].update.loss, None);
    assert!(
        steps
            .iter()
            .enumerate()
            .all(|(i, m)| i == 1 || m.update.applied == 1),
        "{weights:?}"
    );
    let v = t.policy().vars()[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

/// Fails every verdict on responses containing "okay", and (optionally) the first attempt of
/// every other verdict.
struct FlakyJudge {
    rules: RuleJudge,
    fail_first_attempt: bool,
    attempts: AtomicU64,
}

#[async_trait]
impl Judge for FlakyJudge {
    fn id(&self) -> String {
        "flaky".into()
    }
    async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
        let first = self
            .attempts
            .fetch_add(1, Ordering::SeqCst)
            .is_multiple_of(2);
        let mut out = self.rules.grade(tasks).await;
        for (t, grades) in tasks.iter().zip(out.iter_mut()) {
            for g in grades {
                if t.response.contains("okay") || (self.fail_first_attempt && first) {
                    g.outcome = Err(JudgeFailure::Exhausted {
                        attempts: 1,
                        last_error: "timeout".into(),
                    });
                }
            }
        }
        out
    }
    fn stats(&self) -> JudgeStats {
        self.rules.stats()
    }
}

#[test]
fn judge_failures_are_retried_then_counted_and_excluded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        dir.path(),
        RUBRIC,
        VOCAB,
        "[objective]\nkind = \"scalarized\"\n[judge]\nretries = 1",
    );
    cfg.run.steps = 4;
    let data = arl::setup::load_task(&cfg).unwrap();
    let judge = FlakyJudge {
        rules: RuleJudge::new(),
        fail_first_attempt: false,
        attempts: AtomicU64::new(0),
    };
    let parts = Parts {
        policy: arl::build_policy(&cfg.policy).unwrap(),
        judge: Arc::new(judge),
        data,
    };
    let mut t = Trainer::new(cfg.clone(), parts).unwrap();
    let mut steps = Vec::new();
    t.run(|m| steps.push(m.clone())).unwrap();
    let excluded: usize = steps.iter().map(|m| m.excluded_samples).sum();
    assert!(excluded > 0, "the uniform policy says \"okay\" often");
    for m in &steps {
        assert_eq!(
            m.overall.n + m.excluded_samples,
            m.samples,
            "excluded, never scored"
        );
        assert!(m.failed_verdicts >= 6 * m.excluded_samples);
        assert!(
            m.retried_verdicts >= m.failed_verdicts,
            "each failed verdict was asked again"
        );
    }
    let val = steps.last().unwrap().val.as_ref().unwrap();
    assert!(val.excluded > 0 && val.responses + val.excluded == 4 * 16);

    // transient failures: the retry recovers every verdict, nothing is excluded
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        dir.path(),
        RUBRIC,
        r#"["Answer:", "Rest at home."]"#,
        "[objective]\nkind = \"scalarized\"\n[judge]\nretries = 1",
    );
    cfg.run.steps = 2;
    let data = arl::setup::load_task(&cfg).unwrap();
    let judge = FlakyJudge {
        rules: RuleJudge::new(),
        fail_first_attempt: true,
        attempts: AtomicU64::new(0),
    };
    let parts = Parts {
        policy: arl::build_policy(&cfg.policy).unwrap(),
        judge: Arc::new(judge),
        data,
    };
    let mut t = Trainer::new(cfg.clone(), parts).unwrap();
    let mut steps = Vec::new();
    t.run(|m| steps.push(m.clone())).unwrap();
    for m in &steps {
        assert_eq!(m.excluded_samples, 0);
        assert_eq!(m.retried_verdicts, 32 * 6);
    }
}

#[test]
fn diagnostics_are_logged_per_step() {
    let (_, _, steps, dir) = train(
        "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"round_robin\"\nlength = 5",
    );
    let m = &steps[0];
    assert_eq!(m.groups, 4);
    assert_eq!(m.samples, 32);
    assert_eq!(m.classes.len(), 5);
    assert!(m.overall.group_std.unwrap() > 0.0);
    assert!(m.update.entropy.unwrap() > 0.0);
    assert!(m.update.grad_norm.unwrap() > 0.0);
    assert!(m.judge.verdicts >= 32 * 6);
    // once a class is learned its groups stop varying: the zero-spread share rises
    assert!(steps.iter().any(|m| m.zero_spread_share > 0.0));
    assert!(
        steps.last().unwrap().val.is_some(),
        "validation after the last step"
    );
    let lines = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 30);
    assert!(dir
        .path()
        .join("run/checkpoints/step-00000030/policy.safetensors")
        .exists());
    assert!(dir.path().join("run/config.toml").exists());
}

#[test]
fn a_run_directory_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        dir.path(),
        RUBRIC,
        VOCAB,
        "[objective]\nkind = \"scalarized\"",
    );
    cfg.run.steps = 1;
    Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap())
        .unwrap()
        .run(|_| {})
        .unwrap();
    let err = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn micro_batches_accumulate_to_the_full_batch_loss_and_gradient() {
    let run = |micro_batch: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(
            dir.path(),
            RUBRIC,
            VOCAB,
            "[objective]\nkind = \"scalarized\"",
        );
        cfg.run.steps = 3;
        cfg.grpo.micro_batch = micro_batch;
        cfg.grpo.ppo_epochs = 2;
        let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
        let mut steps = Vec::new();
        t.run(|m| steps.push(m.update.clone())).unwrap();
        steps
    };
    let (whole, micro) = (run(0), run(3));
    for (a, b) in whole.iter().zip(&micro) {
        assert_eq!((a.rows, a.tokens, a.applied), (b.rows, b.tokens, b.applied));
        let close = |x: Option<f64>, y: Option<f64>| (x.unwrap() - y.unwrap()).abs() < 1e-5;
        assert!(close(a.loss, b.loss), "{a:?} vs {b:?}");
        assert!(close(a.grad_norm, b.grad_norm), "{a:?} vs {b:?}");
        assert!(close(a.entropy, b.entropy));
    }
    // the second epoch's ratio moves away from 1: clipping becomes possible
    assert!(whole.iter().all(|u| u.clip_frac.is_some()));
}

#[test]
fn validation_is_logged_from_the_start() {
    let (before, _, _, dir) =
        train_with("[objective]\nkind = \"scalarized\"", |c| c.eval.every = 10);
    let text = std::fs::read_to_string(dir.path().join("run/eval.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 10, 20, 30]);
    // the step-0 line is the untrained policy, with the same seed as `validate`
    assert_eq!(
        lines[0]["overall"]["score"].as_f64().unwrap(),
        before.overall.score
    );
    assert!(
        lines[0]["overall"]["std"].as_f64().unwrap() > 0.0,
        "bootstrap std"
    );
}

/// `run.verdict_budget`: the run stops after the step whose verdicts reach the budget, long
/// before `run.steps`, with its last validation, test and checkpoint on that step; its steps
/// are the unbudgeted run's; a run stopped before the budget and resumed stops on the same
/// step with the same lines; a cosine schedule decays over the steps the budget buys.
#[test]
fn a_verdict_budget_stops_the_run_on_the_step_that_spends_it() {
    let strip = |path: &std::path::Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("time_s");
                v
            })
            .collect()
    };
    let run = |budget: u64, steps: u64, cosine: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(
            dir.path(),
            RUBRIC,
            VOCAB,
            "[objective]\nkind = \"scalarized\"",
        );
        cfg.data.test = Some(dir.path().join("val.jsonl"));
        (cfg.run.steps, cfg.run.verdict_budget) = (steps, budget);
        cfg.run.checkpoint_every = 3;
        cfg.run.keep_checkpoints = 0;
        if cosine {
            cfg.optim.schedule = arl::optim::LrSchedule::Cosine;
        }
        let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
        let mut lines = Vec::new();
        t.run(|m| lines.push(m.clone())).unwrap();
        (dir, lines)
    };
    let (_full_dir, full) = run(0, 30, false);
    let spent: Vec<u64> = full
        .iter()
        .scan(0, |s, m| {
            *s += m.train_verdicts;
            Some(*s)
        })
        .collect();
    let budget = spent[6] - 1; // reached on step 7
    let (dir, lines) = run(budget, 30, false);
    assert_eq!(lines.len(), 7, "stops on the step that reaches the budget");
    // the same steps; the last one also validates (its judge counts include validation's)
    let same = |mut a: Vec<serde_json::Value>, mut b: Vec<serde_json::Value>| {
        for v in [&mut a[6], &mut b[6]] {
            let v = v.as_object_mut().unwrap();
            v.remove("val");
            v.remove("judge");
        }
        a == b
    };
    let metrics = dir.path().join("run/metrics.jsonl");
    let full_metrics = strip(&_full_dir.path().join("run/metrics.jsonl"));
    assert!(same(
        strip(&metrics)[..7].to_vec(),
        full_metrics[..7].to_vec()
    ));
    assert!(lines[6].val.is_some());
    let steps_of = |f: &str| -> Vec<u64> {
        let text = std::fs::read_to_string(dir.path().join("run").join(f)).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<arl::eval::EvalLine>(l).unwrap().step)
            .collect()
    };
    assert_eq!(steps_of("eval.jsonl"), [0, 7]);
    assert_eq!(steps_of("test.jsonl"), [0, 7]);
    assert!(dir.path().join("run/checkpoints/step-00000007").is_dir());

    // stopped by the step count at 5, resumed from its checkpoint at 3 under the budget:
    // stops on step 7 again
    let (cut, _) = run(budget, 5, false);
    let run_dir = cut.path().join("run");
    std::fs::remove_dir_all(run_dir.join("checkpoints/step-00000005")).unwrap();
    let mut cfg = arl::TrainConfig::from_file(&run_dir.join("config.toml")).unwrap();
    cfg.run.steps = 30;
    let mut t =
        Trainer::resume_with(&run_dir, cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
    assert_eq!((t.state.step, t.verdicts_spent()), (3, spent[2]));
    t.run(|_| {}).unwrap();
    assert!(strip(&run_dir.join("metrics.jsonl")) == strip(&metrics));

    // cosine: the rate falls over the 7 steps the budget buys, not over the 30 of `run.steps`
    let (_d, cosine) = run(budget, 30, true);
    let (_d30, cosine30) = run(0, 30, true);
    let lr: Vec<f64> = cosine.iter().map(|m| m.lr).collect();
    assert!(lr.windows(2).all(|w| w[1] < w[0]), "{lr:?}");
    assert!(lr[6] < 0.5 * lr[0] && lr[6] < cosine30[6].lr, "{lr:?}");
}

/// A training task the judge was asked: example id, response, criteria.
type Asked = (String, String, Vec<usize>);

/// The rule judge, recording each training task it is asked (example id, response, criteria
/// asked); validation examples (ids `v…`) are not recorded.
struct RecordingJudge {
    rules: RuleJudge,
    asked: std::sync::Mutex<Vec<Asked>>,
}

#[async_trait]
impl Judge for RecordingJudge {
    fn id(&self) -> String {
        "recording".into()
    }
    async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
        {
            let mut asked = self.asked.lock().unwrap();
            for t in tasks.iter().filter(|t| t.example.id.starts_with('t')) {
                let criteria = t.criterion_indices();
                asked.push((t.example.id.clone(), t.response.to_string(), criteria));
            }
        }
        self.rules.grade(tasks).await
    }
    fn stats(&self) -> JudgeStats {
        self.rules.stats()
    }
}

/// A 3-step scalarized run with `objective.subsample` = `subsample` (none when empty): its
/// steps and the training tasks its judge was asked.
fn recorded_run(subsample: &str) -> (Vec<StepMetrics>, Vec<Asked>) {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[objective]\nkind = \"scalarized\"\n{subsample}");
    let mut cfg = config(dir.path(), RUBRIC, VOCAB, &extra);
    cfg.run.steps = 3;
    let judge = Arc::new(RecordingJudge {
        rules: RuleJudge::new(),
        asked: Default::default(),
    });
    let parts = Parts {
        policy: arl::build_policy(&cfg.policy).unwrap(),
        judge: judge.clone(),
        data: arl::setup::load_task(&cfg).unwrap(),
    };
    let mut steps = Vec::new();
    let mut t = Trainer::new(cfg, parts).unwrap();
    t.run(|m| steps.push(m.clone())).unwrap();
    let asked = judge.asked.lock().unwrap().clone();
    (steps, asked)
}

#[test]
fn subsampled_scalarized_spends_one_class_of_verdicts_on_the_same_prompts() {
    let (full, full_asked) = recorded_run("");
    let (sub, sub_asked) = recorded_run("subsample = \"one_class\"");
    let (half, _) = recorded_run("subsample = 0.5");
    // 4 prompts × 8 responses × 6 criteria; one_class: max(1, round(6/5)) = 1 per response,
    // about 1/K (K = 5) of the verdicts, as grading one class per step; 0.5: 3 per response
    for ((f, s), h) in full.iter().zip(&sub).zip(&half) {
        assert_eq!(
            (f.train_verdicts, s.train_verdicts, h.train_verdicts),
            (192, 32, 96)
        );
        let share = s.train_verdicts as f64 / f.train_verdicts as f64;
        assert!((share - 1.0 / 5.0).abs() < 0.05, "{share}");
        // every response scored (an estimate, not "no signal")
        assert_eq!((s.overall.n, s.classes.len()), (32, f.classes.len()));
    }
    // step 1: the same prompts and responses (the subsets come from their own stream)
    assert_eq!(full_asked.len(), 3 * 32);
    assert_eq!(sub_asked.len(), 3 * 32);
    let texts = |asked: &[Asked]| -> Vec<(String, String)> {
        asked[..32]
            .iter()
            .map(|(id, r, _)| (id.clone(), r.clone()))
            .collect()
    };
    assert_eq!(texts(&full_asked), texts(&sub_asked));
    assert!(full_asked.iter().all(|a| a.2.len() == 6));
    assert!(sub_asked.iter().all(|a| a.2.len() == 1));
    // the sampled criterion varies across responses: every one of the 6 drawn in 96
    let drawn: std::collections::BTreeSet<usize> = sub_asked.iter().map(|a| a.2[0]).collect();
    assert_eq!(drawn.len(), 6, "{drawn:?}");
}

#[test]
fn subsampled_scalarized_resumes_bit_for_bit() {
    let (_dir, run) = resume_reproduces(
        "\n[objective]\nkind = \"scalarized\"\nsubsample = \"one_class\"",
        4,
    );
    let state = std::fs::read_to_string(run.join("checkpoints/step-00000010/state.json")).unwrap();
    assert!(state.contains("subsample_rng"), "{state}");
    let (_dir, run) = resume_reproduces("\n[objective]\nkind = \"scalarized\"", 4);
    let state = std::fs::read_to_string(run.join("checkpoints/step-00000010/state.json")).unwrap();
    assert!(
        !state.contains("subsample_rng"),
        "absent without subsampling"
    );
}
