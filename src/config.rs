//! Layered configuration.
//!
//! Layers, each over the one before: the compiled-in `config/default.toml`, the user
//! file `$XDG_CONFIG_HOME/kiln/config.toml`, `--config FILE`, then `KILN_*`
//! environment variables. An environment variable names a key in lower case with
//! `__` between a section and its key (`KILN_SERVER__BIND`, `KILN_DATA_DIR`).
//! Unknown keys in a file are an error, so a typo never goes unnoticed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The compiled-in defaults.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot write config file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: String,
    pub default_organization: String,
    pub sandbox_agent_bin: String,
    pub server: ServerConfig,
    pub client: ClientConfig,
    pub database: DatabaseConfig,
    pub events: EventsConfig,
    pub tasks: TasksConfig,
    pub repos: ReposConfig,
    pub github: GithubConfig,
    pub terminal: TerminalConfig,
    pub auth: AuthConfig,
    pub dashboard: DashboardConfig,
    pub sessions: SessionsConfig,
    pub sandboxes: SandboxesConfig,
    pub notifications: NotificationsConfig,
    pub agents: BTreeMap<String, AgentProfile>,
    /// The config files this was loaded from (never granted to agents).
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// How agents are confined (`docs/operations.md`, "Agent confinement").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxesConfig {
    pub confine: ConfineMode,
    /// The lowest Landlock ABI that counts as "the kernel can confine".
    pub confine_min_abi: u32,
    /// Extra absolute paths every agent may read and run (toolchains outside PATH).
    pub allow_read: Vec<String>,
    /// Extra absolute paths every agent may read and write (shared caches).
    pub allow_write: Vec<String>,
}

/// `auto`: confine where the kernel can, say so loudly where it cannot;
/// `required`: never start an agent unconfined; `off`: never confine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfineMode {
    Auto,
    Required,
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// The restore preamble holds at most this many transcript items...
    pub preamble_max_events: usize,
    /// ...and at most this many characters.
    pub preamble_max_chars: usize,
    /// How long closing a session waits for sandbox-agent's DELETE.
    pub close_timeout_ms: u64,
    /// After a restart, how long a prompt journaled just before Kiln stopped
    /// may show no sign of reaching the agent before its turn is ended as
    /// undelivered.
    pub undelivered_grace_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalConfig {
    pub log_max_bytes: u64,
    pub cols: u16,
    pub rows: u16,
    pub kill_grace_secs: u64,
    pub host_program: String,
    /// Each sandbox's agent in a cgroup v2 of its own, where one can be made.
    pub cgroup: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub bind: String,
    pub max_body_bytes: usize,
    pub workers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub url: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub busy_timeout_ms: u32,
    pub read_pool_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    pub batch_max: usize,
    pub subscriber_buffer: usize,
    pub heartbeat_secs: u64,
    pub client_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    pub actor_idle_secs: u64,
    pub status_poll_ms: u64,
    pub default_agent: String,
    pub default_provider: String,
    /// How long a remote sandbox whose task is gone or over (found by its labels
    /// at boot) is kept after it is reported, before it is deleted.
    #[serde(default = "default_orphan_grace_secs")]
    pub orphan_grace_secs: u64,
    /// How often remote sandboxes are listed by their labels to find orphans
    /// (at boot, then every this many seconds).
    #[serde(default = "default_orphan_sweep_secs")]
    pub orphan_sweep_secs: u64,
}

fn default_orphan_grace_secs() -> u64 {
    600
}

fn default_orphan_sweep_secs() -> u64 {
    300
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReposConfig {
    pub allow_local_paths: bool,
    /// Folders under which an organization's token may register local paths
    /// (`{organization}` is replaced by the caller's organization). Empty: only
    /// the admin token may register local paths.
    pub local_roots: Vec<String>,
    pub clone_timeout_secs: u64,
    pub branch_poll_ms: u64,
    pub fetch_secs: u64,
    /// Refuse source URLs of an organization's token whose host is (or resolves
    /// to) a loopback, link-local or private address; at registration and at
    /// every fetch. The admin token is not held to it.
    pub deny_private_hosts: bool,
    /// Hosts an organization's source URL may name even when they are private
    /// (`git.corp.example`, or `*.corp.example` for every name under it).
    pub allowed_hosts: Vec<String>,
    /// Predict conflicts between active tasks, and against their base, at
    /// every branch poll (docs/git.md, "Conflict prediction").
    pub predict_conflicts: bool,
}

/// Outbound webhooks (docs/notifications.md): where they may go and how they
/// are retried.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Refuse a webhook whose host is, or resolves to, a loopback, link-local
    /// or private address (for every caller, the admin too); at creation and
    /// again before every attempt.
    pub deny_private_hosts: bool,
    /// Hosts a webhook may name even so (`hooks.corp.example`, `*.corp.example`).
    pub allowed_hosts: Vec<String>,
    /// Only `allowed_hosts` may be named at all, public hosts included.
    pub only_allowed_hosts: bool,
    /// Longest one attempt may take (connect, send, answer).
    pub timeout_ms: u64,
    /// Attempts per delivery before it is given up.
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles each time, up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts in flight at once, over every webhook (one per webhook at a time).
    pub concurrency: usize,
    /// Inbox entries kept per organization (the oldest go first).
    pub inbox_keep: i64,
    /// Finished deliveries kept per webhook in the delivery log.
    pub log_keep: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    pub pr_poll_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
}

/// The web dashboard's sign-in (docs/dashboard.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// How long a browser stays signed in, from sign-in (not sliding).
    pub session_ttl_secs: u64,
}

/// One named agent program and how to start and resume it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    pub command: Vec<String>,
    pub resume: Vec<String>,
    #[serde(default)]
    pub prompt: PromptMode,
    #[serde(default = "default_idle_secs")]
    pub idle_secs: u64,
    /// The sandbox-agent agent id, for structured sessions over ACP.
    #[serde(default)]
    pub acp: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_idle_secs() -> u64 {
    30
}

/// How the task description reaches the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptMode {
    /// Appended to the command as its last argument.
    #[default]
    Argument,
    /// Typed into the terminal as the first input.
    Input,
    /// Not handed over.
    None,
}

impl Config {
    /// Loads every layer. `explicit` is the `--config FILE` argument.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(user_config_path().as_deref(), explicit, &env)
    }

    /// Loads the layers from the given sources; `load` feeds it the real ones.
    pub fn load_from(
        user_file: Option<&Path>,
        explicit: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut merged: toml::Value = toml::from_str(DEFAULTS).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("config/default.toml"),
            message: e.to_string(),
        })?;
        let mut files = Vec::new();
        if let Some(path) = user_file.filter(|p| p.exists()) {
            merge(&mut merged, read_toml(path)?);
            files.push(path.to_path_buf());
        }
        if let Some(path) = explicit {
            merge(&mut merged, read_toml(path)?);
            files.push(path.to_path_buf());
        }
        for (name, value) in env {
            if let Some(key) = name.strip_prefix("KILN_") {
                if !apply_env(&mut merged, key, value) && !CLIENT_ENV.contains(&name.as_str()) {
                    log::warn!("{name} names no config key and is ignored (sections and keys are joined by `__`)");
                }
            }
        }
        let mut config: Config = merged
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        config.files = files;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.database.read_pool_size == 0 {
            return Err(ConfigError::Invalid("database.read_pool_size must be at least 1".into()));
        }
        if self.events.batch_max == 0 || self.events.subscriber_buffer == 0 {
            return Err(ConfigError::Invalid(
                "events.batch_max and events.subscriber_buffer must be at least 1".into(),
            ));
        }
        if self.events.client_timeout_secs <= self.events.heartbeat_secs {
            return Err(ConfigError::Invalid(
                "events.client_timeout_secs must be longer than events.heartbeat_secs".into(),
            ));
        }
        for (name, agent) in &self.agents {
            if agent.command.is_empty() || agent.resume.is_empty() {
                return Err(ConfigError::Invalid(format!("agents.{name}.command and .resume must not be empty")));
            }
        }
        if self.terminal.cols == 0 || self.terminal.rows == 0 || self.terminal.log_max_bytes < 4096 {
            return Err(ConfigError::Invalid("terminal.cols/rows must be positive and log_max_bytes at least 4096".into()));
        }
        if self.tasks.default_provider != "worktree" {
            return Err(ConfigError::Invalid(format!(
                "tasks.default_provider `{}` is not available: this build has the `worktree` provider",
                self.tasks.default_provider
            )));
        }
        if !(100..=3_600_000).contains(&self.repos.branch_poll_ms) || !(100..=3_600_000).contains(&self.github.pr_poll_ms) {
            return Err(ConfigError::Invalid("repos.branch_poll_ms and github.pr_poll_ms must be between 100 and 3600000".into()));
        }
        if !(100..=600_000).contains(&self.tasks.status_poll_ms) {
            return Err(ConfigError::Invalid("tasks.status_poll_ms must be between 100 and 600000".into()));
        }
        if let Some(bad) = self.repos.local_roots.iter().find(|r| !r.starts_with('/')) {
            return Err(ConfigError::Invalid(format!("repos.local_roots: `{bad}` is not an absolute path")));
        }
        if self.sandboxes.confine_min_abi < crate::confine::LOWEST_USABLE_ABI {
            return Err(ConfigError::Invalid(format!(
                "sandboxes.confine_min_abi must be at least {}: under Landlock ABI 1 git cannot move files between folders",
                crate::confine::LOWEST_USABLE_ABI
            )));
        }
        for path in self.sandboxes.allow_read.iter().chain(&self.sandboxes.allow_write) {
            if !path.starts_with('/') {
                return Err(ConfigError::Invalid(format!("sandboxes.allow_read/allow_write take absolute paths, not `{path}`")));
            }
        }
        if !self.agents.contains_key(&self.tasks.default_agent) {
            return Err(ConfigError::Invalid(format!(
                "tasks.default_agent `{}` is not an agent profile",
                self.tasks.default_agent
            )));
        }
        Ok(())
    }

    /// The data directory, with the XDG default filled in.
    pub fn data_dir(&self) -> PathBuf {
        if !self.data_dir.is_empty() {
            return expand_home(&self.data_dir);
        }
        match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("kiln"),
            None => home_dir().join(".local/share/kiln"),
        }
    }

    /// The base URL the CLI talks to.
    pub fn client_url(&self) -> String {
        if !self.client.url.is_empty() {
            return self.client.url.trim_end_matches('/').to_string();
        }
        let bind = self.server.bind.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
        format!("http://{bind}")
    }

    /// The organization a command acts on: the flag, then `default_organization`,
    /// then `default`.
    pub fn resolve_organization(&self, flag: Option<&str>) -> String {
        flag.filter(|s| !s.is_empty())
            .or(Some(self.default_organization.as_str()).filter(|s| !s.is_empty()))
            .unwrap_or("default")
            .to_string()
    }
}

/// `$XDG_CONFIG_HOME/kiln/config.toml`, or `~/.config/kiln/config.toml`.
pub fn user_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".config"));
    Some(base.join("kiln/config.toml"))
}

/// Sets one top-level key in the user config file, keeping everything else in it.
pub fn set_user_key(key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    let path = user_config_path().ok_or_else(|| ConfigError::Invalid("no home directory".into()))?;
    let mut doc = if path.exists() { read_toml(&path)? } else { toml::Value::Table(Default::default()) };
    if let toml::Value::Table(table) = &mut doc {
        table.insert(key.to_string(), toml::Value::String(value.to_string()));
    }
    let write_err = |source| ConfigError::Write { path: path.clone(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let text = toml::to_string_pretty(&doc).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    std::fs::write(&path, text).map_err(write_err)?;
    Ok(path)
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home_dir().join(rest),
        None => PathBuf::from(path),
    }
}

fn read_toml(path: &Path) -> Result<toml::Value, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// `KILN_*` variables that are not config keys but the CLI's own.
const CLIENT_ENV: &[&str] = &["KILN_TOKEN"];

/// Applies `KILN_SECTION__KEY=value` when that key exists in the config; answers
/// whether it did. The value is parsed as the type of the key it replaces.
fn apply_env(merged: &mut toml::Value, key: &str, raw: &str) -> bool {
    let path: Vec<String> = key.to_ascii_lowercase().split("__").map(str::to_string).collect();
    let mut slot = &mut *merged;
    for part in &path {
        match slot.get_mut(part) {
            Some(next) => slot = next,
            None => return false,
        }
    }
    let value = match slot {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Table(_) => return false,
        _ => match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
            Err(_) => toml::Value::String(raw.to_string()),
        },
    };
    *slot = value;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_parse() {
        let c = Config::load_from(None, None, &[]).unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:7420");
        assert!(c.agents.contains_key("claude"));
        assert!(c.auth.enabled);
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        let explicit = dir.path().join("explicit.toml");
        std::fs::write(&user, "default_organization = \"acme\"\n[server]\nbind = \"127.0.0.1:1\"\n").unwrap();
        std::fs::write(&explicit, "[server]\nbind = \"127.0.0.1:2\"\n").unwrap();
        let c = Config::load_from(Some(&user), Some(&explicit), &[]).unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:2");
        assert_eq!(c.default_organization, "acme");
        let c = Config::load_from(
            Some(&user),
            Some(&explicit),
            &env(&[("KILN_SERVER__BIND", "127.0.0.1:3"), ("KILN_EVENTS__BATCH_MAX", "7"), ("KILN_TOKEN", "x")]),
        )
        .unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:3");
        assert_eq!(c.events.batch_max, 7);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nbindd = \"x\"\n").unwrap();
        assert!(matches!(Config::load_from(None, Some(&file), &[]), Err(ConfigError::Invalid(_))));
        std::fs::write(&file, "[server\n").unwrap();
        assert!(matches!(Config::load_from(None, Some(&file), &[]), Err(ConfigError::Parse { .. })));
        let bad = env(&[("KILN_DATABASE__READ_POOL_SIZE", "zero")]);
        assert!(Config::load_from(None, None, &bad).is_err());
    }

    #[test]
    fn organization_resolution_order() {
        let mut c = Config::load_from(None, None, &[]).unwrap();
        c.default_organization = "acme".into();
        assert_eq!(c.resolve_organization(Some("flag")), "flag");
        assert_eq!(c.resolve_organization(None), "acme");
        c.default_organization.clear();
        assert_eq!(c.resolve_organization(None), "default");
    }
}
