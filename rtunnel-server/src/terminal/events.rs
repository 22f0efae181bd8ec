//! What an agent says about its shared terminals (`TermMsg::Event`), read
//! as hostile input: parsed with limits, checked, and rebuilt before any of
//! it reaches a browser or the API.

use serde::Deserialize;
use uuid::Uuid;

/// Most participants shown for one terminal.
const MAX_PARTICIPANTS: usize = 64;
/// Most terminals listed.
const MAX_TERMINALS: usize = 64;
/// Longest name or time text taken.
const MAX_TEXT: usize = 128;

#[derive(Debug, Deserialize)]
struct RawParticipant {
    name: String,
    mode: String,
    #[serde(default)]
    since: String,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    event: String,
    #[serde(default)]
    terminal: Option<Uuid>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    started_by: Option<String>,
    #[serde(default)]
    participants: Vec<RawParticipant>,
    #[serde(default)]
    terminals: Vec<RawTerminal>,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    controller: Option<String>,
    #[serde(default)]
    moderated: bool,
}

#[derive(Debug, Deserialize)]
struct RawTerminal {
    id: Uuid,
    started_by: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    participants: Vec<RawParticipant>,
    #[serde(default)]
    detached: bool,
    #[serde(default)]
    moderated: bool,
    #[serde(default)]
    controller: Option<String>,
}

/// A participant's event, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// `info` (to the one who joined), `joined` or `left`.
    pub kind: &'static str,
    /// The terminal (in `info`).
    pub terminal: Option<Uuid>,
    /// Who joined or left.
    pub name: Option<String>,
    /// How.
    pub mode: Option<&'static str>,
    /// Who is in it now.
    pub participants: serde_json::Value,
    /// Who started it (in `info`).
    pub started_by: Option<String>,
    /// Who handed it over or took it (in `control`).
    pub by: Option<String>,
    /// Who types, in a moderated terminal.
    pub controller: Option<String>,
    /// One participant at a time types.
    pub moderated: bool,
}

impl Event {
    /// The text message the browser gets.
    pub(crate) fn to_browser(&self) -> String {
        serde_json::json!({
            "type": "participants",
            "event": self.kind,
            "terminal": self.terminal,
            "name": self.name,
            "mode": self.mode,
            "started_by": self.started_by,
            "participants": self.participants,
            "moderated": self.moderated,
            "controller": self.controller,
            "by": self.by,
        })
        .to_string()
    }

    /// The recording's marker, for `joined` and `left`.
    pub(crate) fn marker(&self) -> Option<String> {
        let name = self.name.as_deref()?;
        let mode = self.mode.unwrap_or("join");
        match self.kind {
            "joined" => Some(format!("{name} joined ({mode})")),
            "left" => Some(format!("{name} left")),
            "control" => Some(match self.by.as_deref() {
                Some(by) if by != name => format!("{name} has control (from {by})"),
                _ => format!("{name} took control"),
            }),
            _ => None,
        }
    }
}

fn text(s: &str) -> Option<String> {
    let ok = !s.is_empty() && s.chars().count() <= MAX_TEXT && !s.chars().any(char::is_control);
    ok.then(|| s.to_owned())
}

fn mode(s: &str) -> Option<&'static str> {
    match s {
        "join" => Some("join"),
        "watch" => Some("watch"),
        _ => None,
    }
}

fn participants(raw: &[RawParticipant]) -> serde_json::Value {
    raw.iter()
        .take(MAX_PARTICIPANTS)
        .filter_map(|p| {
            Some(serde_json::json!({
                "name": text(&p.name)?,
                "mode": mode(&p.mode)?,
                "since": text(&p.since),
            }))
        })
        .collect()
}

/// A participant's event (`info`, `joined`, `left`); `None` for anything
/// else or malformed.
pub(crate) fn parse(json: &[u8]) -> Option<Event> {
    let raw: RawEvent = serde_json::from_slice(json).ok()?;
    let kind = match raw.event.as_str() {
        "info" => "info",
        "joined" => "joined",
        "left" => "left",
        "control" => "control",
        _ => return None,
    };
    Some(Event {
        kind,
        terminal: raw.terminal,
        name: raw.name.as_deref().and_then(text),
        mode: raw.mode.as_deref().and_then(mode),
        participants: participants(&raw.participants),
        started_by: raw.started_by.as_deref().and_then(text),
        by: raw.by.as_deref().and_then(text),
        controller: raw.controller.as_deref().and_then(text),
        moderated: raw.moderated,
    })
}

/// The `list` event's terminals, checked, for the API.
pub(crate) fn parse_list(json: &[u8]) -> Option<serde_json::Value> {
    let raw: RawEvent = serde_json::from_slice(json).ok()?;
    if raw.event != "list" {
        return None;
    }
    Some(
        raw.terminals
            .iter()
            .take(MAX_TERMINALS)
            .filter_map(|t| {
                Some(serde_json::json!({
                    "id": t.id,
                    "started_by": text(&t.started_by)?,
                    "since": text(&t.since),
                    "participants": participants(&t.participants),
                    "detached": t.detached,
                    "moderated": t.moderated,
                    "controller": t.controller.as_deref().and_then(text),
                }))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_events_are_cut_to_what_is_valid() {
        let id = Uuid::new_v4();
        let json = serde_json::json!({
            "event": "joined", "terminal": id, "name": "bob", "mode": "watch",
            "participants": [
                {"name": "alice", "mode": "join", "since": "2026-12-02T03:00:00Z"},
                {"name": "\u{1b}[31mevil", "mode": "join"},
                {"name": "carol", "mode": "root"},
            ],
            "extra": "ignored",
        });
        let e = parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(e.kind, "joined");
        assert_eq!(e.marker().unwrap(), "bob joined (watch)");
        assert_eq!(e.participants.as_array().unwrap().len(), 1);
        assert!(parse(b"{\"event\":\"exec\"}").is_none());
        assert!(parse(b"not json").is_none());
        let long = "x".repeat(MAX_TEXT + 1);
        let e = parse(format!("{{\"event\":\"left\",\"name\":\"{long}\"}}").as_bytes()).unwrap();
        assert_eq!(e.name, None);
        assert_eq!(e.marker(), None);
        let list = serde_json::json!({"event": "list", "terminals": [
            {"id": id, "started_by": "alice", "since": "s", "participants": [], "detached": true},
            {"id": "not-a-uuid", "started_by": "x"},
        ]});
        assert!(
            parse_list(list.to_string().as_bytes()).is_none(),
            "a bad entry spoils the list"
        );
        let list = serde_json::json!({"event": "list", "terminals": [
            {"id": id, "started_by": "alice", "since": "s", "participants": [], "detached": true},
        ]});
        let items = parse_list(list.to_string().as_bytes()).unwrap();
        assert_eq!(items[0]["detached"], true);
    }
}
