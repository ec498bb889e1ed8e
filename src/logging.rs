//! Log output (SPEC B7): tracing to stdout, text or JSON, level from `log.level` unless
//! `RUST_LOG` is set; the level can be changed at run time (SIGHUP, see [`set_level`]).
//!
//! With JSON every line is one object, so journald or a log shipper can parse it. Secrets are kept
//! out at the source (the [`crate::secret::Secret`] type prints `<redacted>`, token header values
//! are marked sensitive), not filtered here.

use crate::config::{Log, LogFormat};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer as _, Registry};

/// The installed filter, replaceable while running.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Whether `RUST_LOG` decided the filter at start; it then wins over `log.level` reloads too.
fn rust_log() -> Option<EnvFilter> {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
}

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), which
/// in-process tests rely on.
pub fn init(cfg: &Log) {
    let filter = rust_log().unwrap_or_else(|| EnvFilter::new(&cfg.level));
    let (filter, handle) = reload::Layer::new(filter);
    // Colour codes only for a person at a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stdout);
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
