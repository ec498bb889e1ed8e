//! The proxied request (SPEC B2): tag → slot → token → Shoptet → (replay | retry) → response.
//!
//! One function, [`Proxy::handle`], owns a request from arrival to the response head; the
//! response body then streams straight from Shoptet to the client, carrying the upstream slot.
//! Replays on 401 resend the identical request (the body is buffered for that when small enough);
//! GET/HEAD are retried after a 429 when Shoptet's wait is short. Nothing else is ever resent:
//! a POST that may have reached Shoptet is never sent twice except after a 401, which proves
//! Shoptet refused it before acting.

use crate::error::ProxyError;
use crate::http::body::{
    read_for_replay, read_up_to, ClientBody, Overflow, ReadUpTo, ReqBody, RespBody,
};
use crate::limits::flow::{Flow, Permit};
use crate::secret::Secret;
use crate::state::eshops::Eshops;
use crate::store::Store;
use crate::telemetry::access::{self, AccessLine};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces::{self, Kind, RequestSpans, Tracer, Value};
pub mod own;
pub mod policy;
mod renewal;
pub mod tag;
use crate::http::client::Client;
use crate::state::tokens::TokenCache;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
pub use policy::parse_retry_after;
use policy::{classify_401, Answer, Attempt, Decision, Reason, Rejection, MAX_429_RETRIES};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub type ProxyBody = RespBody<Permit>;

/// Shoptet's 401 bodies are a small envelope; a larger one is passed on without inspection.
const MAX_401_BODY: u64 = 64 * 1024;
/// Requests larger than this are refused outright; between `max_replay_body` and this they
/// stream without replay. Shoptet's own bulk endpoints take far less.
pub const MAX_BODY: u64 = 64 * 1024 * 1024;
/// A 429's body is read and dropped before a retry up to this size, so its connection can be
/// reused; Shoptet's 429 bodies are a short envelope.
const MAX_429_BODY: u64 = 16 * 1024;

static TOKEN_HEADER: HeaderName = HeaderName::from_static("shoptet-access-token");
static PRIVATE_TOKEN_HEADER: HeaderName = HeaderName::from_static("shoptet-private-api-token");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

pub struct ProxySettings {
    /// `scheme://authority[/base]` of the API, no trailing slash.
    pub api_base: String,
    /// The API's `Host` header, built once: left to the client, it would be formatted anew for
    /// every request.
    pub api_host: HeaderValue,
    pub eshop_header: HeaderName,
    pub max_replay_body: u64,
    pub max_retry_wait: Duration,
    pub upstream_timeout: Duration,
    pub client_keys: Vec<Secret>,
}

pub struct Proxy {
    /// Replaced whole by a reload. An `ArcSwap` because every request reads it on whatever core
    /// it runs: a lock-free load there, instead of a lock that every request would contend on.
    pub settings: ArcSwap<ProxySettings>,
    pub client: Client,
    pub eshops: Arc<Eshops>,
    pub tokens: Arc<TokenCache>,
    pub flow: Flow,
    pub metrics: Arc<Metrics>,
    /// Where a signature key a client renews through the proxy is adopted (SPEC B2).
    pub store: Store,
    /// Set when `[telemetry] otlp_endpoint` is: the only cost of traces when it is not.
    pub tracer: Option<Tracer>,
}

/// What the access log line reports about one request.
#[derive(Default)]
struct Trace {
    eshop_id: Option<u64>,
    upstream: Duration,
    queued: Duration,
    paced: Duration,
    replayed: bool,
    retries_429: u32,
    request_id: Option<HeaderValue>,
    /// The request's spans, when traces are on.
    spans: Option<Box<RequestSpans>>,
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::PROXY_AUTHORIZATION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for n in hop {
        headers.remove(n);
    }
}

/// Turns a client's request head into the one sent to Shoptet, except for the token (set per
/// attempt): hop-by-hop headers, the tag, any token the client sent and Host go; Content-Length
/// goes too because hyper frames the upstream body itself. Returns the declared body length.
pub fn rewrite_request_headers(
    headers: &mut HeaderMap,
    eshop_header: &HeaderName,
) -> Result<Option<u64>, ProxyError> {
    strip_hop_by_hop(headers);
    headers.remove(eshop_header);
    headers.remove(&PRIVATE_TOKEN_HEADER);
    headers.remove(header::HOST);
    let declared_len = headers
        .remove(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > MAX_BODY) {
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(declared_len)
}

impl Proxy {
    /// Answers one request on the proxy listener. Never fails: errors become envelopes.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let arrived = Instant::now();
        let method = req.method().clone();
        // A cheap clone (shared bytes): the access line needs the path after `req` is consumed.
        let uri = req.uri().clone();
        let mut trace = Trace::default();
        if let Some(tracer) = &self.tracer {
            trace.spans = Some(Box::new(tracer.begin(req.headers().get(&TRACEPARENT))));
        }
        let resp = match self.forward(req, &mut trace).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics
                    .proxy_errors
                    .with_label_values(&[e.code()])
                    .inc();
                e.to_response()
            }
        };
        let status = resp.status().as_u16();
        let total = arrived.elapsed();
        self.metrics.count_proxy_request(&method, status);
        self.metrics.request_duration.observe(total.as_secs_f64());
        access::log(&AccessLine {
            method: method.as_str(),
            path: uri.path(),
            eshop_id: trace.eshop_id,
            status,
            total,
            upstream: trace.upstream,
            queued: trace.queued,
            paced: trace.paced,
            replayed: trace.replayed,
            retries_429: trace.retries_429,
            request_id: trace.request_id.as_ref().and_then(|v| v.to_str().ok()),
        });
        if let (Some(tracer), Some(spans)) = (&self.tracer, trace.spans.take()) {
            finish_trace(tracer, *spans, &trace, &method, uri.path(), status, arrived);
        }
        resp
    }

    fn authorize(keys: &[Secret], headers: &HeaderMap) -> Result<(), ProxyError> {
        if keys.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(header::PROXY_AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or(ProxyError::Unauthorized)?;
        // Every key is compared, so timing reveals neither which key matched nor how much.
        let matched = keys.iter().fold(false, |acc, k| k.ct_eq(presented) | acc);
        matched.then_some(()).ok_or(ProxyError::Unauthorized)
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, body) = req.into_parts();
        // One snapshot per request: a reload in the middle does not mix old and new values.
        let settings = self.settings.load_full();
        Self::authorize(&settings.client_keys, &parts.headers)?;
        if parts.method == Method::CONNECT {
            return Err(ProxyError::NotFound);
        }
        let tagged = tag::parse(&parts.uri, &parts.headers, &settings.eshop_header)?;
        let eshop_id = tagged.eshop_id;
        trace.eshop_id = Some(eshop_id);
        let renews_key = renewal::renews_signature_key(&parts.method, tagged.path);
        let mut target = String::with_capacity(
            settings.api_base.len() + tagged.path.len() + tagged.query.map_or(0, |q| q.len() + 1),
        );
        target.push_str(&settings.api_base);
        target.push_str(tagged.path);
        if let Some(q) = tagged.query {
            target.push('?');
            target.push_str(q);
        }
        // From the String's own buffer: `str::parse` would copy it once more.
        let uri = Uri::from_maybe_shared(Bytes::from(target)).map_err(|_| ProxyError::NotFound)?;

        let mut headers = parts.headers;
        let mut extensions = carried(parts.extensions);
        let declared_len = rewrite_request_headers(&mut headers, &settings.eshop_header)?;
        headers.insert(header::HOST, settings.api_host.clone());

        let mut body = match read_for_replay(body, declared_len, settings.max_replay_body, MAX_BODY)
            .await
            .map_err(|_| ProxyError::BadRequest("the request body could not be read"))?
        {
            ClientBody::Replayable(b) => Outgoing::Replayable(b),
            ClientBody::Streaming(s, over) => Outgoing::Once(Some(s), over),
        };

        let eshop = self.eshops.get(eshop_id);
        eshop.count_request();
        // The clock is read for the spans only when there are spans (a read is ~25 ns, and a
        // request read it nine times).
        let traced = trace.spans.is_some();
        let admit_start = traced.then(Instant::now);
        let admission = self.flow.admit(&eshop).await?;
        trace.queued = admission.queued;
        trace.paced = admission.paced;
        if let (Some(spans), Some(admit_start)) = (trace.spans.as_deref_mut(), admit_start) {
            let queued_end = admit_start + admission.queued.saturating_sub(admission.paced);
            spans.child("queue", Kind::Internal, admit_start, queued_end, vec![]);
            let paced_end = queued_end + admission.paced;
            spans.child("pacing", Kind::Internal, queued_end, paced_end, vec![]);
        }
        let mut permit = admission.permit;
        let waited = traced.then(Instant::now);
        let mut token = self.tokens.get(&eshop).await?;
        if let (Some(spans), Some(waited)) = (trace.spans.as_deref_mut(), waited) {
            token_span(spans, waited, &token);
        }
        let mut attempt = Attempt {
            resendable: body.replayable(),
            idempotent: parts.method == Method::GET || parts.method == Method::HEAD,
            ..Attempt::default()
        };

        loop {
            let Some(req_body) = body.next() else {
                // The policy resends only a kept body, so a streamed one is never asked for twice.
                tracing::error!(
                    eshop_id,
                    "a streamed request body was asked for a second time"
                );
                return Err(ProxyError::Internal("a streamed body was to be resent"));
            };
            // The head is copied only while another attempt may still need it.
            let may_resend = attempt.resendable
                && (!attempt.replayed
                    || (attempt.idempotent && attempt.retries_429 < MAX_429_RETRIES));
            let mut req = Request::new(req_body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri.clone();
            *req.headers_mut() = if may_resend {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            *req.extensions_mut() = if may_resend {
                extensions.clone()
            } else {
                std::mem::take(&mut extensions)
            };
            req.headers_mut()
                .insert(TOKEN_HEADER.clone(), token.header.clone());
            // Each attempt is a span of its own, and Shoptet sees its id (sampled or not); the
            // client's traceparent is replaced by it.
            let attempt_span = trace.spans.as_deref().map(|spans| {
                let id = traces::new_span_id();
                req.headers_mut()
                    .insert(TRACEPARENT.clone(), spans.context(id).header());
                id
            });

            permit.sending();
            let sent = Instant::now();
            let deadline = sent + settings.upstream_timeout;
            let result = tokio::time::timeout_at(deadline, self.client.request(req)).await;
            let took = sent.elapsed();
            if let (Some(spans), Some(id)) = (trace.spans.as_deref_mut(), attempt_span) {
                let outcome = match &result {
                    Ok(Ok(r)) => (
                        "http.response.status_code",
                        Value::Int(r.status().as_u16().into()),
                    ),
                    Ok(Err(_)) => ("error.type", Value::Str("unreachable".into())),
                    Err(_) => ("error.type", Value::Str("timeout".into())),
                };
                let attrs = vec![
                    ("http.request.method", Value::Str(parts.method.to_string())),
                    outcome,
                ];
                let parent = Some(spans.server_id);
                spans.record(
                    id,
                    parent,
                    "upstream",
                    Kind::Client,
                    sent,
                    sent + took,
                    attrs,
                );
            }
            trace.upstream += took;
            self.metrics.upstream_duration.observe(took.as_secs_f64());
            let resp = match result {
                Err(_) => return Err(ProxyError::UpstreamTimeout),
                Ok(Err(_)) if body.overflowed() => return Err(ProxyError::BodyTooLarge),
                Ok(Err(e)) => {
                    tracing::warn!(eshop_id, error = %e, "upstream request failed");
                    return Err(ProxyError::UpstreamUnreachable);
                }
                Ok(Ok(r)) => r,
            };
            permit.answered(resp.status(), resp.headers(), sent + took);
            eshop.upstream_answered(resp.status().as_u16());
            trace.request_id = resp.headers().get(&REQUEST_ID).cloned();

            // A 401's envelope says whether a new token can help; read it (it is small).
            let (resp, rejection) = if resp.status() == StatusCode::UNAUTHORIZED {
                let (parts401, body401) = resp.into_parts();
                match read_up_to(body401, MAX_401_BODY).await {
                    Ok(ReadUpTo::Whole(b)) => {
                        let rejection = classify_401(&b);
                        (Response::from_parts(parts401, Kept::Read(b)), rejection)
                    }
                    // Not an envelope worth parsing: the client gets it unchanged.
                    Ok(ReadUpTo::Over(rest)) => {
                        return Ok(respond(parts401, RespBody::upstream_prefixed(rest, permit)))
                    }
                    Err(_) => return Err(ProxyError::UpstreamUnreachable),
                }
            } else {
                (resp.map(Kept::Streaming), Rejection::Terminal)
            };
            let answer = match resp.status() {
                StatusCode::UNAUTHORIZED => Answer::Unauthorized(rejection),
                StatusCode::TOO_MANY_REQUESTS => Answer::TooManyRequests {
                    retry_after: resp.headers().get(header::RETRY_AFTER),
                },
                status => Answer::Other(status),
            };
            match policy::decide(&answer, &attempt, settings.max_retry_wait) {
                Decision::RefreshAndReplay => {
                    let waited = Instant::now();
                    token = match self.tokens.replace(&eshop, &token).await {
                        Ok(t) => t,
                        Err(e) => {
                            self.metrics
                                .replays
                                .with_label_values(&["refresh_failed"])
                                .inc();
                            return Err(e);
                        }
                    };
                    if let Some(spans) = trace.spans.as_deref_mut() {
                        token_span(spans, waited, &token);
                    }
                    attempt.replayed = true;
                    trace.replayed = true;
                }
                Decision::WaitAndRetry(wait) => {
                    self.metrics
                        .upstream_429
                        .with_label_values(&["retried"])
                        .inc();
                    // Read to the end, so the pooled connection stays open for the retry; a
                    // large body is not worth the wait and closes it instead.
                    if let Kept::Streaming(b) = resp.into_body() {
                        let _ = read_up_to(b, MAX_429_BODY).await;
                    }
                    attempt.retries_429 += 1;
                    trace.retries_429 += 1;
                    tokio::time::sleep(wait).await;
                }
                Decision::PassBack(reason) => {
                    if let Some(outcome) = reason.replay_label() {
                        self.metrics.replays.with_label_values(&[outcome]).inc();
                    }
                    // The next request should not meet the same dead token.
                    if reason == Reason::NotReplayable {
                        let tokens = self.tokens.clone();
                        let dead = token.clone();
                        let eshop = eshop.clone();
                        tokio::spawn(async move {
                            let _ = tokens.replace(&eshop, &dead).await;
                        });
                    }
                    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                        self.metrics
                            .upstream_429
                            .with_label_values(&["returned"])
                            .inc();
                    }
                    if reason == Reason::Final && attempt.replayed {
                        self.metrics.replays.with_label_values(&["ok"]).inc();
                    }
                    let (parts, kept) = resp.into_parts();
                    let body = match kept {
                        Kept::Read(b) => RespBody::full(b),
                        Kept::Streaming(b) if renews_key && parts.status == StatusCode::OK => {
                            let resp = Response::from_parts(parts, b);
                            // Boxed: the store's future is large (2.7 KB) and this path rare; inline, it
                            // would grow every request's future by that much.
                            let adopt = Box::pin(self.adopt_signature_key(eshop_id, resp, permit));
                            return adopt.await;
                        }
                        Kept::Streaming(b) => RespBody::upstream(b, permit),
                    };
                    return Ok(respond(parts, body));
                }
            }
        }
    }
}

/// The token wait's span (`shoptet.token` = cached, minted or adopted) and, when the token was
/// minted for this wait, its getAccessToken call. The token itself is never an attribute.
fn token_span(spans: &mut RequestSpans, waited: Instant, token: &crate::state::tokens::Token) {
    let source = token.source_since(waited);
    let attrs = vec![("shoptet.token", Value::Str(source.into()))];
    let id = spans.child("token", Kind::Internal, waited, Instant::now(), attrs);
    if let (Some((start, took)), "minted") = (token.fetch, source) {
        let attrs = vec![("rpc.method", Value::Str("getAccessToken".into()))];
        let span = traces::new_span_id();
        spans.record(
            span,
            Some(id),
            "getAccessToken",
            Kind::Client,
            start,
            start + took,
            attrs,
        );
    }
}

/// Adds the SERVER span and hands the request's spans to the exporter.
fn finish_trace(
    tracer: &Tracer,
    mut spans: RequestSpans,
    trace: &Trace,
    method: &Method,
    path: &str,
    status: u16,
    arrived: Instant,
) {
    // The /api path, without the tag prefix a client may have put before it.
    let route = path.find("/api/").map_or(path, |i| &path[i..]).to_string();
    let mut attrs = vec![
        ("http.request.method", Value::Str(method.to_string())),
        ("http.route", Value::Str(route.clone())),
        ("http.response.status_code", Value::Int(status.into())),
        ("shoptet.replayed", Value::Bool(trace.replayed)),
    ];
    if let Some(id) = trace.eshop_id {
        attrs.push(("shoptet.eshop_id", Value::Int(id as i64)));
    }
    if let Some(id) = trace.request_id.as_ref().and_then(|v| v.to_str().ok()) {
        attrs.push(("shoptet.request_id", Value::Str(id.to_string())));
    }
    let (id, parent) = (spans.server_id, spans.parent);
    let name = format!("{method} {route}");
    spans.record(
        id,
        parent,
        name,
        Kind::Server,
        arrived,
        Instant::now(),
        attrs,
    );
    tracer.finish(spans);
}

/// An upstream answer's body: already read (a 401 envelope), or still to stream.
enum Kept {
    Read(Bytes),
    Streaming(Incoming),
}

/// The answer the client gets from Shoptet's: its head as received (the extensions included,
/// which carry hyper's record of the HTTP/1 header-name spelling), minus the hop-by-hop parts.
fn respond(mut parts: http::response::Parts, body: ProxyBody) -> Response<ProxyBody> {
    strip_hop_by_hop(&mut parts.headers);
    parts.extensions = carried(parts.extensions);
    Response::from_parts(parts, body)
}

/// The extensions of a message that travel to the next hop. hyper's HTTP/1 parser records the
/// header names' spelling there and its encoder writes them back (SPEC B2: case kept on HTTP/1.1,
/// as through nginx); the type is hyper-private, so the whole set is carried, except the parts
/// that belong to the connection the message came on (its upgrade, an HTTP/2 CONNECT protocol).
fn carried(mut extensions: http::Extensions) -> http::Extensions {
    extensions.remove::<hyper::upgrade::OnUpgrade>();
    extensions.remove::<hyper::ext::Protocol>();
    extensions
}

/// The request body as it can be sent: again and again, or once (and then it may overflow).
enum Outgoing {
    Replayable(Bytes),
    Once(Option<ReqBody>, Overflow),
}

impl Outgoing {
    fn next(&mut self) -> Option<ReqBody> {
        match self {
            Outgoing::Replayable(b) => Some(ReqBody::full(b.clone())),
            Outgoing::Once(b, _) => b.take(),
        }
    }

    /// The streamed body passed [`MAX_BODY`] and was cut off.
    fn overflowed(&self) -> bool {
        matches!(self, Outgoing::Once(_, over) if over.happened())
    }

    fn replayable(&self) -> bool {
        matches!(self, Outgoing::Replayable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an `async fn` taking the proxy and one argument returns.
    fn future_size<'a, A: 'a, F>(_f: impl Fn(&'a Proxy, A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_requests_future_stays_small() {
        // Every request allocates its future once (the listener boxes it) and writes all of it;
        // the rare large parts are boxed out of it (the token fetch, the signature-key adoption).
        // Issue 15 once inlined the adoption's store future: 3.2 KB became 5.5 KB, copied whole
        // several times per request until the listener boxed it (issue 19).
        const MAX: usize = 4096;
        let size = future_size(Proxy::handle);
        assert!(
            size <= MAX,
            "Proxy::handle's future is {size} bytes (at most {MAX})"
        );
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("Bearer k"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }
}
