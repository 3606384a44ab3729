//! TaskActor (`org/{org}/repo/{repo}/task/{task}`): the only writer of `tasks`,
//! `task_runtime` and `task_sessions`.
//!
//! Messages: `CreateTask` (insert as `queued`) and `ApplyAction` (a user action
//! run through the pure lifecycle in `state.rs`; a refused one is a 409). Every
//! handler is atomic and re-reads its row, so push, sync, merge, archive and kill
//! on one task run one after another and always see the last write.
//!
//! Lifecycle: lazy. It starts on the first message for its task, loads its row,
//! and stops itself after `tasks.actor_idle_secs` without a message; the next
//! message starts it again from its rows.

pub mod state;
mod store;

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use serde_json::json;

use super::history::NewEvent;
use super::registry::ActorMeta;
use super::Kiln;
use crate::db::models::{Repo, Task};
use crate::db::{pool::blocking, queries};
use crate::error::{AppError, AppResult};
use crate::integrations::git;
use crate::util::now_ms;
use crate::validate;
use state::{TaskInput, TaskStatus};

/// Creates the task as `queued` on a branch `kiln/<slug>-<id>`.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Task>")]
pub struct CreateTask {
    pub repo: Repo,
    pub title: Option<String>,
    pub description: String,
    pub base_branch: Option<String>,
    pub agent: String,
    pub provider: String,
}

/// Applies a user action (`kill`, `archive`, …) through the lifecycle.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<ActionOutcome>")]
pub struct ApplyAction {
    pub input: TaskInput,
}

/// What an action did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActionOutcome {
    pub task: Task,
    pub action: &'static str,
    /// Where uncommitted work was saved, when the action removed a sandbox.
    pub snapshot_ref: Option<String>,
}

pub struct TaskActor {
    kiln: Kiln,
    org: String,
    repo: String,
    id: String,
    meta: Arc<ActorMeta>,
}

impl TaskActor {
    pub fn new(kiln: Kiln, org: String, repo: String, id: String, meta: Arc<ActorMeta>) -> Self {
        TaskActor { kiln, org, repo, id, meta }
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        super::stop_when_idle(ctx, self.meta.clone(), self.kiln.config.tasks.actor_idle_secs);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.kiln.registry.remove(&self.meta);
    }
}

impl Handler<CreateTask> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<Task>>;

    fn handle(&mut self, msg: CreateTask, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, id) = (self.kiln.clone(), self.org.clone(), self.id.clone());
        atomic!(self, create(kiln, org, id, msg))
    }
}

async fn create(kiln: Kiln, org: String, id: String, msg: CreateTask) -> AppResult<Task> {
    let base = msg.base_branch.clone().unwrap_or_else(|| msg.repo.default_branch.clone());
    validate::branch(&base)?;
    let mirror = PathBuf::from(&msg.repo.mirror_path);
    let base_for_check = base.clone();
    let exists = blocking(move || Ok(git::branch_exists(&mirror, &base_for_check))).await?.map_err(|e| match e {
        git::GitError::Missing(_) => AppError::git_missing(),
        other => AppError::internal(other),
    })?;
    if !exists {
        return Err(AppError::invalid(
            "unknown_base_branch",
            format!("base branch `{base}` does not exist in repository `{}`", msg.repo.name),
        ));
    }
    let title = msg
        .title
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| validate::title_from_description(&msg.description));
    let branch = format!("kiln/{}-{}", validate::slug(&title), id);
    if !validate::is_valid_branch(&branch) {
        return Err(AppError::bug(format!("generated branch `{branch}` is not valid")));
    }
    let now = now_ms();
    let task = Task {
        id: id.clone(),
        organization: org.clone(),
        repo_id: msg.repo.id,
        title,
        description: msg.description,
        base_branch: base,
        branch,
        agent: msg.agent,
        provider: msg.provider,
        status: TaskStatus::Queued.as_str().to_string(),
        status_reason: None,
        awaiting_input: false,
        created_at: now,
        updated_at: now,
    };
    let row = task.clone();
    match kiln.db.write(move |c| store::insert_task(c, &row)).await {
        Err(e) if e.is_unique_violation() => {
            return Err(AppError::conflict("task_id_taken", format!("task id `{id}` is taken: draw another")))
        }
        other => other?,
    }
    kiln.emit_one(
        &org,
        // The whole task, so a dashboard can show it without another request.
        NewEvent::new(
            "task.created",
            json!({
                "title": task.title, "description": task.description, "branch": task.branch,
                "base_branch": task.base_branch, "agent": task.agent, "provider": task.provider,
                "status": task.status,
            }),
        )
        .repo(&msg.repo.name)
        .task(&id),
    )
    .await?;
    // Provisioning (the sandboxes work) starts here, with `TaskInput::Provision`.
    Ok(task)
}

impl Handler<ApplyAction> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<ActionOutcome>>;

    fn handle(&mut self, msg: ApplyAction, _: &mut Self::Context) -> Self::Result {
        let (kiln, org, repo, id) = (self.kiln.clone(), self.org.clone(), self.repo.clone(), self.id.clone());
        atomic!(self, apply(kiln, org, repo, id, msg.input))
    }
}

async fn apply(kiln: Kiln, org: String, repo: String, id: String, input: TaskInput) -> AppResult<ActionOutcome> {
    let (o, i) = (org.clone(), id.clone());
    let task = kiln
        .db
        .read(move |c| queries::task(c, &o, &i))
        .await?
        .ok_or_else(|| AppError::not_found("task_not_found", format!("no task `{id}` in `{org}`")))?;
    let from: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    let step = state::transition(from, &input).map_err(|r| AppError::conflict("invalid_transition", r.message))?;
    if let Some(effect) = step.effects.first() {
        // Sandboxes, agents and git operations arrive with the sandboxes and git
        // work; until then no task ever reaches a status that has effects.
        return Err(AppError::NotImplemented {
            message: format!("`{}` needs {:?}, which this build of Kiln cannot do yet", input.name(), effect),
        });
    }
    let (to, reason) = (step.to, step.reason.clone());
    let i = id.clone();
    let updated = kiln
        .db
        .write(move |c| store::set_status(c, &i, from.as_str(), to.as_str(), reason.as_deref(), now_ms()))
        .await?
        .ok_or_else(|| AppError::conflict("task_changed", "the task changed while this action ran: try again"))?;
    if from != to {
        kiln.emit_one(
            &org,
            NewEvent::new(
                "task.status_changed",
                json!({"from": from.as_str(), "to": to.as_str(), "action": input.name(), "reason": step.reason}),
            )
            .repo(&repo)
            .task(&id),
        )
        .await?;
    }
    Ok(ActionOutcome { task: updated, action: input.name(), snapshot_ref: None })
}
