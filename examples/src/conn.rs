//! Connection limits of the reference server (slowloris and connection floods), in the model of
//! Go's `http.Server`: a connection may hold at most `max_connections` slots; a connection with
//! no request in progress is closed after `idle` without a byte; once the first byte of a
//! request arrives its headers must be complete within `header`. The request body has its own
//! timeout in the server library (`Limits::body_timeout_ms`, answered with 408).
//!
//! Wired into axum-server as an acceptor: it wraps the connection's stream (which watches the
//! clock) and its service (which tells the stream when a request is in progress).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The limits; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub header: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits { header: Duration::from_secs(10), idle: Duration::from_secs(60), max_connections: 10_000 }
    }
}

/// The axum-server acceptor that applies [`ConnLimits`].
#[derive(Clone)]
pub struct Guard {
    limits: ConnLimits,
    slots: Arc<Semaphore>,
}

impl Guard {
    pub fn new(limits: ConnLimits) -> Self {
        Guard { limits, slots: Arc::new(Semaphore::new(limits.max_connections.max(1))) }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections.max(1) - self.slots.available_permits()
    }
}

/// What the service half tells the stream half of one connection.
#[derive(Default)]
struct Shared {
    in_flight: AtomicUsize,
    /// Requests that reached the service so far.
    started: AtomicU64,
}

impl<I, S> axum_server::accept::Accept<I, S> for Guard
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = Guarded<I>;
    type Service = Tracked<S>;
    type Future = std::future::Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            metrics::counter!("trailmark_connections_refused_total").increment(1);
            return std::future::ready(Err(io::Error::other("connection limit reached")));
        };
        let shared = Arc::new(Shared::default());
        let deadline = Instant::now() + self.limits.idle;
        let stream = Guarded {
            inner: stream,
            shared: shared.clone(),
            limits: self.limits,
            seen_started: 0,
            awaiting_headers: false,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            _slot: permit,
        };
        std::future::ready(Ok((stream, Tracked { inner: service, shared })))
    }
}

/// A connection's stream: closes it (an I/O error) when its idle or header time runs out.
pub struct Guarded<I> {
    inner: I,
    shared: Arc<Shared>,
    limits: ConnLimits,
    seen_started: u64,
    /// Bytes of a request arrived and its headers are not complete yet.
    awaiting_headers: bool,
    deadline: Instant,
    sleep: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<I> Guarded<I> {
    /// Notes requests that reached the service since the last look (their headers are in).
    fn catch_up(&mut self) {
        let started = self.shared.started.load(Ordering::Acquire);
        if started != self.seen_started {
            self.seen_started = started;
            self.awaiting_headers = false;
        }
    }

    fn idle_from_now(&mut self) {
        if !self.awaiting_headers {
            self.deadline = Instant::now() + self.limits.idle;
        }
    }

    /// With nothing to read: an error once the deadline passed and no request is in progress
    /// (a running request is bounded by the body timeout and the handler, not here).
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.catch_up();
        if self.shared.in_flight.load(Ordering::Acquire) > 0 {
            return Poll::Pending;
        }
        let deadline = self.deadline;
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let which = if self.awaiting_headers { "header" } else { "idle" };
                metrics::counter!("trailmark_connections_timed_out_total", "phase" => which).increment(1);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("{which} timeout"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.catch_up();
                    if self.shared.in_flight.load(Ordering::Acquire) == 0 && !self.awaiting_headers {
                        // The first bytes of a request: its headers have `header` from now.
                        self.awaiting_headers = true;
                        self.deadline = Instant::now() + self.limits.header;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_deadline(cx),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.catch_up();
            self.idle_from_now();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.catch_up();
            self.idle_from_now();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's service: counts the requests in progress for its stream.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Ends a request's "in progress" when its response is ready (or the request is dropped).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, R> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        self.shared.started.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.shared.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(guard);
            response
        })
    }
}
