//! The behaviour every implementation of the store traits must have, as
//! checks that run against any of them: the SQLite store runs them in
//! `rtunnel-core/tests/store_conformance.rs`, and so must every other
//! implementation (PostgreSQL, or one a service embedding rtunnel writes).
//!
//! Each check takes a fresh, empty store and panics when the store does
//! something else than the traits promise. [`store_conformance_tests!`]
//! turns them into one `#[tokio::test]` each:
//!
//! ```ignore
//! async fn fresh() -> (tempfile::TempDir, SqlStore) { /* an empty store */ }
//! rtunnel_core::store_conformance_tests!(fresh);
//! ```
//!
//! [`store_conformance_tests!`]: crate::store_conformance_tests

// Checks fail by panicking, like tests.
#![allow(clippy::unwrap_used, missing_docs)]

use uuid::Uuid;

use super::{
    AccessClose, AccessKind, AccessLog, AuditEvent, AuditFilter, AuditKind, AuditReader, AuditSink,
    IdentityStore, LoginStore, Page, Resource, ResourceStore, Role, SessionFilter, SessionRecord,
    SessionStatus, SessionStore, StoreError, System, User, now_millis,
};
use crate::ids::UserId;
use crate::proto::{ServiceInfo, StreamKind};

/// Every store trait at once: what the server runs on.
pub trait FullStore:
    IdentityStore + SessionStore + LoginStore + ResourceStore + AuditSink + AuditReader
{
}

impl<T> FullStore for T where
    T: IdentityStore + SessionStore + LoginStore + ResourceStore + AuditSink + AuditReader
{
}

/// A user to store.
pub fn user(name: &str, role: Role) -> User {
    User {
        id: Uuid::new_v4().into(),
        name: name.into(),
        role,
        disabled: false,
        created_at: now_millis(),
        email: None,
    }
}

/// A system to store.
pub fn system(name: &str) -> System {
    System {
        id: Uuid::new_v4().into(),
        name: name.into(),
        key: format!("key-{name}"),
        secret_hash: "h".into(),
        created_at: now_millis(),
    }
}

/// A `pending` session of `system` to store, created now, living a minute.
pub fn pending_session(system: crate::ids::SystemId) -> SessionRecord {
    let now = now_millis();
    SessionRecord {
        id: Uuid::new_v4().into(),
        system_id: system,
        status: SessionStatus::Pending,
        created_at: now,
        activated_at: None,
        ended_at: None,
        end_reason: None,
        expires_at: now + 60_000,
        grace_until: None,
        reconnect_token_hash: None,
        agent_addr: None,
        agent_software: None,
        services: vec![],
        node_id: None,
    }
}

/// A launcher resource to store.
pub fn resource(name: &str) -> Resource {
    Resource {
        id: Uuid::new_v4(),
        name: name.into(),
        ip_address: Some("10.0.1.50".into()),
        metadata: serde_json::json!({"pomerium_url": "https://access.example.com"}),
        system_id: None,
        service: None,
        created_at: 1,
        updated_at: 1,
    }
}

/// Conformance check `duplicate_names_conflict`.
pub async fn duplicate_names_conflict<S: FullStore + ?Sized>(s: &S) {
    s.create_user(&user("bob", Role::Operator)).await.unwrap();
    let err = s.create_user(&user("bob", Role::Viewer)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // A system renamed to a taken name conflicts; to a free one, it moves.
    let a = system("alpha-box");
    let b = system("beta-box");
    s.create_system(&a).await.unwrap();
    s.create_system(&b).await.unwrap();
    let err = s.rename_system(b.id, "alpha-box").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(s.rename_system(b.id, "gamma-box").await.unwrap());
    assert_eq!(s.system(b.id).await.unwrap().unwrap().name, "gamma-box");
    assert!(
        !s.rename_system(crate::ids::SystemId::new(), "delta-box")
            .await
            .unwrap()
    );
}

/// Conformance check `users_are_listed_disabled_and_hold_a_password_hash`.
pub async fn users_are_listed_disabled_and_hold_a_password_hash<S: FullStore + ?Sized>(s: &S) {
    let b = user("bea", Role::Viewer);
    let a = user("al", Role::Admin);
    s.create_user(&b).await.unwrap();
    s.create_user(&a).await.unwrap();
    let page = s.list_users(Page::default()).await.unwrap();
    assert_eq!(page.total, 2);
    let names: Vec<_> = page.items.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["al", "bea"]);
    assert_eq!(s.password_hash(b.id).await.unwrap(), None);
    assert!(
        s.set_password_hash(b.id, Some("$argon2id$x"))
            .await
            .unwrap()
    );
    assert_eq!(
        s.password_hash(b.id).await.unwrap().as_deref(),
        Some("$argon2id$x")
    );
    assert!(s.set_user_disabled(b.id, true).await.unwrap());
    assert!(s.user_by_id(b.id).await.unwrap().unwrap().disabled);
    assert!(!s.set_user_disabled(UserId::new(), true).await.unwrap());
    assert!(!s.set_password_hash(UserId::new(), None).await.unwrap());
}

/// Conformance check `api_tokens_are_listed_and_revoked`: listed newest
/// first, per user or all; revoked once; a revoked or expired one is not
/// live.
pub async fn api_tokens_are_listed_and_revoked<S: FullStore + ?Sized>(s: &S) {
    let ann = user("ann", Role::Operator);
    let bob = user("bob", Role::Admin);
    s.create_user(&ann).await.unwrap();
    s.create_user(&bob).await.unwrap();
    let token = |user: &User, created_at, expires_at| super::ApiTokenRecord {
        id: Uuid::new_v4(),
        user_id: user.id,
        secret_hash: "h".into(),
        created_at,
        expires_at,
        revoked_at: None,
    };
    let old = token(&ann, 100, None);
    let new = token(&ann, 200, Some(10_000));
    let bobs = token(&bob, 150, None);
    for t in [&old, &new, &bobs] {
        s.create_api_token(t).await.unwrap();
    }
    let anns = s
        .list_api_tokens(Some(ann.id), Page::default())
        .await
        .unwrap();
    assert_eq!(anns.total, 2);
    let ids: Vec<Uuid> = anns.items.iter().map(|t| t.id).collect();
    assert_eq!(ids, [new.id, old.id]);
    let all = s.list_api_tokens(None, Page::default()).await.unwrap();
    assert_eq!(all.total, 3);
    assert!(s.revoke_api_token(old.id, 500).await.unwrap());
    assert!(
        !s.revoke_api_token(old.id, 600).await.unwrap(),
        "revoked once"
    );
    assert!(!s.revoke_api_token(Uuid::new_v4(), 600).await.unwrap());
    let revoked = s.api_token(old.id).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(500));
    assert!(!revoked.is_live(501));
    let new = s.api_token(new.id).await.unwrap().unwrap();
    assert!(new.is_live(9_999));
    assert!(!new.is_live(10_000));
    assert!(
        s.api_token(bobs.id)
            .await
            .unwrap()
            .unwrap()
            .is_live(i64::MAX)
    );
}

/// Conformance check `a_login_rotates_once_per_token_and_ends_for_good`.
pub async fn a_login_rotates_once_per_token_and_ends_for_good<S: FullStore + ?Sized>(s: &S) {
    use crate::store::Login;
    let u = user("lo", Role::Operator);
    s.create_user(&u).await.unwrap();
    let now = now_millis();
    let first = Uuid::new_v4();
    let login = Login {
        id: Uuid::new_v4(),
        user_id: u.id,
        current_jti: first,
        created_at: now,
        last_used_at: now,
        expires_at: now + 60_000,
        revoked_at: None,
        revoked_reason: None,
        ip_address: Some("192.0.2.7".into()),
    };
    s.create_login(&login).await.unwrap();
    assert_eq!(s.login(login.id).await.unwrap(), Some(login.clone()));
    assert!(s.has_login_from(u.id, "192.0.2.7", now).await.unwrap());
    assert!(!s.has_login_from(u.id, "192.0.2.8", now).await.unwrap());
    assert!(!s.has_login_from(u.id, "192.0.2.7", now + 1).await.unwrap());
    let second = Uuid::new_v4();
    assert!(
        s.rotate_login(login.id, first, second, now + 90_000, now)
            .await
            .unwrap()
    );
    // The first token is no longer current: a second rotation with it fails.
    assert!(
        !s.rotate_login(login.id, first, Uuid::new_v4(), now + 90_000, now)
            .await
            .unwrap()
    );
    let stored = s.login(login.id).await.unwrap().unwrap();
    assert_eq!(stored.current_jti, second);
    assert_eq!(stored.expires_at, now + 90_000);
    assert!(stored.is_live(now));
    assert!(s.revoke_login(login.id, "replayed", now).await.unwrap());
    assert!(!s.revoke_login(login.id, "again", now).await.unwrap());
    let ended = s.login(login.id).await.unwrap().unwrap();
    assert!(!ended.is_live(now));
    assert_eq!(ended.revoked_reason.as_deref(), Some("replayed"));
    assert!(
        !s.rotate_login(login.id, second, Uuid::new_v4(), now + 1, now)
            .await
            .unwrap()
    );
    // Every live login of a user ends at once.
    for _ in 0..2 {
        let mut l = login.clone();
        l.id = Uuid::new_v4();
        s.create_login(&l).await.unwrap();
    }
    assert_eq!(
        s.revoke_user_logins(u.id, "user_disabled", now)
            .await
            .unwrap(),
        2
    );
}

/// Conformance check `deleting_a_system_takes_its_grants_along`.
pub async fn deleting_a_system_takes_its_grants_along<S: FullStore + ?Sized>(s: &S) {
    let u = user("del", Role::Operator);
    let a = system("gone");
    s.create_user(&u).await.unwrap();
    s.create_system(&a).await.unwrap();
    let now = now_millis();
    s.grant(u.id, a.id, None, now).await.unwrap();
    assert!(s.delete_system(a.id).await.unwrap());
    assert!(!s.delete_system(a.id).await.unwrap());
    assert_eq!(s.system(a.id).await.unwrap(), None);
    assert!(!s.has_grant(u.id, a.id, now).await.unwrap());
}

/// Conformance check `grants_are_given_checked_and_revoked`.
pub async fn grants_are_given_checked_and_revoked<S: FullStore + ?Sized>(s: &S) {
    let u = user("op", Role::Operator);
    let a = system("alpha");
    let b = system("beta");
    s.create_user(&u).await.unwrap();
    s.create_system(&a).await.unwrap();
    s.create_system(&b).await.unwrap();
    let now = now_millis();
    assert!(!s.has_grant(u.id, a.id, now).await.unwrap());
    assert!(s.grant(u.id, a.id, None, now).await.unwrap());
    assert!(!s.grant(u.id, a.id, None, now).await.unwrap());
    assert!(s.has_grant(u.id, a.id, now).await.unwrap());
    let visible = s
        .list_systems(Some(u.id), now, Page::default())
        .await
        .unwrap();
    assert_eq!(visible.total, 1);
    assert_eq!(visible.items[0].id, a.id);
    assert_eq!(
        s.list_systems(None, now, Page::default())
            .await
            .unwrap()
            .total,
        2
    );
    assert!(s.revoke(u.id, a.id, now).await.unwrap());
    assert!(!s.revoke(u.id, a.id, now).await.unwrap());
    assert!(!s.has_grant(u.id, a.id, now).await.unwrap());
}

/// Conformance check `every_change_that_takes_access_moves_the_epoch`:
/// what a server watches to hear of changes made elsewhere.
pub async fn every_change_that_takes_access_moves_the_epoch<S: FullStore + ?Sized>(s: &S) {
    let u = user("watched", Role::Operator);
    let a = system("watched-box");
    s.create_user(&u).await.unwrap();
    s.create_system(&a).await.unwrap();
    let now = now_millis();
    let mut last = s.access_epoch().await.unwrap();
    // Giving access moves nothing.
    assert!(s.grant(u.id, a.id, Some(now + 60_000), now).await.unwrap());
    assert_eq!(s.access_epoch().await.unwrap(), last);
    // The grant's end is known, so a server can cut at that moment.
    assert_eq!(
        s.grant_until(u.id, a.id, now).await.unwrap(),
        Some(Some(now + 60_000))
    );
    let token = super::ApiTokenRecord {
        id: Uuid::new_v4(),
        user_id: u.id,
        secret_hash: "h".into(),
        created_at: now,
        expires_at: None,
        revoked_at: None,
    };
    s.create_api_token(&token).await.unwrap();
    let login = crate::store::Login {
        id: Uuid::new_v4(),
        user_id: u.id,
        current_jti: Uuid::new_v4(),
        created_at: now,
        last_used_at: now,
        expires_at: now + 60_000,
        revoked_at: None,
        revoked_reason: None,
        ip_address: None,
    };
    s.create_login(&login).await.unwrap();
    assert_eq!(s.access_epoch().await.unwrap(), last);
    let mut moved = |what: &str, epoch: i64| {
        assert!(epoch > last, "{what} did not move the access epoch");
        last = epoch;
    };
    assert!(s.revoke(u.id, a.id, now).await.unwrap());
    moved("a revoked grant", s.access_epoch().await.unwrap());
    assert_eq!(s.grant_until(u.id, a.id, now).await.unwrap(), None);
    assert!(s.revoke_api_token(token.id, now).await.unwrap());
    moved("a revoked token", s.access_epoch().await.unwrap());
    assert!(s.revoke_login(login.id, "test", now).await.unwrap());
    moved("an ended login", s.access_epoch().await.unwrap());
    assert!(s.set_user_role(u.id, Role::Viewer).await.unwrap());
    moved("a role changed", s.access_epoch().await.unwrap());
    assert_eq!(
        s.user_by_id(u.id).await.unwrap().unwrap().role,
        Role::Viewer
    );
    assert!(s.set_user_disabled(u.id, true).await.unwrap());
    moved("a disabled user", s.access_epoch().await.unwrap());
    assert!(s.set_system_secret(a.id, "h2").await.unwrap());
    moved("a new secret", s.access_epoch().await.unwrap());
    assert!(s.delete_system(a.id).await.unwrap());
    moved("a deleted system", s.access_epoch().await.unwrap());
    // A change that changed nothing moves nothing.
    assert!(!s.revoke(u.id, a.id, now).await.unwrap());
    assert_eq!(s.access_epoch().await.unwrap(), last);
    // A grant without an end.
    let b = system("forever-box");
    s.create_system(&b).await.unwrap();
    assert!(s.grant(u.id, b.id, None, now).await.unwrap());
    assert_eq!(s.grant_until(u.id, b.id, now).await.unwrap(), Some(None));
}

/// Conformance check `active_grants_are_listed_and_filtered`.
pub async fn active_grants_are_listed_and_filtered<S: FullStore + ?Sized>(s: &S) {
    let (u, v) = (user("gina", Role::Operator), user("hal", Role::Viewer));
    let (a, b) = (system("listed-a"), system("listed-b"));
    for x in [&u, &v] {
        s.create_user(x).await.unwrap();
    }
    for x in [&a, &b] {
        s.create_system(x).await.unwrap();
    }
    let now = now_millis();
    assert!(s.grant(u.id, a.id, Some(now + 60_000), now).await.unwrap());
    assert!(s.grant(u.id, b.id, None, now + 1).await.unwrap());
    assert!(s.grant(v.id, a.id, None, now + 2).await.unwrap());
    // Expired and revoked grants are not listed.
    let c = system("listed-c");
    s.create_system(&c).await.unwrap();
    assert!(s.grant(v.id, c.id, Some(now + 10), now).await.unwrap());
    assert!(s.grant(u.id, c.id, None, now).await.unwrap());
    assert!(s.revoke(u.id, c.id, now).await.unwrap());
    let later = now + 1_000;
    let all = s
        .list_grants(None, None, later, Page::default())
        .await
        .unwrap();
    assert_eq!(all.total, 3);
    let order: Vec<_> = all.items.iter().map(|g| (g.user_id, g.system_id)).collect();
    assert_eq!(
        order,
        [(v.id, a.id), (u.id, b.id), (u.id, a.id)],
        "newest first"
    );
    assert_eq!(all.items[2].expires_at, Some(now + 60_000));
    let gina = s
        .list_grants(Some(u.id), None, later, Page::default())
        .await
        .unwrap();
    assert_eq!(gina.total, 2);
    let on_a = s
        .list_grants(None, Some(a.id), later, Page::default())
        .await
        .unwrap();
    assert_eq!(on_a.total, 2);
    let one = s
        .list_grants(Some(v.id), Some(a.id), later, Page::default())
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    let page = s
        .list_grants(
            None,
            None,
            later,
            Page {
                page: 2,
                page_size: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.total), (1, 3));
}

/// Conformance check `the_last_agent_address_is_the_newest_sessions`.
pub async fn the_last_agent_address_is_the_newest_sessions<S: FullStore + ?Sized>(s: &S) {
    let sys = system("delta");
    s.create_system(&sys).await.unwrap();
    assert_eq!(s.last_agent_addr(sys.id).await.unwrap(), None);
    let now = now_millis();
    for (i, addr) in [Some("192.0.2.1:1000"), Some("192.0.2.2:2000"), None]
        .into_iter()
        .enumerate()
    {
        let rec = SessionRecord {
            id: Uuid::new_v4().into(),
            system_id: sys.id,
            status: SessionStatus::Pending,
            created_at: now + i as i64,
            activated_at: None,
            ended_at: None,
            end_reason: None,
            expires_at: now + 100_000,
            grace_until: None,
            reconnect_token_hash: None,
            agent_addr: addr.map(str::to_owned),
            agent_software: None,
            services: vec![],
            node_id: None,
        };
        s.create_session(&rec).await.unwrap();
        assert_eq!(
            s.last_agent_addr(sys.id).await.unwrap().as_deref(),
            addr,
            "after session {i}"
        );
        assert_eq!(
            s.latest_session(sys.id).await.unwrap().map(|l| l.id),
            Some(rec.id),
            "after session {i}"
        );
    }
    // Another system's sessions are not this one's.
    let other = system("epsilon");
    s.create_system(&other).await.unwrap();
    assert_eq!(s.last_agent_addr(other.id).await.unwrap(), None);
    assert!(s.latest_session(other.id).await.unwrap().is_none());
}

/// Conformance check `sessions_move_through_their_states`.
pub async fn sessions_move_through_their_states<S: FullStore + ?Sized>(s: &S) {
    let sys = system("gamma");
    s.create_system(&sys).await.unwrap();
    let now = now_millis();
    let rec = SessionRecord {
        id: Uuid::new_v4().into(),
        system_id: sys.id,
        status: SessionStatus::Pending,
        created_at: now,
        activated_at: None,
        ended_at: None,
        end_reason: None,
        expires_at: now + 1000,
        grace_until: None,
        reconnect_token_hash: None,
        agent_addr: Some("127.0.0.1:1".into()),
        agent_software: None,
        services: vec![],
        node_id: Some("node-a".into()),
    };
    s.create_session(&rec).await.unwrap();
    let manifest = vec![ServiceInfo {
        name: "ssh".into(),
        kind: StreamKind::Tcp,
        target: Some("127.0.0.1:22".into()),
        tls: false,
        host_header: Default::default(),
        consent: Default::default(),
        shared: false,
    }];
    s.activate_session(rec.id, &manifest, "agent/1", "node-b", now)
        .await
        .unwrap();
    let got = s.session(rec.id).await.unwrap().unwrap();
    assert_eq!(got.status, SessionStatus::Active);
    assert_eq!(got.services, manifest);
    assert_eq!(got.agent_software.as_deref(), Some("agent/1"));
    assert_eq!(got.node_id.as_deref(), Some("node-b"));
    // The agent may send a new manifest while active.
    let mut longer = manifest.clone();
    longer.push(ServiceInfo {
        name: "web".into(),
        kind: StreamKind::Tcp,
        target: Some("127.0.0.1:443".into()),
        tls: true,
        host_header: Default::default(),
        consent: Default::default(),
        shared: false,
    });
    assert!(s.update_manifest(rec.id, &longer).await.unwrap());
    assert_eq!(s.session(rec.id).await.unwrap().unwrap().services, longer);
    assert!(s.update_manifest(rec.id, &manifest).await.unwrap());
    let got = s.session(rec.id).await.unwrap().unwrap();
    assert_eq!(got.services, manifest);
    use crate::session::{Event, Lifecycle};
    let lost = got
        .lifecycle()
        .step(Event::TunnelLost { grace_ms: 500 }, now)
        .unwrap();
    // A node that no longer holds the session cannot move it; the holder can.
    for (node, moves) in [("node-a", false), ("node-b", true)] {
        let moved = s
            .apply_lifecycle(
                rec.id,
                SessionStatus::Active,
                Some(node),
                &lost.next,
                None,
                now,
            )
            .await
            .unwrap();
        assert_eq!(moved, moves, "{node}");
    }
    // Compare and set: a stale view does not overwrite.
    assert!(
        !s.apply_lifecycle(rec.id, SessionStatus::Active, None, &lost.next, None, now)
            .await
            .unwrap()
    );
    // Not once the tunnel is lost.
    assert!(!s.update_manifest(rec.id, &longer).await.unwrap());
    assert!(s.due_sessions(now + 499, 10).await.unwrap().is_empty());
    let due = s.due_sessions(now + 500, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].grace_until, Some(now + 500));
    let over = due[0].lifecycle().step(Event::Tick, now + 500).unwrap();
    s.apply_lifecycle(
        rec.id,
        SessionStatus::GracePeriod,
        None,
        &over.next,
        over.end_reason,
        now + 500,
    )
    .await
    .unwrap();
    // Final states stay final.
    let closed = Lifecycle {
        status: SessionStatus::Closed,
        ..over.next
    };
    assert!(
        !s.apply_lifecycle(
            rec.id,
            SessionStatus::Active,
            None,
            &closed,
            Some("again"),
            now
        )
        .await
        .unwrap()
    );
    let got = s.session(rec.id).await.unwrap().unwrap();
    assert_eq!(got.status, SessionStatus::Expired);
    assert_eq!(
        got.end_reason.as_deref(),
        Some("the agent did not come back in time")
    );
    assert_eq!(got.ended_at, Some(now + 500));
    assert!(
        s.activate_session(rec.id, &manifest, "agent/1", "node-b", now)
            .await
            .is_err()
    );
    let filter = SessionFilter {
        status: Some(SessionStatus::Expired),
        ..Default::default()
    };
    assert_eq!(
        s.list_sessions(&filter, now, Page::default())
            .await
            .unwrap()
            .total,
        1
    );
}

/// Conformance check `restart_recovery_puts_live_sessions_in_grace_and_expires_pending_ones`:
/// only the sessions of the node that restarted (or died), and those
/// stored before nodes were recorded.
pub async fn restart_recovery_puts_live_sessions_in_grace_and_expires_pending_ones<
    S: FullStore + ?Sized,
>(
    s: &S,
) {
    let sys = system("delta");
    s.create_system(&sys).await.unwrap();
    let now = now_millis();
    let mut ids = Vec::new();
    for (status, node) in [
        (SessionStatus::Pending, Some("node-a")),
        (SessionStatus::Active, Some("node-a")),
        (SessionStatus::Closed, Some("node-a")),
        (SessionStatus::Active, None),
        (SessionStatus::Active, Some("node-b")),
        (SessionStatus::Pending, Some("node-b")),
    ] {
        let rec = SessionRecord {
            id: Uuid::new_v4().into(),
            system_id: sys.id,
            status,
            created_at: now,
            activated_at: None,
            ended_at: None,
            end_reason: None,
            expires_at: now + 100_000,
            grace_until: None,
            reconnect_token_hash: Some("h".into()),
            agent_addr: None,
            agent_software: None,
            services: vec![],
            node_id: node.map(str::to_owned),
        };
        s.create_session(&rec).await.unwrap();
        ids.push(rec.id);
    }
    let mut holding = s.nodes_holding_sessions().await.unwrap();
    holding.sort();
    assert_eq!(holding, ["node-a", "node-b"]);
    assert_eq!(
        s.recover_unfinished("node-a", 60_000, now).await.unwrap(),
        3
    );
    let get = |i: usize| {
        let id = ids[i];
        async move { s.session(id).await.unwrap().unwrap() }
    };
    assert_eq!(get(0).await.status, SessionStatus::Expired);
    let active = get(1).await;
    assert_eq!(active.status, SessionStatus::GracePeriod);
    assert_eq!(active.grace_until, Some(now + 60_000));
    assert_eq!(active.reconnect_token_hash.as_deref(), Some("h"));
    assert_eq!(get(2).await.status, SessionStatus::Closed);
    assert_eq!(get(3).await.status, SessionStatus::GracePeriod);
    // Another node's sessions are left alone.
    assert_eq!(get(4).await.status, SessionStatus::Active);
    assert_eq!(get(5).await.status, SessionStatus::Pending);
    assert_eq!(s.nodes_holding_sessions().await.unwrap(), ["node-b"]);
}

/// Conformance check `the_audit_log_filters_and_pages_newest_first`.
pub async fn the_audit_log_filters_and_pages_newest_first<S: FullStore + ?Sized>(s: &S) {
    let session = Uuid::new_v4();
    for i in 0..10 {
        let kind = if i % 2 == 0 {
            AuditKind::Login
        } else {
            AuditKind::Logout
        };
        let mut e = AuditEvent::new(kind);
        e.at = 1000 + i;
        if i < 4 {
            e.session_id = Some(session.into());
        }
        s.record(&e).await.unwrap();
    }
    let all = s
        .list_audit(
            &AuditFilter::default(),
            Page {
                page: 1,
                page_size: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.total, 10);
    assert_eq!(
        all.items.iter().map(|e| e.at).collect::<Vec<_>>(),
        [1009, 1008, 1007]
    );
    let odd = AuditFilter {
        event: Some(AuditKind::Logout.as_str().into()),
        ..Default::default()
    };
    assert_eq!(s.list_audit(&odd, Page::default()).await.unwrap().total, 5);
    let of_session = AuditFilter {
        session_id: Some(session.into()),
        ..Default::default()
    };
    assert_eq!(
        s.list_audit(&of_session, Page::default())
            .await
            .unwrap()
            .total,
        4
    );
    let window = AuditFilter {
        since: Some(1002),
        until: Some(1005),
        ..Default::default()
    };
    let got = s.list_audit(&window, Page::default()).await.unwrap();
    assert_eq!(
        got.items.iter().map(|e| e.at).collect::<Vec<_>>(),
        [1004, 1003, 1002]
    );
}

/// Conformance check `resources_round_trip_and_names_are_unique`.
pub async fn resources_round_trip_and_names_are_unique<S: FullStore + ?Sized>(s: &S) {
    let mut r = resource("db-server");
    s.create_resource(&r).await.unwrap();
    assert_eq!(s.resource(r.id).await.unwrap().as_ref(), Some(&r));
    assert_eq!(
        s.resource_by_name("db-server").await.unwrap().as_ref(),
        Some(&r)
    );
    assert_eq!(s.resource_by_name("nope").await.unwrap(), None);
    assert!(matches!(
        s.create_resource(&resource("db-server")).await,
        Err(StoreError::Conflict(_))
    ));
    r.metadata = serde_json::json!({"external_url": "https://app.example.com"});
    r.updated_at = 2;
    assert!(s.update_resource(&r).await.unwrap());
    assert_eq!(s.resource(r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(s.list_resources(Page::default()).await.unwrap().total, 1);
    assert!(s.delete_resource(r.id).await.unwrap());
    assert!(!s.delete_resource(r.id).await.unwrap());
    assert_eq!(s.resource(r.id).await.unwrap(), None);
}

/// Conformance check `grants_expire_and_revoke`.
pub async fn grants_expire_and_revoke<S: FullStore + ?Sized>(s: &S) {
    let user = User {
        id: Uuid::new_v4().into(),
        name: "op".into(),
        role: Role::Operator,
        disabled: false,
        created_at: 0,
        email: Some("op@example.com".into()),
    };
    s.create_user(&user).await.unwrap();
    assert_eq!(s.user_by_id(user.id).await.unwrap(), Some(user.clone()));
    let r = resource("rdp-box");
    s.create_resource(&r).await.unwrap();
    assert!(!s.has_resource_grant(user.id, r.id, 10).await.unwrap());
    assert!(
        s.grant_resource(user.id, r.id, Some(100), 10)
            .await
            .unwrap()
    );
    assert!(!s.grant_resource(user.id, r.id, None, 20).await.unwrap());
    assert!(s.has_resource_grant(user.id, r.id, 99).await.unwrap());
    assert!(!s.has_resource_grant(user.id, r.id, 100).await.unwrap());
    assert!(s.grant_resource(user.id, r.id, None, 100).await.unwrap());
    assert!(s.revoke_resource(user.id, r.id, 150).await.unwrap());
    assert!(!s.has_resource_grant(user.id, r.id, 151).await.unwrap());
    assert!(!s.revoke_resource(user.id, r.id, 152).await.unwrap());
}

/// Conformance check `old_audit_events_and_closed_access_logs_are_pruned`:
/// retention deletes what is older than its cutoff, in batches, and leaves
/// newer events and open access-log entries.
pub async fn old_audit_events_and_closed_access_logs_are_pruned<S: FullStore + ?Sized>(s: &S) {
    let sys = system("pruned");
    s.create_system(&sys).await.unwrap();
    let now = now_millis();
    let cutoff = now - 1_000_000;
    // More than one delete batch of old events, and a few new ones.
    for i in 0..5_010 {
        let mut ev = AuditEvent::new(AuditKind::Login);
        ev.at = cutoff - 1 - i;
        s.record(&ev).await.unwrap();
    }
    for _ in 0..3 {
        s.record(&AuditEvent::new(AuditKind::Logout)).await.unwrap();
    }
    let session = SessionRecord {
        id: Uuid::new_v4().into(),
        system_id: sys.id,
        status: SessionStatus::Active,
        created_at: cutoff - 10_000,
        activated_at: Some(cutoff - 10_000),
        ended_at: None,
        end_reason: None,
        expires_at: now + 1_000_000,
        grace_until: None,
        reconnect_token_hash: None,
        agent_addr: None,
        agent_software: None,
        services: vec![],
        node_id: None,
    };
    s.create_session(&session).await.unwrap();
    let entry = |opened_at| super::AccessLog {
        id: Uuid::new_v4(),
        session_id: session.id,
        kind: crate::store::AccessKind::Forward,
        service: Some("ssh".into()),
        actor: "ann".into(),
        ip_address: None,
        opened_at,
        closed_at: None,
        bytes_to_service: 0,
        bytes_from_service: 0,
        error: None,
    };
    let (old_closed, old_open, new_closed) =
        (entry(cutoff - 5_000), entry(cutoff - 5_000), entry(now));
    for e in [&old_closed, &old_open, &new_closed] {
        s.open_access(e).await.unwrap();
    }
    s.close_access(old_closed.id, cutoff - 4_000, 1, 2, None)
        .await
        .unwrap();
    s.close_access(new_closed.id, now, 1, 2, None)
        .await
        .unwrap();

    assert_eq!(s.prune_audit(cutoff).await.unwrap(), 5_010);
    assert_eq!(s.prune_access(cutoff).await.unwrap(), 1);
    let all = s
        .list_audit(
            &AuditFilter::default(),
            Page {
                page: 1,
                page_size: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.total, 3);
    assert!(
        all.items
            .iter()
            .all(|e| e.event == AuditKind::Logout.as_str())
    );
    let left = s
        .list_access(
            session.id,
            Page {
                page: 1,
                page_size: 10,
            },
        )
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = left.items.iter().map(|e| e.id).collect();
    ids.sort();
    let mut want = vec![old_open.id, new_closed.id];
    want.sort();
    assert_eq!(ids, want, "open entries stay, however old");
    assert_eq!(s.prune_audit(cutoff).await.unwrap(), 0);
}

/// A ticket store: a ticket is taken once, only before it expires, and
/// only by its key. (Checks of live state take the store alone.)
pub async fn tickets_are_taken_once_and_only_before_they_expire<T>(store: &T)
where
    T: crate::ticket::TicketStore + ?Sized,
{
    use crate::ticket::{Ticket, ticket_key};
    let now = now_millis();
    let ticket = |expires_at| Ticket {
        session_id: Uuid::new_v4().into(),
        user_id: Uuid::new_v4().into(),
        login: Some(Uuid::new_v4()),
        token: Some(Uuid::new_v4()),
        expires_at,
    };
    let t = ticket(now + 30_000);
    let (abc, abd, late) = (
        ticket_key(&format!("abc-{}", Uuid::new_v4())),
        ticket_key(&format!("abd-{}", Uuid::new_v4())),
        ticket_key(&format!("late-{}", Uuid::new_v4())),
    );
    store.put(abc.clone(), t.clone()).await.unwrap();
    assert_eq!(store.take(&abd, now).await.unwrap(), None);
    assert_eq!(store.take(&abc, now + 29_999).await.unwrap(), Some(t));
    assert_eq!(store.take(&abc, now).await.unwrap(), None, "taken twice");
    store.put(late.clone(), ticket(now + 30_000)).await.unwrap();
    assert_eq!(
        store.take(&late, now + 30_000).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.take(&late, now).await.unwrap(),
        None,
        "an expired take removes it"
    );
}

/// A rate limiter: a burst of `burst` failures, then one per interval;
/// keys apart; `reset` forgives. (Live state: the limiter alone.)
pub async fn rate_limits_allow_a_burst_then_one_failure_per_interval<L>(l: &L)
where
    L: crate::ratelimit::RateLimiter + ?Sized,
{
    use crate::ratelimit::Rule;
    use std::time::Duration;
    const RULE: Rule = Rule {
        burst: 3,
        interval: Duration::from_secs(10),
    };
    let t0 = 5_000_000;
    for _ in 0..3 {
        assert_eq!(l.check("k", RULE, t0).await.unwrap(), None);
        assert_eq!(l.reserve("k", RULE, t0).await.unwrap(), None);
    }
    assert_eq!(
        l.check("k", RULE, t0).await.unwrap(),
        Some(Duration::from_secs(10))
    );
    // A refused reservation spends nothing: hammering a spent budget does
    // not lock it for longer than one interval.
    for _ in 0..50 {
        assert_eq!(
            l.reserve("k", RULE, t0).await.unwrap(),
            Some(Duration::from_secs(10))
        );
    }
    assert_eq!(
        l.check("k", RULE, t0 + 4_000).await.unwrap(),
        Some(Duration::from_secs(6))
    );
    // One interval later one more attempt is allowed, not three.
    let t1 = t0 + 10_000;
    assert_eq!(l.reserve("k", RULE, t1).await.unwrap(), None);
    assert!(l.reserve("k", RULE, t1).await.unwrap().is_some());
    // A refund gives one back.
    l.refund("k", RULE, t1).await.unwrap();
    assert_eq!(l.reserve("k", RULE, t1).await.unwrap(), None);
    assert!(l.check("k", RULE, t1).await.unwrap().is_some());
    // After the whole budget refills, a full burst again.
    let t2 = t1 + 30_000;
    for _ in 0..3 {
        assert_eq!(l.reserve("k", RULE, t2).await.unwrap(), None);
    }
    assert!(l.check("k", RULE, t2).await.unwrap().is_some());
    // Refunds never make more than a whole budget.
    for _ in 0..10 {
        l.refund("other", RULE, t2).await.unwrap();
    }
    for _ in 0..3 {
        assert_eq!(l.reserve("other", RULE, t2).await.unwrap(), None);
    }
    assert!(l.reserve("other", RULE, t2).await.unwrap().is_some());
    // Other keys are untouched; reset forgives.
    assert_eq!(l.check("third", RULE, t2).await.unwrap(), None);
    l.reset("k").await.unwrap();
    assert_eq!(l.check("k", RULE, t2).await.unwrap(), None);
}

/// Conformance check `a_batch_of_opens_is_written_whole_or_not_at_all`: a
/// batch with one entry the database refuses (its session does not exist)
/// writes none of the others, whether it fits one statement or takes
/// several.
pub async fn a_batch_of_opens_is_written_whole_or_not_at_all<S: FullStore + ?Sized>(s: &S) {
    let sys = system("whole");
    s.create_system(&sys).await.unwrap();
    let rec = pending_session(sys.id);
    s.create_session(&rec).await.unwrap();
    let missing: crate::ids::SessionId = Uuid::new_v4().into();
    for size in [3, 150] {
        let mut batch: Vec<AccessLog> = (0..size)
            .map(|_| AccessLog::opening(rec.id, AccessKind::Forward, None, "alice", None))
            .collect();
        batch[size - 1].session_id = missing;
        assert!(s.open_accesses(&batch).await.is_err(), "a batch of {size}");
        let page = Page {
            page: 1,
            page_size: 500,
        };
        let got = s.list_access(rec.id, page).await.unwrap();
        assert!(
            got.items.is_empty(),
            "a batch of {size} left {} entries",
            got.items.len()
        );
    }
    // The same batch without the bad entry goes in whole.
    let good: Vec<AccessLog> = (0..3)
        .map(|_| AccessLog::opening(rec.id, AccessKind::Forward, None, "alice", None))
        .collect();
    s.open_accesses(&good).await.unwrap();
    let page = Page {
        page: 1,
        page_size: 500,
    };
    assert_eq!(s.list_access(rec.id, page).await.unwrap().items.len(), 3);
}

/// Conformance check `access_closes_are_written_together`: a batch of
/// opens and one of closes (more than one statement's worth) lands on the right entries,
/// with and without an error, and skips ids that have no entry.
pub async fn access_closes_are_written_together<S: FullStore + ?Sized>(s: &S) {
    let sys = system("delta");
    s.create_system(&sys).await.unwrap();
    let now = now_millis();
    let rec = pending_session(sys.id);
    s.create_session(&rec).await.unwrap();
    let mut entries = Vec::new();
    for i in 0..250_i64 {
        let e = AccessLog {
            id: Uuid::new_v4(),
            session_id: rec.id,
            kind: AccessKind::Forward,
            service: Some("ssh".into()),
            actor: "alice".into(),
            ip_address: None,
            opened_at: now + i,
            closed_at: None,
            bytes_to_service: 0,
            bytes_from_service: 0,
            error: None,
        };
        entries.push(e);
    }
    // More than one statement's worth together, and some one by one.
    s.open_accesses(&entries[..200]).await.unwrap();
    s.open_accesses(&[]).await.unwrap();
    for e in &entries[200..] {
        s.open_access(e).await.unwrap();
    }
    // Every entry but the last closes; one close names no entry.
    let mut closes: Vec<AccessClose> = entries[..249]
        .iter()
        .enumerate()
        .map(|(i, e)| AccessClose {
            id: e.id,
            closed_at: e.opened_at + 10,
            bytes_to_service: i as u64,
            bytes_from_service: u64::MAX,
            error: (i % 2 == 1).then(|| format!("failed {i}")),
        })
        .collect();
    closes.push(AccessClose {
        id: Uuid::new_v4(),
        closed_at: now,
        bytes_to_service: 1,
        bytes_from_service: 1,
        error: None,
    });
    s.close_accesses(&closes).await.unwrap();
    s.close_accesses(&[]).await.unwrap();
    let page = Page {
        page: 1,
        page_size: 500,
    };
    let got = s.list_access(rec.id, page).await.unwrap();
    assert_eq!(got.items.len(), 250);
    for e in &got.items {
        let i = entries.iter().position(|x| x.id == e.id).unwrap();
        if i == 249 {
            assert_eq!(e.closed_at, None, "the entry no close named stays open");
            continue;
        }
        assert_eq!(e.closed_at, Some(entries[i].opened_at + 10));
        assert_eq!(e.bytes_to_service, i as u64);
        assert_eq!(
            e.bytes_from_service,
            i64::MAX as u64,
            "clamped to the column"
        );
        assert_eq!(e.error, (i % 2 == 1).then(|| format!("failed {i}")));
    }
}

/// Conformance check `deleted_users_and_systems_are_gone_with_what_hangs_on_them`.
pub async fn deleted_users_and_systems_are_gone_with_what_hangs_on_them<S: FullStore + ?Sized>(
    s: &S,
) {
    let (kept, gone) = (system("kept"), system("gone"));
    s.create_system(&kept).await.unwrap();
    s.create_system(&gone).await.unwrap();
    let stranger: crate::ids::SystemId = Uuid::new_v4().into();
    let mut found = s
        .existing_systems(&[kept.id, gone.id, stranger])
        .await
        .unwrap();
    found.sort_by_key(|id| id.to_string());
    let mut want = vec![kept.id, gone.id];
    want.sort_by_key(|id| id.to_string());
    assert_eq!(found, want);
    assert!(s.existing_systems(&[]).await.unwrap().is_empty());
    assert!(s.delete_system(gone.id).await.unwrap());
    assert_eq!(
        s.existing_systems(&[kept.id, gone.id]).await.unwrap(),
        vec![kept.id]
    );

    let bob = user("bob", Role::Operator);
    s.create_user(&bob).await.unwrap();
    s.grant(bob.id, kept.id, None, now_millis()).await.unwrap();
    let epoch = s.access_epoch().await.unwrap();
    assert!(s.delete_user(bob.id).await.unwrap());
    assert!(
        s.access_epoch().await.unwrap() > epoch,
        "deleting a user moves the epoch"
    );
    assert!(s.user_by_name("bob").await.unwrap().is_none());
    assert!(!s.has_grant(bob.id, kept.id, now_millis()).await.unwrap());
    assert!(!s.delete_user(bob.id).await.unwrap(), "gone already");
    // The name is free again.
    s.create_user(&user("bob", Role::Viewer)).await.unwrap();
}

/// One `#[tokio::test]` per conformance check, each on a fresh store from
/// `$fresh`: an async function answering `Some((guard, store))`, where the
/// guard keeps the store's backing alive (a temporary directory, a
/// database) for the test, or `None` to skip (a database that is not there).
#[macro_export]
macro_rules! store_conformance_tests {
    ($fresh:path) => {
        $crate::store_conformance_tests!(@each $fresh; duplicate_names_conflict, users_are_listed_disabled_and_hold_a_password_hash, a_login_rotates_once_per_token_and_ends_for_good, deleting_a_system_takes_its_grants_along, grants_are_given_checked_and_revoked, the_last_agent_address_is_the_newest_sessions, sessions_move_through_their_states, restart_recovery_puts_live_sessions_in_grace_and_expires_pending_ones, the_audit_log_filters_and_pages_newest_first, resources_round_trip_and_names_are_unique, grants_expire_and_revoke, api_tokens_are_listed_and_revoked, old_audit_events_and_closed_access_logs_are_pruned, every_change_that_takes_access_moves_the_epoch, active_grants_are_listed_and_filtered, access_closes_are_written_together, a_batch_of_opens_is_written_whole_or_not_at_all, deleted_users_and_systems_are_gone_with_what_hangs_on_them);
    };
    (@each $fresh:path; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                let Some((_guard, store)) = $fresh().await else {
                    return;
                };
                $crate::store::conformance::$check(&store).await;
            }
        )*
    };
}
