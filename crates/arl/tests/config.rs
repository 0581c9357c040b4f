mod common;

use arl::TrainConfig;

#[test]
fn unknown_fields_are_rejected_with_their_name_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let toml = common::base_toml(
        dir.path(),
        common::RUBRIC,
        common::VOCAB,
        "[grpo_typo]\nx = 1",
    );
    let err = TrainConfig::from_toml(&toml).unwrap_err().to_string();
    assert!(err.contains("grpo_typo") && err.contains("line"), "{err}");
    let toml = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "")
        .replace("group_size = 8", "group_size = 8\nclip_epsilon = 0.1");
    let err = TrainConfig::from_toml(&toml).unwrap_err().to_string();
    assert!(
        err.contains("clip_epsilon") && err.contains("grpo"),
        "{err}"
    );
}

#[test]
fn bad_values_name_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let toml = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "")
        .replace("group_size = 8", "group_size = 1");
    let cfg = TrainConfig::from_toml(&toml).unwrap();
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("grpo.group_size"));
}

#[test]
fn the_example_config_parses_and_round_trips() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/example.toml");
    let cfg = TrainConfig::from_file(&path).unwrap();
    let again = TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap();
    assert_eq!(cfg, again);
}
