//! Judge throughput figures (a benchmark, not a test: it prints numbers and asserts nothing).
//!
//! `cargo bench -p arlrr-judge --bench throughput`
//!
//! 1. HTTP judge against a loopback server that answers instantly (a fixed verdict), at
//!    concurrency 256: verdicts/s for one large batch, and per-verdict latency percentiles
//!    under that load and unloaded (one request at a time). With an instant server, the
//!    unloaded latency is what the judge adds: prompt building, JSON, HTTP, parsing.
//!    Targets: ≥ 5,000 verdicts/s, p99 added latency < 5 ms.
//! 2. Rule judge: criterion checks/s over realistic responses. Target ≥ 1,000,000/s.
//! 3. Verdict cache: hits/s served from SQLite.
//! 4. Embedding judge (MiniLM on this CPU) at HealthBench length: 8 examples of the fetched
//!    sample x 4 responses of ~10 rubric-style sentences each, every criterion graded, best of
//!    3 (skipped when the assets are not fetched). `JUDGE_BENCH_ONLY=embedding` runs this alone.

use axum::routing::post;
use axum::Router;
use judge::{CachedJudge, GradeTask, HttpJudge, HttpJudgeConfig, Judge, RuleJudge};
use rubric::{Check, Criterion, Example, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 256;

fn example(id: usize, criteria: Vec<Criterion>) -> Example {
    Example {
        id: format!("ex{id}"),
        prompt: vec![Message {
            role: "user".into(),
            content:
                "I have had a mild headache for two days and some neck stiffness. What should I do?"
                    .into(),
        }],
        criteria,
        tags: vec![],
        ideal_completion: None,
        canary: None,
        line: id + 1,
    }
}

const RESPONSE: &str = "I'm sorry you're dealing with this. A mild headache for two days is usually \
caused by tension, dehydration, poor sleep or eyestrain, and it often improves with rest.\n\n\
Things you can try:\n- Drink plenty of water and eat regular meals.\n- Rest in a quiet, dark room.\n\
- Take an over-the-counter pain reliever such as paracetamol or ibuprofen, following the label.\n\n\
However, neck stiffness together with headache can occasionally signal something serious such as \
meningitis, especially with fever, confusion, a rash, or sensitivity to light. If you notice any \
of these, seek emergency care immediately or call 911.\n\nDo you also have a fever or feel unusually \
sleepy? If the headache persists beyond 3 days, please see a doctor.";

/// Grades [`RESPONSE`] against `criteria` of `example` (all of them for `None`).
fn task<'a>(example: &'a Example, criteria: Option<&'a [usize]>) -> GradeTask<'a> {
    GradeTask {
        example,
        response: RESPONSE,
        criteria,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn print_latencies(label: &str, mut lat: Vec<Duration>) {
    lat.sort();
    println!(
        "  {label}: n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().unwrap().as_secs_f64() * 1e3
    );
}

async fn instant_server() -> std::net::SocketAddr {
    let body = serde_json::json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "model": "instant",
        "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "{\"explanation\": \"The reply advises seeing a doctor.\", \"criteria_met\": true}"},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320}
    })
    .to_string();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |_req: axum::body::Bytes| {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn http_bench() {
    let addr = instant_server().await;
    let judge = Arc::new(
        HttpJudge::new(HttpJudgeConfig {
            concurrency: CONCURRENCY,
            timeout_secs: 30.0,
            retries: 0,
            ..HttpJudgeConfig::new(format!("http://{addr}/v1"), "instant")
        })
        .unwrap(),
    );
    let criteria: Vec<Criterion> = (0..10)
        .map(|j| Criterion {
            text: format!("Advises the user to see a doctor if symptoms persist (item {j})"),
            points: 5.0,
            tags: vec!["axis:accuracy".into()],
            check: None,
        })
        .collect();
    let examples: Vec<Example> = (0..2_000).map(|i| example(i, criteria.clone())).collect();
    let tasks: Vec<GradeTask<'_>> = examples.iter().map(|e| task(e, None)).collect();

    // Warm-up: opens the connection pool.
    judge.grade(&tasks[..100]).await;

    println!("HTTP judge, instant loopback server, concurrency {CONCURRENCY}:");
    let started = Instant::now();
    let grades = judge.grade(&tasks).await;
    let secs = started.elapsed().as_secs_f64();
    let n: usize = grades.iter().map(Vec::len).sum();
    let failures = grades
        .iter()
        .flatten()
        .filter(|g| g.outcome.is_err())
        .count();
    println!(
        "  one batch: {n} verdicts in {secs:.3} s = {:.0} verdicts/s ({failures} failures)",
        n as f64 / secs
    );

    // Per-verdict latency under load: 256 workers, each grading one criterion at a time.
    let per_worker = 40;
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let judge = judge.clone();
            let ex = example(w, criteria.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_worker);
                for k in 0..per_worker {
                    let idx = [k % 10];
                    let t = Instant::now();
                    let g = judge.grade(&[task(&ex, Some(&idx))]).await;
                    lat.push(t.elapsed());
                    assert!(g[0][0].outcome.is_ok());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  256 single-verdict workers: {} verdicts in {secs:.3} s = {:.0} verdicts/s",
        lat.len(),
        lat.len() as f64 / secs
    );
    print_latencies("latency under load (incl. queueing)", lat);

    // Added latency: one request at a time against the instant server.
    let ex = example(0, criteria.clone());
    let mut lat = Vec::new();
    for k in 0..2_000 {
        let idx = [k % 10];
        let t = Instant::now();
        judge.grade(&[task(&ex, Some(&idx))]).await;
        lat.push(t.elapsed());
    }
    print_latencies("added latency, unloaded (judge + HTTP round trip)", lat);
    let s = judge.stats();
    println!(
        "  stats: calls={} verdicts={} failures={} prompt_tokens={}",
        s.calls, s.verdicts, s.failures, s.prompt_tokens
    );
}

fn rule_examples() -> Vec<Example> {
    let checks: Vec<Check> = [
        r#"{"kind":"contains_any","phrases":["doctor","physician","GP"]}"#,
        r#"{"kind":"contains_all","phrases":["water","rest"]}"#,
        r#"{"kind":"contains_none","phrases":["antibiotics","opioid"]}"#,
        r#"{"kind":"regex","pattern":"\\b(911|emergency)\\b"}"#,
        r#"{"kind":"word_count","min":50,"max":300}"#,
        r#"{"kind":"starts_with","text":"I'm sorry"}"#,
        r#"{"kind":"ends_with","text":"doctor."}"#,
        r#"{"kind":"has_list","style":"bullet"}"#,
        r#"{"kind":"asks_question"}"#,
        r#"{"kind":"mentions_number"}"#,
        r#"{"kind":"not","check":{"kind":"contains_any","phrases":["diagnosis is"]}}"#,
        r#"{"kind":"any","checks":[{"kind":"regex","pattern":"menin\\w+"},{"kind":"contains_any","phrases":["stroke"]}]}"#,
    ]
    .iter()
    .map(|j| serde_json::from_str(j).unwrap())
    .collect();
    (0..1_000)
        .map(|i| {
            example(
                i,
                checks
                    .iter()
                    .enumerate()
                    .map(|(j, c)| Criterion {
                        text: format!("rule {j}"),
                        points: 1.0,
                        tags: vec![],
                        check: Some(c.clone()),
                    })
                    .collect(),
            )
        })
        .collect()
}

fn rules_bench() {
    let judge = RuleJudge::new();
    let examples = rule_examples();
    let tasks: Vec<GradeTask<'_>> = examples.iter().map(|e| task(e, None)).collect();
    judge.grade_sync(&tasks[..10]);
    let rounds = 20;
    let started = Instant::now();
    let mut n = 0usize;
    let mut met = 0usize;
    for _ in 0..rounds {
        for row in judge.grade_sync(&tasks) {
            n += row.len();
            met += row.iter().filter(|g| g.outcome == Ok(1.0)).count();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "Rule judge: {n} criterion checks ({} words per response, 12 check kinds, {met} met) in {secs:.3} s = {:.0} checks/s",
        RESPONSE.split_whitespace().count(),
        n as f64 / secs
    );
}

async fn cache_bench() {
    let dir = tempfile::tempdir().unwrap();
    let judge = CachedJudge::open(RuleJudge::new(), dir.path().join("bench.sqlite")).unwrap();
    let examples = rule_examples();
    let tasks: Vec<GradeTask<'_>> = examples.iter().map(|e| task(e, None)).collect();
    let started = Instant::now();
    judge.grade(&tasks).await;
    let fill = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let grades = judge.grade(&tasks).await;
    let secs = started.elapsed().as_secs_f64();
    let n: usize = grades.iter().map(Vec::len).sum();
    println!(
        "Verdict cache: {n} misses stored in {fill:.3} s; {n} hits in {secs:.3} s = {:.0} hits/s",
        n as f64 / secs
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "cores available: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if std::env::var("JUDGE_BENCH_ONLY").as_deref() != Ok("embedding") {
        rt.block_on(http_bench());
        rules_bench();
        rt.block_on(cache_bench());
    }
    #[cfg(feature = "embedding")]
    rt.block_on(embedding_bench());
}

#[cfg(feature = "embedding")]
async fn embedding_bench() {
    let (data, judge) = match (
        rubric::assets::healthbench_sample(),
        judge::EmbeddingJudge::from_config(&Default::default()),
    ) {
        (Ok(path), Ok(judge)) => (rubric::load(path).expect("the fetched sample"), judge),
        (Err(e), _) | (_, Err(e)) => {
            println!("Embedding judge: skipped ({e})");
            return;
        }
    };
    let examples = &data.examples[..8];
    // Responses of criterion-like sentences (other examples' criteria): HealthBench's mix of
    // short and long sentences, in the order a response has them.
    let pool: Vec<&str> = data.examples[8..]
        .iter()
        .flat_map(|e| e.criteria.iter().map(|c| c.text.as_str()))
        .collect();
    let responses: Vec<String> = (0..examples.len() * 4)
        .map(|r| {
            (0..10)
                .map(|k| pool[(r * 37 + k * 11) % pool.len()].trim_end_matches('.'))
                .collect::<Vec<_>>()
                .join(". ")
        })
        .collect();
    let tasks: Vec<GradeTask<'_>> = responses
        .iter()
        .enumerate()
        .map(|(r, text)| GradeTask {
            example: &examples[r / 4],
            response: text,
            criteria: None,
        })
        .collect();
    let verdicts: usize = tasks.iter().map(|t| t.example.criteria.len()).sum();
    let mut best = f64::MAX;
    let mut met = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let grades = judge.grade(&tasks).await;
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(grades.iter().map(Vec::len).sum::<usize>(), verdicts);
        met = grades
            .iter()
            .flatten()
            .filter(|v| v.outcome == Ok(1.0))
            .count();
    }
    println!(
        "Embedding judge: {} responses, {verdicts} verdicts ({met} met) in {best:.2} s (best of 3) = {:.0} verdicts/s",
        tasks.len(),
        verdicts as f64 / best
    );
}
