//! `system remove` and `user remove`: audited first, then deleted. A
//! running server notices within a second (the access epoch moves): the
//! removed system's tunnel is closed, what the removed user opened is cut.

use rtunnel_core::store::sql::SqlStore;
use rtunnel_core::store::{AuditKind, IdentityStore, Role};
use serde_json::json;

use super::lists::{all, find_system};
use super::{Failure, audit_admin, find_user};

/// `system remove NAME`: the system with its sessions, access logs and
/// grants; its agent is refused from then on.
pub(super) async fn system(store: &SqlStore, name: &str) -> Result<(), Failure> {
    let system = find_system(store, name).await?;
    audit_admin(
        store,
        AuditKind::SystemDeleted,
        Some(system.id),
        json!({"name": system.name, "key": system.key}),
    )
    .await?;
    store
        .delete_system(system.id)
        .await
        .map_err(|e| Failure::other(format!("cannot remove {name:?}: {e}")))?;
    eprintln!(
        "{name}: removed, with its sessions and grants; a running server closes its tunnel \
         within a second, and its agent is refused from now on"
    );
    Ok(())
}

/// `user remove NAME`: the user with their grants, API tokens and logins.
/// The last enabled admin is kept: nobody could administer the server
/// through the API after it.
pub(super) async fn user(store: &SqlStore, name: &str) -> Result<(), Failure> {
    let user = find_user(store, name).await?;
    if user.role == Role::Admin && !user.disabled {
        let users = all(|page| store.list_users(page)).await?;
        let admins = users
            .iter()
            .filter(|u| u.role == Role::Admin && !u.disabled)
            .count();
        if admins <= 1 {
            return Err(Failure::usage(format!(
                "{name} is the last enabled admin: add another admin first \
                 (`rtunnel-server user add NAME --role admin`)"
            )));
        }
    }
    audit_admin(
        store,
        AuditKind::UserDeleted,
        None,
        json!({"name": user.name, "id": user.id, "role": user.role}),
    )
    .await?;
    store
        .delete_user(user.id)
        .await
        .map_err(|e| Failure::other(format!("cannot remove {name:?}: {e}")))?;
    eprintln!(
        "{name}: removed, with their grants, API tokens and logins; a running server cuts \
         what they opened within a second"
    );
    Ok(())
}
