//! A fake of Daytona's public API for Kiln's tests, written from PROTOCOLS.md §2
//! (not from Kiln's client): a real HTTP server on 127.0.0.1 (ephemeral port)
//! whose "sandboxes" are local directories, each its sandbox's home, where
//! commands run as local processes (`bash`, in that directory, with the
//! sandbox's environment). So the real sandbox-agent binary can be started in a
//! sandbox as a process session and reached through a preview URL.
//!
//! Where each behaviour comes from:
//! - §2.1: `Authorization: Bearer <key>` on the control plane (`{url}/api`) and the
//!   toolbox (`{url}/toolbox/{sandboxId}/…`, the sandbox's `toolboxProxyUrl`); a wrong or
//!   missing key is `401`. Errors are NestJS's `{path, timestamp, statusCode, error, message}`.
//! - §2.2: create with every field optional; type errors are `400` with `message` as a
//!   list; snapshot with `cpu`/`memory`/`disk`/`gpu` is `400 "Cannot specify Sandbox
//!   resources when using a snapshot"`; a name in use is `409`. Defaults: the default
//!   snapshot, user `daytona`, `autoStopInterval` 15.
//! - §2.3: states with timing ([`Timing`]): `creating` → `started` (or `error` /
//!   `build_failed` with `errorReason`, injected with [`CreateFault`]); `GET` by id or
//!   name; the list filters on `labels` (a JSON object, every pair must match) and
//!   `states`, and pages with `limit` and `cursor` → `{items, nextCursor}`.
//! - §2.4: stop (`stopping` → `stopped`, every process of the sandbox killed; its home
//!   is kept, as a sandbox's disk is) and start (`starting` → `started`).
//! - §2.5: delete: `destroying` → gone (`404`), or `destroyed` with [`FakeDaytona::keep_destroyed`].
//! - §2.6: `process/execute` pipes the command into bash's stdin in `cwd` (default: the
//!   home), stdout and stderr combined; `timeout` (seconds) kills the process group and
//!   answers `408`; no `timeout`, no limit; a command that cannot start answers
//!   `{"exitCode": -1}`. Sessions: create (`201`), exec (sync `200`, `runAsync` `202` with
//!   the other fields `null`), command status (`exitCode` absent while running), logs
//!   (`text/plain` unless `X-Daytona-SDK-Version` ≥ 0.167.0, then JSON), input (`204`),
//!   delete (`204`, its processes killed). Commands of one session run one after another.
//!   `user-home-dir` and `work-dir` answer `{"dir"}`. A sandbox that no longer exists is
//!   `401` on the toolbox (the control plane says `404`).
//! - §2.7: `ports/{port}/preview-url` answers `{sandboxId, url, token}`; the token changes
//!   each time the sandbox starts. The preview URL (`{url}/preview/{port}-{sandboxId}`)
//!   needs `x-daytona-preview-token` (or the API key as a Bearer token, or a public
//!   sandbox); without it: `307` to a login page. Requests are proxied, streaming, to
//!   that port on 127.0.0.1 (WebSockets too, frame by frame): a fake sandbox's ports
//!   are this machine's, so tests pick free ones.
//!
//! Injectable faults: [`FakeDaytona::fail_next`] (429 with `retry-after`, or any 5xx, on
//! the control plane or the toolbox), [`FakeDaytona::hang_toolbox`] (the toolbox never
//! answers), [`CreateFault`], [`FakeDaytona::set_error`], [`FakeDaytona::vanish`].
//! [`FakeDaytona::calls`] is every request answered, with its body.
//!
//! Not faked: a session's commands sharing one shell (each runs in its own bash, so a
//! `cd` does not carry over), `follow=true` log streaming (answers what there is),
//! signed preview URLs, archive, resize,
//! snapshots and images, volumes, JWT auth and organizations, the toolbox's file, git
//! and PTY APIs.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Map, Value};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake_github::{percent_decode, rfc3339};

pub const ORGANIZATION_ID: &str = "8c0e4d0b-0e6f-4a6b-9a37-2f1f0c1d2e3f";
pub const DEFAULT_SNAPSHOT: &str = "daytonaio/sandbox:0.4.3";
/// From this SDK version on, session command logs are JSON (§2.6).
const JSON_LOGS_SINCE: (u64, u64, u64) = (0, 167, 0);

/// How long each transition takes.
#[derive(Clone, Debug)]
pub struct Timing {
    pub create: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub destroy: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            create: Duration::from_millis(300),
            start: Duration::from_millis(200),
            stop: Duration::from_millis(100),
            destroy: Duration::from_millis(200),
        }
    }
}

/// Where an injected failure applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scope {
    /// The control plane, `/api/...`.
    Api,
    /// The toolbox, `/toolbox/{id}/...`.
    Toolbox,
}

/// What the next create does instead of starting the sandbox.
#[derive(Clone, Debug)]
pub enum CreateFault {
    /// Answers `400 "Sandbox failed to start: <reason>"`; nothing is made.
    FailFast(String),
    /// Answers `creating`, then ends in `error` with this `errorReason`.
    Error(String),
    /// Answers `creating`, then ends in `build_failed` with this `errorReason`.
    BuildFailed(String),
}

/// One request the fake answered.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    /// The path with the query as sent.
    pub path: String,
    pub status: u16,
    /// The body, when it was JSON.
    pub body: Option<Value>,
    pub sdk_version: Option<String>,
    /// It carried the right API key.
    pub authorized: bool,
    /// When it arrived, and how long the fake took to answer it (to the answer's
    /// head: a proxied body may stream on), so a bench can tell the fake's time from Kiln's.
    pub at: Instant,
    pub took: Duration,
}

/// The running fake; stops on drop, killing every process its sandboxes run.
pub struct FakeDaytona {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    server: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    _root: tempfile::TempDir,
}

struct Shared {
    key: String,
    base: String,
    root: PathBuf,
    /// Mixed into preview tokens.
    secret: String,
    state: Mutex<State>,
}

struct Fault {
    scope: Scope,
    left: usize,
    status: u16,
    retry_after: Option<u64>,
}

struct State {
    /// In creation order.
    sandboxes: Vec<Sandbox>,
    seq: u64,
    timing: Timing,
    keep_destroyed: bool,
    faults: Vec<Fault>,
    hang_toolbox: bool,
    next_create: Option<CreateFault>,
    calls: Vec<Call>,
    /// Ports each new sandbox gets a host port of its own for ([`FakeDaytona::private_ports`]).
    private_ports: Vec<u16>,
}

struct Sandbox {
    id: String,
    name: String,
    seq: u64,
    state: String,
    desired: String,
    error_reason: Option<String>,
    request: Map<String, Value>,
    env: Map<String, Value>,
    labels: Map<String, Value>,
    created_at: String,
    updated_at: String,
    home: PathBuf,
    /// The state it reaches at that instant, and the `errorReason` that comes with it.
    pending: Option<(Instant, &'static str, Option<String>)>,
    /// Counts starts: part of the preview token.
    epoch: u64,
    procs: Procs,
    sessions: HashMap<String, Arc<Session>>,
    /// Its own host port for each private port: what its previews of that port reach.
    ports: HashMap<u16, u16>,
}

/// The process groups a sandbox runs (each command leads its own).
type Procs = Arc<Mutex<HashSet<i32>>>;

/// A process session: its commands run one after another.
struct Session {
    id: String,
    turn: Arc<tokio::sync::Mutex<()>>,
    commands: Mutex<Vec<Arc<SessionCommand>>>,
}

struct SessionCommand {
    id: String,
    command: String,
    out: Mutex<Output>,
    exit_code: Mutex<Option<i64>>,
    pgid: Mutex<Option<i32>>,
    stdin: tokio::sync::Mutex<Option<tokio::process::ChildStdin>>,
    done: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    combined: Vec<u8>,
}

/// What a sandbox's commands need, copied out of the lock.
#[derive(Clone)]
struct RunCtx {
    home: PathBuf,
    env: Vec<(String, String)>,
    procs: Procs,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn uuid() -> String {
    let h = hex::encode(rand::random::<[u8; 16]>());
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

impl FakeDaytona {
    /// Starts the fake with the default [`Timing`].
    pub fn start() -> FakeDaytona {
        FakeDaytona::with_timing(Timing::default())
    }

    /// Starts the server on its own thread with its own actix System; stops on drop.
    pub fn with_timing(timing: Timing) -> FakeDaytona {
        let root = tempfile::Builder::new().prefix("kiln-fake-daytona-").tempdir().expect("tempdir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake daytona");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            key: format!("dtn_{}", hex::encode(rand::random::<[u8; 24]>())),
            base: url.clone(),
            root: root.path().to_path_buf(),
            secret: hex::encode(rand::random::<[u8; 16]>()),
            state: Mutex::new(State {
                sandboxes: Vec::new(),
                seq: 0,
                timing,
                keep_destroyed: false,
                faults: Vec::new(),
                hang_toolbox: false,
                next_create: None,
                calls: Vec::new(),
                private_ports: Vec::new(),
            }),
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
        let server = rx.recv().expect("fake daytona started");
        FakeDaytona { url, shared, server, thread: Some(thread), _root: root }
    }

    /// The control plane's base, as `api_url` takes it: `{url}/api`.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.url)
    }

    /// The one API key it accepts.
    pub fn key(&self) -> String {
        self.shared.key.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Every request answered so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The bodies of the creates that were answered (any status).
    pub fn creates(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.path.split('?').next() == Some("/api/sandbox"))
            .map(|c| c.body.unwrap_or_else(|| json!({})))
            .collect()
    }

    /// The next `count` requests to `scope` (after auth) answer `status`, with
    /// `retry-after` when given.
    pub fn fail_next(&self, scope: Scope, count: usize, status: u16, retry_after: Option<u64>) {
        self.state().faults.push(Fault { scope, left: count, status, retry_after });
    }

    /// Drops the failures not yet answered.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// While on, toolbox requests are never answered.
    pub fn hang_toolbox(&self, on: bool) {
        self.state().hang_toolbox = on;
    }

    /// What the next create does.
    pub fn next_create(&self, fault: CreateFault) {
        self.state().next_create = Some(fault);
    }

    /// A deleted sandbox stays listed as `destroyed` instead of vanishing.
    pub fn keep_destroyed(&self, on: bool) {
        self.state().keep_destroyed = on;
    }

    pub fn set_timing(&self, timing: Timing) {
        self.state().timing = timing;
    }

    /// Finishes the sandbox's transition now (e.g. `creating` → `started`).
    pub fn advance(&self, id: &str) {
        let mut state = self.state();
        if let Some(sb) = state.sandboxes.iter_mut().find(|s| s.id == id) {
            if let Some(p) = sb.pending.as_mut() {
                p.0 = Instant::now();
            }
        }
        state.settle();
    }

    /// Puts the sandbox in `error` with this reason, its processes killed.
    pub fn set_error(&self, id: &str, reason: &str) {
        let mut state = self.state();
        if let Some(sb) = state.sandboxes.iter_mut().find(|s| s.id == id) {
            sb.kill_all();
            sb.pending = None;
            sb.error_reason = Some(reason.to_string());
            sb.set_state("error");
        }
    }

    /// The sandbox is gone without a delete (control plane 404, toolbox 401).
    pub fn vanish(&self, id: &str) {
        let mut state = self.state();
        if let Some(i) = state.sandboxes.iter().position(|s| s.id == id) {
            state.sandboxes.remove(i).kill_all();
        }
    }

    /// The sandbox's state now, `None` once it is gone.
    pub fn sandbox_state(&self, id: &str) -> Option<String> {
        let mut state = self.state();
        state.settle();
        state.sandboxes.iter().find(|s| s.id == id).map(|s| s.state.clone())
    }

    /// The sandbox's home (its local directory).
    pub fn home(&self, id: &str) -> Option<PathBuf> {
        self.state().sandboxes.iter().find(|s| s.id == id).map(|s| s.home.clone())
    }

    /// A real sandbox has a network of its own; the fake's share this machine's,
    /// so twenty sandboxes cannot all listen on one port. From now on each new
    /// sandbox gets a free host port of its own for each of `ports`: its commands
    /// see it as `DAYTONA_FAKE_PORT_<port>`, and its preview URL of `port` reaches
    /// it. A program that takes `--port` learns it through [`FakeDaytona::port_mapper`].
    pub fn private_ports(&self, ports: &[u16]) {
        self.state().private_ports = ports.to_vec();
    }

    /// A wrapper for `bin` (as a sandbox's image would ship it) that runs `bin`
    /// with `--port N` replaced by the sandbox's own `DAYTONA_FAKE_PORT_N`, when it
    /// has one. Answers its path.
    pub fn port_mapper(&self, bin: &str) -> String {
        let dir = self.shared.root.join("bin");
        std::fs::create_dir_all(&dir).expect("wrapper dir");
        let path = dir.join(format!("port-mapped-{}", Path::new(bin).file_name().and_then(|n| n.to_str()).unwrap_or("bin")));
        let script = format!(
            "#!/usr/bin/env bash\n\
             # {bin} as a fake Daytona sandbox runs it: on the sandbox's own port.\n\
             args=()\n\
             while [ $# -gt 0 ]; do\n\
             \x20 if [ \"$1\" = --port ] && [ $# -gt 1 ]; then var=DAYTONA_FAKE_PORT_$2; args+=(--port \"${{!var:-$2}}\"); shift 2; continue; fi\n\
             \x20 args+=(\"$1\"); shift\n\
             done\n\
             exec '{bin}' \"${{args[@]}}\"\n"
        );
        std::fs::write(&path, script).expect("write wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
        path.to_string_lossy().into_owned()
    }

    /// The sandboxes not yet deleted: `(id, name)`, in creation order.
    pub fn sandboxes(&self) -> Vec<(String, String)> {
        let mut state = self.state();
        state.settle();
        state.sandboxes.iter().filter(|s| s.state != "destroyed").map(|s| (s.id.clone(), s.name.clone())).collect()
    }

    /// How many sandboxes are not yet deleted.
    pub fn live_sandboxes(&self) -> usize {
        self.sandboxes().len()
    }

    /// How many process groups the sandbox runs now.
    pub fn process_groups(&self, id: &str) -> usize {
        self.state().sandboxes.iter().find(|s| s.id == id).map(|s| lock(&s.procs).len()).unwrap_or(0)
    }
}

impl Drop for FakeDaytona {
    fn drop(&mut self) {
        for sb in &lock(&self.shared.state).sandboxes {
            sb.kill_all();
        }
        drop(self.server.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl State {
    /// Applies the transitions whose time has come; drops the destroyed.
    fn settle(&mut self) {
        let now = Instant::now();
        for sb in &mut self.sandboxes {
            if let Some((at, next, reason)) = sb.pending.take() {
                if now >= at {
                    if reason.is_some() {
                        sb.error_reason = reason;
                    }
                    sb.set_state(next);
                } else {
                    sb.pending = Some((at, next, reason));
                }
            }
        }
        if !self.keep_destroyed {
            self.sandboxes.retain(|s| s.state != "destroyed");
        }
    }

    fn find(&mut self, id_or_name: &str) -> Option<&mut Sandbox> {
        self.settle();
        self.sandboxes.iter_mut().find(|s| s.id == id_or_name || s.name == id_or_name)
    }

    /// An injected failure for `scope`, if one is left.
    fn fault(&mut self, scope: Scope) -> Option<(u16, Option<u64>)> {
        let i = self.faults.iter().position(|f| f.scope == scope && f.left > 0)?;
        let f = &mut self.faults[i];
        f.left -= 1;
        let out = (f.status, f.retry_after);
        self.faults.retain(|f| f.left > 0);
        Some(out)
    }
}

impl Sandbox {
    fn set_state(&mut self, state: &str) {
        self.state = state.to_string();
        if state == "started" || state == "creating" {
            self.error_reason = None;
        }
        self.updated_at = rfc3339(now_secs());
    }

    /// Starts a transition: `now` is the state at once, `then` after `after`.
    fn transition(&mut self, now: &str, then: &'static str, after: Duration, reason: Option<String>) {
        self.set_state(now);
        self.pending = Some((Instant::now() + after, then, reason));
    }

    fn kill_all(&self) {
        for pgid in lock(&self.procs).drain() {
            kill_group(pgid);
        }
    }

    fn stop_everything(&mut self) {
        self.kill_all();
        self.sessions.clear();
    }

    fn run_ctx(&self) -> RunCtx {
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), self.home.display().to_string()),
            ("USER".into(), self.request_str("user").unwrap_or("daytona").to_string()),
            ("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())),
            ("LANG".into(), "C.UTF-8".into()),
            ("DAYTONA_SANDBOX_ID".into(), self.id.clone()),
        ];
        env.extend(self.ports.iter().map(|(port, host)| (format!("DAYTONA_FAKE_PORT_{port}"), host.to_string())));
        env.extend(self.env.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))));
        RunCtx { home: self.home.clone(), env, procs: self.procs.clone() }
    }

    fn request_str(&self, key: &str) -> Option<&str> {
        self.request.get(key).and_then(Value::as_str)
    }

    fn view(&self, base: &str) -> Value {
        let r = &self.request;
        let snapshot = match r.get("snapshot").and_then(Value::as_str) {
            Some(s) => json!(s),
            None if ["cpu", "memory", "disk", "gpu"].iter().any(|k| r.get(*k).is_some_and(|v| !v.is_null())) => Value::Null,
            None => json!(DEFAULT_SNAPSHOT),
        };
        let int = |k: &str, d: i64| r.get(k).and_then(Value::as_i64).unwrap_or(d);
        let desired = match self.state.as_str() {
            "destroying" | "destroyed" => "destroyed",
            "stopping" | "stopped" => "stopped",
            _ => self.desired.as_str(),
        };
        json!({
            "id": self.id, "name": self.name, "organizationId": ORGANIZATION_ID,
            "state": self.state, "desiredState": desired,
            "errorReason": self.error_reason, "recoverable": self.error_reason.as_ref().map(|_| false),
            "snapshot": snapshot, "user": self.request_str("user").unwrap_or("daytona"),
            "env": self.env, "labels": self.labels,
            "public": r.get("public").and_then(Value::as_bool).unwrap_or(false),
            "target": self.request_str("target").unwrap_or("us"),
            "cpu": int("cpu", 1), "gpu": int("gpu", 0), "memory": int("memory", 1), "disk": int("disk", 3),
            "networkBlockAll": r.get("networkBlockAll").and_then(Value::as_bool).unwrap_or(false),
            "autoStopInterval": int("autoStopInterval", 15),
            "autoArchiveInterval": int("autoArchiveInterval", 10080),
            "autoDeleteInterval": int("autoDeleteInterval", -1),
            "toolboxProxyUrl": format!("{base}/toolbox"),
            "createdAt": self.created_at, "updatedAt": self.updated_at,
        })
    }
}

/// NestJS's error body (§2.1).
fn nest_error(status: u16, path: &str, message: Value) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status).expect("a valid status");
    let body = json!({
        "path": path, "timestamp": rfc3339(now_secs()), "statusCode": status,
        "error": code.canonical_reason().unwrap_or("Error"), "message": message,
    });
    HttpResponse::build(code).json(body)
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The one handler: routes by hand, then records the call.
async fn entry(req: HttpRequest, payload: web::Payload, shared: web::Data<Shared>) -> HttpResponse {
    let (shared, at) = (shared.into_inner(), Instant::now());
    let upgrade = header(&req, "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let (body, payload) = if upgrade {
        (web::Bytes::new(), Some(payload))
    } else {
        match payload.to_bytes_limited(32 * 1024 * 1024).await {
            Ok(Ok(bytes)) => (bytes, None),
            _ => return HttpResponse::PayloadTooLarge().finish(),
        }
    };
    let path = req.path().to_string();
    let full = if req.query_string().is_empty() { path.clone() } else { format!("{path}?{}", req.query_string()) };
    let authorized = header(&req, "authorization").as_deref() == Some(format!("Bearer {}", shared.key).as_str());
    let json_body = serde_json::from_slice::<Value>(&body).ok();
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let res = match segments.first().map(String::as_str) {
        Some("api") => api(&shared, &req, &body, &segments[1..], authorized),
        Some("toolbox") => toolbox(&shared, &req, body.clone(), &segments[1..], authorized).await,
        Some("preview") => preview(&shared, &req, body.clone(), payload, &segments[1..], authorized).await,
        _ => nest_error(404, &path, json!(format!("Cannot {} {path}", req.method()))),
    };
    lock(&shared.state).calls.push(Call {
        method: req.method().to_string(),
        path: full,
        status: res.status().as_u16(),
        body: json_body,
        sdk_version: header(&req, "x-daytona-sdk-version"),
        authorized,
        at,
        took: at.elapsed(),
    });
    res
}

/// Answers an injected failure.
fn injected(path: &str, status: u16, retry_after: Option<u64>) -> HttpResponse {
    let message = if status == 429 { "ThrottlerException: Too Many Requests" } else { "Internal server error" };
    let mut res = nest_error(status, path, json!(message));
    if let Some(secs) = retry_after {
        res.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_str(&secs.to_string()).expect("digits"),
        );
    }
    res
}

fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string()).map(|q| q.into_inner()).unwrap_or_default()
}

/// The control plane, under the state lock.
fn api(shared: &Shared, req: &HttpRequest, body: &[u8], rest: &[String], authorized: bool) -> HttpResponse {
    let path = req.path();
    if !authorized {
        return nest_error(401, path, json!("Unauthorized"));
    }
    let mut state = lock(&shared.state);
    if let Some((status, retry_after)) = state.fault(Scope::Api) {
        return injected(path, status, retry_after);
    }
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let method = req.method().as_str();
    let base = shared.base.as_str();
    match (method, rest.as_slice()) {
        ("POST", ["sandbox"]) => create(shared, &mut state, path, body),
        ("GET", ["sandbox"]) => list(&mut state, req, base),
        ("GET", ["sandbox", id]) => match state.find(id) {
            Some(sb) => HttpResponse::Ok().json(sb.view(base)),
            None => sandbox_404(path, id),
        },
        ("DELETE", ["sandbox", id]) => {
            let after = state.timing.destroy;
            match state.find(id) {
                Some(sb) => {
                    if !matches!(sb.state.as_str(), "destroying" | "destroyed") {
                        sb.stop_everything();
                        sb.desired = "destroyed".into();
                        sb.transition("destroying", "destroyed", after, None);
                    }
                    HttpResponse::Ok().json(sb.view(base))
                }
                None => sandbox_404(path, id),
            }
        }
        ("POST", ["sandbox", id, "start"]) => {
            let after = state.timing.start;
            match state.find(id) {
                Some(sb) => match sb.state.as_str() {
                    "started" | "starting" => HttpResponse::Ok().json(sb.view(base)),
                    "stopped" | "archived" | "paused" => {
                        sb.epoch += 1;
                        sb.desired = "started".into();
                        sb.transition("starting", "started", after, None);
                        HttpResponse::Ok().json(sb.view(base))
                    }
                    other => nest_error(400, path, json!(format!("Sandbox is not in a valid state to be started (state: {other})"))),
                },
                None => sandbox_404(path, id),
            }
        }
        ("POST", ["sandbox", id, "stop"]) => {
            let after = state.timing.stop;
            match state.find(id) {
                Some(sb) => match sb.state.as_str() {
                    "stopped" | "stopping" => HttpResponse::Ok().json(sb.view(base)),
                    "started" => {
                        sb.stop_everything();
                        sb.desired = "stopped".into();
                        sb.transition("stopping", "stopped", after, None);
                        HttpResponse::Ok().json(sb.view(base))
                    }
                    other => nest_error(400, path, json!(format!("Sandbox is not in a valid state to be stopped (state: {other})"))),
                },
                None => sandbox_404(path, id),
            }
        }
        ("GET", ["sandbox", id, "ports", port, "preview-url"]) => {
            let Some(port) = port.parse::<u16>().ok().filter(|p| *p > 0) else {
                return nest_error(400, path, json!(["port must be a number between 1 and 65535"]));
            };
            let secret = shared.secret.clone();
            match state.find(id) {
                Some(sb) => HttpResponse::Ok().json(json!({
                    "sandboxId": sb.id,
                    "url": format!("{base}/preview/{port}-{}", sb.id),
                    "token": preview_token(&secret, &sb.id, port, sb.epoch),
                })),
                None => sandbox_404(path, id),
            }
        }
        _ => nest_error(404, path, json!(format!("Cannot {method} {path}"))),
    }
}

fn sandbox_404(path: &str, id: &str) -> HttpResponse {
    nest_error(404, path, json!(format!("Sandbox with ID or name {id} not found")))
}

fn preview_token(secret: &str, id: &str, port: u16, epoch: u64) -> String {
    hex::encode(sha2::Sha256::digest(format!("{secret}:{id}:{port}:{epoch}").as_bytes()))[..32].to_string()
}

fn create(shared: &Shared, state: &mut State, path: &str, body: &[u8]) -> HttpResponse {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => v,
            Err(e) => return nest_error(400, path, json!(format!("Unexpected token in JSON: {e}"))),
        }
    };
    let Value::Object(request) = request else {
        return nest_error(400, path, json!(["body must be an object"]));
    };
    let mut problems = Vec::new();
    let present = |k: &str| request.get(k).filter(|v| !v.is_null());
    for k in ["name", "snapshot", "user", "target", "class"] {
        if present(k).is_some_and(|v| !v.is_string()) {
            problems.push(format!("{k} must be a string"));
        }
    }
    for k in ["cpu", "gpu", "memory", "disk", "autoStopInterval", "autoArchiveInterval", "autoDeleteInterval"] {
        if present(k).is_some_and(|v| !(v.is_i64() || v.is_u64())) {
            problems.push(format!("{k} must be an integer number"));
        }
    }
    for k in ["public", "networkBlockAll"] {
        if present(k).is_some_and(|v| !v.is_boolean()) {
            problems.push(format!("{k} must be a boolean value"));
        }
    }
    for k in ["env", "labels"] {
        if present(k).is_some_and(|v| !v.as_object().is_some_and(|m| m.values().all(Value::is_string))) {
            problems.push(format!("{k} must be an object of strings"));
        }
    }
    if !problems.is_empty() {
        return nest_error(400, path, json!(problems));
    }
    if present("snapshot").is_some() && ["cpu", "memory", "disk", "gpu"].iter().any(|k| present(k).is_some()) {
        return nest_error(400, path, json!("Cannot specify Sandbox resources when using a snapshot"));
    }
    let id = uuid();
    let name = present("name").and_then(Value::as_str).unwrap_or(&id).to_string();
    state.settle();
    if state.sandboxes.iter().any(|s| s.name == name) {
        return nest_error(409, path, json!(format!("Sandbox with name {name} already exists")));
    }
    let (then, reason) = match state.next_create.take() {
        Some(CreateFault::FailFast(reason)) => {
            return nest_error(400, path, json!(format!("Sandbox failed to start: {reason}")));
        }
        Some(CreateFault::Error(reason)) => ("error", Some(reason)),
        Some(CreateFault::BuildFailed(reason)) => ("build_failed", Some(reason)),
        None => ("started", None),
    };
    let home = shared.root.join(&id);
    if let Err(e) = std::fs::create_dir_all(&home) {
        return nest_error(500, path, json!(format!("Internal server error: {e}")));
    }
    state.seq += 1;
    let at = rfc3339(now_secs());
    let mut sb = Sandbox {
        id,
        name,
        seq: state.seq,
        state: String::new(),
        desired: "started".into(),
        error_reason: None,
        env: present("env").and_then(Value::as_object).cloned().unwrap_or_default(),
        labels: present("labels").and_then(Value::as_object).cloned().unwrap_or_default(),
        request,
        created_at: at.clone(),
        updated_at: at,
        home,
        pending: None,
        epoch: 0,
        procs: Arc::default(),
        sessions: HashMap::new(),
        ports: HashMap::new(),
    };
    for port in state.private_ports.clone() {
        match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => sb.ports.insert(port, addr.port()),
            Err(e) => return nest_error(500, path, json!(format!("Internal server error: {e}"))),
        };
    }
    sb.transition("creating", then, state.timing.create, reason);
    let view = sb.view(&shared.base);
    state.sandboxes.push(sb);
    HttpResponse::Ok().json(view)
}

const STATES: &[&str] = &[
    "creating", "restoring", "destroyed", "destroying", "started", "stopped", "starting", "stopping", "error",
    "build_failed", "pending_build", "building_snapshot", "unknown", "pulling_snapshot", "archived", "archiving",
    "resizing", "snapshotting", "forking", "pausing", "paused", "resuming",
];

fn list(state: &mut State, req: &HttpRequest, base: &str) -> HttpResponse {
    let path = req.path();
    let (mut labels, mut states, mut limit, mut cursor) = (Map::new(), Vec::new(), 100usize, 0u64);
    for (k, v) in query_pairs(req) {
        match k.as_str() {
            "labels" => match serde_json::from_str::<Value>(&v) {
                Ok(Value::Object(m)) => labels = m,
                _ => return nest_error(400, path, json!(["labels must be a JSON object"])),
            },
            "states" => {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    if !STATES.contains(&s) {
                        return nest_error(400, path, json!([format!("each value in states must be one of: {}", STATES.join(", "))]));
                    }
                    states.push(s.to_string());
                }
            }
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=200).contains(&n) => limit = n,
                _ => return nest_error(400, path, json!(["limit must not be less than 1", "limit must not be greater than 200"])),
            },
            "cursor" => match v.parse::<u64>() {
                Ok(n) => cursor = n,
                Err(_) => return nest_error(400, path, json!("Invalid cursor")),
            },
            _ => {}
        }
    }
    state.settle();
    let matching: Vec<&Sandbox> = state
        .sandboxes
        .iter()
        .filter(|s| s.seq > cursor)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .filter(|s| states.is_empty() || states.contains(&s.state))
        .collect();
    let page: Vec<Value> = matching.iter().take(limit).map(|s| s.view(base)).collect();
    let next = (matching.len() > limit).then(|| matching[limit - 1].seq.to_string());
    HttpResponse::Ok().json(json!({"items": page, "nextCursor": next}))
}

/// The toolbox (§2.6): auth, the sandbox (gone: 401), faults, then the route.
async fn toolbox(shared: &Shared, req: &HttpRequest, body: web::Bytes, rest: &[String], authorized: bool) -> HttpResponse {
    let path = req.path().to_string();
    if !authorized {
        return nest_error(401, &path, json!("Unauthorized"));
    }
    let Some((id, rest)) = rest.split_first() else { return nest_error(404, &path, json!("Not Found")) };
    let (ctx, session, hang) = {
        let mut state = lock(&shared.state);
        let hang = state.hang_toolbox;
        let Some(sb) = state.find(id) else { return nest_error(401, &path, json!("Unauthorized")) };
        if sb.state != "started" {
            let msg = format!("Sandbox is not started (state: {})", sb.state);
            return nest_error(400, &path, json!(msg));
        }
        let ctx = sb.run_ctx();
        let session = rest.get(2).and_then(|sid| sb.sessions.get(sid).cloned());
        if let Some((status, retry_after)) = state.fault(Scope::Toolbox) {
            return injected(&path, status, retry_after);
        }
        (ctx, session, hang)
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return nest_error(400, &path, json!(format!("invalid request body: {e}"))),
        }
    };
    let method = req.method().as_str();
    let no_session = || nest_error(404, &path, json!("session not found"));
    match (method, rest.as_slice(), session) {
        ("GET", ["user-home-dir"], _) | ("GET", ["work-dir"], _) => HttpResponse::Ok().json(json!({"dir": ctx.home})),
        ("POST", ["process", "execute"], _) => execute(&ctx, &body, &path).await,
        ("POST", ["process", "session"], _) => {
            let Some(sid) = body["sessionId"].as_str().filter(|s| !s.is_empty()) else {
                return nest_error(400, &path, json!("sessionId is required"));
            };
            let mut state = lock(&shared.state);
            let Some(sb) = state.find(id) else { return nest_error(401, &path, json!("Unauthorized")) };
            if sb.sessions.contains_key(sid) {
                return nest_error(409, &path, json!(format!("session {sid} already exists")));
            }
            let session = Session { id: sid.to_string(), turn: Arc::default(), commands: Mutex::default() };
            sb.sessions.insert(sid.to_string(), Arc::new(session));
            HttpResponse::Created().finish()
        }
        ("GET", ["process", "session"], _) => {
            let mut state = lock(&shared.state);
            let Some(sb) = state.find(id) else { return nest_error(401, &path, json!("Unauthorized")) };
            let sessions: Vec<Value> = sb.sessions.values().map(|s| session_view(s)).collect();
            HttpResponse::Ok().json(sessions)
        }
        ("GET", ["process", "session", _], Some(s)) => HttpResponse::Ok().json(session_view(&s)),
        ("DELETE", ["process", "session", sid], Some(s)) => {
            for cmd in lock(&s.commands).iter() {
                if let Some(pgid) = *lock(&cmd.pgid) {
                    kill_group(pgid);
                    lock(&ctx.procs).remove(&pgid);
                }
            }
            if let Some(sb) = lock(&shared.state).find(id) {
                sb.sessions.remove(*sid);
            }
            HttpResponse::NoContent().finish()
        }
        ("POST", ["process", "session", _, "exec"], Some(s)) => session_exec(&ctx, &s, &body, &path).await,
        ("GET", ["process", "session", _, "command", cid], Some(s)) => match find_command(&s, cid) {
            Some(c) => HttpResponse::Ok().json(command_view(&c)),
            None => nest_error(404, &path, json!("command not found")),
        },
        ("GET", ["process", "session", _, "command", cid, "logs"], Some(s)) => match find_command(&s, cid) {
            Some(c) => {
                let out = lock(&c.out);
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                if header(req, "x-daytona-sdk-version").is_some_and(|v| json_logs(&v)) {
                    HttpResponse::Ok().json(json!({"output": text(&out.combined), "stdout": text(&out.stdout), "stderr": text(&out.stderr)}))
                } else {
                    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(out.combined.clone())
                }
            }
            None => nest_error(404, &path, json!("command not found")),
        },
        ("POST", ["process", "session", _, "command", cid, "input"], Some(s)) => {
            let Some(c) = find_command(&s, cid) else { return nest_error(404, &path, json!("command not found")) };
            let Some(data) = body["data"].as_str() else { return nest_error(400, &path, json!("data is required")) };
            let mut stdin = c.stdin.lock().await;
            let Some(pipe) = stdin.as_mut() else {
                return nest_error(400, &path, json!("command is not running"));
            };
            match pipe.write_all(data.as_bytes()).await {
                Ok(()) => HttpResponse::NoContent().finish(),
                Err(e) => nest_error(400, &path, json!(format!("failed to write to command: {e}"))),
            }
        }
        (_, ["process", "session", ..], None) => no_session(),
        _ => nest_error(404, &path, json!("Not Found")),
    }
}

/// `0.167.0` or later (a leading `v` allowed).
fn json_logs(version: &str) -> bool {
    let mut parts = version.trim().trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
    let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    v >= JSON_LOGS_SINCE
}

fn session_view(s: &Session) -> Value {
    let commands: Vec<Value> = lock(&s.commands).iter().map(|c| command_view(c)).collect();
    json!({"sessionId": s.id, "commands": commands})
}

fn command_view(c: &SessionCommand) -> Value {
    let mut v = json!({"id": c.id, "command": c.command});
    if let Some(code) = *lock(&c.exit_code) {
        v["exitCode"] = json!(code);
    }
    v
}

fn find_command(s: &Session, cid: &str) -> Option<Arc<SessionCommand>> {
    lock(&s.commands).iter().find(|c| c.id == cid).cloned()
}

fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(sig)) => 128 + i64::from(sig),
        (None, None) => -1,
    }
}

fn command(ctx: &RunCtx, cwd: Option<&str>, extra: &Map<String, Value>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.current_dir(cwd.map(PathBuf::from).unwrap_or_else(|| ctx.home.clone()))
        .env_clear()
        .envs(ctx.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v))))
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// `process/execute`: the command through bash's stdin, output combined.
async fn execute(ctx: &RunCtx, body: &Value, path: &str) -> HttpResponse {
    let Some(script) = body["command"].as_str().filter(|c| !c.trim().is_empty()) else {
        return nest_error(400, path, json!("command is required"));
    };
    let envs = body["envs"].as_object().cloned().unwrap_or_default();
    let timeout = body["timeout"].as_u64().filter(|t| *t > 0).map(Duration::from_secs);
    let mut cmd = command(ctx, body["cwd"].as_str(), &envs);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return HttpResponse::Ok().json(json!({"exitCode": -1, "result": e.to_string()})),
    };
    let pgid = child.id().map(|p| p as i32);
    if let Some(pgid) = pgid {
        lock(&ctx.procs).insert(pgid);
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(format!("exec 2>&1\n{script}\n").as_bytes()).await;
    }
    let waited = match timeout {
        Some(t) => tokio::time::timeout(t, child.wait_with_output()).await,
        None => Ok(child.wait_with_output().await),
    };
    if let Some(pgid) = pgid {
        lock(&ctx.procs).remove(&pgid);
    }
    match waited {
        Ok(Ok(out)) => HttpResponse::Ok().json(json!({
            "exitCode": exit_code(out.status), "result": String::from_utf8_lossy(&out.stdout),
        })),
        Ok(Err(e)) => HttpResponse::Ok().json(json!({"exitCode": -1, "result": e.to_string()})),
        Err(_) => {
            if let Some(pgid) = pgid {
                kill_group(pgid);
            }
            nest_error(408, path, json!("command execution timeout"))
        }
    }
}

/// `process/session/{id}/exec`: queued behind the session's earlier commands.
async fn session_exec(ctx: &RunCtx, session: &Arc<Session>, body: &Value, path: &str) -> HttpResponse {
    let Some(script) = body["command"].as_str().filter(|c| !c.trim().is_empty()) else {
        return nest_error(400, path, json!("command is required"));
    };
    let run_async = body["runAsync"].as_bool().or_else(|| body["async"].as_bool()).unwrap_or(false);
    let (done, mut finished) = tokio::sync::watch::channel(false);
    let cmd = Arc::new(SessionCommand {
        id: uuid(),
        command: script.to_string(),
        out: Mutex::default(),
        exit_code: Mutex::new(None),
        pgid: Mutex::new(None),
        stdin: tokio::sync::Mutex::new(None),
        done,
    });
    lock(&session.commands).push(cmd.clone());
    actix_web::rt::spawn(run_session_command(ctx.clone(), session.turn.clone(), cmd.clone()));
    if run_async {
        return HttpResponse::Accepted().json(json!({"cmdId": cmd.id, "output": null, "exitCode": null, "stdout": null, "stderr": null}));
    }
    let _ = finished.wait_for(|d| *d).await;
    let out = lock(&cmd.out);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    HttpResponse::Ok().json(json!({
        "cmdId": cmd.id, "exitCode": *lock(&cmd.exit_code),
        "output": text(&out.combined), "stdout": text(&out.stdout), "stderr": text(&out.stderr),
    }))
}

async fn run_session_command(ctx: RunCtx, turn: Arc<tokio::sync::Mutex<()>>, cmd: Arc<SessionCommand>) {
    let _turn = turn.lock_owned().await;
    let mut c = command(&ctx, None, &Map::new());
    c.arg("-c").arg(&cmd.command);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = match c.spawn() {
        Ok(child) => child,
        Err(e) => {
            lock(&cmd.out).combined.extend_from_slice(e.to_string().as_bytes());
            *lock(&cmd.exit_code) = Some(-1);
            let _ = cmd.done.send(true);
            return;
        }
    };
    let pgid = child.id().map(|p| p as i32);
    if let Some(pgid) = pgid {
        lock(&ctx.procs).insert(pgid);
        *lock(&cmd.pgid) = Some(pgid);
    }
    *cmd.stdin.lock().await = child.stdin.take();
    let pump = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin>>, stderr: bool| {
        let cmd = cmd.clone();
        async move {
            let Some(mut pipe) = pipe else { return };
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut out = lock(&cmd.out);
                if stderr { out.stderr.extend_from_slice(&buf[..n]) } else { out.stdout.extend_from_slice(&buf[..n]) }
                out.combined.extend_from_slice(&buf[..n]);
            }
        }
    };
    let stdout = child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin>);
    let stderr = child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin>);
    let status = child.wait();
    let (_, _, status) = tokio::join!(pump(stdout, false), pump(stderr, true), status);
    *lock(&cmd.exit_code) = Some(status.map(exit_code).unwrap_or(-1));
    *cmd.stdin.lock().await = None;
    if let Some(pgid) = pgid {
        lock(&ctx.procs).remove(&pgid);
    }
    let _ = cmd.done.send(true);
}

/// A preview URL (§2.7): the token, then a streaming proxy to the port (a
/// WebSocket upgrade is proxied frame by frame when `payload` is given).
async fn preview(
    shared: &Shared,
    req: &HttpRequest,
    body: web::Bytes,
    payload: Option<web::Payload>,
    rest: &[String],
    authorized: bool,
) -> HttpResponse {
    let Some((target, tail)) = rest.split_first() else { return HttpResponse::NotFound().body("no such preview") };
    let Some((port, id)) = target.split_once('-').and_then(|(p, id)| Some((p.parse::<u16>().ok()?, id.to_string()))) else {
        return HttpResponse::NotFound().body("no such preview");
    };
    let (token, public, started, host_port) = {
        let mut state = lock(&shared.state);
        let Some(sb) = state.find(&id) else { return HttpResponse::NotFound().body("sandbox not found") };
        let public = sb.request.get("public").and_then(Value::as_bool).unwrap_or(false);
        let host_port = sb.ports.get(&port).copied().unwrap_or(port);
        (preview_token(&shared.secret, &sb.id, port, sb.epoch), public, sb.state == "started", host_port)
    };
    let given = header(req, "x-daytona-preview-token");
    if !(public || authorized || given.as_deref() == Some(token.as_str())) {
        return HttpResponse::TemporaryRedirect()
            .insert_header(("location", format!("{}/auth/login?redirect={port}-{id}", shared.base)))
            .finish();
    }
    if !started {
        return HttpResponse::BadGateway().body("the sandbox is not running");
    }
    let mut url = format!("http://127.0.0.1:{host_port}/{}", tail.join("/"));
    if !req.query_string().is_empty() {
        url = format!("{url}?{}", req.query_string());
    }
    if let Some(payload) = payload {
        return proxy_websocket(req, payload, url, authorized).await;
    }
    let client = awc::Client::builder().disable_timeout().finish();
    let mut out = client.request(req.method().clone(), url);
    for (name, value) in req.headers() {
        let n = name.as_str();
        let skip = matches!(n, "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade")
            || n.starts_with("x-daytona-")
            || (n == "authorization" && authorized);
        if !skip {
            out = out.insert_header((name.clone(), value.clone()));
        }
    }
    match out.send_body(body).await {
        Ok(res) => {
            let mut answer = HttpResponse::build(res.status());
            for (name, value) in res.headers() {
                if !matches!(name.as_str(), "connection" | "content-length" | "transfer-encoding" | "keep-alive") {
                    answer.insert_header((name.clone(), value.clone()));
                }
            }
            answer.streaming(res)
        }
        Err(e) => HttpResponse::BadGateway().body(format!("cannot reach port {port} in the sandbox: {e}")),
    }
}


/// A frame as the message that sends it again.
fn frame_to_message(frame: actix_http::ws::Frame) -> actix_http::ws::Message {
    use actix_http::ws::{Frame, Message};
    match frame {
        Frame::Text(b) => match String::from_utf8(b.to_vec()) {
            Ok(text) => Message::Text(text.into()),
            Err(_) => Message::Close(None),
        },
        Frame::Binary(b) => Message::Binary(b),
        Frame::Continuation(item) => Message::Continuation(item),
        Frame::Ping(b) => Message::Ping(b),
        Frame::Pong(b) => Message::Pong(b),
        Frame::Close(reason) => Message::Close(reason),
    }
}

/// Proxies a WebSocket to `url` (on 127.0.0.1) frame by frame, both ways.
async fn proxy_websocket(req: &HttpRequest, payload: web::Payload, url: String, authorized: bool) -> HttpResponse {
    use actix_codec::{Decoder, Encoder};
    use futures_util::{SinkExt, StreamExt};
    let mut handshake = match actix_web_actors::ws::handshake(req) {
        Ok(h) => h,
        Err(e) => return HttpResponse::BadRequest().body(format!("not a WebSocket handshake: {e}")),
    };
    let mut upstream = awc::Client::builder().disable_timeout().finish().ws(url).max_frame_size(16 << 20);
    for (name, value) in req.headers() {
        let n = name.as_str();
        if n == "sec-websocket-protocol" || (n == "authorization" && !authorized) {
            upstream = upstream.set_header(name.clone(), value.clone());
        }
    }
    let framed = match upstream.connect().await {
        Ok((_, framed)) => framed,
        Err(e) => return HttpResponse::BadGateway().body(format!("cannot open the WebSocket in the sandbox: {e}")),
    };
    let (mut to_upstream, from_upstream) = framed.split();
    // Client to upstream: decode the client's (masked) frames, send them on.
    actix_web::rt::spawn(async move {
        let (mut payload, mut codec, mut buf) = (payload, actix_http::ws::Codec::new().max_size(16 << 20), web::BytesMut::new());
        while let Some(Ok(chunk)) = payload.next().await {
            buf.extend_from_slice(&chunk);
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                let message = frame_to_message(frame);
                let closing = matches!(message, actix_http::ws::Message::Close(_));
                if to_upstream.send(message).await.is_err() || closing {
                    return;
                }
            }
        }
        let _ = to_upstream.close().await;
    });
    // Upstream to client: each frame encoded again, unmasked, as a server sends it.
    let codec = actix_http::ws::Codec::new().max_size(16 << 20);
    let body = futures_util::stream::unfold((from_upstream, codec), |(mut frames, mut codec)| async move {
        let frame = frames.next().await?.ok()?;
        let mut buf = web::BytesMut::new();
        codec.encode(frame_to_message(frame), &mut buf).ok()?;
        Some((Ok::<_, actix_web::Error>(buf.freeze()), (frames, codec)))
    });
    handshake.streaming(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{eventually, sandbox_agent_bin};

    const WAIT: Duration = Duration::from_secs(20);

    /// A raw answer: status, headers, the body as JSON (or `Null`) and as text.
    #[derive(Debug)]
    struct Raw {
        status: u16,
        body: Value,
        text: String,
        location: Option<String>,
        content_type: String,
    }

    async fn raw(method: &str, url: &str, key: Option<&str>, headers: &[(&str, &str)], body: Option<Value>) -> Raw {
        let client = awc::Client::builder().timeout(Duration::from_secs(30)).disable_redirects().finish();
        let mut req = client.request(awc::http::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(key) = key {
            req = req.insert_header(("authorization", format!("Bearer {key}")));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .expect("request");
        let bytes = res.body().limit(1 << 22).await.expect("body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let hv = |n: &str| res.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Raw {
            status: res.status().as_u16(),
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            location: hv("location"),
            content_type: hv("content-type").unwrap_or_default(),
            text,
        }
    }

    impl FakeDaytona {
        async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Raw {
            raw(method, &format!("{}{path}", self.url), Some(&self.key()), &[], body).await
        }

        async fn created(&self, body: Value) -> String {
            let r = self.call("POST", "/api/sandbox", Some(body)).await;
            assert_eq!(r.status, 200, "{r:?}");
            r.body["id"].as_str().unwrap().to_string()
        }

        async fn wait_state(&self, id: &str, want: &str) -> Value {
            eventually(WAIT, &format!("sandbox {id} {want}"), || async {
                let r = self.call("GET", &format!("/api/sandbox/{id}"), None).await;
                (r.body["state"] == want).then_some(r.body)
            })
            .await
        }

        async fn exec(&self, id: &str, body: Value) -> Raw {
            self.call("POST", &format!("/toolbox/{id}/process/execute"), Some(body)).await
        }
    }

    fn pid_alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[actix_web::test]
    async fn auth_errors_and_create_validation() {
        let fake = FakeDaytona::start();
        let r = raw("GET", &format!("{}/api/sandbox", fake.url), Some("dtn_wrong"), &[], None).await;
        assert_eq!(r.status, 401);
        assert_eq!((r.body["statusCode"].as_u64(), r.body["error"].as_str()), (Some(401), Some("Unauthorized")));
        assert_eq!(r.body["path"], "/api/sandbox");
        assert!(r.body["timestamp"].as_str().unwrap().ends_with('Z'), "{r:?}");
        assert_eq!(raw("GET", &format!("{}/api/sandbox", fake.url), None, &[], None).await.status, 401);

        let r = fake.call("POST", "/api/sandbox", Some(json!({"snapshot": "s", "cpu": 2}))).await;
        assert_eq!((r.status, r.body["message"].as_str()), (400, Some("Cannot specify Sandbox resources when using a snapshot")));
        let r = fake.call("POST", "/api/sandbox", Some(json!({"cpu": "two", "labels": {"a": 1}}))).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["message"], json!(["cpu must be an integer number", "labels must be an object of strings"]));

        // `{}` is enough; the defaults come back.
        let r = fake.call("POST", "/api/sandbox", Some(json!({}))).await;
        assert_eq!((r.status, r.body["state"].as_str(), r.body["snapshot"].as_str()), (200, Some("creating"), Some(DEFAULT_SNAPSHOT)));
        assert_eq!((r.body["autoStopInterval"].as_i64(), r.body["user"].as_str()), (Some(15), Some("daytona")));
        assert_eq!(r.body["toolboxProxyUrl"], format!("{}/toolbox", fake.url));

        let body = json!({"name": "kiln-t1", "labels": {"kiln/task": "t1"}, "env": {"FOO": "bar"}, "cpu": 2, "memory": 4});
        fake.created(body.clone()).await;
        let r = fake.call("POST", "/api/sandbox", Some(json!({"name": "kiln-t1"}))).await;
        assert_eq!((r.status, r.body["message"].as_str()), (409, Some("Sandbox with name kiln-t1 already exists")));
        assert_eq!(fake.creates().last().unwrap(), &json!({"name": "kiln-t1"}));
        assert_eq!(fake.creates()[3], body, "what a create carried is recorded");
        let r = fake.call("GET", "/api/sandbox/kiln-t1", None).await;
        assert_eq!((r.body["labels"]["kiln/task"].as_str(), r.body["cpu"].as_i64()), (Some("t1"), Some(2)));

        fake.next_create(CreateFault::FailFast("no capacity in target us".into()));
        let r = fake.call("POST", "/api/sandbox", Some(json!({"name": "x"}))).await;
        assert_eq!((r.status, r.body["message"].as_str()), (400, Some("Sandbox failed to start: no capacity in target us")));
        assert_eq!(fake.call("GET", "/api/sandbox/x", None).await.status, 404, "a fast failure leaves nothing");
    }

    #[actix_web::test]
    async fn the_state_machine_takes_its_time() {
        let fake = FakeDaytona::with_timing(Timing { create: Duration::from_millis(400), ..Timing::default() });
        let before = Instant::now();
        let r = fake.call("POST", "/api/sandbox", Some(json!({}))).await;
        assert_eq!(r.body["state"], "creating", "not started at once");
        let id = r.body["id"].as_str().unwrap().to_string();
        fake.wait_state(&id, "started").await;
        assert!(before.elapsed() >= Duration::from_millis(400), "started too soon: {:?}", before.elapsed());

        let r = fake.call("GET", &format!("/api/sandbox/{id}/ports/3000/preview-url"), None).await;
        let first_token = r.body["token"].as_str().unwrap().to_string();
        assert_eq!(r.body["url"], format!("{}/preview/3000-{id}", fake.url));

        let r = fake.call("POST", &format!("/api/sandbox/{id}/stop"), None).await;
        assert_eq!(r.body["state"], "stopping");
        fake.wait_state(&id, "stopped").await;
        let r = fake.exec(&id, json!({"command": "true", "timeout": 5})).await;
        assert_eq!(r.status, 400, "no toolbox on a stopped sandbox: {r:?}");
        let r = fake.call("POST", &format!("/api/sandbox/{id}/start"), None).await;
        assert_eq!(r.body["state"], "starting");
        fake.wait_state(&id, "started").await;
        let r = fake.call("GET", &format!("/api/sandbox/{id}/ports/3000/preview-url"), None).await;
        assert_ne!(r.body["token"].as_str().unwrap(), first_token, "the token changes on restart");

        // An error with its reason; the control plane says 404 and the toolbox 401 once gone.
        fake.set_error(&id, "the runner went away");
        let r = fake.call("GET", &format!("/api/sandbox/{id}"), None).await;
        assert_eq!((r.body["state"].as_str(), r.body["errorReason"].as_str()), (Some("error"), Some("the runner went away")));
        let r = fake.call("DELETE", &format!("/api/sandbox/{id}"), None).await;
        assert_eq!(r.body["state"], "destroying");
        eventually(WAIT, "deleted", || async { (fake.call("GET", &format!("/api/sandbox/{id}"), None).await.status == 404).then_some(()) }).await;
        assert_eq!(fake.exec(&id, json!({"command": "true"})).await.status, 401);

        // A create that ends in error, seen by polling.
        fake.next_create(CreateFault::Error("image pull failed".into()));
        let id = fake.created(json!({})).await;
        fake.advance(&id);
        let r = fake.call("GET", &format!("/api/sandbox/{id}"), None).await;
        assert_eq!((r.body["state"].as_str(), r.body["errorReason"].as_str()), (Some("error"), Some("image pull failed")));
        fake.keep_destroyed(true);
        fake.call("DELETE", &format!("/api/sandbox/{id}"), None).await;
        fake.wait_state(&id, "destroyed").await;
    }

    #[actix_web::test]
    async fn list_filters_on_labels_and_pages() {
        // Creates take a minute here, so none is started unless advanced.
        let fake = FakeDaytona::with_timing(Timing { create: Duration::from_secs(60), ..Timing::default() });
        for i in 0..5 {
            let team = if i % 2 == 0 { "a" } else { "b" };
            fake.created(json!({"name": format!("s{i}"), "labels": {"team": team, "n": i.to_string()}})).await;
        }
        let labels = percent(&json!({"team": "a"}).to_string());
        let (mut names, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let mut path = format!("/api/sandbox?labels={labels}&limit=2");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let r = fake.call("GET", &path, None).await;
            assert_eq!(r.status, 200, "{r:?}");
            names.extend(r.body["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()));
            pages += 1;
            match r.body["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!((names, pages), (vec!["s0".to_string(), "s2".into(), "s4".into()], 2));
        let r = fake.call("GET", "/api/sandbox?states=started", None).await;
        assert_eq!(r.body["items"], json!([]), "all still creating");
        let s3 = fake.call("GET", "/api/sandbox/s3", None).await.body["id"].as_str().unwrap().to_string();
        fake.advance(&s3);
        let r = fake.call("GET", "/api/sandbox?states=started,stopped", None).await;
        assert_eq!(r.body["items"].as_array().unwrap().iter().map(|s| s["name"].clone()).collect::<Vec<_>>(), vec![json!("s3")]);
        assert_eq!(fake.call("GET", "/api/sandbox?labels=nope", None).await.status, 400);
        assert_eq!(fake.call("GET", "/api/sandbox?limit=0", None).await.status, 400);
    }

    fn percent(s: &str) -> String {
        s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
    }

    #[actix_web::test]
    async fn faults_can_be_injected() {
        let fake = FakeDaytona::with_timing(Timing { create: Duration::ZERO, ..Timing::default() });
        fake.fail_next(Scope::Api, 2, 429, Some(3));
        let r = raw("GET", &format!("{}/api/sandbox", fake.url), Some(&fake.key()), &[], None).await;
        assert_eq!((r.status, r.body["message"].as_str()), (429, Some("ThrottlerException: Too Many Requests")));
        assert_eq!(fake.call("GET", "/api/sandbox", None).await.status, 429);
        assert_eq!(fake.call("GET", "/api/sandbox", None).await.status, 200, "only two");
        fake.fail_next(Scope::Api, 1, 503, None);
        assert_eq!(fake.call("GET", "/api/sandbox", None).await.status, 503);

        let id = fake.created(json!({})).await;
        fake.wait_state(&id, "started").await;
        fake.hang_toolbox(true);
        let client = awc::Client::builder().timeout(Duration::from_millis(500)).finish();
        let sent = client
            .post(format!("{}/toolbox/{id}/process/execute", fake.url))
            .insert_header(("authorization", format!("Bearer {}", fake.key())))
            .send_json(&json!({"command": "true", "timeout": 1}))
            .await;
        assert!(matches!(sent, Err(awc::error::SendRequestError::Timeout)), "a hung toolbox never answers");
        fake.hang_toolbox(false);
        fake.fail_next(Scope::Toolbox, 1, 502, None);
        assert_eq!(fake.exec(&id, json!({"command": "true"})).await.status, 502);
        assert_eq!(fake.exec(&id, json!({"command": "true"})).await.status, 200);
        let calls = fake.calls();
        assert!(calls.iter().any(|c| c.status == 503 && c.authorized), "{calls:?}");
    }

    #[actix_web::test]
    async fn toolbox_execute_runs_in_the_sandbox() {
        let fake = FakeDaytona::with_timing(Timing { create: Duration::ZERO, ..Timing::default() });
        let id = fake.created(json!({"env": {"SANDBOX_VAR": "from-create"}})).await;
        fake.wait_state(&id, "started").await;
        let home = fake.home(&id).unwrap();
        std::fs::create_dir(home.join("repo")).unwrap();

        let r = fake.call("GET", &format!("/toolbox/{id}/user-home-dir"), None).await;
        assert_eq!(r.body["dir"], home.display().to_string());
        let script = "echo out; echo err >&2; echo \"$SANDBOX_VAR $CI $HOME\"; pwd; exit 3";
        let r = fake.exec(&id, json!({"command": script, "cwd": home.join("repo"), "envs": {"CI": "1"}, "timeout": 10})).await;
        assert_eq!(r.status, 200, "{r:?}");
        let want = format!("out\nerr\nfrom-create 1 {}\n{}\n", home.display(), home.join("repo").display());
        assert_eq!((r.body["exitCode"].as_i64(), r.body["result"].as_str()), (Some(3), Some(want.as_str())));

        let r = fake.exec(&id, json!({"command": "true", "cwd": "/no/such/dir", "timeout": 10})).await;
        assert_eq!((r.status, r.body["exitCode"].as_i64()), (200, Some(-1)), "{r:?}");

        // The timeout answers 408 and kills the whole process group.
        let started = Instant::now();
        let r = fake.exec(&id, json!({"command": "sleep 300 & echo $! > bg.pid; wait", "timeout": 1})).await;
        assert_eq!(r.status, 408, "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(15));
        let pid: i32 = std::fs::read_to_string(home.join("bg.pid")).unwrap().trim().parse().unwrap();
        eventually(WAIT, "the background sleep killed", || async { (!pid_alive(pid)).then_some(()) }).await;
        assert_eq!(fake.process_groups(&id), 0);
    }

    #[actix_web::test]
    async fn sessions_run_commands_in_order() {
        let fake = FakeDaytona::with_timing(Timing { create: Duration::ZERO, ..Timing::default() });
        let id = fake.created(json!({})).await;
        fake.wait_state(&id, "started").await;
        let tb = format!("/toolbox/{id}/process/session");
        assert_eq!(fake.call("POST", &tb, Some(json!({"sessionId": "s1"}))).await.status, 201);
        assert_eq!(fake.call("POST", &tb, Some(json!({"sessionId": "s1"}))).await.status, 409);
        let first = fake.call("POST", &format!("{tb}/s1/exec"), Some(json!({"command": "read line; echo got $line; sleep 0.2; echo one >> order", "runAsync": true}))).await;
        assert_eq!(first.status, 202, "{first:?}");
        assert!(first.body["exitCode"].is_null() && first.body["output"].is_null());
        let c1 = first.body["cmdId"].as_str().unwrap().to_string();
        let second = fake.call("POST", &format!("{tb}/s1/exec"), Some(json!({"command": "echo two >> order", "runAsync": true}))).await;
        let c2 = second.body["cmdId"].as_str().unwrap().to_string();
        let status = fake.call("GET", &format!("{tb}/s1/command/{c1}"), None).await;
        assert!(status.body.get("exitCode").is_none(), "running: {status:?}");
        let r = fake.call("POST", &format!("{tb}/s1/command/{c1}/input"), Some(json!({"data": "hello\n"}))).await;
        assert_eq!(r.status, 204, "{r:?}");
        eventually(WAIT, "the second command done", || async {
            (fake.call("GET", &format!("{tb}/s1/command/{c2}"), None).await.body["exitCode"] == 0).then_some(())
        })
        .await;
        let home = fake.home(&id).unwrap();
        assert_eq!(std::fs::read_to_string(home.join("order")).unwrap(), "one\ntwo\n", "one after another");

        let logs = fake.call("GET", &format!("{tb}/s1/command/{c1}/logs"), None).await;
        assert_eq!((logs.text.as_str(), logs.content_type.starts_with("text/plain")), ("got hello\n", true));
        let url = format!("{}{tb}/s1/command/{c1}/logs", fake.url);
        let logs = raw("GET", &url, Some(&fake.key()), &[("X-Daytona-SDK-Version", "0.167.0")], None).await;
        assert_eq!(logs.body, json!({"output": "got hello\n", "stdout": "got hello\n", "stderr": ""}));

        let sync = fake.call("POST", &format!("{tb}/s1/exec"), Some(json!({"command": "echo a; echo b >&2; exit 4"}))).await;
        assert_eq!((sync.status, sync.body["exitCode"].as_i64(), sync.body["stdout"].as_str()), (200, Some(4), Some("a\n")));
        assert_eq!(fake.call("DELETE", &format!("{tb}/s1"), None).await.status, 204);
        assert_eq!(fake.call("GET", &format!("{tb}/s1"), None).await.status, 404);
    }

    #[actix_web::test]
    async fn sandbox_agent_runs_in_a_session_behind_the_preview_url() {
        let bin = sandbox_agent_bin().expect("the sandbox-agent binary: set KILN_SANDBOX_AGENT_BIN or run .ci/run");
        let fake = FakeDaytona::with_timing(Timing { create: Duration::ZERO, ..Timing::default() });
        let id = fake.created(json!({})).await;
        fake.wait_state(&id, "started").await;
        let port = kiln::integrations::sandbox_agent::free_port().unwrap();
        let tb = format!("/toolbox/{id}/process/session");
        assert_eq!(fake.call("POST", &tb, Some(json!({"sessionId": "agent"}))).await.status, 201);
        let cmd = format!("exec '{bin}' server --no-token --no-telemetry --host 127.0.0.1 --port {port}");
        let r = fake.call("POST", &format!("{tb}/agent/exec"), Some(json!({"command": cmd, "runAsync": true}))).await;
        assert_eq!(r.status, 202, "{r:?}");

        let preview = fake.call("GET", &format!("/api/sandbox/{id}/ports/{port}/preview-url"), None).await.body;
        let (url, token) = (preview["url"].as_str().unwrap().to_string(), preview["token"].as_str().unwrap().to_string());
        let health = eventually(WAIT, "sandbox-agent healthy through the preview URL", || async {
            let r = raw("GET", &format!("{url}/v1/health"), None, &[("x-daytona-preview-token", &token)], None).await;
            (r.status == 200).then_some(r.body)
        })
        .await;
        assert_eq!(health, json!({"status": "ok"}));
        let r = raw("GET", &format!("{url}/v1/health"), None, &[], None).await;
        assert_eq!((r.status, r.location.is_some()), (307, true), "no token: a redirect, not a 401");
        let r = raw("GET", &format!("{url}/v1/health"), None, &[("x-daytona-preview-token", "wrong")], None).await;
        assert_eq!(r.status, 307);

        // A PTY process, and its terminal WebSocket through the preview URL.
        let tok = [("x-daytona-preview-token", token.as_str())];
        let body = json!({"command": "sh", "tty": true, "interactive": true});
        let proc_ = raw("POST", &format!("{url}/v1/processes"), None, &tok, Some(body)).await;
        assert_eq!(proc_.status, 200, "{proc_:?}");
        let pid = proc_.body["id"].as_str().unwrap().to_string();
        let ws_url = format!("{url}/v1/processes/{pid}/terminal/ws");
        let refused = awc::Client::new().ws(ws_url.as_str()).connect().await;
        assert!(refused.is_err(), "no token, no WebSocket");
        let (_, mut ws) = awc::Client::new().ws(ws_url.as_str()).header("x-daytona-preview-token", token.as_str()).connect().await.expect("ws");
        use futures_util::{SinkExt, StreamExt};
        let first = tokio::time::timeout(WAIT, ws.next()).await.expect("a frame").unwrap().unwrap();
        let awc::ws::Frame::Text(ready) = first else { panic!("{first:?}") };
        assert_eq!(serde_json::from_slice::<Value>(&ready).unwrap()["type"], "ready");
        let input = json!({"type": "input", "data": "echo through-the-$((20+22))-proxy\n", "encoding": "utf8"}).to_string();
        ws.send(awc::ws::Message::Text(input.into())).await.unwrap();
        let mut seen = String::new();
        tokio::time::timeout(WAIT, async {
            while !seen.contains("through-the-42-proxy") {
                match ws.next().await {
                    Some(Ok(awc::ws::Frame::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
                    Some(Ok(_)) => {}
                    other => panic!("the terminal ended: {other:?} after {seen:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no echo through the proxied terminal: {seen:?}"));
        let _ = ws.send(awc::ws::Message::Close(None)).await;

        // Stopping kills it; after a start, the old token no longer works.
        fake.call("POST", &format!("/api/sandbox/{id}/stop"), None).await;
        fake.wait_state(&id, "stopped").await;
        assert_eq!(fake.process_groups(&id), 0);
        fake.call("POST", &format!("/api/sandbox/{id}/start"), None).await;
        fake.wait_state(&id, "started").await;
        let r = raw("GET", &format!("{url}/v1/health"), None, &[("x-daytona-preview-token", &token)], None).await;
        assert_eq!(r.status, 307, "the old token after a restart");
    }
}
