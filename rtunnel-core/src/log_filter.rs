//! Checking a log filter (`RTUNNEL_LOG`) before using it.
//!
//! A tracing filter reads any bare word as a target, so `RTUNNEL_LOG=inof`
//! is valid to it and silently shows nothing but that target's lines. The
//! binaries refuse such a filter instead, saying what a filter looks like.

/// The levels a filter names.
pub const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks `spec`: comma-separated directives, each a level, `TARGET=LEVEL`,
/// or a target alone when it looks like one (`rtunnel_server`,
/// `hyper::proto`).
///
/// ```
/// use rtunnel_core::log_filter::check;
/// assert!(check("debug").is_ok());
/// assert!(check("info,rtunnel_server=trace").is_ok());
/// assert!(check("inof").unwrap_err().contains("unknown log level \"inof\""));
/// assert!(check("rtunnel_core=verbose").is_err());
/// ```
pub fn check(spec: &str) -> Result<(), String> {
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => Some(level.trim()),
            None if looks_like_target(directive) => None,
            None => Some(directive),
        };
        if let Some(level) = level
            && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level))
        {
            return Err(format!(
                "unknown log level {level:?} in RTUNNEL_LOG={spec:?}: use one of {} \
                 (or TARGET=LEVEL, such as rtunnel_server=debug)",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

fn looks_like_target(word: &str) -> bool {
    word.contains("::") || word.contains('_') || word.contains('[') || word.starts_with("rtunnel")
}
