//! Request bodies and query strings. Unknown fields are refused, so a typo is an
//! error rather than a silently ignored setting.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    pub name: String,
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrganization {
    pub display_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutProviderProfile {
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub secrets: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRepo {
    /// An absolute path on the server's host, or a URL git can clone.
    pub source: String,
    /// Defaults to the last segment of the source.
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    pub repo: String,
    pub description: String,
    pub title: Option<String>,
    pub base_branch: Option<String>,
    pub agent: Option<String>,
    pub provider: Option<String>,
}

/// `PUT …/repos/{repo}/setup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSetup {
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub copy: Vec<String>,
}

/// The optional body of `POST …/tasks/{task}/{action}`.
#[derive(Debug, Default, Deserialize)]
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
    pub mode: Option<String>,
    /// For `pr`: open it as a draft.
    pub draft: Option<bool>,
    /// For `merge`: `squash` (default), `merge` or `rebase`.
    pub method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    pub repo: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub since: Option<i64>,
    pub repo: Option<String>,
    pub task: Option<String>,
    pub kind: Option<String>,
    /// One ACP session's events (its journal and status).
    pub session: Option<String>,
    pub limit: Option<i64>,
    /// The newest N events instead of the ones after `since`.
    pub tail: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub since: Option<i64>,
    /// Only this task's events.
    pub task: Option<String>,
    /// Only this ACP session's events.
    pub session: Option<String>,
    /// The token, for clients that cannot send headers (read by the auth extractor).
    pub access_token: Option<String>,
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
}

/// `POST …/tasks/{task}/sessions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The sandbox-agent agent id; the task profile's `acp` when absent.
    pub agent: Option<String>,
    pub mode: Option<String>,
    pub model: Option<String>,
}

/// `POST …/sessions/{session}/prompt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPrompt {
    pub text: String,
}

/// `POST …/sessions/{session}/permissions/{request}`: an option, or `cancelled`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionAnswer {
    pub option_id: Option<String>,
    /// `"cancelled"` declines without choosing.
    pub outcome: Option<String>,
}
