//! The `worktree` provider: the sandbox is a `git worktree` of the repository's
//! bare mirror under `<data>/worktrees/<org>/<repo>/<task>`, and the agent runs
//! in a detached terminal host whose state lives in `<data>/sandboxes/<task>`.
//! Needs only git. Every step here blocks, so each runs on the blocking pool.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::config::TerminalConfig;
use crate::db::pool::blocking;
use crate::integrations::git::{self, GitError, MirrorLocks};
use crate::terminal::{client, host::HostOptions, procs};

pub use super::copy_in::INCLUDE_FILE;

/// Where a sandbox's sandbox-agent server is recorded (port, token, pid; 0600).
pub const AGENT_FILE: &str = "sandbox-agent.json";

fn read_agent(state_dir: &Path) -> Option<AgentEndpoint> {
    serde_json::from_slice(&std::fs::read(state_dir.join(AGENT_FILE)).ok()?).ok()
}

fn agent_alive(endpoint: &AgentEndpoint) -> bool {
    crate::integrations::sandbox_agent::probe_health(endpoint.port, &endpoint.token, Duration::from_secs(2))
}

/// Stops a recorded sandbox-agent server (it leads its own process group) and
/// forgets it.
fn stop_agent_server(state_dir: &Path) {
    if let Some(endpoint) = read_agent(state_dir) {
        unsafe { libc::kill(-(endpoint.pid as i32), libc::SIGTERM) };
    }
    let _ = std::fs::remove_file(state_dir.join(AGENT_FILE));
}

/// Starts a detached sandbox-agent server for the sandbox on a free loopback
/// port with a fresh token, waits for its health check, and records it.
fn start_agent_server(req: &EnsureAgent, restarted: bool) -> ProviderResult<AgentEndpoint> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    use crate::integrations::sandbox_agent::{free_port, probe_health, server_command};
    let state_dir = &req.handle.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|e| io_error("preparing the sandbox-agent folder", e))?;
    let port = free_port().map_err(|e| io_error("finding a free port", e))?;
    let token = crate::util::random_hex(40);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("sandbox-agent.log"))
        .map_err(|e| io_error("opening the sandbox-agent log", e))?;
    let log2 = log.try_clone().map_err(|e| io_error("opening the sandbox-agent log", e))?;
    let (env, ruleset) = confine_launch(&req.handle, &req.env, req.bin.parent().unwrap_or(&req.bin))?;
    let mut cmd = server_command(&req.bin, "127.0.0.1", port, Some(&token), &[]);
    // The server's own settings (KILN_*) are none of the agents' business; the
    // profile's env and the organization's secrets are (as for the terminal).
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KILN_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.current_dir(&req.handle.path).stdin(std::process::Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe; the server outlives Kiln like the terminal host.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(ruleset) = &ruleset {
        // In the task's jail, like the agent: setsid first, then the domain.
        ruleset.confine_command(&mut cmd);
    }
    let mut child = cmd.spawn().map_err(|e| io_error("starting sandbox-agent", e))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !probe_health(port, &token, Duration::from_secs(1)) {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(state_dir.join("sandbox-agent.log")).unwrap_or_default();
            let tail: String = log.chars().rev().take(500).collect::<String>().chars().rev().collect();
            return Err(AppError::invalid("sandbox_agent_failed", format!("sandbox-agent exited at once ({status}): {}", tail.trim())));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(AppError::invalid("sandbox_agent_failed", "sandbox-agent did not answer its health check within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let endpoint =
        AgentEndpoint { url: format!("http://127.0.0.1:{port}"), token, port, pid: child.id(), restarted, fresh: true, headers: Vec::new(), cwd: None };
    // The token is a secret: the record is readable by Kiln's user only.
    let record = serde_json::to_vec(&serde_json::json!({
        "url": endpoint.url, "token": endpoint.token, "port": port, "pid": endpoint.pid,
    }))
    .map_err(AppError::internal)?;
    let tmp = state_dir.join(format!("{AGENT_FILE}.tmp"));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &record))
        .and_then(|_| std::fs::rename(&tmp, state_dir.join(AGENT_FILE)))
        .map_err(|e| io_error("recording the sandbox-agent server", e))?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(endpoint)
}

pub struct WorktreeProvider {
    data_dir: PathBuf,
    terminal: TerminalConfig,
    /// The per-mirror git locks: `worktree add`, `remove` and `prune` change the
    /// mirror's worktree records and refs, so they wait their turn like a push.
    locks: MirrorLocks,
}

impl WorktreeProvider {
    pub fn new(data_dir: PathBuf, terminal: TerminalConfig, locks: MirrorLocks) -> Self {
        WorktreeProvider { data_dir, terminal, locks }
    }

    fn host_options(&self, handle: &SandboxHandle, setup: Vec<String>, launch: &LaunchSpec) -> HostOptions {
        HostOptions {
            state_dir: handle.state_dir.clone(),
            cwd: handle.path.clone(),
            log_max_bytes: self.terminal.log_max_bytes,
            cols: self.terminal.cols,
            rows: self.terminal.rows,
            setup,
            argv: launch.argv.clone(),
            confine: None,
            cgroup: self.terminal.cgroup,
            remote: None,
        }
    }
}

/// The agent's environment and confinement: Kiln's defaults (`HOME` in the
/// organization's agent home, `XDG_*`, `TMPDIR` in the task's temp dir) under
/// the launch's own env, and the task's ruleset when agents are confined (an
/// error in `required` mode on a kernel that cannot). `program` is what runs.
fn confine_launch(
    handle: &SandboxHandle,
    env: &[(String, String)],
    program: &Path,
) -> ProviderResult<(Vec<(String, String)>, Option<std::sync::Arc<crate::confine::Ruleset>>)> {
    use crate::confine::{Confiner, Extras};
    let paths = handle.task_paths();
    Confiner::prepare_dirs(&paths).map_err(|e| io_error("preparing the agent's home and temp dir", e))?;
    let mut full = Confiner::task_env(&paths);
    full.extend(env.iter().cloned());
    let path_var = full.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
    let ruleset = match crate::confine::global() {
        Some(confiner) => confiner.task_ruleset(&paths, &Extras { exec: vec![program.to_path_buf()], path_var })?,
        None => None,
    };
    Ok((full, ruleset))
}

/// Runs blocking provider work on the blocking pool, mapping errors.
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> ProviderResult<T> + Send + 'static,
) -> ProviderResult<T> {
    blocking(move || Ok(f())).await.map_err(AppError::from)?
}

fn git_error(step: &str, e: GitError) -> AppError {
    match e {
        GitError::Missing(_) => AppError::git_missing(),
        GitError::Failed { stderr, .. } => AppError::invalid("sandbox_failed", format!("{step} failed: {stderr}")),
        other => AppError::internal(other),
    }
}

fn io_error(step: &str, e: std::io::Error) -> AppError {
    AppError::invalid("sandbox_failed", format!("{step} failed: {e}"))
}

/// The `PATH` the launch gives the agent, if it sets one.
fn launch_path(launch: &LaunchSpec) -> Option<String> {
    launch.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone())
}

/// The agent's program as exec would find it, or `agent_not_found`.
fn locate_agent(launch: &LaunchSpec) -> ProviderResult<PathBuf> {
    let program = &launch.argv[0];
    find_program(program, launch_path(launch).as_deref()).ok_or_else(|| {
        AppError::invalid("agent_not_found", format!("agent `{program}` not found on PATH: install it or choose another agent"))
    })
}

/// Finds `program` the way exec would: a path as given, else on `PATH`.
pub fn find_program(program: &str, path_var: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.is_file() && p.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path_var = path_var.map(str::to_string).or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
    path_var.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(program)).find(|p| executable(p))
}

/// How long a hung-up agent gets to end before SIGTERM follows.
const HANGUP_WAIT: Duration = Duration::from_secs(1);
/// How long SIGKILLed processes get to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Stops the agent and everything it started, as a terminal's close would and
/// then some: SIGHUP and SIGCONT to the agent's process group (an interactive
/// shell passes the hangup on to its jobs and exits); SIGTERM if it still runs
/// after `HANGUP_WAIT`; SIGKILL once `grace` is over. Then whatever it left
/// behind (its cgroup's members, else its session's and their descendants)
/// gets SIGHUP, SIGTERM and SIGCONT, and SIGKILL at the end of `grace`. Waits
/// for the host to finish.
fn stop_agent(state_dir: &Path, grace: Duration) -> AgentStop {
    let started = Instant::now();
    let deadline = started + grace;
    let cgroup = procs::Cgroup::recorded(state_dir);
    let mut stop = AgentStop {
        how: "not_running",
        leftovers: 0,
        containment: if cgroup.is_some() { "cgroup" } else { "session" },
        ms: 0,
    };
    let mut sid = None;
    let mut tracked = Vec::new();
    match client::status(state_dir) {
        Ok(s) => {
            if let (true, Some(pid)) = (s.running, s.agent_pid) {
                // The agent leads its session. Taken before anything is signalled,
                // so a process that leaves the session later is still known.
                sid = Some(pid as i32);
                tracked = procs::session_tree(&procs::scan(), pid as i32);
                let leader = tracked.iter().find(|p| p.pid == pid as i32).cloned();
                stop.how = stop_leader(state_dir, leader.as_ref(), deadline);
            }
        }
        Err(e) if !client::is_gone(&e) => {
            // A host that does not answer in time: stop it by its pid; the agent
            // loses its terminal (SIGHUP) with it, and the sweep below does the rest.
            if let Some(pid) = std::fs::read_to_string(state_dir.join(crate::terminal::host::PID_FILE))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        Err(_) => {}
    }
    let (leftovers, killed) = stop_leftovers(cgroup.as_ref(), sid, tracked, deadline);
    stop.leftovers = leftovers;
    if killed {
        stop.how = "kill";
    }
    // The host ends once nothing holds the terminal any more.
    host_done(state_dir, Instant::now() + KILL_WAIT);
    if let Some(cgroup) = &cgroup {
        // The host removes it when it ends; if it is gone already, we do.
        let _ = cgroup.remove();
    }
    stop.ms = started.elapsed().as_millis() as u64;
    stop
}

/// Ends the agent (`leader`, as found before) through its host: hangup, then
/// SIGTERM, then SIGKILL; answers the step that ended it.
fn stop_leader(state_dir: &Path, leader: Option<&procs::Proc>, deadline: Instant) -> &'static str {
    // The agent itself, not the host's `running`: the host reports the end only
    // once the terminal is drained, and a leftover can hold it open.
    let ended = |until: Instant| loop {
        if !leader.is_some_and(procs::alive) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = client::signal(state_dir, libc::SIGHUP);
    let _ = client::signal(state_dir, libc::SIGCONT);
    if ended(deadline.min(Instant::now() + HANGUP_WAIT)) {
        return "hangup";
    }
    let _ = client::signal(state_dir, libc::SIGTERM);
    if ended(deadline) {
        return "terminate";
    }
    let _ = client::signal(state_dir, libc::SIGKILL);
    ended(Instant::now() + KILL_WAIT);
    "kill"
}

/// Whether the host reports the run over (or is gone) before `deadline`.
fn host_done(state_dir: &Path, deadline: Instant) -> bool {
    loop {
        match client::status(state_dir) {
            Ok(s) if s.running => {}
            _ => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops what the agent left running: the processes `tracked` before it was
/// signalled, its session's and their descendants now, and its cgroup's.
/// Answers how many there were and whether any needed SIGKILL.
fn stop_leftovers(
    cgroup: Option<&procs::Cgroup>,
    sid: Option<i32>,
    tracked: Vec<procs::Proc>,
    deadline: Instant,
) -> (usize, bool) {
    let me = std::process::id() as i32;
    let leader_start = sid.and_then(|sid| tracked.iter().find(|p| p.pid == sid).map(|p| p.start));
    let remaining = || {
        let all = procs::scan();
        let mut found: Vec<procs::Proc> = tracked.iter().filter(|p| procs::alive(p)).cloned().collect();
        if let Some(sid) = sid {
            // Linux reuses a session id only once no process holds it; a new
            // leader under that number is someone else's session, never swept.
            let reused = all.iter().any(|p| p.pid == sid && p.sid == sid && Some(p.start) != leader_start);
            if !reused {
                found.extend(procs::session_tree(&all, sid));
            }
        }
        if let Some(cgroup) = cgroup {
            let pids = cgroup.pids();
            found.extend(all.iter().filter(|p| pids.contains(&p.pid) && p.state != 'Z').cloned());
        }
        found.retain(|p| p.pid != me);
        found.sort_by_key(|p| p.pid);
        found.dedup_by_key(|p| p.pid);
        found
    };
    let left = remaining();
    if left.is_empty() {
        return (0, false);
    }
    for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGCONT] {
        left.iter().for_each(|p| procs::signal(p, sig));
    }
    let gone = |deadline: Instant| loop {
        let alive = left.iter().any(procs::alive) || cgroup.is_some_and(|c| !c.pids().is_empty());
        if !alive {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if gone(deadline) {
        return (left.len(), false);
    }
    if let Some(cgroup) = cgroup {
        cgroup.kill();
    }
    for p in remaining().iter().chain(left.iter()) {
        procs::signal(p, libc::SIGKILL);
    }
    gone(Instant::now() + KILL_WAIT);
    (left.len(), true)
}

impl SandboxProvider for WorktreeProvider {
    fn id(&self) -> &str {
        "worktree"
    }

    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities {
            local_terminal: true,
            remote: false,
            local_path: true,
            terminal: "local_pty",
            snapshot: "mirror_ref",
            ports: false,
            needs_remote_source: false,
        }
    }

    fn validate_config(&self, cfg: &serde_json::Value) -> ProviderResult<serde_json::Value> {
        match cfg {
            serde_json::Value::Object(map) if map.is_empty() => Ok(cfg.clone()),
            serde_json::Value::Object(map) => Err(AppError::invalid(
                "invalid_provider_config",
                format!("the worktree provider takes no settings, got: {}", map.keys().cloned().collect::<Vec<_>>().join(", ")),
            )),
            _ => Err(AppError::invalid("invalid_provider_config", "provider config must be a JSON object")),
        }
    }

    fn handle_for(&self, org: &str, repo: &str, task: &str, mirror: &Path) -> SandboxHandle {
        SandboxHandle {
            id: task.to_string(),
            path: self.data_dir.join("worktrees").join(org).join(repo).join(task),
            state_dir: self.data_dir.join("sandboxes").join(task),
            mirror: mirror.to_path_buf(),
            home: crate::confine::Confiner::agent_home(&self.data_dir, org),
        }
    }

    fn create(&self, req: CreateSandbox) -> BoxFuture<'_, ProviderResult<Created>> {
        let handle = self.handle_for(&req.org, &req.repo, &req.task, &req.mirror);
        let opts = self.host_options(&handle, req.setup.clone(), &req.launch);
        let host_program = self.terminal.host_program.clone();
        let locks = self.locks.clone();
        Box::pin(async move {
            let launch = req.launch.clone();
            let parent = handle.path.parent().map(Path::to_path_buf);
            let found = off_thread(move || {
                let found = locate_agent(&launch)?;
                if let Some(parent) = parent {
                    std::fs::create_dir_all(parent).map_err(|e| io_error("creating the worktree folder", e))?;
                }
                Ok(found)
            })
            .await?;
            {
                // prune and add change the mirror's worktree records and refs.
                let _git = locks.lock(&handle.mirror).await;
                let (h, branch, base) = (handle.clone(), req.branch.clone(), req.base_branch.clone());
                off_thread(move || {
                    if h.path.exists() {
                        // A leftover of a crash mid-provisioning: ours to replace.
                        git::worktree_remove(&h.mirror, &h.path).map_err(|e| git_error("clearing an old worktree", e))?;
                    }
                    git::worktree_add(&h.mirror, &h.path, &branch, &base).map_err(|e| git_error("git worktree add", e))
                })
                .await?;
            }
            let h = handle.clone();
            let launched = off_thread(move || {
                let mut report = super::copy_in::CopyReport::default();
                if let Some(source) = &req.source_checkout {
                    // The source was stored resolved at registration; a path that
                    // resolves elsewhere now has had a symlink put on its way,
                    // maybe toward another organization's files: copy nothing.
                    if std::fs::canonicalize(source).is_ok_and(|now| now != *source) {
                        return Err(io_error(
                            "copying included files",
                            std::io::Error::other("the repository's source folder now leads elsewhere through a symlink; nothing is copied from it"),
                        ));
                    }
                    report = super::copy_in::copy_includes(source, &h.path, &req.copy)
                        .map_err(|e| io_error("copying included files", e))?;
                }
                if h.state_dir.exists() {
                    std::fs::remove_dir_all(&h.state_dir).map_err(|e| io_error("clearing old terminal state", e))?;
                }
                let (env, confine) = confine_launch(&h, &req.launch.env, &found)?;
                let launch = LaunchSpec { env, ..req.launch.clone() };
                let opts = HostOptions { confine, ..opts };
                client::launch(&opts, &launch, &host_program).map_err(|e| io_error("starting the terminal host", e))?;
                Ok(report)
            })
            .await;
            match launched {
                Ok(copy) => Ok(Created { handle, copy }),
                Err(e) => {
                    // Leave nothing half-made: the branch stays, the worktree goes.
                    let _git = locks.lock(&handle.mirror).await;
                    let _ = off_thread(move || git::worktree_remove(&handle.mirror, &handle.path).map_err(|e| git_error("git worktree remove", e))).await;
                    Err(e)
                }
            }
        })
    }

    fn resume(&self, req: ResumeSandbox) -> BoxFuture<'_, ProviderResult<SandboxHandle>> {
        let opts = self.host_options(&req.handle, Vec::new(), &req.launch);
        let host_program = self.terminal.host_program.clone();
        let locks = self.locks.clone();
        Box::pin(async move {
            let state_dir = req.handle.state_dir.clone();
            let worktree = req.handle.path.clone();
            let missing = off_thread(move || {
                if client::status(&state_dir).is_ok_and(|s| s.running) {
                    return Err(AppError::conflict("agent_running", "the agent is still running: attach to it instead"));
                }
                Ok(!worktree.exists())
            })
            .await?;
            if missing {
                let _git = locks.lock(&req.handle.mirror).await;
                let (h, branch) = (req.handle.clone(), req.branch.clone());
                off_thread(move || {
                    if h.path.exists() {
                        return Ok(());
                    }
                    git::worktree_add(&h.mirror, &h.path, &branch, &branch).map_err(|e| git_error("recreating the worktree", e))
                })
                .await?;
            }
            off_thread(move || {
                let handle = req.handle;
                let found = locate_agent(&req.launch)?;
                let (env, confine) = confine_launch(&handle, &req.launch.env, &found)?;
                let launch = LaunchSpec { env, ..req.launch.clone() };
                let opts = HostOptions { confine, ..opts };
                client::launch(&opts, &launch, &host_program).map_err(|e| io_error("starting the terminal host", e))?;
                Ok(handle)
            })
            .await
        })
    }

    fn destroy(&self, req: DestroySandbox) -> BoxFuture<'_, ProviderResult<Destroyed>> {
        let locks = self.locks.clone();
        Box::pin(async move {
            let (state_dir, grace) = (req.handle.state_dir.clone(), req.grace);
            let stop = off_thread(move || {
                stop_agent_server(&state_dir);
                Ok(stop_agent(&state_dir, grace))
            })
            .await?;
            // The snapshot writes a ref, and remove/prune change the worktree records.
            let _git = locks.lock(&req.handle.mirror).await;
            off_thread(move || {
                let handle = &req.handle;
                let mut snapshot = None;
                if handle.path.exists() {
                    let message = format!("kiln: uncommitted work of task {}", handle.id);
                    match git::snapshot(&handle.path, &req.snapshot_ref, &message) {
                        Ok(Some(commit)) => snapshot = Some((req.snapshot_ref.clone(), commit)),
                        Ok(None) => {}
                        // Never remove work that could not be saved.
                        Err(e) => return Err(git_error("saving uncommitted work", e)),
                    }
                }
                git::worktree_remove(&handle.mirror, &handle.path).map_err(|e| git_error("git worktree remove", e))?;
                Ok(Destroyed { snapshot, stop })
            })
            .await
        })
    }

    fn health(&self, handle: SandboxHandle) -> BoxFuture<'_, ProviderResult<SandboxHealth>> {
        Box::pin(off_thread(move || {
            let host = match client::status(&handle.state_dir) {
                Ok(status) => Some(status),
                Err(e) if client::is_gone(&e) => None,
                // A slow host is not a dead one: report nothing this time.
                Err(e) => return Err(AppError::unavailable("host_unresponsive", format!("the terminal host did not answer: {e}"))),
            };
            let exit = host.as_ref().and_then(|h| h.exit.clone()).or_else(|| client::exit_info(&handle.state_dir));
            let agent_server = read_agent(&handle.state_dir).map(|e| agent_alive(&e));
            Ok(SandboxHealth { exists: handle.path.exists(), host, exit, agent_server, reason: None, remote_state: None, auto_stop_after: None })
        }))
    }

    fn ensure_agent(&self, req: EnsureAgent) -> BoxFuture<'_, ProviderResult<AgentEndpoint>> {
        Box::pin(off_thread(move || {
            let recorded = read_agent(&req.handle.state_dir);
            if let Some(endpoint) = &recorded {
                if agent_alive(endpoint) {
                    return Ok(endpoint.clone());
                }
                // Recorded but not answering: make sure it is gone before a new one.
                stop_agent_server(&req.handle.state_dir);
            }
            start_agent_server(&req, recorded.is_some())
        }))
    }

    fn attach_target(&self, handle: &SandboxHandle) -> ProviderResult<AttachTarget> {
        Ok(AttachTarget::Local { state_dir: handle.state_dir.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_like_exec_finds_them() {
        assert!(find_program("sh", None).is_some());
        assert!(find_program("definitely-not-a-program-kiln", None).is_none());
        assert!(find_program("/bin/sh", None).is_some());
        assert!(find_program("sh", Some("/nonexistent")).is_none());
    }
}
