//! `/api/v1/resources`: the launcher's resources (admin only).

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use rtunnel_core::ids::SystemId;
use rtunnel_core::proto::validate_service_name;
use rtunnel_core::store::{
    AuditEvent, AuditKind, Paged, Resource, StoreError, now_millis, rfc3339,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use uuid::Uuid;

use super::auth::{CurrentUser, require_admin};
use super::extract::Query;
use super::{PageQuery, parse_id};
use crate::error::ApiError;
use crate::launcher::validate_metadata;
use crate::state::Audit;
use crate::state::Stores;

/// Largest metadata object, serialized.
pub(super) const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A resource as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ResourceView {
    id: Uuid,
    name: String,
    ip_address: Option<String>,
    metadata: serde_json::Value,
    system_id: Option<SystemId>,
    service: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<Resource> for ResourceView {
    fn from(r: Resource) -> Self {
        ResourceView {
            id: r.id,
            name: r.name,
            ip_address: r.ip_address,
            metadata: r.metadata,
            system_id: r.system_id,
            service: r.service,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// The body of POST and PUT.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub(super) struct ResourceBody {
    name: String,
    #[serde(default)]
    ip_address: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    system_id: Option<SystemId>,
    #[serde(default)]
    service: Option<String>,
}

impl ResourceBody {
    /// Checks the fields; the system, if named, must exist.
    async fn into_resource(
        self,
        stores: &Stores,
        id: Uuid,
        created_at: i64,
    ) -> Result<Resource, ApiError> {
        let bad = |m: String| ApiError::bad_request("invalid_resource", m);
        crate::enroll::validate_name(&self.name)?;
        let metadata = self
            .metadata
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        validate_metadata(&metadata).map_err(bad)?;
        if metadata.to_string().len() > MAX_METADATA_BYTES {
            return Err(bad(format!(
                "metadata is limited to {MAX_METADATA_BYTES} bytes"
            )));
        }
        if let Some(address) = self.ip_address.as_deref().filter(|a| !a.is_empty()) {
            crate::launcher::validate_host(address).map_err(bad)?;
        }
        match (&self.system_id, &self.service) {
            (Some(system_id), Some(service)) => {
                validate_service_name(service).map_err(|e| bad(e.to_string()))?;
                if stores.identity.system(*system_id).await?.is_none() {
                    return Err(bad(format!("no system {system_id}")));
                }
            }
            (None, None) => {}
            _ => return Err(bad("system_id and service go together".into())),
        }
        Ok(Resource {
            id,
            name: self.name,
            ip_address: self.ip_address.filter(|a| !a.is_empty()),
            metadata,
            system_id: self.system_id,
            service: self.service,
            created_at,
            updated_at: now_millis(),
        })
    }
}

fn conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(_) => ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            "a resource with this name exists",
        ),
        other => other.into(),
    }
}

async fn audited(
    audit: &Audit,
    event: AuditKind,
    actor: &str,
    peer: SocketAddr,
    r: &Resource,
) -> Result<(), ApiError> {
    let mut e = AuditEvent::new(event);
    e.actor = Some(actor.to_owned());
    e.ip_address = Some(peer.ip().to_string());
    e.details = serde_json::json!({"resource_id": r.id, "resource_name": r.name});
    audit.record(e).await
}

fn not_found() -> ApiError {
    ApiError::not_found("resource_not_found", "no such resource")
}

/// The resource named by a path id, or 404.
async fn load(stores: &Stores, raw_id: &str) -> Result<Resource, ApiError> {
    let id = parse_id(raw_id, "resource_not_found")?;
    stores.resources.resource(id).await?.ok_or_else(not_found)
}

#[utoipa::path(
    get,
    path = "/api/v1/resources",
    tag = "launcher",
    params(super::PageQuery),
    responses((status = 200, description = "Launcher resources", body = Paged<ResourceView>), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn list(
    State(stores): State<Stores>,
    CurrentUser(user): CurrentUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Paged<ResourceView>>, ApiError> {
    require_admin(&user)?;
    let page = stores.resources.list_resources(q.page()?).await?;
    Ok(Json(Paged {
        items: page.items.into_iter().map(ResourceView::from).collect(),
        page: page.page,
        page_size: page.page_size,
        total: page.total,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/resources/{id}",
    tag = "launcher",
    params(("id" = String, Path, description = "resource id")),
    responses((status = 200, description = "The resource", body = ResourceView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn show(
    State(stores): State<Stores>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<ResourceView>, ApiError> {
    require_admin(&user)?;
    let r = load(&stores, &id).await?;
    Ok(Json(r.into()))
}

#[utoipa::path(
    post,
    path = "/api/v1/resources",
    tag = "launcher",
    request_body = ResourceBody,
    responses((status = 201, description = "Created", body = ResourceView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn create(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    CurrentUser(user): CurrentUser,
    super::extract::Json(body): super::extract::Json<ResourceBody>,
) -> Result<(StatusCode, Json<ResourceView>), ApiError> {
    require_admin(&user)?;
    let r = body
        .into_resource(&stores, Uuid::new_v4(), now_millis())
        .await?;
    // Written first so a refused write (a taken name) is not audited as
    // done; undone if the audit event cannot be stored.
    stores
        .resources
        .create_resource(&r)
        .await
        .map_err(conflict)?;
    if let Err(e) = audited(&audit, AuditKind::ResourceCreated, &user.name, peer, &r).await {
        let _ = stores.resources.delete_resource(r.id).await;
        return Err(e);
    }
    Ok((StatusCode::CREATED, Json(r.into())))
}

#[utoipa::path(
    put,
    path = "/api/v1/resources/{id}",
    tag = "launcher",
    params(("id" = String, Path, description = "resource id")),
    request_body = ResourceBody,
    responses((status = 200, description = "Replaced", body = ResourceView), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn update(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    super::extract::Json(body): super::extract::Json<ResourceBody>,
) -> Result<Json<ResourceView>, ApiError> {
    require_admin(&user)?;
    let old = load(&stores, &id).await?;
    let r = body.into_resource(&stores, old.id, old.created_at).await?;
    if !stores
        .resources
        .update_resource(&r)
        .await
        .map_err(conflict)?
    {
        return Err(not_found());
    }
    if let Err(e) = audited(&audit, AuditKind::ResourceUpdated, &user.name, peer, &r).await {
        let _ = stores.resources.update_resource(&old).await;
        return Err(e);
    }
    Ok(Json(r.into()))
}

#[utoipa::path(
    delete,
    path = "/api/v1/resources/{id}",
    tag = "launcher",
    params(("id" = String, Path, description = "resource id")),
    responses((status = 204, description = "Deleted"), (status = "default", description = "Refused or failed: the error envelope", body = crate::error::ErrorBody))
)]
pub(super) async fn delete(
    State(stores): State<Stores>,
    State(audit): State<Audit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&user)?;
    let r = load(&stores, &id).await?;
    audited(&audit, AuditKind::ResourceDeleted, &user.name, peer, &r).await?;
    stores.resources.delete_resource(r.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
