//! The proxy's connections to Shoptet's API, each driven by the request that holds it.
//!
//! hyper-util's pooled client runs every connection as a task of its own: a request goes to that
//! task through a channel and its answer comes back through another, two task switches per
//! request, with the pool's lock taken on checkout and again on return. Here, as Pingora does it,
//! an HTTP/1.1 connection is taken out of the pool by the request, polled by the request's own
//! task (while the answer's head is awaited and while its body streams to the client) and put back
//! when that body has ended. A connection whose answer was not read to the end is closed, never
//! reused. HTTP/2 (chosen by ALPN on a TLS upstream) multiplexes, so that one connection runs as
//! its own task and every request shares it.
//!
//! One destination only (the API base URL, a restart-only key): the pool needs no keys, and a
//! request's target is built once, in origin form ([`Upstream::target`]).

use crate::http::body::ReqBody;
use crate::http::client::{
    Connector, POOL_IDLE_TIMEOUT as IDLE_TIMEOUT, POOL_MAX_IDLE as MAX_IDLE,
};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("the request target is not a path: {0}")]
    Target(#[from] http::Error),
}

/// The pooled connections to one origin.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// `scheme://authority` to connect to, and the parts an HTTP/2 request needs in its URI.
    origin: Uri,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header sent with a request that has none.
    host: HeaderValue,
    /// The base URL's path, without its trailing slash; every target starts with it.
    base_path: String,
    idle: Mutex<VecDeque<Idle>>,
    /// Set once the server chose HTTP/2: then every request goes over `h2`.
    speaks_h2: AtomicBool,
    h2: Mutex<Option<http2::SendRequest<ReqBody>>>,
}

/// An HTTP/1.1 connection out of the pool. Its driver does the connection's I/O and must be
/// polled by whoever holds it; once it has finished, the connection is closed.
struct Conn {
    sender: http1::SendRequest<ReqBody>,
    driver: http1::Connection<Io, ReqBody>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Conn {
    /// Whether the connection can take a request now: the driver has not finished (the server
    /// did not close it while it was idle) and the previous exchange is complete.
    async fn usable(&mut self) -> bool {
        poll_fn(|cx| {
            let open = Pin::new(&mut self.driver).poll(cx).is_pending();
            Poll::Ready(open && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(()))))
        })
        .await
    }
}

impl Upstream {
    /// The pool for `base` (`scheme://authority[/path]`), connecting with `connector`. Inside a
    /// runtime, a task drops connections idle too long even when no request comes to notice them.
    pub fn new(base: &Uri, connector: Connector) -> Result<Self, UpstreamError> {
        let origin = base;
        let scheme = origin.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = origin
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::Connect("the API URL has no host".into()))?;
        // The host and a port that is not the scheme's default (the URL parser drops that one);
        // never the userinfo an authority may carry.
        let host = match authority.port_u16() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        };
        let host = HeaderValue::from_str(&host)
            .map_err(|_| UpstreamError::Connect("the API host is not a header value".into()))?;
        let connect_to = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        let shared = Arc::new(Shared {
            connector,
            origin: connect_to,
            scheme,
            authority,
            host,
            base_path: origin.path().trim_end_matches('/').to_owned(),
            idle: Mutex::new(VecDeque::new()),
            speaks_h2: AtomicBool::new(false),
            h2: Mutex::new(None),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(expire_idle(Arc::downgrade(&shared)));
        }
        Ok(Upstream { shared })
    }

    /// The origin-form target for `path` (which starts with `/`) and `query`, under the base path.
    pub fn target(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let base = &self.shared.base_path;
        let mut target =
            String::with_capacity(base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        target.push_str(base);
        target.push_str(path);
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        // From the String's own buffer: `str::parse` would copy it once more.
        Ok(Uri::from_maybe_shared(Bytes::from(target))?)
    }

    /// Sends `req`, whose URI is a [`target`](Self::target), and returns the answer's head.
    /// Over HTTP/1.1 the connection travels inside the answer's body until it has been read.
    pub async fn request(
        &self,
        mut req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut()
                .insert(header::HOST, self.shared.host.clone());
        }
        loop {
            if self.shared.speaks_h2.load(Ordering::Relaxed) {
                match self.shared.live_h2() {
                    Some(sender) => return Box::pin(self.send_h2(sender, req)).await,
                    // The shared connection went away: connect again below (the server may
                    // also have stopped choosing HTTP/2).
                    None => self.shared.speaks_h2.store(false, Ordering::Relaxed),
                }
            }
            let (conn, reused) = match self.shared.take().await {
                Some(conn) => (conn, true),
                // Boxed, as the HTTP/2 send above: their futures (a TLS handshake's among them)
                // would otherwise make every request's future kilobytes larger, copied on each move.
                None => match Box::pin(self.connect()).await? {
                    Some(conn) => (conn, false),
                    None => continue,
                },
            };
            match send_h1(conn, req, &self.shared).await {
                Sent::Answered(resp) => return Ok(resp),
                // The connection closed before the request was written (the server's idle close
                // crossing the checkout): nothing reached Shoptet, so another connection may
                // carry it. A fresh connection that fails so is an error.
                Sent::Returned(back) if reused => req = back,
                Sent::Returned(_) => {
                    return Err(UpstreamError::Connect(
                        "the connection closed before the request was sent".into(),
                    ))
                }
                Sent::Failed(e) => return Err(e.into()),
            }
        }
    }

    /// A new connection; `None` when the server chose HTTP/2 (its sender is then shared).
    async fn connect(&self) -> Result<Option<Box<Conn>>, UpstreamError> {
        let mut connector = self.shared.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector
            .call(self.shared.origin.clone())
            .await
            .map_err(UpstreamError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, driver) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!(error = %e, "HTTP/2 upstream connection closed");
                }
            });
            *lock(&self.shared.h2) = Some(sender);
            self.shared.speaks_h2.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        let (sender, driver) = http1::Builder::new()
            // hyper records the answer's header-name spelling (Shoptet's
            // `X-RateLimit-Bucket-Filling`) in its extensions; the proxy hands it on (SPEC B2).
            .preserve_header_case(true)
            .handshake(io)
            .await?;
        // Boxed once: the connection (TLS state included) then moves by pointer between the
        // pool and the requests that hold it.
        Ok(Some(Box::new(Conn { sender, driver })))
    }

    async fn send_h2(
        &self,
        mut sender: http2::SendRequest<ReqBody>,
        req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        // HTTP/2 carries the scheme and authority as pseudo-headers, taken from the URI.
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(self.shared.scheme.clone());
        uri.authority = Some(self.shared.authority.clone());
        uri.path_and_query = uri
            .path_and_query
            .or_else(|| Some(PathAndQuery::from_static("/")));
        parts.uri = Uri::from_parts(uri).map_err(http::Error::from)?;
        sender.ready().await?;
        let resp = sender
            .send_request(Request::from_parts(parts, body))
            .await?;
        Ok(resp.map(UpstreamBody::from))
    }
}

impl Shared {
    fn live_h2(&self) -> Option<http2::SendRequest<ReqBody>> {
        lock(&self.h2).clone().filter(|s| !s.is_closed())
    }

    /// The most recently used idle connection that can take a request now.
    async fn take(&self) -> Option<Box<Conn>> {
        loop {
            let idle = {
                let mut idle = lock(&self.idle);
                idle.pop_back()
            }?;
            let mut conn = idle.conn;
            if idle.since.elapsed() < IDLE_TIMEOUT && conn.usable().await {
                return Some(conn);
            }
        }
    }

    fn put(&self, conn: Box<Conn>) {
        if conn.sender.is_closed() {
            return;
        }
        let evicted = {
            let mut idle = lock(&self.idle);
            let evicted = (idle.len() >= MAX_IDLE).then(|| idle.pop_front());
            idle.push_back(Idle {
                conn,
                since: Instant::now(),
            });
            evicted
        };
        // Closed outside the lock.
        drop(evicted);
    }

    /// Drops the connections idle longer than [`IDLE_TIMEOUT`] (the oldest are at the front).
    fn expire(&self) {
        let expired: Vec<Idle> = {
            let mut idle = lock(&self.idle);
            let keep = idle
                .iter()
                .position(|i| i.since.elapsed() < IDLE_TIMEOUT)
                .unwrap_or(idle.len());
            idle.drain(..keep).collect()
        };
        drop(expired);
    }
}

/// Every [`IDLE_TIMEOUT`], until the pool is gone: idle connections are not polled, so one the
/// server closed would otherwise keep its socket until a request takes it out.
async fn expire_idle(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match shared.upgrade() {
            Some(shared) => shared.expire(),
            None => return,
        }
    }
}

enum Sent {
    Answered(Response<UpstreamBody>),
    /// Not written: the request comes back to be sent on another connection.
    Returned(Request<ReqBody>),
    Failed(hyper::Error),
}

/// Sends `req` on `conn`, polling the connection in this task until the answer's head arrives.
async fn send_h1(mut conn: Box<Conn>, req: Request<ReqBody>, shared: &Arc<Shared>) -> Sent {
    let mut open = true;
    let mut answer = pin!(conn.sender.try_send_request(req));
    let result = poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if open && Pin::new(&mut conn.driver).poll(cx).is_ready() {
            // The connection finished; the answer's future now resolves with its error.
            open = false;
            return answer.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await;
    match result {
        Ok(resp) => Sent::Answered(resp.map(|body| UpstreamBody {
            body,
            held: open.then(|| Held {
                conn,
                shared: shared.clone(),
            }),
            ended: false,
        })),
        Err(mut e) => match e.take_message() {
            Some(req) => Sent::Returned(req),
            None => Sent::Failed(e.into_error()),
        },
    }
}

/// The connection an answer's body is read from, and the pool it goes back to.
struct Held {
    conn: Box<Conn>,
    shared: Arc<Shared>,
}

/// An answer's body from Shoptet. Over HTTP/1.1 it holds its connection: reading the body polls
/// it, and the end of the body returns it to the pool.
pub struct UpstreamBody {
    body: Incoming,
    held: Option<Held>,
    ended: bool,
}

impl From<Incoming> for UpstreamBody {
    /// A body whose connection is driven elsewhere (HTTP/2, or another client).
    fn from(body: Incoming) -> Self {
        UpstreamBody {
            body,
            held: None,
            ended: false,
        }
    }
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(held) = self.held.take() {
            if self.ended || self.body.is_end_stream() {
                held.shared.put(held.conn);
            }
            // Otherwise dropped: an answer not read to its end leaves the connection unusable.
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.as_mut() {
            if Pin::new(&mut held.conn.driver).poll(cx).is_ready() {
                // Closed (or failed): whatever it read is in the body's channel.
                this.held = None;
            }
        }
        let out = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = out {
            this.ended = true;
            this.release();
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.release();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (a list, an option).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
