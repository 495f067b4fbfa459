//! The HTTP/1.1 accept loop, with limits a hostile client cannot outwait:
//!
//! * **header read timeout** — a connection must deliver a request's whole header
//!   block within `header_read_timeout` of opening, or of its previous response
//!   (slowloris, idle keep-alive connections and connections that never send a byte
//!   are closed);
//! * **connection limit** — at most `max_connections` open at once; one over the limit
//!   gets a `503` `OVERLOADED` envelope (with a fresh `X-Correlation-Id`, logged,
//!   `Retry-After: 1` and `X-Backoff-Ms`) before its request is read, and is closed;
//! * **per-peer and unauthenticated limits** ([`peers`]) — connections that have not
//!   authenticated are counted per address and in all, apart from authenticated ones;
//! * **write-stall timeout** — a client that stops reading (its socket buffer full for
//!   `write_stall_timeout`) has its connection closed, so its SSE reader goes away and
//!   the task's abandon grace applies; the engine never waits on a client. The send
//!   buffer is fixed at `send_buffer_bytes` (the kernel would otherwise grow it to
//!   megabytes before a write ever waits).
//!
//! Choice, written down: HTTP/1.1 only. axum's `serve` also spoke cleartext HTTP/2
//! with prior knowledge, but its protocol sniffing runs without any timer (a peer that
//! sends nothing would be held forever). A TLS terminator in front speaks HTTP/2 to
//! clients and HTTP/1.1 here.
//!
//! Owns: the listener, one task per connection, and the graceful close on shutdown
//! (in-flight responses finish, idle connections close).

mod peers;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use orch_api::conn::ConnAuth;
use peers::{PeerLimits, Peers};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// Connection limits (the `[server]` settings of the same names).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_unauthenticated: usize,
    /// 0 = no limit.
    pub max_unauthenticated_per_peer: usize,
    /// 0 = no limit.
    pub max_per_peer: usize,
    pub header_read_timeout: Duration,
    pub write_stall_timeout: Duration,
    /// Kernel send buffer per connection (fixed, so a stalled reader is noticed
    /// after this much, not after the kernel's autotuned maximum of megabytes).
    pub send_buffer_bytes: usize,
}

/// How long shutdown waits for open connections after asking them to close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What a connection over the limit is told before it is closed (its request is not
/// read, so the correlation id is a fresh one, the one the refusal is logged with).
fn over_limit(correlation_id: &str) -> Vec<u8> {
    let body = orch_domain::OrchError::new(
        orch_domain::ErrorCode::Overloaded,
        "the server is at its connection limit; retry shortly",
    )
    .with_retry_after_ms(1000)
    .into_envelope(correlation_id.to_string());
    let body = serde_json::to_string(&body).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nx-backoff-ms: 1000\r\n\
         x-correlation-id: {correlation_id}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve `app` on `listener` until `stop` resolves, then close connections gracefully.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Peers::new(PeerLimits {
        max_unauthenticated: limits.max_unauthenticated,
        max_unauthenticated_per_peer: limits.max_unauthenticated_per_peer,
        max_per_peer: limits.max_per_peer,
    });
    let graceful = GracefulShutdown::new();
    let (mut refused, mut last_warned) = (0u64, None);
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // e.g. out of file descriptors: back off instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // no Nagle: SSE frames are small writes that must not wait for a delayed ACK
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        if let Err(e) = socket2::SockRef::from(&tcp).set_send_buffer_size(limits.send_buffer_bytes)
        {
            tracing::warn!(error = %e, "could not set SO_SNDBUF");
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let cid = uuid::Uuid::new_v4().to_string();
            tracing::warn!(
                max_connections = limits.max_connections,
                correlation_id = %cid,
                "connection limit reached: refusing a connection with 503"
            );
            // best effort, never blocking the accept loop
            let _ = tcp.try_write(&over_limit(&cid));
            continue;
        };
        let ticket = match peers.open(peer.ip()) {
            Ok(t) => t,
            Err(why) => {
                // one line a second at most: a flood of refusals must not flood the log
                refused += 1;
                let cid = uuid::Uuid::new_v4().to_string();
                if last_warned.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(peer = %peer.ip(), reason = ?why, refused, correlation_id = %cid,
                        "per-peer connection limit reached: refusing connections with 503");
                    last_warned = Some(Instant::now());
                    refused = 0;
                }
                let _ = tcp.try_write(&over_limit(&cid));
                continue;
            }
        };
        let promote = ticket.clone();
        let auth = ConnAuth::new(move || promote.promote());
        let svc = per_connection(app.clone(), auth, ticket.provisional);
        let io = TokioIo::new(StallTimeout::new(tcp, limits.write_stall_timeout));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true)
            .serve_connection(io, svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop(ticket);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_WAIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open {CLOSE_WAIT:?} after shutdown began; leaving them");
    }
}

/// The service of one connection: each request carries the connection's [`ConnAuth`]
/// (the auth layer marks it); a provisional connection is closed after a response to
/// a request that did not authenticate.
fn per_connection(
    app: Router,
    auth: ConnAuth,
    provisional: bool,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(auth.clone());
        let auth = auth.clone();
        let mut app = app.clone();
        async move {
            let mut resp =
                tower_service::Service::call(&mut app, req.map(axum::body::Body::new)).await?;
            if provisional && !auth.is_authenticated() {
                resp.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            Ok(resp)
        }
    })
}

/// A socket whose writes fail once they have made no progress for `limit`.
pub struct StallTimeout<T> {
    io: T,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<T> StallTimeout<T> {
    pub fn new(io: T, limit: Duration) -> Self {
        Self {
            io,
            limit,
            timer: None,
            armed: false,
        }
    }

    /// A write is pending: start the clock (once per stall) and fail when it ran out.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let deadline = Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading",
            )));
        }
        Poll::Pending
    }

    fn progressed<R>(&mut self, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.armed = false;
        }
        r
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx),
            r => self.progressed(r),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx),
            r => self.progressed(r),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_after_the_limit() {
        // a pipe the reader never drains: writes stall once its 64 bytes are full
        let (a, _b) = tokio::io::duplex(64);
        let mut w = StallTimeout::new(a, Duration::from_millis(100));
        let t0 = std::time::Instant::now();
        let mut sent = 0usize;
        let err = loop {
            match w.write(&[0u8; 32]).await {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(sent, 64);
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_is_never_cut_off() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = StallTimeout::new(a, Duration::from_millis(150));
        let reader = tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = [0u8; 16];
            while got < 2048 {
                // each read comes well within the limit, but the whole takes longer
                tokio::time::sleep(Duration::from_millis(5)).await;
                got += b.read(&mut buf).await.unwrap();
            }
            got
        });
        let t0 = std::time::Instant::now();
        for _ in 0..64 {
            w.write_all(&[1u8; 32]).await.unwrap();
        }
        assert!(
            t0.elapsed() > Duration::from_millis(150),
            "the test must outlast the limit"
        );
        assert_eq!(reader.await.unwrap(), 2048);
    }
}
