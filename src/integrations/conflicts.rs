//! Conflict prediction across the active tasks of one repository: which tasks
//! would conflict with each other, or with their base branch, if they were
//! merged now, uncommitted work included (docs/git.md, "Conflict prediction").
//!
//! Each task is one commit: its branch head when its worktree is clean, else the
//! worktree's state as [`git::worktree_state`] builds it (a scratch index, never
//! the worktree's own). Pairs are tried with `git merge-tree --write-tree`, all
//! of one round in a single git run (`--stdin`), in the mirror. Only pairs that
//! can conflict are tried: tasks of the same base branch whose own changes
//! (since they left the base) touch a common file; and each task that changed
//! anything against its base's current head.
//!
//! Incremental: a [`Cache`] keeps each task's state commit under a fingerprint
//! of its worktree (HEAD, `git status`, and the stat data of every file it
//! lists), each task's changed files under (state, base), and each merge's
//! answer under its two commits. A round where nothing moved runs no git at all;
//! one task that changed costs its state, its file list, and its own merges.
//!
//! Every function here blocks: call it on the blocking pool, holding the
//! mirror's git lock (the state commits and merged trees are written into the
//! mirror's object store).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::git::{self, GitError};

/// At most this many files are kept per conflict (the first, by path).
pub const MAX_FILES: usize = 200;

/// What the branch poller read in one task's worktree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorktreeSeen {
    /// The branch checked out (`HEAD` when detached).
    pub branch: String,
    pub head: String,
    /// Files `git status` lists (changed, staged, untracked; not ignored).
    pub dirty_files: usize,
    /// Changes whenever HEAD, the status, or any listed file's stat data does.
    pub fingerprint: u64,
}

/// Reads a worktree without taking its index lock: its branch and head, how
/// many files are uncommitted, and a fingerprint of its uncommitted state.
/// Three git runs' worth of reading, no writing.
pub fn look_at_worktree(path: &Path) -> Result<WorktreeSeen, GitError> {
    let out = git::run(path, &["rev-parse", "HEAD", "--abbrev-ref", "HEAD"])?;
    let mut lines = out.lines();
    let (Some(head), Some(branch)) = (lines.next(), lines.next()) else {
        return Err(GitError::Failed { command: "rev-parse".into(), stderr: format!("unexpected answer: {out}") });
    };
    let status = git::git_in(path)?
        .0
        .args(["--no-optional-locks", "status", "--porcelain", "-z", "--untracked-files=all"])
        .output()
        .map_err(git::spawn_error)?;
    if !status.status.success() {
        return Err(git::failure("status", status.status, &status.stderr, &status.stdout));
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    head.hash(&mut hasher);
    status.stdout.hash(&mut hasher);
    let paths = status_paths(&status.stdout);
    for p in &paths {
        // An edit to a file already listed changes no status line: its stat
        // data does (never followed through a symlink).
        match std::fs::symlink_metadata(path.join(p)) {
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                (m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.ino(), m.mode()).hash(&mut hasher);
            }
            Err(_) => 0u8.hash(&mut hasher),
        }
    }
    Ok(WorktreeSeen { branch: branch.to_string(), head: head.to_string(), dirty_files: paths.len(), fingerprint: hasher.finish() })
}

/// The paths `git status --porcelain -z` lists: `XY path\0`, and for a rename
/// or copy the old path in a field of its own, which is not counted.
fn status_paths(raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut fields = raw.split(|b| *b == 0).filter(|f| !f.is_empty());
    while let Some(entry) = fields.next() {
        if entry.len() < 4 {
            continue;
        }
        out.push(String::from_utf8_lossy(&entry[3..]).into_owned());
        if matches!(entry[0], b'R' | b'C') {
            fields.next();
        }
    }
    out
}

/// One active task, as the prediction sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub task: String,
    pub base_branch: String,
    pub side: Side,
}

/// Where a task's work is read from.
#[derive(Debug, Clone)]
pub enum Side {
    /// A worktree on this host, as the branch poller just saw it.
    Worktree { path: PathBuf, seen: WorktreeSeen },
    /// No worktree here (a remote sandbox, or it is gone): its latest state
    /// the mirror knows ([`remote_states`]).
    Branch { head: String },
}

/// The latest state the mirror knows of each task in `tasks` (tasks without a
/// worktree here: a remote sandbox's checkout, read only when Kiln brings it
/// in, never by waking a sandbox): the state its last diff brought in
/// ([`super::diff::remote_state_ref`], committed and uncommitted work) when
/// that still contains its branch head in the mirror (as of its last push,
/// sync or merge), else that branch head; tasks with neither are left out.
/// `heads`: the mirror's branch heads by name.
pub fn remote_states(mirror: &Path, tasks: &[&crate::actors::repository::PlannedTask], heads: &HashMap<&str, &str>) -> HashMap<String, String> {
    let prefix = super::diff::remote_state_ref("");
    let listed = git::run(mirror, &["for-each-ref", "--format=%(refname) %(objectname)", &prefix]).unwrap_or_default();
    let states: HashMap<&str, &str> =
        listed.lines().filter_map(|l| l.split_once(' ')).filter_map(|(r, sha)| Some((r.strip_prefix(&prefix)?, sha))).collect();
    let mut out = HashMap::new();
    for t in tasks {
        let head = heads.get(t.branch.as_str()).copied();
        let chosen = match (states.get(t.id.as_str()).copied(), head) {
            (Some(state), Some(head)) if git::is_ancestor(mirror, head, state).unwrap_or(false) => Some(state),
            (Some(_), Some(head)) => Some(head),
            (state, head) => state.or(head),
        };
        if let Some(sha) = chosen {
            out.insert(t.id.clone(), sha.to_string());
        }
    }
    out
}

/// The other side of a predicted conflict.
pub const BASE: &str = "base";

/// One predicted conflict: `task` with `other` (a task id greater than
/// `task`'s, or [`BASE`]), and the files that would conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub task: String,
    pub other: String,
    pub files: Vec<String>,
}

/// The answer of one round.
#[derive(Debug, Clone, Default)]
pub struct Prediction {
    /// The tasks that were looked at; the others (their worktree or base could
    /// not be read this time) keep what was predicted for them before.
    pub evaluated: Vec<String>,
    pub conflicts: Vec<Found>,
    /// State commits built and merges tried by git in this round (the rest
    /// came from the cache).
    pub states_built: usize,
    pub merges_run: usize,
    /// Where the round's time went: state commits and file lists, then the merges.
    pub prepare_time: std::time::Duration,
    pub merge_time: std::time::Duration,
}

/// What one round keeps for the next (see the module doc).
#[derive(Debug, Default)]
pub struct Cache {
    states: HashMap<String, (u64, String)>,
    changes: HashMap<(String, String), Arc<BTreeSet<String>>>,
    merges: HashMap<(String, String), Vec<String>>,
}

impl Cache {
    /// How many merge answers are kept.
    pub fn merges(&self) -> usize {
        self.merges.len()
    }
}

/// Predicts the conflicts of `candidates` in the mirror, against the commits
/// their base branches point at (`bases`: branch → commit), reusing and then
/// replacing `cache`.
pub fn predict(mirror: &Path, candidates: &[Candidate], bases: &HashMap<String, String>, cache: &mut Cache) -> Prediction {
    let started = std::time::Instant::now();
    let mut out = Prediction::default();
    let mut states = HashMap::new();
    let mut changes = HashMap::new();
    // (task, base branch, state commit, base commit, own changes)
    let mut looked = Vec::new();
    let prepared = in_parallel(candidates, |c| prepare(mirror, c, bases, cache));
    for (c, prepared) in candidates.iter().zip(prepared) {
        let Some((state, base, files, built)) = prepared.flatten() else { continue };
        out.states_built += built as usize;
        if let Side::Worktree { seen, .. } = &c.side {
            states.insert(c.task.clone(), (seen.fingerprint, state.clone()));
        }
        changes.insert((state.clone(), base.clone()), files.clone());
        out.evaluated.push(c.task.clone());
        looked.push((c.task.as_str(), c.base_branch.as_str(), state, base, files));
    }

    // Which merges can conflict: each task that changed something against its
    // base; two tasks of one base whose own changes meet.
    let mut wanted: Vec<(String, String, (String, String))> = Vec::new();
    for (i, (task, base_branch, state, base, files)) in looked.iter().enumerate() {
        if files.is_empty() {
            continue;
        }
        wanted.push((task.to_string(), BASE.to_string(), ordered(state, base)));
        for (other, other_base, other_state, _, other_files) in &looked[i + 1..] {
            if other_base != base_branch || other_state == state || files.is_disjoint(other_files) {
                continue;
            }
            let (a, b) = if task < other { (*task, *other) } else { (*other, *task) };
            wanted.push((a.to_string(), b.to_string(), ordered(state, other_state)));
        }
    }
    let mut merges = HashMap::new();
    let mut missing: Vec<(String, String)> = Vec::new();
    let mut seen_missing = HashSet::new();
    for (_, _, key) in &wanted {
        if let Some(files) = cache.merges.get(key) {
            merges.insert(key.clone(), files.clone());
        } else if seen_missing.insert(key.clone()) {
            missing.push(key.clone());
        }
    }
    out.prepare_time = started.elapsed();
    let merging = std::time::Instant::now();
    // In as many git runs as there are workers, each a slice of the merges.
    let slices: Vec<&[(String, String)]> = missing.chunks(missing.len().div_ceil(workers()).max(1)).collect();
    let merged = in_parallel(&slices, |slice| git::merge_conflicts(mirror, slice))
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(GitError::Io(std::io::Error::other("a merge worker panicked")))))
        .collect::<Result<Vec<_>, _>>()
        .map(|answers| answers.into_iter().flatten().collect::<Vec<_>>());
    out.merge_time = merging.elapsed();
    match merged {
        Ok(answers) => {
            out.merges_run = missing.len();
            merges.extend(missing.into_iter().zip(answers));
        }
        Err(e) => {
            // Nothing of this round can be trusted for the pairs not cached:
            // their tasks keep what was predicted before.
            log::warn!("conflict prediction in {} failed: {}", mirror.display(), e.message());
            let unknown: HashSet<&str> =
                wanted.iter().filter(|(_, _, k)| !merges.contains_key(k)).flat_map(|(a, b, _)| [a.as_str(), b.as_str()]).collect();
            out.evaluated.retain(|t| !unknown.contains(t.as_str()));
        }
    }
    let evaluated: HashSet<&String> = out.evaluated.iter().collect();
    for (task, other, key) in &wanted {
        let Some(files) = merges.get(key) else { continue };
        if files.is_empty() || !evaluated.contains(task) || (other != BASE && !evaluated.contains(other)) {
            continue;
        }
        let mut files = files.clone();
        files.sort();
        files.truncate(MAX_FILES);
        out.conflicts.push(Found { task: task.clone(), other: other.clone(), files });
    }
    out.conflicts.sort_by(|a, b| (&a.task, &a.other).cmp(&(&b.task, &b.other)));
    *cache = Cache { states, changes, merges };
    out
}

/// One task's side of the round: its state commit, its base's commit, the files
/// it changed since it left the base, and whether the state had to be built.
/// `None` when its base is unknown or git could not read it this time.
fn prepare(mirror: &Path, c: &Candidate, bases: &HashMap<String, String>, cache: &Cache) -> Option<(String, String, Arc<BTreeSet<String>>, bool)> {
    let base = bases.get(&c.base_branch)?;
    let mut built = false;
    let state = match &c.side {
        Side::Branch { head } => head.clone(),
        Side::Worktree { seen, .. } if seen.dirty_files == 0 => seen.head.clone(),
        Side::Worktree { path, seen } => match cache.states.get(&c.task).filter(|(fp, _)| *fp == seen.fingerprint) {
            Some((_, commit)) => commit.clone(),
            None => match git::worktree_state(path) {
                Ok(commit) => {
                    built = true;
                    commit
                }
                Err(e) => {
                    log::debug!("conflict prediction: task {}'s worktree could not be read: {}", c.task, e.message());
                    return None;
                }
            },
        },
    };
    let files = match cache.changes.get(&(state.clone(), base.clone())) {
        Some(files) => files.clone(),
        None => match git::changed_since_fork(mirror, base, &state) {
            Ok(files) => Arc::new(files.into_iter().collect::<BTreeSet<_>>()),
            Err(e) => {
                log::debug!("conflict prediction: task {}'s changes could not be listed: {}", c.task, e.message());
                return None;
            }
        },
    };
    Some((state, base.clone(), files, built))
}

/// How many git processes a round runs at once: the cores, at most 4.
pub fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4)
}

/// `f` over `items` on up to [`workers`] threads; the answers in `items`'
/// order, `None` for an item whose worker panicked.
pub fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<Option<R>> {
    let n = workers().min(items.len());
    if n <= 1 {
        return items.iter().map(|i| Some(f(i))).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut answers: Vec<Option<R>> = items.iter().map(|_| None).collect();
    for (i, r) in out.drain(..) {
        answers[i] = Some(r);
    }
    answers
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_paths_count_a_rename_once() {
        let raw = b" M src/a.rs\0R  new.rs\0old.rs\0?? notes with space.txt\0";
        assert_eq!(status_paths(raw), vec!["src/a.rs", "new.rs", "notes with space.txt"]);
        assert!(status_paths(b"").is_empty());
    }
}
