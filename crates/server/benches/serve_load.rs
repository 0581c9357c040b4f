//! Loopback load benchmark of the reward service: 500 concurrent OpenRLHF-shaped requests
//! (8 completions of one built-in prompt each) against an in-process service with the rule
//! judge and its SQLite cache; prints answered / lost and the latency median and p99.
//!
//! `cargo bench -p arlrr-server --bench serve_load` (`ARLRR_BENCH_REQUESTS` and
//! `ARLRR_BENCH_COMPLETIONS` change the load).

use rand::SeedableRng;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let requests = env_or("ARLRR_BENCH_REQUESTS", 500);
    let per_request = env_or("ARLRR_BENCH_COMPLETIONS", 8);
    let dir = tempfile::tempdir().expect("temp dir");
    let service = service(dir.path());
    let bodies = bodies(&service, requests, per_request);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/openrlhf/reward", listener.local_addr().unwrap());
        tokio::spawn(server::conn::serve(
            listener,
            service,
            std::future::pending(),
        ));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(requests)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        for round in ["first grading", "all verdicts cached"] {
            let start = Instant::now();
            let (answered, latencies) = post_all(&client, &url, &bodies, per_request).await;
            let wall = start.elapsed().as_secs_f64();
            println!(
                "serve_load: {requests} concurrent requests x {per_request} completions over \
                 loopback (rule judge + SQLite cache, {round})"
            );
            report(latencies, requests, answered, per_request, wall);
        }
    });
}

/// The service on the built-in task's train split, with the rule judge and its SQLite cache.
fn service(dir: &std::path::Path) -> Arc<server::Service> {
    let files = rubric::builtin::write_splits(rubric::builtin::BuiltinSpec::default(), dir)
        .expect("write the built-in task");
    let data = rubric::load(&files[0].1).expect("load the built-in train split");
    let judge = judge::CachedJudge::open(judge::RuleJudge::new(), dir.join("cache.sqlite"))
        .expect("open the cache");
    server::Service::new(server::ServiceConfig {
        data,
        classes: rubric::ClassSpec::default(),
        judge: Arc::new(judge),
        judge_cached: true,
        retries: judge::DEFAULT_RETRIES,
        objective: schedule::ObjectiveKind::Alternating,
        weights: schedule::Weights::Points,
        schedule: server::ScheduleSettings {
            objective: schedule::ObjectiveKind::Alternating,
            phases: schedule::PhaseConfig {
                selector: schedule::SelectorKind::RoundRobin,
                ..Default::default()
            },
            completions_per_step: 0,
        },
        state_dir: dir.join("state"),
        token: None,
        limits: server::Limits::default(),
        groups: server::GroupSettings::default(),
        grade: server::GradeScope::All,
    })
    .expect("build the service")
}

/// The request bodies: one prompt each, `per_request` sampled responses of mixed quality.
fn bodies(service: &server::Service, requests: usize, per_request: usize) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..requests)
        .map(|i| {
            let ex = &service.data().examples[i % service.data().len()];
            let prompt = server::prompts::conversation_text(&ex.prompt);
            let query: Vec<String> = (0..per_request)
                .map(|j| {
                    let q = j as f64 / per_request.max(1) as f64;
                    format!(
                        "{prompt}{}",
                        rubric::builtin::sample_response(ex, q, &mut rng)
                    )
                })
                .collect();
            serde_json::json!({
                "query": query,
                "prompts": vec![prompt; per_request],
                "labels": vec![ex.id.clone(); per_request],
            })
            .to_string()
        })
        .collect()
}

/// Sends every body at once; answers how many were answered in full and the latency (ms) of
/// each request that ended.
async fn post_all(
    client: &reqwest::Client,
    url: &str,
    bodies: &[String],
    per_request: usize,
) -> (usize, Vec<f64>) {
    let tasks: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .map(|v| v["rewards"].as_array().map(Vec::len) == Some(per_request))
                        .unwrap_or(false),
                    _ => false,
                };
                (ok, t.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(bodies.len());
    let mut answered = 0;
    for t in tasks {
        if let Ok((ok, d)) = t.await {
            answered += usize::from(ok);
            latencies.push(d.as_secs_f64() * 1e3);
        }
    }
    (answered, latencies)
}

/// Prints a round's answered / lost, latency median, p99 and max, and throughput.
fn report(
    mut latencies: Vec<f64>,
    requests: usize,
    answered: usize,
    per_request: usize,
    wall: f64,
) {
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "  answered {answered}, lost {}; latency median {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         {:.0} completions/s",
        requests - answered,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        (answered * per_request) as f64 / wall
    );
}
