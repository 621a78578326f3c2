//! The daemon's logs: structured lines on stderr, where Kubernetes and the
//! log shippers that feed driftd itself expect them.
//!
//! Nothing logged carries a feature value, a request id or a user id: the
//! call sites log names, counts and reasons only.

use std::io::IsTerminal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
    /// Text on a terminal, JSON otherwise.
    Auto,
}

/// `[log]`: the format and the filter (`RUST_LOG` wins when set).
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// Logs go to stderr: JSON lines (what this project consumes) unless the
/// format is `text`, or `auto` on a terminal.
pub(crate) fn init(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
