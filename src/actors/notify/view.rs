//! The notification tables' rows, what the API shows of them, and the reads
//! (any caller may read; only the NotifierActor writes).

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::schema::{inbox_entries, notification_attempts, notification_deliveries, notification_webhooks};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = notification_webhooks)]
pub struct WebhookRow {
    pub id: String,
    pub organization: String,
    pub name: String,
    pub url: String,
    pub format: String,
    pub kinds: String,
    pub secret: String,
    pub after_event: i64,
    pub created_at: i64,
    pub created_by: Option<String>,
    pub enabled: bool,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = notification_deliveries)]
pub struct DeliveryRow {
    pub id: String,
    pub organization: String,
    pub webhook_id: String,
    pub event_id: Option<i64>,
    pub kind: String,
    pub body: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = notification_attempts)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub attempt: i32,
    pub at: i64,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = inbox_entries)]
pub struct InboxRow {
    pub id: i64,
    pub organization: String,
    pub kind: String,
    pub repo: Option<String>,
    pub task: Option<String>,
    pub title: Option<String>,
    pub data: String,
    pub at: i64,
    pub read_at: Option<i64>,
    pub read_by: Option<String>,
}

/// A webhook as the API shows it: never its secret, and its URL without path
/// or query (they often carry the receiver's own credential, as Slack's do).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// `wh_` and 12 hex characters.
    pub id: String,
    pub name: String,
    /// `scheme://host[:port]/…`: the full URL is shown once, at creation.
    pub url: String,
    /// `json` or `slack`.
    pub format: String,
    /// The notification kinds it gets; empty: all of them.
    pub kinds: Vec<String>,
    pub created_at: i64,
    /// The token that created it (`null`: the admin).
    pub created_by: Option<String>,
    /// `false`: switched off (`PATCH`); no delivery is made for it and its
    /// pending ones wait until it is on again.
    pub enabled: bool,
}

impl From<&WebhookRow> for Webhook {
    fn from(row: &WebhookRow) -> Self {
        Webhook {
            id: row.id.clone(),
            name: row.name.clone(),
            url: masked_url(&row.url),
            format: row.format.clone(),
            kinds: serde_json::from_str(&row.kinds).unwrap_or_default(),
            created_at: row.created_at,
            created_by: row.created_by.clone(),
            enabled: row.enabled,
        }
    }
}

/// `https://hooks.example/services/T0/B0/XYZ` → `https://hooks.example/…`.
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "…".into() };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    format!("{scheme}://{authority}/…")
}

/// One try of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// 1 for the first try.
    pub attempt: i32,
    pub at: i64,
    /// The receiver's HTTP status; `null` when it did not answer.
    pub status_code: Option<i32>,
    /// Why it did not count as delivered (`null` when it did).
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// A delivery and its attempts: the delivery log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// `dlv_` and 16 hex characters; sent as `X-Kiln-Delivery`, the same on every attempt.
    pub id: String,
    pub webhook: String,
    /// The event it is about (`null`: a test delivery).
    pub event_id: Option<i64>,
    /// A notification kind, or `test`.
    pub kind: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// When the next attempt is due (`null` unless pending).
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Every attempt, oldest first.
    pub log: Vec<Attempt>,
}

impl Delivery {
    pub fn new(row: DeliveryRow, log: Vec<AttemptRow>) -> Self {
        Delivery {
            id: row.id,
            webhook: row.webhook_id,
            event_id: row.event_id,
            kind: row.kind,
            next_attempt_at: (row.status == "pending").then_some(row.next_attempt_at),
            status: row.status,
            attempts: row.attempts,
            last_error: row.last_error,
            created_at: row.created_at,
            finished_at: row.finished_at,
            log: log
                .into_iter()
                .map(|a| Attempt { attempt: a.attempt, at: a.at, status_code: a.status_code, error: a.error, duration_ms: a.duration_ms })
                .collect(),
        }
    }
}

/// An inbox entry: an event that needs a person.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InboxEntry {
    /// The id of the event it comes from.
    pub id: i64,
    /// The notification kind (`needs_input`, `idle`, `ci_failed`, …).
    pub kind: String,
    /// The kind in words ("Needs input").
    pub label: String,
    pub repo: Option<String>,
    pub task: Option<String>,
    /// The task's title when the entry was made.
    pub title: Option<String>,
    /// The event's `data`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub at: i64,
    /// When it was marked read (`null`: unread). Read marks are the organization's.
    pub read_at: Option<i64>,
    /// Who marked it read: a token id (`null`: the admin, or unread).
    pub read_by: Option<String>,
}

impl From<InboxRow> for InboxEntry {
    fn from(row: InboxRow) -> Self {
        InboxEntry {
            id: row.id,
            label: super::state::label(&row.kind).to_string(),
            kind: row.kind,
            repo: row.repo,
            task: row.task,
            title: row.title,
            data: serde_json::from_str(&row.data).unwrap_or(serde_json::Value::Null),
            at: row.at,
            read_at: row.read_at,
            read_by: row.read_by,
        }
    }
}

pub fn webhooks(conn: &mut SqliteConnection, org: &str) -> QueryResult<Vec<WebhookRow>> {
    notification_webhooks::table
        .filter(notification_webhooks::organization.eq(org))
        .order((notification_webhooks::created_at.asc(), notification_webhooks::id.asc()))
        .select(WebhookRow::as_select())
        .load(conn)
}

pub fn webhook(conn: &mut SqliteConnection, org: &str, id: &str) -> QueryResult<Option<WebhookRow>> {
    notification_webhooks::table
        .filter(notification_webhooks::organization.eq(org))
        .filter(notification_webhooks::id.eq(id))
        .select(WebhookRow::as_select())
        .first(conn)
        .optional()
}

fn attempts_of(conn: &mut SqliteConnection, ids: &[String]) -> QueryResult<Vec<AttemptRow>> {
    notification_attempts::table
        .filter(notification_attempts::delivery_id.eq_any(ids))
        .order((notification_attempts::delivery_id.asc(), notification_attempts::attempt.asc()))
        .select(AttemptRow::as_select())
        .load(conn)
}

/// A webhook's newest deliveries, newest first, with their attempts.
pub fn deliveries(conn: &mut SqliteConnection, org: &str, webhook: &str, limit: i64) -> QueryResult<Vec<Delivery>> {
    let rows: Vec<DeliveryRow> = notification_deliveries::table
        .filter(notification_deliveries::organization.eq(org))
        .filter(notification_deliveries::webhook_id.eq(webhook))
        .order((notification_deliveries::created_at.desc(), notification_deliveries::id.desc()))
        .limit(limit)
        .select(DeliveryRow::as_select())
        .load(conn)?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut attempts = attempts_of(conn, &ids)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let log: Vec<AttemptRow> = attempts.iter().filter(|a| a.delivery_id == row.id).cloned().collect();
            attempts.retain(|a| a.delivery_id != row.id);
            Delivery::new(row, log)
        })
        .collect())
}

pub fn delivery(conn: &mut SqliteConnection, org: &str, webhook: &str, id: &str) -> QueryResult<Option<Delivery>> {
    let row: Option<DeliveryRow> = notification_deliveries::table
        .filter(notification_deliveries::organization.eq(org))
        .filter(notification_deliveries::webhook_id.eq(webhook))
        .filter(notification_deliveries::id.eq(id))
        .select(DeliveryRow::as_select())
        .first(conn)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let log = attempts_of(conn, std::slice::from_ref(&row.id))?;
    Ok(Some(Delivery::new(row, log)))
}

/// A delivery that is due, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: String,
    pub webhook_id: String,
    pub kind: String,
    pub body: String,
    pub attempts: i32,
    pub url: String,
    pub secret: String,
}

/// Pending deliveries due at `now`, the longest waiting first.
pub fn due(conn: &mut SqliteConnection, now: i64, limit: i64) -> QueryResult<Vec<Due>> {
    let rows: Vec<(String, String, String, String, i32, String, String)> = notification_deliveries::table
        .inner_join(notification_webhooks::table.on(notification_webhooks::id.eq(notification_deliveries::webhook_id)))
        .filter(notification_deliveries::status.eq("pending"))
        .filter(notification_webhooks::enabled.eq(true))
        .filter(notification_deliveries::next_attempt_at.le(now))
        .order(notification_deliveries::next_attempt_at.asc())
        .limit(limit)
        .select((
            notification_deliveries::id,
            notification_deliveries::webhook_id,
            notification_deliveries::kind,
            notification_deliveries::body,
            notification_deliveries::attempts,
            notification_webhooks::url,
            notification_webhooks::secret,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, webhook_id, kind, body, attempts, url, secret)| Due { id, webhook_id, kind, body, attempts, url, secret })
        .collect())
}

/// When the next pending delivery after `now` is due.
pub fn next_due_after(conn: &mut SqliteConnection, now: i64) -> QueryResult<Option<i64>> {
    notification_deliveries::table
        .inner_join(notification_webhooks::table.on(notification_webhooks::id.eq(notification_deliveries::webhook_id)))
        .filter(notification_deliveries::status.eq("pending"))
        .filter(notification_webhooks::enabled.eq(true))
        .filter(notification_deliveries::next_attempt_at.gt(now))
        .select(diesel::dsl::min(notification_deliveries::next_attempt_at))
        .first(conn)
}

/// A page of the inbox, newest first: entries with an id below `before` (when
/// given), only unread ones with `unread_only`.
pub fn inbox(conn: &mut SqliteConnection, org: &str, unread_only: bool, before: Option<i64>, limit: i64) -> QueryResult<Vec<InboxEntry>> {
    let mut q = inbox_entries::table.filter(inbox_entries::organization.eq(org)).into_boxed();
    if unread_only {
        q = q.filter(inbox_entries::read_at.is_null());
    }
    if let Some(before) = before {
        q = q.filter(inbox_entries::id.lt(before));
    }
    let rows: Vec<InboxRow> = q.order(inbox_entries::id.desc()).limit(limit).select(InboxRow::as_select()).load(conn)?;
    Ok(rows.into_iter().map(InboxEntry::from).collect())
}

pub fn unread_count(conn: &mut SqliteConnection, org: &str) -> QueryResult<i64> {
    inbox_entries::table
        .filter(inbox_entries::organization.eq(org))
        .filter(inbox_entries::read_at.is_null())
        .count()
        .get_result(conn)
}
