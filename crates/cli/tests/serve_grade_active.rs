//! The judge saving of alternation, delivered by the service: `arlrr serve --grade active`
//! grades only the active class's criteria (counted in `/metrics`), with the same reward for
//! that class as full grading; evaluation traffic (`x-arlrr-eval`) never moves the schedule.

use serde_json::{json, Value};

mod common;
use common::{completions, get, metric, post, serve_args, serve_refused, task, Serve, Task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grade_active_asks_only_the_active_class_and_rewards_it_as_full_grading_does() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let more = ["--phase-steps", "1", "--completions-per-step", "4"];
    let (full_state, active_state) = (dir.path().join("full"), dir.path().join("active"));
    let full = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &full_state, &more),
        &[],
    );
    let mut args = serve_args(&train, &judge, &active_state, &more);
    args.extend(["--grade", "active"]);
    let active = Serve::start(dir.path(), &args, &[]);
    let client = reqwest::Client::new();

    let (mut asked, mut criteria) = (0.0, 0.0);
    // three steps: three active classes in turn
    for ex in &examples[..3] {
        let body = json!({"prompt_id": ex["prompt_id"], "completions": completions(ex)});
        let (s, f) = post(&client, &format!("{}/v1/rewards", full.url), &body).await;
        assert_eq!(s, 200, "{f}");
        let (s, a) = post(&client, &format!("{}/v1/rewards", active.url), &body).await;
        assert_eq!(s, 200, "{a}");
        let class = a["active_class"].as_str().unwrap().to_string();
        assert_eq!(f["active_class"], json!(class), "the two schedules agree");
        assert_eq!(a["graded_classes"], json!([class]), "{a}");
        assert_eq!(f["graded_classes"].as_array().unwrap().len(), 5, "{f}");
        for (fc, ac) in f["items"][0]["completions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(a["items"][0]["completions"].as_array().unwrap())
        {
            assert_eq!(ac["reward"], fc["reward"], "{a}\n{f}");
            assert_eq!(ac["classes"][&class], fc["classes"][&class]);
            assert!(ac["overall"].is_null(), "the overall was not graded: {a}");
            for (name, v) in ac["classes"].as_object().unwrap() {
                if name != &class {
                    assert!(v.is_null(), "class {name} was not graded, never 0: {a}");
                }
            }
        }
        let n = ex["rubrics"].as_array().unwrap().len() as f64;
        let in_class = ex["rubrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["tags"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(format!("axis:{class}")))
            })
            .count() as f64;
        asked += in_class * 4.0;
        criteria += n * 4.0;
    }
    assert!(asked < criteria);
    assert_eq!(
        metric(&client, &active.url, "arlrr_judge_verdicts_total").await,
        asked
    );
    assert_eq!(
        metric(&client, &active.url, "arlrr_judge_verdicts_saved_total").await,
        criteria - asked
    );
    assert_eq!(
        metric(&client, &full.url, "arlrr_judge_verdicts_total").await,
        criteria
    );
    assert_eq!(
        metric(&client, &full.url, "arlrr_judge_verdicts_saved_total").await,
        0.0
    );

    // the baselines grade everything: `--grade active` is refused for them
    let dir2 = dir.path().join("scalarized");
    let mut args = serve_args(&train, &judge, &dir2, &["--objective", "scalarized"]);
    args.extend(["--grade", "active"]);
    let (code, err) = serve_refused(&args, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--grade active"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_traffic_is_answered_but_never_counted() {
    let dir = tempfile::tempdir().unwrap();
    let Task {
        train,
        judge,
        examples,
    } = task(dir.path());
    let state = dir.path().join("state");
    let serve = Serve::start(
        dir.path(),
        &serve_args(&train, &judge, &state, &["--completions-per-step", "4"]),
        &[],
    );
    let client = reqwest::Client::new();
    let ex = &examples[0];
    let body = json!({"prompt_id": ex["prompt_id"], "completions": completions(ex)});
    let url = format!("{}/v1/rewards", serve.url);
    for value in ["1", "true", "YES"] {
        let r = client
            .post(&url)
            .header("x-arlrr-eval", value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r: Value = r.json().await.unwrap();
        assert!(r["items"][0]["completions"][0]["reward"].is_number(), "{r}");
    }
    let st = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(st["step"], 0, "evaluation moved the schedule: {st}");
    let (s, _) = post(&client, &url, &body).await;
    assert_eq!(s, 200);
    let st = get(&client, &format!("{}/v1/schedule", serve.url)).await;
    assert_eq!(st["step"], 1, "{st}");
}
