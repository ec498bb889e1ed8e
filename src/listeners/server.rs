//! Listener plumbing shared by the proxy, public and admin listeners (SPEC B1).
//!
//! Accepts TCP (optionally TLS) connections and serves each with hyper-util's auto builder, so
//! clients may speak HTTP/1.1 with keep-alive or HTTP/2 with prior knowledge. Bounded on purpose:
//! a connection count cap, a header read timeout (slowloris), a header size cap. On shutdown it
//! stops accepting, lets every connection finish its in-flight requests (HTTP/1 connections close
//! after the current response, HTTP/2 ones get GOAWAY) and gives up after the drain timeout.
//! A connection accepted but still waiting for its first request head is not cut by the drain:
//! its request is answered first. That matters for a socket passed by systemd, where the next
//! process takes over the backlog: every connection this process accepted gets its answer.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

/// Per-listener bounds against slow or idle clients. The defaults are production values; tests
/// shorten them so a slowloris test takes milliseconds instead of the real 10 s.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client gets to send a complete request head (and a TLS handshake); longer is a
    /// slowloris.
    pub header_read_timeout: Duration,
    /// Open connections per listener; beyond it new connections wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}
/// Request head size cap (HTTP/1 buffer; HTTP/2 header list).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 concurrent streams per connection.
const MAX_STREAMS: u32 = 256;

/// A shutdown signal: `trigger` once, every listener sees it.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the sender is gone, which also ends the wait.
        let _ = rx.wait_for(|v| *v).await;
    }
}

fn builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        // Records each request's header-name spelling in its extensions, so the proxy can send
        // them on as the client wrote them (SPEC B2); nothing else reads it.
        .preserve_header_case(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Runs `conn`, dropping it (which closes the connection) if no request head has arrived within
/// `limit`. hyper's own header read timeout starts only once the auto builder has sniffed the
/// protocol from the first bytes, and that sniffing waits forever: without this, a client that
/// connects and sends nothing (or half an HTTP/2 preface) holds a connection slot indefinitely.
///
/// On `shutdown` the connection is asked to finish gracefully, but only once its first request
/// has arrived: asked earlier, hyper would close it unanswered, and its client, which connected
/// before the listener stopped accepting, would see an error.
async fn drive<C: GracefulConnection>(
    conn: C,
    first_request: &Notify,
    limit: Duration,
    shutdown: Shutdown,
) {
    tokio::pin!(conn);
    let first_deadline = tokio::time::sleep(limit);
    tokio::pin!(first_deadline);
    let mut seen_first = false;
    let mut asked = false;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = first_request.notified(), if !seen_first => seen_first = true,
            _ = &mut first_deadline, if !seen_first => return,
            _ = shutdown.wait(), if seen_first && !asked => {
                conn.as_mut().graceful_shutdown();
                asked = true;
            }
        }
    }
}

/// Whether a connection on a TLS listener opens with a TLS record (a handshake, content type
/// 22), judged on its first byte without consuming it.
async fn starts_with_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16)
}

/// A plain-HTTP request on a TLS port gets a 400 that says so, as nginx answers, instead of a
/// reset the client cannot explain; then the connection closes.
async fn refuse_plain_http(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The request head is read first: closing a socket with unread input resets the connection,
    // and the client would see the reset instead of the answer.
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while head.len() < MAX_HEADER_BYTES && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    const BODY: &str = "this port speaks TLS: use https://\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serves `listener` until `shutdown`, then drains for at most `drain_timeout`.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: H,
    shutdown: Shutdown,
    drain_timeout: Duration,
    limits: Limits,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(limits));
    // Every connection task holds one of these until it ends, so the drain is over when all of
    // them are back.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            _ = shutdown.wait() => break,
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let first_request = Arc::new(Notify::new());
        let seen = first_request.clone();
        let service = service_fn(move |req| {
            seen.notify_one();
            // Boxed once here: a request's future is kilobytes, and hyper moves the service's
            // future into its dispatcher; unboxed, each of those moves copied it whole.
            let fut = Box::pin(handler(req, peer));
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let builder = builder.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let limit = limits.header_read_timeout;
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    drive(conn.into_owned(), &first_request, limit, shutdown).await;
                }
                Some(acceptor) => {
                    let handshake = async {
                        if !starts_with_tls(&stream).await {
                            refuse_plain_http(stream).await;
                            return None;
                        }
                        acceptor.accept(stream).await.ok()
                    };
                    let Ok(Some(stream)) =
                        tokio::time::timeout(limits.header_read_timeout, handshake).await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    drive(conn.into_owned(), &first_request, limit, shutdown).await;
                }
            }
        });
    }
    // Closes this process's copy of the socket: a socket bound here stops taking connections
    // (they are refused); a passed one keeps its backlog for the next process, since systemd
    // holds the socket too. It is never shut down.
    drop(listener);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; cutting the remaining connections");
    }
}
