//! Shared terminals: a shell that outlives the stream that started it and
//! that several participants see at once.
//!
//! A stream whose [`TerminalOpen::mode`] is set takes part in a shared
//! terminal: it starts one, or attaches to a live one by id. The shell's
//! output goes to every participant and into a bounded scrollback
//! ([`SCROLLBACK_BYTES`]) that a participant attaching later gets first;
//! `join` participants type into it, `watch` participants only see it.
//! When the last participant leaves, the shell waits detached for
//! `--terminal-detach-timeout`, then is ended. Every participant hears who
//! joins and leaves ([`TermMsg::Event`], JSON).
//!
//! A moderated terminal has one controller at a time (at first the one who
//! started it): only the controller's keys reach the shell. The controller
//! hands over to another `join` participant, or someone takes over (the
//! server sends that only for admins); everyone hears who holds it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rtunnel_core::mux::MuxStream;
use rtunnel_core::proto::{TerminalMode, TerminalOpen};
use rtunnel_core::terminal::{
    MAX_OUTPUT_CHUNK, MAX_TERMINAL_MESSAGE, TermMsg, read_msg, write_msg,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use super::{Ended, TerminalConfig};

/// The recent output kept for participants who attach later.
pub const SCROLLBACK_BYTES: usize = 64 * 1024;

/// How many messages of output a slow participant may fall behind before
/// it skips ahead (and is told so). The channel keeps that many of the
/// latest messages (up to 16 KiB each): at most 4 MiB per terminal.
const BACKLOG: usize = 256;

/// Most live terminals one agent keeps.
pub const MAX_TERMINALS: usize = 64;

/// What the shell's output task tells the participants.
#[derive(Debug, Clone)]
enum Out {
    /// Output, and its position: the bytes the shell wrote before it.
    Data(u64, Arc<[u8]>),
    Event(Arc<[u8]>),
    Exit(i32),
}

#[derive(Debug, Clone)]
struct Participant {
    key: u64,
    name: String,
    mode: TerminalMode,
    since: SystemTime,
}

#[derive(Debug, Default)]
struct Inner {
    scrollback: VecDeque<u8>,
    /// Bytes of output so far (the position of the next).
    written: u64,
    participants: Vec<Participant>,
    next_key: u64,
    exited: Option<i32>,
    /// Bumped at every detach, so a detach timer knows it is still the
    /// latest.
    detaches: u64,
    /// One controller at a time types.
    moderated: bool,
    /// The participant (by key) who types in a moderated terminal.
    controller: Option<u64>,
}

impl Inner {
    fn controller_name(&self) -> Option<&str> {
        let key = self.controller?;
        self.participants
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.name.as_str())
    }

    /// Whether `key`'s keys reach the shell.
    fn may_type(&self, key: u64, mode: TerminalMode) -> bool {
        mode == TerminalMode::Join && (!self.moderated || self.controller == Some(key))
    }
}

/// One live shell.
struct Terminal {
    id: Uuid,
    started_by: String,
    since: SystemTime,
    input: tokio::sync::Mutex<pty_process::OwnedWritePty>,
    inner: Mutex<Inner>,
    out: broadcast::Sender<Out>,
    kill: Notify,
}

impl Terminal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A participant's request about control: `hand_over` (from the
    /// controller, to a `join` participant named `to`) or `take_over`
    /// (the server forwards it only from admins). Applied changes are
    /// announced as `control`; others are ignored.
    fn control(&self, key: u64, json: &[u8]) {
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let op = request["op"].as_str().unwrap_or_default();
        let to = request["to"].as_str().unwrap_or_default();
        let mut inner = self.lock();
        // The server ends a terminal whose participant lost access: if
        // nobody else who may type is in it, the shell ends rather than
        // wait detached with what they left running.
        if op == "end" {
            let others = inner
                .participants
                .iter()
                .any(|p| p.key != key && p.mode == TerminalMode::Join);
            if !others {
                tracing::info!(terminal = %self.id, "a participant lost access; ending the terminal");
                self.kill.notify_one();
            }
            return;
        }
        if !inner.moderated {
            return;
        }
        let Some(me) = inner.participants.iter().find(|p| p.key == key).cloned() else {
            return;
        };
        let next = match op {
            "hand_over" if inner.controller == Some(key) => inner
                .participants
                .iter()
                .find(|p| p.name == to && p.mode == TerminalMode::Join)
                .map(|p| p.key),
            "take_over" if me.mode == TerminalMode::Join => Some(key),
            _ => None,
        };
        let Some(next) = next else { return };
        inner.controller = Some(next);
        let body = json!({
            "event": "control",
            "name": inner.controller_name(),
            "by": me.name,
            "mode": "join",
            "participants": Self::people(&inner),
            "moderated": true,
            "controller": inner.controller_name(),
        })
        .to_string();
        tracing::info!(terminal = %self.id, by = %me.name, controller = ?inner.controller_name(), "terminal control changed");
        let _ = self.out.send(Out::Event(body.into_bytes().into()));
    }

    fn people(inner: &Inner) -> serde_json::Value {
        inner
            .participants
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "mode": p.mode.as_str(),
                    "since": humantime::format_rfc3339_seconds(p.since).to_string(),
                })
            })
            .collect()
    }

    fn describe(&self) -> serde_json::Value {
        let inner = self.lock();
        json!({
            "id": self.id,
            "started_by": self.started_by,
            "since": humantime::format_rfc3339_seconds(self.since).to_string(),
            "participants": Self::people(&inner),
            "detached": inner.participants.is_empty(),
            "moderated": inner.moderated,
            "controller": inner.controller_name(),
        })
    }

    /// Tells every participant (`event` with the participants now).
    fn announce(&self, inner: &Inner, event: &str, name: &str, mode: TerminalMode) {
        let body = json!({
            "event": event,
            "name": name,
            "mode": mode.as_str(),
            "participants": Self::people(inner),
            "moderated": inner.moderated,
            "controller": inner.controller_name(),
        })
        .to_string();
        let _ = self.out.send(Out::Event(body.into_bytes().into()));
    }
}

/// The agent's shared terminals.
pub struct Hub {
    terminals: Mutex<HashMap<Uuid, Arc<Terminal>>>,
    detach_timeout: Duration,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("detach_timeout", &self.detach_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a participant could not take part.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No live terminal with that id.
    #[error(
        "no live terminal {0} (its shell ended, or it waited detached longer than the agent keeps it)"
    )]
    NotFound(Uuid),
    /// As many live terminals as one agent keeps.
    #[error("this agent already keeps {MAX_TERMINALS} live terminals; close one")]
    TooMany,
    /// The shell did not start.
    #[error("{0}")]
    Spawn(String),
}

impl Hub {
    /// Terminals that wait `detach_timeout` for a participant once the last
    /// left.
    pub fn new(detach_timeout: Duration) -> Self {
        Hub {
            terminals: Mutex::new(HashMap::new()),
            detach_timeout,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Terminal>>> {
        self.terminals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` is live.
    pub fn contains(&self, id: Uuid) -> bool {
        self.map().contains_key(&id)
    }

    /// The live terminals, as JSON (id, started_by, since, participants,
    /// detached).
    pub fn list(&self) -> serde_json::Value {
        let terminals: Vec<Arc<Terminal>> = self.map().values().cloned().collect();
        let mut list: Vec<serde_json::Value> = terminals.iter().map(|t| t.describe()).collect();
        list.sort_by(|a, b| a["since"].as_str().cmp(&b["since"].as_str()));
        serde_json::Value::Array(list)
    }

    /// Serves one participant's stream (its `ok` already sent): a new
    /// shell, or the live one `open.attach` names.
    pub async fn serve(
        self: &Arc<Self>,
        config: &TerminalConfig,
        stream: MuxStream,
        open: TerminalOpen,
    ) -> Ended {
        let (mut reader, mut writer) = tokio::io::split(stream);
        if open.list {
            let mut terminals = self.list();
            let mut list = json!({"event": "list", "terminals": terminals}).to_string();
            // One message holds it: past that, the terminals go without
            // their participants.
            if list.len() > MAX_TERMINAL_MESSAGE {
                if let Some(all) = terminals.as_array_mut() {
                    for t in all {
                        t["participants"] = json!([]);
                    }
                }
                list = json!({"event": "list", "terminals": terminals}).to_string();
            }
            let _ = write_msg(&mut writer, &TermMsg::Event(list.into_bytes())).await;
            let _ = writer.shutdown().await;
            return Ended::default();
        }
        let terminal = match open.attach {
            Some(id) => self.map().get(&id).cloned().ok_or(HubError::NotFound(id)),
            None => self.start(config, &open),
        };
        let terminal = match terminal {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("rtunnel-agent: {e}\r\n");
                let _ = write_msg(&mut writer, &TermMsg::Data(msg.into_bytes())).await;
                let _ = write_msg(&mut writer, &TermMsg::Exit { code: 127 }).await;
                let _ = writer.shutdown().await;
                return Ended {
                    code: Some(127),
                    ..Ended::default()
                };
            }
        };
        let mode = open.mode.unwrap_or(TerminalMode::Join);
        // Join: the scrollback so far and the output from now on, with
        // nothing lost or repeated between them (both under the lock the
        // output task appends under).
        let (key, mut rx, past, past_at, exited, info) = {
            let mut inner = terminal.lock();
            inner.next_key += 1;
            let key = inner.next_key;
            inner.participants.push(Participant {
                key,
                name: open.operator.clone(),
                mode,
                since: SystemTime::now(),
            });
            // The one who starts a moderated terminal holds it; so does
            // the first to join one nobody holds.
            if inner.moderated && inner.controller.is_none() && mode == TerminalMode::Join {
                inner.controller = Some(key);
            }
            let past: Vec<u8> = inner.scrollback.iter().copied().collect();
            let past_at = inner.written - past.len() as u64;
            let rx = terminal.out.subscribe();
            let info = json!({
                "event": "info",
                "terminal": terminal.id,
                "started_by": terminal.started_by,
                "you": open.operator,
                "mode": mode.as_str(),
                "participants": Terminal::people(&inner),
                "moderated": inner.moderated,
                "controller": inner.controller_name(),
            })
            .to_string();
            terminal.announce(&inner, "joined", &open.operator, mode);
            (key, rx, past, past_at, inner.exited, info)
        };
        tracing::info!(operator = %open.operator, terminal = %terminal.id, mode = mode.as_str(), "joined a terminal");
        let mut ended = Ended::default();
        let (mut typed, mut shown) = (0u64, 0u64);
        let mut alive = write_msg(&mut writer, &TermMsg::Event(info.into_bytes()))
            .await
            .is_ok();
        // With positions, the scrollback goes as one `output` at least
        // (perhaps empty): the server knows positions come.
        let positions = open.positions;
        if positions {
            let mut at = past_at;
            let mut chunks: Vec<&[u8]> = past.chunks(MAX_OUTPUT_CHUNK).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            for chunk in chunks {
                let msg = TermMsg::Output {
                    at,
                    bytes: chunk.to_vec(),
                };
                at += chunk.len() as u64;
                alive = alive && write_msg(&mut writer, &msg).await.is_ok();
            }
        } else {
            for chunk in past.chunks(MAX_TERMINAL_MESSAGE) {
                alive = alive
                    && write_msg(&mut writer, &TermMsg::Data(chunk.to_vec()))
                        .await
                        .is_ok();
            }
        }
        if let Some(code) = exited {
            let _ = write_msg(&mut writer, &TermMsg::Exit { code }).await;
            alive = false;
            ended.code = Some(code);
        }
        {
            let input = async {
                while let Ok(Some(msg)) = read_msg(&mut reader).await {
                    let may_type = terminal.lock().may_type(key, mode);
                    match msg {
                        TermMsg::Data(bytes) if may_type => {
                            if terminal.input.lock().await.write_all(&bytes).await.is_err() {
                                break;
                            }
                            typed += bytes.len() as u64;
                        }
                        TermMsg::Resize { cols, rows } if may_type => {
                            let _ = terminal
                                .input
                                .lock()
                                .await
                                .resize(pty_process::Size::new(rows, cols));
                        }
                        TermMsg::Control(json) => terminal.control(key, &json),
                        // A watcher's keys and sizes go nowhere, nor those of one who
                        // does not hold a moderated terminal.
                        _ => {}
                    }
                }
            };
            let output = async {
                loop {
                    let msg = match rx.recv().await {
                    Ok(Out::Data(at, bytes)) if positions => TermMsg::Output { at, bytes: bytes.to_vec() },
                    Ok(Out::Data(_, bytes)) => TermMsg::Data(bytes.to_vec()),
                    Ok(Out::Event(json)) => TermMsg::Event(json.to_vec()),
                    Ok(Out::Exit(code)) => {
                        let _ = write_msg(&mut writer, &TermMsg::Exit { code }).await;
                        let _ = writer.shutdown().await;
                        return Some(code);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => TermMsg::Data(
                        format!("\r\n[rtunnel: this view fell behind; {n} pieces of output skipped]\r\n")
                            .into_bytes(),
                    ),
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                    if let TermMsg::Data(b) | TermMsg::Output { bytes: b, .. } = &msg {
                        shown += b.len() as u64;
                    }
                    if write_msg(&mut writer, &msg).await.is_err() {
                        return None;
                    }
                }
            };
            if alive {
                tokio::select! {
                    code = output => ended.code = code,
                    _ = input => {}
                }
            }
        }
        ended.to_shell = typed;
        ended.from_shell = shown;
        self.leave(&terminal, key);
        ended
    }

    /// A participant left: the others hear it; the last one leaving starts
    /// the detach timer.
    fn leave(self: &Arc<Self>, terminal: &Arc<Terminal>, key: u64) {
        let mut inner = terminal.lock();
        let Some(at) = inner.participants.iter().position(|p| p.key == key) else {
            return;
        };
        let gone = inner.participants.remove(at);
        // A controller who leaves hands the terminal to the longest there
        // who may type.
        if inner.controller == Some(key) {
            inner.controller = inner
                .participants
                .iter()
                .find(|p| p.mode == TerminalMode::Join)
                .map(|p| p.key);
        }
        terminal.announce(&inner, "left", &gone.name, gone.mode);
        tracing::info!(operator = %gone.name, terminal = %terminal.id, "left a terminal");
        if !inner.participants.is_empty() || inner.exited.is_some() {
            return;
        }
        inner.detaches += 1;
        let detach = inner.detaches;
        drop(inner);
        let (terminal, timeout) = (terminal.clone(), self.detach_timeout);
        tracing::info!(terminal = %terminal.id, "terminal detached; it waits {} for someone to attach", crate::agent::rounded(timeout));
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let inner = terminal.lock();
            if inner.participants.is_empty() && inner.detaches == detach && inner.exited.is_none() {
                tracing::info!(terminal = %terminal.id, "nobody attached to the detached terminal; ending its shell");
                terminal.kill.notify_one();
            }
        });
    }

    /// Starts a shell and its output task.
    fn start(
        self: &Arc<Self>,
        config: &TerminalConfig,
        open: &TerminalOpen,
    ) -> Result<Arc<Terminal>, HubError> {
        if self.map().len() >= MAX_TERMINALS {
            return Err(HubError::TooMany);
        }
        let shell = config.shell();
        let (pty, mut child) = super::spawn(config, &shell, open).map_err(|e| {
            tracing::warn!(shell = %shell.display(), "cannot start a terminal: {e}");
            HubError::Spawn(format!("cannot start {}: {e}", shell.display()))
        })?;
        let (mut pty_out, pty_in) = pty.into_split();
        let (out, _) = broadcast::channel(BACKLOG);
        let terminal = Arc::new(Terminal {
            id: Uuid::new_v4(),
            started_by: open.operator.clone(),
            since: SystemTime::now(),
            input: tokio::sync::Mutex::new(pty_in),
            inner: Mutex::new(Inner {
                moderated: open.moderated,
                ..Inner::default()
            }),
            out,
            kill: Notify::new(),
        });
        self.map().insert(terminal.id, terminal.clone());
        tracing::info!(operator = %open.operator, shell = %shell.display(), terminal = %terminal.id, "terminal opened");
        let (hub, t) = (self.clone(), terminal.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    read = pty_out.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut inner = t.lock();
                            inner.scrollback.extend(&buf[..n]);
                            let excess = inner.scrollback.len().saturating_sub(SCROLLBACK_BYTES);
                            inner.scrollback.drain(..excess);
                            let at = inner.written;
                            inner.written += n as u64;
                            let _ = t.out.send(Out::Data(at, buf[..n].to_vec().into()));
                        }
                    },
                    _ = t.kill.notified() => {
                        // The shell's whole process group: SIGHUP first (a
                        // shell passes it on to its jobs), then SIGKILL.
                        let group = child
                            .id()
                            .and_then(|p| rustix::process::Pid::from_raw(p as i32));
                        if let Some(group) = group {
                            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::HUP);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                        }
                        let _ = child.start_kill();
                    }
                }
            }
            let code = match child.wait().await {
                Ok(status) => super::exit_code(status),
                Err(_) => -1,
            };
            {
                let mut inner = t.lock();
                inner.exited = Some(code);
                let _ = t.out.send(Out::Exit(code));
            }
            hub.map().remove(&t.id);
            tracing::info!(terminal = %t.id, code, "terminal closed");
        });
        Ok(terminal)
    }
}
