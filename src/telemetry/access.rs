//! The proxy's access line (SPEC B7): one per proxied request, at `info` on target `access`, with
//! method, path without query, e-shop id, status, durations, replayed, 429 retries and Shoptet's
//! request id.
//!
//! Formatted here instead of by tracing-subscriber's formatter, which visits every field through
//! `dyn Visit`, formats each float and the timestamp anew and cost every request about 3 µs at
//! the default level (issue 19). The output is what that formatter printed — the same fields and
//! spelling in both formats, so log shippers and the tests read it unchanged — and the level
//! filter (`log.level`, `RUST_LOG`, a reload) still decides, through `tracing::enabled!`. Before
//! [`crate::telemetry::logging::init`] ran (in-process tests with their own subscriber) the line
//! goes through `tracing` as any event.

use crate::config::LogFormat;
use crate::telemetry::logging;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one proxied request reports.
pub struct AccessLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub eshop_id: Option<u64>,
    pub status: u16,
    pub total: Duration,
    pub upstream: Duration,
    pub queued: Duration,
    pub paced: Duration,
    pub replayed: bool,
    pub retries_429: u32,
    pub request_id: Option<&'a str>,
}

thread_local! {
    /// A reused line buffer, and the formatted second (`2026-12-06T01:25:19`) it was made for:
    /// the date is formatted once a second per thread, not once a line.
    static SCRATCH: RefCell<(String, u64, String)> = RefCell::new((String::with_capacity(512), u64::MAX, String::new()));
}

/// Logs `line` if the filter lets `access` lines through.
pub fn log(line: &AccessLine) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let Some((format, writer)) = logging::access_sink() else {
        via_tracing(line);
        return;
    };
    SCRATCH.with_borrow_mut(|(buf, second, date)| {
        buf.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_secs() != *second {
            *second = now.as_secs();
            *date = date_time(now.as_secs());
        }
        let timestamp = (date.as_str(), now.subsec_micros());
        match format {
            LogFormat::Text => text(buf, timestamp, line),
            LogFormat::Json => json(buf, timestamp, line),
        }
        writer.write_lines(buf.as_bytes());
    });
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC.
fn date_time(unix_secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A duration in milliseconds with microsecond precision, as a JSON number.
fn ms(buf: &mut String, d: Duration) {
    let micros = d.as_micros();
    let _ = write!(buf, "{}.{:03}", micros / 1000, micros % 1000);
}

/// tracing-subscriber's default line: `<timestamp>  INFO access: key=value …`, absent values left
/// out, strings from outside (Shoptet's request id) quoted and escaped.
fn text(buf: &mut String, (date, micros): (&str, u32), l: &AccessLine) {
    let _ = write!(buf, "{date}.{micros:06}Z  INFO access:");
    fields(buf, LogFormat::Text, l);
    buf.push('\n');
}

/// One JSON object, keys as tracing-subscriber's flattened JSON format writes them.
fn json(buf: &mut String, (date, micros): (&str, u32), l: &AccessLine) {
    let _ = write!(buf, r#"{{"timestamp":"{date}.{micros:06}Z","level":"INFO""#);
    fields(buf, LogFormat::Json, l);
    buf.push_str(r#","target":"access"}"#);
    buf.push('\n');
}

/// The line's fields in order, each written as `format` spells a key and its value: the one list
/// both formats share.
fn fields(buf: &mut String, format: LogFormat, l: &AccessLine) {
    let key = |buf: &mut String, k: &str| match format {
        LogFormat::Text => {
            let _ = write!(buf, " {k}=");
        }
        LogFormat::Json => {
            let _ = write!(buf, r#","{k}":"#);
        }
    };
    // The method and path go bare into text (they are ours or checked by hyper); a string from
    // Shoptet is quoted there, and every string is a JSON string in JSON.
    let string = |buf: &mut String, s: &str, quote_in_text: bool| match format {
        LogFormat::Json => json_str(buf, s),
        LogFormat::Text if quote_in_text => {
            let _ = write!(buf, "{s:?}");
        }
        LogFormat::Text => buf.push_str(s),
    };
    key(buf, "method");
    string(buf, l.method, false);
    key(buf, "path");
    string(buf, l.path, false);
    if let Some(id) = l.eshop_id {
        key(buf, "eshop_id");
        let _ = write!(buf, "{id}");
    }
    key(buf, "status");
    let _ = write!(buf, "{}", l.status);
    for (k, d) in [
        ("total_ms", l.total),
        ("upstream_ms", l.upstream),
        ("queued_ms", l.queued),
        ("paced_ms", l.paced),
    ] {
        key(buf, k);
        ms(buf, d);
    }
    key(buf, "replayed");
    let _ = write!(buf, "{}", l.replayed);
    key(buf, "retries_429");
    let _ = write!(buf, "{}", l.retries_429);
    if let Some(id) = l.request_id {
        key(buf, "request_id");
        string(buf, id, true);
    }
}

fn json_str(buf: &mut String, s: &str) {
    // serde_json's own escaping; writing a str into a String cannot fail.
    let _ = serde_json::to_string(s).map(|quoted| buf.push_str(&quoted));
}

/// The same line as an ordinary tracing event, for whatever subscriber is installed.
fn via_tracing(l: &AccessLine) {
    tracing::info!(
        target: "access",
        method = l.method,
        path = l.path,
        eshop_id = l.eshop_id,
        status = l.status,
        total_ms = l.total.as_secs_f64() * 1e3,
        upstream_ms = l.upstream.as_secs_f64() * 1e3,
        queued_ms = l.queued.as_secs_f64() * 1e3,
        paced_ms = l.paced.as_secs_f64() * 1e3,
        replayed = l.replayed,
        retries_429 = l.retries_429,
        request_id = l.request_id,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, request_id: Option<&'a str>) -> AccessLine<'a> {
        AccessLine {
            method: "GET",
            path,
            eshop_id: Some(222651),
            status: 200,
            total: Duration::from_micros(1_512),
            upstream: Duration::from_micros(1_234),
            queued: Duration::ZERO,
            paced: Duration::from_micros(7),
            replayed: true,
            retries_429: 1,
            request_id,
        }
    }

    #[test]
    fn json_lines_are_one_object_with_every_field_and_escaped_strings() {
        let mut buf = String::new();
        json(
            &mut buf,
            ("2026-12-06T01:25:19", 42),
            &line("/api/\"x\"\\", Some("id\n\"1\"")),
        );
        assert!(
            buf.ends_with('\n') && buf.matches('\n').count() == 1,
            "{buf}"
        );
        let v: serde_json::Value = serde_json::from_str(&buf).expect("one JSON object");
        assert_eq!(v["timestamp"], "2026-12-06T01:25:19.000042Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/api/\"x\"\\");
        assert_eq!(v["eshop_id"], 222651);
        assert_eq!(v["status"], 200);
        assert_eq!(v["total_ms"], 1.512);
        assert_eq!(v["upstream_ms"], 1.234);
        assert_eq!(v["queued_ms"], 0.0);
        assert_eq!(v["paced_ms"], 0.007);
        assert_eq!(v["replayed"], true);
        assert_eq!(v["retries_429"], 1);
        assert_eq!(v["request_id"], "id\n\"1\"");
    }

    #[test]
    fn absent_values_are_left_out() {
        let mut l = line("/api/eshop", None);
        l.eshop_id = None;
        let mut buf = String::new();
        json(&mut buf, ("2026-12-06T01:25:19", 0), &l);
        let v: serde_json::Value = serde_json::from_str(&buf).expect("JSON");
        assert!(
            v.get("eshop_id").is_none() && v.get("request_id").is_none(),
            "{v}"
        );
        let mut buf = String::new();
        text(&mut buf, ("2026-12-06T01:25:19", 0), &l);
        assert!(
            !buf.contains("eshop_id") && !buf.contains("request_id"),
            "{buf}"
        );
    }

    #[test]
    fn text_lines_read_like_tracing_subscribers() {
        let mut buf = String::new();
        text(
            &mut buf,
            ("2026-12-06T01:25:19", 123456),
            &line("/api/eshop", Some("abc\n")),
        );
        assert_eq!(
            buf,
            "2026-12-06T01:25:19.123456Z  INFO access: method=GET path=/api/eshop \
             eshop_id=222651 status=200 total_ms=1.512 upstream_ms=1.234 queued_ms=0.000 \
             paced_ms=0.007 replayed=true retries_429=1 request_id=\"abc\\n\"\n"
        );
    }

    #[test]
    fn the_date_is_utc_rfc_3339() {
        assert_eq!(date_time(0), "1970-01-01T00:00:00");
        assert_eq!(date_time(1_796_520_319), "2026-12-06T01:25:19");
    }
}
