//! Writes to `events`. Only the HistoryActor calls these.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::sqlite::SqliteConnection;

use super::{Event, NewEvent};
use crate::db::models::NewEventRow;
use crate::db::schema::events;
use crate::util::now_ms;

/// Inserts a batch with one multi-row INSERT and returns the events with their ids.
/// One statement under the single writer gets consecutive AUTOINCREMENT ids.
pub(super) fn append(conn: &mut SqliteConnection, org: &str, batch: &[NewEvent]) -> QueryResult<Vec<Event>> {
    let at = now_ms();
    let mut out = Vec::with_capacity(batch.len());
    // SQLite caps bound variables per statement; 8 columns x 1000 rows stays under it.
    for chunk in batch.chunks(1000) {
        let rows: Vec<NewEventRow> = chunk
            .iter()
            .map(|e| NewEventRow {
                organization: org,
                repo: e.repo.as_deref(),
                task: e.task.as_deref(),
                kind: e.kind,
                at,
                data: e.data.to_string(),
                session: e.session.as_deref(),
            })
            .collect();
        diesel::insert_into(events::table).values(&rows).execute(conn)?;
        let last: i64 = diesel::select(diesel::dsl::sql::<BigInt>("last_insert_rowid()")).get_result(conn)?;
        let first = last - chunk.len() as i64 + 1;
        out.extend(chunk.iter().enumerate().map(|(i, e)| Event {
            id: first + i as i64,
            organization: org.to_string(),
            repo: e.repo.clone(),
            task: e.task.clone(),
            kind: e.kind.to_string(),
            at,
            data: e.data.clone(),
            session: e.session.clone(),
        }));
    }
    Ok(out)
}
