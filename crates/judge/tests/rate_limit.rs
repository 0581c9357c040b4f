//! The HTTP judge's requests- and tokens-per-minute limits.
//!
//! The limiter itself runs under tokio's paused clock: time moves only when every task sleeps,
//! and then straight to the next wake-up, so each request's send time is exact (to the
//! timer's millisecond) and nothing depends on the machine's speed. Through the judge, against
//! a real server on loopback, only counts are checked: the burst is sent and the next request
//! is held, in a window far shorter than the one it is held for (30 s).

mod fault_server;

use fault_server::*;
use judge::prompt::grading_prompt;
use judge::rate_limit::{estimate_tokens, RateLimits};
use judge::{GradeTask, HttpJudge, HttpJudgeConfig, Judge};
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn per_minute(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

/// Sends requests of `tokens` each through `limits` in this order, all at once, and returns
/// the time each was let through, from the start.
async fn send_times(limits: &Arc<RateLimits>, tokens: &[u64]) -> Vec<Duration> {
    let start = Instant::now();
    let tasks: Vec<_> = tokens
        .iter()
        .map(|&n| {
            let limits = limits.clone();
            tokio::spawn(async move {
                limits.acquire(n).await;
                start.elapsed()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn assert_near(got: Duration, want: Duration, what: &str) {
    assert!(
        got >= want && got <= want + 20 * MS,
        "{what}: sent at {got:?}, expected {want:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_limit_of_n_requests_a_minute_sends_n_at_once_then_one_every_60_over_n_seconds() {
    let limits = Arc::new(RateLimits::new(per_minute(3), None));
    let times = send_times(&limits, &[1, 1, 1, 1, 1]).await;
    assert_eq!(
        &times[..3],
        &[Duration::ZERO; 3],
        "the burst of 3 goes at once"
    );
    assert_near(times[3], Duration::from_secs(20), "the 4th");
    assert_near(times[4], Duration::from_secs(40), "the 5th");
    assert_eq!(limits.waits(), 2);
    assert_near(limits.wait_total(), Duration::from_secs(60), "the waits");
    // The budget refills at the same pace: a minute later the whole burst is back.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let times = send_times(&limits, &[1, 1, 1, 1]).await;
    assert_eq!(&times[..3], &[Duration::ZERO; 3]);
    assert_near(
        times[3],
        Duration::from_secs(20),
        "the 4th of the second burst",
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_limit_holds_a_request_until_its_tokens_are_back_and_clamps_an_oversized_one() {
    // 1000 tokens a minute: one comes back every 60 ms.
    let limits = Arc::new(RateLimits::new(None, per_minute(1000)));
    let times = send_times(&limits, &[600, 600, 5000, 1]).await;
    assert_eq!(times[0], Duration::ZERO);
    // 400 left; 200 more take 12 s.
    assert_near(times[1], Duration::from_secs(12), "the second 600");
    // Larger than the whole budget: it waits for a full bucket (60 s more) instead of never
    // going, and takes it all, so the one after waits for its one token.
    assert_near(times[2], Duration::from_secs(72), "the oversized request");
    assert_near(times[3], Duration::from_millis(72_060), "the one after it");
    assert_eq!(limits.waits(), 3);
}

#[tokio::test(start_paused = true)]
async fn both_limits_apply_and_the_stricter_one_decides() {
    let limits = Arc::new(RateLimits::new(per_minute(60), per_minute(1000)));
    // Requests allow one a second; tokens allow 500 each 30 s.
    let times = send_times(&limits, &[500, 500, 500, 10, 10]).await;
    assert_eq!(&times[..2], &[Duration::ZERO; 2]);
    assert_near(times[2], Duration::from_secs(30), "the third 500");
    assert_near(times[3], Duration::from_millis(30_600), "10 tokens more");
    assert_near(times[4], Duration::from_millis(31_200), "and 10 again");
    let limits = Arc::new(RateLimits::new(per_minute(2), per_minute(1_000_000)));
    let times = send_times(&limits, &[1, 1, 1]).await;
    assert_near(times[2], Duration::from_secs(30), "the requests limit");
}

/// A wait is cancelled by dropping it (as a grading abandoned by `arlrr serve`'s request
/// timeout is): it takes nothing from the budget, its time is counted, and the requests queued
/// behind it go on.
#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_takes_nothing_and_lets_the_queue_go_on() {
    let limits = Arc::new(RateLimits::new(per_minute(1), None));
    limits.acquire(1).await;
    let start = Instant::now();
    let abandoned = tokio::spawn({
        let limits = limits.clone();
        async move { tokio::time::timeout(Duration::from_secs(5), limits.acquire(1)).await }
    });
    tokio::task::yield_now().await;
    let queued = send_times(&limits, &[1]);
    let (abandoned, queued) = tokio::join!(abandoned, queued);
    assert!(
        abandoned.unwrap().is_err(),
        "the first waiter gave up at 5 s"
    );
    assert_near(start.elapsed(), Duration::from_secs(60), "the end");
    assert_near(
        queued[0],
        Duration::from_secs(60),
        "the one queued behind it",
    );
    assert_eq!(limits.waits(), 2);
    assert_near(
        limits.wait_total(),
        Duration::from_secs(65),
        "5 s abandoned and 60 s waited",
    );
}

#[tokio::test(start_paused = true)]
async fn without_limits_nothing_waits() {
    let limits = Arc::new(RateLimits::new(None, None));
    let times = send_times(&limits, &[u64::MAX; 100]).await;
    assert!(times.iter().all(|t| t.is_zero()));
    assert_eq!((limits.waits(), limits.wait_total()), (0, Duration::ZERO));
    assert_eq!(
        (limits.requests_per_minute(), limits.tokens_per_minute()),
        (None, None)
    );
}

#[test]
fn a_request_counts_a_quarter_of_its_prompt_bytes_plus_its_reply_cap() {
    assert_eq!(estimate_tokens("", 512), 512);
    assert_eq!(estimate_tokens("abcd", 512), 513);
    assert_eq!(estimate_tokens("abcde", 1), 3);
    // UTF-8 bytes, not characters: 4 three-byte characters are 12 bytes, 3 tokens.
    assert_eq!(estimate_tokens("診断確認", 0), 3);
}

/// Grades three criteria at once through `cfg` (all sent at once, `concurrency` permitting),
/// and checks that the server got the first two, that the third is held by the limits, and that
/// dropping the grading sends nothing more.
async fn two_sent_and_the_third_held(
    cfg: impl FnOnce(HttpJudgeConfig, u64) -> HttpJudgeConfig,
) -> judge::JudgeStats {
    let (addr, fault) = spawn_fault_server().await;
    let ex = Arc::new(example(&["met", "met", "met"]));
    let base = HttpJudgeConfig {
        max_tokens: 100,
        ..config(addr)
    };
    let tokens = estimate_tokens(
        &grading_prompt(&ex.prompt, "Hello there.", &ex.criteria[0]),
        base.max_tokens,
    );
    let judge = Arc::new(HttpJudge::new(cfg(base, tokens)).unwrap());
    let grading = tokio::spawn({
        let (judge, ex) = (judge.clone(), ex.clone());
        async move {
            let task = GradeTask {
                example: &ex,
                response: "Hello there.",
                criteria: None,
            };
            judge.grade(&[task]).await
        }
    });
    // Hang guards only: the two go at once, the third waits 30 s.
    let deadline = Instant::now() + DEADLINE;
    while fault.requests.load(Ordering::SeqCst) < 2 || judge.rate_limits().waits() < 1 {
        assert!(Instant::now() < deadline, "the burst was not sent");
        tokio::time::sleep(10 * MS).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fault.requests.load(Ordering::SeqCst),
        2,
        "the third request went through"
    );
    let stats = judge.stats();
    assert_eq!((stats.verdicts, stats.rate_limited_waits), (2, 1));
    grading.abort();
    assert!(grading.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fault.requests.load(Ordering::SeqCst),
        2,
        "sent after the drop"
    );
    let stats = judge.stats();
    assert!(
        stats.rate_limit_wait_nanos >= 500_000_000,
        "the abandoned wait was not counted: {stats:?}"
    );
    stats
}

#[tokio::test]
async fn the_http_judge_sends_the_request_burst_and_holds_the_next_request() {
    let stats = two_sent_and_the_third_held(|cfg, _| HttpJudgeConfig {
        max_requests_per_minute: Some(2),
        ..cfg
    })
    .await;
    assert_eq!(
        (
            stats.rate_limit_requests_per_minute,
            stats.rate_limit_tokens_per_minute
        ),
        (2, 0)
    );
}

#[tokio::test]
async fn the_http_judge_sends_what_the_token_budget_allows_and_holds_the_rest() {
    // Two requests' estimates and one token: the third needs a whole estimate less one, 30 s.
    let stats = two_sent_and_the_third_held(|cfg, tokens| HttpJudgeConfig {
        max_tokens_per_minute: Some(2 * tokens + 1),
        ..cfg
    })
    .await;
    assert_eq!(stats.rate_limit_requests_per_minute, 0);
    assert!(stats.rate_limit_tokens_per_minute > 200);
}
