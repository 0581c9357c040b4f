//! Requests- and tokens-per-minute limits of the HTTP judge, as providers state them (OpenAI's
//! RPM and TPM, verl's `max_rpm` and `max_tpm`).
//!
//! Each limit is a GCRA limiter from `governor` whose burst is the whole per-minute budget: a
//! limit of N per minute lets N through at once, then one more every `60 / N` seconds. A
//! request takes one cell of the requests limiter and its estimated tokens
//! ([`estimate_tokens`]) of the tokens limiter before it is sent. It waits for them (an async
//! sleep on tokio's timer, until the time the limiter names) rather than fail; dropping the
//! waiting future (a grading abandoned by its caller) ends the wait and takes nothing.
//! Waiters queue in arrival order, so a large request is not overtaken forever by small ones,
//! and only the first in line polls the limiters.
//!
//! governor's own `until_n_ready` sleeps on `futures-timer`'s thread; sleeping on tokio's timer
//! instead is the same loop, and lets tests run it under tokio's paused clock.

use governor::clock::Clock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Most requests per minute a judge config may set (about 16,700 a second: above any
/// provider's published tier).
pub const MAX_REQUESTS_PER_MINUTE: u64 = 1_000_000;

/// Most tokens per minute a judge config may set (providers' largest tiers are in the hundreds
/// of millions).
pub const MAX_TOKENS_PER_MINUTE: u64 = 1_000_000_000;

/// Tokens a chat request is counted as before it is sent: its prompt at four UTF-8 bytes a
/// token (about right for English; a provider's tokenizer counts more for most other scripts)
/// plus the whole reply cap, `max_tokens`, since the reply's length is not known yet.
pub fn estimate_tokens(prompt: &str, max_tokens: u32) -> u64 {
    prompt.len().div_ceil(4) as u64 + u64::from(max_tokens)
}

/// The clock the limiters read: tokio's, so that a runtime with a paused clock (tests) moves
/// them too. Outside a paused runtime it is the monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock>;

/// One per-minute limit.
struct Bucket {
    per_minute: NonZeroU32,
    limiter: Limiter,
}

impl Bucket {
    fn new(per_minute: NonZeroU32) -> Self {
        Bucket {
            per_minute,
            limiter: RateLimiter::direct_with_clock(Quota::per_minute(per_minute), TokioClock),
        }
    }

    /// The cells a request of `n` takes: `n`, cut to the burst (see [`RateLimits::acquire`]).
    fn cells(&self, n: u64) -> NonZeroU32 {
        NonZeroU32::new(n.min(u64::from(self.per_minute.get())) as u32).unwrap_or(NonZeroU32::MIN)
    }
}

/// Raised while the request whose turn it is sleeps for the limits (lowered however the sleep
/// ends, cancellation included): those queued behind it are then waiting for the limits too.
struct Sleeping<'a>(&'a AtomicBool);

impl<'a> Sleeping<'a> {
    fn raise(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Sleeping(flag)
    }
}

impl Drop for Sleeping<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A wait in progress: counted when it starts, its time added when it ends or is cancelled.
struct Wait<'a> {
    since: tokio::time::Instant,
    nanos: &'a AtomicU64,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        let waited = self.since.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.nanos.fetch_add(waited, Ordering::Relaxed);
    }
}

/// The limits of one judge, shared by all its requests.
pub struct RateLimits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Held by the request whose turn it is; tokio's mutex is fair, so waiters go in order.
    queue: tokio::sync::Mutex<()>,
    /// The request holding `queue` sleeps for the limits ([`Sleeping`]).
    sleeping: AtomicBool,
    waits: AtomicU64,
    wait_nanos: AtomicU64,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("requests_per_minute", &self.requests_per_minute())
            .field("tokens_per_minute", &self.tokens_per_minute())
            .finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Limits of so many requests and tokens per minute; `None` is no limit.
    pub fn new(
        requests_per_minute: Option<NonZeroU32>,
        tokens_per_minute: Option<NonZeroU32>,
    ) -> Self {
        RateLimits {
            requests: requests_per_minute.map(Bucket::new),
            tokens: tokens_per_minute.map(Bucket::new),
            queue: tokio::sync::Mutex::new(()),
            sleeping: AtomicBool::new(false),
            waits: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
        }
    }

    /// The requests-per-minute limit, if any.
    pub fn requests_per_minute(&self) -> Option<u32> {
        self.requests.as_ref().map(|b| b.per_minute.get())
    }

    /// The tokens-per-minute limit, if any.
    pub fn tokens_per_minute(&self) -> Option<u32> {
        self.tokens.as_ref().map(|b| b.per_minute.get())
    }

    /// Waits until one request of about `tokens` tokens may be sent, and takes its share of
    /// both limits. A request estimated above the whole tokens-per-minute budget takes the
    /// whole budget (it waits until nothing else was sent for a minute's worth of tokens): it
    /// can never fit, and whether it is accepted is the provider's call. No limit, no wait.
    pub async fn acquire(&self, tokens: u64) {
        if self.requests.is_none() && self.tokens.is_none() {
            return;
        }
        let arrived = tokio::time::Instant::now();
        let start = || {
            self.waits.fetch_add(1, Ordering::Relaxed);
            Wait {
                since: arrived,
                nanos: &self.wait_nanos,
            }
        };
        let mut waiting = None;
        let _turn = match self.queue.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                // Behind a request that sleeps for the limits, this one waits for them too;
                // behind one that is only taking its cells, it waits for nothing worth counting.
                if self.sleeping.load(Ordering::Relaxed) {
                    waiting = Some(start());
                }
                self.queue.lock().await
            }
        };
        let requests = self.requests.as_ref().map(|b| (b, NonZeroU32::MIN));
        let tokens = self.tokens.as_ref().map(|b| (b, b.cells(tokens)));
        for (bucket, n) in [requests, tokens].into_iter().flatten() {
            loop {
                match bucket.limiter.check_n(n) {
                    Ok(Ok(())) => break,
                    Ok(Err(not_until)) => {
                        if waiting.is_none() {
                            waiting = Some(start());
                        }
                        let _sleeping = Sleeping::raise(&self.sleeping);
                        tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
                    }
                    // `cells` cut `n` to the burst, so the limiter can always grant it.
                    Err(_) => unreachable!("{n} cells exceed a burst of {}", bucket.per_minute),
                }
            }
        }
    }

    /// Requests that could not be sent at once: they waited for the limits, or behind a request
    /// that did.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Time those requests spent waiting, counted when each wait ended or was cancelled.
    pub fn wait_total(&self) -> Duration {
        Duration::from_nanos(self.wait_nanos.load(Ordering::Relaxed))
    }
}
