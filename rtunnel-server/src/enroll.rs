//! Creating systems, users and API tokens: shared by the admin subcommands
//! and the API.

use rtunnel_auth::api_token::ApiToken;
use rtunnel_auth::secret::{generate_hex, generate_secret, hash_secret};
use rtunnel_core::ids::{SystemId, UserId};
use rtunnel_core::store::{
    ApiTokenRecord, IdentityStore, LoginStore, Millis, Role, StoreError, System, User, now_millis,
};
use serde::Serialize;

use crate::error::ApiError;

/// Longest user or system name.
pub const MAX_NAME_LEN: usize = 128;

/// A freshly enrolled system, with the only copy of its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Enrolled {
    /// System id.
    pub id: SystemId,
    /// Name.
    pub name: String,
    /// Public key for the agent.
    pub key: String,
    /// Secret for the agent; not retrievable later.
    pub secret: String,
}

/// Checks a user or system name: 1 to 128 printable characters, no spaces
/// at the ends.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.trim() == name
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "names are 1 to {MAX_NAME_LEN} printable characters without surrounding spaces"
            ),
        ))
    }
}

/// Longest email address.
pub const MAX_EMAIL_LEN: usize = 254;

/// A new user row after checking its name and email, and the argon2id hash
/// of its password if it has one.
pub fn new_user(
    name: &str,
    role: Role,
    email: Option<String>,
    password: Option<&str>,
) -> Result<(User, Option<String>), ApiError> {
    validate_name(name)?;
    if email
        .as_ref()
        .is_some_and(|e| e.len() > MAX_EMAIL_LEN || !e.contains('@') || e.trim() != e)
    {
        return Err(ApiError::bad_request(
            "invalid_email",
            "email is not an email address",
        ));
    }
    let hash = password
        .map(rtunnel_auth::password::hash_password)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_password", e.to_string()))?;
    let user = User {
        id: UserId::new(),
        name: name.to_owned(),
        role,
        disabled: false,
        created_at: now_millis(),
        email,
    };
    Ok((user, hash))
}

/// Disables (or enables) a user; disabling also ends every login of theirs.
/// Callers tell open connections to check again. False if no such user.
pub async fn set_disabled(
    identity: &dyn IdentityStore,
    logins: &dyn LoginStore,
    user_id: UserId,
    disabled: bool,
) -> Result<bool, StoreError> {
    if !identity.set_user_disabled(user_id, disabled).await? {
        return Ok(false);
    }
    if disabled {
        logins
            .revoke_user_logins(user_id, "user_disabled", now_millis())
            .await?;
    }
    Ok(true)
}

/// Sets (or removes) a user's password and ends every login of theirs: a
/// password reset is often done because the old one leaked, and a login
/// opened with it must not live on. Returns how many logins ended. Callers
/// tell open connections to check again (what a login opened is cut). API
/// tokens are credentials of their own and stay (`token revoke`).
pub async fn set_password(
    identity: &dyn IdentityStore,
    logins: &dyn LoginStore,
    user_id: UserId,
    hash: Option<&str>,
) -> Result<Option<u64>, StoreError> {
    if !identity.set_password_hash(user_id, hash).await? {
        return Ok(None);
    }
    let ended = logins
        .revoke_user_logins(user_id, "password_changed", now_millis())
        .await?;
    Ok(Some(ended))
}

/// A new system row and what to show its enroller once.
pub fn new_system(name: &str) -> (System, Enrolled) {
    let secret = generate_secret();
    let system = System {
        id: SystemId::new(),
        name: name.to_owned(),
        key: format!("sys_{}", generate_hex(12)),
        secret_hash: hash_secret(&secret),
        created_at: now_millis(),
    };
    let enrolled = Enrolled {
        id: system.id,
        name: system.name.clone(),
        key: system.key.clone(),
        secret,
    };
    (system, enrolled)
}

/// A new API token for a user, the row to store and the string to show once.
pub fn new_api_token(user_id: UserId, expires_at: Option<Millis>) -> (ApiTokenRecord, String) {
    let (token, secret_hash) = ApiToken::generate();
    let record = ApiTokenRecord {
        id: token.id,
        user_id,
        secret_hash,
        created_at: now_millis(),
        expires_at,
        revoked_at: None,
    };
    (record, token.to_string())
}
