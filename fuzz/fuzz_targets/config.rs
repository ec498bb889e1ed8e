//! `Config::load_from` on arbitrary TOML text, read from a real file as the service reads it.
//!
//! Properties: never panics, and an error never shows a secret value. Inline secrets are
//! `shoptet.client_secret` and `store.url` (a PostgreSQL URL may carry a password); the check
//! covers those found by parsing the text, and, for text that does not parse, the value part of
//! every line that sets one of those keys. Values shorter than 8 characters, or that also appear
//! outside a secret key, are skipped: an error may legitimately name them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoptet_proxy::config::Config;
use std::io::Write;

const SECRET_KEYS: [(&str, &str); 2] = [("shoptet", "client_secret"), ("store", "url")];
const MIN_CHECKED_LEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Secret files may be named by absolute path; a fuzzer must not wander into device files.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("config.toml");
    let Ok(mut file) = std::fs::File::create(&path) else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    drop(file);
    let env = [(
        "CREDENTIALS_DIRECTORY".to_owned(),
        dir.path().display().to_string(),
    )];
    let Err(err) = Config::load_from(Some(&path), &env) else {
        return;
    };
    let shown = err.to_string();
    for secret in secrets(text) {
        assert!(
            !shown.contains(&secret),
            "error shows the secret {secret:?}: {shown}"
        );
    }
});

/// Secret values worth checking for in an error message.
fn secrets(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut others = Vec::new();
    match text.parse::<toml::Table>() {
        Ok(table) => {
            for (section, body) in &table {
                others.push(section.clone());
                let Some(body) = body.as_table() else {
                    collect_strings(body, &mut others);
                    continue;
                };
                for (key, value) in body {
                    others.push(key.clone());
                    let secret = SECRET_KEYS.contains(&(section.as_str(), key.as_str()));
                    match (secret, value.as_str()) {
                        (true, Some(s)) => found.push(s.to_owned()),
                        _ => collect_strings(value, &mut others),
                    }
                }
            }
        }
        Err(_) => {
            for line in text.lines() {
                let Some((key, value)) = line.split_once('=') else {
                    others.push(line.to_owned());
                    continue;
                };
                let key = key.trim();
                if SECRET_KEYS.iter().any(|(_, k)| *k == key) {
                    found.push(value.trim().trim_matches(['"', '\'']).to_owned());
                } else {
                    others.push(line.to_owned());
                }
            }
        }
    }
    found.retain(|s| s.len() >= MIN_CHECKED_LEN && !others.iter().any(|o| o.contains(s.as_str())));
    found
}

fn collect_strings(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| {
            out.push(k.clone());
            collect_strings(v, out);
        }),
        other => out.push(other.to_string()),
    }
}
