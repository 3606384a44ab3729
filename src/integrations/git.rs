//! git, run as a child process with an argument vector (never a shell). Every
//! function here blocks: call it on the blocking pool.
//!
//! Git never prompts (`GIT_TERMINAL_PROMPT=0`), never runs the `ext::` transport,
//! and gets `--` before anything a user typed. Every command runs with
//! `GIT_ALLOW_PROTOCOL=https:http:ssh:git`; only a command that talks to the origin
//! of a repository registered from this host's disk (an [`Origin`] with `local`)
//! may use `file` (and then nothing else), so neither a stored nor a
//! config-changed origin can reach a local path, `ext::` or `fd::`.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One lock per repository mirror. Every piece of git work on a mirror, or on a
/// worktree of it, takes its mirror's lock first: provisioning (`worktree prune`
/// and `add`), removal (the snapshot, `worktree remove`, `prune`), push, sync,
/// merge, commits, and the branch poller's fetch. So they run one at a time per
/// repository: `prune` never sees a half-made worktree record, and ref updates
/// never collide. Held only around git itself, never while waiting on an actor.
#[derive(Clone, Default)]
pub struct MirrorLocks(Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>);

impl MirrorLocks {
    /// Waits for the lock of `mirror`; it is held until the guard is dropped.
    pub async fn lock(&self, mirror: &Path) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(mirror.to_path_buf()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git is not installed or not on PATH: {0}")]
    Missing(std::io::Error),
    #[error("running git failed: {0}")]
    Io(#[from] std::io::Error),
    /// git ran and failed; `stderr` is git's own message, or how git ended when
    /// it printed nothing (see [`failure`]): never empty.
    #[error("git {command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("git {command} took longer than {secs} s and was stopped")]
    TimedOut { command: String, secs: u64 },
    /// A local origin is no longer the folder it was registered as (a symlink
    /// was put on its way, or it is gone): git was not run.
    #[error("{0}")]
    SourceMoved(String),
    /// A remote origin's host is one the repository may not reach (the host
    /// policy for an organization's URLs): git was not run.
    #[error("{0}")]
    HostRefused(String),
}

impl GitError {
    /// git's own message, for responses and events.
    pub fn message(&self) -> String {
        match self {
            GitError::Failed { stderr, .. } => stderr.clone(),
            other => other.to_string(),
        }
    }
}

/// One step of a clone's progress, as git reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneProgress {
    pub phase: String,
    pub percent: u8,
}

/// The transports git may use for a remote origin.
const REMOTE_PROTOCOLS: &str = "https:http:ssh:git";
/// ...and for the origin of a repository registered from a local path.
const LOCAL_PROTOCOLS: &str = "file";

/// How git may reach a repository's origin: which transports (see the module
/// doc) and which credentials.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The origin is this folder on this host, as it was registered (resolved),
    /// by a caller allowed to. Every command that talks to it checks first that
    /// the path still leads to that folder ([`pin_local_source`]).
    pub local: Option<PathBuf>,
    pub credentials: Option<Credentials>,
    /// For a remote origin under the host policy: the addresses checked, the
    /// only ones git may connect to.
    pub connect: Option<Connect>,
    /// Why git may not talk to this origin at all (the host policy refused its
    /// host); every command that would is refused with it.
    pub refused: Option<String>,
}

/// The addresses git connects to for a host: https/http through
/// `http.curloptResolve` (and no redirect followed, which would lead elsewhere),
/// ssh through `HostName` (the host key is still looked up by the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub host: String,
    pub port: u16,
    pub ssh: bool,
    pub addrs: Vec<std::net::IpAddr>,
}

impl Connect {
    fn args(&self) -> Vec<String> {
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .map(|a| match a {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            })
            .collect();
        vec![
            "-c".into(),
            format!("http.curloptResolve={}:{}:{}", self.host, self.port, addrs.join(",")),
            "-c".into(),
            "http.followRedirects=false".into(),
        ]
    }

    fn env(&self) -> Vec<(String, String)> {
        match (self.ssh, self.addrs.first()) {
            (true, Some(addr)) => vec![(
                "GIT_SSH_COMMAND".into(),
                format!("ssh -o BatchMode=yes -o ConnectTimeout=30 -o HostKeyAlias={} -o HostName={addr}", self.host),
            )],
            _ => Vec::new(),
        }
    }
}

impl Origin {
    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.credentials.as_ref().map(Credentials::env).unwrap_or_default();
        if self.local.is_some() {
            env.push(("GIT_ALLOW_PROTOCOL".into(), LOCAL_PROTOCOLS.into()));
        }
        if let Some(connect) = &self.connect {
            env.extend(connect.env());
        }
        env
    }

    fn args(&self) -> Vec<String> {
        self.connect.as_ref().map(Connect::args).unwrap_or_default()
    }
}

fn git() -> Command {
    let mut cmd = Command::new("git");
    settings(&mut cmd);
    cmd
}

/// What every git Kiln runs gets: no prompts, no hooks, no fsmonitor (a
/// program named in config), no `ext::` transport, patient ref locks.
fn settings(cmd: &mut Command) {
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        // A remote that stalls (under 1 KB/s for a minute) fails instead of hanging.
        .env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
        .env("GIT_HTTP_LOW_SPEED_TIME", "60")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=30")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        .env("LC_ALL", "C")
        .env("GIT_ALLOW_PROTOCOL", REMOTE_PROTOCOLS)
        .args(["-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"])
        // No automatic gc: its prune removes empty object fan-out folders, and a
        // running task's jail grants the folders it was made with (confine.rs).
        .args(["-c", "gc.auto=0", "-c", "maintenance.auto=false"])
        // Worktrees share the mirror's refs, and Kiln runs git for several tasks
        // and pollers at once: wait for a ref lock instead of failing on it.
        .args(["-c", "core.filesRefLockTimeout=10000", "-c", "core.packedRefsTimeout=10000"])
        .stdin(Stdio::null());
}

/// git in `dir`, in the jail that path calls for (`crate::confine`): a task's
/// worktree confines git like the agent, with the agent's environment (an agent
/// can make its worktree's git read any config it likes, so that config may
/// run only what the agent itself could); a repository's mirror keeps git out
/// of the rest of the data dir. Answers the command and the task's temp dir.
pub(crate) fn git_in(dir: &Path) -> Result<(Command, Option<std::path::PathBuf>), GitError> {
    git_in_jail(dir, None)
}

/// git in `dir` for a command that talks to `origin`, with its environment. A
/// local origin is checked and held open first ([`pin_local_source`]), and a
/// mirror's jail then reaches that folder only (`Confiner::git_jail`).
fn git_for_origin(dir: &Path, origin: &Origin) -> Result<Command, GitError> {
    if let Some(why) = &origin.refused {
        return Err(GitError::HostRefused(why.clone()));
    }
    let pinned = origin.local.as_deref().map(pin_local_source).transpose()?;
    let mut cmd = git_in_jail(dir, pinned.as_ref().map(|fd| fd.as_fd()))?.0;
    cmd.args(origin.args()).envs(origin.env());
    Ok(cmd)
}

/// Opens a local origin's folder for one command and checks that it is still
/// the folder registered: the path, resolved now, must be the stored (resolved)
/// path itself, so no symlink has been put on its way since (toward another
/// organization's files or Kiln's data dir), and it must not lie in the data
/// dir. The check is made on the open folder, and the repository jail grants
/// that very folder, so a swap after the check leaves git with nothing to read.
pub fn pin_local_source(path: &Path) -> Result<std::os::fd::OwnedFd, GitError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let moved = |why: &str| {
        GitError::SourceMoved(format!(
            "the repository's source folder {} {why}: Kiln no longer fetches from or pushes to it (put the folder back, or register the repository again)",
            path.display()
        ))
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|_| moved("is gone or is no longer a folder"))?;
    let now = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    if now != path {
        return Err(moved("now leads elsewhere through a symlink"));
    }
    if crate::confine::global().is_some_and(|c| c.touches_data_dir(&now)) {
        return Err(moved("now lies in Kiln's data dir"));
    }
    Ok(dir.into())
}

fn git_in_jail(dir: &Path, source: Option<std::os::fd::BorrowedFd<'_>>) -> Result<(Command, Option<std::path::PathBuf>), GitError> {
    use crate::confine::GitJail;
    let jail = match crate::confine::global() {
        Some(confiner) => confiner.git_jail(dir, source).map_err(|e| GitError::Failed { command: "(confinement)".into(), stderr: e.to_string() })?,
        None => GitJail::None,
    };
    let mut cmd = Command::new("git");
    let mut tmp = None;
    match &jail {
        GitJail::None => {}
        GitJail::Task { ruleset, env, tmp: dir } => {
            // Nothing of the server's environment: a config the agent wrote may
            // run a program here.
            cmd.env_clear();
            for key in ["PATH", "LANG"] {
                if let Some(v) = std::env::var_os(key) {
                    cmd.env(key, v);
                }
            }
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
            ruleset.confine_command(&mut cmd);
            tmp = Some(dir.clone());
        }
        GitJail::Repo { ruleset } => ruleset.confine_command(&mut cmd),
    }
    settings(&mut cmd);
    cmd.arg("-C").arg(dir);
    Ok((cmd, tmp))
}

/// Runs git in `dir` and returns its trimmed stdout.
pub fn run(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = git_in(dir)?.0.args(args).output().map_err(spawn_error)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(failure(args.first().copied().unwrap_or(""), out.status, &out.stderr, &out.stdout))
    }
}

/// The error for a git that ran and failed: its stderr (else its stdout) without
/// progress noise. When git printed nothing, or was killed by a signal, the
/// message says how it ended, so no error ever reads `…failed: ` and nothing.
pub fn failure(command: &str, status: ExitStatus, stderr: &[u8], stdout: &[u8]) -> GitError {
    let mut text = clean_stderr(stderr);
    if text.is_empty() {
        text = clean_stderr(stdout);
    }
    let ended = match (status.signal(), status.code()) {
        (Some(sig), _) => format!("git was killed by signal {sig} ({})", signal_name(sig)),
        (None, Some(code)) => format!("git exited with status {code}"),
        (None, None) => "git ended without an exit status".to_string(),
    };
    let stderr = if text.is_empty() {
        format!("{ended} and printed nothing")
    } else if status.signal().is_some() {
        format!("{text}\n({ended})")
    } else {
        text
    };
    GitError::Failed { command: command.to_string(), stderr }
}

/// The name of a signal number (`SIGKILL` for 9), for messages.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "an unnamed signal",
    }
}

pub(crate) fn spawn_error(e: std::io::Error) -> GitError {
    if e.kind() == std::io::ErrorKind::NotFound {
        GitError::Missing(e)
    } else {
        GitError::Io(e)
    }
}

/// Whether `path` is inside a git repository (bare or not).
pub fn is_repository(path: &Path) -> Result<bool, GitError> {
    match run(path, &["rev-parse", "--git-dir"]) {
        Ok(_) => Ok(true),
        Err(GitError::Failed { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `git clone --bare` from `source` (a URL or path) into `dest`, reporting progress
/// to `on_progress` and stopping after `timeout`. Later fetches go to
/// `refs/remotes/origin/*`, so they never move a task branch.
///
/// A local source is cloned with `--no-local` (git's transport, not hard links or
/// a copy of its object folder), and git runs inside the new, empty `dest`, so a
/// relative name (`host:path`) can never match a folder of the server's.
pub fn clone_bare(
    source: &str,
    dest: &Path,
    timeout: Duration,
    origin: &Origin,
    mut on_progress: impl FnMut(CloneProgress),
) -> Result<(), GitError> {
    if let Some(why) = &origin.refused {
        return Err(GitError::HostRefused(why.clone()));
    }
    std::fs::create_dir(dest)?;
    let mut cmd = git();
    cmd.args(origin.args()).args(["clone", "--bare", "--progress"]);
    if origin.local.is_some() {
        cmd.arg("--no-local");
    }
    let mut child = cmd
        .arg("--")
        .arg(source)
        .arg(dest)
        .current_dir(dest)
        .envs(origin.env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let mut stderr = child.stderr.take().ok_or_else(|| GitError::Io(std::io::Error::other("no stderr")))?;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut all = Vec::new();
    let mut tracker = ProgressTracker::default();
    let status = loop {
        while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(50)) {
            all.extend_from_slice(&chunk);
            for p in tracker.feed(&chunk) {
                on_progress(p);
            }
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            return Err(GitError::TimedOut { command: "clone".into(), secs: timeout.as_secs() });
        }
    };
    let _ = reader.join();
    while let Ok(chunk) = rx.try_recv() {
        all.extend_from_slice(&chunk);
    }
    if !status.success() {
        return Err(failure("clone", status, &all, &[]));
    }
    run(dest, &["config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"])?;
    Ok(())
}

/// The branch `HEAD` points at in a repository (`main` for `refs/heads/main`).
pub fn default_branch(repo: &Path) -> Result<String, GitError> {
    let full = run(repo, &["symbolic-ref", "--quiet", "HEAD"])?;
    Ok(full.strip_prefix("refs/heads/").unwrap_or(&full).to_string())
}

/// Whether `branch` exists locally or as origin's (`refs/remotes/origin/…`).
pub fn base_exists(repo: &Path, branch: &str) -> Result<bool, GitError> {
    if branch_exists(repo, branch)? {
        return Ok(true);
    }
    ref_exists(repo, &format!("refs/remotes/origin/{branch}"))
}

/// Whether the ref `refname` exists in `repo`. Only git's "no such ref" answer
/// (status 1) is `false`: a repository git cannot read is an error, never a
/// missing branch.
fn ref_exists(repo: &Path, refname: &str) -> Result<bool, GitError> {
    let out = git_in(repo)?.0.args(["show-ref", "--verify", "--quiet", "--", refname]).output().map_err(spawn_error)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failure("show-ref", out.status, &out.stderr, &out.stdout)),
    }
}

/// Whether `refs/heads/<branch>` exists in `repo`.
pub fn branch_exists(repo: &Path, branch: &str) -> Result<bool, GitError> {
    ref_exists(repo, &format!("refs/heads/{branch}"))
}

/// Adds a worktree at `path` on `branch`: a new branch from `base` when it does
/// not exist yet, else the existing branch (a resumed task).
pub fn worktree_add(mirror: &Path, path: &Path, branch: &str, base: &str) -> Result<(), GitError> {
    let path_str = path.to_string_lossy().to_string();
    // Forget worktrees whose folders are gone, so their paths and branches are free.
    run(mirror, &["worktree", "prune"])?;
    if branch_exists(mirror, branch)? {
        run(mirror, &["worktree", "add", "--", &path_str, branch])?;
    } else {
        let start = base_ref(mirror, base);
        run(mirror, &["worktree", "add", "--no-track", "-b", branch, "--", &path_str, &start])?;
    }
    Ok(())
}

/// Removes the worktree at `path` (forcefully: its work was snapshotted first) and
/// prunes stale worktree records.
pub fn worktree_remove(mirror: &Path, path: &Path) -> Result<(), GitError> {
    let path_str = path.to_string_lossy().to_string();
    if path.exists() {
        if let Err(e) = run(mirror, &["worktree", "remove", "--force", "--force", "--", &path_str]) {
            log::warn!("git worktree remove failed ({}); removing the folder", e.message());
            std::fs::remove_dir_all(path)?;
        }
    }
    run(mirror, &["worktree", "prune"])?;
    Ok(())
}

/// A mirror's object store, as `git count-objects -v` counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    /// Loose objects (one file each).
    pub loose: u64,
    /// Objects in packs.
    pub in_packs: u64,
    /// Pack files.
    pub packs: u64,
}

/// Counts the objects of the repository at `dir`.
pub fn count_objects(dir: &Path) -> Result<ObjectCounts, GitError> {
    let out = run(dir, &["count-objects", "-v"])?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ObjectCounts { loose: field("count"), in_packs: field("in-pack"), packs: field("packs") })
}

/// Packs a mirror's refs and objects without deleting any object, the
/// maintenance `gc.auto=0` otherwise never gets. The caller holds the mirror's
/// lock and has made sure no task of the repository is active (their worktrees
/// share this object store, and a running agent's jail holds the fan-out folders
/// `repack -d` may remove when it empties them).
///
/// - `pack-refs --all`: loose refs into `packed-refs` (a symlink into `packed/`,
///   which git follows).
/// - `repack -a -d -k`: every object into one pack; `-k` keeps unreachable
///   objects (appended to the pack) instead of dropping them, so a snapshot, a
///   dangling commit someone still means to recover, or an object a worktree's
///   index names is never lost. No `prune`, no reflog expiry. Bitmaps are off:
///   they cannot cover the kept unreachable objects.
///
/// Answers the counts before and after.
pub fn maintain_mirror(mirror: &Path) -> Result<(ObjectCounts, ObjectCounts), GitError> {
    let before = count_objects(mirror)?;
    run(mirror, &["pack-refs", "--all"])?;
    run(mirror, &["-c", "repack.writeBitmaps=false", "repack", "-a", "-d", "-k", "-q"])?;
    let after = count_objects(mirror)?;
    Ok((before, after))
}

/// Saves everything uncommitted in the worktree at `path` (modified, staged and
/// untracked files; not ignored ones) as a commit on top of HEAD, stored under
/// `refname`, without touching the worktree or its index. Answers the commit, or
/// `None` when there was nothing to save.
pub fn snapshot(path: &Path, refname: &str, message: &str) -> Result<Option<String>, GitError> {
    let dirty = run(path, &["status", "--porcelain", "--untracked-files=all"])?;
    if dirty.is_empty() {
        return Ok(None);
    }
    let index = ScratchIndex::new(path, "snapshot")?;
    let tree = index.worktree_tree(path, None)?;
    let commit = index.git(path, &["commit-tree", &tree, "-p", "HEAD", "-m", message], &[])?;
    index.git(path, &["update-ref", refname, &commit], &[])?;
    Ok(Some(commit))
}

/// The message of a [`worktree_state`] commit.
pub const STATE_MESSAGE: &str = "kiln: worktree state (conflict prediction)";

/// Everything a worktree holds right now, as one commit: `head` itself when the
/// worktree has nothing uncommitted, else a commit of its files (built as a
/// snapshot is: a scratch index, never the worktree's own) on top of `head`,
/// with a fixed author, date and message, so the same files on the same `head`
/// are always the same commit. No ref points at it. The scratch index starts as
/// a copy of the worktree's own, so files whose stat data did not change are
/// not read again.
pub fn worktree_state(path: &Path) -> Result<String, GitError> {
    let out = run(path, &["rev-parse", "HEAD", "HEAD^{tree}", "--path-format=absolute", "--git-path", "index"])?;
    let mut lines = out.lines();
    let (Some(head), Some(head_tree), Some(real_index)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(GitError::Failed { command: "rev-parse".into(), stderr: format!("unexpected answer: {out}") });
    };
    let index = ScratchIndex::new(path, "state")?;
    let tree = index.worktree_tree(path, Some(Path::new(real_index)))?;
    if tree == head_tree {
        return Ok(head.to_string());
    }
    let fixed: Vec<(String, String)> = [
        ("GIT_AUTHOR_NAME", "Kiln"),
        ("GIT_AUTHOR_EMAIL", "kiln@localhost"),
        ("GIT_AUTHOR_DATE", "@0 +0000"),
        ("GIT_COMMITTER_NAME", "Kiln"),
        ("GIT_COMMITTER_EMAIL", "kiln@localhost"),
        ("GIT_COMMITTER_DATE", "@0 +0000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    index.git(path, &["commit-tree", &tree, "-p", head, "-m", STATE_MESSAGE], &fixed)
}

/// A temporary index for Kiln's own git in a worktree: in the task's temp dir
/// when confined (git runs in the task's jail), removed when dropped.
struct ScratchIndex {
    path: PathBuf,
}

impl ScratchIndex {
    fn new(worktree: &Path, purpose: &str) -> Result<ScratchIndex, GitError> {
        let tmp = git_in(worktree)?.1.unwrap_or_else(std::env::temp_dir);
        Ok(ScratchIndex { path: tmp.join(format!("kiln-{purpose}-{}.index", crate::util::random_hex(12))) })
    }

    /// Runs git in `worktree` on this index, as Kiln (for the commits it makes).
    fn git(&self, worktree: &Path, args: &[&str], env: &[(String, String)]) -> Result<String, GitError> {
        let out = git_in(worktree)?
            .0
            .args(args)
            .env("GIT_INDEX_FILE", &self.path)
            .env("GIT_AUTHOR_NAME", "Kiln")
            .env("GIT_AUTHOR_EMAIL", "kiln@localhost")
            .env("GIT_COMMITTER_NAME", "Kiln")
            .env("GIT_COMMITTER_EMAIL", "kiln@localhost")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .map_err(spawn_error)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(failure(args.first().copied().unwrap_or(""), out.status, &out.stderr, &out.stdout))
        }
    }

    /// The tree of everything in the worktree: HEAD's files with every change
    /// on top, untracked files too (not ignored ones). Starts from a copy of
    /// `seed` (the worktree's own index, for its stat cache) when given and a
    /// plain file, else from HEAD's tree.
    fn worktree_tree(&self, worktree: &Path, seed: Option<&Path>) -> Result<String, GitError> {
        match seed.map(|s| copy_regular(s, &self.path)) {
            Some(Ok(true)) => {}
            Some(Err(e)) => return Err(GitError::Io(e)),
            _ => {
                self.git(worktree, &["read-tree", "HEAD"], &[])?;
            }
        }
        self.git(worktree, &["add", "--all", "--", "."], &[])?;
        self.git(worktree, &["write-tree"], &[])
    }
}

impl Drop for ScratchIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies `from` to `to` when `from` is a regular file, never following a
/// symlink (the agent owns its worktree's git dir: a link there must not make
/// the server read another file); `false` when there is no such file.
pub(crate) fn copy_regular(from: &Path, to: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let src = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(from) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(e),
    };
    if !src.metadata()?.is_file() {
        return Ok(false);
    }
    let mut dst = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to)?;
    std::io::copy(&mut (&src), &mut dst)?;
    Ok(true)
}

/// Tries each merge of `pairs` (two commits each) as `git merge-tree
/// --write-tree` would, in one git run (`--stdin`), in the mirror. Answers, for
/// each pair in order, the files that would conflict (empty: it merges
/// cleanly). git writes the merged trees into the mirror's object store and
/// changes no ref, index or worktree.
pub fn merge_conflicts(mirror: &Path, pairs: &[(String, String)]) -> Result<Vec<Vec<String>>, GitError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let mut child = git_in(mirror)?
        .0
        .args(["merge-tree", "--stdin", "-z", "--name-only", "--no-messages"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let input: String = pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
    let mut stdin = child.stdin.take().ok_or_else(|| GitError::Io(std::io::Error::other("no stdin")))?;
    // Written from a thread: git answers as it reads, and a full pipe each way
    // would hold both sides.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(failure("merge-tree", out.status, &out.stderr, &[]));
    }
    parse_merge_batch(&out.stdout, pairs.len())
}

/// Parses `merge-tree --stdin -z --name-only --no-messages`: per merge, its
/// status (`1` clean, `0` conflicted), the tree, each conflicted file, and an
/// empty field; every field ends in NUL.
fn parse_merge_batch(raw: &[u8], expected: usize) -> Result<Vec<Vec<String>>, GitError> {
    let bad = |why: &str| GitError::Failed { command: "merge-tree".into(), stderr: format!("unexpected answer: {why}") };
    let mut fields = raw.split(|b| *b == 0);
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected {
        let status = fields.next().ok_or_else(|| bad("too few merges"))?;
        fields.next().ok_or_else(|| bad("no tree"))?;
        let mut files = Vec::new();
        loop {
            match fields.next() {
                Some([]) => break,
                Some(name) => files.push(String::from_utf8_lossy(name).into_owned()),
                None => return Err(bad("a file list without its end")),
            }
        }
        match status {
            b"1" if files.is_empty() => out.push(files),
            b"0" if !files.is_empty() => out.push(files),
            // Conflicted with no file named (a rare directory/rename case): say
            // that something conflicts rather than nothing.
            b"0" => out.push(vec![".".to_string()]),
            _ => return Err(bad("a status that is neither 0 nor 1")),
        }
    }
    Ok(out)
}

/// The files `commit` changed since it left `base` (`git diff base...commit`:
/// against their merge-base), in the mirror.
pub fn changed_since_fork(mirror: &Path, base: &str, commit: &str) -> Result<Vec<String>, GitError> {
    let out = git_in(mirror)?
        .0
        .args(["diff", "--name-only", "-z", "--no-renames", &format!("{base}...{commit}"), "--"])
        .output()
        .map_err(spawn_error)?;
    if !out.status.success() {
        return Err(failure("diff", out.status, &out.stderr, &out.stdout));
    }
    Ok(out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect())
}

/// Runs git in `dir` with extra environment; answers stdout, or git's stderr.
fn run_env(dir: &Path, args: &[&str], env: &[(String, String)]) -> Result<String, GitError> {
    let out = git_in(dir)?
        .0
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(spawn_error)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(failure(args.first().copied().unwrap_or(""), out.status, &out.stderr, &out.stdout))
    }
}

/// The identity for commits Kiln makes (rebases, snapshots, automatic commits),
/// unless the repository configures one.
fn identity(dir: &Path) -> Vec<(String, String)> {
    if run(dir, &["config", "user.email"]).is_ok_and(|e| !e.is_empty()) {
        return Vec::new();
    }
    ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"]
        .into_iter()
        .map(|k| (k.to_string(), "Kiln".to_string()))
        .chain(["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"].into_iter().map(|k| (k.to_string(), "kiln@localhost".to_string())))
        .collect()
}

/// Credentials for a remote, handed to git through `GIT_ASKPASS` (this binary,
/// answering from its environment), never in a URL or an argument.
#[derive(Clone)]
pub struct Credentials {
    pub askpass: std::path::PathBuf,
    /// The user name; `None` answers `x-access-token` (GitHub's name for tokens).
    pub user: Option<String>,
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("askpass", &self.askpass).field("token", &"(hidden)").finish()
    }
}

impl Credentials {
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("GIT_ASKPASS".into(), self.askpass.to_string_lossy().to_string()),
            ("KILN_GIT_ASKPASS".into(), "1".into()),
            ("KILN_GIT_TOKEN".into(), self.token.clone()),
            // No credential helper may store the token.
            ("GIT_CONFIG_COUNT".into(), "1".into()),
            ("GIT_CONFIG_KEY_0".into(), "credential.helper".into()),
            ("GIT_CONFIG_VALUE_0".into(), "".into()),
        ];
        if let Some(user) = &self.user {
            env.push(("KILN_GIT_USER".into(), user.clone()));
        }
        env
    }
}

/// Answers git's askpass prompt from `KILN_GIT_TOKEN`: the token as password,
/// `KILN_GIT_USER` as user name, else `x-access-token` (GitHub's convention for tokens).
pub fn askpass_answer(prompt: &str) -> Option<String> {
    let token = std::env::var("KILN_GIT_TOKEN").ok()?;
    Some(if prompt.to_ascii_lowercase().starts_with("username") {
        std::env::var("KILN_GIT_USER").unwrap_or_else(|_| "x-access-token".into())
    } else {
        token
    })
}

/// The commit `rev` names.
pub fn rev_parse(dir: &Path, rev: &str) -> Result<String, GitError> {
    run(dir, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")])
}

/// Whether `ancestor` is an ancestor of (or the same commit as) `descendant`.
/// An object this repository does not have answers `false`.
pub fn is_ancestor(dir: &Path, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
    let (Ok(a), Ok(d)) = (rev_parse(dir, ancestor), rev_parse(dir, descendant)) else { return Ok(false) };
    match run(dir, &["merge-base", &a, &d]) {
        Ok(base) => Ok(base.trim() == a),
        Err(GitError::Missing(m)) => Err(GitError::Missing(m)),
        Err(_) => Ok(false),
    }
}

/// How many files differ from HEAD in a worktree (tracked changes and untracked files).
pub fn dirty_count(worktree: &Path) -> Result<usize, GitError> {
    // A read for a poller: it must never take the worktree's index lock, which
    // the agent's own git (or `git worktree add` itself) may need at that moment.
    Ok(run(worktree, &["--no-optional-locks", "status", "--porcelain", "--untracked-files=all"])?.lines().count())
}

/// Commits everything in the worktree (`git add -A`); `None` when there was nothing.
pub fn commit_all(worktree: &Path, message: &str) -> Result<Option<String>, GitError> {
    if dirty_count(worktree)? == 0 {
        return Ok(None);
    }
    let env = identity(worktree);
    run_env(worktree, &["add", "--all", "--", "."], &env)?;
    run_env(worktree, &["commit", "--quiet", "--no-verify", "-m", message], &env)?;
    rev_parse(worktree, "HEAD").map(Some)
}

/// What a push may replace on origin's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Nothing: a plain push, which git allows only as a fast-forward.
    FastForwardOnly,
    /// Exactly this state of the branch (`None`: the branch must not exist), checked
    /// by the remote as it updates the ref (`--force-with-lease=<ref>:<sha>`).
    Expect(Option<String>),
}

/// Pushes HEAD of the worktree to `origin` as `branch`, replacing only what
/// `lease` allows, and sets the branch's upstream. Answers the pushed commit. A
/// refusal is `GitError::Failed` with git's message and the refused ref's status
/// line. The push runs in the mirror, never in the worktree: the agent can point
/// its worktree's git at a config of its own (another remote URL), and the
/// credentials must only ever meet the mirror's config, which it cannot write.
pub fn push(worktree: &Path, mirror: &Path, branch: &str, lease: &Lease, origin: &Origin) -> Result<String, GitError> {
    let head = rev_parse(worktree, "HEAD")?;
    push_rev(mirror, &head, branch, lease, origin)
}

/// Pushes the commit `head` (present in the mirror) to `origin` as `branch`,
/// as [`push`] does for a worktree's HEAD (a remote sandbox's branch is brought
/// into the mirror first).
pub fn push_rev(mirror: &Path, head: &str, branch: &str, lease: &Lease, origin: &Origin) -> Result<String, GitError> {
    let head = head.to_string();
    let refname = format!("refs/heads/{branch}");
    let mut args = vec!["push".to_string(), "--porcelain".into()];
    if let Lease::Expect(expect) = lease {
        args.push(format!("--force-with-lease={refname}:{}", expect.as_deref().unwrap_or("")));
    }
    args.extend(["origin".into(), format!("{head}:{refname}")]);
    let out = git_for_origin(mirror, origin)?.args(&args).output().map_err(spawn_error)?;
    if !out.status.success() {
        return Err(push_failure(&out));
    }
    // The worktree's `git status` compares with origin's copy (best effort).
    let _ = run(mirror, &["branch", "--quiet", &format!("--set-upstream-to=origin/{branch}"), "--", branch]);
    Ok(head)
}

/// The commit `branch` points at on origin, asked of origin itself (not the last
/// fetch); `None` when origin has no such branch.
pub fn remote_head(dir: &Path, branch: &str, origin: &Origin) -> Result<Option<String>, GitError> {
    let refname = format!("refs/heads/{branch}");
    let out = run_origin(dir, &["ls-remote", "--heads", "origin", &refname], origin)?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(_, r)| r.trim() == refname)
        .map(|(sha, _)| sha.trim().to_string()))
}

/// Fetches `branch` from origin into `refs/remotes/origin/<branch>`.
pub fn fetch_branch(dir: &Path, branch: &str, origin: &Origin) -> Result<(), GitError> {
    let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
    run_origin(dir, &["fetch", "--quiet", "--no-tags", "origin", &refspec], origin).map(|_| ())
}

/// Fetches every branch of origin into `refs/remotes/origin/*` (and prunes).
pub fn fetch_all(mirror: &Path, origin: &Origin) -> Result<(), GitError> {
    run_origin(mirror, &["fetch", "--quiet", "--prune", "--no-tags", "origin"], origin).map(|_| ())
}

/// Runs git in `dir` talking to `origin` (see [`git_for_origin`]).
fn run_origin(dir: &Path, args: &[&str], origin: &Origin) -> Result<String, GitError> {
    let out = git_for_origin(dir, origin)?.args(args).output().map_err(spawn_error)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(failure(args.first().copied().unwrap_or(""), out.status, &out.stderr, &out.stdout))
    }
}

/// What integrating the base into a branch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integration {
    /// Done; the new head.
    Clean(String),
    /// Conflicts in these files; nothing was changed.
    Conflicts(Vec<String>),
}

fn conflicted_files(dir: &Path) -> Vec<String> {
    run(dir, &["diff", "--name-only", "--diff-filter=U"])
        .map(|out| out.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Rebases the worktree's branch onto `upstream` (or merges it in), stashing
/// and restoring uncommitted work. On a conflict it aborts, leaving the worktree
/// exactly as it was, and answers the conflicting files.
///
/// A conflict between the uncommitted work and the new base counts too: git's
/// autostash then exits 0 with the work parked in the stash and the worktree
/// full of conflict markers. That sync is undone (the branch back where it was,
/// the work applied back onto it), so nothing is left in a stash nobody reads.
pub fn integrate(worktree: &Path, upstream: &str, merge: bool) -> Result<Integration, GitError> {
    let env = identity(worktree);
    let before = rev_parse(worktree, "HEAD")?;
    let stash_before = stash_top(worktree);
    let attempt = if merge {
        run_env(worktree, &["merge", "--autostash", "--no-edit", upstream], &env)
    } else {
        run_env(worktree, &["rebase", "--autostash", upstream], &env)
    };
    match attempt {
        Ok(_) => match stash_top(worktree).filter(|top| Some(top) != stash_before.as_ref()) {
            Some(parked) => undo_parked_autostash(worktree, &before, &parked, &env),
            None => Ok(Integration::Clean(rev_parse(worktree, "HEAD")?)),
        },
        Err(GitError::Failed { stderr, command }) => {
            let files = conflicted_files(worktree);
            let abort = if merge { ["merge", "--abort"] } else { ["rebase", "--abort"] };
            let _ = run_env(worktree, &abort, &env);
            if files.is_empty() {
                Err(GitError::Failed { command, stderr })
            } else {
                Ok(Integration::Conflicts(files))
            }
        }
        Err(e) => Err(e),
    }
}

/// The newest stash entry's commit, if there is one.
fn stash_top(dir: &Path) -> Option<String> {
    run(dir, &["rev-parse", "-q", "--verify", "refs/stash"]).ok().filter(|s| !s.is_empty())
}

/// After an integration whose autostash did not apply (`parked` is the stash
/// entry git stored): notes the conflicting files, puts the branch back on
/// `before` and the work back onto it (where it came from, so it applies), and
/// drops the entry. Answers the conflicts; an error says where the work is if
/// it could not be put back.
fn undo_parked_autostash(worktree: &Path, before: &str, parked: &str, env: &[(String, String)]) -> Result<Integration, GitError> {
    let files = conflicted_files(worktree);
    run_env(worktree, &["reset", "--hard", "--quiet", before], env)?;
    if run_env(worktree, &["stash", "apply", "--index", "--quiet", parked], env).is_err() {
        run_env(worktree, &["reset", "--hard", "--quiet", before], env)?;
        if let Err(e) = run_env(worktree, &["stash", "apply", "--quiet", parked], env) {
            return Err(GitError::Failed {
                command: "sync".into(),
                stderr: format!("the uncommitted work conflicts with the new base and could not be put back; it is safe in the stash as {parked}: {e}"),
            });
        }
    }
    // Drop exactly that entry (the stash is shared by every worktree of the mirror).
    let entries = run(worktree, &["reflog", "show", "--format=%H", "refs/stash"]).unwrap_or_default();
    if let Some(i) = entries.lines().position(|l| l.trim() == parked) {
        let _ = run_env(worktree, &["stash", "drop", "--quiet", &format!("stash@{{{i}}}")], env);
    }
    if files.is_empty() {
        return Err(GitError::Failed { command: "sync".into(), stderr: "the uncommitted work does not apply on the new base; nothing was changed".into() });
    }
    Ok(Integration::Conflicts(files))
}

/// Merges `branch` into `base` inside a bare repository without a worktree
/// (`git merge-tree`), as a merge commit or a squash; answers the new base
/// commit, or the conflicting files. Nothing is written on a conflict.
pub fn merge_in_bare(mirror: &Path, base_rev: &str, branch_rev: &str, squash: bool, message: &str) -> Result<Integration, GitError> {
    let out = git_in(mirror)?
        .0
        .args(["merge-tree", "--write-tree", "--name-only", base_rev, branch_rev])
        .output()
        .map_err(spawn_error)?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = stdout.lines();
    let tree = lines.next().unwrap_or_default().trim().to_string();
    match out.status.code() {
        Some(0) => {}
        Some(1) => {
            let files: Vec<String> = lines.take_while(|l| !l.is_empty()).map(str::to_string).collect();
            return Ok(Integration::Conflicts(files));
        }
        _ => return Err(failure("merge-tree", out.status, &out.stderr, &[])),
    }
    let env = identity(mirror);
    let base = rev_parse(mirror, base_rev)?;
    let head = rev_parse(mirror, branch_rev)?;
    let mut args = vec!["commit-tree", tree.as_str(), "-p", base.as_str()];
    if !squash {
        args.extend(["-p", head.as_str()]);
    }
    args.extend(["-m", message]);
    Ok(Integration::Clean(run_env(mirror, &args, &env)?))
}

/// The files that would conflict merging `branch_rev` into `base_rev`, from
/// `git merge-tree --write-tree --name-only` in a bare repository: nothing is
/// written but loose objects. Empty when they merge cleanly.
pub fn merge_conflict_files(mirror: &Path, base_rev: &str, branch_rev: &str) -> Result<Vec<String>, GitError> {
    let out = git_in(mirror)?
        .0
        .args(["merge-tree", "--write-tree", "--name-only", "--no-messages", base_rev, branch_rev])
        .output()
        .map_err(spawn_error)?;
    match out.status.code() {
        Some(0) => Ok(Vec::new()),
        Some(1) => Ok(String::from_utf8_lossy(&out.stdout).lines().skip(1).take_while(|l| !l.is_empty()).map(str::to_string).collect()),
        _ => Err(failure("merge-tree", out.status, &out.stderr, &[])),
    }
}

/// Pushes a commit to `refs/heads/<branch>` on origin (no force).
pub fn push_commit(mirror: &Path, commit: &str, branch: &str, origin: &Origin) -> Result<(), GitError> {
    let refspec = format!("{commit}:refs/heads/{branch}");
    let out = git_for_origin(mirror, origin)?.args(["push", "--porcelain", "origin", &refspec]).output().map_err(spawn_error)?;
    if !out.status.success() {
        return Err(push_failure(&out));
    }
    Ok(())
}

/// A failed push's error: with `--porcelain`, why a ref was refused
/// (`! … [rejected] (non-fast-forward)`) is on stdout, so those lines lead.
fn push_failure(out: &std::process::Output) -> GitError {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut text: Vec<u8> = stdout.lines().filter(|l| l.starts_with('!')).flat_map(|l| format!("{l}\n").into_bytes()).collect();
    text.extend_from_slice(&out.stderr);
    failure("push", out.status, &text, &out.stdout)
}

/// Whether a push was refused because the remote branch moved on (someone
/// pushed first: not a fast-forward, or a lease that no longer holds), as
/// opposed to a remote that could not be reached or a rule that refused it.
pub fn refused_because_moved(err: &GitError) -> bool {
    let GitError::Failed { stderr, .. } = err else { return false };
    let lower = stderr.to_ascii_lowercase();
    lower.lines().any(|l| l.starts_with('!') && (l.contains("non-fast-forward") || l.contains("fetch first") || l.contains("stale info")))
}

/// Every branch of a repository with its head: origin's copy (as last fetched)
/// where there is one, else the local branch (task branches not pushed yet, or a
/// repository never fetched). Task branches (`kiln/…`) are always the local ones.
pub fn branch_heads(mirror: &Path) -> Result<Vec<(String, String)>, GitError> {
    let refs = |prefix: &str| -> Result<Vec<(String, String)>, GitError> {
        let out = run(mirror, &["for-each-ref", "--format=%(refname) %(objectname)", prefix])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(r, s)| r.strip_prefix(prefix).map(|n| (n.trim_start_matches('/').to_string(), s.to_string())))
            .filter(|(n, _)| n != "HEAD")
            .collect())
    };
    let mut heads: std::collections::BTreeMap<String, String> = refs("refs/heads")?.into_iter().collect();
    for (name, sha) in refs("refs/remotes/origin")? {
        if !name.starts_with("kiln/") {
            heads.insert(name, sha);
        }
    }
    Ok(heads.into_iter().collect())
}

/// Commits `branch` has that `base` lacks, and the other way round.
pub fn ahead_behind(mirror: &Path, base: &str, branch: &str) -> Result<(i32, i32), GitError> {
    let out = run(mirror, &["rev-list", "--left-right", "--count", &format!("{base}...{branch}")])?;
    let mut parts = out.split_whitespace().map(|n| n.parse::<i32>().unwrap_or(0));
    let behind = parts.next().unwrap_or(0);
    let ahead = parts.next().unwrap_or(0);
    Ok((ahead, behind))
}

/// One-line subjects of the commits on `branch` that `base` lacks, oldest first.
pub fn commit_subjects(dir: &Path, base: &str, branch: &str) -> Result<Vec<String>, GitError> {
    let out = run(dir, &["log", "--reverse", "--format=%s", &format!("{base}..{branch}")])?;
    Ok(out.lines().map(str::to_string).collect())
}

/// The best ref for a base branch: origin's copy when fetched, else the local one.
pub fn base_ref(mirror: &Path, base: &str) -> String {
    let remote = format!("refs/remotes/origin/{base}");
    if rev_parse(mirror, &remote).is_ok() {
        remote
    } else {
        format!("refs/heads/{base}")
    }
}

/// Turns git's progress output into a few meaningful steps: one per phase change
/// and one per 10% within a phase.
#[derive(Default)]
struct ProgressTracker {
    partial: String,
    last: Option<(String, u8)>,
}

impl ProgressTracker {
    fn feed(&mut self, chunk: &[u8]) -> Vec<CloneProgress> {
        self.partial.push_str(&String::from_utf8_lossy(chunk));
        let mut out = Vec::new();
        while let Some(pos) = self.partial.find(['\r', '\n']) {
            let line: String = self.partial.drain(..=pos).collect();
            if let Some(p) = parse_progress(line.trim()) {
                let bucket = p.percent / 10;
                let changed = match &self.last {
                    Some((phase, b)) => *phase != p.phase || *b != bucket,
                    None => true,
                };
                if changed {
                    self.last = Some((p.phase.clone(), bucket));
                    out.push(p);
                }
            }
        }
        out
    }
}

fn parse_progress(line: &str) -> Option<CloneProgress> {
    let line = line.strip_prefix("remote: ").unwrap_or(line);
    let (phase, rest) = line.split_once(':')?;
    let pct_end = rest.find('%')?;
    let percent: u8 = rest[..pct_end].trim().parse().ok()?;
    Some(CloneProgress { phase: phase.trim().to_string(), percent: percent.min(100) })
}

/// git's stderr without progress noise, at most 2,000 characters.
fn clean_stderr(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty() && parse_progress(l).is_none() && !l.starts_with("Cloning into"))
        .collect();
    let joined = lines.join("\n");
    crate::validate::truncate(&joined, 2000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository on branch `t` forked from `main`, where `main` then changed
    /// `f` and `t` has `f` changed (uncommitted) the other way.
    fn uncommitted_work_against_a_moved_base() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let sh = |script: &str| {
            let ok = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir.path()).env("GIT_CONFIG_NOSYSTEM", "1").status().unwrap().success();
            assert!(ok, "{script}");
        };
        sh("git init -q -b main && git config user.email t@t && git config user.name t && printf 'a\\n' > f && printf 'x\\n' > g && git add f g && git commit -qm a");
        sh("git checkout -qb t && printf 'mine\\n' > g && git commit -qam mine && git checkout -q main && printf 'b\\n' > f && git commit -qam b && git checkout -q t");
        sh("printf 'c\\n' > f && printf 'staged\\n' > h && git add h && printf 'new\\n' > untracked");
        dir
    }

    #[test]
    fn uncommitted_work_that_conflicts_with_the_new_base_undoes_the_sync_and_keeps_the_work() {
        for merge in [false, true] {
            let dir = uncommitted_work_against_a_moved_base();
            let before = rev_parse(dir.path(), "HEAD").unwrap();
            match integrate(dir.path(), "main", merge).unwrap() {
                Integration::Conflicts(files) => assert_eq!(files, vec!["f".to_string()], "merge={merge}"),
                Integration::Clean(head) => panic!("merge={merge}: a conflicting autostash was called clean at {head}"),
            }
            assert_eq!(rev_parse(dir.path(), "HEAD").unwrap(), before, "merge={merge}: the branch is back where it was");
            let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert_eq!((read("f"), read("h"), read("untracked")), ("c\n".into(), "staged\n".into(), "new\n".into()), "merge={merge}");
            assert_eq!(run(dir.path(), &["diff", "--cached", "--name-only"]).unwrap(), "h", "merge={merge}: the index as it was");
            assert!(stash_top(dir.path()).is_none(), "merge={merge}: nothing left in the stash");
        }
    }

    #[test]
    fn progress_is_thinned_to_phases_and_tens() {
        let mut t = ProgressTracker::default();
        let mut steps = Vec::new();
        let input = "Cloning into bare repository 'x'...\nremote: Counting objects:   1% (1/100)\rremote: Counting objects:   5% (5/100)\rremote: Counting objects: 100% (100/100), done.\nReceiving objects:  12% (12/100)\rReceiving objects:  19% (19/100)\rReceiving objects:  20% (20/100)\r";
        for chunk in input.as_bytes().chunks(7) {
            steps.extend(t.feed(chunk));
        }
        let seen: Vec<(String, u8)> = steps.into_iter().map(|p| (p.phase, p.percent)).collect();
        assert_eq!(
            seen,
            vec![
                ("Counting objects".into(), 1),
                ("Counting objects".into(), 100),
                ("Receiving objects".into(), 12),
                ("Receiving objects".into(), 20),
            ]
        );
    }

    #[test]
    fn a_push_refused_because_the_remote_moved_is_told_apart() {
        let failed = |stderr: &str| GitError::Failed { command: "push".into(), stderr: stderr.into() };
        for moved in ["!\tc0ffee:refs/heads/main\t[rejected] (fetch first)\nerror: failed to push some refs", "!\tx:refs/heads/main\t[rejected] (non-fast-forward)", "!\tx:refs/heads/k\t[rejected] (stale info)"] {
            assert!(refused_because_moved(&failed(moved)), "{moved}");
        }
        for other in [
            "fatal: unable to access 'https://h/x/': Could not resolve host: h",
            "!\tx:refs/heads/main\t[remote rejected] (pre-receive hook declined)",
            "hint: Updates were rejected because the remote contains work that you do not",
        ] {
            assert!(!refused_because_moved(&failed(other)), "{other}");
        }
        assert!(!refused_because_moved(&GitError::SourceMoved("x".into())));
    }

    #[test]
    fn a_git_that_printed_nothing_says_how_it_ended() {
        use std::os::unix::process::ExitStatusExt;
        // Raw wait statuses: a signal number alone, or the exit code shifted left by 8.
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        assert_eq!(failure("clone", killed, b"", b"").message(), "git was killed by signal 9 (SIGKILL) and printed nothing");
        let segv = ExitStatus::from_raw(libc::SIGSEGV);
        assert_eq!(
            failure("worktree", segv, b"Preparing worktree\n", b"").message(),
            "Preparing worktree\n(git was killed by signal 11 (SIGSEGV))"
        );
        let exited = ExitStatus::from_raw(128 << 8);
        assert_eq!(failure("fetch", exited, b"  \n", b"").message(), "git exited with status 128 and printed nothing");
        // Progress alone is no message either.
        assert_eq!(failure("clone", exited, b"Receiving objects:  12% (1/8)\r", b"").message(), "git exited with status 128 and printed nothing");
        // What git said wins; stdout when stderr is empty.
        assert_eq!(failure("push", exited, b"fatal: no such remote\n", b"").message(), "fatal: no such remote");
        assert_eq!(failure("push", exited, b"", b"! refs/heads/x [rejected]\n").message(), "! refs/heads/x [rejected]");
    }

    #[test]
    fn stderr_keeps_the_message_not_the_progress() {
        let raw = b"Cloning into bare repository 'x'...\nReceiving objects:  12% (1/8)\rfatal: repository 'x' does not exist\n";
        assert_eq!(clean_stderr(raw), "fatal: repository 'x' does not exist");
    }
}
