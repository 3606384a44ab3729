//! `WS /v1/organizations/{org}/stream?since=N[&task=T][&session=S]`: the live
//! event stream, optionally of one task or one ACP session only.
//!
//! The session subscribes to the HistoryActor *first*, then replays the history
//! after `since` from the database, then forwards live events, dropping any id it
//! has already sent: no gap, no duplicate. Text frames carry one event each, as
//! JSON.
//!
//! Backpressure: the session only runs while the connection accepts bytes, so a
//! client that stops reading stops draining its bounded buffer in the
//! HistoryActor. When that buffer overflows the HistoryActor drops the subscriber
//! and the client is closed with code 1013 and a reason naming the `since` to
//! resume from. A client that answers no ping for `client_timeout_secs` is
//! dropped; either way `stopping` unregisters the subscriber.
//!
//! Revocation: a stream opened with an organization token is registered in
//! `actors::connections`; revoking the token (or deleting its organization)
//! stops every send at once and closes with 4001 (or 4004).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use super::auth::{self, Caller};
use super::dto;
use super::openapi::{ApiError, OrgPath};
use super::extract::Query;
use super::organization_or_404;
use crate::actors::connections::{CloseRevoked, Ticket};
use crate::actors::history::{Event, Published, Subscribe, Subscription, Unsubscribe};
use crate::actors::Kiln;
use crate::db::queries::{self, EventFilter};
use crate::error::{AppError, AppResult};

/// Events read from the database per replay step.
const REPLAY_PAGE: i64 = 1000;
/// The largest frame a client may send: the stream reads only pings and closes.
const MAX_MESSAGE: usize = 64 * 1024;

/// The live event stream over a WebSocket.
///
/// Each text frame is one event as JSON (the `Event` schema): first the history
/// after `since` (when given), then live events, with no gap and no duplicate.
/// Close codes: 1013 for a client that fell behind (the reason names the `since`
/// to resume from), 1009 for a client frame over 64 KiB, 4001 when the token is
/// revoked, 4004 when the organization is deleted.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/stream", tag = "events", operation_id = "stream", params(OrgPath, dto::StreamQuery, super::openapi::WebSocketUpgrade),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: one `Event` per text frame"),
        (status = 400, description = "Bad request:\n- `websocket_required`: not a WebSocket upgrade\n- `invalid_since`", body = ApiError),
        (status = 404, description = "Not found:\n- `organization_not_found`", body = ApiError),
    ),
)]
pub async fn connect(
    req: HttpRequest,
    payload: web::Payload,
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<String>,
    query: Query<dto::StreamQuery>,
) -> AppResult<HttpResponse> {
    let org = path.into_inner();
    caller.require_org(&org)?;
    organization_or_404(&kiln, &org).await?;
    let since = query.since;
    if since.is_some_and(|s| s < 0) {
        return Err(AppError::bad_request("invalid_since", "since must be an event id, 0 or more"));
    }
    super::events::since_not_ahead(&kiln, since.unwrap_or(0)).await?;
    let floor = super::events::history_floor(&kiln, &caller, &org).await?;
    ws::handshake(&req).map_err(|e| AppError::bad_request("websocket_required", format!("this route speaks WebSocket only: {e}")))?;
    let history = kiln.history(&org);
    let subscription = history.send(Subscribe {}).await?;
    let sub_id = subscription.id;
    let query = query.into_inner();
    let ticket = kiln.connections.ticket();
    let session = StreamSession {
        kiln: kiln.get_ref().clone(),
        org: org.clone(),
        task: query.task,
        session: query.session,
        subscription: Some(subscription),
        sub_id,
        last_sent: since.map_or(0, |s| s.max(floor)),
        replay: since.is_some(),
        heartbeat: Instant::now(),
        ticket: ticket.clone(),
    };
    let (addr, response) = ws::WsResponseBuilder::new(session, &req, payload).frame_size(MAX_MESSAGE).start_with_addr().map_err(|e| {
        history.addr.do_send(Unsubscribe { id: sub_id });
        AppError::bad_request("websocket_required", e.to_string())
    })?;
    auth::register_connection(&kiln, &req, &org, &ticket, addr.recipient()).await?;
    Ok(response)
}

struct StreamSession {
    kiln: Kiln,
    org: String,
    /// Only events of this task / this session, when set.
    task: Option<String>,
    session: Option<String>,
    subscription: Option<Subscription>,
    sub_id: u64,
    /// The highest event id sent; nothing at or below it is sent again.
    last_sent: i64,
    replay: bool,
    heartbeat: Instant,
    /// Cut when the token this stream was opened with is revoked: send nothing more.
    ticket: Ticket,
}

impl StreamSession {
    fn replay_page(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let db = self.kiln.db.clone();
        let org = self.org.clone();
        let filter = EventFilter {
            since: self.last_sent,
            limit: REPLAY_PAGE,
            task: self.task.clone(),
            session: self.session.clone(),
            ..Default::default()
        };
        let load = async move { db.read(move |c| queries::events_list(c, &org, &filter)).await };
        ctx.wait(load.into_actor(self).map(|rows, act, ctx| match rows {
            // Revoked meanwhile: stop here; `CloseRevoked` is waiting to close.
            _ if act.ticket.is_cut() => {}
            Ok(rows) => {
                let full = rows.len() as i64 == REPLAY_PAGE;
                for row in rows {
                    if act.ticket.is_cut() {
                        return;
                    }
                    let event = Event::from(row);
                    act.last_sent = event.id;
                    ctx.text(serde_json::to_string(&event).unwrap_or_default());
                }
                if full {
                    act.replay_page(ctx);
                } else {
                    act.go_live(ctx);
                }
            }
            Err(err) => {
                log::error!("replaying events for {} failed: {err}", act.org);
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Again,
                    description: Some(format!("history unavailable; retry with since={}", act.last_sent)),
                }));
                ctx.stop();
            }
        }));
    }

    fn go_live(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(sub) = self.subscription.as_mut() {
            let mut rx = std::mem::replace(&mut sub.events, tokio::sync::mpsc::channel(1).1);
            ctx.add_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        }
    }
}

impl Actor for StreamSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.kiln.metrics.stream_subscribers.fetch_add(1, Ordering::Relaxed);
        let every = Duration::from_secs(self.kiln.config.events.heartbeat_secs);
        let timeout = Duration::from_secs(self.kiln.config.events.client_timeout_secs);
        ctx.run_interval(every, move |act, ctx| {
            if act.heartbeat.elapsed() > timeout {
                log::info!("stream client of {} missed its heartbeats; dropping it", act.org);
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
        if self.replay {
            self.replay_page(ctx);
        } else {
            self.go_live(ctx);
        }
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.kiln.connections.unregister(&self.ticket);
        self.kiln.history(&self.org).addr.do_send(Unsubscribe { id: self.sub_id });
        self.kiln.metrics.stream_subscribers.fetch_sub(1, Ordering::Relaxed);
        Running::Stop
    }
}

impl StreamHandler<Arc<Published>> for StreamSession {
    fn handle(&mut self, event: Arc<Published>, ctx: &mut Self::Context) {
        if event.id > self.last_sent && !self.ticket.is_cut() {
            self.last_sent = event.id;
            let wanted = self.task.as_ref().is_none_or(|t| event.task.as_ref() == Some(t))
                && self.session.as_ref().is_none_or(|s| event.session.as_ref() == Some(s));
            if wanted {
                ctx.text(event.json.clone());
            }
        }
    }

    /// The HistoryActor dropped us: we fell behind, or the server is stopping.
    fn finished(&mut self, ctx: &mut Self::Context) {
        let lagged = self.subscription.as_ref().is_some_and(|s| s.lagged.load(Ordering::SeqCst));
        let (code, why) = if lagged {
            (ws::CloseCode::Again, "too slow: events overflowed your buffer")
        } else {
            (ws::CloseCode::Restart, "server is restarting")
        };
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(format!("{why}; reconnect with since={}", self.last_sent)),
        }));
        ctx.stop();
    }
}

/// The token this stream was opened with was revoked, or its organization deleted.
impl Handler<CloseRevoked> for StreamSession {
    type Result = ();

    fn handle(&mut self, msg: CloseRevoked, ctx: &mut Self::Context) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Other(msg.why.code()),
            description: Some(msg.why.reason().into()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for StreamSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.heartbeat = Instant::now();
        match msg {
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            // Closed with a reason, as the terminal does, not dropped in silence.
            Err(ws::ProtocolError::Overflow) => {
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Size,
                    description: Some(format!(
                        "a message is at most {MAX_MESSAGE} bytes: the stream reads only pings and closes; reconnect with since={}",
                        self.last_sent
                    )),
                }));
                ctx.stop();
            }
            Err(err) => {
                log::debug!("stream client protocol error: {err}");
                ctx.stop();
            }
        }
    }
}
