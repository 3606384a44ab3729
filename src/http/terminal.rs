//! `WS /v1/organizations/{org}/tasks/{task}/terminal?offset=N`: attach to a task's
//! terminal, like tmux.
//!
//! The session connects to the sandbox's terminal host and asks for the output
//! from byte `offset`; the host sends the kept scrollback from there, then live
//! bytes, with no gap and no duplicate. Binary frames carry terminal bytes both
//! ways. Text frames carry control JSON: the server sends `{"type":"attached",
//! "offset":N}` first, `{"type":"offset","offset":N}` when the next byte is not
//! where the client expects it (older output was rotated away or lost in a hole
//! of the log, so output skips ahead; or `offset` was past the end, so the
//! attach starts at the end, told before any output), and `{"type":"exited",...}` when the agent
//! ends; the client sends `{"type":"resize","cols":C,"rows":R}`.
//!
//! When the host is gone, the session sends what the log on disk holds and
//! closes. A client that falls behind is cut loose by the host and closed here
//! with code 1013 and the `offset` to resume from.
//!
//! An attach opened with an organization token is registered in
//! `actors::connections`: revoking the token (or deleting its organization)
//! stops its output and input at once and closes it with 4001 (or 4004).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::{self, Caller};
use super::dto;
use super::openapi::{ApiError, TaskPath};
use super::extract::Query;
use super::tasks::task_with_repo_or_404;
use crate::actors::connections::{CloseRevoked, Connections, Ticket};
use crate::actors::Kiln;
use crate::db::pool::blocking;
use crate::db::DbError;
use crate::error::{AppError, AppResult};
use crate::terminal::log::TerminalLog;
use crate::terminal::protocol::{self, Frame};

/// Frames from one client queued for its host before the client is cut off.
const INPUT_QUEUE: usize = 1024;
/// How long a client's close waits for the host to confirm the input before it.
const CLOSE_ACK: Duration = Duration::from_secs(5);
/// The largest message a client may send (one frame, or the frames of a
/// fragmented message put together): a big paste fits, a runaway client does not.
const MAX_MESSAGE: usize = 1 << 20;
/// Input goes to the host in pieces of at most this many bytes.
const INPUT_PIECE: usize = 64 * 1024;

/// Attaches to the task's terminal over a WebSocket.
///
/// Binary frames carry terminal bytes both ways. Text frames carry control JSON:
/// the server sends `{"type":"attached","offset":N}` first, `{"type":"offset","offset":N}`
/// when output skips ahead (older output was rotated away) and `{"type":"exited",…}`
/// when the agent ends; the client sends `{"type":"resize","cols":C,"rows":R}`.
/// Close codes: 1013 for a client that fell behind (the reason names the offset to
/// resume from), 4001 when the token is revoked, 4004 when the organization is deleted.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/tasks/{task}/terminal", tag = "tasks", operation_id = "terminal", params(TaskPath, dto::TerminalQuery, super::openapi::WebSocketUpgrade),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: terminal bytes in binary frames, control JSON in text frames"),
        (status = 400, description = "Bad request:\n- `websocket_required`: not a WebSocket upgrade", body = ApiError),
        (status = 404, description = "Not found:\n- `task_not_found`", body = ApiError),
        (status = 409, description = "Not in this state:\n- `no_terminal`: the task has no terminal yet", body = ApiError),
        (status = 422, description = "Invalid content:\n- `provider_unavailable`", body = ApiError),
        (status = 502, description = "A remote failed: a Daytona sandbox stopped while idle could not be started again:\n- `daytona_unavailable`\n- `daytona_timeout`\n- `daytona_sandbox_failed`", body = ApiError),
        (status = 503, description = "Unavailable:\n- `daytona_rate_limited`", body = ApiError),
    ),
)]
pub async fn connect(
    req: HttpRequest,
    payload: web::Payload,
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: Query<dto::TerminalQuery>,
) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    let (task, repo) = task_with_repo_or_404(&kiln, &org, &id).await?;
    let provider = kiln.providers.get(&task.provider)?;
    let t = task.id.clone();
    let sandbox = kiln.db.read(move |c| crate::db::queries::task_sandbox(c, &t)).await?;
    if sandbox.is_some_and(|s| matches!(s.run_state.as_deref(), Some("stopped" | "stopping" | "starting"))) {
        // Stopped while idle: started again (once, however many attach at
        // once: the task's actor runs one wake at a time) before attaching.
        ws::handshake(&req).map_err(|e| AppError::bad_request("websocket_required", format!("this route speaks WebSocket only: {e}")))?;
        let wake = crate::actors::task::WakeTask { cause: "terminal" };
        // The actor may have stopped for quiet between lookup and send: start it again.
        match kiln.task(&org, &repo.name, &task.id).send(wake.clone()).await {
            Err(actix::MailboxError::Closed) => kiln.task(&org, &repo.name, &task.id).send(wake).await?,
            other => other?,
        }?;
    }
    let handle = provider.handle_for(&org, &repo.name, &task.id, std::path::Path::new(&repo.mirror_path));
    let crate::providers::AttachTarget::Local { state_dir } = provider.attach_target(&handle)?;
    if !state_dir.exists() {
        return Err(AppError::conflict(
            "no_terminal",
            format!("task `{id}` has no terminal yet (it is {}): wait until it is provisioning or running", task.status),
        ));
    }
    ws::handshake(&req).map_err(|e| AppError::bad_request("websocket_required", format!("this route speaks WebSocket only: {e}")))?;
    let offset = query.offset.unwrap_or(0);
    let socket = state_dir.join(crate::terminal::host::SOCKET);
    let key_dir = state_dir.clone();
    let key = blocking(move || Ok(crate::terminal::client::host_key(&key_dir))).await?;
    let live = match tokio::net::UnixStream::connect(&socket).await {
        Ok(mut stream) => match key {
            // The host wants its key first.
            Some(key) => {
                use tokio::io::AsyncWriteExt;
                stream.write_all(&Frame::new(protocol::HELLO, key).encode()).await.ok().map(|_| stream)
            }
            None => Some(stream),
        },
        Err(_) => None,
    };
    let replay = if live.is_none() {
        let dir = state_dir.clone();
        let (start, bytes, exit) = blocking(move || {
            let (start, bytes) = read_log(&dir, offset)?;
            Ok((start, bytes, crate::terminal::client::exit_info(&dir)))
        })
        .await?;
        Some((start, bytes, exit))
    } else {
        None
    };
    let ticket = kiln.connections.ticket();
    let session = TerminalSession {
        connections: kiln.connections.clone(),
        ticket: ticket.clone(),
        shutdown: kiln.shutdown.subscribe(),
        heartbeat: Instant::now(),
        every: Duration::from_secs(kiln.config.events.heartbeat_secs),
        timeout: Duration::from_secs(kiln.config.events.client_timeout_secs),
        requested: offset,
        next: offset,
        live,
        replay,
        to_host: None,
        exited: false,
        closing: None,
        partial: None,
    };
    let (addr, response) = ws::WsResponseBuilder::new(session, &req, payload)
        .frame_size(MAX_MESSAGE)
        .start_with_addr()
        .map_err(|e| AppError::bad_request("websocket_required", e.to_string()))?;
    auth::register_connection(&kiln, &req, &org, &ticket, addr.recipient()).await?;
    Ok(response)
}

/// The whole kept log from `offset`, for a terminal whose host is gone.
fn read_log(dir: &std::path::Path, offset: u64) -> Result<(u64, Vec<u8>), DbError> {
    let log = TerminalLog::read_only(dir).map_err(|e| DbError::Blocking(e.to_string()))?;
    let mut out = Vec::new();
    let mut at = offset;
    let mut start = None;
    loop {
        let (from, bytes) = log.read_at(at, 1 << 20).map_err(|e| DbError::Blocking(e.to_string()))?;
        start.get_or_insert(from);
        if bytes.is_empty() {
            return Ok((start.unwrap_or(offset), out));
        }
        at = from + bytes.len() as u64;
        out.extend(bytes);
    }
}

struct TerminalSession {
    connections: Arc<Connections>,
    /// Cut when the token this attach was opened with is revoked: no output
    /// goes out and no input goes in from then on.
    ticket: Ticket,
    shutdown: tokio::sync::watch::Receiver<bool>,
    heartbeat: Instant,
    every: Duration,
    timeout: Duration,
    requested: u64,
    /// The offset of the next byte the client expects.
    next: u64,
    live: Option<tokio::net::UnixStream>,
    replay: Option<(u64, Vec<u8>, Option<protocol::ExitInfo>)>,
    to_host: Option<mpsc::Sender<Frame>>,
    exited: bool,
    /// The client has closed: its close is answered once the host has confirmed
    /// every input before it (a `STATUS` round trip behind them).
    closing: Option<Option<ws::CloseReason>>,
    /// A fragmented message being put together: whether it is text, and its bytes so far.
    partial: Option<(bool, Vec<u8>)>,
}

impl TerminalSession {
    fn control(&self, ctx: &mut ws::WebsocketContext<Self>, value: serde_json::Value) {
        if self.ticket.is_cut() {
            return;
        }
        ctx.text(value.to_string());
    }

    fn output(&mut self, ctx: &mut ws::WebsocketContext<Self>, offset: u64, bytes: &[u8]) {
        // Never send a byte twice, even if the host repeats one.
        let (offset, bytes) = if offset < self.next {
            let skip = ((self.next - offset) as usize).min(bytes.len());
            (offset + skip as u64, &bytes[skip..])
        } else {
            (offset, bytes)
        };
        if bytes.is_empty() || self.ticket.is_cut() {
            return;
        }
        if offset != self.next {
            self.control(ctx, json!({"type": "offset", "offset": offset}));
        }
        for chunk in bytes.chunks(1 << 20) {
            ctx.binary(chunk.to_vec());
        }
        self.next = offset + bytes.len() as u64;
    }

    /// The next byte the client gets is at `offset`, not where it expected (the
    /// offset it asked for was past the end): it is told, with no bytes yet.
    fn move_to(&mut self, ctx: &mut ws::WebsocketContext<Self>, offset: u64) {
        if offset != self.next && !self.ticket.is_cut() {
            self.control(ctx, json!({"type": "offset", "offset": offset}));
            self.next = offset;
        }
    }

    /// Queues a frame for the host. A client that sends faster than the agent
    /// reads (the queue is bounded) is closed rather than buffered without end.
    fn to_host(&self, frame: Frame, ctx: &mut ws::WebsocketContext<Self>) {
        if self.ticket.is_cut() {
            return;
        }
        let Some(tx) = &self.to_host else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(frame) {
            ctx.close(Some(ws::CloseReason {
                code: ws::CloseCode::Size,
                description: Some("input arrives faster than the agent reads it".into()),
            }));
            ctx.stop();
        }
    }

    /// One whole message from the client: input bytes, or a control message.
    fn client_message(&mut self, text: bool, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        if !text {
            for piece in bytes.chunks(INPUT_PIECE) {
                self.to_host(Frame::new(protocol::INPUT, piece.to_vec()), ctx);
            }
            return;
        }
        match serde_json::from_slice::<dto::TerminalControl>(bytes) {
            Ok(dto::TerminalControl::Resize { cols, rows }) if cols > 0 && rows > 0 => self.to_host(Frame::resize(cols, rows), ctx),
            _ => self.control(ctx, json!({"type": "error", "message": "unknown control message; send {\"type\":\"resize\",\"cols\":C,\"rows\":R}"})),
        }
    }

    /// A part of a fragmented message (RFC 6455 §5.4): kept until its last part
    /// comes, then handled like a message sent whole.
    fn continuation(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        use actix_http::ws::Item;
        let (bytes, last) = match item {
            Item::FirstText(b) => {
                self.partial = Some((true, Vec::new()));
                (b, false)
            }
            Item::FirstBinary(b) => {
                self.partial = Some((false, Vec::new()));
                (b, false)
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let Some((_, buf)) = self.partial.as_mut() else { return };
        if buf.len() + bytes.len() > MAX_MESSAGE {
            self.partial = None;
            return too_big(ctx);
        }
        buf.extend_from_slice(&bytes);
        if last {
            if let Some((text, buf)) = self.partial.take() {
                self.client_message(text, &buf, ctx);
            }
        }
    }

    /// The client closed. Input it sent just before must still reach the agent,
    /// so the close is answered only after the host has read everything queued
    /// (a `STATUS` sent behind it comes back), or after `CLOSE_ACK` at most.
    fn client_closed(&mut self, reason: Option<ws::CloseReason>, ctx: &mut ws::WebsocketContext<Self>) {
        if self.closing.is_some() {
            return;
        }
        let Some(tx) = self.to_host.clone() else {
            ctx.close(reason);
            ctx.stop();
            return;
        };
        self.closing = Some(reason);
        // A full queue waits for room rather than dropping the marker.
        ctx.spawn(
            async move {
                let _ = tx.send(Frame::new(protocol::STATUS, vec![])).await;
            }
            .into_actor(self),
        );
        ctx.run_later(CLOSE_ACK, |act, ctx| act.finish_close(ctx));
    }

    fn finish_close(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(reason) = self.closing.take() {
            ctx.close(reason);
            ctx.stop();
        }
    }
}

impl Actor for TerminalSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (every, timeout) = (self.every, self.timeout);
        ctx.run_interval(every, move |act, ctx| {
            if act.heartbeat.elapsed() > timeout {
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
        // The server is stopping: tell the client to come back (the agent keeps running).
        let mut shutdown = self.shutdown.clone();
        ctx.spawn(
            async move {
                let _ = shutdown.wait_for(|stopping| *stopping).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| {
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Restart,
                    description: Some(format!("server is restarting; reconnect with offset={}", act.next)),
                }));
                ctx.stop();
            }),
        );
        self.control(ctx, json!({"type": "attached", "offset": self.requested}));
        if let Some((start, bytes, exit)) = self.replay.take() {
            if bytes.is_empty() {
                self.move_to(ctx, start);
            }
            self.output(ctx, start, &bytes);
            let exit = exit.map(|e| exited_control(&serde_json::to_value(&e).unwrap_or_default()));
            self.control(ctx, exit.unwrap_or_else(|| json!({"type": "exited", "code": null, "reason": "the terminal host is gone"})));
            ctx.close(Some(ws::CloseReason { code: ws::CloseCode::Normal, description: Some("the agent is not running".into()) }));
            ctx.stop();
            return;
        }
        let Some(stream) = self.live.take() else { return };
        let (read_half, mut write_half) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Frame>(INPUT_QUEUE);
        let _ = tx.try_send(Frame::attach(self.requested));
        self.to_host = Some(tx);
        actix_web::rt::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(frame) = rx.recv().await {
                if write_half.write_all(&frame.encode()).await.is_err() {
                    break;
                }
            }
        });
        let frames = futures_util::stream::unfold(read_half, |mut r| async move {
            match protocol::read_frame_async(&mut r).await {
                Ok(Some(frame)) => Some((frame, r)),
                _ => None,
            }
        });
        ctx.add_stream(frames);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.connections.unregister(&self.ticket);
        Running::Stop
    }
}

/// The token this attach was opened with was revoked, or its organization deleted.
impl Handler<CloseRevoked> for TerminalSession {
    type Result = ();

    fn handle(&mut self, msg: CloseRevoked, ctx: &mut Self::Context) {
        self.to_host = None;
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Other(msg.why.code()),
            description: Some(msg.why.reason().into()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Frame> for TerminalSession {
    fn handle(&mut self, frame: Frame, ctx: &mut Self::Context) {
        match frame.kind {
            protocol::OUTPUT => {
                if let Some(offset) = frame.u64_prefix() {
                    self.output(ctx, offset, &frame.payload[8..]);
                }
            }
            // Where the host starts: before any output, so only a clamped offset moves it.
            protocol::ATTACHED => {
                if let Some(offset) = frame.u64_prefix().filter(|o| *o < self.next) {
                    self.move_to(ctx, offset);
                }
            }
            protocol::EXITED => {
                self.exited = true;
                let exit: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap_or(json!({}));
                self.control(ctx, exited_control(&exit));
            }
            // Only a closing client asks for status: the host has taken its input.
            protocol::STATUS_REPLY => self.finish_close(ctx),
            _ => {}
        }
    }

    /// The host closed the connection: the agent ended, or we fell behind.
    fn finished(&mut self, ctx: &mut Self::Context) {
        let reason = if self.exited {
            ws::CloseReason { code: ws::CloseCode::Normal, description: Some("the agent exited".into()) }
        } else {
            ws::CloseReason {
                code: ws::CloseCode::Again,
                description: Some(format!("terminal stream interrupted; reconnect with offset={}", self.next)),
            }
        };
        ctx.close(Some(reason));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for TerminalSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.heartbeat = Instant::now();
        match msg {
            // Nothing counts after the client's close.
            Ok(_) if self.closing.is_some() => {}
            Ok(ws::Message::Binary(bytes)) => self.client_message(false, &bytes, ctx),
            Ok(ws::Message::Text(text)) => self.client_message(true, text.as_bytes(), ctx),
            Ok(ws::Message::Continuation(item)) => self.continuation(item, ctx),
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Close(reason)) => self.client_closed(reason, ctx),
            Ok(_) => {}
            Err(ws::ProtocolError::Overflow) => too_big(ctx),
            Err(_) => ctx.stop(),
        }
    }
}

/// A client message over `MAX_MESSAGE`: closed with 1009 and a reason, not dropped silently.
fn too_big(ctx: &mut ws::WebsocketContext<TerminalSession>) {
    ctx.close(Some(ws::CloseReason {
        code: ws::CloseCode::Size,
        description: Some(format!("a message is at most {MAX_MESSAGE} bytes: send input in smaller pieces")),
    }));
    ctx.stop();
}

/// The `exited` control for a recorded `ExitInfo` (JSON); `reason` only when the
/// run ended without an exit status (a remote process that is gone).
fn exited_control(exit: &serde_json::Value) -> serde_json::Value {
    let mut control = json!({"type": "exited", "code": exit["code"], "signal": exit["signal"], "phase": exit["phase"]});
    if let Some(reason) = exit["reason"].as_str() {
        control["reason"] = json!(reason);
    }
    control
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exited_control_carries_a_reason_only_when_there_is_one() {
        let local = exited_control(&json!({"code": 7, "signal": null, "phase": "agent", "at": 1}));
        assert_eq!(local, json!({"type": "exited", "code": 7, "signal": null, "phase": "agent"}));
        let gone = exited_control(&json!({"code": null, "signal": null, "phase": "agent", "at": 1, "reason": "the agent's process proc_2 is gone"}));
        assert_eq!(gone["reason"], "the agent's process proc_2 is gone");
        assert_eq!(gone["code"], serde_json::Value::Null);
    }
}
