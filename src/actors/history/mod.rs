//! HistoryActor (`org/{org}/history`): the only writer of `events`.
//!
//! Messages: `Append` (answered once the events are persisted), `Subscribe`,
//! `Unsubscribe`, `CloseSubscribers` and `Flush`. Writes are group commits: when
//! no write is in progress an append is written at once; appends that arrive
//! during a write are gathered and written together (at most `events.batch_max`
//! per transaction) as soon as it ends. One write at a time keeps ids, commits
//! and publication in order. A batch is published to subscribers only after it
//! commits, so a client that resumes with `since` sees no gap and no duplicate.
//! Event data is redacted on the way in (`redact`: no data dir location, no URL
//! password), so what is stored is what any reader may see.
//!
//! Each subscriber has a bounded buffer. One that falls behind is dropped and
//! flagged as lagging, never waited for, so a slow client cannot slow the others.
//! Lifecycle: started on demand, lives as long as the process; flushed at shutdown.

mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::registry::ActorMeta;
use super::Kiln;
use crate::db::models::EventRow;
use crate::error::{AppError, AppResult};

/// An event to append; the organization is the HistoryActor's own.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub repo: Option<String>,
    pub task: Option<String>,
    pub kind: &'static str,
    pub data: serde_json::Value,
    /// The ACP session an event belongs to (its journal entries, its status).
    pub session: Option<String>,
}

impl NewEvent {
    pub fn new(kind: &'static str, data: serde_json::Value) -> Self {
        NewEvent { repo: None, task: None, kind, data, session: None }
    }
    pub fn session(mut self, session: &str) -> Self {
        self.session = Some(session.to_string());
        self
    }
    pub fn repo(mut self, repo: &str) -> Self {
        self.repo = Some(repo.to_string());
        self
    }
    pub fn task(mut self, task: &str) -> Self {
        self.task = Some(task.to_string());
        self
    }
}

/// An event as the API and the stream show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    pub organization: String,
    pub repo: Option<String>,
    pub task: Option<String>,
    pub kind: String,
    pub at: i64,
    pub data: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Event {
            id: row.id,
            organization: row.organization,
            repo: row.repo,
            task: row.task,
            kind: row.kind,
            at: row.at,
            data: serde_json::from_str(&row.data).unwrap_or(serde_json::Value::Null),
            session: row.session,
        }
    }
}

/// One published event, serialized once for every subscriber.
#[derive(Debug)]
pub struct Published {
    pub id: i64,
    pub json: String,
    /// For subscribers that filter (the stream's `task` and `session`).
    pub task: Option<String>,
    pub session: Option<String>,
}

/// Appends events; answers with their ids once they are persisted.
#[derive(Message)]
#[rtype(result = "AppResult<Vec<i64>>")]
pub struct Append {
    pub events: Vec<NewEvent>,
}

/// Writes whatever is pending now; answers once it is persisted.
#[derive(Message)]
#[rtype(result = "AppResult<()>")]
pub struct Flush {}

/// Drops every subscriber: their streams end and their clients are told to
/// reconnect (used at shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSubscribers {}

/// Registers a live subscriber; published events arrive on the receiver.
#[derive(Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe {}

/// Forgets a subscriber (its session ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
}

/// What `Subscribe` answers.
pub struct Subscription {
    pub id: u64,
    pub events: mpsc::Receiver<Arc<Published>>,
    /// Set when the subscriber was dropped for falling behind.
    pub lagged: Arc<AtomicBool>,
}

struct Subscriber {
    tx: mpsc::Sender<Arc<Published>>,
    lagged: Arc<AtomicBool>,
}

type Waiter = (usize, usize, oneshot::Sender<AppResult<Vec<i64>>>);

pub struct HistoryActor {
    kiln: Kiln,
    org: String,
    meta: Arc<ActorMeta>,
    pending: Vec<NewEvent>,
    /// Who waits for which slice of `pending`.
    waiters: Vec<Waiter>,
    /// A batch is being written; new appends wait in `pending` for the next one.
    writing: bool,
    subscribers: HashMap<u64, Subscriber>,
    next_subscriber: u64,
}

impl HistoryActor {
    pub fn new(kiln: Kiln, org: String, meta: Arc<ActorMeta>) -> Self {
        HistoryActor {
            kiln,
            org,
            meta,
            pending: Vec::new(),
            waiters: Vec::new(),
            writing: false,
            subscribers: HashMap::new(),
            next_subscriber: 1,
        }
    }

    fn enqueue(&mut self, mut events: Vec<NewEvent>, ctx: &mut Context<Self>) -> oneshot::Receiver<AppResult<Vec<i64>>> {
        // Organizations read their events: no server path, no URL password.
        for event in &mut events {
            self.kiln.redactor.json(&mut event.data);
        }
        let (tx, rx) = oneshot::channel();
        let start = self.pending.len();
        self.pending.extend(events);
        self.waiters.push((start, self.pending.len(), tx));
        self.flush(ctx);
        rx
    }

    /// Writes up to `batch_max` pending events in one transaction, then publishes
    /// them and answers their waiters, then writes whatever gathered meanwhile.
    /// Only one write runs at a time.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.waiters.is_empty() {
            return;
        }
        self.writing = true;
        // Take whole waiters until the batch is full (a waiter's events stay together).
        let max = self.kiln.config.events.batch_max;
        let take = self.waiters.iter().take_while(|(_, end, _)| *end <= max).count().max(1);
        let cut = self.waiters[take - 1].1;
        let batch: Vec<NewEvent> = self.pending.drain(..cut).collect();
        let waiters: Vec<Waiter> = self.waiters.drain(..take).collect();
        for (start, end, _) in self.waiters.iter_mut() {
            *start -= cut;
            *end -= cut;
        }
        let db = self.kiln.db.clone();
        let org = self.org.clone();
        let write = async move {
            let rows = batch.clone();
            let result = db.write(move |conn| store::append(conn, &org, &rows)).await;
            (batch, result)
        };
        ctx.spawn(write.into_actor(self).map(move |(batch, result), act, ctx| {
            act.writing = false;
            act.finish_write(batch, result, waiters);
            act.flush(ctx);
        }));
    }

    fn finish_write(&mut self, batch: Vec<NewEvent>, result: Result<Vec<Event>, crate::db::DbError>, waiters: Vec<Waiter>) {
        let act = self;
        match result {
            Ok(events) => {
                act.kiln.metrics.events_appended.fetch_add(events.len() as u64, Ordering::Relaxed);
                act.kiln.metrics.event_batches.fetch_add(1, Ordering::Relaxed);
                act.publish(&events);
                if events.iter().any(|e| super::notify::watched(&e.kind)) {
                    act.kiln.notifier().addr.do_send(super::notify::EventsCommitted { org: act.org.clone() });
                }
                for (start, end, tx) in waiters {
                    let _ = tx.send(Ok(events[start..end].iter().map(|e| e.id).collect()));
                }
            }
            Err(err) => {
                log::error!("appending {} events for {} failed: {}", batch.len(), act.org, err);
                let busy = err.is_busy();
                for (_, _, tx) in waiters {
                    let _ = tx.send(Err(if busy {
                        AppError::unavailable("database_busy", "the database is busy; retry shortly")
                    } else {
                        AppError::bug(format!("appending events failed: {err}"))
                    }));
                }
            }
        }
    }

    fn publish(&mut self, events: &[Event]) {
        if self.subscribers.is_empty() {
            return;
        }
        let published: Vec<Arc<Published>> = events
            .iter()
            .map(|e| {
                Arc::new(Published {
                    id: e.id,
                    json: serde_json::to_string(e).unwrap_or_default(),
                    task: e.task.clone(),
                    session: e.session.clone(),
                })
            })
            .collect();
        let metrics = self.kiln.metrics.clone();
        self.subscribers.retain(|_, sub| {
            for p in &published {
                match sub.tx.try_send(p.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.lagged.store(true, Ordering::SeqCst);
                        metrics.stream_overflows.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }
}

impl Actor for HistoryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Appends arrive from every actor of the organization: a deep mailbox lets
        // senders queue a whole batch's worth without waiting.
        ctx.set_mailbox_capacity(4096);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.kiln.registry.remove(&self.meta);
    }
}

impl Handler<Append> for HistoryActor {
    type Result = ResponseFuture<AppResult<Vec<i64>>>;

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) -> Self::Result {
        self.meta.touch();
        if msg.events.is_empty() {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let rx = self.enqueue(msg.events, ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(AppError::bug("history batch was dropped"))) })
    }
}

impl Handler<Flush> for HistoryActor {
    type Result = ResponseFuture<AppResult<()>>;

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) -> Self::Result {
        if self.waiters.is_empty() && !self.writing {
            return Box::pin(async { Ok(()) });
        }
        let (tx, rx) = oneshot::channel();
        let end = self.pending.len();
        self.waiters.push((end, end, tx));
        self.flush(ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(AppError::bug("history batch was dropped"))).map(|_| ()) })
    }
}

impl Handler<Subscribe> for HistoryActor {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, _: Subscribe, _: &mut Self::Context) -> Self::Result {
        self.meta.touch();
        let (tx, rx) = mpsc::channel(self.kiln.config.events.subscriber_buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_subscriber;
        self.next_subscriber += 1;
        self.subscribers.insert(id, Subscriber { tx, lagged: lagged.clone() });
        MessageResult(Subscription { id, events: rx, lagged })
    }
}

impl Handler<CloseSubscribers> for HistoryActor {
    type Result = ();

    fn handle(&mut self, _: CloseSubscribers, _: &mut Self::Context) {
        self.subscribers.clear();
    }
}

impl Handler<Unsubscribe> for HistoryActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.subscribers.remove(&msg.id);
    }
}
