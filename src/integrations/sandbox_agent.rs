//! The transport to a `sandbox-agent` server (rivet-dev/sandbox-agent, pinned at
//! 0.4.2): finding and launching the binary, and an HTTP client for its ACP
//! bridge. See PROTOCOLS.md §1, in particular §1.4.
//!
//! A `sandbox-agent server` runs next to the code (in a worktree sandbox it is a
//! local process on a loopback port). Each ACP *server id* is bound to one agent
//! subprocess; Kiln talks to it through two channels:
//!
//! - `POST /v1/acp/{id}` sends one JSON-RPC envelope. A request blocks until the
//!   agent answers and comes back as `200` with the response; a notification or a
//!   response Kiln sends back to the agent comes back as `202`. The first POST for
//!   an id must name the agent (`?agent=`).
//! - `GET /v1/acp/{id}` is an SSE stream of everything the agent writes, numbered
//!   from 1 per instance, resumable with `Last-Event-ID`. It also carries the
//!   responses the POSTs already returned, so [`Dedup`] drops the second copy.
//!
//! The quirks of 0.4.2 this module allows for:
//!
//! - `DELETE /v1/acp/{id}` on a live instance never answers; [`AcpClient::delete`]
//!   gives up after a short timeout and counts that as success (§1.4.4).
//! - ACP requests time out after 120 s unless the server's environment raises
//!   `SANDBOX_AGENT_ACP_REQUEST_TIMEOUT_MS`; [`spawn_server`] raises it. A request
//!   that times out inside the server may also never get an HTTP answer, so every
//!   call here has a client-side timeout as well.
//! - Errors come as `application/problem+json` or as plain text; [`AcpError`] reads
//!   both.
//! - On a fresh `$HOME` even the built-in `mock` agent must be installed first
//!   ([`AcpClient::install_agent`]); otherwise the first POST answers `502`.
//!
//! The launcher is blocking (`std::process`); the client is async and built on
//! awc, whose clients are not `Send`, so each call makes its own.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};

/// The sandbox-agent release Kiln is written and tested against.
pub const PINNED_VERSION: &str = "0.4.2";

/// The environment variable that names the binary when no path is configured.
pub const BIN_ENV: &str = "KILN_SANDBOX_AGENT_BIN";

/// The server-side environment variable holding the ACP request timeout (ms).
pub const ACP_TIMEOUT_ENV: &str = "SANDBOX_AGENT_ACP_REQUEST_TIMEOUT_MS";

/// The ACP request timeout Kiln gives the servers it starts: one hour, because a
/// `session/prompt` can run far longer than the 120 s default.
pub const ACP_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long [`AcpClient::post`] waits for the HTTP answer: a little longer than
/// the server's own ACP timeout, so the server's `504` normally arrives first.
pub const POST_TIMEOUT: Duration = Duration::from_secs(3600 + 60);

/// The DELETE timeout the official TypeScript client uses (PROTOCOLS §1.4.4).
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the short calls (health, list, opening the SSE stream) wait.
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an agent install may take (real agents are downloaded).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest response body read from a POST or a list.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Finds the sandbox-agent binary: the configured path if there is one, else
/// `$KILN_SANDBOX_AGENT_BIN`, else `sandbox-agent` on `PATH`.
///
/// A value containing `/` must name an executable file; a bare name is looked
/// up on `PATH`. When a path is configured (or the variable is set) but does not
/// resolve, the answer is `None` rather than a fallback, so a typo is noticed
/// instead of silently running some other binary.
pub fn find_binary(configured: Option<&str>) -> Option<PathBuf> {
    if let Some(c) = configured.map(str::trim).filter(|c| !c.is_empty()) {
        return resolve_program(c);
    }
    if let Some(e) = std::env::var(BIN_ENV).ok().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()) {
        return resolve_program(&e);
    }
    resolve_program("sandbox-agent")
}

fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// A loopback port that was free a moment ago: binds `127.0.0.1:0`, reads the
/// port the kernel chose, and releases it. (Another process may take it before
/// the caller binds it; the caller should be ready to retry.)
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts `bin server --host HOST --port PORT (--token T | --no-token)
/// --no-telemetry` as a child process, directly (an argument vector, never a
/// shell), with [`ACP_TIMEOUT_ENV`] raised to [`ACP_REQUEST_TIMEOUT`] and then
/// `extra_env` applied on top (so a caller can override it, or set `HOME`, which
/// decides where the server keeps agents and its logs:
/// `$HOME/.local/share/sandbox-agent/`).
///
/// stdin and stdout are closed; stderr is inherited. The server writes its logs to
/// files, and 0.4.2 exits with status 1 and no message when the port is taken,
/// so the caller should watch the child while it waits for health.
pub fn spawn_server(
    bin: &Path,
    host: &str,
    port: u16,
    token: Option<&str>,
    extra_env: &[(String, String)],
) -> io::Result<Child> {
    let mut cmd = server_command(bin, host, port, token, extra_env);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
    cmd.spawn()
}

/// The `sandbox-agent server` command line (argument vector, raised ACP timeout),
/// for callers that set up stdio, the working directory or the session themselves.
pub fn server_command(bin: &Path, host: &str, port: u16, token: Option<&str>, extra_env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("server").arg("--host").arg(host).arg("--port").arg(port.to_string());
    match token {
        Some(t) => cmd.arg("--token").arg(t),
        None => cmd.arg("--no-token"),
    };
    cmd.arg("--no-telemetry")
        .env(ACP_TIMEOUT_ENV, ACP_REQUEST_TIMEOUT.as_millis().to_string())
        .envs(extra_env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// A blocking `GET /v1/health` on a loopback server (for pollers on the
/// blocking pool): whether it answered 200 within `timeout`.
pub fn probe_health(port: u16, token: &str, timeout: std::time::Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout) else { return false };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// What went wrong talking to sandbox-agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcpError {
    /// 401: the bearer token is missing or wrong.
    #[error("sandbox-agent refused the token: {0}")]
    Unauthorized(String),
    /// 404: `not_found`, `session_not_found` (an ACP server id that does not
    /// exist) or an unknown route.
    #[error("not found on sandbox-agent: {0}")]
    NotFound(String),
    /// 409: e.g. the server id already exists for a different agent.
    #[error("sandbox-agent conflict: {0}")]
    Conflict(String),
    /// 504 from the server (the agent did not answer within the ACP timeout), or
    /// no HTTP answer within the client's own timeout. The answer may still
    /// arrive on the SSE stream.
    #[error("sandbox-agent timed out: {0}")]
    Timeout(String),
    /// The agent subprocess is gone: 500 `agent_process_exited`, or the `502
    /// stream_error` about the agent's stdin that 0.4.2 answers instead. The
    /// instance stays listed until it is deleted.
    #[error("the agent process exited: {0}")]
    AgentExited(String),
    /// Any other HTTP error. `kind` is the problem type's last segment
    /// (`invalid_request`, `stream_error`, …) when the body was problem+json;
    /// `message` is its `detail` or `title`, or the plain-text body.
    #[error("sandbox-agent answered {status}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// `urn:sandbox-agent:error:<kind>`'s kind, if any.
        kind: Option<String>,
        /// A human-readable message.
        message: String,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach sandbox-agent: {0}")]
    Transport(String),
    /// The server answered something this client cannot read (a body or an SSE
    /// event that is not the expected JSON, an event without a numeric id).
    #[error("unexpected answer from sandbox-agent: {0}")]
    Protocol(String),
}

impl AcpError {
    /// Maps an HTTP error answer to an error. Reads both formats sandbox-agent
    /// uses (PROTOCOLS §1.1): `application/problem+json`
    /// (`{type, title, status, detail?}`) and the framework's plain text.
    pub fn from_response(status: u16, body: &[u8]) -> AcpError {
        let problem: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
        let kind = problem
            .as_ref()
            .and_then(|p| p["type"].as_str())
            .map(|t| t.rsplit(':').next().unwrap_or(t).to_string())
            .filter(|k| !k.is_empty());
        let text = String::from_utf8_lossy(body).trim().to_string();
        let message = problem
            .as_ref()
            .and_then(|p| {
                [&p["detail"], &p["title"]]
                    .into_iter()
                    .filter_map(Value::as_str)
                    .find(|s| !s.is_empty())
                    .map(str::to_string)
            })
            .or_else(|| (!text.is_empty() && problem.is_none()).then_some(text))
            .unwrap_or_else(|| format!("HTTP {status}"));
        match (status, kind.as_deref()) {
            (401, _) => AcpError::Unauthorized(message),
            (404, _) => AcpError::NotFound(message),
            (409, _) => AcpError::Conflict(message),
            (504, _) | (_, Some("timeout")) => AcpError::Timeout(message),
            (_, Some("agent_process_exited")) => AcpError::AgentExited(message),
            // 0.4.2 answers a POST to an instance whose agent died with
            // `502 stream_error` "failed writing to agent stdin: Broken pipe".
            (_, Some("stream_error")) if message.contains("agent stdin") => AcpError::AgentExited(message),
            _ => AcpError::Http { status, kind, message },
        }
    }

    fn transport(e: impl std::fmt::Display) -> AcpError {
        AcpError::Transport(e.to_string())
    }

    fn from_send(e: awc::error::SendRequestError, timeout: Duration) -> AcpError {
        match e {
            awc::error::SendRequestError::Timeout => {
                AcpError::Timeout(format!("no HTTP answer within {} ms", timeout.as_millis()))
            }
            other => AcpError::transport(other),
        }
    }
}

/// What a POST answered.
#[derive(Debug, Clone, PartialEq)]
pub enum PostOutcome {
    /// `200`: the agent's response to a request, also sent on SSE.
    Response(Value),
    /// `202`: a notification or a response to the agent was delivered.
    Accepted,
}

/// One SSE event from `GET /v1/acp/{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage {
    /// The per-instance sequence number (`id:`), from 1. A restarted or
    /// re-created instance starts again at 1.
    pub id: u64,
    /// The event type (`message` for every ACP envelope).
    pub event: String,
    /// One JSON-RPC envelope.
    pub data: Value,
}

impl TryFrom<SseFrame> for SseMessage {
    type Error = AcpError;

    fn try_from(frame: SseFrame) -> Result<SseMessage, AcpError> {
        let id = frame
            .id
            .as_deref()
            .ok_or_else(|| AcpError::Protocol(format!("SSE event without an id: {}", frame.data)))?
            .trim()
            .parse::<u64>()
            .map_err(|_| AcpError::Protocol(format!("SSE event id is not a number: {:?}", frame.id)))?;
        let data = serde_json::from_str(&frame.data)
            .map_err(|e| AcpError::Protocol(format!("SSE event {id} is not JSON ({e}): {}", frame.data)))?;
        Ok(SseMessage { id, event: frame.event, data })
    }
}

/// One dispatched SSE event, before its id and data are interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// The stream's last event id when this event was dispatched: the frame's
    /// own `id:` or, as the SSE specification says, the one before it. `None`
    /// if the stream has not sent an id yet.
    pub id: Option<String>,
    /// `event:`, or `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental `text/event-stream` parser (the WHATWG rules): feed it bytes as
/// they arrive, in chunks of any size, and it answers the events completed so
/// far. Lines end with LF, CRLF or CR; lines starting with `:` are comments
/// (`: heartbeat`); `data:` may repeat; `retry:` and unknown fields are ignored;
/// an event without data is not dispatched.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Option<String>,
    event: String,
    last_id: Option<String>,
    started: bool,
    after_cr: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds one chunk; answers the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        self.buf.extend_from_slice(chunk);
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        if !self.started && !self.buf.is_empty() {
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return Vec::new();
            }
            self.started = true;
            if self.buf.starts_with(BOM) {
                self.buf.drain(..BOM.len());
            }
        }
        let mut out = Vec::new();
        let mut start = 0;
        // A CR that ended the previous chunk may be the first half of a CRLF.
        if self.after_cr && !self.buf.is_empty() {
            self.after_cr = false;
            if self.buf[0] == b'\n' {
                start = 1;
            }
        }
        let mut i = start;
        while i < self.buf.len() {
            let end = match self.buf[i] {
                b'\n' => i + 1,
                b'\r' if i + 1 == self.buf.len() => {
                    self.after_cr = true;
                    i + 1
                }
                b'\r' if self.buf[i + 1] == b'\n' => i + 2,
                b'\r' => i + 1,
                _ => {
                    i += 1;
                    continue;
                }
            };
            let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
            if let Some(frame) = self.line(&line) {
                out.push(frame);
            }
            start = end;
            i = end;
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str) -> Option<SseFrame> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let mut data = self.data.take()?;
            if data.ends_with('\n') {
                data.pop();
            }
            let event = if event.is_empty() { "message".to_string() } else { event };
            return Some(SseFrame { id: self.last_id.clone(), event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                data.push_str(value);
                data.push('\n');
            }
            "event" => self.event = value.to_string(),
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// Remembers the JSON-RPC response ids already seen on one ACP instance, so a
/// response that arrives twice (as the POST's body and again on SSE, §1.4.2) is
/// recorded once. Only responses (an `id` with `result` or `error`, and no
/// `method`) are remembered; requests and notifications are always new. The ids
/// `1` and `"1"` are different ids. The oldest ids are forgotten beyond
/// `capacity`.
#[derive(Debug)]
pub struct Dedup {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Default for Dedup {
    fn default() -> Dedup {
        Dedup::new(4096)
    }
}

impl Dedup {
    /// A helper that remembers at most `capacity` response ids (at least one).
    pub fn new(capacity: usize) -> Dedup {
        Dedup { seen: HashSet::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Whether `envelope` has not been seen before; a response is remembered.
    pub fn is_new(&mut self, envelope: &Value) -> bool {
        let Some(key) = response_key(envelope) else { return true };
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Forgets every id (for a re-created instance, whose ids may repeat).
    pub fn clear(&mut self) {
        self.seen.clear();
        self.order.clear();
    }
}

/// Whether `envelope` is a JSON-RPC response: an `id` plus `result` or `error`,
/// and no `method`.
pub fn is_response(envelope: &Value) -> bool {
    response_key(envelope).is_some()
}

fn response_key(envelope: &Value) -> Option<String> {
    let obj = envelope.as_object()?;
    if obj.contains_key("method") || !(obj.contains_key("result") || obj.contains_key("error")) {
        return None;
    }
    obj.get("id").filter(|id| !id.is_null()).map(Value::to_string)
}

/// Whether an event id seen on a stream opened with `Last-Event-ID: cursor`
/// shows that the remote sequence was reset (the server restarted or the
/// instance was re-created): the server only replays ids above the cursor, so an
/// id at or below it belongs to a new sequence. This does not catch a new
/// sequence that has already passed the cursor; comparing the instance's
/// `createdAtMs` from [`AcpClient::list`] does.
pub fn is_sequence_reset(cursor: Option<u64>, id: u64) -> bool {
    cursor.is_some_and(|c| id <= c)
}

/// A client for one sandbox-agent server.
#[derive(Clone)]
pub struct AcpClient {
    /// The server's base URL, e.g. `http://127.0.0.1:2468` (no trailing slash).
    pub base: String,
    /// The bearer token, if the server was started with one.
    pub token: Option<String>,
    /// Sent on every request besides the token, e.g. a Daytona preview URL's
    /// `x-daytona-preview-token` (secret: `Debug` shows names only).
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for AcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_ref().map(|_| "(hidden)");
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("AcpClient").field("base", &self.base).field("token", &token).field("headers", &headers).finish()
    }
}

impl AcpClient {
    /// A client for `base` (a trailing `/` is dropped).
    pub fn new(base: &str, token: Option<&str>) -> AcpClient {
        AcpClient { base: base.trim_end_matches('/').to_string(), token: token.map(str::to_string), headers: Vec::new() }
    }

    /// The same client, sending `headers` on every request too.
    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> AcpClient {
        self.headers = headers;
        self
    }

    fn request(&self, method: awc::http::Method, path: &str, timeout: Duration) -> awc::ClientRequest {
        // A preview URL answers a wrong token with a redirect to a login page:
        // never followed, so it is an error here.
        let client = awc::Client::builder().timeout(timeout).disable_redirects().finish();
        let mut req = client.request(method, format!("{}{}", self.base, path));
        for (name, value) in &self.headers {
            req = req.insert_header((name.as_str(), value.as_str()));
        }
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Reads a whole answer: the body of a 2xx, or the mapped error.
    async fn finish(mut res: awc::ClientResponse) -> Result<(u16, Vec<u8>), AcpError> {
        let status = res.status().as_u16();
        let body = res.body().limit(BODY_LIMIT).await.map_err(AcpError::transport)?;
        if (200..300).contains(&status) {
            Ok((status, body.to_vec()))
        } else {
            Err(AcpError::from_response(status, &body))
        }
    }

    async fn get_json(&self, path: &str, timeout: Duration) -> Result<Value, AcpError> {
        let res = self
            .request(awc::http::Method::GET, path, timeout)
            .insert_header(("accept", "application/json"))
            .send()
            .await
            .map_err(|e| AcpError::from_send(e, timeout))?;
        let (_, body) = Self::finish(res).await?;
        serde_json::from_slice(&body).map_err(|e| AcpError::Protocol(format!("GET {path}: {e}")))
    }

    /// `GET /v1/health`: `Ok` when the server answers `{"status":"ok"}`.
    pub async fn health(&self) -> Result<(), AcpError> {
        let body = self.get_json("/v1/health", SHORT_TIMEOUT).await?;
        match body["status"].as_str() {
            Some("ok") => Ok(()),
            _ => Err(AcpError::Protocol(format!("health answered {body}"))),
        }
    }

    /// Polls [`health`](Self::health) until it succeeds or `timeout` passes
    /// (answering the last error). A refused token fails at once: waiting will
    /// not fix it.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), AcpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.health().await {
                Ok(()) => return Ok(()),
                Err(e @ AcpError::Unauthorized(_)) => return Err(e),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(AcpError::Timeout(format!("not healthy within {} ms: {err}", timeout.as_millis())));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/agents/{agent}/install` with `{}`; answers the server's report
    /// (`{"already_installed":bool,"artifacts":[…]}`). On a fresh `$HOME` the
    /// built-in `mock` agent needs this before its first POST.
    pub async fn install_agent(&self, agent: &str) -> Result<Value, AcpError> {
        let path = format!("/v1/agents/{}/install", encode(agent));
        let res = self
            .request(awc::http::Method::POST, &path, INSTALL_TIMEOUT)
            .insert_header(("content-type", "application/json"))
            .insert_header(("accept", "application/json"))
            .send_body(json!({}).to_string())
            .await
            .map_err(|e| AcpError::from_send(e, INSTALL_TIMEOUT))?;
        let (_, body) = Self::finish(res).await?;
        serde_json::from_slice(&body).map_err(|e| AcpError::Protocol(format!("install {agent}: {e}")))
    }

    /// Sends one JSON-RPC envelope to `POST /v1/acp/{server_id}`, naming `agent`
    /// (required on the first POST for an id). Waits up to [`POST_TIMEOUT`].
    pub async fn post(&self, server_id: &str, agent: Option<&str>, envelope: &Value) -> Result<PostOutcome, AcpError> {
        self.post_with_timeout(server_id, agent, envelope, POST_TIMEOUT).await
    }

    /// [`post`](Self::post) with the client-side timeout given. A timeout answers
    /// [`AcpError::Timeout`]; the response may still arrive on SSE.
    pub async fn post_with_timeout(
        &self,
        server_id: &str,
        agent: Option<&str>,
        envelope: &Value,
        timeout: Duration,
    ) -> Result<PostOutcome, AcpError> {
        let mut path = format!("/v1/acp/{}", encode(server_id));
        if let Some(a) = agent {
            path.push_str(&format!("?agent={}", encode(a)));
        }
        let res = self
            .request(awc::http::Method::POST, &path, timeout)
            .insert_header(("content-type", "application/json"))
            .insert_header(("accept", "application/json"))
            .send_body(envelope.to_string())
            .await
            .map_err(|e| AcpError::from_send(e, timeout))?;
        match Self::finish(res).await? {
            (200, body) => serde_json::from_slice(&body)
                .map(PostOutcome::Response)
                .map_err(|e| AcpError::Protocol(format!("POST {path} answered 200 with a body that is not JSON: {e}"))),
            _ => Ok(PostOutcome::Accepted),
        }
    }

    /// `DELETE /v1/acp/{server_id}`, giving up after `timeout` (e.g.
    /// [`DELETE_TIMEOUT`]). Answers `true` when the server confirmed (204: an
    /// unknown id, or an instance whose agent already died) and `false` when it
    /// timed out, which 0.4.2 always does for an instance with a live agent: the
    /// instance is already gone from [`list`](Self::list), and the agent process
    /// stops once this client drops the connection (PROTOCOLS §1.4.4). Other
    /// failures are errors.
    pub async fn delete(&self, server_id: &str, timeout: Duration) -> Result<bool, AcpError> {
        let path = format!("/v1/acp/{}", encode(server_id));
        let sent = self.request(awc::http::Method::DELETE, &path, timeout).send().await;
        match sent {
            Ok(res) => Self::finish(res).await.map(|_| true),
            Err(awc::error::SendRequestError::Timeout) => Ok(false),
            Err(e) => Err(AcpError::transport(e)),
        }
    }

    /// `GET /v1/acp`: the live ACP instances, each
    /// `{"serverId","agent","createdAtMs"}`.
    pub async fn list(&self) -> Result<Vec<Value>, AcpError> {
        let body = self.get_json("/v1/acp", SHORT_TIMEOUT).await?;
        match body.get("servers").and_then(Value::as_array) {
            Some(servers) => Ok(servers.clone()),
            None => Err(AcpError::Protocol(format!("GET /v1/acp answered {body}"))),
        }
    }

    /// Subscribes to `GET /v1/acp/{server_id}` (SSE), resuming after
    /// `last_event_id` if given: the server replays the buffered events with a
    /// larger id (at most the last 1024), then streams live ones.
    ///
    /// The request is sent when the stream is first polled; an HTTP error (404
    /// for an id that does not exist: the GET does not create one) is then the
    /// stream's only item. Use [`connect`](Self::connect) to know that the
    /// subscription is live before doing anything else. The items are as
    /// [`connect`](Self::connect) describes.
    pub fn subscribe(
        &self,
        server_id: &str,
        last_event_id: Option<u64>,
    ) -> impl Stream<Item = Result<SseMessage, AcpError>> + Unpin + 'static {
        let this = self.clone();
        let server_id = server_id.to_string();
        Box::pin(stream::once(async move { this.connect(&server_id, last_event_id).await }).flat_map(|opened| {
            match opened {
                Ok(events) => events.left_stream(),
                Err(e) => stream::once(async move { Err(e) }).right_stream(),
            }
        }))
    }

    /// Opens `GET /v1/acp/{server_id}` (SSE) now, resuming after
    /// `last_event_id` if given, and answers the stream once the server has
    /// accepted it (so events emitted after this returns are not missed), or the
    /// HTTP error (404 for an id that does not exist).
    ///
    /// An event that cannot be read (not JSON, no numeric id) is an `Err` item
    /// and the stream goes on; a broken connection (the server died) is a final
    /// `Err`. The stream ends when the server closes it: after a DELETE, following
    /// `_adapter/agent_exited`. When the agent dies on its own, 0.4.2 sends
    /// `_adapter/agent_exited` (`success: false`) but keeps the stream open until
    /// the instance is deleted. Comments such as `: heartbeat` (every 15 s) are
    /// skipped.
    pub async fn connect(
        &self,
        server_id: &str,
        last_event_id: Option<u64>,
    ) -> Result<impl Stream<Item = Result<SseMessage, AcpError>> + Unpin + 'static, AcpError> {
        let path = format!("/v1/acp/{}", encode(server_id));
        let mut req =
            self.request(awc::http::Method::GET, &path, SHORT_TIMEOUT).insert_header(("accept", "text/event-stream"));
        if let Some(n) = last_event_id {
            req = req.insert_header(("last-event-id", n.to_string()));
        }
        let res = req.send().await.map_err(|e| AcpError::from_send(e, SHORT_TIMEOUT))?;
        if res.status().as_u16() != 200 {
            return Err(match Self::finish(res).await {
                Err(e) => e,
                Ok((status, _)) => AcpError::Protocol(format!("GET {path} answered {status}, not an event stream")),
            });
        }
        type Ready = VecDeque<Result<SseMessage, AcpError>>;
        let state: Option<(awc::ClientResponse, SseParser, Ready)> = Some((res, SseParser::new(), VecDeque::new()));
        Ok(Box::pin(stream::unfold(state, |state| async move {
            let (mut res, mut parser, mut ready) = state?;
            loop {
                if let Some(item) = ready.pop_front() {
                    return Some((item, Some((res, parser, ready))));
                }
                match res.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(AcpError::transport(e)), None)),
                    Some(Ok(chunk)) => ready.extend(parser.feed(&chunk).into_iter().map(SseMessage::try_from)),
                }
            }
        })))
    }
}

/// Percent-encodes one path segment or query value (everything but the RFC 3986
/// unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(frames: Vec<SseFrame>) -> Vec<SseMessage> {
        frames.into_iter().map(|f| SseMessage::try_from(f).expect("message")).collect()
    }

    #[test]
    fn sse_parses_whole_frames() {
        let mut p = SseParser::new();
        let out = messages(p.feed(
            b"event: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"mock/echo\"}\n\n\
              event: message\nid: 2\ndata: {\"id\":1,\"result\":{}}\n\n",
        ));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id, 1);
        assert_eq!(out[0].event, "message");
        assert_eq!(out[0].data["method"], "mock/echo");
        assert_eq!(out[1].id, 2);
        assert_eq!(out[1].data["id"], 1);
    }

    #[test]
    fn sse_frames_split_across_chunks_at_every_byte() {
        let text = "event: message\r\nid: 7\r\ndata: {\"a\":\"é\"}\r\n\r\n: heartbeat\n\nid: 8\ndata: {\"b\":2}\n\n";
        for cut in 0..text.len() {
            let mut p = SseParser::new();
            let mut out = p.feed(&text.as_bytes()[..cut]);
            out.extend(p.feed(&text.as_bytes()[cut..]));
            let out = messages(out);
            assert_eq!(out.len(), 2, "cut at {cut}");
            assert_eq!(out[0].id, 7);
            assert_eq!(out[0].data["a"], "é");
            assert_eq!(out[1].id, 8);
            assert_eq!(out[1].event, "message");
        }
        // One byte at a time.
        let mut p = SseParser::new();
        let out: Vec<SseFrame> = text.as_bytes().iter().flat_map(|b| p.feed(&[*b])).collect();
        assert_eq!(messages(out).iter().map(|m| m.id).collect::<Vec<_>>(), [7, 8]);
    }

    #[test]
    fn sse_lone_cr_ends_a_line() {
        let mut p = SseParser::new();
        let out = messages(p.feed(b"id: 3\rdata: {}\r\r"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, 3);
    }

    #[test]
    fn sse_multi_line_data_is_joined_with_newlines() {
        let mut p = SseParser::new();
        let frames = p.feed(b"id: 4\ndata: {\"x\":\ndata:  1,\ndata:\"y\": [2]}\n\n");
        assert_eq!(frames[0].data, "{\"x\":\n 1,\n\"y\": [2]}");
        let m = messages(frames);
        assert_eq!(m[0].data, json!({"x": 1, "y": [2]}));
    }

    #[test]
    fn sse_comments_and_unknown_fields_are_ignored() {
        let mut p = SseParser::new();
        assert!(p.feed(b": heartbeat\n\n").is_empty());
        assert!(p.feed(b":\n\nretry: 1000\nfoo: bar\n\n").is_empty());
        let out = messages(p.feed(b": heartbeat\nid: 5\n: between\ndata: {\"k\":1}\n\n"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, 5);
        assert_eq!(out[0].data["k"], 1);
    }

    #[test]
    fn sse_event_type_defaults_and_resets() {
        let mut p = SseParser::new();
        let frames = p.feed(b"event: custom\nid: 1\ndata: 1\n\nid: 2\ndata: 2\n\n");
        assert_eq!(frames[0].event, "custom");
        assert_eq!(frames[1].event, "message");
    }

    #[test]
    fn sse_missing_id_inherits_the_last_one_or_is_an_error() {
        let mut p = SseParser::new();
        let frames = p.feed(b"data: {\"first\":true}\n\nid: 9\ndata: {}\n\ndata: {\"later\":true}\n\n");
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].id, None);
        assert!(matches!(SseMessage::try_from(frames[0].clone()), Err(AcpError::Protocol(_))));
        assert_eq!(frames[2].id.as_deref(), Some("9"), "the spec keeps the last event id");
        assert_eq!(SseMessage::try_from(frames[2].clone()).expect("message").id, 9);
    }

    #[test]
    fn sse_bad_data_and_bad_ids_are_protocol_errors() {
        let mut p = SseParser::new();
        let frames = p.feed(b"id: x\ndata: {}\n\nid: 3\ndata: not json\n\n");
        assert!(matches!(SseMessage::try_from(frames[0].clone()), Err(AcpError::Protocol(_))));
        assert!(matches!(SseMessage::try_from(frames[1].clone()), Err(AcpError::Protocol(_))));
    }

    #[test]
    fn sse_event_without_data_is_not_dispatched_and_incomplete_frames_wait() {
        let mut p = SseParser::new();
        assert!(p.feed(b"id: 1\n\n").is_empty());
        assert!(p.feed(b"id: 2\ndata: {}\n").is_empty(), "no blank line yet");
        let out = messages(p.feed(b"\n"));
        assert_eq!(out[0].id, 2);
    }

    #[test]
    fn sse_strips_a_leading_bom() {
        let mut p = SseParser::new();
        let out = messages(p.feed(b"\xEF\xBB\xBFid: 1\ndata: {}\n\n"));
        assert_eq!(out[0].id, 1);
        let mut p = SseParser::new();
        assert!(p.feed(b"\xEF").is_empty());
        assert!(p.feed(b"\xBB").is_empty());
        let out = messages(p.feed(b"\xBFid: 2\ndata: {}\n\n"));
        assert_eq!(out[0].id, 2);
        let mut p = SseParser::new();
        assert!(p.feed(b"\n").is_empty());
        let out = messages(p.feed(b"id: 3\ndata: {}\n\n"));
        assert_eq!(out[0].id, 3);
    }

    #[test]
    fn dedup_drops_the_second_copy_of_a_response() {
        let mut d = Dedup::default();
        let response = json!({"jsonrpc": "2.0", "id": 1, "result": {"echoed": {}}});
        assert!(d.is_new(&response));
        assert!(!d.is_new(&response));
        // A string id "1" is a different id.
        assert!(d.is_new(&json!({"jsonrpc": "2.0", "id": "1", "result": null})));
        assert!(d.is_new(&json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -1, "message": "x"}})));
        assert!(!d.is_new(&json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -1, "message": "x"}})));
        // Notifications and agent requests are never duplicates.
        let note = json!({"jsonrpc": "2.0", "method": "session/update", "params": {}});
        assert!(d.is_new(&note));
        assert!(d.is_new(&note));
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "session/request_permission", "params": {}});
        assert!(d.is_new(&req));
        assert!(d.is_new(&req));
        d.clear();
        assert!(d.is_new(&response));
        assert!(is_response(&response));
        assert!(!is_response(&req));
        assert!(!is_response(&note));
    }

    #[test]
    fn dedup_forgets_the_oldest_beyond_capacity() {
        let mut d = Dedup::new(2);
        let r = |id: u64| json!({"jsonrpc": "2.0", "id": id, "result": {}});
        assert!(d.is_new(&r(1)));
        assert!(d.is_new(&r(2)));
        assert!(d.is_new(&r(3)));
        assert!(!d.is_new(&r(3)));
        assert!(!d.is_new(&r(2)));
        assert!(d.is_new(&r(1)), "1 was forgotten");
    }

    #[test]
    fn sequence_reset_is_an_id_at_or_below_the_cursor() {
        assert!(!is_sequence_reset(None, 1));
        assert!(!is_sequence_reset(Some(6), 7));
        assert!(is_sequence_reset(Some(6), 6));
        assert!(is_sequence_reset(Some(6), 1));
    }

    #[test]
    fn errors_map_problem_json() {
        let body = br#"{"type":"urn:sandbox-agent:error:token_invalid","title":"Token Invalid","status":401,"detail":"token invalid","details":{"message":"missing or invalid bearer token"}}"#;
        assert_eq!(AcpError::from_response(401, body), AcpError::Unauthorized("token invalid".into()));
        let body = br#"{"type":"urn:sandbox-agent:error:session_not_found","title":"Session Not Found","status":404,"detail":"session not found: s1","sessionId":"s1"}"#;
        assert_eq!(AcpError::from_response(404, body), AcpError::NotFound("session not found: s1".into()));
        let body = br#"{"type":"urn:sandbox-agent:error:conflict","title":"Conflict","status":409,"detail":"conflict: server 's1' already exists"}"#;
        assert!(matches!(AcpError::from_response(409, body), AcpError::Conflict(m) if m.contains("already exists")));
        let body = br#"{"type":"urn:sandbox-agent:error:timeout","title":"Timeout","status":504}"#;
        assert_eq!(AcpError::from_response(504, body), AcpError::Timeout("Timeout".into()));
        let body = br#"{"type":"urn:sandbox-agent:error:agent_process_exited","title":"Agent Process Exited","status":500,"detail":"agent process exited"}"#;
        assert_eq!(AcpError::from_response(500, body), AcpError::AgentExited("agent process exited".into()));
        let body = br#"{"type":"urn:sandbox-agent:error:invalid_request","title":"Invalid Request","status":400,"detail":"invalid request: missing required 'agent' query parameter"}"#;
        assert_eq!(
            AcpError::from_response(400, body),
            AcpError::Http {
                status: 400,
                kind: Some("invalid_request".into()),
                message: "invalid request: missing required 'agent' query parameter".into()
            }
        );
        let body = br#"{"type":"urn:sandbox-agent:error:stream_error","title":"Stream Error","status":502,"detail":"stream error: failed writing to agent stdin: Broken pipe (os error 32)","details":{"message":"failed writing to agent stdin: Broken pipe (os error 32)"}}"#;
        assert!(matches!(AcpError::from_response(502, body), AcpError::AgentExited(m) if m.contains("Broken pipe")));
        let body = br#"{"type":"urn:sandbox-agent:error:stream_error","title":"Stream Error","status":502,"detail":"stream error: failed to start agent process: No such file or directory (os error 2)"}"#;
        assert!(
            matches!(AcpError::from_response(502, body), AcpError::Http { status: 502, kind: Some(k), .. } if k == "stream_error")
        );
        let body = br#"{"type":"urn:sandbox-agent:error:install_failed","title":"Install Failed","status":500}"#;
        assert_eq!(
            AcpError::from_response(500, body),
            AcpError::Http { status: 500, kind: Some("install_failed".into()), message: "Install Failed".into() }
        );
    }

    #[test]
    fn errors_map_plain_text_and_empty_bodies() {
        let body = b"Failed to deserialize query string: missing field `path`\n";
        assert_eq!(
            AcpError::from_response(400, body),
            AcpError::Http {
                status: 400,
                kind: None,
                message: "Failed to deserialize query string: missing field `path`".into()
            }
        );
        assert_eq!(
            AcpError::from_response(415, b"Expected request with `Content-Type: application/json`"),
            AcpError::Http {
                status: 415,
                kind: None,
                message: "Expected request with `Content-Type: application/json`".into()
            }
        );
        assert_eq!(AcpError::from_response(504, b""), AcpError::Timeout("HTTP 504".into()));
        assert_eq!(
            AcpError::from_response(405, b""),
            AcpError::Http { status: 405, kind: None, message: "HTTP 405".into() }
        );
        assert_eq!(AcpError::from_response(401, b"nope"), AcpError::Unauthorized("nope".into()));
        // JSON that is not an object is kept as text.
        assert_eq!(
            AcpError::from_response(502, b"\"x\""),
            AcpError::Http { status: 502, kind: None, message: "\"x\"".into() }
        );
    }

    #[test]
    fn encode_keeps_unreserved_characters_only() {
        assert_eq!(encode("task-1_a.b~c"), "task-1_a.b~c");
        assert_eq!(encode("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn find_binary_prefers_the_configured_path() {
        let dir = std::env::temp_dir().join(format!("kiln-sa-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bin = dir.join("sandbox-agent");
        std::fs::write(&bin, "#!/bin/sh\n").expect("write");
        let plain = dir.join("not-executable");
        std::fs::write(&plain, "").expect("write");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        assert_eq!(find_binary(bin.to_str()), Some(bin.clone()));
        assert_eq!(find_binary(plain.to_str()), None, "not executable");
        assert_eq!(find_binary(Some("/no/such/sandbox-agent")), None, "no fallback past a configured path");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn free_port_answers_a_bindable_port() {
        let port = free_port().expect("port");
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("bind again");
    }
}
