//! A task made from a GitHub issue (docs/git.md, "Issues in"): its PR says
//! `Closes #N`, and once the PR exists one comment on the issue reports it.
//!
//! Exactly one comment, also across restarts and crashes: an attempt is
//! claimed first (`task_issues.comment_state = pending`, one more attempt),
//! then posted with a hidden marker naming the task, then recorded as `posted`.
//! An attempt that finds the row `pending` (the last one crashed, or GitHub
//! failed) first looks for its marker among the issue's comments, so a
//! comment that was posted is recorded rather than posted twice. After
//! [`MAX_ATTEMPTS`] it gives up (`failed`, `issue.comment_failed`).

use serde_json::json;

use super::effects::TaskCtx;
use super::store;
use crate::db::queries;
use crate::error::AppResult;

/// Attempts at the comment before Kiln gives up on it.
pub const MAX_ATTEMPTS: i32 = 5;

/// The hidden marker in the comment that says which task posted it.
pub fn marker(task: &str) -> String {
    format!("<!-- kiln:issue-report task={task} -->")
}

/// The line the PR body starts with, for a task made from issue `number`.
pub fn closes(number: i64) -> String {
    format!("Closes #{number}")
}

/// Reports the task's pull request on its issue, unless it was (see the module doc).
pub(super) async fn report_pr(ctx: &TaskCtx) -> AppResult<()> {
    let id = ctx.id.clone();
    let Some(issue) = ctx.kiln.db.read(move |c| queries::task_issue(c, &id)).await? else { return Ok(()) };
    if !matches!(issue.comment_state.as_str(), "none" | "pending") {
        return Ok(());
    }
    let (task, repo) = ctx.load().await?;
    let (repo_id, branch) = (repo.id, task.branch.clone());
    let Some(pr) = ctx.kiln.db.read(move |c| queries::task_pull_request(c, repo_id, &branch)).await? else { return Ok(()) };
    let Some((gh, _)) = super::git_ops::github_for(ctx, &repo).await? else { return Ok(()) };
    let marker = marker(&ctx.id);
    let number = issue.issue_number;
    let event_data = |url: &str| json!({"number": number, "issue_url": issue.url, "comment_url": url, "pr": pr.number, "pr_url": pr.url});
    if issue.comment_state == "pending" {
        // The last attempt may have posted before it could record it.
        match gh.find_issue_comment(number, &marker).await {
            Ok(Some(found)) => {
                let url = found["html_url"].as_str().unwrap_or_default().to_string();
                let (id, u) = (ctx.id.clone(), url.clone());
                ctx.kiln.db.write(move |c| store::settle_issue_comment(c, &id, "posted", Some(&u))).await?;
                ctx.kiln.emit_one(&ctx.org, ctx.event("issue.commented", event_data(&url))).await?;
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!("task {}: cannot read the comments of issue #{number}: {e}", ctx.id);
                return Ok(());
            }
        }
    }
    if issue.comment_attempts >= MAX_ATTEMPTS {
        let id = ctx.id.clone();
        ctx.kiln.db.write(move |c| store::settle_issue_comment(c, &id, "failed", None)).await?;
        let data = json!({"number": number, "attempts": issue.comment_attempts, "pr": pr.number});
        ctx.kiln.emit_one(&ctx.org, ctx.event("issue.comment_failed", data)).await?;
        return Ok(());
    }
    let id = ctx.id.clone();
    if ctx.kiln.db.write(move |c| store::claim_issue_comment(c, &id)).await?.is_none() {
        return Ok(());
    }
    let body = format!(
        "Kiln opened pull request #{pr_number} for this issue: {pr_url}\n\nIt closes this issue when it is merged.\n\n{marker}",
        pr_number = pr.number,
        pr_url = pr.url,
    );
    match gh.create_issue_comment(number, &body).await {
        Ok(comment) => {
            let url = comment["html_url"].as_str().unwrap_or_default().to_string();
            let (id, u) = (ctx.id.clone(), url.clone());
            ctx.kiln.db.write(move |c| store::settle_issue_comment(c, &id, "posted", Some(&u))).await?;
            ctx.kiln.emit_one(&ctx.org, ctx.event("issue.commented", event_data(&url))).await?;
        }
        // Left `pending`: the issue poller tries again (after looking for it).
        Err(e) => log::warn!("task {}: cannot comment on issue #{number}: {e}", ctx.id),
    }
    Ok(())
}
