//! TaskActor (`org/{org}/repo/{repo}/task/{task}`): the only writer of `tasks`,
//! `task_runtime`, `task_sessions`, `task_reactions` and `task_issues`.
//!
//! Messages: `CreateTask` (insert as `queued`, then provision), `ApplyAction` (a
//! user action run through the pure lifecycle in `state.rs`; a refused one is a
//! 409), `StatusObserved` (from its TaskStatusPoller), `Recover` (at boot), and
//! for ACP sessions `CreateSession`, `SessionObserved` (from a SessionActor),
//! `CloseSession` and `EnsureAcp` (see `sessions.rs`); `WakeTask` (an
//! auto-stopped sandbox started again before the terminal WebSocket uses it); `ClaimReaction` and
//! `SettleReaction` for reactions (`reactions.rs`; it also writes `task_reactions`);
//! `ReportPrToIssue` for a task made from a GitHub issue (`issues.rs`; it also
//! writes `task_issues`, whose row `CreateTask` inserts with the task).
//! Every handler is atomic and re-reads its row, so push, sync, merge, archive and
//! kill on one task run one after another and always see the last write. A
//! transition's effects (create the sandbox, stop the agent, snapshot…) run
//! before its status is written, so a failed effect leaves the status as it was.
//!
//! Lifecycle: lazy. It starts on the first message for its task and stops itself
//! after `tasks.actor_idle_secs` without one; while the task is active its poller
//! keeps it busy. The next message starts it again from its rows.

pub mod deliver;
mod effects;
pub mod git_ops;
pub mod issues;
pub mod reactions;
mod sessions;
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
use crate::db::pool::blocking;
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
    /// The GitHub issue it is made from (issues in): recorded with the task in
    /// one transaction; a second task for the same issue is refused with
    /// `issue_taken` and nothing inserted.
    pub issue: Option<IssueRef>,
}

/// The GitHub issue a task is made from.
#[derive(Debug, Clone)]
pub struct IssueRef {
    pub number: i64,
    pub url: String,
    pub title: String,
}

/// Reports the task's pull request on the issue it was made from, once (a
/// no-op for other tasks, before the PR exists, and after it was reported).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct ReportPrToIssue {}

/// Applies a user action (`kill`, `archive`, `input`, …) through the lifecycle.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<ActionOutcome>")]
pub struct ApplyAction {
    pub input: TaskInput,
    /// The text for `input`.
    pub text: Option<String>,
    /// What `push`, `sync`, `pr` and `merge` were asked to do.
    pub git: git_ops::GitParams,
}

/// What an action did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActionOutcome {
    pub task: Task,
    pub action: &'static str,
    /// Where uncommitted work was saved, when the action removed a sandbox.
    pub snapshot_ref: Option<String>,
    /// The sandbox, for `attach` and `switch`.
    pub sandbox: Option<crate::providers::SandboxHandle>,
}

/// Starts provisioning a queued task (sent by the actor to itself after create).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct Provision {}

/// What the TaskStatusPoller saw; answers whether the task is still active.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<bool>")]
pub struct StatusObserved {
    pub health: crate::providers::SandboxHealth,
    /// The poller that saw it; an observation from a poller that was replaced
    /// (the sandbox was relaunched since) is stale and ignored.
    pub from: Arc<ActorMeta>,
}

/// Claims one firing of a reaction covering `keys` (see `reactions.rs`):
/// answers its attempt number and the keys not claimed before, or `None` when
/// all of them fired already.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Option<(i32, Vec<String>)>>")]
pub struct ClaimReaction {
    pub cause: &'static str,
    pub keys: Vec<String>,
    /// What the rows say until `SettleReaction` (`pending`, or final already).
    pub outcome: &'static str,
}

/// Records how a claimed firing ended (`delivered`, `synced`, `failed`, …).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct SettleReaction {
    pub cause: &'static str,
    pub attempt: i32,
    pub outcome: &'static str,
}

/// Inserts an ACP session as `starting`; its SessionActor then opens it.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<crate::db::models::TaskSession>")]
pub struct CreateSession {
    pub id: String,
    /// The sandbox-agent agent id; the task profile's `acp` when absent.
    pub agent: Option<String>,
    pub mode: Option<String>,
    pub model: Option<String>,
}

/// Marks one session closed (its SessionActor let go of the ACP instance).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<crate::db::models::TaskSession>")]
pub struct CloseSession {
    pub id: String,
}

/// Makes sure the sandbox's sandbox-agent server runs; answers where it is.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<(crate::providers::AgentEndpoint, PathBuf)>")]
pub struct EnsureAcp {
    /// Start an auto-stopped sandbox again (a user's prompt or session open);
    /// without, such a sandbox is `409 sandbox_stopped` (a reader reconnecting).
    pub wake: bool,
}

/// Starts the task's sandbox again if it was stopped for idleness, before
/// `cause` uses it (the terminal WebSocket); nothing when it runs.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct WakeTask {
    pub cause: &'static str,
}

/// At boot: reconcile an active task with its sandbox (re-attach or interrupt).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct Recover {}

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

    fn ctx(&self) -> effects::TaskCtx {
        effects::TaskCtx { kiln: self.kiln.clone(), org: self.org.clone(), repo: self.repo.clone(), id: self.id.clone() }
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
        self.meta.touch();
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(create(kiln, org, id, msg)).map(
            |created: AppResult<Task>, _act: &mut Self, ctx: &mut Context<Self>| {
                if created.is_ok() {
                    ctx.notify(Provision {});
                }
                created
            },
        )))
    }
}

impl Handler<Provision> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, _: Provision, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, async move {
            let result = effects::provision(&ctx).await;
            if let Err(e) = &result {
                log::warn!("provisioning task {} failed: {e}", ctx.id);
            }
            result
        })
    }
}

impl Handler<ApplyAction> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<ActionOutcome>>;

    fn handle(&mut self, msg: ApplyAction, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, effects::apply(ctx, msg.input, msg.text, msg.git))
    }
}

impl Handler<StatusObserved> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<bool>>;

    fn handle(&mut self, msg: StatusObserved, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        let key = format!("{}/status-sync", super::registry::task_key(&self.org, &self.repo, &self.id));
        let current = self
            .kiln
            .registry
            .get::<crate::actors::pollers::task_status::TaskStatusPoller>(&key)
            .is_some_and(|p| Arc::ptr_eq(&p.meta, &msg.from));
        atomic!(self, async move {
            if !current {
                return Ok(false);
            }
            effects::observe(ctx, msg.health).await
        })
    }
}

impl Handler<ClaimReaction> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<Option<(i32, Vec<String>)>>>;

    fn handle(&mut self, msg: ClaimReaction, _: &mut Self::Context) -> Self::Result {
        let (kiln, id) = (self.kiln.clone(), self.id.clone());
        atomic!(self, async move {
            Ok(kiln.db.write(move |c| store::claim_reaction(c, &id, msg.cause, &msg.keys, msg.outcome, now_ms())).await?)
        })
    }
}

impl Handler<SettleReaction> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: SettleReaction, _: &mut Self::Context) -> Self::Result {
        let (kiln, id) = (self.kiln.clone(), self.id.clone());
        atomic!(self, async move {
            Ok(kiln.db.write(move |c| store::settle_reaction(c, &id, msg.cause, msg.attempt, msg.outcome)).await?)
        })
    }
}

impl Handler<ReportPrToIssue> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, _: ReportPrToIssue, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, async move { issues::report_pr(&ctx).await })
    }
}

impl Handler<Recover> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, _: Recover, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, effects::recover(ctx))
    }
}

impl Handler<CreateSession> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<crate::db::models::TaskSession>>;

    fn handle(&mut self, msg: CreateSession, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, async move { sessions::create(&ctx, msg.id, msg.agent, msg.mode, msg.model).await })
    }
}

impl Handler<crate::actors::session::SessionObserved> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<crate::db::models::TaskSession>>;

    fn handle(&mut self, msg: crate::actors::session::SessionObserved, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, async move { sessions::observed(&ctx, msg).await })
    }
}

impl Handler<crate::actors::session::SaveCheckpoint> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: crate::actors::session::SaveCheckpoint, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, async move { sessions::save_checkpoint(&ctx, msg).await })
    }
}

impl Handler<CloseSession> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<crate::db::models::TaskSession>>;

    fn handle(&mut self, msg: CloseSession, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, async move { sessions::close_one(&ctx, &msg.id).await })
    }
}

impl Handler<EnsureAcp> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<(crate::providers::AgentEndpoint, PathBuf)>>;

    fn handle(&mut self, msg: EnsureAcp, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, async move { sessions::ensure_acp(&ctx, msg.wake).await })
    }
}

impl Handler<WakeTask> for TaskActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: WakeTask, _: &mut Self::Context) -> Self::Result {
        let ctx = self.ctx();
        atomic!(self, async move { effects::wake(&ctx, msg.cause).await })
    }
}

async fn create(kiln: Kiln, org: String, id: String, msg: CreateTask) -> AppResult<Task> {
    let base = msg.base_branch.clone().unwrap_or_else(|| msg.repo.default_branch.clone());
    validate::branch(&base)?;
    let mirror = PathBuf::from(&msg.repo.mirror_path);
    let base_for_check = base.clone();
    let exists = blocking(move || Ok(git::base_exists(&mirror, &base_for_check))).await?.map_err(|e| match e {
        git::GitError::Missing(_) => AppError::git_missing(),
        other => AppError::internal(other),
    })?;
    if !exists {
        return Err(AppError::invalid(
            "unknown_base_branch",
            format!("base branch `{base}` does not exist in repository `{}`", msg.repo.name),
        ));
    }
    // What the provider cannot take (not configured, a refused key, a repository
    // it cannot reach) is a 4xx now, with nothing inserted or made.
    kiln.providers
        .get(&msg.provider)?
        .preflight(crate::providers::Preflight {
            org: org.clone(),
            repo: msg.repo.name.clone(),
            source_kind: msg.repo.source_kind.clone(),
        })
        .await?;
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
    let claim = msg.issue.as_ref().map(|i| crate::db::models::TaskIssue {
        task_id: id.clone(),
        repo_id: msg.repo.id,
        issue_number: i.number,
        url: i.url.clone(),
        title: i.title.clone(),
        comment_state: "none".into(),
        comment_attempts: 0,
        comment_url: None,
        created_at: now,
    });
    // A task made from an issue is inserted with its claim, in one transaction.
    match kiln.db.write(move |c| store::insert_task(c, &row, claim.as_ref())).await {
        Err(e) if e.is_unique_violation() => {
            return Err(AppError::conflict("task_id_taken", format!("task id `{id}` is taken: draw another")))
        }
        Ok(false) => {
            let number = msg.issue.as_ref().map(|i| i.number).unwrap_or_default();
            return Err(AppError::conflict("issue_taken", format!("issue #{number} already has its task")));
        }
        other => {
            other?;
        }
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
                "issue": msg.issue.as_ref().map(|i| json!({"number": i.number, "url": i.url})),
            }),
        )
        .repo(&msg.repo.name)
        .task(&id),
    )
    .await?;
    // Provisioning (the sandboxes work) starts here, with `TaskInput::Provision`.
    Ok(task)
}

