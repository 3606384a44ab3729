//! `/v1/organizations/{org}/tasks`: create, list, read, and act on tasks.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::json;

use super::auth::Caller;
use super::dto;
use super::extract::{Json, OptionalJson, Query};
use super::organization_or_404;
use super::repos::repo_or_404;
use crate::actors::organization::SANDBOX_PROVIDERS as PROVIDERS;
use crate::actors::task::state::{TaskInput, TaskStatus, ACTIONS};
use crate::actors::task::{ApplyAction, CreateTask};
use crate::actors::Kiln;
use crate::db::models::{PullRequest, SandboxInstance, Task, TaskRuntime, TaskSession};
use crate::db::queries::{self, TaskFilter};
use crate::error::{AppError, AppResult};
use crate::util::random_hex;
use crate::validate;

/// Longest accepted task description, in bytes.
const MAX_DESCRIPTION: usize = 64 * 1024;

/// A task as the API shows it, with its repository's name.
#[derive(Serialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    pub repo: String,
}

/// A task in a list: with its pull request's number, CI state and review.
#[derive(Serialize)]
struct TaskListItem {
    #[serde(flatten)]
    task: TaskView,
    pr: Option<PrSummary>,
}

#[derive(Serialize)]
struct PrSummary {
    number: i32,
    state: String,
    ci_state: Option<String>,
    review_decision: Option<String>,
}

/// One task with everything known about it.
#[derive(Serialize)]
struct TaskDetail {
    #[serde(flatten)]
    task: TaskView,
    runtime: Option<TaskRuntime>,
    sandbox: Option<SandboxInstance>,
    pull_request: Option<PullRequest>,
    /// Its ACP sessions, oldest first.
    sessions: Vec<TaskSession>,
}

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
    if body.description.trim().is_empty() {
        return Err(AppError::invalid("invalid_description", "describe the change: description is empty"));
    }
    if body.description.len() > MAX_DESCRIPTION {
        return Err(AppError::invalid("invalid_description", format!("description is longer than {MAX_DESCRIPTION} bytes")));
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
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor })))
}

fn parse_cursor(raw: &str) -> AppResult<(i64, String)> {
    let bad = || AppError::bad_request("invalid_cursor", "cursor is not one this server gave out");
    let (at, id) = raw.split_once('.').ok_or_else(bad)?;
    validate::task_id(id).map_err(|_| bad())?;
    Ok((at.parse().map_err(|_| bad())?, id.to_string()))
}

/// The task row and its repository's name, or 404.
pub async fn task_or_404(kiln: &Kiln, org: &str, id: &str) -> AppResult<(Task, String)> {
    validate::task_id(id)?;
    let (o, i) = (org.to_string(), id.to_string());
    let found = kiln
        .db
        .read(move |c| {
            let Some(task) = queries::task(c, &o, &i)? else { return Ok(None) };
            let repo = queries::repo_by_id(c, task.repo_id)?.map(|r| r.name).unwrap_or_default();
            Ok(Some((task, repo)))
        })
        .await?;
    found.ok_or_else(|| AppError::not_found("task_not_found", format!("no task `{id}` in `{org}`")))
}

pub async fn get(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    let (task, repo) = task_or_404(&kiln, &org, &id).await?;
    let (task_id, repo_id, branch) = (task.id.clone(), task.repo_id, task.branch.clone());
    let (runtime, sandbox, pull_request, sessions) = kiln
        .db
        .read(move |c| {
            Ok((
                queries::task_runtime(c, &task_id)?,
                queries::task_sandbox(c, &task_id)?,
                queries::task_pull_request(c, repo_id, &branch)?,
                queries::task_sessions(c, &task_id)?,
            ))
        })
        .await?;
    // Where the sandbox lives on the server is the admin's business only.
    let sandbox = sandbox.map(|s| SandboxInstance { path: s.path.filter(|_| caller == Caller::Admin), ..s });
    Ok(HttpResponse::Ok().json(TaskDetail { task: TaskView { task, repo }, runtime, sandbox, pull_request, sessions }))
}

/// `POST …/tasks/{task}/{action}`: runs the action through the task's actor.
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
    Ok(HttpResponse::Ok().json(json!({
        "action": outcome.action,
        "snapshot_ref": outcome.snapshot_ref,
        // `null` path: there is a sandbox, but only the admin token sees where.
        "sandbox": outcome.sandbox.map(|s| json!({"path": Some(s.path).filter(|_| caller == Caller::Admin)})),
        "task": TaskView { task: outcome.task, repo },
    })))
}
