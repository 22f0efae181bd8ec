//! Errors that are HTTP responses: a status, a stable code and a message,
//! answered as the contract's envelope
//! `{"success": false, "error", "code", "trace_id"}`.
//!
//! A 5xx never carries internals: the detail goes to the server log under the
//! same trace id as the response.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rtunnel_core::proto::{Refusal, RefusalCode};
use rtunnel_core::store::StoreError;

/// An error answered to an API caller.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Message for people (never internals).
    pub message: String,
    /// Detail for the log only.
    internal: Option<String>,
    /// Extra `WWW-Authenticate` challenge, for 401s.
    challenge: Option<&'static str>,
    /// `Retry-After`, for 429s.
    retry_after: Option<std::time::Duration>,
    /// 426 to a WebSocket upgrade of another version: names version 13.
    websocket_version: bool,
}

impl ApiError {
    /// An error with a status, code and public message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            internal: None,
            challenge: None,
            retry_after: None,
            websocket_version: false,
        }
    }

    /// 426 `websocket_version_unsupported`: a WebSocket upgrade of a version
    /// other than 13 (RFC 6455, section 4.4: the answer names the version
    /// this server speaks).
    pub fn websocket_version_unsupported() -> Self {
        let mut e = Self::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_version_unsupported",
            "this endpoint speaks WebSocket version 13 only",
        );
        e.websocket_version = true;
        e
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 for a missing or bad API credential.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.challenge = Some("Bearer");
        e
    }

    /// 403 with a code.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404 with a code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 429 `rate_limited`: too many failed attempts; `Retry-After` says
    /// when to come back (whole seconds, rounded up).
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed attempts; try again in {secs} s"),
        );
        e.retry_after = Some(std::time::Duration::from_secs(secs));
        e
    }

    /// 503 because something we depend on failed; `detail` goes to the log.
    pub fn unavailable(code: &'static str, detail: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "a service rtunnel depends on is unavailable; try again shortly",
        );
        e.internal = Some(detail.to_string());
        e
    }

    /// 500; `detail` goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        );
        e.internal = Some(detail.to_string());
        e
    }

    /// Adds a detail for the log only: what the answer hides from the
    /// caller (a session that exists but is not theirs), for the admin
    /// reading the log.
    pub fn with_log_detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.internal = Some(detail.to_string());
        self
    }

    /// Adds `Retry-After` (whole seconds).
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Adds a `WWW-Authenticate` challenge.
    pub fn with_challenge(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::NotFound(m) => ApiError::not_found("not_found", m),
            StoreError::Backend(m) => {
                crate::metrics::global().store_error();
                ApiError::unavailable("database_unavailable", m)
            }
        }
    }
}

/// The HTTP status a refused stream is answered with.
pub(crate) fn refusal_status(code: RefusalCode) -> StatusCode {
    match code {
        RefusalCode::BadStreamHeader | RefusalCode::UnsupportedKind => StatusCode::BAD_REQUEST,
        RefusalCode::UnknownService => StatusCode::NOT_FOUND,
        RefusalCode::TerminalUnavailable => StatusCode::CONFLICT,
        RefusalCode::Forbidden
        | RefusalCode::NoGrant
        | RefusalCode::UserDisabled
        | RefusalCode::TokenRevoked
        | RefusalCode::LoginEnded
        | RefusalCode::ConsentDenied => StatusCode::FORBIDDEN,
        RefusalCode::UserStreamLimit => StatusCode::TOO_MANY_REQUESTS,
        RefusalCode::TooManyStreams | RefusalCode::AgentReconnecting | RefusalCode::Unavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RefusalCode::SessionEnded => StatusCode::GONE,
        RefusalCode::AgentTimeout => StatusCode::GATEWAY_TIMEOUT,
        RefusalCode::ServiceUnreachable | RefusalCode::AgentUnavailable | RefusalCode::Other => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// A refused stream, for an API caller: the refusal's code and reason,
/// with `Retry-After` where waiting helps.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let retry = match r.code {
            RefusalCode::TooManyStreams | RefusalCode::UserStreamLimit => {
                Some(std::time::Duration::from_secs(1))
            }
            RefusalCode::AgentReconnecting => Some(crate::streams::RECONNECT_RETRY),
            _ => None,
        };
        let mut e = ApiError::new(refusal_status(r.code), r.code.as_str(), r.reason);
        e.retry_after = retry;
        e
    }
}

/// A short random id tying a response to its log line.
pub(crate) fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// The error envelope every refusal answers with.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// Always `false`.
    success: bool,
    /// What went wrong, for a person.
    error: String,
    /// What went wrong, for a program: a stable `snake_case` code.
    code: &'static str,
    /// Finds the server's log line of this answer.
    trace_id: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let trace_id = new_trace_id();
        if self.status.is_server_error() {
            tracing::error!(
                trace_id,
                status = self.status.as_u16(),
                code = self.code,
                detail = self.internal.as_deref().unwrap_or(""),
                "request failed"
            );
        } else {
            tracing::info!(
                trace_id,
                status = self.status.as_u16(),
                code = self.code,
                message = %self.message,
                detail = self.internal.as_deref(),
                "request refused"
            );
        }
        let body = ErrorBody {
            success: false,
            error: self.message,
            code: self.code,
            trace_id,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(challenge) = self.challenge {
            let value = if challenge == "Basic" {
                HeaderValue::from_static("Basic realm=\"rtunnel\"")
            } else {
                HeaderValue::from_static("Bearer realm=\"rtunnel\"")
            };
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        if self.websocket_version {
            let headers = resp.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        if let Some(wait) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs()));
        }
        resp
    }
}
