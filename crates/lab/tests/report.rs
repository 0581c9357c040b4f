//! `report.md` of a finished run: written by the lab from what `Trainer::run` returns, with the
//! lines each ARL-RR variant and diagnostic adds.

#[path = "../../arl/tests/common.rs"]
mod common;

use arl::{Parts, TrainConfig, Trainer};
use common::*;

/// Trains the categorical task with `extra` (edited by `edit`), writes the report, returns it
/// with the number of phases a guard or `end_flat` ended early.
fn report_of(
    rubric: &str,
    vocab: &str,
    extra: &str,
    edit: impl FnOnce(&mut TrainConfig),
) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), rubric, vocab, extra);
    edit(&mut cfg);
    let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
    let finished = t.run(|_| {}).unwrap();
    let trips = finished
        .records
        .schedule
        .iter()
        .filter(|d| d.guard.is_some())
        .count();
    lab::report::write_run(&finished).unwrap();
    let report = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
    assert!(dir.path().join("run/report.md").exists());
    (report, trips)
}

#[test]
fn the_report_names_the_phase_guard() {
    let extra = "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"fixed\"\nfixed_class = \"completeness\"\nlength = 10\nselect_samples = 2\nguard_drop = 0.01";
    let (report, _) = report_of(LOOKAHEAD_RUBRIC, LOOKAHEAD_VOCAB, extra, |c| {
        c.optim.lr = 1.0;
        c.run.steps = 20;
    });
    assert!(report.contains("variants: phase guard 0.01"), "{report}");
}

#[test]
fn the_report_counts_the_phases_end_flat_ended() {
    let extra = "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"round_robin\"\nlength = 10\nend_flat = { share = 0.5, window = 2 }";
    let (report, trips) = report_of(RUBRIC, VOCAB, extra, |_| {});
    assert!(trips > 0, "the constructed run goes flat");
    let line =
        format!("phases ended early by end_flat (zero-spread share ≥ 0.5 over 2 steps): {trips}");
    assert!(report.contains(&line), "{report}");
    assert!(report.contains("variants: end_flat"), "{report}");
}

#[test]
fn the_report_has_resample_flat_and_the_class_table() {
    let extra =
        "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"round_robin\"\nlength = 5";
    let (report, _) = report_of(RUBRIC, VOCAB, extra, |c| {
        c.grpo.resample_flat = Some(arl::grpo::ResampleFlat { max_rounds: 3 })
    });
    assert!(report.contains("`grpo.resample_flat`"), "{report}");
    let (report, _) = report_of(RUBRIC, VOCAB, extra, |_| {});
    assert!(report.contains("| overall |"), "{report}");
}

#[test]
fn a_report_of_an_embedding_judged_run_says_it_is_approximate() {
    let dir = tempfile::tempdir().unwrap();
    let toml = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "");
    let mut cfg = TrainConfig::from_toml(&toml).unwrap();
    let (run, classes) = (dir.path().join("run"), vec!["accuracy".to_string()]);
    std::fs::create_dir_all(&run).unwrap();
    let report = |cfg: &TrainConfig| {
        let records = arl::RunRecords::read(&run).unwrap();
        lab::report::write(&run, cfg, &classes, &records).unwrap();
        std::fs::read_to_string(run.join("report.md")).unwrap()
    };
    assert!(!report(&cfg).contains("approximate"));
    cfg.judge.kind = judge::JudgeKind::Embedding;
    assert!(report(&cfg).contains("`embedding` (MiniLM sentence similarity): approximate"));
}

/// "What the model writes": each logged validation prompt with its step-0 response and the
/// last step's, side by side in a table whose cells keep `|` and line breaks from breaking it.
#[test]
fn the_report_sets_the_first_and_last_responses_side_by_side() {
    use arl::completions::Split;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), RUBRIC, VOCAB, "");
    cfg.run.steps = 6;
    let mut t = Trainer::new(cfg.clone(), Parts::from_config(&cfg).unwrap()).unwrap();
    let mut finished = t.run(|_| {}).unwrap();
    lab::report::write_run(&finished).unwrap();
    let report = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
    let section = report
        .split("## What the model writes")
        .nth(1)
        .unwrap_or_else(|| panic!("no section: {report}"));
    assert!(section.contains("| prompt | step 0 | score | step 6 | score |"));
    let val = finished.records.completions.iter();
    let val: Vec<_> = val.filter(|l| l.split == Split::Val).collect();
    assert_eq!(val.len(), 6, "3 prompts at the start and the end");
    for (a, b) in val[..3].iter().zip(&val[3..]) {
        assert_eq!((a.step, b.step, &a.prompt_id), (0, 6, &b.prompt_id));
        let row = format!(
            "| {} | {} | {:.3} | {} | {:.3} |",
            lab::report::cell(&a.prompt),
            lab::report::cell(&a.completion),
            a.overall.unwrap(),
            lab::report::cell(&b.completion),
            b.overall.unwrap()
        );
        assert!(section.contains(&row), "{row}\n{section}");
    }
    // a response with a `|` and a line break stays in its cell
    let lines = &mut finished.records.completions;
    let last = lines.iter().rposition(|l| l.split == Split::Val).unwrap();
    lines[last].completion = "a | b\nc".into();
    lab::report::write_run(&finished).unwrap();
    let report = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
    assert!(report.contains(r"| a \| b<br>c |"), "{report}");
}
