//! Connections: HTTP/1.1 over TCP, with the limits that keep a few careless or hostile
//! clients from taking the service away from the others, and a shutdown that drains.
//!
//! - At most `max_connections` are open at once; more wait in the listen backlog until one
//!   closes, so the process keeps file descriptors to answer with.
//! - A request's headers must arrive within the header timeout (slowloris).
//! - A write that moves no byte for the write timeout closes the connection: a client that
//!   pipelines requests and never reads the answers cannot hold its slot.
//! - A connection with no request being answered that moves no byte in either direction for
//!   the idle timeout is closed (idle keep-alive, a client that stopped reading).
//! - A request being answered is bounded by the request timeout ([`crate::api`]'s guard), so
//!   no connection holds a slot without progress for longer than the request timeout plus the
//!   idle timeout.
//! - On shutdown the listener closes at once, every connection finishes the request it is
//!   answering (and takes no more), and [`serve`] returns when all are closed or the drain
//!   time is up.

use crate::Service;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What one connection did last: the watchdog's view of it.
struct Activity {
    /// Origin of the millisecond stamps below.
    born: Instant,
    /// Last time a byte moved either way, or a request's answer became ready.
    last_progress_ms: AtomicU64,
    /// Since when a write has been waiting for the client to read (0 = none waiting).
    write_blocked_ms: AtomicU64,
    /// Requests being answered now.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Milliseconds since the connection opened, at least 1 (0 marks "none").
    fn now_ms(&self) -> u64 {
        (self.born.elapsed().as_millis() as u64).max(1)
    }

    fn progress(&self) {
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// Resolves when the connection should be closed: a write stuck for `write_timeout`, or
    /// nothing being answered and no byte moved for `idle_timeout`.
    async fn stalled(&self, write_timeout: Duration, idle_timeout: Duration) -> &'static str {
        let tick = (write_timeout.min(idle_timeout) / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        let (write_ms, idle_ms) = (
            write_timeout.as_millis() as u64,
            idle_timeout.as_millis() as u64,
        );
        loop {
            tokio::time::sleep(tick).await;
            let now = self.now_ms();
            let blocked = self.write_blocked_ms.load(Ordering::Relaxed);
            if blocked > 0 && now.saturating_sub(blocked) >= write_ms {
                return "write";
            }
            let last = self.last_progress_ms.load(Ordering::Relaxed);
            if self.in_flight.load(Ordering::Relaxed) == 0 && now.saturating_sub(last) >= idle_ms {
                return "idle";
            }
        }
    }
}

/// A socket that reports its progress to an [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    /// Notes the outcome of a write or flush: the start of a wait for the client, or its end
    /// (`moved`: bytes went out, which is progress; a flush with nothing to send is not).
    fn wrote<T>(
        &self,
        poll: Poll<std::io::Result<T>>,
        moved: impl Fn(&T) -> bool,
    ) -> Poll<std::io::Result<T>> {
        let a = &self.activity;
        match &poll {
            Poll::Pending => {
                let _ = a.write_blocked_ms.compare_exchange(
                    0,
                    a.now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(r) => {
                a.write_blocked_ms.store(0, Ordering::Relaxed);
                if r.as_ref().is_ok_and(moved) {
                    a.progress();
                }
            }
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progress();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(poll, |&n| n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(poll, |&n| n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(poll, |_| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service that counts the requests being answered.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// One request being answered; its answer being ready counts as progress.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.progress();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, R> hyper::service::Service<R> for Counted<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn call(&self, req: R) -> Self::Future {
        let answering = InFlight::new(&self.activity);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            drop(answering);
            r
        })
    }
}

/// Serves `service` on `listener` over HTTP/1.1 until `shutdown` resolves; then stops
/// accepting, lets the requests in flight finish (at most the request timeout plus the idle
/// timeout), and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let limits = service.limits.clone();
    let app = hyper_util::service::TowerToHyperService::new(crate::api::router(service));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // e.g. out of file descriptors: wait for connections to close, keep serving
                    eprintln!("arlrr serve: warning: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let limits = limits.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let io = Watched {
                inner: stream,
                activity: activity.clone(),
            };
            let svc = Counted {
                inner: app,
                activity: activity.clone(),
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let stall = activity.stalled(limits.write_timeout, limits.idle_timeout);
            tokio::pin!(stall);
            let mut draining = false;
            loop {
                tokio::select! {
                    // errors here are the client's (a dropped or slow connection): nothing to answer
                    _ = conn.as_mut() => break,
                    // dropping the connection closes the socket and frees the slot
                    _ = &mut stall => break,
                    _ = stopped.changed(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let drain = limits.request_timeout + limits.idle_timeout;
    if tokio::time::timeout(drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        eprintln!(
            "arlrr serve: warning: connections still open after {:.0} s of draining are closed",
            drain.as_secs_f64()
        );
    }
    Ok(())
}
