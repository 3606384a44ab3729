//! A fake of the GitHub REST API for Kiln's tests: a real HTTP server on
//! 127.0.0.1 (ephemeral port) whose repositories are real bare git repositories,
//! so creating and merging a pull request does to git what GitHub would.
//!
//! Where each behaviour comes from (PROTOCOLS.md §3):
//! - §3.1: `Authorization: Bearer <token>` (or `token <token>`) with the one token;
//!   anything else is `401 Bad credentials`. Errors are `{"message", "documentation_url", "status"}`.
//! - §3.2: the PR list filters on `state`, `head=owner:branch`, `base`, `sort`, `direction`,
//!   and leaves out `mergeable`, `mergeable_state`, `merged`, `merge_commit_sha` and the counts.
//!   A `head` without `owner:` is silently ignored, as GitHub does (hub4j/github-api#538).
//! - §3.3: one PR adds those fields; `mergeable` comes from `git merge-tree` unless a test
//!   sets it (`null` = still computing). Head and base shas are read from git, so a push moves them.
//! - §3.4: create, with the 422s for a head that is no branch, an open PR for the same head and
//!   base, and no commits between base and head.
//! - §3.5: merge: 405 when not open or not mergeable, 409 when `sha` is not the head; `merge` and
//!   `squash` are written with `git merge-tree` + `git commit-tree` + `git update-ref`.
//! - §3.6: check runs (`filter=latest` keeps the newest per name) and the combined status
//!   (`pending` with `total_count: 0` when there is none); §3.3's reviews.
//! - §3.7: branches, never protected.
//! - §3.8: a `link` header (prev, next, last, first, as GitHub omits the ones that do not apply)
//!   keeping the request's other query parameters; `per_page` defaults to 30, at most 100.
//! - §3.9: `x-ratelimit-*` on every answer; 5000 to spend, one per authenticated request;
//!   `403 API rate limit exceeded` at 0; `fail_next` injects secondary limits with `retry-after`;
//!   `GET /rate_limit` is free.
//! - §3.10: every `200` to a GET carries a strong ETag of its body; a matching `If-None-Match`
//!   answers `304` with no body and spends nothing.
//! - §3.11: [`FakeGithub::sign`] makes `X-Hub-Signature-256`.
//!
//! Not faked: forks (`head` from another owner), `rebase` merges that are not a fast-forward
//! (405), webhook delivery, GraphQL, the hourly reset of the limit, and `since`/cursor paging.

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

/// One request the fake answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    /// The path with its query, as sent: `/repos/acme/widget/pulls?state=all`.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// Whether it carried `If-None-Match`.
    pub if_none_match: bool,
}

/// The running fake. Stops on drop.
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
    clock: Clock,
}

/// Timestamps and ids. Every change gets a later second than the one before,
/// so `updated_at` always moves even when two changes share a wall-clock second.
#[derive(Default)]
struct Clock {
    last: u64,
    next_id: u64,
}

struct Repo {
    full_name: String,
    origin: PathBuf,
    pulls: Vec<Pull>,
    check_runs: Vec<CheckRun>,
    statuses: Vec<Status>,
    reviews: Vec<Review>,
}

struct Pull {
    number: u64,
    title: String,
    body: String,
    user: String,
    head_ref: String,
    base_ref: String,
    /// The last sha seen in git; frozen once the PR is closed, as on GitHub.
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
}

struct CheckRun {
    id: u64,
    sha: String,
    name: String,
    status: String,
    conclusion: Option<String>,
    summary: String,
    started_at: u64,
    completed_at: Option<u64>,
}

struct Status {
    id: u64,
    sha: String,
    context: String,
    state: String,
    description: String,
    at: u64,
}

struct Review {
    id: u64,
    number: u64,
    user: String,
    state: String,
    commit_id: String,
    at: u64,
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
            clock: Clock::default(),
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
        let repo = Repo {
            full_name: full_name.to_string(),
            origin: origin.to_path_buf(),
            pulls: Vec::new(),
            check_runs: Vec::new(),
            statuses: Vec::new(),
            reviews: Vec::new(),
        };
        self.state().repos.insert(full_name.to_string(), repo);
    }

    /// Adds an open pull request that belongs to no task, by `octocat`: head
    /// `head_ref` (need not exist in git), base `base`. Answers its number.
    pub fn add_pull(&self, full_name: &str, head_ref: &str, base: &str, title: &str) -> u64 {
        self.with_repo(full_name, |repo, clock| {
            let (head_sha, base_sha) = (made_up_sha(head_ref), made_up_sha(base));
            repo.push_pull(clock, "octocat", head_ref, base, head_sha, base_sha, title, "", false)
        })
    }

    /// Adds a check run on `sha`; `status` `completed` also sets `completed_at`.
    /// Adding one with a name already used is a re-run: `filter=latest` shows the newer.
    pub fn add_check_run(&self, full_name: &str, sha: &str, name: &str, status: &str, conclusion: Option<&str>, summary: &str) {
        self.with_repo(full_name, |repo, clock| {
            let at = clock.tick();
            repo.check_runs.push(CheckRun {
                id: clock.id(),
                sha: sha.to_string(),
                name: name.to_string(),
                status: status.to_string(),
                conclusion: conclusion.map(str::to_string),
                summary: summary.to_string(),
                started_at: at,
                completed_at: (status == "completed").then_some(at),
            });
        })
    }

    /// Sets the commit status `context` on `sha` (replacing an earlier one with that context).
    pub fn set_status(&self, full_name: &str, sha: &str, context: &str, state: &str, description: &str) {
        self.with_repo(full_name, |repo, clock| {
            repo.statuses.retain(|s| !(s.sha == sha && s.context == context));
            let (at, id) = (clock.tick(), clock.id());
            let (sha, context, state, description) = (sha.into(), context.into(), state.into(), description.into());
            repo.statuses.push(Status { id, sha, context, state, description, at });
        })
    }

    /// Adds a review of PR `number` on its current head (which bumps the PR's `updated_at`).
    pub fn add_review(&self, full_name: &str, number: u64, user: &str, state: &str) {
        self.with_repo(full_name, |repo, clock| {
            let at = clock.tick();
            let pull = repo.pull_mut(number);
            pull.updated_at = at;
            let commit_id = pull.head_sha.clone();
            let (id, user, state) = (clock.id(), user.to_string(), state.to_string());
            repo.reviews.push(Review { id, number, user, state, commit_id, at });
        })
    }

    /// Sets what GET on the PR answers for `mergeable` (`None` is `null`, "still computing");
    /// `Some(false)` also makes a merge answer 405.
    pub fn set_mergeable(&self, full_name: &str, number: u64, mergeable: Option<bool>) {
        self.with_repo(full_name, |repo, _| repo.pull_mut(number).mergeable = Some(mergeable))
    }

    /// Marks a PR merged outside Kiln (bumps updated_at and the list's ETag). When
    /// its branches are in git and merge cleanly, a merge commit really lands on the
    /// base; otherwise only the PR changes, with the head as `merge_commit_sha`.
    pub fn merge_externally(&self, full_name: &str, number: u64) {
        self.with_repo(full_name, |repo, clock| {
            let i = repo.index(number).expect("no such pull");
            let sha = repo.merge_in_git(&repo.pulls[i], "merge", None, None).unwrap_or_else(|_| repo.pulls[i].head_sha.clone());
            repo.mark_merged(i, sha, clock.tick());
        })
    }

    /// Closes a PR without merging it, outside Kiln (bumps updated_at and the list's ETag).
    pub fn close_externally(&self, full_name: &str, number: u64) {
        self.with_repo(full_name, |repo, clock| {
            let at = clock.tick();
            let pull = repo.pull_mut(number);
            (pull.open, pull.closed_at, pull.updated_at) = (false, Some(at), at);
        })
    }

    /// The full PR object, as `GET /repos/{o}/{r}/pulls/{n}` answers it.
    pub fn pull(&self, full_name: &str, number: u64) -> Value {
        let base = self.url.clone();
        self.with_repo(full_name, |repo, _| {
            let i = repo.index(number).expect("no such pull");
            repo.pull_json(&base, &repo.pulls[i], true)
        })
    }

    /// The next `count` API requests answer `status` (403 or 429) with
    /// `retry-after: secs` and the current `x-ratelimit-remaining` (a secondary limit).
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
    fn with_repo<T>(&self, full_name: &str, f: impl FnOnce(&mut Repo, &mut Clock) -> T) -> T {
        let mut state = self.state();
        let State { repos, clock, .. } = &mut *state;
        let repo = repos.get_mut(full_name).unwrap_or_else(|| panic!("fake github: no repo {full_name}"));
        repo.refresh(clock);
        f(repo, clock)
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

/// The one handler: everything is routed by hand on the blocking pool, since most answers run git.
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
    let status = actix_web::http::StatusCode::from_u16(answer.status).unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    for (name, value) in answer.headers {
        res.insert_header((name, value));
    }
    match answer.body {
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
    /// Authentication, injected failures and the rate limit (§3.9), then the route, then ETags (§3.10).
    fn answer(&mut self, token: &str, call: &Call) -> Answer {
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
            return error(403, "API rate limit exceeded for user ID 1. (But here's the good news: Authenticated requests get a higher rate limit.)");
        }
        let mut answer = self.route(call);
        if let (Some(body), "GET", 200) = (&answer.body, call.method.as_str(), answer.status) {
            let etag = format!("\"{}\"", hex::encode(sha2::Sha256::digest(body.to_string().as_bytes())));
            let matches = call.if_none_match.as_deref().is_some_and(|h| {
                h.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == "*" || t == etag)
            });
            if matches {
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
        let State { base, repos, clock, .. } = self;
        let Some(repo) = repos.get_mut(&format!("{owner}/{name}")) else { return not_found() };
        repo.refresh(clock);
        let q = web::Query::<HashMap<String, String>>::from_query(&call.query).map(|q| q.into_inner()).unwrap_or_default();
        let page = |items: Vec<Value>| paginate(base, call, &q, items);
        match (call.method.as_str(), rest) {
            ("GET", ["pulls"]) => page(repo.list_pulls(base, &q)),
            ("POST", ["pulls"]) => repo.create_pull(base, clock, &call.body),
            ("GET", ["pulls", n]) => match repo.find(n) {
                Some(i) => ok(repo.pull_json(base, &repo.pulls[i], true)),
                None => not_found(),
            },
            ("PUT", ["pulls", n, "merge"]) => repo.merge_pull(clock, n, &call.body),
            ("GET", ["pulls", n, "reviews"]) => match repo.find(n) {
                Some(i) => page(repo.reviews_json(repo.pulls[i].number)),
                None => not_found(),
            },
            ("GET", ["commits", r @ .., "check-runs"]) if !r.is_empty() => repo.check_runs_json(&r.join("/"), &q),
            ("GET", ["commits", r @ .., "status"]) if !r.is_empty() => repo.combined_status(&r.join("/")),
            ("GET", ["branches"]) => page(repo.branches_json(base, &q)),
            _ => not_found(),
        }
    }
}

impl Clock {
    fn tick(&mut self) -> u64 {
        self.last = now().max(self.last + 1);
        self.last
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
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

    /// Reads the open PRs' head and base shas from git; a moved head bumps `updated_at` (a push).
    fn refresh(&mut self, clock: &mut Clock) {
        let branches = self.branches();
        for pull in self.pulls.iter_mut().filter(|p| p.open) {
            if let Some(sha) = branches.get(&pull.head_ref).filter(|s| **s != pull.head_sha) {
                (pull.head_sha, pull.updated_at) = (sha.clone(), clock.tick());
            }
            if let Some(sha) = branches.get(&pull.base_ref) {
                pull.base_sha = sha.clone();
            }
        }
    }

    /// A sha, branch or tag as a commit sha. A full sha is taken as is, so CI can
    /// be attached to commits the origin repository does not have.
    fn resolve(&self, rev: &str) -> Option<String> {
        if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(rev.to_ascii_lowercase());
        }
        self.git(&["rev-parse", "--verify", "-q", "--end-of-options", &format!("{rev}^{{commit}}")]).ok()
    }

    fn find(&self, number: &str) -> Option<usize> {
        self.index(number.parse().ok()?)
    }

    fn index(&self, number: u64) -> Option<usize> {
        self.pulls.iter().position(|p| p.number == number)
    }

    fn pull_mut(&mut self, number: u64) -> &mut Pull {
        let i = self.index(number).unwrap_or_else(|| panic!("fake github: no pull #{number}"));
        &mut self.pulls[i]
    }

    #[allow(clippy::too_many_arguments)]
    fn push_pull(&mut self, clock: &mut Clock, user: &str, head_ref: &str, base_ref: &str, head_sha: String, base_sha: String, title: &str, body: &str, draft: bool) -> u64 {
        let (number, at) = (self.pulls.len() as u64 + 1, clock.tick());
        self.pulls.push(Pull {
            number,
            title: title.to_string(),
            body: body.to_string(),
            user: user.to_string(),
            head_ref: head_ref.to_string(),
            base_ref: base_ref.to_string(),
            head_sha,
            base_sha,
            draft,
            open: true,
            mergeable: None,
            merge_commit_sha: None,
            created_at: at,
            updated_at: at,
            closed_at: None,
            merged_at: None,
        });
        number
    }

    fn mark_merged(&mut self, i: usize, sha: String, at: u64) {
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
            "id": 100_000 + p.number,
            "number": p.number,
            "state": if p.open { "open" } else { "closed" },
            "draft": p.draft,
            "title": p.title,
            "body": p.body,
            "html_url": format!("https://github.com/{}/pull/{}", self.full_name, p.number),
            "user": {"login": p.user},
            "head": {"ref": p.head_ref, "sha": p.head_sha, "label": format!("{owner}:{}", p.head_ref), "repo": repo},
            "base": {"ref": p.base_ref, "sha": p.base_sha, "label": format!("{owner}:{}", p.base_ref), "repo": repo},
            "created_at": rfc3339(p.created_at),
            "updated_at": rfc3339(p.updated_at),
            "closed_at": p.closed_at.map(rfc3339),
            "merged_at": p.merged_at.map(rfc3339),
            "labels": [],
            "requested_reviewers": [],
            "auto_merge": null,
        });
        if full {
            // A closed PR is no longer computed: GitHub answers null/unknown.
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
            let count = |args: &[&str]| self.git(args).unwrap_or_default();
            let commits: u64 = count(&["rev-list", "--count", &format!("{}..{}", p.base_sha, p.head_sha)]).parse().unwrap_or(0);
            let numstat = count(&["diff", "--numstat", &format!("{}...{}", p.base_sha, p.head_sha)]);
            let column = |n: usize| numstat.lines().filter_map(|l| l.split('\t').nth(n)?.parse::<u64>().ok()).sum::<u64>();
            let fields = json!({
                "merged": p.merged_at.is_some(),
                "mergeable": mergeable,
                "mergeable_state": mergeable_state,
                "merge_commit_sha": p.merge_commit_sha,
                "commits": commits,
                "additions": column(0),
                "deletions": column(1),
                "changed_files": numstat.lines().count(),
            });
            v.as_object_mut().expect("object").extend(fields.as_object().expect("object").clone());
        }
        v
    }

    /// §3.2: filtered and sorted, newest first by default; paged by the caller.
    fn list_pulls(&self, base: &str, q: &HashMap<String, String>) -> Vec<Value> {
        let arg = |k: &str| q.get(k).map(String::as_str);
        let head = arg("head").and_then(|h| h.split_once(':'));
        let mut pulls: Vec<&Pull> = self
            .pulls
            .iter()
            .filter(|p| match arg("state") {
                Some("all") => true,
                Some("closed") => !p.open,
                _ => p.open,
            })
            .filter(|p| head.is_none_or(|(owner, branch)| owner == self.owner() && branch == p.head_ref))
            .filter(|p| arg("base").is_none_or(|b| b == p.base_ref))
            .collect();
        let by_created = matches!(arg("sort"), None | Some("created"));
        if by_created {
            pulls.sort_by_key(|p| p.number);
        } else {
            pulls.sort_by_key(|p| (p.updated_at, p.number));
        }
        // GitHub's default direction is desc when sorting by creation, asc otherwise.
        if arg("direction").map_or(by_created, |d| d == "desc") {
            pulls.reverse();
        }
        pulls.into_iter().map(|p| self.pull_json(base, p, false)).collect()
    }

    /// §3.4: the three 422s, then a 201 with the full object.
    fn create_pull(&mut self, base: &str, clock: &mut Clock, body: &[u8]) -> Answer {
        let Ok(b) = serde_json::from_slice::<Value>(body) else { return error(400, "Problems parsing JSON") };
        let (Some(title), Some(head), Some(base_ref)) = (b["title"].as_str(), b["head"].as_str(), b["base"].as_str()) else {
            let field = ["title", "head", "base"].into_iter().find(|k| !b[k].is_string()).unwrap_or("title");
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
        let (body, draft) = (b["body"].as_str().unwrap_or_default(), b["draft"].as_bool().unwrap_or(false));
        let number = self.push_pull(clock, BOT, head_ref, base_ref, head_sha, base_sha, title, body, draft);
        let pull = &self.pulls[number as usize - 1];
        let mut answer = json_answer(201, self.pull_json(base, pull, true));
        answer.headers.push(("location", format!("{base}/repos/{}/pulls/{number}", self.full_name)));
        answer
    }

    /// §3.5: 405 unless open and mergeable, 409 on a moved head, else a real merge.
    fn merge_pull(&mut self, clock: &mut Clock, number: &str, body: &[u8]) -> Answer {
        let Some(i) = self.find(number) else { return not_found() };
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
                self.mark_merged(i, sha.clone(), clock.tick());
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

    /// Writes the merge of `p` into its base in the origin repository; answers the
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
        let target = format!("refs/heads/{}", p.base_ref);
        self.git(&["update-ref", &target, &commit, base])
            .map_err(|_| error(409, "Base branch was modified. Review and try the merge again."))?;
        Ok(commit)
    }

    /// §3.6: the runs on `rev`, newest first; `filter=latest` (the default) keeps one per name.
    fn check_runs_json(&self, rev: &str, q: &HashMap<String, String>) -> Answer {
        let Some(sha) = self.resolve(rev) else { return error(422, &format!("No commit found for SHA: {rev}")) };
        let arg = |k: &str| q.get(k).map(String::as_str);
        let mut seen = HashSet::new();
        let runs: Vec<Value> = self
            .check_runs
            .iter()
            .rev()
            .filter(|c| c.sha == sha && arg("check_name").is_none_or(|n| n == c.name))
            .filter(|c| arg("filter") == Some("all") || seen.insert(c.name.clone()))
            .filter(|c| arg("status").is_none_or(|s| s == c.status))
            .map(|c| {
                let html_url = format!("https://github.com/{}/runs/{}", self.full_name, c.id);
                json!({
                    "id": c.id, "name": c.name, "head_sha": c.sha, "status": c.status, "conclusion": c.conclusion,
                    "started_at": rfc3339(c.started_at), "completed_at": c.completed_at.map(rfc3339),
                    "html_url": html_url, "details_url": html_url,
                    "output": {"title": c.name, "summary": c.summary},
                    "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
                })
            })
            .collect();
        ok(json!({"total_count": runs.len(), "check_runs": runs}))
    }

    /// §3.6: the combined status; failure beats pending beats success, none is pending.
    fn combined_status(&self, rev: &str) -> Answer {
        let Some(sha) = self.resolve(rev) else { return error(422, &format!("No commit found for SHA: {rev}")) };
        let statuses: Vec<&Status> = self.statuses.iter().rev().filter(|s| s.sha == sha).collect();
        let any = |states: &[&str]| statuses.iter().any(|s| states.contains(&s.state.as_str()));
        let state = if any(&["failure", "error"]) {
            "failure"
        } else if statuses.is_empty() || any(&["pending"]) {
            "pending"
        } else {
            "success"
        };
        let list: Vec<Value> = statuses
            .iter()
            .map(|s| {
                json!({"id": s.id, "context": s.context, "state": s.state, "description": s.description,
                       "target_url": null, "created_at": rfc3339(s.at), "updated_at": rfc3339(s.at)})
            })
            .collect();
        ok(json!({"state": state, "sha": sha, "total_count": list.len(), "statuses": list,
                  "repository": {"full_name": self.full_name}}))
    }

    fn reviews_json(&self, number: u64) -> Vec<Value> {
        let reviews = self.reviews.iter().filter(|r| r.number == number);
        reviews
            .map(|r| {
                json!({"id": r.id, "user": {"login": r.user}, "body": "", "state": r.state, "commit_id": r.commit_id,
                       "submitted_at": rfc3339(r.at),
                       "html_url": format!("https://github.com/{}/pull/{number}#pullrequestreview-{}", self.full_name, r.id)})
            })
            .collect()
    }

    /// §3.7: every branch, sorted by name; none is protected.
    fn branches_json(&self, base: &str, q: &HashMap<String, String>) -> Vec<Value> {
        if q.get("protected").map(String::as_str) == Some("true") {
            return Vec::new();
        }
        let mut branches: Vec<(String, String)> = self.branches().into_iter().collect();
        branches.sort();
        let commit_url = |sha: &str| format!("{base}/repos/{}/commits/{sha}", self.full_name);
        branches.iter().map(|(name, sha)| json!({"name": name, "commit": {"sha": sha, "url": commit_url(sha)}, "protected": false})).collect()
    }
}

/// §3.8: one page of `items`, with a `link` header when there is more than one page.
fn paginate(base: &str, call: &Call, q: &HashMap<String, String>, items: Vec<Value>) -> Answer {
    let number = |k: &str| q.get(k).and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0);
    let per_page = number("per_page").unwrap_or(30).min(100);
    let page = number("page").unwrap_or(1);
    let last = items.len().div_ceil(per_page).max(1);
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let mut answer = ok(Value::Array(slice));
    if last > 1 {
        let kept: Vec<&str> = call.query.split('&').filter(|kv| !kv.is_empty() && !kv.starts_with("page=")).collect();
        let link = |n: usize, rel: &str| {
            let query = kept.iter().copied().chain([format!("page={n}").as_str()]).collect::<Vec<_>>().join("&");
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
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

/// A stable 40-hex "sha" for a ref git does not have.
fn made_up_sha(name: &str) -> String {
    hex::encode(sha2::Sha256::digest(name.as_bytes()))[..40].to_string()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match escaped {
            Some(b) if bytes[i] == b'%' => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Epoch seconds as GitHub writes them: `2011-01-26T19:01:12Z`.
fn rfc3339(secs: u64) -> String {
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
