//! Loader hardening (issue #15, items 2, 7, 8, 9): no silently dropped records, no infinite
//! point sums, BOMs and bad bytes handled with a line, and the seeded stratified split.

use rubric::split::{split, write_split};
use rubric::{load, read_grades, DataError};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

fn record(id: &str, theme: &str, points: &str) -> String {
    format!(
        r#"{{"prompt":[{{"role":"user","content":"hi"}}],"rubrics":[{{"criterion":"says hello","points":{points},"tags":["axis:accuracy"],"check":{{"kind":"contains_any","phrases":["hello"]}}}},{{"criterion":"says bye","points":{points},"tags":["axis:completeness"],"check":{{"kind":"contains_any","phrases":["bye"]}}}}],"example_tags":["theme:{theme}"],"prompt_id":"{id}"}}"#
    )
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn load_err(dir: &Path, text: &str) -> DataError {
    load(write(dir, "d.jsonl", text)).unwrap_err()
}

#[test]
fn a_line_with_more_than_one_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        record("a", "t", "1"),
        record("b", "t", "1"),
        record("c", "t", "1"),
    );
    for bad in [
        format!("{b} {c}"),
        format!("{b}{c}"),
        format!("{b},"),
        format!("{b} garbage"),
    ] {
        let err = load_err(dir.path(), &format!("{a}\n{bad}\n"));
        assert_eq!((err.line, err.field.as_str()), (2, "(json)"), "{err}");
        assert!(err.to_string().contains("trailing characters"), "{err}");
    }
    // the detection of the format reads the first line: the same holds there
    let err = load_err(dir.path(), &format!("{a} {b}\n{c}\n"));
    assert_eq!(err.line, 1, "{err}");
    assert_eq!(
        load(write(dir.path(), "ok.jsonl", format!("{a}  \n{b}\n")))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_grades_line_with_two_rows_or_stray_text_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = load(write(dir.path(), "d.jsonl", record("a", "t", "1"))).unwrap();
    let row = r#"{"prompt_id":"a","met":[true,false]}"#;
    for bad in [format!("{row}{row}"), format!("{row},"), format!("{row} x")] {
        let p = write(dir.path(), "g.jsonl", format!("{row}\n{bad}\n"));
        let err = read_grades(&p, &data).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "(json)"), "{err}");
    }
    let p = write(dir.path(), "g.jsonl", format!("{row}\n{row}\n"));
    assert_eq!(read_grades(&p, &data).unwrap().len(), 2);
}

#[test]
fn an_empty_grades_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = load(write(dir.path(), "d.jsonl", record("a", "t", "1"))).unwrap();
    for text in ["", "\n  \n"] {
        let p = write(dir.path(), "g.jsonl", text);
        let err = read_grades(&p, &data).unwrap_err();
        assert!(err.to_string().contains("no grade lines"), "{err}");
    }
}

#[test]
fn points_beyond_a_million_are_rejected_with_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let ok = record("a", "t", "1000000");
    assert_eq!(
        load(write(dir.path(), "ok.jsonl", &ok)).unwrap().examples[0].criteria[0].points,
        1e6
    );
    for points in ["1e308", "-1000001"] {
        let err = load_err(dir.path(), &format!("{ok}\n{}\n", record("b", "t", points)));
        assert_eq!(
            (err.line, err.field.as_str()),
            (2, "rubrics[0].points"),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2:", dir.path().join("d.jsonl").display())),
            "{err}"
        );
        let shown = format!("{:e} is out of range", points.parse::<f64>().unwrap());
        assert!(err.message.starts_with(&shown), "{err}");
    }
}

#[test]
fn a_byte_order_mark_is_skipped_and_bad_bytes_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (record("a", "t", "1"), record("b", "t", "1"));
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend(format!("{a}\n{b}\n").bytes());
    let data = load(write(dir.path(), "bom.jsonl", &bom)).unwrap();
    assert_eq!(data.len(), 2);
    let mut grades = b"\xEF\xBB\xBF".to_vec();
    grades.extend(br#"{"prompt_id":"a","met":[true,true]}"#);
    assert_eq!(
        read_grades(&write(dir.path(), "g.jsonl", grades), &data)
            .unwrap()
            .len(),
        1
    );

    let mut latin1 = format!("{a}\n").into_bytes();
    latin1.extend(b"{\"caf\xE9\": 1}\n");
    let p = write(dir.path(), "latin1.jsonl", &latin1);
    let err = load(&p).unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    assert_eq!(read_grades(&p, &data).unwrap_err().line, 2);
}

/// 120 examples over themes of 60, 30, 20 and 5, plus 5 without a theme.
fn themed(dir: &Path) -> rubric::Dataset {
    let mut text = String::new();
    let mut i = 0;
    for (theme, n) in [("a", 60), ("b", 30), ("c", 20), ("d", 5), ("", 5)] {
        for _ in 0..n {
            let r = record(&format!("p{i}"), theme, "1");
            let r = if theme.is_empty() {
                r.replace(r#""theme:""#, "")
            } else {
                r
            };
            text.push_str(&r);
            text.push('\n');
            i += 1;
        }
    }
    load(write(dir, "all.jsonl", text)).unwrap()
}

#[test]
fn split_counts_disjointness_determinism_and_strata() {
    let dir = tempfile::tempdir().unwrap();
    let data = themed(dir.path());
    let s = split(&data, 13, 26, 7).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (81, 13, 26));
    let all: HashSet<usize> = s
        .train
        .iter()
        .chain(&s.val)
        .chain(&s.test)
        .copied()
        .collect();
    assert_eq!(all.len(), 120, "disjoint and covering");

    assert_eq!(split(&data, 13, 26, 7).unwrap(), s, "same seed, same split");
    let other = split(&data, 13, 26, 8).unwrap();
    assert_ne!(other.val, s.val, "another seed, another split");

    // each theme's share of a split is its share of the file, up to rounding (1 example)
    let themes = |part: &[usize]| {
        let mut m: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in part {
            *m.entry(data.examples[i].tag_value("theme").unwrap_or(""))
                .or_default() += 1;
        }
        m
    };
    let file = themes(&(0..120).collect::<Vec<_>>());
    for (part, n) in [(&s.val, 13.0), (&s.test, 26.0)] {
        let got = themes(part);
        for (t, &k) in &file {
            let want = n * k as f64 / 120.0;
            let have = *got.get(t).unwrap_or(&0) as f64;
            assert!(
                (have - want).abs() < 1.0,
                "theme `{t}`: {have} of {n}, want {want:.2}"
            );
        }
    }
    assert_eq!(themes(&s.test)["a"], 13);
    assert_eq!(themes(&s.val)["b"], 3);

    // strata of one example each: validation takes some, test must find the others
    let text: String = (0..10)
        .map(|i| record(&format!("s{i}"), &format!("t{i}"), "1") + "\n")
        .collect();
    let singles = load(write(dir.path(), "singles.jsonl", text)).unwrap();
    let s = split(&singles, 4, 4, 0).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (2, 4, 4));
    let all: HashSet<usize> = s
        .train
        .iter()
        .chain(&s.val)
        .chain(&s.test)
        .copied()
        .collect();
    assert_eq!(all.len(), 10);

    let err = split(&data, 60, 60, 0).unwrap_err();
    assert!(err.contains("no training examples"), "{err}");
}

#[test]
fn split_files_hold_the_records_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let data = themed(dir.path());
    let s = split(&data, 10, 10, 0).unwrap();
    let out = dir.path().join("out");
    let files = write_split(&data, &s, &out).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["train.jsonl", "val.jsonl", "test.jsonl"]);
    let source: HashSet<String> = std::fs::read_to_string(&data.source)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut seen = HashSet::new();
    for ((path, n), part) in files.iter().zip([&s.train, &s.val, &s.test]) {
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().count(), *n);
        for (line, &i) in text.lines().zip(part) {
            assert!(source.contains(line), "copied verbatim");
            assert!(line.contains(&format!(r#""prompt_id":"{}""#, data.examples[i].id)));
            assert!(seen.insert(line.to_string()));
        }
        assert_eq!(load(path).unwrap().len(), *n);
    }
}
