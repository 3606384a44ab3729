//! Writes to `tasks`, `task_runtime`, `task_sessions`, `task_reactions` and
//! `task_issues`. Only the TaskActor calls these.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use crate::db::models::Task;
use crate::db::schema::tasks;

/// Inserts the task, and with it (in the writer's one transaction) the issue it
/// is made from. Answers `false`, inserting nothing, when that issue has a task
/// already (the unique `(repo_id, issue_number)` is the backstop).
pub(super) fn insert_task(conn: &mut SqliteConnection, row: &Task, issue: Option<&crate::db::models::TaskIssue>) -> QueryResult<bool> {
    use crate::db::schema::task_issues;
    if let Some(issue) = issue {
        let taken: i64 = task_issues::table
            .filter(task_issues::repo_id.eq(issue.repo_id))
            .filter(task_issues::issue_number.eq(issue.issue_number))
            .count()
            .get_result(conn)?;
        if taken > 0 {
            return Ok(false);
        }
    }
    diesel::insert_into(tasks::table).values(row).execute(conn)?;
    if let Some(issue) = issue {
        diesel::insert_into(task_issues::table).values(issue).execute(conn)?;
    }
    Ok(true)
}

/// Claims one attempt at the comment that reports the PR on the issue: the
/// row goes to `pending` with one more attempt. Answers it, or `None` when it
/// is `posted` or `failed` already.
pub(super) fn claim_issue_comment(conn: &mut SqliteConnection, task: &str) -> QueryResult<Option<crate::db::models::TaskIssue>> {
    use crate::db::schema::task_issues;
    diesel::update(task_issues::table.find(task).filter(task_issues::comment_state.eq_any(["none", "pending"])))
        .set((task_issues::comment_state.eq("pending"), task_issues::comment_attempts.eq(task_issues::comment_attempts + 1)))
        .returning(crate::db::models::TaskIssue::as_returning())
        .get_result(conn)
        .optional()
}

/// Records how the comment ended: `posted` (with its URL) or `failed`.
pub(super) fn settle_issue_comment(conn: &mut SqliteConnection, task: &str, state: &str, url: Option<&str>) -> QueryResult<()> {
    use crate::db::schema::task_issues;
    diesel::update(task_issues::table.find(task))
        .set((task_issues::comment_state.eq(state), task_issues::comment_url.eq(url)))
        .execute(conn)
        .map(|_| ())
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

/// Records what the status poller saw of the agent.
pub(super) fn upsert_runtime(
    conn: &mut SqliteConnection,
    task: &str,
    pid: Option<i32>,
    exit_code: Option<i32>,
    started_at: Option<i64>,
    last_output_at: Option<i64>,
    now: i64,
) -> QueryResult<()> {
    use crate::db::schema::task_runtime;
    diesel::insert_into(task_runtime::table)
        .values((
            task_runtime::task_id.eq(task),
            task_runtime::pid.eq(pid),
            task_runtime::exit_code.eq(exit_code),
            task_runtime::started_at.eq(started_at),
            task_runtime::last_output_at.eq(last_output_at),
            task_runtime::updated_at.eq(now),
        ))
        .on_conflict(task_runtime::task_id)
        .do_update()
        .set((
            task_runtime::pid.eq(pid),
            task_runtime::exit_code.eq(exit_code),
            task_runtime::started_at.eq(started_at),
            task_runtime::last_output_at.eq(last_output_at),
            task_runtime::updated_at.eq(now),
        ))
        .execute(conn)
        .map(|_| ())
}

/// Records the push lease: Kiln just pushed `sha` to `branch` on origin.
pub(super) fn record_push(conn: &mut SqliteConnection, task: &str, branch: &str, sha: &str, now: i64) -> QueryResult<()> {
    use crate::db::schema::task_runtime;
    diesel::insert_into(task_runtime::table)
        .values((
            task_runtime::task_id.eq(task),
            task_runtime::pushed_branch.eq(branch),
            task_runtime::pushed_sha.eq(sha),
            task_runtime::updated_at.eq(now),
        ))
        .on_conflict(task_runtime::task_id)
        .do_update()
        .set((task_runtime::pushed_branch.eq(branch), task_runtime::pushed_sha.eq(sha), task_runtime::updated_at.eq(now)))
        .execute(conn)
        .map(|_| ())
}

/// Records whether the agent just started runs confined, and at which ABI.
pub(super) fn set_confinement(conn: &mut SqliteConnection, task: &str, confined: bool, abi: Option<i32>, now: i64) -> QueryResult<()> {
    use crate::db::schema::task_runtime;
    diesel::insert_into(task_runtime::table)
        .values((
            task_runtime::task_id.eq(task),
            task_runtime::confined.eq(Some(confined)),
            task_runtime::confine_abi.eq(abi),
            task_runtime::updated_at.eq(now),
        ))
        .on_conflict(task_runtime::task_id)
        .do_update()
        .set((task_runtime::confined.eq(Some(confined)), task_runtime::confine_abi.eq(abi), task_runtime::updated_at.eq(now)))
        .execute(conn)
        .map(|_| ())
}

/// Records why the terminal log cannot be written, or (`None`) that it can again.
pub(super) fn set_log_error(conn: &mut SqliteConnection, task: &str, error: Option<&str>, now: i64) -> QueryResult<()> {
    use crate::db::schema::task_runtime;
    diesel::insert_into(task_runtime::table)
        .values((task_runtime::task_id.eq(task), task_runtime::log_error.eq(error), task_runtime::updated_at.eq(now)))
        .on_conflict(task_runtime::task_id)
        .do_update()
        .set((task_runtime::log_error.eq(error), task_runtime::updated_at.eq(now)))
        .execute(conn)
        .map(|_| ())
}

pub(super) fn insert_session(conn: &mut SqliteConnection, row: &crate::db::models::TaskSession) -> QueryResult<()> {
    use crate::db::schema::task_sessions;
    diesel::insert_into(task_sessions::table).values(row).execute(conn).map(|_| ())
}

/// What a session observation writes (every field; the caller read the row first).
#[derive(Debug, Clone, diesel::AsChangeset)]
#[diesel(table_name = crate::db::schema::task_sessions, treat_none_as_null = true)]
pub(super) struct SessionChanges {
    pub acp_server_id: String,
    pub remote_session_id: Option<String>,
    pub status: String,
    pub last_remote_seq: i64,
    pub stop_reason: Option<String>,
    pub awaiting_input: bool,
    pub remote_epoch: Option<i64>,
    pub load_session: bool,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

pub(super) fn update_session(
    conn: &mut SqliteConnection,
    id: &str,
    changes: &SessionChanges,
) -> QueryResult<crate::db::models::TaskSession> {
    use crate::db::models::TaskSession;
    use crate::db::schema::task_sessions;
    diesel::update(task_sessions::table.filter(task_sessions::id.eq(id)))
        .set(changes)
        .returning(TaskSession::as_returning())
        .get_result(conn)
}

/// Marks every open session of a task closed (its sandbox went away).
pub(super) fn close_sessions(conn: &mut SqliteConnection, task: &str, reason: &str, now: i64) -> QueryResult<usize> {
    use crate::db::schema::task_sessions;
    diesel::update(
        task_sessions::table
            .filter(task_sessions::task_id.eq(task))
            .filter(task_sessions::status.ne("closed")),
    )
    .set((
        task_sessions::status.eq("closed"),
        task_sessions::awaiting_input.eq(false),
        task_sessions::last_error.eq(reason),
        task_sessions::updated_at.eq(now),
    ))
    .execute(conn)
}

/// Sets the task's `awaiting_input` flag; answers whether it changed.
pub(super) fn set_awaiting_input(conn: &mut SqliteConnection, id: &str, awaiting: bool, now: i64) -> QueryResult<bool> {
    diesel::update(tasks::table.filter(tasks::id.eq(id)).filter(tasks::awaiting_input.ne(awaiting)))
        .set((tasks::awaiting_input.eq(awaiting), tasks::updated_at.eq(now)))
        .execute(conn)
        .map(|n| n > 0)
}

/// Keeps a session's newest checkpoint (an older one arriving late is ignored).
pub(super) fn save_checkpoint(conn: &mut SqliteConnection, id: &str, checkpoint: &str, event_id: i64) -> QueryResult<()> {
    use crate::db::schema::task_sessions;
    diesel::update(task_sessions::table.filter(task_sessions::id.eq(id)).filter(task_sessions::checkpoint_event_id.lt(event_id)))
        .set((task_sessions::checkpoint.eq(checkpoint), task_sessions::checkpoint_event_id.eq(event_id)))
        .execute(conn)
        .map(|_| ())
}

/// Claims a firing of `cause` covering `keys`: the keys not claimed before are
/// inserted as `pending`, all with the next attempt number. Answers that number
/// and the keys claimed now; `None` when every key had fired already (so two
/// polls racing fire once).
pub(super) fn claim_reaction(
    conn: &mut SqliteConnection,
    task: &str,
    cause: &str,
    keys: &[String],
    outcome: &str,
    now: i64,
) -> QueryResult<Option<(i32, Vec<String>)>> {
    use crate::db::schema::task_reactions;
    let seen: Vec<String> = task_reactions::table
        .filter(task_reactions::task_id.eq(task))
        .filter(task_reactions::cause.eq(cause))
        .filter(task_reactions::cause_key.eq_any(keys))
        .select(task_reactions::cause_key)
        .load(conn)?;
    let fresh: Vec<String> = keys.iter().filter(|k| !seen.contains(k)).cloned().collect();
    if fresh.is_empty() {
        return Ok(None);
    }
    let last: Option<i32> =
        task_reactions::table.filter(task_reactions::task_id.eq(task)).filter(task_reactions::cause.eq(cause)).select(diesel::dsl::max(task_reactions::attempt)).first(conn)?;
    let attempt = last.unwrap_or(0) + 1;
    for key in &fresh {
        diesel::insert_into(task_reactions::table)
            .values((
                task_reactions::task_id.eq(task),
                task_reactions::cause.eq(cause),
                task_reactions::cause_key.eq(key),
                task_reactions::attempt.eq(attempt),
                task_reactions::outcome.eq(outcome),
                task_reactions::fired_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(Some((attempt, fresh)))
}

/// Records how a claimed firing ended.
pub(super) fn settle_reaction(conn: &mut SqliteConnection, task: &str, cause: &str, attempt: i32, outcome: &str) -> QueryResult<()> {
    use crate::db::schema::task_reactions;
    diesel::update(task_reactions::table.filter(task_reactions::task_id.eq(task)).filter(task_reactions::cause.eq(cause)).filter(task_reactions::attempt.eq(attempt)))
        .set(task_reactions::outcome.eq(outcome))
        .execute(conn)
        .map(|_| ())
}
