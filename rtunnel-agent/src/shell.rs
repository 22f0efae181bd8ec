//! `rtunnel-agent shell --system NAME`: the agent's terminal in the
//! operator's own terminal, as `ssh` or `tsh ssh` give it.
//!
//! It opens `GET /api/v1/systems/{name}/terminal` (a WebSocket, with the
//! API token as bearer) at the local terminal's size, puts the local
//! terminal in raw mode (restored on every way out), sends keystrokes as
//! binary messages and a resize message on every `SIGWINCH`, writes what
//! comes back to stdout, and exits with the remote shell's exit code. Its
//! own failures (cannot connect, refused, connection lost) exit 255, as
//! `ssh` does.

use std::io::Read;

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::dial::{DialOptions, dial_messages};
use crate::http_proxy::Proxy;
use crate::tls::ExtraRoots;

/// The exit code of the command's own failures.
pub const SHELL_FAILED: u8 = 255;

/// What `shell` needs.
#[derive(Debug)]
pub struct ShellConfig {
    /// The server's base URL, `http(s)://HOST[:PORT]`.
    pub server: String,
    /// An API token.
    pub token: String,
    /// The system's name or id.
    pub system: String,
    /// Accept any certificate from an `https://` server.
    pub tls_insecure: bool,
    /// Trusted besides the system's roots.
    pub ca_roots: ExtraRoots,
    /// Dial through this HTTP proxy.
    pub proxy: Option<Proxy>,
    /// Attach to this live terminal instead of starting a shell.
    pub attach: Option<uuid::Uuid>,
    /// Only watch: keystrokes are not sent.
    pub watch: bool,
}

/// The local terminal in raw mode until dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Raw mode on stdin, if it is a terminal.
    fn enter() -> Option<RawMode> {
        use rustix::termios::{OptionalActions, isatty, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !isatty(&stdin) {
            return None;
        }
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// The local terminal's size (columns, rows), or 80x24 off a terminal.
fn local_size() -> (u16, u16) {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (w.ws_col, w.ws_row),
        _ => (80, 24),
    }
}

/// Runs the remote shell; the remote exit code, or an error (exit
/// [`SHELL_FAILED`]).
pub async fn run(config: ShellConfig) -> Result<u8, String> {
    let base = crate::forward::websocket_base(&config.server)?;
    if crate::agent::plain_beyond_loopback(&base) {
        tracing::warn!(
            "{} is not encrypted and not on this machine: the API token and everything typed cross the network in the clear; use https://",
            config.server
        );
    }
    let (cols, rows) = local_size();
    let mut url = format!(
        "{base}/api/v1/systems/{}/terminal?cols={cols}&rows={rows}",
        crate::forward::path_segment(&config.system)
    );
    if let Some(id) = config.attach {
        url.push_str(&format!("&attach={id}"));
    }
    if config.watch {
        url.push_str("&mode=watch");
    }
    let options = DialOptions {
        tls_insecure: config.tls_insecure,
        ca_roots: config.ca_roots.clone(),
        proxy: config.proxy.clone(),
    };
    let ws = dial_messages(&url, &format!("Bearer {}", config.token), &options)
        .await
        .map_err(|e| {
            // The server's refusals say what is wrong themselves; the
            // hints are for the way there (TLS, proxy).
            let hint = e
                .config_hint()
                .filter(|_| !matches!(e, crate::dial::DialError::Refused { .. }))
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            format!("cannot open the terminal of {}: {e}{hint}", config.system)
        })?;
    let (mut to_server, mut from_server) = ws.split();
    // Read on a thread of its own: a blocking read of stdin cannot be
    // cancelled, and must not hold the runtime up at exit.
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            if keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|e| format!("cannot watch the terminal's size: {e}"))?;
    let mut stopped = std::pin::pin!(rtunnel_core::signal::terminated());
    // A watcher types nothing: the terminal stays as it is, so Ctrl-C ends
    // the watching.
    let raw = if config.watch { None } else { RawMode::enter() };
    let mut stdout = tokio::io::stdout();
    // A watcher's keys go nowhere; Ctrl-C (SIGINT) ends the watching.
    let mut keys_open = !config.watch;
    let mut exit: Option<u8> = None;
    let ended = loop {
        tokio::select! {
            key = keys.recv(), if keys_open => match key {
                Some(bytes) => {
                    if let Err(e) = to_server.send(Message::Binary(bytes.into())).await {
                        break Some(format!("the connection failed: {e}"));
                    }
                }
                // Input ended (a pipe): the shell goes on until it exits.
                None => keys_open = false,
            },
            _ = resized.recv() => {
                let (cols, rows) = local_size();
                let resize = serde_json::json!({"type": "resize", "cols": cols, "rows": rows});
                if let Err(e) = to_server.send(Message::Text(resize.to_string().into())).await {
                    break Some(format!("the connection failed: {e}"));
                }
            }
            message = from_server.next() => match message {
                Some(Ok(Message::Binary(out))) => {
                    if stdout.write_all(&out).await.is_err() || stdout.flush().await.is_err() {
                        break Some("cannot write to the terminal".into());
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                        && v["type"] == "exit"
                    {
                        exit = Some(v["code"].as_i64().map_or(SHELL_FAILED, |c| c.clamp(0, 255) as u8));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break match (exit, frame) {
                        (Some(_), _) => None,
                        (None, Some(f)) if !f.reason.is_empty() => Some(format!("the terminal closed: {}", f.reason)),
                        (None, _) => Some("the terminal closed before the shell said how it ended".into()),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("the connection failed: {e}")),
                None => break exit.is_none().then(|| "the connection ended".to_owned()),
            },
            _ = &mut stopped => break Some("stopped by a signal".into()),
        }
    };
    drop(raw);
    let _ = to_server.close().await;
    match (ended, exit) {
        (None, Some(code)) => Ok(code),
        (Some(why), _) => Err(why),
        (None, None) => Err("the connection ended".into()),
    }
}
