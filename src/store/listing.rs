//! The two renderings of the installation list: `GET /admin/eshops` and `eshops list`.
//!
//! They live here, not in `main.rs`, so the admin HTTP endpoint and the command line print the
//! same `{"eshops":[...]}` object and tests can check the output without running the binary.

use super::InstallationSummary;

/// `{"eshops":[...]}`, the body of `GET /admin/eshops` and the output of `eshops list --json`.
pub fn render_list_json(eshops: &[InstallationSummary]) -> String {
    serde_json::json!({ "eshops": eshops }).to_string()
}

/// A plain-text table for `eshops list`, one e-shop a line, columns padded to fit.
pub fn render_list_table(eshops: &[InstallationSummary]) -> String {
    const HEADER: [&str; 6] = [
        "ESHOP_ID",
        "STATUS",
        "INSTALLED_AT",
        "TOKEN_EXPIRES_AT",
        "ESHOP_URL",
        "CONTACT_EMAIL",
    ];
    let rows: Vec<[String; 6]> = eshops
        .iter()
        .map(|e| {
            [
                e.eshop_id.to_string(),
                e.status.as_str().to_string(),
                e.installed_at.clone(),
                e.token_expires_at.clone().unwrap_or_else(|| "-".into()),
                e.eshop_url.clone().unwrap_or_else(|| "-".into()),
                e.contact_email.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(HEADER);
    for row in &rows {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Status;

    fn sample() -> Vec<InstallationSummary> {
        vec![
            InstallationSummary {
                eshop_id: 222651,
                eshop_url: Some("https://shop.example".into()),
                contact_email: Some("owner@shop.example".into()),
                status: Status::Active,
                installed_at: "2024-01-02T03:04:05Z".into(),
                token_expires_at: Some("2024-01-02T03:34:05Z".into()),
            },
            InstallationSummary {
                eshop_id: 7,
                eshop_url: None,
                contact_email: None,
                status: Status::Suspended,
                installed_at: "2024-01-01T00:00:00Z".into(),
                token_expires_at: None,
            },
        ]
    }

    #[test]
    fn json_list_matches_the_admin_endpoint_shape() {
        let json: serde_json::Value = serde_json::from_str(&render_list_json(&sample())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"eshops": [
                {"eshopId": 222651, "eshopUrl": "https://shop.example",
                 "contactEmail": "owner@shop.example", "status": "active",
                 "installedAt": "2024-01-02T03:04:05Z", "tokenExpiresAt": "2024-01-02T03:34:05Z"},
                {"eshopId": 7, "eshopUrl": null, "contactEmail": null, "status": "suspended",
                 "installedAt": "2024-01-01T00:00:00Z", "tokenExpiresAt": null}
            ]})
        );
        assert_eq!(render_list_json(&[]), r#"{"eshops":[]}"#);
    }

    #[test]
    fn table_aligns_columns_and_marks_missing_values() {
        let table = render_list_table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("ESHOP_ID  STATUS     INSTALLED_AT"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("222651    active     2024-01-02T03:04:05Z"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("7         suspended  2024-01-01T00:00:00Z  -"),
            "{table}"
        );
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells[3..], ["-", "-", "-"], "{table}");
        assert_eq!(render_list_table(&[]).lines().count(), 1);
    }
}
