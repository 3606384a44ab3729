//! The TaskActor's work: carrying out what a transition asks (provision, stop,
//! snapshot, relaunch, type input) and applying what the status poller observes.
//! Every function here runs inside one atomic handler of the task's actor.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::state::{self, Effect, GitOp, TaskInput, TaskStatus};
use super::{store, ActionOutcome};
use crate::actors::history::NewEvent;
use crate::actors::sandbox::{DestroySandbox, MarkSandboxLost, ProvisionSandbox, RelaunchSandbox, SuspendSandbox, WakeSandbox};
use crate::actors::Kiln;
use crate::config::PromptMode;
use crate::db::models::{Repo, SandboxInstance, Task};
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::providers::{CreateSandbox, DestroySandbox as DestroyRequest, LaunchSpec, ResumeSandbox, SandboxHandle, SandboxHealth};
use crate::util::now_ms;

/// Who the work is for.
#[derive(Clone)]
pub struct TaskCtx {
    pub kiln: Kiln,
    pub org: String,
    pub repo: String,
    pub id: String,
}

impl TaskCtx {
    pub(super) async fn load(&self) -> AppResult<(Task, Repo)> {
        let (o, i) = (self.org.clone(), self.id.clone());
        let found = self
            .kiln
            .db
            .read(move |c| {
                let Some(task) = queries::task(c, &o, &i)? else { return Ok(None) };
                let repo = queries::repo_by_id(c, task.repo_id)?;
                Ok(repo.map(|r| (task, r)))
            })
            .await?;
        found.ok_or_else(|| AppError::not_found("task_not_found", format!("no task `{}` in `{}`", self.id, self.org)))
    }

    pub(super) fn handle(&self, task: &Task, repo: &Repo) -> AppResult<SandboxHandle> {
        let provider = self.kiln.providers.get(&task.provider)?;
        Ok(provider.handle_for(&self.org, &self.repo, &task.id, std::path::Path::new(&repo.mirror_path)))
    }

    pub(super) fn event(&self, kind: &'static str, data: serde_json::Value) -> NewEvent {
        NewEvent::new(kind, data).repo(&self.repo).task(&self.id)
    }

    /// Moves the task `from` → `to` and records the event; answers the new row.
    pub(super) async fn set_status(
        &self,
        from: TaskStatus,
        to: TaskStatus,
        reason: Option<String>,
        cause: &str,
        extra: serde_json::Value,
    ) -> AppResult<Task> {
        // Reasons quote git and the provider, which name server paths.
        let reason = reason.map(|r| self.kiln.redactor.text(&r).into_owned());
        let (i, r) = (self.id.clone(), reason.clone());
        let updated = self
            .kiln
            .db
            .write(move |c| store::set_status(c, &i, from.as_str(), to.as_str(), r.as_deref(), now_ms()))
            .await?
            .ok_or_else(|| AppError::conflict("task_changed", "the task changed while this ran: try again"))?;
        if from != to {
            let mut data = json!({"from": from.as_str(), "to": to.as_str(), "action": cause, "reason": reason});
            if let (Some(obj), serde_json::Value::Object(more)) = (data.as_object_mut(), extra) {
                obj.extend(more);
            }
            self.kiln.emit_one(&self.org, self.event("task.status_changed", data)).await?;
        }
        Ok(updated)
    }

    /// Starts a fresh status poller for this task. An old one (it may be about to
    /// stop, having seen the task end) is told to stop and replaced, so the new
    /// sandbox is always watched.
    fn watch(&self, task: &Task, handle: SandboxHandle) -> AppResult<()> {
        let key = format!("{}/status-sync", crate::actors::registry::task_key(&self.org, &self.repo, &self.id));
        if let Some(old) = self.kiln.registry.detach::<crate::actors::pollers::task_status::TaskStatusPoller>(&key) {
            old.addr.do_send(crate::actors::pollers::StopPoller {});
        }
        self.kiln.status_poller(&self.org, &self.repo, &self.id, &task.provider, handle)?;
        Ok(())
    }

    fn stop_watching(&self) {
        let key = format!("{}/status-sync", crate::actors::registry::task_key(&self.org, &self.repo, &self.id));
        if let Some(p) = self.kiln.registry.get::<crate::actors::pollers::task_status::TaskStatusPoller>(&key) {
            p.addr.do_send(crate::actors::pollers::StopPoller {});
        }
    }
}

/// How to start (or resume) the task's agent: the profile's command, the
/// description as it says, its env plus the organization's provider secrets.
async fn launch_spec(ctx: &TaskCtx, task: &Task, resume: bool) -> AppResult<LaunchSpec> {
    let profile = ctx.kiln.config.agents.get(&task.agent).cloned().ok_or_else(|| {
        AppError::invalid("unknown_agent", format!("agent profile `{}` is no longer in the config", task.agent))
    })?;
    let mut argv = if resume { profile.resume.clone() } else { profile.command.clone() };
    let mut initial_input = None;
    if !resume {
        match profile.prompt {
            PromptMode::Argument => argv.push(task.description.clone()),
            PromptMode::Input => initial_input = Some(format!("{}\r", task.description)),
            PromptMode::None => {}
        }
    }
    let env = agent_env(ctx, task, profile.env.into_iter().collect()).await?;
    Ok(LaunchSpec { argv, env, initial_input })
}

/// What an agent's environment gets: `base` (the profile's env), then the
/// organization's provider secrets (less those Kiln keeps, see
/// `providers::is_agent_secret`), then `KILN_TASK`.
async fn agent_env(ctx: &TaskCtx, task: &Task, mut env: Vec<(String, String)>) -> AppResult<Vec<(String, String)>> {
    let (o, p) = (ctx.org.clone(), task.provider.clone());
    if let Some((_, secrets, _)) = ctx.kiln.db.read(move |c| queries::provider_profile(c, &o, &p)).await? {
        let secrets: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&secrets).unwrap_or_default();
        let provider = task.provider.as_str();
        env.extend(
            secrets
                .into_iter()
                .filter(|(k, _)| crate::providers::is_agent_secret(provider, k))
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))),
        );
    }
    env.push(("KILN_TASK".into(), task.id.clone()));
    Ok(env)
}

/// The sandbox-agent binary, or a 4xx that says how to install it.
async fn sandbox_agent_bin(ctx: &TaskCtx) -> AppResult<PathBuf> {
    // Looking on PATH stats files: not on the actor's thread.
    let configured = ctx.kiln.config.sandbox_agent_bin.clone();
    let found = crate::db::pool::blocking(move || Ok(crate::integrations::sandbox_agent::find_binary(Some(&configured)))).await?;
    found.ok_or_else(|| {
        AppError::invalid(
            "sandbox_agent_missing",
            "sandbox-agent is not installed: `npm install -g @sandbox-agent/cli-linux-x64@0.4.2`, or set sandbox_agent_bin (KILN_SANDBOX_AGENT_BIN) to its path",
        )
    })
}

/// Makes sure the sandbox's sandbox-agent server runs, with an event when it
/// starts (or starts again). Without `on_demand` only for agent profiles with
/// `acp`; sessions ask for it on demand for any task. Answers the endpoint when
/// there is one.
pub(super) async fn ensure_agent_server(
    ctx: &TaskCtx,
    task: &Task,
    handle: &SandboxHandle,
    on_demand: bool,
) -> AppResult<Option<crate::providers::AgentEndpoint>> {
    ensure_agent_server_in(ctx, task, handle, on_demand, true).await
}

/// `ensure_agent_server`; without `start_stopped`, a stopped sandbox is
/// `409 sandbox_stopped` instead of started (supervision acting on a status
/// seen before the sandbox was stopped must not start it again).
async fn ensure_agent_server_in(
    ctx: &TaskCtx,
    task: &Task,
    handle: &SandboxHandle,
    on_demand: bool,
    start_stopped: bool,
) -> AppResult<Option<crate::providers::AgentEndpoint>> {
    let profile = ctx.kiln.config.agents.get(&task.agent);
    if !on_demand && profile.is_none_or(|p| p.acp.is_none()) {
        return Ok(None);
    }
    let bin = sandbox_agent_bin(ctx).await?;
    let provider = ctx.kiln.providers.get(&task.provider)?;
    let base: Vec<(String, String)> = profile.map(|p| p.env.clone().into_iter().collect()).unwrap_or_default();
    let env = agent_env(ctx, task, base).await?;
    let endpoint = provider.ensure_agent(crate::providers::EnsureAgent { handle: handle.clone(), bin, env, start_stopped }).await?;
    if endpoint.fresh {
        let kind = if endpoint.restarted { "sandbox.agent_restarted" } else { "sandbox.agent_started" };
        ctx.kiln.emit_one(&ctx.org, ctx.event(kind, json!({"url": endpoint.url, "pid": endpoint.pid}))).await?;
    }
    Ok(Some(endpoint))
}

/// `queued → provisioning`, then the sandbox. Setup runs in the terminal; the
/// poller moves the task on to `running` once the agent has started.
pub async fn provision(ctx: &TaskCtx) -> AppResult<()> {
    let (task, repo) = ctx.load().await?;
    let from: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    let step = state::transition(from, &TaskInput::Provision).map_err(|r| AppError::conflict("invalid_transition", r.message))?;
    let task = ctx.set_status(from, step.to, None, "provision", json!({})).await?;
    let created = async {
        let launch = launch_spec(ctx, &task, false).await?;
        // Never copy from inside the data dir (a row registered before that was refused).
        let source_checkout =
            (repo.source_kind == "path").then(|| PathBuf::from(&repo.source)).filter(|p| !p.starts_with(&ctx.kiln.data_dir));
        let setup = repo.setup();
        let origin = super::git_ops::remote_origin(&ctx.kiln, &ctx.org, &repo).await?;
        let (progress, mut steps) = tokio::sync::mpsc::unbounded_channel::<crate::providers::Progress>();
        // Each provisioning step becomes a `sandbox.progress` event, in order.
        let (kiln, org, events) = (ctx.kiln.clone(), ctx.org.clone(), ctx.clone());
        let forwarder = actix_rt::spawn(async move {
            while let Some(step) = steps.recv().await {
                let data = json!({"step": step.step, "percent": step.percent, "detail": step.detail});
                if let Err(e) = kiln.emit_one(&org, events.event("sandbox.progress", data)).await {
                    log::warn!("task {}: recording a provisioning step failed: {e}", events.id);
                }
            }
        });
        let req = CreateSandbox {
            org: ctx.org.clone(),
            repo: ctx.repo.clone(),
            task: task.id.clone(),
            mirror: PathBuf::from(&repo.mirror_path),
            branch: task.branch.clone(),
            base_branch: task.base_branch.clone(),
            source_checkout,
            copy: setup.copy,
            setup: setup.commands,
            launch,
            origin,
            progress: Some(progress),
        };
        let created = ctx.kiln.sandbox(&ctx.org, &task.provider, &task.id)?.send(ProvisionSandbox { req }).await;
        // The request (and its sender) is gone: the forwarder ends once it has
        // recorded every step, before the outcome's events.
        let _ = forwarder.await;
        created?
    }
    .await;
    let created = match created {
        Ok(crate::providers::Created { handle, copy }) => {
            if !copy.skipped.is_empty() {
                // Not fatal: the task runs without them, and says so.
                let data = json!({"skipped": copy.skipped, "more": copy.more_skipped});
                ctx.kiln.emit_one(&ctx.org, ctx.event("sandbox.copy_skipped", data)).await?;
            }
            Ok(handle)
        }
        Err(err) => Err(err),
    };
    let created = match created {
        Ok(handle) => match ensure_agent_server(ctx, &task, &handle, false).await {
            Ok(_) => Ok(handle),
            Err(err) => {
                // The sandbox was made but cannot serve ACP: take it down again.
                let _ = destroy_sandbox(ctx, &task, &repo).await;
                Err(err)
            }
        },
        Err(err) => Err(err),
    };
    match created {
        Ok(handle) => {
            ctx.kiln
                .emit_one(&ctx.org, ctx.event("sandbox.created", json!({"path": handle.path, "provider": task.provider})))
                .await?;
            record_confinement(ctx).await?;
            ctx.watch(&task, handle)
        }
        Err(err) => {
            let reason = err.to_string();
            let failed = TaskInput::ProvisionFailed { reason: reason.clone() };
            let step = state::transition(step.to, &failed).map_err(|r| AppError::bug(r.message))?;
            ctx.set_status(TaskStatus::Provisioning, step.to, step.reason, "provision", json!({})).await?;
            Err(err)
        }
    }
}

/// A user action: check it against the lifecycle, carry out its effects, then
/// write the new status.
pub async fn apply(ctx: TaskCtx, input: TaskInput, text: Option<String>, params: super::git_ops::GitParams) -> AppResult<ActionOutcome> {
    let (task, repo) = ctx.load().await?;
    let from: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    let step = state::transition(from, &input).map_err(|r| AppError::conflict("invalid_transition", r.message))?;
    if matches!(input, TaskInput::Input | TaskInput::Attach | TaskInput::Push | TaskInput::Sync | TaskInput::Pr | TaskInput::Merge) {
        // An auto-stopped sandbox starts again first, transparently.
        wake(&ctx, input.name()).await?;
    }
    let mut snapshot_ref = None;
    let mut sandbox = None;
    for effect in &step.effects {
        match effect {
            Effect::StopAgent => {} // done by the destroy that always follows it
            Effect::SnapshotAndDestroySandbox => {
                ctx.stop_watching();
                match destroy_sandbox(&ctx, &task, &repo).await {
                    Ok(saved) => snapshot_ref = saved,
                    Err(err) => {
                        // Nothing was removed: keep watching the task as it was.
                        if from.may_have_sandbox() && from != TaskStatus::Stalled {
                            let _ = ctx.watch(&task, ctx.handle(&task, &repo)?);
                        }
                        return Err(err);
                    }
                }
            }
            Effect::RelaunchAgent => {
                let handle = ctx.handle(&task, &repo)?;
                let launch = launch_spec(&ctx, &task, true).await?;
                let req = ResumeSandbox { handle, branch: task.branch.clone(), launch, after_auto_stop: false };
                let handle = ctx.kiln.sandbox(&ctx.org, &task.provider, &task.id)?.send(RelaunchSandbox { req }).await??;
                ensure_agent_server(&ctx, &task, &handle, false).await?;
                record_confinement(&ctx).await?;
                ctx.watch(&task, handle)?;
            }
            Effect::SendInput => {
                let text = text.clone().filter(|t| !t.is_empty()).ok_or_else(|| {
                    AppError::invalid("invalid_input", "send the text to type as {\"text\": \"...\"}")
                })?;
                let handle = ctx.handle(&task, &repo)?;
                crate::db::pool::blocking(move || {
                    crate::terminal::client::send_input(&handle.state_dir, text.as_bytes())
                        .map_err(|e| crate::db::DbError::Blocking(e.to_string()))
                })
                .await
                .map_err(|_| AppError::conflict("agent_unreachable", "the agent's terminal does not answer; try resume"))?;
            }
            Effect::DescribeSandbox => {
                if input == TaskInput::Switch {
                    // `kiln switch` opens the checkout here: a remote one has none.
                    ctx.kiln.providers.get(&task.provider)?.capabilities().require_local_path(&task.provider, "`switch`")?;
                }
                sandbox = Some(ctx.handle(&task, &repo)?)
            }
            Effect::Git(op) => {
                let worktree = ctx.handle(&task, &repo)?.path;
                let git_guard = ctx.kiln.lock_git(&repo.mirror_path).await;
                match op {
                    GitOp::Push => {
                        super::git_ops::push(&ctx, &task, &repo, &worktree, params.commit.clone(), params.force.unwrap_or(false)).await?;
                    }
                    GitOp::Sync => {
                        super::git_ops::sync(&ctx, &task, &repo, &worktree, params.mode.clone()).await?;
                    }
                    GitOp::Pr => {
                        super::git_ops::open_pr(&ctx, &task, &repo, &worktree, params.draft.unwrap_or(false), false).await?;
                    }
                    GitOp::Merge => {
                        super::git_ops::merge(&ctx, &task, &repo, &worktree, params.method.clone()).await?;
                        // The removal below takes the mirror's lock itself (it is not reentrant).
                        drop(git_guard);
                        if !repo.settings().keep_after_merge {
                            // A merged task is done: archive it (snapshot first, as always).
                            ctx.stop_watching();
                            let saved = destroy_sandbox(&ctx, &task, &repo).await?;
                            let task = ctx
                                .set_status(from, TaskStatus::Archived, Some("merged".into()), "merge", json!({"snapshot_ref": saved}))
                                .await?;
                            return Ok(ActionOutcome { task, action: input.name(), snapshot_ref: saved, sandbox: None });
                        }
                    }
                }
            }
            Effect::CreateSandbox => return Err(AppError::bug("create is not a user action")),
        }
    }
    let extra = json!({"snapshot_ref": snapshot_ref});
    let task = if from != step.to {
        ctx.set_status(from, step.to, step.reason.clone(), input.name(), extra).await?
    } else {
        task
    };
    Ok(ActionOutcome { task, action: input.name(), snapshot_ref, sandbox })
}

/// Applies what the status poller saw. Answers whether the task is still active
/// (the poller stops when it is not).
pub async fn observe(ctx: TaskCtx, health: SandboxHealth) -> AppResult<bool> {
    let (task, repo) = ctx.load().await?;
    let from: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    if !matches!(from, TaskStatus::Provisioning | TaskStatus::Running | TaskStatus::Idle) {
        return Ok(false);
    }
    let row = sandbox_row(&ctx).await?;
    if row.as_ref().is_some_and(asleep) && health.exists {
        // Stopped for idleness (or being stopped or started): nothing runs to
        // observe, and the host's end is not the agent's. Only a sandbox gone is news.
        return Ok(true);
    }
    if matches!(from, TaskStatus::Running | TaskStatus::Idle)
        && health.exists
        && matches!(health.remote_state.as_deref(), Some("stopped" | "stopping"))
    {
        // Stopped outside Kiln (Daytona, a person): the same as Kiln's own stop.
        auto_stop(&ctx, &task, &repo, "daytona", None).await?;
        if let Ok(step) = state::transition(from, &TaskInput::Quiet) {
            if step.to != from {
                ctx.set_status(from, step.to, None, "sandbox_stopped", json!({})).await?;
            }
        }
        return Ok(true);
    }
    let log_error = record_runtime(&ctx, &health).await?;
    if let Some(host) = &health.host {
        record_log_health(&ctx, host, log_error).await?;
    }
    if health.agent_server == Some(false) && health.host.as_ref().is_some_and(|h| h.running) {
        // Supervision: the sandbox-agent server died under a live task.
        let (_, repo) = ctx.load().await?;
        let handle = ctx.handle(&task, &repo)?;
        match ensure_agent_server_in(&ctx, &task, &handle, true, false).await {
            // Stopped meanwhile: the next poll sees it.
            Ok(_) => {}
            Err(e) if e.code() == "sandbox_stopped" => {}
            Err(e) => {
                ctx.kiln.emit_one(&ctx.org, ctx.event("sandbox.agent_failed", json!({"error": e.to_string()}))).await?;
            }
        }
    }
    let mut inputs = Vec::new();
    if !health.exists && from != TaskStatus::Provisioning {
        inputs.push(TaskInput::SandboxLost);
    } else if let Some(exit) = &health.exit {
        if exit.phase == "setup" {
            let tail = terminal_tail(&ctx, &task).await;
            inputs.push(TaskInput::ProvisionFailed {
                reason: format!("setup failed (exit {}): {tail}", exit.code.map(|c| c.to_string()).unwrap_or_else(|| "signal".into())),
            });
        } else {
            if from == TaskStatus::Provisioning {
                inputs.push(TaskInput::Provisioned);
            }
            inputs.push(TaskInput::AgentExited { code: exit.code, signal: exit.signal });
        }
    } else if let Some(host) = &health.host {
        if from == TaskStatus::Provisioning {
            if host.phase == "agent" {
                inputs.push(TaskInput::Provisioned);
            }
        } else if let Some(input) = super::sessions::protocol_status(&ctx).await? {
            // With ACP sessions the protocol says when the agent works, and
            // holds the task to it (a status set while they were lost follows it).
            inputs.push(input);
        } else {
            // Without, quiescence.
            let profile_idle = ctx.kiln.config.agents.get(&task.agent).map(|p| p.idle_secs).unwrap_or(30);
            let last = host.last_output_at.unwrap_or(host.started_at);
            let quiet = now_ms() - last >= (profile_idle * 1000) as i64;
            inputs.push(if quiet { TaskInput::Quiet } else { TaskInput::Activity });
        }
    } else {
        inputs.push(TaskInput::AgentGone);
    }
    let mut status = from;
    for input in inputs {
        let Ok(step) = state::transition(status, &input) else { continue };
        if step.to == status {
            continue;
        }
        if let TaskInput::AgentExited { code, signal } = &input {
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.agent_exited", json!({"code": code, "signal": signal}))).await?;
        }
        if input == TaskInput::SandboxLost {
            ctx.kiln.sandbox(&ctx.org, &task.provider, &task.id)?.send(MarkSandboxLost {}).await??;
        }
        // A lost sandbox is `stalled` with the provider's reason (Daytona's).
        let reason = if input == TaskInput::SandboxLost { health.reason.clone().or(step.reason.clone()) } else { step.reason.clone() };
        ctx.set_status(status, step.to, reason, input.name(), json!({})).await?;
        status = step.to;
        if status == TaskStatus::Idle {
            on_idle(&ctx, &task).await?;
        }
        if status == TaskStatus::Failed {
            // A half-made sandbox is removed; the terminal log stays for reading.
            let (_, repo) = ctx.load().await?;
            destroy_sandbox(&ctx, &task, &repo).await?;
        }
    }
    if status == from {
        agent_stuck(&ctx, &task, &repo, &health).await?;
    }
    if status == TaskStatus::Idle {
        if let Some(idle_ms) = idle_long_enough(&ctx, &health, row.as_ref()).await? {
            let (task, repo) = ctx.load().await?;
            auto_stop(&ctx, &task, &repo, "kiln", Some(idle_ms)).await?;
        }
    }
    Ok(matches!(status, TaskStatus::Provisioning | TaskStatus::Running | TaskStatus::Idle))
}

/// The task's sandbox row, if it ever had one.
async fn sandbox_row(ctx: &TaskCtx) -> AppResult<Option<SandboxInstance>> {
    let id = ctx.id.clone();
    Ok(ctx.kiln.db.read(move |c| queries::task_sandbox(c, &id)).await?)
}

/// Whether a remote sandbox is stopped for idleness, or on its way (stopping,
/// or starting again).
fn asleep(row: &SandboxInstance) -> bool {
    matches!(row.run_state.as_deref(), Some("stopped" | "stopping" | "starting"))
}

/// How long an idle task's sandbox has been unused, when that is past its
/// provider's `auto_stop_after` and nothing holds it: no client attached to
/// its terminal, no ACP session prompting or opening. The clock starts at the
/// last of: the task's last change, its sandbox's last start, its runtime's
/// last change (a push), the agent's last output, the last attacher leaving;
/// all of them kept outside this process, so the clock survives a restart.
async fn idle_long_enough(ctx: &TaskCtx, health: &SandboxHealth, row: Option<&SandboxInstance>) -> AppResult<Option<i64>> {
    let (Some(after), Some(host), Some(row)) = (health.auto_stop_after, health.host.as_ref(), row) else { return Ok(None) };
    if health.remote_state.as_deref() != Some("started") || !host.running || host.attached > 0 || row.state != "ready" {
        return Ok(None);
    }
    let (o, t) = (ctx.org.clone(), ctx.id.clone());
    let (task, runtime, sessions) = ctx
        .kiln
        .db
        .read(move |c| Ok((queries::task(c, &o, &t)?, queries::task_runtime(c, &t)?, queries::open_sessions(c, &t)?)))
        .await?;
    if sessions.iter().any(|s| matches!(s.status.as_str(), "prompting" | "starting")) {
        return Ok(None);
    }
    let since = [
        task.map(|t| t.updated_at),
        Some(row.updated_at),
        runtime.map(|r| r.updated_at),
        host.last_output_at,
        Some(host.started_at),
        host.last_detached_at,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_else(now_ms);
    let idle = now_ms() - since;
    Ok((idle >= after.as_millis() as i64).then_some(idle))
}

/// Stops the task's sandbox while it idles (`by` `kiln`), or ends what is left
/// of one stopped outside Kiln (`by` `daytona`); `sandbox.auto_stopped` says
/// so. A failure is `sandbox.auto_stop_failed`, not an error of the poll.
async fn auto_stop(ctx: &TaskCtx, task: &Task, repo: &Repo, by: &'static str, idle_ms: Option<i64>) -> AppResult<()> {
    let req = crate::providers::SuspendSandbox {
        handle: ctx.handle(task, repo)?,
        already_stopped: by != "kiln",
        grace: Duration::from_secs(ctx.kiln.config.terminal.kill_grace_secs),
    };
    let stopped = ctx.kiln.sandbox(&ctx.org, &task.provider, &task.id)?.send(SuspendSandbox { req, stopped_by: by }).await?;
    match stopped {
        Ok(()) => {
            log::info!("task {}: its sandbox is stopped ({by}); the next use starts it again", ctx.id);
            let data = json!({"by": by, "idle_secs": idle_ms.map(|ms| ms / 1000)});
            ctx.kiln.emit_one(&ctx.org, ctx.event("sandbox.auto_stopped", data)).await?;
        }
        Err(e) => {
            log::warn!("task {}: stopping its idle sandbox failed: {e}", ctx.id);
            ctx.kiln.emit_one(&ctx.org, ctx.event("sandbox.auto_stop_failed", json!({"error": e.to_string()}))).await?;
        }
    }
    Ok(())
}

/// Starts the task's sandbox again if it was stopped for idleness (or outside
/// Kiln), transparently, before `cause` (`input`, `attach`, `terminal`,
/// `session`, `push`, …) uses it: the sandbox started and waited for, a fresh
/// preview token, sandbox-agent and the agent (its resume command) started
/// again in a new terminal host that carries on the same log. Runs inside the
/// task's actor, so two clients at once cause one start. A sandbox that runs
/// is left alone.
pub(super) async fn wake(ctx: &TaskCtx, cause: &str) -> AppResult<()> {
    let Some(row) = sandbox_row(ctx).await? else { return Ok(()) };
    if !matches!(row.run_state.as_deref(), Some("stopped" | "stopping" | "starting")) {
        return Ok(());
    }
    let (task, repo) = ctx.load().await?;
    let status: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    if !matches!(status, TaskStatus::Running | TaskStatus::Idle) {
        // Kill and archive start a stopped sandbox themselves to save its work.
        return Ok(());
    }
    let began = std::time::Instant::now();
    let handle = ctx.handle(&task, &repo)?;
    let launch = launch_spec(ctx, &task, true).await?;
    let req = ResumeSandbox { handle, branch: task.branch.clone(), launch, after_auto_stop: true };
    let handle = ctx.kiln.sandbox(&ctx.org, &task.provider, &task.id)?.send(WakeSandbox { req }).await??;
    ensure_agent_server(ctx, &task, &handle, false).await?;
    let data = json!({"cause": cause, "stopped_by": row.stopped_by, "stopped_at": row.auto_stopped_at,
                      "ms": began.elapsed().as_millis() as u64});
    ctx.kiln.emit_one(&ctx.org, ctx.event("sandbox.resumed", data)).await?;
    // A fresh poller: what the old one saw of the stopped sandbox is stale.
    ctx.watch(&task, handle)
}

/// For an ACP reader reconnecting on its own: the sandbox-agent server, unless
/// the sandbox is stopped for idleness (`409 sandbox_stopped`), which only a
/// user's prompt or session open starts again.
pub(super) async fn refuse_if_asleep(ctx: &TaskCtx) -> AppResult<()> {
    if sandbox_row(ctx).await?.as_ref().is_some_and(asleep) {
        return Err(AppError::conflict("sandbox_stopped", "the task's sandbox is stopped while idle: the next prompt starts it again"));
    }
    Ok(())
}

/// The `agent_stuck` reaction: a task running without output, or idle without
/// a pull request, past the repository's thresholds gets one `reaction.fired`
/// per quiet spell (its key is when the spell began, kept in `task_reactions`).
async fn agent_stuck(ctx: &TaskCtx, task: &Task, repo: &Repo, health: &SandboxHealth) -> AppResult<()> {
    let settings = repo.settings().reactions.agent_stuck;
    if !settings.enabled || !matches!(task.status.as_str(), "running" | "idle") {
        return Ok(());
    }
    let quiet_since = health.host.as_ref().map(|h| h.last_output_at.unwrap_or(h.started_at));
    let has_pr = if task.status == "idle" {
        let (repo_id, branch) = (repo.id, task.branch.clone());
        ctx.kiln.db.read(move |c| queries::task_pull_request(c, repo_id, &branch)).await?.is_some()
    } else {
        false
    };
    let Some((key, reason, since)) =
        super::reactions::stuck(&settings, &task.status, quiet_since, task.updated_at, has_pr, now_ms())
    else {
        return Ok(());
    };
    let id = ctx.id.clone();
    let claimed = ctx.kiln.db.write(move |c| store::claim_reaction(c, &id, "agent_stuck", &[key], "notified", now_ms())).await?;
    if let Some((attempt, _)) = claimed {
        let data = json!({"cause": "agent_stuck", "attempt": attempt, "outcome": "notified", "reason": reason,
                          "status": task.status, "since": since});
        ctx.kiln.emit_one(&ctx.org, ctx.event("reaction.fired", data)).await?;
    }
    Ok(())
}

/// Records whether the agent just started is confined (the server's decision at
/// boot: the provider refuses to start one otherwise in `required` mode), and
/// says so with `sandbox.unconfined` when it is not.
async fn record_confinement(ctx: &TaskCtx) -> AppResult<()> {
    let status = match crate::confine::global() {
        Some(confiner) => confiner.status(),
        None => crate::confine::Status { confined: false, abi: None, reason: Some("this server was started without a confinement decision".into()) },
    };
    let (id, confined, abi) = (ctx.id.clone(), status.confined, status.abi.map(|a| a as i32));
    ctx.kiln.db.write(move |c| store::set_confinement(c, &id, confined, abi, now_ms())).await?;
    if !status.confined {
        let mode = crate::confine::global().map(|c| c.mode).unwrap_or(crate::config::ConfineMode::Off);
        ctx.kiln
            .emit_one(&ctx.org, ctx.event("sandbox.unconfined", json!({"reason": status.reason, "mode": mode})))
            .await?;
    }
    Ok(())
}

/// Stops the agent, saves uncommitted work to `refs/kiln/snapshots/<task>` and
/// removes the sandbox, with events; answers the snapshot ref when one was made.
async fn destroy_sandbox(ctx: &TaskCtx, task: &Task, repo: &Repo) -> AppResult<Option<String>> {
    super::sessions::close_all(ctx, "the task's sandbox was removed").await?;
    let req = DestroyRequest {
        handle: ctx.handle(task, repo)?,
        snapshot_ref: format!("refs/kiln/snapshots/{}", task.id),
        grace: Duration::from_secs(ctx.kiln.config.terminal.kill_grace_secs),
    };
    let destroyed = ctx.kiln.sandbox(&ctx.org, &task.provider, &task.id)?.send(DestroySandbox { req }).await??;
    if let Some((refname, commit)) = &destroyed.snapshot {
        ctx.kiln.emit_one(&ctx.org, ctx.event("task.snapshot_saved", json!({"ref": refname, "commit": commit}))).await?;
    }
    ctx.kiln.emit_one(&ctx.org, ctx.event("sandbox.destroyed", json!({"agent_stop": destroyed.stop}))).await?;
    Ok(destroyed.snapshot.map(|(r, _)| r))
}

/// The repository's on-idle automation: commit, push, open a draft PR (each
/// only when switched on). A failing step is an event, not an error.
pub(super) async fn on_idle(ctx: &TaskCtx, task: &Task) -> AppResult<()> {
    let (_, repo) = ctx.load().await?;
    let auto = repo.settings().automation.on_idle;
    if !(auto.commit || auto.push || auto.draft_pr) {
        return Ok(());
    }
    let worktree = ctx.handle(task, &repo)?.path;
    let _git = ctx.kiln.lock_git(&repo.mirror_path).await;
    let commit = auto.commit.then(|| format!("kiln: work in progress on {}", task.title));
    let mut result = Ok(());
    if auto.push || auto.commit {
        // A commit is made by the push step; without push, commit alone.
        result = if auto.push {
            super::git_ops::push(ctx, task, &repo, &worktree, commit, false).await.map(|_| ()).map_err(|e| ("push", e))
        } else {
            let message = commit.unwrap_or_default();
            super::git_ops::commit_all(ctx, &worktree, message).await.map(|_| ()).map_err(|e| ("commit", e))
        };
    }
    if result.is_ok() && auto.draft_pr {
        let (repo_id, branch) = (repo.id, task.branch.clone());
        let existing = ctx.kiln.db.read(move |c| queries::task_pull_request(c, repo_id, &branch)).await?;
        if existing.is_none() {
            // The push step above (when on, and it succeeded) pushed already.
            result = super::git_ops::open_pr(ctx, task, &repo, &worktree, true, auto.push).await.map(|_| ()).map_err(|e| ("draft_pr", e));
        }
    }
    if let Err((step, err)) = result {
        ctx.kiln.emit_one(&ctx.org, ctx.event("task.automation_failed", json!({"step": step, "error": err.to_string()}))).await?;
    }
    Ok(())
}

/// The last few lines of the terminal, for a failure reason.
async fn terminal_tail(ctx: &TaskCtx, task: &Task) -> String {
    let Ok((_, repo)) = ctx.load().await else { return String::new() };
    let Ok(handle) = ctx.handle(task, &repo) else { return String::new() };
    crate::db::pool::blocking(move || {
        let log = crate::terminal::log::TerminalLog::read_only(&handle.state_dir)
            .map_err(|e| crate::db::DbError::Blocking(e.to_string()))?;
        let from = log.end().saturating_sub(2000);
        let (_, bytes) = log.read_at(from, 2000).map_err(|e| crate::db::DbError::Blocking(e.to_string()))?;
        // Plain text: setup output carries colours and cursor moves (npm), which
        // must not end up in the task's `status_reason`.
        let text = crate::util::terminal_text(&String::from_utf8_lossy(&bytes));
        let lines: Vec<&str> = text.trim().lines().map(str::trim_end).collect();
        Ok(lines[lines.len().saturating_sub(10)..].join("\n"))
    })
    .await
    .unwrap_or_default()
}

/// Keeps `task_runtime` in step with the host, writing only on change; answers
/// the row's `log_error` as it was.
async fn record_runtime(ctx: &TaskCtx, health: &SandboxHealth) -> AppResult<Option<String>> {
    let pid = health.host.as_ref().and_then(|h| h.agent_pid).map(|p| p as i32);
    let exit_code = health.exit.as_ref().and_then(|e| e.code);
    let started_at = health.host.as_ref().map(|h| h.started_at);
    let last_output_at = health.host.as_ref().and_then(|h| h.last_output_at);
    let id = ctx.id.clone();
    let current = ctx.kiln.db.read(move |c| queries::task_runtime(c, &id)).await?;
    let unchanged = current.as_ref().is_some_and(|r| {
        r.pid == pid && r.exit_code == exit_code && (last_output_at.is_none() || r.last_output_at == last_output_at)
    });
    let log_error = current.and_then(|r| r.log_error);
    if unchanged {
        return Ok(log_error);
    }
    let id = ctx.id.clone();
    ctx.kiln
        .db
        .write(move |c| store::upsert_runtime(c, &id, pid, exit_code, started_at, last_output_at, now_ms()))
        .await?;
    Ok(log_error)
}

/// Keeps `task_runtime.log_error` in step with the host's log: when writing it
/// starts failing, `terminal.log_write_failed`; when it works again,
/// `terminal.log_write_recovered`. The row (`recorded`, as it was) makes both
/// once-only, across restarts.
async fn record_log_health(
    ctx: &TaskCtx,
    host: &crate::terminal::protocol::HostStatus,
    recorded: Option<String>,
) -> AppResult<()> {
    let event = match (&recorded, &host.log_error) {
        (None, Some(error)) => {
            log::warn!("task {}: its terminal log cannot be written: {error}", ctx.id);
            ("terminal.log_write_failed", json!({"error": error, "since": host.log_error_since, "dropped_bytes": host.log_dropped_bytes}))
        }
        (Some(_), None) => ("terminal.log_write_recovered", json!({"dropped_bytes": host.log_dropped_bytes})),
        _ => return Ok(()),
    };
    let (id, error) = (ctx.id.clone(), host.log_error.clone());
    ctx.kiln.db.write(move |c| store::set_log_error(c, &id, error.as_deref(), now_ms())).await?;
    ctx.kiln.emit_one(&ctx.org, ctx.event(event.0, event.1)).await?;
    Ok(())
}

/// At boot: an active task gets its poller back, and the first observation
/// decides whether its agent is still there (re-attached) or not (interrupted).
pub async fn recover(ctx: TaskCtx) -> AppResult<()> {
    let (task, repo) = ctx.load().await?;
    let status: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    if status == TaskStatus::Queued {
        // Created, but the server stopped before provisioning began.
        return provision(&ctx).await;
    }
    if !matches!(status, TaskStatus::Provisioning | TaskStatus::Running | TaskStatus::Idle) {
        return Ok(());
    }
    let handle = ctx.handle(&task, &repo)?;
    let provider = ctx.kiln.providers.get(&task.provider)?;
    let health = provider.health(handle.clone()).await?;
    let still_active = observe(ctx.clone(), health).await?;
    if still_active {
        ctx.watch(&task, handle)?;
        // Open ACP sessions pick up their streams where the journal left off.
        let t = ctx.id.clone();
        for s in ctx.kiln.db.read(move |c| queries::open_sessions(c, &t)).await? {
            ctx.kiln.session(&ctx.org, &ctx.repo, &ctx.id, &s.id).addr.do_send(crate::actors::session::ResumeSession {});
        }
    }
    Ok(())
}
