//! Creating systems, users and API tokens: shared by the admin subcommands
//! and the API.

use rtunnel_auth::api_token::ApiToken;
use rtunnel_auth::secret::{generate_hex, generate_secret, hash_secret};
use rtunnel_core::store::{ApiTokenRecord, Millis, System, now_millis};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiError;

/// Longest user or system name.
pub const MAX_NAME_LEN: usize = 128;

/// A freshly enrolled system, with the only copy of its secret.
#[derive(Debug, Serialize)]
pub struct Enrolled {
    /// System id.
    pub id: Uuid,
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

/// A new system row and what to show its enroller once.
pub fn new_system(name: &str) -> (System, Enrolled) {
    let secret = generate_secret();
    let system = System {
        id: Uuid::new_v4(),
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
pub fn new_api_token(user_id: Uuid, expires_at: Option<Millis>) -> (ApiTokenRecord, String) {
    let (token, secret_hash) = ApiToken::generate();
    let record = ApiTokenRecord {
        id: token.id,
        user_id,
        secret_hash,
        created_at: now_millis(),
        expires_at,
    };
    (record, token.to_string())
}
