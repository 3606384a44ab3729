//! BranchSyncPoller (`org/{org}/repo/{repo}/branch-sync`): one per repository,
//! every `repos.branch_poll_ms` (5 s). It asks its RepositoryActor what to look
//! at (`PlanBranchPoll`), then reads the mirror and the task worktrees: branch
//! heads, ahead/behind against the default branch, and uncommitted files per
//! worktree. Every `repos.fetch_secs` it first fetches origin. It reports
//! `BranchesObserved` and writes no table. Then, under the mirror's git lock, it
//! predicts conflicts between the repository's active tasks and against their
//! base (`integrations::conflicts`, with its cache kept here between polls) and
//! reports `ConflictsObserved`, then runs the `merge_conflict` reaction for
//! tasks without a pull request (`reactions::after_conflict_round`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::history::NewEvent;
use crate::actors::registry::ActorMeta;
use crate::actors::repository::{BranchObservation, BranchesObserved, ConflictsObserved, PlanBranchPoll, PlannedTask};
use crate::actors::Kiln;
use crate::db::pool::blocking;
use crate::error::AppError;
use crate::integrations::conflicts::{self, Candidate, Side, WorktreeSeen};
use crate::integrations::git;
use crate::util::now_ms;

pub struct BranchSyncPoller {
    kiln: Kiln,
    org: String,
    repo: String,
    meta: Arc<ActorMeta>,
    interval: Duration,
    timer: Option<SpawnHandle>,
    busy: bool,
    polls: u64,
    last_poll_at: Option<i64>,
    last_fetch_at: i64,
    last_error: Option<String>,
    /// A fetch that git was not allowed to run was reported
    /// (`repo.fetch_refused`, once until a fetch works again).
    source_moved: bool,
    /// Conflict prediction's cache (taken by a poll while it runs).
    conflicts: Option<conflicts::Cache>,
}

impl BranchSyncPoller {
    pub fn new(kiln: Kiln, org: String, repo: String, meta: Arc<ActorMeta>, interval: Duration) -> Self {
        BranchSyncPoller { kiln, org, repo, meta, interval, timer: None, busy: false, polls: 0, last_poll_at: None, last_fetch_at: 0, last_error: None, source_moved: false, conflicts: Some(conflicts::Cache::default()) }
    }


    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        self.meta.touch();
        let fetch_due = now_ms() - self.last_fetch_at >= (self.kiln.config.repos.fetch_secs * 1000) as i64;
        let (kiln, org, repo) = (self.kiln.clone(), self.org.clone(), self.repo.clone());
        let reported = self.source_moved;
        let mut cache = self.conflicts.take().unwrap_or_default();
        let work = async move {
            let plan = kiln.repository(&org, &repo).send(PlanBranchPoll {}).await??;
            let Some(plan) = plan else { return Ok((None, cache)) };
            let origin = plan.origin.clone();
            let (mirror, default_branch, worktrees) = (plan.mirror.clone(), plan.default_branch.clone(), plan.worktrees.clone());
            // A fetch writes the mirror's refs: it waits for the tasks' git work.
            let git_lock = if fetch_due { Some(kiln.lock_git(&plan.mirror.to_string_lossy()).await) } else { None };
            let tasks = plan.tasks.clone();
            let (seen, fetch_error) = blocking(move || Ok(observe(&mirror, &default_branch, &worktrees, fetch_due, &origin, &tasks)))
                .await?
                .map_err(|e: git::GitError| AppError::BadGateway { code: "git_failed", message: e.message() })?;
            drop(git_lock);
            // Git was not run at all (the source moved, the host is refused):
            // said once as `repo.fetch_refused`, until a fetch works again.
            let refused = match fetch_error {
                Some(git::GitError::SourceMoved(message)) => Some(("source_moved", message)),
                Some(git::GitError::HostRefused(message)) => Some(("source_host_refused", message)),
                _ => None,
            };
            let moved = refused.is_some();
            if let (Some((code, message)), false) = (refused, reported) {
                let data = serde_json::json!({"code": code, "error": message});
                kiln.emit_one(&org, NewEvent::new("repo.fetch_refused", data).repo(&repo)).await?;
            }
            let Observed { branches, worktrees, remote } = seen;
            let heads: std::collections::HashMap<String, String> = branches.iter().map(|b| (b.name.clone(), b.head.clone())).collect();
            kiln.repository(&org, &repo).send(BranchesObserved { branches }).await??;
            if plan.predict_conflicts {
                let candidates: Vec<Candidate> = plan
                    .tasks
                    .iter()
                    .filter_map(|t| {
                        let side = match worktrees.get(&t.id) {
                            Some(seen) => Side::Worktree { path: plan.worktrees.join(&t.id), seen: seen.clone() },
                            None => Side::Branch { head: remote.get(&t.id)?.clone() },
                        };
                        Some(Candidate { task: t.id.clone(), base_branch: t.base_branch.clone(), side })
                    })
                    .collect();
                let prediction = if candidates.is_empty() {
                    cache = conflicts::Cache::default();
                    conflicts::Prediction::default()
                } else {
                    // The state commits and merged trees go into the mirror's
                    // object store: one at a time with the tasks' git work.
                    let _git = kiln.lock_git(&plan.mirror.to_string_lossy()).await;
                    let mirror = plan.mirror.clone();
                    let (prediction, back) = blocking(move || {
                        let prediction = conflicts::predict(&mirror, &candidates, &heads, &mut cache);
                        Ok((prediction, cache))
                    })
                    .await?;
                    cache = back;
                    prediction
                };
                kiln.repository(&org, &repo)
                    .send(ConflictsObserved { evaluated: prediction.evaluated, conflicts: prediction.conflicts })
                    .await??;
                // Tasks without a PR learn of a conflict with their base from here
                // (awaited: the next round waits, so one cause is not handled twice at once).
                crate::actors::task::reactions::after_conflict_round(kiln.clone(), org.clone(), repo.clone()).await;
            }
            Ok::<_, AppError>((Some((fetch_due, moved)), cache))
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            act.polls += 1;
            act.last_poll_at = Some(now_ms());
            match result {
                Ok((Some((fetched, moved)), cache)) => {
                    act.conflicts = Some(cache);
                    act.last_error = None;
                    if fetched {
                        act.last_fetch_at = now_ms();
                        act.source_moved = moved;
                    }
                }
                // The repository is gone.
                Ok((None, _)) => ctx.stop(),
                // The cache went with the failed poll: the next one starts cold.
                Err(e) => act.last_error = Some(e.to_string()),
            }
        }));
    }
}

/// What one poll read: the mirror's branches, and each task worktree (by its
/// folder's name, the task id).
struct Observed {
    branches: Vec<BranchObservation>,
    worktrees: std::collections::HashMap<String, WorktreeSeen>,
    /// Each task without a worktree here (a remote sandbox): its latest state
    /// the mirror knows (see `conflicts::remote_state`).
    remote: std::collections::HashMap<String, String>,
}

/// Reads branch heads, ahead/behind and the task worktrees (fetching first when
/// due); answers them and why the fetch failed, if it did (what is read is read
/// anyway).
fn observe(
    mirror: &Path,
    default_branch: &str,
    worktrees: &Path,
    fetch: bool,
    origin: &git::Origin,
    tasks: &[PlannedTask],
) -> Result<(Observed, Option<git::GitError>), git::GitError> {
    let mut fetch_error = None;
    if fetch {
        if let Err(e) = git::fetch_all(mirror, origin) {
            log::warn!("fetching origin for {} failed: {}", mirror.display(), e.message());
            fetch_error = Some(e);
        }
    }
    let base = git::base_ref(mirror, default_branch);
    let mut dirty = std::collections::HashMap::new();
    let mut seen = std::collections::HashMap::new();
    let folders: Vec<(String, PathBuf)> = match std::fs::read_dir(worktrees) {
        Ok(entries) => entries.flatten().map(|e| (e.file_name().to_string_lossy().to_string(), e.path())).collect(),
        Err(_) => Vec::new(),
    };
    // Each worktree is its own git runs: a few at a time.
    let looks = conflicts::in_parallel(&folders, |(_, path)| conflicts::look_at_worktree(path).ok());
    for ((task, _), look) in folders.into_iter().zip(looks) {
        if let Some(look) = look.flatten() {
            dirty.insert(look.branch.clone(), look.dirty_files as i32);
            seen.insert(task, look);
        }
    }
    let mut out = Vec::new();
    for (name, head) in git::branch_heads(mirror)? {
        let (ahead, behind) = if name == default_branch { (0, 0) } else { git::ahead_behind(mirror, &base, &name).unwrap_or((0, 0)) };
        out.push(BranchObservation { dirty_files: dirty.get(&name).copied(), name, head, ahead, behind });
    }
    let heads: std::collections::HashMap<&str, &str> = out.iter().map(|b| (b.name.as_str(), b.head.as_str())).collect();
    let away: Vec<&PlannedTask> = tasks.iter().filter(|t| !seen.contains_key(&t.id)).collect();
    let remote = if away.is_empty() { Default::default() } else { conflicts::remote_states(mirror, &away, &heads) };
    Ok((Observed { branches: out, worktrees: seen, remote }, fetch_error))
}

poller_controls!(BranchSyncPoller, "branch_sync", |_this| (None, None));
