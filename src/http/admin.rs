//! Operator endpoints (`/admin/*`, `/metrics`) and the unauthenticated health
//! check. Everything but `/v1/health` needs the admin token.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Caller;
use super::dto;
use super::openapi::ApiError;
use crate::actors::pollers::PollerInfo;
use crate::actors::registry::ActorInfo;
use super::extract::OptionalJson;
use crate::actors::pollers::{branch_sync::BranchSyncPoller, issue_intake::IssueIntakePoller, pr_sync::PrSyncPoller, task_status::TaskStatusPoller};
use crate::actors::pollers::{DescribePoller, PollNow, SetInterval, StopPoller};
use crate::actors::Kiln;
use crate::actors::task::state::ALL_STATUSES;
use crate::db::{pool::blocking, queries, DbError};
use crate::error::{AppError, AppResult};
use crate::util::now_ms;

/// Liveness and version; no auth, for load balancers and `HEALTHCHECK`.
#[utoipa::path(
    get, path = "/v1/health", tag = "health",
    responses((status = 200, description = "The server is up", body = dto::Health)),
)]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(dto::Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// Prometheus text exposition.
#[utoipa::path(
    get, path = "/metrics", tag = "admin",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String)),
)]
pub async fn metrics(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let counted = kiln.db.read(queries::task_counts_by_status).await?;
    // Every status, so a scraper (and the dashboard) sees a zero, not a gap.
    let tasks: Vec<(&str, i64)> = ALL_STATUSES
        .iter()
        .map(|s| (s.as_str(), counted.iter().find(|(c, _)| c == s.as_str()).map_or(0, |(_, n)| *n)))
        .collect();
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(kiln.metrics.render(kiln.registry.count(), &tasks)))
}

/// Live actors by key, with backlog and last activity.
#[utoipa::path(
    get, path = "/admin/actors", tag = "admin",
    responses((status = 200, description = "The live actors", body = dto::Items<ActorInfo>)),
)]
pub async fn actors(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    Ok(HttpResponse::Ok().json(dto::Items { items: kiln.registry.list() }))
}

/// The effective configuration, with the client token hidden.
#[utoipa::path(
    get, path = "/admin/config", tag = "admin",
    responses((status = 200, description = "The configuration (see docs/operations.md), with `data_dir`", body = Object)),
)]
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
#[utoipa::path(
    post, path = "/admin/db/checkpoint", tag = "admin",
    responses(
        (status = 200, description = "Checkpointed", body = dto::Checkpoint),
        (status = 503, description = "Unavailable:\n- `checkpoint_busy`: a reader holds the WAL", body = ApiError),
    ),
)]
pub async fn checkpoint(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let (completed, wal_frames) = kiln.db.checkpoint().await?;
    if !completed {
        return Err(AppError::unavailable("checkpoint_busy", "a reader holds the WAL, so it could not be truncated; retry shortly"));
    }
    Ok(HttpResponse::Ok().json(dto::Checkpoint { completed: true, wal_frames }))
}

/// Writes a consistent copy of the database to `<data>/backups/` with `VACUUM INTO`.
#[utoipa::path(
    post, path = "/admin/db/backup", tag = "admin",
    responses(
        (status = 201, description = "Written", body = dto::Backup),
        (status = 409, description = "Conflict:\n- `backup_exists`", body = ApiError),
    ),
)]
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
    Ok(HttpResponse::Created().json(dto::Backup { path: target.to_string_lossy().into_owned(), bytes }))
}

/// Packs the repositories' mirrors (refs and objects, deleting no object), one at
/// a time under each mirror's lock; a repository with an active task is skipped.
/// See docs/operations.md, "Mirror maintenance".
#[utoipa::path(
    post, path = "/admin/repos/maintain", tag = "admin",
    request_body(content = dto::MaintainRepos, description = "Optional: which repositories (default: every one)"),
    responses(
        (status = 200, description = "Each repository's outcome", body = dto::Items<dto::MirrorMaintained>),
    ),
)]
pub async fn maintain_repos(
    kiln: web::Data<Kiln>,
    caller: Caller,
    body: OptionalJson<dto::MaintainRepos>,
) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let q = body.into_inner();
    let repos = kiln.db.read(queries::all_repos_full).await?;
    let mut items = Vec::new();
    for repo in repos.into_iter().filter(|r| {
        q.organization.as_deref().is_none_or(|o| r.organization == o) && q.repo.as_deref().is_none_or(|n| r.name == n)
    }) {
        items.push(maintain_one(&kiln, repo).await?);
    }
    Ok(HttpResponse::Ok().json(dto::Items { items }))
}

/// One mirror: under its lock, so no worktree is added or removed and no fetch
/// or push runs meanwhile; and only with no active task, checked under the lock
/// (a task created later provisions under the same lock, after this).
async fn maintain_one(kiln: &Kiln, repo: crate::db::models::Repo) -> AppResult<dto::MirrorMaintained> {
    let started = std::time::Instant::now();
    let mirror = kiln.mirror_dir(&repo.organization, &repo.name);
    let _git = kiln.git_locks.lock(&mirror).await;
    let id = repo.id;
    let active = kiln.db.read(move |c| queries::active_tasks_count(c, id)).await?;
    let mut item = dto::MirrorMaintained {
        organization: repo.organization,
        repo: repo.name,
        outcome: "skipped".into(),
        reason: None,
        before: None,
        after: None,
        ms: 0,
    };
    if active > 0 {
        item.reason = Some(format!(
            "{active} active task(s) share its object store; it is packed once none is active (kill, archive or merge them)"
        ));
    } else {
        let done = blocking(move || Ok(crate::integrations::git::maintain_mirror(&mirror))).await?;
        match done {
            Ok((before, after)) => {
                item.outcome = "packed".into();
                item.before = Some(before.into());
                item.after = Some(after.into());
            }
            Err(e) => {
                log::warn!("maintaining the mirror of {}/{} failed: {e}", item.organization, item.repo);
                item.outcome = "failed".into();
                item.reason = Some(kiln.redactor.text(&e.to_string()).into_owned());
            }
        }
    }
    item.ms = started.elapsed().as_millis() as u64;
    Ok(item)
}

/// Every live poller, with its interval and how its polls went.
#[utoipa::path(
    get, path = "/admin/pollers", tag = "admin",
    responses((status = 200, description = "The live pollers", body = dto::Items<PollerInfo>)),
)]
pub async fn pollers(kiln: web::Data<Kiln>, caller: Caller) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let mut items = Vec::new();
    for info in kiln.registry.list().into_iter().filter(|a| a.kind == "poller") {
        if let Some(p) = poller(&kiln, &info.key) {
            if let Ok(described) = p.describe.send(DescribePoller {}).await {
                items.push(described);
            }
        }
    }
    Ok(HttpResponse::Ok().json(dto::Items { items }))
}

/// `POST /admin/pollers/{key}/{poll|stop|interval}`; `interval` takes
/// `{"interval_ms": N}`.
#[utoipa::path(
    post, path = "/admin/pollers/{key}/{op}", tag = "admin",
    params(
        ("key" = String, Path, description = "The poller's key, as `/admin/pollers` lists it"),
        ("op" = String, Path, description = "`poll`, `stop` or `interval`", pattern = "^(poll|stop|interval)$"),
    ),
    request_body(content = PollerBody, description = "Optional: for `interval` only"),
    responses(
        (status = 200, description = "Done", body = dto::PollerDone),
        (status = 404, description = "Not found:\n- `poller_not_found`\n- `unknown_poller_action`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_body`: `interval` without `interval_ms`\n- `invalid_interval`", body = ApiError),
    ),
)]
pub async fn poller_control(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: OptionalJson<PollerBody>,
) -> AppResult<HttpResponse> {
    caller.require_admin()?;
    let (key, op) = path.into_inner();
    let poller = poller(&kiln, &key)
        .ok_or_else(|| AppError::not_found("poller_not_found", format!("no live poller `{}`", crate::validate::truncate(&key, 200))))?;
    match op.as_str() {
        "poll" => poller.poll.send(PollNow {}).await?,
        "stop" => poller.stop.send(StopPoller {}).await?,
        "interval" => {
            let interval_ms = body
                .into_inner()
                .interval_ms
                .ok_or_else(|| AppError::invalid("invalid_body", "send {\"interval_ms\": N}"))?;
            if !(100..=3_600_000).contains(&interval_ms) {
                return Err(AppError::invalid("invalid_interval", "interval_ms must be between 100 and 3600000"));
            }
            poller.interval.send(SetInterval { millis: interval_ms }).await?
        }
        other => {
            return Err(AppError::not_found(
                "unknown_poller_action",
                format!("no poller action `{}`: use poll, stop or interval", crate::validate::truncate(other, 40)),
            ))
        }
    }
    Ok(HttpResponse::Ok().json(dto::PollerDone { key, done: op }))
}

/// The body of `POST /admin/pollers/{key}/{op}`: `interval` needs
/// `interval_ms`; `poll` and `stop` need no body.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollerBody {
    /// 100 to 3600000.
    #[schema(minimum = 100, maximum = 3_600_000)]
    interval_ms: Option<u64>,
}

/// The control messages of a poller of any kind.
struct PollerControl {
    poll: actix::Recipient<PollNow>,
    stop: actix::Recipient<StopPoller>,
    interval: actix::Recipient<SetInterval>,
    describe: actix::Recipient<DescribePoller>,
}

fn control<A>(h: crate::actors::registry::Handle<A>) -> PollerControl
where
    A: actix::Actor<Context = actix::Context<A>>
        + actix::Handler<PollNow>
        + actix::Handler<StopPoller>
        + actix::Handler<SetInterval>
        + actix::Handler<DescribePoller>,
{
    PollerControl {
        poll: h.addr.clone().recipient(),
        stop: h.addr.clone().recipient(),
        interval: h.addr.clone().recipient(),
        describe: h.addr.recipient(),
    }
}

/// The live poller under `key`, whatever its kind.
fn poller(kiln: &Kiln, key: &str) -> Option<PollerControl> {
    if let Some(h) = kiln.registry.get::<TaskStatusPoller>(key) {
        return Some(control(h));
    }
    if let Some(h) = kiln.registry.get::<BranchSyncPoller>(key) {
        return Some(control(h));
    }
    if let Some(h) = kiln.registry.get::<IssueIntakePoller>(key) {
        return Some(control(h));
    }
    kiln.registry.get::<PrSyncPoller>(key).map(control)
}
