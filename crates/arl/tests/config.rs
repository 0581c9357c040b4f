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
fn variant_knobs_are_validated_with_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "");
    let err = |extra: &str| {
        let cfg = TrainConfig::from_toml(&format!("{base}{extra}")).unwrap();
        cfg.validate().unwrap_err().to_string()
    };
    for bad in ["0.0", "-0.1"] {
        let e = err(&format!("[phases]\nguard_drop = {bad}"));
        assert!(e.contains("phases.guard_drop") && !e.contains('\n'), "{e}");
    }
    for bad in ["0.0", "1.5", "-1.0"] {
        let e = err(&format!("[objective]\nanchor = {bad}"));
        assert!(e.contains("objective.anchor") && !e.contains('\n'), "{e}");
    }
    let e = err("[phases]\nkeep_probe = true\nguard_drop = 0.05");
    assert!(
        e.contains("phases.keep_probe") && e.contains("phases.guard_drop"),
        "{e}"
    );
    let e = err("[phases]\nkeep_probe = true\nprobe_steps = 3\nlength = 2");
    assert!(e.contains("phases.keep_probe") && e.contains("(3)"), "{e}");
    let e = err("[objective]\nanchor = 0.5\ngrade_active_class_only = true");
    assert!(
        e.contains("objective.anchor") && e.contains("objective.grade_active_class_only"),
        "{e}"
    );
    let ok =
        "[objective]\nanchor = 0.5\n[phases]\nguard_drop = 0.05\npaired = true\nskip_flat = true";
    let cfg = TrainConfig::from_toml(&format!("{base}{ok}")).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        (
            cfg.objective.anchor,
            cfg.phases.guard_drop,
            cfg.phases.paired
        ),
        (0.5, Some(0.05), true)
    );
    assert_eq!(
        cfg,
        TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap()
    );
    // off by default, and then absent from the written config
    let plain = TrainConfig::from_toml(&base).unwrap();
    let text = plain.to_toml().unwrap();
    assert!(
        !["anchor", "guard_drop", "paired", "skip_flat", "keep_probe"]
            .iter()
            .any(|f| text.contains(f)),
        "{text}"
    );
}

#[test]
fn end_flat_and_resample_flat_are_validated_with_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "");
    let parse = |extra: &str| TrainConfig::from_toml(&format!("{base}{extra}"));
    let err = |extra: &str| parse(extra).unwrap().validate().unwrap_err().to_string();
    for bad in ["0.0", "1.5", "-0.2"] {
        let e = err(&format!("[phases]\nend_flat = {{ share = {bad} }}"));
        assert!(
            e.contains("phases.end_flat.share") && !e.contains('\n'),
            "{e}"
        );
    }
    let e = err("[phases]\nend_flat = { share = 0.75, window = 0 }");
    assert!(
        e.contains("phases.end_flat.window") && !e.contains('\n'),
        "{e}"
    );
    let e = parse("[phases]\nend_flat = { share = 0.75, windows = 2 }").unwrap_err();
    assert!(e.to_string().contains("windows"), "{e}");
    let toml = base.replace(
        "group_size = 8",
        "group_size = 8\nresample_flat = { max_rounds = 0 }",
    );
    let e = TrainConfig::from_toml(&toml)
        .unwrap()
        .validate()
        .unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("grpo.resample_flat.max_rounds") && !e.contains('\n'),
        "{e}"
    );
    // set: the window defaults to 2, and both round-trip through the written config
    let toml = base.replace(
        "group_size = 8",
        "group_size = 8\nresample_flat = { max_rounds = 3 }",
    );
    let cfg =
        TrainConfig::from_toml(&format!("{toml}[phases]\nend_flat = {{ share = 0.75 }}")).unwrap();
    cfg.validate().unwrap();
    let f = cfg.phases.end_flat.unwrap();
    assert_eq!((f.share, f.window), (0.75, 2));
    assert_eq!(cfg.grpo.resample_flat.unwrap().max_rounds, 3);
    assert_eq!(
        cfg,
        TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap()
    );
    // off by default, and then absent from the written config
    let text = parse("").unwrap().to_toml().unwrap();
    assert!(
        !text.contains("end_flat") && !text.contains("resample_flat"),
        "{text}"
    );
}

#[test]
fn builtin_task_knobs_are_validated_and_reach_the_written_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "");
    let with = |knobs: &str| {
        TrainConfig::from_toml(&base.replace("[data]\n", &format!("[data]\n{knobs}\n"))).unwrap()
    };
    let err = with("builtin_task = { conflict = 1.5 }")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("data.builtin_task.conflict"), "{err}");
    let mut cfg =
        with("builtin = true\nbuiltin_task = { conflict = 0.0, shape = \"healthbench\" }");
    cfg.run.dir = dir.path().join("run");
    arl::setup::prepare(&mut cfg, |_| {}).unwrap();
    let train = std::fs::read_to_string(&cfg.data.train).unwrap();
    assert!(train.contains("axis:accuracy") && !train.contains("word_count"));
}

#[test]
fn the_example_config_parses_and_round_trips() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/example.toml");
    let cfg = TrainConfig::from_file(&path).unwrap();
    let again = TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap();
    assert_eq!(cfg, again);
}

#[test]
fn every_shipped_run_config_parses_and_round_trips() {
    // run configs round-trip; study grids: crates/lab/tests/study.rs
    let (runs, _) = common::shipped_configs();
    for path in &runs {
        let cfg = TrainConfig::from_file(path).unwrap_or_else(|e| panic!("{e:#}"));
        let again = TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(cfg, again, "{}", path.display());
    }
    assert!(runs.len() >= 5, "{} configs", runs.len())
}

#[test]
fn the_documented_warm_start_fields_are_the_real_ones() {
    // example.toml documents [warm_start] in comments; uncommented, they must parse as is
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("# [warm_start]").unwrap();
    let section: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter(|l| !l.starts_with("#  ") && !l.contains("cache ="))
        .map(|l| format!("{}\n", l.trim_start_matches("# ")))
        .collect();
    let table: toml::Table = toml::from_str(&section).unwrap_or_else(|e| panic!("{e}"));
    let mut w: arl::sft::WarmStartConfig = table["warm_start"].clone().try_into().unwrap();
    // the real-model fields are documented with example values; the rest with the defaults
    assert_eq!(w.base.take(), Some("smollm2".into()), "{section}");
    assert!(w.lora.take().is_some(), "{section}");
    assert_eq!(w, arl::sft::WarmStartConfig::default(), "{section}");
}

#[test]
fn a_warm_start_of_an_unknown_base_or_lora_target_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "");
    let (head, rest) = base.split_once("kind = \"categorical\"").unwrap();
    let (_, tail) = rest.split_once("max_tokens = 6").unwrap();
    let with = |section: &str| {
        let toml = format!(
            "{head}kind = \"transformer\"\nmodel = \"warm-start\"{tail}\n[warm_start]\n{section}"
        );
        let cfg = TrainConfig::from_toml(&toml).unwrap();
        cfg.validate().unwrap_err().to_string()
    };
    let e = with("base = \"llama-7b\"");
    assert!(
        e.contains("warm_start.base") && e.contains("llama-7b") && !e.contains('\n'),
        "{e}"
    );
    let e = with(
        "base = \"smollm2\"\nlora = { rank = 8, alpha = 16.0, targets = [\"q\", \"c_attn\"] }",
    );
    assert!(
        e.contains("warm_start.lora.targets") && e.contains("c_attn") && !e.contains('\n'),
        "{e}"
    );
    let e = with("lora = { rank = 8, alpha = 16.0, targets = [\"q\"] }");
    assert!(e.contains("warm_start.lora") && e.contains("base"), "{e}");
    let e = with("base = \"smollm2\"\nlora = { rank = 0, alpha = 16.0, targets = [\"q\"] }");
    assert!(e.contains("warm_start.lora") && e.contains("rank"), "{e}");
}

#[test]
fn sampling_precision_and_truncated_is_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "");
    let (head, rest) = base.split_once("kind = \"categorical\"").unwrap();
    let (_, tail) = rest.split_once("max_tokens = 6").unwrap();
    let transformer = format!(
        "{head}kind = \"transformer\"\nmodel = \"smollm2\"\nsample_precision = \"fp8\"{tail}"
    );
    let e = TrainConfig::from_toml(&transformer)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sample_precision")
            && e.contains("fp8")
            && e.contains("f32")
            && e.contains("bf16"),
        "{e}"
    );
    assert!(!e.trim().contains('\n') || e.lines().count() <= 6, "{e}");
    let e = TrainConfig::from_toml(
        &transformer.replace("sample_precision = \"fp8\"", "train_precision = \"half\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("train_precision") && e.contains("half") && e.contains("f32, bf16"),
        "{e}"
    );
    // int8 samples but does not train
    let e = TrainConfig::from_toml(
        &transformer.replace("sample_precision = \"fp8\"", "train_precision = \"int8\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("train_precision") && e.contains("int8") && e.contains("sampling precision"),
        "{e}"
    );
    for ok in [
        transformer.replace("\"fp8\"", "\"bf16\"\ntrain_precision = \"bf16\""),
        transformer.replace("\"fp8\"", "\"int8\""),
    ] {
        let cfg = TrainConfig::from_toml(&ok).unwrap();
        assert_eq!(
            cfg,
            TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap()
        );
    }
    for bad in ["0.0", "-1.0"] {
        let cfg = TrainConfig::from_toml(&base.replace(
            "group_size = 8",
            &format!("group_size = 8\ntruncated_is_cap = {bad}"),
        ))
        .unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("grpo.truncated_is_cap") && !e.contains('\n'),
            "{e}"
        );
    }
    // both off by default, and then absent from the written config
    let text = TrainConfig::from_toml(&base).unwrap().to_toml().unwrap();
    assert!(
        !text.contains("sample_precision") && !text.contains("truncated_is"),
        "{text}"
    );
}

#[test]
fn subsample_is_a_share_or_one_class_and_only_for_scalarized() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, "");
    let parse = |extra: &str| TrainConfig::from_toml(&format!("{base}{extra}"));
    let scalarized = |value: &str| {
        parse(&format!(
            "[objective]\nkind = \"scalarized\"\nsubsample = {value}"
        ))
    };
    for (value, want) in [
        ("\"one_class\"", arl::Subsample::OneClass),
        ("0.25", arl::Subsample::Share(0.25)),
        ("1", arl::Subsample::Share(1.0)),
    ] {
        let cfg = scalarized(value).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.objective.subsample, Some(want));
        let text = cfg.to_toml().unwrap();
        assert!(text.contains("subsample = "), "{text}");
        assert_eq!(cfg, TrainConfig::from_toml(&text).unwrap(), "round trip");
    }
    assert_eq!(arl::Subsample::OneClass.share(5), 0.2);
    for bad in ["0.0", "1.5", "-0.2"] {
        let e = scalarized(bad).unwrap().validate().unwrap_err().to_string();
        assert!(
            e.contains("objective.subsample") && e.contains("(0, 1]"),
            "{bad}: {e}"
        );
    }
    for bad in ["\"half\"", "true"] {
        let e = scalarized(bad).unwrap_err().to_string();
        assert!(e.contains("objective.subsample"), "{bad}: {e}");
    }
    for kind in ["alternating", "gdpo"] {
        let cfg = parse(&format!(
            "[objective]\nkind = \"{kind}\"\nsubsample = \"one_class\""
        ))
        .unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("objective.subsample") && e.contains("scalarized"),
            "{kind}: {e}"
        );
    }
    // absent by default, and then absent from the written config
    let plain = parse("[objective]\nkind = \"scalarized\"").unwrap();
    assert_eq!(plain.objective.subsample, None);
    assert!(!plain.to_toml().unwrap().contains("subsample"));
}

#[test]
fn the_shuffled_selector_and_the_coarse_class_mapping_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let coarse = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/classes/builtin-coarse.toml");
    let extra =
        "[objective]\nkind = \"alternating\"\n[phases]\nselector = \"shuffled\"\nlength = 3";
    let toml = common::base_toml(dir.path(), common::RUBRIC, common::VOCAB, extra).replace(
        "[data]\n",
        &format!(
            "[data]\nclasses = {{ scheme = {{ mapping = \"{}\" }} }}\n",
            coarse.display()
        ),
    );
    let cfg = TrainConfig::from_toml(&toml).unwrap();
    assert_eq!(cfg.phases.selector, schedule::SelectorKind::Shuffled);
    assert!(!cfg.phases.selector.measures());
    assert_eq!(
        cfg.data.classes.scheme,
        rubric::ClassScheme::Mapping(coarse.clone())
    );
    cfg.validate().unwrap();
    let text = cfg.to_toml().unwrap();
    assert!(text.contains("selector = \"shuffled\""), "{text}");
    assert_eq!(TrainConfig::from_toml(&text).unwrap(), cfg);
    // the mapping puts every criterion of the built-in task, both shapes, in one of two classes
    let spec = rubric::ClassSpec {
        scheme: rubric::ClassScheme::Mapping(coarse),
        catch_all: None,
    };
    for shape in [
        rubric::builtin::Shape::Builtin,
        rubric::builtin::Shape::HealthBench,
    ] {
        let splits = rubric::builtin::generate(rubric::builtin::BuiltinSpec {
            shape,
            ..Default::default()
        })
        .unwrap();
        let classes = rubric::MetaClasses::new(&spec, &[]).unwrap();
        assert_eq!(classes.names, ["content", "delivery"]);
        let mut used = [0usize; 2];
        for ex in [&splits.train, &splits.validation, &splits.test]
            .into_iter()
            .flatten()
        {
            for i in 0..ex.criteria.len() {
                used[classes
                    .class_of(ex, i)
                    .expect("every criterion has a class")] += 1;
            }
        }
        assert!(used.iter().all(|&n| n > 0), "{shape:?}: {used:?}");
    }
}
