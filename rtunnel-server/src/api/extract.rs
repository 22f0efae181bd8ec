//! `Query` and `Json` extractors whose rejections answer the contract's error
//! envelope instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use std::sync::Arc;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest JSON request body accepted.
pub(crate) const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

/// A query string, or 400 `invalid_query`.
#[derive(Debug)]
pub(crate) struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// A JSON body, or 400 `invalid_body` (413 `body_too_large` past
/// [`MAX_JSON_BODY_BYTES`], which the router enforces; 408 `body_timeout`
/// when the whole body has not arrived within the handshake timeout, so a
/// body that never completes does not hold its connection).
///
/// A body without a `Content-Type` is read as JSON. So is one declared
/// `application/x-www-form-urlencoded` (what `curl -d` sends) when the
/// request carries an `Authorization` header, which no cross-site form can
/// send: a form posted from another site (login CSRF) is still refused.
/// Any other declared type answers 415 `unsupported_media_type`. An empty
/// body reads as `{}`, so endpoints whose fields are all optional take no
/// body at all.
#[derive(Debug)]
pub(crate) struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let deadline = state.config.body_timeout;
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let authorized = req
            .headers()
            .contains_key(axum::http::header::AUTHORIZATION);
        match declared.as_deref() {
            None | Some("") => {}
            Some("application/x-www-form-urlencoded") if authorized => {}
            Some(t) if t == "application/json" || t.ends_with("+json") => {}
            Some(other) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("the body must be JSON (Content-Type: application/json), not {other}"),
                ));
            }
        }
        let read = axum::body::Bytes::from_request(req, state);
        let Ok(read) = tokio::time::timeout(deadline, read).await else {
            return Err(ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(deadline)
                ),
            ));
        };
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    e.status(),
                    "body_too_large",
                    format!("request bodies are limited to {MAX_JSON_BODY_BYTES} bytes"),
                ));
            }
            Err(e) => return Err(ApiError::new(e.status(), "invalid_body", e.body_text())),
        };
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text).map(Json).map_err(|e| {
            // As axum answers: malformed JSON is a bad request; JSON of the
            // wrong shape (a missing or unknown field) cannot be processed.
            let status = match e.classify() {
                serde_json::error::Category::Data => axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                _ => axum::http::StatusCode::BAD_REQUEST,
            };
            ApiError::new(
                status,
                "invalid_body",
                format!("the body is not the JSON this endpoint takes: {e}"),
            )
        })
    }
}
