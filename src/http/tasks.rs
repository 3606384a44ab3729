//! `/v1/organizations/{org}/tasks`: create, list, read, and act on tasks.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::dto;
use super::openapi::{ApiError, OrgPath, TaskPath};
use super::extract::{Json, OptionalJson, Query};
use super::organization_or_404;
use super::repos::repo_or_404;
use crate::actors::organization::SANDBOX_PROVIDERS as PROVIDERS;
use crate::actors::task::state::{TaskInput, TaskStatus, ACTIONS};
use crate::actors::task::{ApplyAction, CreateTask};
use crate::actors::Kiln;
use crate::db::models::{PullRequest, Repo, SandboxInstance, Task, TaskRuntime, TaskSession};
use crate::db::queries::{self, TaskFilter};
use crate::error::{AppError, AppResult};
use crate::integrations::github::Check;
use crate::util::random_hex;
use crate::validate;

/// Longest accepted task description, in characters (as the document says).
const MAX_DESCRIPTION: usize = 64 * 1024;

/// A task as the API shows it, with its repository's name.
#[derive(Serialize, serde::Deserialize, ToSchema)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    pub repo: String,
}

/// A task in a list: with its pull request's number, CI state and review.
#[derive(Serialize, ToSchema)]
pub struct TaskListItem {
    #[serde(flatten)]
    task: TaskView,
    pr: Option<PrSummary>,
}

#[derive(Serialize, ToSchema)]
pub struct PrSummary {
    number: i32,
    state: String,
    ci_state: Option<String>,
    review_decision: Option<String>,
}

/// `GET …/tasks`: a page of tasks, newest first.
#[derive(Serialize, ToSchema)]
pub struct TaskPage {
    items: Vec<TaskListItem>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// One task with everything known about it.
#[derive(Serialize, ToSchema)]
pub struct TaskDetail {
    #[serde(flatten)]
    task: TaskView,
    runtime: Option<TaskRuntime>,
    sandbox: Option<SandboxInstance>,
    pull_request: Option<PullRequestView>,
    /// Its ACP sessions, oldest first.
    sessions: Vec<TaskSession>,
    /// What Kiln reacted to on its own (docs/git.md, "Reactions"), newest
    /// first, the last 50 rows: one per cause key, the keys of one firing
    /// sharing its `attempt`.
    reactions: Vec<crate::db::models::TaskReaction>,
    /// The GitHub issue it was made from (docs/git.md, "Issues in"), if it was.
    issue: Option<crate::db::models::TaskIssue>,
}

/// A task's pull request with its head's latest checks.
#[derive(Serialize, ToSchema)]
pub struct PullRequestView {
    #[serde(flatten)]
    pr: PullRequest,
    /// The head's checks as the PR poller last saw them (check runs and the
    /// combined status's statuses, by name; at most the first 100); empty until
    /// it has looked, and again after a push until it looks at the new head.
    checks: Vec<Check>,
}

impl From<PullRequest> for PullRequestView {
    fn from(pr: PullRequest) -> Self {
        // The column is written by the RepositoryActor from `checks_of`; a row it
        // cannot parse shows no checks rather than failing the task.
        let checks = pr.checks.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
        PullRequestView { pr, checks }
    }
}

/// What a task action answers.
#[derive(Serialize, ToSchema)]
pub struct ActionResult {
    /// The action that ran.
    action: String,
    /// Where uncommitted work was saved, when the action removed a sandbox.
    snapshot_ref: Option<String>,
    /// For `attach` and `switch`: the sandbox (its `path` only for the admin).
    sandbox: Option<dto::SandboxRef>,
    task: TaskView,
}

/// Creates a task: a branch, a sandbox, and the agent started in it.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/tasks", tag = "tasks", params(OrgPath),
    request_body = dto::CreateTask,
    responses(
        (status = 201, description = "Created; provisioning goes on (follow `task.*` events)", body = TaskView),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `repo_not_found`", body = ApiError),
        (status = 409, description = "Conflict:\n- `task_id_taken`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_description`\n- `invalid_title`\n- `unknown_agent`\n- `unknown_provider`\n- `provider_unavailable`\n- `invalid_branch`\n- `unknown_base_branch`\n- `daytona_not_configured`\n- `daytona_unauthorized`\n- `remote_source_required`", body = ApiError),
        (status = 502, description = "A remote failed:\n- `daytona_unavailable`", body = ApiError),
        (status = 503, description = "Unavailable:\n- `git_missing`\n- `daytona_rate_limited`", body = ApiError),
    ),
)]
pub async fn create(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    body: Json<dto::CreateTask>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let body = body.into_inner();
    if body.description.trim_matches(|c: char| c.is_ascii_whitespace()).is_empty() {
        return Err(AppError::invalid("invalid_description", "describe the change: description is empty"));
    }
    if body.description.chars().count() > MAX_DESCRIPTION {
        return Err(AppError::invalid("invalid_description", format!("description is longer than {MAX_DESCRIPTION} characters")));
    }
    if body.title.as_ref().is_some_and(|t| t.chars().count() > 200) {
        return Err(AppError::invalid("invalid_title", "title is longer than 200 characters"));
    }
    let agent = body.agent.unwrap_or_else(|| kiln.config.tasks.default_agent.clone());
    if !kiln.config.agents.contains_key(&agent) {
        let known: Vec<&str> = kiln.config.agents.keys().map(String::as_str).collect();
        return Err(AppError::invalid(
            "unknown_agent",
            format!("no agent profile `{}`: use one of {}", validate::truncate(&agent, 40), known.join(", ")),
        ));
    }
    let provider = body.provider.unwrap_or_else(|| kiln.config.tasks.default_provider.clone());
    if !PROVIDERS.contains(&provider.as_str()) {
        return Err(AppError::invalid(
            "unknown_provider",
            format!("no provider `{}`: use one of {}", validate::truncate(&provider, 40), PROVIDERS.join(", ")),
        ));
    }
    kiln.providers.get(&provider)?;
    let repo = repo_or_404(&kiln, &org, &body.repo).await?;
    let msg = CreateTask {
        repo: repo.clone(),
        title: body.title,
        description: body.description,
        base_branch: body.base_branch,
        agent,
        provider,
        issue: None,
    };
    // Ids are random; on the rare collision, draw again.
    let mut attempts = 0;
    let task = loop {
        let id = random_hex(8);
        match kiln.task(&org, &repo.name, &id).send(msg.clone()).await? {
            Err(AppError::Conflict { code: "task_id_taken", .. }) if attempts < 3 => attempts += 1,
            other => break other?,
        }
    };
    Ok(HttpResponse::Created().json(TaskView { task, repo: repo.name }))
}

/// The organization's tasks, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/tasks", tag = "tasks", params(OrgPath, dto::TaskListQuery),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = 400, description = "Bad query:\n- `invalid_limit`\n- `invalid_status`\n- `invalid_cursor`", body = ApiError),
        (status = 404, description = "Not found:\n- `organization_not_found`\n- `repo_not_found`", body = ApiError),
    ),
)]
pub async fn list(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    query: Query<dto::TaskListQuery>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let q = query.into_inner();
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(AppError::bad_request("invalid_limit", "limit must be between 1 and 500"));
    }
    if let Some(status) = &q.status {
        status.parse::<TaskStatus>().map_err(|e| AppError::bad_request("invalid_status", e))?;
    }
    let repo_id = match &q.repo {
        Some(name) => Some(repo_or_404(&kiln, &org, name).await?.id),
        None => None,
    };
    let after = q.cursor.as_deref().map(parse_cursor).transpose()?;
    let filter = TaskFilter { repo_id, status: q.status, after, limit: limit + 1 };
    let o = org.clone();
    let (mut rows, repos, pulls) = kiln
        .db
        .read(move |c| {
            let rows = queries::tasks_list(c, &o, &filter)?;
            let mut pulls = HashMap::new();
            for t in &rows {
                if let Some(pr) = queries::task_pull_request(c, t.repo_id, &t.branch)? {
                    pulls.insert(t.id.clone(), pr);
                }
            }
            Ok((rows, queries::repos_list(c, &o)?, pulls))
        })
        .await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|t| format!("{}.{}", t.created_at, t.id))
    } else {
        None
    };
    let names: HashMap<i32, String> = repos.into_iter().map(|r| (r.id, r.name)).collect();
    let items: Vec<TaskListItem> = rows
        .into_iter()
        .map(|task| {
            let repo = names.get(&task.repo_id).cloned().unwrap_or_default();
            let pr = pulls.get(&task.id).map(|p| PrSummary {
                number: p.number,
                state: p.state.clone(),
                ci_state: p.ci_state.clone(),
                review_decision: p.review_decision.clone(),
            });
            TaskListItem { task: TaskView { task, repo }, pr }
        })
        .collect();
    Ok(HttpResponse::Ok().json(TaskPage { items, next_cursor }))
}

fn parse_cursor(raw: &str) -> AppResult<(i64, String)> {
    let bad = || AppError::bad_request("invalid_cursor", "cursor is not one this server gave out");
    let (at, id) = raw.split_once('.').ok_or_else(bad)?;
    validate::task_id(id).map_err(|_| bad())?;
    Ok((at.parse().map_err(|_| bad())?, id.to_string()))
}

/// The task row and its repository's name, or 404.
pub async fn task_or_404(kiln: &Kiln, org: &str, id: &str) -> AppResult<(Task, String)> {
    task_with_repo_or_404(kiln, org, id).await.map(|(task, repo)| (task, repo.name))
}

/// The task `id` of `org` with its whole repository row (its mirror, for the
/// task's provider handle), read together, or `task_not_found`. A task's row
/// goes with its repository's (a foreign key with `ON DELETE CASCADE`), so one
/// read never finds one without the other.
pub async fn task_with_repo_or_404(kiln: &Kiln, org: &str, id: &str) -> AppResult<(Task, Repo)> {
    validate::task_id(id)?;
    let (o, i) = (org.to_string(), id.to_string());
    let found = kiln
        .db
        .read(move |c| {
            let Some(task) = queries::task(c, &o, &i)? else { return Ok(None) };
            Ok(queries::repo_by_id(c, task.repo_id)?.map(|repo| (task, repo)))
        })
        .await?;
    found.ok_or_else(|| AppError::not_found("task_not_found", format!("no task `{id}` in `{org}`")))
}

/// One task with its runtime, sandbox, pull request and sessions.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/tasks/{task}", tag = "tasks", params(TaskPath),
    responses((status = 200, description = "The task", body = TaskDetail), (status = 404, description = "Not found:\n- `task_not_found` (also when the organization does not exist)", body = ApiError)),
)]
pub async fn get(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    let (task, repo) = task_or_404(&kiln, &org, &id).await?;
    let (task_id, repo_id, branch) = (task.id.clone(), task.repo_id, task.branch.clone());
    let (runtime, sandbox, pull_request, sessions, reactions, issue) = kiln
        .db
        .read(move |c| {
            Ok((
                queries::task_runtime(c, &task_id)?,
                queries::task_sandbox(c, &task_id)?,
                queries::task_pull_request(c, repo_id, &branch)?,
                queries::task_sessions(c, &task_id)?,
                queries::task_reactions(c, &task_id, 50)?,
                queries::task_issue(c, &task_id)?,
            ))
        })
        .await?;
    // Where the sandbox lives on the server is the admin's business only.
    let sandbox = sandbox.map(|s| SandboxInstance { path: s.path.filter(|_| caller == Caller::Admin), ..s });
    let pull_request = pull_request.map(PullRequestView::from);
    Ok(HttpResponse::Ok().json(TaskDetail { task: TaskView { task, repo }, runtime, sandbox, pull_request, sessions, reactions, issue }))
}

/// `POST …/tasks/{task}/{action}`: runs the action through the task's actor.
/// What each action does, and the git lifecycle's errors, are in docs/api.md.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/tasks/{task}/{action}", tag = "tasks",
    params(TaskPath, ("action" = String, Path, description = "`push`, `sync`, `pr`, `merge`, `archive`, `kill`, `resume`, `input`, `attach` or `switch`", pattern = "^(push|sync|pr|merge|archive|kill|resume|input|attach|switch)$")),
    request_body(content = dto::TaskAction, description = "Optional: an empty body means no fields"),
    responses(
        (status = 200, description = "Done", body = ActionResult),
        (status = 404, description = "Not found:\n- `unknown_action`\n- `task_not_found`", body = ApiError),
        (status = 409, description = "Not in this state:\n- `invalid_transition`\n- `task_changed`\n- `agent_unreachable`\n- `agent_running`\n- `commit_failed`\n- `push_rejected`\n- `remote_moved`\n- `sync_conflict`\n- `sync_failed`\n- `no_pull_request`\n- `head_moved`\n- `unpushed_commits`\n- `not_mergeable`\n- `merge_conflict`\n- `merge_failed`\n- `snapshot_failed`\n- `sandbox_missing`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_input`\n- `agent_not_found`\n- `unknown_agent`\n- `sandbox_failed`\n- `invalid_mode`\n- `not_github`\n- `github_token_missing`\n- `github_rejected`\n- `invalid_method`\n- `not_supported_by_provider`", body = ApiError),
        (status = 502, description = "A remote failed:\n- `commit_failed`\n- `push_rejected`\n- `sync_failed`\n- `merge_failed`\n- `github_unauthorized`\n- `github_failed`\n- `daytona_unavailable`\n- `daytona_timeout`\n- `daytona_sandbox_failed`", body = ApiError),
        (status = 503, description = "Unavailable:\n- `git_missing`\n- `github_rate_limited`\n- `daytona_rate_limited`", body = ApiError),
    ),
)]
pub async fn action(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    body: OptionalJson<dto::TaskAction>,
) -> AppResult<HttpResponse> {
    let (org, id, action) = path.into_inner();
    caller.require_org(&org)?;
    let body = body.into_inner();
    let input = TaskInput::from_action(&action).ok_or_else(|| {
        AppError::not_found(
            "unknown_action",
            format!("no task action `{}`: use one of {}", validate::truncate(&action, 40), ACTIONS.join(", ")),
        )
    })?;
    // A value outside its set is refused whatever the action, never ignored
    // (the sync and merge steps check again, with the same codes).
    if let Some(mode) = body.mode.as_deref().filter(|m| !["rebase", "merge"].contains(m)) {
        return Err(AppError::invalid("invalid_mode", format!("sync mode `{}`: use rebase or merge", validate::truncate(mode, 40))));
    }
    if let Some(method) = body.method.as_deref().filter(|m| !["squash", "merge", "rebase"].contains(m)) {
        return Err(AppError::invalid(
            "invalid_method",
            format!("merge method `{}`: use squash, merge or rebase", validate::truncate(method, 40)),
        ));
    }
    let (_, repo) = task_or_404(&kiln, &org, &id).await?;
    let git = crate::actors::task::git_ops::GitParams {
        commit: body.commit,
        force: body.force,
        mode: body.mode,
        draft: body.draft,
        method: body.method,
    };
    let msg = ApplyAction { input, text: body.text, git };
    // The actor may have stopped for quiet between lookup and send: start it again.
    let outcome = match kiln.task(&org, &repo, &id).send(msg.clone()).await {
        Err(actix::MailboxError::Closed) => kiln.task(&org, &repo, &id).send(msg).await?,
        other => other?,
    }?;
    Ok(HttpResponse::Ok().json(ActionResult {
        action: outcome.action.to_string(),
        snapshot_ref: outcome.snapshot_ref,
        // `null` path: there is a sandbox, but only the admin token sees where.
        sandbox: outcome.sandbox.map(|s| dto::SandboxRef {
            path: Some(s.path.to_string_lossy().into_owned()).filter(|_| caller == Caller::Admin),
        }),
        task: TaskView { task: outcome.task, repo },
    }))
}
