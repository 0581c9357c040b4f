//! `arlrr compare`'s statistics: exact Student t quantiles against printed tables, the Welch
//! interval against R's `t.test`, the exact permutation test on cases counted by hand, and the
//! variance-contraction table against a recomputation from the runs' `metrics.jsonl`.

#[path = "../../arl/tests/common.rs"]
mod common;

use common::*;
use lab::compare::{self, diff_ci95, permutation_p, t975, CompareSpec, Method};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn t_quantiles_match_the_tables() {
    // t_{0.975} as printed in statistics tables (3 decimals)
    let table = [
        (1.0, 12.706),
        (2.0, 4.303),
        (5.0, 2.571),
        (10.0, 2.228),
        (30.0, 2.042),
        (31.0, 2.040),
        (60.0, 2.000),
        (120.0, 1.980),
        (1000.0, 1.962),
    ];
    for (df, want) in table {
        let got = t975(df);
        assert!(
            (got - want).abs() < 5e-4,
            "t975({df}) = {got}, table {want}"
        );
    }
    // decreasing in df toward the normal quantile, smooth where the method changes (1e4)
    let mut last = f64::INFINITY;
    for df in [
        31.0,
        32.0,
        1e3,
        9999.0,
        1e4,
        10001.0,
        1e5,
        1e6,
        1e9,
        f64::INFINITY,
    ] {
        let t = t975(df);
        assert!(t < last, "t975({df}) = {t}");
        last = t;
    }
    assert!((t975(1e4) - t975(1e4 + 1e-3)).abs() < 1e-9);
    assert!((t975(1e6) - 1.959_966).abs() < 1e-6, "{}", t975(1e6));
    assert!((t975(f64::INFINITY) - 1.959_964).abs() < 1e-6);
    assert!(t975(0.0).is_nan());
}

/// R: `t.test(extra ~ group, data = sleep)`: Welch, df = 17.776,
/// 95% CI [-3.3654832, 0.2054832] around a difference of -1.58.
#[test]
fn welch_interval_matches_r() {
    let g1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0];
    let g2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4];
    let (d, half) = diff_ci95(&g1, &g2);
    assert!((d + 1.58).abs() < 1e-12, "{d}");
    assert!((d - half + 3.365_483_2).abs() < 1e-6, "{}", d - half);
    assert!((d + half - 0.205_483_2).abs() < 1e-6, "{}", d + half);
}

#[test]
fn permutation_p_counts_relabelings() {
    // {1,2} vs {3,4}: of the C(4,2) = 6 splits, {1,2}|{3,4} and {3,4}|{1,2} are as extreme
    assert!((permutation_p(&[1.0, 2.0], &[3.0, 4.0]) - 2.0 / 6.0).abs() < 1e-12);
    // {1,2,3} vs {2,3,4} (pooled 1,2,2,3,3,4; |difference| = 1): a split reaches it when
    // its first group sums to at most 6 or at least 9: {1,2,2}, {1,2,3} ×4, and the mirror
    // images, 10 of the 20 splits
    assert!((permutation_p(&[1.0, 2.0, 3.0], &[2.0, 3.0, 4.0]) - 0.5).abs() < 1e-12);
    // symmetric in its arguments, 1 for identical groups
    assert_eq!(
        permutation_p(&[0.3, 0.9, 0.1], &[0.5, 0.7]),
        permutation_p(&[0.5, 0.7], &[0.3, 0.9, 0.1])
    );
    assert_eq!(permutation_p(&[0.5, 0.5], &[0.5, 0.5]), 1.0);
    // 5 seeds each, fully separated: 2 / C(10,5)
    let a = [1.0, 1.1, 1.2, 1.3, 1.4];
    let b = [0.0, 0.1, 0.2, 0.3, 0.4];
    assert!((permutation_p(&a, &b) - 2.0 / 252.0).abs() < 1e-12);
    assert!(permutation_p(&[], &b).is_nan());
    assert!(
        permutation_p(&[0.0; 13], &[1.0; 12]).is_nan(),
        "over 24 values"
    );
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean over the steps of a run of the `group_std` at `pointer` (steps without one left out).
fn run_mean(metrics: &[Value], pointer: &str) -> Option<f64> {
    let v: Vec<f64> = metrics
        .iter()
        .filter_map(|m| m.pointer(pointer)?.as_f64())
        .collect();
    (!v.is_empty()).then(|| mean(&v))
}

#[test]
fn variance_table_recomputes_from_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = config(dir.path(), RUBRIC, VOCAB, "");
    base.run.steps = 6;
    base.eval.samples = 2;
    base.phases.length = 2;
    let out = dir.path().join("cmp");
    let spec = CompareSpec {
        base,
        test: dir.path().join("val.jsonl"),
        methods: ["scalarized", "gdpo", "alternating:round_robin"]
            .iter()
            .map(|m| Method::parse(m).unwrap())
            .collect(),
        seeds: vec![0, 1],
        out: out.clone(),
        test_samples: 2,
    };
    std::fs::create_dir_all(&out).unwrap();
    let results = compare::run(&spec, |_, _| {}).unwrap();
    let classes = arl::setup::load_task(&spec.base).unwrap().classes.names;
    compare::write_report(&out, &spec, &results, &classes).unwrap();

    // the table as printed: method -> column -> cell
    let report = std::fs::read_to_string(out.join("compare.md")).unwrap();
    let section = report
        .split("## Variance contraction")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    let mut rows = section.lines().filter(|l| l.starts_with('|'));
    let cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let header = cells(rows.next().unwrap());
    assert_eq!(header[..2], ["method", "scalarized reward"]);
    assert_eq!(header[2..], classes[..]);
    let table: BTreeMap<String, Vec<String>> = rows
        .skip(1) // |---|
        .map(|l| {
            let c = cells(l);
            (c[0].clone(), c[1..].to_vec())
        })
        .collect();
    assert_eq!(table.len(), 3, "{section}");

    // the same numbers from the run directories
    let mut nonzero = 0;
    for m in &spec.methods {
        let runs: Vec<Vec<Value>> = spec
            .seeds
            .iter()
            .map(|s| {
                let dir = out
                    .join(m.name().replace(':', "-"))
                    .join(format!("seed-{s}"));
                let lines = read_lines(&dir.join("metrics.jsonl"));
                assert_eq!(lines.len(), 6);
                lines
            })
            .collect();
        let row = &table[&m.name()];
        let mut want: Vec<Option<f64>> = Vec::new();
        let per_seed: Vec<f64> = runs
            .iter()
            .map(|r| run_mean(r, "/overall/group_std").unwrap_or(0.0))
            .collect();
        want.push(Some(mean(&per_seed)));
        for c in &classes {
            let per_seed: Vec<f64> = runs
                .iter()
                .filter_map(|r| run_mean(r, &format!("/classes/{c}/group_std")))
                .collect();
            want.push((!per_seed.is_empty()).then(|| mean(&per_seed)));
        }
        for ((cell, want), col) in row.iter().zip(&want).zip(&header[1..]) {
            match want {
                None => assert_eq!(cell, "–", "{} / {col}", m.name()),
                Some(w) => {
                    let got: f64 = cell.parse().unwrap_or_else(|_| panic!("`{cell}`"));
                    assert!(
                        (got - w).abs() <= 0.5e-4 + 1e-12,
                        "{} / {col}: table {got}, metrics {w:.6}",
                        m.name()
                    );
                    nonzero += (*w > 1e-3) as usize;
                }
            }
        }
    }
    assert!(nonzero >= 6, "the groups had spread:\n{section}");
}
