//! `POST /api/v1/auth/login`, `/refresh` and `/logout`.
//!
//! A login starts a refresh-token family ([`Login`]). Each refresh answers a
//! new pair and makes the presented refresh token dead; presenting a dead
//! one again means it was copied, so the whole family ends (every access
//! token it issued stops working, forwards it opened are cut) and the replay
//! is audited as `refresh_token_replayed`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rtunnel_auth::claims::{ACCESS_TTL, Claims, REFRESH_TTL, TokenKind};
use rtunnel_auth::password::{verify_password, verify_password_against_nothing};
use rtunnel_core::ids::UserId;
use rtunnel_core::store::{AuditEvent, AuditKind, Login, User, now_millis};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::auth::Authenticated;
use super::browser::BrowserPolicy;
use super::extract::Json as JsonBody;
use crate::error::ApiError;
use crate::ratelimit::{Attempt, KNOWN_ADDRESS_FOR, Scope};
use crate::routing::Tunnels;
use crate::state::{AppState, Audit, Stores};

/// Longest user name looked up.
const MAX_USERNAME_LEN: usize = 128;

/// Body of a login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct LoginRequest {
    username: String,
    password: String,
    /// The console's sign-in: the tokens go into cookies, not the answer
    /// (see `api::browser`).
    #[serde(default)]
    cookie: bool,
}

/// Body of a refresh.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(crate) struct RefreshRequest {
    /// Without it, the console's refresh cookie is used (and rotated).
    #[serde(default)]
    refresh_token: Option<String>,
}

/// A new token pair.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenPair {
    access_token: String,
    refresh_token: String,
    /// Seconds the access token lasts.
    expires_in: u64,
    token_type: &'static str,
}

fn invalid_login() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid user name or password",
    )
}

fn invalid_refresh() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
        "invalid, expired or already used refresh token; log in again",
    )
}

/// `POST /api/v1/auth/login`.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, description = "A token pair (with `cookie: true`: cookies and `{expires_in, user}`)", body = TokenPair), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = peer.ip().to_string();
    let attempt = Attempt::new(Scope::Login, &body.username, peer.ip());
    let user = if body.username.len() <= MAX_USERNAME_LEN {
        state.stores.identity.user_by_name(&body.username).await?
    } else {
        None
    };
    let known_address = match &user {
        Some(u) => state
            .stores
            .logins
            .has_login_from(
                u.id,
                &ip,
                now_millis() - KNOWN_ADDRESS_FOR.as_millis() as i64,
            )
            .await
            .unwrap_or(false),
        None => false,
    };
    // One failure is reserved before the password is checked, so parallel
    // guesses cannot all pass one check; a refused attempt is counted and
    // reported in aggregate, not audited one by one.
    let reservation = match attempt.reserve(&state, known_address).await {
        Ok(r) => r,
        Err(limited) => {
            let name = user
                .as_ref()
                .map_or(body.username.as_str(), |u| u.name.as_str());
            state
                .refusals
                .throttled(AuditKind::LoginFailed, name, attempt.address());
            return Err(limited);
        }
    };
    let hash = match &user {
        Some(u) => state.stores.identity.password_hash(u.id).await?,
        None => None,
    };
    let password_ok = check_password(&state, body.password, hash.clone()).await?;
    let user = match user {
        Some(u) if password_ok && !u.disabled => u,
        other => {
            drop(reservation);
            let reason = match (&other, password_ok) {
                (Some(u), true) if u.disabled => "user_disabled",
                (Some(_), _) if hash.is_none() => "no_password",
                (Some(_), _) => "wrong_password",
                (None, _) => "unknown_user",
            };
            audit_failure(&state, &body.username, other.as_ref(), &ip, reason).await;
            return Err(invalid_login());
        }
    };
    reservation.succeeded(&state).await;

    let now = now_millis();
    let family = Uuid::new_v4();
    let refresh = refresh_claims(user.id, family, now);
    let login = Login {
        id: family,
        user_id: user.id,
        current_jti: refresh.jti,
        created_at: now,
        last_used_at: now,
        expires_at: refresh.exp,
        revoked_at: None,
        revoked_reason: None,
        ip_address: Some(ip.clone()),
    };
    let mut event = AuditEvent::new(AuditKind::Login);
    event.actor = Some(user.name.clone());
    event.ip_address = Some(ip);
    event.details = json!({"login_id": login.id});
    state.audit.record(event).await?;
    state.stores.logins.create_login(&login).await?;
    Ok(answer(
        &state,
        &user,
        pair(&state, &user, refresh, now),
        body.cookie,
    ))
}

/// `POST /api/v1/auth/refresh`.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses((status = 200, description = "A new pair; the presented refresh token is dead", body = TokenPair), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn refresh(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Response, ApiError> {
    let now = now_millis();
    let (presented, cookie) = match &body.refresh_token {
        Some(token) => (token.as_str(), false),
        None => {
            let token = state.browser.refresh_token(&headers).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_body",
                    "refresh_token is missing (and there is no console sign-in to refresh)",
                )
            })?;
            state.browser.check(&method, &headers)?;
            (token, true)
        }
    };
    let presented = Claims::verify(&*state.signer, presented, TokenKind::Refresh, now)
        .map_err(|_| invalid_refresh())?;
    let family = presented.fam.ok_or_else(invalid_refresh)?;
    let login = state
        .stores
        .logins
        .login(family)
        .await?
        .filter(|l| l.user_id == presented.sub)
        .ok_or_else(invalid_refresh)?;
    if !login.is_live(now) {
        return Err(invalid_refresh());
    }
    let user = match state.stores.identity.user_by_id(login.user_id).await? {
        Some(u) if !u.disabled => u,
        _ => return Err(invalid_refresh()),
    };
    let ip = peer.ip().to_string();
    if login.current_jti != presented.jti {
        replayed(&state, &user, &login, &ip).await?;
        return Err(invalid_refresh());
    }
    let next = refresh_claims(user.id, family, now);
    let mut event = AuditEvent::new(AuditKind::TokenRefreshed);
    event.actor = Some(user.name.clone());
    event.ip_address = Some(ip.clone());
    event.details = json!({"login_id": family});
    state.audit.record(event).await?;
    let rotated = state
        .stores
        .logins
        .rotate_login(family, presented.jti, next.jti, next.exp, now)
        .await?;
    if !rotated {
        // Another request spent this token between our read and our write:
        // two holders of one refresh token, so it was copied.
        replayed(&state, &user, &login, &ip).await?;
        return Err(invalid_refresh());
    }
    Ok(answer(
        &state,
        &user,
        pair(&state, &user, next, now),
        cookie,
    ))
}

/// The answer to a login or a refresh: the pair itself, or, for the
/// console, the pair in cookies and who signed in.
fn answer(state: &AppState, user: &User, pair: TokenPair, cookie: bool) -> Response {
    if !cookie {
        return Json(pair).into_response();
    }
    let scope = &state.browser;
    let mut resp = Json(json!({
        "expires_in": pair.expires_in,
        "user": Me::from(user),
    }))
    .into_response();
    for c in scope.login(
        &pair.access_token,
        pair.expires_in,
        &pair.refresh_token,
        REFRESH_TTL.as_secs(),
    ) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Who the caller is, as `GET /api/v1/auth/me` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Me {
    id: UserId,
    name: String,
    role: rtunnel_core::store::Role,
    email: Option<String>,
}

impl From<&User> for Me {
    fn from(u: &User) -> Self {
        Me {
            id: u.id,
            name: u.name.clone(),
            role: u.role,
            email: u.email.clone(),
        }
    }
}

/// `GET /api/v1/auth/me`: the caller (the console asks at start).
#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    responses((status = 200, description = "The caller", body = Me), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn me(caller: Authenticated) -> Json<Me> {
    Json(Me::from(&caller.user))
}

/// `POST /api/v1/auth/logout`: ends the login of the access token used.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    responses((status = 204, description = "The login ended"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(crate) async fn logout(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    State(tunnels): State<Tunnels>,
    State(browser): State<BrowserPolicy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Authenticated,
) -> Result<Response, ApiError> {
    let Some(login) = caller.login() else {
        return Err(ApiError::bad_request(
            "not_a_login",
            "this request used an API token, not a login; there is nothing to log out",
        ));
    };
    let mut event = AuditEvent::new(AuditKind::Logout);
    event.actor = Some(caller.user.name.clone());
    event.ip_address = Some(peer.ip().to_string());
    event.details = json!({"login_id": login});
    audit.record(event).await?;
    stores
        .logins
        .revoke_login(login, "logout", now_millis())
        .await?;
    tunnels.cluster.access_changed().await;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if caller.browser {
        for c in browser.cleared() {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
    }
    Ok(resp)
}

/// Ends a family whose dead refresh token came back, and audits it.
async fn replayed(state: &AppState, user: &User, login: &Login, ip: &str) -> Result<(), ApiError> {
    let ended = state
        .stores
        .logins
        .revoke_login(login.id, "refresh_token_replayed", now_millis())
        .await?;
    state.tunnels.cluster.access_changed().await;
    tracing::warn!(user = %user.name, login = %login.id, %ip, "refresh token replayed; login ended");
    let mut event = AuditEvent::new(AuditKind::RefreshTokenReplayed);
    event.actor = Some(user.name.clone());
    event.ip_address = Some(ip.to_owned());
    event.details = json!({
        "login_id": login.id,
        "login_ip_address": login.ip_address,
        "family_revoked": ended,
    });
    state.audit.best_effort(event).await;
    Ok(())
}

/// Password checks (argon2, tens of milliseconds of one core each) that run
/// at once, on blocking threads: the async runtime keeps serving tunnels
/// and the API while logins are checked.
pub(crate) const PASSWORD_CHECKS: usize = 2;

/// How long a login waits for a free password check before it is told the
/// server is busy.
const PASSWORD_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks `password` against `hash` (or burns the same time against none)
/// on a blocking thread, at most [`PASSWORD_CHECKS`] at once.
async fn check_password(
    state: &AppState,
    password: String,
    hash: Option<String>,
) -> Result<bool, ApiError> {
    PasswordWork(state.password_checks.clone())
        .run(move || match &hash {
            Some(hash) => verify_password(&password, hash),
            None => verify_password_against_nothing(&password),
        })
        .await
}

/// The slots for argon2 (checks at login, hashes of new passwords): work
/// of tens of milliseconds of a core each, run on blocking threads, at
/// most [`PASSWORD_CHECKS`] at once, so neither the runtime's threads nor
/// the blocking pool fill with it.
#[derive(Clone)]
pub(crate) struct PasswordWork(pub(crate) Arc<tokio::sync::Semaphore>);

impl axum::extract::FromRef<Arc<AppState>> for PasswordWork {
    fn from_ref(state: &Arc<AppState>) -> Self {
        PasswordWork(state.password_checks.clone())
    }
}

impl PasswordWork {
    /// Runs `work` in a free slot, waiting at most
    /// [`PASSWORD_CHECK_WAIT`] for one (then 503 `busy`).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let busy = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many passwords are being checked; try again in a moment",
            )
        };
        let slot = tokio::time::timeout(PASSWORD_CHECK_WAIT, self.0.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        // The slot goes with the work: a client that hangs up does not
        // free it while its hash still runs.
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|e| ApiError::internal(format!("password work failed: {e}")))
    }
}

async fn audit_failure(
    state: &AppState,
    username: &str,
    user: Option<&User>,
    ip: &str,
    reason: &str,
) {
    crate::metrics::global().auth_failed("login");
    let mut event = AuditEvent::new(AuditKind::LoginFailed);
    event.actor = Some(match user {
        Some(u) => u.name.clone(),
        None => username.chars().take(64).collect(),
    });
    event.ip_address = Some(ip.to_owned());
    event.details = json!({"reason": reason});
    state.audit.best_effort(event).await;
}

/// Claims of a new refresh token of family `family`.
fn refresh_claims(user: UserId, family: Uuid, now: i64) -> Claims {
    let mut claims = Claims::new(TokenKind::Refresh, user, now, REFRESH_TTL);
    claims.fam = Some(family);
    claims
}

/// An access token for `refresh`'s family, and `refresh` itself, signed.
fn pair(state: &AppState, user: &User, refresh: Claims, now: i64) -> TokenPair {
    let mut access = Claims::new(TokenKind::Access, user.id, now, ACCESS_TTL);
    access.fam = refresh.fam;
    TokenPair {
        access_token: access.sign(&*state.signer),
        refresh_token: refresh.sign(&*state.signer),
        expires_in: ACCESS_TTL.as_secs(),
        token_type: "Bearer",
    }
}
