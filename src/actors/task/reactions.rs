//! Reactions: what Kiln does on its own about a task's pull request or agent
//! (docs/git.md, "Reactions"), each switched on per repository in
//! `settings.reactions`.
//!
//! - `ci_failed`, `changes_requested`, `bot_comments`, `merge_conflict` hand a
//!   message to the agent (through `deliver::to_agent`: the open ACP session, else
//!   one bracketed paste into its terminal), at most `max_attempts` firings per
//!   task and cause; the next cause is escalated once (`reaction.escalated`).
//! - `approved_and_green` merges (opt-in) or says the PR is ready.
//! - `agent_stuck` only says so; it runs in the TaskActor's status observation
//!   (`effects::observe` calls [`stuck`]).
//!
//! Every cause has a key (`<check>@<sha>`, `review:<id>`, …); a key fires once,
//! ever: the TaskActor claims it in `task_reactions` before anything is done
//! (`ClaimReaction`), so two polls racing, or a restart, do not fire it again.
//! Each firing is a `reaction.fired` event with its cause and attempt.
//!
//! The PR causes run after each PR poll ([`after_pr_poll`]), outside every
//! actor (it talks to GitHub, git and the TaskActor), one task after another.
//! `merge_conflict` for a task with no open PR runs after each round of
//! conflict prediction ([`after_conflict_round`]), from its task-vs-base result.
//! Deciding what to fire and writing the messages are pure functions, tested
//! below without any I/O.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::deliver::{self, clean};
use super::{ApplyAction, ClaimReaction, SettleReaction};
use crate::actors::history::NewEvent;
use crate::actors::Kiln;
use crate::db::models::{PullRequest, Repo, RepoSettings, TaskReaction};
use crate::db::{pool::blocking, queries, DbError};
use crate::error::{AppError, AppResult};
use crate::integrations::git;
use crate::integrations::github::{FailedCheck, GitHub};

/// Longest message a reaction hands to the agent, in characters.
pub const MAX_MESSAGE: usize = 12_000;
/// Longest part one check (or one comment) may take of it.
const MAX_PART: usize = 3_000;
/// Lines of a check's output kept (its tail).
const TAIL_LINES: usize = 30;
/// Annotations kept per check.
const MAX_ANNOTATIONS: usize = 10;
/// Lines of an Actions job's log kept (its tail).
const LOG_LINES: usize = 40;
/// Characters the job log's tail may take of a check's part.
const LOG_CHARS: usize = 1_500;

/// One open task PR as the PR poller just saw it.
#[derive(Debug, Clone)]
pub struct PrFacts {
    pub task: String,
    pub branch: String,
    pub base: String,
    pub pr: PullRequest,
    pub failed: Vec<FailedCheck>,
    pub reviews: Option<Value>,
    pub comments: Option<Value>,
}

/// Whether any PR reaction is on (else the poll's follow-up does nothing).
pub fn any_pr_reaction(s: &RepoSettings) -> bool {
    let r = &s.reactions;
    s.ci_failed_reaction().enabled
        || r.changes_requested.enabled
        || r.bot_comments.enabled
        || r.merge_conflict.enabled
        || r.approved_and_green.enabled
}

/// Runs the PR reactions for each task, one after another; a failure is logged
/// and the next task still runs.
pub async fn after_pr_poll(kiln: Kiln, org: String, repo: Repo, facts: Vec<PrFacts>) {
    let github = match crate::actors::task::git_ops::github_client(&kiln, &org, &repo).await {
        Ok(found) => found.map(|(gh, _)| gh),
        Err(e) => {
            log::warn!("reactions for {org}/{}: {e}", repo.name);
            return;
        }
    };
    for f in facts {
        if let Err(e) = react(&kiln, &org, &repo, github.as_ref(), &f).await {
            log::warn!("reactions for task {}: {e}", f.task);
        }
    }
}

async fn react(kiln: &Kiln, org: &str, repo: &Repo, gh: Option<&GitHub>, f: &PrFacts) -> AppResult<()> {
    let settings = repo.settings();
    let t = f.task.clone();
    let rows = kiln.db.read(move |c| queries::all_task_reactions(c, &t)).await?;
    let r = Reactor { kiln, org, repo: &repo.name, task: &f.task, rows: &rows };
    let pr = &f.pr;

    let ci = settings.ci_failed_reaction();
    if ci.enabled && pr.ci_state.as_deref() == Some("failure") && !f.failed.is_empty() {
        let keys: Vec<String> = f.failed.iter().map(|c| check_key(c, &pr.head_sha)).collect();
        if let Some(fresh) = r.fresh("ci_failed", &keys).filter(|_| !r.spent("ci_failed", ci.max_attempts)) {
            let checks: Vec<&FailedCheck> = f.failed.iter().filter(|c| fresh.contains(&check_key(c, &pr.head_sha))).collect();
            let mut annotations = Vec::new();
            for c in &checks {
                annotations.push(match (gh, c.run_id) {
                    (Some(gh), Some(id)) if c.annotations > 0 => gh.check_run_annotations(id).await.unwrap_or(Value::Null),
                    _ => Value::Null,
                });
            }
            let mut logs = Vec::new();
            for c in &checks {
                logs.push(match (gh, c.job_id) {
                    (Some(gh), Some(id)) => job_log(kiln, gh, id).await,
                    _ => None,
                });
            }
            let before: Vec<usize> = checks.iter().map(|c| r.earlier_failures(&c.name, &pr.head_sha)).collect();
            let attempt = r.next_attempt("ci_failed");
            let text = ci_message(pr, &checks, &annotations, &logs, &before, attempt, ci.max_attempts);
            let detail = json!({
                "number": pr.number, "head_sha": pr.head_sha,
                "checks": checks.iter().zip(&before).zip(&logs).map(|((c, n), log)| json!({
                    "name": c.name, "conclusion": c.conclusion, "url": c.url, "failed_before": n, "job_log": log.is_some(),
                })).collect::<Vec<_>>(),
            });
            r.deliver("ci_failed", fresh, ci.max_attempts, text, detail).await?;
        }
    }

    let reactions = &settings.reactions;
    for (cause, on, bots) in [
        ("changes_requested", reactions.changes_requested.enabled, false),
        ("bot_comments", reactions.bot_comments.enabled, true),
    ] {
        if !on {
            continue;
        }
        let items = review_items(f.reviews.as_ref(), f.comments.as_ref(), |login| settings.is_bot(login) == bots);
        let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
        let max = if bots { reactions.bot_comments.max_attempts } else { reactions.changes_requested.max_attempts };
        if let Some(fresh) = r.fresh(cause, &keys).filter(|_| !r.spent(cause, max)) {
            let new: Vec<&ReviewItem> = items.iter().filter(|i| fresh.contains(&i.key)).collect();
            let text = review_message(pr.number, &new, bots);
            let authors: BTreeSet<&str> = new.iter().map(|i| i.author.as_str()).collect();
            let files: BTreeSet<&str> = new.iter().filter_map(|i| i.path.as_deref()).collect();
            let detail = json!({"number": pr.number, "comments": new.len(), "authors": authors, "files": files});
            r.deliver(cause, fresh, max, text, detail).await?;
        }
    }

    let conflict = &reactions.merge_conflict;
    if conflict.enabled && pr.mergeable == Some(false) {
        let keys = vec![format!("conflict@{}", pr.head_sha)];
        if let Some(fresh) = r.fresh("merge_conflict", &keys).filter(|_| !r.spent("merge_conflict", conflict.max_attempts)) {
            merge_conflict(&r, repo, f, fresh, conflict.auto_sync, conflict.max_attempts).await?;
        }
    }

    let green = &reactions.approved_and_green;
    let ready = pr.review_decision.as_deref() == Some("approved")
        && pr.ci_state.as_deref() == Some("success")
        && pr.mergeable == Some(true)
        && !pr.draft;
    if green.enabled && ready {
        let keys = vec![format!("ready@{}", pr.head_sha)];
        if r.fresh("approved_and_green", &keys).is_some() {
            approved_and_green(&r, pr, keys, green.merge, &green.method).await?;
        }
    }
    Ok(())
}

/// The check's key: its name on this head (a re-run on the same head is the
/// same failure; the next head's is a new one).
fn check_key(c: &FailedCheck, sha: &str) -> String {
    format!("{}@{sha}", c.name)
}

/// The tail of an Actions job's log, cleaned ([`github::job_log_tail`]) and
/// redacted (the token, the data dir, URL passwords); `None` when the token may
/// not read it (no `actions:read`), it is gone, too long, or GitHub failed: the
/// check run's output and annotations are then all the agent gets.
async fn job_log(kiln: &Kiln, gh: &GitHub, job_id: i64) -> Option<String> {
    let raw = match gh.job_log(job_id).await {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            log::info!("job {job_id}'s log is over {} bytes: not read", crate::integrations::github::MAX_JOB_LOG);
            return None;
        }
        Err(e) => {
            log::info!("job {job_id}'s log cannot be read ({e}): the check's output only");
            return None;
        }
    };
    let tail = blocking(move || Ok(crate::integrations::github::job_log_tail(&raw, LOG_LINES))).await.ok()?;
    let tail = tail.replace(&gh.token, "***");
    let tail = kiln.redactor.text(&tail).into_owned();
    (!tail.trim().is_empty()).then_some(tail)
}

/// One task's reaction state while its reactions run.
struct Reactor<'a> {
    kiln: &'a Kiln,
    org: &'a str,
    repo: &'a str,
    task: &'a str,
    rows: &'a [TaskReaction],
}

impl Reactor<'_> {
    /// The keys of `cause` that have not fired; `None` when there are none.
    fn fresh(&self, cause: &str, keys: &[String]) -> Option<Vec<String>> {
        let fresh: Vec<String> = keys
            .iter()
            .filter(|k| !self.rows.iter().any(|r| r.cause == cause && &r.cause_key == *k))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        (!fresh.is_empty()).then_some(fresh)
    }

    /// Firings of `cause` so far (an escalation is not one).
    fn attempts(&self, cause: &str) -> usize {
        let attempts: BTreeSet<i32> =
            self.rows.iter().filter(|r| r.cause == cause && r.cause_key != "escalated").map(|r| r.attempt).collect();
        attempts.len()
    }

    /// Past its bound and escalated already: nothing more to do (or to read
    /// from GitHub and git) for this cause.
    fn spent(&self, cause: &str, max: u32) -> bool {
        self.attempts(cause) >= max as usize && self.rows.iter().any(|r| r.cause == cause && r.cause_key == "escalated")
    }

    fn next_attempt(&self, cause: &str) -> usize {
        self.attempts(cause) + 1
    }

    /// How often check `name` failed before, on other heads.
    fn earlier_failures(&self, name: &str, sha: &str) -> usize {
        let prefix = format!("{name}@");
        self.rows
            .iter()
            .filter(|r| r.cause == "ci_failed" && r.cause_key.starts_with(&prefix))
            .filter(|r| r.cause_key[prefix.len()..] != *sha && !r.cause_key[prefix.len()..].contains('@'))
            .count()
    }

    fn event(&self, kind: &'static str, data: Value) -> NewEvent {
        NewEvent::new(kind, data).repo(self.repo).task(self.task)
    }

    async fn claim(&self, cause: &'static str, keys: Vec<String>, outcome: &'static str) -> AppResult<Option<i32>> {
        let claimed = self.kiln.task(self.org, self.repo, self.task).send(ClaimReaction { cause, keys, outcome }).await??;
        Ok(claimed.map(|(attempt, _)| attempt))
    }

    async fn settle(&self, cause: &'static str, attempt: i32, outcome: &'static str) -> AppResult<()> {
        self.kiln.task(self.org, self.repo, self.task).send(SettleReaction { cause, attempt, outcome }).await?
    }

    /// Hands `text` to the agent as one firing of `cause` covering `keys`, or,
    /// past `max` firings, escalates once instead.
    async fn deliver(&self, cause: &'static str, keys: Vec<String>, max: u32, text: String, detail: Value) -> AppResult<()> {
        let done = self.attempts(cause);
        if done >= max as usize {
            return self.escalate(cause, done, max, detail).await;
        }
        let Some(attempt) = self.claim(cause, keys, "pending").await? else { return Ok(()) };
        let text = bounded(&text, MAX_MESSAGE);
        let sent = deliver::to_agent(self.kiln, self.org, self.repo, self.task, &text, "the reaction").await;
        let mut data = json!({"cause": cause, "attempt": attempt, "max_attempts": max});
        match sent {
            Ok(d) => {
                self.settle(cause, attempt, "delivered").await?;
                merge(&mut data, json!({"outcome": "delivered", "via": d.via, "session": d.session, "chars": text.chars().count()}));
                merge(&mut data, detail);
                self.kiln.emit_one(self.org, self.event("reaction.fired", data)).await?;
            }
            Err(e) => {
                // Not retried: the agent is gone or refused it; the event says why.
                self.settle(cause, attempt, "failed").await?;
                merge(&mut data, json!({"outcome": "failed", "error": e.to_string()}));
                merge(&mut data, detail);
                self.kiln.emit_one(self.org, self.event("reaction.fired", data)).await?;
            }
        }
        Ok(())
    }

    /// `reaction.escalated`, once per task and cause: the agent had its tries.
    async fn escalate(&self, cause: &'static str, attempts: usize, max: u32, detail: Value) -> AppResult<()> {
        if self.claim(cause, vec!["escalated".into()], "escalated").await?.is_none() {
            return Ok(());
        }
        let mut data = json!({"cause": cause, "attempts": attempts, "max_attempts": max});
        merge(&mut data, detail);
        self.kiln.emit_one(self.org, self.event("reaction.escalated", data)).await?;
        Ok(())
    }
}

/// The PR cannot merge: Kiln syncs itself when that is clean (`auto_sync`),
/// else the agent is told which files conflict.
async fn merge_conflict(r: &Reactor<'_>, repo: &Repo, f: &PrFacts, keys: Vec<String>, auto_sync: bool, max: u32) -> AppResult<()> {
    let detail =
        |files: &[String]| json!({"source": "pull_request", "number": f.pr.number, "head_sha": f.pr.head_sha, "base": f.base, "files": files});
    let files = conflicting_files(r.kiln, r.org, repo, &f.base, &f.branch).await.unwrap_or_default();
    if auto_sync && r.attempts("merge_conflict") < max as usize {
        let handle = r.kiln.task(r.org, r.repo, r.task);
        let sync = ApplyAction { input: super::state::TaskInput::Sync, text: None, git: Default::default() };
        let synced = match handle.send(sync).await? {
            Ok(_) => handle
                .send(ApplyAction { input: super::state::TaskInput::Push, text: None, git: Default::default() })
                .await?
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match synced {
            Ok(()) => {
                let Some(attempt) = r.claim("merge_conflict", keys, "synced").await? else { return Ok(()) };
                let mut data = json!({"cause": "merge_conflict", "attempt": attempt, "max_attempts": max, "outcome": "synced"});
                merge(&mut data, detail(&files));
                r.kiln.emit_one(r.org, r.event("reaction.fired", data)).await?;
                return Ok(());
            }
            // A conflicting rebase left the worktree as it was: the agent resolves it.
            Err(AppError::Conflict { code: "sync_conflict", .. }) => {}
            Err(e) => log::warn!("task {}: syncing on a merge conflict failed: {e}", r.task),
        }
    }
    let text = conflict_message(f.pr.number, &f.base, &files);
    r.deliver("merge_conflict", keys, max, text, detail(&files)).await
}

/// `merge_conflict` for the tasks that have no open pull request, from conflict
/// prediction (`task_conflicts` rows against `base`, uncommitted work
/// included): called by the branch poller after each round. A conflict is one
/// cause from the round it was first predicted until it clears (its key is
/// `local@<since>`), so the agent's edits while it stands do not fire it again;
/// the same bound (`max_attempts`) and escalation as the PR's. A failure is
/// logged.
pub async fn after_conflict_round(kiln: Kiln, org: String, repo: String) {
    if let Err(e) = local_conflicts(&kiln, &org, &repo).await {
        log::warn!("merge_conflict reactions for {org}/{repo}: {e}");
    }
}

async fn local_conflicts(kiln: &Kiln, org: &str, name: &str) -> AppResult<()> {
    let (o, n) = (org.to_string(), name.to_string());
    let Some(repo) = kiln.db.read(move |c| queries::repo_by_name(c, &o, &n)).await? else { return Ok(()) };
    let settings = repo.settings();
    let conflict = settings.reactions.merge_conflict.clone();
    if !conflict.enabled {
        return Ok(());
    }
    let (repo_id, o) = (repo.id, org.to_string());
    // (task, base branch, files, since, committed only) of the live tasks without an open PR.
    let found = kiln
        .db
        .read(move |c| {
            let mut out = Vec::new();
            let branches = queries::branches_list(c, repo_id)?;
            for row in queries::conflicts_list(c, repo_id)?.into_iter().filter(|r| r.other == crate::integrations::conflicts::BASE) {
                let Some(task) = queries::task(c, &o, &row.task_id)? else { continue };
                if !matches!(task.status.as_str(), "running" | "idle") {
                    continue;
                }
                if queries::task_pull_request(c, repo_id, &task.branch)?.is_some_and(|p| p.state == "open") {
                    continue;
                }
                let clean = branches.iter().any(|b| b.name == task.branch && b.dirty_files == Some(0));
                out.push((task.id, task.base_branch, row.file_list(), row.since, clean));
            }
            Ok(out)
        })
        .await?;
    for (task, base, files, since, clean) in found {
        let t = task.clone();
        let rows = kiln.db.read(move |c| queries::all_task_reactions(c, &t)).await?;
        let r = Reactor { kiln, org, repo: name, task: &task, rows: &rows };
        let keys = vec![format!("local@{since}")];
        let Some(fresh) = r.fresh("merge_conflict", &keys).filter(|_| !r.spent("merge_conflict", conflict.max_attempts)) else { continue };
        // Kiln does not sync over uncommitted work: the agent owns it, and a
        // conflicting sync would only be undone. The agent is told instead.
        let auto_sync = conflict.auto_sync && clean;
        if let Err(e) = local_conflict(&r, fresh, &base, &files, since, auto_sync, conflict.max_attempts).await {
            log::warn!("merge_conflict reaction for task {task}: {e}");
        }
    }
    Ok(())
}

/// A task without a PR no longer merges with its base: Kiln rebases it itself
/// when that is clean (`auto_sync`; no push: nothing was published for review),
/// else the agent is told which files conflict.
async fn local_conflict(
    r: &Reactor<'_>,
    keys: Vec<String>,
    base: &str,
    files: &[String],
    since: i64,
    auto_sync: bool,
    max: u32,
) -> AppResult<()> {
    let detail = json!({"source": "prediction", "base": base, "files": files, "since": since});
    if auto_sync && r.attempts("merge_conflict") < max as usize {
        let sync = ApplyAction { input: super::state::TaskInput::Sync, text: None, git: Default::default() };
        match r.kiln.task(r.org, r.repo, r.task).send(sync).await? {
            Ok(_) => {
                let Some(attempt) = r.claim("merge_conflict", keys, "synced").await? else { return Ok(()) };
                let mut data = json!({"cause": "merge_conflict", "attempt": attempt, "max_attempts": max, "outcome": "synced"});
                merge(&mut data, detail);
                r.kiln.emit_one(r.org, r.event("reaction.fired", data)).await?;
                return Ok(());
            }
            Err(AppError::Conflict { code: "sync_conflict", .. }) => {}
            Err(e) => log::warn!("task {}: syncing on a predicted conflict failed: {e}", r.task),
        }
    }
    r.deliver("merge_conflict", keys, max, local_conflict_message(base, files), detail).await
}

/// The message for a task (without a PR) whose work no longer merges with its base.
pub fn local_conflict_message(base: &str, files: &[String]) -> String {
    let mut out = format!(
        "Your work (committed and uncommitted) no longer merges cleanly with {}, which has moved on. These files conflict:\n",
        clean(base)
    );
    for f in files.iter().take(100) {
        out.push_str(&format!("- {}\n", clean(f)));
    }
    if files.len() > 100 {
        out.push_str(&format!("- … and {} more\n", files.len() - 100));
    }
    out.push_str(&format!(
        "Please sync now, before this grows: commit your work, fetch origin, rebase onto origin/{} (or merge it in), and resolve the conflicts.",
        clean(base)
    ));
    out
}

/// The files that conflict between the task branch and origin's base, from
/// `git merge-tree` in the mirror after fetching the base (under its lock).
async fn conflicting_files(kiln: &Kiln, org: &str, repo: &Repo, base: &str, branch: &str) -> AppResult<Vec<String>> {
    let origin = crate::actors::task::git_ops::origin(kiln, org, repo).await?;
    let mirror = std::path::PathBuf::from(&repo.mirror_path);
    let _git = kiln.lock_git(&repo.mirror_path).await;
    let (base, branch) = (base.to_string(), branch.to_string());
    let files = blocking(move || {
        if let Err(e) = git::fetch_branch(&mirror, &base, &origin) {
            log::warn!("fetching {base} for a merge-conflict check failed: {}", e.message());
        }
        let base_rev = git::base_ref(&mirror, &base);
        git::merge_conflict_files(&mirror, &base_rev, &format!("refs/heads/{branch}")).map_err(|e| DbError::Blocking(e.message()))
    })
    .await?;
    Ok(files)
}

/// Approved, green and mergeable: merge (`merge`) or say it is ready.
async fn approved_and_green(r: &Reactor<'_>, pr: &PullRequest, keys: Vec<String>, merge_it: bool, method: &str) -> AppResult<()> {
    let outcome = if merge_it { "pending" } else { "notified" };
    let Some(attempt) = r.claim("approved_and_green", keys, outcome).await? else { return Ok(()) };
    let mut data = json!({"cause": "approved_and_green", "attempt": attempt, "number": pr.number, "head_sha": pr.head_sha, "url": pr.url});
    if !merge_it {
        merge(&mut data, json!({"outcome": "notified"}));
        r.kiln.emit_one(r.org, r.event("reaction.fired", data)).await?;
        return Ok(());
    }
    let git = super::git_ops::GitParams { method: Some(method.to_string()), ..Default::default() };
    let merged = r.kiln.task(r.org, r.repo, r.task).send(ApplyAction { input: super::state::TaskInput::Merge, text: None, git }).await?;
    match merged {
        Ok(_) => {
            // The merge may have archived the task; its row stays and is settled anyway.
            r.settle("approved_and_green", attempt, "merged").await?;
            merge(&mut data, json!({"outcome": "merged", "method": method}));
        }
        Err(e) => {
            r.settle("approved_and_green", attempt, "failed").await?;
            merge(&mut data, json!({"outcome": "failed", "method": method, "error": e.to_string()}));
        }
    }
    r.kiln.emit_one(r.org, r.event("reaction.fired", data)).await?;
    Ok(())
}

/// `agent_stuck`, from the TaskActor's status observation: the cause key of a
/// task that is stuck now, with why, or `None`. `status` is the task's status,
/// `quiet_since` when its terminal last printed (or started), `status_since`
/// when its status last changed, `has_pr` whether it has a pull request.
pub fn stuck(
    s: &crate::db::models::StuckReaction,
    status: &str,
    quiet_since: Option<i64>,
    status_since: i64,
    has_pr: bool,
    now: i64,
) -> Option<(String, &'static str, i64)> {
    if !s.enabled {
        return None;
    }
    match status {
        "running" => {
            let since = quiet_since?;
            (now - since >= (s.silent_secs as i64) * 1000).then(|| (format!("silent@{since}"), "running_without_output", since))
        }
        "idle" if !has_pr => (now - status_since >= (s.idle_without_pr_secs as i64) * 1000)
            .then(|| (format!("idle@{status_since}"), "idle_without_pull_request", status_since)),
        _ => None,
    }
}

/// One review, or one line comment, for the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewItem {
    pub key: String,
    pub author: String,
    /// `CHANGES_REQUESTED`, `COMMENTED` for a review; `None` for a line comment.
    pub state: Option<String>,
    pub path: Option<String>,
    pub line: Option<u64>,
    /// The last lines of the diff hunk the comment is on.
    pub code: Option<String>,
    pub text: String,
    pub url: Option<String>,
}

/// The reviews that ask for something (changes requested, or a comment with a
/// body) and every line comment, of the authors `pick` accepts, oldest first.
pub fn review_items(reviews: Option<&Value>, comments: Option<&Value>, pick: impl Fn(&str) -> bool) -> Vec<ReviewItem> {
    let mut out = Vec::new();
    for r in reviews.and_then(Value::as_array).into_iter().flatten() {
        let (Some(id), Some(author), Some(state)) = (r["id"].as_u64(), r["user"]["login"].as_str(), r["state"].as_str()) else {
            continue;
        };
        let body = r["body"].as_str().unwrap_or("").trim();
        let asks = state == "CHANGES_REQUESTED" || (state == "COMMENTED" && !body.is_empty());
        if !asks || !pick(author) {
            continue;
        }
        out.push(ReviewItem {
            key: format!("review:{id}"),
            author: author.to_string(),
            state: Some(state.to_string()),
            path: None,
            line: None,
            code: None,
            text: body.to_string(),
            url: r["html_url"].as_str().map(str::to_string),
        });
    }
    for c in comments.and_then(Value::as_array).into_iter().flatten() {
        let (Some(id), Some(author)) = (c["id"].as_u64(), c["user"]["login"].as_str()) else { continue };
        let body = c["body"].as_str().unwrap_or("").trim();
        if body.is_empty() || !pick(author) {
            continue;
        }
        let hunk = c["diff_hunk"].as_str().unwrap_or("");
        let lines: Vec<&str> = hunk.lines().filter(|l| !l.starts_with("@@")).collect();
        let code = lines[lines.len().saturating_sub(3)..].join("\n");
        out.push(ReviewItem {
            key: format!("comment:{id}"),
            author: author.to_string(),
            state: None,
            path: c["path"].as_str().map(str::to_string),
            line: c["line"].as_u64().or(c["original_line"].as_u64()),
            code: (!code.trim().is_empty()).then_some(code),
            text: body.to_string(),
            url: c["html_url"].as_str().map(str::to_string),
        });
    }
    out
}

/// The one message for new review comments.
pub fn review_message(number: i32, items: &[&ReviewItem], bots: bool) -> String {
    let who = if bots { "bots" } else { "reviewers" };
    let n = items.len();
    let mut out = format!(
        "New review feedback from {who} on your pull request #{number}: {n} item{}. Please address each one, commit, and push.\n",
        if n == 1 { "" } else { "s" }
    );
    for (i, item) in items.iter().enumerate() {
        let mut part = String::new();
        match (&item.path, item.state.as_deref()) {
            (Some(path), _) => {
                let at = item.line.map(|l| format!(":{l}")).unwrap_or_default();
                part.push_str(&format!("\n{}. {} on {}{}\n", i + 1, clean(&item.author), clean(path), at));
                if let Some(code) = &item.code {
                    for line in clean(code).lines() {
                        part.push_str(&format!("   > {line}\n"));
                    }
                }
            }
            (None, Some("CHANGES_REQUESTED")) => part.push_str(&format!("\n{}. {} requested changes\n", i + 1, clean(&item.author))),
            (None, _) => part.push_str(&format!("\n{}. {} commented\n", i + 1, clean(&item.author))),
        }
        for line in clean(&item.text).lines() {
            part.push_str(&format!("   {line}\n"));
        }
        out.push_str(&bounded(&part, MAX_PART));
    }
    out.trim_end().to_string()
}

/// The one message for CI failures: per check its name, conclusion, link, and
/// what GitHub says about it (annotations, the Actions job log's tail, the
/// output's tail), each bounded.
pub fn ci_message(
    pr: &PullRequest,
    checks: &[&FailedCheck],
    annotations: &[Value],
    logs: &[Option<String>],
    failed_before: &[usize],
    attempt: usize,
    max: u32,
) -> String {
    let short = &pr.head_sha[..pr.head_sha.len().min(12)];
    let mut out = format!(
        "CI failed on your pull request #{} (head {short}); hand-over {attempt} of {max}. Please fix these failures, commit, and push.\n",
        pr.number
    );
    for (i, c) in checks.iter().enumerate() {
        let mut part = format!("\n{}. {}: {}", i + 1, clean(&c.name), clean(&c.conclusion));
        if let Some(url) = &c.url {
            part.push_str(&format!(" ({})", clean(url)));
        }
        part.push('\n');
        match failed_before.get(i).copied().unwrap_or(0) {
            0 => {}
            n => part.push_str(&format!(
                "   This check failed before on an earlier head ({n} time{}): the last fix did not work.\n",
                if n == 1 { "" } else { "s" }
            )),
        }
        for text in [&c.title, &c.summary].into_iter().filter(|t| !t.trim().is_empty() && **t != c.name) {
            for line in clean(text).lines().take(10) {
                part.push_str(&format!("   {line}\n"));
            }
        }
        let notes: Vec<&Value> = annotations.get(i).and_then(Value::as_array).into_iter().flatten().take(MAX_ANNOTATIONS).collect();
        if !notes.is_empty() {
            part.push_str("   Annotations:\n");
            for a in notes {
                let place = match (a["path"].as_str(), a["start_line"].as_u64()) {
                    (Some(p), Some(l)) => format!("{}:{l}", clean(p)),
                    (Some(p), None) => clean(p),
                    _ => String::new(),
                };
                let level = a["annotation_level"].as_str().unwrap_or("failure");
                let message = clean(a["message"].as_str().unwrap_or("")).lines().next().unwrap_or("").to_string();
                part.push_str(&format!("   - {place} ({level}): {message}\n"));
            }
        }
        if let Some(log) = logs.get(i).and_then(Option::as_deref) {
            // The newest lines that fit the budget: the end of a log says why it failed.
            let log = clean(log);
            let mut kept: Vec<&str> = Vec::new();
            let mut used = 0;
            for line in log.lines().rev() {
                used += line.chars().count() + 6;
                if used > LOG_CHARS {
                    break;
                }
                kept.push(line);
            }
            kept.reverse();
            part.push_str(&format!("   Job log (last {} lines):\n", kept.len()));
            for line in kept {
                part.push_str(&format!("   | {line}\n"));
            }
        }
        if !c.text.trim().is_empty() {
            let text = clean(&c.text);
            let lines: Vec<&str> = text.trim_end().lines().collect();
            part.push_str(&format!("   Output (last {} lines):\n", lines.len().min(TAIL_LINES)));
            for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
                part.push_str(&format!("   | {line}\n"));
            }
        }
        out.push_str(&bounded(&part, MAX_PART));
    }
    out.trim_end().to_string()
}

/// The message for a PR that no longer merges with its base.
pub fn conflict_message(number: i32, base: &str, files: &[String]) -> String {
    let mut out = format!("Your pull request #{number} no longer merges cleanly with {}.", clean(base));
    if files.is_empty() {
        out.push_str(" GitHub reports a conflict.\n");
    } else {
        out.push_str(" These files conflict:\n");
        for f in files.iter().take(100) {
            out.push_str(&format!("- {}\n", clean(f)));
        }
        if files.len() > 100 {
            out.push_str(&format!("- … and {} more\n", files.len() - 100));
        }
    }
    out.push_str(&format!(
        "Please sync: fetch origin, rebase onto origin/{} (or merge it in), resolve the conflicts, commit, and push.",
        clean(base)
    ));
    out
}

/// `text` cut to `max` characters, saying so.
fn bounded(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(40)).collect();
    cut.push_str("\n   … (cut: see the link for the rest)\n");
    cut
}

fn merge(into: &mut Value, more: Value) {
    if let (Some(obj), Value::Object(more)) = (into.as_object_mut(), more) {
        obj.extend(more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::StuckReaction;

    fn pr() -> PullRequest {
        PullRequest {
            repo_id: 1,
            number: 7,
            state: "open".into(),
            draft: false,
            title: "t".into(),
            url: "https://github.com/a/b/pull/7".into(),
            head_ref: "kiln/x".into(),
            head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            base_ref: "main".into(),
            mergeable: Some(true),
            ci_state: Some("failure".into()),
            review_decision: None,
            updated_at: 0,
            checks: None,
        }
    }

    #[test]
    fn a_ci_message_carries_name_conclusion_link_annotations_and_the_output_tail_bounded() {
        let long: String = (0..500).map(|i| format!("log line {i}\n")).collect();
        let check = FailedCheck {
            name: "tests".into(),
            summary: "3 tests failed".into(),
            conclusion: "failure".into(),
            url: Some("https://github.com/a/b/runs/5".into()),
            run_id: Some(5),
            title: "tests".into(),
            text: format!("{long}\x1b[201~evil"),
            annotations: 1,
            job_id: None,
        };
        let notes = json!([{"path": "src/lib.rs", "start_line": 10, "annotation_level": "failure", "message": "assertion failed: x == 1"}]);
        let text = ci_message(&pr(), &[&check], &[notes], &[None], &[1], 2, 3);
        assert!(text.contains("#7 (head 0123456789ab); hand-over 2 of 3"), "{text}");
        assert!(text.contains("1. tests: failure (https://github.com/a/b/runs/5)"), "{text}");
        assert!(text.contains("failed before on an earlier head (1 time)"), "{text}");
        assert!(text.contains("- src/lib.rs:10 (failure): assertion failed: x == 1"), "{text}");
        assert!(text.contains("3 tests failed"));
        assert!(!text.contains("log line 0\n"), "only the tail");
        assert!(!text.contains('\x1b'), "no escape can end the paste");
        assert!(text.chars().count() <= MAX_PART + 300, "bounded: {}", text.chars().count());
    }

    #[test]
    fn a_job_log_tail_comes_before_the_output_and_keeps_its_newest_lines_within_its_budget() {
        let check = FailedCheck { name: "build".into(), conclusion: "failure".into(), job_id: Some(9), ..FailedCheck::default() };
        let log: String = (0..200).map(|i| format!("step {i}\n")).collect::<String>() + "error: exit code 101";
        let text = ci_message(&pr(), &[&check], &[Value::Null], &[Some(log)], &[0], 1, 3);
        assert!(text.contains("Job log (last "), "{text}");
        assert!(text.ends_with("| error: exit code 101"), "the end of the log is kept: {text}");
        assert!(!text.contains("| step 0\n"), "only the tail: {text}");
        assert!(text.chars().count() < LOG_CHARS + 400, "bounded: {}", text.chars().count());
        let without = ci_message(&pr(), &[&check], &[Value::Null], &[None], &[0], 1, 3);
        assert!(!without.contains("Job log"), "{without}");
    }

    #[test]
    fn review_items_keep_humans_and_bots_apart_and_quote_the_code() {
        let reviews = json!([
            {"id": 1, "user": {"login": "alice"}, "state": "CHANGES_REQUESTED", "body": "Please rename."},
            {"id": 2, "user": {"login": "alice"}, "state": "APPROVED", "body": ""},
            {"id": 3, "user": {"login": "bob"}, "state": "COMMENTED", "body": ""},
            {"id": 4, "user": {"login": "lint[bot]"}, "state": "COMMENTED", "body": "Style issues."},
        ]);
        let comments = json!([
            {"id": 10, "user": {"login": "alice"}, "path": "src/a.rs", "line": 3, "body": "Why?",
             "diff_hunk": "@@ -1,2 +1,3 @@\n fn a() {}\n+let x = 1;"},
            {"id": 11, "user": {"login": "lint[bot]"}, "path": "src/b.rs", "line": 9, "body": "unused", "diff_hunk": ""},
        ]);
        let settings = RepoSettings::default();
        let humans = review_items(Some(&reviews), Some(&comments), |l| !settings.is_bot(l));
        let keys: Vec<&str> = humans.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["review:1", "comment:10"]);
        let bots = review_items(Some(&reviews), Some(&comments), |l| settings.is_bot(l));
        assert_eq!(bots.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["review:4", "comment:11"]);
        let text = review_message(7, &humans.iter().collect::<Vec<_>>(), false);
        assert!(text.contains("from reviewers on your pull request #7: 2 items"), "{text}");
        assert!(text.contains("1. alice requested changes\n   Please rename."), "{text}");
        assert!(text.contains("2. alice on src/a.rs:3\n   >  fn a() {}\n   > +let x = 1;\n   Why?"), "{text}");
        let mut listed = RepoSettings::default();
        listed.reactions.bot_logins = vec!["Alice".into()];
        assert!(listed.is_bot("alice") && !listed.is_bot("bob") && listed.is_bot("x[bot]"));
    }

    #[test]
    fn stuck_is_running_silent_or_idle_without_a_pr_past_its_threshold() {
        let s = StuckReaction { enabled: true, silent_secs: 10, idle_without_pr_secs: 20 };
        assert_eq!(stuck(&s, "running", Some(1_000), 0, false, 10_999), None);
        assert_eq!(stuck(&s, "running", Some(1_000), 0, false, 11_000).map(|k| k.0), Some("silent@1000".into()));
        assert_eq!(stuck(&s, "idle", None, 5_000, false, 25_000).map(|k| k.1), Some("idle_without_pull_request"));
        assert_eq!(stuck(&s, "idle", None, 5_000, true, 99_000), None, "idle with a PR waits for review");
        assert_eq!(stuck(&s, "archived", Some(0), 0, false, 99_000), None);
        assert_eq!(stuck(&StuckReaction { enabled: false, ..s }, "running", Some(0), 0, false, 99_000), None);
    }

    #[test]
    fn a_conflict_message_names_the_files_and_asks_for_a_sync() {
        let text = conflict_message(7, "main", &["README.md".into()]);
        assert!(text.contains("#7 no longer merges cleanly with main. These files conflict:\n- README.md\n"), "{text}");
        assert!(text.contains("rebase onto origin/main"));
    }

    #[test]
    fn a_predicted_conflict_message_names_the_files_and_asks_for_a_sync() {
        let text = local_conflict_message("main", &["shared.txt".into()]);
        assert!(text.contains("no longer merges cleanly with main, which has moved on. These files conflict:\n- shared.txt\n"), "{text}");
        assert!(text.contains("rebase onto origin/main"), "{text}");
    }

    #[test]
    fn the_old_ci_setting_still_switches_ci_failed_on() {
        let mut s = RepoSettings::default();
        assert!(!s.ci_failed_reaction().enabled);
        s.automation.on_ci_failure.enabled = true;
        s.automation.on_ci_failure.max_attempts = 5;
        let r = s.ci_failed_reaction();
        assert!(r.enabled && r.max_attempts == 5);
        s.reactions.ci_failed.enabled = true;
        s.reactions.ci_failed.max_attempts = 2;
        assert_eq!(s.ci_failed_reaction().max_attempts, 2, "the new setting wins");
    }
}
