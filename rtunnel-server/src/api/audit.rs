//! `GET /api/v1/audit` (admin): the audit log, newest first, filtered by
//! `event`, `session_id`, and a time window `since` (inclusive) to `until`
//! (exclusive), each an RFC 3339 time (`2026-11-22T10:00:00Z`).

use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::store::{AuditEvent, AuditFilter, Millis, Paged, rfc3339};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::{CurrentUser, require_admin};
use super::check_page;
use super::extract::Query;
use crate::error::ApiError;
use crate::state::Stores;

/// The query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    event: Option<String>,
    session_id: Option<SessionId>,
    since: Option<String>,
    until: Option<String>,
    page: Option<u32>,
    page_size: Option<u32>,
}

/// An event as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AuditView {
    id: Uuid,
    at: String,
    event: String,
    actor: Option<String>,
    system_id: Option<SystemId>,
    session_id: Option<SessionId>,
    ip_address: Option<String>,
    details: serde_json::Value,
}

impl From<AuditEvent> for AuditView {
    fn from(e: AuditEvent) -> Self {
        AuditView {
            id: e.id,
            at: rfc3339(e.at),
            event: e.event,
            actor: e.actor,
            system_id: e.system_id,
            session_id: e.session_id,
            ip_address: e.ip_address,
            details: e.details,
        }
    }
}

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<Millis>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "{name} must be an RFC 3339 time such as 2026-11-22T10:00:00Z or \
                 2026-11-22T11:00:00+01:00"
            ),
        )
    };
    if value.len() > 64 {
        return Err(bad());
    }
    let (utc, offset_s) = split_offset(value).ok_or_else(bad)?;
    let t = humantime::parse_rfc3339_weak(&utc).map_err(|_| bad())?;
    let ms = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_millis();
    let ms = i64::try_from(ms).map_err(|_| bad())?;
    Ok(Some(ms - offset_s * 1000))
}

/// An RFC 3339 time as UTC text, and its offset from UTC in seconds:
/// `2026-11-22T11:00:00+01:00` is `2026-11-22T11:00:00Z` and 3600. In a
/// query string an unescaped `+` arrives as a space; it is read as `+`.
fn split_offset(value: &str) -> Option<(String, i64)> {
    let b = value.as_bytes();
    let n = b.len();
    let has_offset = n > 6
        && matches!(b[n - 6], b'+' | b'-' | b' ')
        && b[n - 3] == b':'
        && [n - 5, n - 4, n - 2, n - 1]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
        && value[..n - 6].contains(['T', 't']);
    if !has_offset {
        return Some((value.to_owned(), 0));
    }
    let hours: i64 = value[n - 5..n - 3].parse().ok()?;
    let minutes: i64 = value[n - 2..].parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let sign = if b[n - 6] == b'-' { -1 } else { 1 };
    Some((
        format!("{}Z", &value[..n - 6]),
        sign * (hours * 3600 + minutes * 60),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "Audit events, newest first", body = Paged<AuditView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(stores): State<Stores>,
    CurrentUser(user): CurrentUser,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Paged<AuditView>>, ApiError> {
    require_admin(&user)?;
    let page = check_page(q.page, q.page_size)?;
    if q.event.as_ref().is_some_and(|e| e.len() > 64) {
        return Err(ApiError::bad_request("invalid_query", "event is too long"));
    }
    let filter = AuditFilter {
        event: q.event,
        session_id: q.session_id,
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
    };
    let events = stores.audit_reader.list_audit(&filter, page).await?;
    Ok(Json(Paged {
        items: events.items.into_iter().map(AuditView::from).collect(),
        page: events.page,
        page_size: events.page_size,
        total: events.total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_an_offset_are_the_same_instant_as_in_utc() {
        let utc = parse_time("since", Some("2026-11-22T10:00:00Z"))
            .unwrap()
            .unwrap();
        for same in [
            "2026-11-22T11:00:00+01:00",
            "2026-11-22T11:00:00 01:00",
            "2026-11-22T05:30:00-04:30",
            "2026-11-22T10:00:00+00:00",
            "2026-11-22T10:00:00",
        ] {
            assert_eq!(
                parse_time("since", Some(same)).unwrap(),
                Some(utc),
                "{same}"
            );
        }
        for bad in [
            "2026-11-22T10:00:00+25:00",
            "yesterday",
            "2026-11-22T10:00:00+1:00",
        ] {
            let e = parse_time("since", Some(bad)).unwrap_err();
            assert_eq!(e.code, "invalid_query", "{bad}");
        }
    }
}
