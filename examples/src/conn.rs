//! Connection limits of the reference server (slowloris and connection floods), in the model of
//! Go's `http.Server`:
//! - a new connection must deliver its first request's headers within `header` (TLS handshake
//!   included), or it is closed;
//! - once a response has been sent in full, the next request's headers must arrive within
//!   `idle`, or the connection is closed (a request in progress — its body or a streamed
//!   response, such as the dashboard's live events — is never cut by these timers; the request
//!   body has its own timeout in the server library, `Limits::body_timeout_ms`, answered 408);
//! - at most `max_connections` are open at once, and at most `max_per_address` from one client
//!   address (IPv6: its /64); more are closed at once.
//!
//! Wired into axum-server as an acceptor (under TLS, the inner one): it wraps the connection's
//! stream, which watches the clock, and its service, which tells the stream when requests start
//! and when their responses have been sent.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use trailmark_server::service::limits::limit_key;

/// The limits; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub header: Duration,
    pub idle: Duration,
    pub max_connections: usize,
    /// 0: no per-address cap (behind a proxy every connection comes from the proxy).
    pub max_per_address: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max_connections: 10_000,
            max_per_address: 256,
        }
    }
}

/// The axum-server acceptor that applies [`ConnLimits`].
#[derive(Clone)]
pub struct Guard {
    limits: ConnLimits,
    slots: Arc<Semaphore>,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Guard {
    pub fn new(limits: ConnLimits) -> Self {
        Guard { limits, slots: Arc::new(Semaphore::new(limits.max_connections.max(1))), per_address: Arc::default() }
    }

    fn refuse<S>(why: &'static str) -> std::future::Ready<io::Result<(Guarded, Tracked<S>)>> {
        metrics::counter!("trailmark_connections_refused_total", "reason" => why).increment(1);
        std::future::ready(Err(io::Error::other(why)))
    }
}

/// One connection's place in the per-address count, given back when the connection ends.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What the service half tells the stream half of one connection.
struct Shared {
    /// When the connection was accepted.
    born: Instant,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// Requests that reached the service so far.
    started: AtomicU64,
    /// When the last response was sent in full (ms after `born`).
    idle_since: AtomicU64,
}

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for Guard {
    type Stream = Guarded;
    type Service = Tracked<S>;
    type Future = std::future::Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let address = match (self.limits.max_per_address, stream.peer_addr()) {
            (0, _) | (_, Err(_)) => None,
            (max, Ok(peer)) => {
                let key = limit_key(peer.ip());
                let mut counts = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
                let n = counts.entry(key).or_insert(0);
                if *n >= max {
                    drop(counts);
                    return Guard::refuse("per_address");
                }
                *n += 1;
                Some(AddressSlot { counts: self.per_address.clone(), key })
            }
        };
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return Guard::refuse("max_connections");
        };
        let born = Instant::now();
        let shared = Arc::new(Shared {
            born,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
        });
        let deadline = born + self.limits.header;
        let stream = Guarded {
            inner: stream,
            shared: shared.clone(),
            limits: self.limits,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            _slot: permit,
            _address: address,
        };
        std::future::ready(Ok((stream, Tracked { inner: service, shared })))
    }
}

/// A connection's stream: closes it (an I/O error) when its header or idle time runs out.
pub struct Guarded {
    inner: TcpStream,
    shared: Arc<Shared>,
    limits: ConnLimits,
    sleep: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
}

impl Guarded {
    /// With nothing to read and no request in progress: an error once the connection's
    /// deadline passed (the first request's headers, or the next request after the last
    /// response).
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &self.shared;
        if s.in_flight.load(Ordering::Acquire) > 0 {
            return Poll::Pending;
        }
        let (deadline, phase) = if s.started.load(Ordering::Acquire) == 0 {
            (s.born + self.limits.header, "header")
        } else {
            (s.born + Duration::from_millis(s.idle_since.load(Ordering::Acquire)) + self.limits.idle, "idle")
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("trailmark_connections_timed_out_total", "phase" => phase).increment(1);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("{phase} timeout"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => self.check_deadline(cx),
            ready => ready,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's service: counts requests from their start until their response body has
/// been sent (or dropped).
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// One request in progress; when dropped, the connection's idle time starts if it was the last.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.born.elapsed().as_millis() as u64, Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that ends its request's [`InFlight`] when it is done or dropped.
pub struct TrackedBody<B> {
    inner: B,
    guard: Option<InFlight>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S, R, B> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        self.shared.started.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.shared.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            // An error drops the guard here; a response hands it to its body.
            let response = future.await?;
            Ok(response.map(|inner| TrackedBody { inner, guard: Some(guard) }))
        })
    }
}
