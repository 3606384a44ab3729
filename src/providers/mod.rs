//! Sandbox providers: where a task's code lives and its agent runs. Each provider
//! implements `SandboxProvider`; `worktree` (a git worktree on this host, the agent
//! in a detached terminal host) is the default and needs only git.

pub mod copy_in;
pub mod daytona;
pub mod worktree;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::Serialize;

use crate::error::AppError;
use crate::terminal::protocol::{ExitInfo, HostStatus};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type ProviderResult<T> = Result<T, AppError>;

/// What a provider can do; what it cannot answers a clear error (see
/// docs/providers.md, "What each provider supports").
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProviderCapabilities {
    /// The terminal host runs on this machine, so its socket can be attached.
    pub local_terminal: bool,
    /// Work survives the server's host going away.
    pub remote: bool,
    /// The checkout is a folder on this machine (`path`, `kiln switch`, and
    /// git run by Kiln on it).
    pub local_path: bool,
    /// Where the agent's terminal runs: `local_pty` (a PTY on this machine) or
    /// `remote_pty` (sandbox-agent's process PTY in the sandbox, bridged by a
    /// local terminal host that keeps the log).
    pub terminal: &'static str,
    /// How uncommitted work is saved on kill and archive: `mirror_ref` (a
    /// commit under `refs/kiln/snapshots/<task>` in the repository's mirror).
    pub snapshot: &'static str,
    /// A port the agent serves can be reached from outside (preview URLs).
    pub ports: bool,
    /// The repository must have a remote source URL (the sandbox clones it).
    pub needs_remote_source: bool,
}

impl ProviderCapabilities {
    /// A clear 4xx for an action that needs the checkout on this machine.
    pub fn require_local_path(&self, provider: &str, what: &str) -> ProviderResult<()> {
        if self.local_path {
            return Ok(());
        }
        Err(AppError::invalid(
            "not_supported_by_provider",
            format!("{what} needs the task's checkout on this machine, and the `{provider}` provider keeps it in a remote sandbox"),
        ))
    }
}

/// One provisioning step, for the task's `sandbox.progress` events.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// `creating`, `starting`, `cloning`, `setup`, `starting_agent`.
    pub step: &'static str,
    /// How far provisioning is, 0-100.
    pub percent: u8,
    pub detail: Option<String>,
}

/// Where a provider reports provisioning steps (the task turns them into events).
pub type ProgressTx = tokio::sync::mpsc::UnboundedSender<Progress>;

/// Reports a step when someone listens.
pub fn report(tx: &Option<ProgressTx>, step: &'static str, percent: u8, detail: Option<String>) {
    if let Some(tx) = tx {
        let _ = tx.send(Progress { step, percent, detail });
    }
}

/// A repository's remote origin, for a provider that clones in the sandbox.
#[derive(Clone)]
pub struct RemoteOrigin {
    pub url: String,
    /// The user name for the secret (`x-access-token` when none).
    pub user: Option<String>,
    /// The repository's own credential, else the organization's GitHub token.
    pub secret: Option<String>,
}

impl std::fmt::Debug for RemoteOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOrigin").field("url", &self.url).field("secret", &self.secret.as_ref().map(|_| "(hidden)")).finish()
    }
}

/// What a provider checks before a task is created, so that what it cannot do
/// is a 4xx at once and nothing is left behind.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub org: String,
    pub repo: String,
    /// `path` or `url` (the repository's `source_kind`).
    pub source_kind: String,
}

/// How to start the agent: its argument vector, extra environment, and text
/// typed as its first input (if the profile hands the task over that way).
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub initial_input: Option<String>,
}

/// Everything needed to create a task's sandbox.
#[derive(Debug, Clone)]
pub struct CreateSandbox {
    pub org: String,
    pub repo: String,
    pub task: String,
    pub mirror: PathBuf,
    pub branch: String,
    pub base_branch: String,
    /// A checkout to copy untracked files (`.env`, …) from, when there is one.
    pub source_checkout: Option<PathBuf>,
    /// Paths relative to the checkout to copy, besides `.worktreeinclude`'s.
    pub copy: Vec<String>,
    /// Shell commands run in the terminal before the agent.
    pub setup: Vec<String>,
    pub launch: LaunchSpec,
    /// The repository's remote origin (none for a local-path repository).
    pub origin: Option<RemoteOrigin>,
    /// Where provisioning steps are reported.
    pub progress: Option<ProgressTx>,
}

/// What a create made: the sandbox, and what its copy-in did.
#[derive(Debug, Clone)]
pub struct Created {
    pub handle: SandboxHandle,
    /// What of `.worktreeinclude` and `setup.copy` was copied, and what was left
    /// out and why (empty without a source checkout).
    pub copy: copy_in::CopyReport,
}

/// Where a sandbox is, as the provider made it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxHandle {
    pub id: String,
    /// The checkout the agent works in.
    pub path: PathBuf,
    /// Where the terminal host keeps its socket and log.
    pub state_dir: PathBuf,
    pub mirror: PathBuf,
    /// The organization's agent home (`HOME` of its agents).
    pub home: PathBuf,
}

impl SandboxHandle {
    /// The paths a task's jail is made of.
    pub fn task_paths(&self) -> crate::confine::TaskPaths {
        crate::confine::TaskPaths {
            worktree: self.path.clone(),
            state_dir: self.state_dir.clone(),
            mirror: self.mirror.clone(),
            home: self.home.clone(),
            task: self.id.clone(),
        }
    }
}

/// Relaunch the agent in an existing sandbox (its resume command).
#[derive(Debug, Clone)]
pub struct ResumeSandbox {
    pub handle: SandboxHandle,
    pub branch: String,
    pub launch: LaunchSpec,
    /// The sandbox was stopped for idleness (or outside Kiln) and is started
    /// again transparently: the terminal log says so.
    pub after_auto_stop: bool,
}

/// Stop the agent, save uncommitted work to `snapshot_ref`, remove the sandbox.
#[derive(Debug, Clone)]
pub struct DestroySandbox {
    pub handle: SandboxHandle,
    pub snapshot_ref: String,
    pub grace: std::time::Duration,
}

/// What a destroy saved.
#[derive(Debug, Clone, Serialize)]
pub struct Destroyed {
    /// The snapshot ref and commit, when there was uncommitted work to save.
    pub snapshot: Option<(String, String)>,
    /// How the agent and what it started were stopped.
    pub stop: AgentStop,
}

/// How a destroy stopped the agent and everything it started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentStop {
    /// The last step the agent needed: `not_running`, `hangup` (SIGHUP, as when
    /// a terminal closes), `terminate` (SIGTERM) or `kill` (SIGKILL, after the
    /// grace period; also when something it left behind needed one).
    pub how: &'static str,
    /// Processes still running after the agent ended, which were stopped too.
    pub leftovers: usize,
    /// What found them: `cgroup` or `session` (see `terminal::procs`).
    pub containment: &'static str,
    /// How long stopping took.
    pub ms: u64,
}

/// A sandbox as observed now.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxHealth {
    /// The checkout is still there.
    pub exists: bool,
    /// The terminal host answered, with this status.
    pub host: Option<HostStatus>,
    /// How the agent ended, if the host recorded it.
    pub exit: Option<ExitInfo>,
    /// The sandbox-agent server, when the sandbox has one: whether it answers.
    pub agent_server: Option<bool>,
    /// Why the sandbox is gone or broken, in the provider's words (e.g.
    /// Daytona's `errorReason`); the task's `stalled` reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// The remote sandbox's state (`started`, `stopped`, …), for remote providers.
    #[serde(default)]
    pub remote_state: Option<String>,
    /// After how long an idle task's sandbox is stopped (the organization's
    /// setting, read afresh); `None`: never (a provider without auto-stop).
    #[serde(default)]
    pub auto_stop_after: Option<std::time::Duration>,
}

/// Stop a remote sandbox whose task idles (or end what is left of one that
/// was stopped outside Kiln): its agent and terminal host end, its files stay.
#[derive(Debug, Clone)]
pub struct SuspendSandbox {
    pub handle: SandboxHandle,
    /// The sandbox is stopped already (by Daytona or a person): only the
    /// terminal host, which cannot reach it, is ended.
    pub already_stopped: bool,
    /// How long the agent gets to end after its hangup.
    pub grace: std::time::Duration,
}

/// Start (or find) the sandbox's sandbox-agent server.
#[derive(Debug, Clone)]
pub struct EnsureAgent {
    pub handle: SandboxHandle,
    /// The sandbox-agent binary.
    pub bin: PathBuf,
    pub env: Vec<(String, String)>,
    /// Start the sandbox if it is stopped (a remote one); without, a stopped
    /// sandbox is `409 sandbox_stopped`.
    pub start_stopped: bool,
}

/// Where a sandbox's sandbox-agent server answers.
#[derive(Clone, Serialize, serde::Deserialize)]
pub struct AgentEndpoint {
    pub url: String,
    #[serde(skip_serializing)]
    pub token: String,
    pub port: u16,
    pub pid: u32,
    /// It was down and has been started again.
    #[serde(default)]
    pub restarted: bool,
    /// It was started by this call (not found running).
    #[serde(default, skip_serializing)]
    pub fresh: bool,
    /// Headers every request to `url` carries besides the token (a Daytona
    /// preview URL's `x-daytona-preview-token`). Secret: never serialized.
    #[serde(default, skip_serializing)]
    pub headers: Vec<(String, String)>,
    /// The checkout as the server sees it, when that is not the handle's `path`
    /// (a remote sandbox's); ACP sessions open there.
    #[serde(default, skip_serializing)]
    pub cwd: Option<String>,
}

impl std::fmt::Debug for AgentEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentEndpoint").field("url", &self.url).field("pid", &self.pid).field("token", &"(hidden)").finish()
    }
}

/// Where a client attaches to a sandbox's terminal.
#[derive(Debug, Clone)]
pub enum AttachTarget {
    /// A terminal host on this machine, by its state dir.
    Local { state_dir: PathBuf },
}

pub trait SandboxProvider: Send + Sync {
    fn id(&self) -> &str;
    fn capabilities(&self) -> ProviderCapabilities;
    /// Checks a provider profile's config; answers it normalized.
    fn validate_config(&self, cfg: &serde_json::Value) -> ProviderResult<serde_json::Value>;
    /// Where a task's sandbox is (or would be), from what the rows know.
    fn handle_for(&self, org: &str, repo: &str, task: &str, mirror: &std::path::Path) -> SandboxHandle;
    fn create(&self, req: CreateSandbox) -> BoxFuture<'_, ProviderResult<Created>>;
    fn resume(&self, req: ResumeSandbox) -> BoxFuture<'_, ProviderResult<SandboxHandle>>;
    fn destroy(&self, req: DestroySandbox) -> BoxFuture<'_, ProviderResult<Destroyed>>;
    fn health(&self, handle: SandboxHandle) -> BoxFuture<'_, ProviderResult<SandboxHealth>>;
    /// Makes sure the sandbox's sandbox-agent server runs (starting it, or
    /// starting it again if it died), and answers where it is.
    fn ensure_agent(&self, req: EnsureAgent) -> BoxFuture<'_, ProviderResult<AgentEndpoint>>;
    fn attach_target(&self, handle: &SandboxHandle) -> ProviderResult<AttachTarget>;
    /// Stops an idle task's sandbox, keeping its files (auto-stop); `resume`
    /// starts it again. Only providers whose `health` answers an
    /// `auto_stop_after` are asked.
    fn suspend(&self, _req: SuspendSandbox) -> BoxFuture<'_, ProviderResult<()>> {
        Box::pin(async { Err(AppError::invalid("not_supported_by_provider", "this provider does not stop idle sandboxes")) })
    }
    /// Checks, before a task is inserted, that this provider can take it
    /// (configured, reachable, a repository it can use): a 4xx when not.
    fn preflight(&self, _req: Preflight) -> BoxFuture<'_, ProviderResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// The providers this server offers, by name.
pub struct Providers {
    map: std::collections::BTreeMap<String, std::sync::Arc<dyn SandboxProvider>>,
}

impl Providers {
    /// The built-in set: `worktree`, rooted in the data dir, and `daytona`,
    /// which reads each organization's `daytona` profile; both take the same
    /// per-mirror git locks as the rest of Kiln.
    pub fn builtin(
        data_dir: PathBuf,
        terminal: crate::config::TerminalConfig,
        git_locks: crate::integrations::git::MirrorLocks,
        db: crate::db::pool::Db,
    ) -> Self {
        let mut map: std::collections::BTreeMap<String, std::sync::Arc<dyn SandboxProvider>> = Default::default();
        map.insert(
            "worktree".into(),
            std::sync::Arc::new(worktree::WorktreeProvider::new(data_dir.clone(), terminal.clone(), git_locks.clone())),
        );
        map.insert("daytona".into(), std::sync::Arc::new(daytona::DaytonaProvider::new(data_dir, terminal, git_locks, db)));
        Providers { map }
    }

    pub fn get(&self, name: &str) -> ProviderResult<std::sync::Arc<dyn SandboxProvider>> {
        self.map.get(name).cloned().ok_or_else(|| {
            AppError::invalid(
                "provider_unavailable",
                format!("provider `{name}` is not available on this server: use one of {}", self.names().join(", ")),
            )
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
}

/// Checks a provider profile's `config` and answers what to store: `daytona`'s
/// settings normalized (its provider is not offered yet, but its profile can be
/// set up), a provider this server offers checked by it, any other (`github`)
/// as given.
pub fn validate_profile(
    providers: &Providers,
    name: &str,
    config: serde_json::Map<String, serde_json::Value>,
) -> ProviderResult<serde_json::Map<String, serde_json::Value>> {
    if name == "daytona" {
        return daytona::settings::validate_config(&config);
    }
    if let Ok(p) = providers.get(name) {
        p.validate_config(&serde_json::Value::Object(config.clone()))?;
    }
    Ok(config)
}

/// Checks one secret a profile `PUT` sets (`null` removes it and is always fine).
pub fn validate_secret(provider: &str, name: &str, value: &serde_json::Value) -> ProviderResult<()> {
    match (provider, value.as_str()) {
        ("daytona", Some(v)) => daytona::settings::validate_secret(name, v),
        _ => Ok(()),
    }
}

/// Whether a profile secret is the agents' environment: every one but those Kiln
/// keeps for itself (`daytona`'s `api_key`, which would let an agent create and
/// delete the organization's sandboxes).
pub fn is_agent_secret(provider: &str, name: &str) -> bool {
    !(provider == "daytona" && daytona::settings::KILN_SECRETS.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_a_local_checkout_says_which_provider_has_none() {
        let remote = ProviderCapabilities {
            local_terminal: true,
            remote: true,
            local_path: false,
            terminal: "remote_pty",
            snapshot: "mirror_ref",
            ports: true,
            needs_remote_source: true,
        };
        let err = remote.require_local_path("daytona", "`switch`").unwrap_err();
        assert_eq!(err.code(), "not_supported_by_provider");
        assert!(err.to_string().contains("`switch` needs the task's checkout on this machine"), "{err}");
        assert!(ProviderCapabilities { local_path: true, ..remote }.require_local_path("worktree", "`switch`").is_ok());
    }

    #[test]
    fn kiln_keeps_the_daytona_key_from_agents() {
        assert!(!is_agent_secret("daytona", "api_key"));
        assert!(is_agent_secret("daytona", "ANTHROPIC_API_KEY"));
        assert!(is_agent_secret("worktree", "api_key"), "a worktree secret of that name is the agent's");
    }
}
