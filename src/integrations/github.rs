//! A small GitHub REST client (awc): pull requests, merges, CI state, reviews,
//! and the conditional, paginated PR list the poller uses. See PROTOCOLS.md §3.
//!
//! Every request sends the bearer token, `Accept: application/vnd.github+json`,
//! a pinned `X-GitHub-Api-Version` and a `User-Agent`. Rate limits are read from
//! the `x-ratelimit-*` headers; a 403/429 that is a rate limit answers
//! `RateLimited` with how long to wait (`retry-after`, else until the reset).

use std::time::Duration;

use serde_json::{json, Value};

pub const API_VERSION: &str = "2022-11-28";
pub const DEFAULT_API_URL: &str = "https://api.github.com";

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("GitHub refused the token: {0}")]
    Unauthorized(String),
    #[error("not found on GitHub: {0}")]
    NotFound(String),
    #[error("GitHub refused the request: {0}")]
    Validation(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotMergeable(String),
    #[error("GitHub's rate limit is spent; retry in {} s", .retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error("GitHub answered {status}: {message}")]
    Http { status: u16, message: String },
    #[error("cannot reach GitHub: {0}")]
    Transport(String),
}

/// A response worth keeping: status, body, and the headers the poller needs.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Value,
    pub etag: Option<String>,
    pub next: Option<String>,
    pub remaining: Option<u64>,
}

/// One repository on GitHub, reached with one token.
#[derive(Clone)]
pub struct GitHub {
    pub api: String,
    pub token: String,
    /// `owner/name`.
    pub repo: String,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub").field("api", &self.api).field("repo", &self.repo).field("token", &"(hidden)").finish()
    }
}

impl GitHub {
    pub fn new(api: &str, token: &str, repo: &str) -> GitHub {
        GitHub { api: api.trim_end_matches('/').to_string(), token: token.to_string(), repo: repo.to_string() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/repos/{}{}", self.api, self.repo, path)
    }

    /// Sends one request. `url` may be a full URL (a `link` header's) or a path
    /// under this repository. A 304 is answered as a `Response` with status 304.
    pub async fn send(&self, method: &str, url: &str, body: Option<&Value>, etag: Option<&str>) -> Result<Response, GitHubError> {
        let url = if url.starts_with("http://") || url.starts_with("https://") { url.to_string() } else { self.url(url) };
        let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
        let method = awc::http::Method::from_bytes(method.as_bytes()).map_err(|e| GitHubError::Transport(e.to_string()))?;
        let mut req = client
            .request(method, &url)
            .bearer_auth(&self.token)
            .insert_header(("Accept", "application/vnd.github+json"))
            .insert_header(("X-GitHub-Api-Version", API_VERSION))
            .insert_header(("User-Agent", concat!("kiln/", env!("CARGO_PKG_VERSION"))));
        if let Some(tag) = etag {
            req = req.insert_header(("If-None-Match", tag));
        }
        let sent = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| GitHubError::Transport(e.to_string()))?;
        let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let status = res.status().as_u16();
        let etag = header("etag");
        let next = header("link").and_then(|l| next_link(&l));
        let remaining = header("x-ratelimit-remaining").and_then(|v| v.parse().ok());
        let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok());
        let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok());
        let bytes = res.body().limit(32 * 1024 * 1024).await.map_err(|e| GitHubError::Transport(e.to_string()))?;
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        let message = body["message"].as_str().unwrap_or("").to_string();
        let rate_limited = (status == 403 || status == 429) && (retry_after.is_some() || remaining == Some(0));
        match status {
            200..=299 | 304 => Ok(Response { status, body, etag, next, remaining }),
            _ if rate_limited => {
                let wait = retry_after.map(Duration::from_secs).unwrap_or_else(|| {
                    let now = crate::util::now_ms() / 1000;
                    Duration::from_secs(reset.map(|r| (r - now).max(1) as u64).unwrap_or(60))
                });
                Err(GitHubError::RateLimited { retry_after: wait })
            }
            401 => Err(GitHubError::Unauthorized(message)),
            404 => Err(GitHubError::NotFound(format!("{} ({})", self.repo, message))),
            405 => Err(GitHubError::NotMergeable(message)),
            409 => Err(GitHubError::Conflict(message)),
            422 => Err(GitHubError::Validation(validation_message(&body))),
            _ => Err(GitHubError::Http { status, message }),
        }
    }

    /// Opens a pull request; answers the PR object.
    pub async fn create_pull(&self, title: &str, head: &str, base: &str, body: &str, draft: bool) -> Result<Value, GitHubError> {
        let req = json!({"title": title, "head": head, "base": base, "body": body, "draft": draft, "maintainer_can_modify": true});
        Ok(self.send("POST", "/pulls", Some(&req), None).await?.body)
    }

    /// The open pull request whose head is `branch`, if there is one.
    pub async fn open_pull_for(&self, branch: &str) -> Result<Option<Value>, GitHubError> {
        let owner = self.repo.split('/').next().unwrap_or_default();
        let path = format!("/pulls?state=open&head={owner}:{branch}&per_page=100");
        let res = self.send("GET", &path, None, None).await?;
        Ok(res.body.as_array().and_then(|prs| prs.iter().find(|p| p["head"]["ref"] == branch).cloned()))
    }

    pub async fn get_pull(&self, number: i64) -> Result<Value, GitHubError> {
        Ok(self.send("GET", &format!("/pulls/{number}"), None, None).await?.body)
    }

    /// Merges with `sha` as the expected head, so a branch that moved is refused.
    pub async fn merge_pull(&self, number: i64, method: &str, sha: &str, title: &str) -> Result<Value, GitHubError> {
        let req = json!({"merge_method": method, "sha": sha, "commit_title": title});
        Ok(self.send("PUT", &format!("/pulls/{number}/merge"), Some(&req), None).await?.body)
    }

    /// One CI state from check runs and the combined status: `failure` if
    /// anything failed, `pending` if anything runs, `success` if all passed;
    /// `None` when there is no CI at all. Also answers the failed checks.
    pub async fn ci_state(&self, sha: &str) -> Result<(Option<String>, Vec<FailedCheck>), GitHubError> {
        let runs = self.send("GET", &format!("/commits/{sha}/check-runs?per_page=100"), None, None).await?.body;
        let status = self.send("GET", &format!("/commits/{sha}/status"), None, None).await?.body;
        Ok(combine_ci(&runs, &status))
    }

    /// A check run's annotations (the first 50), each as
    /// `{path, start_line, end_line, annotation_level, title, message, raw_details}`.
    pub async fn check_run_annotations(&self, run_id: i64) -> Result<Value, GitHubError> {
        Ok(self.send("GET", &format!("/check-runs/{run_id}/annotations?per_page=50"), None, None).await?.body)
    }

    /// Comments on issue `number`: posts one, answers the comment object (201).
    pub async fn create_issue_comment(&self, number: i64, body: &str) -> Result<Value, GitHubError> {
        Ok(self.send("POST", &format!("/issues/{number}/comments"), Some(&json!({"body": body})), None).await?.body)
    }

    /// The first comment on issue `number` whose body contains `needle`, reading
    /// at most ten pages of 100 (oldest first).
    pub async fn find_issue_comment(&self, number: i64, needle: &str) -> Result<Option<Value>, GitHubError> {
        let mut url = format!("/issues/{number}/comments?per_page=100");
        for _ in 0..10 {
            let res = self.send("GET", &url, None, None).await?;
            let found = res.body.as_array().and_then(|cs| cs.iter().find(|c| c["body"].as_str().is_some_and(|b| b.contains(needle))).cloned());
            if found.is_some() {
                return Ok(found);
            }
            match res.next {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(None)
    }

    /// The tail of an Actions job's log: `GET /actions/jobs/{id}/logs` answers a
    /// `302` to a short-lived signed URL on another host, which is fetched
    /// without the token (it must not leave for a host that is not GitHub's
    /// API). At most [`MAX_JOB_LOG`] bytes are read, within [`JOB_LOG_TIMEOUT`];
    /// a longer log answers `None` (its tail cannot be had without reading it
    /// all). A token without `actions:read` gets `Unauthorized`/`Http 403`, a job
    /// without a log `NotFound`: the caller does without.
    pub async fn job_log(&self, job_id: i64) -> Result<Option<Vec<u8>>, GitHubError> {
        let client = awc::Client::builder().timeout(JOB_LOG_TIMEOUT).disable_redirects().finish();
        let url = self.url(&format!("/actions/jobs/{job_id}/logs"));
        let res = client
            .get(&url)
            .bearer_auth(&self.token)
            .insert_header(("Accept", "application/vnd.github+json"))
            .insert_header(("X-GitHub-Api-Version", API_VERSION))
            .insert_header(("User-Agent", concat!("kiln/", env!("CARGO_PKG_VERSION"))))
            .send()
            .await
            .map_err(|e| GitHubError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        let res = match status {
            301 | 302 | 303 | 307 | 308 => {
                let location = res.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let target = if location.starts_with('/') { format!("{}{location}", self.api) } else { location.to_string() };
                if !(target.starts_with("https://") || target.starts_with("http://")) {
                    return Err(GitHubError::Http { status, message: "the log's redirect has no http(s) location".into() });
                }
                // Where the API sends Kiln is not trusted as the API is: a host
                // other than the API's own must be a public one (what it answers
                // goes to the agent).
                use crate::actors::repository::hosts;
                let host_of = |u: &str| hosts::target(u).map(|t| t.host.to_ascii_lowercase());
                if host_of(&target) != host_of(&self.api) {
                    let t = target.clone();
                    let checked = actix_web::rt::task::spawn_blocking(move || hosts::check_with(true, &[], &t).map(|_| ()))
                        .await
                        .map_err(|e| GitHubError::Transport(e.to_string()))?;
                    if let Err(refusal) = checked {
                        let why = match refusal {
                            hosts::Refusal::Private { host, addr } => format!("`{host}` is {addr}, a private address"),
                            hosts::Refusal::Unresolved { host, error } => format!("`{host}` does not resolve: {error}"),
                        };
                        return Err(GitHubError::Http { status, message: format!("the log's redirect was not followed: {why}") });
                    }
                }
                client
                    .get(&target)
                    .insert_header(("User-Agent", concat!("kiln/", env!("CARGO_PKG_VERSION"))))
                    .send()
                    .await
                    .map_err(|e| GitHubError::Transport(e.to_string()))?
            }
            200 => res,
            401 => return Err(GitHubError::Unauthorized("the job's log".into())),
            404 | 410 => return Err(GitHubError::NotFound(format!("{}: job {job_id}'s log", self.repo))),
            _ => return Err(GitHubError::Http { status, message: "the job's log".into() }),
        };
        if res.status().as_u16() != 200 {
            return Err(GitHubError::Http { status: res.status().as_u16(), message: "the job's log download".into() });
        }
        read_bounded(res, MAX_JOB_LOG).await
    }

    /// The review decision from the latest review of each reviewer.
    pub async fn review_decision(&self, number: i64) -> Result<Option<String>, GitHubError> {
        let reviews = self.send("GET", &format!("/pulls/{number}/reviews?per_page=100"), None, None).await?.body;
        Ok(review_decision(&reviews))
    }
}

/// The most of an Actions job log that is read (its tail is what the agent gets).
pub const MAX_JOB_LOG: usize = 16 * 1024 * 1024;
/// How long reading a job's log may take, redirect included.
pub const JOB_LOG_TIMEOUT: Duration = Duration::from_secs(20);

/// A body of at most `max` bytes; `None` when it is longer (the read stops there).
async fn read_bounded<S>(mut res: awc::ClientResponse<S>, max: usize) -> Result<Option<Vec<u8>>, GitHubError>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    use futures_util::StreamExt;
    if res.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > max) {
        return Ok(None);
    }
    let mut out = Vec::new();
    while let Some(chunk) = res.next().await {
        let chunk = chunk.map_err(|e| GitHubError::Transport(e.to_string()))?;
        if out.len() + chunk.len() > max {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// An Actions job's log as the agent gets it: its last `lines` lines, each at
/// most 300 characters, without the runner's timestamps, ANSI colours and
/// `##[group]` markers (`##[error]` reads `error:`), and without anything
/// that looks like a GitHub token.
pub fn job_log_tail(raw: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = strip_ansi(&text);
    let mut kept: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = strip_timestamp(line.trim_end_matches('\r'));
        let line = match line {
            l if l.starts_with("##[endgroup]") => continue,
            l if l.starts_with("##[group]") => l["##[group]".len()..].to_string(),
            l if l.starts_with("##[error]") => format!("error: {}", &l["##[error]".len()..]),
            l if l.starts_with("##[warning]") => format!("warning: {}", &l["##[warning]".len()..]),
            l => l.to_string(),
        };
        kept.push(line.chars().take(300).collect());
    }
    while kept.last().is_some_and(|l| l.trim().is_empty()) {
        kept.pop();
    }
    let tail = kept[kept.len().saturating_sub(lines)..].join("\n");
    crate::redact::github_tokens(&tail).into_owned()
}

/// `text` without ANSI escape sequences (CSI `ESC[…<final>`, OSC `ESC]…BEL`, and
/// two-byte escapes).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// A runner's line without its leading `2024-05-01T12:00:00.1234567Z `.
fn strip_timestamp(line: &str) -> &str {
    let b = line.as_bytes();
    let stamped = b.len() > 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[..4].iter().all(u8::is_ascii_digit);
    if !stamped {
        return line;
    }
    match line.find(' ') {
        Some(i) if line[..i].ends_with('Z') => &line[i + 1..],
        _ => line,
    }
}

/// The job id of a check run made by GitHub Actions (its `app.slug` is
/// `github-actions`): the `…/job/{id}` of its `details_url`, else the check
/// run's own id (an Actions check run's id is its job's id).
fn actions_job_id(run: &Value) -> Option<i64> {
    if run["app"]["slug"].as_str() != Some("github-actions") {
        return None;
    }
    let from_url = run["details_url"]
        .as_str()
        .and_then(|u| u.split_once("/job/"))
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|id| id.parse::<i64>().ok());
    from_url.or(run["id"].as_i64())
}

/// A failed check, for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct FailedCheck {
    pub name: String,
    pub summary: String,
    /// The run's `conclusion` (`failure`, `timed_out`, …) or the status's `state`.
    pub conclusion: String,
    /// Where to read it (http(s) only).
    pub url: Option<String>,
    /// The check run's id (for its annotations); `None` for a commit status.
    #[serde(skip)]
    pub run_id: Option<i64>,
    /// The run's `output.title` and `output.text` (the long form, often a log tail).
    #[serde(skip)]
    pub title: String,
    #[serde(skip)]
    pub text: String,
    #[serde(skip)]
    pub annotations: u64,
    /// The Actions job behind the check run (for its log); `None` for other apps.
    #[serde(skip)]
    pub job_id: Option<i64>,
}

/// Folds check runs and the combined status into one CI state.
pub fn combine_ci(runs: &Value, status: &Value) -> (Option<String>, Vec<FailedCheck>) {
    let mut failed = Vec::new();
    let mut pending = false;
    let mut seen = false;
    for run in runs["check_runs"].as_array().into_iter().flatten() {
        seen = true;
        match (run["status"].as_str(), run["conclusion"].as_str()) {
            (Some("completed"), Some("success" | "neutral" | "skipped")) => {}
            (Some("completed"), conclusion) => failed.push(FailedCheck {
                name: run["name"].as_str().unwrap_or("check").to_string(),
                summary: run["output"]["summary"].as_str().or(run["output"]["title"].as_str()).unwrap_or("").to_string(),
                conclusion: conclusion.unwrap_or("failure").to_string(),
                url: web_url(&run["html_url"]).or_else(|| web_url(&run["details_url"])),
                run_id: run["id"].as_i64(),
                title: run["output"]["title"].as_str().unwrap_or("").to_string(),
                text: run["output"]["text"].as_str().unwrap_or("").to_string(),
                annotations: run["output"]["annotations_count"].as_u64().unwrap_or(0),
                job_id: actions_job_id(run),
            }),
            _ => pending = true,
        }
    }
    // A combined status with no statuses says "pending" for repos that use only Actions.
    if status["total_count"].as_u64().unwrap_or(0) > 0 {
        seen = true;
        for s in status["statuses"].as_array().into_iter().flatten() {
            match s["state"].as_str() {
                Some("success") => {}
                Some("pending") => pending = true,
                state => failed.push(FailedCheck {
                    name: s["context"].as_str().unwrap_or("status").to_string(),
                    summary: s["description"].as_str().unwrap_or("").to_string(),
                    conclusion: state.unwrap_or("error").to_string(),
                    url: web_url(&s["target_url"]),
                    ..FailedCheck::default()
                }),
            }
        }
    }
    let state = if !failed.is_empty() {
        Some("failure")
    } else if pending {
        Some("pending")
    } else if seen {
        Some("success")
    } else {
        None
    };
    (state.map(str::to_string), failed)
}

/// A link safe to show and follow: http(s) only, and not huge.
fn web_url(v: &Value) -> Option<String> {
    v.as_str().filter(|u| (u.starts_with("https://") || u.starts_with("http://")) && u.len() <= 2000).map(str::to_string)
}

/// The most checks kept per pull request head (the rest are counted, not kept).
pub const MAX_CHECKS: usize = 100;

/// One check on a pull request's head, from a check run or a commit status, as
/// the API and the dashboard show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Check {
    /// `check_run` (GitHub Actions and Apps) or `status` (the statuses API).
    pub kind: String,
    /// The check run's name, or the status's context.
    pub name: String,
    /// A check run's `status` (`queued`, `in_progress`, `completed`, …); a
    /// status is `pending` or `completed`.
    pub status: String,
    /// A completed check run's `conclusion` (`success`, `failure`, `neutral`,
    /// `cancelled`, `skipped`, `timed_out`, `action_required`, …), or a
    /// completed status's `state` (`success`, `failure`, `error`); `null` while
    /// it runs.
    pub conclusion: Option<String>,
    /// Where to read it: the run's `html_url` (else `details_url`), the status's
    /// `target_url`. Only `http(s)` URLs are kept.
    pub url: Option<String>,
}

/// The checks of a head from its check runs and combined status, sorted by name
/// (so a re-run does not move a check), at most [`MAX_CHECKS`]; names and URLs
/// are cut to sane lengths.
pub fn checks_of(runs: &Value, status: &Value) -> Vec<Check> {
    let text = |v: &Value, max: usize| v.as_str().map(|s| s.chars().take(max).collect::<String>());
    // A link the dashboard renders: nothing but http(s), and nothing huge.
    let url = |v: &Value| {
        v.as_str()
            .filter(|u| (u.starts_with("https://") || u.starts_with("http://")) && u.len() <= 2000)
            .map(str::to_string)
    };
    let mut out = Vec::new();
    for run in runs["check_runs"].as_array().into_iter().flatten() {
        out.push(Check {
            kind: "check_run".into(),
            name: text(&run["name"], 200).unwrap_or_else(|| "check".into()),
            status: text(&run["status"], 40).unwrap_or_else(|| "queued".into()),
            conclusion: text(&run["conclusion"], 40),
            url: url(&run["html_url"]).or_else(|| url(&run["details_url"])),
        });
    }
    for s in status["statuses"].as_array().into_iter().flatten() {
        let state = text(&s["state"], 40).unwrap_or_else(|| "pending".into());
        let done = state != "pending";
        out.push(Check {
            kind: "status".into(),
            name: text(&s["context"], 200).unwrap_or_else(|| "status".into()),
            status: if done { "completed" } else { "pending" }.into(),
            conclusion: done.then_some(state),
            url: url(&s["target_url"]),
        });
    }
    out.sort_by(|a, b| a.name.to_lowercase().cmp(&b.name.to_lowercase()).then_with(|| a.kind.cmp(&b.kind)));
    out.truncate(MAX_CHECKS);
    out
}

/// `approved`, `changes_requested` or `review_required` from the latest review
/// of each reviewer (comments do not count).
pub fn review_decision(reviews: &Value) -> Option<String> {
    let mut latest: std::collections::BTreeMap<String, String> = Default::default();
    for r in reviews.as_array().into_iter().flatten() {
        let (Some(user), Some(state)) = (r["user"]["login"].as_str(), r["state"].as_str()) else { continue };
        match state {
            "APPROVED" | "CHANGES_REQUESTED" | "DISMISSED" => {
                latest.insert(user.to_string(), state.to_string());
            }
            _ => {}
        }
    }
    if latest.values().any(|s| s == "CHANGES_REQUESTED") {
        Some("changes_requested".into())
    } else if latest.values().any(|s| s == "APPROVED") {
        Some("approved".into())
    } else if latest.is_empty() {
        None
    } else {
        Some("review_required".into())
    }
}

/// The `rel="next"` URL of a `link` header.
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        rel.contains("rel=\"next\"").then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

/// `value` percent-encoded for a query string (everything but RFC 3986's
/// unreserved characters is escaped, as UTF-8 bytes).
pub fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn validation_message(body: &Value) -> String {
    let mut parts = vec![body["message"].as_str().unwrap_or("Validation Failed").to_string()];
    for e in body["errors"].as_array().into_iter().flatten() {
        if let Some(m) = e["message"].as_str() {
            parts.push(m.to_string());
        } else if let (Some(f), Some(c)) = (e["field"].as_str(), e["code"].as_str()) {
            parts.push(format!("{f} {c}"));
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("kiln"), "kiln");
        assert_eq!(query_value("good first issue"), "good%20first%20issue");
        assert_eq!(query_value("a&b=c#d"), "a%26b%3Dc%23d");
        assert_eq!(query_value("é"), "%C3%A9");
    }

    #[test]
    fn link_headers() {
        let link = r#"<https://api.github.com/r?page=2>; rel="prev", <https://api.github.com/r?page=4>; rel="next", <https://api.github.com/r?page=9>; rel="last""#;
        assert_eq!(next_link(link).as_deref(), Some("https://api.github.com/r?page=4"));
        assert_eq!(next_link(r#"<x>; rel="prev""#), None);
    }

    #[test]
    fn ci_is_folded_from_runs_and_statuses() {
        let none = json!({"total_count": 0, "check_runs": []});
        let actions_only = json!({"state": "pending", "total_count": 0, "statuses": []});
        assert_eq!(combine_ci(&none, &actions_only).0, None);
        let ok = json!({"check_runs": [{"name": "test", "status": "completed", "conclusion": "success"}]});
        assert_eq!(combine_ci(&ok, &actions_only).0.as_deref(), Some("success"));
        let running = json!({"check_runs": [{"name": "test", "status": "in_progress", "conclusion": null}]});
        assert_eq!(combine_ci(&running, &actions_only).0.as_deref(), Some("pending"));
        let bad = json!({"check_runs": [{"name": "lint", "status": "completed", "conclusion": "failure", "output": {"summary": "2 errors"}}]});
        let (state, failed) = combine_ci(&bad, &actions_only);
        assert_eq!(state.as_deref(), Some("failure"));
        assert_eq!(
            failed,
            vec![FailedCheck { name: "lint".into(), summary: "2 errors".into(), conclusion: "failure".into(), ..FailedCheck::default() }]
        );
        let legacy = json!({"state": "failure", "total_count": 1, "statuses": [{"context": "ci/jenkins", "state": "error", "description": "boom"}]});
        assert_eq!(combine_ci(&ok, &legacy).0.as_deref(), Some("failure"));
    }

    #[test]
    fn checks_list_runs_and_statuses_with_safe_links_and_a_bound() {
        let runs = json!({"check_runs": [
            {"name": "test", "status": "completed", "conclusion": "success", "html_url": "https://github.com/a/b/runs/1"},
            {"name": "lint", "status": "in_progress", "conclusion": null, "html_url": null, "details_url": "https://ci.example/l"},
            {"name": "evil", "status": "completed", "conclusion": "failure", "html_url": "javascript:alert(1)"},
        ]});
        let status = json!({"state": "failure", "total_count": 2, "statuses": [
            {"context": "ci/jenkins", "state": "error", "target_url": "http://jenkins.local/1"},
            {"context": "deploy", "state": "pending", "target_url": null},
        ]});
        let checks = checks_of(&runs, &status);
        let c = |kind: &str, name: &str, st: &str, concl: Option<&str>, url: Option<&str>| Check {
            kind: kind.into(),
            name: name.into(),
            status: st.into(),
            conclusion: concl.map(Into::into),
            url: url.map(Into::into),
        };
        assert_eq!(
            checks,
            vec![
                c("status", "ci/jenkins", "completed", Some("error"), Some("http://jenkins.local/1")),
                c("status", "deploy", "pending", None, None),
                c("check_run", "evil", "completed", Some("failure"), None),
                c("check_run", "lint", "in_progress", None, Some("https://ci.example/l")),
                c("check_run", "test", "completed", Some("success"), Some("https://github.com/a/b/runs/1")),
            ]
        );
        // An Actions-only repo's empty combined status adds nothing.
        assert!(checks_of(&json!({}), &json!({"state": "pending", "total_count": 0, "statuses": []})).is_empty());
        let many: Vec<Value> = (0..150).rev().map(|i| json!({"name": format!("job {i:03}"), "status": "queued"})).collect();
        let bounded = checks_of(&json!({"check_runs": many}), &json!({}));
        assert_eq!((bounded.len(), bounded[0].name.as_str(), bounded[99].name.as_str()), (MAX_CHECKS, "job 000", "job 099"));
    }

    #[test]
    fn an_actions_check_run_names_its_job_and_its_log_tail_is_clean() {
        let run = |slug: &str, details: &str| json!({"id": 7, "app": {"slug": slug}, "details_url": details});
        assert_eq!(actions_job_id(&run("github-actions", "https://github.com/a/b/actions/runs/5/job/99")), Some(99));
        assert_eq!(actions_job_id(&run("github-actions", "https://ci.example/x")), Some(7), "else the check run's id");
        assert_eq!(actions_job_id(&run("circleci", "https://github.com/a/b/actions/runs/5/job/99")), None);
        let raw = "2024-05-01T12:00:00.1234567Z ##[group]Run cargo test\n\
                   2024-05-01T12:00:01.0000000Z \x1b[31merror[E0425]\x1b[0m: cannot find value `x`\n\
                   2024-05-01T12:00:01.1000000Z ##[endgroup]\n\
                   2024-05-01T12:00:02.0000000Z token ghp_abcdefghijklmnopqrstuvwxyz0123456789 leaked\n\
                   2024-05-01T12:00:03.0000000Z ##[error]Process completed with exit code 101.\n\n";
        assert_eq!(
            job_log_tail(raw.as_bytes(), 10),
            "Run cargo test\nerror[E0425]: cannot find value `x`\ntoken *** leaked\nerror: Process completed with exit code 101."
        );
        assert_eq!(job_log_tail(raw.as_bytes(), 1), "error: Process completed with exit code 101.");
        assert_eq!(strip_ansi("a\x1b]8;;http://x\x07b\x1b]0;t\x1b\\c"), "abc");
    }

    #[test]
    fn reviews_keep_the_latest_per_reviewer() {
        let r = |u: &str, s: &str| json!({"user": {"login": u}, "state": s});
        assert_eq!(review_decision(&json!([])), None);
        assert_eq!(review_decision(&json!([r("a", "COMMENTED")])), None);
        assert_eq!(review_decision(&json!([r("a", "CHANGES_REQUESTED"), r("a", "APPROVED")])).as_deref(), Some("approved"));
        assert_eq!(review_decision(&json!([r("a", "APPROVED"), r("b", "CHANGES_REQUESTED")])).as_deref(), Some("changes_requested"));
        assert_eq!(review_decision(&json!([r("a", "DISMISSED")])).as_deref(), Some("review_required"));
    }
}
