//! NotifierActor (`notifications`, one per server): the only writer of
//! `notification_webhooks`, `notification_deliveries`, `notification_attempts`,
//! `inbox_entries` and `notification_cursors` (docs/notifications.md).
//!
//! Messages: `EventsCommitted` (from the HistoryActors, after a batch holding a
//! watched kind commits), `CreateWebhook`, `DeleteWebhook`, `TestWebhook`,
//! `UpdateWebhook`, `MarkRead`. It reads each organization's new events from its cursor, turns
//! those that need a person into inbox entries and deliveries (`state::classify`)
//! and moves the cursor in the same transaction, then announces the entries as
//! `inbox.added` events. Deliveries are rows: a restart loses none.
//!
//! Delivery is one queue for the server: at most `notifications.concurrency`
//! attempts in flight, one per webhook, each with its deadline, run as futures
//! on this actor's context, so a slow or dead receiver holds one slot and
//! nothing else waits for it. Failed attempts are retried with doubling waits
//! up to `max_attempts` (`state::Retry`); a timer wakes the queue when the next
//! one is due.
//! Lifecycle: started at boot (it catches up every organization and resumes
//! pending deliveries), lives as long as the process.

mod send;
pub mod state;
mod store;
pub mod view;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::json;

use super::history::NewEvent;
use super::registry::ActorMeta;
use super::Kiln;
use crate::error::{AppError, AppResult};
use crate::util::{now_ms, random_hex};
pub use send::{policy, url_shape};
pub use state::{watched, KINDS};
pub use store::ReadWhich;
use view::{AttemptRow, Delivery, DeliveryRow, InboxEntry, WebhookRow};

/// Webhooks one organization may have.
pub const MAX_WEBHOOKS: i64 = 20;

/// Events of `org` with a watched kind were committed: read them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EventsCommitted {
    pub org: String,
}

/// Creates a webhook (its URL already checked by the caller); answers the row,
/// secret included, this once.
#[derive(Message)]
#[rtype(result = "AppResult<WebhookRow>")]
pub struct CreateWebhook {
    pub org: String,
    pub name: String,
    pub url: String,
    pub format: String,
    pub kinds: Vec<String>,
    /// The token creating it (`None`: the admin).
    pub created_by: Option<String>,
}

/// Deletes a webhook with its delivery log.
#[derive(Message)]
#[rtype(result = "AppResult<()>")]
pub struct DeleteWebhook {
    pub org: String,
    pub id: String,
}

/// Changes a webhook (its URL, if new, already checked by the caller): `None`
/// fields are kept; `rotate_secret` makes a new secret. Answers the row, secret
/// included (the caller shows it only when it was rotated).
#[derive(Message)]
#[rtype(result = "AppResult<WebhookRow>")]
pub struct UpdateWebhook {
    pub org: String,
    pub id: String,
    pub name: Option<String>,
    pub url: Option<String>,
    pub format: Option<String>,
    pub kinds: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub rotate_secret: bool,
}

/// Queues a test delivery to a webhook; answers it (pending).
#[derive(Message)]
#[rtype(result = "AppResult<Delivery>")]
pub struct TestWebhook {
    pub org: String,
    pub id: String,
}

/// Marks inbox entries of `org` read; answers the ids marked and the unread count left.
#[derive(Message)]
#[rtype(result = "AppResult<(Vec<i64>, i64)>")]
pub struct MarkRead {
    pub org: String,
    pub which: ReadWhich,
    /// The token marking them (`None`: the admin).
    pub by: Option<String>,
}

/// Looks for due deliveries now (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct Pump {}

impl Handler<Pump> for NotifierActor {
    type Result = ();

    fn handle(&mut self, _: Pump, ctx: &mut Self::Context) {
        self.pump(ctx);
    }
}

/// An attempt ended (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct Attempted {
    due: view::Due,
    at: i64,
    took: Duration,
    outcome: state::Outcome,
}

pub struct NotifierActor {
    kiln: Kiln,
    meta: Arc<ActorMeta>,
    http: Option<awc::Client>,
    /// Organizations with events not read yet.
    dirty: BTreeSet<String>,
    scanning: bool,
    pumping: bool,
    pump_again: bool,
    /// Webhooks with an attempt in flight.
    busy: HashSet<String>,
    timer: Option<SpawnHandle>,
}

impl NotifierActor {
    pub fn new(kiln: Kiln, meta: Arc<ActorMeta>) -> Self {
        NotifierActor {
            kiln,
            meta,
            http: None,
            dirty: BTreeSet::new(),
            scanning: false,
            pumping: false,
            pump_again: false,
            busy: HashSet::new(),
            timer: None,
        }
    }

    fn retry(&self) -> state::Retry {
        let c = &self.kiln.config.notifications;
        state::Retry { max_attempts: c.max_attempts.max(1), base_ms: c.retry_base_ms, max_ms: c.retry_max_ms }
    }

    /// Reads the dirty organizations' new events, one scan at a time.
    fn scan(&mut self, ctx: &mut Context<Self>) {
        if self.scanning || self.dirty.is_empty() {
            return;
        }
        self.scanning = true;
        let orgs: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        let kiln = self.kiln.clone();
        let keep = kiln.config.notifications.inbox_keep;
        let work = async move {
            let (mut queued, mut failed) = (false, Vec::new());
            for org in orgs {
                loop {
                    let o = org.clone();
                    match kiln.db.write(move |c| store::scan(c, &o, 500, keep)).await {
                        Ok(scanned) => {
                            queued |= scanned.deliveries > 0;
                            announce(&kiln, &org, scanned.entries).await;
                            if !scanned.more {
                                break;
                            }
                        }
                        Err(e) => {
                            log::error!("reading {org}'s events for notifications failed: {e}");
                            failed.push(org);
                            break;
                        }
                    }
                }
            }
            (queued, failed)
        };
        ctx.spawn(work.into_actor(self).map(|(queued, failed), act, ctx| {
            act.scanning = false;
            if !failed.is_empty() {
                // Try those again shortly (a busy database).
                ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                    act.dirty.extend(failed);
                    act.scan(ctx);
                });
            }
            if queued {
                act.pump(ctx);
            }
            act.scan(ctx);
        }));
    }

    /// Starts the due deliveries there is room for, and sets the timer for the next.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.pumping {
            self.pump_again = true;
            return;
        }
        self.pumping = true;
        let db = self.kiln.db.clone();
        let read = async move {
            let now = now_ms();
            db.read(move |c| Ok((view::due(c, now, 200)?, view::next_due_after(c, now)?))).await
        };
        ctx.spawn(read.into_actor(self).map(|result, act, ctx| {
            act.pumping = false;
            match result {
                Ok((due, next)) => {
                    let cap = act.kiln.config.notifications.concurrency.max(1);
                    for d in due {
                        if act.busy.len() >= cap {
                            break;
                        }
                        if act.busy.insert(d.webhook_id.clone()) {
                            act.start(d, ctx);
                        }
                    }
                    if let Some(at) = next {
                        act.wake_at(at, ctx);
                    }
                }
                Err(e) => {
                    log::error!("reading due notification deliveries failed: {e}");
                    act.wake_at(now_ms() + 1000, ctx);
                }
            }
            if std::mem::take(&mut act.pump_again) {
                act.pump(ctx);
            }
        }));
    }

    fn wake_at(&mut self, at: i64, ctx: &mut Context<Self>) {
        if let Some(old) = self.timer.take() {
            ctx.cancel_future(old);
        }
        let wait = Duration::from_millis((at - now_ms()).max(0) as u64);
        self.timer = Some(ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            act.pump(ctx);
        }));
    }

    /// Runs one attempt as a future of this actor: nothing waits for it.
    fn start(&mut self, due: view::Due, ctx: &mut Context<Self>) {
        let Some(client) = self.http.clone() else { return };
        let cfg = self.kiln.config.notifications.clone();
        let me = ctx.address();
        ctx.spawn(
            async move {
                let (at, started) = (now_ms(), Instant::now());
                let outcome = send::attempt(&client, &cfg, &due).await;
                me.do_send(Attempted { due, at, took: started.elapsed(), outcome });
            }
            .into_actor(self),
        );
    }
}

/// Appends `inbox.added` for new entries (the page adds them live).
async fn announce(kiln: &Kiln, org: &str, entries: Vec<view::InboxRow>) {
    if entries.is_empty() {
        return;
    }
    let events = entries
        .into_iter()
        .map(|row| {
            let (repo, task) = (row.repo.clone(), row.task.clone());
            let mut ev = NewEvent::new("inbox.added", json!({"entry": InboxEntry::from(row)}));
            ev.repo = repo;
            ev.task = task;
            ev
        })
        .collect();
    if let Err(e) = kiln.emit(org, events).await {
        log::warn!("announcing inbox entries of {org} failed: {e}");
    }
}

impl Actor for NotifierActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        let timeout = Duration::from_millis(self.kiln.config.notifications.timeout_ms.max(1));
        let connector = awc::Connector::new().timeout(timeout);
        self.http = Some(awc::Client::builder().connector(connector).disable_redirects().timeout(timeout).finish());
        // Catch up every organization, and resume what was pending before a restart.
        let db = self.kiln.db.clone();
        ctx.spawn(
            async move { db.read(crate::db::queries::organizations_list).await }.into_actor(self).map(|orgs, act, ctx| {
                match orgs {
                    Ok(orgs) => act.dirty.extend(orgs.into_iter().map(|o| o.name)),
                    Err(e) => log::error!("listing organizations for notifications failed: {e}"),
                }
                act.scan(ctx);
                act.pump(ctx);
            }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.kiln.registry.remove(&self.meta);
    }
}

impl Handler<EventsCommitted> for NotifierActor {
    type Result = ();

    fn handle(&mut self, msg: EventsCommitted, ctx: &mut Self::Context) {
        self.meta.touch();
        self.dirty.insert(msg.org);
        self.scan(ctx);
    }
}

impl Handler<Attempted> for NotifierActor {
    type Result = ();

    fn handle(&mut self, msg: Attempted, ctx: &mut Self::Context) {
        self.meta.touch();
        let n = msg.due.attempts + 1;
        let now = now_ms();
        let next = self.retry().next(n as u32, &msg.outcome, now);
        let row = AttemptRow {
            delivery_id: msg.due.id.clone(),
            attempt: n,
            at: msg.at,
            status_code: match msg.outcome {
                state::Outcome::Status(s) => Some(s as i32),
                _ => None,
            },
            error: match &next {
                state::Next::Delivered => None,
                state::Next::Retry { error, .. } | state::Next::Failed { error } => Some(error.clone()),
            },
            duration_ms: msg.took.as_millis() as i64,
        };
        let (db, keep) = (self.kiln.db.clone(), self.kiln.config.notifications.log_keep);
        let webhook = msg.due.webhook_id;
        // The webhook stays busy until its attempt is written: one at a time, in order.
        ctx.spawn(async move { db.write(move |c| store::record_attempt(c, &row, &next, now, keep)).await }.into_actor(self).map(
            move |result, act, ctx| {
                if let Err(e) = result {
                    log::error!("recording a notification attempt failed: {e}");
                }
                act.busy.remove(&webhook);
                act.pump(ctx);
            },
        ));
    }
}

impl Handler<CreateWebhook> for NotifierActor {
    type Result = AtomicResponse<Self, AppResult<WebhookRow>>;

    fn handle(&mut self, msg: CreateWebhook, _: &mut Self::Context) -> Self::Result {
        let kiln = self.kiln.clone();
        atomic!(self, async move {
            let org = msg.org.clone();
            let (count, after) = kiln
                .db
                .read(move |c| Ok((view::webhooks(c, &org)?.len() as i64, crate::db::queries::newest_event_id(c)?)))
                .await?;
            if count >= MAX_WEBHOOKS {
                return Err(AppError::conflict(
                    "too_many_webhooks",
                    format!("organization `{}` has {count} webhooks, the most it may have: delete one first", msg.org),
                ));
            }
            let row = WebhookRow {
                id: format!("wh_{}", random_hex(12)),
                organization: msg.org.clone(),
                name: msg.name,
                url: msg.url,
                format: msg.format,
                kinds: serde_json::to_string(&msg.kinds).unwrap_or_else(|_| "[]".into()),
                secret: format!("whsec_{}", random_hex(40)),
                after_event: after,
                created_at: now_ms(),
                created_by: msg.created_by,
                enabled: true,
            };
            let inserted = row.clone();
            kiln.db.write(move |c| store::insert_webhook(c, &inserted)).await?;
            kiln.emit_one(
                &msg.org,
                NewEvent::new("notification.webhook_created", json!({"id": row.id, "name": row.name, "format": row.format, "kinds": msg.kinds})),
            )
            .await?;
            Ok(row)
        })
    }
}

impl Handler<DeleteWebhook> for NotifierActor {
    type Result = AtomicResponse<Self, AppResult<()>>;

    fn handle(&mut self, msg: DeleteWebhook, _: &mut Self::Context) -> Self::Result {
        let kiln = self.kiln.clone();
        atomic!(self, async move {
            let (org, id) = (msg.org.clone(), msg.id.clone());
            if !kiln.db.write(move |c| store::delete_webhook(c, &org, &id)).await? {
                return Err(webhook_not_found(&msg.id));
            }
            kiln.emit_one(&msg.org, NewEvent::new("notification.webhook_deleted", json!({"id": msg.id}))).await?;
            Ok(())
        })
    }
}

impl Handler<UpdateWebhook> for NotifierActor {
    type Result = AtomicResponse<Self, AppResult<WebhookRow>>;

    fn handle(&mut self, msg: UpdateWebhook, ctx: &mut Self::Context) -> Self::Result {
        let kiln = self.kiln.clone();
        let me = ctx.address();
        atomic!(self, async move {
            let change = store::WebhookChange {
                name: msg.name,
                url: msg.url,
                format: msg.format,
                kinds: msg.kinds.as_ref().map(|k| serde_json::to_string(k).unwrap_or_else(|_| "[]".into())),
                enabled: msg.enabled,
                secret: msg.rotate_secret.then(|| format!("whsec_{}", random_hex(40))),
            };
            let mut changed: Vec<&str> = Vec::new();
            for (field, set) in [
                ("name", change.name.is_some()),
                ("url", change.url.is_some()),
                ("format", change.format.is_some()),
                ("kinds", change.kinds.is_some()),
                ("enabled", change.enabled.is_some()),
                ("secret", change.secret.is_some()),
            ] {
                if set {
                    changed.push(field);
                }
            }
            let (org, id) = (msg.org.clone(), msg.id.clone());
            let row = kiln
                .db
                .write(move |c| store::update_webhook(c, &org, &id, &change))
                .await?
                .ok_or_else(|| webhook_not_found(&msg.id))?;
            let data = json!({"id": row.id, "name": row.name, "format": row.format, "enabled": row.enabled, "changed": changed});
            kiln.emit_one(&msg.org, NewEvent::new("notification.webhook_updated", data)).await?;
            // Switched on again: its waiting deliveries are due.
            if row.enabled {
                me.do_send(Pump {});
            }
            Ok(row)
        })
    }
}

impl Handler<TestWebhook> for NotifierActor {
    type Result = AtomicResponse<Self, AppResult<Delivery>>;

    fn handle(&mut self, msg: TestWebhook, ctx: &mut Self::Context) -> Self::Result {
        let kiln = self.kiln.clone();
        let me = ctx.address();
        atomic!(self, async move {
            let (org, id) = (msg.org.clone(), msg.id.clone());
            let hook = kiln.db.read(move |c| view::webhook(c, &org, &id)).await?.ok_or_else(|| webhook_not_found(&msg.id))?;
            if !hook.enabled {
                return Err(AppError::conflict(
                    "webhook_disabled",
                    format!("webhook `{}` is switched off: switch it on (PATCH with `enabled: true`) to test it", hook.id),
                ));
            }
            let delivery = format!("dlv_{}", random_hex(16));
            let notice = state::Notice {
                delivery: &delivery,
                kind: "test",
                organization: &msg.org,
                repo: None,
                task: None,
                title: None,
                event: None,
            };
            let now = now_ms();
            let row = DeliveryRow {
                body: state::body(&hook.format, &notice),
                id: delivery.clone(),
                organization: msg.org.clone(),
                webhook_id: hook.id.clone(),
                event_id: None,
                kind: "test".into(),
                status: "pending".into(),
                attempts: 0,
                next_attempt_at: now,
                last_error: None,
                created_at: now,
                finished_at: None,
            };
            let inserted = row.clone();
            kiln.db.write(move |c| store::insert_delivery(c, &inserted)).await?;
            me.do_send(Pump {});
            Ok(Delivery::new(row, Vec::new()))
        })
    }
}

impl Handler<MarkRead> for NotifierActor {
    type Result = AtomicResponse<Self, AppResult<(Vec<i64>, i64)>>;

    fn handle(&mut self, msg: MarkRead, _: &mut Self::Context) -> Self::Result {
        let kiln = self.kiln.clone();
        atomic!(self, async move {
            let (org, which, by) = (msg.org.clone(), msg.which.clone(), msg.by.clone());
            let (marked, unread) = kiln.db.write(move |c| store::mark_read(c, &org, &which, by.as_deref(), now_ms())).await?;
            if !marked.is_empty() {
                // Other pages of the organization update from the stream.
                kiln.emit_one(&msg.org, NewEvent::new("inbox.read", json!({"ids": marked, "unread": unread}))).await?;
            }
            Ok((marked, unread))
        })
    }
}

pub fn webhook_not_found(id: &str) -> AppError {
    AppError::not_found("webhook_not_found", format!("no webhook `{}` in this organization", crate::validate::truncate(id, 40)))
}
