//! A persistent verdict cache in one SQLite file, and [`CachedJudge`], which puts it in front
//! of any judge.
//!
//! Judge calls dominate training cost, and the same (prompt, response, criterion) comes back
//! across runs, seeds and restarts. The file is shared: WAL mode lets several processes read
//! while one writes, a busy timeout makes concurrent writers wait instead of failing, and a
//! crash loses at most the verdict being written. Only verdicts are cached, never failures: a
//! timeout today says nothing about tomorrow.

use crate::{GradeSink, GradeTask, Judge, JudgeStats, Verdict};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Schema version of the cache file; a file with another version is refused, not misread.
const SCHEMA_VERSION: i64 = 1;

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why setting up the file failed: a lock another process holds (worth retrying), another
/// SQLite error, or a file this build must not use.
enum SetUp {
    Busy(rusqlite::Error),
    Sql(rusqlite::Error),
    Refused(String),
}

impl From<rusqlite::Error> for SetUp {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                SetUp::Busy(e)
            }
            _ => SetUp::Sql(e),
        }
    }
}

/// 5-20 ms, varied by process and time, so that processes retrying together spread out.
fn retry_pause() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let spread = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 16;
    Duration::from_millis(5 + u64::from(spread))
}

/// Errors opening or using the cache file; they name the file.
#[derive(Debug, thiserror::Error)]
#[error("judge cache {}: {message}", path.display())]
pub struct CacheError {
    pub path: PathBuf,
    pub message: String,
}

/// A cached verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedVerdict {
    pub value: f64,
    pub explanation: String,
    pub judge: String,
}

/// The cache key of one verdict: sha256 over the judge id, its prompt version, the
/// conversation, the response and the criterion (text and points). Every field is
/// length-prefixed, so no two different inputs share a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

/// Hashes the parts shared by all criteria of one task once; [`TaskHasher::key`] finishes a
/// copy per criterion.
pub struct TaskHasher(Sha256);

fn put(h: &mut Sha256, field: &[u8]) {
    h.update((field.len() as u64).to_le_bytes());
    h.update(field);
}

impl TaskHasher {
    pub fn new(judge_id: &str, prompt_version: &str, task: &GradeTask<'_>) -> Self {
        let mut h = Sha256::new();
        put(&mut h, b"arlrr-judge-cache-v1");
        put(&mut h, judge_id.as_bytes());
        put(&mut h, prompt_version.as_bytes());
        put(&mut h, &(task.example.prompt.len() as u64).to_le_bytes());
        for m in &task.example.prompt {
            put(&mut h, m.role.as_bytes());
            put(&mut h, m.content.as_bytes());
        }
        put(&mut h, task.response.as_bytes());
        TaskHasher(h)
    }

    pub fn key(&self, criterion: &rubric::Criterion) -> CacheKey {
        let mut h = self.0.clone();
        put(&mut h, criterion.text.as_bytes());
        put(&mut h, &criterion.points.to_le_bytes());
        CacheKey(h.finalize().into())
    }
}

/// The SQLite file. One connection per cache, behind a mutex: SQLite serialises writers anyway
/// and a lookup is microseconds, so batches go through one transaction each.
pub struct VerdictCache {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl VerdictCache {
    /// Opens (creating if needed) the cache file, in WAL mode.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CacheError> {
        let path = path.as_ref().to_path_buf();
        let err = |message: String| CacheError {
            path: path.clone(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                err(match e.kind() {
                    // the OS says "File exists", true but puzzling
                    std::io::ErrorKind::AlreadyExists => {
                        format!("{} is a file, not a folder", dir.display())
                    }
                    _ => format!("cannot create folder {}: {e}", dir.display()),
                })
            })?;
        }
        // Created here first, so that a path SQLite cannot use fails with the OS's own reason
        // (not a directory, permission denied, read-only file system) instead of SQLite's
        // "unable to open database file".
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| err(format!("cannot create or open the file: {e}")))?;
        let conn = Connection::open(&path).map_err(|e| err(format!("cannot open: {e}")))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| err(e.to_string()))?;
        // SQLite answers some lock conflicts at once, without calling the busy handler: the
        // switch to WAL needs the file to itself, and a read that upgrades to a write while
        // another process writes would deadlock. So the setup is retried here, within the
        // same time a writer waits for a lock.
        let started = std::time::Instant::now();
        loop {
            match Self::set_up(&conn) {
                Ok(()) => break,
                Err(SetUp::Busy(_)) if started.elapsed() < BUSY_TIMEOUT => {
                    std::thread::sleep(retry_pause());
                }
                Err(SetUp::Busy(e)) | Err(SetUp::Sql(e)) => {
                    return Err(err(match e.sqlite_error_code() {
                        Some(rusqlite::ErrorCode::NotADatabase) => "not a SQLite file".into(),
                        _ => format!("cannot set up the file: {e}"),
                    }))
                }
                Err(SetUp::Refused(message)) => return Err(err(message)),
            }
        }
        Ok(VerdictCache {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: rusqlite::Error) -> CacheError {
        CacheError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Switches the file to WAL and creates or checks the tables, all idempotent.
    fn set_up(conn: &Connection) -> Result<(), SetUp> {
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(SetUp::from)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SetUp::Refused(format!(
                "journal mode is {mode}, WAL unavailable"
            )));
        }
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS verdicts (
                 key BLOB PRIMARY KEY,
                 judge TEXT NOT NULL,
                 value REAL NOT NULL,
                 explanation TEXT NOT NULL,
                 created_unix INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?1)",
            [SCHEMA_VERSION],
        )?;
        let version: i64 =
            conn.query_row("SELECT value FROM meta WHERE name='schema'", [], |r| {
                r.get(0)
            })?;
        if version != SCHEMA_VERSION {
            return Err(SetUp::Refused(format!(
                "schema version {version}, this build reads version {SCHEMA_VERSION}; use another file"
            )));
        }
        Ok(())
    }

    /// Looks up many keys in one transaction; `None` where absent.
    pub fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<CachedVerdict>>, CacheError> {
        let conn = self.conn.lock().expect("cache connection lock");
        let mut stmt = conn
            .prepare_cached("SELECT value, explanation, judge FROM verdicts WHERE key = ?1")
            .map_err(|e| self.error(e))?;
        keys.iter()
            .map(|k| {
                stmt.query_row([&k.0[..]], |r| {
                    Ok(CachedVerdict {
                        value: r.get(0)?,
                        explanation: r.get(1)?,
                        judge: r.get(2)?,
                    })
                })
                .optional()
                .map_err(|e| self.error(e))
            })
            .collect()
    }

    /// Stores many verdicts in one transaction (replacing equal keys).
    pub fn put_many(&self, entries: &[(CacheKey, CachedVerdict)]) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut conn = self.conn.lock().expect("cache connection lock");
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.error(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO verdicts (key, judge, value, explanation, created_unix)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(|e| self.error(e))?;
            for (k, v) in entries {
                stmt.execute(params![&k.0[..], v.judge, v.value, v.explanation, now])
                    .map_err(|e| self.error(e))?;
            }
        }
        tx.commit().map_err(|e| self.error(e))
    }

    /// Number of stored verdicts.
    pub fn len(&self) -> Result<u64, CacheError> {
        let conn = self.conn.lock().expect("cache connection lock");
        conn.query_row("SELECT COUNT(*) FROM verdicts", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.error(e))
    }

    pub fn is_empty(&self) -> Result<bool, CacheError> {
        Ok(self.len()? == 0)
    }
}

/// Any judge with the cache in front: hits are answered from the file (`cached: true`,
/// `attempts: 0`), misses go to the inner judge in one batch, and each of its successful
/// verdicts is stored as soon as the inner judge reports it ([`Judge::grade_reporting`]). A
/// cache read or write error is logged to stderr once per batch and the batch is graded
/// without the cache: the cache saves money, it must not stop a run.
pub struct CachedJudge<J> {
    inner: J,
    cache: VerdictCache,
    verdicts: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    cache_errors: AtomicU64,
}

impl<J: Judge> CachedJudge<J> {
    pub fn new(inner: J, cache: VerdictCache) -> Self {
        CachedJudge {
            inner,
            cache,
            verdicts: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            cache_errors: AtomicU64::new(0),
        }
    }

    /// Opens the cache file at `path` and wraps `inner`.
    pub fn open(inner: J, path: impl AsRef<Path>) -> Result<Self, CacheError> {
        Ok(Self::new(inner, VerdictCache::open(path)?))
    }

    pub fn inner(&self) -> &J {
        &self.inner
    }

    pub fn cache(&self) -> &VerdictCache {
        &self.cache
    }

    /// Cache reads or writes that failed (the batch was graded without the cache).
    pub fn cache_errors(&self) -> u64 {
        self.cache_errors.load(Ordering::Relaxed)
    }

    fn note_cache_error(&self, e: &CacheError) {
        self.cache_errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("warning: {e}; grading without the cache");
    }
}

/// A batch as the cache sees it: per task, the criteria asked for and their keys (`None` for
/// an index the example lacks; the inner judge reports it).
struct Keyed {
    indices: Vec<Vec<usize>>,
    keys: Vec<Vec<Option<CacheKey>>>,
}

/// Per task, a verdict slot per criterion asked for (`None` until graded).
type Rows = Vec<Vec<Option<Verdict>>>;

impl<J: Judge> CachedJudge<J> {
    fn keys(&self, tasks: &[GradeTask<'_>]) -> Keyed {
        let (judge_id, version) = (self.inner.id(), self.inner.prompt_version());
        let indices: Vec<Vec<usize>> = tasks.iter().map(|t| t.criterion_indices()).collect();
        let keys = tasks
            .iter()
            .zip(&indices)
            .map(|(t, idx)| {
                let hasher = TaskHasher::new(&judge_id, &version, t);
                idx.iter()
                    .map(|&i| t.example.criteria.get(i).map(|c| hasher.key(c)))
                    .collect()
            })
            .collect();
        Keyed { indices, keys }
    }

    /// Answers what the cache holds (each task's hits go to `sink` at once) and counts hits
    /// and misses; returns the rows and, per task, the criteria missed.
    fn hits(&self, batch: &Keyed, sink: &GradeSink<'_>) -> (Rows, Vec<Vec<usize>>) {
        let flat: Vec<CacheKey> = batch.keys.iter().flatten().flatten().copied().collect();
        let found = match self.cache.get_many(&flat) {
            Ok(f) => f,
            Err(e) => {
                self.note_cache_error(&e);
                vec![None; flat.len()]
            }
        };
        let mut found = found.into_iter();
        let mut out: Rows = Vec::with_capacity(batch.indices.len());
        let mut miss_indices: Vec<Vec<usize>> = Vec::with_capacity(batch.indices.len());
        for (idx, ks) in batch.indices.iter().zip(&batch.keys) {
            let mut row = Vec::with_capacity(idx.len());
            let mut misses = Vec::new();
            for (&i, k) in idx.iter().zip(ks) {
                let hit = k.and_then(|_| found.next().flatten());
                match hit {
                    Some(v) => row.push(Some(Verdict {
                        criterion: i,
                        outcome: Ok(v.value),
                        explanation: v.explanation,
                        judge: v.judge,
                        cached: true,
                        attempts: 0,
                    })),
                    None => {
                        row.push(None);
                        misses.push(i);
                    }
                }
            }
            let hits: Vec<Verdict> = row.iter().flatten().cloned().collect();
            if !hits.is_empty() {
                sink(out.len(), &hits);
            }
            out.push(row);
            miss_indices.push(misses);
        }
        let n_miss: usize = miss_indices.iter().map(Vec::len).sum();
        let n_total: usize = batch.indices.iter().map(Vec::len).sum();
        self.verdicts.fetch_add(n_total as u64, Ordering::Relaxed);
        self.hits
            .fetch_add((n_total - n_miss) as u64, Ordering::Relaxed);
        self.misses.fetch_add(n_miss as u64, Ordering::Relaxed);
        (out, miss_indices)
    }

    /// Asks the inner judge for the `misses` in one batch, storing each successful verdict as
    /// soon as it is reported (then handing it to `sink`), and fills the empty slots of `out`.
    async fn grade_misses(
        &self,
        tasks: &[GradeTask<'_>],
        batch: &Keyed,
        misses: &[Vec<usize>],
        out: &mut Rows,
        sink: &GradeSink<'_>,
    ) {
        let pending: Vec<(usize, GradeTask<'_>)> = tasks
            .iter()
            .zip(misses)
            .enumerate()
            .filter(|(_, (_, m))| !m.is_empty())
            .map(|(ti, (t, m))| {
                (
                    ti,
                    GradeTask {
                        example: t.example,
                        response: t.response,
                        criteria: Some(m.as_slice()),
                    },
                )
            })
            .collect();
        let sub_tasks: Vec<GradeTask<'_>> = pending.iter().map(|(_, t)| *t).collect();
        let store_failed = AtomicBool::new(false);
        let store = |sub: usize, grades: &[Verdict]| {
            let ti = pending[sub].0;
            let entries: Vec<(CacheKey, CachedVerdict)> = grades
                .iter()
                .filter_map(|g| {
                    let value = g.value()?;
                    let slot = batch.indices[ti].iter().position(|&i| i == g.criterion)?;
                    let verdict = CachedVerdict {
                        value,
                        explanation: g.explanation.clone(),
                        judge: g.judge.clone(),
                    };
                    Some((batch.keys[ti][slot]?, verdict))
                })
                .collect();
            if let Err(e) = self.cache.put_many(&entries) {
                // once per batch: a full disk fails every write alike
                if !store_failed.swap(true, Ordering::Relaxed) {
                    self.note_cache_error(&e);
                }
            }
            sink(ti, grades);
        };
        let graded = self.inner.grade_reporting(&sub_tasks, &store).await;
        for ((ti, _), grades) in pending.iter().zip(graded) {
            let mut slots = out[*ti].iter_mut().filter(|g| g.is_none());
            for g in grades {
                let Some(slot) = slots.next() else {
                    break;
                };
                *slot = Some(g);
            }
        }
    }
}

#[async_trait]
impl<J: Judge> Judge for CachedJudge<J> {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn prompt_version(&self) -> String {
        self.inner.prompt_version()
    }

    /// Hits go to `sink` at once. Each verdict of the inner judge is stored the moment the
    /// inner judge reports it, so a caller that gives up midway (a request timeout drops this
    /// future) has paid for no verdict it will have to ask for again.
    async fn grade_reporting(
        &self,
        tasks: &[GradeTask<'_>],
        sink: &GradeSink<'_>,
    ) -> Vec<Vec<Verdict>> {
        let batch = self.keys(tasks);
        let (mut out, misses) = self.hits(&batch, sink);
        if misses.iter().any(|m| !m.is_empty()) {
            self.grade_misses(tasks, &batch, &misses, &mut out, sink)
                .await;
        }
        let judge_id = self.inner.id();
        out.into_iter()
            .zip(&batch.indices)
            .map(|(row, idx)| {
                row.into_iter()
                    .zip(idx)
                    .map(|(g, &i)| {
                        g.unwrap_or_else(|| Verdict {
                            criterion: i,
                            outcome: Err(crate::JudgeFailure::Other(
                                "inner judge returned fewer grades than asked for".into(),
                            )),
                            explanation: String::new(),
                            judge: judge_id.clone(),
                            cached: false,
                            attempts: 0,
                        })
                    })
                    .collect()
            })
            .collect()
    }

    fn stats(&self) -> JudgeStats {
        let inner = self.inner.stats();
        JudgeStats {
            verdicts: self.verdicts.load(Ordering::Relaxed),
            cache_hits: self.hits.load(Ordering::Relaxed),
            cache_misses: self.misses.load(Ordering::Relaxed),
            ..inner
        }
    }
}
