//! Prometheus metrics in the text exposition format (version 0.0.4), kept by hand: a few
//! counters and one latency histogram need no metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram: from a cached rule verdict (sub-ms) to a
/// slow LLM judge (tens of seconds).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    /// Count per bucket of `LATENCY_BUCKETS` (not cumulative; summed when rendered).
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    /// (endpoint, status code) -> requests.
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    completions: u64,
    /// Criterion verdicts not asked for under `--grade active`.
    verdicts_saved: u64,
}

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Judge and schedule figures read at scrape time.
pub struct Snapshot<'a> {
    pub judge: judge::JudgeStats,
    /// Whether a verdict cache is in front of the judge (judge calls = cache misses).
    pub cached: bool,
    pub classes: &'a [String],
    pub active_class: Option<usize>,
    pub step: u64,
    pub phase: u64,
    /// `gdpo --group-size`: completions waiting for the rest of their group.
    pub group_waiting: usize,
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records one answered request.
    pub fn observe(&self, endpoint: &str, status: u16, elapsed: Duration) {
        let mut m = self.inner.lock().expect("metrics lock");
        *m.requests
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
        let h = m.latency.entry(endpoint.to_string()).or_default();
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            h.buckets[i] += 1;
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Records completions graded.
    pub fn add_completions(&self, n: u64) {
        self.inner.lock().expect("metrics lock").completions += n;
    }

    /// Records verdicts not asked for (`--grade active`).
    pub fn add_verdicts_saved(&self, n: u64) {
        self.inner.lock().expect("metrics lock").verdicts_saved += n;
    }

    /// The `/metrics` page.
    pub fn render(&self, s: &Snapshot<'_>) -> String {
        let m = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        write_requests(&mut out, &m.requests);
        write_latency(&mut out, &m.latency);
        write_judge(&mut out, &s.judge, s.cached, &m);
        write_schedule(&mut out, s);
        out
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric family with one unlabelled sample.
fn single(w: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(w, name, kind, help);
    let _ = writeln!(w, "{name} {value}");
}

/// `arlrr_requests_total`, by endpoint and status code.
fn write_requests(w: &mut String, requests: &BTreeMap<(String, u16), u64>) {
    family(
        w,
        "arlrr_requests_total",
        "counter",
        "HTTP requests answered, by endpoint and status code.",
    );
    for ((endpoint, status), n) in requests {
        let _ = writeln!(
            w,
            "arlrr_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
            escape(endpoint)
        );
    }
}

/// `arlrr_request_duration_seconds`, a histogram per endpoint.
fn write_latency(w: &mut String, latency: &BTreeMap<String, Histogram>) {
    family(
        w,
        "arlrr_request_duration_seconds",
        "histogram",
        "Time from request to answer, by endpoint.",
    );
    for (endpoint, h) in latency {
        let e = escape(endpoint);
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n;
            let _ = writeln!(
                w,
                "arlrr_request_duration_seconds_bucket{{endpoint=\"{e}\",le=\"{b}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            w,
            "arlrr_request_duration_seconds_bucket{{endpoint=\"{e}\",le=\"+Inf\"}} {}\n\
             arlrr_request_duration_seconds_sum{{endpoint=\"{e}\"}} {}\n\
             arlrr_request_duration_seconds_count{{endpoint=\"{e}\"}} {}",
            h.count, h.sum, h.count
        );
    }
}

/// The judge's counters and gauges, and the service's completions and saved verdicts.
fn write_judge(w: &mut String, j: &judge::JudgeStats, cached: bool, m: &Inner) {
    let judge_calls = if cached { j.cache_misses } else { j.verdicts };
    let hit_rate = if j.cache_hits + j.cache_misses == 0 {
        0.0
    } else {
        j.cache_hits as f64 / (j.cache_hits + j.cache_misses) as f64
    };
    let counters: [(&str, &str, u64); 9] = [
        (
            "arlrr_completions_graded_total",
            "Completions graded (rewards and validation reports).",
            m.completions,
        ),
        (
            "arlrr_judge_verdicts_total",
            "Criterion verdicts asked for (cache hits included).",
            j.verdicts,
        ),
        (
            "arlrr_judge_calls_total",
            "Criterion verdicts sent to the judge itself (cache misses).",
            judge_calls,
        ),
        (
            "arlrr_judge_backend_requests_total",
            "Requests the judge sent to its backend (HTTP judges).",
            j.calls,
        ),
        (
            "arlrr_judge_failures_total",
            "Verdicts that ended in an explicit failure.",
            j.failures,
        ),
        (
            "arlrr_judge_cache_hits_total",
            "Verdicts answered from the SQLite cache.",
            j.cache_hits,
        ),
        (
            "arlrr_judge_cache_misses_total",
            "Verdicts not in the cache.",
            j.cache_misses,
        ),
        (
            "arlrr_judge_verdicts_saved_total",
            "Criterion verdicts not asked for: only the active class was graded (--grade active).",
            m.verdicts_saved,
        ),
        (
            "arlrr_judge_rate_limited_waits_total",
            "Judge requests that waited for the rate limits before being sent.",
            j.rate_limited_waits,
        ),
    ];
    for (name, help, value) in counters {
        single(w, name, "counter", help, value);
    }
    single(
        w,
        "arlrr_judge_rate_limit_wait_seconds_total",
        "counter",
        "Time judge requests spent waiting for the rate limits (each wait counted when it ended).",
        j.rate_limit_wait_nanos as f64 / 1e9,
    );
    single(
        w,
        "arlrr_judge_rate_limit_requests_per_minute",
        "gauge",
        "The HTTP judge's max_requests_per_minute; 0 = no limit.",
        j.rate_limit_requests_per_minute,
    );
    single(
        w,
        "arlrr_judge_rate_limit_tokens_per_minute",
        "gauge",
        "The HTTP judge's max_tokens_per_minute; 0 = no limit.",
        j.rate_limit_tokens_per_minute,
    );
    single(
        w,
        "arlrr_judge_cache_hit_rate",
        "gauge",
        "Share of verdicts answered from the cache since start.",
        hit_rate,
    );
}

/// The schedule's gauges: the active class, the step, the phase and the GDPO completions
/// waiting for their group.
fn write_schedule(w: &mut String, s: &Snapshot<'_>) {
    family(
        w,
        "arlrr_active_class",
        "gauge",
        "1 for the meta-class the scalar reward follows now.",
    );
    for (k, name) in s.classes.iter().enumerate() {
        let on = u8::from(s.active_class == Some(k));
        let _ = writeln!(w, "arlrr_active_class{{class=\"{}\"}} {on}", escape(name));
    }
    single(
        w,
        "arlrr_schedule_step",
        "gauge",
        "Latest training step reported.",
        s.step,
    );
    single(
        w,
        "arlrr_schedule_phase",
        "gauge",
        "Phases begun so far.",
        s.phase,
    );
    single(
        w,
        "arlrr_gdpo_waiting_completions",
        "gauge",
        "Completions waiting for the rest of their GDPO group.",
        s.group_waiting,
    );
}
