//! The binaries' log output: to standard error, filtered by `RTUNNEL_LOG`
//! ([`crate::log_filter::check`]), as text or as JSON lines.

use std::str::FromStr;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`
    /// with `message`, and `span`/`spans` where there are any), for a log
    /// collector.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?}: use text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Installs the global subscriber: `RTUNNEL_LOG` (default `info`) checked
/// first, so a misspelled level is an error rather than silence. Answers
/// the message to print when the filter is refused; a subscriber already
/// installed (a test) is left alone.
///
/// ```
/// use rtunnel_core::logging::{LogFormat, init};
/// # unsafe { std::env::set_var("RTUNNEL_LOG", "info") };
/// init(LogFormat::Json).unwrap();
/// tracing::info!(session = "s-1", "ready");
/// ```
pub fn init(format: LogFormat) -> Result<(), String> {
    let spec = std::env::var("RTUNNEL_LOG").unwrap_or_else(|_| "info".into());
    crate::log_filter::check(&spec)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .map_err(|e| format!("invalid RTUNNEL_LOG={spec:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_ansi(false)
            .try_init(),
    };
    Ok(())
}
