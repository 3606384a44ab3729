//! The git lifecycle of a task, run inside its TaskActor: push, sync (rebase or
//! merge the base in), pull request (open or adopt) and merge (through GitHub
//! with the expected head, or locally in the mirror for other remotes). Each
//! outcome, git's own error text included, becomes an event.

use std::path::Path;

use serde_json::json;

use super::effects::TaskCtx;
use crate::actors::repository::UpsertPullRequest;
use crate::db::models::{PullRequest, Repo, Task};
use crate::db::pool::blocking;
use crate::db::{queries, DbError};
use crate::error::{AppError, AppResult};
use crate::integrations::git::{self, Credentials, GitError, Integration};
use crate::integrations::github::{GitHub, GitHubError, DEFAULT_API_URL};

/// What a git action was asked to do.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct GitParams {
    /// push: commit whatever is uncommitted first, with this message.
    pub commit: Option<String>,
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
    Credentials { askpass, token: token.to_string() }
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
    let dir = worktree.to_path_buf();
    match git_call(move || git::commit_all(&dir, &message)).await? {
        Ok(Some(sha)) => {
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.committed", json!({"sha": sha}))).await?;
            Ok(Some(sha))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(git_failure("commit_failed", e)),
    }
}

/// Commits (when asked) and pushes the task branch to origin with upstream set.
pub async fn push(ctx: &TaskCtx, task: &Task, repo: &Repo, worktree: &Path, commit: Option<String>) -> AppResult<String> {
    let creds = github_for(ctx, repo).await.ok().flatten().map(|(_, c)| c);
    if let Some(message) = commit.filter(|m| !m.trim().is_empty()) {
        commit_all(ctx, worktree, message).await?;
    }
    let (dir, mirror, branch) = (worktree.to_path_buf(), Path::new(&repo.mirror_path).to_path_buf(), task.branch.clone());
    match git_call(move || git::push(&dir, &mirror, &branch, creds.as_ref())).await? {
        Ok(sha) => {
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.pushed", json!({"branch": task.branch, "sha": sha}))).await?;
            Ok(sha)
        }
        Err(e) => {
            let err = git_failure("push_rejected", e);
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.push_failed", json!({"error": err.to_string()}))).await?;
            Err(err)
        }
    }
}

/// Fetches the base and rebases (or merges) the task branch onto it. A conflict
/// leaves the worktree as it was and answers 409 with the files.
pub async fn sync(ctx: &TaskCtx, task: &Task, repo: &Repo, worktree: &Path, mode: Option<String>) -> AppResult<String> {
    let merge = match mode.as_deref() {
        None | Some("rebase") => false,
        Some("merge") => true,
        Some(other) => return Err(AppError::invalid("invalid_mode", format!("sync mode `{other}`: use rebase or merge"))),
    };
    let creds = github_for(ctx, repo).await.ok().flatten().map(|(_, c)| c);
    let (dir, mirror, base) = (worktree.to_path_buf(), Path::new(&repo.mirror_path).to_path_buf(), task.base_branch.clone());
    let result = git_call(move || {
        // Fetched in the mirror, whose config the agent cannot touch (see `git::push`).
        git::fetch_branch(&mirror, &base, creds.as_ref())?;
        git::integrate(&dir, &format!("refs/remotes/origin/{base}"), merge)
    })
    .await?;
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
            ctx.kiln.emit_one(&ctx.org, ctx.event("task.sync_failed", json!({"error": err.to_string()}))).await?;
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
    }
}

/// Opens the task's pull request (pushing first), or adopts the one that exists.
pub async fn open_pr(ctx: &TaskCtx, task: &Task, repo: &Repo, worktree: &Path, draft: bool) -> AppResult<PullRequest> {
    let Some((gh, _)) = github_for(ctx, repo).await? else {
        return Err(not_github(repo));
    };
    push(ctx, task, repo, worktree, None).await?;
    let (dir, base_ref, branch) = (worktree.to_path_buf(), format!("refs/remotes/origin/{}", task.base_branch), task.branch.clone());
    let commits = git_call(move || git::commit_subjects(&dir, &base_ref, &branch)).await?.unwrap_or_default();
    let mut body = task.description.clone();
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
    let dir = worktree.to_path_buf();
    let head = git_call(move || git::rev_parse(&dir, "HEAD")).await?.map_err(|e| git_failure("merge_failed", e))?;
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
                let (dir, remote, local) = (worktree.to_path_buf(), pr_head.clone(), head.clone());
                let ahead = git_call(move || git::is_ancestor(&dir, &remote, &local)).await?.unwrap_or(false);
                let err = if ahead {
                    AppError::conflict("unpushed_commits", "the task has commits that are not pushed yet: push, then merge")
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
            let result = git_call(move || {
                git::fetch_branch(&mirror, &base, None)?;
                let base_ref = format!("refs/remotes/origin/{base}");
                match git::merge_in_bare(&mirror, &base_ref, &format!("refs/heads/{branch}"), squash, &title)? {
                    Integration::Clean(commit) => {
                        git::push_commit(&mirror, &commit, &base, None)?;
                        git::fetch_branch(&mirror, &base, None)?;
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
                    let err = git_failure("merge_failed", e);
                    ctx.kiln.emit_one(&ctx.org, ctx.event("task.merge_failed", json!({"error": err.to_string()}))).await?;
                    return Err(err);
                }
            }
        }
    };
    ctx.kiln.emit_one(&ctx.org, ctx.event("task.merged", json!({"sha": sha, "method": method, "base": task.base_branch}))).await?;
    Ok(sha)
}
