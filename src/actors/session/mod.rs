//! SessionActor (`org/{org}/repo/{repo}/task/{task}/session/{id}`): one ACP
//! session with an agent, through the sandbox's sandbox-agent server
//! (PROTOCOLS.md §1.4, §1.7). It writes no table itself: every envelope goes
//! into the session's journal through the HistoryActor (`events`, kinds
//! `session.sent|update|request|notification|response`), and the session's row
//! is written by the TaskActor from what this actor reports (`SessionObserved`).
//!
//! Messages: `OpenSession` (after the TaskActor inserted the row), `Prompt`,
//! `Cancel`, `AnswerPermission`, `CloseSession`, `ResumeSession` (at boot) and
//! `ShutdownSession` (the sandbox is going away).
//!
//! How it works:
//! - One ACP server id per session generation (`<id>`, then `<id>-2`, … after
//!   restores), so the SSE sequence of an instance belongs to one session.
//! - A reader task follows the instance's SSE stream, resuming with
//!   `Last-Event-ID` from the journal's cursor. On every (re)connect it compares
//!   the instance's `createdAtMs` with the one journaled: a change means the
//!   remote sequence restarted, and it resyncs from the start of the new one.
//! - Everything is journaled in order under one lock, before anyone acts on it.
//!   A response that arrives twice (POST body and SSE) is journaled once (by
//!   JSON-RPC id). The journal folded by `view.rs` gives the live state.
//! - The session's status events (`session.status_changed`,
//!   `session.awaiting_input`) are decided from that fold and journaled by
//!   this actor under the same lock, right after the entry that caused them:
//!   `prompting` before the prompt is posted, `ready` right after the response.
//! - A failed open deletes the ACP instance it made; a failed create leaves
//!   the session `closed` (and the actor stops), a failed restore `lost`.
//! - A prompt is posted from a spawned task, so the actor's mailbox is free
//!   while the turn runs; the turn ends when its response is journaled.
//! - When the agent or the instance is gone the session is `lost`; the next
//!   prompt restores it: `session/load` if the agent can, else `session/new`
//!   plus a preamble replayed from the journal, carried by exactly one prompt.
//!
//! Lifecycle: started on demand; stops when the session is closed.

pub mod view;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::history::NewEvent;
use super::registry::ActorMeta;
use super::Kiln;
use crate::db::models::TaskSession;
use crate::db::queries;
use crate::error::{AppError, AppResult};
use crate::integrations::sandbox_agent::{AcpClient, AcpError, Dedup, PostOutcome, SseMessage};
use view::{Change, Dir, Entry, SessionView};

/// A prompt's response from the POST waits for its copy on SSE (which comes
/// after the turn's updates) as long as the stream makes progress; once the
/// stream has brought nothing for this long (counted from the POST's answer at
/// the earliest), the POST's copy is journaled.
const PROMPT_RESPONSE_GRACE: Duration = Duration::from_secs(5);

/// A checkpoint of the view is saved every this many journal entries.
const CHECKPOINT_EVERY: u64 = 1000;

/// How long the requests that open a session (`initialize`, `session/new`,
/// `session/load`, mode and model) may take. Prompts have no such limit.
const OPEN_TIMEOUT: Duration = Duration::from_secs(300);

/// A session's status (the `task_sessions.status` CHECK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Starting,
    Ready,
    Prompting,
    Closed,
    Lost,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Starting => "starting",
            SessionStatus::Ready => "ready",
            SessionStatus::Prompting => "prompting",
            SessionStatus::Closed => "closed",
            SessionStatus::Lost => "lost",
        }
    }

    pub(crate) fn parse(s: &str) -> SessionStatus {
        match s {
            "ready" => SessionStatus::Ready,
            "prompting" => SessionStatus::Prompting,
            "closed" => SessionStatus::Closed,
            "lost" => SessionStatus::Lost,
            _ => SessionStatus::Starting,
        }
    }
}

/// What a SessionActor reports of its session: the whole row's state, so the
/// TaskActor only has to apply reports in order.
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "AppResult<TaskSession>")]
pub struct SessionObserved {
    pub session: String,
    pub acp_server_id: String,
    pub remote_session_id: Option<String>,
    pub status: SessionStatus,
    pub last_remote_seq: i64,
    pub stop_reason: Option<String>,
    pub awaiting_input: bool,
    pub remote_epoch: Option<i64>,
    pub load_session: bool,
    pub last_error: Option<String>,
}

/// A session's view as of journal event `event_id`, for the TaskActor to keep
/// (`task_sessions.checkpoint`): loading starts from it instead of the
/// journal's beginning.
#[derive(Message, Debug, Clone)]
#[rtype(result = "AppResult<()>")]
pub struct SaveCheckpoint {
    pub session: String,
    /// Serialized by the writer, on the blocking pool.
    pub view: SessionView,
    pub event_id: i64,
}

/// Opens a freshly created session: `initialize`, `session/new`, mode and model.
#[derive(Message)]
#[rtype(result = "AppResult<TaskSession>")]
pub struct OpenSession {}

/// Sends one prompt (restoring the session first if it was lost).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<PromptAccepted>")]
pub struct Prompt {
    pub text: String,
}

/// What `Prompt` answers: the turn runs on.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PromptAccepted {
    pub session: String,
    /// The JSON-RPC id of the `session/prompt`; its response ends the turn.
    pub request_id: u64,
    /// The prompt's journal cursor, and its event id (stream from it with `since`).
    pub seq: u64,
    pub event_id: i64,
    /// The session was lost and has been restored for this prompt.
    pub restored: Option<&'static str>,
}

/// Cancels the turn in flight (`session/cancel`, and every pending permission
/// answered `cancelled`, as ACP requires).
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Value>")]
pub struct Cancel {}

/// Answers a pending `session/request_permission`.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<Value>")]
pub struct AnswerPermission {
    /// The request's JSON-RPC id as the API shows it.
    pub request: String,
    /// The option chosen; `None` answers `cancelled`.
    pub option_id: Option<String>,
}

/// Closes the session: DELETE on its ACP instance (with a timeout), then the
/// row. Closing a closed session answers it as it is.
#[derive(Message, Clone)]
#[rtype(result = "AppResult<TaskSession>")]
pub struct CloseSession {}

/// At boot: pick the session up again (or mark it lost if it was still opening).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResumeSession {}

/// The task's sandbox is going away: stop reading and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownSession {}

/// The live state, behind the journal lock.
struct Live {
    row: TaskSession,
    status: SessionStatus,
    view: SessionView,
    dedup: Dedup,
    client: Option<AcpClient>,
    /// The sandbox checkout (the agent's `cwd`).
    cwd: Option<PathBuf>,
    /// The instance's `createdAtMs`, as last seen in `GET /v1/acp`.
    epoch: Option<i64>,
    /// The id of a `session/load` in flight: updates until its response are replays.
    loading: Option<Value>,
    /// The last report sent (without the cursor), to send only changes.
    reported: Option<SessionObserved>,
    /// When the reader last journaled something from the stream.
    last_ingest: std::time::Instant,
    /// The journal cursor of the last checkpoint saved (or loaded).
    checkpoint_seq: u64,
    last_error: Option<String>,
    /// The status the last `session.status_changed` event moved to.
    journaled: SessionStatus,
    /// Status events decided but not journaled yet (a write failed): they go
    /// first into the next write, so they still precede anything later.
    unjournaled: Vec<NewEvent>,
}

/// What a new status says about itself in its `session.status_changed` event.
#[derive(Debug, Default, Clone, PartialEq)]
struct StatusFacts {
    /// The `session/prompt` in flight.
    request_id: Option<Value>,
    /// How the turn that just ended ended.
    stop_reason: Option<String>,
    turn_error: Option<String>,
    /// Why the session is lost, or closed other than on request.
    error: Option<String>,
}

/// The data of a `session.status_changed` event: `from`, `to`, the journal
/// cursor it follows (`seq`), and only the fields of the new state: the
/// prompt's `request_id` for `prompting`; the turn's `stop_reason` (or
/// `error`) for `ready` after a turn; the cause (`error`) for `lost`, and for
/// `closed` when it has one. Nothing of an earlier state comes along.
fn status_data(from: SessionStatus, to: SessionStatus, seq: u64, facts: &StatusFacts) -> Value {
    let mut data = json!({"from": from.as_str(), "to": to.as_str(), "seq": seq});
    let mut set = |key: &str, value: &Option<String>| {
        if let Some(v) = value {
            data[key] = json!(v);
        }
    };
    match to {
        SessionStatus::Ready if from == SessionStatus::Prompting => {
            set("stop_reason", &facts.stop_reason);
            set("error", &facts.turn_error);
        }
        SessionStatus::Lost | SessionStatus::Closed => set("error", &facts.error),
        SessionStatus::Prompting => {
            if let Some(id) = &facts.request_id {
                data["request_id"] = id.clone();
            }
        }
        SessionStatus::Ready | SessionStatus::Starting => {}
    }
    data
}

/// The status the live state says: an open session is `prompting` exactly
/// while a turn is in flight.
fn effective(status: SessionStatus, view: &SessionView) -> SessionStatus {
    match status {
        SessionStatus::Ready | SessionStatus::Prompting if view.prompting() => SessionStatus::Prompting,
        SessionStatus::Ready | SessionStatus::Prompting => SessionStatus::Ready,
        other => other,
    }
}

/// An envelope about to be journaled.
struct Pending {
    dir: Dir,
    remote_seq: Option<u64>,
    purpose: Option<&'static str>,
    envelope: Value,
}

impl Pending {
    fn out(envelope: Value, purpose: Option<&'static str>) -> Pending {
        Pending { dir: Dir::Out, remote_seq: None, purpose, envelope }
    }
    fn inbound(envelope: Value, remote_seq: Option<u64>) -> Pending {
        Pending { dir: Dir::In, remote_seq, purpose: None, envelope }
    }
}

type Report = (SessionObserved, Option<oneshot::Sender<AppResult<TaskSession>>>);

/// What the actor and its reader share.
struct Shared {
    kiln: Kiln,
    org: String,
    repo: String,
    task: String,
    id: String,
    live: Mutex<Live>,
    reports: mpsc::UnboundedSender<Report>,
}

fn upstream(e: AcpError) -> AppError {
    match e {
        AcpError::Timeout(m) => AppError::BadGateway { code: "agent_timeout", message: format!("the agent did not answer: {m}") },
        AcpError::AgentExited(m) => AppError::BadGateway { code: "agent_exited", message: format!("the agent process exited: {m}") },
        other => AppError::BadGateway { code: "sandbox_agent_error", message: other.to_string() },
    }
}

/// The same error with `note` added to its message.
fn noted(e: AppError, note: &str) -> AppError {
    let add = |message: String| format!("{message}{note}");
    match e {
        AppError::BadGateway { code, message } => AppError::BadGateway { code, message: add(message) },
        AppError::Invalid { code, message } => AppError::Invalid { code, message: add(message) },
        AppError::Conflict { code, message } => AppError::Conflict { code, message: add(message) },
        AppError::Unavailable { code, message } => AppError::Unavailable { code, message: add(message) },
        AppError::NotFound { code, message } => AppError::NotFound { code, message: add(message) },
        AppError::BadRequest { code, message } => AppError::BadRequest { code, message: add(message) },
        other => other,
    }
}

fn rpc_error_text(error: &Value) -> String {
    error.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| error.to_string())
}

impl Shared {
    fn event(&self, kind: &'static str, data: Value) -> NewEvent {
        NewEvent::new(kind, data).repo(&self.repo).task(&self.task).session(&self.id)
    }

    /// Journals envelopes in order (dropping a response already journaled),
    /// then folds them into the view. Answers the changes and the event ids.
    ///
    /// Status events are journaled in the same order: the entries go out in
    /// runs that end at one that may change the status; after each run is
    /// folded, the status it led to is decided, and its event goes out at the
    /// head of the next run (or alone, at the end). All of it under the
    /// journal lock, so nothing else of this session is journaled in between.
    async fn record(&self, live: &mut Live, items: Vec<Pending>) -> AppResult<(Vec<Change>, Vec<i64>)> {
        let mut entries = Vec::with_capacity(items.len());
        let mut seq = live.view.seq;
        for p in items {
            let mut replay = false;
            if p.dir == Dir::In {
                let env = &p.envelope;
                if p.remote_seq.is_some() && live.loading.is_some() {
                    if env.get("method").and_then(Value::as_str) == Some("session/update") {
                        replay = true;
                    } else if env.get("method").is_none() && env.get("id") == live.loading.as_ref() {
                        // The load's response on SSE: everything before it was history.
                        live.loading = None;
                    }
                }
                if !live.dedup.is_new(env) {
                    continue;
                }
            }
            seq += 1;
            entries.push(Entry {
                seq,
                dir: p.dir,
                server: live.row.acp_server_id.clone(),
                remote_seq: p.remote_seq,
                epoch: p.remote_seq.and(live.epoch),
                replay,
                purpose: p.purpose.map(str::to_string),
                envelope: p.envelope,
            });
        }
        if entries.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut changes = Vec::new();
        let mut ids = Vec::with_capacity(entries.len());
        let mut rest = entries.as_slice();
        while !rest.is_empty() {
            let cut = rest.iter().position(Entry::may_change_status).map_or(rest.len(), |i| i + 1);
            let (run, tail) = rest.split_at(cut);
            let status = live.unjournaled.len();
            let mut events = live.unjournaled.clone();
            events.extend(run.iter().map(|e| self.event(e.kind(), serde_json::to_value(e).unwrap_or(Value::Null))));
            match self.kiln.emit(&self.org, events).await {
                Ok(written) => {
                    live.unjournaled.clear();
                    ids.extend(written.into_iter().skip(status));
                }
                Err(e) => {
                    // This run was not journaled: forget the ids it marked as seen.
                    live.dedup = dedup_from(&live.view);
                    return Err(e);
                }
            }
            let mut run_changes = Vec::new();
            for e in run {
                run_changes.extend(live.view.apply(e));
            }
            self.decide(live, &run_changes);
            changes.extend(run_changes);
            rest = tail;
        }
        self.flush(live).await;
        self.report(live, None);
        if live.view.seq >= live.checkpoint_seq + CHECKPOINT_EVERY {
            if let Some(&event_id) = ids.last() {
                live.checkpoint_seq = live.view.seq;
                let msg = SaveCheckpoint { session: self.id.clone(), view: live.view.clone(), event_id };
                let task = self.kiln.task(&self.org, &self.repo, &self.task);
                actix::spawn(async move {
                    match task.send(msg).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::warn!("saving a session checkpoint failed: {e}"),
                        Err(e) => log::warn!("saving a session checkpoint failed: {e}"),
                    }
                });
            }
        }
        Ok((changes, ids))
    }

    /// Applies what a folded run changed to the live status, and queues the
    /// events it calls for: `session.awaiting_input` when a permission request
    /// starts or stops waiting, `session.status_changed` when the status moved.
    fn decide(&self, live: &mut Live, changes: &[Change]) {
        let mut facts = StatusFacts::default();
        for c in changes {
            match c {
                Change::AgentExited { detail } => {
                    if live.status != SessionStatus::Closed {
                        live.status = SessionStatus::Lost;
                        live.last_error = Some(detail.clone());
                    }
                }
                Change::TurnEnded { stop_reason, error } => {
                    facts.stop_reason = stop_reason.clone();
                    facts.turn_error = error.clone();
                }
                Change::AwaitingInput(waiting) => {
                    let data = json!({"awaiting_input": waiting, "seq": live.view.seq});
                    live.unjournaled.push(self.event("session.awaiting_input", data));
                }
                Change::TurnStarted => {}
            }
        }
        self.decide_status(live, facts);
    }

    /// Settles the live status and, if it moved since the last status event,
    /// queues the event for the new one.
    fn decide_status(&self, live: &mut Live, mut facts: StatusFacts) {
        live.status = effective(live.status, &live.view);
        if live.status == live.journaled {
            return;
        }
        facts.request_id = live.view.prompt_in_flight.clone();
        facts.error = live.last_error.clone();
        let data = status_data(live.journaled, live.status, live.view.seq, &facts);
        live.unjournaled.push(self.event("session.status_changed", data));
        live.journaled = live.status;
    }

    /// Journals the queued status events now. If that fails they stay queued
    /// and go out first with the next write.
    async fn flush(&self, live: &mut Live) {
        if live.unjournaled.is_empty() {
            return;
        }
        match self.kiln.emit(&self.org, live.unjournaled.clone()).await {
            Ok(_) => live.unjournaled.clear(),
            Err(e) => log::warn!("session {}: journaling its status failed ({e}); it goes with the next write", self.id),
        }
    }

    /// After a status change outside the journal (opening, closing, a failure):
    /// its event is journaled, then the state reported.
    async fn settle(&self, live: &mut Live) {
        self.decide_status(live, StatusFacts::default());
        self.flush(live).await;
        self.report(live, None);
    }

    /// Sends the session's state to the TaskActor if it changed (or always,
    /// when `done` waits for the written row).
    fn report(&self, live: &mut Live, done: Option<oneshot::Sender<AppResult<TaskSession>>>) {
        let status = live.status;
        let mut obs = SessionObserved {
            session: self.id.clone(),
            acp_server_id: live.row.acp_server_id.clone(),
            remote_session_id: live.row.remote_session_id.clone(),
            status,
            last_remote_seq: 0,
            stop_reason: live.view.stop_reason.clone(),
            awaiting_input: !live.view.pending_permissions.is_empty(),
            remote_epoch: live.epoch,
            load_session: live.row.load_session,
            last_error: live.last_error.clone(),
        };
        if done.is_none() && live.reported.as_ref() == Some(&obs) {
            return;
        }
        live.reported = Some(obs.clone());
        obs.last_remote_seq = live.view.cursor(&live.row.acp_server_id, live.epoch).unwrap_or(0) as i64;
        let _ = self.reports.send((obs, done));
    }

    /// Marks the session lost (journaling why, which also ends a turn in flight).
    async fn lose(&self, live: &mut Live, reason: String) {
        if matches!(live.status, SessionStatus::Closed | SessionStatus::Lost) {
            return;
        }
        log::info!("session {} of task {} is lost: {reason}", self.id, self.task);
        // Kiln's own (marked) note: it ends a turn in flight like `_adapter/agent_exited`.
        let note = json!({"jsonrpc": "2.0", "method": "_kiln/session_lost", "params": {"reason": reason}});
        let mut p = Pending::inbound(note, None);
        p.purpose = Some("kiln");
        live.last_error = Some(reason.clone());
        if self.record(live, vec![p]).await.is_err() || live.status != SessionStatus::Lost {
            live.status = SessionStatus::Lost;
            self.settle(live).await;
        }
    }

    /// Sends one request (of those that open a session) and journals both ways;
    /// answers its `result`, or the JSON-RPC error as a 502.
    async fn request(
        &self,
        live: &mut Live,
        method: &str,
        params: Value,
        purpose: Option<&'static str>,
        agent: Option<&str>,
    ) -> AppResult<Value> {
        let id = live.view.next_request_id;
        let envelope = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.record(live, vec![Pending::out(envelope.clone(), purpose)]).await?;
        let client = live.client.clone().ok_or_else(|| AppError::bug("no sandbox-agent client"))?;
        let answer =
            client.post_with_timeout(&live.row.acp_server_id, agent, &envelope, OPEN_TIMEOUT).await.map_err(upstream)?;
        let PostOutcome::Response(response) = answer else {
            return Err(AppError::BadGateway {
                code: "sandbox_agent_error",
                message: format!("sandbox-agent accepted `{method}` without answering it"),
            });
        };
        self.record(live, vec![Pending::inbound(response.clone(), None)]).await?;
        if let Some(err) = response.get("error") {
            return Err(AppError::BadGateway {
                code: "agent_error",
                message: format!("the agent refused `{method}`: {}", rpc_error_text(err)),
            });
        }
        Ok(response.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Posts an envelope that gets no response (a notification, or Kiln's
    /// answer to an agent request), journaled first.
    async fn notify(&self, live: &mut Live, envelope: Value) -> AppResult<()> {
        self.record(live, vec![Pending::out(envelope.clone(), None)]).await?;
        let client = live.client.clone().ok_or_else(|| AppError::bug("no sandbox-agent client"))?;
        match client.post_with_timeout(&live.row.acp_server_id, None, &envelope, Duration::from_secs(30)).await {
            Ok(_) => Ok(()),
            Err(AcpError::AgentExited(m)) => {
                self.lose(live, format!("the agent process exited: {m}")).await;
                Err(AppError::conflict("session_lost", "the agent is gone; the next prompt restores the session"))
            }
            Err(e) => Err(upstream(e)),
        }
    }

    /// Answers the agent's requests Kiln does not serve (`fs/*`, `terminal/*`:
    /// `initialize` advertised neither) with "method not found", so the agent
    /// does not wait for an answer that never comes.
    async fn refuse_unsupported(&self, live: &mut Live) {
        for (id, method) in live.view.unsupported_requests.clone() {
            let message = format!("Kiln does not serve `{method}` (its initialize advertised no such capability)");
            let answer = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": message}});
            if let Err(e) = self.notify(live, answer).await {
                log::warn!("session {}: answering `{method}` failed: {e}", self.id);
                return;
            }
        }
    }

    /// Opens an ACP instance for the session: a new one on create, the next
    /// generation on restore. Answers how it was restored, if it was. If it
    /// fails once the instance may exist, the instance is deleted again (and
    /// the error says so): a failed open leaves no agent process behind.
    async fn open(self: &Rc<Self>, live: &mut Live, restore: bool) -> AppResult<Option<&'static str>> {
        if restore {
            live.status = SessionStatus::Starting;
            self.settle(live).await;
        }
        let (endpoint, cwd) = self.kiln.task(&self.org, &self.repo, &self.task).send(super::task::EnsureAcp { wake: true }).await??;
        let client = AcpClient::new(&endpoint.url, Some(&endpoint.token)).with_headers(endpoint.headers.clone());
        let agent = live.row.agent.clone();
        client.install_agent(&agent).await.map_err(|e| match e {
            AcpError::Http { status: 400, message, .. } => {
                AppError::invalid("unsupported_agent", format!("sandbox-agent does not know agent `{agent}`: {message}"))
            }
            other => upstream(other),
        })?;
        if restore {
            // The lost generation's instance goes, if it is still there (in the
            // background: 0.4.2 never answers a DELETE of a live instance).
            let (old, server) = (client.clone(), live.row.acp_server_id.clone());
            actix::spawn(async move {
                let _ = old.delete(&server, crate::integrations::sandbox_agent::DELETE_TIMEOUT).await;
            });
            live.row.acp_server_id = next_server_id(&self.id, &live.row.acp_server_id);
        }
        live.client = Some(client);
        live.cwd = Some(cwd.clone());
        live.epoch = None;
        live.loading = None;
        live.dedup = dedup_from(&live.view);
        match self.open_instance(live, restore, &agent, cwd).await {
            Ok(how) => Ok(how),
            Err(e) => {
                let server = live.row.acp_server_id.clone();
                let note = if self.discard_instance(live, &e).await {
                    format!("; its ACP instance `{server}` was deleted")
                } else {
                    format!("; deleting its ACP instance `{server}` could not be confirmed")
                };
                Err(noted(e, &note))
            }
        }
    }

    /// The requests that open an instance: `initialize`, then `session/load`
    /// (restoring an agent that can) or `session/new`, then mode and model.
    async fn open_instance(
        self: &Rc<Self>,
        live: &mut Live,
        restore: bool,
        agent: &str,
        cwd: PathBuf,
    ) -> AppResult<Option<&'static str>> {
        let init = json!({
            "protocolVersion": 1,
            "clientCapabilities": {"fs": {"readTextFile": false, "writeTextFile": false}, "terminal": false},
            "clientInfo": {"name": "kiln", "version": env!("CARGO_PKG_VERSION")},
        });
        let init = self.request(live, "initialize", init, None, Some(agent)).await?;
        live.row.load_session = init["agentCapabilities"]["loadSession"].as_bool().unwrap_or(false);
        let cwd = cwd.to_string_lossy().to_string();
        let mut how = None;
        if restore && live.row.load_session && live.row.remote_session_id.is_some() {
            let params = json!({"sessionId": live.row.remote_session_id, "cwd": cwd, "mcpServers": []});
            live.loading = Some(json!(live.view.next_request_id));
            match self.request(live, "session/load", params, Some("load"), None).await {
                Ok(_) => how = Some("load"),
                Err(e) => {
                    live.loading = None;
                    log::warn!("session/load of {} failed ({e}); opening a new session instead", self.id);
                }
            }
        }
        if how.is_none() {
            let purpose = restore.then_some("restore");
            let result = self.request(live, "session/new", json!({"cwd": cwd, "mcpServers": []}), purpose, None).await?;
            let sid = result.get("sessionId").and_then(Value::as_str).ok_or_else(|| AppError::BadGateway {
                code: "agent_error",
                message: format!("the agent answered session/new without a sessionId: {result}"),
            })?;
            live.row.remote_session_id = Some(sid.to_string());
            how = restore.then_some("new");
        }
        let sid = live.row.remote_session_id.clone();
        if let Some(mode) = live.row.mode.clone() {
            self.request(live, "session/set_mode", json!({"sessionId": sid, "modeId": mode}), None, None).await?;
        }
        if let Some(model) = live.row.model.clone() {
            self.request(live, "session/set_model", json!({"sessionId": sid, "modelId": model}), None, None).await?;
        }
        live.status = SessionStatus::Ready;
        live.last_error = None;
        Ok(how)
    }

    /// After a failed open: deletes the instance it made (PROTOCOLS §1.4.4: a
    /// DELETE that times out counts, and the list confirms), and journals that
    /// it did, and why (`_kiln/instance_deleted`). Answers whether the instance
    /// is confirmed gone.
    async fn discard_instance(&self, live: &mut Live, cause: &AppError) -> bool {
        let Some(client) = live.client.clone() else { return true };
        let server = live.row.acp_server_id.clone();
        let timeout = Duration::from_millis(self.kiln.config.sessions.close_timeout_ms);
        if let Err(e) = client.delete(&server, timeout).await {
            log::warn!("session {}: deleting ACP instance {server} after a failed open failed: {e}", self.id);
        }
        let gone = match client.list().await {
            Ok(servers) => !servers.iter().any(|s| s["serverId"].as_str() == Some(server.as_str())),
            Err(e) => {
                log::warn!("session {}: listing ACP instances failed: {e}", self.id);
                false
            }
        };
        let note = json!({
            "jsonrpc": "2.0", "method": "_kiln/instance_deleted",
            "params": {"server": server, "reason": cause.to_string(), "confirmed": gone},
        });
        let mut p = Pending::inbound(note, None);
        p.purpose = Some("kiln");
        if let Err(e) = self.record(live, vec![p]).await {
            log::warn!("session {}: journaling the deleted instance failed: {e}", self.id);
        }
        gone
    }

    /// Waits until the reader has journaled a `session/load`'s response from
    /// SSE (so the replayed history is marked as such), at most 30 s.
    async fn wait_loaded(&self) -> tokio::sync::MutexGuard<'_, Live> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut live = self.live.lock().await;
            if live.loading.is_none() {
                return live;
            }
            if std::time::Instant::now() >= deadline {
                log::warn!("session {}: the session/load response never came on SSE; going on", self.id);
                live.loading = None;
                return live;
            }
            drop(live);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The live state, with a client for the sandbox-agent server when the
    /// session is open (after a Kiln restart the reader may not have made one
    /// yet). Handlers take it first and check the state after.
    async fn open_live(&self) -> AppResult<tokio::sync::MutexGuard<'_, Live>> {
        let live = self.live.lock().await;
        if live.client.is_some() || !matches!(live.status, SessionStatus::Ready | SessionStatus::Prompting) {
            return Ok(live);
        }
        drop(live);
        self.refresh_client(true).await?;
        Ok(self.live.lock().await)
    }

    /// Where the sandbox-agent server is now (it may have been restarted on a
    /// new port). With `wake` (a user's request), an auto-stopped sandbox is
    /// started again; without (the reader), it is `409 sandbox_stopped`.
    async fn refresh_client(&self, wake: bool) -> AppResult<()> {
        let (endpoint, cwd) = self.kiln.task(&self.org, &self.repo, &self.task).send(super::task::EnsureAcp { wake }).await??;
        let mut live = self.live.lock().await;
        live.client = Some(AcpClient::new(&endpoint.url, Some(&endpoint.token)).with_headers(endpoint.headers.clone()));
        live.cwd = Some(cwd);
        Ok(())
    }
}

fn dedup_from(view: &SessionView) -> Dedup {
    let mut d = Dedup::new(view.response_ids.len().max(4096) * 2);
    for id in &view.response_ids {
        d.is_new(&json!({"jsonrpc": "2.0", "id": id, "result": null}));
    }
    d
}

/// `<id>`, `<id>-2`, `<id>-3`…: the ACP server id of the next generation.
fn next_server_id(id: &str, current: &str) -> String {
    let n = current.strip_prefix(id).and_then(|r| r.strip_prefix('-')).and_then(|n| n.parse::<u64>().ok()).unwrap_or(1);
    format!("{id}-{}", n + 1)
}

/// At start: the row is brought in line with the journal (a report may not
/// have made it before Kiln stopped). And a prompt journaled just before Kiln
/// stopped may never have been posted: if nothing from the agent arrives after
/// it within `grace` (the reader replays what sandbox-agent buffered
/// meanwhile), its turn is ended with Kiln's own marked error, so the session
/// does not wait forever.
async fn after_start(shared: Rc<Shared>, grace: Duration) {
    {
        let mut live = shared.live.lock().await;
        shared.settle(&mut live).await;
        if live.view.unacknowledged_prompt().is_none() {
            return;
        }
    }
    tokio::time::sleep(grace).await;
    let mut live = shared.live.lock().await;
    let Some((id, _)) = live.view.unacknowledged_prompt() else { return };
    if live.status != SessionStatus::Ready && live.status != SessionStatus::Prompting {
        return;
    }
    log::warn!("session {}: prompt {id} shows no sign of reaching the agent; ending its turn", shared.id);
    let message = "kiln: Kiln stopped right after this prompt and the agent never acknowledged it; send it again";
    let mut p = Pending::inbound(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": message}}), None);
    p.purpose = Some("kiln");
    let _ = shared.record(&mut live, vec![p]).await;
}

/// What the reader decided after a batch.
enum Next {
    More,
    Reconnect,
    Stop,
}

/// Follows the session's SSE stream until the session is lost or closed.
async fn read_loop(shared: Rc<Shared>) {
    let mut failures: u32 = 0;
    loop {
        let (client, server, epoch) = {
            let live = shared.live.lock().await;
            if !matches!(live.status, SessionStatus::Ready | SessionStatus::Prompting | SessionStatus::Starting) {
                return;
            }
            (live.client.clone(), live.row.acp_server_id.clone(), live.epoch)
        };
        let Some(client) = client else {
            if let Err(e) = shared.refresh_client(false).await {
                let mut live = shared.live.lock().await;
                shared.lose(&mut live, format!("the sandbox-agent server is not available: {e}")).await;
                return;
            }
            continue;
        };
        if failures > 0 {
            tokio::time::sleep(Duration::from_millis((100u64 << failures.min(6)).min(5000))).await;
            if failures.is_multiple_of(3) {
                // Several failures in a row: the server may have been restarted elsewhere.
                if let Err(e) = shared.refresh_client(false).await {
                    if e.code() == "sandbox_stopped" {
                        // Its sandbox was stopped while idle: the next prompt restores it.
                        let mut live = shared.live.lock().await;
                        shared.lose(&mut live, format!("{e}")).await;
                        return;
                    }
                }
            }
        }
        // The instance must still exist, with the sequence the journal knows.
        let instance = match client.list().await {
            Ok(servers) => servers.into_iter().find(|s| s["serverId"].as_str() == Some(server.as_str())),
            Err(e) => {
                log::debug!("session {}: listing ACP instances failed: {e}", shared.id);
                failures += 1;
                continue;
            }
        };
        let Some(instance) = instance else {
            let mut live = shared.live.lock().await;
            if live.row.acp_server_id == server {
                shared.lose(&mut live, "the ACP instance is gone (sandbox-agent was restarted or the instance was closed)".into()).await;
            }
            return;
        };
        let created = instance["createdAtMs"].as_i64();
        let cursor = {
            let mut live = shared.live.lock().await;
            if live.row.acp_server_id != server {
                continue;
            }
            if created != epoch {
                if epoch.is_some() {
                    // Same server id, new instance: its sequence starts again at 1.
                    let cursor = live.view.cursor(&server, epoch);
                    log::info!("session {}: the remote sequence was reset; resyncing", shared.id);
                    let _ = shared
                        .kiln
                        .emit_one(
                            &shared.org,
                            shared.event(
                                "session.resynced",
                                json!({"server": server, "old_epoch": epoch, "new_epoch": created, "cursor": cursor}),
                            ),
                        )
                        .await;
                }
                live.epoch = created;
                shared.settle(&mut live).await;
            }
            live.view.cursor(&server, created)
        };
        let mut stream = match client.connect(&server, cursor).await {
            Ok(s) => s,
            Err(AcpError::NotFound(_)) => {
                let mut live = shared.live.lock().await;
                shared.lose(&mut live, "the ACP instance is gone".into()).await;
                return;
            }
            Err(e) => {
                log::debug!("session {}: opening the stream failed: {e}", shared.id);
                failures += 1;
                continue;
            }
        };
        failures = 0;
        {
            // A request journaled just before Kiln stopped is not replayed: answer it now.
            let mut live = shared.live.lock().await;
            shared.refuse_unsupported(&mut live).await;
        }
        let mut last = cursor;
        while let Some(first) = stream.next().await {
            let mut batch = vec![first];
            while batch.len() < 256 {
                match stream.next().now_or_never() {
                    Some(Some(item)) => batch.push(item),
                    _ => break,
                }
            }
            let mut messages: Vec<SseMessage> = Vec::with_capacity(batch.len());
            let mut broken = false;
            for item in batch {
                match item {
                    Ok(m) if last.is_some_and(|l| m.id <= l) => {
                        // Replayed below the cursor: the sequence restarted under us.
                        log::warn!("session {}: SSE id {} is not above {:?}; reconnecting", shared.id, m.id, last);
                        broken = true;
                        break;
                    }
                    Ok(m) => {
                        last = Some(m.id);
                        messages.push(m);
                    }
                    Err(AcpError::Protocol(e)) => log::warn!("session {}: unreadable SSE event skipped: {e}", shared.id),
                    Err(e) => {
                        log::debug!("session {}: the stream broke: {e}", shared.id);
                        broken = true;
                        break;
                    }
                }
            }
            let next = ingest(&shared, &server, messages).await;
            match next {
                Next::Stop => return,
                Next::Reconnect => break,
                Next::More if broken => break,
                Next::More => {}
            }
        }
        failures += 1;
    }
}

/// Journals a batch from the stream; answers what the reader does next.
async fn ingest(shared: &Rc<Shared>, server: &str, messages: Vec<SseMessage>) -> Next {
    if messages.is_empty() {
        return Next::More;
    }
    let mut live = shared.live.lock().await;
    if live.row.acp_server_id != server || matches!(live.status, SessionStatus::Closed) {
        return Next::Stop;
    }
    let items = messages.into_iter().map(|m| Pending::inbound(m.data, Some(m.id))).collect();
    live.last_ingest = std::time::Instant::now();
    match shared.record(&mut live, items).await {
        Ok(_) if live.status == SessionStatus::Lost => Next::Stop,
        Ok(_) => {
            shared.refuse_unsupported(&mut live).await;
            Next::More
        }
        Err(e) => {
            // Not journaled: read it again from the persisted cursor.
            log::warn!("session {}: journaling failed ({e}); resuming from the cursor", shared.id);
            Next::Reconnect
        }
    }
}

pub struct SessionActor {
    kiln: Kiln,
    org: String,
    repo: String,
    task: String,
    id: String,
    meta: Arc<ActorMeta>,
    shared: Option<Rc<Shared>>,
    reader: Rc<RefCell<Option<tokio::task::JoinHandle<()>>>>,
}

impl SessionActor {
    pub fn new(kiln: Kiln, org: String, repo: String, task: String, id: String, meta: Arc<ActorMeta>) -> Self {
        SessionActor { kiln, org, repo, task, id, meta, shared: None, reader: Rc::new(RefCell::new(None)) }
    }

    fn shared(&self) -> AppResult<Rc<Shared>> {
        self.shared.clone().ok_or_else(|| AppError::not_found("session_not_found", format!("no session `{}`", self.id)))
    }

    fn stop_reader(&self) {
        if let Some(r) = self.reader.borrow_mut().take() {
            r.abort();
        }
    }
}

/// Starts the reader unless one runs.
fn start_reader(reader: &Rc<RefCell<Option<tokio::task::JoinHandle<()>>>>, shared: &Rc<Shared>) {
    let mut slot = reader.borrow_mut();
    if slot.as_ref().is_some_and(|h| !h.is_finished()) {
        return;
    }
    *slot = Some(actix::spawn(read_loop(shared.clone())));
}

/// Loads the session's row and its view: the checkpoint (if any) with the
/// journal after it folded in. Also answers how many entries that was.
/// With `status`, also the status the session's last status event moved it to.
async fn load(
    kiln: &Kiln,
    org: &str,
    task: &str,
    id: &str,
    status: bool,
) -> AppResult<Option<(TaskSession, SessionView, u64, Option<String>)>> {
    let (o, t, i) = (org.to_string(), task.to_string(), id.to_string());
    // Reading, parsing and folding all run on the blocking pool, never on the
    // actor's thread (a journal without a checkpoint can be long).
    Ok(kiln
        .db
        .read(move |c| {
            let Some(row) = queries::task_session(c, &t, &i)? else { return Ok(None) };
            let saved = row.checkpoint.as_deref().and_then(SessionView::from_checkpoint);
            // A checkpoint that does not read back is ignored: fold from the start.
            let after = if saved.is_some() { row.checkpoint_event_id } else { 0 };
            let journal = queries::session_journal(c, &o, &i, after)?;
            let mut view = saved.unwrap_or_else(|| SessionView::from_entries(&[]));
            let tail = journal.len() as u64;
            for (_, data) in journal {
                if let Ok(entry) = serde_json::from_str::<Entry>(&data) {
                    view.apply(&entry);
                }
            }
            let journaled = if status { queries::last_journaled_status(c, &o, &i)? } else { None };
            Ok(Some((row, view, tail, journaled)))
        })
        .await?)
}

/// Reads a session's journal and folds it (for the API; no actor needed).
pub async fn read_view(kiln: &Kiln, org: &str, task: &str, id: &str) -> AppResult<Option<(TaskSession, SessionView)>> {
    Ok(load(kiln, org, task, id, false).await?.map(|(row, view, ..)| (row, view)))
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (kiln, org, task, id) = (self.kiln.clone(), self.org.clone(), self.task.clone(), self.id.clone());
        // Nothing else runs until the session is loaded.
        ctx.wait(actix::fut::wrap_future(async move { load(&kiln, &org, &task, &id, true).await }).map(
            |loaded, act: &mut Self, ctx: &mut Context<Self>| {
                let (row, view, tail, journaled) = match loaded {
                    Ok(Some(found)) => found,
                    Ok(None) => return ctx.stop(),
                    Err(e) => {
                        log::error!("loading session {} failed: {e}", act.id);
                        return ctx.stop();
                    }
                };
                let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
                let status = SessionStatus::parse(&row.status);
                // Where the loaded checkpoint was: a long tail gets a new one soon.
                let checkpoint_seq = view.seq.saturating_sub(tail);
                let live = Live {
                    status,
                    dedup: dedup_from(&view),
                    view,
                    client: None,
                    cwd: None,
                    epoch: row.remote_epoch,
                    loading: None,
                    reported: None,
                    last_ingest: std::time::Instant::now(),
                    checkpoint_seq,
                    last_error: row.last_error.clone(),
                    journaled: journaled.as_deref().map_or(status, SessionStatus::parse),
                    unjournaled: Vec::new(),
                    row,
                };
                let shared = Rc::new(Shared {
                    kiln: act.kiln.clone(),
                    org: act.org.clone(),
                    repo: act.repo.clone(),
                    task: act.task.clone(),
                    id: act.id.clone(),
                    live: Mutex::new(live),
                    reports: tx,
                });
                // One reporter, so the TaskActor sees the reports in order.
                let (kiln, org, repo, task) = (act.kiln.clone(), act.org.clone(), act.repo.clone(), act.task.clone());
                actix::spawn(async move {
                    while let Some((obs, done)) = rx.recv().await {
                        let written = match kiln.task(&org, &repo, &task).send(obs).await {
                            Ok(r) => r,
                            Err(e) => Err(AppError::from(e)),
                        };
                        if let Err(e) = &written {
                            log::warn!("recording a session report failed: {e}");
                        }
                        if let Some(done) = done {
                            let _ = done.send(written);
                        }
                    }
                });
                if matches!(status, SessionStatus::Ready | SessionStatus::Prompting) {
                    start_reader(&act.reader, &shared);
                    let grace = Duration::from_millis(act.kiln.config.sessions.undelivered_grace_ms);
                    actix::spawn(after_start(shared.clone(), grace));
                }
                act.shared = Some(shared);
            },
        ));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stop_reader();
        self.kiln.registry.remove(&self.meta);
    }
}

impl Handler<OpenSession> for SessionActor {
    type Result = AtomicResponse<Self, AppResult<TaskSession>>;

    fn handle(&mut self, _: OpenSession, _: &mut Self::Context) -> Self::Result {
        let (shared, reader) = (self.shared(), self.reader.clone());
        self.meta.touch();
        AtomicResponse::new(Box::pin(
            actix::fut::wrap_future(async move {
                let shared = match shared {
                    Ok(s) => s,
                    Err(e) => return (Err(e), false),
                };
                let mut live = shared.live.lock().await;
                if live.status != SessionStatus::Starting || live.client.is_some() {
                    return (Err(AppError::conflict("session_open", "the session is already open")), false);
                }
                let opened = shared.open(&mut live, false).await;
                match &opened {
                    Ok(_) => start_reader(&reader, &shared),
                    Err(e) => {
                        // A session that never opened has nothing to restore: it
                        // is closed, with the cause (its instance is already gone).
                        live.status = SessionStatus::Closed;
                        live.last_error = Some(e.to_string());
                    }
                }
                shared.decide_status(&mut live, StatusFacts::default());
                shared.flush(&mut live).await;
                let (tx, rx) = oneshot::channel();
                shared.report(&mut live, Some(tx));
                drop(live);
                let row = match rx.await {
                    Ok(row) => row,
                    Err(_) => Err(AppError::bug("the session report was dropped")),
                };
                match opened {
                    Ok(_) => (row, false),
                    Err(e) => (Err(noted(e, &format!("; session `{}` is closed", shared.id))), true),
                }
            })
            .map(|(answer, closed), _: &mut Self, ctx: &mut Context<Self>| {
                if closed {
                    ctx.stop();
                }
                answer
            }),
        ))
    }
}

impl Handler<Prompt> for SessionActor {
    type Result = AtomicResponse<Self, AppResult<PromptAccepted>>;

    fn handle(&mut self, msg: Prompt, _: &mut Self::Context) -> Self::Result {
        let (shared, reader) = (self.shared(), self.reader.clone());
        let (max_events, max_chars) =
            (self.kiln.config.sessions.preamble_max_events, self.kiln.config.sessions.preamble_max_chars);
        atomic!(self, async move {
            let shared = shared?;
            let mut live = shared.open_live().await?;
            let mut restored = None;
            match live.status {
                SessionStatus::Closed => return Err(AppError::conflict("session_closed", "the session is closed: open a new one")),
                SessionStatus::Starting => {
                    return Err(AppError::conflict("session_starting", "the session is still opening: try again in a moment"))
                }
                SessionStatus::Lost => {
                    // The old instance is dead: its reader (maybe stuck on a stream that
                    // stays open) goes; `open` deletes the instance.
                    if let Some(r) = reader.borrow_mut().take() {
                        r.abort();
                    }
                    restored = match shared.open(&mut live, true).await {
                        Ok(how) => how,
                        Err(e) => {
                            // Still lost (the next prompt tries again), with this cause.
                            live.status = SessionStatus::Lost;
                            live.last_error = Some(format!("restoring the session failed: {e}"));
                            shared.settle(&mut live).await;
                            return Err(AppError::BadGateway {
                                code: "restore_failed",
                                message: format!("the session was lost and could not be restored: {e}"),
                            });
                        }
                    };
                    shared.settle(&mut live).await;
                    start_reader(&reader, &shared);
                    if restored == Some("load") {
                        // The agent replayed the history on SSE before answering the
                        // load: let the reader journal it (as replay) before this prompt.
                        drop(live);
                        live = shared.wait_loaded().await;
                    }
                }
                SessionStatus::Ready | SessionStatus::Prompting => {}
            }
            if live.view.prompting() {
                return Err(AppError::conflict(
                    "turn_in_progress",
                    "the agent is still working on the last prompt: wait for it, or cancel it",
                ));
            }
            let mut blocks = vec![json!({"type": "text", "text": msg.text})];
            let mut purpose = None;
            if live.view.preamble_due {
                if let Some(preamble) = live.view.preamble(max_events, max_chars) {
                    blocks.insert(0, json!({"type": "text", "text": preamble}));
                    purpose = Some("preamble");
                }
            }
            let id = live.view.next_request_id;
            let envelope = json!({
                "jsonrpc": "2.0", "id": id, "method": "session/prompt",
                "params": {"sessionId": live.row.remote_session_id, "prompt": blocks},
            });
            let (_, ids) = shared.record(&mut live, vec![Pending::out(envelope.clone(), purpose)]).await?;
            let accepted = PromptAccepted {
                session: shared.id.clone(),
                request_id: id,
                seq: live.view.seq,
                event_id: ids.first().copied().unwrap_or(0),
                restored,
            };
            let client = live.client.clone().ok_or_else(|| AppError::bug("no sandbox-agent client"))?;
            let server = live.row.acp_server_id.clone();
            drop(live);
            // The turn runs on without the mailbox: its answer is journaled when it comes.
            let s = shared.clone();
            actix::spawn(async move {
                let answer = client.post(&server, None, &envelope).await;
                let answered_at = std::time::Instant::now();
                let mut live = loop {
                    // SSE carries the turn's updates and then this same response, and
                    // says best when the turn ended: the POST's copy only stands in
                    // once the stream has stalled.
                    let live = s.live.lock().await;
                    let waiting = matches!(answer, Ok(PostOutcome::Response(_)))
                        && live.view.prompt_in_flight == Some(json!(id))
                        && live.last_ingest.max(answered_at).elapsed() < PROMPT_RESPONSE_GRACE;
                    if !waiting {
                        break live;
                    }
                    drop(live);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                if live.row.acp_server_id != server || live.status == SessionStatus::Closed {
                    return;
                }
                match answer {
                    Ok(PostOutcome::Response(response)) => {
                        let _ = s.record(&mut live, vec![Pending::inbound(response, None)]).await;
                    }
                    Ok(PostOutcome::Accepted) | Err(AcpError::Timeout(_)) => {} // SSE brings the answer
                    Err(AcpError::AgentExited(m)) => s.lose(&mut live, format!("the agent process exited: {m}")).await,
                    Err(e) => {
                        // No answer will come: end the turn with Kiln's own (marked) error.
                        let mut p = Pending::inbound(
                            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": format!("kiln: the prompt could not be delivered: {e}")}}),
                            None,
                        );
                        p.purpose = Some("kiln");
                        let _ = s.record(&mut live, vec![p]).await;
                    }
                }
            });
            Ok(accepted)
        })
    }
}

impl Handler<Cancel> for SessionActor {
    type Result = AtomicResponse<Self, AppResult<Value>>;

    fn handle(&mut self, _: Cancel, _: &mut Self::Context) -> Self::Result {
        let shared = self.shared();
        atomic!(self, async move {
            let shared = shared?;
            let mut live = shared.open_live().await?;
            if !live.view.prompting() {
                return Err(AppError::conflict("no_turn", "no prompt is in progress"));
            }
            let sid = live.row.remote_session_id.clone();
            shared.notify(&mut live, json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": sid}})).await?;
            let pending: Vec<Value> = live.view.pending_permissions.iter().map(|p| p.id.clone()).collect();
            for id in &pending {
                let answer = json!({"jsonrpc": "2.0", "id": id, "result": {"outcome": {"outcome": "cancelled"}}});
                shared.notify(&mut live, answer).await?;
            }
            Ok(json!({"session": shared.id, "cancelled": true, "permissions_cancelled": pending.len()}))
        })
    }
}

impl Handler<AnswerPermission> for SessionActor {
    type Result = AtomicResponse<Self, AppResult<Value>>;

    fn handle(&mut self, msg: AnswerPermission, _: &mut Self::Context) -> Self::Result {
        let shared = self.shared();
        atomic!(self, async move {
            let shared = shared?;
            let mut live = shared.open_live().await?;
            match live.status {
                SessionStatus::Ready | SessionStatus::Prompting => {}
                other => {
                    return Err(AppError::conflict(
                        "session_not_open",
                        format!("the session is {}: no permission request waits", other.as_str()),
                    ))
                }
            }
            let pending = live
                .view
                .pending_permissions
                .iter()
                .find(|p| p.request == msg.request || p.id.as_str() == Some(msg.request.as_str()))
                .cloned()
                .ok_or_else(|| {
                    AppError::not_found("permission_not_found", format!("no pending permission request `{}`", msg.request))
                })?;
            let outcome = match &msg.option_id {
                Some(option) => {
                    let known = pending.options.as_array().is_some_and(|o| o.iter().any(|o| o["optionId"] == json!(option)));
                    if !known {
                        let ids: Vec<String> = pending
                            .options
                            .as_array()
                            .map(|o| o.iter().filter_map(|o| o["optionId"].as_str().map(str::to_string)).collect())
                            .unwrap_or_default();
                        return Err(AppError::invalid(
                            "unknown_option",
                            format!("option `{option}` is not offered; choose one of: {}", ids.join(", ")),
                        ));
                    }
                    json!({"outcome": "selected", "optionId": option})
                }
                None => json!({"outcome": "cancelled"}),
            };
            let answer = json!({"jsonrpc": "2.0", "id": pending.id, "result": {"outcome": outcome}});
            shared.notify(&mut live, answer).await?;
            Ok(json!({"session": shared.id, "request": pending.request, "outcome": outcome}))
        })
    }
}

impl Handler<CloseSession> for SessionActor {
    type Result = AtomicResponse<Self, AppResult<TaskSession>>;

    fn handle(&mut self, _: CloseSession, _: &mut Self::Context) -> Self::Result {
        let (shared, reader) = (self.shared(), self.reader.clone());
        let (kiln, org, repo, task, id) = (self.kiln.clone(), self.org.clone(), self.repo.clone(), self.task.clone(), self.id.clone());
        let timeout = Duration::from_millis(self.kiln.config.sessions.close_timeout_ms);
        AtomicResponse::new(Box::pin(
            actix::fut::wrap_future(async move {
                let shared = shared?;
                let mut live = shared.live.lock().await;
                if let Some(r) = reader.borrow_mut().take() {
                    r.abort();
                }
                if live.status != SessionStatus::Closed {
                    if let Some(client) = live.client.clone() {
                        // 0.4.2 never answers a DELETE on a live instance: a timeout is success.
                        if let Err(e) = client.delete(&live.row.acp_server_id, timeout).await {
                            log::warn!("closing session {id}: DELETE failed ({e}); the instance goes with the sandbox");
                        }
                    }
                    // Closed on request: no cause to report. Journaled here, after
                    // everything else of the session; the TaskActor writes the row.
                    live.status = SessionStatus::Closed;
                    live.last_error = None;
                    shared.decide_status(&mut live, StatusFacts::default());
                    shared.flush(&mut live).await;
                }
                drop(live);
                // Idempotent: an already closed row is answered as it is.
                kiln.task(&org, &repo, &task).send(super::task::CloseSession { id }).await?
            })
            .map(|closed, act: &mut Self, ctx: &mut Context<Self>| {
                act.meta.touch();
                ctx.stop();
                closed
            }),
        ))
    }
}

impl Handler<ResumeSession> for SessionActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: ResumeSession, _: &mut Self::Context) -> Self::Result {
        let (shared, reader) = (self.shared(), self.reader.clone());
        atomic!(self, async move {
            let Ok(shared) = shared else { return };
            let mut live = shared.live.lock().await;
            match live.status {
                SessionStatus::Starting => {
                    shared.lose(&mut live, "Kiln stopped while the session was opening".into()).await;
                }
                SessionStatus::Ready | SessionStatus::Prompting => start_reader(&reader, &shared),
                _ => {}
            }
        })
    }
}

impl Handler<ShutdownSession> for SessionActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: ShutdownSession, _: &mut Self::Context) -> Self::Result {
        self.stop_reader();
        let shared = self.shared.clone();
        AtomicResponse::new(Box::pin(
            actix::fut::wrap_future(async move {
                // The TaskActor closed the row and journaled it: nothing of this
                // session is journaled after this point.
                if let Some(shared) = shared {
                    let mut live = shared.live.lock().await;
                    // A status event still unwritten would now come after `closed`.
                    live.unjournaled.clear();
                    live.status = SessionStatus::Closed;
                    live.journaled = SessionStatus::Closed;
                }
            })
            .map(|_, act: &mut Self, ctx: &mut Context<Self>| {
                act.stop_reader();
                ctx.stop();
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_events_carry_only_the_new_states_fields() {
        use SessionStatus::*;
        let facts = StatusFacts {
            request_id: Some(json!(7)),
            stop_reason: Some("end_turn".into()),
            turn_error: None,
            error: Some("an old error".into()),
        };
        assert_eq!(status_data(Ready, Prompting, 5, &facts), json!({"from": "ready", "to": "prompting", "seq": 5, "request_id": 7}));
        assert_eq!(
            status_data(Prompting, Ready, 9, &facts),
            json!({"from": "prompting", "to": "ready", "seq": 9, "stop_reason": "end_turn"})
        );
        let failed = StatusFacts { stop_reason: None, turn_error: Some("boom".into()), ..facts.clone() };
        assert_eq!(status_data(Prompting, Ready, 9, &failed), json!({"from": "prompting", "to": "ready", "seq": 9, "error": "boom"}));
        assert_eq!(status_data(Starting, Ready, 4, &facts), json!({"from": "starting", "to": "ready", "seq": 4}));
        assert_eq!(status_data(Lost, Starting, 4, &facts), json!({"from": "lost", "to": "starting", "seq": 4}));
        assert_eq!(
            status_data(Ready, Lost, 4, &facts),
            json!({"from": "ready", "to": "lost", "seq": 4, "error": "an old error"})
        );
        let on_request = StatusFacts { error: None, ..facts };
        assert_eq!(status_data(Ready, Closed, 4, &on_request), json!({"from": "ready", "to": "closed", "seq": 4}));
    }

    #[test]
    fn a_turn_in_flight_makes_an_open_session_prompting() {
        use SessionStatus::*;
        let mut view = SessionView::from_entries(&[]);
        assert_eq!(effective(Prompting, &view), Ready);
        view.prompt_in_flight = Some(json!(3));
        assert_eq!(effective(Ready, &view), Prompting);
        for other in [Starting, Lost, Closed] {
            assert_eq!(effective(other, &view), other, "only an open session follows the turn");
        }
    }

    #[test]
    fn notes_add_to_the_message_and_keep_the_code() {
        let e = noted(AppError::BadGateway { code: "agent_error", message: "no".into() }, "; gone");
        assert_eq!((e.code(), e.to_string()), ("agent_error", "no; gone".to_string()));
    }

    #[test]
    fn server_ids_count_generations() {
        assert_eq!(next_server_id("s1", "s1"), "s1-2");
        assert_eq!(next_server_id("s1", "s1-2"), "s1-3");
        assert_eq!(next_server_id("s1", "s1-x"), "s1-2");
    }
}
