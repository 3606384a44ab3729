//! Delivering a message to a task's agent: the one way Kiln hands text to an
//! agent on someone's behalf (a review from `POST …/tasks/{task}/review`, a
//! reaction). It goes to the newest session that is not closed as an ACP prompt;
//! without one, into the agent's terminal as ONE bracketed paste
//! (`ESC[200~ … ESC[201~`, then Enter), so an agent UI that submits on a line
//! feed still gets one input.
//!
//! Never call this from inside the task's own actor: the terminal path sends it
//! an `input` action.

use crate::actors::session::Prompt;
use crate::actors::Kiln;
use crate::db::queries;
use crate::error::{AppError, AppResult};

use super::state::TaskInput;
use super::{git_ops::GitParams, ApplyAction};

/// How a message reached the agent.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// `session` (an ACP prompt) or `terminal` (a bracketed paste).
    pub via: &'static str,
    /// The session that got it, when `via` is `session`.
    pub session: Option<String>,
}

/// The bytes typed into a terminal for `text`: one bracketed paste, then Enter.
/// Line ends become `\r`, as a terminal's paste sends them.
pub fn bracketed_paste(text: &str) -> String {
    format!("\x1b[200~{}\x1b[201~\r", text.replace("\r\n", "\n").replace('\n', "\r"))
}

/// Delivers `text` (already free of control characters but newlines and tabs)
/// to task `task`'s agent. `409 agent_not_running` when the task has no running
/// agent (not `running` or `idle`, or it stopped meanwhile); the session's and
/// the terminal's own errors otherwise.
pub async fn to_agent(kiln: &Kiln, org: &str, repo: &str, task: &str, text: &str, what: &str) -> AppResult<Delivered> {
    let t = task.to_string();
    let sessions = kiln.db.read(move |c| queries::task_sessions(c, &t)).await?;
    // The newest session that is not closed is the one the user talks to.
    if let Some(s) = sessions.into_iter().rev().find(|s| s.status != "closed") {
        let msg = Prompt { text: text.to_string() };
        match kiln.session(org, repo, task, &s.id).send(msg.clone()).await {
            Err(actix::MailboxError::Closed) => kiln.session(org, repo, task, &s.id).send(msg).await??,
            answer => answer??,
        };
        return Ok(Delivered { via: "session", session: Some(s.id) });
    }
    let msg = ApplyAction { input: TaskInput::Input, text: Some(bracketed_paste(text)), git: GitParams::default() };
    let sent = match kiln.task(org, repo, task).send(msg.clone()).await {
        Err(actix::MailboxError::Closed) => kiln.task(org, repo, task).send(msg).await?,
        other => other?,
    };
    match sent {
        // The task stopped between the caller's check and the actor's.
        Err(AppError::Conflict { code: "invalid_transition", .. }) => Err(not_running(task, "no longer running", what)),
        other => other.map(|_| Delivered { via: "terminal", session: None }),
    }
}

/// `409 agent_not_running` for a task in `state`; `what` names the message
/// ("the review").
pub fn not_running(task: &str, state: &str, what: &str) -> AppError {
    AppError::conflict(
        "agent_not_running",
        format!("task `{task}` is {state}: there is no running agent to send {what} to (resume the task first)"),
    )
}

/// Text the agent may get: no control characters but newlines and tabs, so
/// nothing in it (a comment, a CI log) can end the terminal's bracketed paste
/// early or move its cursor.
pub fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect()
}
