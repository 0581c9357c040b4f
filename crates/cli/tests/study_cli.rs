//! `arlrr study` through the real binary: a small grid (categorical policy, 2 seeds, 2
//! regimes) writes the regime map; killed mid-way and run again, it finishes without redoing
//! the runs that had finished; a bad grid is a one-line error naming the file and field.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{arlrr, configs, ok};

fn base_config() -> PathBuf {
    configs().join("builtin-categorical.toml")
}

fn summaries(dir: &Path) -> Vec<(PathBuf, SystemTime, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "summary.json") {
                let modified = e.metadata().unwrap().modified().unwrap();
                out.push((p.clone(), modified, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_killed_study_resumes_without_redoing_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "[study]\nbase = {:?}\nmethods = [\"alternating:lookahead\", \"scalarized\"]\nseeds = 2\nsteps = 60\nlrs = [0.05, 0.1]\ntune_seeds = 1\n\n[regimes]\nnoise = [\"exact\", \"healthbench-gpt41\"]\n",
            base_config()
        ),
    )
    .unwrap();
    let out = dir.path().join("study");
    let args = |jobs: &str| {
        let mut c = arlrr();
        c.args(["study", "--grid"])
            .arg(&grid)
            .arg("--out")
            .arg(&out)
            .args(["--jobs", jobs]);
        c
    };

    // first attempt: killed once some runs have finished
    let mut child = args("1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while summaries(&out).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no run finished in 5 min"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the study ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = summaries(&out);
    assert!(!out.join("report.md").exists());

    // second attempt: finishes, reusing every run that had finished
    let done = args("2").output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    ok(&done);
    let after = summaries(&out);
    // 2 regimes x 2 methods: 2 rates on seed 0, then seed 1 at the kept rate
    assert_eq!(after.len(), 12, "{stdout}");
    for b in &before {
        let a = after
            .iter()
            .find(|a| a.0 == b.0)
            .expect("a finished run vanished");
        assert_eq!((a.1, &a.2), (b.1, &b.2), "{} was redone", b.0.display());
    }
    let reused: usize = stdout
        .split("reused ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reuse count in: {stdout}"));
    assert!(reused >= before.len(), "{stdout}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let map = report.find("## Regime map").expect("no regime map");
    assert!(map < report.find("## Efficiency per judge verdict").unwrap());
    for row in ["| noise=exact |", "| noise=healthbench-gpt41 |"] {
        assert!(report.contains(row), "{report}");
    }
    assert!(out.join("plots/noise-exact.svg").exists());

    // a third run changes nothing and trains nothing
    let again = args("2").output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("trained 0 run(s), reused 12"));
    assert_eq!(summaries(&out), after);
}

#[test]
fn a_bad_grid_is_one_line_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "[study]\nbase = {:?}\nmethods = [\"scalarized\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n\n[regimes]\nnoise = [\"exact\"]\njudge_temperature = [0.5]\n",
            base_config()
        ),
    )
    .unwrap();
    let out = arlrr()
        .args(["study", "--grid"])
        .arg(&grid)
        .arg("--out")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("grid.toml: field `regimes.judge_temperature`: no such regime key"),
        "{err}"
    );
    assert!(
        !dir.path().join("s").exists(),
        "nothing is written for a bad grid"
    );
}
