//! `/metrics` read as Prometheus reads it (text exposition format 0.0.4): every family has one
//! HELP and one TYPE line before its samples; each latency histogram has cumulative buckets in
//! increasing `le` order ending in `+Inf`, whose count equals `_count`, and a `_sum` the
//! buckets bound. Checked on durations chosen here (exact figures) and on a live service after
//! a known set of requests over real HTTP.

use schedule::PhaseConfig;
use schedule::{ObjectiveKind, Weights};
use server::metrics::{Metrics, Snapshot};
use server::{GroupSettings, Limits, ScheduleSettings, Service, ServiceConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HISTOGRAM: &str = "arlrr_request_duration_seconds";

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
}

/// `name{a="x",b="y"} value` (escapes `\\`, `\"`, `\n` in label values).
fn parse_sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let (name, labels) = match head.split_once('{') {
        None => (head, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
            let mut labels = BTreeMap::new();
            let mut chars = body.chars().peekable();
            while chars.peek().is_some() {
                let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                assert_eq!(chars.next(), Some('"'), "{line:?}");
                let mut val = String::new();
                loop {
                    match chars.next().unwrap_or_else(|| panic!("{line:?}")) {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('n') => val.push('\n'),
                            Some(c @ ('\\' | '"')) => val.push(c),
                            c => panic!("bad escape {c:?} in {line:?}"),
                        },
                        c => val.push(c),
                    }
                }
                assert!(valid_name(&key, false), "label {key:?} in {line:?}");
                assert!(
                    labels.insert(key, val).is_none(),
                    "repeated label: {line:?}"
                );
                match chars.next() {
                    None | Some(',') => {}
                    c => panic!("unexpected {c:?} in {line:?}"),
                }
            }
            (name, labels)
        }
    };
    assert!(valid_name(name, true), "metric name {name:?}");
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Parses the page, checks HELP/TYPE, and returns the samples and each family's type.
fn parse(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut seen_samples: Vec<String> = Vec::new();
    assert!(text.ends_with('\n'), "the page ends with a line feed");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(!help.trim().is_empty(), "{line}");
            assert!(
                helps.insert(name.into(), help.into()).is_none(),
                "second HELP for {name}"
            );
            assert!(
                !seen_samples.contains(&name.to_string()),
                "HELP after samples of {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "second TYPE for {name}"
            );
            assert!(
                !seen_samples.contains(&name.to_string()),
                "TYPE after samples of {name}"
            );
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let s = parse_sample(line);
            // a histogram's series belong to the family without the suffix
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    s.name
                        .strip_suffix(suffix)
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(&s.name)
                .to_string();
            assert!(types.contains_key(&family), "no TYPE before {line}");
            assert!(helps.contains_key(&family), "no HELP before {line}");
            seen_samples.push(family);
            samples.push(s);
        }
    }
    (samples, types)
}

/// One histogram series (the labels besides `le`).
#[derive(Debug)]
struct Series {
    /// `(le, cumulative count)` in page order.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// Checks every histogram of the page and returns its series by endpoint.
fn histograms(samples: &[Sample], types: &HashMap<String, String>) -> BTreeMap<String, Series> {
    assert_eq!(types[HISTOGRAM], "histogram");
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.starts_with(HISTOGRAM)) {
        let endpoint = s.labels["endpoint"].clone();
        let series = out.entry(endpoint).or_insert(Series {
            buckets: Vec::new(),
            sum: f64::NAN,
            count: f64::NAN,
        });
        match &s.name[HISTOGRAM.len()..] {
            "_bucket" => {
                let le = &s.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                series.buckets.push((le, s.value));
            }
            "_sum" => series.sum = s.value,
            "_count" => series.count = s.value,
            other => panic!("unexpected series {HISTOGRAM}{other}"),
        }
    }
    for (endpoint, h) in &out {
        let les: Vec<f64> = h.buckets.iter().map(|b| b.0).collect();
        assert!(
            les.windows(2).all(|w| w[0] < w[1]),
            "{endpoint}: le order {les:?}"
        );
        assert_eq!(les.last(), Some(&f64::INFINITY), "{endpoint}: +Inf bucket");
        let counts: Vec<f64> = h.buckets.iter().map(|b| b.1).collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "{endpoint}: buckets not cumulative {counts:?}"
        );
        assert_eq!(counts.last(), Some(&h.count), "{endpoint}: +Inf vs _count");
        // each observation in (le[i-1], le[i]] adds more than le[i-1] and at most le[i]
        let (mut low, mut high, mut prev) = (0.0, 0.0, (0.0, 0.0));
        for &(le, c) in &h.buckets {
            if c > prev.1 {
                low += (c - prev.1) * prev.0;
                high += (c - prev.1) * le;
            }
            prev = (le, c);
        }
        assert!(
            h.sum >= low && h.sum <= high,
            "{endpoint}: _sum {} outside [{low}, {high}] that the buckets allow",
            h.sum
        );
    }
    out
}

fn snapshot(classes: &[String]) -> Snapshot<'_> {
    Snapshot {
        judge: judge::JudgeStats::default(),
        cached: false,
        classes,
        active_class: None,
        step: 0,
        phase: 0,
        group_waiting: 0,
    }
}

#[test]
fn histogram_figures_of_known_durations() {
    let m = Metrics::default();
    // 0.0005 and 1.0 sit on bucket bounds (le is inclusive); 100 s is above the last bound
    let secs = [0.0003, 0.0005, 0.003, 0.7, 1.0, 100.0];
    for s in secs {
        m.observe("/v1/rewards", 200, Duration::from_secs_f64(s));
    }
    m.observe("/healthz", 200, Duration::from_secs_f64(0.02));
    m.observe("/v1/rewards", 400, Duration::from_secs_f64(0.0001));
    let (samples, types) = parse(&m.render(&snapshot(&[])));
    let h = histograms(&samples, &types);
    let rewards = &h["/v1/rewards"];
    let le_count = |le: f64| {
        rewards
            .buckets
            .iter()
            .find(|b| b.0 == le)
            .unwrap_or_else(|| panic!("no bucket le={le}"))
            .1
    };
    // cumulative: observations at or below each bound, the 400 included
    for (le, want) in [
        (0.0005, 3.0),
        (0.001, 3.0),
        (0.005, 4.0),
        (0.5, 4.0),
        (1.0, 6.0),
        (60.0, 6.0),
        (f64::INFINITY, 7.0),
    ] {
        assert_eq!(le_count(le), want, "le={le}");
    }
    assert_eq!(rewards.count, 7.0);
    let total: f64 = secs.iter().sum::<f64>() + 0.0001;
    assert!(
        (rewards.sum - total).abs() < 1e-9,
        "{} vs {total}",
        rewards.sum
    );
    assert_eq!(h["/healthz"].count, 1.0);
    assert!((h["/healthz"].sum - 0.02).abs() < 1e-12);
    let requests = |endpoint: &str, status: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == "arlrr_requests_total"
                    && s.labels["endpoint"] == endpoint
                    && s.labels["status"] == status
            })
            .map(|s| s.value)
    };
    assert_eq!(requests("/v1/rewards", "200"), Some(6.0));
    assert_eq!(requests("/v1/rewards", "400"), Some(1.0));
    assert_eq!(types["arlrr_requests_total"], "counter");
}

fn service(dir: &std::path::Path) -> Arc<Service> {
    let files =
        rubric::builtin::write_splits(rubric::builtin::BuiltinSpec::default(), dir).unwrap();
    let objective = ObjectiveKind::Scalarized;
    Service::new(ServiceConfig {
        data: rubric::load(&files[0].1).unwrap(),
        classes: rubric::ClassSpec::default(),
        judge: Arc::new(judge::RuleJudge::new()),
        judge_cached: false,
        retries: judge::DEFAULT_RETRIES,
        objective,
        weights: Weights::Points,
        schedule: ScheduleSettings {
            objective,
            phases: PhaseConfig::default(),
            completions_per_step: 0,
        },
        state_dir: dir.join("state"),
        token: None,
        limits: Limits::default(),
        groups: GroupSettings::default(),
        grade: server::GradeScope::All,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_metrics_page_after_known_requests() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let id = service.data().examples[0].id.clone();
    let prompt = service.data().examples[0].prompt[0].content.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::conn::serve(
        listener,
        service,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();

    // the known set: 3 graded + 2 malformed rewards, 1 OpenRLHF batch, 1 schedule, 4 healthz
    let started = Instant::now();
    let mut statuses: BTreeMap<(&str, u16), u64> = BTreeMap::new();
    let mut record = |endpoint: &'static str, r: reqwest::Response| {
        *statuses.entry((endpoint, r.status().as_u16())).or_default() += 1;
    };
    for i in 0..3 {
        let body = serde_json::json!({"prompt_id": id, "completions": ["Rest.", format!("Drink fluids {i}.")]});
        let r = client
            .post(format!("{url}/v1/rewards"))
            .json(&body)
            .send()
            .await
            .unwrap();
        record("/v1/rewards", r);
    }
    for bad in ["{", "[1,"] {
        let r = client
            .post(format!("{url}/v1/rewards"))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        record("/v1/rewards", r);
    }
    let body = serde_json::json!({"query": [format!("{prompt} Rest.")], "prompts": [prompt], "labels": [id]});
    let r = client
        .post(format!("{url}/openrlhf/reward"))
        .json(&body)
        .send()
        .await
        .unwrap();
    record("/openrlhf/reward", r);
    let r = client
        .get(format!("{url}/v1/schedule"))
        .send()
        .await
        .unwrap();
    record("/v1/schedule", r);
    for _ in 0..4 {
        let r = client.get(format!("{url}/healthz")).send().await.unwrap();
        record("/healthz", r);
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        statuses,
        BTreeMap::from([
            (("/healthz", 200), 4),
            (("/openrlhf/reward", 200), 1),
            (("/v1/rewards", 200), 3),
            (("/v1/rewards", 400), 2),
            (("/v1/schedule", 200), 1),
        ])
    );

    let scrape = || async {
        let r = client.get(format!("{url}/metrics")).send().await.unwrap();
        let kind = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        r.text().await.unwrap()
    };
    let first = scrape().await;
    let (samples, types) = parse(&first);
    let h = histograms(&samples, &types);
    // the scrape itself is recorded after its answer: not on its own page
    let counts: BTreeMap<&str, f64> = h.iter().map(|(e, s)| (e.as_str(), s.count)).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("/healthz", 4.0),
            ("/openrlhf/reward", 1.0),
            ("/v1/rewards", 5.0),
            ("/v1/schedule", 1.0),
        ]),
        "{first}"
    );
    for (endpoint, series) in &h {
        // answered inside the client's own window
        assert!(
            series.sum > 0.0 && series.sum <= elapsed,
            "{endpoint}: {series:?}"
        );
        let requests: f64 = samples
            .iter()
            .filter(|s| s.name == "arlrr_requests_total" && s.labels["endpoint"] == *endpoint)
            .map(|s| s.value)
            .sum();
        assert_eq!(requests, series.count, "{endpoint}");
    }
    for ((endpoint, status), n) in &statuses {
        let got = samples.iter().find(|s| {
            s.name == "arlrr_requests_total"
                && s.labels["endpoint"] == *endpoint
                && s.labels["status"] == status.to_string()
        });
        assert_eq!(got.map(|s| s.value), Some(*n as f64), "{endpoint} {status}");
    }
    let completions = samples
        .iter()
        .find(|s| s.name == "arlrr_completions_graded_total")
        .unwrap();
    assert_eq!(completions.value, 7.0, "3 × 2 native + 1 OpenRLHF");

    let second = scrape().await;
    let (samples, types) = parse(&second);
    let h = histograms(&samples, &types);
    assert_eq!(h["/metrics"].count, 1.0, "{second}");
    assert_eq!(h["/healthz"].count, 4.0);
}
