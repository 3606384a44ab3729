//! Writes to `tasks`, `task_runtime` and `task_sessions`. Only the TaskActor
//! calls these.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use crate::db::models::Task;
use crate::db::schema::tasks;

pub(super) fn insert_task(conn: &mut SqliteConnection, row: &Task) -> QueryResult<()> {
    diesel::insert_into(tasks::table).values(row).execute(conn).map(|_| ())
}

/// Moves the task from `from` to `to`; answers `None` if it was no longer in `from`.
pub(super) fn set_status(
    conn: &mut SqliteConnection,
    id: &str,
    from: &str,
    to: &str,
    reason: Option<&str>,
    now: i64,
) -> QueryResult<Option<Task>> {
    diesel::update(tasks::table.filter(tasks::id.eq(id)).filter(tasks::status.eq(from)))
        .set((tasks::status.eq(to), tasks::status_reason.eq(reason), tasks::updated_at.eq(now)))
        .returning(Task::as_returning())
        .get_result(conn)
        .optional()
}
