//! Everything an agent started, so that kill and archive can stop all of it.
//!
//! Two ways to find it, used together:
//! - **A cgroup per sandbox** (cgroup v2, where this process may create a child of
//!   its own cgroup): the host spawns the setup commands and the agent inside it,
//!   and whatever they start stays inside, whatever session or process group it
//!   moves to. Only a process allowed to write another cgroup's `cgroup.procs`
//!   (root, in practice) can leave it.
//! - **The agent's session**: the PTY child leads its own session, and every
//!   process it starts stays in it unless it calls `setsid`. Kill snapshots the
//!   session's members and all their descendants first, so a process that left
//!   the session while its parent still runs is caught too; a double fork that
//!   left both session and parent before the kill escapes.
//!
//! Reading `/proc` and writing cgroup files block briefly: call these from the
//! host's own threads or the blocking pool.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The state dir file naming the sandbox's cgroup, when it has one.
pub const CGROUP_FILE: &str = "agent.cgroup";

/// One process, as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub sid: i32,
    /// Start time in clock ticks since boot: with the pid, it names one process
    /// even after the pid is reused.
    pub start: u64,
    /// `R`, `S`, `Z`, …
    pub state: char,
}

/// Parses a `/proc/<pid>/stat` line. The command name may hold spaces and
/// parentheses, so the fields are counted from its last `)`.
pub fn parse_stat(text: &str) -> Option<Proc> {
    let pid = text.split_whitespace().next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) session(3) … starttime(19).
    Some(Proc {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn read_proc(pid: i32) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process on the machine (those that vanish while reading are skipped).
pub fn scan() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(read_proc)
        .collect()
}

/// The members of session `sid` and all their descendants, whatever session
/// those are in now.
pub fn session_tree(procs: &[Proc], sid: i32) -> Vec<Proc> {
    let mut found: Vec<Proc> = procs.iter().filter(|p| p.sid == sid && p.state != 'Z').cloned().collect();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i].pid;
        for p in procs {
            if p.ppid == parent && p.state != 'Z' && !found.iter().any(|f| f.pid == p.pid) {
                found.push(p.clone());
            }
        }
        i += 1;
    }
    found
}

/// Whether `p` is still that very process (not a reused pid) and not a zombie.
pub fn alive(p: &Proc) -> bool {
    read_proc(p.pid).is_some_and(|now| now.start == p.start && now.state != 'Z')
}

/// Sends `sig` to `p` if it is still that process.
pub fn signal(p: &Proc, sig: i32) {
    if alive(p) {
        // SAFETY: kill(2) with a pid checked just above; a failure is harmless.
        unsafe { libc::kill(p.pid, sig) };
    }
}

/// A cgroup v2 for one sandbox's agent, under the cgroup of the process that
/// made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates (or reuses) the cgroup for the sandbox in `state_dir` and records
    /// it there; `None` (and no record) where cgroup v2 is not mounted or this
    /// process may not create a child of its cgroup.
    pub fn create(state_dir: &Path) -> Option<Cgroup> {
        let record = state_dir.join(CGROUP_FILE);
        let made = own_cgroup_dir().and_then(|parent| {
            let path = parent.join(name_for(state_dir));
            match std::fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(_) => return None,
            }
            // Moving a process in needs write access to its `cgroup.procs`.
            std::fs::OpenOptions::new().write(true).open(path.join("cgroup.procs")).ok()?;
            Some(Cgroup { path })
        });
        match &made {
            Some(c) => {
                let _ = std::fs::write(&record, c.path.to_string_lossy().as_bytes());
            }
            None => {
                let _ = std::fs::remove_file(&record);
            }
        }
        made
    }

    /// The cgroup this process would make for `state_dir`, if it exists (found
    /// by its name, so even when the state dir is gone).
    pub fn existing_for(state_dir: &Path) -> Option<Cgroup> {
        let path = own_cgroup_dir()?.join(name_for(state_dir));
        path.join("cgroup.procs").exists().then_some(Cgroup { path })
    }

    /// The cgroup recorded in `state_dir`, if it still exists.
    pub fn recorded(state_dir: &Path) -> Option<Cgroup> {
        let path = PathBuf::from(std::fs::read_to_string(state_dir.join(CGROUP_FILE)).ok()?.trim());
        path.join("cgroup.procs").exists().then_some(Cgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves this process into the cgroup until the answer is dropped, so that a
    /// child spawned meanwhile starts inside it (and everything it starts
    /// stays there). `None` when the move failed: the child then starts outside.
    pub fn enter(&self) -> Option<Entered> {
        let home = own_cgroup_dir()?;
        move_self(&self.path).ok()?;
        Some(Entered { home })
    }

    /// The processes in it now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs everything in it: at once through `cgroup.kill` (Linux 5.14+),
    /// else each process, a few rounds over, for the ones forked meanwhile.
    pub fn kill(&self) {
        if std::fs::write(self.path.join("cgroup.kill"), b"1").is_ok() {
            return;
        }
        let me = std::process::id() as i32;
        for _ in 0..10 {
            let pids: Vec<i32> = self.pids().into_iter().filter(|p| *p != me).collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) on a member of the sandbox's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// Removes it; fails (harmlessly) while processes are still inside.
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir(&self.path)
    }
}

/// While held, this process is inside a sandbox's cgroup; dropping it moves the
/// process back to where it was.
pub struct Entered {
    home: PathBuf,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let _ = move_self(&self.home);
    }
}

fn move_self(cgroup: &Path) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(cgroup.join("cgroup.procs"))?;
    f.write_all(std::process::id().to_string().as_bytes())
}

/// A cgroup name that is the same for a sandbox every time (so a resumed agent
/// reuses it) and differs between servers that happen to share a task id.
fn name_for(state_dir: &Path) -> String {
    // FNV-1a: stable across builds, unlike the std hasher.
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    let task = state_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let task: String = task.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    format!("kiln-{task}-{:08x}", hash as u32)
}

/// This process's cgroup v2 directory, where one is mounted.
fn own_cgroup_dir() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| cgroup2_dir(line, &rel))
}

/// For a `/proc/self/mountinfo` line of a cgroup2 mount, the directory of the
/// cgroup `rel` (as `/proc/self/cgroup` names it) under that mount.
fn cgroup2_dir(line: &str, rel: &str) -> Option<PathBuf> {
    let (head, tail) = line.split_once(" - ")?;
    if tail.split_whitespace().next()? != "cgroup2" {
        return None;
    }
    let fields: Vec<&str> = head.split_whitespace().collect();
    let (root, mount) = (*fields.get(3)?, *fields.get(4)?);
    // The mount shows the hierarchy from `root`: the cgroup must lie under it.
    let under = if root == "/" { rel } else { rel.strip_prefix(root)? };
    let dir = Path::new(mount).join(under.trim_start_matches('/'));
    dir.join("cgroup.procs").exists().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let line = "4242 (we (ird) name) S 4200 4242 4242 34816 4242 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let p = parse_stat(line).unwrap();
        assert_eq!((p.pid, p.ppid, p.sid, p.start, p.state), (4242, 4200, 4242, 987654, 'S'));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("12 (short) S 1").is_none());
    }

    #[test]
    fn a_session_tree_holds_members_and_descendants_that_left_it() {
        let p = |pid, ppid, sid, state| Proc { pid, ppid, sid, start: 1, state };
        let procs = vec![
            p(1, 0, 1, 'S'),
            p(100, 1, 100, 'S'),   // the agent, a session leader
            p(101, 100, 100, 'S'), // a background job
            p(102, 100, 102, 'S'), // `setsid sleep &`: its own session, parent still the agent
            p(103, 102, 102, 'S'), // and its child
            p(104, 100, 100, 'Z'), // a zombie is nothing to stop
            p(200, 1, 200, 'S'),   // someone else
            p(201, 1, 100, 'S'),   // double-forked, but still in the session
        ];
        let mut pids: Vec<i32> = session_tree(&procs, 100).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![100, 101, 102, 103, 201]);
    }

    #[test]
    fn the_cgroup2_mount_is_found_from_mountinfo() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/cgroup.procs"), "").unwrap();
        let m = dir.path().display();
        let line = format!("35 24 0:30 / {m} rw,relatime shared:9 - cgroup2 cgroup2 rw");
        assert_eq!(cgroup2_dir(&line, "/a/b"), Some(dir.path().join("a/b")));
        // A mount that shows only part of the hierarchy (a container).
        let line = format!("35 24 0:30 /outer {m} rw - cgroup2 cgroup2 rw");
        assert_eq!(cgroup2_dir(&line, "/outer/a/b"), Some(dir.path().join("a/b")));
        assert_eq!(cgroup2_dir(&line, "/elsewhere"), None);
        let v1 = format!("36 24 0:31 / {m} rw - cgroup cgroup rw,memory");
        assert_eq!(cgroup2_dir(&v1, "/a/b"), None);
    }

    #[test]
    fn cgroup_names_are_stable_per_state_dir() {
        let a = name_for(Path::new("/data/one/sandboxes/2b0894e4"));
        assert_eq!(a, name_for(Path::new("/data/one/sandboxes/2b0894e4")));
        assert!(a.starts_with("kiln-2b0894e4-"), "{a}");
        assert_ne!(a, name_for(Path::new("/data/two/sandboxes/2b0894e4")));
    }
}
