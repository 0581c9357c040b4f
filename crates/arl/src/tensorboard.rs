//! TensorBoard scalars of a run (`[log] tensorboard`): every `metrics.jsonl` line also goes
//! to `<run>/tensorboard/events.out.tfevents.<unix secs>.<host>.arlrr` as one event at the
//! line's `step`, holding each numeric leaf of the line as a scalar tagged with its path
//! (`overall/mean`, `classes/accuracy/mean`, `update/loss`, `val/overall/score`,
//! `time_s/generate`; [`scalars`]). `tensorboard --logdir runs/` shows them.
//!
//! The file is TensorFlow's record format, written here by hand (docs/design.md says why):
//! each record is the data's length (u64, little-endian), the masked CRC32C of those 8
//! bytes, the data, and the masked CRC32C of the data; the data is a protobuf `Event`. The
//! first event holds the file version `brain.Event:2`; each later one a `Summary` of
//! `simple_value`s (32-bit floats).
//!
//! The event log follows `metrics.jsonl`: a resumed run rewrites it from the lines it keeps
//! (the steps' first wall times kept where the old file had them), so the file holds one
//! event per line, never a step twice. Records are written without a sync: the log is a
//! view of `metrics.jsonl`, which is synced, and a resume rebuilds it.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The run folder's subfolder that holds the event file.
pub const DIR: &str = "tensorboard";
/// What every event file's name starts with (TensorBoard reads the files whose names hold
/// `tfevents`).
pub const FILE_PREFIX: &str = "events.out.tfevents.";
/// The first event's `file_version`: events with summaries, no session logs needed.
pub const FILE_VERSION: &str = "brain.Event:2";

/// The scalars of a `metrics.jsonl` line: each numeric leaf (booleans as 0 or 1) tagged
/// with its path of keys joined by `/`, array elements by their index (`a/0`); strings and
/// nulls are left out, and so is the top-level `step`, the event's own step.
pub fn scalars(line: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if let Value::Object(m) = line {
        for (k, v) in m.iter().filter(|(k, _)| *k != "step") {
            leaves(k, v, &mut out);
        }
    }
    out
}

fn leaves(path: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => out.extend(n.as_f64().map(|x| (path.to_string(), x))),
        Value::Bool(b) => out.push((path.to_string(), f64::from(u8::from(*b)))),
        Value::Object(m) => {
            for (k, v) in m {
                leaves(&format!("{path}/{k}"), v, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                leaves(&format!("{path}/{i}"), v, out);
            }
        }
        Value::Null | Value::String(_) => {}
    }
}

/// CRC32C of `data`, masked as the record format stores it (so that a CRC of data holding
/// CRCs is not a CRC of itself).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one record: length, its masked CRC, the data, the data's masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    r
}

/// The records of `bytes`, each checked against its CRCs; a short or damaged record ends
/// the list (what a writer stopped mid-record leaves).
pub fn records(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() >= 12 {
        let (len, rest) = bytes.split_at(8);
        let crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if crc != masked_crc32c(len) {
            break;
        }
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let rest = &rest[4..];
        let fits = |n: &usize| n.checked_add(4).is_some_and(|m| m <= rest.len());
        let Some(n) = usize::try_from(n).ok().filter(fits) else {
            break;
        };
        let (data, rest) = rest.split_at(n);
        if u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) != masked_crc32c(data) {
            break;
        }
        out.push(data);
        bytes = &rest[4..];
    }
    out
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn key(buf: &mut Vec<u8>, field: u8, wire: u8) {
    buf.push(field << 3 | wire); // every field number here is below 16: one byte
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn bytes_field(buf: &mut Vec<u8>, field: u8, data: &[u8]) {
    key(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// What an event carries besides its time and step.
pub enum Payload<'a> {
    /// `Event.file_version` (field 3).
    FileVersion(&'a str),
    /// `Event.summary` (field 5): a `Summary` whose `value`s (field 1) are each a `tag`
    /// (field 1) and a `simple_value` (field 2).
    Scalars(&'a [(String, f32)]),
}

/// A protobuf `Event`: `wall_time` (field 1, double), `step` (field 2, int64; left out when
/// 0, as proto3 does) and the payload.
pub fn event(wall_time: f64, step: i64, payload: Payload) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, FIXED64);
    e.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        key(&mut e, 2, VARINT);
        varint(&mut e, step as u64);
    }
    match payload {
        Payload::FileVersion(v) => bytes_field(&mut e, 3, v.as_bytes()),
        Payload::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, x) in values {
                let mut value = Vec::new();
                bytes_field(&mut value, 1, tag.as_bytes());
                key(&mut value, 2, FIXED32);
                value.extend_from_slice(&x.to_le_bytes());
                bytes_field(&mut summary, 1, &value);
            }
            bytes_field(&mut e, 5, &summary);
        }
    }
    e
}

/// The event record of a `metrics.jsonl` line (its [`scalars`] as 32-bit floats).
fn line_record(line: &Value, wall_time: f64) -> Vec<u8> {
    let step = line.get("step").and_then(Value::as_i64).unwrap_or(0);
    let values: Vec<(String, f32)> = scalars(line)
        .into_iter()
        .map(|(tag, x)| (tag, x as f32))
        .collect();
    record(&event(wall_time, step, Payload::Scalars(&values)))
}

/// The wall time and step of each summary event in an event file's `data` records
/// (`Event` fields 1, 2 and 5; others skipped). `None` for a record that is no protobuf.
fn summary_times(data: &[u8]) -> Option<(f64, i64, bool)> {
    let (mut at, mut wall, mut step, mut summary) = (0, 0.0, 0, false);
    let read_varint = |at: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *data.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    while at < data.len() {
        let k = read_varint(&mut at)?;
        let (field, wire) = (k >> 3, (k & 7) as u8);
        match wire {
            VARINT => {
                let v = read_varint(&mut at)?;
                if field == 2 {
                    step = v as i64;
                }
            }
            FIXED64 => {
                let b: [u8; 8] = data.get(at..at + 8)?.try_into().ok()?;
                at += 8;
                if field == 1 {
                    wall = f64::from_le_bytes(b);
                }
            }
            LEN => {
                let n = usize::try_from(read_varint(&mut at)?).ok()?;
                data.get(at..at.checked_add(n)?)?;
                at += n;
                summary |= field == 5;
            }
            FIXED32 => {
                data.get(at..at + 4)?;
                at += 4;
            }
            _ => return None,
        }
    }
    Some((wall, step, summary))
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's name for the file name (TensorBoard's convention): its letters, digits,
/// `-` and `.`, anything else as `_`; `localhost` when none is found.
fn hostname() -> String {
    let name = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `e` with what failed and the file in its message, keeping its kind.
fn at(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The event files of `dir` (none when it does not exist).
fn event_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(at(dir, "cannot read folder", e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| at(dir, "cannot read folder", e))?;
        if entry.file_name().to_string_lossy().starts_with(FILE_PREFIX) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// A run's event log, appended one event per `metrics.jsonl` line.
pub struct EventLog {
    path: PathBuf,
    file: File,
}

impl EventLog {
    /// Starts the event log of the run in `run_dir` holding `lines`, the run's
    /// `metrics.jsonl` lines so far (none for a new run): a new event file is written, then
    /// the folder's other event files are removed. A line's event keeps the wall time an
    /// earlier file gave its step, else takes the present time.
    pub fn start(run_dir: &Path, lines: &[Value]) -> io::Result<EventLog> {
        let dir = run_dir.join(DIR);
        rubric::runfile::create_dir_all(&dir)?;
        let old = event_files(&dir)?;
        let mut walls = BTreeMap::new();
        for f in &old {
            // a damaged old file gives what it can; the lines are the record
            let bytes = std::fs::read(f).unwrap_or_default();
            for data in records(&bytes) {
                if let Some((wall, step, true)) = summary_times(data) {
                    walls.entry(step).or_insert(wall);
                }
            }
        }
        let now = now();
        let mut bytes = record(&event(now, 0, Payload::FileVersion(FILE_VERSION)));
        for line in lines {
            let step = line.get("step").and_then(Value::as_i64).unwrap_or(0);
            bytes.extend(line_record(line, walls.get(&step).copied().unwrap_or(now)));
        }
        let name = format!("{FILE_PREFIX}{}.{}.arlrr", now as u64, hostname());
        let path = dir.join(name);
        rubric::runfile::write_atomic(&path, &bytes)?;
        for f in old.iter().filter(|f| **f != path) {
            std::fs::remove_file(f).map_err(|e| at(f, "cannot remove", e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| at(&path, "cannot open", e))?;
        Ok(EventLog { path, file })
    }

    /// Appends the event of a `metrics.jsonl` line, at the present time.
    pub fn append(&mut self, line: &Value) -> io::Result<()> {
        let r = line_record(line, now());
        self.file
            .write_all(&r)
            .map_err(|e| at(&self.path, "cannot write", e))
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::manual_rotate)] // the mask as the record format's spec writes it
    fn crc32c_and_its_mask_match_the_known_values() {
        // the CRC-32C check value (RFC 3720's polynomial), and its mask by hand
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let crc = 0xE306_9283u32;
        let masked = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(masked_crc32c(b"123456789"), masked);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8, "crc32c of nothing is 0");
    }

    #[test]
    fn a_record_is_length_crc_data_crc() {
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
        assert_eq!(records(&r), [b"abc"]);
        // a damaged or cut record ends the list
        let mut two = [r.clone(), record(b"de")].concat();
        assert_eq!(records(&two), [&b"abc"[..], b"de"]);
        two[r.len() + 13] ^= 1;
        assert_eq!(records(&two), [b"abc"]);
        assert_eq!(records(&r[..r.len() - 1]), Vec::<&[u8]>::new());
    }

    #[test]
    fn events_encode_byte_for_byte() {
        let v = event(1.5, 0, Payload::FileVersion("brain.Event:2"));
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x1a, 13]);
        want.extend_from_slice(b"brain.Event:2");
        assert_eq!(v, want);

        let values = [("a/b".to_string(), 0.5f32), ("lr".to_string(), -2.0f32)];
        let e = event(2.0, 300, Payload::Scalars(&values));
        let mut want = vec![0x09];
        want.extend_from_slice(&2.0f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0xac, 0x02]); // step 300 as a varint
                                                     // Summary: two Values, each tag (field 1) and simple_value (field 2, fixed32)
        let v1 = [&[0x0a, 3][..], b"a/b", &[0x15], &0.5f32.to_le_bytes()].concat();
        let v2 = [&[0x0a, 2][..], b"lr", &[0x15], &(-2.0f32).to_le_bytes()].concat();
        let summary = [
            &[0x0a, v1.len() as u8][..],
            &v1,
            &[0x0a, v2.len() as u8],
            &v2,
        ]
        .concat();
        want.extend_from_slice(&[0x2a, summary.len() as u8]);
        want.extend_from_slice(&summary);
        assert_eq!(e, want);
        assert_eq!(summary_times(&e), Some((2.0, 300, true)));
        assert_eq!(summary_times(&v), Some((1.5, 0, false)));
    }

    #[test]
    fn every_numeric_leaf_is_a_scalar_tagged_by_its_path() {
        let line = serde_json::json!({
            "step": 3, "phase": 1, "active_class": "accuracy", "lr": 0.1,
            "overall": {"mean": 0.25, "std": null, "n": 8},
            "classes": {"accuracy": {"mean": 0.5}},
            "val": null, "flag": true, "a": [1.0, {"b": 2}],
        });
        let mut got = scalars(&line);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want = [
            ("a/0", 1.0),
            ("a/1/b", 2.0),
            ("classes/accuracy/mean", 0.5),
            ("flag", 1.0),
            ("lr", 0.1),
            ("overall/mean", 0.25),
            ("overall/n", 8.0),
            ("phase", 1.0),
        ];
        let want: Vec<(String, f64)> = want.iter().map(|(t, x)| (t.to_string(), *x)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_restarted_log_holds_the_lines_given_with_their_first_wall_times() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join(DIR);
        let line = |s: u64| serde_json::json!({"step": s, "lr": s as f64});
        // an earlier run's file: steps 1 and 2 at known times
        std::fs::create_dir_all(&folder).unwrap();
        let old = folder.join(format!("{FILE_PREFIX}1.host.arlrr"));
        let bytes = [
            record(&event(100.0, 0, Payload::FileVersion(FILE_VERSION))),
            line_record(&line(1), 123.0),
            line_record(&line(2), 456.0),
        ]
        .concat();
        std::fs::write(&old, bytes).unwrap();
        std::fs::write(folder.join("notes.txt"), "mine").unwrap();
        // resumed after step 1: one file, step 1 at its first time, no step 2, then step 2 anew
        let mut log = EventLog::start(dir.path(), &[line(1)]).unwrap();
        log.append(&line(2)).unwrap();
        assert_eq!(event_files(&folder).unwrap(), [log.path()]);
        assert!(!old.exists() && folder.join("notes.txt").exists());
        let bytes = std::fs::read(log.path()).unwrap();
        let events: Vec<_> = records(&bytes)
            .iter()
            .map(|d| summary_times(d).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert!(!events[0].2, "the file version first");
        assert_eq!(events[1], (123.0, 1, true));
        assert_eq!(events[2].1, 2);
        assert!(events[2].0 > 456.0, "written now");
    }
}
