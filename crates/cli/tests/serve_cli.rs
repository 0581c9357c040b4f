//! `arlrr serve` through the real binary over real HTTP, with the rule judge on the built-in
//! task: OpenRLHF-shaped requests get the rewards `arlrr grade` verdicts imply; the alternating
//! schedule switches classes after the configured steps; bad input gets 4xx and the service
//! keeps serving; 500 concurrent requests are all answered; a SIGKILLed service restarts with
//! its cache and schedule; the Python examples run against it; token, limits, timeout and the
//! judge's API key are handled.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const RULES: &str = "kind = \"rules\"\n";

mod common;
use common::{
    arlrr, chatml, close, completions, get, metric, ok, post, serve_args, task, user_text, Serve,
    Task,
};

fn base_args<'a>(t: &'a Task, state: &'a Path) -> Vec<&'a str> {
    serve_args(&t.train, &t.judge, state, &[])
}

/// What a completion should score, from `arlrr grade` verdicts.
struct Expected {
    /// Over all criteria.
    overall: Option<f64>,
    /// By class name.
    classes: HashMap<String, Option<f64>>,
}

/// Rewards from `arlrr grade` verdicts, with HealthBench's formula written out:
/// Σ points × met / Σ positive points over all criteria (overall) and over the criteria tagged
/// `axis:<class>` (classes).
fn expected_rewards(dir: &Path, t: &Task, items: &[(&Value, &str)]) -> Vec<Expected> {
    let responses: String = items
        .iter()
        .map(|(ex, c)| json!({"prompt_id": ex["prompt_id"], "completion": c}).to_string() + "\n")
        .collect();
    let (resp, grades) = (dir.join("responses.jsonl"), dir.join("grades.jsonl"));
    std::fs::write(&resp, responses).unwrap();
    let out = arlrr()
        .args(["grade", "--data", t.train.to_str().unwrap(), "--judge"])
        .arg(&t.judge)
        .arg("--responses")
        .arg(&resp)
        .arg("--out")
        .arg(&grades)
        .output()
        .unwrap();
    ok(&out);
    std::fs::read_to_string(&grades)
        .unwrap()
        .lines()
        .zip(items)
        .map(|(line, (ex, _))| {
            let g: Value = serde_json::from_str(line).unwrap();
            let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
            let mut all = (0.0, 0.0);
            for (c, met) in ex["rubrics"]
                .as_array()
                .unwrap()
                .iter()
                .zip(g["met"].as_array().unwrap())
            {
                let axis = c["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find_map(|t| t.as_str().unwrap().strip_prefix("axis:"))
                    .unwrap()
                    .to_string();
                let p = c["points"].as_f64().unwrap();
                let m = if met.as_bool().unwrap() { 1.0 } else { 0.0 };
                for e in [sums.entry(axis).or_default(), &mut all] {
                    e.0 += p * m;
                    e.1 += p.max(0.0);
                }
            }
            let ratio = |(got, max): (f64, f64)| (max > 0.0).then(|| got / max);
            Expected {
                overall: ratio(all),
                classes: rubric::HEALTHBENCH_AXES
                    .iter()
                    .map(|a| (a.to_string(), sums.get(*a).copied().and_then(ratio)))
                    .collect(),
            }
        })
        .collect()
}

/// The `extra_logs` of an OpenRLHF answer: the same keys in every answer (OpenRLHF
/// concatenates them across requests), one value per query each.
fn check_extra_logs(answer: &Value, n: usize, active_index: f64) {
    let logs = answer["extra_logs"].as_object().unwrap();
    let mut want: Vec<String> = vec!["arlrr/overall".into(), "arlrr/active_class".into()];
    for c in rubric::HEALTHBENCH_AXES {
        want.push(format!("arlrr/{c}"));
        want.push(format!("arlrr/{c}_defined"));
    }
    want.sort();
    let mut keys: Vec<String> = logs.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, want, "{answer}");
    for (k, v) in logs {
        assert_eq!(v.as_array().map(Vec::len), Some(n), "{k}: {v}");
    }
    assert_eq!(logs["arlrr/active_class"], json!(vec![active_index; n]));
    for key in ["rewards", "scores"] {
        assert_eq!(answer[key].as_array().map(Vec::len), Some(n), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openrlhf_requests_get_graded_rewards_and_bad_input_gets_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(dir.path(), &base_args(&t, &state), &[]);
    let client = reqwest::Client::new();
    let url = format!("{}/openrlhf/reward", serve.url);

    // three prompts x five completions, shuffled into one OpenRLHF batch; ids in the labels
    let picked = [&t.examples[0], &t.examples[1], &t.examples[2]];
    let mut items: Vec<(&Value, String)> = Vec::new();
    for ex in picked {
        for c in completions(ex) {
            items.push((ex, c));
        }
        // every mistake, jargon and alarm: an overall score below zero, which `scores` clips
        items.push((
            ex,
            "Start antibiotics, double your usual dose, lie down right after eating, put heat \
             on it, scrub it with alcohol: the etiology is idiopathic and you might die."
                .into(),
        ));
    }
    items.swap(0, 5);
    let body = json!({
        "query": items.iter().map(|(ex, c)| format!("{}{c}<|im_end|><|endoftext|>", chatml(&user_text(ex)))).collect::<Vec<_>>(),
        "prompts": items.iter().map(|(ex, _)| chatml(&user_text(ex))).collect::<Vec<_>>(),
        "labels": items.iter().map(|(ex, _)| ex["prompt_id"].clone()).collect::<Vec<_>>(),
    });
    let (status, answer) = post(&client, &url, &body).await;
    assert_eq!(status, 200, "{answer}");
    let refs: Vec<(&Value, &str)> = items.iter().map(|(e, c)| (*e, c.as_str())).collect();
    let expected = expected_rewards(dir.path(), &t, &refs);
    let schedule = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    let active = schedule["active_class"].as_str().unwrap().to_string();
    assert_eq!(
        active, "accuracy",
        "round robin starts with the first class"
    );
    let rewards = answer["rewards"].as_array().unwrap();
    assert_eq!(rewards.len(), items.len());
    // `arlrr/active_class` is the index of the active class (accuracy) in the class list
    check_extra_logs(&answer, items.len(), 0.0);
    let mut spread = false;
    let mut clipped = 0;
    for (i, exp) in expected.iter().enumerate() {
        let want = exp.classes[&active].unwrap_or(0.0);
        assert!(
            close(rewards[i].as_f64().unwrap(), want),
            "item {i}: {} vs {want}",
            rewards[i]
        );
        for (class, v) in &exp.classes {
            let got = answer["extra_logs"][format!("arlrr/{class}")][i]
                .as_f64()
                .unwrap();
            let defined = answer["extra_logs"][format!("arlrr/{class}_defined")][i]
                .as_f64()
                .unwrap();
            assert!(
                close(got, v.unwrap_or(0.0)),
                "item {i} {class}: {got} vs {v:?}"
            );
            assert_eq!(defined, if v.is_some() { 1.0 } else { 0.0 });
        }
        // `scores` is the overall score clipped to [0, 1]; `arlrr/overall` is not clipped
        let overall = exp.overall.unwrap();
        let score = answer["scores"][i].as_f64().unwrap();
        assert!(
            close(score, overall.clamp(0.0, 1.0)),
            "item {i}: score {score} vs overall {overall}"
        );
        let logged = answer["extra_logs"]["arlrr/overall"][i].as_f64().unwrap();
        assert!(close(logged, overall), "item {i}: {logged} vs {overall}");
        clipped += usize::from(overall < 0.0);
        spread |= !close(want, rewards[0].as_f64().unwrap());
    }
    assert!(spread, "the completions should not all score alike");
    assert!(clipped >= 3, "the worst completions score below zero");

    // the same prompt matched by its text alone (an example whose text is unique)
    let mut counts: HashMap<String, usize> = HashMap::new();
    for ex in &t.examples {
        *counts.entry(user_text(ex)).or_default() += 1;
    }
    let unique = t
        .examples
        .iter()
        .find(|e| counts[&user_text(e)] == 1)
        .unwrap();
    let c = &completions(unique)[0];
    let by_text = json!({"query": [format!("{}{c}", chatml(&user_text(unique)))], "prompts": [chatml(&user_text(unique))], "labels": [null]});
    let by_id = json!({"query": [format!("{}{c}", chatml(&user_text(unique)))], "prompts": [chatml(&user_text(unique))], "labels": [unique["prompt_id"]]});
    let (s1, a1) = post(&client, &url, &by_text).await;
    let (s2, a2) = post(&client, &url, &by_id).await;
    assert_eq!((s1, s2), (200, 200), "{a1} {a2}");
    assert_eq!(a1["rewards"], a2["rewards"]);
    check_extra_logs(&a1, 1, 0.0);
    check_extra_logs(&a2, 1, 0.0);

    // bad input: 4xx naming the field and item, and the service keeps serving
    let raw = |body: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, e) = raw("{\"query\": [\"a\", ").await;
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{e}"
    );
    let (s, e) =
        raw("{\"query\": [\"a\", \"b\"], \"prompts\": [\"a\"], \"labels\": [null, null]}").await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["field"], "prompts", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`query` has 2"),
        "{e}"
    );
    let (s, e) = raw("{\"query\": [\"a\"], \"prompts\": [\"a\"], \"labels\": [1, 2]}").await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (400, Some("labels")),
        "{e}"
    );
    let (s, e) = raw("{\"query\": 5}").await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (400, Some("query")),
        "{e}"
    );
    let unknown = json!({"query": ["xa", "yb"], "prompts": ["x", "y"], "labels": [t.examples[0]["prompt_id"], "no-such-id"]});
    let (s, e) = post(&client, &url, &unknown).await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["error"]["items"][0]["index"], 1);
    assert_eq!(e["error"]["items"][0]["field"], "labels[1]");
    assert!(e["error"]["items"][0]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-id"));
    let unknown_text = json!({"query": ["hello there"], "prompts": ["hello"], "labels": [null]});
    let (s, e) = post(&client, &url, &unknown_text).await;
    assert_eq!(s, 422);
    assert_eq!(e["error"]["items"][0]["field"], "prompts[0]", "{e}");
    let native = format!("{}/v1/rewards", serve.url);
    let (s, e) = post(
        &client,
        &native,
        &json!({"items": [{"prompt_id": "x", "completion": ["a"]}]}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["field"], "items[0].completion", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field"),
        "{e}"
    );
    let (s, _) = post(&client, &format!("{}/nope", serve.url), &json!({})).await;
    assert_eq!(s, 404);
    assert_eq!(
        get(&client, &format!("{}/healthz", serve.url)).await["status"],
        "ok"
    );
    let (s, again) = post(&client, &url, &body).await;
    assert_eq!(s, 200);
    assert_eq!(again, answer, "still serving, same answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alternating_schedule_switches_classes_after_the_configured_steps() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let mut args = base_args(&t, &state);
    args.extend(["--selector", "round_robin", "--phase-steps", "3"]);
    let serve = Serve::start(dir.path(), &args, &[]);
    let client = reqwest::Client::new();
    let ex = &t.examples[3];
    let native = json!({"prompt_id": ex["prompt_id"], "completions": completions(ex)});
    let report = format!("{}/v1/schedule/report", serve.url);
    let mut seen = Vec::new();
    for step in 1..=9u64 {
        let (s, a) = post(&client, &format!("{}/v1/rewards", serve.url), &native).await;
        assert_eq!(s, 200, "{a}");
        let active = a["active_class"].as_str().unwrap().to_string();
        // the scalar is the active class's reward
        for c in a["items"][0]["completions"].as_array().unwrap() {
            assert_eq!(c["reward"], c["classes"][&active]);
        }
        seen.push(active);
        let (s, r) = post(&client, &report, &json!({"step": step})).await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["decision"].is_null(), step % 3 != 0, "step {step}: {r}");
    }
    let want: Vec<&str> = ["accuracy", "completeness", "communication_quality"]
        .iter()
        .flat_map(|c| [*c; 3])
        .collect();
    assert_eq!(seen, want);
    let status = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(status["active_class"], "context_awareness");
    assert_eq!(
        (status["step"].as_u64(), status["phase"].as_u64()),
        (Some(9), Some(4))
    );
    assert_eq!(
        metric(&client, &serve.url, "arlrr_schedule_phase").await,
        4.0
    );
    let log = std::fs::read_to_string(state.join("schedule.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4, "one decision per phase");

    // deficit in service mode: waits for the trainer's validation, graded by the service.
    // One example whose points shares are accuracy 10/20, completeness 6/20 and
    // communication_quality 4/20 (the other axes have no positive points: no candidates).
    drop(serve);
    let keyed = |word: &str, points: i32, axis: &str| {
        json!({"criterion": format!("Says {word}"), "points": points, "tags": [format!("axis:{axis}")],
               "check": {"kind": "contains_any", "phrases": [word]}})
    };
    let example = json!({"prompt_id": "d1", "prompt": [{"role": "user", "content": "Rate my plan."}],
        "example_tags": [], "rubrics": [
            keyed("alpha", 5, "accuracy"), keyed("bravo", 5, "accuracy"), keyed("oops", -2, "accuracy"),
            keyed("charlie", 6, "completeness"), keyed("delta", 4, "communication_quality")]});
    let data = dir.path().join("deficit.jsonl");
    std::fs::write(&data, format!("{example}\n")).unwrap();
    let state = dir.path().join("state-deficit");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--judge",
        t.judge.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--selector",
        "deficit",
        "--phase-steps",
        "1",
    ];
    let serve = Serve::start(dir.path(), &args, &[]);
    let report = format!("{}/v1/schedule/report", serve.url);
    let (_, r) = post(&client, &report, &json!({"step": 1})).await;
    assert_eq!(r["schedule"]["waiting_for"], "validation", "{r}");
    // accuracy 1, 1, 0.5, 0.5, (5 - 2)/10; completeness one in five; communication never:
    // the weakest class (communication) and the heaviest (accuracy) both lose to completeness
    let texts = [
        "alpha bravo charlie",
        "alpha bravo",
        "alpha",
        "bravo",
        "alpha oops",
    ];
    let validation: Vec<Value> = texts
        .iter()
        .map(|c| json!({"prompt_id": "d1", "completion": c}))
        .collect();
    let (s, r) = post(
        &client,
        &report,
        &json!({"validation_completions": validation}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let scores = [
        ("accuracy", (1.0 + 1.0 + 0.5 + 0.5 + 0.3) / 5.0, 10.0 / 20.0),
        ("completeness", 1.0 / 5.0, 6.0 / 20.0),
        ("communication_quality", 0.0, 4.0 / 20.0),
    ];
    let overall = (16.0 / 20.0 + 10.0 / 20.0 + 5.0 / 20.0 + 5.0 / 20.0 + 3.0 / 20.0) / 5.0;
    assert!(
        close(r["validation"]["overall"].as_f64().unwrap(), overall),
        "{r}"
    );
    let decision = &r["decision"];
    assert_eq!(decision["selector"], "deficit", "{r}");
    assert_eq!(decision["chosen"], "completeness", "{r}");
    let candidates = decision["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), scores.len(), "{r}");
    for ((name, score, share), c) in scores.iter().zip(candidates) {
        assert_eq!(c["class"], *name, "{r}");
        let (deficit, detail) = (c["score"].as_f64().unwrap(), c["detail"].as_f64().unwrap());
        assert!(
            close(detail, *score),
            "{name}: class score {detail} vs {score}"
        );
        assert!(
            close(deficit, share * (1.0 - score)),
            "{name}: deficit {deficit} vs {}",
            share * (1.0 - score)
        );
        assert!(close(
            r["validation"]["classes"][name].as_f64().unwrap(),
            *score
        ));
    }
    let (s, e) = post(
        &client,
        &report,
        &json!({"probe_class": "accuracy", "validation": {"overall": 0.5}}),
    )
    .await;
    assert_eq!(s, 409, "{e}");
    let (s, e) = post(
        &client,
        &report,
        &json!({"validation": {"classes": {"nope": 0.5}}}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (400, Some("validation.classes.nope")),
        "{e}"
    );

    // lookahead in service mode: the service names the candidates, the reward follows the
    // probed class, and after the last probe report it commits to the best
    drop(serve);
    let state = dir.path().join("state-lookahead");
    let mut args = base_args(&t, &state);
    args.extend([
        "--selector",
        "lookahead",
        "--phase-steps",
        "2",
        "--probe-steps",
        "3",
    ]);
    let serve = Serve::start(dir.path(), &args, &[]);
    let report = format!("{}/v1/schedule/report", serve.url);
    let status = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(status["waiting_for"], "probe", "{status}");
    assert_eq!(status["probe"]["probe_steps"], 3);
    let candidates: Vec<String> = status["probe"]["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(candidates.len(), 5);
    let mut last = Value::Null;
    for (i, class) in candidates.iter().enumerate() {
        let (_, a) = post(&client, &format!("{}/v1/rewards", serve.url), &native).await;
        assert_eq!(
            a["active_class"],
            class.as_str(),
            "the reward follows the probed class"
        );
        let score = if class == "context_awareness" {
            0.9
        } else {
            0.1 * i as f64
        };
        let (s, r) = post(
            &client,
            &report,
            &json!({"probe_class": class, "validation": {"overall": score}}),
        )
        .await;
        assert_eq!(s, 200, "{r}");
        last = r;
    }
    assert_eq!(last["decision"]["chosen"], "context_awareness", "{last}");
    assert_eq!(last["schedule"]["waiting_for"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(dir.path(), &base_args(&t, &state), &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let url = format!("{}/openrlhf/reward", serve.url);
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let ex = &t.examples[i % t.examples.len()];
            let prompt = chatml(&user_text(ex));
            let cs = completions(ex);
            let body = json!({
                "query": cs.iter().map(|c| format!("{prompt}{c}")).collect::<Vec<_>>(),
                "prompts": vec![prompt; cs.len()],
                "labels": vec![ex["prompt_id"].clone(); cs.len()],
            });
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let (s, a) = post(&client, &url, &body).await;
                s == 200 && a["rewards"].as_array().map(Vec::len) == Some(4)
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        answered += usize::from(task.await.unwrap());
    }
    assert_eq!(answered, 500, "every request answered, none lost");
    assert_eq!(
        get(&client, &format!("{}/healthz", serve.url)).await["status"],
        "ok"
    );
    assert_eq!(
        metric(&client, &serve.url, "arlrr_completions_graded_total").await,
        2000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_restarts_with_its_cache_and_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let mut args = base_args(&t, &state);
    args.extend(["--selector", "round_robin", "--phase-steps", "2"]);
    let client = reqwest::Client::new();
    let batch = json!({"items": t.examples[..6].iter().map(|e| json!({"prompt_id": e["prompt_id"], "completions": completions(e)})).collect::<Vec<_>>()});

    let serve = Serve::start(dir.path(), &args, &[]);
    let (s, first) = post(&client, &format!("{}/v1/rewards", serve.url), &batch).await;
    assert_eq!(s, 200, "{first}");
    let fresh_calls = metric(&client, &serve.url, "arlrr_judge_calls_total").await;
    assert!(fresh_calls > 0.0);
    for step in 1..=5 {
        post(
            &client,
            &format!("{}/v1/schedule/report", serve.url),
            &json!({"step": step}),
        )
        .await;
    }
    let before = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(before["active_class"], "communication_quality");
    serve.kill();

    let serve = Serve::start(dir.path(), &args, &[]);
    let after = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    for key in [
        "step",
        "phase",
        "active_class",
        "phase_start_step",
        "last_decision",
    ] {
        assert_eq!(after[key], before[key], "{key} after the restart");
    }
    let (s, again) = post(&client, &format!("{}/v1/rewards", serve.url), &batch).await;
    assert_eq!(s, 200);
    assert_eq!(
        metric(&client, &serve.url, "arlrr_judge_calls_total").await,
        0.0,
        "all from the cache"
    );
    assert_eq!(
        metric(&client, &serve.url, "arlrr_judge_cache_hits_total").await,
        fresh_calls
    );
    assert_eq!(
        metric(&client, &serve.url, "arlrr_judge_cache_hit_rate").await,
        1.0
    );
    for (a, b) in first["items"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again["items"].as_array().unwrap())
    {
        for (x, y) in a["completions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["completions"].as_array().unwrap())
        {
            assert_eq!(x["classes"], y["classes"]);
        }
    }
    // the schedule goes on from where it was
    let (_, r) = post(
        &client,
        &format!("{}/v1/schedule/report", serve.url),
        &json!({"step": 6}),
    )
    .await;
    assert_eq!(r["decision"]["chosen"], "context_awareness", "{r}");

    // a state folder of another run is refused with a clear message
    drop(serve);
    let mut other = base_args(&t, &state);
    other.extend(["--objective", "gdpo"]);
    let out = arlrr().arg("serve").args(&other).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state-dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_examples_run_against_a_live_service() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let state = dir.path().join("state");
    let mut args = base_args(&t, &state);
    args.extend(["--token-env", "ARLRR_TEST_SERVE_TOKEN"]);
    let serve = Serve::start(
        dir.path(),
        &args,
        &[("ARLRR_TEST_SERVE_TOKEN", "s3cret-token")],
    );
    let client = reqwest::Client::new();
    let ex = &t.examples[5];
    let cs = completions(ex);
    let r = client
        .post(format!("{}/v1/rewards", serve.url))
        .bearer_auth("s3cret-token")
        .json(&json!({"prompt_id": ex["prompt_id"], "completions": cs}))
        .send()
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    let want: Vec<f64> = answer["items"][0]["completions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reward"].as_f64().unwrap_or(0.0))
        .collect();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let id = ex["prompt_id"].as_str().unwrap();
    let run = |script: &str, extra: &[&str]| {
        let out = Command::new("python3")
            .arg(examples.join(script))
            .args(extra)
            .args(&cs)
            .env("ARLRR_URL", &serve.url)
            .env("ARLRR_TOKEN", "s3cret-token")
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let trl = run("trl_reward.py", &[id]);
    assert_eq!(trl, json!(want), "TRL reward function");
    let verl = run("verl_reward.py", &[id]);
    let verl_scores: Vec<f64> = verl
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["score"].as_f64().unwrap())
        .collect();
    assert_eq!(verl_scores, want, "verl compute_score");
    let openrlhf = run("openrlhf_reward.py", &[id, &user_text(ex)]);
    assert_eq!(openrlhf, json!(want), "OpenRLHF protocol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_limits_timeout_and_the_api_key_never_leak() {
    let dir = tempfile::tempdir().unwrap();
    let t = task(dir.path());
    let client = reqwest::Client::new();

    // bearer token and body limit
    let state = dir.path().join("state");
    let mut args = base_args(&t, &state);
    args.extend([
        "--token-env",
        "ARLRR_TEST_SERVE_TOKEN",
        "--max-body-mib",
        "1",
    ]);
    let serve = Serve::start(dir.path(), &args, &[("ARLRR_TEST_SERVE_TOKEN", "tok")]);
    assert!(
        serve.url.starts_with("http://127.0.0.1:"),
        "loopback by default"
    );
    let status = |r: reqwest::Response| r.status().as_u16();
    let schedule = format!("{}/v1/schedule", serve.url);
    assert_eq!(status(client.get(&schedule).send().await.unwrap()), 401);
    assert_eq!(
        status(
            client
                .get(&schedule)
                .bearer_auth("wrong")
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            client
                .get(&schedule)
                .bearer_auth("tok")
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            client
                .get(format!("{}/healthz", serve.url))
                .send()
                .await
                .unwrap()
        ),
        200
    );
    let big =
        json!({"prompt_id": t.examples[0]["prompt_id"], "completions": ["x".repeat(1_200_000)]});
    let r = client
        .post(format!("{}/v1/rewards", serve.url))
        .bearer_auth("tok")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    drop(serve);

    // an HTTP judge whose backend never answers: the request times out with a message; one
    // that refuses connections fails with 503; the API key appears nowhere
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let secret = "sk-test-DO-NOT-LEAK-4242";
    for (port, timeout, want) in [
        (silent.local_addr().unwrap().port(), "1", "timeout"),
        (1u16, "30", "judge_unavailable"),
    ] {
        let judge = dir.path().join(format!("http-{port}.toml"));
        std::fs::write(
            &judge,
            format!(
                "kind = \"http\"\n[http]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodel = \"m\"\n\
                 api_key_env = \"ARLRR_TEST_JUDGE_KEY\"\nretries = 0\ntimeout_secs = 20\n"
            ),
        )
        .unwrap();
        let state = dir.path().join(format!("state-{port}"));
        let args = [
            "--data",
            t.train.to_str().unwrap(),
            "--judge",
            judge.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--request-timeout-secs",
            timeout,
        ];
        let serve = Serve::start(dir.path(), &args, &[("ARLRR_TEST_JUDGE_KEY", secret)]);
        let ex = &t.examples[0];
        let body = json!({"query": [format!("{}hi", chatml(&user_text(ex)))], "prompts": [chatml(&user_text(ex))], "labels": [ex["prompt_id"]]});
        let r = client
            .post(format!("{}/openrlhf/reward", serve.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503);
        let text = r.text().await.unwrap();
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"]["type"], want, "{e}");
        let metrics = client
            .get(format!("{}/metrics", serve.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            get(&client, &format!("{}/healthz", serve.url)).await["status"],
            "ok"
        );
        let log_path = serve.stderr.clone();
        drop(serve); // killed: everything it logged is on disk
        let log = std::fs::read_to_string(log_path).unwrap();
        for (what, s) in [("answer", &text), ("metrics", &metrics), ("log", &log)] {
            assert!(!s.contains(secret), "the API key leaked into the {what}");
        }
    }
}

/// The real HealthBench sample (fetched on first use): all 500 multi-turn conversations are
/// matched by their text alone, as chat messages and as ChatML-templated OpenRLHF prompts, and
/// a judge that cannot grade physician criteria (the rule judge: they have no `check`) is an
/// explicit error, never a made-up reward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthbench_conversations_match_by_text_and_ungradable_criteria_are_errors() {
    let sample = rubric::assets::healthbench_sample().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let judge = dir.path().join("rules.toml");
    std::fs::write(&judge, RULES).unwrap();
    let state = dir.path().join("state");
    let args = [
        "--data",
        sample.to_str().unwrap(),
        "--judge",
        judge.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let serve = Serve::start(dir.path(), &args, &[]);
    let client = reqwest::Client::new();
    let examples: Vec<Value> = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(examples.len(), 500);
    let items: Vec<Value> = examples
        .iter()
        .map(|e| json!({"prompt": e["prompt"], "completions": ["Please see a doctor."]}))
        .collect();
    let (s, a) = post(
        &client,
        &format!("{}/v1/rewards", serve.url),
        &json!({"items": items}),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    for (e, item) in examples.iter().zip(a["items"].as_array().unwrap()) {
        assert_eq!(item["prompt_id"], e["prompt_id"]);
        let c = &item["completions"][0];
        assert!(c["reward"].is_null());
        assert!(c["error"].as_str().unwrap().contains("not gradable"), "{c}");
    }

    let ex = examples
        .iter()
        .find(|e| e["prompt"].as_array().unwrap().len() > 2)
        .unwrap();
    let mut chat: String = ex["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap()
            )
        })
        .collect();
    chat.push_str("<|im_start|>assistant\n");
    let body = json!({"query": [format!("{chat}Please see a doctor.<|im_end|>")], "prompts": [chat], "labels": [null]});
    let (s, e) = post(&client, &format!("{}/openrlhf/reward", serve.url), &body).await;
    assert_eq!(s, 500, "{e}");
    assert_eq!(e["error"]["type"], "judge_cannot_grade");
    assert_eq!(e["error"]["items"][0]["field"], "query[0]");
    assert_eq!(
        get(&client, &format!("{}/healthz", serve.url)).await["status"],
        "ok"
    );
}
