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
#[derive(Debug)]
pub(crate) struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let deadline = state.config.body_timeout;
        let read = axum::Json::<T>::from_request(req, state);
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
        match read {
            Ok(j) => Ok(Json(j.0)),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    e.status(),
                    "body_too_large",
                    format!("request bodies are limited to {MAX_JSON_BODY_BYTES} bytes"),
                ))
            }
            Err(e) => Err(ApiError::new(e.status(), "invalid_body", e.body_text())),
        }
    }
}
