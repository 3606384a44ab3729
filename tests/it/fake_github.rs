//! A fake of the GitHub REST API for Kiln's tests: a real HTTP server on
//! 127.0.0.1 (ephemeral port) whose repositories are real bare git repositories,
//! so creating and merging a pull request does to git what GitHub would.
//!
//! Where each behaviour comes from (PROTOCOLS.md §3):
//! - §3.1: `Authorization: Bearer <token>` (or `token <token>`) with the one token; anything else
//!   is `401 Bad credentials`. Errors are `{"message", "documentation_url", "status"}`.
//! - §3.2: the PR list filters on `state`, `head=owner:branch` and `base`, newest first, and
//!   leaves out `mergeable`, `mergeable_state`, `merged`, `merge_commit_sha` and the counts. A `head`
//!   without `owner:` is silently ignored, as on GitHub (hub4j/github-api#538).
//! - §3.3: one PR adds those; `mergeable` comes from `git merge-tree` unless a test sets it (`null`
//!   is "still computing"). Head and base shas are read from git, so a push moves them.
//! - §3.4: create, with the 422s for a head that is no branch, an open PR for the same head and
//!   base, and no commits between base and head.
//! - §3.5: merge: 405 when not open or not mergeable, 409 when `sha` is not the head; `merge` and
//!   `squash` are written with `git merge-tree` + `git commit-tree` + `git update-ref`.
//! - §3.6: check runs (`filter=latest`, the default, keeps the newest per name) and the combined
//!   status (`pending` with `total_count: 0` when there is none); §3.3's reviews. A check run's
//!   annotations (`GET /check-runs/{id}/annotations`) and a PR's review comments
//!   (`GET /pulls/{n}/comments`, with `diff_hunk`, `path`, `line`), paged like lists.
//! - §3.8: a `link` header (prev, next, last, first; GitHub leaves out the ones that do not apply)
//!   keeping the request's other query parameters; `per_page` is 30 by default, at most 100.
//! - §3.9: `x-ratelimit-*` on every answer; 5000 to spend, one per authenticated request; `403 API
//!   rate limit exceeded` at 0; `fail_next` injects secondary limits with `retry-after`;
//!   `GET /rate_limit` is free.
//! - §3.10: every `200` to a GET carries a strong ETag of its body; a matching `If-None-Match`
//!   answers `304` with no body and spends nothing.
//! - §3.11: [`FakeGithub::sign`] makes `X-Hub-Signature-256`.
//! - Issues (not in PROTOCOLS.md; from GitHub's REST reference, "List repository issues",
//!   "Get an issue", "Create an issue comment", "List issue comments", and the `issues`
//!   webhook): issues and PRs share one number sequence, and the issue list answers both, a PR
//!   as an issue with a `pull_request` key. The list filters on `state` (`open` by default),
//!   `labels` (comma-separated, all must be on it, names compared without case) and `since`
//!   (`updated_at` at or after), sorts by `created` or `updated`, `desc` by default, and pages
//!   like every list (with ETags). A comment answers 201 and bumps the issue's `updated_at`, as
//!   on GitHub; a comment without `body` is a 422. [`FakeGithub::issues_delivery`] builds an
//!   `issues` webhook payload (`action`, `issue`, `label` for `labeled`, `repository`, `sender`).
//! - Actions job logs (`GET /actions/jobs/{job_id}/logs`, see "Actions job logs" below): a
//!   `302` to a signed URL elsewhere on the fake (`/_blobs/…`, no token wanted: one sent is
//!   refused, as a storage host refuses a bearer it does not know), `403 Resource not accessible`
//!   when the token lacks `actions:read`, `404` for a job that is not there or has no log.
//!
//! Not faked: forks, `rebase` merges that are not a fast-forward (405), `sort`/`direction`,
//! branches (§3.7), webhook delivery, GraphQL, and the hourly reset of the limit.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use hmac::Mac;
use serde_json::{json, Value};
use sha2::Digest;

const LIMIT: u64 = 5000;
const DOCS: &str = "https://docs.github.com/rest";
/// The login the token belongs to: the author of the PRs Kiln opens.
pub const BOT: &str = "kiln-bot";

/// One request the fake answered: its method, its path with the query as sent
/// (`/repos/acme/widget/pulls?state=all`), the status answered, and whether it carried `If-None-Match`.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub if_none_match: bool,
}

/// The running fake; stops on drop.
pub struct FakeGithub {
    /// The API base, `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    server: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    token: String,
    secret: String,
    state: Mutex<State>,
}

struct State {
    base: String,
    repos: HashMap<String, Repo>,
    remaining: u64,
    reset: u64,
    /// Injected failures: how many are left, the status, `retry-after`.
    fail: Option<(usize, u16, u64)>,
    requests: Vec<Request>,
    actions: Actions,
}

/// A repository's timestamps: every change gets a later second than the last, so
/// `updated_at` moves even when two changes share a wall-clock second.
#[derive(Default)]
struct Clock(u64);

/// A repository: its PRs, plus CI and reviews kept as the JSON GitHub answers.
struct Repo {
    full_name: String,
    origin: PathBuf,
    clock: Clock,
    pulls: Vec<Pull>,
    check_runs: Vec<Value>,
    /// (sha, status)
    statuses: Vec<(String, Value)>,
    /// (PR number, review)
    reviews: Vec<(u64, Value)>,
    /// (PR number, review comment)
    review_comments: Vec<(u64, Value)>,
    /// (check run id, annotation)
    annotations: Vec<(u64, Value)>,
    issues: Vec<Issue>,
    /// (issue or PR number, comment)
    issue_comments: Vec<(u64, Value)>,
}

/// An issue (not a PR): PRs are issues too, but live in `pulls`.
#[derive(Default, Clone)]
struct Issue {
    number: u64,
    title: String,
    body: String,
    user: String,
    labels: Vec<String>,
    open: bool,
    created_at: u64,
    updated_at: u64,
    closed_at: Option<u64>,
}

#[derive(Default)]
struct Pull {
    number: u64,
    title: String,
    body: String,
    user: String,
    head_ref: String,
    base_ref: String,
    /// The shas last read from git; frozen once the PR is closed, as on GitHub.
    head_sha: String,
    base_sha: String,
    draft: bool,
    open: bool,
    /// `None`: computed with `git merge-tree`; `Some(v)`: set by the test (`Some(None)` is `null`).
    mergeable: Option<Option<bool>>,
    merge_commit_sha: Option<String>,
    created_at: u64,
    updated_at: u64,
    closed_at: Option<u64>,
    merged_at: Option<u64>,
    labels: Vec<String>,
}

/// What the server got, detached from actix so it can be answered on the blocking pool.
struct Call {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    if_none_match: Option<String>,
    body: web::Bytes,
}

/// What the server answers; `body: None` is an empty body.
struct Answer {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

type Query = HashMap<String, String>;

impl FakeGithub {
    /// Starts the server on its own thread with its own actix System (so it works
    /// from any test runtime); stops on drop.
    pub fn start() -> FakeGithub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake github");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let state = State {
            base: url.clone(),
            repos: HashMap::new(),
            remaining: LIMIT,
            reset: now() + 3600,
            fail: None,
            requests: Vec::new(),
            actions: Actions { read: true, ..Actions::default() },
        };
        let shared = Arc::new(Shared {
            token: format!("ghp_{}", hex::encode(rand::random::<[u8; 18]>())),
            secret: hex::encode(rand::random::<[u8; 16]>()),
            state: Mutex::new(state),
        });
        let data = web::Data::from(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(entry)))
                    .workers(1)
                    .disable_signals()
                    .listen(listener)
                    .expect("listen")
                    .run();
                tx.send(server.handle()).expect("report handle");
                let _ = server.await;
            })
        });
        let server = rx.recv().expect("fake github started");
        FakeGithub { url, shared, server, thread: Some(thread) }
    }

    /// The one bearer token the fake accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// A webhook secret for tests that sign deliveries with [`FakeGithub::sign`].
    pub fn webhook_secret(&self) -> &str {
        &self.shared.secret
    }

    /// Registers `owner/name`, backed by a real bare git repository at `origin` (Kiln pushes there).
    pub fn add_repo(&self, full_name: &str, origin: &Path) {
        let (full_name, origin) = (full_name.to_string(), origin.to_path_buf());
        let (clock, pulls, check_runs, statuses, reviews) = Default::default();
        let (review_comments, annotations, issues, issue_comments) = Default::default();
        let repo = Repo {
            full_name: full_name.clone(), origin, clock, pulls, check_runs, statuses, reviews, review_comments, annotations, issues, issue_comments,
        };
        self.state().repos.insert(full_name, repo);
    }

    /// Adds an open pull request by `octocat` that belongs to no task: head `head_ref`
    /// (need not exist in git), base `base`. Answers its number.
    pub fn add_pull(&self, full_name: &str, head_ref: &str, base: &str, title: &str) -> u64 {
        self.with_repo(full_name, |repo| {
            let (head_sha, base_sha, user, title) = (made_up_sha(head_ref), made_up_sha(base), "octocat".into(), title.into());
            repo.push_pull(Pull { user, title, head_ref: head_ref.into(), base_ref: base.into(), head_sha, base_sha, ..Pull::default() })
        })
    }

    /// Opens an issue by `octocat` with these labels; answers its number (shared with PRs).
    pub fn add_issue(&self, full_name: &str, title: &str, body: &str, labels: &[&str]) -> u64 {
        self.with_repo(full_name, |repo| {
            let (number, at) = (repo.next_number(), repo.clock.tick());
            let labels = labels.iter().map(|l| l.to_string()).collect();
            let (title, body) = (title.to_string(), body.to_string());
            repo.issues.push(Issue { number, title, body, user: "octocat".into(), labels, open: true, created_at: at, updated_at: at, closed_at: None });
            number
        })
    }

    /// Adds `label` to issue or PR `number` (bumps its `updated_at`).
    pub fn label(&self, full_name: &str, number: u64, label: &str) {
        self.with_repo(full_name, |repo| {
            let at = repo.clock.tick();
            if let Some(issue) = repo.issues.iter_mut().find(|i| i.number == number) {
                issue.labels.push(label.into());
                issue.updated_at = at;
            } else {
                let pull = repo.pull_mut(number);
                pull.labels.push(label.into());
                pull.updated_at = at;
            }
        })
    }

    /// Removes `label` from issue `number` (bumps its `updated_at`).
    pub fn unlabel(&self, full_name: &str, number: u64, label: &str) {
        self.with_repo(full_name, |repo| {
            let at = repo.clock.tick();
            let issue = repo.issue_mut(number);
            issue.labels.retain(|l| !l.eq_ignore_ascii_case(label));
            issue.updated_at = at;
        })
    }

    /// The issue object, as `GET /repos/{o}/{r}/issues/{n}` answers it.
    pub fn issue(&self, full_name: &str, number: u64) -> Value {
        self.with_repo(full_name, |repo| {
            let i = repo.issues.iter().position(|i| i.number == number).expect("no such issue");
            repo.issue_json(&self.url, &repo.issues[i])
        })
    }

    /// The comments on issue (or PR) `number`, oldest first.
    pub fn issue_comments(&self, full_name: &str, number: u64) -> Vec<Value> {
        self.with_repo(full_name, |repo| repo.issue_comments.iter().filter(|(n, _)| *n == number).map(|(_, c)| c.clone()).collect())
    }

    /// An `issues` webhook payload for issue `number` as it is now: `action`
    /// (`opened`, `labeled`, …), and for `labeled`/`unlabeled` the `label`.
    pub fn issues_delivery(&self, full_name: &str, number: u64, action: &str, label: Option<&str>) -> Value {
        let issue = self.issue(full_name, number);
        let (owner, name) = full_name.split_once('/').expect("owner/name");
        let mut payload = json!({
            "action": action, "issue": issue,
            "repository": {"id": 1, "full_name": full_name, "name": name, "owner": {"login": owner}, "private": false},
            "sender": {"login": "octocat", "type": "User"},
        });
        if let Some(l) = label {
            payload["label"] = label_json(l);
        }
        payload
    }

    /// Adds a check run on `sha`; a `completed` one gets `completed_at`. A second run
    /// with the same name is a re-run: `filter=latest` shows only the newer.
    pub fn add_check_run(&self, full_name: &str, sha: &str, name: &str, status: &str, conclusion: Option<&str>, summary: &str) {
        self.with_repo(full_name, |repo| {
            let (at, id) = (rfc3339(repo.clock.tick()), next_id());
            let url = format!("https://github.com/{full_name}/runs/{id}");
            repo.check_runs.push(json!({
                "id": id, "name": name, "head_sha": sha, "status": status, "conclusion": conclusion,
                "started_at": at, "completed_at": (status == "completed").then_some(&at),
                "html_url": url, "details_url": url, "output": {"title": name, "summary": summary},
                "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
            }));
        })
    }

    /// Sets the commit status `context` on `sha`, replacing an earlier one with that context.
    pub fn set_status(&self, full_name: &str, sha: &str, context: &str, state: &str, description: &str) {
        self.with_repo(full_name, |repo| {
            repo.statuses.retain(|(s, v)| !(s == sha && v["context"] == context));
            let (at, id) = (rfc3339(repo.clock.tick()), next_id());
            let status = json!({"id": id, "context": context, "state": state, "description": description,
                                "target_url": null, "created_at": at, "updated_at": at});
            repo.statuses.push((sha.to_string(), status));
        })
    }

    /// Adds a review of PR `number` on its current head; it bumps the PR's `updated_at`.
    pub fn add_review(&self, full_name: &str, number: u64, user: &str, state: &str) {
        self.add_review_with_body(full_name, number, user, state, "");
    }

    /// A review with a body (its overall comment); answers the review's id.
    pub fn add_review_with_body(&self, full_name: &str, number: u64, user: &str, state: &str, body: &str) -> u64 {
        self.with_repo(full_name, |repo| {
            let (at, id) = (repo.clock.tick(), next_id());
            let pull = repo.pull_mut(number);
            pull.updated_at = at;
            let user_type = if user.ends_with("[bot]") { "Bot" } else { "User" };
            let review = json!({"id": id, "user": {"login": user, "type": user_type}, "body": body, "state": state,
                                "commit_id": pull.head_sha, "submitted_at": rfc3339(at), "author_association": "MEMBER",
                                "html_url": format!("https://github.com/{full_name}/pull/{number}#pullrequestreview-{id}")});
            repo.reviews.push((number, review));
            id
        })
    }

    /// Adds a review comment on `path` line `line` of PR `number`'s head (as
    /// `GET …/pulls/{n}/comments` answers it: `diff_hunk` ends at the line),
    /// belonging to review `review_id` when given; bumps the PR's `updated_at`.
    /// Answers the comment's id.
    pub fn add_review_comment(
        &self,
        full_name: &str,
        number: u64,
        user: &str,
        path: &str,
        line: u64,
        diff_hunk: &str,
        body: &str,
        review_id: Option<u64>,
    ) -> u64 {
        self.with_repo(full_name, |repo| {
            let (at, id) = (repo.clock.tick(), next_id());
            let pull = repo.pull_mut(number);
            pull.updated_at = at;
            let user_type = if user.ends_with("[bot]") { "Bot" } else { "User" };
            let comment = json!({
                "id": id, "pull_request_review_id": review_id, "node_id": format!("PRRC_{id}"),
                "diff_hunk": diff_hunk, "path": path, "commit_id": pull.head_sha, "original_commit_id": pull.head_sha,
                "user": {"login": user, "type": user_type}, "body": body,
                "created_at": rfc3339(at), "updated_at": rfc3339(at), "author_association": "MEMBER",
                "html_url": format!("https://github.com/{full_name}/pull/{number}#discussion_r{id}"),
                "line": line, "original_line": line, "side": "RIGHT", "start_line": null, "start_side": null,
                "subject_type": "line",
            });
            repo.review_comments.push((number, comment));
            id
        })
    }

    /// Adds a check run like [`FakeGithub::add_check_run`] with `output.text` (the
    /// long form) and annotations, each `(path, line, message)`; answers its id.
    pub fn add_failed_check_run(&self, full_name: &str, sha: &str, name: &str, summary: &str, text: &str, notes: &[(&str, u64, &str)]) -> u64 {
        self.with_repo(full_name, |repo| {
            let (at, id) = (rfc3339(repo.clock.tick()), next_id());
            let url = format!("https://github.com/{full_name}/runs/{id}");
            repo.check_runs.push(json!({
                "id": id, "name": name, "head_sha": sha, "status": "completed", "conclusion": "failure",
                "started_at": at, "completed_at": at, "html_url": url, "details_url": url,
                "output": {"title": format!("{name} failed"), "summary": summary, "text": text, "annotations_count": notes.len()},
                "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
            }));
            for (path, line, message) in notes {
                repo.annotations.push((id, json!({
                    "path": path, "start_line": line, "end_line": line, "start_column": null, "end_column": null,
                    "annotation_level": "failure", "title": name, "message": message, "raw_details": null,
                    "blob_href": format!("https://github.com/{full_name}/blob/{sha}/{path}"),
                })));
            }
            id
        })
    }

    /// Sets what GET on the PR answers for `mergeable` (`None` is `null`, "still
    /// computing"); `Some(false)` also makes a merge answer 405.
    pub fn set_mergeable(&self, full_name: &str, number: u64, mergeable: Option<bool>) {
        self.with_repo(full_name, |repo| repo.pull_mut(number).mergeable = Some(mergeable))
    }

    /// Marks a PR merged outside Kiln (bumps updated_at and the list's ETag). When its
    /// branches are in git and merge cleanly, a merge commit really lands on the base;
    /// otherwise only the PR changes, with its head as `merge_commit_sha`.
    pub fn merge_externally(&self, full_name: &str, number: u64) {
        self.with_repo(full_name, |repo| {
            let i = repo.index(number).expect("no such pull");
            let sha = repo.merge_in_git(&repo.pulls[i], "merge", None, None).unwrap_or_else(|_| repo.pulls[i].head_sha.clone());
            repo.mark_merged(i, sha);
        })
    }

    /// Closes a PR without merging it, outside Kiln (bumps updated_at and the list's ETag).
    pub fn close_externally(&self, full_name: &str, number: u64) {
        self.with_repo(full_name, |repo| {
            let at = repo.clock.tick();
            let pull = repo.pull_mut(number);
            (pull.open, pull.closed_at, pull.updated_at) = (false, Some(at), at);
        })
    }

    /// The full PR object, as `GET /repos/{o}/{r}/pulls/{n}` answers it.
    pub fn pull(&self, full_name: &str, number: u64) -> Value {
        self.with_repo(full_name, |repo| repo.pull_json(&self.url, &repo.pulls[repo.index(number).expect("no such pull")], true))
    }

    /// The next `count` API requests (authenticated, not `/rate_limit`) answer `status` (403 or 429)
    /// with `retry-after: secs` and the unchanged `x-ratelimit-remaining`, as a secondary limit does.
    pub fn fail_next(&self, count: usize, status: u16, retry_after_secs: u64) {
        self.state().fail = (count > 0).then_some((count, status, retry_after_secs));
    }

    /// Every request seen: method, path with query, status answered, and whether it carried If-None-Match.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    /// The primary rate limit left (starts at 5000); a 304 to an authenticated request does not spend it.
    pub fn rate_limit_remaining(&self) -> u64 {
        self.state().remaining
    }

    /// Sets the primary rate limit left, to reach exhaustion without 5000 requests.
    pub fn set_rate_limit_remaining(&self, remaining: u64) {
        self.state().remaining = remaining.min(LIMIT);
    }

    /// `sha256=<hex>` HMAC of `body` with `secret`, as GitHub's X-Hub-Signature-256.
    pub fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Runs `f` on a registered repository, after reading its branches from git.
    fn with_repo<T>(&self, full_name: &str, f: impl FnOnce(&mut Repo) -> T) -> T {
        let mut state = self.state();
        let repo = state.repos.get_mut(full_name).unwrap_or_else(|| panic!("fake github: no repo {full_name}"));
        repo.refresh();
        f(repo)
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        // The stop command is sent at once; the future only waits for it to finish.
        drop(self.server.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The one handler: routing is by hand, on the blocking pool, since most answers run git.
async fn entry(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let call = Call {
        method: req.method().to_string(),
        path: req.path().to_string(),
        query: req.query_string().to_string(),
        auth: header("authorization"),
        if_none_match: header("if-none-match"),
        body,
    };
    let shared = shared.into_inner();
    let Ok(answer) = web::block(move || shared.serve(&call)).await else {
        return HttpResponse::InternalServerError().finish();
    };
    let mut res = HttpResponse::build(actix_web::http::StatusCode::from_u16(answer.status).expect("a valid status"));
    for header in answer.headers {
        res.insert_header(header);
    }
    match answer.body {
        // GitHub never answers a bare JSON string: this is a plain-text body (a log).
        Some(Value::String(text)) => res.content_type("text/plain; charset=utf-8").body(text),
        Some(body) => res.content_type("application/json; charset=utf-8").body(body.to_string()),
        None => res.finish(),
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, call: &Call) -> Answer {
        let mut state = self.state();
        let mut answer = state.answer(&self.token, call);
        answer.headers.extend(state.rate_headers());
        let path = if call.query.is_empty() { call.path.clone() } else { format!("{}?{}", call.path, call.query) };
        let (method, status, if_none_match) = (call.method.clone(), answer.status, call.if_none_match.is_some());
        state.requests.push(Request { method, path, status, if_none_match });
        answer
    }
}

impl State {
    /// Authentication, injected failures and the rate limit (§3.9), the route, then ETags (§3.10).
    fn answer(&mut self, token: &str, call: &Call) -> Answer {
        if let Some(blob) = call.path.strip_prefix("/_blobs/") {
            return self.actions.blob(blob, call);
        }
        let given = call.auth.as_deref().and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("token ")));
        if given != Some(token) {
            return error(401, "Bad credentials");
        }
        if call.path == "/rate_limit" && call.method == "GET" {
            let core = json!({"limit": LIMIT, "used": LIMIT - self.remaining, "remaining": self.remaining, "reset": self.reset});
            return ok(json!({"resources": {"core": core}, "rate": core}));
        }
        if let Some((left, status, secs)) = self.fail {
            self.fail = (left > 1).then_some((left - 1, status, secs));
            let mut answer = error(status, "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.");
            answer.headers.push(("retry-after", secs.to_string()));
            return answer;
        }
        if self.remaining == 0 {
            return error(403, "API rate limit exceeded for user ID 1.");
        }
        let mut answer = self.route(call);
        if let (Some(body), "GET", 200) = (&answer.body, call.method.as_str(), answer.status) {
            let etag = format!("\"{}\"", hex::encode(sha2::Sha256::digest(body.to_string().as_bytes())));
            let given = call.if_none_match.as_deref().unwrap_or_default();
            if given.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == "*" || t == etag) {
                (answer.status, answer.body) = (304, None);
            }
            answer.headers.push(("etag", etag));
        }
        if answer.status != 304 {
            self.remaining -= 1;
        }
        answer
    }

    fn rate_headers(&self) -> [(&'static str, String); 5] {
        [
            ("x-ratelimit-limit", LIMIT.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-used", (LIMIT - self.remaining).to_string()),
            ("x-ratelimit-reset", self.reset.to_string()),
            ("x-ratelimit-resource", "core".to_string()),
        ]
    }

    fn route(&mut self, call: &Call) -> Answer {
        let segments: Vec<String> = call.path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let ["repos", owner, name, rest @ ..] = segments.as_slice() else { return not_found() };
        let Some(repo) = self.repos.get_mut(&format!("{owner}/{name}")) else { return not_found() };
        repo.refresh();
        let base = &self.base;
        let q: Query = web::Query::from_query(&call.query).map(web::Query::into_inner).unwrap_or_default();
        let page = |items: Vec<Value>| paginate(base, call, &q, items);
        let pull = |n: &str| repo.index(n.parse().ok()?);
        match (call.method.as_str(), rest) {
            ("GET", ["pulls"]) => page(repo.list_pulls(base, &q)),
            ("POST", ["pulls"]) => repo.create_pull(base, &call.body),
            ("GET", ["pulls", n]) => pull(n).map_or_else(not_found, |i| ok(repo.pull_json(base, &repo.pulls[i], true))),
            ("PUT", ["pulls", n, "merge"]) => match pull(n) {
                Some(i) => repo.merge_pull(i, &call.body),
                None => not_found(),
            },
            ("GET", ["pulls", n, "reviews"]) => pull(n).map_or_else(not_found, |i| {
                let number = repo.pulls[i].number;
                page(repo.reviews.iter().filter(|(n, _)| *n == number).map(|(_, r)| r.clone()).collect())
            }),
            ("GET", ["pulls", n, "comments"]) => pull(n).map_or_else(not_found, |i| {
                let number = repo.pulls[i].number;
                page(repo.review_comments.iter().filter(|(n, _)| *n == number).map(|(_, c)| c.clone()).collect())
            }),
            ("GET", ["check-runs", id, "annotations"]) => match id.parse::<u64>() {
                Ok(id) if repo.check_runs.iter().any(|c| c["id"] == id) => {
                    page(repo.annotations.iter().filter(|(run, _)| *run == id).map(|(_, a)| a.clone()).collect())
                }
                _ => not_found(),
            },
            ("GET", ["issues"]) => match repo.list_issues(base, &q) {
                Ok(items) => page(items),
                Err(answer) => answer,
            },
            ("GET", ["issues", n]) => match n.parse::<u64>().ok() {
                Some(n) => match (repo.issues.iter().find(|i| i.number == n), repo.index(n)) {
                    (Some(i), _) => ok(repo.issue_json(base, i)),
                    (None, Some(p)) => ok(repo.pull_as_issue(base, &repo.pulls[p])),
                    _ => not_found(),
                },
                None => not_found(),
            },
            ("GET", ["issues", n, "comments"]) => match n.parse::<u64>().ok().filter(|n| repo.issues.iter().any(|i| i.number == *n) || repo.index(*n).is_some()) {
                Some(n) => page(repo.issue_comments.iter().filter(|(m, _)| *m == n).map(|(_, c)| c.clone()).collect()),
                None => not_found(),
            },
            ("POST", ["issues", n, "comments"]) => match n.parse::<u64>().ok().filter(|n| repo.issues.iter().any(|i| i.number == *n) || repo.index(*n).is_some()) {
                Some(n) => repo.comment(n, &call.body),
                None => not_found(),
            },
            ("GET", ["commits", r @ .., "check-runs"]) if !r.is_empty() => repo.check_runs_json(&r.join("/"), &q),
            ("GET", ["actions", "jobs", id, "logs"]) => self.actions.job_logs(base, &repo.full_name, id),
            ("GET", ["commits", r @ .., "status"]) if !r.is_empty() => repo.combined_status(&r.join("/")),
            _ => not_found(),
        }
    }
}

impl Clock {
    fn tick(&mut self) -> u64 {
        self.0 = now().max(self.0 + 1);
        self.0
    }
}

/// Ids for check runs, statuses and reviews: unique across every fake, as on GitHub.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Repo {
    fn owner(&self) -> &str {
        self.full_name.split('/').next().unwrap_or_default()
    }

    fn git(&self, args: &[&str]) -> Result<String, (i32, String)> {
        git(&self.origin, args)
    }

    /// Every branch in the origin repository with its head.
    fn branches(&self) -> HashMap<String, String> {
        let out = self.git(&["for-each-ref", "--format=%(refname:lstrip=2) %(objectname)", "refs/heads"]).unwrap_or_default();
        out.lines().filter_map(|l| l.split_once(' ')).map(|(b, s)| (b.to_string(), s.to_string())).collect()
    }

    /// Reads the open PRs' head and base shas from git; a moved head bumps `updated_at`, as a push does.
    fn refresh(&mut self) {
        let branches = self.branches();
        let Repo { pulls, clock, .. } = self;
        for pull in pulls.iter_mut().filter(|p| p.open) {
            if let Some(sha) = branches.get(&pull.head_ref).filter(|s| **s != pull.head_sha) {
                (pull.head_sha, pull.updated_at) = (sha.clone(), clock.tick());
            }
            if let Some(sha) = branches.get(&pull.base_ref) {
                pull.base_sha = sha.clone();
            }
        }
    }

    /// A sha, branch or tag as a commit sha. A full sha is taken as is, so CI can be
    /// attached to commits the origin repository does not have.
    fn resolve(&self, rev: &str) -> Option<String> {
        if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(rev.to_ascii_lowercase());
        }
        self.git(&["rev-parse", "--verify", "-q", "--end-of-options", &format!("{rev}^{{commit}}")]).ok()
    }

    fn index(&self, number: u64) -> Option<usize> {
        self.pulls.iter().position(|p| p.number == number)
    }

    /// The next issue or PR number (one sequence for both, as on GitHub).
    fn next_number(&self) -> u64 {
        (self.pulls.len() + self.issues.len()) as u64 + 1
    }

    fn issue_mut(&mut self, number: u64) -> &mut Issue {
        let i = self.issues.iter().position(|i| i.number == number).unwrap_or_else(|| panic!("fake github: no issue #{number}"));
        &mut self.issues[i]
    }

    /// An issue as the issues API answers it.
    fn issue_json(&self, base: &str, i: &Issue) -> Value {
        let comments = self.issue_comments.iter().filter(|(n, _)| *n == i.number).count();
        json!({
            "url": format!("{base}/repos/{}/issues/{}", self.full_name, i.number),
            "html_url": format!("https://github.com/{}/issues/{}", self.full_name, i.number),
            "id": 200_000 + i.number, "number": i.number, "state": if i.open { "open" } else { "closed" },
            "title": i.title, "body": i.body, "user": {"login": i.user, "type": "User"},
            "labels": i.labels.iter().map(|l| label_json(l)).collect::<Vec<_>>(),
            "assignees": [], "milestone": null, "locked": false, "comments": comments,
            "created_at": rfc3339(i.created_at), "updated_at": rfc3339(i.updated_at), "closed_at": i.closed_at.map(rfc3339),
            "author_association": "NONE",
        })
    }

    /// A PR as the issues API answers it: an issue with a `pull_request` key.
    fn pull_as_issue(&self, base: &str, p: &Pull) -> Value {
        let comments = self.issue_comments.iter().filter(|(n, _)| *n == p.number).count();
        let html = format!("https://github.com/{}/pull/{}", self.full_name, p.number);
        json!({
            "url": format!("{base}/repos/{}/issues/{}", self.full_name, p.number),
            "html_url": html, "id": 100_000 + p.number, "number": p.number, "state": if p.open { "open" } else { "closed" },
            "title": p.title, "body": p.body, "user": {"login": p.user, "type": "User"},
            "labels": p.labels.iter().map(|l| label_json(l)).collect::<Vec<_>>(),
            "assignees": [], "milestone": null, "locked": false, "comments": comments, "draft": p.draft,
            "created_at": rfc3339(p.created_at), "updated_at": rfc3339(p.updated_at), "closed_at": p.closed_at.map(rfc3339),
            "author_association": "NONE",
            "pull_request": {
                "url": format!("{base}/repos/{}/pulls/{}", self.full_name, p.number), "html_url": html,
                "diff_url": format!("{html}.diff"), "patch_url": format!("{html}.patch"), "merged_at": p.merged_at.map(rfc3339),
            },
        })
    }

    /// "List repository issues": issues and PRs, filtered, sorted, for the caller to page.
    fn list_issues(&self, base: &str, q: &Query) -> Result<Vec<Value>, Answer> {
        let arg = |k: &str| q.get(k).map(String::as_str);
        let labels: Vec<String> = arg("labels").map(|l| l.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect()).unwrap_or_default();
        let since = match arg("since") {
            Some(s) => Some(parse_rfc3339(s).ok_or_else(|| validation(json!({"resource": "Issue", "field": "since", "code": "invalid"})))?),
            None => None,
        };
        let state = arg("state").unwrap_or("open");
        // (number, open, labels, created, updated, json)
        let mut rows: Vec<(bool, Vec<String>, u64, u64, Value)> = Vec::new();
        for i in &self.issues {
            rows.push((i.open, i.labels.clone(), i.created_at, i.updated_at, self.issue_json(base, i)));
        }
        for p in &self.pulls {
            rows.push((p.open, p.labels.clone(), p.created_at, p.updated_at, self.pull_as_issue(base, p)));
        }
        rows.retain(|(open, have, _, updated, _)| {
            let state_ok = match state {
                "all" => true,
                "closed" => !open,
                _ => *open,
            };
            let have: Vec<String> = have.iter().map(|l| l.to_lowercase()).collect();
            state_ok && labels.iter().all(|l| have.contains(l)) && since.is_none_or(|s| *updated >= s)
        });
        let by_updated = arg("sort") == Some("updated");
        rows.sort_by_key(|(_, _, created, updated, v)| (if by_updated { *updated } else { *created }, v["number"].as_u64().unwrap_or(0)));
        if arg("direction") != Some("asc") {
            rows.reverse();
        }
        Ok(rows.into_iter().map(|r| r.4).collect())
    }

    /// "Create an issue comment": 201 with the comment; bumps the issue's `updated_at`.
    fn comment(&mut self, number: u64, body: &[u8]) -> Answer {
        let Ok(b) = serde_json::from_slice::<Value>(body) else { return error(400, "Problems parsing JSON") };
        let Some(text) = b["body"].as_str() else {
            return validation(json!({"resource": "IssueComment", "field": "body", "code": "missing_field"}));
        };
        let (at, id) = (self.clock.tick(), next_id());
        let html = if self.issues.iter().any(|i| i.number == number) {
            format!("https://github.com/{}/issues/{number}#issuecomment-{id}", self.full_name)
        } else {
            self.pull_mut(number).updated_at = at;
            format!("https://github.com/{}/pull/{number}#issuecomment-{id}", self.full_name)
        };
        if let Some(issue) = self.issues.iter_mut().find(|i| i.number == number) {
            issue.updated_at = at;
        }
        let comment = json!({
            "id": id, "node_id": format!("IC_{id}"), "html_url": html, "body": text,
            "user": {"login": BOT, "type": "User"}, "created_at": rfc3339(at), "updated_at": rfc3339(at),
            "author_association": "MEMBER",
        });
        self.issue_comments.push((number, comment.clone()));
        json_answer(201, comment)
    }

    fn pull_mut(&mut self, number: u64) -> &mut Pull {
        let i = self.index(number).unwrap_or_else(|| panic!("fake github: no pull #{number}"));
        &mut self.pulls[i]
    }

    /// Opens `pull` with the next number; answers the number.
    fn push_pull(&mut self, pull: Pull) -> u64 {
        let (number, at) = (self.next_number(), self.clock.tick());
        self.pulls.push(Pull { number, open: true, created_at: at, updated_at: at, ..pull });
        number
    }

    fn mark_merged(&mut self, i: usize, sha: String) {
        let at = self.clock.tick();
        let pull = &mut self.pulls[i];
        (pull.open, pull.merge_commit_sha) = (false, Some(sha));
        (pull.closed_at, pull.merged_at, pull.updated_at) = (Some(at), Some(at), at);
    }

    /// The PR object: the list's fields (§3.2), plus §3.3's when `full`.
    fn pull_json(&self, base: &str, p: &Pull, full: bool) -> Value {
        let (owner, name) = self.full_name.split_once('/').unwrap_or_default();
        let repo = json!({"full_name": self.full_name, "name": name, "owner": {"login": owner}});
        let mut v = json!({
            "url": format!("{base}/repos/{}/pulls/{}", self.full_name, p.number),
            "html_url": format!("https://github.com/{}/pull/{}", self.full_name, p.number),
            "id": 100_000 + p.number, "number": p.number, "state": if p.open { "open" } else { "closed" },
            "draft": p.draft, "title": p.title, "body": p.body, "user": {"login": p.user},
            "head": {"ref": p.head_ref, "sha": p.head_sha, "label": format!("{owner}:{}", p.head_ref), "repo": repo},
            "base": {"ref": p.base_ref, "sha": p.base_sha, "label": format!("{owner}:{}", p.base_ref), "repo": repo},
            "created_at": rfc3339(p.created_at), "updated_at": rfc3339(p.updated_at),
            "closed_at": p.closed_at.map(rfc3339), "merged_at": p.merged_at.map(rfc3339),
            "labels": p.labels.iter().map(|l| label_json(l)).collect::<Vec<_>>(), "requested_reviewers": [], "auto_merge": null,
        });
        if !full {
            return v;
        }
        // A closed PR is no longer computed: GitHub answers null, "unknown".
        let mergeable = match p.mergeable {
            _ if !p.open => None,
            Some(set) => set,
            None => Some(!matches!(self.merge_tree(&p.base_sha, &p.head_sha), Ok(None))),
        };
        let mergeable_state = match mergeable {
            None => "unknown",
            Some(false) => "dirty",
            Some(true) if p.draft => "draft",
            Some(true) => "clean",
        };
        let commits = self.git(&["rev-list", "--count", &format!("{}..{}", p.base_sha, p.head_sha)]).unwrap_or_default();
        let numstat = self.git(&["diff", "--numstat", &format!("{}...{}", p.base_sha, p.head_sha)]).unwrap_or_default();
        let column = |n: usize| numstat.lines().filter_map(|l| l.split('\t').nth(n)?.parse::<u64>().ok()).sum::<u64>();
        let fields = json!({
            "merged": p.merged_at.is_some(), "mergeable": mergeable, "mergeable_state": mergeable_state,
            "merge_commit_sha": p.merge_commit_sha, "commits": commits.parse::<u64>().unwrap_or(0),
            "additions": column(0), "deletions": column(1), "changed_files": numstat.lines().count(),
        });
        v.as_object_mut().expect("an object").extend(fields.as_object().expect("an object").clone());
        v
    }

    /// §3.2: filtered, newest first, for the caller to page.
    fn list_pulls(&self, base: &str, q: &Query) -> Vec<Value> {
        let arg = |k: &str| q.get(k).map(String::as_str);
        let head = arg("head").and_then(|h| h.split_once(':'));
        let pulls = self
            .pulls
            .iter()
            .rev()
            .filter(|p| match arg("state") {
                Some("all") => true,
                Some("closed") => !p.open,
                _ => p.open,
            })
            .filter(|p| head.is_none_or(|(owner, branch)| owner == self.owner() && branch == p.head_ref))
            .filter(|p| arg("base").is_none_or(|b| b == p.base_ref));
        pulls.map(|p| self.pull_json(base, p, false)).collect()
    }

    /// §3.4: the three 422s, or a 201 with the full object.
    fn create_pull(&mut self, base: &str, body: &[u8]) -> Answer {
        let Ok(b) = serde_json::from_slice::<Value>(body) else { return error(400, "Problems parsing JSON") };
        let (Some(title), Some(head), Some(base_ref)) = (b["title"].as_str(), b["head"].as_str(), b["base"].as_str()) else {
            let field = ["title", "head", "base"].into_iter().find(|k| !b[k].is_string());
            return validation(json!({"resource": "PullRequest", "field": field, "code": "missing_field"}));
        };
        let invalid = |field: &str| validation(json!({"resource": "PullRequest", "field": field, "code": "invalid"}));
        let head_ref = match head.split_once(':') {
            None => head,
            Some((owner, branch)) if owner == self.owner() => branch,
            Some(_) => return invalid("head"),
        };
        let branches = self.branches();
        let Some(head_sha) = branches.get(head_ref).cloned() else { return invalid("head") };
        let Some(base_sha) = branches.get(base_ref).cloned() else { return invalid("base") };
        let custom = |message: String| validation(json!({"resource": "PullRequest", "code": "custom", "message": message}));
        if self.pulls.iter().any(|p| p.open && p.head_ref == head_ref && p.base_ref == base_ref) {
            return custom(format!("A pull request already exists for {}:{head_ref}.", self.owner()));
        }
        if self.git(&["rev-list", "--count", &format!("{base_sha}..{head_sha}")]).as_deref() == Ok("0") {
            return custom(format!("No commits between {base_ref} and {head_ref}"));
        }
        let (body, draft) = (b["body"].as_str().unwrap_or_default().into(), b["draft"].as_bool().unwrap_or(false));
        let (title, user, head_ref, base_ref) = (title.into(), BOT.into(), head_ref.into(), base_ref.into());
        let number = self.push_pull(Pull { title, body, user, head_ref, base_ref, head_sha, base_sha, draft, ..Pull::default() });
        json_answer(201, self.pull_json(base, &self.pulls[self.index(number).expect("just pushed")], true))
    }

    /// §3.5: 405 unless open and mergeable, 409 on a moved head, else a real merge.
    fn merge_pull(&mut self, i: usize, body: &[u8]) -> Answer {
        let b = if body.is_empty() { json!({}) } else { serde_json::from_slice(body).unwrap_or(Value::Null) };
        if !b.is_object() {
            return error(400, "Problems parsing JSON");
        }
        let method = b["merge_method"].as_str().unwrap_or("merge");
        if !["merge", "squash", "rebase"].contains(&method) {
            return validation(json!({"resource": "PullRequest", "field": "merge_method", "code": "invalid"}));
        }
        let pull = &self.pulls[i];
        if !pull.open || pull.mergeable == Some(Some(false)) {
            return error(405, "Pull Request is not mergeable");
        }
        if b["sha"].as_str().is_some_and(|sha| sha != pull.head_sha) {
            return error(409, "Head branch was modified. Review and try the merge again.");
        }
        match self.merge_in_git(pull, method, b["commit_title"].as_str(), b["commit_message"].as_str()) {
            Ok(sha) => {
                self.mark_merged(i, sha.clone());
                ok(json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"}))
            }
            Err(answer) => answer,
        }
    }

    /// `git merge-tree --write-tree`: `Ok(Some(tree))` when clean, `Ok(None)` on a conflict.
    fn merge_tree(&self, base: &str, head: &str) -> Result<Option<String>, String> {
        match self.git(&["merge-tree", "--write-tree", base, head]) {
            Ok(out) => Ok(Some(out.lines().next().unwrap_or_default().to_string())),
            Err((1, _)) => Ok(None),
            Err((_, stderr)) => Err(stderr),
        }
    }

    /// Writes the merge of `p` onto its base in the origin repository; answers the
    /// new base commit, or what to answer instead.
    fn merge_in_git(&self, p: &Pull, method: &str, title: Option<&str>, message: Option<&str>) -> Result<String, Answer> {
        let not_mergeable = || error(405, "Pull Request is not mergeable");
        let (base, head) = (p.base_sha.as_str(), p.head_sha.as_str());
        let commit = if method == "rebase" {
            // Only a fast-forward: replaying commits one by one is not faked.
            self.git(&["merge-base", "--is-ancestor", base, head]).map_err(|_| not_mergeable())?;
            head.to_string()
        } else {
            let Ok(Some(tree)) = self.merge_tree(base, head) else { return Err(not_mergeable()) };
            let (default_title, default_message) = match method {
                "squash" => (format!("{} (#{})", p.title, p.number), String::new()),
                _ => (format!("Merge pull request #{} from {}/{}", p.number, self.owner(), p.head_ref), p.title.clone()),
            };
            let (title, message) = (title.unwrap_or(&default_title), message.unwrap_or(&default_message));
            let text = if message.is_empty() { title.to_string() } else { format!("{title}\n\n{message}") };
            let mut args = vec!["commit-tree", tree.as_str(), "-m", text.as_str(), "-p", base];
            if method == "merge" {
                args.extend(["-p", head]);
            }
            self.git(&args).map_err(|(_, e)| error(500, &format!("git commit-tree failed: {e}")))?
        };
        // Compare-and-swap on the base we merged onto.
        self.git(&["update-ref", &format!("refs/heads/{}", p.base_ref), &commit, base])
            .map_err(|_| error(409, "Base branch was modified. Review and try the merge again."))?;
        Ok(commit)
    }

    /// §3.6: the runs on `rev`, newest first; `filter=latest` (the default) keeps one per name.
    fn check_runs_json(&self, rev: &str, q: &Query) -> Answer {
        let Some(sha) = self.resolve(rev) else { return error(422, &format!("No commit found for SHA: {rev}")) };
        let arg = |k: &str| q.get(k).map(String::as_str);
        let mut seen = HashSet::new();
        let runs: Vec<&Value> = self
            .check_runs
            .iter()
            .rev()
            .filter(|c| c["head_sha"] == sha.as_str() && arg("check_name").is_none_or(|n| c["name"] == n))
            .filter(|c| arg("filter") == Some("all") || seen.insert(c["name"].clone()))
            .collect();
        ok(json!({"total_count": runs.len(), "check_runs": runs}))
    }

    /// §3.6: the combined status; failure beats pending beats success, and none is pending.
    fn combined_status(&self, rev: &str) -> Answer {
        let Some(sha) = self.resolve(rev) else { return error(422, &format!("No commit found for SHA: {rev}")) };
        let statuses: Vec<&Value> = self.statuses.iter().rev().filter(|(s, _)| *s == sha).map(|(_, v)| v).collect();
        let any = |states: &[&str]| statuses.iter().any(|s| states.iter().any(|state| s["state"] == *state));
        let state = match () {
            _ if any(&["failure", "error"]) => "failure",
            _ if statuses.is_empty() || any(&["pending"]) => "pending",
            _ => "success",
        };
        let repository = json!({"full_name": self.full_name});
        ok(json!({"state": state, "sha": sha, "total_count": statuses.len(), "statuses": statuses, "repository": repository}))
    }
}

/// §3.8: one page of `items`, with a `link` header when there is more than one page.
fn paginate(base: &str, call: &Call, q: &Query, items: Vec<Value>) -> Answer {
    let number = |k: &str| q.get(k).and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0);
    let (per_page, page) = (number("per_page").unwrap_or(30).min(100), number("page").unwrap_or(1));
    let last = items.len().div_ceil(per_page).max(1);
    let mut answer = ok(items.into_iter().skip((page - 1).saturating_mul(per_page)).take(per_page).collect());
    if last > 1 {
        let kept: Vec<&str> = call.query.split('&').filter(|kv| !kv.is_empty() && !kv.starts_with("page=")).collect();
        let link = |n: usize, rel: &str| {
            let page = format!("page={n}");
            let query = kept.iter().copied().chain([page.as_str()]).collect::<Vec<_>>().join("&");
            format!("<{base}{}?{query}>; rel=\"{rel}\"", call.path)
        };
        let mut links = Vec::new();
        if page > 1 {
            links.push(link(page - 1, "prev"));
        }
        if page < last {
            links.extend([link(page + 1, "next"), link(last, "last")]);
        }
        if page > 1 {
            links.push(link(1, "first"));
        }
        answer.headers.push(("link", links.join(", ")));
    }
    answer
}

/// A label as the API answers it.
fn label_json(name: &str) -> Value {
    let id = name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) % 1_000_000_000;
    json!({"id": id, "name": name, "color": "ededed", "default": false, "description": null})
}

/// `YYYY-MM-DDTHH:MM:SSZ` as unix seconds (what `since` takes).
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d, h, mi, se) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm), 1970-01-01 is day 0.
    let (y, mo) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

fn json_answer(status: u16, body: Value) -> Answer {
    Answer { status, body: Some(body), headers: Vec::new() }
}

fn ok(body: Value) -> Answer {
    json_answer(200, body)
}

fn error(status: u16, message: &str) -> Answer {
    json_answer(status, json!({"message": message, "documentation_url": DOCS, "status": status.to_string()}))
}

fn not_found() -> Answer {
    error(404, "Not Found")
}

fn validation(err: Value) -> Answer {
    json_answer(422, json!({"message": "Validation Failed", "errors": [err], "documentation_url": DOCS, "status": "422"}))
}

/// Runs git in `dir` as GitHub; answers trimmed stdout, or the exit code and stderr.
fn git(dir: &Path, args: &[&str]) -> Result<String, (i32, String)> {
    let out = Command::new("git")
        .args(["-c", "user.name=GitHub", "-c", "user.email=noreply@github.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| (-1, e.to_string()))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())),
    }
}

/// A stable 40-hex "sha" for a ref git does not have.
fn made_up_sha(name: &str) -> String {
    hex::encode(sha2::Sha256::digest(name.as_bytes()))[..40].to_string()
}

/// `%2F` and friends in a path segment, as GitHub clients escape a branch's `/`.
pub(crate) fn percent_decode(s: &str) -> String {
    let (bytes, mut out, mut i) = (s.as_bytes(), Vec::new(), 0);
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match escaped.filter(|_| bytes[i] == b'%') {
            Some(b) => (out.push(b), i += 3),
            None => (out.push(bytes[i]), i += 1),
        };
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Epoch seconds as GitHub writes them: `2011-01-26T19:01:12Z`.
pub(crate) fn rfc3339(secs: u64) -> String {
    // Days to a civil date: Howard Hinnant's `civil_from_days`.
    let z = (secs / 86_400) as i64 + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let (day, month) = (doy - (153 * mp + 2) / 5 + 1, if mp < 10 { mp + 3 } else { mp - 9 });
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = secs % 86_400;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{git_repo, tempdir};

    const REPO: &str = "acme/widget";

    #[derive(Debug)]
    struct Got {
        status: u16,
        headers: awc::http::header::HeaderMap,
        text: String,
        body: Value,
    }

    impl Got {
        fn header(&self, name: &str) -> &str {
            self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
        }

        /// The URL of `rel` in the `link` header.
        fn link(&self, rel: &str) -> Option<String> {
            let part = self.header("link").split(", ").find(|p| p.ends_with(&format!("rel=\"{rel}\"")))?;
            Some(part.split_once('>')?.0.trim_start_matches('<').to_string())
        }

        fn numbers(&self) -> Vec<u64> {
            self.body.as_array().expect("an array").iter().map(|p| p["number"].as_u64().unwrap()).collect()
        }
    }

    /// The values at JSON `pointers` in `v`, as an object keyed by pointer: one assert shows them all.
    fn pick(v: &Value, pointers: &[&str]) -> Value {
        pointers.iter().map(|p| (p.to_string(), v.pointer(p).cloned().unwrap_or_default())).collect::<serde_json::Map<_, _>>().into()
    }

    /// Sends a request to `url` (a path on `gh`, or a full URL) with `token` and extra headers.
    async fn call(gh: &FakeGithub, token: Option<&str>, method: &str, url: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Got {
        let url = if url.starts_with("http") { url.to_string() } else { format!("{}{url}", gh.url) };
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = awc::Client::default().request(method, url).insert_header(("user-agent", "kiln-test"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for header in headers {
            req = req.insert_header(*header);
        }
        let mut res = match body {
            Some(body) => req.send_json(&body).await,
            None => req.send().await,
        }
        .expect("request to fake github");
        let bytes = res.body().limit(64 << 20).await.expect("body");
        let (text, body) = (String::from_utf8_lossy(&bytes).into_owned(), serde_json::from_slice(&bytes).unwrap_or_default());
        Got { status: res.status().as_u16(), headers: res.headers().clone(), text, body }
    }

    async fn get(gh: &FakeGithub, url: &str) -> Got {
        call(gh, Some(gh.token()), "GET", url, None, &[]).await
    }

    async fn send(gh: &FakeGithub, method: &str, path: &str, body: Value) -> Got {
        call(gh, Some(gh.token()), method, path, Some(body), &[]).await
    }

    /// A fake with `acme/widget` on a bare origin holding `main`; answers the scratch clone to push from.
    fn fake_with_origin(dir: &Path) -> (FakeGithub, PathBuf, PathBuf) {
        let work = git_repo(dir, "work");
        let origin = dir.join("origin.git");
        crate::common::git(dir, &["init", "-q", "--bare", "origin.git"]);
        crate::common::git(&work, &["remote", "add", "origin", origin.to_str().unwrap()]);
        crate::common::git(&work, &["push", "-q", "origin", "main"]);
        let gh = FakeGithub::start();
        gh.add_repo(REPO, &origin);
        (gh, origin, work)
    }

    /// Commits `file` = `content` on `branch` (made from `main` if new) and pushes it; answers its sha.
    fn push_branch(work: &Path, branch: &str, file: &str, content: &str) -> String {
        let git = |args: &[&str]| crate::common::git(work, args);
        let start = if git(&["branch", "--list", branch]).is_empty() { "main" } else { branch };
        git(&["checkout", "-q", "-B", branch, start]);
        std::fs::write(work.join(file), content).unwrap();
        git(&["add", file]);
        git(&["commit", "-q", "-m", &format!("{branch}: {file}")]);
        git(&["push", "-q", "origin", branch]);
        git(&["rev-parse", branch])
    }

    #[test]
    fn sign_matches_the_documented_test_vector() {
        let signature = FakeGithub::sign("It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(signature, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
    }

    #[actix_web::test]
    async fn issues_list_with_prs_labels_since_etags_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let (gh, _origin, _work) = fake_with_origin(dir.path());
        let bug = gh.add_issue("acme/widget", "Bug", "it breaks", &["kiln", "bug"]);
        let pr = gh.add_pull("acme/widget", "feature", "main", "A PR");
        let plain = gh.add_issue("acme/widget", "Plain", "", &[]);
        assert_eq!((bug, pr, plain), (1, 2, 3), "issues and PRs share one number sequence");
        gh.label("acme/widget", pr, "Kiln");
        let url = "/repos/acme/widget/issues?labels=kiln&state=open&sort=created&direction=asc&per_page=100";
        let got = get(&gh, url).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.numbers(), vec![1, 2], "labelled issue and PR, oldest first; labels compared without case");
        assert!(got.body[0].get("pull_request").is_none());
        assert_eq!(got.body[1]["pull_request"]["html_url"], "https://github.com/acme/widget/pull/2");
        assert_eq!(get(&gh, "/repos/acme/widget/issues").await.numbers(), vec![3, 2, 1], "newest first by default");
        assert_eq!(get(&gh, "/repos/acme/widget/issues?labels=kiln,bug").await.numbers(), vec![1], "every label must be on it");
        assert_eq!(get(&gh, "/repos/acme/widget/issues?since=2999-01-01T00:00:00Z").await.numbers(), Vec::<u64>::new());
        assert_eq!(get(&gh, "/repos/acme/widget/issues?since=yesterday").await.status, 422);
        // Unchanged: a free 304.
        let etag = got.header("etag").to_string();
        let before = gh.rate_limit_remaining();
        let again = call(&gh, Some(gh.token()), "GET", url, None, &[("If-None-Match", &etag)]).await;
        assert_eq!((again.status, gh.rate_limit_remaining()), (304, before));
        // A comment is a 201 and changes the issue, so the list changes too.
        let c = send(&gh, "POST", "/repos/acme/widget/issues/1/comments", json!({"body": "hello"})).await;
        assert_eq!(c.status, 201, "{:?}", c.body);
        assert!(c.body["html_url"].as_str().unwrap().starts_with("https://github.com/acme/widget/issues/1#issuecomment-"));
        assert_eq!(send(&gh, "POST", "/repos/acme/widget/issues/1/comments", json!({})).await.status, 422);
        assert_eq!(send(&gh, "POST", "/repos/acme/widget/issues/99/comments", json!({"body": "x"})).await.status, 404);
        assert_eq!(get(&gh, "/repos/acme/widget/issues/1/comments").await.body[0]["body"], "hello");
        let changed = call(&gh, Some(gh.token()), "GET", url, None, &[("If-None-Match", &etag)]).await;
        assert_eq!(changed.status, 200, "a comment bumps updated_at");
        assert_eq!(parse_rfc3339(&rfc3339(1_795_000_123)), Some(1_795_000_123));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[actix_web::test]
    async fn pulls_page_through_250_with_link_headers() {
        let dir = tempdir();
        let (gh, _, _) = fake_with_origin(dir.path());
        for i in 1..=250 {
            assert_eq!(gh.add_pull(REPO, &format!("feature/{i}"), "main", &format!("PR {i}")), i);
        }
        let first = get(&gh, "/repos/acme/widget/pulls?state=all&per_page=100").await;
        assert_eq!(first.status, 200, "{first:?}");
        assert_eq!(first.numbers(), (151..=250).rev().collect::<Vec<_>>(), "newest first");
        let base = format!("{}/repos/acme/widget/pulls", gh.url);
        assert_eq!(first.link("next").unwrap(), format!("{base}?state=all&per_page=100&page=2"));
        assert_eq!(first.link("last").unwrap(), format!("{base}?state=all&per_page=100&page=3"));
        assert_eq!((first.link("prev"), first.link("first")), (None, None));
        let middle = get(&gh, &first.link("next").unwrap()).await;
        for rel in ["prev", "next", "last", "first"] {
            assert!(middle.link(rel).is_some(), "no rel={rel} in {}", middle.header("link"));
        }

        // The list leaves out what only GET on one PR has (§3.2).
        let pr = &first.body[0];
        for absent in ["mergeable", "mergeable_state", "merged", "merge_commit_sha", "commits"] {
            assert!(pr.get(absent).is_none(), "{absent} in a list item");
        }
        let shown = pick(pr, &["/head/label", "/user/login", "/state"]);
        assert_eq!(shown, json!({"/head/label": "acme:feature/250", "/user/login": "octocat", "/state": "open"}));
        assert!(pr["updated_at"].as_str().unwrap().ends_with('Z') && pr["merged_at"].is_null() && pr["labels"].is_array());

        // Following `next` with the default page size sees every PR once.
        let (mut seen, mut url, mut pages) = (Vec::new(), Some("/repos/acme/widget/pulls?state=all".to_string()), 0);
        while let Some(next) = url {
            let page = get(&gh, &next).await;
            seen.extend(page.numbers());
            (url, pages) = (page.link("next"), pages + 1);
        }
        assert_eq!((pages, seen), (9, (1..=250).rev().collect::<Vec<_>>()));

        let capped = get(&gh, "/repos/acme/widget/pulls?per_page=500").await;
        assert_eq!((capped.numbers().len(), capped.link("last").unwrap().ends_with("page=3")), (100, true));
        gh.close_externally(REPO, 7);
        let closed = get(&gh, "/repos/acme/widget/pulls?state=closed").await;
        assert_eq!((closed.numbers(), closed.header("link")), (vec![7], ""));
        assert_eq!(get(&gh, "/repos/acme/widget/pulls?head=acme:feature/42").await.numbers(), vec![42]);
        // GitHub ignores a head without its owner: every open PR comes back.
        assert_eq!(get(&gh, "/repos/acme/widget/pulls?head=feature/42&per_page=100").await.numbers().len(), 100);
    }

    #[actix_web::test]
    async fn etag_then_304_spends_no_rate_limit() {
        let dir = tempdir();
        let (gh, _, _) = fake_with_origin(dir.path());
        gh.add_pull(REPO, "feature/a", "main", "A");
        let path = "/repos/acme/widget/pulls?state=all";
        let first = get(&gh, path).await;
        let etag = first.header("etag").to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong etag: {etag}");
        assert_eq!((first.header("x-ratelimit-remaining"), first.header("x-ratelimit-used")), ("4999", "1"));
        assert_eq!(gh.rate_limit_remaining(), 4999);
        assert_eq!((first.header("x-ratelimit-limit"), first.header("x-ratelimit-resource")), ("5000", "core"));
        assert!(first.header("x-ratelimit-reset").parse::<u64>().unwrap() > now());

        let cached = call(&gh, Some(gh.token()), "GET", path, None, &[("if-none-match", &etag)]).await;
        assert_eq!((cached.status, cached.text.as_str(), cached.header("etag")), (304, "", etag.as_str()));
        assert_eq!((cached.header("x-ratelimit-remaining"), gh.rate_limit_remaining()), ("4999", 4999));
        let last = gh.requests().pop().unwrap();
        assert_eq!(last, Request { method: "GET".into(), path: path.into(), status: 304, if_none_match: true });

        gh.merge_externally(REPO, 1);
        let changed = call(&gh, Some(gh.token()), "GET", path, None, &[("if-none-match", &etag)]).await;
        assert_eq!((changed.status, &changed.body[0]["state"], gh.rate_limit_remaining()), (200, &json!("closed"), 4998));
        assert_ne!(changed.header("etag"), etag);
        assert!(changed.body[0]["merged_at"].is_string());

        let pr = get(&gh, "/repos/acme/widget/pulls/1").await;
        let again = call(&gh, Some(gh.token()), "GET", "/repos/acme/widget/pulls/1", None, &[("if-none-match", pr.header("etag"))]).await;
        assert_eq!((pr.status, again.status, gh.rate_limit_remaining()), (200, 304, 4997));
    }

    #[actix_web::test]
    async fn requests_without_the_token_get_401() {
        let dir = tempdir();
        let (gh, _, _) = fake_with_origin(dir.path());
        for token in [None, Some("ghp_wrong")] {
            let got = call(&gh, token, "GET", "/repos/acme/widget/pulls", None, &[]).await;
            assert_eq!((got.status, got.body["message"].as_str()), (401, Some("Bad credentials")), "{got:?}");
            assert!(got.body["documentation_url"].is_string());
            assert_eq!(got.header("x-ratelimit-remaining"), "5000");
        }
        let scheme = call(&gh, None, "GET", "/repos/acme/widget/pulls", None, &[("authorization", &format!("token {}", gh.token()))]).await;
        assert_eq!(scheme.status, 200, "the `token` scheme works too");
        let unknown = get(&gh, "/repos/acme/nothing/pulls").await;
        assert_eq!((unknown.status, unknown.body["message"].as_str()), (404, Some("Not Found")));
        assert_eq!(gh.rate_limit_remaining(), 4998, "only the authenticated requests spent");
    }

    #[actix_web::test]
    async fn injected_429_and_an_exhausted_limit() {
        let dir = tempdir();
        let (gh, _, _) = fake_with_origin(dir.path());
        gh.fail_next(2, 429, 7);
        for _ in 0..2 {
            let got = get(&gh, "/repos/acme/widget/pulls").await;
            assert_eq!((got.status, got.header("retry-after"), got.header("x-ratelimit-remaining")), (429, "7", "5000"), "{got:?}");
            assert!(got.body["message"].as_str().unwrap().contains("secondary rate limit"));
        }
        assert_eq!(get(&gh, "/repos/acme/widget/pulls").await.status, 200);

        gh.set_rate_limit_remaining(1);
        assert_eq!(get(&gh, "/repos/acme/widget/pulls").await.status, 200);
        let over = get(&gh, "/repos/acme/widget/pulls").await;
        assert_eq!((over.status, over.header("x-ratelimit-remaining")), (403, "0"), "{over:?}");
        assert!(over.body["message"].as_str().unwrap().contains("API rate limit exceeded"));
        let limit = get(&gh, "/rate_limit").await;
        let spent = pick(&limit.body, &["/resources/core/remaining", "/rate/used"]);
        assert_eq!(spent, json!({"/resources/core/remaining": 0, "/rate/used": 5000}));
        let statuses: Vec<u16> = gh.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![429, 429, 200, 200, 403, 200]);
    }

    #[actix_web::test]
    async fn create_pull_and_its_three_422s() {
        let dir = tempdir();
        let (gh, _, work) = fake_with_origin(dir.path());
        let sha = push_branch(&work, "orch/task-1", "a.txt", "a\n");
        crate::common::git(&work, &["push", "-q", "origin", "main:refs/heads/same"]);
        let body = |head: &str| json!({"title": "Task 1", "head": head, "base": "main", "body": "Done.", "maintainer_can_modify": true});

        let created = send(&gh, "POST", "/repos/acme/widget/pulls", body("orch/task-1")).await;
        assert_eq!(created.status, 201, "{created:?}");
        let pr = &created.body;
        let main = crate::common::git(&work, &["rev-parse", "main"]);
        let fields = ["/number", "/state", "/draft", "/user/login", "/head/sha", "/base/sha", "/merged", "/mergeable", "/mergeable_state"];
        assert_eq!(
            pick(pr, &fields),
            json!({"/number": 1, "/state": "open", "/draft": false, "/user/login": BOT, "/head/sha": sha, "/base/sha": main,
                   "/merged": false, "/mergeable": true, "/mergeable_state": "clean"})
        );
        let counts = pick(pr, &["/commits", "/additions", "/deletions", "/changed_files"]);
        assert_eq!(counts, json!({"/commits": 1, "/additions": 1, "/deletions": 0, "/changed_files": 1}));

        let missing = send(&gh, "POST", "/repos/acme/widget/pulls", body("no-such-branch")).await;
        assert_eq!((missing.status, &missing.body["message"]), (422, &json!("Validation Failed")));
        assert_eq!(missing.body["errors"], json!([{"resource": "PullRequest", "field": "head", "code": "invalid"}]));
        let twice = send(&gh, "POST", "/repos/acme/widget/pulls", body("acme:orch/task-1")).await;
        let message = "A pull request already exists for acme:orch/task-1.";
        assert_eq!(twice.status, 422);
        assert_eq!(twice.body["errors"], json!([{"resource": "PullRequest", "code": "custom", "message": message}]));
        let empty = send(&gh, "POST", "/repos/acme/widget/pulls", body("same")).await;
        assert_eq!((empty.status, &empty.body["errors"][0]["message"]), (422, &json!("No commits between main and same")));

        // A push moves head.sha (and updated_at) on the next read.
        let moved = push_branch(&work, "orch/task-1", "b.txt", "b\n");
        let pr = get(&gh, "/repos/acme/widget/pulls/1").await;
        assert_eq!((&pr.body["head"]["sha"], &pr.body["commits"]), (&json!(moved), &json!(2)));
        assert_ne!(pr.body["updated_at"], created.body["updated_at"]);
        assert_eq!(gh.pull(REPO, 1)["head"]["sha"], json!(moved));
    }

    #[actix_web::test]
    async fn merge_refuses_a_moved_head_then_merges_for_real() {
        let dir = tempdir();
        let (gh, origin, work) = fake_with_origin(dir.path());
        let git = |args: &[&str]| crate::common::git(&origin, args);
        let (head, main_before) = (push_branch(&work, "orch/task-1", "a.txt", "a\n"), git(&["rev-parse", "main"]));
        let create = |n: u32| json!({"title": format!("Task {n}"), "head": format!("orch/task-{n}"), "base": "main"});
        assert_eq!(send(&gh, "POST", "/repos/acme/widget/pulls", create(1)).await.status, 201);
        let merge = "/repos/acme/widget/pulls/1/merge";

        let stale = send(&gh, "PUT", merge, json!({"merge_method": "squash", "sha": main_before})).await;
        assert_eq!((stale.status, &stale.body["message"]), (409, &json!("Head branch was modified. Review and try the merge again.")));
        assert_eq!(git(&["rev-parse", "main"]), main_before, "a 409 writes nothing");

        let merged = send(&gh, "PUT", merge, json!({"merge_method": "squash", "sha": head, "commit_title": "Task 1 (#1)"})).await;
        assert_eq!((merged.status, &merged.body["merged"]), (200, &json!(true)), "{merged:?}");
        assert_eq!(merged.body["message"], "Pull Request successfully merged");
        let squashed = merged.body["sha"].as_str().unwrap().to_string();
        assert_eq!(git(&["rev-parse", "main"]), squashed, "main moved in the bare repository");
        assert_eq!(git(&["rev-list", "--parents", "-n1", &squashed]), format!("{squashed} {main_before}"), "a squash has one parent");
        assert_eq!(git(&["show", "main:a.txt"]), "a");
        assert_eq!(git(&["log", "-1", "--format=%s|%an", "main"]), "Task 1 (#1)|GitHub");
        let after = gh.pull(REPO, 1);
        assert_eq!(
            pick(&after, &["/state", "/merged", "/merge_commit_sha", "/head/sha", "/mergeable"]),
            json!({"/state": "closed", "/merged": true, "/merge_commit_sha": squashed, "/head/sha": head, "/mergeable": null})
        );
        assert_eq!(send(&gh, "PUT", merge, json!({})).await.status, 405, "a merged PR is not mergeable");

        // A merge commit has two parents; a conflicting PR is not mergeable.
        let second = push_branch(&work, "orch/task-2", "b.txt", "b\n");
        send(&gh, "POST", "/repos/acme/widget/pulls", create(2)).await;
        let merged = send(&gh, "PUT", "/repos/acme/widget/pulls/2/merge", json!({"merge_method": "merge"})).await;
        let sha = merged.body["sha"].as_str().unwrap();
        assert_eq!(git(&["rev-list", "--parents", "-n1", "main"]), format!("{sha} {squashed} {second}"));
        push_branch(&work, "orch/task-3", "a.txt", "conflicting\n");
        send(&gh, "POST", "/repos/acme/widget/pulls", create(3)).await;
        assert_eq!((&gh.pull(REPO, 3)["mergeable"], &gh.pull(REPO, 3)["mergeable_state"]), (&json!(false), &json!("dirty")));
        gh.set_mergeable(REPO, 3, None);
        assert_eq!((&gh.pull(REPO, 3)["mergeable"], &gh.pull(REPO, 3)["mergeable_state"]), (&Value::Null, &json!("unknown")));
        let refused = send(&gh, "PUT", "/repos/acme/widget/pulls/3/merge", json!({"merge_method": "squash"})).await;
        assert_eq!((refused.status, &refused.body["message"]), (405, &json!("Pull Request is not mergeable")));
        assert_eq!(git(&["rev-parse", "main"]), sha);
    }

    #[actix_web::test]
    async fn check_runs_combined_status_and_reviews() {
        let dir = tempdir();
        let (gh, _, work) = fake_with_origin(dir.path());
        let sha = push_branch(&work, "orch/task-1", "a.txt", "a\n");
        let number = gh.add_pull(REPO, "orch/task-1", "main", "Task 1");
        let status = |rev: &str| format!("/repos/acme/widget/commits/{rev}/status");
        let none = get(&gh, &status(&sha)).await;
        assert_eq!(none.body, json!({"state": "pending", "sha": sha, "total_count": 0, "statuses": [], "repository": {"full_name": REPO}}));

        gh.add_check_run(REPO, &sha, "test", "completed", Some("failure"), "2 failed");
        gh.add_check_run(REPO, &sha, "test", "completed", Some("success"), "all passed");
        gh.add_check_run(REPO, &sha, "lint", "in_progress", None, "");
        let runs = get(&gh, "/repos/acme/widget/commits/orch%2Ftask-1/check-runs").await;
        assert_eq!((runs.status, &runs.body["total_count"]), (200, &json!(2)), "{runs:?}");
        let (lint, test) = (&runs.body["check_runs"][0], &runs.body["check_runs"][1]);
        let fields = ["/name", "/status", "/conclusion", "/completed_at"];
        assert_eq!(pick(lint, &fields), json!({"/name": "lint", "/status": "in_progress", "/conclusion": null, "/completed_at": null}));
        let fields = ["/conclusion", "/output/summary", "/head_sha", "/app/slug"];
        assert_eq!(
            pick(test, &fields),
            json!({"/conclusion": "success", "/output/summary": "all passed", "/head_sha": sha, "/app/slug": "github-actions"})
        );
        for field in ["id", "started_at", "completed_at", "html_url", "details_url"] {
            assert!(!test[field].is_null(), "check run without {field}");
        }
        let all = get(&gh, &format!("/repos/acme/widget/commits/{sha}/check-runs?filter=all&check_name=test")).await;
        assert_eq!(all.body["total_count"], 2);

        gh.set_status(REPO, &sha, "ci/build", "success", "built");
        gh.set_status(REPO, &sha, "ci/deploy", "pending", "waiting");
        let pending = get(&gh, &status("orch/task-1")).await;
        assert_eq!((&pending.body["state"], &pending.body["total_count"]), (&json!("pending"), &json!(2)));
        let deploy = &pending.body["statuses"][0];
        let fields = ["/context", "/state", "/description"];
        assert_eq!(pick(deploy, &fields), json!({"/context": "ci/deploy", "/state": "pending", "/description": "waiting"}));
        assert!(deploy["id"].is_u64() && deploy["target_url"].is_null() && deploy["updated_at"].is_string());
        gh.set_status(REPO, &sha, "ci/deploy", "failure", "broke");
        let failed = get(&gh, &status(&sha)).await;
        assert_eq!((&failed.body["state"], &failed.body["total_count"]), (&json!("failure"), &json!(2)));
        gh.set_status(REPO, &sha, "ci/deploy", "success", "done");
        assert_eq!(get(&gh, &status(&sha)).await.body["state"], "success");
        assert_eq!(get(&gh, &status("nope")).await.status, 422);

        gh.add_review(REPO, number, "alice", "CHANGES_REQUESTED");
        gh.add_review(REPO, number, "alice", "APPROVED");
        let reviews = get(&gh, &format!("/repos/acme/widget/pulls/{number}/reviews")).await;
        let states: Vec<_> = reviews.body.as_array().unwrap().iter().map(|r| (r["user"]["login"].clone(), r["state"].clone())).collect();
        assert_eq!(states, vec![(json!("alice"), json!("CHANGES_REQUESTED")), (json!("alice"), json!("APPROVED"))]);
        assert!(reviews.body[1]["id"].is_u64() && reviews.body[1]["submitted_at"].is_string());
        assert_eq!(reviews.body[1]["commit_id"], json!(sha));
        assert_eq!(get(&gh, "/repos/acme/widget/pulls/99/reviews").await.status, 404);
    }
}

// ---------------------------------------------------------------------------
// Actions job logs (kept apart from the rest: the reactions' `ci_failed` reads them).
//
// On GitHub a check run made by Actions (`app.slug: github-actions`) is one job of
// a workflow run: its id is the job's id, and its `details_url`/`html_url` read
// `https://github.com/{owner}/{repo}/actions/runs/{run_id}/job/{job_id}`.
// `GET /repos/{o}/{r}/actions/jobs/{job_id}/logs` answers `302` with a short-lived
// signed `Location` on another host, which wants no token; a token without
// `actions:read` gets `403 Resource not accessible by …`; a job with no log `404`.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Actions {
    /// Whether the token has `actions:read`.
    read: bool,
    /// (repo, job id) → the job's log.
    logs: HashMap<(String, u64), String>,
    /// Signed blob name → log, handed out by a 302.
    blobs: HashMap<String, String>,
    /// Where the 302 points instead of the fake's own base URL (a storage host).
    blob_base: Option<String>,
}

impl Actions {
    fn job_logs(&mut self, base: &str, repo: &str, id: &str) -> Answer {
        if !self.read {
            return error(403, "Resource not accessible by personal access token");
        }
        let Some(log) = id.parse::<u64>().ok().and_then(|id| self.logs.get(&(repo.to_string(), id))) else { return not_found() };
        let blob = format!("{}?sig={}", hex::encode(rand::random::<[u8; 8]>()), hex::encode(rand::random::<[u8; 16]>()));
        self.blobs.insert(blob.split('?').next().unwrap_or_default().to_string(), log.clone());
        let base = self.blob_base.as_deref().unwrap_or(base);
        Answer { status: 302, body: None, headers: vec![("location", format!("{base}/_blobs/{blob}"))] }
    }

    /// The signed URL: no token wanted (one sent is refused), the log as plain text.
    fn blob(&self, name: &str, call: &Call) -> Answer {
        if call.auth.is_some() {
            return error(403, "Server failed to authenticate the request: a bearer token was sent to a signed URL");
        }
        match self.blobs.get(name) {
            Some(log) if call.query.starts_with("sig=") => json_answer(200, Value::String(log.clone())),
            _ => not_found(),
        }
    }
}

impl FakeGithub {
    /// Adds a failed check run made by GitHub Actions, as GitHub shows one (its id is
    /// the job's id; `details_url` names the run and the job), with `log` as the
    /// job's log; answers the job id. Its `output` carries only a title and summary.
    pub fn add_failed_actions_job(&self, full_name: &str, sha: &str, name: &str, summary: &str, log: &str) -> u64 {
        let id = self.with_repo(full_name, |repo| {
            let (at, id, run) = (rfc3339(repo.clock.tick()), next_id(), next_id());
            let url = format!("https://github.com/{full_name}/actions/runs/{run}/job/{id}");
            repo.check_runs.push(json!({
                "id": id, "name": name, "head_sha": sha, "status": "completed", "conclusion": "failure",
                "external_id": format!("{:032x}", id), "started_at": at, "completed_at": at, "html_url": url, "details_url": url,
                "output": {"title": format!("{name} failed"), "summary": summary, "text": null, "annotations_count": 0},
                "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
            }));
            id
        });
        self.state().actions.logs.insert((full_name.to_string(), id), log.to_string());
        id
    }

    /// Makes the job-log 302 point at `base` (e.g. the fake under another host
    /// name) instead of the fake's own URL.
    pub fn set_blob_base(&self, base: Option<&str>) {
        self.state().actions.blob_base = base.map(str::to_string);
    }

    /// Whether the token may read Actions (`actions:read`); on by default.
    pub fn set_actions_read(&self, allowed: bool) {
        self.state().actions.read = allowed;
    }
}
