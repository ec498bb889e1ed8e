//! Micro-benchmarks of what every proxied request runs besides I/O (issue 9): tag parsing, the
//! token lookup on a warm cache of 100,000 e-shops, the request head rewrite and, for refused
//! requests, the error envelope.
//!
//! Run: `cargo bench --bench hot_path`. End-to-end numbers come from `benches/load.sh`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use shoptet_proxy::error::ProxyError;
use shoptet_proxy::proxy::rewrite_request_headers;
use shoptet_proxy::proxy::tag;
use shoptet_proxy::secret::Secret;
use shoptet_proxy::state::eshops::Eshops;
use shoptet_proxy::state::tokens::{TokenCache, TokenConfig};
use shoptet_proxy::store::{AccessToken, Keyring, Store};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const ESHOPS: u64 = 100_000;

fn eshop_header() -> HeaderName {
    HeaderName::from_static("x-shoptet-eshop-id")
}

/// What a typical addon sends: a few ordinary headers and the tag.
fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    h.insert("user-agent", HeaderValue::from_static("addon/1.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("x-shoptet-eshop-id", HeaderValue::from_static("222651"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h
}

fn tagging(c: &mut Criterion) {
    let name = eshop_header();
    let by_header: Uri = "/api/orders?page=2&itemsPerPage=50".parse().expect("uri");
    let by_path: Uri = "/eshops/222651/api/orders/2024000012?include=items"
        .parse()
        .expect("uri");
    let headers = client_headers();
    let empty = HeaderMap::new();
    let mut g = c.benchmark_group("tag");
    g.bench_function("header", |b| {
        b.iter(|| tag::parse(black_box(&by_header), black_box(&headers), &name))
    });
    g.bench_function("path_prefix", |b| {
        b.iter(|| tag::parse(black_box(&by_path), black_box(&empty), &name))
    });
    g.finish();
}

fn token_lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let eshops = Arc::new(Eshops::new(3));
    let cache = rt.block_on(async {
        let store = Store::open(&url, Keyring::generate()).await.expect("store");
        let cfg = TokenConfig {
            refresh_margin: Duration::from_secs(300),
            backoff_max: Duration::from_secs(60),
            status_recheck: shoptet_proxy::state::tokens::STATUS_RECHECK,
        };
        Arc::new(TokenCache::offline(eshops.clone(), store, cfg).expect("cache"))
    });
    let expires_at = SystemTime::now() + Duration::from_secs(3600);
    for id in 1..=ESHOPS {
        cache.adopt(
            id,
            AccessToken {
                token: Secret::new(format!("{id}-a-1-0123456789abcdefghijklmnopqrstuv")),
                expires_at,
            },
        );
    }
    // A multiplicative walk over all ids: no two neighbouring lookups share a cache line.
    let mut i = 0u64;
    c.bench_function("token_get_warm_100k", |b| {
        b.iter(|| {
            i = (i + 7919) % ESHOPS;
            // What the proxy does per request: find the e-shop's record, then its token.
            let eshop = eshops.get(black_box(i + 1));
            let t = cache.get(&eshop).now_or_never();
            assert!(matches!(t, Some(Ok(_))), "a warm lookup never waits");
            t
        })
    });
    drop(dir);
}

fn head_rewrite(c: &mut Criterion) {
    let name = eshop_header();
    let headers = client_headers();
    c.bench_function("rewrite_request_headers", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| rewrite_request_headers(h, &name),
            BatchSize::SmallInput,
        )
    });
}

fn error_envelope(c: &mut Criterion) {
    let e = ProxyError::TokenUnavailable {
        retry_after: Duration::from_secs(2),
    };
    c.bench_function("error_envelope", |b| {
        b.iter(|| black_box(&e).to_response::<bytes::Bytes>())
    });
}

criterion_group!(benches, tagging, token_lookup, head_rewrite, error_envelope);
criterion_main!(benches);
