//! Writes to `notification_webhooks`, `notification_deliveries`,
//! `notification_attempts`, `inbox_entries` and `notification_cursors`. Only the
//! NotifierActor calls these; `Db::write` runs each in one transaction.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;

use super::state::{self, Facts, Next, Notice};
use super::view::{AttemptRow, DeliveryRow, InboxRow, WebhookRow};
use crate::db::schema::{
    events, inbox_entries, notification_attempts, notification_cursors, notification_deliveries, notification_webhooks,
    organizations, repos, tasks,
};
use crate::util::random_hex;

pub(super) fn insert_webhook(conn: &mut SqliteConnection, row: &WebhookRow) -> QueryResult<()> {
    diesel::insert_into(notification_webhooks::table).values(row).execute(conn).map(|_| ())
}

/// Deletes a webhook; its deliveries and their attempts go with it.
pub(super) fn delete_webhook(conn: &mut SqliteConnection, org: &str, id: &str) -> QueryResult<bool> {
    diesel::delete(
        notification_webhooks::table.filter(notification_webhooks::organization.eq(org)).filter(notification_webhooks::id.eq(id)),
    )
    .execute(conn)
    .map(|n| n > 0)
}

/// What a `PATCH` changes of a webhook (`None`: kept).
#[derive(Debug, Default, Clone)]
pub(super) struct WebhookChange {
    pub name: Option<String>,
    pub url: Option<String>,
    pub format: Option<String>,
    /// JSON array of kinds.
    pub kinds: Option<String>,
    pub enabled: Option<bool>,
    pub secret: Option<String>,
}

/// Applies `change` to a webhook of `org`; answers the row as it is now (`None`: no such webhook).
pub(super) fn update_webhook(conn: &mut SqliteConnection, org: &str, id: &str, change: &WebhookChange) -> QueryResult<Option<WebhookRow>> {
    let Some(mut row) = notification_webhooks::table
        .filter(notification_webhooks::organization.eq(org))
        .filter(notification_webhooks::id.eq(id))
        .select(WebhookRow::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let c = change.clone();
    row.name = c.name.unwrap_or(row.name);
    row.url = c.url.unwrap_or(row.url);
    row.format = c.format.unwrap_or(row.format);
    row.kinds = c.kinds.unwrap_or(row.kinds);
    row.enabled = c.enabled.unwrap_or(row.enabled);
    row.secret = c.secret.unwrap_or(row.secret);
    diesel::update(notification_webhooks::table.find(id))
        .set((
            notification_webhooks::name.eq(&row.name),
            notification_webhooks::url.eq(&row.url),
            notification_webhooks::format.eq(&row.format),
            notification_webhooks::kinds.eq(&row.kinds),
            notification_webhooks::enabled.eq(row.enabled),
            notification_webhooks::secret.eq(&row.secret),
        ))
        .execute(conn)?;
    Ok(Some(row))
}

pub(super) fn insert_delivery(conn: &mut SqliteConnection, row: &DeliveryRow) -> QueryResult<()> {
    diesel::insert_into(notification_deliveries::table).values(row).execute(conn).map(|_| ())
}

/// What one pass over an organization's new events made.
pub(super) struct Scanned {
    /// The inbox entries made, oldest first.
    pub entries: Vec<InboxRow>,
    pub deliveries: usize,
    /// More events wait: scan again.
    pub more: bool,
}

/// Reads up to `page` watched events of `org` after its cursor, makes their
/// inbox entries and deliveries, and moves the cursor past them, all in the
/// caller's transaction: an event is turned into notifications exactly once,
/// also across restarts. A new cursor starts where the organization began.
pub(super) fn scan(conn: &mut SqliteConnection, org: &str, page: i64, inbox_keep: i64) -> QueryResult<Scanned> {
    let none = Scanned { entries: Vec::new(), deliveries: 0, more: false };
    let exists: i64 = organizations::table.filter(organizations::name.eq(org)).count().get_result(conn)?;
    if exists == 0 {
        return Ok(none);
    }
    let cursor: Option<i64> = notification_cursors::table
        .find(org)
        .select(notification_cursors::last_event)
        .first(conn)
        .optional()?;
    let cursor = match cursor {
        Some(c) => c,
        None => crate::db::queries::organization_began(conn, org)?,
    };
    // Ids are committed in order by the one writer: nothing below `hi` can appear later.
    let hi: i64 = events::table
        .filter(events::organization.eq(org))
        .select(diesel::dsl::max(events::id))
        .first::<Option<i64>>(conn)?
        .unwrap_or(0);
    if hi <= cursor {
        return Ok(none);
    }
    let rows: Vec<(i64, Option<String>, Option<String>, String, i64, String)> = events::table
        .filter(events::organization.eq(org))
        .filter(events::id.gt(cursor))
        .filter(events::id.le(hi))
        .filter(events::kind.eq_any(state::WATCHED))
        .order(events::id.asc())
        .limit(page)
        .select((events::id, events::repo, events::task, events::kind, events::at, events::data))
        .load(conn)?;
    let more = rows.len() as i64 == page;
    let upto = if more { rows.last().map(|r| r.0).unwrap_or(hi) } else { hi };
    // A webhook switched off gets nothing for these events, now or later.
    let hooks: Vec<WebhookRow> = notification_webhooks::table
        .filter(notification_webhooks::organization.eq(org))
        .filter(notification_webhooks::enabled.eq(true))
        .select(WebhookRow::as_select())
        .load(conn)?;
    let mut out = Scanned { entries: Vec::new(), deliveries: 0, more };
    for (id, repo, task, kind, at, data) in rows {
        let value: serde_json::Value = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
        let facts = match (&repo, kind.as_str()) {
            (Some(r), "pr.ci_changed") => {
                let settings: Option<String> = repos::table
                    .filter(repos::organization.eq(org))
                    .filter(repos::name.eq(r))
                    .select(repos::settings)
                    .first(conn)
                    .optional()?;
                Facts { ci_retries: state::ci_retries(&settings.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()) }
            }
            _ => Facts::default(),
        };
        let Some(note) = state::classify(&kind, &value, facts) else { continue };
        if let (true, Some(t)) = (state::once_per_task(note), &task) {
            let seen: i64 = inbox_entries::table
                .filter(inbox_entries::organization.eq(org))
                .filter(inbox_entries::task.eq(t))
                .filter(inbox_entries::kind.eq(note))
                .count()
                .get_result(conn)?;
            if seen > 0 {
                continue;
            }
        }
        let title: Option<String> = match &task {
            Some(t) => tasks::table
                .filter(tasks::organization.eq(org))
                .filter(tasks::id.eq(t))
                .select(tasks::title)
                .first(conn)
                .optional()?,
            None => None,
        };
        let entry = InboxRow {
            id,
            organization: org.to_string(),
            kind: note.to_string(),
            repo: repo.clone(),
            task: task.clone(),
            title: title.clone(),
            data: data.clone(),
            at,
            read_at: None,
            read_by: None,
        };
        if diesel::insert_or_ignore_into(inbox_entries::table).values(&entry).execute(conn)? > 0 {
            out.entries.push(entry);
        }
        let event = serde_json::json!({"id": id, "kind": kind, "at": at, "data": value});
        for hook in &hooks {
            let kinds: Vec<String> = serde_json::from_str(&hook.kinds).unwrap_or_default();
            if id <= hook.after_event || !(kinds.is_empty() || kinds.iter().any(|k| k == note)) {
                continue;
            }
            let delivery = format!("dlv_{}", random_hex(16));
            let notice = Notice {
                delivery: &delivery,
                kind: note,
                organization: org,
                repo: repo.as_deref(),
                task: task.as_deref(),
                title: title.as_deref(),
                event: Some(event.clone()),
            };
            let row = DeliveryRow {
                body: state::body(&hook.format, &notice),
                id: delivery.clone(),
                organization: org.to_string(),
                webhook_id: hook.id.clone(),
                event_id: Some(id),
                kind: note.to_string(),
                status: "pending".into(),
                attempts: 0,
                next_attempt_at: crate::util::now_ms(),
                last_error: None,
                created_at: crate::util::now_ms(),
                finished_at: None,
            };
            out.deliveries += diesel::insert_or_ignore_into(notification_deliveries::table).values(&row).execute(conn)?;
        }
    }
    diesel::insert_into(notification_cursors::table)
        .values((notification_cursors::organization.eq(org), notification_cursors::last_event.eq(upto)))
        .on_conflict(notification_cursors::organization)
        .do_update()
        .set(notification_cursors::last_event.eq(upto))
        .execute(conn)?;
    if !out.entries.is_empty() {
        // The newest `inbox_keep` entries stay.
        diesel::sql_query(
            "DELETE FROM inbox_entries WHERE organization = ?1 AND id < \
             (SELECT id FROM inbox_entries WHERE organization = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )
        .bind::<Text, _>(org)
        .bind::<BigInt, _>(inbox_keep.max(1) - 1)
        .execute(conn)?;
    }
    Ok(out)
}

/// Records attempt `row` of a delivery and what comes next for it; keeps the
/// newest `log_keep` finished deliveries of its webhook.
pub(super) fn record_attempt(conn: &mut SqliteConnection, row: &AttemptRow, next: &Next, now: i64, log_keep: i64) -> QueryResult<()> {
    let exists: i64 = notification_deliveries::table.find(&row.delivery_id).count().get_result(conn)?;
    if exists == 0 {
        // Its webhook (or organization) was deleted meanwhile.
        return Ok(());
    }
    diesel::insert_or_ignore_into(notification_attempts::table).values(row).execute(conn)?;
    match next {
        Next::Delivered => diesel::update(notification_deliveries::table.find(&row.delivery_id))
            .set((
                notification_deliveries::status.eq("delivered"),
                notification_deliveries::attempts.eq(row.attempt),
                notification_deliveries::last_error.eq(None::<String>),
                notification_deliveries::finished_at.eq(Some(now)),
            ))
            .execute(conn)?,
        Next::Retry { at, error } => diesel::update(notification_deliveries::table.find(&row.delivery_id))
            .set((
                notification_deliveries::attempts.eq(row.attempt),
                notification_deliveries::next_attempt_at.eq(at),
                notification_deliveries::last_error.eq(Some(error)),
            ))
            .execute(conn)?,
        Next::Failed { error } => diesel::update(notification_deliveries::table.find(&row.delivery_id))
            .set((
                notification_deliveries::status.eq("failed"),
                notification_deliveries::attempts.eq(row.attempt),
                notification_deliveries::last_error.eq(Some(error)),
                notification_deliveries::finished_at.eq(Some(now)),
            ))
            .execute(conn)?,
    };
    if !matches!(next, Next::Retry { .. }) {
        diesel::sql_query(
            "DELETE FROM notification_deliveries WHERE webhook_id = (SELECT webhook_id FROM notification_deliveries WHERE id = ?1) \
             AND status != 'pending' AND id NOT IN (SELECT id FROM notification_deliveries WHERE webhook_id = \
             (SELECT webhook_id FROM notification_deliveries WHERE id = ?1) AND status != 'pending' ORDER BY finished_at DESC LIMIT ?2)",
        )
        .bind::<Text, _>(&row.delivery_id)
        .bind::<BigInt, _>(log_keep.max(1))
        .execute(conn)?;
    }
    Ok(())
}

/// Which inbox entries to mark read.
#[derive(Debug, Clone)]
pub enum ReadWhich {
    Ids(Vec<i64>),
    All,
}

/// Marks unread entries of `org` read; answers the ids marked and how many stay unread.
pub(super) fn mark_read(conn: &mut SqliteConnection, org: &str, which: &ReadWhich, by: Option<&str>, now: i64) -> QueryResult<(Vec<i64>, i64)> {
    let set = (inbox_entries::read_at.eq(Some(now)), inbox_entries::read_by.eq(by));
    let unread_of_org = inbox_entries::organization.eq(org).and(inbox_entries::read_at.is_null());
    let marked: Vec<i64> = match which {
        ReadWhich::All => diesel::update(inbox_entries::table.filter(unread_of_org))
            .set(set)
            .returning(inbox_entries::id)
            .get_results(conn)?,
        ReadWhich::Ids(ids) => diesel::update(inbox_entries::table.filter(unread_of_org).filter(inbox_entries::id.eq_any(ids)))
            .set(set)
            .returning(inbox_entries::id)
            .get_results(conn)?,
    };
    let unread = super::view::unread_count(conn, org)?;
    Ok((marked, unread))
}
