//! The rtunnel wire protocol, version [`PROTOCOL_VERSION`].
//!
//! Everything here is pure code over bytes: encoding and decoding with hard
//! size limits, no IO, no clock. The async helpers that read and write these
//! frames on a stream live in [`crate::frame`]. `docs/PROTOCOL.md` describes
//! every message.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON.
//! Two kinds of frame exist:
//!
//! - [`Control`] messages travel on the control stream, the first stream the
//!   dialing side opens on a tunnel.
//! - A [`StreamHeader`] is the first frame on every other stream; the
//!   accepting side answers with a [`StreamReply`] before any payload flows.

use serde::{Deserialize, Serialize};

/// Version of the wire protocol spoken by this build. Both ends must agree.
pub const PROTOCOL_VERSION: u16 = 1;

/// Size of the length prefix in front of every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Largest control frame body accepted (the manifest is the largest message).
pub const MAX_CONTROL_FRAME_BYTES: usize = 64 * 1024 + 1024;

/// Largest stream header or stream reply body accepted.
pub const MAX_STREAM_HEADER_BYTES: usize = 1024;

/// Largest number of services a manifest may list.
pub const MAX_MANIFEST_SERVICES: usize = 500;

/// Longest service name (DNS label rules).
pub const MAX_SERVICE_NAME_BYTES: usize = 63;

/// Longest reconnect token accepted.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Longest free-text reason carried in a close message or a refusal.
pub const MAX_REASON_BYTES: usize = 512;

/// Most streams one side keeps open, of those it opened, on one connection;
/// a further open waits for one to end. The receiving side's multiplexer
/// accepts several times as many, so an opener within this bound can never
/// make it drop the connection (yamux ends a connection whose peer opens
/// past its limit).
pub const MAX_OPEN_STREAMS: usize = 1024;

/// A message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// First message of the dialing side: its protocol version and software.
    Hello {
        /// Protocol version of the sender.
        version: u16,
        /// Free text naming the sender's software, for logs.
        software: String,
        /// An agent coming back asks for its session again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// The accepting side's answer to a compatible [`Control::Hello`].
    Welcome {
        /// Protocol version of the sender.
        version: u16,
        /// The support session this tunnel belongs to (nil for a forward).
        session_id: crate::ids::SessionId,
        /// How often each side sends a heartbeat, in milliseconds.
        heartbeat_interval_ms: u64,
        /// For a tunnel: the single-use token that resumes this session
        /// after the tunnel is lost (replaced at every reconnect).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconnect_token: Option<String>,
    },
    /// The services the agent can reach. Sent by the agent after `Welcome`.
    Manifest {
        /// The services, in the order the agent lists them.
        services: Vec<ServiceInfo>,
    },
    /// Liveness signal; each side sends one every heartbeat interval.
    Heartbeat {
        /// Sender's counter, for logs.
        seq: u64,
    },
    /// The sender is about to close the tunnel, and why.
    Close {
        /// Why the tunnel is closing.
        code: CloseCode,
        /// Human readable detail.
        reason: String,
    },
}

/// What an agent presents to get its session back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The session it had.
    pub session_id: crate::ids::SessionId,
    /// The reconnect token from that session's last welcome.
    pub token: String,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("session_id", &self.session_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a tunnel is closed, carried in [`Control::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseCode {
    /// The two ends speak different protocol versions.
    VersionMismatch,
    /// The peer sent something the protocol does not allow.
    ProtocolError,
    /// An operator closed the session; the agent must not reconnect.
    SessionClosed,
    /// The server is shutting down; reconnect right away.
    ServerRestarting,
    /// Another connection with the same credentials took over.
    Replaced,
    /// The sender is shutting down on purpose.
    Shutdown,
    /// The system's secret was replaced: the agent must stop until it is
    /// given the new one.
    CredentialsRevoked,
}

impl std::fmt::Display for CloseCode {
    /// What a person reads in a log: `the server is restarting`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseCode::VersionMismatch => "the protocol versions differ",
            CloseCode::ProtocolError => "a protocol error",
            CloseCode::SessionClosed => "the session was closed",
            CloseCode::ServerRestarting => "the server is restarting",
            CloseCode::Replaced => "another connection took over",
            CloseCode::Shutdown => "shutting down",
            CloseCode::CredentialsRevoked => "the credentials were revoked",
        })
    }
}

/// One entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceInfo {
    /// Service name, see [`validate_service_name`].
    pub name: String,
    /// What the stream carries.
    pub kind: StreamKind,
    /// Informational description of the target (`host:port`), shown to
    /// operators; the server never dials it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether the agent reaches the target over TLS.
    #[serde(default)]
    pub tls: bool,
    /// The `Host` the subdomain proxy sends the service.
    #[serde(default, skip_serializing_if = "HostHeader::is_target")]
    pub host_header: HostHeader,
    /// Whether the customer is asked before an operator's first access
    /// (`--consent`): operators see "waiting for the customer's approval".
    #[serde(default, skip_serializing_if = "ConsentMode::is_none")]
    pub consent: ConsentMode,
    /// The terminal can be shared: detached, attached again, watched and
    /// joined ([`TerminalOpen::mode`]); false for agents older than that.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// What the customer's side does when an operator first comes in
/// (`rtunnel-agent --consent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ConsentMode {
    /// Nothing: access opens as the server decides.
    #[default]
    None,
    /// The customer is told (the consent command runs), access opens.
    Notify,
    /// The customer decides (the consent command's exit code), access
    /// waits for it.
    Approve,
}

impl ConsentMode {
    /// `none`, `notify` or `approve`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentMode::None => "none",
            ConsentMode::Notify => "notify",
            ConsentMode::Approve => "approve",
        }
    }

    /// Whether it is [`ConsentMode::None`].
    pub fn is_none(&self) -> bool {
        *self == ConsentMode::None
    }
}

impl std::str::FromStr for ConsentMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(ConsentMode::None),
            "notify" => Ok(ConsentMode::Notify),
            "approve" => Ok(ConsentMode::Approve),
            other => Err(format!("{other:?}: expected none, notify or approve")),
        }
    }
}

/// Which `Host` an HTTP service behind the agent expects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", content = "name", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum HostHeader {
    /// Its own address, the `host:port` the agent dials (the default).
    #[default]
    Target,
    /// A fixed name: an application behind a reverse proxy on the
    /// customer's side that routes by `Host` (Traefik, nginx).
    Fixed(String),
    /// The public proxy host the browser used: an application configured
    /// with its external name.
    Public,
}

impl HostHeader {
    /// Whether this is the default.
    pub fn is_target(&self) -> bool {
        *self == HostHeader::Target
    }
}

/// Checks a fixed `Host` name: a host name or address, optionally with a
/// port, at most 255 bytes.
pub fn validate_host_header(name: &str) -> Result<(), ProtoError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        });
    if ok {
        Ok(())
    } else {
        Err(ProtoError::InvalidManifest(format!(
            "host name {:?} is not a host[:port]",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StreamKind {
    /// Raw TCP bytes.
    Tcp,
    /// HTTP requests for the subdomain proxy (bytes are relayed as TCP).
    Http,
    /// A PTY on the agent host.
    Terminal,
}

impl StreamKind {
    /// The kind's name on the wire: `tcp`, `http`, `terminal`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Tcp => "tcp",
            StreamKind::Http => "http",
            StreamKind::Terminal => "terminal",
        }
    }

    /// Whether a stream of this kind may go to a service of kind `service`:
    /// a terminal stream only to the terminal, `tcp` and `http` streams only
    /// to `tcp` services. Both ends check it, so no stream header can turn a
    /// port forward into a shell.
    pub fn fits(self, service: StreamKind) -> bool {
        matches!(
            (self, service),
            (StreamKind::Terminal, StreamKind::Terminal)
                | (StreamKind::Tcp | StreamKind::Http, StreamKind::Tcp)
        )
    }
}

/// The first frame on every non-control stream: which service it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// Name of a service of the manifest.
    pub service: String,
    /// What the opener means to carry.
    pub kind: StreamKind,
    /// For a terminal: the size and who is asking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<TerminalOpen>,
    /// The operator the stream is for, as the server authenticated them
    /// (never as the operator said): the agent can tell its customer who
    /// came in, and the server counts each operator's streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

impl StreamHeader {
    /// A header for `service` carrying `kind`.
    pub fn new(service: impl Into<String>, kind: StreamKind) -> Self {
        StreamHeader {
            service: service.into(),
            kind,
            terminal: None,
            operator: None,
        }
    }

    /// The same header, for `operator`.
    pub fn opened_by(mut self, operator: impl Into<String>) -> Self {
        self.operator = Some(operator.into());
        self
    }
}

/// What a terminal stream asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalOpen {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
    /// The operator's user name, shown to the customer as `RTUNNEL_OPERATOR`.
    pub operator: String,
    /// A shared terminal: how this participant takes part. Set, the agent
    /// keeps the shell when the stream ends (for `--terminal-detach-timeout`),
    /// lets others attach, and sends [`TermMsg::Event`]s; unset (older
    /// servers), the shell ends with the stream.
    ///
    /// [`TermMsg::Event`]: crate::terminal::TermMsg::Event
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TerminalMode>,
    /// Attach to this live terminal instead of starting a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<uuid::Uuid>,
    /// Only list the live terminals (one `list` event), start nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list: bool,
    /// A new terminal where one participant at a time types (the
    /// controller, at first the one who starts it), handed over with
    /// [`TermMsg::Control`].
    ///
    /// [`TermMsg::Control`]: crate::terminal::TermMsg::Control
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moderated: bool,
    /// Send the shell's output as [`TermMsg::Output`], with its position,
    /// so the server records each byte once whichever participant's stream
    /// brings it (only with [`mode`](Self::mode); older agents ignore it
    /// and send [`TermMsg::Data`]).
    ///
    /// [`TermMsg::Output`]: crate::terminal::TermMsg::Output
    /// [`TermMsg::Data`]: crate::terminal::TermMsg::Data
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub positions: bool,
}

/// How a participant takes part in a shared terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TerminalMode {
    /// Types and sees (the one who started it, and those who join).
    Join,
    /// Sees only: keystrokes are dropped.
    Watch,
}

impl TerminalMode {
    /// `join` or `watch`.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalMode::Join => "join",
            TerminalMode::Watch => "watch",
        }
    }
}

/// Longest operator name in a [`TerminalOpen`].
pub const MAX_OPERATOR_NAME: usize = 128;

/// Why a stream was refused: one stable code, the same in the stream reply
/// on the wire, in the HTTP API's error envelope and in the logs, wherever
/// the refusal was made (the agent, this node, the node holding the tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RefusalCode {
    /// The header broke a rule.
    BadStreamHeader,
    /// The service is not in the manifest.
    UnknownService,
    /// The stream's kind does not fit the service.
    UnsupportedKind,
    /// The agent offers no terminal.
    TerminalUnavailable,
    /// The terminal to attach to is gone (its shell ended, or it was
    /// detached longer than the agent keeps it).
    TerminalNotFound,
    /// The agent could not reach the service (refused, timed out, TLS).
    #[serde(alias = "dial_failed")]
    ServiceUnreachable,
    /// The user's role does not allow it.
    Forbidden,
    /// The user holds no grant on the system.
    NoGrant,
    /// The user is disabled.
    UserDisabled,
    /// The API token the stream was opened with is revoked or expired.
    TokenRevoked,
    /// The login the stream was opened with ended.
    LoginEnded,
    /// The tunnel carries as many streams as it may.
    TooManyStreams,
    /// The operator holds as many of the tunnel's streams as one may.
    UserStreamLimit,
    /// The session is in its grace period: the agent is on its way back.
    AgentReconnecting,
    /// The session is closed or expired.
    SessionEnded,
    /// The agent is not connected, or its tunnel failed.
    AgentUnavailable,
    /// The agent did not answer in time.
    AgentTimeout,
    /// The server could not decide or record (its store is away).
    Unavailable,
    /// The customer refused the operator's access (`--consent approve`),
    /// or did not answer in time.
    ConsentDenied,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Other,
}

impl RefusalCode {
    /// The code as written on the wire, such as `unknown_service`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::BadStreamHeader => "bad_stream_header",
            RefusalCode::UnknownService => "unknown_service",
            RefusalCode::UnsupportedKind => "unsupported_kind",
            RefusalCode::TerminalUnavailable => "terminal_unavailable",
            RefusalCode::TerminalNotFound => "terminal_not_found",
            RefusalCode::ServiceUnreachable => "service_unreachable",
            RefusalCode::Forbidden => "forbidden",
            RefusalCode::NoGrant => "no_grant",
            RefusalCode::UserDisabled => "user_disabled",
            RefusalCode::TokenRevoked => "token_revoked",
            RefusalCode::LoginEnded => "login_ended",
            RefusalCode::TooManyStreams => "too_many_streams",
            RefusalCode::UserStreamLimit => "user_stream_limit",
            RefusalCode::AgentReconnecting => "agent_reconnecting",
            RefusalCode::SessionEnded => "session_ended",
            RefusalCode::AgentUnavailable => "agent_unavailable",
            RefusalCode::AgentTimeout => "agent_timeout",
            RefusalCode::Unavailable => "unavailable",
            RefusalCode::ConsentDenied => "consent_denied",
            RefusalCode::Other => "other",
        }
    }

    /// The code of an access decision's denial (`forbidden`, `no_grant`,
    /// `user_disabled`, `token_revoked`, `login_ended`); `None` for any
    /// other text.
    pub fn of_denial(code: &str) -> Option<RefusalCode> {
        Some(match code {
            "forbidden" => RefusalCode::Forbidden,
            "no_grant" => RefusalCode::NoGrant,
            "user_disabled" => RefusalCode::UserDisabled,
            "token_revoked" => RefusalCode::TokenRevoked,
            "login_ended" => RefusalCode::LoginEnded,
            _ => return None,
        })
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused stream: its stable code and a human readable reason (at most
/// [`MAX_REASON_BYTES`]). Displays as the reason, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// Stable code.
    pub code: RefusalCode,
    /// Human readable detail.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `code` and `reason` (cut to [`MAX_REASON_BYTES`]).
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        truncate_utf8(&mut reason, MAX_REASON_BYTES);
        Refusal { code, reason }
    }

    /// A refusal as received from a peer, made safe to log and show: the
    /// reason cut to [`MAX_REASON_BYTES`], control characters (terminal
    /// escapes, newlines) replaced by spaces.
    pub fn from_peer(self) -> Self {
        let reason: String = self
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Refusal::new(self.code, reason)
    }

    /// Whether an agent may refuse a stream with this code: what is about
    /// its services and its terminal. The server's own codes (access,
    /// limits, sessions) never come from an agent.
    pub fn is_agent_code(code: RefusalCode) -> bool {
        matches!(
            code,
            RefusalCode::BadStreamHeader
                | RefusalCode::UnknownService
                | RefusalCode::UnsupportedKind
                | RefusalCode::TerminalUnavailable
                | RefusalCode::TerminalNotFound
                | RefusalCode::ServiceUnreachable
                | RefusalCode::ConsentDenied
                | RefusalCode::Other
        )
    }
}

/// The accepting side's answer to a [`StreamHeader`]: `{"status":"ok"}`,
/// or `{"status":"refused","code","reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StreamReply {
    /// The target is connected; payload may flow.
    Ok,
    /// The stream is refused; it will be closed after this frame.
    Refused(Refusal),
    /// Not yet: the agent waits for something (the customer's approval)
    /// and answers `ok` or `refused` within `wait_ms`; the opener waits
    /// that long instead of its usual deadline.
    Pending {
        /// What it waits for, for people.
        reason: String,
        /// How long, at most, in milliseconds.
        wait_ms: u64,
    },
}

impl StreamReply {
    /// A refusal with a stable `code` and a human readable `reason`.
    pub fn refused(code: RefusalCode, reason: impl Into<String>) -> Self {
        StreamReply::Refused(Refusal::new(code, reason))
    }
}

impl From<Refusal> for StreamReply {
    fn from(r: Refusal) -> Self {
        StreamReply::Refused(r)
    }
}

/// Everything that can be wrong with a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The length prefix announces more than the limit for this frame.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit for this kind of frame.
        max: usize,
    },
    /// The body is not valid JSON for the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A service name breaks the naming rules.
    #[error("invalid service name {0:?}: names match ^[a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?$")]
    InvalidServiceName(String),
    /// A manifest lists too many services or the same name twice.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
}

/// Encodes `msg` as one frame: length prefix and JSON body.
///
/// Panics never; messages built by this crate always fit their limits, and
/// an oversized one is caught by the peer's decoder.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain data types cannot fail.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(FRAME_PREFIX_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads the length prefix at the start of `buf`, if complete, checking it
/// against `max` before anything is allocated.
pub fn body_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtoError> {
    let Some(prefix) = buf.get(..FRAME_PREFIX_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > max {
        return Err(ProtoError::TooLarge { len, max });
    }
    Ok(Some(len))
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the message and the
/// number of bytes it used.
pub fn decode<T: for<'de> Deserialize<'de> + Validate>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, ProtoError> {
    let Some(len) = body_len(buf, max)? else {
        return Ok(None);
    };
    let end = FRAME_PREFIX_BYTES + len;
    let Some(body) = buf.get(FRAME_PREFIX_BYTES..end) else {
        return Ok(None);
    };
    let msg = decode_body::<T>(body)?;
    Ok(Some((msg, end)))
}

/// Decodes and validates a frame body (without its length prefix).
pub fn decode_body<T: for<'de> Deserialize<'de> + Validate>(body: &[u8]) -> Result<T, ProtoError> {
    let msg: T = serde_json::from_slice(body).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    msg.validate()?;
    Ok(msg)
}

/// Decodes one control frame from the front of `buf` (see [`decode`]).
pub fn decode_control(buf: &[u8]) -> Result<Option<(Control, usize)>, ProtoError> {
    decode(buf, MAX_CONTROL_FRAME_BYTES)
}

/// Decodes one stream header from the front of `buf` (see [`decode`]).
pub fn decode_stream_header(buf: &[u8]) -> Result<Option<(StreamHeader, usize)>, ProtoError> {
    decode(buf, MAX_STREAM_HEADER_BYTES)
}

/// Decodes one stream reply from the front of `buf` (see [`decode`]).
pub fn decode_stream_reply(buf: &[u8]) -> Result<Option<(StreamReply, usize)>, ProtoError> {
    decode(buf, MAX_STREAM_HEADER_BYTES)
}

/// Checks a decoded message beyond what its type says.
pub trait Validate {
    /// Returns an error when the message breaks a protocol rule.
    fn validate(&self) -> Result<(), ProtoError>;
}

impl Validate for Control {
    fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Control::Manifest { services } => validate_manifest(services),
            Control::Close { reason, .. } if reason.len() > MAX_REASON_BYTES => Err(
                ProtoError::Malformed(format!("close reason longer than {MAX_REASON_BYTES} bytes")),
            ),
            Control::Hello { software, .. } if software.len() > MAX_REASON_BYTES => Err(
                ProtoError::Malformed(format!("software longer than {MAX_REASON_BYTES} bytes")),
            ),
            Control::Hello {
                resume: Some(r), ..
            } if r.token.len() > MAX_TOKEN_BYTES => Err(ProtoError::Malformed(format!(
                "reconnect token longer than {MAX_TOKEN_BYTES} bytes"
            ))),
            _ => Ok(()),
        }
    }
}

impl Validate for StreamHeader {
    fn validate(&self) -> Result<(), ProtoError> {
        validate_service_name(&self.service)?;
        if let Some(t) = &self.terminal {
            crate::terminal::check_size(t.cols, t.rows)?;
            validate_operator(&t.operator)?;
        }
        if let Some(operator) = &self.operator {
            validate_operator(operator)?;
        }
        Ok(())
    }
}

fn validate_operator(name: &str) -> Result<(), ProtoError> {
    if name.is_empty() || name.len() > MAX_OPERATOR_NAME || name.chars().any(char::is_control) {
        return Err(ProtoError::Malformed(format!(
            "operator name must be 1 to {MAX_OPERATOR_NAME} printable characters"
        )));
    }
    Ok(())
}

impl Validate for StreamReply {
    fn validate(&self) -> Result<(), ProtoError> {
        Ok(())
    }
}

/// Checks a service name against `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`.
pub fn validate_service_name(name: &str) -> Result<(), ProtoError> {
    let bytes = name.as_bytes();
    let ok_inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_SERVICE_NAME_BYTES
        && bytes.iter().all(ok_inner)
        && bytes.first().is_some_and(ok_edge)
        && bytes.last().is_some_and(ok_edge);
    if valid {
        Ok(())
    } else {
        let mut shown = name.to_owned();
        truncate_utf8(&mut shown, 80);
        Err(ProtoError::InvalidServiceName(shown))
    }
}

/// Checks a manifest: service count, names, no duplicates.
pub fn validate_manifest(services: &[ServiceInfo]) -> Result<(), ProtoError> {
    if services.len() > MAX_MANIFEST_SERVICES {
        return Err(ProtoError::InvalidManifest(format!(
            "{} services listed, at most {MAX_MANIFEST_SERVICES} allowed",
            services.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(services.len());
    for s in services {
        validate_service_name(&s.name)?;
        if s.target.as_ref().is_some_and(|t| t.len() > 255) {
            return Err(ProtoError::InvalidManifest(format!(
                "target of service {} is longer than 255 bytes",
                s.name
            )));
        }
        if let HostHeader::Fixed(name) = &s.host_header {
            validate_host_header(name)?;
        }
        if !seen.insert(s.name.as_str()) {
            return Err(ProtoError::InvalidManifest(format!(
                "service {} is listed twice",
                s.name
            )));
        }
    }
    Ok(())
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            kind: StreamKind::Tcp,
            target: Some("127.0.0.1:22".into()),
            tls: false,
            host_header: Default::default(),
            consent: Default::default(),
            shared: false,
        }
    }

    #[test]
    fn control_messages_round_trip() {
        let msgs = [
            Control::Hello {
                version: PROTOCOL_VERSION,
                software: "rtunnel-agent/0.1.0".into(),
                resume: None,
            },
            Control::Hello {
                version: PROTOCOL_VERSION,
                software: "rtunnel-agent/0.1.0".into(),
                resume: Some(Resume {
                    session_id: crate::ids::SessionId::new(),
                    token: "t".into(),
                }),
            },
            Control::Welcome {
                version: 1,
                session_id: crate::ids::SessionId::new(),
                heartbeat_interval_ms: 15_000,
                reconnect_token: Some("r".into()),
            },
            Control::Manifest {
                services: vec![svc("ssh"), svc("web-ui")],
            },
            Control::Heartbeat { seq: 7 },
            Control::Close {
                code: CloseCode::SessionClosed,
                reason: "closed by admin".into(),
            },
        ];
        for msg in msgs {
            let bytes = encode(&msg);
            let (back, used) = decode_control(&bytes).unwrap().unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, bytes.len());
        }
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let bytes = encode(&Control::Heartbeat { seq: 1 });
        for cut in 0..bytes.len() {
            assert_eq!(decode_control(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let mut bytes = ((MAX_CONTROL_FRAME_BYTES + 1) as u32)
            .to_be_bytes()
            .to_vec();
        bytes.extend_from_slice(b"{");
        assert_eq!(
            decode_control(&bytes),
            Err(ProtoError::TooLarge {
                len: MAX_CONTROL_FRAME_BYTES + 1,
                max: MAX_CONTROL_FRAME_BYTES
            })
        );
        let header = ((MAX_STREAM_HEADER_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(
            decode_stream_header(&header),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    #[test]
    fn manifest_limits_are_enforced() {
        let many: Vec<_> = (0..=MAX_MANIFEST_SERVICES)
            .map(|i| svc(&format!("s{i}")))
            .collect();
        let msg = Control::Manifest { services: many };
        assert!(matches!(
            decode_control(&encode(&msg)),
            Err(ProtoError::InvalidManifest(_)) | Err(ProtoError::TooLarge { .. })
        ));
        let dup = Control::Manifest {
            services: vec![svc("ssh"), svc("ssh")],
        };
        assert!(matches!(
            decode_control(&encode(&dup)),
            Err(ProtoError::InvalidManifest(m)) if m.contains("twice")
        ));
    }

    #[test]
    fn service_names_follow_the_contract() {
        for good in ["a", "ssh", "web-ui", "a1", "0", &"x".repeat(63)] {
            assert_eq!(validate_service_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "web_ui",
            "a.b",
            "é",
            &"x".repeat(64),
            "a b",
        ] {
            assert!(validate_service_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_header_rejects_bad_names_and_junk() {
        let good = encode(&StreamHeader {
            service: "ssh".into(),
            kind: StreamKind::Tcp,
            terminal: None,
            operator: None,
        });
        assert!(decode_stream_header(&good).unwrap().is_some());
        let bad = encode(&StreamHeader {
            service: "../etc".into(),
            kind: StreamKind::Tcp,
            terminal: None,
            operator: None,
        });
        assert!(matches!(
            decode_stream_header(&bad),
            Err(ProtoError::InvalidServiceName(_))
        ));
        let mut junk = 3u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"{{{");
        assert!(matches!(
            decode_stream_header(&junk),
            Err(ProtoError::Malformed(_))
        ));
        let mut unknown_kind = Vec::new();
        let body = br#"{"service":"ssh","kind":"udp"}"#;
        unknown_kind.extend_from_slice(&(body.len() as u32).to_be_bytes());
        unknown_kind.extend_from_slice(body);
        assert!(decode_stream_header(&unknown_kind).is_err());
    }

    #[test]
    fn refusal_reasons_are_bounded() {
        let r = StreamReply::refused(RefusalCode::Other, "é".repeat(1000));
        let StreamReply::Refused(Refusal { reason, .. }) = r else {
            panic!("not refused")
        };
        assert!(reason.len() <= MAX_REASON_BYTES);
    }

    #[test]
    fn a_refusal_on_the_wire_is_a_status_a_code_and_a_reason() {
        let reply = StreamReply::refused(RefusalCode::UnknownService, "no db");
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "refused", "code": "unknown_service", "reason": "no db"})
        );
        let back: StreamReply = serde_json::from_value(json).unwrap();
        assert_eq!(back, reply);
        assert_eq!(
            serde_json::to_value(StreamReply::Ok).unwrap(),
            serde_json::json!({"status": "ok"})
        );
        // A newer peer's code is kept as a refusal; an older agent's
        // `dial_failed` is today's `service_unreachable`.
        let newer: Refusal =
            serde_json::from_str(r#"{"code":"consent_pending","reason":"wait"}"#).unwrap();
        assert_eq!(newer.code, RefusalCode::Other);
        let older: Refusal =
            serde_json::from_str(r#"{"code":"dial_failed","reason":"refused"}"#).unwrap();
        assert_eq!(older.code, RefusalCode::ServiceUnreachable);
    }

    #[test]
    fn a_peers_refusal_is_cleaned_before_anyone_sees_it() {
        let hostile = Refusal {
            code: RefusalCode::ServiceUnreachable,
            reason: format!("\u{1b}]0;owned\u{7}line\nbreak{}", "x".repeat(2000)),
        };
        let clean = hostile.from_peer();
        assert!(
            !clean.reason.chars().any(char::is_control),
            "{:?}",
            clean.reason
        );
        assert!(clean.reason.len() <= MAX_REASON_BYTES);
        assert!(clean.reason.contains("line break"));
        assert!(Refusal::is_agent_code(RefusalCode::ServiceUnreachable));
        assert!(!Refusal::is_agent_code(RefusalCode::LoginEnded));
    }

    #[test]
    fn every_refusal_code_is_written_as_its_name() {
        use RefusalCode::*;
        for code in [
            BadStreamHeader,
            UnknownService,
            UnsupportedKind,
            TerminalUnavailable,
            ServiceUnreachable,
            Forbidden,
            NoGrant,
            UserDisabled,
            TokenRevoked,
            LoginEnded,
            TooManyStreams,
            UserStreamLimit,
            AgentReconnecting,
            SessionEnded,
            AgentUnavailable,
            AgentTimeout,
            Unavailable,
            Other,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
            if let Some(denial) = RefusalCode::of_denial(code.as_str()) {
                assert_eq!(denial, code);
            }
        }
    }
}

/// The property the `proto_frames` fuzz target checks, shared with the
/// corpus replay test so both run the same code. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Runs `check` on every file of the committed corpus of `target`
    /// (`fuzz/corpus/<target>` from the workspace's root `root`), as the
    /// replay tests of every crate do; panics on fewer than `min` files.
    pub fn replay_corpus(root: &std::path::Path, target: &str, min: usize, check: fn(&[u8])) {
        let dir = root.join("fuzz/corpus").join(target);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("the fuzz corpus is committed") {
            let path = entry.expect("readable corpus entry").path();
            let data = std::fs::read(&path).expect("readable corpus file");
            check(&data);
            count += 1;
        }
        assert!(
            count >= min,
            "only {count} corpus files in {}",
            dir.display()
        );
    }

    /// Decoders never panic, never accept more than their limit, and what
    /// they accept re-encodes to a frame that decodes to the same message.
    pub fn check_frames(data: &[u8]) {
        if let Ok(Some((msg, used))) = decode_control(data) {
            assert!(used <= data.len() && used <= FRAME_PREFIX_BYTES + MAX_CONTROL_FRAME_BYTES);
            let again = encode(&msg);
            assert_eq!(
                decode_control(&again).ok().flatten().map(|(m, _)| m),
                Some(msg)
            );
        }
        if let Ok(Some((hdr, used))) = decode_stream_header(data) {
            assert!(used <= FRAME_PREFIX_BYTES + MAX_STREAM_HEADER_BYTES);
            assert!(validate_service_name(&hdr.service).is_ok());
            let again = encode(&hdr);
            assert_eq!(
                decode_stream_header(&again).ok().flatten().map(|(h, _)| h),
                Some(hdr)
            );
        }
        if let Ok(Some((reply, used))) = decode_stream_reply(data) {
            assert!(used <= FRAME_PREFIX_BYTES + MAX_STREAM_HEADER_BYTES);
            let _ = encode(&reply);
        }
        // The body decoders on their own, without a length prefix.
        let _ = decode_body::<Control>(data);
        let _ = decode_body::<StreamHeader>(data);
    }
}
