//! `arlrr study` through the real binary: a small grid (categorical policy, 2 seeds, 2
//! regimes) writes the regime map; killed mid-way and run again, it finishes without redoing
//! the runs that had finished, and a run made by other code is trained again, saying why; a bad
//! grid is a one-line error naming the file and field.

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
            "[study]\nbase = {:?}\nmethods = [\"alternating:lookahead\", \"scalarized\"]\nseeds = 2\nsteps = 60\nlrs = [0.05, 0.1]\ntune_seeds = 1\nwiden = 0\n\n[regimes]\nnoise = [\"exact\", \"healthbench-gpt41\"]\n",
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
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains("trained 0 run(s) (0 replacing runs made by other code), reused 12"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(summaries(&out), after);

    // runs made by other code (another code version, or none recorded) are trained again from
    // the start, and the study says why; the others are reused
    let code = |p: &Path| p.parent().unwrap().join("study-code.txt");
    let this_code = std::fs::read_to_string(code(&after[0].0)).unwrap();
    assert_eq!(this_code.len(), 16, "{this_code}");
    std::fs::write(code(&after[0].0), "0123456789abcdef").unwrap();
    std::fs::remove_file(code(&after[1].0)).unwrap();
    let fourth = args("2").output().unwrap();
    ok(&fourth);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&fourth.stdout),
        String::from_utf8_lossy(&fourth.stderr),
    );
    assert!(
        stdout.contains("trained 2 run(s) (2 replacing runs made by other code), reused 10"),
        "{stdout}"
    );
    for was in ["0123456789abcdef", "unrecorded"] {
        let why = format!(
            "trained again: the folder's run was made by code {was}, this is code {this_code}"
        );
        assert!(stderr.contains(&why), "{why}\n{stderr}");
    }
    let fifth = summaries(&out);
    for (i, (a, b)) in after.iter().zip(&fifth).enumerate() {
        let figures = |s: &str| {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            (v["val_final"].clone(), v["test_final"].clone())
        };
        assert_eq!(figures(&a.2), figures(&b.2), "{}", a.0.display());
        assert_eq!(
            a.1 != b.1,
            i < 2,
            "{} retrained: {}",
            a.0.display(),
            a.1 != b.1
        );
        assert_eq!(std::fs::read_to_string(code(&b.0)).unwrap(), this_code);
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains(&format!("(code {this_code})")), "{report}");
    assert!(report.contains("trained 2 run(s) (2 of them replacing runs made by other code)"));
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
