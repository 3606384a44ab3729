//! Writes to `sandbox_instances`. Only the SandboxActor calls these.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use crate::db::schema::sandbox_instances;

/// Records a sandbox being created (or re-created: the row is replaced).
pub(super) fn insert(conn: &mut SqliteConnection, id: &str, org: &str, task: &str, provider: &str, now: i64) -> QueryResult<()> {
    diesel::replace_into(sandbox_instances::table)
        .values((
            sandbox_instances::id.eq(id),
            sandbox_instances::organization.eq(org),
            sandbox_instances::task_id.eq(task),
            sandbox_instances::provider.eq(provider),
            sandbox_instances::state.eq("creating"),
            sandbox_instances::created_at.eq(now),
            sandbox_instances::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// Moves the sandbox to `state`, setting its path when one is given.
pub(super) fn set_state(conn: &mut SqliteConnection, id: &str, state: &str, path: Option<&str>, now: i64) -> QueryResult<()> {
    match path {
        Some(p) => diesel::update(sandbox_instances::table.find(id))
            .set((sandbox_instances::state.eq(state), sandbox_instances::path.eq(p), sandbox_instances::updated_at.eq(now)))
            .execute(conn),
        None => diesel::update(sandbox_instances::table.find(id))
            .set((sandbox_instances::state.eq(state), sandbox_instances::updated_at.eq(now)))
            .execute(conn),
    }
    .map(|_| ())
}

/// Records a remote sandbox's power state (`started`, `stopping`, `stopped`,
/// `starting`). `stopped` with `stopped_by` also records when and by whom;
/// `started` clears both; anything else changes the state only.
pub(super) fn set_run_state(
    conn: &mut SqliteConnection,
    id: &str,
    run_state: &str,
    stopped_by: Option<&str>,
    now: i64,
) -> QueryResult<()> {
    match (run_state, stopped_by) {
        ("stopped", Some(by)) => diesel::update(sandbox_instances::table.find(id))
            .set((
                sandbox_instances::run_state.eq(run_state),
                sandbox_instances::auto_stopped_at.eq(now),
                sandbox_instances::stopped_by.eq(by),
                sandbox_instances::updated_at.eq(now),
            ))
            .execute(conn),
        ("started", _) => diesel::update(sandbox_instances::table.find(id))
            .set((
                sandbox_instances::run_state.eq(run_state),
                sandbox_instances::auto_stopped_at.eq(None::<i64>),
                sandbox_instances::stopped_by.eq(None::<String>),
                sandbox_instances::updated_at.eq(now),
            ))
            .execute(conn),
        _ => diesel::update(sandbox_instances::table.find(id))
            .set((sandbox_instances::run_state.eq(run_state), sandbox_instances::updated_at.eq(now)))
            .execute(conn),
    }
    .map(|_| ())
}
