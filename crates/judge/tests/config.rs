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
