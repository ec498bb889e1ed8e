//! Traces (SPEC B7): an in-test OTLP/HTTP receiver decodes what the proxy exports with the
//! `opentelemetry-proto` types and checks the spans of real requests through the simulator.

mod common;

use bytes::Bytes;
use common::{sim_config, stand_in, wait_until, Harness, ESHOP};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::sync::{Arc, Mutex};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// A collector on a loopback port: records every exported span with its resource's
/// `service.name`, after checking the request is what OTLP/HTTP protobuf prescribes.
async fn collector() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let url = stand_in(move |req: http::Request<hyper::body::Incoming>| {
        let sink = sink.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            assert_eq!(req.method(), http::Method::POST);
            assert_eq!(
                req.headers()["content-type"],
                "application/x-protobuf",
                "OTLP/HTTP protobuf"
            );
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let export = ExportTraceServiceRequest::decode(body).expect("a valid OTLP message");
            let mut got = sink.lock().expect("lock");
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| str_value(a.value.as_ref()?.value.as_ref()?))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        got.push((service.clone(), s));
                    }
                }
            }
            http::Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    (url, received)
}

fn str_value(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Any> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn spans_of(received: &Received, trace: &str) -> Vec<Span> {
    received
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == trace)
        .map(|(_, s)| s.clone())
        .collect()
}

#[tokio::test]
async fn a_replayed_request_continues_the_client_trace_with_every_step_as_a_span() {
    let (endpoint, received) = collector().await;
    let h = Harness::with(sim_config(), |c| {
        c.telemetry.otlp_endpoint = endpoint.clone();
        c.telemetry.service_name = "proxy-under-test".into();
    })
    .await;
    let inst = h.install(ESHOP).await;
    assert_eq!(h.get(ESHOP, "/api/eshop").await.status, 200);
    // The cached token is now revoked: the traced request meets a 401 and is replayed.
    h.revoke_tokens(ESHOP).await;
    let cleared = h
        .client
        .request(
            http::Method::DELETE,
            &h.sim_url("/sim/requests"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(cleared.status, 200);
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let r = h
        .call(
            http::Method::GET,
            ESHOP,
            "/api/eshop?include=x",
            &[("traceparent", &traceparent)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let server_done = || {
        spans_of(&received, CLIENT_TRACE)
            .iter()
            .any(|s| s.kind == SpanKind::Server as i32)
    };
    wait_until("the server span is exported", server_done).await;
    let spans = spans_of(&received, CLIENT_TRACE);
    let service = received.lock().expect("lock")[0].0.clone();
    assert_eq!(service, "proxy-under-test");

    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(
        hex(&server.parent_span_id),
        CLIENT_SPAN,
        "child of the client's span"
    );
    assert_eq!(
        attr(server, "http.request.method"),
        Some(&Any::StringValue("GET".into()))
    );
    assert_eq!(
        attr(server, "http.route"),
        Some(&Any::StringValue("/api/eshop".into()))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&Any::IntValue(200))
    );
    assert_eq!(
        attr(server, "shoptet.eshop_id"),
        Some(&Any::IntValue(ESHOP as i64))
    );
    assert_eq!(
        attr(server, "shoptet.replayed"),
        Some(&Any::BoolValue(true))
    );
    let request_id = r
        .header("x-request-id")
        .expect("the simulator sends a request id");
    assert_eq!(
        attr(server, "shoptet.request_id"),
        Some(&Any::StringValue(request_id.to_string()))
    );

    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == server.span_id)
        .collect();
    let named = |name: &str| -> Vec<&Span> {
        children
            .iter()
            .copied()
            .filter(|s| s.name == name)
            .collect()
    };
    for name in ["queue", "pacing"] {
        let s = named(name);
        assert_eq!(s.len(), 1, "{name}");
        assert_eq!(s[0].kind, SpanKind::Internal as i32);
    }
    // First the cached (revoked) token, then the one minted for the replay.
    let tokens = named("token");
    let sources: Vec<_> = tokens.iter().map(|s| attr(s, "shoptet.token")).collect();
    assert_eq!(
        sources,
        [
            Some(&Any::StringValue("cached".into())),
            Some(&Any::StringValue("minted".into()))
        ]
    );
    let fetch: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "getAccessToken")
        .collect();
    assert_eq!(fetch.len(), 1);
    assert_eq!(fetch[0].parent_span_id, tokens[1].span_id);
    assert_eq!(fetch[0].kind, SpanKind::Client as i32);

    let mut attempts = named("upstream");
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2, "the 401 and the replay");
    let statuses: Vec<_> = attempts
        .iter()
        .map(|s| attr(s, "http.response.status_code"))
        .collect();
    assert_eq!(
        statuses,
        [Some(&Any::IntValue(401)), Some(&Any::IntValue(200))]
    );
    for s in &spans {
        assert!(s.start_time_unix_nano > 0 && s.end_time_unix_nano >= s.start_time_unix_nano);
        assert!(
            server.start_time_unix_nano <= s.start_time_unix_nano,
            "{}",
            s.name
        );
    }

    // Shoptet saw each attempt's own context, in the client's trace, sampled.
    let seen: Vec<String> = h
        .sim_requests(None)
        .await
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/api/eshop"))
        })
        .map(|r| {
            r["headers"]["traceparent"]
                .as_str()
                .expect("traceparent")
                .to_string()
        })
        .collect();
    let expected: Vec<String> = attempts
        .iter()
        .map(|s| format!("00-{CLIENT_TRACE}-{}-01", hex(&s.span_id)))
        .collect();
    assert_eq!(seen, expected);

    // No secret anywhere: neither the OAuth token nor any API token (`<eshop>-a-<n>-...`).
    for s in &spans {
        for a in &s.attributes {
            if let Some(v) = a
                .value
                .as_ref()
                .and_then(|v| v.value.as_ref())
                .and_then(str_value)
            {
                assert!(!v.contains(&inst.oauth_token), "{}", a.key);
                assert!(!v.contains(&format!("{ESHOP}-a-")), "{} = {v}", a.key);
            }
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn an_unsampled_client_trace_is_not_exported_but_still_reaches_shoptet() {
    let (endpoint, received) = collector().await;
    let h = Harness::with(sim_config(), |c| {
        c.telemetry.otlp_endpoint = endpoint.clone();
    })
    .await;
    h.install(ESHOP).await;
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let r = h
        .call(
            http::Method::GET,
            ESHOP,
            "/api/eshop",
            &[("traceparent", &unsampled)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    // A sampled request afterwards: once its spans arrive, the unsampled one had its chance.
    assert_eq!(h.get(ESHOP, "/api/eshop").await.status, 200);
    wait_until("the sampled request is exported", || {
        received
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, s)| s.kind == SpanKind::Server as i32)
    })
    .await;
    assert!(spans_of(&received, CLIENT_TRACE).is_empty());
    let seen = h.sim_requests(Some(ESHOP)).await;
    let first = seen[0]["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(first.starts_with(&format!("00-{CLIENT_TRACE}-")), "{first}");
    assert!(first.ends_with("-00"), "{first}");
    assert!(
        !first.contains(CLIENT_SPAN),
        "the client's traceparent is replaced: {first}"
    );
    // The request without a traceparent: a trace of its own: a new id, sampled (ratio 1).
    let second = seen[1]["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(
        !second.contains(CLIENT_TRACE) && second.ends_with("-01"),
        "{second}"
    );
    h.stop().await;
}

#[tokio::test]
async fn with_the_collector_down_requests_succeed_and_lost_spans_are_counted() {
    // A port that was just free: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let h = Harness::with(sim_config(), |c| {
        c.telemetry.otlp_endpoint = endpoint.clone();
    })
    .await;
    h.install(ESHOP).await;
    for _ in 0..20 {
        assert_eq!(h.get(ESHOP, "/api/eshop").await.status, 200);
    }
    let metrics = h.metrics();
    wait_until("the lost spans are counted", || {
        metrics.trace_spans_dropped.get() >= 20
    })
    .await;
    h.stop().await;
}
