//! `/v1/organizations/{org}/repos`: register, list, read and delete repositories.

use actix_web::{web, HttpResponse};

use super::auth::Caller;
use super::dto;
use super::openapi::{ApiError, OrgPath, RepoPath};
use super::extract::Json;
use super::organization_or_404;
use crate::actors::repository::{derive_name, DeleteRepo, RegisterRepo, Registrant, SetRepoSettings, SetRepoSetup, Source};
use crate::actors::Kiln;
use crate::db::models::{Branch, PullRequest, Repo, RepoSettings};
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::validate;

/// The organization's repositories, by name.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/repos", tag = "repos", params(OrgPath),
    responses(
        (status = 200, description = "The repositories", body = dto::Items<Repo>),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
    ),
)]
pub async fn list(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<String>) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let repos = kiln.db.read(move |c| queries::repos_list(c, &org)).await?;
    Ok(HttpResponse::Ok().json(dto::Items { items: repos }))
}

/// Registers a repository: 201 when cloned now, 200 when it was already there.
/// Which sources are accepted, and from whom, is in docs/api.md.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/repos", tag = "repos", params(OrgPath),
    request_body = dto::CreateRepo,
    responses(
        (status = 200, description = "Already registered with this very source", body = Repo),
        (status = 201, description = "Cloned now", body = Repo),
        (status = 403, description = "Refused:\n- `local_path_refused`: a local path this caller may not register", body = ApiError),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
        (status = 409, description = "Conflict:\n- `repo_name_taken`\n- `repo_already_registered`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_source`\n- `unsupported_source`\n- `invalid_name`\n- `repo_path_not_found`\n- `not_a_git_repository`\n- `repo_unreachable`\n- `clone_failed`", body = ApiError),
        (status = 503, description = "Unavailable:\n- `git_missing`", body = ApiError),
    ),
)]
pub async fn create(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    body: Json<dto::CreateRepo>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let body = body.into_inner();
    let (source, credential) = Source::parse(&body.source)?;
    let name = body.name.unwrap_or_else(|| derive_name(&source));
    validate::name("repository", &name)?;
    let by = if caller == Caller::Admin { Registrant::Admin } else { Registrant::Organization };
    let (repo, created) = kiln.repository(&org, &name).send(RegisterRepo { source, credential, by }).await??;
    kiln.repo_pollers(&org, &repo.name);
    Ok(if created { HttpResponse::Created() } else { HttpResponse::Ok() }.json(repo))
}

/// The repository row, or 404.
pub async fn repo_or_404(kiln: &Kiln, org: &str, name: &str) -> AppResult<Repo> {
    let missing = || AppError::not_found("repo_not_found", format!("no repository `{}` in `{org}`", validate::truncate(name, 63)));
    validate::name("repository", name).map_err(|_| missing())?;
    let (o, n) = (org.to_string(), name.to_string());
    kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await?.ok_or_else(missing)
}

#[utoipa::path(
    get, path = "/v1/organizations/{org}/repos/{repo}", tag = "repos", params(RepoPath),
    responses((status = 200, description = "The repository", body = Repo), (status = 404, description = "Not found:\n- `repo_not_found` (also when the organization does not exist)", body = ApiError)),
)]
pub async fn get(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, name) = path.into_inner();
    caller.require_org(&org)?;
    Ok(HttpResponse::Ok().json(repo_or_404(&kiln, &org, &name).await?))
}

/// Deletes a repository with no active tasks.
#[utoipa::path(
    delete, path = "/v1/organizations/{org}/repos/{repo}", tag = "repos", params(RepoPath),
    responses(
        (status = 204, description = "Deleted"), (status = 404, description = "Not found:\n- `repo_not_found` (also when the organization does not exist)", body = ApiError),
        (status = 409, description = "Conflict:\n- `repo_has_active_tasks`", body = ApiError),
    ),
)]
pub async fn delete(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, name) = path.into_inner();
    caller.require_org(&org)?;
    repo_or_404(&kiln, &org, &name).await?;
    kiln.repository(&org, &name).send(DeleteRepo {}).await??;
    kiln.stop_repo_pollers(&org, &name);
    Ok(HttpResponse::NoContent().finish())
}

/// Replaces the repository's setup step: shell commands run in each new task's
/// terminal before the agent, and untracked files copied from the source checkout.
#[utoipa::path(
    put, path = "/v1/organizations/{org}/repos/{repo}/setup", tag = "repos", params(RepoPath),
    request_body = dto::RepoSetup,
    responses(
        (status = 200, description = "The repository with its new setup", body = Repo), (status = 404, description = "Not found:\n- `repo_not_found` (also when the organization does not exist)", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_setup`", body = ApiError),
    ),
)]
pub async fn put_setup(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Json<dto::RepoSetup>,
) -> AppResult<HttpResponse> {
    let (org, name) = path.into_inner();
    caller.require_org(&org)?;
    repo_or_404(&kiln, &org, &name).await?;
    let body = body.into_inner();
    if body.commands.len() > 50 || body.copy.len() > 200 {
        return Err(AppError::invalid("invalid_setup", "at most 50 commands and 200 files"));
    }
    // A command is named by its place, never quoted: shell text may hold a credential.
    if let Some(i) = body.commands.iter().position(|c| c.trim().is_empty() || c.len() > 4096 || c.contains('\0')) {
        return Err(AppError::invalid(
            "invalid_setup",
            format!("setup command `commands[{i}]` must be 1-4096 bytes, not blank, with no NUL byte"),
        ));
    }
    if let Some(bad) = body.copy.iter().find(|p| !validate::is_relative_inside(p)) {
        return Err(AppError::invalid(
            "invalid_setup",
            format!("`{}` must be a relative path inside the checkout", validate::truncate(bad, 80)),
        ));
    }
    let setup = crate::db::models::RepoSetup { commands: body.commands, copy: body.copy };
    let repo = kiln.repository(&org, &name).send(SetRepoSetup { setup }).await??;
    Ok(HttpResponse::Ok().json(repo))
}

/// Replaces the repository's settings: its GitHub `owner/name` (when the source
/// URL does not say it), `keep_after_merge`, and the automation switches.
#[utoipa::path(
    put, path = "/v1/organizations/{org}/repos/{repo}/settings", tag = "repos", params(RepoPath),
    request_body = RepoSettings,
    responses(
        (status = 200, description = "The repository with its new settings", body = Repo), (status = 404, description = "Not found:\n- `repo_not_found` (also when the organization does not exist)", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_settings`\n- `unknown_agent`\n- `github_required`", body = ApiError),
    ),
)]
pub async fn put_settings(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Json<RepoSettings>,
) -> AppResult<HttpResponse> {
    let (org, name) = path.into_inner();
    caller.require_org(&org)?;
    let current = repo_or_404(&kiln, &org, &name).await?;
    let settings = body.into_inner();
    if settings.issues.enabled && settings.github.is_none() && crate::db::models::github_slug(&current.source).is_none() {
        return Err(AppError::invalid(
            "github_required",
            "issue intake reads the repository's GitHub issues, and its source URL names no GitHub repository: give its `github` owner/name too",
        ));
    }
    if let Some(slug) = &settings.github {
        let ok = slug.split('/').count() == 2
            && slug.split('/').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        if !ok {
            return Err(AppError::invalid("invalid_settings", format!("github must be `owner/name`, not `{}`", validate::truncate(slug, 80))));
        }
    }
    if settings.automation.on_ci_failure.max_attempts > 20 {
        return Err(AppError::invalid("invalid_settings", "automation.on_ci_failure.max_attempts must be at most 20"));
    }
    check_reactions(&settings.reactions)?;
    check_issue_intake(&kiln, &settings.issues)?;
    let repo = kiln.repository(&org, &name).send(SetRepoSettings { settings }).await??;
    kiln.repo_pollers(&org, &name);
    Ok(HttpResponse::Ok().json(repo))
}

/// `settings.issues` within its bounds (docs/git.md, "Issues in"): the
/// schema's rules, and an agent this server has.
fn check_issue_intake(kiln: &Kiln, i: &crate::db::models::IssueIntake) -> AppResult<()> {
    use crate::db::models::IssueIntake;
    if !IssueIntake::label_is_valid(&i.label) {
        return Err(AppError::invalid("invalid_settings", "issues.label must be 1-50 characters, without commas or control characters"));
    }
    if !(1..=100).contains(&i.max_active) {
        return Err(AppError::invalid("invalid_settings", "issues.max_active must be between 1 and 100"));
    }
    if let Some(agent) = &i.agent {
        if !IssueIntake::agent_is_valid(agent) {
            return Err(AppError::invalid("invalid_settings", format!("issues.agent `{}` is not an agent name", validate::truncate(agent, 40))));
        }
        if !kiln.config.agents.contains_key(agent) {
            let known: Vec<&str> = kiln.config.agents.keys().map(String::as_str).collect();
            return Err(AppError::invalid("unknown_agent", format!("issues.agent `{agent}` is not an agent profile: use one of {}", known.join(", "))));
        }
    }
    Ok(())
}

/// `settings.reactions` within its bounds (docs/git.md, "Reactions").
fn check_reactions(r: &crate::db::models::Reactions) -> AppResult<()> {
    let bad = |m: String| Err(AppError::invalid("invalid_settings", m));
    for (name, max) in [
        ("ci_failed", r.ci_failed.max_attempts),
        ("changes_requested", r.changes_requested.max_attempts),
        ("bot_comments", r.bot_comments.max_attempts),
        ("merge_conflict", r.merge_conflict.max_attempts),
    ] {
        if max > 20 {
            return bad(format!("reactions.{name}.max_attempts must be at most 20"));
        }
    }
    if r.bot_logins.len() > 50 {
        return bad("reactions.bot_logins holds at most 50 logins".into());
    }
    for login in &r.bot_logins {
        let ok = (1..=100).contains(&login.len()) && login.chars().all(|c| c.is_ascii_alphanumeric() || "-_.[]".contains(c));
        if !ok {
            return bad(format!("reactions.bot_logins: `{}` is not a GitHub login", validate::truncate(login, 40)));
        }
    }
    const MONTH: u64 = 30 * 24 * 3600;
    let stuck = &r.agent_stuck;
    for (name, secs) in [("silent_secs", stuck.silent_secs), ("idle_without_pr_secs", stuck.idle_without_pr_secs)] {
        if !(1..=MONTH).contains(&secs) {
            return bad(format!("reactions.agent_stuck.{name} must be from 1 to {MONTH} seconds"));
        }
    }
    if !["squash", "merge", "rebase"].contains(&r.approved_and_green.method.as_str()) {
        return bad("reactions.approved_and_green.method must be squash, merge or rebase".into());
    }
    Ok(())
}

/// The branch snapshot the BranchSyncPoller keeps.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/repos/{repo}/branches", tag = "repos", params(RepoPath),
    responses((status = 200, description = "The branches, by name", body = dto::Items<Branch>), (status = 404, description = "Not found:\n- `repo_not_found` (also when the organization does not exist)", body = ApiError)),
)]
pub async fn branches(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, name) = path.into_inner();
    caller.require_org(&org)?;
    let repo = repo_or_404(&kiln, &org, &name).await?;
    let rows = kiln.db.read(move |c| queries::branches_list(c, repo.id)).await?;
    Ok(HttpResponse::Ok().json(dto::Items { items: rows }))
}

/// The pull-request cache the PrSyncPoller keeps.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/repos/{repo}/pulls", tag = "repos", params(RepoPath),
    responses((status = 200, description = "The pull requests, highest number first", body = dto::Items<PullRequest>), (status = 404, description = "Not found:\n- `repo_not_found` (also when the organization does not exist)", body = ApiError)),
)]
pub async fn pulls(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, name) = path.into_inner();
    caller.require_org(&org)?;
    let repo = repo_or_404(&kiln, &org, &name).await?;
    let rows = kiln.db.read(move |c| queries::pulls_list(c, repo.id)).await?;
    Ok(HttpResponse::Ok().json(dto::Items { items: rows }))
}

/// The conflicts the branch poller predicts between the repository's active
/// tasks (running, idle, stalled, interrupted), and between each of them and its
/// base branch: what would conflict if they were merged now, uncommitted work
/// included. Each pair of tasks is listed once. Updated at every branch poll.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/repos/{repo}/conflicts", tag = "repos", params(RepoPath),
    responses((status = 200, description = "The predicted conflicts, by task then other", body = dto::Items<dto::Conflict>), (status = 404, description = "Not found:\n- `repo_not_found` (also when the organization does not exist)", body = ApiError)),
)]
pub async fn conflicts(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, name) = path.into_inner();
    caller.require_org(&org)?;
    let repo = repo_or_404(&kiln, &org, &name).await?;
    let (rows, branches) = kiln
        .db
        .read(move |c| {
            let rows = queries::conflicts_list(c, repo.id)?;
            let mut ids: Vec<String> = rows.iter().flat_map(|r| [r.task_id.clone(), r.other.clone()]).collect();
            ids.sort();
            ids.dedup();
            Ok((rows, queries::task_branches(c, &ids)?))
        })
        .await?;
    let branches: std::collections::HashMap<String, (String, String)> = branches.into_iter().map(|(id, b, base)| (id, (b, base))).collect();
    let items = rows
        .into_iter()
        .map(|r| {
            let (task_branch, base) = branches.get(&r.task_id).cloned().unwrap_or_default();
            let other_branch = if r.other == crate::integrations::conflicts::BASE {
                base
            } else {
                branches.get(&r.other).map(|(b, _)| b.clone()).unwrap_or_default()
            };
            let files = r.file_list();
            dto::Conflict { task: r.task_id, task_branch, other: r.other, other_branch, files, since: r.since, updated_at: r.updated_at }
        })
        .collect();
    Ok(HttpResponse::Ok().json(dto::Items { items }))
}
