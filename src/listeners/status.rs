//! The status pages for people on the admin listener (SPEC B7): `GET /` (installations by status,
//! token fetches and proxy errors since start, the busiest e-shops now) and `GET /eshops/{id}` (one
//! e-shop's live state).
//!
//! Plain server-rendered HTML with inline CSS: no external asset, no script, a refresh every 5 s
//! by `<meta http-equiv="refresh">`. Every value that comes from Shoptet or the store (an e-shop's
//! URL and contact email, error codes, label values) goes through [`escape`]; the pages are also
//! served with a CSP that forbids scripts, so an escaping slip would still execute nothing.

use crate::http::html::escape;
use crate::state::eshops::{Eshops, Runtime};
use crate::store::{InstallationSummary, Status};
use std::fmt::Write;

/// How many e-shops the overview lists as busiest.
pub const BUSIEST: usize = 20;

/// `Content-Security-Policy` of every page: inline styles only.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}\
header{background:#1f3b57;color:#fff;padding:10px 24px}header a{color:#fff;text-decoration:none}\
main{padding:16px 24px;display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}\
section{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:10px 16px;min-width:260px}\
h1{font-size:18px;margin:0}h2{font-size:15px;margin:4px 0 8px}\
table{border-collapse:collapse}th,td{text-align:left;padding:3px 10px 3px 0;border-bottom:1px solid #eef0f3}\
td.n{text-align:right;font-variant-numeric:tabular-nums}th{color:#57606a;font-weight:600}\
.muted{color:#6b7280}.bad{color:#b42318;font-weight:600}.ok{color:#067647}\
.bar{display:inline-block;width:80px;height:8px;background:#eef0f3;border-radius:4px;vertical-align:middle;margin-left:6px}\
.bar i{display:block;height:8px;border-radius:4px;background:#3b82f6}";

/// What the overview shows.
pub struct Overview {
    /// Installations in the store by status; `None` when the store did not answer.
    pub installations: Option<Vec<(Status, u64)>>,
    pub token_fetches: Vec<(String, u64)>,
    pub proxy_errors: Vec<(String, u64)>,
    pub busiest: Vec<(u64, Runtime)>,
    pub eshops_known: usize,
}

/// The e-shops busiest now: most in flight, then most queued, then the fullest bucket, then the
/// most requests since start; records that never saw a request are left out.
pub fn busiest(eshops: &Eshops, n: usize) -> (Vec<(u64, Runtime)>, usize) {
    let mut all = Vec::new();
    let mut known = 0;
    eshops.for_each(|e| {
        known += 1;
        let r = e.runtime();
        if r.requests_total > 0 || r.in_flight > 0 || r.queued > 0 {
            all.push((e.id, r));
        }
    });
    let level = |r: &Runtime| r.bucket.as_ref().map_or(0.0, |b| b.level);
    all.sort_by(|(ia, a), (ib, b)| {
        (b.in_flight, b.queued)
            .cmp(&(a.in_flight, a.queued))
            .then(level(b).total_cmp(&level(a)))
            .then(b.requests_total.cmp(&a.requests_total))
            .then(ia.cmp(ib))
    });
    all.truncate(n);
    (all, known)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"5\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head>\
<body><header><h1><a href=\"/\">shoptet-proxy</a> · {title}</h1></header><main>{body}</main>\
<footer class=\"muted\" style=\"padding:0 24px 16px\">What this replica knows now; refreshes every 5 s. \
Version {}.</footer></body></html>\n",
        env!("CARGO_PKG_VERSION")
    )
}

fn counts_table(out: &mut String, heading: &str, label: &str, rows: &[(String, u64)], bad: bool) {
    let _ = write!(
        out,
        "<section><h2>{heading}</h2><table><tr><th>{label}</th><th>since start</th></tr>"
    );
    let mut any = false;
    for (name, n) in rows.iter().filter(|(_, n)| *n > 0) {
        any = true;
        let class = if bad && *n > 0 { " bad" } else { "" };
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n{class}\">{n}</td></tr>",
            escape(name)
        );
    }
    if !any {
        out.push_str("<tr><td colspan=\"2\" class=\"muted\">none</td></tr>");
    }
    out.push_str("</table></section>");
}

fn bucket_cell(r: &Runtime) -> String {
    match &r.bucket {
        Some(b) => {
            let pct = if b.capacity > 0 {
                (b.level / b.capacity as f64 * 100.0).clamp(0.0, 100.0)
            } else {
                0.0
            };
            format!(
                "{:.1} / {}<span class=\"bar\"><i style=\"width:{pct:.0}%\"></i></span>",
                b.level, b.capacity
            )
        }
        None => "<span class=\"muted\">unknown</span>".to_owned(),
    }
}

/// `GET /`.
pub fn render_overview(o: &Overview) -> String {
    let mut body = String::with_capacity(8 * 1024);
    body.push_str("<section><h2>Installations</h2><table><tr><th>status</th><th>e-shops</th></tr>");
    match &o.installations {
        Some(counts) => {
            for (status, n) in counts {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
                    status.as_str()
                );
            }
        }
        None => body.push_str("<tr><td colspan=\"2\" class=\"bad\">store unavailable</td></tr>"),
    }
    body.push_str("</table></section>");
    counts_table(
        &mut body,
        "Token fetches",
        "result",
        &o.token_fetches,
        false,
    );
    counts_table(
        &mut body,
        "Proxy errors",
        "errorCode",
        &o.proxy_errors,
        true,
    );
    let _ = write!(
        body,
        "<section style=\"flex-basis:100%\"><h2>Busiest e-shops now</h2>\
<p class=\"muted\">{} e-shop records in memory.</p>\
<table><tr><th>e-shop</th><th>in flight</th><th>queued</th><th>bucket</th>\
<th>last status</th><th>requests</th><th>token</th></tr>",
        o.eshops_known
    );
    if o.busiest.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"muted\">no requests since start</td></tr>");
    }
    for (id, r) in &o.busiest {
        let _ = write!(
            body,
            "<tr><td><a href=\"/eshops/{id}\">{id}</a></td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            r.in_flight,
            r.queued,
            bucket_cell(r),
            r.last_upstream_status
                .map_or_else(|| "—".to_owned(), |s| s.to_string()),
            r.requests_total,
            token_cell(r),
        );
    }
    body.push_str("</table></section>");
    page("status", &body)
}

fn token_cell(r: &Runtime) -> String {
    if let Some(code) = r.last_token_error {
        return format!("<span class=\"bad\">{}</span>", escape(code));
    }
    match r.token_expires_in_seconds {
        Some(s) => format!("<span class=\"ok\">expires in {}</span>", human(s)),
        None => "<span class=\"muted\">none</span>".to_owned(),
    }
}

/// `1712` → `28 min 32 s`.
fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

fn row(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<tr><th>{name}</th><td>{value}</td></tr>");
}

fn text_or_dash(v: Option<&str>) -> String {
    v.map_or_else(|| "<span class=\"muted\">—</span>".to_owned(), escape)
}

/// `GET /eshops/{id}`.
pub fn render_eshop(s: &InstallationSummary, r: &Runtime) -> String {
    let mut body = String::with_capacity(4 * 1024);
    body.push_str("<section><h2>Installation</h2><table>");
    row(&mut body, "e-shop id", &s.eshop_id.to_string());
    let status_class = if s.status == Status::Active {
        "ok"
    } else {
        "bad"
    };
    row(
        &mut body,
        "status",
        &format!(
            "<span class=\"{status_class}\">{}</span>",
            s.status.as_str()
        ),
    );
    // Shown as text, not as a link: the URL comes from outside.
    row(&mut body, "URL", &text_or_dash(s.eshop_url.as_deref()));
    row(
        &mut body,
        "contact email",
        &text_or_dash(s.contact_email.as_deref()),
    );
    row(&mut body, "installed", &escape(&s.installed_at));
    row(
        &mut body,
        "stored token expires",
        &text_or_dash(s.token_expires_at.as_deref()),
    );
    body.push_str("</table></section><section><h2>Now</h2><table>");
    row(
        &mut body,
        "token",
        &match r.token_expires_in_seconds {
            Some(secs) => format!("expires in {} ({secs} s)", human(secs)),
            None => "<span class=\"muted\">none cached</span>".to_owned(),
        },
    );
    row(
        &mut body,
        "token refreshing",
        if r.token_refreshing { "yes" } else { "no" },
    );
    row(
        &mut body,
        "last token error",
        &r.last_token_error.map_or_else(
            || "<span class=\"muted\">—</span>".to_owned(),
            |c| format!("<span class=\"bad\">{}</span>", escape(c)),
        ),
    );
    row(
        &mut body,
        "backoff until",
        &text_or_dash(r.backoff_until.as_deref()),
    );
    row(&mut body, "in flight", &r.in_flight.to_string());
    row(&mut body, "queued", &r.queued.to_string());
    row(&mut body, "bucket", &bucket_cell(r));
    row(
        &mut body,
        "paced since start",
        &r.bucket
            .as_ref()
            .map_or_else(|| "0".to_owned(), |b| b.paced_total.to_string()),
    );
    row(
        &mut body,
        "last upstream status",
        &r.last_upstream_status.map_or_else(
            || "<span class=\"muted\">—</span>".to_owned(),
            |s| s.to_string(),
        ),
    );
    row(
        &mut body,
        "requests since start",
        &r.requests_total.to_string(),
    );
    body.push_str("</table></section>");
    page(&format!("e-shop {}", s.eshop_id), &body)
}

/// The page for an id the store does not hold.
pub fn render_unknown(eshop_id: u64) -> String {
    page(
        "not found",
        &format!(
            "<section><p>E-shop {eshop_id} is not installed (never, or removed).</p>\
<p><a href=\"/\">Back to the overview</a></p></section>"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eshop_page_escapes_what_came_from_outside() {
        let s = InstallationSummary {
            eshop_id: 7,
            eshop_url: Some("https://x/\"><img src=x onerror=alert(1)>".into()),
            contact_email: Some("<script>alert(1)</script>".into()),
            status: Status::Active,
            installed_at: "2024-07-01T12:00:00Z".into(),
            token_expires_at: None,
        };
        let html = render_eshop(&s, &Runtime::idle());
        assert!(!html.contains("<script>alert"));
        assert!(!html.contains("<img"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(59), "59 s");
        assert_eq!(human(1712), "28 min 32 s");
        assert_eq!(human(7260), "2 h 1 min");
    }
}
