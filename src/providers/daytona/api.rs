//! A client of Daytona's REST API (awc), from PROTOCOLS.md §2: the control plane
//! (create, get, list by labels, start, stop, delete, preview URLs) and each
//! sandbox's toolbox (`process/execute`, process sessions, home and work dirs).
//!
//! - Every request carries `Authorization: Bearer <api key>`. The key is an
//!   [`ApiKey`], whose `Debug` hides it; it is never put in a message, and a
//!   message Daytona sends back is scrubbed of it.
//! - Errors (NestJS's `{statusCode, error, message}`, `message` a text or a list)
//!   become a [`DaytonaError`], which folds into an `AppError` with a stable code.
//!   A refused key is `422 daytona_unauthorized`, naming the profile secret to fix.
//! - `429` and `5xx` (and a connection that fails) are retried with exponential
//!   backoff and jitter, a bounded number of times; `retry-after` is honoured, and a
//!   wait longer than [`Retry::max_retry_after`] is not slept but answered. A request
//!   that is not idempotent (a toolbox command) is retried only after a `429`, which
//!   says it was not run; a create is retried after a `5xx` only when it names the
//!   sandbox, so a retry that finds the name taken answers the sandbox made first.
//! - A toolbox command always sends a `timeout` (without one Daytona sets no limit),
//!   and the HTTP call waits that long plus [`DaytonaClient::toolbox_grace`].
//! - The toolbox answers `401` for a sandbox that no longer exists; the client then
//!   asks the control plane, so a gone sandbox is `daytona_sandbox_not_found` and a
//!   bad key is still `daytona_unauthorized`.
//!
//! awc's clients are not `Send`: each call makes its own, as the other clients do.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::AppError;

/// The SDKs' default control plane.
pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
/// Sent as `X-Daytona-SDK-Version`: from 0.167.0 on, session command logs are JSON.
pub const SDK_VERSION: &str = "0.167.0";
/// The longest a control-plane call waits for its answer (a create can take ~30 s).
const API_TIMEOUT: Duration = Duration::from_secs(90);
/// The largest answer read.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// A list stops after this many pages (a cursor that never ends is a bug there).
const MAX_PAGES: usize = 1000;

/// A Daytona API key. `Debug` never shows it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(hidden)")
    }
}

/// A preview URL's token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct PreviewToken(String);

impl PreviewToken {
    /// The token, for the `x-daytona-preview-token` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PreviewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreviewToken(hidden)")
    }
}

/// How failed requests are retried.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait before the second try; it doubles up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// A `retry-after` longer than this is answered as `daytona_rate_limited`, not slept.
    pub max_retry_after: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 5,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// The wait before try `n + 1` (n ≥ 1), without jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What went wrong talking to Daytona.
#[derive(Debug, thiserror::Error)]
pub enum DaytonaError {
    #[error("Daytona refused the API key ({status}: {message}); set a valid one with `kiln provider set daytona --secret api_key`")]
    Unauthorized { status: u16, message: String },
    #[error("Daytona has no such sandbox: {0}")]
    NotFound(String),
    #[error("Daytona refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("the Daytona sandbox failed: {0}")]
    SandboxFailed(String),
    #[error("Daytona is rate limiting this API key ({message}); retry in {} s", .retry_after.map(|d| d.as_secs()).unwrap_or(60))]
    RateLimited { message: String, retry_after: Option<Duration> },
    #[error("Daytona answered {status} after {attempts} tries: {message}")]
    Server { status: u16, message: String, attempts: u32 },
    #[error("cannot reach Daytona after {attempts} tries: {message}")]
    Transport { message: String, attempts: u32 },
    #[error("Daytona's answer could not be read: {0}")]
    Decode(String),
    /// Waiting for a state, or for the toolbox to answer, took too long.
    #[error("{0}")]
    Timeout(String),
    #[error("the command in the Daytona sandbox did not finish within {0} s and was killed")]
    CommandTimeout(u64),
}

impl From<DaytonaError> for AppError {
    fn from(err: DaytonaError) -> AppError {
        let message = err.to_string();
        match err {
            DaytonaError::Unauthorized { .. } => AppError::invalid("daytona_unauthorized", message),
            DaytonaError::NotFound(_) => AppError::not_found("daytona_sandbox_not_found", message),
            DaytonaError::Rejected { .. } => AppError::invalid("daytona_rejected", message),
            DaytonaError::SandboxFailed(_) => AppError::BadGateway { code: "daytona_sandbox_failed", message },
            DaytonaError::RateLimited { .. } => AppError::unavailable("daytona_rate_limited", message),
            DaytonaError::Server { .. } | DaytonaError::Transport { .. } | DaytonaError::Decode(_) => {
                AppError::BadGateway { code: "daytona_unavailable", message }
            }
            DaytonaError::Timeout(_) => AppError::BadGateway { code: "daytona_timeout", message },
            DaytonaError::CommandTimeout(_) => AppError::BadGateway { code: "daytona_command_timeout", message },
        }
    }
}

pub type DaytonaResult<T> = Result<T, DaytonaError>;

/// `POST /api/sandbox`. Every field is optional; `Debug` shows env names only.
#[derive(Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// GB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// GB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<u32>,
    /// Minutes of inactivity; 0 turns it off (Daytona's default is 15).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_interval: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_archive_interval: Option<u32>,
    /// Below 0 turns auto-delete off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_delete_interval: Option<i64>,
}

impl std::fmt::Debug for CreateSandboxRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSandboxRequest")
            .field("name", &self.name)
            .field("snapshot", &self.snapshot)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("labels", &self.labels)
            .field("target", &self.target)
            .field("cpu", &self.cpu)
            .field("memory", &self.memory)
            .field("disk", &self.disk)
            .field("auto_stop_interval", &self.auto_stop_interval)
            .finish_non_exhaustive()
    }
}

/// A sandbox as Daytona answers it (the fields Kiln uses; its `env`, which holds
/// secrets, is not read).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub state: String,
    #[serde(default)]
    pub desired_state: Option<String>,
    #[serde(default)]
    pub error_reason: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub cpu: Option<f64>,
    #[serde(default)]
    pub memory: Option<f64>,
    #[serde(default)]
    pub disk: Option<f64>,
    #[serde(default)]
    pub auto_stop_interval: Option<i64>,
    #[serde(default)]
    pub toolbox_proxy_url: Option<String>,
}

/// `null` (which Daytona may send for an empty map) as an empty map.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

impl Sandbox {
    /// Ready for commands.
    pub fn is_started(&self) -> bool {
        self.state == "started"
    }
    /// It will not start by itself (`error`, `build_failed`).
    pub fn is_failed(&self) -> bool {
        matches!(self.state.as_str(), "error" | "build_failed")
    }
    /// A start would bring it back (`stopped`, `archived`, `paused`).
    pub fn is_startable(&self) -> bool {
        matches!(self.state.as_str(), "stopped" | "archived" | "paused")
    }
    pub fn is_gone(&self) -> bool {
        matches!(self.state.as_str(), "destroyed" | "destroying")
    }

    /// Where this sandbox's toolbox answers.
    pub fn toolbox(&self) -> DaytonaResult<Toolbox> {
        let base = self.toolbox_proxy_url.as_deref().filter(|u| !u.is_empty()).ok_or_else(|| {
            DaytonaError::Decode(format!("sandbox {} has no toolboxProxyUrl", self.id))
        })?;
        Ok(Toolbox { base: base.trim_end_matches('/').to_string(), sandbox: self.id.clone() })
    }

    fn failure(&self) -> String {
        let reason = self.error_reason.as_deref().filter(|r| !r.is_empty()).unwrap_or("no reason given");
        format!("sandbox {} is in state `{}`: {reason}", self.id, self.state)
    }
}

/// One sandbox's toolbox: `{toolboxProxyUrl}/{sandboxId}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Toolbox {
    pub base: String,
    pub sandbox: String,
}

impl Toolbox {
    fn url(&self, path: &str) -> String {
        format!("{}/{}/{}", self.base, self.sandbox, path.trim_start_matches('/'))
    }
}

/// `process/execute`. `Debug` shows env names only.
#[derive(Clone)]
pub struct Execute {
    pub command: String,
    pub cwd: Option<String>,
    pub envs: BTreeMap<String, String>,
    /// Always sent (in whole seconds, at least 1): Daytona sets no limit without it.
    pub timeout: Duration,
}

impl std::fmt::Debug for Execute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Execute")
            .field("command", &self.command)
            .field("cwd", &self.cwd)
            .field("envs", &self.envs.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What `process/execute` answered: the exit code (-1: it could not start) and
/// stdout and stderr combined.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Executed {
    pub exit_code: i64,
    #[serde(default)]
    pub result: String,
}

/// How a session command runs.
#[derive(Debug, Clone, Copy)]
pub enum ExecMode {
    /// Answers at once with the command id.
    Async,
    /// Waits for the command, at most this long.
    Sync(Duration),
}

/// What a session exec answered (an async one has only `cmd_id`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExec {
    pub cmd_id: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub stdout: Option<String>,
    #[serde(default)]
    pub stderr: Option<String>,
}

/// A session command's status: `exit_code` is `None` while it runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCommand {
    pub id: String,
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// A session command's output; `stdout`/`stderr` only when Daytona answered JSON.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommandLogs {
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub stdout: Option<String>,
    #[serde(default)]
    pub stderr: Option<String>,
}

/// A port's preview URL and the token to send with it (it changes when the
/// sandbox restarts: fetch it again then).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewUrl {
    #[serde(default)]
    pub sandbox_id: String,
    pub url: String,
    pub token: PreviewToken,
}

impl PreviewUrl {
    /// The header every request through the URL carries.
    pub const TOKEN_HEADER: &'static str = "x-daytona-preview-token";
}

/// A preview URL answers a missing or wrong token with a redirect to a login
/// page, not a 401: treat any redirect from it as an auth failure.
pub fn is_preview_auth_failure(status: u16) -> bool {
    (300..400).contains(&status)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    items: Vec<Sandbox>,
    #[serde(default)]
    next_cursor: Option<Value>,
}

/// Which failures a request may be sent again after.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Idempotence {
    /// 429, 5xx and transport failures.
    Safe,
    /// Only 429 (Daytona refused it before doing anything).
    RefusedOnly,
}

/// One answer, before it is judged.
struct Answer {
    status: u16,
    body: Vec<u8>,
    content_type: String,
    retry_after: Option<Duration>,
}

/// Daytona's API, reached with one key.
#[derive(Debug, Clone)]
pub struct DaytonaClient {
    api_url: String,
    key: ApiKey,
    retry: Retry,
    /// How much longer than a command's timeout a toolbox call may take.
    toolbox_grace: Duration,
    page_size: usize,
}

impl DaytonaClient {
    /// `api_url` is the control plane's base, e.g. [`DEFAULT_API_URL`].
    pub fn new(api_url: &str, key: ApiKey) -> DaytonaClient {
        DaytonaClient {
            api_url: api_url.trim_end_matches('/').to_string(),
            key,
            retry: Retry::default(),
            toolbox_grace: Duration::from_secs(30),
            page_size: 100,
        }
    }

    pub fn with_retry(mut self, retry: Retry) -> DaytonaClient {
        self.retry = retry;
        self
    }

    pub fn with_toolbox_grace(mut self, grace: Duration) -> DaytonaClient {
        self.toolbox_grace = grace;
        self
    }

    /// Sandboxes per list page (1-200).
    pub fn with_page_size(mut self, size: usize) -> DaytonaClient {
        self.page_size = size.clamp(1, 200);
        self
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The key this client sends.
    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    /// Creates a sandbox; it is usually `creating`: see [`Self::wait_until_started`].
    /// A sandbox that fails at once is `daytona_sandbox_failed` with Daytona's reason.
    pub async fn create(&self, req: &CreateSandboxRequest) -> DaytonaResult<Sandbox> {
        let body = serde_json::to_value(req).map_err(|e| DaytonaError::Decode(e.to_string()))?;
        let mode = if req.name.is_some() { Idempotence::Safe } else { Idempotence::RefusedOnly };
        let url = format!("{}/sandbox", self.api_url);
        let (answer, attempts) = self.send("POST", &url, Some(&body), mode, API_TIMEOUT, &[]).await?;
        if answer.status == 409 && attempts > 1 {
            // An earlier try made it before failing to answer.
            if let Some(name) = &req.name {
                return self.get(name).await;
            }
        }
        let text = message_of(&answer.body, answer.status);
        if answer.status == 400 && text.starts_with("Sandbox failed to start") {
            return Err(DaytonaError::SandboxFailed(self.scrub(&text)));
        }
        self.judge(answer, attempts)
    }

    /// The sandbox by id or name.
    pub async fn get(&self, id: &str) -> DaytonaResult<Sandbox> {
        let url = format!("{}/sandbox/{}", self.api_url, encode(id));
        let (answer, attempts) = self.send("GET", &url, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
        self.judge(answer, attempts)
    }

    /// The sandbox, or `None` when Daytona has none by that id or name.
    pub async fn find(&self, id: &str) -> DaytonaResult<Option<Sandbox>> {
        match self.get(id).await {
            Ok(s) => Ok(Some(s)),
            Err(DaytonaError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every sandbox carrying all of `labels`, following the cursor to the end.
    pub async fn list(&self, labels: &BTreeMap<String, String>) -> DaytonaResult<Vec<Sandbox>> {
        let labels = serde_json::to_string(labels).map_err(|e| DaytonaError::Decode(e.to_string()))?;
        let (mut out, mut cursor) = (Vec::new(), None::<String>);
        for _ in 0..MAX_PAGES {
            let mut url = format!("{}/sandbox?labels={}&limit={}", self.api_url, encode(&labels), self.page_size);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={}", encode(c)));
            }
            let (answer, attempts) = self.send("GET", &url, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
            let page: Page = self.judge(answer, attempts)?;
            out.extend(page.items);
            let next = match page.next_cursor {
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            match next {
                Some(n) if Some(&n) != cursor.as_ref() => cursor = Some(n),
                _ => return Ok(out),
            }
        }
        Err(DaytonaError::Decode(format!("the sandbox list did not end after {MAX_PAGES} pages")))
    }

    /// Starts (or restores, or resumes) the sandbox; poll with [`Self::wait_until_started`].
    pub async fn start(&self, id: &str) -> DaytonaResult<Sandbox> {
        self.action(id, "start").await
    }

    /// Stops the sandbox; poll with [`Self::wait_until_stopped`].
    pub async fn stop(&self, id: &str) -> DaytonaResult<Sandbox> {
        self.action(id, "stop").await
    }

    async fn action(&self, id: &str, what: &str) -> DaytonaResult<Sandbox> {
        let url = format!("{}/sandbox/{}/{what}", self.api_url, encode(id));
        let (answer, attempts) = self.send("POST", &url, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
        self.judge(answer, attempts)
    }

    /// Asks Daytona to delete the sandbox; one already gone is not an error.
    pub async fn delete(&self, id: &str) -> DaytonaResult<()> {
        let url = format!("{}/sandbox/{}", self.api_url, encode(id));
        let (answer, attempts) = self.send("DELETE", &url, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
        match self.judge::<Value>(answer, attempts) {
            Ok(_) | Err(DaytonaError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the sandbox and polls until it is `destroyed` or gone (404).
    pub async fn delete_and_wait(&self, id: &str, timeout: Duration) -> DaytonaResult<()> {
        self.delete(id).await?;
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let state = match self.find(id).await? {
                None => return Ok(()),
                Some(s) if s.state == "destroyed" => return Ok(()),
                Some(s) => s.state,
            };
            if Instant::now() + delay > deadline {
                return Err(DaytonaError::Timeout(format!(
                    "sandbox {id} was not destroyed within {} s (state: {state})",
                    timeout.as_secs()
                )));
            }
            actix_rt::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Polls until the sandbox is `started` (backoff from 100 ms to 1 s), at most
    /// `timeout`. `error`/`build_failed` is `daytona_sandbox_failed` with its
    /// `errorReason`; a stopped sandbox is not started here (call [`Self::start`]).
    pub async fn wait_until_started(&self, id: &str, timeout: Duration) -> DaytonaResult<Sandbox> {
        self.wait_for(id, timeout, "started", |s| {
            if s.is_started() {
                Some(Ok(()))
            } else if s.is_failed() || s.is_gone() {
                Some(Err(DaytonaError::SandboxFailed(s.failure())))
            } else {
                None
            }
        })
        .await
    }

    /// Polls until the sandbox is `stopped` (or `destroyed`: an ephemeral one
    /// deletes itself on stop), at most `timeout`.
    pub async fn wait_until_stopped(&self, id: &str, timeout: Duration) -> DaytonaResult<Sandbox> {
        self.wait_for(id, timeout, "stopped", |s| {
            if matches!(s.state.as_str(), "stopped" | "destroyed") {
                Some(Ok(()))
            } else if s.is_failed() {
                Some(Err(DaytonaError::SandboxFailed(s.failure())))
            } else {
                None
            }
        })
        .await
    }

    async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        want: &str,
        done: impl Fn(&Sandbox) -> Option<DaytonaResult<()>>,
    ) -> DaytonaResult<Sandbox> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            let sandbox = self.get(id).await?;
            match done(&sandbox) {
                Some(Ok(())) => return Ok(sandbox),
                Some(Err(e)) => return Err(e),
                None => {}
            }
            if Instant::now() + delay > deadline {
                return Err(DaytonaError::Timeout(format!(
                    "sandbox {id} was not {want} within {} s (state: {})",
                    timeout.as_secs(),
                    sandbox.state
                )));
            }
            actix_rt::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// The preview URL of `port` and its token; call again after a restart.
    pub async fn preview_url(&self, id: &str, port: u16) -> DaytonaResult<PreviewUrl> {
        let url = format!("{}/sandbox/{}/ports/{port}/preview-url", self.api_url, encode(id));
        let (answer, attempts) = self.send("GET", &url, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
        self.judge(answer, attempts)
    }

    /// Runs `req.command` in the sandbox (through its shell, so shell syntax works),
    /// waiting at most its timeout: past it Daytona kills the command's process
    /// group and this answers `daytona_command_timeout`.
    pub async fn execute(&self, tb: &Toolbox, req: &Execute) -> DaytonaResult<Executed> {
        let secs = req.timeout.as_secs_f64().ceil().max(1.0) as u64;
        let mut body = json!({"command": req.command, "timeout": secs});
        if let Some(cwd) = &req.cwd {
            body["cwd"] = json!(cwd);
        }
        if !req.envs.is_empty() {
            body["envs"] = json!(req.envs);
        }
        let wait = Duration::from_secs(secs) + self.toolbox_grace;
        let sent = self.toolbox_send(tb, "POST", "process/execute", Some(&body), Idempotence::RefusedOnly, wait, &[]).await;
        match sent {
            Ok((answer, _)) if answer.status == 408 => Err(DaytonaError::CommandTimeout(secs)),
            Ok((answer, attempts)) => self.judge_toolbox(tb, answer, attempts).await,
            Err(DaytonaError::Timeout(_)) => Err(DaytonaError::CommandTimeout(secs)),
            Err(e) => Err(e),
        }
    }

    /// The sandbox user's home directory.
    pub async fn user_home_dir(&self, tb: &Toolbox) -> DaytonaResult<String> {
        self.dir(tb, "user-home-dir").await
    }

    /// The directory commands start in.
    pub async fn work_dir(&self, tb: &Toolbox) -> DaytonaResult<String> {
        self.dir(tb, "work-dir").await
    }

    async fn dir(&self, tb: &Toolbox, path: &str) -> DaytonaResult<String> {
        #[derive(Deserialize)]
        struct Dir {
            dir: String,
        }
        let (answer, attempts) = self.toolbox_send(tb, "GET", path, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
        let dir: Dir = self.judge_toolbox(tb, answer, attempts).await?;
        Ok(dir.dir)
    }

    /// Opens a process session (its commands run one after another: give a
    /// long-running server a session of its own).
    pub async fn create_session(&self, tb: &Toolbox, session: &str) -> DaytonaResult<()> {
        let body = json!({"sessionId": session});
        let (answer, attempts) =
            self.toolbox_send(tb, "POST", "process/session", Some(&body), Idempotence::RefusedOnly, API_TIMEOUT, &[]).await?;
        self.judge_toolbox::<Value>(tb, answer, attempts).await.map(drop)
    }

    /// Runs a command in a session.
    pub async fn session_exec(&self, tb: &Toolbox, session: &str, command: &str, mode: ExecMode) -> DaytonaResult<SessionExec> {
        let (run_async, wait) = match mode {
            ExecMode::Async => (true, API_TIMEOUT),
            ExecMode::Sync(t) => (false, t + self.toolbox_grace),
        };
        let body = json!({"command": command, "runAsync": run_async, "async": run_async});
        let path = format!("process/session/{}/exec", encode(session));
        match self.toolbox_send(tb, "POST", &path, Some(&body), Idempotence::RefusedOnly, wait, &[]).await {
            Ok((answer, attempts)) => self.judge_toolbox(tb, answer, attempts).await,
            Err(DaytonaError::Timeout(_)) => Err(DaytonaError::CommandTimeout(wait.as_secs())),
            Err(e) => Err(e),
        }
    }

    /// A session command's status (`exit_code` is `None` while it runs).
    pub async fn session_command(&self, tb: &Toolbox, session: &str, cmd: &str) -> DaytonaResult<SessionCommand> {
        let path = format!("process/session/{}/command/{}", encode(session), encode(cmd));
        let (answer, attempts) = self.toolbox_send(tb, "GET", &path, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
        self.judge_toolbox(tb, answer, attempts).await
    }

    /// A session command's output so far. Asks for JSON (`X-Daytona-SDK-Version`)
    /// and reads the `text/plain` answer of an older daemon too.
    pub async fn session_command_logs(&self, tb: &Toolbox, session: &str, cmd: &str) -> DaytonaResult<CommandLogs> {
        let path = format!("process/session/{}/command/{}/logs", encode(session), encode(cmd));
        let (answer, attempts) = self.toolbox_send(tb, "GET", &path, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
        if (200..300).contains(&answer.status) && !answer.content_type.contains("json") {
            return Ok(CommandLogs { output: String::from_utf8_lossy(&answer.body).into_owned(), stdout: None, stderr: None });
        }
        self.judge_toolbox(tb, answer, attempts).await
    }

    /// Writes `data` to a running session command's standard input.
    pub async fn session_command_input(&self, tb: &Toolbox, session: &str, cmd: &str, data: &str) -> DaytonaResult<()> {
        let path = format!("process/session/{}/command/{}/input", encode(session), encode(cmd));
        let body = json!({"data": data});
        let (answer, attempts) =
            self.toolbox_send(tb, "POST", &path, Some(&body), Idempotence::RefusedOnly, API_TIMEOUT, &[]).await?;
        self.judge_toolbox::<Value>(tb, answer, attempts).await.map(drop)
    }

    /// Deletes a session, killing its commands; one already gone is not an error.
    pub async fn delete_session(&self, tb: &Toolbox, session: &str) -> DaytonaResult<()> {
        let path = format!("process/session/{}", encode(session));
        let (answer, attempts) = self.toolbox_send(tb, "DELETE", &path, None, Idempotence::Safe, API_TIMEOUT, &[]).await?;
        if answer.status == 404 {
            return Ok(());
        }
        self.judge_toolbox::<Value>(tb, answer, attempts).await.map(drop)
    }

    async fn toolbox_send(
        &self,
        tb: &Toolbox,
        method: &str,
        path: &str,
        body: Option<&Value>,
        mode: Idempotence,
        timeout: Duration,
        headers: &[(&str, &str)],
    ) -> DaytonaResult<(Answer, u32)> {
        self.send(method, &tb.url(path), body, mode, timeout, headers).await
    }

    /// Like [`Self::judge`], but a toolbox 401 is checked against the control
    /// plane: a sandbox that is gone is `NotFound`, not a bad key.
    async fn judge_toolbox<T: DeserializeOwned>(&self, tb: &Toolbox, answer: Answer, attempts: u32) -> DaytonaResult<T> {
        if answer.status == 401 {
            if let Ok(None) = self.find(&tb.sandbox).await {
                return Err(DaytonaError::NotFound(format!("sandbox {} no longer exists", tb.sandbox)));
            }
        }
        self.judge(answer, attempts)
    }

    /// Sends with retries: answers the last answer and how many tries it took, or
    /// a transport error once the tries are spent.
    async fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        mode: Idempotence,
        timeout: Duration,
        headers: &[(&str, &str)],
    ) -> DaytonaResult<(Answer, u32)> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = self.send_once(method, url, body, timeout, headers).await;
            let wait = match &outcome {
                Ok(a) if a.status == 429 => Some(a.retry_after.unwrap_or_else(|| self.jittered(attempt))),
                Ok(a) if a.status >= 500 && mode == Idempotence::Safe => Some(self.jittered(attempt)),
                Err(DaytonaError::Transport { .. }) if mode == Idempotence::Safe => Some(self.jittered(attempt)),
                _ => None,
            };
            match (outcome, wait) {
                (outcome, Some(wait)) if attempt < self.retry.attempts && wait <= self.retry.max_retry_after => {
                    match &outcome {
                        Ok(a) => log::info!("Daytona answered {} to {method} {}; try {attempt} of {}, again in {wait:?}", a.status, strip_query(url), self.retry.attempts),
                        Err(e) => log::info!("Daytona {method} {} failed ({e}); try {attempt} of {}, again in {wait:?}", strip_query(url), self.retry.attempts),
                    }
                    actix_rt::time::sleep(wait).await;
                }
                (Ok(a), _) => return Ok((a, attempt)),
                (Err(DaytonaError::Transport { message, .. }), _) => {
                    return Err(DaytonaError::Transport { message, attempts: attempt })
                }
                (Err(e), _) => return Err(e),
            }
        }
    }

    fn jittered(&self, attempt: u32) -> Duration {
        let base = self.retry.delay(attempt);
        let jitter = rand::random::<f64>() * 0.25;
        base.mul_f64(1.0 + jitter)
    }

    async fn send_once(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        timeout: Duration,
        headers: &[(&str, &str)],
    ) -> DaytonaResult<Answer> {
        let transport = |message: String| DaytonaError::Transport { message, attempts: 1 };
        let method = awc::http::Method::from_bytes(method.as_bytes()).map_err(|e| transport(e.to_string()))?;
        let client = awc::Client::builder().timeout(timeout).disable_redirects().finish();
        let mut req = client
            .request(method, url)
            .insert_header(("Authorization", format!("Bearer {}", self.key.expose())))
            .insert_header(("X-Daytona-SDK-Version", SDK_VERSION))
            .insert_header(("User-Agent", concat!("kiln/", env!("CARGO_PKG_VERSION"))));
        for (name, value) in headers {
            req = req.insert_header((*name, *value));
        }
        let sent = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let mut res = match sent {
            Ok(res) => res,
            Err(awc::error::SendRequestError::Timeout) => {
                return Err(DaytonaError::Timeout(format!(
                    "Daytona did not answer {} within {} s",
                    strip_query(url),
                    timeout.as_secs()
                )))
            }
            Err(e) => return Err(transport(format!("{}: {}", strip_query(url), self.scrub(&e.to_string())))),
        };
        let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let content_type = header("content-type").unwrap_or_default();
        let status = res.status().as_u16();
        let body = res.body().limit(MAX_BODY).await.map_err(|e| transport(e.to_string()))?;
        Ok(Answer { status, body: body.to_vec(), content_type, retry_after })
    }

    /// Turns an answer into `T`, or the error its status says.
    fn judge<T: DeserializeOwned>(&self, answer: Answer, attempts: u32) -> DaytonaResult<T> {
        let status = answer.status;
        if (200..300).contains(&status) {
            let body: &[u8] = if answer.body.iter().all(u8::is_ascii_whitespace) { b"null" } else { &answer.body };
            return serde_json::from_slice(body).map_err(|e| DaytonaError::Decode(format!("{e} (status {status})")));
        }
        let message = self.scrub(&message_of(&answer.body, status));
        Err(match status {
            401 | 403 => DaytonaError::Unauthorized { status, message },
            404 => DaytonaError::NotFound(message),
            408 => DaytonaError::Timeout(message),
            429 => DaytonaError::RateLimited { message, retry_after: answer.retry_after },
            300..=399 => DaytonaError::Rejected { status, message: format!("unexpected redirect: {message}") },
            400..=499 => DaytonaError::Rejected { status, message },
            _ => DaytonaError::Server { status, message, attempts },
        })
    }

    /// `text` with the API key, should Daytona ever echo it, blotted out.
    fn scrub(&self, text: &str) -> String {
        let key = self.key.expose();
        if key.len() >= 4 && text.contains(key) {
            text.replace(key, "(api key)")
        } else {
            text.to_string()
        }
    }
}

/// Runs a call of this client (whose awc futures are not `Send`) as a task on the
/// current actix arbiter, and answers a `Send` future of its result, as a
/// `SandboxProvider`'s boxed futures must be. `make` builds the call on the
/// arbiter; call this from code an arbiter polls (actors, handlers, pollers).
pub fn on_arbiter<T, F, Fut>(make: F) -> impl std::future::Future<Output = Result<T, AppError>> + Send
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = DaytonaResult<T>> + 'static,
{
    async move {
        let handle = actix_rt::spawn(async move { make().await });
        match handle.await {
            Ok(result) => result.map_err(AppError::from),
            Err(e) => Err(AppError::bug(format!("a Daytona call's task ended early: {e}"))),
        }
    }
}

/// The human part of an error body: NestJS's `message` (a text or a list), else
/// the body's start, else the status's name.
pub fn message_of(body: &[u8], status: u16) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let from_json = parsed.as_ref().and_then(|v| match &v["message"] {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Array(items) if !items.is_empty() => {
            Some(items.iter().map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string())).collect::<Vec<_>>().join("; "))
        }
        _ => v["error"].as_str().map(str::to_string),
    });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if text.is_empty() {
        awc::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("error").to_string()
    } else {
        crate::validate::truncate(&text, 300)
    }
}

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Percent-encodes everything but unreserved characters (for path segments and query values).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nest_messages_are_read_as_text_or_list() {
        let one = br#"{"path":"/api/sandbox","statusCode":400,"error":"Bad Request","message":"Cannot specify Sandbox resources when using a snapshot"}"#;
        assert_eq!(message_of(one, 400), "Cannot specify Sandbox resources when using a snapshot");
        let list = br#"{"statusCode":400,"error":"Bad Request","message":["cpu must be an integer number","disk must not be less than 1"]}"#;
        assert_eq!(message_of(list, 400), "cpu must be an integer number; disk must not be less than 1");
        assert_eq!(message_of(br#"{"statusCode":401,"error":"Unauthorized"}"#, 401), "Unauthorized");
        assert_eq!(message_of(b"upstream connect error", 503), "upstream connect error");
        assert_eq!(message_of(b"", 502), "Bad Gateway");
    }

    #[test]
    fn a_sandbox_reads_with_fields_missing_or_null() {
        let s: Sandbox = serde_json::from_value(json!({"id": "a", "state": "started", "labels": null, "errorReason": null, "cpu": 2})).unwrap();
        assert!(s.labels.is_empty() && s.is_started() && s.cpu == Some(2.0));
        assert_eq!(s.toolbox().unwrap_err().to_string(), "Daytona's answer could not be read: sandbox a has no toolboxProxyUrl");
        let s: Sandbox = serde_json::from_value(json!({"id": "b", "state": "error", "toolboxProxyUrl": "https://proxy.example/toolbox/"})).unwrap();
        assert!(s.is_failed() && s.failure().ends_with("no reason given"));
        assert_eq!(s.toolbox().unwrap().url("/process/execute"), "https://proxy.example/toolbox/b/process/execute");
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let r = Retry { attempts: 6, first_delay: Duration::from_millis(250), max_delay: Duration::from_secs(1), ..Retry::default() };
        let delays: Vec<u128> = (1..=5).map(|n| r.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![250, 500, 1000, 1000, 1000]);
        assert_eq!(r.delay(100), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let client = DaytonaClient::new("https://example.test/api", ApiKey::new("dtn_supersecret"));
        let req = CreateSandboxRequest {
            env: BTreeMap::from([("ANTHROPIC_API_KEY".to_string(), "sk-verysecret".to_string())]),
            ..Default::default()
        };
        let exec = Execute { command: "true".into(), cwd: None, envs: req.env.clone(), timeout: Duration::from_secs(1) };
        let token: PreviewToken = serde_json::from_value(json!("tok-secret")).unwrap();
        let shown = format!("{client:?} {req:?} {exec:?} {token:?}");
        for secret in ["supersecret", "verysecret", "tok-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("ANTHROPIC_API_KEY"), "names are shown: {shown}");
        let err = DaytonaError::Unauthorized { status: 401, message: client.scrub("bad key dtn_supersecret") };
        assert!(!err.to_string().contains("supersecret"), "{err}");
    }

    #[actix_rt::test]
    async fn calls_can_be_awaited_from_send_futures() {
        fn assert_send<F: std::future::Future + Send>(f: F) -> F {
            f
        }
        let client = DaytonaClient::new("http://127.0.0.1:9/api", ApiKey::new("k")).with_retry(Retry { attempts: 1, ..Retry::default() });
        let err = assert_send(on_arbiter(move || async move { client.get("x").await })).await.unwrap_err();
        assert_eq!(err.code(), "daytona_unavailable", "nothing listens on port 9: {err}");
    }

    #[test]
    fn app_error_codes() {
        let code = |e: DaytonaError| AppError::from(e).code();
        assert_eq!(code(DaytonaError::Unauthorized { status: 401, message: "x".into() }), "daytona_unauthorized");
        assert_eq!(code(DaytonaError::NotFound("x".into())), "daytona_sandbox_not_found");
        assert_eq!(code(DaytonaError::SandboxFailed("x".into())), "daytona_sandbox_failed");
        assert_eq!(code(DaytonaError::RateLimited { message: "x".into(), retry_after: None }), "daytona_rate_limited");
        assert_eq!(code(DaytonaError::CommandTimeout(3)), "daytona_command_timeout");
        let e = AppError::from(DaytonaError::Unauthorized { status: 401, message: "Unauthorized".into() });
        assert_eq!(actix_web::ResponseError::status_code(&e).as_u16(), 422, "a 4xx, not Kiln's own 401");
    }
}
