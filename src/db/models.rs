//! Row types, as read from the database and sent over the API.

use diesel::prelude::*;
use serde::Serialize;

use crate::db::schema::*;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[diesel(table_name = organizations)]
pub struct Organization {
    pub name: String,
    pub display_name: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A token row; `token_hash` never leaves the server.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[diesel(table_name = api_tokens)]
pub struct ApiToken {
    pub id: String,
    pub organization: String,
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = repos)]
pub struct Repo {
    pub id: i32,
    pub organization: String,
    pub name: String,
    pub source: String,
    pub source_kind: String,
    #[serde(skip)]
    pub mirror_path: String,
    pub default_branch: String,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(serialize_with = "json_text")]
    #[schema(value_type = crate::http::dto::RepoSetup)]
    pub setup: String,
    #[serde(serialize_with = "json_text")]
    #[schema(value_type = RepoSettings)]
    pub settings: String,
    /// `admin` or `organization`: which token registered it (the host policy
    /// applies to an organization's). Not shown.
    #[serde(skip)]
    pub registered_by: String,
}

/// A repository's setup step, stored as JSON in `repos.setup` (the API shows
/// it as `dto::RepoSetup`, its request body).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RepoSetup {
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub copy: Vec<String>,
}

impl Repo {
    pub fn setup(&self) -> RepoSetup {
        serde_json::from_str(&self.setup).unwrap_or_default()
    }

    pub fn settings(&self) -> RepoSettings {
        serde_json::from_str(&self.settings).unwrap_or_default()
    }

    /// `owner/name` on GitHub: the setting, else derived from a github.com source.
    pub fn github(&self) -> Option<String> {
        self.settings().github.or_else(|| github_slug(&self.source))
    }
}

/// `owner/name` of a github.com URL (https or ssh), if it is one.
pub fn github_slug(source: &str) -> Option<String> {
    let rest = source
        .strip_prefix("https://github.com/")
        .or_else(|| source.strip_prefix("http://github.com/"))
        .or_else(|| source.strip_prefix("ssh://git@github.com/"))
        .or_else(|| source.strip_prefix("git@github.com:"))?;
    let rest = rest.trim_end_matches('/').trim_end_matches(".git");
    let mut parts = rest.split('/');
    let (owner, name) = (parts.next()?, parts.next()?);
    (parts.next().is_none() && !owner.is_empty() && !name.is_empty()).then(|| format!("{owner}/{name}"))
}

/// A repository's settings, stored as JSON in `repos.settings`. Everything that
/// makes Kiln act on its own is off by default.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoSettings {
    /// `owner/name` on GitHub, when the source URL does not say it.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$")]
    pub github: Option<String>,
    /// Keep a task (and its sandbox) after its PR is merged through Kiln,
    /// instead of archiving it.
    #[serde(default)]
    pub keep_after_merge: bool,
    #[serde(default)]
    pub automation: Automation,
    /// What Kiln does on its own about a task's pull request or agent (docs/git.md, "Reactions").
    #[serde(default)]
    pub reactions: Reactions,
    /// Issues in: open GitHub issues with a label become tasks (docs/git.md, "Issues in").
    #[serde(default)]
    pub issues: IssueIntake,
}

/// Issues in (docs/git.md): each open issue carrying `label` becomes one task,
/// at most `max_active` of them active at a time. Off by default.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueIntake {
    #[serde(default)]
    pub enabled: bool,
    /// The label that asks for a task (compared without case, as GitHub does):
    /// 1-50 characters, no comma, no control character.
    #[serde(default = "default_issue_label")]
    #[schema(pattern = r"^[^,\x00-\x1f\x7f]{1,50}$")]
    pub label: String,
    /// The agent profile the tasks get; the server's `tasks.default_agent` when absent.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub agent: Option<String>,
    /// At most this many tasks made from issues are active (not finished) at
    /// once; further issues wait for one to finish.
    #[serde(default = "default_issue_max_active")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_active: u32,
}

impl Default for IssueIntake {
    fn default() -> Self {
        IssueIntake { enabled: false, label: default_issue_label(), agent: None, max_active: default_issue_max_active() }
    }
}

fn default_issue_label() -> String {
    "kiln".into()
}

fn default_issue_max_active() -> u32 {
    5
}

impl IssueIntake {
    /// Whether `label` is one the schema allows (the same rule as its pattern).
    pub fn label_is_valid(label: &str) -> bool {
        (1..=50).contains(&label.chars().count()) && !label.chars().any(|c| c == ',' || c.is_ascii_control())
    }

    /// Whether `agent` is a name the schema allows.
    pub fn agent_is_valid(agent: &str) -> bool {
        (1..=64).contains(&agent.len()) && agent.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Automation {
    /// When a task goes idle: commit what the agent left, push, open a draft PR.
    #[serde(default)]
    pub on_idle: OnIdle,
    /// When CI fails on a task's PR: hand the failure to the agent.
    #[serde(default)]
    pub on_ci_failure: OnCiFailure,
    /// Archive a task whose PR was merged or closed outside Kiln.
    #[serde(default)]
    pub archive_on_external_merge: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnIdle {
    /// Commit what the agent left.
    #[serde(default)]
    pub commit: bool,
    /// Push the task's branch.
    #[serde(default)]
    pub push: bool,
    /// Open a draft pull request when the task has none.
    #[serde(default)]
    pub draft_pr: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnCiFailure {
    #[serde(default)]
    pub enabled: bool,
    /// At most this many hand-overs per task.
    #[serde(default = "default_ci_attempts")]
    #[schema(maximum = 20)]
    pub max_attempts: u32,
}

impl Default for OnCiFailure {
    fn default() -> Self {
        OnCiFailure { enabled: false, max_attempts: default_ci_attempts() }
    }
}

fn default_ci_attempts() -> u32 {
    3
}

/// Reactions, each off by default. Every firing is a `reaction.fired` event and a
/// `task_reactions` row, so one cause fires once, also across restarts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reactions {
    /// A failing check on the PR's head: its name, conclusion, link and output
    /// (annotations, log tail) go to the agent.
    #[serde(default)]
    pub ci_failed: DeliverReaction,
    /// A human reviewer requested changes or commented: the new review comments
    /// (file, line, quoted code, text) go to the agent as one message.
    #[serde(default)]
    pub changes_requested: DeliverReaction,
    /// The same for bots (logins ending in `[bot]`, or listed in `bot_logins`).
    #[serde(default)]
    pub bot_comments: DeliverReaction,
    /// More logins to treat as bots (compared without case).
    #[serde(default)]
    #[schema(max_items = 50, value_type = Vec<BotLogin>)]
    pub bot_logins: Vec<String>,
    /// The PR no longer merges cleanly with its base.
    #[serde(default)]
    pub merge_conflict: ConflictReaction,
    /// The agent runs without output, or sits idle without a PR, too long.
    #[serde(default)]
    pub agent_stuck: StuckReaction,
    /// Approved, every check green, no conflict: merge (opt-in) or say it is ready.
    #[serde(default)]
    pub approved_and_green: GreenReaction,
}

/// A reaction that hands something to the agent, at most `max_attempts` times
/// per task; the next one is escalated (`reaction.escalated`) instead.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverReaction {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_ci_attempts")]
    #[schema(maximum = 20)]
    pub max_attempts: u32,
}

impl Default for DeliverReaction {
    fn default() -> Self {
        DeliverReaction { enabled: false, max_attempts: default_ci_attempts() }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConflictReaction {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_ci_attempts")]
    #[schema(maximum = 20)]
    pub max_attempts: u32,
    /// Sync (rebase onto the base) and push on Kiln's own when that is clean;
    /// the agent is told only when it is not.
    #[serde(default)]
    pub auto_sync: bool,
}

impl Default for ConflictReaction {
    fn default() -> Self {
        ConflictReaction { enabled: false, max_attempts: default_ci_attempts(), auto_sync: false }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StuckReaction {
    #[serde(default)]
    pub enabled: bool,
    /// `running` without terminal output for this long.
    #[serde(default = "default_silent_secs")]
    #[schema(minimum = 1)]
    pub silent_secs: u64,
    /// `idle` without a pull request for this long.
    #[serde(default = "default_idle_without_pr_secs")]
    #[schema(minimum = 1)]
    pub idle_without_pr_secs: u64,
}

impl Default for StuckReaction {
    fn default() -> Self {
        StuckReaction { enabled: false, silent_secs: default_silent_secs(), idle_without_pr_secs: default_idle_without_pr_secs() }
    }
}

fn default_silent_secs() -> u64 {
    1800
}

fn default_idle_without_pr_secs() -> u64 {
    3600
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GreenReaction {
    #[serde(default)]
    pub enabled: bool,
    /// Merge it (with `method`); off: only say it is ready.
    #[serde(default)]
    pub merge: bool,
    /// `squash`, `merge` or `rebase`.
    #[serde(default = "default_merge_method")]
    #[schema(pattern = "^(squash|merge|rebase)$")]
    pub method: String,
}

impl Default for GreenReaction {
    fn default() -> Self {
        GreenReaction { enabled: false, merge: false, method: default_merge_method() }
    }
}

fn default_merge_method() -> String {
    "squash".into()
}

impl RepoSettings {
    /// `reactions.ci_failed`, or the older `automation.on_ci_failure` it replaced
    /// when only that is on (kept working: docs/git.md).
    pub fn ci_failed_reaction(&self) -> DeliverReaction {
        let legacy = &self.automation.on_ci_failure;
        if !self.reactions.ci_failed.enabled && legacy.enabled {
            return DeliverReaction { enabled: true, max_attempts: legacy.max_attempts };
        }
        self.reactions.ci_failed.clone()
    }

    /// Whether `login` is a bot: a `[bot]` suffix (GitHub Apps) or one of `bot_logins`.
    pub fn is_bot(&self, login: &str) -> bool {
        login.ends_with("[bot]") || self.reactions.bot_logins.iter().any(|b| b.eq_ignore_ascii_case(login))
    }
}

/// Serializes a JSON text column as the JSON it holds.
fn json_text<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    serde::Serialize::serialize(&value, s)
}

/// A new `repos` row. Its credential is write-only: `Repo` does not read it back.
#[derive(Clone, Insertable)]
#[diesel(table_name = repos)]
pub struct NewRepo {
    pub organization: String,
    pub name: String,
    pub source: String,
    pub source_kind: String,
    pub mirror_path: String,
    pub default_branch: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub credential_user: Option<String>,
    pub credential_secret: Option<String>,
    pub registered_by: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = branches)]
pub struct Branch {
    #[serde(skip)]
    pub repo_id: i32,
    pub name: String,
    pub head_sha: String,
    pub ahead: Option<i32>,
    pub behind: Option<i32>,
    pub updated_at: i64,
    pub dirty_files: Option<i32>,
}

/// One predicted conflict as stored: a pair of tasks (`task_id` < `other`) or a
/// task and its base (`other` = `base`). `files` is a JSON array.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = task_conflicts)]
pub struct TaskConflict {
    pub repo_id: i32,
    pub task_id: String,
    pub other: String,
    pub files: String,
    pub since: i64,
    pub updated_at: i64,
}

impl TaskConflict {
    /// The files, as stored.
    pub fn file_list(&self) -> Vec<String> {
        serde_json::from_str(&self.files).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = pull_requests)]
pub struct PullRequest {
    #[serde(skip)]
    pub repo_id: i32,
    pub number: i32,
    pub state: String,
    pub draft: bool,
    pub title: String,
    pub url: String,
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    pub mergeable: Option<bool>,
    pub ci_state: Option<String>,
    pub review_decision: Option<String>,
    pub updated_at: i64,
    /// The head's checks as JSON (`integrations::github::Check`s); `None` until
    /// the PR poller has looked. The API shows them parsed, as `checks`.
    #[serde(skip)]
    pub checks: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[diesel(table_name = tasks)]
pub struct Task {
    pub id: String,
    pub organization: String,
    #[serde(skip)]
    pub repo_id: i32,
    pub title: String,
    pub description: String,
    pub base_branch: String,
    pub branch: String,
    pub agent: String,
    pub provider: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub awaiting_input: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = task_runtime)]
pub struct TaskRuntime {
    #[serde(skip)]
    pub task_id: String,
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub started_at: Option<i64>,
    pub last_output_at: Option<i64>,
    pub updated_at: i64,
    pub ci_feedback_count: i32,
    /// The remote branch Kiln last pushed the task to, and the commit it pushed:
    /// the lease a later forced push may replace (see docs/git.md).
    pub pushed_branch: Option<String>,
    pub pushed_sha: Option<String>,
    /// Whether the agent last started runs confined (`null`: not known, started
    /// before Kiln recorded it).
    pub confined: Option<bool>,
    /// The Landlock ABI its rules were made for, when confined.
    pub confine_abi: Option<i32>,
    /// Why the terminal log cannot be written, while it cannot.
    pub log_error: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = sandbox_instances)]
pub struct SandboxInstance {
    pub id: String,
    #[serde(skip)]
    pub organization: String,
    #[serde(skip)]
    pub task_id: String,
    pub provider: String,
    pub state: String,
    pub path: Option<String>,
    pub remote_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// A remote sandbox's power state: `started`, `stopping`, `stopped` (auto-stopped
    /// for idleness, or stopped by Daytona) or `starting` (resuming); `null` for
    /// providers without one (worktree). See docs/providers.md, "Auto-stop".
    pub run_state: Option<String>,
    /// When it was last stopped while its task was active (unix ms); `null` while it runs.
    pub auto_stopped_at: Option<i64>,
    /// Who stopped it: `kiln` (idle for `auto_stop_minutes`) or `daytona`.
    pub stopped_by: Option<String>,
}

/// One persisted event. `data` is stored as JSON text and sent as JSON.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events)]
pub struct EventRow {
    pub id: i64,
    pub organization: String,
    pub repo: Option<String>,
    pub task: Option<String>,
    pub kind: String,
    pub at: i64,
    pub data: String,
    pub session: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = events)]
pub struct NewEventRow<'a> {
    pub organization: &'a str,
    pub repo: Option<&'a str>,
    pub task: Option<&'a str>,
    pub kind: &'a str,
    pub at: i64,
    pub data: String,
    pub session: Option<&'a str>,
}

/// One ACP session of a task (written only by the TaskActor).
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = task_sessions)]
pub struct TaskSession {
    pub id: String,
    pub task_id: String,
    /// The sandbox-agent agent id (`claude`, `codex`, …).
    pub agent: String,
    /// The ACP server id on the sandbox's sandbox-agent (one per session
    /// generation: a restore makes a new one).
    pub acp_server_id: String,
    /// The agent's own session id (`sess_…`), once `session/new` answered.
    pub remote_session_id: Option<String>,
    /// `starting`, `ready`, `prompting`, `closed` or `lost`.
    pub status: String,
    /// The last SSE event id journaled from the current ACP instance, as of
    /// the session's last change of state (the journal itself is exact).
    pub last_remote_seq: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub mode: Option<String>,
    pub model: Option<String>,
    pub stop_reason: Option<String>,
    pub awaiting_input: bool,
    /// The instance's `createdAtMs`: a change means its sequence restarted.
    pub remote_epoch: Option<i64>,
    /// The agent can `session/load`.
    pub load_session: bool,
    pub last_error: Option<String>,
    /// The session's view as of journal event `checkpoint_event_id` (internal).
    #[serde(skip)]
    pub checkpoint: Option<String>,
    #[serde(skip)]
    pub checkpoint_event_id: i64,
}

/// A one-time dashboard sign-in code; only the hash of the code is stored.
/// `token_id` is the organization token it signs in as (`None`: the admin).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = web_sign_in_codes)]
pub struct SignInCode {
    pub code_hash: String,
    pub organization: String,
    pub token_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A signed-in browser: the cookie carries the id, the row its hash. It acts as
/// `token_id` (`None`: the admin) on `organization`'s board until `expires_at`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = web_sessions)]
pub struct WebSession {
    pub id_hash: String,
    pub organization: String,
    pub token_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// One cause Kiln reacted to (written only by the TaskActor).
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = task_reactions)]
pub struct TaskReaction {
    #[serde(skip)]
    pub task_id: String,
    /// `ci_failed`, `changes_requested`, `bot_comments`, `merge_conflict`,
    /// `agent_stuck` or `approved_and_green`.
    pub cause: String,
    /// What made it distinct: `<check>@<sha>`, `review:<id>`, `comment:<id>`,
    /// `conflict@<sha>`, `ready@<sha>`, `silent@<ms>`, `idle@<ms>` or `escalated`.
    pub cause_key: String,
    /// The firing, counted per task and cause from 1.
    pub attempt: i32,
    /// `pending` (being delivered), `delivered`, `synced`, `merged`,
    /// `notified`, `escalated` or `failed`.
    pub outcome: String,
    pub fired_at: i64,
}

/// The GitHub issue a task was made from (written only by the TaskActor, in
/// the same transaction as the task; one task per issue and repository).
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = task_issues)]
pub struct TaskIssue {
    #[serde(skip)]
    pub task_id: String,
    #[serde(skip)]
    pub repo_id: i32,
    /// The issue's number in its repository.
    #[serde(rename = "number")]
    pub issue_number: i64,
    /// The issue on GitHub (its `html_url`).
    pub url: String,
    /// The issue's title when the task was made.
    pub title: String,
    /// The comment that reports the task's PR on the issue: `none` (no PR
    /// yet), `pending` (being posted), `posted` or `failed` (given up).
    pub comment_state: String,
    #[serde(skip)]
    pub comment_attempts: i32,
    /// The comment, once posted.
    pub comment_url: Option<String>,
    pub created_at: i64,
}

/// A GitHub login in `reactions.bot_logins` (the schema of each item; the
/// field itself is a plain string list).
#[derive(utoipa::ToSchema)]
#[schema(pattern = r"^[A-Za-z0-9_.\[\]-]{1,100}$")]
#[allow(dead_code)]
pub struct BotLogin(String);
