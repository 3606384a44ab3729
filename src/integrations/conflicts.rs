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
    /// No worktree here (another provider, or it is gone): the branch head.
    Branch { head: String },
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
    let mut out = Prediction::default();
    let mut states = HashMap::new();
    let mut changes = HashMap::new();
    // (task, base branch, state commit, base commit, own changes)
    let mut looked = Vec::new();
    for c in candidates {
        let Some(base) = bases.get(&c.base_branch) else { continue };
        let state = match &c.side {
            Side::Branch { head } => head.clone(),
            Side::Worktree { seen, .. } if seen.dirty_files == 0 => seen.head.clone(),
            Side::Worktree { path, seen } => match cache.states.get(&c.task).filter(|(fp, _)| *fp == seen.fingerprint) {
                Some((_, commit)) => commit.clone(),
                None => match git::worktree_state(path) {
                    Ok(commit) => {
                        out.states_built += 1;
                        commit
                    }
                    Err(e) => {
                        log::debug!("conflict prediction: task {}'s worktree could not be read: {}", c.task, e.message());
                        continue;
                    }
                },
            },
        };
        if let Side::Worktree { seen, .. } = &c.side {
            states.insert(c.task.clone(), (seen.fingerprint, state.clone()));
        }
        let key = (state.clone(), base.clone());
        let files = match cache.changes.get(&key) {
            Some(files) => files.clone(),
            None => match git::changed_since_fork(mirror, base, &state) {
                Ok(files) => Arc::new(files.into_iter().collect::<BTreeSet<_>>()),
                Err(e) => {
                    log::debug!("conflict prediction: task {}'s changes could not be listed: {}", c.task, e.message());
                    continue;
                }
            },
        };
        changes.insert(key, files.clone());
        out.evaluated.push(c.task.clone());
        looked.push((c.task.as_str(), c.base_branch.as_str(), state, base.clone(), files));
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
    match git::merge_conflicts(mirror, &missing) {
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
