//! The admin commands that show what is there (`user list`, `system list`,
//! `grant list`) and `system rename`: a table for people, one JSON object
//! with `items` and `total` for scripts.

use rtunnel_core::store::sql::SqlStore;
use rtunnel_core::store::{
    AuditKind, IdentityStore, Page, SessionStatus, SessionStore, now_millis, rfc3339,
};
use serde_json::json;

use super::{Failure, audit_admin, find_user, print_out};

/// Every page of a paged list.
pub(super) async fn all<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Failure>
where
    F: FnMut(Page) -> Fut,
    Fut: std::future::Future<
            Output = Result<rtunnel_core::store::Paged<T>, rtunnel_core::store::StoreError>,
        >,
{
    let mut page = Page {
        page: 1,
        page_size: rtunnel_core::store::MAX_PAGE_SIZE,
    };
    let mut items = Vec::new();
    loop {
        let got = fetch(page)
            .await
            .map_err(|e| Failure::other(e.to_string()))?;
        let done = got.items.len() < page.page_size as usize;
        items.extend(got.items);
        if done {
            return Ok(items);
        }
        page.page += 1;
    }
}

/// A time to the second, for tables.
pub(super) fn day(ms: i64) -> String {
    rfc3339(ms).chars().take(19).collect()
}

/// `user list`.
pub(super) async fn users(store: &SqlStore, json_out: bool) -> Result<(), Failure> {
    let users = all(|p| store.list_users(p)).await?;
    let mut text = format!(
        "{:<24}  {:<8}  {:<8}  {:<20}  EMAIL",
        "NAME", "ROLE", "STATE", "CREATED"
    );
    let mut rows = Vec::new();
    for u in &users {
        let state = if u.disabled { "disabled" } else { "active" };
        text.push_str(&format!(
            "\n{:<24}  {:<8}  {:<8}  {:<20}  {}",
            u.name,
            u.role.as_str(),
            state,
            day(u.created_at),
            u.email.as_deref().unwrap_or("")
        ));
        rows.push(json!({
            "id": u.id, "name": u.name, "role": u.role, "disabled": u.disabled,
            "email": u.email, "created_at": rfc3339(u.created_at),
        }));
    }
    print_out(
        json_out,
        json!({"items": rows, "total": users.len()}),
        &text,
    );
    Ok(())
}

/// `system list`: each system with whether its agent is connected and its
/// current session, as the newest session says.
pub(super) async fn systems(store: &SqlStore, json_out: bool) -> Result<(), Failure> {
    let systems = all(|p| store.list_systems(None, now_millis(), p)).await?;
    let mut text = format!(
        "{:<24}  {:<7}  {:<36}  {:<12}  AGENT",
        "NAME", "ONLINE", "SESSION", "STATUS"
    );
    let mut rows = Vec::new();
    for s in &systems {
        let latest = store
            .latest_session(s.id)
            .await
            .map_err(|e| Failure::other(e.to_string()))?;
        let current = latest.as_ref().filter(|l| !l.status.is_final());
        let online = latest
            .as_ref()
            .is_some_and(|l| l.status == SessionStatus::Active);
        let agent = latest.as_ref().and_then(|l| l.agent_software.clone());
        text.push_str(&format!(
            "\n{:<24}  {:<7}  {:<36}  {:<12}  {}",
            s.name,
            if online { "yes" } else { "no" },
            current.map_or_else(|| "-".to_owned(), |c| c.id.to_string()),
            current.map_or("-", |c| c.status.as_str()),
            agent.as_deref().unwrap_or("")
        ));
        rows.push(json!({
            "id": s.id, "name": s.name, "key": s.key, "created_at": rfc3339(s.created_at),
            "online": online,
            "session": current.map(|c| json!({"id": c.id, "status": c.status})),
            "agent_software": agent,
        }));
    }
    print_out(
        json_out,
        json!({"items": rows, "total": systems.len()}),
        &text,
    );
    Ok(())
}

/// `grant list [--user NAME] [--system NAME]`: active grants on systems.
pub(super) async fn grants(
    store: &SqlStore,
    user: Option<&str>,
    system: Option<&str>,
    json_out: bool,
) -> Result<(), Failure> {
    let user = match user {
        Some(name) => Some(find_user(store, name).await?),
        None => None,
    };
    let system = match system {
        Some(name) => Some(find_system(store, name).await?),
        None => None,
    };
    let now = now_millis();
    let grants = all(|p| {
        store.list_grants(
            user.as_ref().map(|u| u.id),
            system.as_ref().map(|s| s.id),
            now,
            p,
        )
    })
    .await?;
    let mut users = std::collections::HashMap::new();
    let mut systems = std::collections::HashMap::new();
    let mut text = format!("{:<24}  {:<24}  {:<20}  ENDS", "USER", "SYSTEM", "GIVEN");
    let mut rows = Vec::new();
    for g in &grants {
        if let std::collections::hash_map::Entry::Vacant(slot) = users.entry(g.user_id) {
            let name = store
                .user_by_id(g.user_id)
                .await
                .map_err(|e| Failure::other(e.to_string()))?
                .map_or_else(|| g.user_id.to_string(), |u| u.name);
            slot.insert(name);
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = systems.entry(g.system_id) {
            let name = store
                .system(g.system_id)
                .await
                .map_err(|e| Failure::other(e.to_string()))?
                .map_or_else(|| g.system_id.to_string(), |s| s.name);
            slot.insert(name);
        }
        text.push_str(&format!(
            "\n{:<24}  {:<24}  {:<20}  {}",
            users[&g.user_id],
            systems[&g.system_id],
            day(g.created_at),
            g.expires_at.map_or_else(|| "never".to_owned(), day)
        ));
        rows.push(json!({
            "id": g.id, "user": users[&g.user_id], "user_id": g.user_id,
            "system": systems[&g.system_id], "system_id": g.system_id,
            "created_at": rfc3339(g.created_at), "expires_at": g.expires_at.map(rfc3339),
        }));
    }
    print_out(
        json_out,
        json!({"items": rows, "total": grants.len()}),
        &text,
    );
    Ok(())
}

/// `system rename NAME NEW`: the key, secret and sessions stay.
pub(super) async fn rename_system(store: &SqlStore, name: &str, new: &str) -> Result<(), Failure> {
    crate::enroll::validate_name(new).map_err(|e| Failure::usage(e.message))?;
    let system = find_system(store, name).await?;
    if store
        .system_by_name(new)
        .await
        .map_err(|e| Failure::other(e.to_string()))?
        .is_some()
    {
        return Err(Failure::other(format!("another system is named {new:?}")));
    }
    audit_admin(
        store,
        AuditKind::SystemRenamed,
        Some(system.id),
        json!({"from": name, "to": new}),
    )
    .await?;
    store.rename_system(system.id, new).await.map_err(|e| {
        super::store_failure(
            e,
            &format!("cannot rename {name:?}"),
            &format!("another system is named {new:?}"),
        )
    })?;
    eprintln!("{name} is now {new}");
    Ok(())
}

pub(super) async fn find_system(
    store: &SqlStore,
    name: &str,
) -> Result<rtunnel_core::store::System, Failure> {
    store
        .system_by_name(name)
        .await
        .map_err(|e| Failure::other(e.to_string()))?
        .ok_or_else(|| Failure::other(format!("no system named {name:?}")))
}
