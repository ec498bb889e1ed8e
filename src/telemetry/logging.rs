//! Log output (SPEC B7): tracing to stdout, text or JSON, level from `log.level` unless
//! `RUST_LOG` is set; the level can be changed at run time (SIGHUP, see [`set_level`]).
//!
//! Lines go to stdout through a bounded, lossy buffer ([`super::output`]): a request never waits
//! for the terminal, the journal or a slow pipe (the access line alone cost every request about
//! 1.7 µs written synchronously), memory stays bounded, and what a full buffer drops is counted
//! ([`dropped_lines`], exported as `shoptet_proxy_log_lines_dropped_total`). [`flush`] writes
//! what is buffered before the process exits.
//!
//! With JSON every line the process prints is one object, so journald or a log shipper can parse
//! it: that includes the errors that end `serve` (on stderr, see [`fatal`]) and panics. Secrets are
//! kept out at the source (the [`crate::secret::Secret`] type prints `<redacted>`, token header
//! values are marked sensitive), not filtered here.

use super::output::{Output, Writer};
use crate::config::{LogFormat, LogSection};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer as _, Registry};

/// The installed filter, replaceable while running.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
/// The format [`init`] installed; [`fatal`] writes in it.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The buffer every line goes through, once [`init`] installed the subscriber.
static OUTPUT: OnceLock<&'static Output> = OnceLock::new();

/// Whether `RUST_LOG` decided the filter at start; it then wins over `log.level` reloads too.
fn rust_log() -> Option<EnvFilter> {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
}

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), which
/// in-process tests rely on.
pub fn init(cfg: &LogSection) {
    let filter = rust_log().unwrap_or_else(|| EnvFilter::new(&cfg.level));
    let (filter, handle) = reload::Layer::new(filter);
    // Colour codes only for a person at a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let out = Output::start(std::io::stdout());
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(move || Writer(out));
    let output = match cfg.format {
        LogFormat::Text => output.boxed(),
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
        let _ = OUTPUT.set(out);
        let _ = FORMAT.set(cfg.format);
        if cfg.format == LogFormat::Json {
            // The default hook prints plain text; a panic is logged as one JSON object instead.
            std::panic::set_hook(Box::new(|info| {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                fatal(format_args!("panic{location}: {payload}"));
            }));
        }
    } else {
        // Another subscriber was installed first (an in-process test): this output is unused.
        out.close();
    }
}

/// Writes every buffered line out and stops the writer thread; later lines are dropped. Called
/// once, when a command is done.
pub fn flush() {
    if let Some(out) = OUTPUT.get() {
        out.close();
    }
}

/// The format and writer of the installed output, once [`init`] installed it.
pub fn access_sink() -> Option<(LogFormat, &'static Output)> {
    Some((*FORMAT.get()?, *OUTPUT.get()?))
}

/// Log lines dropped so far because the writer fell behind.
pub fn dropped_lines() -> u64 {
    OUTPUT.get().map_or(0, |out| out.dropped())
}

/// Prints an error that ends the process on stderr: in the format [`init`] installed (text when
/// logging is not initialised, as for the command-line tools).
pub fn fatal(message: impl std::fmt::Display) {
    fatal_as(FORMAT.get().copied().unwrap_or(LogFormat::Text), message);
}

/// [`fatal`] in a given format: `serve` reports an invalid configuration in the format that
/// configuration asks for.
pub fn fatal_as(format: LogFormat, message: impl std::fmt::Display) {
    eprintln!("{}", fatal_line(format, &message.to_string()));
}

fn fatal_line(format: LogFormat, message: &str) -> String {
    match format {
        LogFormat::Text => format!("shoptet-proxy: {message}"),
        LogFormat::Json => {
            let timestamp = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            serde_json::json!({
                "timestamp": timestamp,
                "level": "ERROR",
                "target": "shoptet_proxy",
                "message": message,
            })
            .to_string()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("RUST_LOG is set and takes precedence over log.level")]
    OverriddenByEnv,
    #[error("logging is not initialised")]
    NotInitialised,
    #[error("invalid log filter: {0}")]
    Invalid(String),
}

/// Replaces the log filter with `level` (an `EnvFilter` directive, as `log.level`).
pub fn set_level(level: &str) -> Result<(), LevelError> {
    if rust_log().is_some() {
        return Err(LevelError::OverriddenByEnv);
    }
    let filter = EnvFilter::try_new(level).map_err(|e| LevelError::Invalid(e.to_string()))?;
    FILTER
        .get()
        .ok_or(LevelError::NotInitialised)?
        .reload(filter)
        .map_err(|e| LevelError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_lines_are_plain_text_or_one_json_object() {
        let message = "cannot listen on 127.0.0.1:1: \"quoted\"\nsecond line";
        assert_eq!(
            fatal_line(LogFormat::Text, "boom"),
            "shoptet-proxy: boom".to_owned()
        );
        let line = fatal_line(LogFormat::Json, message);
        assert!(!line.contains('\n'), "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["message"], message);
        assert_eq!(v["level"], "ERROR");
        assert!(v["timestamp"].as_str().is_some_and(|t| !t.is_empty()));
    }
}
