//! Trace export (SPEC B7): span records, W3C `traceparent`, and the one background task that
//! batches spans and POSTs them to `<otlp_endpoint>/v1/traces` as OTLP/HTTP protobuf.
//!
//! Hand-rolled rather than the `opentelemetry` SDK + `tracing-opentelemetry`: the proxy's spans
//! are a fixed handful per request whose timings it already measures (queue, pacing, token,
//! attempts), so a request builds a small `Vec` of plain records and hands it over with one
//! `try_send`; no span guards, no per-span allocation in a subscriber layer, no second HTTP stack
//! (the SDK's exporter brings reqwest or tonic) beside the project's own hyper client. Only the
//! wire types come from `opentelemetry-proto` (prost messages), so the encoding is the
//! collector's own schema. The queue is bounded: when the exporter falls behind (a slow or
//! absent collector) spans are dropped and counted in `shoptet_proxy_trace_spans_dropped_total`,
//! never waited for. An export that fails marks the collector down for a backoff (1 s doubling
//! to 30 s): meanwhile requests keep their trace context and `traceparent` but record no spans
//! (each span they would have made is counted as dropped), so an absent collector costs neither
//! the encoding nor the span building. With no endpoint configured there is no `Tracer` at all.

use crate::http::body::ReqBody;
use crate::http::client::Client;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prometheus::IntCounter;
use prost::Message;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Requests (each a few spans) waiting for the exporter; beyond this, spans are dropped.
const QUEUE: usize = 2048;
/// Spans per export request.
const BATCH: usize = 512;
/// A span waits at most this long for its batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One export may take this long; a hung collector then costs one batch, not the queue.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed export the collector counts as down this long, doubling up to `DOWN_MAX`.
const DOWN_FIRST: Duration = Duration::from_secs(1);
const DOWN_MAX: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
    Internal,
}

pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// One finished span.
pub struct SpanRecord {
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start: Instant,
    pub end: Instant,
    pub attrs: Vec<(&'static str, Value)>,
}

/// A W3C trace context: what `traceparent` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_into(out: &mut [u8], s: &str) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(())
}

impl Context {
    /// Parses a `traceparent` header (version `00`; a later version's first four fields, as
    /// the W3C recommendation says). `None` for anything invalid, all-zero ids included.
    pub fn parse(v: &HeaderValue) -> Option<Context> {
        let s = v.to_str().ok()?.trim();
        let mut parts = s.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version == "ff"
            || !version
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            || (version == "00" && parts.next().is_some())
            || [trace, span, flags]
                .iter()
                .any(|p| p.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return None;
        }
        let mut c = Context {
            trace_id: [0; 16],
            span_id: [0; 8],
            sampled: false,
        };
        hex_into(&mut c.trace_id, trace)?;
        hex_into(&mut c.span_id, span)?;
        let mut f = [0u8];
        hex_into(&mut f, flags)?;
        c.sampled = f[0] & 1 == 1;
        (c.trace_id != [0; 16] && c.span_id != [0; 8]).then_some(c)
    }

    /// The `traceparent` value for this context.
    pub fn header(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // Built in place: it goes on every upstream attempt while traces are on.
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let digits = self
            .trace_id
            .iter()
            .chain(&self.span_id)
            .flat_map(|b| [b >> 4, b & 15]);
        let slots = (3..35).chain(36..52);
        for (i, d) in slots.zip(digits) {
            out[i] = HEX[usize::from(d)];
        }
        if self.sampled {
            out[54] = b'1';
        }
        HeaderValue::from_bytes(&out).expect("hex and dashes are a valid header value")
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

/// The spans of one request, all in one trace.
pub struct RequestSpans {
    pub trace_id: [u8; 16],
    pub sampled: bool,
    /// The SERVER span's id and its parent (the client's span, when it sent a traceparent).
    pub server_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub spans: Vec<SpanRecord>,
    /// False while the collector is down: sampled spans are counted, not built.
    keep: bool,
    skipped: u64,
}

impl RequestSpans {
    /// Adds a child of the SERVER span, if the request is sampled.
    pub fn child(
        &mut self,
        name: &'static str,
        kind: Kind,
        start: Instant,
        end: Instant,
        attrs: Vec<(&'static str, Value)>,
    ) -> [u8; 8] {
        let span_id = new_span_id();
        self.record(span_id, Some(self.server_id), name, kind, start, end, attrs);
        span_id
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: impl Into<Cow<'static, str>>,
        kind: Kind,
        start: Instant,
        end: Instant,
        attrs: Vec<(&'static str, Value)>,
    ) {
        if self.sampled && !self.keep {
            self.skipped += 1;
        } else if self.sampled {
            self.spans.push(SpanRecord {
                span_id,
                parent,
                name: name.into(),
                kind,
                start,
                end,
                attrs,
            });
        }
    }

    /// The context an upstream attempt with span id `span_id` sends as `traceparent`.
    pub fn context(&self, span_id: [u8; 8]) -> Context {
        Context {
            trace_id: self.trace_id,
            span_id,
            sampled: self.sampled,
        }
    }
}

/// A finished request's spans and the clock pair that places them in wall time.
struct Batch {
    trace_id: [u8; 16],
    wall: SystemTime,
    at: Instant,
    spans: Vec<SpanRecord>,
}

pub struct Tracer {
    tx: mpsc::Sender<Batch>,
    ratio: f64,
    dropped: IntCounter,
    /// Set by the exporter while the collector is down.
    down: Arc<AtomicBool>,
}

impl Tracer {
    /// Starts the exporter task (on the current tokio runtime) for `endpoint`, a base URL.
    pub fn start(
        endpoint: &str,
        ratio: f64,
        service_name: &str,
        client: Client,
        dropped: IntCounter,
    ) -> Tracer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let down = Arc::new(AtomicBool::new(false));
        let exporter = Exporter {
            url: format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            service_name: service_name.to_string(),
            client,
            dropped: dropped.clone(),
            down: down.clone(),
        };
        tokio::spawn(exporter.run(rx));
        Tracer {
            tx,
            ratio,
            dropped,
            down,
        }
    }

    /// Begins a request's trace: continues the client's context (its sampled flag decides) or
    /// starts a new trace sampled at `sample_ratio`.
    pub fn begin(&self, client: Option<&HeaderValue>) -> RequestSpans {
        let parent = client.and_then(Context::parse);
        let (trace_id, sampled) = match parent {
            Some(c) => (c.trace_id, c.sampled),
            None => (
                new_trace_id(),
                self.ratio >= 1.0 || rand::random::<f64>() < self.ratio,
            ),
        };
        RequestSpans {
            trace_id,
            sampled,
            server_id: new_span_id(),
            parent: parent.map(|c| c.span_id),
            spans: Vec::new(),
            keep: !self.down.load(Ordering::Relaxed),
            skipped: 0,
        }
    }

    /// Queues a request's spans for export; drops (and counts) them when the queue is full.
    pub fn finish(&self, rs: RequestSpans) {
        if rs.skipped > 0 {
            self.dropped.inc_by(rs.skipped);
        }
        if !rs.sampled || rs.spans.is_empty() {
            return;
        }
        let n = rs.spans.len() as u64;
        let batch = Batch {
            trace_id: rs.trace_id,
            wall: SystemTime::now(),
            at: Instant::now(),
            spans: rs.spans,
        };
        if self.tx.try_send(batch).is_err() {
            self.dropped.inc_by(n);
        }
    }
}

struct Exporter {
    url: String,
    service_name: String,
    client: Client,
    dropped: IntCounter,
    down: Arc<AtomicBool>,
}

fn nanos(b: &Batch, t: Instant) -> u64 {
    // Placed relative to the moment the batch was queued, whose wall time is known.
    let wall = if t <= b.at {
        b.wall.checked_sub(b.at - t)
    } else {
        b.wall.checked_add(t - b.at)
    };
    wall.and_then(|w| w.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

fn attr(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

impl Exporter {
    async fn run(self, mut rx: mpsc::Receiver<Batch>) {
        let mut pending: Vec<Batch> = Vec::new();
        let mut count = 0usize;
        let mut backoff = DOWN_FIRST;
        loop {
            let first = match rx.recv().await {
                Some(b) => b,
                None => return,
            };
            count += first.spans.len();
            pending.push(first);
            let flush_at = Instant::now() + FLUSH_EVERY;
            while count < BATCH {
                match tokio::time::timeout_at(flush_at, rx.recv()).await {
                    Ok(Some(b)) => {
                        count += b.spans.len();
                        pending.push(b);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let body = self.encode(&pending);
            let sent = self.post(body).await;
            pending.clear();
            if sent {
                backoff = DOWN_FIRST;
            } else {
                self.dropped.inc_by(count as u64);
                // Down: requests stop building spans until the next batch probes again; what
                // was queued meanwhile is dropped and counted.
                self.down.store(true, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(DOWN_MAX);
                while let Ok(b) = rx.try_recv() {
                    self.dropped.inc_by(b.spans.len() as u64);
                }
                self.down.store(false, Ordering::Relaxed);
            }
            count = 0;
        }
    }

    fn encode(&self, batches: &[Batch]) -> Bytes {
        let spans = batches
            .iter()
            .flat_map(|b| {
                b.spans.iter().map(move |s| Span {
                    trace_id: b.trace_id.to_vec(),
                    span_id: s.span_id.to_vec(),
                    parent_span_id: s.parent.map_or_else(Vec::new, |p| p.to_vec()),
                    name: s.name.to_string(),
                    kind: match s.kind {
                        Kind::Server => SpanKind::Server,
                        Kind::Client => SpanKind::Client,
                        Kind::Internal => SpanKind::Internal,
                    } as i32,
                    start_time_unix_nano: nanos(b, s.start),
                    end_time_unix_nano: nanos(b, s.end),
                    attributes: s
                        .attrs
                        .iter()
                        .map(|(k, v)| {
                            attr(
                                k,
                                match v {
                                    Value::Str(s) => any_value::Value::StringValue(s.clone()),
                                    Value::Int(i) => any_value::Value::IntValue(*i),
                                    Value::Bool(x) => any_value::Value::BoolValue(*x),
                                },
                            )
                        })
                        .collect(),
                    ..Span::default()
                })
            })
            .collect();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![attr(
                        "service.name",
                        any_value::Value::StringValue(self.service_name.clone()),
                    )],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "shoptet-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        Bytes::from(req.encode_to_vec())
    }

    /// Sends one batch; false when it did not arrive (the spans are then lost and counted).
    async fn post(&self, body: Bytes) -> bool {
        let req = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(ReqBody::full(body));
        let Ok(req) = req else { return false };
        match tokio::time::timeout(EXPORT_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                // Read the (short) answer so the connection goes back to the pool.
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                true
            }
            Ok(Ok(resp)) => {
                tracing::warn!(status = resp.status().as_u16(), "trace export refused");
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "trace export failed");
                false
            }
            Err(_) => {
                tracing::debug!("trace export timed out");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_invalid_values() {
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let c = Context::parse(&v).expect("valid");
        assert!(c.sampled);
        assert_eq!(c.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(c.header(), v);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(
                Context::parse(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
        let later = HeaderValue::from_static(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra",
        );
        assert!(
            !Context::parse(&later)
                .expect("a later version parses")
                .sampled
        );
    }
}
