//! TensorBoard scalars (`[log] tensorboard`): a run's event file read back with a reader of
//! the record format written here (CRCs checked, `Event` decoded field by field) holds every
//! numeric leaf of every `metrics.jsonl` line, at its step, also after a resume; and
//! TensorBoard's own reader agrees (`scripts/check_tensorboard.py`) where it is installed.

mod common;

use arl::{Parts, Trainer};
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One decoded `Event`.
#[derive(Debug, Default)]
struct Event {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    /// `summary.value`: tag and `simple_value`.
    values: Vec<(String, f32)>,
}

/// The masked CRC32C, written as the record format's spec writes it.
#[allow(clippy::manual_rotate)]
fn masked(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
}

/// Every record of an event file, each CRC checked; the file must end on a record.
fn read_records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let (mut at, mut out) = (0, Vec::new());
    while at < bytes.len() {
        let len = &bytes[at..at + 8];
        let n = u64::from_le_bytes(len.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(crc, masked(len), "length crc of the record at byte {at}");
        let data = &bytes[at + 12..at + 12 + n];
        let crc = u32::from_le_bytes(bytes[at + 12 + n..at + 16 + n].try_into().unwrap());
        assert_eq!(crc, masked(data), "data crc of the record at byte {at}");
        out.push(data.to_vec());
        at += 16 + n;
    }
    out
}

/// A protobuf message's fields: (field number, wire type, varint or the bytes).
fn fields(mut b: &[u8]) -> Vec<(u64, u64, u64, Vec<u8>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0;
        for i in 0.. {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                break;
            }
        }
        v
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let k = varint(&mut b);
        let (field, wire) = (k >> 3, k & 7);
        let (n, bytes) = match wire {
            0 => (varint(&mut b), vec![]),
            1 => (0, b[..8].to_vec()),
            2 => {
                let n = varint(&mut b) as usize;
                (0, b[..n].to_vec())
            }
            5 => (0, b[..4].to_vec()),
            w => panic!("wire type {w}"),
        };
        b = &b[bytes.len()..];
        out.push((field, wire, n, bytes));
    }
    out
}

fn decode(data: &[u8]) -> Event {
    let mut e = Event::default();
    for (field, wire, n, bytes) in fields(data) {
        match (field, wire) {
            (1, 1) => e.wall_time = f64::from_le_bytes(bytes.try_into().unwrap()),
            (2, 0) => e.step = n as i64,
            (3, 2) => e.file_version = Some(String::from_utf8(bytes).unwrap()),
            (5, 2) => {
                for (f, w, _, value) in fields(&bytes) {
                    assert_eq!((f, w), (1, 2), "Summary.value");
                    let (mut tag, mut x) = (None, None);
                    for (f, w, _, b) in fields(&value) {
                        match (f, w) {
                            (1, 2) => tag = Some(String::from_utf8(b).unwrap()),
                            (2, 5) => x = Some(f32::from_le_bytes(b.try_into().unwrap())),
                            other => panic!("Value field {other:?}"),
                        }
                    }
                    e.values.push((tag.unwrap(), x.unwrap()));
                }
            }
            other => panic!("Event field {other:?}"),
        }
    }
    e
}

/// The run's one event file, decoded.
fn events(run: &Path) -> (PathBuf, Vec<Event>) {
    let files: Vec<PathBuf> = std::fs::read_dir(run.join("tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one event file: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents.") && name.ends_with(".arlrr"));
    let bytes = std::fs::read(&files[0]).unwrap();
    let events = read_records(&bytes).iter().map(|d| decode(d)).collect();
    (files[0].clone(), events)
}

/// The numeric leaves of a metrics line, flattened independently of the crate's code.
fn leaves(path: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
    match v {
        serde_json::Value::Number(n) => {
            out.insert(path.to_string(), n.as_f64().unwrap());
        }
        serde_json::Value::Bool(b) => {
            out.insert(path.to_string(), f64::from(u8::from(*b)));
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}/{k}")
                };
                leaves(&p, v, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                leaves(&format!("{path}/{i}"), v, out);
            }
        }
        _ => {}
    }
}

/// The event file holds the file version, then one event per `metrics.jsonl` line, at its
/// step, with exactly the line's numeric leaves (as f32). Returns the steps' wall times.
fn assert_events_equal_metrics(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (_, events) = events(run);
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert!(events[0].values.is_empty());
    assert_eq!(events.len(), lines.len() + 1, "one event per line");
    let mut walls = Vec::new();
    for (line, e) in lines.iter().zip(&events[1..]) {
        let step = line["step"].as_i64().unwrap();
        assert_eq!(e.step, step);
        assert!(e.file_version.is_none());
        let mut want = BTreeMap::new();
        leaves("", line, &mut want);
        want.remove("step");
        let got: BTreeMap<String, f32> = e.values.iter().cloned().collect();
        assert_eq!(got.len(), e.values.len(), "a tag twice at step {step}");
        let want: BTreeMap<String, f32> = want.into_iter().map(|(k, x)| (k, x as f32)).collect();
        assert_eq!(got, want, "step {step}");
        walls.push(e.wall_time);
    }
    walls
}

/// A 5-step run: validation every 2 steps (so `val` lines too), checkpoints every 2.
fn config(dir: &Path, extra: &str) -> arl::TrainConfig {
    let mut cfg = common::config(
        dir,
        RUBRIC,
        VOCAB,
        &format!("[objective]\nkind = \"alternating\"\n[phases]\nselector = \"round_robin\"\nlength = 2{extra}"),
    );
    cfg.run.steps = 5;
    cfg.run.checkpoint_every = 2;
    cfg.run.keep_checkpoints = 0;
    cfg.eval.every = 2;
    cfg
}

fn train(cfg: &arl::TrainConfig) {
    Trainer::new(cfg.clone(), Parts::from_config(cfg).unwrap())
        .unwrap()
        .run(|_| {})
        .unwrap();
}

/// The Python of the hf environment (`scripts/engines/setup.sh hf`), if it has tensorboard.
fn hf_python() -> Option<String> {
    rubric::assets::engine_python("hf", "ARLRR_HF_PYTHON", &["tensorboard"])
}

/// `scripts/check_tensorboard.py` on `run` with TensorBoard's reader, when installed.
fn check_with_tensorboard(run: &Path) {
    let Some(python) = hf_python() else {
        eprintln!(
            "tensorboard's reader not checked: no Python with tensorboard (run \
             scripts/engines/setup.sh hf, or set ARLRR_HF_PYTHON)"
        );
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_tensorboard.py");
    let out = Command::new(&python).arg(script).arg(run).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check_tensorboard.py failed:\n{text}");
    assert!(text.contains("every scalar equals metrics.jsonl"));
}

#[test]
fn every_metric_of_a_five_step_run_is_a_scalar_also_after_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    train(&cfg);
    let run = dir.path().join("run");
    let walls = assert_events_equal_metrics(&run);
    assert_eq!(walls.len(), 5);
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for tag in [
        "\"overall\"",
        "\"classes\"",
        "\"update\"",
        "\"val\":{",
        "\"time_s\"",
    ] {
        assert!(text.contains(tag), "{tag} in metrics.jsonl");
    }
    let (_, written) = events(&run);
    let tags: Vec<&str> = written[1..]
        .iter()
        .flat_map(|e| e.values.iter().map(|v| v.0.as_str()))
        .collect();
    for tag in [
        "overall/mean",
        "classes/accuracy/mean",
        "update/loss",
        "val/overall/score",
        "val/classes/accuracy/score",
        "time_s/generate",
        "judge/verdicts",
        "lr",
    ] {
        assert!(tags.contains(&tag), "{tag} in {tags:?}");
    }
    check_with_tensorboard(&run);

    // back to the checkpoint at step 2, then on to 5: the steps after 2 written again, once
    for step in [4, 5] {
        std::fs::remove_dir_all(run.join(format!("checkpoints/step-{step:08}"))).unwrap();
    }
    let parts = Parts::from_config(&cfg).unwrap();
    let mut t = Trainer::resume_with(&run, cfg.clone(), parts).unwrap();
    assert_eq!(t.state.step, 2);
    let (_, cut) = events(&run);
    assert_eq!(cut.len(), 3, "the file version and steps 1 and 2");
    t.run(|_| {}).unwrap();
    let resumed = assert_events_equal_metrics(&run);
    assert_eq!(resumed.len(), 5);
    assert_eq!(
        resumed[..2],
        walls[..2],
        "the kept steps keep their wall times"
    );
    check_with_tensorboard(&run);
}

#[test]
fn no_event_file_when_switched_off_and_overwrite_removes_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "\n[log]\ntensorboard = false");
    assert!(!cfg.log.tensorboard);
    cfg.run.steps = 1;
    train(&cfg);
    let run = dir.path().join("run");
    assert!(run.join("metrics.jsonl").exists());
    assert!(!run.join("tensorboard").exists());

    // a run stopped before its first checkpoint: --overwrite clears its event file too
    let other = dir.path().join("stopped");
    std::fs::create_dir_all(other.join("tensorboard")).unwrap();
    std::fs::write(other.join("metrics.jsonl"), "").unwrap();
    std::fs::write(other.join("tensorboard/events.out.tfevents.1.h.arlrr"), "").unwrap();
    arl::trainer::discard_unstarted_run(&other).unwrap();
    assert!(!other.join("tensorboard").exists());
    assert!(!other.join("metrics.jsonl").exists());
}
