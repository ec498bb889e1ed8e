//! Log output (SPEC B7): tracing to stdout, text or JSON, level from `log.level` unless
//! `RUST_LOG` is set.
//!
//! With JSON every line is one object, so journald or a log shipper can parse it. Secrets are kept
//! out at the source (the [`crate::secret::Secret`] type prints `<redacted>`, token header values
//! are marked sensitive), not filtered here.

use crate::config::{Log, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), which
/// in-process tests rely on.
pub fn init(cfg: &Log) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&cfg.level));
    // Colour codes only for a person at a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stdout);
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
