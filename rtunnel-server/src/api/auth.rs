//! Who is calling: Bearer API tokens or access tokens for users, HTTP Basic
//! for agents.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rtunnel_auth::access::{self, Action};
use rtunnel_auth::api_token::ApiToken;
use rtunnel_auth::claims::{Claims, TokenKind};
use rtunnel_auth::secret::{verify_against_nothing, verify_secret};
use rtunnel_core::ids::{SystemId, UserId};
use rtunnel_core::store::{User, now_millis};
use uuid::Uuid;

use super::browser::BrowserPolicy;
use crate::error::ApiError;
use crate::revocation::Access;

/// Longest `Authorization` header looked at.
pub(crate) const MAX_AUTHORIZATION_LEN: usize = 1024;

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An API token (`rtk_...`), by id.
    ApiToken(Uuid),
    /// An access token from a login, by the login's id (refresh family):
    /// it stops working the moment that login ends.
    Login(Uuid),
}

/// The authenticated caller of a request and the credential it used.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who.
    pub user: User,
    /// With what.
    pub credential: Credential,
    /// Whether it came in the console's cookie (see `api::browser`).
    pub(crate) browser: bool,
}

impl Authenticated {
    /// The login behind the request, if it came with an access token.
    pub fn login(&self) -> Option<Uuid> {
        match self.credential {
            Credential::Login(id) => Some(id),
            Credential::ApiToken(_) => None,
        }
    }

    /// The API token behind the request, if it came with one.
    pub fn token(&self) -> Option<Uuid> {
        match self.credential {
            Credential::ApiToken(id) => Some(id),
            Credential::Login(_) => None,
        }
    }
}

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    Access: FromRef<S>,
    BrowserPolicy: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            let browser = BrowserPolicy::from_ref(state);
            if let Some(token) = browser.access_token(&parts.headers) {
                browser.check(&parts.method, &parts.headers)?;
                // The cookie holds an access token, never an API token.
                if token.starts_with(rtunnel_auth::api_token::PREFIX) {
                    return Err(invalid_token());
                }
                let mut caller = authenticate_bearer(&Access::from_ref(state), token).await?;
                caller.browser = true;
                return Ok(caller);
            }
        }
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            // The launcher contract's words, for every endpoint.
            let mut e = ApiError::unauthorized(crate::launcher::messages::MISSING_AUTHORIZATION);
            e.code = "missing_authorization";
            return Err(e);
        }
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::unauthorized("malformed bearer token"))?;
        authenticate_bearer(&Access::from_ref(state), token).await
    }
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub(crate) struct CurrentUser(pub User);

impl<S> FromRequestParts<S> for CurrentUser
where
    S: Send + Sync,
    Access: FromRef<S>,
    BrowserPolicy: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Authenticated::from_request_parts(parts, state)
            .await
            .map(|a| CurrentUser(a.user))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return None;
    }
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn invalid_token() -> ApiError {
    crate::metrics::global().auth_failed("token");
    ApiError::unauthorized("invalid or expired token")
}

/// Resolves a bearer token (an API token or an access token) to its user.
/// Unknown, wrong, expired tokens, ended logins and disabled users all get
/// the same 401.
pub(crate) async fn authenticate_bearer(
    access: &Access,
    token: &str,
) -> Result<Authenticated, ApiError> {
    if token.starts_with(rtunnel_auth::api_token::PREFIX) {
        return authenticate_token(access, token).await;
    }
    let claims = Claims::verify(&*access.signer, token, TokenKind::Access, now_millis())
        .map_err(|_| invalid_token())?;
    let login = claims.fam.ok_or_else(invalid_token)?;
    let live = access
        .logins
        .login(login)
        .await?
        .is_some_and(|l| l.user_id == claims.sub && l.is_live(now_millis()));
    if !live {
        return Err(invalid_token());
    }
    let user = active_user(access, claims.sub).await?;
    Ok(Authenticated {
        user,
        credential: Credential::Login(login),
        browser: false,
    })
}

/// Resolves an API token to its user.
pub(crate) async fn authenticate_token(
    access: &Access,
    token: &str,
) -> Result<Authenticated, ApiError> {
    let parsed = ApiToken::parse(token).ok_or_else(invalid_token)?;
    let Some(record) = access.identity.api_token(parsed.id).await? else {
        verify_against_nothing(&parsed.secret);
        return Err(invalid_token());
    };
    if !verify_secret(&parsed.secret, &record.secret_hash) {
        return Err(invalid_token());
    }
    if !record.is_live(now_millis()) {
        return Err(invalid_token());
    }
    let user = active_user(access, record.user_id).await?;
    Ok(Authenticated {
        user,
        credential: Credential::ApiToken(record.id),
        browser: false,
    })
}

/// The caller again, as it stands now: `None` once its login ended, its
/// API token was revoked or expired, or its user was disabled or deleted
/// (for what stays open after authenticating, such as an event stream).
pub(crate) async fn reauthenticate(
    access: &Access,
    caller: &Authenticated,
) -> Result<Option<User>, ApiError> {
    let now = now_millis();
    let live = match caller.credential {
        Credential::Login(id) => access
            .logins
            .login(id)
            .await?
            .is_some_and(|l| l.user_id == caller.user.id && l.is_live(now)),
        Credential::ApiToken(id) => access
            .identity
            .api_token(id)
            .await?
            .is_some_and(|t| t.user_id == caller.user.id && t.is_live(now)),
    };
    if !live {
        return Ok(None);
    }
    match active_user(access, caller.user.id).await {
        Ok(user) => Ok(Some(user)),
        Err(e) if e.status == axum::http::StatusCode::UNAUTHORIZED => Ok(None),
        Err(e) => Err(e),
    }
}

/// The user with this id, if it exists and is not disabled.
async fn active_user(access: &Access, id: UserId) -> Result<User, ApiError> {
    match access.identity.user_by_id(id).await? {
        Some(user) if !user.disabled => Ok(user),
        _ => Err(invalid_token()),
    }
}

/// Asks the access decision whether `user` may do `action` on `system_id`.
pub(crate) async fn authorize(
    access: &Access,
    user: &User,
    action: Action,
    system_id: SystemId,
) -> Result<(), ApiError> {
    let has_grant = match user.role {
        rtunnel_core::store::Role::Admin => false,
        _ => {
            access
                .identity
                .has_grant(user.id, system_id, now_millis())
                .await?
        }
    };
    let decision = access::decide(user, action, has_grant);
    if decision.allowed() {
        return Ok(());
    }
    let message = match decision {
        access::Decision::DenyNoGrant => "you hold no active grant on this system",
        access::Decision::DenyDisabled => "this user is disabled",
        _ => "your role does not allow this",
    };
    Err(ApiError::forbidden(decision.code(), message))
}

/// Refuses anyone but an admin.
pub(crate) fn require_admin(user: &User) -> Result<(), ApiError> {
    let decision = access::decide(user, Action::Administer, false);
    if decision.allowed() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            decision.code(),
            "this needs the admin role",
        ))
    }
}

/// `(key, secret)` from an HTTP Basic header, if well formed.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return None;
    }
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (key, secret) = decoded.split_once(':')?;
    Some((key.to_owned(), secret.to_owned()))
}
