//! Read-only queries. Anyone may read anything; these run on a reader connection
//! through `Db::read`.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel::QueryResult;

use crate::db::models::*;
use crate::db::schema::*;

/// Task statuses that still hold (or may hold) a sandbox; a repository with tasks in
/// these cannot be deleted.
pub const ACTIVE_TASK_STATUSES: &[&str] =
    &["queued", "provisioning", "running", "idle", "stalled", "interrupted"];

pub fn organization(conn: &mut SqliteConnection, name: &str) -> QueryResult<Option<Organization>> {
    organizations::table
        .find(name)
        .select(Organization::as_select())
        .first(conn)
        .optional()
}

pub fn organizations_list(conn: &mut SqliteConnection) -> QueryResult<Vec<Organization>> {
    organizations::table
        .order(organizations::name.asc())
        .select(Organization::as_select())
        .load(conn)
}

/// A token by its id, revoked or not (`None`: it never existed, or its
/// organization was deleted and the token with it).
pub fn token_by_id(conn: &mut SqliteConnection, id: &str) -> QueryResult<Option<ApiToken>> {
    api_tokens::table.find(id).select(ApiToken::as_select()).first(conn).optional()
}

/// A live (not revoked) token by the hash of its secret.
pub fn token_by_hash(conn: &mut SqliteConnection, hash: &str) -> QueryResult<Option<ApiToken>> {
    api_tokens::table
        .filter(api_tokens::token_hash.eq(hash))
        .filter(api_tokens::revoked_at.is_null())
        .select(ApiToken::as_select())
        .first(conn)
        .optional()
}

/// A live web session by the hash of its cookie: not expired at `now`, and its
/// token (when it has one) not revoked. The revocation deletes the session too;
/// the token is checked again here so a session never outlives it.
pub fn web_session_by_hash(conn: &mut SqliteConnection, hash: &str, now: i64) -> QueryResult<Option<WebSession>> {
    let Some(session) = web_sessions::table
        .find(hash)
        .filter(web_sessions::expires_at.gt(now))
        .select(WebSession::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    if let Some(token) = &session.token_id {
        let live = api_tokens::table
            .find(token)
            .filter(api_tokens::revoked_at.is_null())
            .count()
            .get_result::<i64>(conn)?;
        if live == 0 {
            return Ok(None);
        }
    }
    Ok(Some(session))
}

/// A sign-in code by its hash, spent or expired ones aside (a spent code's row is gone).
pub fn sign_in_code_by_hash(conn: &mut SqliteConnection, hash: &str) -> QueryResult<Option<SignInCode>> {
    web_sign_in_codes::table.find(hash).select(SignInCode::as_select()).first(conn).optional()
}

pub fn tokens_list(conn: &mut SqliteConnection, org: &str) -> QueryResult<Vec<ApiToken>> {
    api_tokens::table
        .filter(api_tokens::organization.eq(org))
        .order(api_tokens::created_at.asc())
        .select(ApiToken::as_select())
        .load(conn)
}

/// A provider profile's `(config, secrets, updated_at)`, as stored JSON text.
pub fn provider_profile(
    conn: &mut SqliteConnection,
    org: &str,
    provider: &str,
) -> QueryResult<Option<(String, String, i64)>> {
    provider_profiles::table
        .find((org, provider))
        .select((provider_profiles::config, provider_profiles::secrets, provider_profiles::updated_at))
        .first(conn)
        .optional()
}

pub fn repo_by_name(conn: &mut SqliteConnection, org: &str, name: &str) -> QueryResult<Option<Repo>> {
    repos::table
        .filter(repos::organization.eq(org))
        .filter(repos::name.eq(name))
        .select(Repo::as_select())
        .first(conn)
        .optional()
}

pub fn repo_by_id(conn: &mut SqliteConnection, id: i32) -> QueryResult<Option<Repo>> {
    repos::table.find(id).select(Repo::as_select()).first(conn).optional()
}

pub fn repos_list(conn: &mut SqliteConnection, org: &str) -> QueryResult<Vec<Repo>> {
    repos::table
        .filter(repos::organization.eq(org))
        .order(repos::name.asc())
        .select(Repo::as_select())
        .load(conn)
}

/// A repository's own credential for its origin (user name, secret), if it has one.
pub fn repo_credential(conn: &mut SqliteConnection, id: i32) -> QueryResult<Option<(Option<String>, String)>> {
    let row: Option<(Option<String>, Option<String>)> = repos::table
        .find(id)
        .select((repos::credential_user, repos::credential_secret))
        .first(conn)
        .optional()?;
    Ok(row.and_then(|(user, secret)| secret.map(|s| (user, s))))
}

/// Every repository of every organization.
pub fn all_repos_full(conn: &mut SqliteConnection) -> QueryResult<Vec<Repo>> {
    repos::table.select(Repo::as_select()).load(conn)
}

/// The organizations whose `daytona` profile has an `api_key`.
pub fn daytona_organizations(conn: &mut SqliteConnection) -> QueryResult<Vec<String>> {
    let rows: Vec<(String, String)> = provider_profiles::table
        .filter(provider_profiles::provider.eq("daytona"))
        .select((provider_profiles::organization, provider_profiles::secrets))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter(|(_, secrets)| {
            serde_json::from_str::<serde_json::Value>(secrets).is_ok_and(|v| v["api_key"].as_str().is_some_and(|k| !k.is_empty()))
        })
        .map(|(org, _)| org)
        .collect())
}

/// `(organization, webhook secret)` of every organization that set one.
pub fn github_webhook_secrets(conn: &mut SqliteConnection) -> QueryResult<Vec<(String, String)>> {
    let rows: Vec<(String, String)> = provider_profiles::table
        .filter(provider_profiles::provider.eq("github"))
        .select((provider_profiles::organization, provider_profiles::secrets))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(org, secrets)| {
            let v: serde_json::Value = serde_json::from_str(&secrets).ok()?;
            v["webhook_secret"].as_str().filter(|s| !s.is_empty()).map(|s| (org, s.to_string()))
        })
        .collect())
}

/// `(organization, name)` of every repository.
pub fn all_repos(conn: &mut SqliteConnection) -> QueryResult<Vec<(String, String)>> {
    repos::table.select((repos::organization, repos::name)).load(conn)
}

pub fn repos_count(conn: &mut SqliteConnection, org: &str) -> QueryResult<i64> {
    repos::table.filter(repos::organization.eq(org)).count().get_result(conn)
}

pub fn active_tasks_count(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<i64> {
    tasks::table
        .filter(tasks::repo_id.eq(repo_id))
        .filter(tasks::status.eq_any(ACTIVE_TASK_STATUSES))
        .count()
        .get_result(conn)
}

pub fn branches_list(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<Vec<Branch>> {
    branches::table
        .filter(branches::repo_id.eq(repo_id))
        .order(branches::name.asc())
        .select(Branch::as_select())
        .load(conn)
}

pub fn pulls_list(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<Vec<PullRequest>> {
    pull_requests::table
        .filter(pull_requests::repo_id.eq(repo_id))
        .order(pull_requests::number.desc())
        .select(PullRequest::as_select())
        .load(conn)
}

pub fn task(conn: &mut SqliteConnection, org: &str, id: &str) -> QueryResult<Option<Task>> {
    tasks::table
        .filter(tasks::organization.eq(org))
        .filter(tasks::id.eq(id))
        .select(Task::as_select())
        .first(conn)
        .optional()
}

/// Filters and keyset page for listing tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub repo_id: Option<i32>,
    pub status: Option<String>,
    /// Continue after this `(created_at, id)`.
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

pub fn tasks_list(conn: &mut SqliteConnection, org: &str, f: &TaskFilter) -> QueryResult<Vec<Task>> {
    let mut q = tasks::table
        .filter(tasks::organization.eq(org))
        .select(Task::as_select())
        .into_boxed();
    if let Some(repo_id) = f.repo_id {
        q = q.filter(tasks::repo_id.eq(repo_id));
    }
    if let Some(status) = &f.status {
        q = q.filter(tasks::status.eq(status.clone()));
    }
    if let Some((created_at, id)) = &f.after {
        q = q.filter(
            tasks::created_at
                .lt(*created_at)
                .or(tasks::created_at.eq(*created_at).and(tasks::id.lt(id.clone()))),
        );
    }
    q.order((tasks::created_at.desc(), tasks::id.desc())).limit(f.limit).load(conn)
}

/// How many tasks are in each status, over every organization (for `/metrics`).
pub fn task_counts_by_status(conn: &mut SqliteConnection) -> QueryResult<Vec<(String, i64)>> {
    tasks::table
        .group_by(tasks::status)
        .select((tasks::status, diesel::dsl::count_star()))
        .order(tasks::status)
        .load(conn)
}

/// `(organization, repo name, task id)` of every task that may have a live agent,
/// or was waiting to get one: the ones boot recovery reconciles.
pub fn tasks_to_recover(conn: &mut SqliteConnection) -> QueryResult<Vec<(String, String, String)>> {
    tasks::table
        .inner_join(repos::table)
        .filter(tasks::status.eq_any(["queued", "provisioning", "running", "idle"]))
        .select((tasks::organization, repos::name, tasks::id))
        .load(conn)
}

/// `(task id, branch, status)` of a repository's tasks that are not finished.
pub fn active_task_branches(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<Vec<(String, String, String)>> {
    tasks::table
        .filter(tasks::repo_id.eq(repo_id))
        .filter(tasks::status.eq_any(ACTIVE_TASK_STATUSES))
        .select((tasks::id, tasks::branch, tasks::status))
        .load(conn)
}

/// Statuses of tasks whose work conflict prediction looks at: past
/// provisioning, not finished.
pub const PREDICTED_TASK_STATUSES: &[&str] = &["running", "idle", "stalled", "interrupted"];

/// The repository's tasks that conflict prediction looks at: (id, branch, base branch).
pub fn conflict_candidates(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<Vec<(String, String, String)>> {
    tasks::table
        .filter(tasks::repo_id.eq(repo_id))
        .filter(tasks::status.eq_any(PREDICTED_TASK_STATUSES))
        .order(tasks::id.asc())
        .select((tasks::id, tasks::branch, tasks::base_branch))
        .load(conn)
}

/// The conflicts predicted in a repository, by task then other.
pub fn conflicts_list(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<Vec<TaskConflict>> {
    task_conflicts::table
        .filter(task_conflicts::repo_id.eq(repo_id))
        .order((task_conflicts::task_id.asc(), task_conflicts::other.asc()))
        .select(TaskConflict::as_select())
        .load(conn)
}

/// (id, branch, base branch) of the tasks named.
pub fn task_branches(conn: &mut SqliteConnection, ids: &[String]) -> QueryResult<Vec<(String, String, String)>> {
    tasks::table.filter(tasks::id.eq_any(ids)).select((tasks::id, tasks::branch, tasks::base_branch)).load(conn)
}

pub fn task_runtime(conn: &mut SqliteConnection, task_id: &str) -> QueryResult<Option<TaskRuntime>> {
    task_runtime::table
        .find(task_id)
        .select(TaskRuntime::as_select())
        .first(conn)
        .optional()
}

/// A task's reactions, newest first (at most `limit`).
pub fn task_reactions(conn: &mut SqliteConnection, task_id: &str, limit: i64) -> QueryResult<Vec<TaskReaction>> {
    task_reactions::table
        .filter(task_reactions::task_id.eq(task_id))
        .order((task_reactions::fired_at.desc(), task_reactions::attempt.desc(), task_reactions::cause_key.asc()))
        .limit(limit)
        .select(TaskReaction::as_select())
        .load(conn)
}

/// Every reaction row of a task (what has fired already, for dedupe).
pub fn all_task_reactions(conn: &mut SqliteConnection, task_id: &str) -> QueryResult<Vec<TaskReaction>> {
    task_reactions::table.filter(task_reactions::task_id.eq(task_id)).select(TaskReaction::as_select()).load(conn)
}

/// The newest sandbox of a task, if it ever had one.
pub fn task_sandbox(conn: &mut SqliteConnection, task_id: &str) -> QueryResult<Option<SandboxInstance>> {
    sandbox_instances::table
        .filter(sandbox_instances::task_id.eq(task_id))
        .order(sandbox_instances::created_at.desc())
        .select(SandboxInstance::as_select())
        .first(conn)
        .optional()
}

pub fn task_pull_request(
    conn: &mut SqliteConnection,
    repo_id: i32,
    branch: &str,
) -> QueryResult<Option<PullRequest>> {
    pull_requests::table
        .filter(pull_requests::repo_id.eq(repo_id))
        .filter(pull_requests::head_ref.eq(branch))
        .order(pull_requests::number.desc())
        .select(PullRequest::as_select())
        .first(conn)
        .optional()
}

/// Filters for reading the event history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub since: i64,
    pub repo: Option<String>,
    pub task: Option<String>,
    /// An exact kind, or a prefix when it ends in `.` or `*` (`task.`, `task.*`).
    pub kind: Option<String>,
    /// One ACP session's events.
    pub session: Option<String>,
    pub limit: i64,
    /// Take the newest `limit` matching events instead of the oldest (still
    /// answered oldest first).
    pub newest: bool,
}

pub fn events_list(conn: &mut SqliteConnection, org: &str, f: &EventFilter) -> QueryResult<Vec<EventRow>> {
    let mut q = events::table
        .filter(events::organization.eq(org))
        .filter(events::id.gt(f.since))
        .select(EventRow::as_select())
        .into_boxed();
    if let Some(repo) = &f.repo {
        q = q.filter(events::repo.eq(repo.clone()));
    }
    if let Some(task) = &f.task {
        q = q.filter(events::task.eq(task.clone()));
    }
    if let Some(session) = &f.session {
        q = q.filter(events::session.eq(session.clone()));
    }
    if let Some(kind) = &f.kind {
        let prefix = kind.strip_suffix('*').unwrap_or(kind);
        if prefix.ends_with('.') {
            let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            q = q.filter(events::kind.like(format!("{escaped}%")).escape('\\'));
        } else {
            q = q.filter(events::kind.eq(kind.clone()));
        }
    }
    if f.newest {
        let mut rows: Vec<EventRow> = q.order(events::id.desc()).limit(f.limit).load(conn)?;
        rows.reverse();
        return Ok(rows);
    }
    q.order(events::id.asc()).limit(f.limit).load(conn)
}

/// The newest event id of any organization (ids come from one sequence), 0 when
/// there is none.
pub fn newest_event_id(conn: &mut SqliteConnection) -> QueryResult<i64> {
    events::table.select(diesel::dsl::max(events::id)).first::<Option<i64>>(conn).map(|id| id.unwrap_or(0))
}

/// The id of the latest `organization.created` under `org`: where the
/// organization that now bears the name began (0 when none is recorded).
pub fn organization_began(conn: &mut SqliteConnection, org: &str) -> QueryResult<i64> {
    events::table
        .filter(events::organization.eq(org))
        .filter(events::kind.eq("organization.created"))
        .select(diesel::dsl::max(events::id))
        .first::<Option<i64>>(conn)
        .map(|id| id.unwrap_or(0))
}

/// The event kinds a session's journal is made of (one per envelope).
pub const JOURNAL_KINDS: &[&str] =
    &["session.sent", "session.update", "session.request", "session.notification", "session.response"];

/// A task's ACP sessions, oldest first.
pub fn task_sessions(conn: &mut SqliteConnection, task_id: &str) -> QueryResult<Vec<TaskSession>> {
    task_sessions::table
        .filter(task_sessions::task_id.eq(task_id))
        .order((task_sessions::created_at.asc(), task_sessions::id.asc()))
        .select(TaskSession::as_select())
        .load(conn)
}

/// One session of a task.
pub fn task_session(conn: &mut SqliteConnection, task_id: &str, id: &str) -> QueryResult<Option<TaskSession>> {
    task_sessions::table
        .filter(task_sessions::task_id.eq(task_id))
        .filter(task_sessions::id.eq(id))
        .select(TaskSession::as_select())
        .first(conn)
        .optional()
}

/// Sessions that were open (starting, ready or prompting), by org, repo, task
/// and id: the ones to resume at boot.
pub fn open_sessions(conn: &mut SqliteConnection, task_id: &str) -> QueryResult<Vec<TaskSession>> {
    task_sessions::table
        .filter(task_sessions::task_id.eq(task_id))
        .filter(task_sessions::status.eq_any(["starting", "ready", "prompting"]))
        .select(TaskSession::as_select())
        .load(conn)
}

/// The status a session's last `session.status_changed` event moved it to, if
/// it has one (its SessionActor goes on from there, so the chain of events
/// stays unbroken across restarts).
pub fn last_journaled_status(conn: &mut SqliteConnection, org: &str, session: &str) -> QueryResult<Option<String>> {
    let data: Option<String> = events::table
        .filter(events::session.eq(session))
        .filter(events::organization.eq(org))
        .filter(events::kind.eq("session.status_changed"))
        .order(events::id.desc())
        .select(events::data)
        .first(conn)
        .optional()?;
    Ok(data.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()).and_then(|v| v["to"].as_str().map(str::to_string)))
}

/// A session's journal after event `after` (0: all of it), in order: the ids
/// and data of its envelope events.
pub fn session_journal(conn: &mut SqliteConnection, org: &str, session: &str, after: i64) -> QueryResult<Vec<(i64, String)>> {
    events::table
        .filter(events::session.eq(session))
        .filter(events::id.gt(after))
        .filter(events::organization.eq(org))
        .filter(events::kind.eq_any(JOURNAL_KINDS))
        .order(events::id.asc())
        .select((events::id, events::data))
        .load(conn)
}

/// The GitHub issue a task was made from, if it was.
pub fn task_issue(conn: &mut SqliteConnection, task_id: &str) -> QueryResult<Option<TaskIssue>> {
    task_issues::table.find(task_id).select(TaskIssue::as_select()).first(conn).optional()
}

/// The issue numbers of a repository that have their task (whatever its state).
pub fn taken_issue_numbers(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<Vec<i64>> {
    task_issues::table.filter(task_issues::repo_id.eq(repo_id)).select(task_issues::issue_number).load(conn)
}

/// How many of a repository's tasks made from issues are active.
pub fn active_issue_tasks(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<i64> {
    task_issues::table
        .inner_join(tasks::table)
        .filter(task_issues::repo_id.eq(repo_id))
        .filter(tasks::status.eq_any(ACTIVE_TASK_STATUSES))
        .count()
        .get_result(conn)
}

/// Tasks made from issues of a repository whose pull request exists but is not
/// reported on the issue yet (comment `none` or `pending`).
pub fn unreported_issue_tasks(conn: &mut SqliteConnection, repo_id: i32) -> QueryResult<Vec<String>> {
    let waiting: Vec<(String, String)> = task_issues::table
        .inner_join(tasks::table)
        .filter(task_issues::repo_id.eq(repo_id))
        .filter(task_issues::comment_state.eq_any(["none", "pending"]))
        .select((tasks::id, tasks::branch))
        .load(conn)?;
    let mut out = Vec::new();
    for (id, branch) in waiting {
        if task_pull_request(conn, repo_id, &branch)?.is_some() {
            out.push(id);
        }
    }
    Ok(out)
}
