//! Confinement: what an agent (and anything Kiln runs on a task's or a
//! repository's files) may touch, enforced by the kernel with Landlock.
//!
//! The policy is an allow-list of paths, built in the parent *before* a child is
//! forked (paths are opened, the ruleset fd is ready); in the child, between fork
//! and exec, [`enter`] makes only async-signal-safe system calls:
//! `prctl(PR_SET_NO_NEW_PRIVS)`, `landlock_restrict_self`, and dropping every
//! capability. Everything the child starts inherits the domain.
//!
//! Three jails, by what runs in them:
//! - **a task's** (the agent, its setup commands, its sandbox-agent server, and
//!   Kiln's own git in its worktree): its worktree, its state dir's `tmp/`, its
//!   organization's agent home, what git needs in its repository's mirror, and
//!   the system read-only;
//! - **a repository's** (Kiln's own git on a mirror: fetch, push, the branch
//!   poller's reads, `worktree add/remove`): everything but the data dir, plus
//!   that mirror and that repository's worktrees folder;
//! - none, for everything else the server does.
//!
//! The decision (confine or not, and why) is made once at boot from
//! `[sandboxes]` and the kernel, and installed as the process-wide
//! [`Confiner`], so that git (`integrations/git.rs`) confines a command by the
//! path it runs in and no call site can forget to. Raw system calls are used on
//! purpose: the ruleset must be created in the parent and enforced in the child,
//! where nothing may allocate. `docs/operations.md` has the threat model.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use serde::Serialize;

use crate::config::{ConfineMode, SandboxesConfig};
use crate::error::AppError;

/// The newest Landlock ABI this build knows; a newer kernel is used at this level.
pub const KNOWN_ABI: u32 = 7;
/// The lowest ABI agents work under: ABI 1 refuses every rename across
/// directories, and git moves objects between directories.
pub const LOWEST_USABLE_ABI: u32 = 2;

#[allow(dead_code)] // every right is named, some are only refused
mod sys {
    pub const CREATE_RULESET_VERSION: u32 = 1;
    pub const RULE_PATH_BENEATH: u32 = 1;

    pub const EXECUTE: u64 = 1 << 0;
    pub const WRITE_FILE: u64 = 1 << 1;
    pub const READ_FILE: u64 = 1 << 2;
    pub const READ_DIR: u64 = 1 << 3;
    pub const REMOVE_DIR: u64 = 1 << 4;
    pub const REMOVE_FILE: u64 = 1 << 5;
    pub const MAKE_CHAR: u64 = 1 << 6;
    pub const MAKE_DIR: u64 = 1 << 7;
    pub const MAKE_REG: u64 = 1 << 8;
    pub const MAKE_SOCK: u64 = 1 << 9;
    pub const MAKE_FIFO: u64 = 1 << 10;
    pub const MAKE_BLOCK: u64 = 1 << 11;
    pub const MAKE_SYM: u64 = 1 << 12;
    pub const REFER: u64 = 1 << 13;
    pub const TRUNCATE: u64 = 1 << 14;
    pub const IOCTL_DEV: u64 = 1 << 15;

    pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
    pub const SCOPE_SIGNAL: u64 = 1 << 1;

    #[repr(C)]
    pub struct RulesetAttr {
        pub handled_access_fs: u64,
        pub handled_access_net: u64,
        pub scoped: u64,
    }

    #[repr(C, packed)]
    pub struct PathBeneathAttr {
        pub allowed_access: u64,
        pub parent_fd: i32,
    }

    /// Rights that apply to a file (not only to a directory).
    pub const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
}

/// Read and run: the system, toolchains.
const READ_EXEC: u64 = sys::EXECUTE | sys::READ_FILE | sys::READ_DIR;
/// Read only: the mirror's root (its config, HEAD, packed-refs, hooks), /proc, /sys.
const READ: u64 = sys::READ_FILE | sys::READ_DIR;
/// Everything, except making device nodes: a root agent that could `mknod` the
/// disk would read around every rule.
const READ_WRITE: u64 = READ_EXEC
    | sys::WRITE_FILE
    | sys::REMOVE_DIR
    | sys::REMOVE_FILE
    | sys::MAKE_DIR
    | sys::MAKE_REG
    | sys::MAKE_SOCK
    | sys::MAKE_FIFO
    | sys::MAKE_SYM
    | sys::REFER
    | sys::TRUNCATE
    | sys::IOCTL_DEV;
/// What git writes in a mirror for a worktree: objects, refs, logs, its entry.
/// No symlinks (Kiln's own git would follow them) and nothing executable.
const GIT_WRITE: u64 = READ
    | sys::WRITE_FILE
    | sys::REMOVE_DIR
    | sys::REMOVE_FILE
    | sys::MAKE_DIR
    | sys::MAKE_REG
    | sys::REFER
    | sys::TRUNCATE;
/// Character devices an agent reads and writes (`/dev/null`, `/dev/tty`, …).
const DEVICE: u64 = sys::READ_FILE | sys::WRITE_FILE | sys::IOCTL_DEV;
/// Everything a Landlock ABI knows; used for Kiln's own repository jail.
const EVERYTHING: u64 = (1 << 16) - 1;

/// The system, read and run by every jail.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/nix/store"];
/// Character devices every jail may use. `/dev/tty` is always the caller's own
/// terminal; other terminals (`/dev/pts/*`), disks and `/dev/shm` are not granted.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];

fn handled_fs(abi: u32) -> u64 {
    match abi {
        0 => 0,
        1 => (1 << 13) - 1,
        2 => (1 << 14) - 1,
        3 | 4 => (1 << 15) - 1,
        _ => (1 << 16) - 1,
    }
}

fn scopes(abi: u32) -> u64 {
    if abi >= 6 {
        sys::SCOPE_ABSTRACT_UNIX_SOCKET | sys::SCOPE_SIGNAL
    } else {
        0
    }
}

/// The Landlock ABI this kernel offers: 0 when it has none (too old, or Landlock
/// not enabled at boot, `lsm=`).
pub fn kernel_abi() -> u32 {
    static ABI: OnceLock<u32> = OnceLock::new();
    *ABI.get_or_init(|| {
        // SAFETY: the documented version query: no pointer is read.
        let rc = unsafe {
            libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<sys::RulesetAttr>(), 0usize, sys::CREATE_RULESET_VERSION)
        };
        if rc < 0 {
            0
        } else {
            rc as u32
        }
    })
}

/// What the server does about confinement, decided at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Agents run confined at this ABI.
    Confine { abi: u32 },
    /// Agents run unconfined (`auto` on a kernel without a usable Landlock, or
    /// `off`), for this reason.
    Unconfined { reason: String },
    /// `required`, and the kernel cannot: no agent starts, for this reason.
    Refuse { reason: String },
}

/// Decides from the mode, the kernel's ABI and the lowest ABI accepted.
pub fn decide(mode: ConfineMode, kernel_abi: u32, min_abi: u32) -> Decision {
    let min_abi = min_abi.max(LOWEST_USABLE_ABI);
    if mode == ConfineMode::Off {
        return Decision::Unconfined { reason: "confinement is turned off (sandboxes.confine = \"off\")".into() };
    }
    if kernel_abi >= min_abi {
        return Decision::Confine { abi: kernel_abi.min(KNOWN_ABI) };
    }
    let why = if kernel_abi == 0 {
        "this kernel offers no Landlock (Linux 5.13 or later, with landlock in the lsm= boot list, is needed)".to_string()
    } else {
        format!("this kernel's Landlock ABI is {kernel_abi}, below sandboxes.confine_min_abi ({min_abi})")
    };
    match mode {
        ConfineMode::Required => Decision::Refuse {
            reason: format!("sandboxes.confine is \"required\" but {why}: no agent may start unconfined"),
        },
        _ => Decision::Unconfined { reason: format!("agents run unconfined: {why}") },
    }
}

/// Whether a task's agent is confined, as shown in its detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub confined: bool,
    /// The Landlock ABI the rules were made for.
    pub abi: Option<u32>,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// A Landlock ruleset, ready to enforce: its rules are in, its fd is open.
/// Enforcing it ([`enter`]) adds a domain; a ruleset can be enforced any number of
/// times, in any number of children.
#[derive(Debug)]
pub struct Ruleset {
    fd: OwnedFd,
    abi: u32,
    /// Drop every capability on entry (agents; not Kiln's repository jail).
    drop_caps: bool,
}

impl Ruleset {
    fn create(abi: u32, scoped: u64, drop_caps: bool) -> std::io::Result<Ruleset> {
        let attr = sys::RulesetAttr { handled_access_fs: handled_fs(abi), handled_access_net: 0, scoped };
        // Before ABI 6 the attribute has no `scoped`; the kernel takes the shorter size.
        let size = if abi >= 6 { std::mem::size_of::<sys::RulesetAttr>() } else { 16 };
        // SAFETY: `attr` lives across the call and `size` does not exceed it.
        let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr as *const sys::RulesetAttr, size, 0u32) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor (close-on-exec).
        Ok(Ruleset { fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) }, abi, drop_caps })
    }

    /// Allows `access` beneath the file or directory `target` is open on.
    pub fn allow_fd(&self, target: BorrowedFd<'_>, access: u64, is_dir: bool) -> std::io::Result<()> {
        let mut access = access & handled_fs(self.abi);
        if !is_dir {
            access &= sys::FILE_RIGHTS;
        }
        if access == 0 {
            return Ok(());
        }
        let attr = sys::PathBeneathAttr { allowed_access: access, parent_fd: target.as_raw_fd() };
        // SAFETY: `attr` lives across the call; both fds are open.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                self.fd.as_raw_fd(),
                sys::RULE_PATH_BENEATH,
                &attr as *const sys::PathBeneathAttr,
                0u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Allows reading and writing the terminal `fd` is open on (the agent's own
    /// PTY, which `/dev/stderr` and `tty` name).
    pub fn allow_terminal(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.allow_fd(fd, DEVICE, false)
    }

    /// Keeps the ruleset open across `cmd`'s exec, for a child (the terminal
    /// host) that enforces it on its own children; answers the fd number.
    pub fn pass_to(self: &Arc<Self>, cmd: &mut std::process::Command) -> RawFd {
        use std::os::unix::process::CommandExt;
        let fd = self.raw_fd();
        let keep = self.clone();
        // SAFETY: fcntl is async-signal-safe; only the child's copy changes.
        unsafe {
            cmd.pre_exec(move || {
                let _ = &keep;
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        fd
    }

    /// Allows `access` beneath `path`; a path that does not exist is skipped.
    fn allow_path(&self, path: &Path, access: u64) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return Ok(()) };
        // SAFETY: a plain open of a NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::EACCES) | Some(libc::ELOOP) => Ok(()),
                _ => Err(err),
            };
        }
        // SAFETY: the descriptor was just opened and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
        self.allow_fd(fd.as_fd(), access, is_dir)
    }

    /// The raw descriptor, to hand to a child that will enforce it.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn abi(&self) -> u32 {
        self.abi
    }

    pub fn drops_caps(&self) -> bool {
        self.drop_caps
    }

    /// Takes over a ruleset fd a parent left open across exec (the terminal
    /// host's `--confine-fd`), closing it on the next exec.
    ///
    /// # Safety
    /// `fd` must be an open Landlock ruleset descriptor that nothing else owns.
    pub unsafe fn from_inherited(fd: RawFd, abi: u32, drop_caps: bool) -> std::io::Result<Ruleset> {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Ruleset { fd: OwnedFd::from_raw_fd(fd), abi, drop_caps })
    }

    /// Installs [`enter`] as a `pre_exec` hook of `cmd`.
    pub fn confine_command(self: &Arc<Self>, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let (fd, drop_caps) = (self.raw_fd(), self.drop_caps);
        let keep = self.clone();
        // SAFETY: `enter` makes only async-signal-safe system calls; `keep` holds
        // the descriptor open until the command is dropped.
        unsafe {
            cmd.pre_exec(move || {
                let _ = &keep;
                enter(fd, drop_caps)
            });
        }
    }
}

/// In a child between fork and exec: no new privileges, the Landlock domain, and
/// (for agents) no capabilities. Only async-signal-safe system calls.
///
/// # Safety
/// Call only in a freshly forked child (a `pre_exec` hook), with `ruleset_fd` open.
pub unsafe fn enter(ruleset_fd: RawFd, drop_caps: bool) -> std::io::Result<()> {
    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if libc::syscall(libc::SYS_landlock_restrict_self, ruleset_fd, 0u32) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if drop_caps {
        // The bounding set first (this needs CAP_SETPCAP, which a non-root Kiln
        // lacks and does not need: it has no capabilities to lose).
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header { version: 0x2008_0522, pid: 0 };
        let data = [Data { effective: 0, permitted: 0, inheritable: 0 }, Data { effective: 0, permitted: 0, inheritable: 0 }];
        if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A task's paths, as the worktree provider lays them out.
#[derive(Debug, Clone)]
pub struct TaskPaths {
    pub worktree: PathBuf,
    pub state_dir: PathBuf,
    pub mirror: PathBuf,
    pub home: PathBuf,
    /// The task id: its worktree's entry in the mirror is `worktrees/<task>`.
    pub task: String,
}

impl TaskPaths {
    /// The task's private temp dir (`TMPDIR`).
    pub fn tmp(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }
}

/// Programs a task's jail must be able to run besides the system.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Files or directories to read and run (the agent's program, sandbox-agent).
    pub exec: Vec<PathBuf>,
    /// The `PATH` the agent will have; every directory on it is readable.
    pub path_var: Option<String>,
}

/// Git runs in a jail when Kiln runs it on a task's or a repository's files.
pub enum GitJail {
    None,
    /// A task's worktree: the task's ruleset and the agent's environment.
    Task { ruleset: Arc<Ruleset>, env: Vec<(String, String)>, tmp: PathBuf },
    /// A repository's mirror: everything but the rest of the data dir.
    Repo { ruleset: Arc<Ruleset> },
}

/// The boot-time decision and everything the jails are made of.
#[derive(Debug)]
pub struct Confiner {
    pub mode: ConfineMode,
    pub min_abi: u32,
    pub kernel_abi: u32,
    pub decision: Decision,
    data_dir: PathBuf,
    /// The data dir as the kernel names it (symlinks resolved).
    data_dir_real: PathBuf,
    /// Never granted by a broad rule: the data dir and the config files.
    denied: Vec<PathBuf>,
    allow_read: Vec<PathBuf>,
    allow_write: Vec<PathBuf>,
    server_path: Option<String>,
    /// Repository jails, built from a walk of `/` around the data dir: reused
    /// for a few seconds, since the pollers run git on every mirror often. Keyed
    /// by the mirror's and its worktrees folder's inodes too: Landlock rules hold
    /// the folders they were made for, so a repository removed and registered
    /// again under the same name needs a jail of its own.
    repo_jails: std::sync::Mutex<std::collections::HashMap<(PathBuf, u64, u64), (std::time::Instant, Arc<Ruleset>)>>,
}

/// How long a repository jail is reused.
const REPO_JAIL_TTL: std::time::Duration = std::time::Duration::from_secs(10);

static GLOBAL: RwLock<Option<Arc<Confiner>>> = RwLock::new(None);

/// The server's confiner, once booted (none in unit tests and CLI commands).
pub fn global() -> Option<Arc<Confiner>> {
    GLOBAL.read().ok().and_then(|g| g.clone())
}

fn real(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

impl Confiner {
    /// Decides from the settings and this kernel.
    pub fn new(cfg: &SandboxesConfig, data_dir: &Path, config_files: &[PathBuf]) -> Confiner {
        Self::with_kernel_abi(cfg, data_dir, config_files, kernel_abi())
    }

    pub fn with_kernel_abi(cfg: &SandboxesConfig, data_dir: &Path, config_files: &[PathBuf], abi: u32) -> Confiner {
        let data_dir_real = real(data_dir);
        let mut denied = vec![data_dir_real.clone()];
        denied.extend(config_files.iter().map(|p| real(p)));
        let abs = |list: &[String]| -> Vec<PathBuf> {
            list.iter().filter(|p| p.starts_with('/')).map(|p| real(Path::new(p))).collect()
        };
        Confiner {
            mode: cfg.confine,
            min_abi: cfg.confine_min_abi,
            kernel_abi: abi,
            decision: decide(cfg.confine, abi, cfg.confine_min_abi),
            data_dir: data_dir.to_path_buf(),
            data_dir_real,
            denied,
            allow_read: abs(&cfg.allow_read),
            allow_write: abs(&cfg.allow_write),
            server_path: std::env::var("PATH").ok(),
            repo_jails: Default::default(),
        }
    }

    /// Makes this the process-wide confiner (each boot replaces the last).
    pub fn install(self) -> Arc<Confiner> {
        let me = Arc::new(self);
        if let Ok(mut g) = GLOBAL.write() {
            *g = Some(me.clone());
        }
        me
    }

    /// Whether agents started now are confined, and why not.
    pub fn status(&self) -> Status {
        match &self.decision {
            Decision::Confine { abi } => Status { confined: true, abi: Some(*abi), reason: None },
            Decision::Unconfined { reason } | Decision::Refuse { reason } => {
                Status { confined: false, abi: None, reason: Some(reason.clone()) }
            }
        }
    }

    fn refusal(reason: &str) -> AppError {
        AppError::unavailable("confinement_unavailable", reason.to_string())
    }

    /// The ABI to build rulesets for; `None` when unconfined; an error in
    /// `required` mode on a kernel that cannot.
    fn abi(&self) -> Result<Option<u32>, AppError> {
        match &self.decision {
            Decision::Confine { abi } => Ok(Some(*abi)),
            Decision::Unconfined { .. } => Ok(None),
            Decision::Refuse { reason } => Err(Self::refusal(reason)),
        }
    }

    /// An organization's agent home: `HOME` of its agents.
    pub fn agent_home(data_dir: &Path, org: &str) -> PathBuf {
        data_dir.join("homes").join(org)
    }

    /// The environment Kiln gives every process in a task's jail, before the
    /// profile's own `env` and the organization's secrets (which may override it).
    pub fn task_env(paths: &TaskPaths) -> Vec<(String, String)> {
        let home = paths.home.to_string_lossy().to_string();
        vec![
            ("HOME".into(), home.clone()),
            ("XDG_CONFIG_HOME".into(), format!("{home}/.config")),
            ("XDG_CACHE_HOME".into(), format!("{home}/.cache")),
            ("XDG_DATA_HOME".into(), format!("{home}/.local/share")),
            ("XDG_STATE_HOME".into(), format!("{home}/.local/state")),
            ("TMPDIR".into(), paths.tmp().to_string_lossy().to_string()),
        ]
    }

    /// Creates the folders a task's jail grants (its home, its temp dir, the
    /// mirror's `logs/`), so that they exist when the rules are made.
    pub fn prepare_dirs(paths: &TaskPaths) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for dir in [paths.home.clone(), paths.home.join(".config"), paths.home.join(".cache"), paths.tmp()] {
            b.create(&dir)?;
        }
        // A worktree's commits write reflogs into the mirror's logs/; the agent
        // may not create folders at the mirror's root.
        if paths.mirror.is_dir() {
            std::fs::create_dir_all(paths.mirror.join("logs"))?;
            link_packed_refs(&paths.mirror)?;
            // ...nor in `objects/`: every folder a commit writes into exists.
            std::fs::create_dir_all(paths.mirror.join("objects/info"))?;
            for dir in object_dirs(&paths.mirror) {
                std::fs::create_dir_all(dir)?;
            }
        }
        Ok(())
    }

    /// The ruleset for a task's jail; `None` when unconfined.
    pub fn task_ruleset(&self, paths: &TaskPaths, extras: &Extras) -> Result<Option<Arc<Ruleset>>, AppError> {
        let Some(abi) = self.abi()? else { return Ok(None) };
        Self::prepare_dirs(paths).map_err(|e| AppError::invalid("sandbox_failed", format!("preparing the task's folders failed: {e}")))?;
        self.build_task(abi, paths, extras)
            .map(|r| Some(Arc::new(r)))
            .map_err(|e| AppError::invalid("sandbox_failed", format!("building the task's confinement failed: {e}")))
    }

    fn build_task(&self, abi: u32, paths: &TaskPaths, extras: &Extras) -> std::io::Result<Ruleset> {
        let rs = Ruleset::create(abi, scopes(abi), true)?;
        self.allow_system(&rs, extras.path_var.as_deref())?;
        for p in &extras.exec {
            self.allow_broad(&rs, &real(p), READ_EXEC, false)?;
        }
        // The task's own places.
        rs.allow_path(&paths.worktree, READ_WRITE)?;
        rs.allow_path(&paths.tmp(), READ_WRITE)?;
        rs.allow_path(&paths.home, READ_WRITE)?;
        // What git needs in the mirror for this worktree; its config and hooks
        // stay read-only.
        let m = &paths.mirror;
        rs.allow_path(m, READ)?;
        for sub in ["refs", "logs", PACKED_DIR] {
            rs.allow_path(&m.join(sub), GIT_WRITE)?;
        }
        // Objects: the fan-out folders and `pack/` only. `objects/` itself and
        // `objects/info/` stay read-only, so no `info/alternates` can be planted
        // (it would lend this repository another one's objects).
        rs.allow_path(&m.join("objects"), READ)?;
        for dir in object_dirs(m) {
            rs.allow_path(&dir, GIT_WRITE)?;
        }
        if !paths.task.is_empty() {
            rs.allow_path(&m.join("worktrees").join(&paths.task), GIT_WRITE)?;
        }
        for p in &self.allow_write {
            self.allow_broad(&rs, p, READ_WRITE, false)?;
        }
        Ok(rs)
    }

    /// Kiln's own git on a mirror talking to a local origin: the system, git's
    /// own configuration, the mirror, its worktrees and the origin's folder (as
    /// open in `source`, read and written: a push writes there). Not cached:
    /// each command holds the folder it checked.
    fn build_local_origin(&self, abi: u32, mirror: &Path, worktrees: &Path, source: BorrowedFd<'_>) -> std::io::Result<Ruleset> {
        let rs = Ruleset::create(abi, 0, false)?;
        self.allow_system(&rs, None)?;
        // git reads the server user's global configuration (and dies when it
        // exists but cannot be read).
        if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
            rs.allow_path(&home.join(".gitconfig"), READ)?;
            rs.allow_path(&home.join(".config/git"), READ)?;
        }
        if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from) {
            rs.allow_path(&xdg.join("git"), READ)?;
        }
        rs.allow_path(mirror, EVERYTHING)?;
        rs.allow_path(worktrees, EVERYTHING)?;
        rs.allow_fd(source, EVERYTHING, true)?;
        Ok(rs)
    }

    /// The system, `/proc`, `/sys`, devices, `PATH` and `sandboxes.allow_read`.
    fn allow_system(&self, rs: &Ruleset, path_var: Option<&str>) -> std::io::Result<()> {
        for dir in SYSTEM_DIRS {
            self.allow_broad(rs, &real(Path::new(dir)), READ_EXEC, true)?;
        }
        // resolv.conf and friends often point into /run.
        for file in ["/etc/resolv.conf", "/etc/hosts", "/etc/localtime"] {
            let target = real(Path::new(file));
            if !target.starts_with("/etc") {
                self.allow_broad(rs, &target, sys::READ_FILE, false)?;
            }
        }
        rs.allow_path(Path::new("/proc"), READ)?;
        rs.allow_path(Path::new("/sys"), READ)?;
        for dev in DEVICES {
            rs.allow_path(Path::new(dev), DEVICE)?;
        }
        let path_var = path_var.map(str::to_string).or_else(|| self.server_path.clone()).unwrap_or_default();
        for dir in path_var.split(':').filter(|d| d.starts_with('/')) {
            self.allow_broad(rs, &real(Path::new(dir)), READ_EXEC, false)?;
        }
        for p in &self.allow_read {
            self.allow_broad(rs, p, READ_EXEC, false)?;
        }
        Ok(())
    }

    /// Grants `access` beneath `path` unless that would reach a denied path (the
    /// data dir, a config file). With `carve`, a directory holding a denied path
    /// is granted entry by entry instead, leaving the denied branch out;
    /// without, it is skipped.
    fn allow_broad(&self, rs: &Ruleset, path: &Path, access: u64, carve: bool) -> std::io::Result<()> {
        allow_carved(rs, path, access, &self.denied, carve)
    }

    /// Whether `path` (resolved) is Kiln's data dir, lies in it or holds it.
    pub fn touches_data_dir(&self, path: &Path) -> bool {
        path.starts_with(&self.data_dir_real) || self.data_dir_real.starts_with(path)
    }

    /// Which jail git gets in `dir`: a task's worktree
    /// (`<data>/worktrees/<org>/<repo>/<task>`, or anything inside one), a
    /// repository's mirror (`<data>/repos/<org>/<repo>.git`), or none. With
    /// `source` (the open folder of a local origin, checked by the caller), a
    /// mirror's jail is narrowed for a command that talks to that origin: the
    /// system, the mirror, its worktrees and that very folder, nothing else of
    /// the disk (so a path swapped for a symlink after the check leads nowhere).
    pub fn git_jail(&self, dir: &Path, source: Option<BorrowedFd<'_>>) -> Result<GitJail, AppError> {
        let rel = dir.strip_prefix(&self.data_dir).or_else(|_| dir.strip_prefix(&self.data_dir_real));
        let Ok(rel) = rel else { return Ok(GitJail::None) };
        let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
        match parts.as_slice() {
            [w, org, repo, task, ..] if w == "worktrees" => {
                let paths = TaskPaths {
                    worktree: self.data_dir.join("worktrees").join(org).join(repo).join(task),
                    state_dir: self.data_dir.join("sandboxes").join(task),
                    mirror: self.data_dir.join("repos").join(org).join(format!("{repo}.git")),
                    home: Self::agent_home(&self.data_dir, org),
                    task: task.clone(),
                };
                let env = Self::task_env(&paths);
                let tmp = paths.tmp();
                match self.task_ruleset(&paths, &Extras::default())? {
                    Some(ruleset) => Ok(GitJail::Task { ruleset, env, tmp }),
                    None => Ok(GitJail::None),
                }
            }
            [r, org, mirror, ..] if r == "repos" && mirror.ends_with(".git") => {
                // Only when agents are confined: a mirror's config is Kiln's, and
                // where no agent can run (`required` on a kernel that cannot) the
                // repository must still register and fetch.
                let Decision::Confine { abi } = self.decision else { return Ok(GitJail::None) };
                let repo = mirror.trim_end_matches(".git");
                let mirror = self.data_dir.join("repos").join(org).join(format!("{repo}.git"));
                let worktrees = self.data_dir.join("worktrees").join(org).join(repo);
                std::fs::create_dir_all(&worktrees).map_err(AppError::internal)?;
                if let Some(source) = source {
                    let rs = self.build_local_origin(abi, &mirror, &worktrees, source).map_err(AppError::internal)?;
                    return Ok(GitJail::Repo { ruleset: Arc::new(rs) });
                }
                let inode = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).map_err(AppError::internal);
                let key = (mirror.clone(), inode(&mirror)?, inode(&worktrees)?);
                let cached = self.repo_jails.lock().ok().and_then(|m| m.get(&key).filter(|(at, _)| at.elapsed() < REPO_JAIL_TTL).map(|(_, r)| r.clone()));
                if let Some(ruleset) = cached {
                    return Ok(GitJail::Repo { ruleset });
                }
                let rs = (|| {
                    let rs = Ruleset::create(abi, 0, false)?;
                    allow_carved(&rs, Path::new("/"), EVERYTHING, &self.denied, true)?;
                    rs.allow_path(&mirror, EVERYTHING)?;
                    rs.allow_path(&worktrees, EVERYTHING)?;
                    Ok::<_, std::io::Error>(rs)
                })()
                .map_err(AppError::internal)?;
                let ruleset = Arc::new(rs);
                if let Ok(mut m) = self.repo_jails.lock() {
                    m.retain(|_, (at, _)| at.elapsed() < REPO_JAIL_TTL);
                    m.insert(key, (std::time::Instant::now(), ruleset.clone()));
                }
                Ok(GitJail::Repo { ruleset })
            }
            _ => Ok(GitJail::None),
        }
    }
}

/// The folders of a mirror's object store that git writes into for a commit or
/// a fetch: the 256 fan-out folders of loose objects and `pack/`. (Kiln's own
/// git never prunes them: `gc.auto=0` in `integrations/git.rs`, since a jail
/// holds the folders it was made with, not ones made again later.)
fn object_dirs(mirror: &Path) -> Vec<PathBuf> {
    let objects = mirror.join("objects");
    (0..=255u8).map(|b| objects.join(format!("{b:02x}"))).chain(std::iter::once(objects.join("pack"))).collect()
}

/// Where a mirror's packed refs live, so that git in a worktree can rewrite
/// them: every ref deletion locks `packed-refs` by creating `packed-refs.lock`
/// beside it, and the mirror's root (which holds `config` and `hooks/`) is not
/// writable by agents. git resolves the symlink before it locks, so the lock
/// and the new file land in `packed/`.
pub const PACKED_DIR: &str = "packed";

/// Turns `<mirror>/packed-refs` into a symlink to `packed/packed-refs` (once;
/// every step is atomic for concurrent readers). Tasks of one repository are set
/// up concurrently, so callers take turns, and the staging names are unique.
fn link_packed_refs(mirror: &Path) -> std::io::Result<()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let link = mirror.join("packed-refs");
    let target = Path::new(PACKED_DIR).join("packed-refs");
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    std::fs::create_dir_all(mirror.join(PACKED_DIR))?;
    let unique = format!("{}-{}", std::process::id(), crate::util::random_hex(8));
    // Only a regular file is moved: a symlink (someone else's link, or a
    // planted one) is replaced below, never followed.
    if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_file()) {
        let staged = mirror.join(PACKED_DIR).join(format!("packed-refs.kiln-new-{unique}"));
        std::fs::hard_link(&link, &staged)?;
        std::fs::rename(&staged, mirror.join(&target))?;
    }
    let tmp = mirror.join(format!("packed-refs.kiln-link-{unique}"));
    std::os::unix::fs::symlink(&target, &tmp)?;
    std::fs::rename(&tmp, &link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn allow_carved(rs: &Ruleset, path: &Path, access: u64, denied: &[PathBuf], carve: bool) -> std::io::Result<()> {
    if denied.iter().any(|d| path.starts_with(d)) {
        return Ok(());
    }
    if !denied.iter().any(|d| d.starts_with(path)) {
        return rs.allow_path(path, access);
    }
    if !carve {
        log::warn!("not granting {} to agents: it holds Kiln's data dir or config", path.display());
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(path) else { return Ok(()) };
    for entry in entries.flatten() {
        // A symlink is not followed: its target is granted only if it lies
        // beneath something granted in its own right.
        if entry.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
            continue;
        }
        allow_carved(rs, &entry.path(), access, denied, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_confines() {
        assert!(matches!(decide(ConfineMode::Off, 7, 2), Decision::Unconfined { .. }));
    }

    #[test]
    fn auto_confines_where_the_kernel_can_and_says_why_not() {
        assert_eq!(decide(ConfineMode::Auto, 7, 2), Decision::Confine { abi: 7 });
        assert_eq!(decide(ConfineMode::Auto, 9, 2), Decision::Confine { abi: KNOWN_ABI });
        match decide(ConfineMode::Auto, 0, 2) {
            Decision::Unconfined { reason } => assert!(reason.contains("no Landlock"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match decide(ConfineMode::Auto, 4, 6) {
            Decision::Unconfined { reason } => assert!(reason.contains("ABI is 4") && reason.contains("(6)"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn required_refuses_where_the_kernel_cannot() {
        assert_eq!(decide(ConfineMode::Required, 6, 6), Decision::Confine { abi: 6 });
        assert!(matches!(decide(ConfineMode::Required, 0, 2), Decision::Refuse { .. }));
        assert!(matches!(decide(ConfineMode::Required, 7, 99), Decision::Refuse { .. }));
        // ABI 1 cannot run git: never enough, whatever the setting says.
        assert!(matches!(decide(ConfineMode::Required, 1, 1), Decision::Refuse { .. }));
    }

    #[test]
    fn handled_rights_follow_the_abi() {
        assert_eq!(handled_fs(1) & sys::REFER, 0);
        assert_ne!(handled_fs(2) & sys::REFER, 0);
        assert_eq!(handled_fs(4) & sys::IOCTL_DEV, 0);
        assert_ne!(handled_fs(5) & sys::IOCTL_DEV, 0);
        assert_eq!(scopes(5), 0);
        assert_ne!(scopes(6) & sys::SCOPE_SIGNAL, 0);
        // Agents never make device nodes.
        assert_eq!(READ_WRITE & (sys::MAKE_CHAR | sys::MAKE_BLOCK), 0);
        assert_eq!(GIT_WRITE & (sys::MAKE_SYM | sys::EXECUTE), 0);
    }

    /// Kiln's git on a mirror, talking to a local origin, reaches that origin's
    /// folder as it was opened and checked, not what its path leads to later.
    #[test]
    fn a_local_origin_s_jail_holds_the_folder_checked_not_its_path() {
        if kernel_abi() < LOWEST_USABLE_ABI {
            eprintln!("skipped: no usable Landlock");
            return;
        }
        let tmp = std::env::temp_dir().join(format!("kiln-origin-jail-{}", crate::util::random_hex(8)));
        let (data, src, other) = (tmp.join("data"), tmp.join("src"), tmp.join("other"));
        let git = |dir: &Path, args: &[&str]| {
            let ok = std::process::Command::new("git").args(args).current_dir(dir).output().unwrap();
            assert!(ok.status.success(), "{args:?}: {}", String::from_utf8_lossy(&ok.stderr));
        };
        for d in [&src, &other, &data.join("repos/o")] {
            std::fs::create_dir_all(d).unwrap();
        }
        for repo in [&src, &other] {
            git(repo, &["init", "-q", "-b", "main"]);
            git(repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"]);
        }
        let mirror = data.join("repos/o/app.git");
        git(&tmp, &["init", "-q", "--bare", mirror.to_str().unwrap()]);
        let cfg = crate::config::Config::load_from(None, None, &[]).unwrap().sandboxes;
        let confiner = Confiner::with_kernel_abi(&cfg, &data, &[], kernel_abi());
        let pinned = crate::integrations::git::pin_local_source(&src).unwrap();
        let GitJail::Repo { ruleset } = confiner.git_jail(&mirror, Some(pinned.as_fd())).unwrap() else { panic!("a repository jail") };
        let ls_remote = |target: &Path| {
            let mut cmd = std::process::Command::new("git");
            cmd.args(["ls-remote", target.to_str().unwrap()]).current_dir(&mirror);
            ruleset.confine_command(&mut cmd);
            cmd.output().unwrap()
        };
        assert!(ls_remote(&src).status.success(), "the folder checked");
        // The path becomes a symlink to another repository after the check.
        let moved = tmp.join("src-moved");
        std::fs::rename(&src, &moved).unwrap();
        std::os::unix::fs::symlink(&other, &src).unwrap();
        let out = ls_remote(&src);
        assert!(!out.status.success(), "git read what the path leads to now");
        assert!(ls_remote(&moved).status.success(), "the folder checked, wherever it is now");
        assert!(matches!(crate::integrations::git::pin_local_source(&src), Err(crate::integrations::git::GitError::SourceMoved(_))));
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
