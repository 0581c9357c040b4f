//! What the test binaries share: the `arlrr` binary and the repository's files, a running
//! service and the built-in task, a judge server, and the checks on their answers.
#![allow(dead_code)] // each test binary uses its own part

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `arlrr` binary under test, as a command to add arguments to.
pub fn arlrr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arlrr"))
}

/// `arlrr ARGS`, run to its end.
pub fn run_arlrr(args: &[&str]) -> Output {
    arlrr().args(args).output().expect("run arlrr")
}

/// Its stderr, after asserting that `out` is a success (the stderr says why not).
pub fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "arlrr failed: {stderr}");
    stderr
}

/// The repository's root folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped configs (and their tiny data).
pub fn configs() -> PathBuf {
    repo().join("configs")
}

/// The HealthBench sample, fetched once.
pub fn sample() -> PathBuf {
    rubric::assets::healthbench_sample().unwrap_or_else(|e| panic!("{e}"))
}

/// Every line of a JSONL file.
pub fn read_jsonl(path: impl AsRef<Path>) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A run's `metrics.jsonl` without its wall-clock times, to compare two runs.
pub fn metrics_without_times(run: &Path) -> Vec<Value> {
    let mut lines = read_jsonl(run.join("metrics.jsonl"));
    for v in &mut lines {
        v.as_object_mut().unwrap().remove("time_s");
    }
    lines
}

/// `arlrr train --quiet --config CONFIG --out OUT` started in the background (to be killed).
pub fn spawn_train(config: &Path, out: &Path) -> Child {
    arlrr()
        .args(["train", "--quiet", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The numbers of a JSON array.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Equal up to rounding.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// As many numbers, each [`close`] to its peer.
pub fn assert_close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    assert!(
        a.iter().zip(b).all(|(x, y)| close(*x, *y)),
        "{a:?} vs {b:?}"
    );
}

/// An OpenAI-compatible judge on a loopback port (its base URL is returned): HTTP 500 for a
/// request whose body `fails`, and a met verdict otherwise. `fails` sees every request, so it
/// can count them too.
pub async fn fake_judge(fails: impl Fn(&str) -> bool + Clone + Send + Sync + 'static) -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: String| {
            let failed = fails(&body);
            async move {
                if failed {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response()
                } else {
                    axum::Json(serde_json::json!({"choices": [{"message": {"content":
                        "{\"explanation\": \"fine\", \"criteria_met\": true}"}}]}))
                    .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// `http.toml` in `dir`: an HTTP judge at `base_url` that does not retry, so a failed grading
/// shows at once.
pub fn http_judge(dir: &Path, base_url: &str) -> PathBuf {
    let judge = dir.join("http.toml");
    std::fs::write(
        &judge,
        format!(
            "kind = \"http\"\n[http]\nbase_url = \"{base_url}\"\nmodel = \"m\"\nretries = 0\n\
             backoff_initial_secs = 0.01\nbackoff_max_secs = 0.01\n"
        ),
    )
    .unwrap();
    judge
}

/// Puts a directory in the place of the file `path`, so that writing the file fails even for
/// root (who ignores permissions): a new file renamed over a directory is refused. Returns
/// the file's content, for [`unblock`].
pub fn block(path: &Path) -> Vec<u8> {
    let content = std::fs::read(path).unwrap();
    std::fs::remove_file(path).unwrap();
    std::fs::create_dir(path).unwrap();
    content
}

/// Undoes [`block`]: the file again, with the content it had.
pub fn unblock(path: &Path, content: &[u8]) {
    std::fs::remove_dir(path).unwrap();
    std::fs::write(path, content).unwrap();
}

/// How many files and folders `dir` holds.
pub fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// A running `arlrr serve`; killed (SIGKILL) when dropped.
pub struct Serve {
    pub child: Child,
    pub url: String,
    /// Its stderr log.
    pub stderr: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// `arlrr serve ARGS` with extra environment variables; returns once it listens.
    pub fn start(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Serve {
        let mut serve = arlrr();
        serve.arg("serve").envs(envs.iter().copied());
        Self::spawn(dir, serve, args)
    }

    /// Runs `command` (`arlrr serve` or a wrapper of it) with `args`; returns once it listens.
    pub fn spawn(dir: &Path, mut command: Command, args: &[&str]) -> Serve {
        // a fresh log for each service, so a restarted one does not hide the first one's
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let stderr = dir.join(format!("serve-{}-{n}.stderr", std::process::id()));
        let log = std::fs::File::create(&stderr).unwrap();
        let mut child = command
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start arlrr serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(url) = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
        else {
            let _ = child.kill();
            panic!(
                "arlrr serve did not start: {line:?}\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Serve {
            url: url.to_string(),
            child,
            stderr,
        }
    }

    /// `host:port`, for raw TCP clients.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// Open file descriptors of the service process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// What the service wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The built-in task's train split, a rule judge config, and the examples.
pub struct Task {
    pub train: PathBuf,
    pub judge: PathBuf,
    pub examples: Vec<Value>,
}

pub fn task(dir: &Path) -> Task {
    ok(&arlrr()
        .args(["data", "builtin", "--out"])
        .arg(dir.join("data"))
        .output()
        .unwrap());
    let train = dir.join("data/train.jsonl");
    let judge = dir.join("rules.toml");
    std::fs::write(&judge, "kind = \"rules\"\n").unwrap();
    let examples = read_jsonl(&train);
    Task {
        train,
        judge,
        examples,
    }
}

/// `--data`, `--judge` and `--state-dir`, then `more`.
pub fn serve_args<'a>(
    train: &'a Path,
    judge: &'a Path,
    state: &'a Path,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "--data",
        train.to_str().unwrap(),
        "--judge",
        judge.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    a.extend(more);
    a
}

/// The user turn of a built-in example.
pub fn user_text(example: &Value) -> String {
    example["prompt"][0]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A prompt as a ChatML-templating engine sends it.
pub fn chatml(text: &str) -> String {
    format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
}

/// POST JSON; the status and the JSON answer (`null` when the body is not JSON).
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// GET a JSON answer.
pub async fn get(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Waits until `ready()` (a checkpoint on disk), then SIGKILLs `child` while it is still
/// running: a kill after the run finished would test nothing.
pub fn kill_when(child: &mut Child, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its checkpoint"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "killed mid-run, not after it finished"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// `arlrr serve ARGS` that must refuse to start: its exit code and stderr. A service that
/// starts instead is killed after a minute and fails the test (rather than hanging it).
pub fn serve_refused(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = arlrr()
        .arg("serve")
        .args(["--port", "0"])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err.reopen().unwrap()))
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "arlrr serve {args:?} started instead of refusing:\n{}",
                std::fs::read_to_string(err.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        std::fs::read_to_string(err.path()).unwrap_or_default(),
    )
}

/// A sample's value on the service's `/metrics` page.
pub async fn metric(client: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// Four responses of mixed quality built from an example's own ideal completion, so that every
/// class has spread within the group.
pub fn completions(example: &Value) -> Vec<String> {
    let ideal = example["ideal_completions_data"]["ideal_completion"]
        .as_str()
        .unwrap()
        .to_string();
    vec![
        ideal.clone(),
        "I am not sure. Maybe start antibiotics right away.".into(),
        format!("{ideal} Do you have any other symptoms? Take 2 tablets."),
        String::new(),
    ]
}

/// OpenRLHF's request for completions of one example, as a ChatML-templating engine sends it.
pub fn openrlhf_body(example: &Value, completions: &[String]) -> Value {
    let chat = chatml(&user_text(example));
    serde_json::json!({
        "query": completions.iter().map(|c| format!("{chat}{c}<|im_end|>")).collect::<Vec<_>>(),
        "prompts": vec![chat; completions.len()],
        "labels": vec![example["prompt_id"].clone(); completions.len()],
    })
}
