//! Operator endpoints (`/admin/*`, `/metrics`) and the unauthenticated health
//! check. Everything but `/v1/health` needs the admin token.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Caller;
use crate::actors::Kiln;
use crate::db::{pool::blocking, DbError};
use crate::error::{AppError, AppResult};
use crate::util::now_ms;

/// Liveness and version; no auth, for load balancers and `HEALTHCHECK`.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Prometheus text exposition.
pub async fn metrics(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(kiln.metrics.render(kiln.registry.count())))
}

/// Live actors by key, with backlog and last activity.
pub async fn actors(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    Ok(HttpResponse::Ok().json(json!({ "items": kiln.registry.list() })))
}

/// The effective configuration, with the client token hidden.
pub async fn config(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let mut value = serde_json::to_value(kiln.config.as_ref()).map_err(AppError::internal)?;
    if value["client"]["token"].as_str().is_some_and(|t| !t.is_empty()) {
        value["client"]["token"] = json!("(set)");
    }
    value["data_dir"] = json!(kiln.data_dir);
    Ok(HttpResponse::Ok().json(value))
}

/// Checkpoints the WAL into the database file.
pub async fn checkpoint(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let (completed, wal_frames) = kiln.db.checkpoint().await?;
    if !completed {
        return Err(AppError::unavailable("checkpoint_busy", "a reader holds the WAL, so it could not be truncated; retry shortly"));
    }
    Ok(HttpResponse::Ok().json(json!({"completed": true, "wal_frames": wal_frames})))
}

/// Writes a consistent copy of the database to `<data>/backups/` with `VACUUM INTO`.
pub async fn backup(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let dir = kiln.data_dir.join("backups");
    let target = dir.join(format!("kiln-{}.db", now_ms()));
    if target.exists() {
        return Err(AppError::conflict("backup_exists", "a backup was taken this very millisecond; retry"));
    }
    blocking(move || std::fs::create_dir_all(&dir).map_err(|e| DbError::Blocking(e.to_string()))).await?;
    kiln.db.backup(target.clone()).await?;
    let path = target.clone();
    let bytes = blocking(move || std::fs::metadata(&path).map(|m| m.len()).map_err(|e| DbError::Blocking(e.to_string())))
        .await?;
    Ok(HttpResponse::Created().json(json!({"path": target, "bytes": bytes})))
}
