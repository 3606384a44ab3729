//! A task's changes and their review: `GET …/tasks/{task}/diff` (the worktree
//! against the merge-base with its base branch, `integrations::diff`) and
//! `POST …/tasks/{task}/review` (comments on diff lines, delivered to the agent
//! as one message: an ACP prompt when a session is open, else typed into its
//! terminal as one bracketed paste).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::auth::Caller;
use super::extract::Json;
use super::openapi::{ApiError, TaskPath};
use super::tasks::{task_or_404, task_with_repo_or_404};
use crate::actors::history::NewEvent;
use crate::actors::task::deliver::{self, clean};
use crate::actors::Kiln;
use crate::db::models::Task;
use crate::db::pool::blocking;
use crate::db::DbError;
use crate::error::{AppError, AppResult};
use crate::integrations::diff::{self, DiffError, TaskDiff};
use crate::integrations::git::{self, GitError};
use crate::actors::task::state::TaskStatus;
use crate::providers::daytona::provider::RemoteCheckout;

/// At most this many comments in one review.
pub const MAX_COMMENTS: usize = 100;
/// Longest comment text, quoted code and overall message, in characters.
pub const MAX_TEXT: usize = 8_000;
pub const MAX_CODE: usize = 8_000;
pub const MAX_MESSAGE: usize = 16_000;
/// Longest path, in characters.
pub const MAX_PATH: usize = 1_024;
/// The whole message the agent gets (the session prompt's limit).
pub const MAX_REVIEW: usize = 128 * 1024;

/// `GET …/tasks/{task}/diff`: the task's changes against its base.
#[utoipa::path(
    get, path = "/v1/organizations/{org}/tasks/{task}/diff", tag = "tasks", params(TaskPath),
    responses(
        (status = 200, description = "The diff (bounded: see `truncated`, `too_large` and `limits`)", body = TaskDiff),
        (status = 404, description = "Not found:\n- `task_not_found` (also when the organization does not exist)", body = ApiError),
        (status = 409, description = "Not in this state:\n- `no_worktree`: the task has no worktree (or Daytona sandbox) now\n- `no_base`: the base branch is gone\n- `no_merge_base`: the branch and its base share no commit\n- `diff_failed`: git failed in the worktree\n- `diff_too_large`: too many files changed to list", body = ApiError),
        (status = 422, description = "Invalid content:\n- `provider_unavailable`: the task's provider is not on this server", body = ApiError),
        (status = 503, description = "Unavailable:\n- `git_missing`\n- `diff_timeout`: git took longer than the time limit", body = ApiError),
    ),
)]
pub async fn diff(kiln: web::Data<Kiln>, caller: Caller, path: web::Path<(String, String)>) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    let (task, repo) = task_with_repo_or_404(&kiln, &org, &id).await?;
    let provider = kiln.providers.get(&task.provider)?;
    let handle = provider.handle_for(&org, &repo.name, &task.id, std::path::Path::new(&repo.mirror_path));
    if !provider.capabilities().local_path {
        let answer = remote_diff(&kiln, &org, &repo.name, &task, handle).await?;
        return Ok(HttpResponse::Ok().json(answer));
    }
    let (worktree, mirror, base) = (handle.path, handle.mirror, task.base_branch.clone());
    let status = task.status.clone();
    let answer = blocking(move || {
        // A worktree is a folder with its `.git` link; anything else (gone,
        // half removed) has no changes to show.
        if !worktree.join(".git").is_file() {
            return Ok(Err(AppError::conflict(
                "no_worktree",
                format!("the task is {status} and has no worktree now: its branch (and snapshot ref, if any) keep its work"),
            )));
        }
        let base_ref = git::base_ref(&mirror, &base);
        Ok::<_, DbError>(diff::worktree_diff(&worktree, &base, &base_ref).map_err(diff_error))
    })
    .await??;
    Ok(HttpResponse::Ok().json(answer))
}

/// The largest bundle a remote task's diff brings out of its sandbox.
const REMOTE_BUNDLE_MAX: u64 = 256 << 20;
/// How long bringing a remote task's state into the mirror may take.
const REMOTE_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The diff of a task whose checkout is in a remote sandbox (`daytona`): its
/// state (`HEAD` plus uncommitted work) brought into the mirror as
/// `diff::remote_state_ref`, then diffed there tree against tree, with the
/// worktree diff's answer, bounds and truncation. A sandbox stopped while idle
/// is started again first, as a push does.
async fn remote_diff(kiln: &Kiln, org: &str, repo: &str, task: &Task, handle: crate::providers::SandboxHandle) -> AppResult<TaskDiff> {
    let status: TaskStatus = task.status.parse().map_err(AppError::bug)?;
    let gone = || {
        AppError::conflict(
            "no_worktree",
            format!("the task is {} and has no sandbox now: its branch (and snapshot ref, if any) keep its work", task.status),
        )
    };
    if !status.may_have_sandbox() {
        return Err(gone());
    }
    if matches!(status, TaskStatus::Running | TaskStatus::Idle) {
        let wake = crate::actors::task::WakeTask { cause: "diff" };
        // The actor may have stopped for quiet between lookup and send: start it again.
        match kiln.task(org, repo, &task.id).send(wake.clone()).await {
            Err(actix::MailboxError::Closed) => kiln.task(org, repo, &task.id).send(wake).await?,
            other => other?,
        }?;
    }
    let mirror = handle.mirror.clone();
    let refname = diff::remote_state_ref(&task.id);
    let bring = async {
        let checkout = RemoteCheckout::open(kiln.db.clone(), org.to_string(), handle).await?;
        checkout.bring_state(mirror.clone(), refname, kiln.git_locks.clone(), REMOTE_BUNDLE_MAX).await
    };
    let (head, state) = match actix_rt::time::timeout(REMOTE_TIME_LIMIT, bring).await {
        Err(_) => {
            return Err(AppError::unavailable(
                "diff_timeout",
                format!("the sandbox's changes took longer than {} s to read: the change is too big to show", REMOTE_TIME_LIMIT.as_secs()),
            ))
        }
        Ok(Err(e)) if e.code() == "sandbox_missing" => return Err(gone()),
        Ok(Err(e)) if e.code() == "snapshot_failed" => return Err(AppError::conflict("diff_failed", e.to_string())),
        Ok(other) => other?,
    };
    let base = task.base_branch.clone();
    Ok(blocking(move || {
        let base_ref = git::base_ref(&mirror, &base);
        Ok::<_, DbError>(diff::commit_diff(&mirror, &base, &base_ref, &head, &state).map_err(diff_error))
    })
    .await??)
}

fn diff_error(err: DiffError) -> AppError {
    match err {
        DiffError::Git(GitError::Missing(_)) => AppError::git_missing(),
        DiffError::Git(GitError::Failed { stderr, .. }) => AppError::conflict("diff_failed", format!("git failed in the worktree: {stderr}")),
        DiffError::Git(other) => AppError::internal(other),
        DiffError::NoBase(_) => AppError::conflict("no_base", err.to_string()),
        DiffError::NoMergeBase(_) => AppError::conflict("no_merge_base", err.to_string()),
        DiffError::TimedOut => AppError::unavailable("diff_timeout", format!("{err}: the change is too big to show")),
        DiffError::TooBig => AppError::conflict("diff_too_large", err.to_string()),
    }
}

/// `POST …/tasks/{task}/review`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// 1 to 100 comments, in the order the agent reads them.
    #[schema(min_items = 1, max_items = 100)]
    pub comments: Vec<ReviewComment>,
    /// An overall note, after the comments (at most 16000 characters).
    #[schema(max_length = 16000)]
    pub message: Option<String>,
}

/// One comment on a line of the diff.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewComment {
    /// The file, relative to the worktree: no leading `/`, no `..` part, no
    /// control characters (the pattern says exactly this).
    #[schema(min_length = 1, max_length = 1024, pattern = r"^(?:[^./\u0000-\u001f\u007f-\u009f][^/\u0000-\u001f\u007f-\u009f]*|\.(?:[^./\u0000-\u001f\u007f-\u009f][^/\u0000-\u001f\u007f-\u009f]*)?|\.\.[^/\u0000-\u001f\u007f-\u009f]+)(?:/(?:[^./\u0000-\u001f\u007f-\u009f][^/\u0000-\u001f\u007f-\u009f]*|\.(?:[^./\u0000-\u001f\u007f-\u009f][^/\u0000-\u001f\u007f-\u009f]*)?|\.\.[^/\u0000-\u001f\u007f-\u009f]+)?)*$")]
    pub path: String,
    /// The line number, on `side`.
    #[schema(minimum = 1)]
    pub line: u32,
    /// `new` (the line as it is now; the default) or `old` (a deleted line,
    /// numbered in the base).
    #[schema(pattern = "^(new|old)$")]
    pub side: Option<String>,
    /// The quoted line(s), as the reviewer saw them (at most 8000 characters).
    #[schema(max_length = 8000)]
    pub code: Option<String>,
    /// What the reviewer says (at most 8000 characters, not all white space).
    #[schema(min_length = 1, max_length = 8000, pattern = r"[^ \t\n\f\r]")]
    pub text: String,
}

/// What `POST …/review` answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewSent {
    /// `session` (an ACP prompt) or `terminal` (typed into the agent's terminal).
    pub delivered_via: String,
    /// The session that got it, when `delivered_via` is `session`.
    pub session: Option<String>,
    /// The `task.review_sent` event.
    pub event_id: i64,
    /// How many comments were sent.
    pub comments: usize,
    /// The message the agent got.
    pub text: String,
}

/// Sends review comments to the task's agent as one message.
#[utoipa::path(
    post, path = "/v1/organizations/{org}/tasks/{task}/review", tag = "tasks", params(TaskPath),
    request_body = ReviewRequest,
    responses(
        (status = 200, description = "Delivered", body = ReviewSent),
        (status = 404, description = "Not found:\n- `task_not_found`", body = ApiError),
        (status = 409, description = "Not in this state:\n- `agent_not_running`: the task is not `running` or `idle`\n- `agent_unreachable`: its terminal does not answer\n- `turn_in_progress`: the open session is in a turn\n- `session_starting`: the open session is still opening\n- `session_closed`: the session closed meanwhile", body = ApiError),
        (status = 422, description = "Invalid content:\n- `invalid_review`", body = ApiError),
        (status = 502, description = "The session's agent failed:\n- `restore_failed`\n- `agent_error`\n- `agent_timeout`\n- `agent_exited`\n- `sandbox_agent_error`", body = ApiError),
    ),
)]
pub async fn review(
    kiln: web::Data<Kiln>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: Json<ReviewRequest>,
) -> AppResult<HttpResponse> {
    let (org, id) = path.into_inner();
    caller.require_org(&org)?;
    let body = body.into_inner();
    validate_review(&body)?;
    let text = review_text(&body);
    if text.chars().count() > MAX_REVIEW {
        return Err(AppError::invalid("invalid_review", format!("the review is longer than {MAX_REVIEW} characters: send it in parts")));
    }
    let (task, repo) = task_or_404(&kiln, &org, &id).await?;
    require_live(&task)?;
    let delivered = deliver::to_agent(&kiln, &org, &repo, &task.id, &text, "the review").await?;
    let (via, session) = (delivered.via, delivered.session);
    let mut files: Vec<&str> = Vec::new();
    for c in &body.comments {
        if !files.contains(&c.path.as_str()) {
            files.push(&c.path);
        }
    }
    let event = NewEvent::new(
        "task.review_sent",
        json!({"via": via, "session": session, "comments": body.comments.len(), "files": files, "chars": text.chars().count()}),
    )
    .repo(&repo)
    .task(&task.id);
    let event_id = kiln.emit_one(&org, event).await?;
    Ok(HttpResponse::Ok().json(ReviewSent { delivered_via: via.to_string(), session, event_id, comments: body.comments.len(), text }))
}

fn require_live(task: &Task) -> AppResult<()> {
    if matches!(task.status.as_str(), "running" | "idle") {
        Ok(())
    } else {
        Err(deliver::not_running(&task.id, &task.status, "the review"))
    }
}

/// Checks a review's shape and sizes; the message names the comment and field.
pub fn validate_review(body: &ReviewRequest) -> AppResult<()> {
    let bad = |m: String| Err(AppError::invalid("invalid_review", m));
    if body.comments.is_empty() {
        return bad("a review needs at least one comment".into());
    }
    if body.comments.len() > MAX_COMMENTS {
        return bad(format!("a review has at most {MAX_COMMENTS} comments, not {}", body.comments.len()));
    }
    if body.message.as_ref().is_some_and(|m| m.chars().count() > MAX_MESSAGE) {
        return bad(format!("message is longer than {MAX_MESSAGE} characters"));
    }
    for (i, c) in body.comments.iter().enumerate() {
        let n = i + 1;
        if let Err(why) = relative_path(&c.path) {
            return bad(format!("comment {n}: path {why}"));
        }
        if c.line == 0 {
            return bad(format!("comment {n}: line numbers start at 1"));
        }
        if let Some(side) = c.side.as_deref().filter(|s| !["new", "old"].contains(s)) {
            return bad(format!("comment {n}: side `{}` is not new or old", crate::validate::truncate(side, 20)));
        }
        if c.text.chars().all(|ch| matches!(ch, ' ' | '\t' | '\n' | '\x0c' | '\r')) {
            return bad(format!("comment {n}: text is empty"));
        }
        if c.text.chars().count() > MAX_TEXT {
            return bad(format!("comment {n}: text is longer than {MAX_TEXT} characters"));
        }
        if c.code.as_ref().is_some_and(|code| code.chars().count() > MAX_CODE) {
            return bad(format!("comment {n}: code is longer than {MAX_CODE} characters"));
        }
    }
    Ok(())
}

/// A path inside the worktree, as the diff shows it.
fn relative_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.chars().count() > MAX_PATH {
        return Err("is longer than 1024 characters");
    }
    if path.starts_with('/') {
        return Err("must be relative to the worktree (no leading /)");
    }
    if path.split('/').any(|part| part == "..") {
        return Err("must not have a .. part");
    }
    if path.chars().any(char::is_control) {
        return Err("must not hold control characters");
    }
    Ok(())
}

/// The one message the agent gets: each comment with its place and the quoted
/// code, then the overall note.
pub fn review_text(body: &ReviewRequest) -> String {
    let n = body.comments.len();
    let mut out = format!("Review of your changes: {n} comment{}. Please address each one.\n", if n == 1 { "" } else { "s" });
    for (i, c) in body.comments.iter().enumerate() {
        let side = if c.side.as_deref() == Some("old") { " (a deleted line, numbered in the base)" } else { "" };
        out.push_str(&format!("\n{}. {}:{}{}\n", i + 1, clean(&c.path), c.line, side));
        if let Some(code) = c.code.as_deref().map(clean).filter(|c| !c.trim().is_empty()) {
            for line in code.trim_end_matches('\n').lines() {
                out.push_str(&format!("   > {line}\n"));
            }
        }
        for line in clean(c.text.trim()).lines() {
            out.push_str(&format!("   {line}\n"));
        }
    }
    if let Some(message) = body.message.as_deref().map(|m| clean(m.trim())).filter(|m| !m.is_empty()) {
        out.push_str(&format!("\n{message}\n"));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(path: &str, line: u32, text: &str) -> ReviewComment {
        ReviewComment { path: path.into(), line, side: None, code: Some("let x = 1;".into()), text: text.into() }
    }

    #[test]
    fn a_review_reads_as_one_message_without_control_characters() {
        let body = ReviewRequest {
            comments: vec![comment("src/a.rs", 12, "rename x\x1b[201~"), ReviewComment { side: Some("old".into()), code: None, ..comment("b.md", 3, "why?") }],
            message: Some("  Thanks!  ".into()),
        };
        let text = review_text(&body);
        assert_eq!(
            text,
            "Review of your changes: 2 comments. Please address each one.\n\n1. src/a.rs:12\n   > let x = 1;\n   rename x[201~\n\n2. b.md:3 (a deleted line, numbered in the base)\n   why?\n\nThanks!"
        );
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn reviews_are_refused_when_empty_too_big_or_outside_the_worktree() {
        let ok = ReviewRequest { comments: vec![comment("a", 1, "t")], message: None };
        assert!(validate_review(&ok).is_ok());
        let refuse = |body: ReviewRequest, needle: &str| {
            let err = validate_review(&body).unwrap_err();
            assert_eq!(err.code(), "invalid_review");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        };
        refuse(ReviewRequest { comments: vec![], message: None }, "at least one");
        refuse(ReviewRequest { comments: vec![comment("a", 1, "t"); 101], message: None }, "at most 100");
        for (path, why) in [("/etc/passwd", "relative"), ("a/../../x", ".."), ("..", ".."), ("", "empty"), ("a\nb", "control")] {
            refuse(ReviewRequest { comments: vec![comment(path, 1, "t")], message: None }, why);
        }
        refuse(ReviewRequest { comments: vec![comment("a", 0, "t")], message: None }, "start at 1");
        refuse(ReviewRequest { comments: vec![comment("a", 1, " \n")], message: None }, "text is empty");
        refuse(ReviewRequest { comments: vec![ReviewComment { side: Some("left".into()), ..comment("a", 1, "t") }], message: None }, "side");
        refuse(ReviewRequest { comments: vec![comment("a", 1, &"x".repeat(MAX_TEXT + 1))], message: None }, "text is longer");
        refuse(ReviewRequest { comments: vec![comment("a", 1, "t")], message: Some("m".repeat(MAX_MESSAGE + 1)) }, "message is longer");
    }
}
