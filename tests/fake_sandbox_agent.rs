//! A fake `sandbox-agent` server (0.4.2) for Kiln's tests, built as the cargo
//! example `fake-sandbox-agent`. Kiln starts it exactly like the real binary:
//!
//! ```text
//! fake-sandbox-agent server --host 127.0.0.1 --port P (--token T | --no-token) --no-telemetry
//! ```
//!
//! with `SANDBOX_AGENT_ACP_REQUEST_TIMEOUT_MS` in its environment. Unknown flags
//! are ignored; `--version` prints `sandbox-agent 0.4.2-fake`. Instead of an
//! agent subprocess behind each ACP server id, it runs a SCRIPTED ACP agent in
//! process, so a test can drive whole turns (updates, permission requests,
//! cancellation, failures) without any real agent.
//!
//! What it follows from PROTOCOLS.md §1:
//!
//! - §1.1: with `--token T` every `/v1/*` route (and this fake's `/_fake/*`
//!   routes) needs `Authorization: Bearer T`, else `401 token_invalid`. API errors
//!   are `application/problem+json` `{type: "urn:sandbox-agent:error:<kind>",
//!   title, status, detail}`; framework errors (`415` for a missing JSON
//!   content type, a body that is not JSON, a bad query string) are plain text.
//!   An unknown route is a `404` problem `endpoint not found`. `GET /` needs no
//!   token.
//! - §1.3: `GET /v1/health` is `{"status":"ok"}`; `POST /v1/agents/{agent}/install`
//!   (JSON body, else 415) answers `{"already_installed":true,"artifacts":[]}`.
//!   The known agents are `fake` (`loadSession: false`) and `fake-load`
//!   (`loadSession: true`); any other id is `400 unsupported_agent`.
//! - §1.4.1: POST rules: JSON content type (415), an `accept` that allows JSON
//!   (406), one JSON object (400 `request body must be a JSON-RPC object`), the
//!   first POST for an id must name `?agent=` (400 `invalid_request`) and another
//!   agent for an existing id is `409 conflict`. A request blocks until the agent
//!   answers (200 with the response); a notification or a response to an
//!   agent→client request is `202` with an empty body; no answer within
//!   `SANDBOX_AGENT_ACP_REQUEST_TIMEOUT_MS` (default 120000) is `504 timeout`, and
//!   a late answer is still broadcast. A dead agent fails pending requests with
//!   `500 agent_process_exited` and later POSTs with the `502 stream_error` about
//!   the agent's stdin that 0.4.2 answers.
//! - §1.4.2: SSE frames `event: message` / `id: N` / `data: <one line>`, numbered
//!   from 1 per instance; responses are copied onto the stream, POSTed envelopes
//!   are not; a ring buffer of the last 1024 events; `Last-Event-ID` replays the
//!   ids above it, then goes live (non-numeric: 400); `: heartbeat` every 15 s;
//!   any number of subscribers; an unknown id is `404 session_not_found`; the GET
//!   needs `accept: text/event-stream` (406) and never creates an instance.
//!   `_adapter/agent_exited` is sent when the agent exits.
//! - §1.4.3: `GET /v1/acp` lists `{serverId, agent, createdAtMs}`.
//! - §1.4.4: DELETE removes the instance from the list at once, tells the
//!   subscribers `_adapter/agent_exited` (`success: true`) and closes their
//!   streams, but by default never answers (the 0.4.2 hang); an unknown id, or an
//!   instance whose agent already died, gets `204` at once.
//! - §1.7: the ACP methods (`initialize`, `session/new`, `session/load`,
//!   `session/prompt`, `session/set_mode`, `session/cancel`), the `session/update`
//!   kinds and `session/request_permission`, including the rule that after
//!   `session/cancel` the client answers pending permissions with `cancelled`
//!   and the prompt then ends with `stopReason: "cancelled"`.
//! - §1.8: the scripted agent and the DELETE-hang switch.
//!
//! The scripted agent chooses a script from the prompt's text (lower-cased, the
//! text blocks joined with `\n`), checking in this order: `read file` (an
//! `fs/read_text_file` request to the client, whose answer or error it reports
//! as its reply), `permission`, `wait`, `flood <N>`, `fail`, `at once` (the
//! response `end_turn` at once, with no update: on SSE before the POST even
//! answers), else the default turn (thought, plan, a tool call
//! pending → in_progress → completed, `"Hello"` + `" world"`, `end_turn`). A
//! session's conversation is kept for the whole server process, so a session can
//! be loaded (`session/load`, on `fake-load`) on a fresh instance; an agent
//! process (an instance) only knows the sessions it created or loaded.
//! `session/set_mode` knows the modes `default` and `plan` only (anything else
//! is an `Invalid params` error, so an open can be made to fail).
//!
//! Control endpoints for tests (same token rule as `/v1/*`):
//!
//! - `GET  /_fake/received`: every envelope POSTed to an existing (or
//!   just created) instance, in arrival order: `[{"serverId", "envelope"}, …]`.
//! - `POST /_fake/delete_hangs` `{"hang": bool}`: whether DELETE of a live
//!   instance hangs (default true) or answers 204 at once.
//! - `POST /_fake/exit/{id}`: the agent process dies (`_adapter/agent_exited`
//!   with `success: false`; the stream stays open; the instance stays listed).
//! - `POST /_fake/reset/{id}`: the instance is re-created in place (sequence from
//!   1, empty ring, a larger `createdAtMs`, subscribers closed); the agent and
//!   its sessions are kept (a dead agent comes back without sessions).
//! - `POST /_fake/emit/{id}` with any JSON body: broadcast as-is; answers
//!   `{"eventId": N}`.
//! - `GET  /_fake/env`: the server's environment (what its agents inherit).
//! - `GET  /_fake/subscribers/{id}`: `{"subscribers": n}`, the open SSE
//!   subscriptions after dropping disconnected ones.
//!
//! `FAKE_HEARTBEAT_MS` overrides the heartbeat period.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::body::EitherBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::future::{self, Either, FutureExt};
use futures_util::stream;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

/// What `--version` prints.
const VERSION: &str = "sandbox-agent 0.4.2-fake";

/// The environment variable with the ACP request timeout, in milliseconds.
const ACP_TIMEOUT_ENV: &str = "SANDBOX_AGENT_ACP_REQUEST_TIMEOUT_MS";

/// The ACP request timeout when the environment does not set one (§1.4.1).
const DEFAULT_ACP_TIMEOUT_MS: u64 = 120_000;

/// The environment variable that overrides the heartbeat period (ms).
const HEARTBEAT_ENV: &str = "FAKE_HEARTBEAT_MS";

/// The SSE heartbeat period of 0.4.2 (§1.4.2).
const DEFAULT_HEARTBEAT_MS: u64 = 15_000;

/// How many events each instance keeps for `Last-Event-ID` replay (§1.4.2).
const RING_BUFFER_SIZE: usize = 1024;

/// The first id of the agent→client requests of an instance.
const FIRST_AGENT_REQUEST_ID: u64 = 1000;

/// The largest `flood <N>` honoured (a typo should not exhaust memory).
const MAX_FLOOD: u64 = 100_000;

/// The largest POST body read.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The agents this fake knows, and whether each advertises `loadSession`.
const AGENTS: &[(&str, bool)] = &[("fake", false), ("fake-load", true)];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Cli::Version => println!("{VERSION}"),
        Cli::Usage(problem) => {
            eprintln!("fake-sandbox-agent: {problem}");
            eprintln!("usage: fake-sandbox-agent server [--host H] [--port P] [--token T | --no-token] [--no-telemetry]");
            std::process::exit(2);
        }
        Cli::Serve(config) => {
            if let Err(e) = serve(config) {
                eprintln!("fake-sandbox-agent: {e}");
                std::process::exit(1);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Command line

/// The server's settings from the command line.
#[derive(Debug)]
struct Config {
    host: String,
    port: u16,
    token: Option<String>,
}

#[derive(Debug)]
enum Cli {
    Version,
    Serve(Config),
    Usage(String),
}

/// Reads `server --host H --port P (--token T | --no-token) …`; flags may also
/// be written `--flag=value`, and unknown flags are ignored.
fn parse_args(args: &[String]) -> Cli {
    if args.iter().any(|a| a == "--version" || a == "-V") {
        return Cli::Version;
    }
    if args.first().map(String::as_str) != Some("server") {
        return Cli::Usage("the first argument must be `server` (or `--version`)".into());
    }
    let mut config = Config { host: "127.0.0.1".into(), port: 2468, token: None };
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| inline.clone().or_else(|| rest.next().cloned()).ok_or(format!("{name} needs a value"));
        match flag {
            "--host" => match value("--host") {
                Ok(v) => config.host = v,
                Err(e) => return Cli::Usage(e),
            },
            "--port" => match value("--port").map(|v| v.parse::<u16>()) {
                Ok(Ok(p)) => config.port = p,
                Ok(Err(e)) => return Cli::Usage(format!("--port: {e}")),
                Err(e) => return Cli::Usage(e),
            },
            "--token" => match value("--token") {
                Ok(v) => config.token = Some(v),
                Err(e) => return Cli::Usage(e),
            },
            "--no-token" => config.token = None,
            // `--no-telemetry` and anything else.
            _ => {}
        }
    }
    Cli::Serve(config)
}

/// A millisecond setting from the environment, or `default`.
fn env_ms(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn serve(config: Config) -> std::io::Result<()> {
    let shared = web::Data::new(Shared {
        token: config.token,
        acp_timeout: Duration::from_millis(env_ms(ACP_TIMEOUT_ENV, DEFAULT_ACP_TIMEOUT_MS)),
        heartbeat: Duration::from_millis(env_ms(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_MS).max(1)),
        state: Mutex::new(State::new()),
    });
    let (host, port) = (config.host, config.port);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let auth = shared.clone();
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(BODY_LIMIT))
                .wrap_fn(move |req, srv| {
                    if auth.authorized(req.path(), req.headers()) {
                        Either::Left(srv.call(req).map(|res| res.map(ServiceResponse::map_into_left_body)))
                    } else {
                        let res = req.into_response(token_invalid()).map_into_right_body();
                        Either::Right(future::ready(Ok::<ServiceResponse<EitherBody<_>>, _>(res)))
                    }
                })
                .route("/", web::get().to(root))
                .route("/v1/health", web::get().to(health))
                .route("/v1/agents/{agent}/install", web::post().to(install))
                .route("/v1/acp", web::get().to(list_instances))
                .service(
                    web::resource("/v1/acp/{server_id}")
                        .route(web::post().to(acp_post))
                        .route(web::get().to(acp_events))
                        .route(web::delete().to(acp_delete)),
                )
                .route("/_fake/received", web::get().to(fake_received))
                .route("/_fake/env", web::get().to(fake_env))
                .route("/_fake/delete_hangs", web::post().to(fake_delete_hangs))
                .route("/_fake/exit/{server_id}", web::post().to(fake_exit))
                .route("/_fake/reset/{server_id}", web::post().to(fake_reset))
                .route("/_fake/emit/{server_id}", web::post().to(fake_emit))
                .route("/_fake/subscribers/{server_id}", web::get().to(fake_subscribers))
                .default_service(web::to(|| async { problem(404, "not_found", "endpoint not found", None) }))
        })
        .workers(2)
        .shutdown_timeout(1)
        .bind((host.as_str(), port))?
        .run()
        .await
    })
}

// ---------------------------------------------------------------------------
// State

/// Everything the server shares between its workers.
struct Shared {
    token: Option<String>,
    acp_timeout: Duration,
    heartbeat: Duration,
    state: Mutex<State>,
}

impl Shared {
    /// The state, even if a handler panicked while holding the lock.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a request to `path` may go on: routes under `/v1` and `/_fake`
    /// need the bearer token when there is one (§1.1).
    fn authorized(&self, path: &str, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else { return true };
        let guarded = ["/v1", "/_fake"].iter().any(|p| path == *p || path.starts_with(&format!("{p}/")));
        if !guarded {
            return true;
        }
        let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").trim();
        match given.split_once(' ') {
            Some((scheme, value)) => scheme.eq_ignore_ascii_case("bearer") && value.trim() == token,
            None => false,
        }
    }
}

/// Who said a part of a session's conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    User,
    Agent,
}

/// The server-wide state.
struct State {
    /// The ACP instances by server id (sorted, so the list is stable).
    instances: BTreeMap<String, Instance>,
    /// Every envelope POSTed to an instance, as `{"serverId", "envelope"}`.
    received: Vec<Value>,
    /// Whether DELETE of a live instance never answers (0.4.2, §1.4.4).
    delete_hangs: bool,
    /// Every session's conversation, for `session/load` on any instance.
    sessions: HashMap<String, Vec<(Speaker, String)>>,
    /// The running prompts: session id → its cancel flag.
    turns: HashMap<String, watch::Sender<bool>>,
    next_session: u64,
    next_tool_call: u64,
    next_message: u64,
    next_process: u64,
    next_waiter: u64,
    last_created_ms: u64,
}

impl State {
    fn new() -> State {
        State {
            instances: BTreeMap::new(),
            received: Vec::new(),
            delete_hangs: true,
            sessions: HashMap::new(),
            turns: HashMap::new(),
            next_session: 0,
            next_tool_call: 0,
            next_message: 0,
            next_process: 0,
            next_waiter: 0,
            last_created_ms: 0,
        }
    }

    /// A `createdAtMs` for a new (or re-created) instance: now, but always
    /// larger than the last one given.
    fn created_ms(&mut self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.last_created_ms = now.max(self.last_created_ms + 1);
        self.last_created_ms
    }

    fn new_instance(&mut self, agent: &str) -> Instance {
        let created_at_ms = self.created_ms();
        self.next_process += 1;
        Instance {
            agent: agent.to_string(),
            created_at_ms,
            seq: 0,
            ring: VecDeque::new(),
            subscribers: Vec::new(),
            process: self.next_process,
            exited: false,
            killed: watch::channel(false).0,
            pending: HashMap::new(),
            agent_requests: HashMap::new(),
            next_request_id: FIRST_AGENT_REQUEST_ID,
            sessions: HashSet::new(),
        }
    }
}

/// How a pending POSTed request ends.
enum Answer {
    /// The agent's response envelope.
    Response(Value),
    /// The agent process died first.
    Exited,
}

/// One ACP server id: the bridge (sequence, ring, subscribers, pending POSTs)
/// and the scripted agent process behind it.
struct Instance {
    agent: String,
    created_at_ms: u64,
    /// The id of the last event sent.
    seq: u64,
    /// The last [`RING_BUFFER_SIZE`] frames, with their ids.
    ring: VecDeque<(u64, Bytes)>,
    /// One channel per open SSE subscription.
    subscribers: Vec<mpsc::UnboundedSender<Bytes>>,
    /// Which agent process this is (unique in the server): scripted tasks of an
    /// earlier process can no longer write here.
    process: u64,
    /// The agent process died (`/_fake/exit`).
    exited: bool,
    /// Set to true when the agent process dies or the instance is deleted.
    killed: watch::Sender<bool>,
    /// POSTed requests waiting for the agent's response: JSON id → waiters.
    pending: HashMap<String, VecDeque<(u64, oneshot::Sender<Answer>)>>,
    /// Agent→client requests waiting for the client's response: JSON id → waiter.
    agent_requests: HashMap<String, oneshot::Sender<Value>>,
    next_request_id: u64,
    /// The sessions this agent process knows (created or loaded here).
    sessions: HashSet<String>,
}

impl Instance {
    fn load_session(&self) -> bool {
        AGENTS.iter().any(|(id, load)| *id == self.agent && *load)
    }

    /// Sends one envelope to the SSE subscribers under the next id, keeps it in
    /// the ring and drops the subscribers that went away. Answers the id.
    fn broadcast(&mut self, envelope: &Value) -> u64 {
        self.seq += 1;
        let frame = Bytes::from(format!("event: message\nid: {}\ndata: {envelope}\n\n", self.seq));
        self.ring.push_back((self.seq, frame.clone()));
        while self.ring.len() > RING_BUFFER_SIZE {
            self.ring.pop_front();
        }
        self.subscribers.retain(|s| s.send(frame.clone()).is_ok());
        self.seq
    }

    /// The agent process dies: scripted tasks stop, pending POSTs fail, pending
    /// agent→client requests are forgotten.
    fn kill_agent(&mut self) {
        self.exited = true;
        self.killed.send_replace(true);
        for (_, waiters) in self.pending.drain() {
            for (_, waiter) in waiters {
                let _ = waiter.send(Answer::Exited);
            }
        }
        self.agent_requests.clear();
    }
}

/// The synthetic notification the adapter sends when the agent exits (§1.4.2).
fn agent_exited(success: bool, code: i32) -> Value {
    json!({"jsonrpc": "2.0", "method": "_adapter/agent_exited", "params": {"success": success, "code": code}})
}

// ---------------------------------------------------------------------------
// HTTP helpers

/// An `application/problem+json` answer (§1.1); `extra` adds extension fields.
fn problem(status: u16, kind: &str, detail: &str, extra: Option<Value>) -> HttpResponse {
    let title: Vec<String> = kind
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
        })
        .collect();
    let mut body = json!({
        "type": format!("urn:sandbox-agent:error:{kind}"),
        "title": title.join(" "),
        "status": status,
        "detail": detail,
    });
    if let (Some(Value::Object(extra)), Some(body)) = (extra, body.as_object_mut()) {
        body.extend(extra);
    }
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/problem+json")
        .body(body.to_string())
}

fn token_invalid() -> HttpResponse {
    problem(401, "token_invalid", "token invalid", Some(json!({"details": {"message": "missing or invalid bearer token"}})))
}

/// A framework error: plain text, not problem+json (§1.1).
fn plain(status: u16, text: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
        .content_type("text/plain; charset=utf-8")
        .body(text.to_string())
}

fn json_ok(body: Value) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(body.to_string())
}

fn unsupported_media_type() -> HttpResponse {
    plain(415, "Expected request with `Content-Type: application/json`")
}

/// Whether the request says its body is JSON (`application/json` or
/// `application/*+json`, parameters allowed).
fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether the `accept` header allows `wanted` (`type/subtype`). A missing
/// header allows it when `missing_ok`.
fn accepts(req: &HttpRequest, wanted: &str, missing_ok: bool) -> bool {
    let Some(value) = req.headers().get(ACCEPT) else { return missing_ok };
    let Ok(value) = value.to_str() else { return false };
    let family = wanted.split('/').next().unwrap_or("");
    value.split(',').any(|range| {
        let range = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        range == wanted || range == "*/*" || range == format!("{family}/*")
    })
}

/// A JSON body, or the plain-text 400 a framework gives for one that is not.
fn parse_body(body: &[u8]) -> Result<Value, Box<HttpResponse>> {
    serde_json::from_slice(body)
        .map_err(|e| Box::new(plain(400, &format!("Failed to parse the request body as JSON: {e}"))))
}

fn server_not_found(server_id: &str) -> HttpResponse {
    problem(404, "session_not_found", &format!("session not found: {server_id}"), Some(json!({"sessionId": server_id})))
}

// ---------------------------------------------------------------------------
// /v1 routes

async fn root() -> HttpResponse {
    json_ok(json!({"name": "Sandbox Agent", "docs": "https://sandboxagent.dev"}))
}

async fn health() -> HttpResponse {
    json_ok(json!({"status": "ok"}))
}

/// `POST /v1/agents/{agent}/install` (§1.3): every known agent is installed.
async fn install(req: HttpRequest, agent: web::Path<String>, body: Bytes) -> HttpResponse {
    if !is_json(&req) {
        return unsupported_media_type();
    }
    match parse_body(&body) {
        Err(res) => return *res,
        Ok(v) if !v.is_object() => return plain(422, "Failed to deserialize the JSON body into the target type"),
        Ok(_) => {}
    }
    let agent = agent.into_inner();
    if AGENTS.iter().any(|(id, _)| *id == agent) {
        json_ok(json!({"already_installed": true, "artifacts": []}))
    } else {
        problem(400, "unsupported_agent", &format!("unsupported agent: {agent}"), Some(json!({"agent": agent})))
    }
}

/// `GET /v1/acp` (§1.4.3).
async fn list_instances(shared: web::Data<Shared>) -> HttpResponse {
    let st = shared.lock();
    let servers: Vec<Value> = st
        .instances
        .iter()
        .map(|(id, i)| json!({"serverId": id, "agent": i.agent, "createdAtMs": i.created_at_ms}))
        .collect();
    json_ok(json!({ "servers": servers }))
}

/// What a POSTed envelope is (§1.4.1).
enum Kind {
    /// `method` and `id`: blocks until the agent answers.
    Request,
    /// `method` without `id`.
    Notification,
    /// Anything else, normally a response to an agent→client request.
    Other,
}

fn kind_of(envelope: &Value) -> Kind {
    match (envelope.get("method"), envelope.get("id")) {
        (Some(_), Some(id)) if !id.is_null() => Kind::Request,
        (Some(_), _) => Kind::Notification,
        _ => Kind::Other,
    }
}

/// `POST /v1/acp/{server_id}[?agent=ID]`: one JSON-RPC envelope (§1.4.1).
async fn acp_post(req: HttpRequest, path: web::Path<String>, body: Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let server_id = path.into_inner();
    if !is_json(&req) {
        return unsupported_media_type();
    }
    if !accepts(&req, "application/json", true) {
        return problem(406, "not_acceptable", "not acceptable: the response is application/json", None);
    }
    let envelope = match parse_body(&body) {
        Ok(v) if v.is_object() => v,
        Ok(_) => return problem(400, "invalid_request", "request body must be a JSON-RPC object", None),
        Err(res) => return *res,
    };
    let query = match web::Query::<HashMap<String, String>>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => return plain(400, &format!("Failed to deserialize query string: {e}")),
    };
    let agent = query.get("agent").map(String::as_str);

    let (rx, waiter, ctx) = {
        let mut st = shared.lock();
        match (st.instances.get(&server_id), agent) {
            (None, None) => {
                return problem(
                    400,
                    "invalid_request",
                    &format!("invalid request: missing required 'agent' query parameter for first POST to /v1/acp/{server_id}"),
                    None,
                )
            }
            (None, Some(a)) if !AGENTS.iter().any(|(id, _)| *id == a) => {
                return problem(400, "unsupported_agent", &format!("unsupported agent: {a}"), Some(json!({"agent": a})))
            }
            (None, Some(a)) => {
                let instance = st.new_instance(a);
                st.instances.insert(server_id.clone(), instance);
            }
            (Some(i), Some(a)) if i.agent != a => {
                return problem(
                    409,
                    "conflict",
                    &format!("conflict: server '{server_id}' already exists for agent '{}'; requested '{a}'", i.agent),
                    None,
                )
            }
            (Some(_), _) => {}
        }
        st.received.push(json!({"serverId": server_id, "envelope": envelope}));
        st.next_waiter += 1;
        let waiter = st.next_waiter;
        let Some(instance) = st.instances.get_mut(&server_id) else {
            return server_not_found(&server_id);
        };
        if instance.exited {
            return problem(
                502,
                "stream_error",
                "stream error: failed writing to agent stdin: Broken pipe (os error 32)",
                Some(json!({"details": {"message": "failed writing to agent stdin: Broken pipe (os error 32)"}})),
            );
        }
        match kind_of(&envelope) {
            Kind::Request => {
                let (tx, rx) = oneshot::channel();
                instance.pending.entry(envelope["id"].to_string()).or_default().push_back((waiter, tx));
                let ctx = Agent {
                    shared: shared.clone().into_inner(),
                    server_id: server_id.clone(),
                    process: instance.process,
                    killed: instance.killed.subscribe(),
                };
                (rx, waiter, ctx)
            }
            Kind::Notification => {
                if envelope["method"] == "session/cancel" {
                    if let Some(turn) = envelope["params"]["sessionId"].as_str().and_then(|s| st.turns.get(s)) {
                        turn.send_replace(true);
                    }
                }
                return HttpResponse::Accepted().finish();
            }
            Kind::Other => {
                if let Some(waiter) = envelope.get("id").and_then(|id| instance.agent_requests.remove(&id.to_string())) {
                    let _ = waiter.send(envelope);
                }
                return HttpResponse::Accepted().finish();
            }
        }
    };

    let id = envelope["id"].to_string();
    actix_web::rt::spawn(run_request(ctx, envelope));
    match tokio::time::timeout(shared.acp_timeout, rx).await {
        Ok(Ok(Answer::Response(response))) => json_ok(response),
        Ok(Ok(Answer::Exited)) | Ok(Err(_)) => {
            problem(500, "agent_process_exited", "agent process exited", None)
        }
        Err(_) => {
            let mut st = shared.lock();
            if let Some(waiters) = st.instances.get_mut(&server_id).and_then(|i| i.pending.get_mut(&id)) {
                waiters.retain(|(w, _)| *w != waiter);
                if waiters.is_empty() {
                    if let Some(i) = st.instances.get_mut(&server_id) {
                        i.pending.remove(&id);
                    }
                }
            }
            problem(
                504,
                "timeout",
                &format!("timeout: no response from the agent within {} ms", shared.acp_timeout.as_millis()),
                None,
            )
        }
    }
}

/// `GET /v1/acp/{server_id}`: the SSE stream (§1.4.2).
async fn acp_events(req: HttpRequest, path: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    let server_id = path.into_inner();
    if !accepts(&req, "text/event-stream", false) {
        return problem(406, "not_acceptable", "not acceptable: the stream is text/event-stream", None);
    }
    let after = match req.headers().get("last-event-id") {
        None => 0,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) => n,
            None => return problem(400, "invalid_request", "Last-Event-ID must be a positive integer", None),
        },
    };
    let rx = {
        let mut st = shared.lock();
        let Some(instance) = st.instances.get_mut(&server_id) else {
            return server_not_found(&server_id);
        };
        // Queue the replay and subscribe under the same lock: nothing is missed
        // or sent twice between the two.
        let (tx, rx) = mpsc::unbounded_channel();
        for (_, frame) in instance.ring.iter().filter(|(id, _)| *id > after) {
            let _ = tx.send(frame.clone());
        }
        instance.subscribers.retain(|s| !s.is_closed());
        instance.subscribers.push(tx);
        rx
    };
    let period = shared.heartbeat;
    let ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // The stream ends when the instance drops the sender (DELETE, reset). When
    // the client goes away, the body (and so `rx`) is dropped, and the next
    // broadcast drops the sender.
    let body = stream::unfold((rx, ticker), |(mut rx, mut ticker)| async move {
        tokio::select! {
            biased;
            frame = rx.recv() => frame.map(|f| (Ok::<_, Infallible>(f), (rx, ticker))),
            _ = ticker.tick() => Some((Ok(Bytes::from_static(b": heartbeat\n\n")), (rx, ticker))),
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

/// `DELETE /v1/acp/{server_id}` (§1.4.4): gone from the list at once; the HTTP
/// answer never comes for a live agent unless `/_fake/delete_hangs` says so.
async fn acp_delete(path: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    let server_id = path.into_inner();
    let (was_live, hangs) = {
        let mut st = shared.lock();
        let hangs = st.delete_hangs;
        match st.instances.remove(&server_id) {
            None => return HttpResponse::NoContent().finish(),
            Some(mut instance) => {
                let was_live = !instance.exited;
                if was_live {
                    instance.kill_agent();
                    instance.broadcast(&agent_exited(true, 0));
                }
                // Dropping the instance drops the subscribers' senders: their
                // streams end after what was queued.
                (was_live, hangs)
            }
        }
    };
    if was_live && hangs {
        future::pending::<()>().await;
    }
    HttpResponse::NoContent().finish()
}

// ---------------------------------------------------------------------------
// /_fake control routes

async fn fake_received(shared: web::Data<Shared>) -> HttpResponse {
    json_ok(Value::Array(shared.lock().received.clone()))
}

/// The server's environment, as its agents would inherit it.
async fn fake_env() -> HttpResponse {
    let env: serde_json::Map<String, Value> =
        std::env::vars().map(|(k, v)| (k, Value::String(v))).collect();
    json_ok(Value::Object(env))
}

async fn fake_delete_hangs(body: Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let hang = match serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["hang"].as_bool()) {
        Some(h) => h,
        None => return problem(400, "invalid_request", "expected {\"hang\": true|false}", None),
    };
    shared.lock().delete_hangs = hang;
    json_ok(json!({ "hang": hang }))
}

async fn fake_exit(path: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    let server_id = path.into_inner();
    let mut st = shared.lock();
    let Some(instance) = st.instances.get_mut(&server_id) else { return server_not_found(&server_id) };
    if !instance.exited {
        instance.kill_agent();
        instance.broadcast(&agent_exited(false, 1));
    }
    HttpResponse::NoContent().finish()
}

async fn fake_reset(path: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    let server_id = path.into_inner();
    let mut st = shared.lock();
    let created = st.created_ms();
    st.next_process += 1;
    let process = st.next_process;
    let Some(instance) = st.instances.get_mut(&server_id) else { return server_not_found(&server_id) };
    instance.created_at_ms = created;
    instance.seq = 0;
    instance.ring.clear();
    instance.subscribers.clear();
    if instance.exited {
        // A dead agent comes back as a new process, which knows no sessions.
        instance.exited = false;
        instance.process = process;
        instance.killed = watch::channel(false).0;
        instance.sessions.clear();
        instance.next_request_id = FIRST_AGENT_REQUEST_ID;
    }
    HttpResponse::NoContent().finish()
}

async fn fake_emit(path: web::Path<String>, body: Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let server_id = path.into_inner();
    let envelope = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v,
        Err(e) => return problem(400, "invalid_request", &format!("the body is not JSON: {e}"), None),
    };
    let mut st = shared.lock();
    let Some(instance) = st.instances.get_mut(&server_id) else { return server_not_found(&server_id) };
    let id = instance.broadcast(&envelope);
    json_ok(json!({ "eventId": id }))
}

async fn fake_subscribers(path: web::Path<String>, shared: web::Data<Shared>) -> HttpResponse {
    let server_id = path.into_inner();
    let mut st = shared.lock();
    let Some(instance) = st.instances.get_mut(&server_id) else { return server_not_found(&server_id) };
    instance.subscribers.retain(|s| !s.is_closed());
    json_ok(json!({ "subscribers": instance.subscribers.len() }))
}

// ---------------------------------------------------------------------------
// The scripted agent

/// A JSON-RPC error: code and message.
type RpcError = (i64, String);

fn invalid_params(message: impl std::fmt::Display) -> RpcError {
    (-32602, format!("Invalid params: {message}"))
}

/// One scripted agent process's handle on its instance, for a task that serves
/// one request.
struct Agent {
    shared: Arc<Shared>,
    server_id: String,
    process: u64,
    killed: watch::Receiver<bool>,
}

impl Agent {
    /// Runs `f` on this agent's instance, if the process is still alive.
    fn with_instance<T>(&self, f: impl FnOnce(&mut Instance) -> T) -> Option<T> {
        let mut st = self.shared.lock();
        match st.instances.get_mut(&self.server_id) {
            Some(i) if i.process == self.process && !i.exited => Some(f(i)),
            _ => None,
        }
    }

    /// Writes one envelope to "stdout" (the SSE stream); `None` once the process
    /// is gone, so a script can stop with `?`.
    fn send(&self, envelope: Value) -> Option<()> {
        self.with_instance(|i| {
            i.broadcast(&envelope);
        })
    }

    /// A `session/update` notification.
    fn update(&self, session: &str, update: Value) -> Option<()> {
        self.send(json!({
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": session, "update": update},
        }))
    }

    /// A text chunk update of `kind`.
    fn chunk(&self, session: &str, kind: &str, text: &str, message_id: Option<&str>) -> Option<()> {
        let mut update = json!({"sessionUpdate": kind, "content": {"type": "text", "text": text}});
        if let Some(m) = message_id {
            update["messageId"] = json!(m);
        }
        self.update(session, update)
    }

    /// Answers a request: on SSE, and to the POST waiting for it (if it has not
    /// given up; a late answer is only broadcast).
    fn respond(&self, id: &Value, outcome: Result<Value, RpcError>) {
        let envelope = match outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, message)) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
        };
        let key = id.to_string();
        self.with_instance(|i| {
            i.broadcast(&envelope);
            let mut answer = Answer::Response(envelope);
            if let Some(waiters) = i.pending.get_mut(&key) {
                while let Some((_, waiter)) = waiters.pop_front() {
                    match waiter.send(answer) {
                        Ok(()) => break,
                        Err(back) => answer = back,
                    }
                }
                if waiters.is_empty() {
                    i.pending.remove(&key);
                }
            }
        });
    }

    /// Sends an agent→client request and waits for the client's response
    /// envelope; `None` if the process dies first.
    async fn ask(&self, method: &str, params: Value) -> Option<Value> {
        let (tx, rx) = oneshot::channel();
        self.with_instance(|i| {
            let id = i.next_request_id;
            i.next_request_id += 1;
            i.agent_requests.insert(json!(id).to_string(), tx);
            i.broadcast(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        })?;
        tokio::select! {
            answer = rx => answer.ok(),
            _ = self.dead() => None,
        }
    }

    /// Completes when the process dies or the instance is deleted.
    async fn dead(&self) {
        let mut killed = self.killed.clone();
        let _ = killed.wait_for(|k| *k).await;
    }

    /// Whether this agent process knows `session` (created or loaded it).
    fn knows(&self, session: &str) -> bool {
        self.with_instance(|i| i.sessions.contains(session)).unwrap_or(false)
    }
}

/// Serves one POSTed request (a spawned task per request, so several can be in
/// flight, as with a real agent).
async fn run_request(agent: Agent, envelope: Value) {
    let id = envelope["id"].clone();
    let method = envelope["method"].as_str().unwrap_or("").to_string();
    let params = envelope.get("params").cloned().unwrap_or(Value::Null);
    let outcome = match method.as_str() {
        "initialize" => {
            let load = agent.with_instance(|i| i.load_session()).unwrap_or(false);
            Some(Ok(json!({
                "protocolVersion": 1,
                "agentCapabilities": {
                    "loadSession": load,
                    "promptCapabilities": {"image": false, "audio": false, "embeddedContext": false},
                },
                "authMethods": [],
                "agentInfo": {"name": "fake", "version": "1.0"},
            })))
        }
        "session/new" => Some(session_new(&agent, &params)),
        "session/load" => session_load(&agent, &params),
        "session/set_mode" if !matches!(params["modeId"].as_str(), Some("default" | "plan")) => {
            Some(Err(invalid_params(format!("unknown mode {}", params["modeId"]))))
        }
        "session/set_mode" | "session/set_model" => Some(match params["sessionId"].as_str() {
            Some(s) if agent.knows(s) => Ok(json!({})),
            Some(s) => Err(invalid_params(format!("unknown session {s}"))),
            None => Err(invalid_params("sessionId is required")),
        }),
        "session/prompt" => prompt(&agent, &params).await,
        _ => Some(Err((-32601, format!("Method not found: {method}")))),
    };
    // `None`: the process died mid-way and answers nothing.
    if let Some(outcome) = outcome {
        agent.respond(&id, outcome);
    }
}

/// Checks `cwd` (absolute) and `mcpServers` (an array) of `session/new` and
/// `session/load`.
fn check_session_params(params: &Value) -> Result<(), RpcError> {
    match params["cwd"].as_str() {
        Some(cwd) if cwd.starts_with('/') => {}
        Some(cwd) => return Err(invalid_params(format!("cwd must be an absolute path, got {cwd:?}"))),
        None => return Err(invalid_params("cwd (an absolute path) is required")),
    }
    if !params["mcpServers"].is_array() {
        return Err(invalid_params("mcpServers (an array) is required"));
    }
    Ok(())
}

fn session_new(agent: &Agent, params: &Value) -> Result<Value, RpcError> {
    check_session_params(params)?;
    let mut st = agent.shared.lock();
    st.next_session += 1;
    let session = format!("sess_{}", st.next_session);
    st.sessions.insert(session.clone(), Vec::new());
    if let Some(i) = st.instances.get_mut(&agent.server_id).filter(|i| i.process == agent.process) {
        i.sessions.insert(session.clone());
    }
    Ok(json!({ "sessionId": session }))
}

/// `session/load`: replays the conversation as `session/update`s, then answers
/// `null` (§1.7). `None` if the process died during the replay.
fn session_load(agent: &Agent, params: &Value) -> Option<Result<Value, RpcError>> {
    if !agent.with_instance(|i| i.load_session())? {
        return Some(Err((-32601, "Method not found: session/load".into())));
    }
    if let Err(e) = check_session_params(params) {
        return Some(Err(e));
    }
    let Some(session) = params["sessionId"].as_str() else {
        return Some(Err(invalid_params("sessionId is required")));
    };
    let Some(conversation) = agent.shared.lock().sessions.get(session).cloned() else {
        return Some(Err(invalid_params(format!("unknown session {session}"))));
    };
    agent.with_instance(|i| i.sessions.insert(session.to_string()))?;
    for (speaker, text) in conversation {
        let kind = match speaker {
            Speaker::User => "user_message_chunk",
            Speaker::Agent => "agent_message_chunk",
        };
        agent.chunk(session, kind, &text, None)?;
    }
    Some(Ok(Value::Null))
}

/// Removes a session's running-prompt entry when the prompt ends, however it
/// ends (answered, or the task stopped because the agent died).
struct TurnGuard {
    shared: Arc<Shared>,
    session: String,
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.shared.lock().turns.remove(&self.session);
    }
}

/// The prompt scripts (see the module docs).
enum Script {
    Default,
    /// An `fs/read_text_file` request to the client (which said it cannot).
    ReadFile,
    Permission,
    Wait,
    Flood(u64),
    Fail,
    /// The response at once, with no update.
    AtOnce,
}

fn choose_script(text: &str) -> Script {
    let text = text.to_lowercase();
    if text.contains("read file") {
        return Script::ReadFile;
    }
    if text.contains("permission") {
        return Script::Permission;
    }
    if text.contains("wait") {
        return Script::Wait;
    }
    if let Some(n) = text
        .match_indices("flood")
        .find_map(|(at, _)| text[at + 5..].split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
    {
        return Script::Flood(n.min(MAX_FLOOD));
    }
    if text.contains("fail") {
        return Script::Fail;
    }
    if text.contains("at once") {
        return Script::AtOnce;
    }
    Script::Default
}

/// `session/prompt`: runs one script. Answers `None` if the process died.
async fn prompt(agent: &Agent, params: &Value) -> Option<Result<Value, RpcError>> {
    let Some(session) = params["sessionId"].as_str() else {
        return Some(Err(invalid_params("sessionId is required")));
    };
    let Some(blocks) = params["prompt"].as_array() else {
        return Some(Err(invalid_params("prompt (an array of content blocks) is required")));
    };
    if !agent.knows(session) {
        return Some(Err(invalid_params(format!("unknown session {session}"))));
    }
    let text: Vec<&str> =
        blocks.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect();
    let text = text.join("\n");

    // One prompt per session at a time.
    let (cancel, tool_call, message) = {
        let mut st = agent.shared.lock();
        if st.turns.contains_key(session) {
            return Some(Err((-32000, format!("session {session} already has a prompt in progress"))));
        }
        let (tx, rx) = watch::channel(false);
        st.turns.insert(session.to_string(), tx);
        st.next_tool_call += 1;
        st.next_message += 1;
        (rx, format!("call_{}", st.next_tool_call), format!("msg_{}", st.next_message))
    };
    let _turn = TurnGuard { shared: agent.shared.clone(), session: session.to_string() };
    let cancelled = || *cancel.borrow();
    let tool = |status: &str| {
        json!({
            "sessionUpdate": "tool_call",
            "toolCallId": tool_call,
            "title": "Edit src/lib.rs",
            "kind": "edit",
            "status": status,
            "locations": [{"path": "/src/lib.rs"}],
        })
    };
    let tool_update = |status: &str| json!({"sessionUpdate": "tool_call_update", "toolCallId": tool_call, "status": status});
    let end = |reason: &str| Ok(json!({ "stopReason": reason }));

    // The reply's text (for the conversation) and the answer.
    let (reply, outcome): (String, Result<Value, RpcError>) = match choose_script(&text) {
        Script::Default => {
            agent.chunk(session, "agent_thought_chunk", "Thinking about it.", None)?;
            agent.update(
                session,
                json!({"sessionUpdate": "plan", "entries": [
                    {"content": "Read the code", "priority": "high", "status": "completed"},
                    {"content": "Fix it", "priority": "medium", "status": "in_progress"},
                ]}),
            )?;
            agent.update(session, tool("pending"))?;
            agent.update(session, tool_update("in_progress"))?;
            let mut done = tool_update("completed");
            done["content"] = json!([{"type": "content", "content": {"type": "text", "text": "edited"}}]);
            agent.update(session, done)?;
            agent.chunk(session, "agent_message_chunk", "Hello", Some(&message))?;
            agent.chunk(session, "agent_message_chunk", " world", Some(&message))?;
            ("Hello world".to_string(), end("end_turn"))
        }
        Script::ReadFile => {
            let answer = agent.ask("fs/read_text_file", json!({"sessionId": session, "path": "/src/lib.rs"})).await?;
            let said = match answer.get("error") {
                Some(err) => format!("cannot read: {}", err["message"].as_str().unwrap_or("error")),
                None => format!("read {}", answer["result"]["content"].as_str().unwrap_or("")),
            };
            agent.chunk(session, "agent_message_chunk", &said, Some(&message))?;
            (said, end("end_turn"))
        }
        Script::Permission => {
            agent.update(session, tool("pending"))?;
            let answer = agent
                .ask(
                    "session/request_permission",
                    json!({
                        "sessionId": session,
                        "toolCall": {"toolCallId": tool_call},
                        "options": [
                            {"optionId": "allow-once", "name": "Allow once", "kind": "allow_once"},
                            {"optionId": "reject-once", "name": "Reject", "kind": "reject_once"},
                        ],
                    }),
                )
                .await?;
            let outcome = &answer["result"]["outcome"];
            if cancelled() || outcome["outcome"] == "cancelled" {
                (String::new(), end("cancelled"))
            } else if outcome["outcome"] == "selected" && outcome["optionId"] == "allow-once" {
                agent.update(session, tool_update("completed"))?;
                agent.chunk(session, "agent_message_chunk", "allowed", Some(&message))?;
                ("allowed".to_string(), end("end_turn"))
            } else {
                // reject-once, an unknown option, or an error answer.
                agent.update(session, tool_update("failed"))?;
                agent.chunk(session, "agent_message_chunk", "rejected", Some(&message))?;
                ("rejected".to_string(), end("end_turn"))
            }
        }
        Script::Wait => {
            agent.chunk(session, "agent_message_chunk", "waiting", Some(&message))?;
            let mut cancel = cancel.clone();
            tokio::select! {
                _ = cancel.wait_for(|c| *c) => {}
                _ = agent.dead() => return None,
            }
            ("waiting".to_string(), end("cancelled"))
        }
        Script::Flood(n) => {
            let mut sent = 0;
            while sent < n && !cancelled() {
                agent.chunk(session, "agent_message_chunk", "x", Some(&message))?;
                sent += 1;
                if sent % 64 == 0 {
                    // Let this worker flush the SSE streams now and then.
                    tokio::task::yield_now().await;
                }
            }
            let reason = if sent < n { "cancelled" } else { "end_turn" };
            ("x".repeat(sent as usize), end(reason))
        }
        Script::Fail => (String::new(), Err((-32000, "scripted failure".to_string()))),
        Script::AtOnce => (String::new(), end("end_turn")),
    };

    let mut st = agent.shared.lock();
    if let Some(conversation) = st.sessions.get_mut(session) {
        conversation.push((Speaker::User, text));
        if !reply.is_empty() {
            conversation.push((Speaker::Agent, reply));
        }
    }
    Some(outcome)
}
