//! The two body types of a proxied exchange.
//!
//! [`ReqBody`] goes upstream: either fully buffered (small, so it can be sent again on a replay)
//! or streamed from the client, possibly after a buffered prefix that turned out to exceed the
//! replay limit. [`RespBody`] comes back: either Shoptet's streaming body or a small body the proxy
//! made; it carries a guard (the upstream slot) that is released only when the body is done, since
//! Shoptet counts a request as in flight until its answer has been sent.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// A stream whose first chunks were already read (to decide whether it fits a limit): those
/// chunks, then the rest of the stream.
pub struct Prefixed {
    prefix: VecDeque<Bytes>,
    rest: Incoming,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match this.prefix.pop_front() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let pre: u64 = self.prefix.iter().map(|b| b.len() as u64).sum();
        let h = self.rest.size_hint();
        let mut out = SizeHint::new();
        out.set_lower(h.lower() + pre);
        if let Some(u) = h.upper() {
            out.set_upper(u + pre);
        }
        out
    }
}

/// A request body sent upstream.
pub enum ReqBody {
    /// Whole body in memory; `None` once sent (or for an empty body).
    Buffered(Option<Bytes>),
    /// Streamed from the client, possibly after a prefix that turned out to exceed the limit.
    Streaming(Streamed),
}

/// A client's body streamed upstream, cut off once it passes `cap` bytes: a chunked or HTTP/2
/// body declares no length, so only counting what flows can keep the size limit.
pub struct Streamed {
    body: Prefixed,
    sent: u64,
    cap: u64,
    over: Overflow,
}

/// Set when a [`Streamed`] body passed its cap, so whoever sent it can tell "too large" from
/// "upstream failed" when the upstream request then errors.
#[derive(Clone, Default)]
pub struct Overflow(Arc<AtomicBool>);

impl Overflow {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReqBodyError {
    #[error("reading the client's body: {0}")]
    Client(#[from] hyper::Error),
    #[error("the request body passed {0} bytes")]
    TooLarge(u64),
}

impl Streamed {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.sent += data.len() as u64;
            if self.sent > self.cap {
                self.over.0.store(true, Ordering::Relaxed);
                // An error, not an end: the upstream request is aborted rather than completed
                // with a truncated body.
                return Poll::Ready(Some(Err(ReqBodyError::TooLarge(self.cap))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl ReqBody {
    pub fn empty() -> Self {
        ReqBody::Buffered(None)
    }

    pub fn full(bytes: Bytes) -> Self {
        ReqBody::Buffered((!bytes.is_empty()).then_some(bytes))
    }

    /// The client's body, streamed through as it arrives (never replayed), cut off past `cap`.
    pub fn stream(body: Incoming, cap: u64) -> Self {
        ReqBody::Streaming(Streamed {
            body: Prefixed {
                prefix: VecDeque::new(),
                rest: body,
            },
            sent: 0,
            cap,
            over: Overflow::default(),
        })
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = ReqBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        match self.get_mut() {
            ReqBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Streaming(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Buffered(b) => b.is_none(),
            ReqBody::Streaming(s) => s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Streaming(s) => s.body.size_hint(),
        }
    }
}

/// A body read up to a limit.
pub enum ReadUpTo {
    /// Complete and within the limit.
    Whole(Bytes),
    /// Larger than the limit: what was read, and the rest still to stream.
    Over(Prefixed),
}

/// Reads `body` until it ends or exceeds `limit` bytes; an oversized body is not lost, it comes
/// back as a [`Prefixed`] stream.
pub async fn read_up_to(mut body: Incoming, limit: u64) -> Result<ReadUpTo, hyper::Error> {
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        // Trailers are hop-by-hop for this proxy (TE and Trailer are never forwarded).
        if let Ok(data) = frame?.into_data() {
            total += data.len() as u64;
            chunks.push_back(data);
            if total > limit {
                return Ok(ReadUpTo::Over(Prefixed {
                    prefix: chunks,
                    rest: body,
                }));
            }
        }
    }
    Ok(ReadUpTo::Whole(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut buf = bytes::BytesMut::with_capacity(total as usize);
            chunks.iter().for_each(|c| buf.extend_from_slice(c));
            buf.freeze()
        }
    }))
}

/// What reading a client's body for replay produced.
pub enum ClientBody {
    /// Complete and within the replay limit: can be sent any number of times.
    Replayable(Bytes),
    /// Too large to keep: streams once, cut off past the cap; the flag tells when it was.
    Streaming(ReqBody, Overflow),
}

/// Reads the client's body up to `limit` bytes. A body that declares a larger Content-Length is
/// not read at all; one that grows past the limit while being read streams on from where it is,
/// and fails once more than `cap` bytes came in all.
pub async fn read_for_replay(
    body: Incoming,
    declared_len: Option<u64>,
    limit: u64,
    cap: u64,
) -> Result<ClientBody, hyper::Error> {
    if body.is_end_stream() {
        return Ok(ClientBody::Replayable(Bytes::new()));
    }
    let streamed = |body: Prefixed| {
        let over = Overflow::default();
        let s = Streamed {
            body,
            sent: 0,
            cap,
            over: over.clone(),
        };
        ClientBody::Streaming(ReqBody::Streaming(s), over)
    };
    if declared_len.is_some_and(|n| n > limit) {
        return Ok(streamed(Prefixed {
            prefix: VecDeque::new(),
            rest: body,
        }));
    }
    Ok(match read_up_to(body, limit).await? {
        ReadUpTo::Whole(b) => ClientBody::Replayable(b),
        ReadUpTo::Over(s) => streamed(s),
    })
}

/// A response body sent to the client, holding `G` (an upstream slot) until it is finished.
pub struct RespBody<G = ()> {
    kind: RespKind,
    guard: Option<G>,
}

enum RespKind {
    Upstream(Prefixed),
    Full(Option<Bytes>),
}

impl<G> RespBody<G> {
    pub fn upstream(body: Incoming, guard: G) -> Self {
        Self::upstream_prefixed(
            Prefixed {
                prefix: VecDeque::new(),
                rest: body,
            },
            guard,
        )
    }

    /// An upstream body of which the first chunks were already read.
    pub fn upstream_prefixed(body: Prefixed, guard: G) -> Self {
        RespBody {
            kind: RespKind::Upstream(body),
            guard: Some(guard),
        }
    }

    pub fn full(bytes: Bytes) -> Self {
        RespBody {
            kind: RespKind::Full((!bytes.is_empty()).then_some(bytes)),
            guard: None,
        }
    }
}

impl<G> From<Bytes> for RespBody<G> {
    fn from(b: Bytes) -> Self {
        RespBody::full(b)
    }
}

impl<G: Unpin> Body for RespBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let out = match &mut this.kind {
            RespKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespKind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = out {
            // Done: free the upstream slot now rather than when hyper drops the body.
            this.guard = None;
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RespKind::Full(b) => b.is_none(),
            RespKind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RespKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespKind::Upstream(body) => body.size_hint(),
        }
    }
}

/// A small answer the proxy makes itself, with its content type.
pub fn local<G>(
    status: http::StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> http::Response<RespBody<G>> {
    let mut resp = http::Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// A JSON answer the proxy makes itself.
pub fn json<G>(status: http::StatusCode, value: &serde_json::Value) -> http::Response<RespBody<G>> {
    local(
        status,
        "application/json; charset=utf-8",
        Bytes::from(value.to_string()),
    )
}
