//! The git lifecycle of a task, run inside its TaskActor: push, sync (rebase or
//! merge the base in), pull request (open or adopt) and merge (through GitHub
//! with the expected head, or locally in the mirror for other remotes). Each
//! outcome, git's own error text included, becomes an event.

use std::path::Path;

use serde_json::json;

use super::effects::TaskCtx;
use super::store;
use crate::actors::repository::UpsertPullRequest;
use crate::db::models::{PullRequest, Repo, Task};
use crate::db::pool::blocking;
use crate::db::{queries, DbError};
use crate::error::{AppError, AppResult};
use crate::integrations::git::{self, Credentials, GitError, Integration, Origin};
use crate::integrations::github::{GitHub, GitHubError, DEFAULT_API_URL};
use crate::providers::daytona::provider::RemoteCheckout;

/// What a git action was asked to do.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct GitParams {
    /// push: commit whatever is uncommitted first, with this message.
    pub commit: Option<String>,
    /// push: replace the branch on the remote even when someone else pushed to
    /// it (still with a lease on what Kiln saw there).
    pub force: Option<bool>,
    /// sync: `rebase` (default) or `merge`.
    pub mode: Option<String>,
    /// pr: open it as a draft.
    pub draft: Option<bool>,
    /// merge: `squash` (default), `merge` or `rebase`.
    pub method: Option<String>,
}

/// The GitHub repository and credentials of `repo`, when it has them.
pub async fn github_for(ctx: &TaskCtx, repo: &Repo) -> AppResult<Option<(GitHub, Credentials)>> {
    github_client(&ctx.kiln, &ctx.org, repo).await
}

/// The GitHub client and git credentials for `repo`: `None` when it is not on
/// GitHub, an error when it is but the organization has no token.
pub async fn github_client(kiln: &crate::actors::Kiln, org: &str, repo: &Repo) -> AppResult<Option<(GitHub, Credentials)>> {
    let Some(slug) = repo.github() else { return Ok(None) };
    let org_name = org.to_string();
    let profile = kiln.db.read(move |c| queries::provider_profile(c, &org_name, "github")).await?;
    let (config, secrets) = match profile {
        Some((config, secrets, _)) => (
            serde_json::from_str::<serde_json::Value>(&config).unwrap_or_default(),
            serde_json::from_str::<serde_json::Value>(&secrets).unwrap_or_default(),
        ),
        None => (json!({}), json!({})),
    };
    let Some(token) = secrets["token"].as_str().filter(|t| !t.is_empty()) else {
        return Err(AppError::invalid(
            "github_token_missing",
            format!("repository `{}` is on GitHub ({slug}) but this organization has no GitHub token: PUT /v1/organizations/{}/providers/github {{\"secrets\": {{\"token\": \"…\"}}}}", repo.name, org),
        ));
    };
    let api = config["api_url"].as_str().unwrap_or(DEFAULT_API_URL);
    Ok(Some((GitHub::new(api, token, &slug), credentials(kiln, token))))
}

/// How git reaches `repo`'s origin: the `file` transport only for a repository
/// registered from a local path; the repository's own credential (given in its
/// source URL) when it has one, else the organization's GitHub token when the
/// repository is on GitHub, else none.
/// The repository's mirror, where Kiln's git talks to origin.
fn mirror_of(repo: &Repo) -> std::path::PathBuf {
    Path::new(&repo.mirror_path).to_path_buf()
}

pub async fn origin(kiln: &crate::actors::Kiln, org: &str, repo: &Repo) -> AppResult<Origin> {
    let local = (repo.source_kind == "path").then(|| std::path::PathBuf::from(&repo.source));
    let id = repo.id;
    let own = kiln.db.read(move |c| queries::repo_credential(c, id)).await?;
    let credentials = match own {
        Some((user, secret)) => Some(Credentials { user, ..credentials(kiln, &secret) }),
        None => github_client(kiln, org, repo).await.ok().flatten().map(|(_, c)| c),
    };
    let (connect, refused) = host_policy(kiln, repo).await?;
    Ok(Origin { local, credentials, connect, refused })
}

/// The host policy for a URL an organization registered, checked again now (DNS
/// can change since registration): the addresses git may connect to, or why it
/// may not talk to the origin at all.
async fn host_policy(kiln: &crate::actors::Kiln, repo: &Repo) -> AppResult<(Option<git::Connect>, Option<String>)> {
    if repo.source_kind != "url" || repo.registered_by != "organization" {
        return Ok((None, None));
    }
    let (cfg, url) = (kiln.config.repos.clone(), repo.source.clone());
    let checked = blocking(move || Ok(crate::actors::repository::hosts::check(&cfg, &url))).await?;
    Ok(match checked {
        Ok(pin) => (pin.map(|p| p.connect()), None),
        Err(refusal) => (None, Some(refusal.message())),
    })
}

/// The repository's remote origin and its credential, for a provider that
/// clones inside the sandbox; `None` for a repository registered from a path.
pub async fn remote_origin(kiln: &crate::actors::Kiln, org: &str, repo: &Repo) -> AppResult<Option<crate::providers::RemoteOrigin>> {
    if repo.source_kind != "url" {
        return Ok(None);
    }
    let origin = origin(kiln, org, repo).await?;
    if let Some(why) = origin.refused {
        return Err(AppError::denied("source_host_refused", why));
    }
    let (user, secret) = match origin.credentials {
        Some(c) => (c.user, Some(c.token)),
        None => (None, None),
    };
    Ok(Some(crate::providers::RemoteOrigin { url: repo.source.clone(), user, secret }))
}

/// The task's checkout when it is in a remote sandbox (the `daytona`
/// provider), `None` when it is the local worktree. For a remote one, git runs
/// in the sandbox through its toolbox where it changes the checkout (commit,
/// sync), and Kiln's git runs on the mirror, into which the task's branch is
/// brought first, where it talks to origin (push, PR, merge): the same
/// semantics, codes and events, and credentials the sandbox never holds for a push.
async fn remote_checkout(ctx: &TaskCtx, task: &Task, repo: &Repo) -> AppResult<Option<RemoteCheckout>> {
    let provider = ctx.kiln.providers.get(&task.provider)?;
    if provider.capabilities().local_path {
        return Ok(None);
    }
    let handle = provider.handle_for(&ctx.org, &ctx.repo, &task.id, Path::new(&repo.mirror_path));
    let checkout = RemoteCheckout::open(ctx.kiln.db.clone(), ctx.org.clone(), handle).await?;
    Ok(Some(checkout))
}

/// Brings a remote checkout's branch into the mirror; answers where Kiln's git
/// reads the task's head (`dir`, `rev`): the worktree's `HEAD`, or the mirror
/// and the commit brought in.
async fn head_of(remote: &Option<RemoteCheckout>, task: &Task, repo: &Repo, worktree: &Path) -> AppResult<(std::path::PathBuf, String)> {
    match remote {
        Some(r) => Ok((mirror_of(repo), r.export(task.branch.clone(), mirror_of(repo)).await?)),
        None => Ok((worktree.to_path_buf(), "HEAD".to_string())),
    }
}

/// git gets the token from this binary acting as its askpass helper.
pub fn credentials(kiln: &crate::actors::Kiln, token: &str) -> Credentials {
    let program = &kiln.config.terminal.host_program;
    // The real path of this binary: git runs the askpass program itself, so
    // `/proc/self/exe` would name git there.
    let askpass = if !program.is_empty() {
        program.into()
    } else {
        std::env::current_exe().unwrap_or_else(|_| "kiln".into())
    };
    Credentials { askpass, user: None, token: token.to_string() }
}

fn github_error(err: GitHubError) -> AppError {
    match err {
        GitHubError::Conflict(m) => AppError::conflict("head_moved", format!("the branch on GitHub moved since Kiln last pushed it ({m}): push or sync, then merge again")),
        GitHubError::NotMergeable(m) => AppError::conflict("not_mergeable", format!("GitHub will not merge it: {m}")),
        GitHubError::Validation(m) => AppError::invalid("github_rejected", m),
        GitHubError::RateLimited { retry_after } => AppError::unavailable("github_rate_limited", format!("GitHub's rate limit is spent: retry in {} s", retry_after.as_secs())),
        GitHubError::Unauthorized(m) => AppError::BadGateway { code: "github_unauthorized", message: format!("GitHub refused the organization's token: {m}") },
        other => AppError::BadGateway { code: "github_failed", message: other.to_string() },
    }
}

/// Runs blocking git on the blocking pool.
async fn git_call<T: Send + 'static>(f: impl FnOnce() -> Result<T, GitError> + Send + 'static) -> AppResult<Result<T, GitError>> {
    Ok(blocking(move || Ok::<_, DbError>(f())).await?)
}

fn git_failure(code: &'static str, err: GitError) -> AppError {
    match err {
        GitError::Missing(_) => AppError::git_missing(),
        GitError::SourceMoved(message) => AppError::conflict("source_moved", message),
        GitError::HostRefused(message) => AppError::denied("source_host_refused", message),
        GitError::Failed { stderr, .. } => {
            let lower = stderr.to_lowercase();
            let rejected = ["rejected", "non-fast-forward", "fetch first", "protected"].iter().any(|w| lower.contains(w));
            if rejected {
                AppError::conflict(code, format!("the remote rejected it: {stderr}"))
            } else {
                AppError::BadGateway { code, message: format!("git failed: {stderr}") }
            }
        }
        other => AppError::internal(other),
    }
}

/// Commits everything uncommitted in the worktree (`task.committed` when there
/// was something); answers the new commit.
pub async fn commit_all(ctx: &TaskCtx, worktree: &Path, message: String) -> AppResult<Option<String>> {
    let (task, repo) = ctx.load().await?;
    let committed = match remote_checkout(ctx, &task, &repo).await? {
        Some(remote) => remote.commit_all(message).await?,
        None => {
            let dir = worktree.to_path_buf();
            git_call(move || git::commit_all(&dir, &message)).await?
        }
    };
    match committed {
        Ok(Some(sha)) => {
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.committed", json!({"sha": sha}))).await?;
            Ok(Some(sha))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(git_failure("commit_failed", e)),
    }
}

/// What a push of the task branch may do, decided from origin's branch as it is
/// now (`remote`), whether HEAD already contains that commit, the commit Kiln
/// last pushed there (`lease`) and whether the user asked to force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PushPlan {
    /// A new branch (`None`) or a fast-forward from this commit: nothing is lost,
    /// and the push still expects exactly that, in case someone pushes meanwhile.
    Update(Option<String>),
    /// Kiln rewrote the branch it pushed (a rebase), or the user forced: replace
    /// this commit, and only it.
    Rewrite(String),
    /// Someone else pushed: origin's branch is at `remote`, not at Kiln's `lease`.
    RemoteMoved { remote: String, lease: String },
    /// Not a fast-forward and Kiln never pushed this branch: a plain push, which
    /// git refuses, with its own words.
    PlainPush,
}

/// The pure decision behind every push of a task branch (see docs/git.md, "Push
/// after a sync").
pub(super) fn plan_push(remote: Option<&str>, head_contains_remote: bool, lease: Option<&str>, force: bool) -> PushPlan {
    match remote {
        None => PushPlan::Update(None),
        Some(r) if head_contains_remote => PushPlan::Update(Some(r.to_string())),
        Some(r) if force => PushPlan::Rewrite(r.to_string()),
        Some(r) => match lease {
            Some(l) if l == r => PushPlan::Rewrite(r.to_string()),
            Some(l) => PushPlan::RemoteMoved { remote: r.to_string(), lease: l.to_string() },
            None => PushPlan::PlainPush,
        },
    }
}

/// 409 `remote_moved`: origin's branch is at `remote`, which Kiln did not push;
/// `expected` is what it expected there (its last push, or what it saw a moment
/// before pushing), `None` for a branch that did not exist.
fn remote_moved(branch: &str, remote: &str, expected: Option<&str>) -> AppError {
    let was = match expected {
        Some(sha) => format!("not at {sha} as Kiln expected"),
        None => "where it did not exist a moment ago".to_string(),
    };
    AppError::conflict(
        "remote_moved",
        format!(
            "the branch {branch} on the remote is at {remote}, {was}: someone else pushed to it, and Kiln does not \
             overwrite their commits. Bring them into the task (in its terminal: `git pull --rebase origin {branch}`), \
             then push again; or push with force (`kiln push --force`) to replace them"
        ),
    )
}

/// The commit Kiln last pushed to the task's branch on origin, if it did.
async fn push_lease(ctx: &TaskCtx, task: &Task) -> AppResult<Option<String>> {
    let id = ctx.id.clone();
    let runtime = ctx.kiln.db.read(move |c| queries::task_runtime(c, &id)).await?;
    Ok(runtime.filter(|r| r.pushed_branch.as_deref() == Some(task.branch.as_str())).and_then(|r| r.pushed_sha))
}

/// Commits (when asked) and pushes the task branch to origin with upstream set.
/// A branch Kiln rewrote since its last push (a sync that rebased) is pushed with
/// `--force-with-lease` on the commit Kiln pushed; when someone else pushed in
/// between it is refused (`remote_moved`) unless `force`. Each push records
/// what it pushed, as the next push's lease.
pub async fn push(ctx: &TaskCtx, task: &Task, repo: &Repo, worktree: &Path, commit: Option<String>, force: bool) -> AppResult<String> {
    let origin = origin(&ctx.kiln, &ctx.org, repo).await?;
    if let Some(message) = commit.filter(|m| !m.trim().is_empty()) {
        commit_all(ctx, worktree, message).await?;
    }
    let remote_co = remote_checkout(ctx, task, repo).await?;
    let (dir, head) = head_of(&remote_co, task, repo, worktree).await?;
    let lease = push_lease(ctx, task).await?;
    let (mirror, branch, o, h) = (mirror_of(repo), task.branch.clone(), origin.clone(), head.clone());
    let seen = git_call(move || {
        // Asked in the mirror, whose config the agent cannot touch (see `git::push`).
        let remote = git::remote_head(&mirror, &branch, &o)?;
        let contained = match &remote {
            Some(r) => git::is_ancestor(&dir, r, &h)?,
            None => false,
        };
        Ok((remote, contained))
    })
    .await?;
    let plan = match seen {
        Ok((remote, contained)) => Ok(plan_push(remote.as_deref(), contained, lease.as_deref(), force)),
        Err(e) => Err(git_failure("push_rejected", e)),
    };
    let (git_lease, replaced) = match plan {
        Ok(PushPlan::Update(expect)) => (git::Lease::Expect(expect), None),
        Ok(PushPlan::Rewrite(old)) => (git::Lease::Expect(Some(old.clone())), Some(old)),
        Ok(PushPlan::PlainPush) => (git::Lease::FastForwardOnly, None),
        Ok(PushPlan::RemoteMoved { remote, lease }) => return Err(push_failed(ctx, remote_moved(&task.branch, &remote, Some(&lease))).await?),
        Err(e) => return Err(push_failed(ctx, e).await?),
    };
    let (mirror, branch, l, o) = (mirror_of(repo), task.branch.clone(), git_lease.clone(), origin.clone());
    let pushed = match remote_co {
        Some(_) => git_call(move || git::push_rev(&mirror, &head, &branch, &l, &o)).await?,
        None => {
            let dir = worktree.to_path_buf();
            git_call(move || git::push(&dir, &mirror, &branch, &l, &o)).await?
        }
    };
    match pushed {
        Ok(sha) => {
            let (id, branch, pushed, now) = (ctx.id.clone(), task.branch.clone(), sha.clone(), crate::util::now_ms());
            ctx.kiln.db.write(move |c| store::record_push(c, &id, &branch, &pushed, now)).await?;
            let mut data = json!({"branch": task.branch, "sha": sha});
            if let Some(old) = &replaced {
                data["forced"] = json!(true);
                data["replaced"] = json!(old);
            }
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.pushed", data)).await?;
            Ok(sha)
        }
        Err(e) => {
            // A lease that failed between our look and the push: someone pushed just now.
            let err = match &git_lease {
                git::Lease::Expect(expected) => {
                    let (mirror, branch) = (mirror_of(repo), task.branch.clone());
                    let now = git_call(move || git::remote_head(&mirror, &branch, &origin)).await?.ok().flatten();
                    match now {
                        Some(remote) if expected.as_deref() != Some(remote.as_str()) => {
                            remote_moved(&task.branch, &remote, lease.as_deref().or(expected.as_deref()))
                        }
                        _ => git_failure("push_rejected", e),
                    }
                }
                git::Lease::FastForwardOnly => git_failure("push_rejected", e),
            };
            Err(push_failed(ctx, err).await?)
        }
    }
}

/// Records a failed push as `task.push_failed`; answers the error to return.
async fn push_failed(ctx: &TaskCtx, err: AppError) -> AppResult<AppError> {
    ctx.kiln.emit_one(&ctx.org, ctx.event("task.push_failed", json!({"code": err.code(), "error": err.to_string()}))).await?;
    Ok(err)
}

/// Fetches the base and rebases (or merges) the task branch onto it. A conflict
/// leaves the worktree as it was and answers 409 with the files.
pub async fn sync(ctx: &TaskCtx, task: &Task, repo: &Repo, worktree: &Path, mode: Option<String>) -> AppResult<String> {
    let merge = match mode.as_deref() {
        None | Some("rebase") => false,
        Some("merge") => true,
        Some(other) => return Err(AppError::invalid("invalid_mode", format!("sync mode `{other}`: use rebase or merge"))),
    };
    let result = match remote_checkout(ctx, task, repo).await? {
        Some(remote) => {
            // In the sandbox, which fetches the base itself (its credential for
            // that one command); the mirror's copy is refreshed by its poller.
            let origin = remote_origin(&ctx.kiln, &ctx.org, repo).await?.ok_or_else(|| AppError::bug("a remote checkout of a local repository"))?;
            remote.integrate(origin, task.base_branch.clone(), merge).await?
        }
        None => {
            let origin = origin(&ctx.kiln, &ctx.org, repo).await?;
            let (dir, mirror, base) = (worktree.to_path_buf(), mirror_of(repo), task.base_branch.clone());
            git_call(move || {
                // Fetched in the mirror, whose config the agent cannot touch (see `git::push`).
                git::fetch_branch(&mirror, &base, &origin)?;
                git::integrate(&dir, &format!("refs/remotes/origin/{base}"), merge)
            })
            .await?
        }
    };
    match result {
        Ok(Integration::Clean(head)) => {
            ctx.kiln
                .emit_one(&ctx.org, ctx.event("task.synced", json!({"head": head, "base": task.base_branch, "mode": if merge { "merge" } else { "rebase" }})))
                .await?;
            Ok(head)
        }
        Ok(Integration::Conflicts(files)) => {
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.sync_conflict", json!({"files": files, "base": task.base_branch}))).await?;
            Err(AppError::conflict(
                "sync_conflict",
                format!(
                    "{} {} conflicts in: {}; the worktree is unchanged: resolve it in the sandbox{}",
                    if merge { "merging in" } else { "rebasing onto" },
                    task.base_branch,
                    files.join(", "),
                    if merge { "" } else { ", or sync with mode merge" }
                ),
            ))
        }
        Err(e) => {
            let err = git_failure("sync_failed", e);
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.sync_failed", json!({"code": err.code(), "error": err.to_string()}))).await?;
            Err(err)
        }
    }
}

/// A pull request row from GitHub's PR object.
pub fn pull_row(repo_id: i32, pr: &serde_json::Value) -> PullRequest {
    let merged = pr["merged"].as_bool().unwrap_or(false) || !pr["merged_at"].is_null();
    PullRequest {
        repo_id,
        number: pr["number"].as_i64().unwrap_or(0) as i32,
        state: if merged { "merged" } else { pr["state"].as_str().unwrap_or("open") }.to_string(),
        draft: pr["draft"].as_bool().unwrap_or(false),
        title: pr["title"].as_str().unwrap_or("").to_string(),
        url: pr["html_url"].as_str().unwrap_or("").to_string(),
        head_ref: pr["head"]["ref"].as_str().unwrap_or("").to_string(),
        head_sha: pr["head"]["sha"].as_str().unwrap_or("").to_string(),
        base_ref: pr["base"]["ref"].as_str().unwrap_or("").to_string(),
        mergeable: pr["mergeable"].as_bool(),
        ci_state: None,
        review_decision: None,
        updated_at: crate::util::now_ms(),
        checks: None,
    }
}

/// Opens the task's pull request (pushing first), or adopts the one that exists.
pub async fn open_pr(ctx: &TaskCtx, task: &Task, repo: &Repo, worktree: &Path, draft: bool, pushed: bool) -> AppResult<PullRequest> {
    let Some((gh, _)) = github_for(ctx, repo).await? else {
        return Err(not_github(repo));
    };
    // A caller that has just pushed (on-idle's push step) is not pushed for
    // again: one push, one `task.pushed`.
    if !pushed {
        push(ctx, task, repo, worktree, None, false).await?;
    }
    // A remote checkout's branch is in the mirror now (the push brought it).
    let dir = if ctx.kiln.providers.get(&task.provider)?.capabilities().local_path { worktree.to_path_buf() } else { mirror_of(repo) };
    let (base_ref, branch) = (format!("refs/remotes/origin/{}", task.base_branch), task.branch.clone());
    let commits = git_call(move || git::commit_subjects(&dir, &base_ref, &branch)).await?.unwrap_or_default();
    // A task made from an issue closes it; its description (the issue's own
    // text, fenced for the agent) is on the issue already.
    let task_id = task.id.clone();
    let issue = ctx.kiln.db.read(move |c| queries::task_issue(c, &task_id)).await?;
    let mut body = match &issue {
        Some(i) => format!("{}\n\nMade from issue #{} by Kiln.", super::issues::closes(i.issue_number), i.issue_number),
        None => task.description.clone(),
    };
    if !commits.is_empty() {
        body.push_str("\n\n---\nCommits:\n");
        for c in &commits {
            body.push_str(&format!("- {c}\n"));
        }
    }
    body.push_str(&format!("\n_Opened by Kiln for task `{}`._", task.id));
    let (pr, adopted) = match gh.create_pull(&task.title, &task.branch, &task.base_branch, &body, draft).await {
        Ok(pr) => (pr, false),
        Err(GitHubError::Validation(m)) if m.contains("already exists") => {
            match gh.open_pull_for(&task.branch).await.map_err(github_error)? {
                Some(pr) => (pr, true),
                None => return Err(AppError::invalid("github_rejected", m)),
            }
        }
        Err(e) => return Err(github_error(e)),
    };
    let row = pull_row(repo.id, &pr);
    let stored = ctx.kiln.repository(&ctx.org, &ctx.repo).send(UpsertPullRequest { row: row.clone() }).await??;
    let kind = if adopted { "pr.adopted" } else { "pr.opened" };
    ctx.kiln.emit_one(&ctx.org, ctx.event(kind, json!({"number": row.number, "url": row.url, "draft": row.draft}))).await?;
    if issue.is_some() {
        // The PR is open whatever happens to the comment; the issue poller retries it.
        if let Err(e) = super::issues::report_pr(ctx).await {
            log::warn!("task {}: reporting the PR on its issue failed: {e}", task.id);
        }
    }
    Ok(stored)
}

fn not_github(repo: &Repo) -> AppError {
    AppError::invalid(
        "not_github",
        format!(
            "repository `{}` ({}) is not on GitHub: pull requests need a GitHub remote (set settings.github to owner/name if it is one)",
            repo.name, repo.source
        ),
    )
}

/// Merges the task: through GitHub with the expected head sha, or for other
/// remotes locally in the mirror and pushed. Answers the merge commit.
pub async fn merge(ctx: &TaskCtx, task: &Task, repo: &Repo, worktree: &Path, method: Option<String>) -> AppResult<String> {
    let method = method.unwrap_or_else(|| "squash".into());
    if !["squash", "merge", "rebase"].contains(&method.as_str()) {
        return Err(AppError::invalid("invalid_method", format!("merge method `{method}`: use squash, merge or rebase")));
    }
    let remote_co = remote_checkout(ctx, task, repo).await?;
    let (dir, rev) = head_of(&remote_co, task, repo, worktree).await?;
    let d = dir.clone();
    let head = git_call(move || git::rev_parse(&d, &rev)).await?.map_err(|e| git_failure("merge_failed", e))?;
    let sha = match github_for(ctx, repo).await? {
        Some((gh, _)) => {
            let (repo_id, branch) = (repo.id, task.branch.clone());
            let known = ctx.kiln.db.read(move |c| queries::task_pull_request(c, repo_id, &branch)).await?;
            let number = match known.filter(|p| p.state == "open") {
                Some(p) => p.number as i64,
                None => match gh.open_pull_for(&task.branch).await.map_err(github_error)? {
                    Some(pr) => pr["number"].as_i64().unwrap_or(0),
                    None => return Err(AppError::conflict("no_pull_request", "the task has no open pull request: open one with `pr` first")),
                },
            };
            // GitHub merges only the head it was told; say clearly when that is
            // not what the worktree holds.
            let pr_head = gh.get_pull(number).await.map_err(github_error)?["head"]["sha"].as_str().unwrap_or_default().to_string();
            if !pr_head.is_empty() && pr_head != head {
                let (dir, remote, local) = (dir.clone(), pr_head.clone(), head.clone());
                let ahead = git_call(move || git::is_ancestor(&dir, &remote, &local)).await?.unwrap_or(false);
                // GitHub still has what Kiln pushed last, and the task was rewritten since (a sync that rebased).
                let rewritten = push_lease(ctx, task).await?.as_deref() == Some(pr_head.as_str());
                let err = if ahead {
                    AppError::conflict("unpushed_commits", "the task has commits that are not pushed yet: push, then merge")
                } else if rewritten {
                    AppError::conflict("unpushed_commits", "the task was rebased since Kiln pushed it: push (Kiln replaces its own last push), then merge")
                } else {
                    AppError::conflict(
                        "head_moved",
                        format!("the pull request's head on GitHub ({pr_head}) is not the task's HEAD ({head}): sync (or push), then merge again"),
                    )
                };
                ctx.kiln.emit_one(&ctx.org, ctx.event("task.merge_failed", json!({"error": err.to_string()}))).await?;
                return Err(err);
            }
            let merged = gh.merge_pull(number, &method, &head, &task.title).await;
            let merged = match merged {
                Ok(m) => m,
                Err(e) => {
                    let err = github_error(e);
                    ctx.kiln.emit_one(&ctx.org, ctx.event("task.merge_failed", json!({"error": err.to_string()}))).await?;
                    return Err(err);
                }
            };
            // The merge happened: recording the PR's new state is best effort (the
            // PR poller catches up), and never turns the merge into an error.
            let recorded = match gh.get_pull(number).await {
                Ok(pr) => match ctx.kiln.repository(&ctx.org, &ctx.repo).send(UpsertPullRequest { row: pull_row(repo.id, &pr) }).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = recorded {
                log::warn!("task {}: merged PR #{number}, but recording its state failed: {e}", task.id);
            }
            merged["sha"].as_str().unwrap_or_default().to_string()
        }
        None => {
            if method == "rebase" {
                return Err(AppError::invalid("invalid_method", "rebase merges need GitHub; use squash or merge"));
            }
            let (mirror, base, branch, title) = (Path::new(&repo.mirror_path).to_path_buf(), task.base_branch.clone(), task.branch.clone(), task.title.clone());
            let squash = method == "squash";
            let origin = origin(&ctx.kiln, &ctx.org, repo).await?;
            let result = git_call(move || {
                git::fetch_branch(&mirror, &base, &origin)?;
                let base_ref = format!("refs/remotes/origin/{base}");
                match git::merge_in_bare(&mirror, &base_ref, &format!("refs/heads/{branch}"), squash, &title)? {
                    Integration::Clean(commit) => {
                        git::push_commit(&mirror, &commit, &base, &origin)?;
                        git::fetch_branch(&mirror, &base, &origin)?;
                        Ok(Integration::Clean(commit))
                    }
                    conflicts => Ok(conflicts),
                }
            })
            .await?;
            match result {
                Ok(Integration::Clean(commit)) => commit,
                Ok(Integration::Conflicts(files)) => {
                    ctx.kiln.emit_one(&ctx.org, ctx.event("task.merge_failed", json!({"conflicts": files}))).await?;
                    return Err(AppError::conflict("merge_conflict", format!("merging into {} conflicts in: {}: sync first", task.base_branch, files.join(", "))));
                }
                Err(e) => {
                    // The base moved on origin between Kiln's fetch and its push:
                    // a conflict to retry, as for push, not a broken remote.
                    let err = if git::refused_because_moved(&e) {
                        AppError::conflict(
                            "remote_moved",
                            format!(
                                "{} on the remote moved while Kiln merged into it (someone pushed to it): nothing was merged; merge again",
                                task.base_branch
                            ),
                        )
                    } else {
                        git_failure("merge_failed", e)
                    };
                    ctx.kiln.emit_one(&ctx.org, ctx.event("task.merge_failed", json!({"code": err.code(), "error": err.to_string()}))).await?;
                    return Err(err);
                }
            }
        }
    };
    ctx.kiln.emit_one(&ctx.org, ctx.event("task.merged", json!({"sha": sha, "method": method, "base": task.base_branch}))).await?;
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::{plan_push, PushPlan};

    const A: &str = "aaaa";
    const B: &str = "bbbb";

    #[test]
    fn a_new_branch_or_a_fast_forward_expects_what_is_there() {
        assert_eq!(plan_push(None, false, None, false), PushPlan::Update(None));
        // The branch was deleted on the remote after Kiln pushed it: push it again.
        assert_eq!(plan_push(None, false, Some(A), false), PushPlan::Update(None));
        assert_eq!(plan_push(Some(A), true, Some(A), false), PushPlan::Update(Some(A.into())));
        // Someone else's commit, already in HEAD (pulled in): a fast-forward loses nothing.
        assert_eq!(plan_push(Some(B), true, Some(A), false), PushPlan::Update(Some(B.into())));
        // A branch Kiln never pushed, HEAD on top of it.
        assert_eq!(plan_push(Some(B), true, None, false), PushPlan::Update(Some(B.into())));
    }

    #[test]
    fn kiln_replaces_only_its_own_last_push() {
        assert_eq!(plan_push(Some(A), false, Some(A), false), PushPlan::Rewrite(A.into()));
        assert_eq!(
            plan_push(Some(B), false, Some(A), false),
            PushPlan::RemoteMoved { remote: B.into(), lease: A.into() }
        );
        // Never pushed by Kiln and not a fast-forward: git decides (and refuses).
        assert_eq!(plan_push(Some(B), false, None, false), PushPlan::PlainPush);
    }

    #[test]
    fn force_replaces_what_was_seen() {
        assert_eq!(plan_push(Some(B), false, Some(A), true), PushPlan::Rewrite(B.into()));
        assert_eq!(plan_push(Some(B), false, None, true), PushPlan::Rewrite(B.into()));
        assert_eq!(plan_push(Some(A), true, Some(A), true), PushPlan::Update(Some(A.into())));
    }
}
