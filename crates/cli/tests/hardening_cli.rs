//! Hardening of the CLI (issue #15, items 1, 6, 8, 9), through the real binary as a user runs
//! it: closed pipes, runs that cannot succeed refused before step 1, errors that name the
//! right file and field, and `arlrr data split`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

mod common;
use common::{arlrr, configs, kill_when, sample, spawn_train};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `arlrr args` with stdout a pipe whose reading end is already closed, so the first
/// write fails with EPIPE whatever the timing.
fn with_closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    arlrr()
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Grades for every example of a data file: all criteria met.
fn all_met_grades(data: &Path, out: &Path) {
    let ds = rubric::load(data).unwrap();
    let text: String = ds
        .examples
        .iter()
        .map(|ex| {
            let met = vec![true; ex.criteria.len()];
            serde_json::json!({ "prompt_id": ex.id, "met": met }).to_string() + "\n"
        })
        .collect();
    std::fs::write(out, text).unwrap();
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = configs().join("data/tiny-val.jsonl");
    let grades = dir.path().join("grades.jsonl");
    all_met_grades(&data, &grades);
    let (data, grades) = (data.to_str().unwrap(), grades.to_str().unwrap());
    let sample = sample();
    let split = dir.path().join("split");
    let builtin = dir.path().join("builtin");
    let cases: Vec<Vec<&str>> = vec![
        vec!["data", "stats", sample.to_str().unwrap()],
        vec!["data", "stats", "--json", data],
        vec!["score", "--data", data, "--grades", grades],
        vec!["score", "--json", "--data", data, "--grades", grades],
        vec![
            "data",
            "split",
            data,
            "--out",
            split.to_str().unwrap(),
            "--val",
            "2",
            "--test",
            "2",
        ],
        vec!["data", "builtin", "--out", builtin.to_str().unwrap()],
    ];
    for args in cases {
        let out = with_closed_stdout(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).is_empty(),
            "{args:?} is quiet: {}",
            stderr(&out)
        );
    }
}

#[test]
fn score_refuses_an_empty_grades_file() {
    let dir = tempfile::tempdir().unwrap();
    let grades = dir.path().join("empty.jsonl");
    std::fs::write(&grades, "\n").unwrap();
    let data = configs().join("data/tiny-val.jsonl");
    let out = arlrr()
        .args(["score", "--data"])
        .arg(&data)
        .arg("--grades")
        .arg(&grades)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("empty.jsonl: field `(file)`: the file holds no grade lines"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "no NaN table");
}

/// `configs/example.toml` (absolute data paths) with `edit` applied, written to `dir`.
fn example_config(dir: &Path, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    let text = std::fs::read_to_string(configs().join("example.toml")).unwrap();
    let mut cfg: toml::Table = toml::from_str(&text).unwrap();
    for split in ["train", "val"] {
        let p = cfg["data"][split].as_str().unwrap().to_string();
        cfg["data"][split] = configs().join(p).display().to_string().into();
    }
    edit(&mut cfg);
    let path = dir.join("run.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

fn train(config: &Path, out: &Path) -> Output {
    arlrr()
        .args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn set(cfg: &mut toml::Table, section: &str, key: &str, v: impl Into<toml::Value>) {
    cfg[section]
        .as_table_mut()
        .unwrap()
        .insert(key.into(), v.into());
}

#[test]
fn numbers_that_cannot_train_are_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, &str, toml::Value, &str)> = vec![
        (
            "optim",
            "lr",
            f64::INFINITY.into(),
            "field `optim.lr`: must be a finite number, got inf",
        ),
        (
            "optim",
            "lr",
            f64::NAN.into(),
            "field `optim.lr`: must be a finite number",
        ),
        ("grpo", "kl_beta", (-0.1).into(), "field `grpo.kl_beta`"),
        (
            "grpo",
            "clip_eps",
            f64::INFINITY.into(),
            "field `grpo.clip_eps`",
        ),
        ("optim", "beta2", 1.0.into(), "field `optim.beta2`"),
        (
            "policy",
            "temperature",
            0.0.into(),
            "field `policy.temperature`",
        ),
        (
            "policy",
            "max_tokens",
            0.into(),
            "field `policy.max_tokens`",
        ),
        ("policy", "buckets", 0.into(), "field `policy.buckets`"),
        (
            "policy",
            "vocab",
            toml::Value::Array(vec![]),
            "field `policy.vocab`",
        ),
    ];
    for (section, key, value, want) in cases {
        let config = example_config(dir.path(), |c| set(c, section, key, value.clone()));
        let run = dir.path().join("run");
        let out = train(&config, &run);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{section}.{key} = {value}: {err}"
        );
        assert!(err.contains(want), "{section}.{key} = {value}: {err}");
        assert!(err.contains("run.toml"), "names the config file: {err}");
        assert!(!run.exists(), "{section}.{key} = {value}: nothing written");
    }
}

#[test]
fn a_refused_builtin_run_writes_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(configs().join("builtin-categorical.toml")).unwrap();
    // policy values the trainer cannot use: refused before data/ is written
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("temperature = 1.0", "temperature = -1.0"),
    )
    .unwrap();
    let folder = dir.path().join("not-a-run");
    std::fs::create_dir(&folder).unwrap();
    let out = train(&bad, &folder);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("field `policy.temperature`"),
        "{}",
        stderr(&out)
    );
    assert!(
        !folder.join("data").exists(),
        "no data/ in a folder that is not a run"
    );

    // a folder that holds a run: refused, its data untouched
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &text).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("data")).unwrap();
    std::fs::write(run.join("metrics.jsonl"), "").unwrap();
    std::fs::write(run.join("data/train.jsonl"), "mine\n").unwrap();
    let out = train(&good, &run);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already holds a run"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(run.join("data/train.jsonl")).unwrap(),
        "mine\n"
    );
    assert!(!run.join("data/validation.jsonl").exists());
}

#[test]
fn a_judge_that_cannot_grade_the_data_fails_before_step_one() {
    let dir = tempfile::tempdir().unwrap();
    // real HealthBench items: no criterion has a `check`, so the rule judge grades none
    let lines: Vec<String> = std::fs::read_to_string(sample())
        .unwrap()
        .lines()
        .take(6)
        .map(String::from)
        .collect();
    let (train_file, val_file) = (
        dir.path().join("hb-train.jsonl"),
        dir.path().join("hb-val.jsonl"),
    );
    std::fs::write(&train_file, lines[..3].join("\n")).unwrap();
    std::fs::write(&val_file, lines[3..].join("\n")).unwrap();
    let config = example_config(dir.path(), |c| {
        set(c, "data", "train", train_file.display().to_string());
        set(c, "data", "val", val_file.display().to_string());
    });
    let run = dir.path().join("run");
    let out = train(&config, &run);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("judge `rules-v1` cannot grade"), "{err}");
    assert!(err.contains("hb-train.jsonl (line 1, rubrics[0])"), "{err}");
    assert!(err.contains("not gradable"), "{err}");
    assert!(!run.join("metrics.jsonl").exists(), "no step ran");
}

#[test]
fn a_missing_api_key_names_the_variable_and_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = configs().join("healthbench-smollm2.toml");
    let out = arlrr()
        .env_remove("OPENAI_API_KEY")
        .args(["train", "--quiet", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("healthbench-smollm2.toml"), "{err}");
    assert!(
        err.contains("[judge]") && err.contains("`OPENAI_API_KEY`"),
        "{err}"
    );
    assert!(
        !err.contains("sqlite"),
        "the cache is not the judge config: {err}"
    );

    let data = configs().join("data/tiny-val.jsonl");
    let responses = dir.path().join("responses.jsonl");
    std::fs::write(&responses, r#"{"prompt_id":"val-0","completion":"Rest."}"#).unwrap();
    let out = arlrr()
        .env_remove("OPENAI_API_KEY")
        .args(["grade", "--data"])
        .arg(&data)
        .arg("--responses")
        .arg(&responses)
        .arg("--judge")
        .arg(configs().join("judges/openai.toml"))
        .arg("--out")
        .arg(dir.path().join("g.jsonl"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("judges/openai.toml") && err.contains("`OPENAI_API_KEY`"),
        "{err}"
    );
    assert!(!err.contains("sqlite"), "{err}");
}

#[test]
fn data_split_writes_the_files_the_config_expects() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("healthbench");
    let run = |seed: &str, val: &str, test: &str| {
        arlrr()
            .args(["data", "split"])
            .arg(sample())
            .arg("--out")
            .arg(&out_dir)
            .args(["--val", val, "--test", test, "--seed", seed])
            .output()
            .unwrap()
    };
    let out = run("3", "50", "50");
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("   400 ") && printed.contains("train.jsonl"),
        "{printed}"
    );
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
    let first: Vec<String> = ["train.jsonl", "val.jsonl", "test.jsonl"].map(read).into();
    let counts: Vec<usize> = first.iter().map(|t| t.lines().count()).collect();
    assert_eq!(counts, [400, 50, 50]);
    // the HealthBench config reads these names
    let cfg = std::fs::read_to_string(configs().join("healthbench-smollm2.toml")).unwrap();
    assert!(cfg.contains("train = \"../runs/healthbench/train.jsonl\""));
    assert!(cfg.contains("val = \"../runs/healthbench/val.jsonl\""));
    assert!(
        cfg.contains("arlrr data split"),
        "the header uses the command"
    );

    assert!(run("3", "50", "50").status.success());
    // plain asserts: a diff would print HealthBench items (canary data) into the log
    assert!(read("val.jsonl") == first[1], "same seed, same split");
    assert!(run("4", "50", "50").status.success());
    assert!(read("val.jsonl") != first[1], "another seed, another split");

    let out = run("0", "300", "200");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("leave no training examples"),
        "{}",
        stderr(&out)
    );
    let out = arlrr()
        .args(["data", "split"])
        .arg(sample())
        .args(["--val", "5"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap names the missing --out and --test"
    );
    assert!(stderr(&out).contains("--out"), "{}", stderr(&out));
}

/// A tiny warm-started transformer of `positions` positions answering in up to 12 tokens, on
/// the splits `train`, `val` and `test` (absolute paths); the warm start is cached in `dir`.
fn tiny_transformer(dir: &Path, positions: usize, splits: [&PathBuf; 3]) -> PathBuf {
    let [train, val, test] = splits.map(|p| p.display().to_string());
    let text = format!(
        r#"
[run]
steps = 1
checkpoint_every = 1

[data]
train = "{train}"
val = "{val}"
test = "{test}"

[policy]
kind = "transformer"
model = "warm-start"
max_new_tokens = 12

[warm_start]
responses_per_prompt = 1
vocab_size = 512
hidden_size = 16
intermediate_size = 32
layers = 1
heads = 2
max_positions = {positions}
steps = 1
batch_size = 4
cache = "{cache}"

[grpo]
prompts_per_step = 2
group_size = 2

[eval]
samples = 1
bootstrap = 10
"#,
        cache = dir.join("cache").display()
    );
    let path = dir.join("transformer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `n` examples with a checkable rubric; the one at `long` (0-based), if any, with a prompt
/// of 6,000 characters.
fn write_prompts(path: &Path, n: usize, long: Option<usize>) {
    let text: String = (0..n)
        .map(|i| {
            let (id, content) = if Some(i) == long {
                (
                    "p-long".to_string(),
                    "Please read my whole history. ".repeat(200),
                )
            } else {
                (
                    format!("p{i}"),
                    format!("I have a cold ({i}). What should I do?"),
                )
            };
            let ex = serde_json::json!({
                "prompt_id": id,
                "prompt": [{"role": "user", "content": content}],
                "rubrics": [{"criterion": "rest", "points": 2, "tags": ["axis:accuracy"],
                             "check": {"kind": "contains_any", "phrases": ["rest"]}}],
            });
            format!("{ex}\n")
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Issue #28, item 13: a prompt longer than the model can take with its `max_new_tokens` is
/// refused before step 1, in every split and in `eval`, naming the file, line and example and
/// what to change; nothing of the run is written.
#[test]
fn an_over_long_prompt_is_refused_before_step_one_in_every_split_and_in_eval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (train_f, val_f, test_f) = (
        d.join("train.jsonl"),
        d.join("val.jsonl"),
        d.join("test.jsonl"),
    );
    write_prompts(&train_f, 4, None);
    write_prompts(&val_f, 4, None);
    write_prompts(&test_f, 4, None);
    // the short prompts fit: a run of one step, the model `eval` scores below
    let good = tiny_transformer(d, 512, [&train_f, &val_f, &test_f]);
    let run = d.join("run");
    let out = train(&good, &run);
    assert!(out.status.success(), "{}", stderr(&out));

    let long = |name: &str, line: usize| {
        let p = d.join(name);
        write_prompts(&p, 4, Some(line - 1));
        p
    };
    let (train_l, val_l, test_l) = (
        long("train-long.jsonl", 2),
        long("val-long.jsonl", 3),
        long("test-long.jsonl", 4),
    );
    for (splits, want) in [
        ([&train_l, &val_f, &test_f], "train-long.jsonl:2"),
        ([&train_f, &val_l, &test_f], "val-long.jsonl:3"),
        ([&train_f, &val_f, &test_l], "test-long.jsonl:4"),
    ] {
        let config = tiny_transformer(d, 512, splits);
        let refused = d.join("refused");
        let out = train(&config, &refused);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{want}: {err}");
        assert_eq!(
            err.trim()
                .lines()
                .filter(|l| l.starts_with("error"))
                .count(),
            1,
            "{err}"
        );
        for part in [
            want,
            "`p-long`",
            "the model's 512",
            "max_new_tokens",
            "shorten",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
        assert!(
            !refused.join("metrics.jsonl").exists(),
            "no step ran: {err}"
        );
    }

    let out = arlrr()
        .args(["eval", "--samples", "1", "--model"])
        .arg(&run)
        .arg("--data")
        .arg(&val_l)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for part in [
        "val-long.jsonl:3",
        "`p-long`",
        "the model's 512",
        "max_new_tokens",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(out.stdout.is_empty(), "no table");
}

/// Issue #28, item 14: a run killed before its first checkpoint is no dead end. `--resume`
/// and a new run into the folder both say what to do; `--overwrite` starts it over, and
/// refuses a folder that holds checkpoints (that work is resumed, never thrown away).
#[test]
fn a_run_killed_before_its_first_checkpoint_can_start_over() {
    let dir = tempfile::tempdir().unwrap();
    // checkpoints only at the end of a run that does not end by itself
    let config = example_config(dir.path(), |c| {
        set(c, "run", "steps", 100_000_000);
        set(c, "run", "checkpoint_every", 0);
    });
    let run = dir.path().join("run");
    let mut child = spawn_train(&config, &run);
    let metrics = run.join("metrics.jsonl");
    let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    kill_when(&mut child, || lines(&metrics) >= 2);
    assert!(!run.join("checkpoints").exists());

    let resume = arlrr()
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let err = stderr(&resume);
    assert_eq!(resume.status.code(), Some(1), "{err}");
    for part in ["no checkpoint", "--overwrite", "delete"] {
        assert!(err.contains(part), "{part}: {err}");
    }
    let again = train(&config, &run);
    let err = stderr(&again);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--overwrite") && !err.contains("--resume"),
        "{err}"
    );

    // start over: the killed run's lines are gone, the new run's are there
    let over = |steps: &str| {
        arlrr()
            .args([
                "train",
                "--quiet",
                "--overwrite",
                "--steps",
                steps,
                "--config",
            ])
            .arg(&config)
            .arg("--out")
            .arg(&run)
            .output()
            .unwrap()
    };
    let out = over("2");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&metrics), 2);
    assert!(run.join("checkpoints/step-00000002").exists());

    // a run with a checkpoint is resumed, not overwritten
    let out = over("3");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--resume") && err.contains("checkpoint"),
        "{err}"
    );
    assert_eq!(lines(&metrics), 2, "untouched");
    assert!(run.join("checkpoints/step-00000002").exists());
}

/// Issue #28, item 15: counts of zero (and one seed, which gives no interval) are refused
/// before any work instead of reporting NaN or quietly using 1.
#[test]
fn zero_counts_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["--seeds", "0"], "--seeds"),
        (vec!["--seeds", "1"], "--seeds"),
        (
            vec!["--seeds", "2", "--test-samples", "0"],
            "--test-samples",
        ),
    ] {
        let out_dir = dir.path().join("cmp");
        let out = arlrr()
            .args(["compare", "--steps", "1"])
            .args(&args)
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("NaN") && out.stdout.is_empty(), "{args:?}");
        assert!(!out_dir.exists(), "{args:?}: nothing written");
    }

    let config = example_config(dir.path(), |c| set(c, "run", "steps", 1));
    let run = dir.path().join("run");
    let out = train(&config, &run);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = arlrr()
        .args(["eval", "--samples", "0", "--model"])
        .arg(&run)
        .arg("--data")
        .arg(configs().join("data/tiny-val.jsonl"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--samples"), "{err}");
    assert!(out.stdout.is_empty());
}

/// Issue #28, item 15: an error says its reason once ("X: X" was the cause chain printed
/// after a message that already held it).
#[test]
fn errors_say_their_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = configs().join("data/tiny-val.jsonl");
    let not_a_model = dir.path().join("folder");
    std::fs::create_dir(&not_a_model).unwrap();
    let missing = dir.path().join("missing");
    let os = |a: &[&std::path::Path]| {
        a.iter()
            .map(|p| p.as_os_str().to_owned())
            .collect::<Vec<_>>()
    };
    let (eval, generate) = (Path::new("eval"), Path::new("generate"));
    let (model, data_flag) = (Path::new("--model"), Path::new("--data"));
    let cases = [
        // (arguments, the reason, the path that must appear once)
        (
            os(&[eval, model, &missing, data_flag, &data]),
            "no such model file or folder",
            Some(&missing),
        ),
        (
            os(&[eval, model, &not_a_model, data_flag, &data]),
            "No such file or directory",
            Some(&not_a_model),
        ),
        (
            os(&[
                generate,
                Path::new("--prompt"),
                Path::new("hi"),
                model,
                &missing,
            ]),
            "no such model file or folder",
            None,
        ),
    ];
    for (args, reason, path) in cases {
        let out = arlrr().args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.matches(reason).count(), 1, "{args:?}: {err}");
        if let Some(path) = path {
            let path = path.display().to_string();
            assert_eq!(err.matches(&*path).count(), 1, "the path once: {err}");
        }
    }

    // a folder that cannot be created is named (the error was the OS's reason alone)
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let out = arlrr()
        .args(["data", "builtin", "--out"])
        .arg(blocker.join("data"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot create folder") && err.contains("blocker/data"),
        "{err}"
    );
}
