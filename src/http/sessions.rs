//! `/v1/organizations/{org}/tasks/{task}/sessions`: ACP sessions with a task's
//! agent. Writes go to the task's SessionActor (which journals every envelope
//! and reports to the TaskActor); reads fold the journal (`session/view.rs`).

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::dto;
use super::openapi::{ApiError, SessionPath, TaskPath};
use super::extract::Json;
use super::tasks::task_or_404;
use crate::actors::session::{self, view::SessionView, PromptAccepted, AnswerPermission, Cancel, CloseSession, OpenSession, Prompt};
use crate::actors::task::CreateSession;
use crate::actors::Kiln;
use crate::db::models::{Task, TaskSession};
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::util::random_hex;

/// Longest accepted prompt, in characters (as the document says).
const MAX_PROMPT: usize = 128 * 1024;

/// A session as the API shows it: its row plus what the journal says now.
#[derive(Serialize, ToSchema)]
pub struct SessionDetail {
    #[serde(flatten)]
    session: TaskSession,
    /// A prompt is in flight (its `session/prompt` request id).
    #[schema(value_type = Option<Object>)]
    prompt_in_flight: Option<serde_json::Value>,
    pending_permissions: Vec<session::view::PendingPermission>,
    /// The journal's last cursor.
    seq: u64,
}

/// `GET …/sessions/{session}/transcript`: the row and the folded journal.
#[derive(Serialize, ToSchema)]
pub struct Transcript {
    session: TaskSession,
    transcript: SessionView,
}

fn detail(session: TaskSession, view: &SessionView) -> SessionDetail {
    SessionDetail {
        session,
        prompt_in_flight: view.prompt_in_flight.clone(),
        pending_permissions: view.pending_permissions.clone(),
        seq: view.seq,
    }
}

fn session_id(raw: &str) -> AppResult<()> {
    let ok = raw.len() == 12 && raw.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if ok {
        Ok(())
    } else {
        Err(AppError::not_found("session_not_found", format!("no session `{raw}`")))
    }
}

/// Sends `msg` to the session's actor. A SessionActor stops once its session
/// is closed, dropping what waited in its mailbox; a message that met that
/// goes once more, to a fresh actor that answers from the closed row (so a
/// second close is the same 200, and a prompt the same 409 `session_closed`).
async fn ask<M, R>(kiln: &Kiln, org: &str, repo: &str, task: &str, sid: &str, msg: M) -> AppResult<R>
where
    M: actix::Message<Result = AppResult<R>> + Clone + Send + 'static,
    R: Send + 'static,
    session::SessionActor: actix::Handler<M>,
{
    match kiln.session(org, repo, task, sid).send(msg.clone()).await {
        Err(actix::MailboxError::Closed) => kiln.session(org, repo, task, sid).send(msg).await?,
        answer => answer?,
    }
}

/// The task, its repository and one of its sessions with its journal folded, or 404.
async fn session_or_404(kiln: &Kiln, org: &str, task: &str, id: &str) -> AppResult<(Task, String, TaskSession, SessionView)> {
    let (task, repo) = task_or_404(kiln, org, task).await?;
    session_id(id)?;
    let (row, view) = session::read_view(kiln, org, &task.id, id)
        .await?
        .ok_or_else(|| AppError::not_found("session_not_found", format!("no session `{id}` on task `{}`", task.id)))?;
    Ok((task, repo, row, view))
}

/// The task, its repository and one of its sessions (without the journal), or 404.
async fn session_row_or_404(kiln: &Kiln, org: &str, task: &str, id: &str) -> AppResult<(Task, String, TaskSession)> {
    let (task, repo) = task_or_404(kiln, org, task).await?;
    session_id(id)?;
    let (t, i) = (task.id.clone(), id.to_string());
    let row = kiln
        .db
        .read(move |c| queries::task_session(c, &t, &i))
        .await?
        .ok_or_else(|| AppError::not_found("session_not_found", format!("no session `{id}` on task `{}`", task.id)))?;
    Ok((task, repo, row))
}

/// Opens an ACP session with the task's agent.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/tasks/{task}/sessions", tag = "sessions", params(TaskPath),
    request_body = dto::CreateSession,
    responses(
        (status = 201, description = "Opened (or `closed` with `last_error` when the agent could not start)", body = SessionDetail),
        (status = 404, description = "Not found:\n- `task_not_found`", body = ApiError),
        (status = 409, description = "Not in this state:\n- `task_not_active`: the task is not `running` or `idle`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `agent_required`\n- `invalid_session`\n- `unsupported_agent`\n- `sandbox_agent_missing`", body = ApiError),
        (status = 502, description = "The agent failed (the session is left `closed`, with the cause in `last_error`):\n- `agent_error`\n- `agent_timeout`\n- `agent_exited`\n- `sandbox_agent_error`", body = ApiError),
    ),
)]
pub async fn create(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Json<dto::CreateSession>,
) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    let (task, repo) = task_or_404(&kiln, &org, &id).await?;
    let body = body.into_inner();
    let sid = random_hex(12);
    let msg = CreateSession { id: sid.clone(), agent: body.agent, mode: body.mode, model: body.model };
    kiln.task(&org, &repo, &task.id).send(msg).await??;
    // Opening talks to the agent. A failure deletes the ACP instance it made and
    // leaves the session `closed`, with the cause in `last_error`.
    let row = kiln.session(&org, &repo, &task.id, &sid).send(OpenSession {}).await??;
    let view = session::read_view(&kiln, &org, &task.id, &sid).await?.map(|(_, v)| v).unwrap_or_default();
    Ok(HttpResponse::Created().json(detail(row, &view)))
}

/// The task's sessions, oldest first.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/tasks/{task}/sessions", tag = "sessions", params(TaskPath),
    responses((status = 200, description = "The sessions", body = dto::Items<TaskSession>), (status = 404, description = "Not found:\n- `task_not_found` (also when the organization does not exist)", body = ApiError)),
)]
pub async fn list(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    let (task, _) = task_or_404(&kiln, &org, &id).await?;
    let t = task.id.clone();
    let rows = kiln.db.read(move |c| queries::task_sessions(c, &t)).await?;
    Ok(HttpResponse::Ok().json(dto::Items { items: rows }))
}

#[utoipa::path(
    get, path = "/v1/organizations/{org}/tasks/{task}/sessions/{session}", tag = "sessions", params(SessionPath),
    responses((status = 200, description = "The session", body = SessionDetail), (status = 404, description = "Not found:\n- `task_not_found`\n- `session_not_found`", body = ApiError)),
)]
pub async fn get(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String, String)>) -> AppResult<HttpResponse> {
    let (org, task, sid) = path.into_inner();
    caller.require_org(&org)?;
    let (_, _, row, view) = session_or_404(&kiln, &org, &task, &sid).await?;
    Ok(HttpResponse::Ok().json(detail(row, &view)))
}

/// The session's transcript, folded from its journal.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/tasks/{task}/sessions/{session}/transcript", tag = "sessions", params(SessionPath),
    responses((status = 200, description = "The transcript", body = Transcript), (status = 404, description = "Not found:\n- `task_not_found`\n- `session_not_found`", body = ApiError)),
)]
pub async fn transcript(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> AppResult<HttpResponse> {
    let (org, task, sid) = path.into_inner();
    caller.require_org(&org)?;
    let (_, _, row, view) = session_or_404(&kiln, &org, &task, &sid).await?;
    Ok(HttpResponse::Ok().json(Transcript { session: row, transcript: view }))
}

/// Sends a prompt; the turn runs on (follow the session's events).
#[utoipa::path(
    post, path = "/v1/organizations/{org}/tasks/{task}/sessions/{session}/prompt", tag = "sessions", params(SessionPath),
    request_body = dto::SessionPrompt,
    responses(
        (status = 202, description = "Accepted", body = PromptAccepted), (status = 404, description = "Not found:\n- `task_not_found`\n- `session_not_found`", body = ApiError),
        (status = 409, description = "Not in this state:\n- `turn_in_progress`\n- `session_closed`\n- `session_starting`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_prompt`", body = ApiError),
        (status = 502, description = "The agent failed:\n- `restore_failed`\n- `agent_error`\n- `agent_timeout`\n- `agent_exited`\n- `sandbox_agent_error`", body = ApiError),
    ),
)]
pub async fn prompt(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    body: Json<dto::SessionPrompt>,
) -> AppResult<HttpResponse> {
    let (org, task, sid) = path.into_inner();
    caller.require_org(&org)?;
    let text = body.into_inner().text;
    if text.trim_matches(|c: char| c.is_ascii_whitespace()).is_empty() {
        return Err(AppError::invalid("invalid_prompt", "the prompt is empty: send {\"text\": \"...\"}"));
    }
    if text.chars().count() > MAX_PROMPT {
        return Err(AppError::invalid("invalid_prompt", format!("the prompt is longer than {MAX_PROMPT} characters")));
    }
    let (task, repo, _) = session_row_or_404(&kiln, &org, &task, &sid).await?;
    let accepted = ask(&kiln, &org, &repo, &task.id, &sid, Prompt { text }).await?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// Cancels the turn in flight, and every pending permission request with it.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/tasks/{task}/sessions/{session}/cancel", tag = "sessions", params(SessionPath),
    responses(
        (status = 202, description = "Cancelled", body = dto::Cancelled), (status = 404, description = "Not found:\n- `task_not_found`\n- `session_not_found`", body = ApiError),
        (status = 409, description = "Not in this state:\n- `no_turn`\n- `session_not_open`", body = ApiError),
        (status = 502, description = "The agent failed:\n- `agent_error`\n- `agent_timeout`\n- `agent_exited`\n- `sandbox_agent_error`", body = ApiError),
    ),
)]
pub async fn cancel(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String, String)>) -> AppResult<HttpResponse> {
    let (org, task, sid) = path.into_inner();
    caller.require_org(&org)?;
    let (task, repo, _) = session_row_or_404(&kiln, &org, &task, &sid).await?;
    let outcome = ask(&kiln, &org, &repo, &task.id, &sid, Cancel {}).await?;
    Ok(HttpResponse::Accepted().json(outcome))
}

/// Answers a pending permission request: an option, or `cancelled`.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/tasks/{task}/sessions/{session}/permissions/{request}", tag = "sessions",
    params(SessionPath, ("request" = String, Path, description = "The request's id as the session shows it")),
    request_body = dto::PermissionAnswer,
    responses(
        (status = 202, description = "Answered", body = dto::PermissionAnswered),
        (status = 404, description = "Not found:\n- `task_not_found`\n- `session_not_found`\n- `permission_not_found`", body = ApiError),
        (status = 409, description = "Not in this state:\n- `session_not_open`", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_answer`\n- `unknown_option`", body = ApiError),
        (status = 502, description = "The agent failed:\n- `agent_error`\n- `agent_timeout`\n- `agent_exited`\n- `sandbox_agent_error`", body = ApiError),
    ),
)]
pub async fn answer_permission(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String, String, String)>,
    body: Json<dto::PermissionAnswer>,
) -> AppResult<HttpResponse> {
    let (org, task, sid, request) = path.into_inner();
    caller.require_org(&org)?;
    let body = body.into_inner();
    let option_id = match (body.option_id, body.outcome.as_deref()) {
        (Some(o), None) if !o.is_empty() => Some(o),
        (None, Some("cancelled")) => None,
        _ => {
            return Err(AppError::invalid(
                "invalid_answer",
                "answer with {\"option_id\": \"<one of the request's options>\"} or {\"outcome\": \"cancelled\"}",
            ))
        }
    };
    let (task, repo, _) = session_row_or_404(&kiln, &org, &task, &sid).await?;
    let outcome = ask(&kiln, &org, &repo, &task.id, &sid, AnswerPermission { request, option_id }).await?;
    Ok(HttpResponse::Accepted().json(outcome))
}

/// Closes the session; closing a closed one answers it as it is.
#[utoipa::path(
    delete, path = "/v1/organizations/{org}/tasks/{task}/sessions/{session}", tag = "sessions", params(SessionPath),
    responses((status = 200, description = "Closed", body = TaskSession), (status = 404, description = "Not found:\n- `task_not_found`\n- `session_not_found`", body = ApiError)),
)]
pub async fn close(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String, String)>) -> AppResult<HttpResponse> {
    let (org, task, sid) = path.into_inner();
    caller.require_org(&org)?;
    let (task, repo, row) = session_row_or_404(&kiln, &org, &task, &sid).await?;
    // Idempotent: closing a closed session answers it as it is, with no new event.
    if row.status == "closed" {
        return Ok(HttpResponse::Ok().json(row));
    }
    let row = ask(&kiln, &org, &repo, &task.id, &sid, CloseSession {}).await?;
    Ok(HttpResponse::Ok().json(row))
}
