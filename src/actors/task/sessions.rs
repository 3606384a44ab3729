//! The TaskActor's share of ACP sessions: it is the only writer of
//! `task_sessions`, so it creates their rows, applies what each SessionActor
//! reports, and closes them with the sandbox. A session's status drives the
//! task's: a prompt in flight is `running`, its response `idle`, and a pending
//! permission request sets the task's `awaiting_input` flag.
//!
//! The TaskActor never waits on a SessionActor (SessionActors wait on it), so
//! the two cannot deadlock.

use serde_json::json;

use super::effects::TaskCtx;
use super::state::{self, TaskInput, TaskStatus};
use super::store::{self, SessionChanges};
use crate::actors::session::{SessionObserved, SessionStatus, ShutdownSession};
use crate::db::models::TaskSession;
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::util::now_ms;

/// Inserts a session as `starting` (the SessionActor then opens it).
pub async fn create(
    ctx: &TaskCtx,
    id: String,
    agent: Option<String>,
    mode: Option<String>,
    model: Option<String>,
) -> AppResult<TaskSession> {
    let (task, _) = ctx.load().await?;
    let status: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    if !matches!(status, TaskStatus::Running | TaskStatus::Idle) {
        return Err(AppError::conflict(
            "task_not_active",
            format!("task `{}` is {}: sessions need a running or idle task (its sandbox)", task.id, status.as_str()),
        ));
    }
    let profile_acp = ctx.kiln.config.agents.get(&task.agent).and_then(|p| p.acp.clone());
    let agent = agent.map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).or(profile_acp).ok_or_else(|| {
        AppError::invalid(
            "agent_required",
            format!("name the ACP agent (`claude`, `codex`, …): the task's profile `{}` has no `acp` default", task.agent),
        )
    })?;
    // An empty mode or model means none.
    let (mode, model) = (mode.filter(|m| !m.trim().is_empty()), model.filter(|m| !m.trim().is_empty()));
    for (what, value) in [("agent", Some(&agent)), ("mode", mode.as_ref()), ("model", model.as_ref())] {
        if let Some(v) = value {
            if v.len() > 100 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c)) {
                return Err(AppError::invalid(
                    "invalid_session",
                    format!("{what} `{v}` is not a valid id (letters, digits and - _ . : / @, at most 100)"),
                ));
            }
        }
    }
    let now = now_ms();
    let row = TaskSession {
        id: id.clone(),
        task_id: task.id.clone(),
        agent,
        acp_server_id: id.clone(),
        remote_session_id: None,
        status: SessionStatus::Starting.as_str().into(),
        last_remote_seq: 0,
        created_at: now,
        updated_at: now,
        mode,
        model,
        stop_reason: None,
        awaiting_input: false,
        remote_epoch: None,
        load_session: false,
        last_error: None,
        checkpoint: None,
        checkpoint_event_id: 0,
    };
    let insert = row.clone();
    ctx.kiln.db.write(move |c| store::insert_session(c, &insert)).await?;
    ctx.kiln
        .emit_one(&ctx.org, ctx.event("session.created", json!({"agent": row.agent, "mode": row.mode, "model": row.model})).session(&id))
        .await?;
    Ok(row)
}

/// Applies a SessionActor's report: writes the row, then moves the task. The
/// session's own events (`session.status_changed`, `session.awaiting_input`)
/// are the SessionActor's: it journals them in order with its envelopes, so
/// they never trail the turn that caused them.
pub async fn observed(ctx: &TaskCtx, obs: SessionObserved) -> AppResult<TaskSession> {
    let (t, s) = (ctx.id.clone(), obs.session.clone());
    let before = ctx
        .kiln
        .db
        .read(move |c| queries::task_session(c, &t, &s))
        .await?
        .ok_or_else(|| AppError::not_found("session_not_found", format!("no session `{}`", obs.session)))?;
    if before.status == SessionStatus::Closed.as_str() {
        // A late report from a session that was closed meanwhile changes nothing.
        return Ok(before);
    }
    let changes = SessionChanges {
        acp_server_id: obs.acp_server_id,
        remote_session_id: obs.remote_session_id,
        status: obs.status.as_str().into(),
        last_remote_seq: obs.last_remote_seq,
        stop_reason: obs.stop_reason,
        awaiting_input: obs.awaiting_input,
        remote_epoch: obs.remote_epoch,
        load_session: obs.load_session,
        last_error: obs.last_error,
        updated_at: now_ms(),
    };
    let id = obs.session.clone();
    let after = ctx.kiln.db.write(move |c| store::update_session(c, &id, &changes)).await?;
    follow_sessions(ctx, before.status == SessionStatus::Prompting.as_str()).await?;
    Ok(after)
}

/// What the task's sessions say of it, from their statuses: `Activity` while
/// any has a prompt in flight; `Quiet` when some are open (`starting`, `ready`)
/// and none is prompting, whatever the task's status came from (output
/// quiet-time while they were `lost`, a terminal that was busy when the first
/// one opened); nothing when none is open, and output quiet-time decides.
pub fn protocol_input<'a>(statuses: impl IntoIterator<Item = &'a str>) -> Option<TaskInput> {
    let mut open = false;
    for status in statuses {
        match SessionStatus::parse(status) {
            SessionStatus::Prompting => return Some(TaskInput::Activity),
            SessionStatus::Starting | SessionStatus::Ready => open = true,
            SessionStatus::Closed | SessionStatus::Lost => {}
        }
    }
    open.then_some(TaskInput::Quiet)
}

/// Moves the task after its sessions (`protocol_input`): `running` while any
/// prompt is in flight, `idle` when none is, and also when the last session
/// with a turn in flight closed; `awaiting_input` while any session waits for
/// a permission answer.
async fn follow_sessions(ctx: &TaskCtx, was_prompting: bool) -> AppResult<()> {
    let t = ctx.id.clone();
    let sessions = ctx.kiln.db.read(move |c| queries::task_sessions(c, &t)).await?;
    let awaiting = sessions.iter().any(|s| s.awaiting_input && s.status != SessionStatus::Closed.as_str());
    let (task, _) = ctx.load().await?;
    let from: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    let input = protocol_input(sessions.iter().map(|s| s.status.as_str())).or(was_prompting.then_some(TaskInput::Quiet));
    let mut now_idle = false;
    if let Some(input) = input {
        if let Ok(step) = state::transition(from, &input) {
            if step.to != from {
                ctx.set_status(from, step.to, step.reason.clone(), "session", json!({})).await?;
                now_idle = step.to == TaskStatus::Idle;
            }
        }
    }
    let i = ctx.id.clone();
    if ctx.kiln.db.write(move |c| store::set_awaiting_input(c, &i, awaiting, now_ms())).await? {
        ctx.kiln.emit_one(&ctx.org, ctx.event("task.awaiting_input", json!({"awaiting_input": awaiting}))).await?;
    }
    if now_idle {
        super::effects::on_idle(ctx, &task).await?;
    }
    Ok(())
}

/// Closes every session of the task (its sandbox is going away): the rows
/// first, then each SessionActor is told to let go (without waiting for it).
pub async fn close_all(ctx: &TaskCtx, reason: &str) -> AppResult<()> {
    let t = ctx.id.clone();
    let open = ctx.kiln.db.read(move |c| queries::task_sessions(c, &t)).await?;
    let open: Vec<TaskSession> = open.into_iter().filter(|s| s.status != SessionStatus::Closed.as_str()).collect();
    if open.is_empty() {
        return Ok(());
    }
    let (t, r) = (ctx.id.clone(), reason.to_string());
    ctx.kiln.db.write(move |c| store::close_sessions(c, &t, &r, now_ms())).await?;
    let events = open
        .iter()
        .map(|s| ctx.event("session.status_changed", json!({"from": s.status, "to": "closed", "error": reason})).session(&s.id))
        .collect();
    ctx.kiln.emit(&ctx.org, events).await?;
    for s in &open {
        if let Some(actor) = ctx.kiln.session_if_running(&ctx.org, &ctx.repo, &ctx.id, &s.id) {
            actor.addr.do_send(ShutdownSession {});
        }
    }
    let i = ctx.id.clone();
    ctx.kiln.db.write(move |c| store::set_awaiting_input(c, &i, false, now_ms())).await?;
    Ok(())
}

/// Closes one session on request (the SessionActor has already let go of its
/// ACP instance and journaled the change). A closed session is answered as it is.
pub async fn close_one(ctx: &TaskCtx, session: &str) -> AppResult<TaskSession> {
    let (t, s) = (ctx.id.clone(), session.to_string());
    let row = ctx
        .kiln
        .db
        .read(move |c| queries::task_session(c, &t, &s))
        .await?
        .ok_or_else(|| AppError::not_found("session_not_found", format!("no session `{session}` on task `{}`", ctx.id)))?;
    if row.status == SessionStatus::Closed.as_str() {
        return Ok(row);
    }
    let changes = SessionChanges {
        acp_server_id: row.acp_server_id.clone(),
        remote_session_id: row.remote_session_id.clone(),
        status: SessionStatus::Closed.as_str().into(),
        last_remote_seq: row.last_remote_seq,
        stop_reason: row.stop_reason.clone(),
        awaiting_input: false,
        remote_epoch: row.remote_epoch,
        load_session: row.load_session,
        last_error: Some("closed".into()),
        updated_at: now_ms(),
    };
    let id = row.id.clone();
    let after = ctx.kiln.db.write(move |c| store::update_session(c, &id, &changes)).await?;
    follow_sessions(ctx, row.status == SessionStatus::Prompting.as_str()).await?;
    Ok(after)
}

/// The sandbox's sandbox-agent server, started if it is not running (for a
/// session to open or restore); with `wake`, the sandbox too if it was
/// stopped for idleness.
pub async fn ensure_acp(ctx: &TaskCtx, wake: bool) -> AppResult<(crate::providers::AgentEndpoint, std::path::PathBuf)> {
    if wake {
        // A user's prompt or session open starts an auto-stopped sandbox again.
        super::effects::wake(ctx, "session").await?;
    } else {
        super::effects::refuse_if_asleep(ctx).await?;
    }
    let (task, repo) = ctx.load().await?;
    let status: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    if !matches!(status, TaskStatus::Running | TaskStatus::Idle) {
        return Err(AppError::conflict(
            "task_not_active",
            format!("task `{}` is {}: its sandbox is not available", task.id, status.as_str()),
        ));
    }
    let handle = ctx.handle(&task, &repo)?;
    let endpoint = super::effects::ensure_agent_server(ctx, &task, &handle, true)
        .await?
        .ok_or_else(|| AppError::bug("ensure_agent answered no endpoint on demand"))?;
    let cwd = endpoint.cwd.clone().map(std::path::PathBuf::from).unwrap_or(handle.path);
    Ok((endpoint, cwd))
}

/// Saves a session's checkpoint, unless a newer one is already there.
pub async fn save_checkpoint(ctx: &TaskCtx, msg: crate::actors::session::SaveCheckpoint) -> AppResult<()> {
    // Serialized on the blocking pool, not on the writer connection's time.
    let view = msg.view;
    let text = crate::db::pool::blocking(move || Ok(view.checkpoint())).await?;
    ctx.kiln.db.write(move |c| store::save_checkpoint(c, &msg.session, &text, msg.event_id)).await?;
    Ok(())
}

/// What the task's open sessions say of it (`protocol_input`); `None` when it
/// has none, and output quiet-time says whether the agent works.
pub async fn protocol_status(ctx: &TaskCtx) -> AppResult<Option<TaskInput>> {
    let t = ctx.id.clone();
    let sessions = ctx.kiln.db.read(move |c| queries::open_sessions(c, &t)).await?;
    Ok(protocol_input(sessions.iter().map(|s| s.status.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_sessions_decide_running_and_idle() {
        assert_eq!(protocol_input([]), None, "no sessions: output quiet-time decides");
        assert_eq!(protocol_input(["closed", "lost"]), None, "none open: output quiet-time decides");
        assert_eq!(protocol_input(["ready", "prompting", "lost"]), Some(TaskInput::Activity));
        assert_eq!(protocol_input(["prompting"]), Some(TaskInput::Activity));
        // Open and none prompting: idle, even when the session never passed
        // through `prompting` on the way (`lost` to `ready` after a restart).
        assert_eq!(protocol_input(["ready"]), Some(TaskInput::Quiet));
        assert_eq!(protocol_input(["starting", "closed"]), Some(TaskInput::Quiet));
        assert_eq!(protocol_input(["lost", "ready"]), Some(TaskInput::Quiet));
        // The pure transition it feeds: a running task becomes idle.
        let step = state::transition(TaskStatus::Running, &TaskInput::Quiet).unwrap();
        assert_eq!(step.to, TaskStatus::Idle);
    }
}
