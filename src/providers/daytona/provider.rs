//! The `daytona` provider: a task's sandbox is a Daytona sandbox named
//! `kiln-<task>`, labelled with its organization, repository and task, where the
//! repository is cloned on the task branch and sandbox-agent serves in a process
//! session of its own, reached through the port's preview URL. Kiln keeps, on
//! this machine, only the task's state dir (`<data>/sandboxes/<task>`: the
//! terminal log and `daytona.json`, what this provider knows of the sandbox).
//!
//! Each call reads the organization's `daytona` profile (settings and
//! `api_key`) afresh, so a changed key or setting applies to the next call.
//! Daytona's client is not `Send`: every call runs as a task on the caller's
//! arbiter ([`on_arbiter`]); git on the mirror runs on the blocking pool.
//!
//! What is built and what is not: docs/providers.md ("The daytona provider").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::api::{DaytonaClient, DaytonaError, ExecMode, Execute, PreviewUrl, Sandbox, Toolbox};
use super::settings::{DaytonaSettings, API_KEY};
use crate::config::TerminalConfig;
use crate::terminal::host::HostOptions;
use crate::terminal::remote::RemoteTarget;
use crate::db::pool::{blocking, Db};
use crate::integrations::git::{self, MirrorLocks};
use crate::providers::*;

/// The labels a task's sandbox carries (how Kiln finds its sandboxes again).
pub const LABEL_ORG: &str = "kiln/organization";
pub const LABEL_REPO: &str = "kiln/repo";
pub const LABEL_TASK: &str = "kiln/task";
/// What this provider records of a sandbox in its state dir (0600).
pub const STATE_FILE: &str = "daytona.json";
/// The process session sandbox-agent runs in (a server blocks its session).
const AGENT_SESSION: &str = "kiln-agent-server";
/// How long a sandbox may take to reach `started` (Daytona's create alone can
/// take ~30 s; pulling a large snapshot more).
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long deletion may take to reach `destroyed`/404.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stop may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// The clone's bound.
const CLONE_TIMEOUT: Duration = Duration::from_secs(900);
/// A short toolbox command's bound.
const SHORT: Duration = Duration::from_secs(60);
/// How long sandbox-agent gets to answer its health check through the preview URL.
const AGENT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// A snapshot bundle is read out of the sandbox in pieces this large (base64
/// makes each answer a third larger, well under the client's body limit).
const BUNDLE_CHUNK: u64 = 4 * 1024 * 1024;
/// The largest bundle of unsaved work brought out of a sandbox.
const BUNDLE_MAX: u64 = 1024 * 1024 * 1024;

/// What Kiln records of a task's sandbox.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Daytona's id of the sandbox.
    pub id: String,
    pub name: String,
    /// The checkout, inside the sandbox.
    pub checkout: String,
    pub agent_port: u16,
    /// sandbox-agent's own bearer token (secret).
    pub agent_token: String,
}

impl std::fmt::Debug for SandboxRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxRecord").field("id", &self.id).field("checkout", &self.checkout).field("agent_token", &"(hidden)").finish()
    }
}

fn read_record(state_dir: &Path) -> Option<SandboxRecord> {
    serde_json::from_slice(&std::fs::read(state_dir.join(STATE_FILE)).ok()?).ok()
}

fn write_record(state_dir: &Path, record: &SandboxRecord) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir)?;
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let tmp = state_dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, &bytes)?;
    std::fs::rename(&tmp, state_dir.join(STATE_FILE))
}

/// The sandbox's name for a task.
pub fn sandbox_name(task: &str) -> String {
    format!("kiln-{task}")
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub struct DaytonaProvider {
    data_dir: PathBuf,
    terminal: TerminalConfig,
    locks: MirrorLocks,
    db: Db,
}

/// The organization's settings and a client with its key.
async fn profile(db: &Db, org: &str) -> ProviderResult<(DaytonaSettings, DaytonaClient)> {
    let o = org.to_string();
    let row = db.read(move |c| crate::db::queries::provider_profile(c, &o, "daytona")).await?;
    let (config, secrets) = match row {
        Some((config, secrets, _)) => (
            serde_json::from_str::<serde_json::Value>(&config).unwrap_or_default(),
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&secrets).unwrap_or_default(),
        ),
        None => (serde_json::json!({}), Default::default()),
    };
    let settings = DaytonaSettings::from_config(&config)?;
    let client = settings.client(&secrets)?;
    Ok((settings, client))
}

/// Runs `make`'s future (Daytona's client is not `Send`) as a task on the current
/// arbiter; answers a `Send` future of its result.
fn local<T, F, Fut>(make: F) -> impl std::future::Future<Output = ProviderResult<T>> + Send
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ProviderResult<T>> + 'static,
{
    async move {
        match actix_rt::spawn(async move { make().await }).await {
            Ok(result) => result,
            Err(e) => Err(AppError::bug(format!("a Daytona provider task ended early: {e}"))),
        }
    }
}

fn io_error(step: &str, e: std::io::Error) -> AppError {
    AppError::invalid("sandbox_failed", format!("{step} failed: {e}"))
}

/// A failed command in the sandbox: its step, exit code and the end of its output.
fn command_failed(step: &str, code: i64, output: &str) -> AppError {
    let tail: String = output.trim().chars().rev().take(600).collect::<String>().chars().rev().collect();
    AppError::invalid("sandbox_failed", format!("{step} failed in the Daytona sandbox (exit {code}): {tail}"))
}

/// Runs `script` in the sandbox (bash, `set -e`), with `envs` (which never
/// appear in the script); an exit other than 0 is `sandbox_failed`.
async fn run(
    client: &DaytonaClient,
    tb: &Toolbox,
    step: &str,
    script: &str,
    envs: BTreeMap<String, String>,
    timeout: Duration,
) -> ProviderResult<String> {
    let req = Execute { command: format!("set -e\n{script}"), cwd: None, envs, timeout };
    let done = client.execute(tb, &req).await?;
    if done.exit_code != 0 {
        return Err(command_failed(step, done.exit_code, &done.result));
    }
    Ok(done.result)
}

/// The askpass helper written into the sandbox: answers git's prompts from the
/// environment of the one command that needs it, so a credential is never in a
/// command string, a URL or a file.
const ASKPASS: &str = r#"#!/bin/sh
case "$1" in
  [Uu]sername*) printf '%s\n' "${KILN_GIT_USER:-x-access-token}" ;;
  *) printf '%s\n' "$KILN_GIT_TOKEN" ;;
esac
"#;

/// The environment of a git command that talks to origin.
fn git_envs(origin: &RemoteOrigin) -> BTreeMap<String, String> {
    let mut envs = BTreeMap::from([("GIT_TERMINAL_PROMPT".to_string(), "0".to_string())]);
    if let Some(secret) = &origin.secret {
        envs.insert("KILN_GIT_TOKEN".into(), secret.clone());
        if let Some(user) = &origin.user {
            envs.insert("KILN_GIT_USER".into(), user.clone());
        }
    }
    envs
}

/// Clones `origin` into `checkout` on the task branch (made from `base` when
/// origin does not have it yet).
async fn clone_repo(
    client: &DaytonaClient,
    tb: &Toolbox,
    origin: &RemoteOrigin,
    checkout: &str,
    branch: &str,
    base: &str,
) -> ProviderResult<()> {
    let mut envs = git_envs(origin);
    envs.insert("KILN_ORIGIN".into(), origin.url.clone());
    envs.insert("KILN_CHECKOUT".into(), checkout.to_string());
    envs.insert("KILN_BRANCH".into(), branch.to_string());
    envs.insert("KILN_BASE".into(), base.to_string());
    let script = format!(
        r#"umask 077
mkdir -p "$HOME/.kiln"
cat > "$HOME/.kiln/askpass" <<'KILN_EOF'
{ASKPASS}KILN_EOF
chmod 700 "$HOME/.kiln/askpass"
if [ -n "${{KILN_GIT_TOKEN:-}}" ]; then export GIT_ASKPASS="$HOME/.kiln/askpass"; fi
umask 022
rm -rf "$KILN_CHECKOUT"
git -c credential.helper= clone --quiet --origin origin -- "$KILN_ORIGIN" "$KILN_CHECKOUT"
cd "$KILN_CHECKOUT"
if git rev-parse --verify --quiet "refs/remotes/origin/$KILN_BRANCH" >/dev/null; then
  git checkout --quiet -B "$KILN_BRANCH" "origin/$KILN_BRANCH"
else
  git checkout --quiet -b "$KILN_BRANCH" "origin/$KILN_BASE"
fi
git rev-parse HEAD"#
    );
    run(client, tb, "cloning the repository", &script, envs, CLONE_TIMEOUT).await.map(drop)
}

/// The preview URLs and headers last fetched, by sandbox id: the status poller
/// probes sandbox-agent through them without asking Daytona each time, and
/// fetches again when a probe fails (the token changes when a sandbox restarts).
type PreviewCache = std::sync::Mutex<std::collections::HashMap<String, (String, Vec<(String, String)>)>>;

fn previews() -> &'static PreviewCache {
    static CACHE: std::sync::OnceLock<PreviewCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The preview URL of sandbox-agent's port and the headers every request needs,
/// fetched now (and remembered for the status poller).
async fn agent_endpoint(client: &DaytonaClient, record: &SandboxRecord) -> ProviderResult<(PreviewUrl, Vec<(String, String)>)> {
    let preview = client.preview_url(&record.id, record.agent_port).await?;
    let headers = vec![(PreviewUrl::TOKEN_HEADER.to_string(), preview.token.expose().to_string())];
    if let Ok(mut cache) = previews().lock() {
        cache.insert(record.id.clone(), (preview.url.clone(), headers.clone()));
    }
    Ok((preview, headers))
}

/// Whether sandbox-agent answers, through the remembered preview URL, else
/// through a freshly fetched one.
async fn agent_answers(client: &DaytonaClient, record: &SandboxRecord) -> bool {
    let cached = previews().lock().ok().and_then(|c| c.get(&record.id).cloned());
    if let Some((url, headers)) = cached {
        if agent_healthy(&url, &record.agent_token, &headers, Duration::from_secs(5)).await {
            return true;
        }
    }
    match agent_endpoint(client, record).await {
        Ok((preview, headers)) => agent_healthy(&preview.url, &record.agent_token, &headers, Duration::from_secs(5)).await,
        Err(_) => false,
    }
}

/// Whether sandbox-agent answers `/v1/health` through its preview URL.
async fn agent_healthy(url: &str, token: &str, headers: &[(String, String)], timeout: Duration) -> bool {
    let client = awc::Client::builder().timeout(timeout).disable_redirects().finish();
    let mut req = client.get(format!("{}/v1/health", url.trim_end_matches('/'))).insert_header(("Authorization", format!("Bearer {token}")));
    for (k, v) in headers {
        req = req.insert_header((k.as_str(), v.as_str()));
    }
    matches!(req.send().await, Ok(res) if res.status().as_u16() == 200)
}

/// Starts sandbox-agent in a process session of its own, with its token read
/// from a 0600 file (never in the session's command), and waits until it
/// answers through the preview URL.
async fn start_agent_server(client: &DaytonaClient, tb: &Toolbox, bin: &str, record: &SandboxRecord) -> ProviderResult<AgentEndpoint> {
    let envs = BTreeMap::from([("KILN_AGENT_TOKEN".to_string(), record.agent_token.clone())]);
    let script = r#"umask 077
mkdir -p "$HOME/.kiln"
printf '%s' "$KILN_AGENT_TOKEN" > "$HOME/.kiln/agent-token"
command -v "$KILN_AGENT_BIN" >/dev/null || { echo "sandbox-agent ($KILN_AGENT_BIN) is not installed in this sandbox's image"; exit 127; }"#;
    let mut with_bin = envs.clone();
    with_bin.insert("KILN_AGENT_BIN".into(), bin.to_string());
    run(client, tb, "preparing sandbox-agent", script, with_bin, SHORT).await?;
    // A session left by an earlier start (its server died) is replaced.
    client.delete_session(tb, AGENT_SESSION).await?;
    client.create_session(tb, AGENT_SESSION).await?;
    let command = format!(
        r#"exec {bin} server --host 0.0.0.0 --port {port} --token "$(cat "$HOME/.kiln/agent-token")" --no-telemetry > "$HOME/.kiln/sandbox-agent.log" 2>&1"#,
        bin = shell_quote(bin),
        port = record.agent_port
    );
    let exec = client.session_exec(tb, AGENT_SESSION, &command, ExecMode::Async).await?;
    let (preview, headers) = agent_endpoint(client, record).await?;
    let deadline = Instant::now() + AGENT_HEALTH_TIMEOUT;
    let mut delay = Duration::from_millis(100);
    loop {
        if agent_healthy(&preview.url, &record.agent_token, &headers, Duration::from_secs(5)).await {
            break;
        }
        let status = client.session_command(tb, AGENT_SESSION, &exec.cmd_id).await?;
        if let Some(code) = status.exit_code {
            let log = client
                .execute(tb, &Execute { command: r#"tail -c 600 "$HOME/.kiln/sandbox-agent.log""#.into(), cwd: None, envs: BTreeMap::new(), timeout: SHORT })
                .await
                .map(|e| e.result)
                .unwrap_or_default();
            return Err(AppError::invalid("sandbox_agent_failed", format!("sandbox-agent exited at once in the Daytona sandbox (exit {code}): {}", log.trim())));
        }
        if Instant::now() + delay > deadline {
            return Err(AppError::invalid(
                "sandbox_agent_failed",
                format!("sandbox-agent did not answer its health check through the preview URL within {} s", AGENT_HEALTH_TIMEOUT.as_secs()),
            ));
        }
        actix_rt::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
    Ok(AgentEndpoint {
        url: preview.url,
        token: record.agent_token.clone(),
        port: record.agent_port,
        pid: 0,
        restarted: false,
        fresh: true,
        headers,
        cwd: Some(record.checkout.clone()),
    })
}

/// How the terminal host reaches the agent's process: sandbox-agent behind the
/// preview URL (its bearer token and the preview token on every request), in
/// the checkout, with the launch's env (the sandbox has it too, from create).
fn remote_target(endpoint: &AgentEndpoint, record: &SandboxRecord, env: &[(String, String)]) -> RemoteTarget {
    let mut headers = endpoint.headers.clone();
    headers.push(("Authorization".to_string(), format!("Bearer {}", endpoint.token)));
    RemoteTarget {
        base_url: endpoint.url.trim_end_matches('/').to_string(),
        headers,
        cwd: record.checkout.clone(),
        env: env.iter().filter(|(k, _)| k != API_KEY).cloned().collect(),
        adopt: None,
    }
}

/// Starts the agent's terminal: a terminal host on this machine in remote mode
/// (it keeps the log, offsets and attachers as for a worktree), running the
/// setup commands and then the agent as PTY processes of sandbox-agent in the
/// sandbox. Blocking: on the blocking pool.
fn start_terminal(
    terminal: &TerminalConfig,
    handle: &SandboxHandle,
    target: RemoteTarget,
    setup: Vec<String>,
    launch: &LaunchSpec,
) -> ProviderResult<()> {
    let opts = HostOptions {
        state_dir: handle.state_dir.clone(),
        cwd: PathBuf::from(&target.cwd),
        log_max_bytes: terminal.log_max_bytes,
        cols: terminal.cols,
        rows: terminal.rows,
        setup,
        argv: launch.argv.clone(),
        confine: None,
        cgroup: false,
        remote: Some(target),
    };
    crate::terminal::client::launch(&opts, launch, &terminal.host_program).map_err(|e| io_error("starting the terminal host", e))
}

/// Stops the agent through its terminal host (SIGHUP, then SIGKILL after
/// `grace`: the host maps them to sandbox-agent's stop and kill), then the
/// host itself. Blocking.
fn stop_agent(state_dir: &Path, grace: Duration) -> AgentStop {
    use crate::terminal::client;
    let started = Instant::now();
    let running = |dir: &Path| client::status(dir).is_ok_and(|s| s.running);
    let wait = |until: Instant| loop {
        if !running(state_dir) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut how = "not_running";
    if running(state_dir) {
        let _ = client::signal(state_dir, libc::SIGHUP);
        how = "hangup";
        if !wait(Instant::now() + grace) {
            let _ = client::signal(state_dir, libc::SIGKILL);
            how = "kill";
            wait(Instant::now() + Duration::from_secs(5));
        }
    }
    end_host(state_dir);
    AgentStop { how, leftovers: 0, containment: "sandbox", ms: started.elapsed().as_millis() as u64 }
}

/// Ends a terminal host still waiting on a sandbox it cannot reach (SIGTERM to
/// the host, never to anything in the sandbox), and waits briefly until it is
/// gone. Blocking.
fn end_host(state_dir: &Path) {
    use crate::terminal::client;
    let pid = std::fs::read_to_string(state_dir.join(crate::terminal::host::PID_FILE)).ok().and_then(|p| p.trim().parse::<i32>().ok());
    let Some(pid) = pid.filter(|p| *p > 0) else { return };
    if client::status(state_dir).is_err() {
        return;
    }
    // SAFETY: a plain kill(2) of the host this state dir names (it answered on its socket).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while client::status(state_dir).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What is saved of a sandbox's work.
struct Saved {
    commit: String,
}

/// Saves the checkout's work (uncommitted changes as a commit on HEAD, and the
/// commits origin does not have) as `refname` in the mirror (see
/// [`bring_to_mirror`]). Answers `None` when origin already has everything.
async fn save_work(
    client: &DaytonaClient,
    tb: &Toolbox,
    record: &SandboxRecord,
    task: &str,
    mirror: &Path,
    refname: &str,
    locks: &MirrorLocks,
) -> ProviderResult<Option<Saved>> {
    let envs = BTreeMap::from([
        ("KILN_CHECKOUT".to_string(), record.checkout.clone()),
        ("KILN_MESSAGE".to_string(), format!("kiln: uncommitted work of task {task}")),
    ]);
    let script = r#"cd "$KILN_CHECKOUT"
export GIT_AUTHOR_NAME=Kiln GIT_AUTHOR_EMAIL=kiln@localhost GIT_COMMITTER_NAME=Kiln GIT_COMMITTER_EMAIL=kiln@localhost
mkdir -p "$HOME/.kiln"
idx="$HOME/.kiln/snapshot.index"
rm -f "$idx"
GIT_INDEX_FILE="$idx" git read-tree HEAD
GIT_INDEX_FILE="$idx" git add --all -- .
tree=$(GIT_INDEX_FILE="$idx" git write-tree)
rm -f "$idx"
if [ "$tree" = "$(git rev-parse 'HEAD^{tree}')" ]; then snap=$(git rev-parse HEAD); else snap=$(git commit-tree "$tree" -p HEAD -m "$KILN_MESSAGE"); fi
git update-ref refs/kiln/snapshot "$snap"
if [ -n "$(git for-each-ref --count=1 --contains "$snap" refs/remotes/origin)" ]; then echo "none $snap"; else echo "save $snap"; fi"#;
    let out = run(client, tb, "saving the sandbox's work", script, envs, SHORT * 5).await?;
    let last = out.lines().rev().find(|l| l.starts_with("none ") || l.starts_with("save ")).unwrap_or_default();
    match last.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["none", _] => Ok(None),
        ["save", commit] => {
            bring_to_mirror(client, tb, record, commit, mirror, refname, Some(locks)).await?;
            Ok(Some(Saved { commit: commit.to_string() }))
        }
        _ => Err(command_failed("saving the sandbox's work", 0, &out)),
    }
}

/// Makes `refname` in the mirror point at `commit`, a commit of the sandbox's
/// checkout: when the mirror lacks it, `git bundle create` in the sandbox (only
/// what origin lacks, else the whole history), read out through the toolbox,
/// `git bundle unbundle` into the mirror. The bundle's ref and file in the
/// sandbox are named for this call alone, so calls at once (a diff beside a
/// push) never read each other's. Takes the mirror's lock from `locks`; `None`
/// when the caller holds it already (the git lifecycle).
async fn bring_to_mirror(
    client: &DaytonaClient,
    tb: &Toolbox,
    record: &SandboxRecord,
    commit: &str,
    mirror: &Path,
    refname: &str,
    locks: Option<&MirrorLocks>,
) -> ProviderResult<()> {
    bring_to_mirror_within(client, tb, record, commit, mirror, refname, locks, BUNDLE_MAX).await
}

/// [`bring_to_mirror`], refusing a bundle over `max` bytes.
#[allow(clippy::too_many_arguments)]
async fn bring_to_mirror_within(
    client: &DaytonaClient,
    tb: &Toolbox,
    record: &SandboxRecord,
    commit: &str,
    mirror: &Path,
    refname: &str,
    locks: Option<&MirrorLocks>,
    max: u64,
) -> ProviderResult<()> {
    let stored = |e: git::GitError| AppError::invalid("snapshot_failed", format!("the sandbox's work could not be stored in the mirror: {}", e.message()));
    let (m, c) = (mirror.to_path_buf(), commit.to_string());
    let present = blocking(move || Ok(git::rev_parse(&m, &c).is_ok())).await?;
    if !present {
        let script = r#"cd "$KILN_CHECKOUT"
mkdir -p "$HOME/.kiln"
out="$HOME/.kiln/$KILN_NONCE.bundle"
ref="refs/kiln/bundle/$KILN_NONCE"
trap 'git update-ref -d "$ref" 2>/dev/null || true' EXIT
# Bundles of calls that ended early (Kiln stopped meanwhile).
find "$HOME/.kiln" -maxdepth 1 -name '*.bundle' -mmin +60 -delete 2>/dev/null || true
git update-ref "$ref" "$KILN_COMMIT"
if [ "${KILN_FULL:-}" = 1 ]; then git bundle create --quiet "$out" "$ref"
else git bundle create --quiet "$out" "$ref" --not --remotes=origin; fi
echo "bundle $(wc -c < "$out")""#;
        let nonce = crate::util::random_hex(12);
        let file = format!("$HOME/.kiln/{nonce}.bundle");
        let mut imported = false;
        for full in [false, true] {
            let mut envs = BTreeMap::from([
                ("KILN_CHECKOUT".to_string(), record.checkout.clone()),
                ("KILN_COMMIT".to_string(), commit.to_string()),
                ("KILN_NONCE".to_string(), nonce.clone()),
            ]);
            if full {
                envs.insert("KILN_FULL".into(), "1".into());
            }
            let out = run(client, tb, "bundling the sandbox's work", script, envs, SHORT * 5).await?;
            let size = out.lines().rev().find_map(|l| l.strip_prefix("bundle ")).and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0);
            if size == 0 || size > max {
                return Err(AppError::invalid(
                    "snapshot_failed",
                    format!("the bundle of the sandbox's work is {size} bytes (at most {max} are brought out)"),
                ));
            }
            let bytes = read_file(client, tb, &file, size).await?;
            let m = mirror.to_path_buf();
            let _git = match locks {
                Some(locks) => Some(locks.lock(&m).await),
                None => None,
            };
            match blocking(move || Ok(unbundle(&m, &bytes))).await? {
                Ok(()) => {
                    imported = true;
                    break;
                }
                // The mirror lacks a commit the thin bundle assumed: send it whole.
                Err(e) if !full => log::info!("a thin bundle from sandbox {} did not import ({e}); bringing the whole history", record.id),
                Err(e) => return Err(stored(e)),
            }
        }
        if !imported {
            return Err(AppError::bug("a bundle neither imported nor failed"));
        }
    }
    let (m, r, c) = (mirror.to_path_buf(), refname.to_string(), commit.to_string());
    let _git = match locks {
        Some(locks) => Some(locks.lock(&m).await),
        None => None,
    };
    blocking(move || Ok(git::run(&m, &["update-ref", &r, &c]))).await?.map(drop).map_err(stored)
}

/// Reads a file of `size` bytes out of the sandbox, in base64 pieces, and
/// removes it with the last one.
async fn read_file(client: &DaytonaClient, tb: &Toolbox, path: &str, size: u64) -> ProviderResult<Vec<u8>> {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(size as usize);
    let mut offset = 0u64;
    while offset < size {
        let last = offset + BUNDLE_CHUNK >= size;
        let mut script = format!("tail -c +{} \"{path}\" | head -c {BUNDLE_CHUNK} | base64 -w0", offset + 1);
        if last {
            script.push_str(&format!("\nrm -f \"{path}\""));
        }
        let out = run(client, tb, "reading the saved work", &script, BTreeMap::new(), SHORT * 2).await?;
        let piece = base64::engine::general_purpose::STANDARD
            .decode(out.trim())
            .map_err(|e| AppError::invalid("snapshot_failed", format!("the saved work came out garbled: {e}")))?;
        if piece.is_empty() {
            return Err(AppError::invalid("snapshot_failed", "the saved work ended early"));
        }
        offset += piece.len() as u64;
        bytes.extend_from_slice(&piece);
    }
    Ok(bytes)
}

/// Writes `bundle` into the mirror (a file there, inside the mirror's jail)
/// and unbundles its objects.
fn unbundle(mirror: &Path, bundle: &[u8]) -> Result<(), git::GitError> {
    let file = mirror.join(format!("kiln-bundle-{}.bundle", crate::util::random_hex(8)));
    std::fs::write(&file, bundle).map_err(|e| git::GitError::Failed { command: "bundle".into(), stderr: e.to_string() })?;
    let name = file.to_string_lossy().to_string();
    let result = git::run(mirror, &["bundle", "unbundle", &name]);
    let _ = std::fs::remove_file(&file);
    result.map(drop)
}

/// A Daytona task's checkout, for the git lifecycle (`task::git_ops`): the
/// sandbox started, its toolbox and what Kiln recorded of it.
#[derive(Clone)]
pub struct RemoteCheckout {
    client: DaytonaClient,
    tb: Toolbox,
    record: SandboxRecord,
}

/// A sandbox command's failure as git's (for `git_ops`' codes and events).
fn as_git(step: &str, e: AppError) -> git::GitError {
    git::GitError::Failed { command: step.to_string(), stderr: e.to_string() }
}

impl RemoteCheckout {
    /// The task's sandbox, started if it was stopped.
    pub async fn open(db: Db, org: String, handle: SandboxHandle) -> ProviderResult<RemoteCheckout> {
        local(move || async move {
            let (_, client) = profile(&db, &org).await?;
            let (found, record) = find(&client, &handle.state_dir, &handle.id).await?;
            let record = record.ok_or_else(|| AppError::conflict("sandbox_missing", "this task has no Daytona sandbox on record"))?;
            let sandbox = found.filter(|s| !s.is_gone()).ok_or_else(|| {
                AppError::conflict("sandbox_missing", format!("the Daytona sandbox {} is gone", record.name))
            })?;
            let sandbox = ensure_started(&client, sandbox).await?;
            let tb = sandbox.toolbox()?;
            Ok(RemoteCheckout { client, tb, record })
        })
        .await
    }

    /// Commits everything uncommitted in the sandbox's checkout; `None` when
    /// there was nothing.
    pub async fn commit_all(&self, message: String) -> ProviderResult<Result<Option<String>, git::GitError>> {
        let me = self.clone();
        local(move || async move {
            let envs = BTreeMap::from([("KILN_CHECKOUT".to_string(), me.record.checkout.clone()), ("KILN_MESSAGE".to_string(), message)]);
            let script = r#"cd "$KILN_CHECKOUT"
if [ -z "$(git status --porcelain --untracked-files=all)" ]; then echo "clean"; exit 0; fi
if [ -z "$(git config user.email || true)" ]; then export GIT_AUTHOR_NAME=Kiln GIT_AUTHOR_EMAIL=kiln@localhost GIT_COMMITTER_NAME=Kiln GIT_COMMITTER_EMAIL=kiln@localhost; fi
git add --all -- .
git commit --quiet --no-verify -m "$KILN_MESSAGE"
echo "commit $(git rev-parse HEAD)""#;
            Ok(match run(&me.client, &me.tb, "git commit", script, envs, SHORT).await {
                Ok(out) => Ok(out.lines().rev().find_map(|l| l.strip_prefix("commit ")).map(str::to_string)),
                Err(e) => Err(as_git("commit", e)),
            })
        })
        .await
    }

    /// Brings the checkout's HEAD into the mirror as `refs/heads/<branch>`
    /// (Kiln's git pushes and merges from there, with credentials the sandbox
    /// never sees); answers the commit.
    pub async fn export(&self, branch: String, mirror: PathBuf) -> ProviderResult<String> {
        let me = self.clone();
        local(move || async move {
            let envs = BTreeMap::from([("KILN_CHECKOUT".to_string(), me.record.checkout.clone())]);
            let script = r#"cd "$KILN_CHECKOUT"
git update-ref refs/kiln/export HEAD
echo "head $(git rev-parse HEAD)""#;
            let out = run(&me.client, &me.tb, "reading the task's branch", script, envs, SHORT).await?;
            let head = out.lines().rev().find_map(|l| l.strip_prefix("head ")).map(str::to_string).ok_or_else(|| command_failed("reading the task's branch", 0, &out))?;
            let refname = format!("refs/heads/{branch}");
            // The git lifecycle holds the mirror's lock for the whole action.
            bring_to_mirror(&me.client, &me.tb, &me.record, &head, &mirror, &refname, None).await?;
            Ok(head)
        })
        .await
    }

    /// Brings the checkout's current state into the mirror as `refname` (for
    /// the diff): its `HEAD` and, when anything is uncommitted (staged,
    /// unstaged, untracked; not ignored), a commit of it all on `HEAD`, made
    /// with a scratch index named for this call (the checkout and its index are
    /// untouched) and dated as `HEAD`, so the same work makes the same commit
    /// and a second look brings nothing new. A bundle larger than `max` bytes
    /// is refused (`snapshot_failed`). Answers `(head, state)`.
    pub async fn bring_state(&self, mirror: PathBuf, refname: String, locks: MirrorLocks, max: u64) -> ProviderResult<(String, String)> {
        let me = self.clone();
        local(move || async move {
            let envs = BTreeMap::from([
                ("KILN_CHECKOUT".to_string(), me.record.checkout.clone()),
                ("KILN_NONCE".to_string(), crate::util::random_hex(12)),
                ("KILN_MESSAGE".to_string(), "kiln: uncommitted work (diff)".to_string()),
            ]);
            let script = r#"cd "$KILN_CHECKOUT"
mkdir -p "$HOME/.kiln"
idx="$HOME/.kiln/$KILN_NONCE.index"
trap 'rm -f "$idx" "$idx.lock"' EXIT
find "$HOME/.kiln" -maxdepth 1 -name '*.index' -mmin +60 -delete 2>/dev/null || true
head=$(git rev-parse --verify HEAD)
real=$(git rev-parse --path-format=absolute --git-path index)
if [ -f "$real" ] && [ ! -L "$real" ]; then cp "$real" "$idx"; else GIT_INDEX_FILE="$idx" git read-tree "$head"; fi
GIT_INDEX_FILE="$idx" git add --all -- .
tree=$(GIT_INDEX_FILE="$idx" git write-tree)
if [ "$tree" = "$(git rev-parse "$head^{tree}")" ]; then state=$head
else
  when="@$(git log -1 --format=%ct "$head") +0000"
  state=$(GIT_AUTHOR_NAME=Kiln GIT_AUTHOR_EMAIL=kiln@localhost GIT_COMMITTER_NAME=Kiln GIT_COMMITTER_EMAIL=kiln@localhost \
    GIT_AUTHOR_DATE="$when" GIT_COMMITTER_DATE="$when" git commit-tree "$tree" -p "$head" -m "$KILN_MESSAGE")
fi
echo "state $head $state""#;
            let out = run(&me.client, &me.tb, "reading the sandbox's changes", script, envs, SHORT).await?;
            let fields: Vec<&str> = out.lines().rev().find_map(|l| l.strip_prefix("state ")).unwrap_or_default().split_whitespace().collect();
            let [head, state] = fields.as_slice() else { return Err(command_failed("reading the sandbox's changes", 0, &out)) };
            bring_to_mirror_within(&me.client, &me.tb, &me.record, state, &mirror, &refname, Some(&locks), max).await?;
            Ok((head.to_string(), state.to_string()))
        })
        .await
    }

    /// Fetches `base` from origin in the sandbox (the credential through
    /// askpass, for this command only) and rebases the checkout's branch onto
    /// it (or merges it in), with autostash; on a conflict it aborts, leaving
    /// the checkout as it was, and answers the files, as `git::integrate` does
    /// (an autostash that does not apply on the new base undoes the sync too).
    pub async fn integrate(&self, origin: RemoteOrigin, base: String, merge: bool) -> ProviderResult<Result<git::Integration, git::GitError>> {
        let me = self.clone();
        local(move || async move {
            let mut envs = git_envs(&origin);
            envs.insert("KILN_CHECKOUT".into(), me.record.checkout.clone());
            envs.insert("KILN_BASE".into(), base);
            envs.insert("KILN_MODE".into(), if merge { "merge" } else { "rebase" }.into());
            let script = r#"cd "$KILN_CHECKOUT"
if [ -n "${KILN_GIT_TOKEN:-}" ]; then export GIT_ASKPASS="$HOME/.kiln/askpass"; fi
git -c credential.helper= fetch --quiet --no-tags origin "+refs/heads/$KILN_BASE:refs/remotes/origin/$KILN_BASE" 2>&1 || { echo "KILN_FETCH_FAILED"; exit 3; }
if [ -z "$(git config user.email || true)" ]; then export GIT_AUTHOR_NAME=Kiln GIT_AUTHOR_EMAIL=kiln@localhost GIT_COMMITTER_NAME=Kiln GIT_COMMITTER_EMAIL=kiln@localhost; fi
before=$(git rev-parse HEAD)
stash_before=$(git rev-parse -q --verify refs/stash || true)
set +e
if [ "$KILN_MODE" = merge ]; then out=$(git merge --autostash --no-edit "origin/$KILN_BASE" 2>&1); else out=$(git rebase --autostash "origin/$KILN_BASE" 2>&1); fi
code=$?
set -e
parked=$(git rev-parse -q --verify refs/stash || true)
if [ $code -eq 0 ] && [ -n "$parked" ] && [ "$parked" != "$stash_before" ]; then
  # The autostash did not apply on the new base: undo the sync, put the work back.
  files=$(git diff --name-only --diff-filter=U)
  git reset --hard -q "$before"
  if ! git stash apply --index -q "$parked" >/dev/null 2>&1; then
    git reset --hard -q "$before"
    git stash apply -q "$parked" >/dev/null 2>&1 || { echo "the uncommitted work conflicts with the new base and could not be put back; it is safe in the stash as $parked"; exit 4; }
  fi
  i=$(git reflog show --format=%H refs/stash | grep -n "^$parked\$" | head -n 1 | cut -d: -f1)
  if [ -n "$i" ]; then git stash drop -q "stash@{$((i - 1))}" || true; fi
  if [ -n "$files" ]; then printf '%s\n' "$files" | sed 's/^/conflict /'; exit 0; fi
  echo "the uncommitted work does not apply on the new base; nothing was changed"; exit 4
fi
if [ $code -eq 0 ]; then echo "clean $(git rev-parse HEAD)"; exit 0; fi
files=$(git diff --name-only --diff-filter=U)
git "$KILN_MODE" --abort >/dev/null 2>&1 || true
if [ -n "$files" ]; then printf '%s
' "$files" | sed 's/^/conflict /'; exit 0; fi
printf '%s
' "$out"; exit 4"#;
            Ok(match run(&me.client, &me.tb, "git sync", script, envs, CLONE_TIMEOUT).await {
                Ok(out) => {
                    let conflicts: Vec<String> = out.lines().filter_map(|l| l.strip_prefix("conflict ")).map(str::to_string).collect();
                    match out.lines().rev().find_map(|l| l.strip_prefix("clean ")) {
                        Some(head) => Ok(git::Integration::Clean(head.to_string())),
                        None if !conflicts.is_empty() => Ok(git::Integration::Conflicts(conflicts)),
                        None => Err(git::GitError::Failed { command: "sync".into(), stderr: out }),
                    }
                }
                Err(e) => Err(as_git("sync", e)),
            })
        })
        .await
    }
}

impl DaytonaProvider {
    pub fn new(data_dir: PathBuf, terminal: TerminalConfig, locks: MirrorLocks, db: Db) -> Self {
        DaytonaProvider { data_dir, terminal, locks, db }
    }
}

/// Makes the sandbox and everything in it, then the agent's terminal.
async fn provision(db: Db, terminal: TerminalConfig, req: CreateSandbox, handle: SandboxHandle) -> ProviderResult<Created> {
    let (settings, client) = profile(&db, &req.org).await?;
    let (record, endpoint) = match provision_sandbox(&client, &settings, &req, &handle).await {
        Ok(done) => done,
        Err(e) => {
            if e.code() == "daytona_unauthorized" {
                forget_key_check(&req.org);
            }
            return Err(e);
        }
    };
    report(&req.progress, "setup", 85, Some(format!("{} setup command(s), then the agent", req.setup.len())));
    let target = remote_target(&endpoint, &record, &req.launch.env);
    let (h, setup, launch) = (handle.clone(), req.setup.clone(), req.launch.clone());
    let started = blocking(move || Ok(start_terminal(&terminal, &h, target, setup, &launch))).await?;
    if let Err(e) = started {
        // Nothing of the user's is in it yet: delete it, and wait until it is gone.
        if let Err(e) = client.delete_and_wait(&record.id, DESTROY_TIMEOUT).await {
            log::warn!("task {}: removing the sandbox {} failed: {e}", req.task, record.id);
        }
        return Err(e);
    }
    report(&req.progress, "ready", 100, None);
    Ok(Created { handle, copy: Default::default() })
}

/// Creates the task's sandbox (labelled, with the agent's env, the profile's
/// resources), waits until it is started, clones the task branch and starts
/// sandbox-agent behind its preview URL, reporting each step; records it in
/// the handle's state dir. On an error after the sandbox exists it is deleted
/// (a fresh clone holds no work).
pub async fn provision_sandbox(
    client: &DaytonaClient,
    settings: &DaytonaSettings,
    req: &CreateSandbox,
    handle: &SandboxHandle,
) -> ProviderResult<(SandboxRecord, AgentEndpoint)> {
    let origin = req.origin.clone().ok_or_else(|| remote_source_required(&req.repo))?;
    let old = handle.state_dir.clone();
    // A leftover of a crash mid-provisioning (task ids are never reused): ours to replace.
    blocking(move || Ok(if old.exists() { std::fs::remove_dir_all(&old) } else { Ok(()) }))
        .await?
        .map_err(|e| io_error("clearing old terminal state", e))?;
    report(&req.progress, "creating", 5, None);
    let labels = BTreeMap::from([
        (LABEL_ORG.to_string(), req.org.clone()),
        (LABEL_REPO.to_string(), req.repo.clone()),
        (LABEL_TASK.to_string(), req.task.clone()),
    ]);
    // The launch's env: the profile's env and the organization's daytona
    // secrets less `api_key` (effects::agent_env), and KILN_TASK.
    let env: BTreeMap<String, String> =
        req.launch.env.iter().filter(|(k, _)| k != API_KEY).map(|(k, v)| (k.clone(), v.clone())).collect();
    let name = sandbox_name(&req.task);
    let create = settings.create_request(&name, labels, env);
    let made = client.create(&create).await?;
    let id = made.id.clone();
    let result = async {
        report(&req.progress, "starting", 20, Some(made.state.clone()));
        let sandbox = client.wait_until_started(&id, START_TIMEOUT).await?;
        let tb = sandbox.toolbox()?;
        report(&req.progress, "cloning", 40, None);
        let home = client.user_home_dir(&tb).await?;
        let checkout = format!("{}/{}", home.trim_end_matches('/'), req.repo);
        clone_repo(client, &tb, &origin, &checkout, &req.branch, &req.base_branch).await?;
        let record = SandboxRecord {
            id: id.clone(),
            name: name.clone(),
            checkout,
            agent_port: settings.agent_port,
            agent_token: crate::util::random_hex(40),
        };
        let state_dir = handle.state_dir.clone();
        let r = record.clone();
        blocking(move || Ok(write_record(&state_dir, &r))).await?.map_err(|e| io_error("recording the sandbox", e))?;
        report(&req.progress, "starting_agent", 70, None);
        let endpoint = start_agent_server(client, &tb, &settings.agent_bin, &record).await?;
        Ok((record, endpoint))
    }
    .await;
    if result.is_err() {
        if let Err(e) = client.delete_and_wait(&id, DESTROY_TIMEOUT).await {
            log::warn!("task {}: removing the failed sandbox {id} failed: {e}", req.task);
        }
    }
    result
}

fn remote_source_required(repo: &str) -> AppError {
    AppError::invalid(
        "remote_source_required",
        format!("repository `{repo}` was registered from a path on this server, which a Daytona sandbox cannot clone: register it by its URL to use the daytona provider"),
    )
}

/// The sandbox of a task, as Daytona has it now (`None`: gone).
async fn find(client: &DaytonaClient, state_dir: &Path, task: &str) -> ProviderResult<(Option<Sandbox>, Option<SandboxRecord>)> {
    let dir = state_dir.to_path_buf();
    let record = blocking(move || Ok(read_record(&dir))).await?;
    let key = record.as_ref().map(|r| r.id.clone()).unwrap_or_else(|| sandbox_name(task));
    Ok((client.find(&key).await?, record))
}

/// Starts a stopped sandbox and waits for it.
async fn ensure_started(client: &DaytonaClient, sandbox: Sandbox) -> ProviderResult<Sandbox> {
    if sandbox.is_started() {
        return Ok(sandbox);
    }
    if sandbox.is_startable() {
        client.start(&sandbox.id).await?;
    }
    Ok(client.wait_until_started(&sandbox.id, START_TIMEOUT).await?)
}

async fn destroy(db: Db, locks: MirrorLocks, org: String, req: DestroySandbox) -> ProviderResult<Destroyed> {
    let (_, client) = profile(&db, &org).await?;
    destroy_sandbox(&client, &locks, req).await
}

/// Saves the sandbox's work into the mirror (`save_work`) and deletes the
/// sandbox, polling until it is gone. If saving fails the sandbox is stopped,
/// not deleted, and the error says so (`409 snapshot_failed`).
pub async fn destroy_sandbox(client: &DaytonaClient, locks: &MirrorLocks, req: DestroySandbox) -> ProviderResult<Destroyed> {
    let started = Instant::now();
    let client = client.clone();
    let task = req.handle.id.clone();
    let (found, record) = find(&client, &req.handle.state_dir, &task).await?;
    let (dir, grace) = (req.handle.state_dir.clone(), req.grace);
    let stop = blocking(move || Ok(stop_agent(&dir, grace))).await?;
    let Some(sandbox) = found.filter(|s| !s.is_gone()) else {
        // Already gone: nothing left to save or delete.
        return Ok(Destroyed { snapshot: None, stop: AgentStop { ms: started.elapsed().as_millis() as u64, ..stop } });
    };
    let mut snapshot = None;
    if let (Some(record), true) = (&record, sandbox.is_failed()) {
        // Its toolbox cannot run: the work cannot be read, and is not deleted.
        let why = sandbox.error_reason.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| "no reason given".into());
        return Err(AppError::conflict(
            "snapshot_failed",
            format!(
                "the Daytona sandbox {} is in state `{}` ({why}), so its work cannot be read, and it is kept: recover it in Daytona and try again, or delete it there to let the task go",
                record.name, sandbox.state
            ),
        ));
    }
    if let Some(record) = &record {
        let saved = async {
            let sandbox = ensure_started(&client, sandbox.clone()).await?;
            let tb = sandbox.toolbox()?;
            // The agent's server first: nothing writes while the work is saved.
            let _ = client.delete_session(&tb, AGENT_SESSION).await;
            save_work(&client, &tb, record, &task, &req.handle.mirror, &req.snapshot_ref, locks).await
        }
        .await;
        match saved {
            Ok(saved) => snapshot = saved.map(|s| (req.snapshot_ref.clone(), s.commit)),
            Err(err) => {
                // Never delete work that could not be saved: stop the sandbox.
                let stopped = match client.stop(&sandbox.id).await {
                    Ok(_) => client.wait_until_stopped(&sandbox.id, STOP_TIMEOUT).await.map(drop),
                    Err(e) => Err(e),
                };
                let how = match stopped {
                    Ok(()) => format!("the sandbox {} is stopped, not deleted", sandbox.name.as_deref().unwrap_or(&sandbox.id)),
                    Err(e) => format!("the sandbox is kept (stopping it failed too: {e})"),
                };
                return Err(AppError::conflict("snapshot_failed", format!("the sandbox's work could not be saved ({err}); {how}: try again, or fetch the work by hand")));
            }
        }
    }
    client.delete_and_wait(&sandbox.id, DESTROY_TIMEOUT).await?;
    if let Ok(mut cache) = previews().lock() {
        cache.remove(&sandbox.id);
    }
    let dir = req.handle.state_dir.clone();
    let _ = blocking(move || Ok(std::fs::remove_file(dir.join(STATE_FILE)))).await;
    // The state the last diff brought in is the snapshot's business now.
    let (m, r) = (req.handle.mirror.clone(), crate::integrations::diff::remote_state_ref(&task));
    let _git = locks.lock(&m).await;
    let _ = blocking(move || Ok(git::run(&m, &["update-ref", "-d", &r]))).await;
    Ok(Destroyed { snapshot, stop: AgentStop { ms: started.elapsed().as_millis() as u64, ..stop } })
}

async fn health(db: Db, org: String, handle: SandboxHandle) -> ProviderResult<SandboxHealth> {
    let (settings, client) = profile(&db, &org).await?;
    let health = sandbox_health(&client, handle).await?;
    Ok(SandboxHealth { auto_stop_after: settings.auto_stop_after(), ..health })
}

async fn suspend(db: Db, terminal: TerminalConfig, org: String, req: SuspendSandbox) -> ProviderResult<()> {
    let (_, client) = profile(&db, &org).await?;
    suspend_sandbox(&client, &terminal, req).await
}

/// Appends a line of Kiln's own to the task's terminal log (no host is running
/// then), so a reader of the log sees why the agent's screen ended or began
/// again. Blocking; a failure is only logged: the note is a courtesy.
fn log_note(terminal: &TerminalConfig, state_dir: &Path, note: &str) {
    let written = crate::terminal::log::TerminalLog::open(state_dir, terminal.log_max_bytes)
        .and_then(|mut log| log.append(format!("\r\n[kiln: {note}]\r\n").as_bytes()).1);
    if let Err(e) = written {
        log::warn!("writing a note to the terminal log in {} failed: {e}", state_dir.display());
    }
}

/// Stops a task's sandbox for idleness (auto-stop): the agent is hung up
/// through its terminal host (SIGHUP, as when a terminal closes, so it can save
/// its state; SIGKILL after `grace`), the host ends, then Daytona stops the
/// sandbox (its files are kept) and Kiln waits until it is `stopped`. A
/// sandbox stopped outside Kiln already (`already_stopped`) only has its host,
/// which cannot reach it, ended. A sandbox that is gone is left to the status
/// poller (the task becomes `stalled`).
pub async fn suspend_sandbox(client: &DaytonaClient, terminal: &TerminalConfig, req: SuspendSandbox) -> ProviderResult<()> {
    let (dir, grace, already) = (req.handle.state_dir.clone(), req.grace, req.already_stopped);
    let note = if already { "the sandbox was stopped outside Kiln; it starts again on the next input" } else { "sandbox stopped while idle; it starts again on the next input" };
    let term = terminal.clone();
    blocking(move || {
        if already {
            end_host(&dir);
        } else {
            stop_agent(&dir, grace);
        }
        log_note(&term, &dir, note);
        Ok(())
    })
    .await?;
    let (found, _) = find(client, &req.handle.state_dir, &req.handle.id).await?;
    let Some(sandbox) = found.filter(|s| !s.is_gone()) else { return Ok(()) };
    if let Ok(mut cache) = previews().lock() {
        cache.remove(&sandbox.id);
    }
    if sandbox.state != "stopped" {
        if sandbox.state != "stopping" {
            client.stop(&sandbox.id).await?;
        }
        client.wait_until_stopped(&sandbox.id, STOP_TIMEOUT).await?;
    }
    Ok(())
}

/// The sandbox as Daytona and its sandbox-agent say now: gone or failed (with
/// Daytona's reason), stopped, or started with sandbox-agent answering or not.
pub async fn sandbox_health(client: &DaytonaClient, handle: SandboxHandle) -> ProviderResult<SandboxHealth> {
    let client = client.clone();
    let (found, record) = find(&client, &handle.state_dir, &handle.id).await?;
    let state_dir = handle.state_dir.clone();
    // The agent's terminal host is local (remote mode): its status as for worktrees.
    let (host, exit) = blocking(move || {
        let host = crate::terminal::client::status(&state_dir).ok();
        let exit = host.as_ref().and_then(|h| h.exit.clone()).or_else(|| crate::terminal::client::exit_info(&state_dir));
        Ok((host, exit))
    })
    .await?;
    let Some(sandbox) = found.filter(|s| !s.is_gone()) else {
        return Ok(SandboxHealth {
            exists: false,
            host,
            exit,
            agent_server: None,
            reason: Some(format!("the Daytona sandbox {} is gone", sandbox_name(&handle.id))),
            remote_state: Some("destroyed".into()),
            auto_stop_after: None,
        });
    };
    if sandbox.is_failed() {
        let why = sandbox.error_reason.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| "no reason given".into());
        return Ok(SandboxHealth {
            exists: false,
            host,
            exit,
            agent_server: None,
            reason: Some(format!("the Daytona sandbox is in state `{}`: {why}", sandbox.state)),
            remote_state: Some(sandbox.state.clone()),
            auto_stop_after: None,
        });
    }
    let agent_server = match (&record, sandbox.is_started()) {
        (Some(record), true) => Some(agent_answers(&client, record).await),
        _ => None,
    };
    Ok(SandboxHealth { exists: true, host, exit, agent_server, reason: None, remote_state: Some(sandbox.state.clone()), auto_stop_after: None })
}

async fn ensure_agent(db: Db, org: String, req: EnsureAgent) -> ProviderResult<AgentEndpoint> {
    let (settings, client) = profile(&db, &org).await?;
    ensure_agent_server_in(&client, &settings, req.handle, req.start_stopped).await
}

/// sandbox-agent's endpoint through a fresh preview URL (its token changes when
/// the sandbox restarts), starting the sandbox and the server again if needed.
pub async fn ensure_agent_server(client: &DaytonaClient, settings: &DaytonaSettings, handle: SandboxHandle) -> ProviderResult<AgentEndpoint> {
    ensure_agent_server_in(client, settings, handle, true).await
}

/// [`ensure_agent_server`]; without `start_stopped`, a sandbox that is not
/// started is `409 sandbox_stopped`.
async fn ensure_agent_server_in(
    client: &DaytonaClient,
    settings: &DaytonaSettings,
    handle: SandboxHandle,
    start_stopped: bool,
) -> ProviderResult<AgentEndpoint> {
    let req = EnsureAgent { handle, bin: PathBuf::new(), env: Vec::new(), start_stopped };
    let client = client.clone();
    let (found, record) = find(&client, &req.handle.state_dir, &req.handle.id).await?;
    let record = record.ok_or_else(|| AppError::conflict("sandbox_missing", "this task has no Daytona sandbox on record"))?;
    let sandbox = found.filter(|s| !s.is_gone()).ok_or_else(|| {
        AppError::conflict("sandbox_missing", format!("the Daytona sandbox {} is gone", record.name))
    })?;
    if !start_stopped && !sandbox.is_started() {
        return Err(AppError::conflict("sandbox_stopped", format!("the Daytona sandbox {} is {}", record.name, sandbox.state)));
    }
    let sandbox = ensure_started(&client, sandbox).await?;
    // The preview token changes when a sandbox restarts: always fetch it now.
    let (preview, headers) = agent_endpoint(&client, &record).await?;
    if agent_healthy(&preview.url, &record.agent_token, &headers, Duration::from_secs(5)).await {
        return Ok(AgentEndpoint {
            url: preview.url,
            token: record.agent_token.clone(),
            port: record.agent_port,
            pid: 0,
            restarted: false,
            fresh: false,
            headers,
            cwd: Some(record.checkout.clone()),
        });
    }
    let tb = sandbox.toolbox()?;
    let endpoint = start_agent_server(&client, &tb, &settings.agent_bin, &record).await?;
    // A terminal host still running reaches sandbox-agent by the new URL and token.
    let (dir, target) = (req.handle.state_dir.clone(), remote_target(&endpoint, &record, &[]));
    blocking(move || {
        if crate::terminal::client::status(&dir).is_ok_and(|s| s.running) {
            if let Err(e) = crate::terminal::client::retarget(&dir, &target) {
                log::warn!("retargeting the terminal host in {} failed: {e}", dir.display());
            }
        }
        Ok(())
    })
    .await?;
    Ok(AgentEndpoint { restarted: true, ..endpoint })
}

/// Relaunches the agent (its resume command) in the task's sandbox: started
/// again if it was stopped, sandbox-agent checked, a new terminal host.
async fn resume(db: Db, terminal: TerminalConfig, org: String, req: ResumeSandbox) -> ProviderResult<SandboxHandle> {
    let (settings, client) = profile(&db, &org).await?;
    let dir = req.handle.state_dir.clone();
    let running = blocking(move || Ok(crate::terminal::client::status(&dir).is_ok_and(|s| s.running))).await?;
    if running {
        return Err(AppError::conflict("agent_running", "the agent is still running: attach to it instead"));
    }
    let endpoint = ensure_agent_server(&client, &settings, req.handle.clone()).await?;
    let dir = req.handle.state_dir.clone();
    let record = blocking(move || Ok(read_record(&dir))).await?.ok_or_else(|| AppError::conflict("sandbox_missing", "this task has no Daytona sandbox on record"))?;
    let mut target = remote_target(&endpoint, &record, &req.launch.env);
    let (h, launch, note) = (req.handle.clone(), req.launch.clone(), req.after_auto_stop);
    blocking(move || {
        if note {
            log_note(&terminal, &h.state_dir, "sandbox resumed");
        }
        // The agent the last host drove may still run (Kiln's machine restarted,
        // the sandbox did not): the new host follows it rather than start another.
        let previous = std::fs::read_to_string(h.state_dir.join(crate::terminal::remote::PROCESS_FILE)).ok();
        target.adopt = previous.map(|p| p.trim().to_string()).filter(|p| !p.is_empty());
        Ok(start_terminal(&terminal, &h, target, Vec::new(), &launch))
    })
    .await??;
    Ok(req.handle)
}

/// One of Kiln's sandboxes of an organization, found by its labels.
#[derive(Debug, Clone, Serialize)]
pub struct Labelled {
    pub id: String,
    pub name: Option<String>,
    /// The `kiln/task` label.
    pub task: String,
    pub state: String,
}

/// Every sandbox labelled with `org` (Kiln's, for that organization's tasks):
/// how Kiln finds them again after a restart.
pub async fn labelled_sandboxes(db: Db, org: String) -> ProviderResult<Vec<Labelled>> {
    local(move || async move {
        let (_, client) = profile(&db, &org).await?;
        let labels = BTreeMap::from([(LABEL_ORG.to_string(), org.clone())]);
        let found = client.list(&labels).await?;
        Ok(found
            .into_iter()
            .filter(|s| !s.is_gone())
            .filter_map(|s| {
                let task = s.labels.get(LABEL_TASK)?.clone();
                Some(Labelled { id: s.id, name: s.name, task, state: s.state })
            })
            .collect())
    })
    .await
}

/// Deletes an organization's sandbox and waits until it is gone.
pub async fn delete_sandbox(db: Db, org: String, id: String) -> ProviderResult<()> {
    local(move || async move {
        let (_, client) = profile(&db, &org).await?;
        client.delete_and_wait(&id, DESTROY_TIMEOUT).await?;
        Ok(())
    })
    .await
}

async fn preflight(db: Db, req: Preflight) -> ProviderResult<()> {
    let (_, client) = profile(&db, &req.org).await?;
    if req.source_kind != "url" {
        return Err(remote_source_required(&req.repo));
    }
    // One cheap authenticated call: a wrong key is a 4xx now, before anything
    // is made. A key Daytona took lately is not asked about again (20 creates
    // at once make one call, not 20); a 401 later forgets it.
    let checked = key_check(&req.org, &client);
    if key_checks().lock().ok().and_then(|m| m.get(&checked).copied()).is_some_and(|at| at.elapsed() < KEY_CHECK_TTL) {
        return Ok(());
    }
    let probe = BTreeMap::from([(LABEL_ORG.to_string(), req.org.clone()), (LABEL_TASK.to_string(), "-".to_string())]);
    match client.list(&probe).await {
        Ok(_) | Err(DaytonaError::NotFound(_)) => {
            if let Ok(mut m) = key_checks().lock() {
                m.retain(|_, at| at.elapsed() < KEY_CHECK_TTL);
                m.insert(checked, Instant::now());
            }
            Ok(())
        }
        Err(e) => {
            forget_key_check(&req.org);
            Err(e.into())
        }
    }
}

/// How long a key Daytona took at create is taken without asking again.
const KEY_CHECK_TTL: Duration = Duration::from_secs(60);

/// Keys Daytona took at create lately: (organization, API URL, a hash of the
/// key; never the key) → when.
type KeyChecks = std::sync::Mutex<std::collections::HashMap<(String, String, u64), Instant>>;

fn key_checks() -> &'static KeyChecks {
    static CHECKS: std::sync::OnceLock<KeyChecks> = std::sync::OnceLock::new();
    CHECKS.get_or_init(Default::default)
}

fn key_check(org: &str, client: &DaytonaClient) -> (String, String, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client.key().expose().hash(&mut h);
    (org.to_string(), client.api_url().to_string(), h.finish())
}

/// Forgets the organization's checked keys (Daytona refused one).
fn forget_key_check(org: &str) {
    if let Ok(mut m) = key_checks().lock() {
        m.retain(|(o, _, _), _| o != org);
    }
}

/// The organization a handle's sandbox belongs to: its mirror lives under
/// `<data>/mirrors/<org>/…` (see `handle_for`), but the record is the truth;
/// callers pass the org where they have it.
fn org_of(data_dir: &Path, handle: &SandboxHandle) -> Option<String> {
    handle.home.strip_prefix(data_dir).ok()?.iter().nth(1).map(|s| s.to_string_lossy().to_string())
}

impl SandboxProvider for DaytonaProvider {
    fn id(&self) -> &str {
        "daytona"
    }

    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities {
            local_terminal: true,
            remote: true,
            local_path: false,
            terminal: "remote_pty",
            snapshot: "mirror_ref",
            ports: true,
            needs_remote_source: true,
        }
    }

    fn validate_config(&self, cfg: &serde_json::Value) -> ProviderResult<serde_json::Value> {
        let empty = serde_json::Map::new();
        super::settings::validate_config(cfg.as_object().unwrap_or(&empty)).map(serde_json::Value::Object)
    }

    fn handle_for(&self, org: &str, repo: &str, task: &str, mirror: &Path) -> SandboxHandle {
        SandboxHandle {
            id: task.to_string(),
            // Inside the sandbox, in its user's home; nothing on this machine.
            path: PathBuf::from(format!("~/{repo}")),
            state_dir: self.data_dir.join("sandboxes").join(task),
            mirror: mirror.to_path_buf(),
            home: crate::confine::Confiner::agent_home(&self.data_dir, org),
        }
    }

    fn create(&self, req: CreateSandbox) -> BoxFuture<'_, ProviderResult<Created>> {
        let handle = self.handle_for(&req.org, &req.repo, &req.task, &req.mirror);
        let (db, terminal) = (self.db.clone(), self.terminal.clone());
        Box::pin(local(move || provision(db, terminal, req, handle)))
    }

    fn resume(&self, req: ResumeSandbox) -> BoxFuture<'_, ProviderResult<SandboxHandle>> {
        let (db, terminal) = (self.db.clone(), self.terminal.clone());
        let org = org_of(&self.data_dir, &req.handle);
        Box::pin(local(move || async move {
            let org = org.ok_or_else(|| AppError::bug("a Daytona sandbox handle without its organization"))?;
            resume(db, terminal, org, req).await
        }))
    }

    fn destroy(&self, req: DestroySandbox) -> BoxFuture<'_, ProviderResult<Destroyed>> {
        let (db, locks) = (self.db.clone(), self.locks.clone());
        let org = org_of(&self.data_dir, &req.handle);
        Box::pin(local(move || async move {
            let org = org.ok_or_else(|| AppError::bug("a Daytona sandbox handle without its organization"))?;
            destroy(db, locks, org, req).await
        }))
    }

    fn health(&self, handle: SandboxHandle) -> BoxFuture<'_, ProviderResult<SandboxHealth>> {
        let db = self.db.clone();
        let org = org_of(&self.data_dir, &handle);
        Box::pin(local(move || async move {
            let org = org.ok_or_else(|| AppError::bug("a Daytona sandbox handle without its organization"))?;
            health(db, org, handle).await
        }))
    }

    fn ensure_agent(&self, req: EnsureAgent) -> BoxFuture<'_, ProviderResult<AgentEndpoint>> {
        let db = self.db.clone();
        let org = org_of(&self.data_dir, &req.handle);
        Box::pin(local(move || async move {
            let org = org.ok_or_else(|| AppError::bug("a Daytona sandbox handle without its organization"))?;
            ensure_agent(db, org, req).await
        }))
    }

    fn attach_target(&self, handle: &SandboxHandle) -> ProviderResult<AttachTarget> {
        // The remote terminal's host runs here and keeps the log.
        Ok(AttachTarget::Local { state_dir: handle.state_dir.clone() })
    }

    fn suspend(&self, req: SuspendSandbox) -> BoxFuture<'_, ProviderResult<()>> {
        let (db, terminal) = (self.db.clone(), self.terminal.clone());
        let org = org_of(&self.data_dir, &req.handle);
        Box::pin(local(move || async move {
            let org = org.ok_or_else(|| AppError::bug("a Daytona sandbox handle without its organization"))?;
            suspend(db, terminal, org, req).await
        }))
    }

    fn preflight(&self, req: Preflight) -> BoxFuture<'_, ProviderResult<()>> {
        let db = self.db.clone();
        Box::pin(local(move || preflight(db, req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_org_comes_from_the_agent_home() {
        let data = Path::new("/data");
        let handle = SandboxHandle {
            id: "t".into(),
            path: "~/app".into(),
            state_dir: "/data/sandboxes/t".into(),
            mirror: "/data/mirrors/acme/app.git".into(),
            home: crate::confine::Confiner::agent_home(data, "acme"),
        };
        assert_eq!(org_of(data, &handle).as_deref(), Some("acme"));
    }

    #[test]
    fn records_hide_the_token() {
        let r = SandboxRecord { agent_token: "sekrit".into(), ..Default::default() };
        assert!(!format!("{r:?}").contains("sekrit"));
    }
}
