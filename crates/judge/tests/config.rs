//! Judge config files: parsing, defaults, relative cache paths, errors that name the file and
//! key, and `from_config` building each kind.

use judge::{from_config, GradeTask, JudgeConfig, JudgeKind};
use std::path::Path;

#[test]
fn parses_each_kind_and_resolves_the_cache_next_to_the_file() {
    let cfg = JudgeConfig::parse(
        "kind = \"rules\"\ncache = \"c/verdicts.sqlite\"\n",
        Path::new("/etc/arlrr/judge.toml"),
    )
    .unwrap();
    assert_eq!(cfg.kind, JudgeKind::Rules);
    assert_eq!(
        cfg.cache.as_deref(),
        Some(Path::new("/etc/arlrr/c/verdicts.sqlite"))
    );
    let cfg = JudgeConfig::parse(
        "kind = \"http\"\n[http]\nbase_url = \"http://127.0.0.1:8080/v1\"\nmodel = \"m\"\nconcurrency = 64\n",
        Path::new("j.toml"),
    )
    .unwrap();
    assert_eq!(cfg.http.unwrap().concurrency, 64);
    let cfg = JudgeConfig::parse(
        "kind = \"embedding\"\n[embedding]\nthreshold = 0.4\n",
        Path::new("j.toml"),
    )
    .unwrap();
    assert_eq!(cfg.embedding.unwrap().threshold, 0.4);
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let cases = [
        ("kind = \"oracle\"\n", "unknown variant `oracle`"),
        ("kind = \"rules\"\ncahce = \"x\"\n", "unknown field `cahce`"),
        ("kind = \"http\"\n", "[http] table"),
        (
            "kind = \"http\"\n[http]\nbase_url = \"ftp://x\"\nmodel = \"m\"\n",
            "base_url",
        ),
        (
            "kind = \"http\"\n[http]\nbase_url = \"http://x\"\nmodel = \"m\"\nretries = -1\n",
            "retries",
        ),
    ];
    for (text, needle) in cases {
        let err = JudgeConfig::parse(text, Path::new("conf/judge.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("conf/judge.toml") && err.contains(needle),
            "{needle:?} not in {err}"
        );
    }
    let err = JudgeConfig::load("/nonexistent/judge.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/judge.toml"), "{err}");
}

#[tokio::test]
async fn from_config_builds_a_cached_rule_judge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("judge.toml");
    std::fs::write(&path, "kind = \"rules\"\ncache = \"cache.sqlite\"\n").unwrap();
    let judge = from_config(&JudgeConfig::load(&path).unwrap()).unwrap();
    assert_eq!(judge.id(), "rules-v1");
    let ex = rubric::Example {
        id: "e".into(),
        prompt: vec![],
        criteria: vec![rubric::Criterion {
            text: "asks".into(),
            points: 1.0,
            tags: vec![],
            check: Some(rubric::Check::AsksQuestion {}),
        }],
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: 1,
    };
    let task = GradeTask {
        example: &ex,
        response: "Why?",
        criteria: None,
    };
    assert_eq!(judge.grade(&[task]).await[0][0].outcome, Ok(1.0));
    assert!(judge.grade(&[task]).await[0][0].cached);
    assert_eq!(
        (judge.stats().cache_hits, judge.stats().cache_misses),
        (1, 1)
    );
    assert!(dir.path().join("cache.sqlite").exists());
}

/// The judge configs shipped in `configs/judges/` parse, so the README's examples stay valid.
#[test]
fn shipped_judge_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/judges");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg = JudgeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        kinds.push(cfg.kind);
    }
    for kind in [JudgeKind::Rules, JudgeKind::Http, JudgeKind::Embedding] {
        assert!(kinds.contains(&kind), "no shipped config of kind {kind:?}");
    }
}

/// Every duration and size of a judge config is range-checked when the file is read, with an
/// error naming the file and the field: none may panic a conversion at start or at the first
/// retry (`Duration::from_secs_f64(1e30)`), or leave a semaphore or a counter to overflow.
#[test]
fn absurd_durations_and_sizes_are_refused_naming_the_file_and_field() {
    let http = "kind = \"http\"\n[http]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n";
    let mut cases: Vec<(String, &str)> = Vec::new();
    for field in [
        "timeout_secs",
        "backoff_initial_secs",
        "backoff_max_secs",
        "retry_after_max_secs",
    ] {
        for value in ["1e30", "0.0", "-1.0", "nan", "inf", "604801.0"] {
            cases.push((format!("{http}{field} = {value}\n"), field));
        }
    }
    cases.push((format!("{http}concurrency = 1000000000\n"), "concurrency"));
    cases.push((format!("{http}retries = 4294967295\n"), "retries"));
    let embedding = "kind = \"embedding\"\n[embedding]\n";
    cases.push((format!("{embedding}threshold = nan\n"), "threshold"));
    cases.push((format!("{embedding}batch_size = 0\n"), "batch_size"));
    cases.push((format!("{embedding}batch_size = 100000000\n"), "batch_size"));
    for (text, field) in cases {
        let err = JudgeConfig::parse(&text, Path::new("conf/judge.toml"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("judge config conf/judge.toml: ")
                && err.contains(&format!("`{field}`"))
                && !err.contains('\n'),
            "{text} -> {err}"
        );
    }
    // The largest accepted values build a judge without a panic.
    let cfg = JudgeConfig::parse(
        &format!("{http}timeout_secs = 604800\nbackoff_max_secs = 604800\nconcurrency = 4096\n"),
        Path::new("j.toml"),
    )
    .unwrap();
    from_config(&cfg).unwrap();
}

/// A cache file that cannot be created is the cache's failure, in the OS's words, with its
/// path said once: not a fault of the judge config.
#[test]
fn a_cache_that_cannot_be_created_says_so_without_blaming_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    for (cache, os_error) in [
        (file.join("cache.sqlite"), "is a file, not a folder"),
        (
            file.join("sub/cache.sqlite"),
            "Not a directory (os error 20)",
        ),
        (dir.path().to_path_buf(), "Is a directory (os error 21)"),
    ] {
        let mut cfg = JudgeConfig::of_kind(JudgeKind::Rules);
        cfg.cache = Some(cache.clone());
        let err = from_config(&cfg).map(|_| ()).unwrap_err().to_string();
        let path = cache.display().to_string();
        assert!(
            err.starts_with(&format!("judge cache {path}: ")) && err.contains(os_error),
            "{err}"
        );
        assert_eq!(err.matches(&path).count(), 1, "the path once: {err}");
        assert!(!err.contains("judge config"), "{err}");
    }
}

/// The HTTP judge's rate limits: read under their own names and verl's (`max_rpm`,
/// `max_tpm`), absent = no limit, and range-checked when the file is read, the file and the
/// field named.
#[test]
fn rate_limits_are_read_under_both_names_and_range_checked() {
    let http = "kind = \"http\"\n[http]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n";
    let limits = |text: &str| {
        let h = JudgeConfig::parse(text, Path::new("j.toml"))
            .unwrap()
            .http
            .unwrap();
        (h.max_requests_per_minute, h.max_tokens_per_minute)
    };
    assert_eq!(limits(http), (None, None));
    assert_eq!(
        limits(&format!(
            "{http}max_requests_per_minute = 500\nmax_tokens_per_minute = 100000\n"
        )),
        (Some(500), Some(100_000))
    );
    assert_eq!(
        limits(&format!("{http}max_rpm = 500\nmax_tpm = 100000\n")),
        (Some(500), Some(100_000))
    );
    for (line, field) in [
        ("max_requests_per_minute = 0", "max_requests_per_minute"),
        ("max_rpm = 0", "max_requests_per_minute"),
        (
            "max_requests_per_minute = 1000001",
            "max_requests_per_minute",
        ),
        ("max_tokens_per_minute = 0", "max_tokens_per_minute"),
        ("max_tpm = 1000000001", "max_tokens_per_minute"),
        // not above the reply cap (`max_tokens`, 512 by default): no request could ever fit
        ("max_tokens_per_minute = 512", "max_tokens_per_minute"),
    ] {
        let text = format!("{http}{line}\n");
        let err = JudgeConfig::parse(&text, Path::new("conf/judge.toml"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("judge config conf/judge.toml: [http] ")
                && err.contains(&format!("`{field}`"))
                && !err.contains('\n'),
            "{text} -> {err}"
        );
    }
    // One limit under both names is refused rather than one silently winning.
    assert!(JudgeConfig::parse(
        &format!("{http}max_rpm = 5\nmax_requests_per_minute = 6\n"),
        Path::new("j.toml")
    )
    .is_err());
    // The largest accepted values build a judge without a panic.
    let cfg = JudgeConfig::parse(
        &format!("{http}max_rpm = 1000000\nmax_tpm = 1000000000\n"),
        Path::new("j.toml"),
    )
    .unwrap();
    from_config(&cfg).unwrap();
}
