//! Writes to `repos`, `branches`, `pull_requests` and `task_conflicts`. Only
//! the RepositoryActor calls these.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use super::BranchObservation;
use crate::db::models::{Branch, NewRepo, PullRequest, Repo, TaskConflict};
use crate::db::schema::{branches, pull_requests, repos, task_conflicts};

pub(super) fn insert_repo(conn: &mut SqliteConnection, row: &NewRepo) -> QueryResult<Repo> {
    diesel::insert_into(repos::table).values(row).returning(Repo::as_returning()).get_result(conn)
}

/// Replaces a stored source with the same URL without its userinfo, keeping the
/// credential apart (a credential stored already is not overwritten).
pub(super) fn move_credential(
    conn: &mut SqliteConnection,
    id: i32,
    source: &str,
    user: Option<String>,
    secret: Option<String>,
    now: i64,
) -> QueryResult<()> {
    // The writer runs this in one immediate transaction.
    let stored: Option<String> = repos::table.find(id).select(repos::credential_secret).first(conn)?;
    let update = diesel::update(repos::table.find(id));
    if stored.is_none() && secret.is_some() {
        update
            .set((repos::source.eq(source), repos::credential_user.eq(user), repos::credential_secret.eq(secret), repos::updated_at.eq(now)))
            .execute(conn)?;
    } else {
        update.set((repos::source.eq(source), repos::updated_at.eq(now))).execute(conn)?;
    }
    Ok(())
}

/// Replaces the setup step (JSON text) of a repository.
pub(super) fn set_setup(conn: &mut SqliteConnection, org: &str, name: &str, setup: &str, now: i64) -> QueryResult<Option<Repo>> {
    diesel::update(repos::table.filter(repos::organization.eq(org)).filter(repos::name.eq(name)))
        .set((repos::setup.eq(setup), repos::updated_at.eq(now)))
        .returning(Repo::as_returning())
        .get_result(conn)
        .optional()
}

/// Replaces the settings (JSON text) of a repository.
pub(super) fn set_settings(conn: &mut SqliteConnection, org: &str, name: &str, settings: &str, now: i64) -> QueryResult<Option<Repo>> {
    diesel::update(repos::table.filter(repos::organization.eq(org)).filter(repos::name.eq(name)))
        .set((repos::settings.eq(settings), repos::updated_at.eq(now)))
        .returning(Repo::as_returning())
        .get_result(conn)
        .optional()
}

/// Deletes the repository; its branches, pull requests and finished tasks go
/// with it (foreign keys cascade).
pub(super) fn delete_repo(conn: &mut SqliteConnection, id: i32) -> QueryResult<()> {
    diesel::delete(repos::table.find(id)).execute(conn).map(|_| ())
}

/// Inserts or replaces one pull request; keeps the CI state, checks and review
/// decision it had when the new row does not know them.
pub(super) fn upsert_pull(conn: &mut SqliteConnection, row: &PullRequest) -> QueryResult<PullRequest> {
    let existing: Option<PullRequest> = pull_requests::table
        .find((row.repo_id, row.number))
        .select(PullRequest::as_select())
        .first(conn)
        .optional()?;
    // CI belongs to a head: a new head starts without the old one's state.
    let same_head = existing.as_ref().is_some_and(|e| e.head_sha == row.head_sha);
    let ci_state = row.ci_state.clone().or_else(|| existing.as_ref().filter(|_| same_head).and_then(|e| e.ci_state.clone()));
    let checks = row.checks.clone().or_else(|| existing.as_ref().filter(|_| same_head).and_then(|e| e.checks.clone()));
    let review = row.review_decision.clone().or_else(|| existing.as_ref().and_then(|e| e.review_decision.clone()));
    let values = (
        pull_requests::repo_id.eq(row.repo_id),
        pull_requests::number.eq(row.number),
        pull_requests::state.eq(&row.state),
        pull_requests::draft.eq(row.draft),
        pull_requests::title.eq(&row.title),
        pull_requests::url.eq(&row.url),
        pull_requests::head_ref.eq(&row.head_ref),
        pull_requests::head_sha.eq(&row.head_sha),
        pull_requests::base_ref.eq(&row.base_ref),
        pull_requests::mergeable.eq(row.mergeable),
        pull_requests::ci_state.eq(ci_state),
        pull_requests::review_decision.eq(review),
        pull_requests::updated_at.eq(row.updated_at),
        pull_requests::checks.eq(checks),
    );
    diesel::replace_into(pull_requests::table).values(values).execute(conn)?;
    pull_requests::table.find((row.repo_id, row.number)).select(PullRequest::as_select()).first(conn)
}

/// Upserts many pull requests in one transaction; answers each one's previous row.
pub(super) fn upsert_pulls(conn: &mut SqliteConnection, rows: &[PullRequest]) -> QueryResult<Vec<Option<PullRequest>>> {
    let mut before = Vec::with_capacity(rows.len());
    for row in rows {
        let old: Option<PullRequest> = pull_requests::table
            .find((row.repo_id, row.number))
            .select(PullRequest::as_select())
            .first(conn)
            .optional()?;
        let unchanged = old.as_ref().is_some_and(|o| {
            o.state == row.state && o.head_sha == row.head_sha && o.title == row.title && o.draft == row.draft
                && (row.ci_state.is_none() || o.ci_state == row.ci_state)
                && (row.review_decision.is_none() || o.review_decision == row.review_decision)
                && (row.checks.is_none() || o.checks == row.checks)
                && (row.mergeable.is_none() || o.mergeable == row.mergeable)
        });
        if !unchanged {
            upsert_pull(conn, row)?;
        }
        before.push(old);
    }
    Ok(before)
}

/// Makes `branches` match what the poller saw; answers the events to emit.
pub(super) fn apply_branches(
    conn: &mut SqliteConnection,
    repo_id: i32,
    observed: &[BranchObservation],
    now: i64,
) -> QueryResult<Vec<(&'static str, serde_json::Value)>> {
    let current: Vec<Branch> = branches::table.filter(branches::repo_id.eq(repo_id)).select(Branch::as_select()).load(conn)?;
    let mut events = Vec::new();
    for b in observed {
        let old = current.iter().find(|c| c.name == b.name);
        let same = old.is_some_and(|o| {
            o.head_sha == b.head && o.ahead == Some(b.ahead) && o.behind == Some(b.behind) && o.dirty_files == b.dirty_files
        });
        if same {
            continue;
        }
        diesel::replace_into(branches::table)
            .values((
                branches::repo_id.eq(repo_id),
                branches::name.eq(&b.name),
                branches::head_sha.eq(&b.head),
                branches::ahead.eq(b.ahead),
                branches::behind.eq(b.behind),
                branches::dirty_files.eq(b.dirty_files),
                branches::updated_at.eq(now),
            ))
            .execute(conn)?;
        events.push((
            "branch.updated",
            serde_json::json!({"branch": b.name, "head": b.head, "ahead": b.ahead, "behind": b.behind, "dirty_files": b.dirty_files}),
        ));
    }
    for gone in current.iter().filter(|c| !observed.iter().any(|b| b.name == c.name)) {
        diesel::delete(branches::table.find((repo_id, &gone.name))).execute(conn)?;
        events.push(("branch.deleted", serde_json::json!({"branch": gone.name})));
    }
    Ok(events)
}

/// Applies one round of conflict prediction: rows replaced (inserted or their
/// files changed) and rows removed, in the writer's one transaction.
pub(super) fn apply_conflicts(conn: &mut SqliteConnection, upserts: &[TaskConflict], removed: &[TaskConflict]) -> QueryResult<()> {
    for row in removed {
        diesel::delete(task_conflicts::table.find((row.repo_id, &row.task_id, &row.other))).execute(conn)?;
    }
    for row in upserts {
        diesel::replace_into(task_conflicts::table).values(row).execute(conn)?;
    }
    Ok(())
}
