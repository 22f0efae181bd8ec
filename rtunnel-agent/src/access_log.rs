//! The agent's own access log (`--access-log FILE`): one JSON line per
//! stream it served or refused, so the customer keeps a record that does
//! not depend on the server:
//!
//! ```json
//! {"at":"2026-12-02T03:10:00.123Z","session":"…","operator":"alice","service":"ssh",
//!  "kind":"tcp","duration_ms":5321,"bytes_to_service":1200,"bytes_from_service":48000,
//!  "result":"ok"}
//! ```
//!
//! `result` is `ok`, `refused` (with `code` and `reason`) or `failed`
//! (with `reason`); a terminal adds `exit_code`. The file is created 0600
//! and appended to; lines are written whole, one `write` each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;

/// An open access log.
#[derive(Debug, Clone)]
pub struct AccessLogFile {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served.
    Ok,
    /// Refused before anything flowed.
    Refused {
        /// The stable code.
        code: String,
        /// Why.
        reason: String,
    },
    /// Could not be served (the service could not be reached).
    Failed(String),
}

/// One stream, as it is logged.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When it opened.
    pub at: SystemTime,
    /// The session.
    pub session: String,
    /// The operator, as the server named them.
    pub operator: String,
    /// The service.
    pub service: String,
    /// `tcp`, `http` or `terminal`.
    pub kind: &'static str,
    /// How long it lasted.
    pub duration: Duration,
    /// Bytes from the operator to the service.
    pub bytes_to_service: u64,
    /// Bytes from the service to the operator.
    pub bytes_from_service: u64,
    /// The shell's exit code, for a terminal.
    pub exit_code: Option<i32>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Entry {
    /// The JSON line.
    pub fn line(&self) -> String {
        let mut v = json!({
            "at": humantime::format_rfc3339_millis(self.at).to_string(),
            "session": self.session,
            "operator": self.operator,
            "service": self.service,
            "kind": self.kind,
            "duration_ms": self.duration.as_millis() as u64,
            "bytes_to_service": self.bytes_to_service,
            "bytes_from_service": self.bytes_from_service,
        });
        if let Some(code) = self.exit_code {
            v["exit_code"] = json!(code);
        }
        match &self.outcome {
            Outcome::Ok => v["result"] = json!("ok"),
            Outcome::Refused { code, reason } => {
                v["result"] = json!("refused");
                v["code"] = json!(code);
                v["reason"] = json!(reason);
            }
            Outcome::Failed(reason) => {
                v["result"] = json!("failed");
                v["reason"] = json!(reason);
            }
        }
        v.to_string()
    }
}

impl AccessLogFile {
    /// Opens (creates 0600) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(AccessLogFile {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Appends one entry (off the async threads). A failed write is
    /// logged, once per failure.
    pub async fn write(&self, entry: Entry) {
        let mut line = entry.line();
        line.push('\n');
        let (file, path) = (self.file.clone(), self.path.clone());
        let written = tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            file.write_all(line.as_bytes())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(path = %path.display(), "cannot write the access log: {e}")
            }
            Err(e) => tracing::error!(path = %path.display(), "cannot write the access log: {e}"),
        }
    }
}
