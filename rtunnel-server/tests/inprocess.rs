//! Server and agent as libraries in one process, on real loopback sockets:
//! the paths a user cannot easily reach from the command line.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use rtunnel_agent::terminal::TerminalConfig;
use rtunnel_agent::{Agent, ForwardConfig, ForwardError, Forwarder, parse_services};
use rtunnel_core::frame::{read_frame, write_frame};
use rtunnel_core::ids::{SessionId, SystemId, UserId};
use rtunnel_core::proto::{
    MAX_STREAM_HEADER_BYTES, Refusal, RefusalCode, StreamHeader, StreamKind, StreamReply,
    TerminalOpen,
};
use rtunnel_core::store::sql::SqlStore;
use rtunnel_core::store::{
    ApiTokenRecord, AuditEvent, AuditSink, IdentityStore, Millis, Page, Paged, Role, StoreError,
    System, User, now_millis,
};
use rtunnel_server::{AppState, Server, ServerConfig, Stores, enroll};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use support::{echo_service, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

struct Harness {
    _tmp: tempfile::TempDir,
    state: Arc<AppState>,
    base: String,
    session: SessionId,
    system: SystemId,
    key: String,
    secret: String,
}

/// An audit sink that fails while its switch is on: the audit store going
/// down under a running server, on demand.
struct SwitchableAudit {
    inner: Arc<dyn AuditSink>,
    failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl AuditSink for SwitchableAudit {
    async fn record(&self, event: &AuditEvent) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("audit store unreachable (test)".into()));
        }
        self.inner.record(event).await
    }
}

/// An identity store that counts the reads an access decision makes
/// (users, tokens, grants): how often open connections ask the database.
struct CountingIdentity {
    inner: Arc<dyn IdentityStore>,
    reads: Arc<AtomicUsize>,
}

impl CountingIdentity {
    fn read(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl IdentityStore for CountingIdentity {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        self.inner.create_user(user).await
    }
    async fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.inner.user_by_name(name).await
    }
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read();
        self.inner.user_by_id(id).await
    }
    async fn list_users(&self, page: Page) -> Result<Paged<User>, StoreError> {
        self.inner.list_users(page).await
    }
    async fn set_user_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError> {
        self.inner.set_user_disabled(id, disabled).await
    }
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        self.inner.delete_user(id).await
    }
    async fn existing_systems(&self, ids: &[SystemId]) -> Result<Vec<SystemId>, StoreError> {
        self.inner.existing_systems(ids).await
    }
    async fn set_user_role(&self, id: UserId, role: Role) -> Result<bool, StoreError> {
        self.inner.set_user_role(id, role).await
    }
    async fn set_password_hash(&self, id: UserId, hash: Option<&str>) -> Result<bool, StoreError> {
        self.inner.set_password_hash(id, hash).await
    }
    async fn password_hash(&self, id: UserId) -> Result<Option<String>, StoreError> {
        self.inner.password_hash(id).await
    }
    async fn create_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        self.inner.create_api_token(token).await
    }
    async fn api_token(&self, id: Uuid) -> Result<Option<ApiTokenRecord>, StoreError> {
        self.read();
        self.inner.api_token(id).await
    }
    async fn list_api_tokens(
        &self,
        user_id: Option<UserId>,
        page: Page,
    ) -> Result<Paged<ApiTokenRecord>, StoreError> {
        self.inner.list_api_tokens(user_id, page).await
    }
    async fn revoke_api_token(&self, id: Uuid, now: Millis) -> Result<bool, StoreError> {
        self.inner.revoke_api_token(id, now).await
    }
    async fn create_system(&self, system: &System) -> Result<(), StoreError> {
        self.inner.create_system(system).await
    }
    async fn system(&self, id: SystemId) -> Result<Option<System>, StoreError> {
        self.inner.system(id).await
    }
    async fn system_by_name(&self, name: &str) -> Result<Option<System>, StoreError> {
        self.inner.system_by_name(name).await
    }
    async fn set_system_secret(&self, id: SystemId, secret_hash: &str) -> Result<bool, StoreError> {
        self.inner.set_system_secret(id, secret_hash).await
    }
    async fn rename_system(&self, id: SystemId, name: &str) -> Result<bool, StoreError> {
        self.inner.rename_system(id, name).await
    }
    async fn list_grants(
        &self,
        user_id: Option<UserId>,
        system_id: Option<SystemId>,
        now: Millis,
        page: Page,
    ) -> Result<Paged<rtunnel_core::store::GrantRecord>, StoreError> {
        self.inner.list_grants(user_id, system_id, now, page).await
    }
    async fn system_by_key(&self, key: &str) -> Result<Option<System>, StoreError> {
        self.inner.system_by_key(key).await
    }
    async fn delete_system(&self, id: SystemId) -> Result<bool, StoreError> {
        self.inner.delete_system(id).await
    }
    async fn list_systems(
        &self,
        granted_to: Option<UserId>,
        now: Millis,
        page: Page,
    ) -> Result<Paged<System>, StoreError> {
        self.inner.list_systems(granted_to, now, page).await
    }
    async fn grant(
        &self,
        user_id: UserId,
        system_id: SystemId,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.inner.grant(user_id, system_id, expires_at, now).await
    }
    async fn revoke(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.inner.revoke(user_id, system_id, now).await
    }
    async fn has_grant(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.read();
        self.inner.has_grant(user_id, system_id, now).await
    }
    async fn grant_until(
        &self,
        user_id: UserId,
        system_id: SystemId,
        now: Millis,
    ) -> Result<Option<Option<Millis>>, StoreError> {
        self.read();
        self.inner.grant_until(user_id, system_id, now).await
    }
    async fn access_epoch(&self) -> Result<i64, StoreError> {
        self.inner.access_epoch().await
    }
}

async fn harness() -> Harness {
    harness_with(Arc::new(AtomicBool::new(false))).await
}

async fn harness_with(audit_failing: Arc<AtomicBool>) -> Harness {
    harness_full(audit_failing, Duration::from_millis(100), 64).await
}

/// A harness whose agent also offers the built-in terminal.
async fn harness_with_terminal() -> Harness {
    build_harness(
        Arc::new(AtomicBool::new(false)),
        Duration::from_millis(100),
        64,
        true,
        None,
    )
    .await
}

async fn harness_full(
    audit_failing: Arc<AtomicBool>,
    reconnect_delay: Duration,
    max_streams_per_tunnel: usize,
) -> Harness {
    build_harness(
        audit_failing,
        reconnect_delay,
        max_streams_per_tunnel,
        false,
        None,
    )
    .await
}

async fn build_harness(
    audit_failing: Arc<AtomicBool>,
    reconnect_delay: Duration,
    max_streams_per_tunnel: usize,
    terminal: bool,
    identity_reads: Option<Arc<AtomicUsize>>,
) -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: tmp.path().to_owned(),
        max_streams_per_tunnel,
        ..ServerConfig::default()
    };
    let store = SqlStore::open(&tmp.path().join("rtunnel.db"))
        .await
        .unwrap();
    let mut stores = Stores::sqlite(store);
    stores.audit = Arc::new(SwitchableAudit {
        inner: stores.audit.clone(),
        failing: audit_failing,
    });
    if let Some(reads) = identity_reads {
        stores.identity = Arc::new(CountingIdentity {
            inner: stores.identity.clone(),
            reads,
        });
    }
    let server = Server::builder()
        .config(config)
        .stores(stores)
        .build()
        .await
        .unwrap();
    let state = server.state().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    let (system, enrolled) = enroll::new_system("box");
    state.stores.identity.create_system(&system).await.unwrap();
    let echo = echo_service().await;
    let agent = Agent::builder()
        .url(format!("ws://{addr}/api/v1/tunnel"))
        .credentials(enrolled.key.clone(), enrolled.secret.clone())
        .services(parse_services(&format!("echo={echo}")).unwrap())
        .reconnect_delay(reconnect_delay)
        .terminal(terminal.then(|| TerminalConfig {
            shell: Some("/bin/sh".into()),
            user: None,
        }))
        .build()
        .unwrap();
    tokio::spawn(async move { agent.run(std::future::pending()).await });
    let session = wait_for("the tunnel", || {
        let state = state.clone();
        async move { state.tunnels.registry.all().first().map(|t| t.session_id) }
    })
    .await;
    Harness {
        _tmp: tmp,
        state,
        base: format!("http://{addr}"),
        session,
        system: system.id,
        key: enrolled.key,
        secret: enrolled.secret,
    }
}

async fn user(h: &Harness, name: &str, role: Role) -> (User, String) {
    let user = User {
        id: UserId::new(),
        name: name.into(),
        role,
        disabled: false,
        created_at: now_millis(),
        email: None,
    };
    h.state.stores.identity.create_user(&user).await.unwrap();
    let (record, token) = enroll::new_api_token(user.id, None);
    h.state
        .stores
        .identity
        .create_api_token(&record)
        .await
        .unwrap();
    (user, token)
}

fn forward_config(h: &Harness, token: &str) -> ForwardConfig {
    ForwardConfig {
        ca_roots: Default::default(),
        server: h.base.clone(),
        token: token.into(),
        target: h.session.into(),
        service: "echo".into(),
        tls_insecure: false,
        proxy: None,
    }
}

/// Opens a stream straight on the agent's tunnel, as the server would.
async fn ask_agent(
    h: &Harness,
    service: &str,
    kind: StreamKind,
) -> (rtunnel_core::mux::MuxStream, StreamReply) {
    ask_agent_with(h, &StreamHeader::new(service, kind)).await
}

/// Opens a stream straight on the agent's tunnel with `header` as it is,
/// as a hostile or broken server could.
async fn ask_agent_with(
    h: &Harness,
    header: &StreamHeader,
) -> (rtunnel_core::mux::MuxStream, StreamReply) {
    let tunnel = h.state.tunnels.registry.by_session(h.session).unwrap();
    let mut s = tunnel.link.open().await.unwrap();
    write_frame(&mut s, header).await.unwrap();
    let reply = read_frame::<StreamReply, _>(&mut s, MAX_STREAM_HEADER_BYTES)
        .await
        .unwrap();
    (s, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_unknown_services_with_a_reason_and_the_tunnel_stays_up() {
    let h = harness().await;
    let (_s, reply) = ask_agent(&h, "not-in-manifest", StreamKind::Tcp).await;
    match reply {
        StreamReply::Refused(Refusal { code, reason }) => {
            assert_eq!(code, RefusalCode::UnknownService);
            assert!(reason.contains("not-in-manifest"), "{reason}");
        }
        other => panic!("the agent dialed something outside its manifest: {other:?}"),
    }
    let (_s, reply) = ask_agent(&h, "echo", StreamKind::Terminal).await;
    assert!(
        matches!(reply, StreamReply::Refused(ref r) if r.code == RefusalCode::TerminalUnavailable)
    );
    // The same tunnel still carries a good stream.
    let (mut s, reply) = ask_agent(&h, "echo", StreamKind::Tcp).await;
    assert_eq!(reply, StreamReply::Ok);
    s.write_all(b"still here").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still here");
    assert_eq!(h.state.tunnels.registry.len(), 1);
}

fn terminal_open(operator: &str) -> Option<TerminalOpen> {
    Some(TerminalOpen {
        mode: None,
        attach: None,
        list: false,
        moderated: false,
        positions: false,
        cols: 80,
        rows: 24,
        operator: operator.into(),
    })
}

fn refusal_code(r: Result<rtunnel_core::mux::MuxStream, ForwardError>) -> &'static str {
    match r {
        Err(ForwardError::Refused(refusal)) => refusal.code.as_str(),
        Err(e) => panic!("not a refusal: {e}"),
        Ok(_) => panic!("the stream was accepted"),
    }
}

/// Finding: `forward` relayed the operator's header to the agent as sent,
/// so a `tcp` header naming the terminal (with terminal settings and a
/// forged operator) got an unrecorded, unaudited shell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_never_opens_a_terminal_whatever_header_the_operator_sends() {
    let h = harness_with_terminal().await;
    let (_, token) = user(&h, "mallory", Role::Admin).await;
    let fwd = Forwarder::connect(forward_config(&h, &token))
        .await
        .unwrap();
    let hostile = [
        StreamHeader {
            service: "terminal".into(),
            kind: StreamKind::Tcp,
            terminal: terminal_open("anyone"),
            operator: None,
        },
        StreamHeader::new("terminal", StreamKind::Tcp),
        StreamHeader {
            service: "terminal".into(),
            kind: StreamKind::Terminal,
            terminal: terminal_open("anyone"),
            operator: None,
        },
        StreamHeader::new("terminal", StreamKind::Http),
        StreamHeader {
            service: "echo".into(),
            kind: StreamKind::Terminal,
            terminal: terminal_open("anyone"),
            operator: None,
        },
    ];
    for header in &hostile {
        let code = refusal_code(fwd.open_with(header).await);
        assert!(
            code == "unsupported_kind" || code == "unknown_service",
            "{header:?} answered {code}"
        );
    }
    // Terminal settings on a good tcp header are not passed on: the echo
    // service answers as always.
    let header = StreamHeader {
        service: "echo".into(),
        kind: StreamKind::Tcp,
        terminal: terminal_open("anyone"),
        operator: None,
    };
    let mut s = fwd.open_with(&header).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    assert!(audited(&h, "terminal_opened").await.items.is_empty());
}

/// The agent's own half: whatever a server sends, a PTY opens only for a
/// terminal stream to the terminal service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_opens_a_pty_only_for_a_terminal_stream() {
    let h = harness_with_terminal().await;
    let mixed = [
        StreamHeader {
            service: "terminal".into(),
            kind: StreamKind::Tcp,
            terminal: terminal_open("anyone"),
            operator: None,
        },
        StreamHeader {
            service: "terminal".into(),
            kind: StreamKind::Http,
            terminal: terminal_open("anyone"),
            operator: None,
        },
        StreamHeader {
            service: "echo".into(),
            kind: StreamKind::Terminal,
            terminal: terminal_open("anyone"),
            operator: None,
        },
    ];
    for header in &mixed {
        let (_s, reply) = ask_agent_with(&h, header).await;
        assert!(
            matches!(reply, StreamReply::Refused(ref r) if r.code == RefusalCode::UnsupportedKind),
            "{header:?} answered {reply:?}"
        );
    }
    let good = StreamHeader {
        service: "terminal".into(),
        kind: StreamKind::Terminal,
        terminal: terminal_open("olga"),
        operator: None,
    };
    let (_s, reply) = ask_agent_with(&h, &good).await;
    assert_eq!(reply, StreamReply::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_and_operators_without_a_grant_cannot_forward() {
    let h = harness().await;
    let (vera, viewer) = user(&h, "vera", Role::Viewer).await;
    let (_, operator) = user(&h, "otto", Role::Operator).await;
    // Without a grant the session is not there for them (404, as an
    // unknown one); a viewer with a grant sees it but may not connect.
    let refusal = |token: String| {
        let config = forward_config(&h, &token);
        async move {
            match Forwarder::connect(config).await {
                Err(ForwardError::Dial(e)) => e.to_string(),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    for token in [viewer.clone(), operator] {
        let text = refusal(token).await;
        assert!(
            text.contains("404") && text.contains("session_not_found"),
            "{text}"
        );
    }
    h.state
        .stores
        .identity
        .grant(vera.id, h.system, None, now_millis())
        .await
        .unwrap();
    let text = refusal(viewer).await;
    assert!(text.contains("403") && text.contains("forbidden"), "{text}");
    match Forwarder::connect(forward_config(&h, "rtk_00000000000000000000000000000000_x")).await {
        Err(ForwardError::Dial(e)) => assert!(e.to_string().contains("401"), "{e}"),
        other => panic!("expected 401, got {other:?}"),
    }
}

/// A grant revoked in the database by someone else (the admin CLI,
/// another machine), without telling this server: new streams are refused
/// and the open one is cut once the node reads the access epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_elsewhere_stops_new_streams_and_cuts_open_ones() {
    let h = harness().await;
    let (op, token) = user(&h, "olga", Role::Operator).await;
    let ids = &h.state.stores.identity;
    ids.grant(op.id, h.system, None, now_millis())
        .await
        .unwrap();
    let (fwd, mut open) = echoing_forward(&h, &token).await;
    ids.revoke(op.id, h.system, now_millis()).await.unwrap();
    let mut buf = [0u8; 1];
    let cut = tokio::time::timeout(support::WAIT, open.read(&mut buf))
        .await
        .expect("the open stream was not cut");
    assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
    // The cut takes the forward's connection along: a stream may fail
    // while it closes, then dialing again olga no longer sees the session.
    // No stream opens.
    support::wait_for("olga to be refused", || async {
        match fwd.open().await {
            Err(ForwardError::Refused(r)) => {
                assert_eq!(r.code, RefusalCode::NoGrant);
                Some(())
            }
            Err(ForwardError::Dial(e)) => {
                assert!(e.to_string().contains("404"), "{e}");
                Some(())
            }
            Err(ForwardError::Stream(_)) => None,
            other => panic!("expected a refusal, got {other:?}"),
        }
    })
    .await;
}

/// A grant with an end: the open forward is cut when it comes, with nothing
/// else changing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_grant_cuts_the_open_forward_when_it_ends() {
    let h = harness().await;
    let (op, token) = user(&h, "olga", Role::Operator).await;
    let ends = now_millis() + 1_500;
    h.state
        .stores
        .identity
        .grant(op.id, h.system, Some(ends), now_millis())
        .await
        .unwrap();
    let (_fwd, mut open) = echoing_forward(&h, &token).await;
    cut_within(&mut open).await;
    assert!(now_millis() >= ends, "cut before the grant ended");
    let cuts = audited(&h, "access_cut").await;
    assert_eq!(cuts.items[0].details["reason"], "no_grant");
}

/// Access is decided once per holder and system and then watched: open
/// connections and new streams do not ask the database again until
/// something changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_forwards_do_not_poll_the_database_for_access() {
    let reads = Arc::new(AtomicUsize::new(0));
    let h = build_harness(
        Arc::new(AtomicBool::new(false)),
        Duration::from_millis(100),
        64,
        false,
        Some(reads.clone()),
    )
    .await;
    let (op, token) = user(&h, "olga", Role::Operator).await;
    h.state
        .stores
        .identity
        .grant(op.id, h.system, None, now_millis())
        .await
        .unwrap();
    let (fwd, _open) = echoing_forward(&h, &token).await;
    // The opening's own decisions (the first stream's, and its watcher's,
    // which may race it and both miss the cache) settle first.
    let mut after_open = reads.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = reads.load(Ordering::SeqCst);
        if now == after_open {
            break;
        }
        after_open = now;
    }
    // Twenty more streams, and a quiet while with all of them open.
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut s = fwd.open().await.unwrap();
        s.write_all(b"ok").await.unwrap();
        let mut two = [0u8; 2];
        s.read_exact(&mut two).await.unwrap();
        streams.push(s);
    }
    tokio::time::sleep(rtunnel_server::ACCESS_POLL * 4).await;
    assert_eq!(
        reads.load(Ordering::SeqCst),
        after_open,
        "access was read again with nothing changed"
    );
    // A change made through the server is heard at once: one new decision.
    h.state.access.watch().changed();
    let s = fwd.open().await.unwrap();
    drop(s);
    assert!(reads.load(Ordering::SeqCst) > after_open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_failure_keeps_the_forward_closed() {
    // The forward endpoint stores forward_opened before upgrading; if that
    // fails the request fails with 503 and nothing opens.
    let failing = Arc::new(AtomicBool::new(false));
    let h = harness_with(failing.clone()).await;
    let (_, token) = user(&h, "ann", Role::Admin).await;
    failing.store(true, Ordering::SeqCst);
    match Forwarder::connect(forward_config(&h, &token)).await {
        Err(ForwardError::Dial(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("503") && text.contains("audit_unavailable"),
                "{text}"
            );
        }
        other => panic!("expected 503, got {other:?}"),
    }
    failing.store(false, Ordering::SeqCst);
    assert!(Forwarder::connect(forward_config(&h, &token)).await.is_ok());
}

/// Sends a request with an optional JSON body; returns status and parsed body.
async fn api(
    h: &Harness,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let addr: std::net::SocketAddr = h.base.trim_start_matches("http://").parse().unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = support::http_raw(addr, &req).await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn assert_envelope(v: &serde_json::Value, code: &str) {
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert_eq!(v["trace_id"].as_str().map(str::len), Some(16), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_paginate_and_every_error_answers_the_envelope() {
    let h = harness().await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let (_, viewer) = user(&h, "val", Role::Viewer).await;
    for i in 0..3 {
        let (status, v) = api(
            &h,
            "POST",
            "/api/v1/systems",
            &admin,
            Some(&format!(r#"{{"name":"extra-{i}"}}"#)),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        assert!(v["secret"].as_str().is_some_and(|s| s.len() >= 40));
    }
    let (status, v) = api(
        &h,
        "GET",
        "/api/v1/systems?page=2&page_size=2",
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["page"].as_u64(),
            v["page_size"].as_u64(),
            v["total"].as_u64()
        ),
        (Some(2), Some(2), Some(4))
    );
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert!(v["items"][0].get("secret_hash").is_none() && v["items"][0].get("secret").is_none());
    let (status, v) = api(
        &h,
        "GET",
        "/api/v1/sessions?page=1&page_size=1&status=active",
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 1);
    // A viewer without a grant sees no systems and no sessions.
    let (_, v) = api(&h, "GET", "/api/v1/sessions", &viewer, None).await;
    assert_eq!(v["total"], 0);
    let (_, v) = api(&h, "GET", "/api/v1/systems", &viewer, None).await;
    assert_eq!(v["total"], 0);

    let cases = [
        (
            "GET",
            "/api/v1/sessions?page_size=501",
            admin.as_str(),
            None,
            400,
            "invalid_pagination",
        ),
        (
            "GET",
            "/api/v1/sessions?page=abc",
            admin.as_str(),
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/api/v1/sessions?status=sleeping",
            admin.as_str(),
            None,
            400,
            "invalid_status",
        ),
        (
            "GET",
            "/api/v1/sessions?sort=name",
            admin.as_str(),
            None,
            400,
            "invalid_sort",
        ),
        (
            "GET",
            "/api/v1/sessions/not-a-uuid",
            admin.as_str(),
            None,
            404,
            "session_not_found",
        ),
        (
            "GET",
            "/api/v1/nowhere",
            admin.as_str(),
            None,
            404,
            "route_not_found",
        ),
        (
            "DELETE",
            "/healthz",
            admin.as_str(),
            None,
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/v1/systems",
            admin.as_str(),
            Some("{bad"),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/api/v1/systems",
            viewer.as_str(),
            Some(r#"{"name":"x"}"#),
            403,
            "forbidden",
        ),
        (
            "GET",
            "/api/v1/sessions",
            "rtk_nope",
            None,
            401,
            "unauthorized",
        ),
    ];
    for (method, path, token, body, want_status, want_code) in cases {
        let (status, v) = api(&h, method, path, token, body).await;
        assert_eq!(status, want_status, "{method} {path}: {v}");
        assert_envelope(&v, want_code);
    }
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(70_000));
    let (status, v) = api(&h, "POST", "/api/v1/systems", &admin, Some(&big)).await;
    assert_eq!(status, 413, "{v}");
    assert_envelope(&v, "body_too_large");
    // A session the caller may not see answers as an unknown one does.
    let session = format!("/api/v1/sessions/{}", h.session);
    let (status, v) = api(&h, "GET", &session, &viewer, None).await;
    assert_eq!(status, 404);
    assert_envelope(&v, "session_not_found");
    for sub in ["services", "logs", "proxy-token", "terminal-ticket"] {
        let path = format!("{session}/{sub}");
        let method = if sub.contains('-') { "POST" } else { "GET" };
        let body = (sub == "proxy-token").then_some(r#"{"service":"echo"}"#);
        let (status, v) = api(&h, method, &path, &viewer, body).await;
        assert_eq!(status, 404, "{path}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_grace_new_streams_hear_the_agent_is_reconnecting_then_work_when_it_is_back() {
    // The agent waits 3 to 6 s before reconnecting: a window to look in.
    let h = harness_full(Arc::new(AtomicBool::new(false)), Duration::from_secs(6), 64).await;
    let (_, token) = user(&h, "ann", Role::Admin).await;
    let fwd = Forwarder::connect(forward_config(&h, &token))
        .await
        .unwrap();
    // Cut the tunnel under the agent.
    h.state
        .tunnels
        .registry
        .by_session(h.session)
        .unwrap()
        .link
        .shutdown();
    wait_for("the session to enter grace", || {
        let state = h.state.clone();
        let id = h.session;
        async move {
            let s = state.stores.sessions.session(id).await.ok()??;
            (s.status == rtunnel_core::store::SessionStatus::GracePeriod).then_some(())
        }
    })
    .await;
    match fwd.open().await {
        Err(ForwardError::Refused(Refusal { code, reason })) => {
            assert_eq!(code, RefusalCode::AgentReconnecting);
            assert!(reason.contains("reconnecting"), "{reason}");
        }
        other => panic!("expected agent_reconnecting, got {other:?}"),
    }
    // A forward can also be opened during grace.
    let fwd2 = Forwarder::connect(forward_config(&h, &token))
        .await
        .unwrap();
    wait_for("the agent to resume its session", || {
        let state = h.state.clone();
        let id = h.session;
        async move { state.tunnels.registry.by_session(id).map(|_| ()) }
    })
    .await;
    for f in [&fwd, &fwd2] {
        let mut s = f.open().await.unwrap();
        s.write_all(b"back").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
    }
    let session = h
        .state
        .stores
        .sessions
        .session(h.session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.status, rtunnel_core::store::SessionStatus::Active);
    assert_eq!(session.grace_until, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_token_is_single_use() {
    use rtunnel_core::control::client_handshake;
    use rtunnel_core::proto::Resume;
    let h = harness().await;
    // Take the current token: the server stores only its hash, so make a new
    // one the way the server does and store it, as if it had been issued.
    let token = rtunnel_auth::secret::generate_secret();
    let hash = rtunnel_auth::secret::hash_secret(&token);
    h.state
        .stores
        .sessions
        .set_reconnect_token(h.session, &hash)
        .await
        .unwrap();
    let resume = Resume {
        session_id: h.session,
        token: token.clone(),
    };
    // First use, through a real tunnel connection, resumes the session.
    let first = dial_tunnel(&h).await;
    let w1 = client_handshake(&*first, "test", Some(resume.clone()))
        .await
        .unwrap();
    assert_eq!(w1.session_id, h.session);
    assert!(w1.reconnect_token.as_deref().is_some_and(|t| t != token));
    // Second use of the same token: refused, a new session is started.
    let second = dial_tunnel(&h).await;
    let w2 = client_handshake(&*second, "test", Some(resume))
        .await
        .unwrap();
    assert_ne!(w2.session_id, h.session);
}

/// A raw tunnel connection with the harness system's credentials.
async fn dial_tunnel(h: &Harness) -> Arc<rtunnel_core::mux::YamuxMux> {
    dial_tunnel_with_close(h).await.0
}

/// [`dial_tunnel`], also returning the WebSocket's close-code handle.
async fn dial_tunnel_with_close(
    h: &Harness,
) -> (
    Arc<rtunnel_core::mux::YamuxMux>,
    rtunnel_core::ws::CloseHandle,
) {
    use base64::Engine;
    let url = format!("ws{}/api/v1/tunnel", h.base.trim_start_matches("http"));
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", h.key, h.secret))
    );
    let ws = rtunnel_agent::dial::dial(&url, &auth, &Default::default())
        .await
        .unwrap();
    let close = ws.close_handle();
    let mux = Arc::new(rtunnel_core::mux::YamuxMux::client(
        ws,
        &rtunnel_core::mux::MuxConfig::default(),
    ));
    (mux, close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_sends_websocket_close_code_4000() {
    use rtunnel_core::control::client_handshake;
    use rtunnel_core::mux::Mux;
    let h = harness().await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    // A hand-driven tunnel that takes the system's session over from the
    // harness's agent and ignores its control stream, so only the
    // WebSocket close can tell it.
    let before = h.state.tunnels.registry.by_session(h.session).unwrap();
    let (mux, close) = dial_tunnel_with_close(&h).await;
    let mut w = client_handshake(&*mux, "test", None).await.unwrap();
    write_frame(
        &mut w.stream,
        &rtunnel_core::proto::Control::Manifest { services: vec![] },
    )
    .await
    .unwrap();
    let session = w.session_id;
    // Its own tunnel, not the one it replaced (same session id).
    wait_for("the hand-driven tunnel to hold the session", || {
        let (state, before) = (h.state.clone(), before.clone());
        async move {
            let now = state.tunnels.registry.by_session(session)?;
            (!Arc::ptr_eq(&now, &before)).then_some(())
        }
    })
    .await;
    let (status, v) = api(
        &h,
        "DELETE",
        &format!("/api/v1/sessions/{session}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    tokio::time::timeout(Duration::from_secs(20), mux.closed())
        .await
        .unwrap();
    assert_eq!(
        close.received(),
        Some(rtunnel_core::ws::CLOSE_SESSION_CLOSED)
    );
    drop(w.stream);
}

/// Finding (review of output positions): an agent could send positioned
/// output where none was asked for, or go back, and have it shown but not
/// recorded. Such an agent breaks the protocol: the terminal ends.
#[tokio::test]
async fn an_agent_whose_terminal_output_goes_back_is_cut_off() {
    use futures::StreamExt;
    use rtunnel_core::control::client_handshake;
    use rtunnel_core::mux::Mux;
    use rtunnel_core::proto::{ServiceInfo, StreamHeader};
    use rtunnel_core::terminal::{TermMsg, read_msg, write_msg};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let h = harness().await;
    let (_, admin) = user(&h, "vic", Role::Admin).await;
    // A hand-driven agent offering a shared terminal.
    let (mux, _close) = dial_tunnel_with_close(&h).await;
    let mut w = client_handshake(&*mux, "test", None).await.unwrap();
    let terminal = ServiceInfo {
        name: "terminal".into(),
        kind: StreamKind::Terminal,
        target: None,
        tls: false,
        host_header: Default::default(),
        consent: Default::default(),
        shared: true,
    };
    let manifest = rtunnel_core::proto::Control::Manifest {
        services: vec![terminal],
    };
    write_frame(&mut w.stream, &manifest).await.unwrap();
    let session = w.session_id;
    wait_for("the hand-driven tunnel to offer its terminal", || {
        let state = h.state.clone();
        async move {
            let tunnel = state.tunnels.registry.by_session(session)?;
            tunnel
                .services()
                .iter()
                .any(|s| s.name == "terminal")
                .then_some(())
        }
    })
    .await;
    let agent = tokio::spawn({
        let mux = mux.clone();
        async move {
            let mut stream = mux.accept().await.unwrap();
            let header: StreamHeader = read_frame(&mut stream, 64 * 1024).await.unwrap();
            assert!(header.terminal.as_ref().unwrap().positions, "{header:?}");
            write_frame(&mut stream, &StreamReply::Ok).await.unwrap();
            let info = format!(
                r#"{{"event":"info","terminal":"{}","started_by":"vic","you":"vic","mode":"join","participants":[]}}"#,
                Uuid::new_v4()
            );
            write_msg(&mut stream, &TermMsg::Event(info.into_bytes()))
                .await
                .unwrap();
            for (at, bytes) in [
                (0, &b""[..]),
                (0, b"seen-1 "),
                (7, b"seen-2 "),
                (3, b"again"),
            ] {
                let msg = TermMsg::Output {
                    at,
                    bytes: bytes.to_vec(),
                };
                write_msg(&mut stream, &msg).await.unwrap();
            }
            // Then it waits: the server ends the stream.
            while let Ok(Some(_)) = read_msg(&mut stream).await {}
        }
    });
    let url = format!(
        "ws{}/api/v1/systems/{}/terminal",
        h.base.trim_start_matches("http"),
        h.system
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let (mut browser, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut shown = String::new();
    let close = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), browser.next())
            .await
            .expect("the terminal ends");
        match msg {
            Some(Ok(Message::Binary(b))) => shown.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("the terminal ended without a close: {other:?}"),
        }
    };
    assert_eq!(shown, "seen-1 seen-2 ", "what went back is not shown");
    assert_eq!(
        u16::from(close.unwrap().code),
        1011,
        "ended as an agent gone"
    );
    tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_forward_that_is_no_websocket_upgrade_or_another_version_is_told_why() {
    let h = harness().await;
    let (_, token) = user(&h, "wanda", Role::Admin).await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/sessions/{}/forward", h.base, h.session);
    let upgrade = |version: Option<&str>| {
        let mut req = http
            .get(&url)
            .bearer_auth(&token)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(v) = version {
            req = req.header("sec-websocket-version", v);
        }
        req.send()
    };
    // Not an upgrade at all.
    let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_envelope(&resp.json().await.unwrap(), "websocket_required");
    // An upgrade of another version, or of none: 426 naming version 13
    // (RFC 6455, section 4.4), with the Upgrade a 426 must carry.
    for version in [Some("8"), Some("13, 8"), None] {
        let resp = upgrade(version).await.unwrap();
        assert_eq!(resp.status(), 426, "{version:?}");
        assert_eq!(resp.headers()["sec-websocket-version"], "13");
        assert_eq!(resp.headers()["upgrade"], "websocket");
        assert_eq!(resp.headers()["connection"], "upgrade");
        assert_envelope(&resp.json().await.unwrap(), "websocket_version_unsupported");
    }
    // Version 13 goes through.
    let resp = upgrade(Some("13")).await.unwrap();
    assert_eq!(resp.status(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_tunnel_limit_are_refused_while_the_others_carry_on() {
    let h = harness_full(
        Arc::new(AtomicBool::new(false)),
        Duration::from_millis(100),
        4,
    )
    .await;
    let forward_as = |name: &'static str| {
        let h = &h;
        async move {
            let (_, token) = user(h, name, Role::Admin).await;
            Forwarder::connect(forward_config(h, &token)).await.unwrap()
        }
    };
    let refusal = |r: Result<rtunnel_core::mux::MuxStream, ForwardError>| match r {
        Err(ForwardError::Refused(Refusal { code, reason })) => (code.as_str(), reason),
        Err(e) => panic!("not a refusal: {e}"),
        Ok(_) => panic!("a stream past the limit was opened"),
    };
    // One operator holds at most half the tunnel's streams...
    let ann = forward_as("ann").await;
    let mut a = ann.open().await.unwrap();
    let mut b = ann.open().await.unwrap();
    let (code, reason) = refusal(ann.open().await);
    assert_eq!(code, "user_stream_limit", "{reason}");
    assert!(reason.contains("2 of this tunnel's streams"), "{reason}");
    // ...so another still gets the rest, until the tunnel is full.
    let bob = forward_as("bob").await;
    let _c = bob.open().await.unwrap();
    let _d = bob.open().await.unwrap();
    let carl = forward_as("carl").await;
    let (code, reason) = refusal(carl.open().await);
    assert_eq!(code, "too_many_streams");
    assert!(reason.contains("4 streams"), "{reason}");
    for s in [&mut a, &mut b] {
        s.write_all(b"ok").await.unwrap();
        let mut got = [0u8; 2];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ok");
    }
    // Closing one frees its place, for its operator.
    a.shutdown().await.unwrap();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).await.unwrap();
    let mut c = wait_for("a free stream", || {
        let ann = ann.clone();
        async move { ann.open().await.ok() }
    })
    .await;
    c.write_all(b"c").await.unwrap();
    let mut got = [0u8; 1];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(h.state.tunnels.registry.len(), 1);
}

/// Finding: one operator could fill the shared ticket store for everyone.
/// Tickets and proxy links come out of a per-user budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_every_ticket() {
    let h = harness().await;
    let (_, ann) = user(&h, "ann", Role::Admin).await;
    let (_, bob) = user(&h, "bob", Role::Admin).await;
    let path = format!("/api/v1/sessions/{}/terminal-ticket", h.session);
    let links = format!("/api/v1/sessions/{}/proxy-token", h.session);
    for i in 0..64 {
        // Tickets and links spend the same budget.
        let (status, v) = if i % 2 == 0 {
            api(&h, "POST", &path, &ann, None).await
        } else {
            api(&h, "POST", &links, &ann, Some(r#"{"service":"echo"}"#)).await
        };
        assert_eq!(status, 200, "{i}: {v}");
    }
    let (status, v) = api(&h, "POST", &path, &ann, None).await;
    assert_eq!(status, 429, "{v}");
    assert_envelope(&v, "too_many_tickets");
    let (status, v) = api(&h, "POST", &links, &ann, Some(r#"{"service":"echo"}"#)).await;
    assert_eq!(status, 429, "{v}");
    let (status, v) = api(&h, "POST", &path, &bob, None).await;
    assert_eq!(status, 200, "another user is not held up: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_failure_keeps_launches_and_resource_changes_from_happening() {
    let failing = Arc::new(AtomicBool::new(false));
    let h = harness_with(failing.clone()).await;
    let (_, token) = user(&h, "ann", Role::Admin).await;
    let body = r#"{"name":"app","metadata":{"external_url":"https://app.example.com"}}"#;
    let (status, v) = api(&h, "POST", "/api/v1/resources", &token, Some(body)).await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();

    failing.store(true, Ordering::SeqCst);
    let launch = format!(r#"{{"resourceId":"{id}","connectionType":"direct"}}"#);
    let (status, v) = api(&h, "POST", "/api/v1/launch", &token, Some(&launch)).await;
    assert_eq!(status, 503, "{v}");
    assert_envelope(&v, "audit_unavailable");
    assert!(v.get("sessionUrl").is_none(), "{v}");
    // A resource created while the audit log is down is not kept.
    let other = r#"{"name":"other"}"#;
    let (status, _) = api(&h, "POST", "/api/v1/resources", &token, Some(other)).await;
    assert_eq!(status, 503);

    failing.store(false, Ordering::SeqCst);
    let (_, v) = api(&h, "GET", "/api/v1/resources", &token, None).await;
    assert_eq!(v["total"], 1, "{v}");
    let (status, v) = api(&h, "POST", "/api/v1/launch", &token, Some(&launch)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["sessionUrl"], "https://app.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_listed_to_admins_with_filters() {
    let h = harness().await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let (_, viewer) = user(&h, "vic", Role::Viewer).await;
    for name in ["r1", "r2", "r3"] {
        let body = format!(r#"{{"name":"{name}"}}"#);
        let (status, _) = api(&h, "POST", "/api/v1/resources", &admin, Some(&body)).await;
        assert_eq!(status, 201);
    }
    let (status, v) = api(
        &h,
        "GET",
        "/api/v1/audit?event=resource_created&page_size=2",
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 3);
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["items"][0]["details"]["resource_name"], "r3",
        "newest first: {v}"
    );
    assert_eq!(v["items"][0]["actor"], "ann");
    let (_, v) = api(
        &h,
        "GET",
        "/api/v1/audit?event=resource_created&until=2000-01-01T00:00:00Z",
        &admin,
        None,
    )
    .await;
    assert_eq!(v["total"], 0, "{v}");
    let (_, v) = api(
        &h,
        "GET",
        "/api/v1/audit?event=resource_created&since=2000-01-01T00:00:00Z",
        &admin,
        None,
    )
    .await;
    assert_eq!(v["total"], 3, "{v}");
    let (status, v) = api(&h, "GET", "/api/v1/audit?since=yesterday", &admin, None).await;
    assert_eq!(status, 400);
    assert_envelope(&v, "invalid_query");
    let (status, v) = api(&h, "GET", "/api/v1/audit", &viewer, None).await;
    assert_eq!(status, 403);
    assert_envelope(&v, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_tickets_are_single_use_bound_to_session_and_role_checked() {
    let h = harness().await;
    let (op, token) = user(&h, "olga", Role::Operator).await;
    let (_, viewer) = user(&h, "vic", Role::Viewer).await;
    let path = format!("/api/v1/sessions/{}/terminal-ticket", h.session);

    // No grant yet: the session is not there for her; a viewer never gets one.
    let (status, v) = api(&h, "POST", &path, &token, None).await;
    assert_eq!(status, 404, "{v}");
    assert_envelope(&v, "session_not_found");
    let ids = &h.state.stores.identity;
    ids.grant(op.id, h.system, None, now_millis())
        .await
        .unwrap();
    // A viewer without a grant does not see the session; with one, gets a
    // ticket that only watches (the terminal endpoint refuses it anything
    // else: tests/shared_terminal.rs).
    let (status, v) = api(&h, "POST", &path, &viewer, None).await;
    assert_eq!(status, 404, "{v}");
    let vic = ids.user_by_name("vic").await.unwrap().unwrap();
    ids.grant(vic.id, h.system, None, now_millis())
        .await
        .unwrap();
    let (status, v) = api(&h, "POST", &path, &viewer, None).await;
    assert_eq!(status, 200, "{v}");

    let (status, v) = api(&h, "POST", &path, &token, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["expires_in"], 30);
    let ticket = v["ticket"].as_str().unwrap().to_owned();
    assert_eq!(ticket.len(), 64);

    // Bound to its session: presenting it for another one spends it.
    let other = SessionId::new();
    let wrong = h.state.tickets.redeem(&ticket, other).await;
    assert_eq!(wrong.unwrap_err().code, "invalid_ticket");
    let (_, v) = api(&h, "POST", &path, &token, None).await;
    let ticket = v["ticket"].as_str().unwrap().to_owned();
    let holder = h.state.tickets.redeem(&ticket, h.session).await.unwrap();
    assert_eq!(holder.user_id, op.id);
    assert_eq!(holder.login, None, "an API token is no login");
    let again = h.state.tickets.redeem(&ticket, h.session).await;
    assert_eq!(
        again.unwrap_err().code,
        "invalid_ticket",
        "a ticket works once"
    );
    let forged = h.state.tickets.redeem(&"0".repeat(64), h.session).await;
    assert_eq!(forged.unwrap_err().code, "invalid_ticket");

    // The viewer's and the operator's two.
    let issued = audited(&h, "terminal_ticket_issued").await;
    assert_eq!(issued.total, 3);
    assert!(issued.items.iter().all(|e| e.session_id == Some(h.session)));
}

/// The audit events of one kind, newest first.
async fn audited(h: &Harness, event: &str) -> rtunnel_core::store::Paged<AuditEvent> {
    let filter = rtunnel_core::store::AuditFilter {
        event: Some(event.into()),
        ..Default::default()
    };
    h.state
        .stores
        .audit_reader
        .list_audit(&filter, Default::default())
        .await
        .unwrap()
}

/// A forward for `token` and one of its streams, shown to echo.
async fn echoing_forward(
    h: &Harness,
    token: &str,
) -> (Arc<Forwarder>, rtunnel_core::mux::MuxStream) {
    let fwd = Forwarder::connect(forward_config(h, token)).await.unwrap();
    let mut s = fwd.open().await.unwrap();
    s.write_all(b"ok").await.unwrap();
    let mut two = [0u8; 2];
    s.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"ok");
    (fwd, s)
}

/// Waits for an open stream to be cut: reads until EOF or an error.
async fn cut_within(s: &mut rtunnel_core::mux::MuxStream) -> Duration {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Err(_) => panic!("the open stream was not cut"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_cuts_an_open_forward_within_a_second() {
    let h = harness().await;
    let (op, token) = user(&h, "olga", Role::Operator).await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let ids = &h.state.stores.identity;

    // Revoked through the API: cut at once.
    ids.grant(op.id, h.system, None, now_millis())
        .await
        .unwrap();
    let (_fwd, mut s) = echoing_forward(&h, &token).await;
    let body = format!(r#"{{"user_id":"{}","system_id":"{}"}}"#, op.id, h.system);
    let (status, v) = api(&h, "DELETE", "/api/v1/grants", &admin, Some(&body)).await;
    assert_eq!(status, 204, "{v}");
    let by_api = cut_within(&mut s).await;

    // Revoked behind the server's back (the admin CLI, another node): cut
    // once the node reads the database's access epoch.
    ids.grant(op.id, h.system, None, now_millis())
        .await
        .unwrap();
    let (_fwd2, mut s) = echoing_forward(&h, &token).await;
    ids.revoke(op.id, h.system, now_millis()).await.unwrap();
    let by_store = cut_within(&mut s).await;
    eprintln!("open forward cut {by_api:?} after an API revoke, {by_store:?} after a store revoke");

    let cuts = audited(&h, "access_cut").await;
    assert_eq!(cuts.total, 2);
    assert_eq!(cuts.items[0].details["reason"], "no_grant");
    let logs = support::wait_for("the access log to record the cut", || async {
        let logs = h
            .state
            .stores
            .sessions
            .list_access(h.session, Default::default())
            .await
            .ok()?;
        (logs
            .items
            .iter()
            .filter(|l| l.error.as_deref() == Some("access revoked"))
            .count()
            == 2)
            .then_some(logs)
    })
    .await;
    assert!(logs.items.iter().all(|l| l.closed_at.is_some()));
}

/// An operator with a grant, an API token and a password login.
struct LoggedIn {
    user: User,
    api_token: String,
    access: String,
    refresh: String,
}

/// Operator "lena": granted the harness's system, logged in with her
/// password.
async fn granted_operator_logged_in(h: &Harness) -> LoggedIn {
    let (op, api_token) = user(h, "lena", Role::Operator).await;
    let ids = &h.state.stores.identity;
    ids.grant(op.id, h.system, None, now_millis())
        .await
        .unwrap();
    let hash = rtunnel_auth::password::hash_password("lena's password").unwrap();
    ids.set_password_hash(op.id, Some(&hash)).await.unwrap();
    let login = r#"{"username":"lena","password":"lena's password"}"#;
    let (status, v) = api(h, "POST", "/api/v1/auth/login", "", Some(login)).await;
    assert_eq!(status, 200, "{v}");
    LoggedIn {
        user: op,
        api_token,
        access: v["access_token"].as_str().unwrap().to_owned(),
        refresh: v["refresh_token"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_or_disabling_the_user_cuts_open_forwards() {
    let h = harness().await;
    let lena = granted_operator_logged_in(&h).await;
    let (op, api_token, access) = (lena.user, lena.api_token, lena.access);
    let (_, admin) = user(&h, "ann", Role::Admin).await;

    // A forward opened with the login's access token ends with the login;
    // one opened with an API token stays.
    let (_fwd, mut by_login) = echoing_forward(&h, &access).await;
    let (_fwd2, mut by_token) = echoing_forward(&h, &api_token).await;
    let (status, v) = api(&h, "POST", "/api/v1/auth/logout", &access, None).await;
    assert_eq!(status, 204, "{v}");
    cut_within(&mut by_login).await;
    by_token.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    by_token.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"hi");

    // Disabling the user cuts everything of theirs.
    let body = r#"{"disabled":true}"#;
    let path = format!("/api/v1/users/{}", op.id);
    let (status, v) = api(&h, "PATCH", &path, &admin, Some(body)).await;
    assert_eq!(status, 200, "{v}");
    let took = cut_within(&mut by_token).await;
    assert!(took < Duration::from_secs(5), "{took:?}");

    let cuts = audited(&h, "access_cut").await;
    let reasons: Vec<_> = cuts
        .items
        .iter()
        .map(|e| e.details["reason"].clone())
        .collect();
    assert!(
        reasons.contains(&serde_json::json!("login_ended")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&serde_json::json!("user_disabled")),
        "{reasons:?}"
    );
}

/// Finding: setting a password left existing logins alive (their refresh
/// tokens kept rotating). It ends them now, and cuts what they opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_a_password_ends_the_user_s_logins_and_cuts_what_they_opened() {
    let h = harness().await;
    let lena = granted_operator_logged_in(&h).await;
    let (op, api_token, access) = (lena.user, lena.api_token, lena.access);
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let refresh = lena.refresh;
    let (_fwd, mut by_login) = echoing_forward(&h, &access).await;
    let (_fwd2, mut by_token) = echoing_forward(&h, &api_token).await;

    let path = format!("/api/v1/users/{}", op.id);
    let body = r#"{"password":"a brand new password"}"#;
    let (status, v) = api(&h, "PATCH", &path, &admin, Some(body)).await;
    assert_eq!(status, 200, "{v}");
    let took = cut_within(&mut by_login).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (status, v) = api(&h, "GET", "/api/v1/sessions", &access, None).await;
    assert_eq!(status, 401, "{v}");
    let body = serde_json::json!({ "refresh_token": refresh }).to_string();
    let (status, v) = api(&h, "POST", "/api/v1/auth/refresh", "", Some(&body)).await;
    assert_eq!(status, 401, "the old login still refreshes: {v}");
    // An API token is a credential of its own: its forward carries on.
    by_token.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    by_token.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"hi");
    // The new password logs in.
    let login = r#"{"username":"lena","password":"a brand new password"}"#;
    let (status, v) = api(&h, "POST", "/api/v1/auth/login", "", Some(login)).await;
    assert_eq!(status, 200, "{v}");
}

/// Finding: API tokens could not be revoked and never expired. Revoking
/// one refuses it at once and cuts what was opened with it; users see and
/// revoke only their own, admins everyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_api_token_is_refused_and_its_forwards_are_cut() {
    let h = harness().await;
    let (op, token) = user(&h, "tom", Role::Admin).await;
    let (_, other) = user(&h, "ola", Role::Operator).await;
    let (_fwd, mut open) = echoing_forward(&h, &token).await;

    let (status, v) = api(&h, "GET", "/api/v1/tokens", &token, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 2, "an admin sees everyone's: {v}");
    let (status, v) = api(&h, "GET", "/api/v1/tokens", &other, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    let path = format!("/api/v1/tokens?user_id={}", op.id);
    let (status, v) = api(&h, "GET", &path, &other, None).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = api(&h, "GET", &path, &token, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["items"][0]["status"], "active", "{v}");
    let id = v["items"][0]["id"].as_str().unwrap().to_owned();

    // Someone else's token is not there for an operator.
    let del = format!("/api/v1/tokens/{id}");
    let (status, v) = api(&h, "DELETE", &del, &other, None).await;
    assert_eq!(status, 404, "{v}");
    assert_envelope(&v, "token_not_found");

    let (status, v) = api(&h, "DELETE", &del, &token, None).await;
    assert_eq!(status, 204, "{v}");
    let took = cut_within(&mut open).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (status, v) = api(&h, "GET", "/api/v1/sessions", &token, None).await;
    assert_eq!(status, 401, "{v}");
    let (_, v) = api(&h, "GET", &path, &other, None).await;
    assert_eq!(v["code"], "forbidden");
    let revoked = audited(&h, "api_token_revoked").await;
    assert_eq!(revoked.items.len(), 1);
    let cuts = audited(&h, "access_cut").await;
    assert_eq!(cuts.items[0].details["reason"], "token_revoked");
    assert!(
        Forwarder::connect(forward_config(&h, &token))
            .await
            .is_err()
    );
    // The owner's list shows it revoked (an admin's view of another's).
    let (_, admin) = user(&h, "ada", Role::Admin).await;
    let (_, v) = api(&h, "GET", &path, &admin, None).await;
    assert_eq!(v["items"][0]["status"], "revoked", "{v}");
    // Revoking again changes nothing.
    let (status, _) = api(&h, "DELETE", &del, &admin, None).await;
    assert_eq!(status, 204);
    assert_eq!(audited(&h, "api_token_revoked").await.items.len(), 1);
}

/// An API token that expires while its forward is open cuts the forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_api_token_cuts_its_forward() {
    let h = harness().await;
    let (ann, _) = user(&h, "ann", Role::Admin).await;
    let (record, token) = enroll::new_api_token(ann.id, Some(now_millis() + 1_500));
    h.state
        .stores
        .identity
        .create_api_token(&record)
        .await
        .unwrap();
    let (_fwd, mut open) = echoing_forward(&h, &token).await;
    cut_within(&mut open).await;
    let (status, _) = api(&h, "GET", "/api/v1/sessions", &token, None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_ends_the_open_streams_of_its_forwards() {
    let h = harness().await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let (_fwd, mut s) = echoing_forward(&h, &admin).await;
    // The operator stays connected and idle; the session is closed.
    let path = format!("/api/v1/sessions/{}", h.session);
    let (status, v) = api(&h, "DELETE", &path, &admin, None).await;
    assert!(status == 200 || status == 204, "{status} {v}");
    let took = cut_within(&mut s).await;
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// An embedder holds the services, not the HTTP API: ending a session
/// through `Lifecycle` stores the ending, cuts the operator's open streams,
/// and a second close is refused by the state machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_ends_a_session_through_the_lifecycle_service() {
    let h = harness().await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let (_fwd, mut s) = echoing_forward(&h, &admin).await;
    let lifecycle: rtunnel_server::Lifecycle = h.state.lifecycle.clone();
    let t = lifecycle
        .try_apply(h.session, rtunnel_core::session::Event::OperatorClosed)
        .await
        .expect("an active session closes");
    assert_eq!(t.next.status, rtunnel_core::store::SessionStatus::Closed);
    let took = cut_within(&mut s).await;
    assert!(took < Duration::from_secs(10), "{took:?}");
    let stored = h.state.stores.sessions.session(h.session).await.unwrap();
    assert_eq!(
        stored.unwrap().status,
        rtunnel_core::store::SessionStatus::Closed
    );
    let again = lifecycle
        .try_apply(h.session, rtunnel_core::session::Event::OperatorClosed)
        .await;
    assert!(
        matches!(again, Err(rtunnel_server::ApplyError::Refused(_))),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_setups_past_the_limit_are_told_to_come_back_later() {
    let h = harness().await;
    use base64::Engine;
    let url = format!("ws{}/api/v1/tunnel", h.base.trim_start_matches("http"));
    let basic = |key: &str, secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
        )
    };
    let auth = basic(&h.key, &h.secret);
    // Raw connections that never say hello stay in setup, each holding one
    // of the server's setup slots (the harness's own agent is active and
    // holds none). One system holds one slot however many it opens: a
    // newer connection takes its setup over.
    // A system enrolled for the test and its `Authorization`.
    let enrolled = |name: String| {
        let (state, basic) = (h.state.clone(), &basic);
        async move {
            let (system, enrolled) = enroll::new_system(&name);
            state.stores.identity.create_system(&system).await.unwrap();
            basic(&enrolled.key, &enrolled.secret)
        }
    };
    let stall = |auth: String| {
        let url = url.clone();
        async move {
            rtunnel_agent::dial::dial(&url, &auth, &Default::default())
                .await
                .unwrap()
        }
    };
    let staller = enrolled("staller".into()).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(stall(staller.clone()).await);
    }
    // Were the older setups still holding slots, the last of the systems
    // below would be refused.
    for i in 1..h.state.config.max_tunnel_setups {
        held.push(stall(enrolled(format!("staller-{i}")).await).await);
    }
    let refused = rtunnel_agent::dial::dial(&url, &auth, &Default::default())
        .await
        .map(|_| ())
        .unwrap_err();
    match &refused {
        rtunnel_agent::dial::DialError::Refused {
            status,
            code,
            retry_after,
            ..
        } => {
            assert_eq!(*status, 503);
            assert_eq!(code, "server_busy");
            let wait = retry_after.expect("a Retry-After").as_secs();
            assert!((2..=20).contains(&wait), "Retry-After {wait}");
        }
        other => panic!("{other}"),
    }
    // A real agent waits exactly what the server asked: with a first
    // reconnect delay of a minute, a backoff on top would wait 30 s or more.
    let agent = rtunnel_agent::agent::Agent::builder()
        .url(url.clone())
        .credentials(h.key.clone(), h.secret.clone())
        .terminal(None)
        .reconnect_delay(Duration::from_secs(60))
        .build()
        .unwrap()
        .spawn();
    let mut status = agent.status();
    let retry_in = wait_for("the agent to be told to come back later", || {
        let now = status.borrow_and_update().clone();
        async move {
            match now {
                rtunnel_agent::agent::AgentStatus::Reconnecting { retry_in, .. } => Some(retry_in),
                _ => None,
            }
        }
    })
    .await;
    assert!(
        (2..=20).contains(&retry_in.as_secs()),
        "the agent waits {retry_in:?}"
    );
    agent.shutdown().await.unwrap();
    // Slots come free as the stuck connections go: the next one is let in.
    drop(held);
    wait_for("a setup slot to come free", || {
        let (url, auth) = (url.clone(), auth.clone());
        async move {
            rtunnel_agent::dial::dial(&url, &auth, &Default::default())
                .await
                .ok()
        }
    })
    .await;
}

/// A client of `GET /api/v1/events`.
struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl EventStream {
    async fn open(h: &Harness, token: &str) -> Self {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v1/events", h.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        EventStream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (name, data), skipping comments; `None` when the
    /// stream ended; panics when nothing comes within 20 s.
    async fn next(&mut self) -> Option<(String, serde_json::Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
                return Some((name, data));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.resp.chunk())
                .await
                .expect("an event within 20 s")
                .ok()??;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event about `session`.
    async fn next_about(&mut self, session: SessionId) -> serde_json::Value {
        loop {
            let (name, data) = self.next().await.expect("the stream stays open");
            if name == "session" && data["id"] == session.to_string() {
                return data;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_tells_each_caller_the_changes_it_may_see() {
    let h = harness().await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let (_, viewer) = user(&h, "vic", Role::Viewer).await;
    let mut admin_events = EventStream::open(&h, &admin).await;
    let mut viewer_events = EventStream::open(&h, &viewer).await;

    // A system the viewer holds no grant on: the admin hears of it, the
    // viewer does not.
    let (status, v) = api(
        &h,
        "POST",
        "/api/v1/systems",
        &admin,
        Some(r#"{"name":"box-two"}"#),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (name, data) = admin_events.next().await.unwrap();
    assert_eq!(name, "system");
    assert_eq!(data["change"], "created");
    assert_eq!(data["id"], v["id"]);

    // Granted the harness's system, the viewer hears its session close;
    // the admin too.
    let vic = h
        .state
        .stores
        .identity
        .user_by_name("vic")
        .await
        .unwrap()
        .unwrap();
    h.state
        .stores
        .identity
        .grant(vic.id, h.system, None, now_millis())
        .await
        .unwrap();
    let path = format!("/api/v1/sessions/{}", h.session);
    let (status, v) = api(&h, "DELETE", &path, &admin, None).await;
    assert_eq!(status, 200, "{v}");
    // The viewer's first event is that one: box-two never reached it.
    let (name, seen) = viewer_events.next().await.unwrap();
    assert_eq!(name, "session", "{seen}");
    assert_eq!(seen["id"], h.session.to_string());
    assert_eq!(seen["status"], "closed");
    assert_eq!(seen["system_id"], h.system.to_string());
    assert_eq!(admin_events.next_about(h.session).await["status"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holds_a_bounded_number_of_event_streams() {
    let h = harness().await;
    let (_, viewer) = user(&h, "vic", Role::Viewer).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(EventStream::open(&h, &viewer).await);
    }
    let (status, v) = api(&h, "GET", "/api/v1/events", &viewer, None).await;
    assert_eq!(status, 429, "{v}");
    assert_envelope(&v, "too_many_event_streams");
    // A closed one gives its place back.
    drop(open.pop());
    let base = h.base.clone();
    wait_for("a stream's place to come back", || {
        let (base, viewer) = (base.clone(), viewer.clone());
        async move {
            let resp = reqwest::Client::new()
                .get(format!("{base}/api/v1/events"))
                .bearer_auth(&viewer)
                .send()
                .await
                .ok()?;
            (resp.status() == 200).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_ends_with_its_login_and_refuses_strangers() {
    let h = harness().await;
    let lena = granted_operator_logged_in(&h).await;
    let mut events = EventStream::open(&h, &lena.access).await;
    let (status, v) = api(&h, "POST", "/api/v1/auth/logout", &lena.access, None).await;
    assert_eq!(status, 204, "{v}");
    assert!(events.next().await.is_none(), "the stream ends at logout");

    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/events", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_envelope(&v, "missing_authorization");
}

/// A browser's cookie jar, by hand: what the server set, sent back.
#[derive(Default)]
struct Jar(std::collections::BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, resp: &reqwest::Response) -> Vec<String> {
        let set: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for c in &set {
            let (pair, _) = c.split_once(';').unwrap_or((c, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), value.to_owned());
            }
        }
        set
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn csrf(&self) -> String {
        self.0["rtunnel_csrf"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_with_strict_cookies_and_csrf_protection() {
    let h = harness().await;
    let (ann, _) = user(&h, "ann", Role::Admin).await;
    let hash = rtunnel_auth::password::hash_password("ann's password").unwrap();
    h.state
        .stores
        .identity
        .set_password_hash(ann.id, Some(&hash))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", h.base);
    let mut jar = Jar::default();

    // Sign in: the tokens go into cookies, never into the answer.
    let resp = http
        .post(url("/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "ann", "password": "ann's password", "cookie": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set = jar.take(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body.get("access_token").is_none(), "{body}");
    assert_eq!(body["user"]["name"], "ann");
    assert_eq!(set.len(), 3, "{set:?}");
    for c in &set {
        assert!(c.contains("SameSite=Strict"), "{c}");
        assert!(!c.contains("Domain"), "{c}");
    }
    assert!(
        set.iter()
            .any(|c| c.starts_with("rtunnel_access=") && c.contains("HttpOnly"))
    );
    assert!(set.iter().any(|c| c.starts_with("rtunnel_refresh=")
        && c.contains("HttpOnly")
        && c.contains("Path=/api/v1/auth/")));

    // Reading needs the cookie only.
    let me = http
        .get(url("/api/v1/auth/me"))
        .header("cookie", jar.header())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.json::<serde_json::Value>().await.unwrap()["role"],
        "admin"
    );

    // A change without the CSRF header, or from another site, is refused.
    let create = |csrf: Option<String>, origin: &str| {
        let mut req = http
            .post(url("/api/v1/systems"))
            .header("cookie", jar.header())
            .header("origin", origin)
            .json(&serde_json::json!({"name": format!("box-{}", rand_suffix())}));
        if let Some(csrf) = csrf {
            req = req.header("x-csrf-token", csrf);
        }
        req.send()
    };
    let here = h.base.clone();
    let resp = create(None, &here).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_envelope(&resp.json().await.unwrap(), "csrf_token_mismatch");
    let resp = create(Some(jar.csrf()), "http://evil.example")
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_envelope(&resp.json().await.unwrap(), "cross_site_request");
    let resp = create(Some(jar.csrf()), &here).await.unwrap();
    assert_eq!(resp.status(), 201);

    // An event stream opened from another site is refused.
    let resp = http
        .get(url("/api/v1/events"))
        .header("cookie", jar.header())
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // The forward endpoint takes no cookie, even from this very site.
    let resp = http
        .get(url(&format!("/api/v1/sessions/{}/forward", h.session)))
        .header("cookie", jar.header())
        .header("origin", here.as_str())
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_envelope(&resp.json().await.unwrap(), "bearer_required");

    // Refresh rotates the cookies; the old refresh cookie replayed ends the
    // login, and with it the new access cookie.
    let old = jar.header();
    let resp = http
        .post(url("/api/v1/auth/refresh"))
        .header("cookie", jar.header())
        .header("x-csrf-token", jar.csrf())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(jar.take(&resp).len(), 3);
    assert_ne!(jar.header(), old);
    let stale_csrf = old
        .split("; ")
        .find_map(|p| p.strip_prefix("rtunnel_csrf="))
        .unwrap()
        .to_owned();
    let replay = http
        .post(url("/api/v1/auth/refresh"))
        .header("cookie", old)
        .header("x-csrf-token", stale_csrf)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    let me = http
        .get(url("/api/v1/auth/me"))
        .header("cookie", jar.header())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the replay ended the whole login");

    // A fresh sign-in, then sign out: the cookies are cleared.
    let mut jar = Jar::default();
    let resp = http
        .post(url("/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "ann", "password": "ann's password", "cookie": true}))
        .send()
        .await
        .unwrap();
    jar.take(&resp);
    let out = http
        .post(url("/api/v1/auth/logout"))
        .header("cookie", jar.header())
        .header("x-csrf-token", jar.csrf())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    jar.take(&out);
    assert!(jar.0.is_empty(), "{:?}", jar.0);
}

fn rand_suffix() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systems_users_grants_and_tokens_can_be_managed_through_the_api() {
    let h = harness().await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let (op, op_token) = user(&h, "olaf", Role::Operator).await;

    // The harness's system is online, with its session and agent version.
    let (status, v) = api(&h, "GET", "/api/v1/systems", &admin, None).await;
    assert_eq!(status, 200, "{v}");
    let sys = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == h.system.to_string())
        .unwrap()
        .clone();
    assert_eq!(sys["online"], true, "{sys}");
    assert_eq!(sys["session"]["id"], h.session.to_string(), "{sys}");
    assert_eq!(sys["session"]["status"], "active");
    assert!(
        sys["agent_software"]
            .as_str()
            .unwrap()
            .starts_with("rtunnel-agent/")
    );

    // A taken name is a clear 409, not a database message, and not audited.
    let name = sys["name"].as_str().unwrap();
    let body = format!(r#"{{"name":"{name}"}}"#);
    let (status, v) = api(&h, "POST", "/api/v1/systems", &admin, Some(&body)).await;
    assert_eq!(status, 409, "{v}");
    assert_envelope(&v, "name_taken");
    let (status, v) = api(
        &h,
        "POST",
        "/api/v1/users",
        &admin,
        Some(r#"{"name":"olaf","role":"viewer"}"#),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert_envelope(&v, "name_taken");

    // Rename: audited, and a second system cannot take the name.
    let path = format!("/api/v1/systems/{}", h.system);
    let (status, v) = api(
        &h,
        "PATCH",
        &path,
        &admin,
        Some(r#"{"name":"renamed-box"}"#),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["name"], "renamed-box");
    assert_eq!(audited(&h, "system_renamed").await.total, 1);
    let (status, v) = api(&h, "PATCH", &path, &op_token, Some(r#"{"name":"mine"}"#)).await;
    assert_eq!(status, 403, "{v}");

    // Grants are listed, filtered by user.
    let body = format!(
        r#"{{"user_id":"{}","system_id":"{}","expires_in":"8h"}}"#,
        op.id, h.system
    );
    let (status, v) = api(&h, "POST", "/api/v1/grants", &admin, Some(&body)).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = api(
        &h,
        "GET",
        &format!("/api/v1/grants?user_id={}", op.id),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["items"][0]["system_id"], h.system.to_string());
    assert!(v["items"][0]["expires_at"].is_string());
    let (status, _) = api(&h, "GET", "/api/v1/grants", &op_token, None).await;
    assert_eq!(status, 403);

    // A role change is audited; an admin cannot demote themself.
    let path = format!("/api/v1/users/{}", op.id);
    let (status, v) = api(&h, "PATCH", &path, &admin, Some(r#"{"role":"viewer"}"#)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["role"], "viewer");
    assert_eq!(audited(&h, "user_role_changed").await.total, 1);
    let ann = h
        .state
        .stores
        .identity
        .user_by_name("ann")
        .await
        .unwrap()
        .unwrap();
    let (status, v) = api(
        &h,
        "PATCH",
        &format!("/api/v1/users/{}", ann.id),
        &admin,
        Some(r#"{"role":"operator"}"#),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_envelope(&v, "cannot_demote_self");

    // A new token is made from a sign-in, shown once, and works; an API
    // token does not mint tokens; only admins make others' tokens.
    let (status, v) = api(&h, "POST", "/api/v1/tokens", &op_token, Some("{}")).await;
    assert_eq!(status, 403, "{v}");
    assert_envelope(&v, "login_required");
    let hash = rtunnel_auth::password::hash_password("olaf's password").unwrap();
    h.state
        .stores
        .identity
        .set_password_hash(op.id, Some(&hash))
        .await
        .unwrap();
    let login = r#"{"username":"olaf","password":"olaf's password"}"#;
    let (status, v) = api(&h, "POST", "/api/v1/auth/login", "", Some(login)).await;
    assert_eq!(status, 200, "{v}");
    let olaf = v["access_token"].as_str().unwrap().to_owned();
    let (status, v) = api(
        &h,
        "POST",
        "/api/v1/tokens",
        &olaf,
        Some(r#"{"expires_in":"1h"}"#),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let fresh = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["status"], "active");
    let (status, me) = api(&h, "GET", "/api/v1/auth/me", &fresh, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["name"], "olaf");
    let body = format!(r#"{{"user_id":"{}"}}"#, ann.id);
    let (status, v) = api(&h, "POST", "/api/v1/tokens", &olaf, Some(&body)).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = api(&h, "GET", "/api/v1/tokens", &op_token, None).await;
    assert_eq!(status, 200);
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("token").is_none())
    );
}

/// `curl -d` (form content type, as the README's examples send) and a body
/// without a content type are read as JSON when the request carries a
/// bearer token; a cross-site form (no Authorization) and other types are
/// refused with 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_read_whatever_curl_declares_but_forms_cannot_sign_in() {
    let h = harness().await;
    let (_, admin) = user(&h, "ann", Role::Admin).await;
    let http = reqwest::Client::new();
    let post = |path: &str, ctype: Option<&str>, auth: bool, body: &str| {
        let mut req = http.post(format!("{}{path}", h.base)).body(body.to_owned());
        if let Some(t) = ctype {
            req = req.header("content-type", t);
        }
        if auth {
            req = req.bearer_auth(&admin);
        }
        req.send()
    };
    let proxy = format!("/api/v1/sessions/{}/proxy-token", h.session);
    let body = r#"{"service":"echo"}"#;
    for ctype in [
        None,
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=utf-8"),
    ] {
        let resp = post(&proxy, ctype, true, body).await.unwrap();
        assert_eq!(resp.status(), 200, "{ctype:?}");
    }
    let resp = post(&proxy, Some("text/plain"), true, body).await.unwrap();
    assert_eq!(resp.status(), 415);
    assert_envelope(&resp.json().await.unwrap(), "unsupported_media_type");
    let login = r#"{"username":"ann","password":"x","cookie":true}"#;
    let resp = post(
        "/api/v1/auth/login",
        Some("application/x-www-form-urlencoded"),
        false,
        login,
    )
    .await
    .unwrap();
    assert_eq!(
        resp.status(),
        415,
        "a form from another site cannot sign anyone in"
    );
    // A body of the wrong shape says what is wrong.
    let resp = post(&proxy, None, true, r#"{"servce":"echo"}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("servce"), "{v}");
}
