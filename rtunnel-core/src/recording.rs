//! Terminal recordings in asciicast v2 (what `asciinema play` plays): a
//! JSON header line, then one `[seconds, "o", text]` line per output chunk
//! and one `[seconds, "r", "COLSxROWS"]` line per resize. Keystrokes are
//! not recorded (they would hold passwords); what the shell echoes is.
//!
//! [`RecordingStore`] keeps them; [`FileRecordingStore`] writes files under
//! the data directory. A service embedding rtunnel can keep them elsewhere.
//!
//! ```
//! use rtunnel_core::recording::Cast;
//!
//! let mut cast = Cast::new(80, 24);
//! let header = cast.header(1_700_000_000, "olga on customer-box");
//! assert!(header.starts_with(r#"{"version":2,"width":80,"height":24"#));
//! // A character split across two reads is written whole, once.
//! assert_eq!(cast.output(0.5, &[b'h', 0xc3]), Some(r#"[0.5,"o","h"]"#.to_owned()));
//! assert_eq!(cast.output(0.75, &[0xa9]), Some(r#"[0.75,"o","é"]"#.to_owned()));
//! assert_eq!(cast.resize(1.0, 120, 40), r#"[1.0,"r","120x40"]"#);
//! ```

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWriteExt};
use uuid::Uuid;

use crate::store::{Millis, StoreError};

/// Largest recording of one terminal; past it, recording stops (the
/// terminal goes on) and the recording says it was truncated.
pub const MAX_RECORDING_BYTES: u64 = 100 * 1024 * 1024;

/// What is known of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingInfo {
    /// Id.
    pub id: Uuid,
    /// The session it was made in.
    pub session_id: crate::ids::SessionId,
    /// The operator.
    pub actor: String,
    /// When the terminal opened.
    pub started_at: Millis,
    /// When it closed, once it has.
    pub ended_at: Option<Millis>,
    /// Size of the file.
    pub bytes: u64,
    /// Whether it stopped at [`MAX_RECORDING_BYTES`].
    pub truncated: bool,
}

/// Where one recording is being written.
#[async_trait]
pub trait RecordingSink: Send {
    /// Appends one line (without its newline).
    async fn line(&mut self, line: &str) -> Result<(), StoreError>;
    /// Completes the recording.
    async fn finish(self: Box<Self>, ended_at: Millis, truncated: bool) -> Result<(), StoreError>;
}

/// Keeps recordings.
#[async_trait]
pub trait RecordingStore: Send + Sync {
    /// Starts a recording.
    async fn create(&self, info: &RecordingInfo) -> Result<Box<dyn RecordingSink>, StoreError>;
    /// The recordings of a session, oldest first.
    async fn list(
        &self,
        session_id: crate::ids::SessionId,
    ) -> Result<Vec<RecordingInfo>, StoreError>;
    /// A recording and a reader of its asciicast text.
    async fn open(
        &self,
        id: Uuid,
    ) -> Result<Option<(RecordingInfo, Box<dyn AsyncRead + Send + Unpin>)>, StoreError>;
}

/// Encodes asciicast v2 lines for one terminal, carrying UTF-8 sequences
/// split across reads over to the next chunk.
#[derive(Debug)]
pub struct Cast {
    cols: u16,
    rows: u16,
    pending: Vec<u8>,
}

impl Cast {
    /// A recording of a `cols` x `rows` terminal.
    pub fn new(cols: u16, rows: u16) -> Self {
        Cast {
            cols,
            rows,
            pending: Vec::new(),
        }
    }

    /// The header line.
    pub fn header(&self, timestamp_secs: i64, title: &str) -> String {
        #[derive(Serialize)]
        struct Header<'a> {
            version: u8,
            width: u16,
            height: u16,
            timestamp: i64,
            title: &'a str,
            env: Env,
        }
        #[derive(Serialize)]
        struct Env {
            #[serde(rename = "TERM")]
            term: &'static str,
        }
        serde_json::to_string(&Header {
            version: 2,
            width: self.cols,
            height: self.rows,
            timestamp: timestamp_secs,
            title,
            env: Env {
                term: "xterm-256color",
            },
        })
        .unwrap_or_default()
    }

    /// An output event at `t` seconds, or `None` if `bytes` only began a
    /// character.
    pub fn output(&mut self, t: f64, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let valid_up_to = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete sequence at the end waits for the next chunk.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Invalid bytes are shown as replacement characters.
            Err(_) => self.pending.len(),
        };
        if valid_up_to == 0 {
            return None;
        }
        let rest = self.pending.split_off(valid_up_to);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        Some(event(t, "o", &text))
    }

    /// The start of a character still waiting for its end, as an output
    /// event at `t` seconds (shown as a replacement character): for when
    /// the output it would continue is known to be lost.
    pub fn flush_partial(&mut self, t: f64) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(event(t, "o", &text))
    }

    /// A resize event at `t` seconds.
    pub fn resize(&mut self, t: f64, cols: u16, rows: u16) -> String {
        self.cols = cols;
        self.rows = rows;
        event(t, "r", &format!("{cols}x{rows}"))
    }

    /// A marker at `t` seconds (asciicast's `m` event: a label a player
    /// shows on its timeline, such as who joined).
    pub fn marker(&mut self, t: f64, label: &str) -> String {
        event(t, "m", label)
    }
}

fn event(t: f64, kind: &str, data: &str) -> String {
    // Whole milliseconds; serde_json writes `1.0` for 1.
    let t = (t * 1000.0).round() / 1000.0;
    serde_json::json!([t, kind, data]).to_string()
}

/// Recordings as files: `<dir>/<session id>/<recording id>.cast` and its
/// `.json` description.
#[derive(Debug, Clone)]
pub struct FileRecordingStore {
    dir: PathBuf,
}

impl FileRecordingStore {
    /// Recordings under `dir` (created when first needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileRecordingStore { dir: dir.into() }
    }

    fn paths(&self, session: crate::ids::SessionId, id: Uuid) -> (PathBuf, PathBuf) {
        let dir = self.dir.join(session.to_string());
        (
            dir.join(format!("{id}.cast")),
            dir.join(format!("{id}.json")),
        )
    }

    async fn find(&self, id: Uuid) -> Result<Option<RecordingInfo>, StoreError> {
        let mut sessions = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        while let Some(entry) = sessions.next_entry().await.map_err(io_err)? {
            let path = entry.path().join(format!("{id}.json"));
            if let Ok(bytes) = tokio::fs::read(&path).await {
                return parse_info(&bytes).map(Some);
            }
        }
        Ok(None)
    }
}

fn io_err(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("recordings: {e}"))
}

fn parse_info(bytes: &[u8]) -> Result<RecordingInfo, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("recording info: {e}")))
}

async fn write_info(path: &std::path::Path, info: &RecordingInfo) -> Result<(), StoreError> {
    let json = serde_json::to_vec(info).map_err(|e| StoreError::Backend(e.to_string()))?;
    tokio::fs::write(path, json).await.map_err(io_err)
}

struct FileSink {
    file: tokio::io::BufWriter<tokio::fs::File>,
    info: RecordingInfo,
    info_path: PathBuf,
}

#[async_trait]
impl RecordingSink for FileSink {
    async fn line(&mut self, line: &str) -> Result<(), StoreError> {
        self.file.write_all(line.as_bytes()).await.map_err(io_err)?;
        self.file.write_all(b"\n").await.map_err(io_err)?;
        self.info.bytes += line.len() as u64 + 1;
        Ok(())
    }

    async fn finish(
        mut self: Box<Self>,
        ended_at: Millis,
        truncated: bool,
    ) -> Result<(), StoreError> {
        self.file.flush().await.map_err(io_err)?;
        self.file.get_ref().sync_all().await.map_err(io_err)?;
        self.info.ended_at = Some(ended_at);
        self.info.truncated = truncated;
        write_info(&self.info_path, &self.info).await
    }
}

#[async_trait]
impl RecordingStore for FileRecordingStore {
    async fn create(&self, info: &RecordingInfo) -> Result<Box<dyn RecordingSink>, StoreError> {
        let (cast, json) = self.paths(info.session_id, info.id);
        if let Some(dir) = cast.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io_err)?;
        }
        write_info(&json, info).await?;
        let file = tokio::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&cast)
            .await
            .map_err(io_err)?;
        Ok(Box::new(FileSink {
            file: tokio::io::BufWriter::new(file),
            info: info.clone(),
            info_path: json,
        }))
    }

    async fn list(
        &self,
        session_id: crate::ids::SessionId,
    ) -> Result<Vec<RecordingInfo>, StoreError> {
        let dir = self.dir.join(session_id.to_string());
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(e)),
        };
        let mut found = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_err)? {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = tokio::fs::read(&path).await.map_err(io_err)?;
                found.push(parse_info(&bytes)?);
            }
        }
        found.sort_by_key(|r| (r.started_at, r.id));
        Ok(found)
    }

    async fn open(
        &self,
        id: Uuid,
    ) -> Result<Option<(RecordingInfo, Box<dyn AsyncRead + Send + Unpin>)>, StoreError> {
        let Some(mut info) = self.find(id).await? else {
            return Ok(None);
        };
        let (cast, _) = self.paths(info.session_id, id);
        let file = tokio::fs::File::open(&cast).await.map_err(io_err)?;
        info.bytes = file.metadata().await.map_err(io_err)?.len();
        Ok(Some((info, Box::new(file))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn recordings_are_written_listed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileRecordingStore::new(dir.path().join("recordings"));
        let session = crate::ids::SessionId::new();
        assert!(store.list(session).await.unwrap().is_empty());
        let info = RecordingInfo {
            id: Uuid::new_v4(),
            session_id: session,
            actor: "olga".into(),
            started_at: 1_000,
            ended_at: None,
            bytes: 0,
            truncated: false,
        };
        let mut sink = store.create(&info).await.unwrap();
        let mut cast = Cast::new(80, 24);
        sink.line(&cast.header(1, "t")).await.unwrap();
        sink.line(&cast.output(0.1, b"hello\r\n").unwrap())
            .await
            .unwrap();
        sink.finish(2_000, false).await.unwrap();
        let listed = store.list(session).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].ended_at, Some(2_000));
        let (got, mut reader) = store.open(info.id).await.unwrap().unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).await.unwrap();
        assert_eq!(got.bytes as usize, text.len());
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], r#"[0.1,"o","hello\r\n"]"#);
        assert!(store.open(Uuid::new_v4()).await.unwrap().is_none());
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut cast = Cast::new(80, 24);
        assert_eq!(
            cast.output(0.0, &[b'a', 0xff, b'b']).unwrap(),
            "[0.0,\"o\",\"a\u{fffd}b\"]"
        );
    }
}
