//! The SQLite verdict cache in front of the real rule judge: hits cost no inner calls, survive
//! reopening the file, are keyed on everything that changes a verdict, and failures are never
//! stored.

use async_trait::async_trait;
use judge::cache::{CachedVerdict, TaskHasher};
use judge::{CachedJudge, GradeTask, Judge, JudgeStats, RuleJudge, Verdict, VerdictCache};
use rubric::{Criterion, Example, Message};
use std::sync::atomic::{AtomicU64, Ordering};

/// The rule judge, counting the criteria it is asked to grade: the cache's savings are
/// measured on a real judge, not a stand-in.
#[derive(Default)]
struct CountingRules {
    rules: RuleJudge,
    criteria_asked: AtomicU64,
}

#[async_trait]
impl Judge for CountingRules {
    fn id(&self) -> String {
        self.rules.id()
    }
    async fn grade(&self, tasks: &[GradeTask<'_>]) -> Vec<Vec<Verdict>> {
        let n: usize = tasks.iter().map(|t| t.criterion_indices().len()).sum();
        self.criteria_asked.fetch_add(n as u64, Ordering::Relaxed);
        self.rules.grade(tasks).await
    }
    fn stats(&self) -> JudgeStats {
        self.rules.stats()
    }
}

fn example() -> Example {
    let crit = |text: &str, check: Option<&str>| Criterion {
        text: text.into(),
        points: 2.0,
        tags: vec![],
        check: check.map(|c| serde_json::from_str(c).unwrap()),
    };
    Example {
        id: "e".into(),
        prompt: vec![Message {
            role: "user".into(),
            content: "My knee hurts".into(),
        }],
        criteria: vec![
            crit("Asks a question", Some(r#"{"kind":"asks_question"}"#)),
            crit(
                "Mentions ice",
                Some(r#"{"kind":"contains_any","phrases":["ice"]}"#),
            ),
            crit("Is kind (no check)", None),
        ],
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: 1,
    }
}

fn values(grades: &[Vec<Verdict>]) -> Vec<Vec<Option<f64>>> {
    grades
        .iter()
        .map(|t| t.iter().map(|g| g.outcome.clone().ok()).collect())
        .collect()
}

#[tokio::test]
async fn second_grading_is_served_from_the_file_even_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/cache.sqlite");
    let ex = example();
    let tasks = [
        GradeTask {
            example: &ex,
            response: "Put ice on it. Does it swell?",
            criteria: None,
        },
        GradeTask {
            example: &ex,
            response: "Rest.",
            criteria: Some(&[1, 0]),
        },
    ];

    let judge = CachedJudge::open(CountingRules::default(), &path).unwrap();
    let first = judge.grade(&tasks).await;
    assert_eq!(judge.inner().criteria_asked.load(Ordering::Relaxed), 5);
    assert!(first.iter().flatten().all(|g| !g.cached));
    let s = judge.stats();
    assert_eq!(
        (s.verdicts, s.cache_hits, s.cache_misses, s.failures),
        (5, 0, 5, 1)
    );
    // Four verdicts stored; the not-gradable failure is not.
    assert_eq!(judge.cache().len().unwrap(), 4);

    let second = judge.grade(&tasks).await;
    assert_eq!(
        judge.inner().criteria_asked.load(Ordering::Relaxed),
        6,
        "only the failure is re-asked"
    );
    assert_eq!(values(&first), values(&second));
    assert_eq!(judge.stats().cache_hits, 4);
    drop(judge);

    let reopened = CachedJudge::open(CountingRules::default(), &path).unwrap();
    let third = reopened.grade(&tasks[..1]).await;
    assert_eq!(reopened.inner().criteria_asked.load(Ordering::Relaxed), 1);
    assert_eq!(values(&third), values(&first[..1]));
    let hit = &third[0][0];
    assert!(hit.cached && hit.attempts == 0 && hit.judge == "rules-v1");
    assert_eq!(hit.explanation, first[0][0].explanation);
    assert!(third[0][2].outcome.is_err() && !third[0][2].cached);
}

#[test]
fn key_covers_judge_version_conversation_response_and_criterion() {
    let ex = example();
    let task = GradeTask {
        example: &ex,
        response: "r",
        criteria: None,
    };
    let base = TaskHasher::new("j", "v1", &task).key(&ex.criteria[0]);
    assert_eq!(base, TaskHasher::new("j", "v1", &task).key(&ex.criteria[0]));
    assert_ne!(base, TaskHasher::new("k", "v1", &task).key(&ex.criteria[0]));
    assert_ne!(base, TaskHasher::new("j", "v2", &task).key(&ex.criteria[0]));
    let other_response = GradeTask {
        response: "r2",
        ..task
    };
    assert_ne!(
        base,
        TaskHasher::new("j", "v1", &other_response).key(&ex.criteria[0])
    );
    let mut ex2 = ex.clone();
    ex2.prompt[0].content.push('!');
    let other_conv = GradeTask {
        example: &ex2,
        ..task
    };
    assert_ne!(
        base,
        TaskHasher::new("j", "v1", &other_conv).key(&ex.criteria[0])
    );
    let mut c = ex.criteria[0].clone();
    c.points = -2.0;
    assert_ne!(base, TaskHasher::new("j", "v1", &task).key(&c));
    // Field boundaries matter: ("ab","c") and ("a","bc") differ.
    assert_ne!(
        TaskHasher::new("ab", "c", &task).key(&ex.criteria[0]),
        TaskHasher::new("a", "bc", &task).key(&ex.criteria[0])
    );
}

#[test]
fn two_handles_on_one_file_share_verdicts_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    let ex = example();
    let task = GradeTask {
        example: &ex,
        response: "r",
        criteria: None,
    };
    let writers: Vec<_> = (0..4u8)
        .map(|w| {
            let path = path.clone();
            let ex = ex.clone();
            std::thread::spawn(move || {
                let cache = VerdictCache::open(&path).unwrap();
                for n in 0..50u32 {
                    let task = GradeTask {
                        example: &ex,
                        response: &format!("{w}-{n}"),
                        criteria: None,
                    };
                    let key = TaskHasher::new("j", "", &task).key(&ex.criteria[0]);
                    let v = CachedVerdict {
                        value: 1.0,
                        explanation: format!("{w}-{n}"),
                        judge: "j".into(),
                    };
                    cache.put_many(&[(key, v)]).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let reader = VerdictCache::open(&path).unwrap();
    assert_eq!(reader.len().unwrap(), 200);
    let probe = GradeTask {
        response: "3-49",
        ..task
    };
    let got = reader
        .get_many(&[TaskHasher::new("j", "", &probe).key(&ex.criteria[0])])
        .unwrap();
    assert_eq!(
        got[0].as_ref().map(|v| v.explanation.as_str()),
        Some("3-49")
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "this is not a database, just some text that is long enough",
    )
    .unwrap();
    let err = VerdictCache::open(&path)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
}

/// Set in the child processes of the test below: this child's writer index, and the folder
/// of the shared file.
const CHILD_ENV: &str = "ARLRR_TEST_CACHE_WRITER";
const CHILD_DIR_ENV: &str = "ARLRR_TEST_CACHE_DIR";
const WRITERS: u32 = 4;
const PER_WRITER: u32 = 60;

fn writer_entry(ex: &Example, w: u32, n: u32) -> (judge::cache::CacheKey, CachedVerdict) {
    let response = format!("{w}-{n}");
    let task = GradeTask {
        example: ex,
        response: &response,
        criteria: None,
    };
    let key = TaskHasher::new("j", "", &task).key(&ex.criteria[0]);
    let v = CachedVerdict {
        value: f64::from(n % 2),
        explanation: response,
        judge: format!("writer-{w}"),
    };
    (key, v)
}

/// One child process: opens the shared file, writes its first entry, waits until every
/// writer's first entry is there (so all processes hold the file open and write at the same
/// time, not one after the other), then writes the rest one transaction each and the last
/// tenth in one batch.
fn cache_writer_child(path: &std::path::Path, w: u32) {
    let ex = example();
    let cache = VerdictCache::open(path).unwrap();
    cache.put_many(&[writer_entry(&ex, w, 0)]).unwrap();
    let mut polls = 0;
    while cache.len().unwrap() < u64::from(WRITERS) {
        polls += 1;
        assert!(polls < 30_000, "the other writers never started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let batch_from = PER_WRITER - PER_WRITER / 10;
    for n in 1..batch_from {
        cache.put_many(&[writer_entry(&ex, w, n)]).unwrap();
    }
    let batch: Vec<_> = (batch_from..PER_WRITER)
        .map(|n| writer_entry(&ex, w, n))
        .collect();
    cache.put_many(&batch).unwrap();
}

#[test]
fn several_processes_writing_one_file_at_once_lose_nothing() {
    const NAME: &str = "several_processes_writing_one_file_at_once_lose_nothing";
    if let Ok(w) = std::env::var(CHILD_ENV) {
        let dir = std::env::var(CHILD_DIR_ENV).unwrap();
        cache_writer_child(
            &std::path::Path::new(&dir).join("multi.sqlite"),
            w.parse().unwrap(),
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The file does not exist yet: the children race to create it and switch it to WAL.
    let path = dir.path().join("multi.sqlite");
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, w.to_string())
                .env(CHILD_DIR_ENV, dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (w, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer {w} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reader = VerdictCache::open(&path).unwrap();
    assert_eq!(reader.len().unwrap(), u64::from(WRITERS * PER_WRITER));
    let ex = example();
    let (keys, want): (Vec<_>, Vec<_>) = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |n| (w, n)))
        .map(|(w, n)| writer_entry(&ex, w, n))
        .unzip();
    let got = reader.get_many(&keys).unwrap();
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got.as_ref(), Some(want));
    }
}

/// Many processes open fresh files at the same moment, as the workers of a multi-process run
/// do on their first step. Switching a new file to WAL needs it alone, and SQLite reports that
/// conflict without waiting; every process must still open every file (CI once saw
/// "cannot switch to WAL: database is locked" here).
#[test]
fn processes_racing_to_create_the_same_files_all_open_them() {
    const NAME: &str = "processes_racing_to_create_the_same_files_all_open_them";
    const PROCESSES: u32 = 8;
    const FILES: u32 = 25;
    if let Ok(w) = std::env::var(CHILD_ENV) {
        let dir = std::path::PathBuf::from(std::env::var(CHILD_DIR_ENV).unwrap());
        let ex = example();
        // All start together: each waits for the others' start files.
        std::fs::write(dir.join(format!("start-{w}")), "").unwrap();
        let mut polls = 0;
        while (0..PROCESSES).any(|o| !dir.join(format!("start-{o}")).exists()) {
            polls += 1;
            assert!(polls < 30_000, "the other processes never started");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for f in 0..FILES {
            let cache = VerdictCache::open(dir.join(format!("race-{f}.sqlite"))).unwrap();
            cache
                .put_many(&[writer_entry(&ex, w.parse().unwrap(), f)])
                .unwrap();
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|w| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, w.to_string())
                .env(CHILD_DIR_ENV, dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (w, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "process {w} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in 0..FILES {
        let cache = VerdictCache::open(dir.path().join(format!("race-{f}.sqlite"))).unwrap();
        assert_eq!(cache.len().unwrap(), u64::from(PROCESSES), "file {f}");
    }
}
