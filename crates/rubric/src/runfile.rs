//! Run files: the one way this project writes and reads its files.
//!
//! - [`write_atomic`]: a whole file, replaced so a crash at any moment leaves the old content or
//!   the new, never half of either.
//! - [`Jsonl`]: a JSON-lines log appended one durable line at a time (`metrics.jsonl`,
//!   `eval.jsonl`, `schedule.jsonl`, ...), cut back on resume or when a line must be taken back.
//! - [`read_jsonl`] / [`read_jsonl_if_exists`]: such a log read back; errors name file and line.
//!
//! Write errors are `std::io::Error`s of the original kind whose message names the file.

use crate::error::{parse_line, read_text, DataError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `e` with `what` and the file in its message, keeping its kind.
fn at(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The folder `path` lives in (`.` for a bare file name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates the folder `dir` and its parents; the error names it.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| at(dir, "cannot create folder", e))
}

/// Replaces `path` with `bytes`: a temporary file of a unique name in the same folder is
/// written and synced, renamed over `path`, and the folder is synced so the rename itself
/// survives a crash. A failed write removes its temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = folder(path);
    let name = path.file_name().unwrap_or_default();
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut temp = tempfile::Builder::new();
    temp.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        // the permissions a plain `File::create` gives (0666 less the umask), not tempfile's 0600
        use std::os::unix::fs::PermissionsExt;
        temp.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let write = || -> io::Result<()> {
        let mut tmp = temp.tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        // on failure the temporary file is handed back and removed when dropped
        tmp.persist(path).map(drop).map_err(|e| e.error)
    };
    write().map_err(|e| at(path, "cannot write", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| at(dir, "cannot sync folder", e))
}

/// Every line of the JSONL file `path` as a `T`; a missing file is an error.
/// Errors name the file, the line and the field.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    read_text(path)?
        .lines()
        .enumerate()
        .map(|(i, line)| parse_line(path, i + 1, line))
        .collect()
}

/// As [`read_jsonl`], with a missing file read as empty (a log not written yet).
pub fn read_jsonl_if_exists<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    if path.exists() {
        read_jsonl(path)
    } else {
        Ok(Vec::new())
    }
}

/// An append-only JSON-lines file that knows its line count. Each line is synced to disk as
/// it is appended.
pub struct Jsonl {
    path: PathBuf,
    file: File,
    /// Lines in the file.
    pub lines: u64,
}

impl Jsonl {
    /// Opens `path` for appending, creating it when missing.
    pub fn open(path: &Path) -> io::Result<Jsonl> {
        let lines = match std::fs::read_to_string(path) {
            Ok(t) => t.lines().count() as u64,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(at(path, "cannot read", e)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| at(path, "cannot open", e))?;
        Ok(Jsonl {
            path: path.to_path_buf(),
            file,
            lines,
        })
    }

    /// Appends `value` as one line.
    pub fn append(&mut self, value: &impl Serialize) -> io::Result<()> {
        self.append_then(value, || Ok::<(), io::Error>(()))
    }

    /// Appends `value` as one line, then runs `commit` (e.g. saving the state the line
    /// belongs to). When the append or `commit` fails the line is taken back (best effort), so
    /// the file never holds a line whose commit failed.
    pub fn append_then<E: From<io::Error>>(
        &mut self,
        value: &impl Serialize,
        commit: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut line = serde_json::to_vec(value).map_err(io::Error::from)?;
        line.push(b'\n');
        let len = self
            .file
            .metadata()
            .map_err(|e| at(&self.path, "cannot read", e))?
            .len();
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| E::from(at(&self.path, "cannot write", e)))
            .and_then(|()| commit());
        match written {
            Ok(()) => self.lines += 1,
            Err(_) => {
                let _ = self.file.set_len(len).and_then(|()| self.file.sync_data());
            }
        }
        written
    }

    /// Keeps the first `n` lines (drops what was written after a checkpoint).
    pub fn truncate(&mut self, n: u64) -> io::Result<()> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(at(&self.path, "cannot read", e)),
        };
        let kept: String = text
            .lines()
            .take(n as usize)
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&self.path, kept.as_bytes())?;
        *self = Jsonl::open(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Rec {
        step: u64,
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new content").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new content");
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn written_files_get_the_usual_permissions_not_private_ones() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (p, q) = (dir.path().join("a.md"), dir.path().join("b.md"));
        write_atomic(&p, b"x").unwrap();
        File::create(&q).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), mode(&q));
    }

    #[test]
    fn two_writers_of_one_file_never_share_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, &[t; 4096]).unwrap();
                    }
                });
            }
        });
        let back = std::fs::read(&p).unwrap();
        assert!(
            back.len() == 4096 && back.iter().all(|&b| b == back[0]),
            "a mixed file"
        );
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_content_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.md");
        write_atomic(&p, b"old").unwrap();
        // a folder where the target is: the rename fails, the old file is untouched
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let err = write_atomic(&blocked, b"new").unwrap_err();
        assert!(err.to_string().contains("blocked"), "{err}");
        assert!(blocked.join("inside").is_dir());
        assert_eq!(
            names(dir.path()),
            ["blocked", "out.md"],
            "a temporary file was left"
        );
        let missing = dir.path().join("no-such-folder").join("x.md");
        let err = write_atomic(&missing, b"new").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("x.md"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }

    #[test]
    fn read_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":\"two\"}\n").unwrap();
        let err = read_jsonl::<Rec>(&p).unwrap_err();
        assert_eq!((err.file.as_path(), err.line), (p.as_path(), 2));
        assert!(
            err.to_string().contains("metrics.jsonl:2: field `step`"),
            "{err}"
        );
        let gone = dir.path().join("eval.jsonl");
        assert!(read_jsonl::<Rec>(&gone)
            .unwrap_err()
            .to_string()
            .contains("eval.jsonl"));
        assert_eq!(read_jsonl_if_exists::<Rec>(&gone).unwrap(), vec![]);
    }

    #[test]
    fn append_counts_lines_truncates_and_takes_back_uncommitted_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("schedule.jsonl");
        let mut f = Jsonl::open(&p).unwrap();
        for step in 0..3 {
            f.append(&Rec { step }).unwrap();
        }
        assert_eq!(f.lines, 3);
        assert_eq!(Jsonl::open(&p).unwrap().lines, 3);
        let err = f
            .append_then(&Rec { step: 3 }, || {
                Err(io::Error::other("state not saved"))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "state not saved");
        assert_eq!(f.lines, 3);
        f.truncate(2).unwrap();
        f.append(&Rec { step: 9 }).unwrap();
        let back: Vec<Rec> = read_jsonl(&p).unwrap();
        assert_eq!(
            back,
            vec![Rec { step: 0 }, Rec { step: 1 }, Rec { step: 9 }]
        );
        assert_eq!(f.lines, 3);
    }
}
