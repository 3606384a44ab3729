//! Request bodies and query strings, and the answers that have no row type of
//! their own. Unknown fields are refused, so a typo is an error rather than a
//! silently ignored setting.
//!
//! These types are the API's one description: the handlers read and write
//! them, the OpenAPI document (`http::openapi`) is derived from them, and the
//! CLI sends and reads them (so a renamed field breaks the build, not a user).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    /// An organization name: `a-z 0-9 - _ .`, a letter or digit first, no `..`.
    #[schema(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub name: String,
    /// Empty, white space or absent means "use `name`".
    #[schema(max_length = 200)]
    pub display_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrganization {
    /// Stored without leading and trailing ASCII white space.
    #[schema(max_length = 200, pattern = r"[^ \t\n\f\r]")]
    pub display_name: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutProviderProfile {
    /// Replaces the stored config as a whole (`worktree` takes none).
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Merged name by name into the stored secrets: a string sets one, `null`
    /// removes it. Names are environment variable names (`A-Z a-z 0-9 _`, not a
    /// digit first, at most 128). Never read back.
    #[serde(default)]
    pub secrets: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRepo {
    /// A URL git can clone (`https://`, `http://`, `ssh://`, `git://`, scp-like
    /// `user@host:path`), or an absolute path on the server's host or a
    /// `file://` URL (who may register which is in docs/api.md).
    #[schema(min_length = 1)]
    pub source: String,
    /// Defaults to the last segment of the source, without `.git`, lowercased,
    /// other characters turned into `-`.
    #[schema(pattern = r"^[a-z0-9](\.?[a-z0-9_-])*\.?$", min_length = 1, max_length = 63)]
    pub name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// A repository name in this organization.
    pub repo: String,
    /// What the agent is asked to do: at most 65536 characters, not all white space.
    #[schema(max_length = 65536, pattern = r"[^ \t\n\f\r]")]
    pub description: String,
    /// Blank or absent means the first non-empty line of the description, cut
    /// to 72 characters.
    #[schema(max_length = 200)]
    pub title: Option<String>,
    /// Defaults to the repository's default branch; a valid branch name that
    /// exists in the mirror.
    pub base_branch: Option<String>,
    /// An agent profile of the server's config; `tasks.default_agent` when absent.
    pub agent: Option<String>,
    /// `worktree` or `daytona`; `tasks.default_provider` when absent.
    #[schema(pattern = "^(worktree|daytona)$")]
    pub provider: Option<String>,
}

/// `PUT …/repos/{repo}/setup`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoSetup {
    /// Shell commands run in each new task's terminal before the agent, each as
    /// `sh -c '<command>'` in the worktree: 1-4096 bytes, not blank, no NUL.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub commands: Vec<String>,
    /// Untracked files copied from the source checkout into each new worktree:
    /// relative paths inside the checkout (no leading `/`, no `..`, no `.`).
    #[serde(default)]
    #[schema(max_items = 200)]
    pub copy: Vec<String>,
}

/// The optional body of `POST …/tasks/{task}/{action}`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskAction {
    /// For `input`: the text to type into the agent's terminal.
    pub text: Option<String>,
    /// For `push`: commit what is uncommitted first, with this message.
    pub commit: Option<String>,
    /// For `push`: replace the branch on the remote even when someone else
    /// pushed to it (otherwise 409 `remote_moved`).
    pub force: Option<bool>,
    /// For `sync`: `rebase` (default) or `merge`.
    #[schema(pattern = "^(rebase|merge)$")]
    pub mode: Option<String>,
    /// For `pr`: open it as a draft.
    pub draft: Option<bool>,
    /// For `merge`: `squash` (default), `merge` or `rebase`.
    #[schema(pattern = "^(squash|merge|rebase)$")]
    pub method: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// Only this repository's tasks.
    pub repo: Option<String>,
    /// Only tasks in this status.
    #[param(pattern = "^(queued|provisioning|running|idle|stalled|interrupted|failed|archived|killed)$")]
    pub status: Option<String>,
    /// At most this many (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}\.[0-9a-f]{8}$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events after this id (default 0: from the start); at most the newest
    /// event id there is (past it is `400 invalid_since`, naming the id to go on from).
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Only this repository's events.
    pub repo: Option<String>,
    /// Only this task's events.
    pub task: Option<String>,
    /// A kind (`task.created`), or a prefix ending in `.` or `.*` (`task.`).
    pub kind: Option<String>,
    /// One ACP session's events (its journal and status).
    pub session: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// The newest N events (after `since`, when given) instead of the oldest.
    #[param(minimum = 1, maximum = 1000)]
    pub tail: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Replay the events after this id first; at most the newest event id there is.
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Only this task's events.
    pub task: Option<String>,
    /// Only this ACP session's events.
    pub session: Option<String>,
    /// The token, for clients that cannot send headers (read by the auth extractor).
    pub access_token: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TerminalQuery {
    /// Send the terminal output from this byte offset (default 0: all that is kept).
    pub offset: Option<u64>,
    pub access_token: Option<String>,
}

/// A text frame a terminal client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalControl {
    Resize { cols: u16, rows: u16 },
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1-100 characters, stored without leading and trailing white space.
    #[schema(max_length = 100, pattern = r"[^ \t\n\f\r]")]
    pub name: String,
}

/// `POST …/tasks/{task}/sessions`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The sandbox-agent agent id; the task profile's `acp` when absent.
    pub agent: Option<String>,
    pub mode: Option<String>,
    pub model: Option<String>,
}

/// `POST …/sessions/{session}/prompt`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionPrompt {
    /// At most 131072 characters, not all white space.
    #[schema(max_length = 131072, pattern = r"[^ \t\n\f\r]")]
    pub text: String,
}

/// `POST …/sessions/{session}/permissions/{request}`: an option, or `cancelled`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionAnswer {
    pub option_id: Option<String>,
    /// `"cancelled"` declines without choosing.
    pub outcome: Option<String>,
}

// ---- Answers ----------------------------------------------------------------

/// One predicted conflict (`GET …/repos/{repo}/conflicts`): two active tasks
/// of one base branch that would conflict if both were merged, or a task that
/// would conflict with its base branch as it is now. Uncommitted work counts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Conflict {
    /// The task; for a pair, the one with the smaller id.
    pub task: String,
    pub task_branch: String,
    /// The other task's id, or `base` for the task's base branch.
    pub other: String,
    /// The other task's branch, or the name of the base branch.
    pub other_branch: String,
    /// The files that would conflict, by path (at most 200).
    pub files: Vec<String>,
    /// When this conflict was first predicted (unix ms).
    pub since: i64,
    /// When its files last changed (unix ms).
    pub updated_at: i64,
}

/// A list: `{"items": [...]}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// `GET …/events`: a page of the history, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<crate::actors::history::Event>,
    /// The `since` that continues the listing.
    pub next_since: i64,
}

/// `POST …/tokens`: the token row and its secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub row: crate::db::models::ApiToken,
    /// The bearer token itself (`kiln_…`). It is not stored and cannot be read again.
    pub token: String,
}

/// Where an action's sandbox is; `path` only for the admin.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SandboxRef {
    pub path: Option<String>,
}

/// `POST …/sessions/{session}/cancel`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    pub session: String,
    pub cancelled: bool,
    /// Permission requests answered `cancelled` with the turn.
    pub permissions_cancelled: u64,
}

/// `POST …/sessions/{session}/permissions/{request}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PermissionAnswered {
    pub session: String,
    pub request: String,
    /// The ACP outcome sent to the agent: `{"outcome": "selected", "optionId": …}`
    /// or `{"outcome": "cancelled"}`.
    pub outcome: serde_json::Value,
}

/// The optional body of `POST /admin/repos/maintain`: which mirrors (default: all of them).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintainRepos {
    /// Only this organization's repositories.
    pub organization: Option<String>,
    /// Only repositories of this name (with `organization`: that one).
    pub repo: Option<String>,
}

/// A mirror's object store, as `git count-objects -v` counts it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct ObjectStore {
    /// Loose objects (one file each).
    pub loose: u64,
    /// Objects in packs.
    pub in_packs: u64,
    /// Pack files.
    pub packs: u64,
}

impl From<crate::integrations::git::ObjectCounts> for ObjectStore {
    fn from(c: crate::integrations::git::ObjectCounts) -> Self {
        ObjectStore { loose: c.loose, in_packs: c.in_packs, packs: c.packs }
    }
}

/// What `POST /admin/repos/maintain` did to one repository's mirror.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MirrorMaintained {
    pub organization: String,
    pub repo: String,
    /// `packed`; `skipped` (it has active tasks: `reason`); `failed` (`reason` is git's message).
    pub outcome: String,
    pub reason: Option<String>,
    /// The object store before and after (`packed` only).
    pub before: Option<ObjectStore>,
    pub after: Option<ObjectStore>,
    pub ms: u64,
}

/// `POST /admin/db/checkpoint`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    pub completed: bool,
    pub wal_frames: i64,
}

/// `POST /admin/db/backup`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Backup {
    /// The backup's path on the server.
    pub path: String,
    pub bytes: u64,
}

/// `POST /admin/pollers/{key}/{op}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PollerDone {
    pub key: String,
    pub done: String,
}

/// `POST /v1/webhooks/github`: a delivery accepted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookAccepted {
    pub delivery: String,
    pub event: String,
    /// The repositories (in the signing organization) it concerns.
    pub repositories: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::parse;

    /// What the CLI sends (these types, serialized) is what the server's
    /// extractor reads back, field for field: the client and the server share
    /// one definition, so they cannot drift apart.
    #[test]
    fn the_cli_bodies_are_what_the_server_reads() {
        let action = TaskAction { commit: Some("wip".into()), force: Some(true), ..Default::default() };
        let back: TaskAction = parse(&serde_json::to_vec(&action).unwrap()).unwrap();
        assert_eq!((back.commit.as_deref(), back.force, back.text), (Some("wip"), Some(true), None));
        let task = CreateTask {
            repo: "app".into(),
            description: "fix it".into(),
            title: None,
            base_branch: Some("main".into()),
            agent: None,
            provider: Some("worktree".into()),
        };
        let back: CreateTask = parse(&serde_json::to_vec(&task).unwrap()).unwrap();
        assert_eq!((back.repo.as_str(), back.base_branch.as_deref()), ("app", Some("main")));
        let answer = PermissionAnswer { option_id: None, outcome: Some("cancelled".into()) };
        let back: PermissionAnswer = parse(&serde_json::to_vec(&answer).unwrap()).unwrap();
        assert_eq!(back.outcome.as_deref(), Some("cancelled"));
        let settings = crate::db::models::RepoSettings { github: Some("acme/app".into()), ..Default::default() };
        let back: crate::db::models::RepoSettings = parse(&serde_json::to_vec(&settings).unwrap()).unwrap();
        assert_eq!(back.github.as_deref(), Some("acme/app"));
        // A field the server does not know is refused, so a rename on one side shows.
        let renamed = serde_json::json!({"repository": "app", "description": "x"});
        assert_eq!(parse::<CreateTask>(renamed.to_string().as_bytes()).unwrap_err().code(), "invalid_body");
    }
}
