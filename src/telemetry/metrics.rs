//! Every metric the proxy exports, named in this one module (SPEC B7).
//!
//! Names follow Prometheus conventions: `shoptet_proxy_` prefix, base units in the name, `_total`
//! on counters. No label carries an e-shop id: with thousands of installations that would explode
//! the scrape. Label values are closed sets chosen here, so a hostile request cannot mint series.
//! The hot path uses pre-resolved handles (`requests_proxy`), not label lookups.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// 1 ms … 60 s: a proxy hop costs about a millisecond, Shoptet answers in tens to hundreds of
/// milliseconds, and `upstream_timeout` defaults to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Methods with their own label value; anything else is counted as `other`.
pub const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

// The closed label sets of the labelled families. Each series is created at zero when the process
// starts, so `rate()` and alert rules see a series from the first scrape instead of only after
// the first failure (a missing series reads as "no data", not as "zero errors").
/// `shoptet_proxy_token_fetches_total{result}`.
pub const TOKEN_FETCH_RESULTS: [&str; 6] = [
    "ok",
    "unauthorized",
    "suspended",
    "not_installed",
    "max_tokens",
    "error",
];
/// `shoptet_proxy_replays_total{result}`.
pub const REPLAY_RESULTS: [&str; 4] = ["ok", "rejected_again", "refresh_failed", "not_replayable"];
/// `shoptet_proxy_upstream_429_total{action}`.
pub const UPSTREAM_429_ACTIONS: [&str; 2] = ["retried", "returned"];
/// `shoptet_proxy_webhooks_total{result}`.
pub const WEBHOOK_RESULTS: [&str; 4] = ["received", "rejected", "delivered", "failed"];
/// `shoptet_proxy_settings_logins_total{result}`: a verified admin got a session (`ok`), the
/// authorization-code flow was started because no code came (`redirected`), the login was refused
/// (`denied`: bad, reused or foreign code or state, e-shop not active), or it could not be judged
/// (`error`: OAuth server or store unreachable).
pub const SETTINGS_LOGIN_RESULTS: [&str; 4] = ["ok", "redirected", "denied", "error"];
/// `shoptet_proxy_installations{status}`.
pub const INSTALLATION_STATUSES: [&str; 3] = ["active", "suspended", "uninstalled"];
/// `shoptet_proxy_config_reloads_total{result}`.
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `requests_proxy[method][class]`, resolved once.
    requests_proxy: Vec<[IntCounter; 5]>,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub proxy_errors: IntCounterVec,
    pub token_fetches: IntCounterVec,
    pub token_fetch_duration: Histogram,
    pub replays: IntCounterVec,
    pub upstream_429: IntCounterVec,
    pub queue_length: IntGauge,
    pub queue_wait: Histogram,
    pub in_flight: IntGauge,
    pub paced: IntCounter,
    pub pace_wait: Histogram,
    pub bucket_429: IntCounter,
    pub installations: IntGaugeVec,
    pub webhooks: IntCounterVec,
    pub outbox_depth: IntGauge,
    /// 1 while the store answers, 0 during an outage (SPEC B7, B10): `/readyz` stays 200 then.
    pub store_up: IntGauge,
    pub settings_logins: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// Mirrors [`super::logging::dropped_lines`], brought up to date at each scrape.
    pub log_lines_dropped: IntCounter,
    pub trace_spans_dropped: IntCounter,
}

fn histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        .expect("static histogram options are valid")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static counter options are valid")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = counter_vec(
            "shoptet_proxy_requests_total",
            "Requests answered, by listener, method and status class.",
            &["listener", "method", "class"],
        );
        let requests_proxy = METHODS
            .iter()
            .map(|m| CLASSES.map(|c| requests.with_label_values(&["proxy", m, c])))
            .collect();
        let m = Metrics {
            requests,
            requests_proxy,
            request_duration: histogram(
                "shoptet_proxy_request_duration_seconds",
                "Time from a proxied request's arrival until its response head was sent.",
            ),
            upstream_duration: histogram(
                "shoptet_proxy_upstream_duration_seconds",
                "Time from sending a request to the Shoptet API until its response head arrived.",
            ),
            proxy_errors: counter_vec(
                "shoptet_proxy_errors_total",
                "Errors answered by the proxy itself, by errorCode.",
                &["code"],
            ),
            token_fetches: counter_vec(
                "shoptet_proxy_token_fetches_total",
                "getAccessToken calls, by result (ok, unauthorized, suspended, not_installed, max_tokens, error).",
                &["result"],
            ),
            token_fetch_duration: histogram(
                "shoptet_proxy_token_fetch_duration_seconds",
                "Duration of getAccessToken calls.",
            ),
            replays: counter_vec(
                "shoptet_proxy_replays_total",
                "Requests replayed after a 401, by result (ok, rejected_again, refresh_failed, not_replayable).",
                &["result"],
            ),
            upstream_429: counter_vec(
                "shoptet_proxy_upstream_429_total",
                "429 answers from the Shoptet API, by what the proxy did (retried, returned).",
                &["action"],
            ),
            queue_length: IntGauge::new(
                "shoptet_proxy_queue_length",
                "Requests waiting for an upstream slot.",
            )
            .expect("static gauge"),
            queue_wait: histogram(
                "shoptet_proxy_queue_wait_seconds",
                "Time requests waited for an upstream slot (pacing included).",
            ),
            in_flight: IntGauge::new(
                "shoptet_proxy_upstream_in_flight",
                "Requests in flight to the Shoptet API.",
            )
            .expect("static gauge"),
            paced: IntCounter::new(
                "shoptet_proxy_bucket_paced_requests_total",
                "Requests delayed by leaky-bucket pacing: each is a bucket 429 the model expected and avoided.",
            )
            .expect("static counter"),
            pace_wait: histogram(
                "shoptet_proxy_bucket_pace_seconds",
                "Time requests were delayed by leaky-bucket pacing.",
            ),
            bucket_429: IntCounter::new(
                "shoptet_proxy_bucket_429_total",
                "429 answers from the Shoptet API for a full leaky bucket (with Retry-After): the bucket 429s received.",
            )
            .expect("static counter"),
            installations: IntGaugeVec::new(
                Opts::new(
                    "shoptet_proxy_installations",
                    "Installations in the store, by status.",
                ),
                &["status"],
            )
            .expect("static gauge"),
            webhooks: counter_vec(
                "shoptet_proxy_webhooks_total",
                "Webhooks by result (received, rejected, delivered, failed).",
                &["result"],
            ),
            outbox_depth: IntGauge::new(
                "shoptet_proxy_outbox_depth",
                "Deliveries to the addon waiting in the durable outbox.",
            )
            .expect("static gauge"),
            store_up: IntGauge::new(
                "shoptet_proxy_store_up",
                "1 when the store answered its last check, 0 while it cannot be reached.",
            )
            .expect("static gauge"),
            settings_logins: counter_vec(
                "shoptet_proxy_settings_logins_total",
                "Settings-page logins, by result (ok, redirected, denied, error).",
                &["result"],
            ),
            config_reloads: counter_vec(
                "shoptet_proxy_config_reloads_total",
                "Configuration reloads (SIGHUP), by result (ok, error).",
                &["result"],
            ),
            log_lines_dropped: IntCounter::new(
                "shoptet_proxy_log_lines_dropped_total",
                "Log lines dropped because the log writer fell behind (bounded buffer).",
            )
            .expect("static counter"),
            trace_spans_dropped: IntCounter::new(
                "shoptet_proxy_trace_spans_dropped_total",
                "Trace spans dropped: the export queue was full or the collector failed.",
            )
            .expect("static counter"),
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new(
                "shoptet_proxy_build_info",
                "Build information; the value is always 1.",
            ),
            &["version", "commit"],
        )
        .expect("static gauge");
        for (family, values) in [
            (&m.token_fetches, &TOKEN_FETCH_RESULTS[..]),
            (&m.replays, &REPLAY_RESULTS[..]),
            (&m.upstream_429, &UPSTREAM_429_ACTIONS[..]),
            (&m.webhooks, &WEBHOOK_RESULTS[..]),
            (&m.settings_logins, &SETTINGS_LOGIN_RESULTS[..]),
            (&m.config_reloads, &RELOAD_RESULTS[..]),
        ] {
            for v in values {
                family.with_label_values(&[v]);
            }
        }
        for status in INSTALLATION_STATUSES {
            m.installations.with_label_values(&[status]);
        }
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SHOPTET_PROXY_GIT_COMMIT")])
            .set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(build),
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.upstream_duration.clone()),
            Box::new(m.proxy_errors.clone()),
            Box::new(m.token_fetches.clone()),
            Box::new(m.token_fetch_duration.clone()),
            Box::new(m.replays.clone()),
            Box::new(m.upstream_429.clone()),
            Box::new(m.queue_length.clone()),
            Box::new(m.queue_wait.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.paced.clone()),
            Box::new(m.pace_wait.clone()),
            Box::new(m.bucket_429.clone()),
            Box::new(m.installations.clone()),
            Box::new(m.webhooks.clone()),
            Box::new(m.outbox_depth.clone()),
            Box::new(m.store_up.clone()),
            Box::new(m.settings_logins.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.log_lines_dropped.clone()),
            Box::new(m.trace_spans_dropped.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .expect("metric names in this module are unique");
        }
        m
    }

    /// Counts one answered proxied request.
    pub fn count_proxy_request(&self, method: &http::Method, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.requests_proxy[method_index(method)][class].inc();
    }

    /// Counts one request answered on the admin or public listener.
    pub fn count_request(&self, listener: &str, method: &http::Method, status: u16) {
        let class = CLASSES[usize::from((status / 100).clamp(1, 5) - 1)];
        self.requests
            .with_label_values(&[listener, METHODS[method_index(method)], class])
            .inc();
    }

    /// A one-label counter family's series as (label value, count), in label order: what the
    /// status pages show of `token_fetches` and `proxy_errors`.
    pub fn by_label(family: &IntCounterVec) -> Vec<(String, u64)> {
        use prometheus::core::Collector;
        let mut out: Vec<(String, u64)> = family
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| {
                let label = m.get_label().first().map(|l| l.value().to_owned());
                (
                    label.unwrap_or_default(),
                    m.get_counter().get_value() as u64,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let dropped = super::logging::dropped_lines();
        let counted = self.log_lines_dropped.get();
        if dropped > counted {
            self.log_lines_dropped.inc_by(dropped - counted);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::PATCH => 3,
        http::Method::DELETE => 4,
        http::Method::HEAD => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_family_and_build_info() {
        let m = Metrics::new();
        m.count_proxy_request(&http::Method::GET, 200);
        m.count_request("admin", &http::Method::from_bytes(b"BREW").expect("m"), 404);
        m.token_fetches.with_label_values(&["ok"]).inc();
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(text.contains(
            r#"shoptet_proxy_requests_total{class="2xx",listener="proxy",method="GET"} 1"#
        ));
        assert!(text.contains(
            r#"shoptet_proxy_requests_total{class="4xx",listener="admin",method="other"} 1"#
        ));
        assert!(text.contains("shoptet_proxy_build_info{commit="));
        assert!(text.contains(r#"shoptet_proxy_token_fetches_total{result="ok"} 1"#));
        assert!(text.contains("shoptet_proxy_request_duration_seconds_bucket"));
        assert!(text.contains("shoptet_proxy_bucket_429_total 0"));
        assert!(text.contains("shoptet_proxy_bucket_paced_requests_total 0"));
    }

    #[test]
    fn labelled_series_exist_at_zero_before_anything_happens() {
        let text = String::from_utf8(Metrics::new().render()).expect("utf8");
        for line in [
            r#"shoptet_proxy_token_fetches_total{result="not_installed"} 0"#,
            r#"shoptet_proxy_replays_total{result="refresh_failed"} 0"#,
            r#"shoptet_proxy_upstream_429_total{action="returned"} 0"#,
            r#"shoptet_proxy_webhooks_total{result="failed"} 0"#,
            r#"shoptet_proxy_installations{status="suspended"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}");
        }
    }
}
