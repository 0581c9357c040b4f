//! `arlrr serve-judge` running the real SmolLM2-135M GGUF, graded over real HTTP by the HTTP
//! judge. SmolLM2 is a weak grader; what is checked is the protocol: every criterion ends in a
//! parsed verdict or an explicit failure, usage is reported, and nothing hangs.

use judge::{GradeTask, HttpJudge, HttpJudgeConfig, Judge, JudgeFailure};
use rubric::{Criterion, Example, Message};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> (Server, String) {
    let model = rubric::assets::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_arlrr"))
        .args([
            "serve-judge",
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--name",
            "smollm2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start arlrr serve-judge");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .unwrap_or_else(|| panic!("unexpected first line from serve-judge: {line:?}"))
        .to_string();
    (server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_judge_grades_through_serve_judge_running_smollm2() {
    let (_server, url) = start_server();
    let models: serde_json::Value = reqwest::get(format!("{url}/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smollm2");

    let judge = HttpJudge::new(HttpJudgeConfig {
        max_tokens: 40,
        concurrency: 2,
        timeout_secs: 240.0,
        retries: 1,
        backoff_initial_secs: 0.05,
        ..HttpJudgeConfig::new(url, "smollm2")
    })
    .unwrap();
    let crit = |t: &str, p: f64| Criterion {
        text: t.into(),
        points: p,
        tags: vec![],
        check: None,
    };
    let ex = Example {
        id: "e".into(),
        prompt: vec![Message {
            role: "user".into(),
            content: "I twisted my ankle. What should I do?".into(),
        }],
        criteria: vec![
            crit("Recommends resting the ankle", 5.0),
            crit("Recommends surgery", -5.0),
        ],
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: 1,
    };
    let task = GradeTask {
        example: &ex,
        response: "Rest it, put ice on it and keep it raised.",
        criteria: None,
    };
    let grades = tokio::time::timeout(Duration::from_secs(900), judge.grade(&[task]))
        .await
        .expect("grading through serve-judge hung");
    assert_eq!(grades[0].len(), 2);
    for g in &grades[0] {
        eprintln!(
            "criterion {}: {:?} attempts={} explanation={:?}",
            g.criterion, g.outcome, g.attempts, g.explanation
        );
        match &g.outcome {
            Ok(v) => assert!(*v == 0.0 || *v == 1.0),
            // A parse failure after the retries is the honest outcome for a weak grader.
            Err(JudgeFailure::Exhausted {
                attempts,
                last_error,
            }) => {
                assert_eq!(*attempts, 2);
                assert!(
                    last_error.contains("no verdict JSON")
                        || last_error.contains("conflicting verdict objects"),
                    "{last_error}"
                );
            }
            Err(other) => panic!("protocol failure: {other}"),
        }
    }
    let s = judge.stats();
    assert!(
        s.calls >= 2 && s.prompt_tokens > 100 && s.completion_tokens > 0,
        "{s:?}"
    );
}
