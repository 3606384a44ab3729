//! The test harness: a real `kiln serve` process on an ephemeral port with its own
//! temp data dir, an HTTP/WebSocket client for it, and real git repositories.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kiln");

/// The real sandbox-agent binary: `KILN_SANDBOX_AGENT_BIN`, else where `.ci/run`
/// caches it.
pub fn sandbox_agent_bin() -> Option<String> {
    if let Ok(bin) = std::env::var("KILN_SANDBOX_AGENT_BIN") {
        return Some(bin);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let bin = cache.join("kiln-ci/sandbox-agent-0.4.2/node_modules/@sandbox-agent/cli-linux-x64/bin/sandbox-agent");
    bin.is_file().then(|| bin.to_string_lossy().to_string())
}

/// The fake agent every test task runs (see tests/fake-agent.sh).
pub fn fake_agent() -> String {
    format!("{}/tests/fake-agent.sh", env!("CARGO_MANIFEST_DIR"))
}

/// The config every test server gets: the fake agent as the default profile
/// (never idle, so a running task stays put), `quick` (idle after one quiet
/// second), `typed` (the description typed as input) and `ghost` (whose program
/// does not exist).
fn test_config(dir: &Path) -> PathBuf {
    let path = dir.join("kiln-test.toml");
    let agent = fake_agent();
    std::fs::write(
        &path,
        format!(
            "[tasks]\ndefault_agent = \"fake\"\nstatus_poll_ms = 200\n\n\
             [agents.fake]\ncommand = [\"{agent}\"]\nresume = [\"{agent}\", \"--resumed\"]\nprompt = \"argument\"\nidle_secs = 3600\n\n\
             [agents.quick]\ncommand = [\"{agent}\"]\nresume = [\"{agent}\", \"--resumed\"]\nprompt = \"argument\"\nidle_secs = 1\n\n\
             [agents.typed]\ncommand = [\"{agent}\"]\nresume = [\"{agent}\", \"--resumed\"]\nprompt = \"input\"\nidle_secs = 1\n\n\
             [agents.acp]\ncommand = [\"{agent}\"]\nresume = [\"{agent}\", \"--resumed\"]\nprompt = \"none\"\nidle_secs = 3600\nacp = \"mock\"\n\n\
             [agents.sh]\ncommand = [\"bash\", \"--norc\", \"--noprofile\"]\nresume = [\"bash\", \"--norc\", \"--noprofile\"]\nprompt = \"none\"\nidle_secs = 3600\n\n\
             [agents.ghost]\ncommand = [\"kiln-no-such-agent\"]\nresume = [\"kiln-no-such-agent\"]\n"
        ),
    )
    .expect("test config");
    path
}

/// One running server. Killed on drop; its log is printed if the test failed.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub dir: PathBuf,
    pub token: String,
    env: Vec<(String, String)>,
}

/// A fresh temp dir that lives as long as the test holds it.
/// How many migrations the project has: one folder each under `migrations/`.
pub fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("up.sql").is_file())
        .count()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("kiln-test-").tempdir().expect("tempdir")
}

impl Server {
    /// Starts a server on `dir` with extra `KILN_*` settings.
    pub fn start_in(dir: &Path, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut server = Server { child: None, url: String::new(), dir: dir.to_path_buf(), token: String::new(), env };
        server.boot();
        server
    }

    fn boot(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let config = test_config(&self.dir);
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&config)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("KILN_DATA_DIR", self.dir.join("data"))
            .env("KILN_SERVER__BIND", "127.0.0.1:0")
            .env("KILN_SERVER__WORKERS", "2")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(bin) = sandbox_agent_bin() {
            cmd.env("KILN_SANDBOX_AGENT_BIN", bin);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kiln serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent {
                    if let Some(rest) = line.strip_prefix("kiln listening on ") {
                        let url = rest.split_whitespace().next().unwrap_or_default().to_string();
                        let _ = tx.send(url);
                        sent = true;
                    }
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("kiln serve did not start:\n{}", self.log());
            }
        };
        self.url = url;
        self.token = std::fs::read_to_string(self.dir.join("data/admin.token")).expect("admin token").trim().to_string();
        self.child = Some(child);
    }

    pub fn start(env: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
        let dir = tempdir();
        (Server::start_in(dir.path(), env), dir)
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM, SIGINT) and waits for the exit status.
    pub fn signal(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_exit(&mut child, Duration::from_secs(30))
    }

    /// SIGKILL: the process dies with no chance to clean up.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("server is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sets (or with `None` removes) one `KILN_*` setting for the next boot.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// Starts the server again on the same data dir (after `stop` or `kill`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.boot();
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(&self.token))
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills every terminal host (and so its agent) whose command line names
/// `data_dir`: they are detached on purpose and would outlive the test. Found by
/// their command line, since the temp dir may already be gone.
pub fn kill_hosts(data_dir: &Path) {
    let needle = data_dir.to_string_lossy().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd")).map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
        let agent_server = cmdline.contains("sandbox-agent") && cmdline.contains(" server") && cwd.starts_with(&needle);
        let host = cmdline.contains("terminal-host") && cmdline.contains(&needle);
        if host || agent_server {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if !host {
            continue;
        }
        // The agent's cgroup (where it has one) would outlive the test too.
        let state_dir = cmdline.split(' ').skip_while(|a| *a != "--state-dir").nth(1);
        if let Some(cgroup) = state_dir.and_then(|d| kiln::terminal::procs::Cgroup::existing_for(Path::new(d))) {
            cgroup.kill();
            let deadline = Instant::now() + Duration::from_secs(5);
            while cgroup.remove().is_err() && cgroup.path().exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_hosts(&self.dir.join("data"));
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- server log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A small HTTP client for the API.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    http: awc::Client,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The `error` code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

impl Client {
    pub fn new(base: &str, token: Option<&str>) -> Client {
        // Pooled connections are dropped after 2 s idle, before the server's 5 s
        // keep-alive closes them: reusing one the server is closing at that moment
        // fails the request with `Connect(Disconnected)`.
        let connector = awc::Connector::new().conn_keep_alive(Duration::from_secs(2));
        let http = awc::Client::builder().connector(connector).timeout(Duration::from_secs(120)).finish();
        Client { base: base.to_string(), token: token.map(str::to_string), http }
    }

    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client::new(&self.base, token)
    }

    pub async fn raw(&self, method: &str, path: &str, body: Option<&[u8]>, content_type: Option<&str>) -> Reply {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.insert_header(("content-type", ct));
        }
        let mut res = match body {
            Some(b) => req.send_body(b.to_vec()).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("request failed: {e:?}"));
        let bytes = res.body().limit(256 * 1024 * 1024).await.expect("body");
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status: res.status().as_u16(), body, text }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.raw("GET", path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.raw("POST", path, Some(body.to_string().as_bytes()), Some("application/json")).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.raw("PUT", path, Some(body.to_string().as_bytes()), Some("application/json")).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.raw("PATCH", path, Some(body.to_string().as_bytes()), Some("application/json")).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.raw("DELETE", path, None, None).await
    }

    /// Opens a WebSocket on `path`.
    pub async fn ws(&self, path: &str) -> Ws {
        let url = format!("{}{}", self.base.replacen("http", "ws", 1), path);
        let mut req = self.http.ws(url).max_frame_size(16 * 1024 * 1024);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let (_, framed) = req.connect().await.expect("websocket connect");
        Ws { framed }
    }

    /// Registers a repository by path; asserts it worked.
    pub async fn add_repo(&self, org: &str, path: &Path) -> Value {
        let r = self
            .post(&format!("/v1/organizations/{org}/repos"), serde_json::json!({"source": path.to_str().unwrap()}))
            .await;
        assert!(r.status == 201 || r.status == 200, "register repo: {r:?}");
        r.body
    }

    /// Creates a task and waits until its agent runs; answers the create reply.
    pub async fn create_task(&self, org: &str, repo: &str, description: &str) -> Value {
        let body = serde_json::json!({"repo": repo, "description": description});
        let created = self.create_task_with(org, body).await;
        self.wait_status(org, created["id"].as_str().unwrap(), "running").await;
        created
    }

    /// Creates a task from `body`; asserts the create worked, not that it runs.
    pub async fn create_task_with(&self, org: &str, body: Value) -> Value {
        let r = self.post(&format!("/v1/organizations/{org}/tasks"), body).await;
        assert_eq!(r.status, 201, "create task: {r:?}");
        r.body
    }

    /// Waits until the task is in `status`; answers the task.
    pub async fn wait_status(&self, org: &str, task: &str, status: &str) -> Value {
        let path = format!("/v1/organizations/{org}/tasks/{task}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get(&path).await;
            if r.body["status"] == status {
                return r.body;
            }
            assert!(Instant::now() < deadline, "task {task} never became {status}: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every event of `org` after `since`, paging through the history.
    pub async fn events_since(&self, org: &str, since: i64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = since;
        loop {
            let r = self.get(&format!("/v1/organizations/{org}/events?since={since}&limit=1000")).await;
            assert_eq!(r.status, 200, "{r:?}");
            let items = r.body["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return out;
            }
            since = r.body["next_since"].as_i64().unwrap();
            out.extend(items);
        }
    }
}

/// A WebSocket client connection.
pub struct Ws {
    pub framed: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
}

#[derive(Debug)]
pub enum WsItem {
    Event(Value),
    Close(Option<awc::ws::CloseReason>),
    Ended,
}

impl Ws {
    /// The next event or close, answering pings on the way; panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> WsItem {
        use futures_util::{SinkExt, StreamExt};
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next()).await.expect("websocket: nothing arrived in time");
            match frame {
                None => return WsItem::Ended,
                Some(Err(e)) => panic!("websocket error: {e}"),
                Some(Ok(awc::ws::Frame::Text(b))) => return WsItem::Event(serde_json::from_slice(&b).expect("event json")),
                Some(Ok(awc::ws::Frame::Ping(p))) => {
                    let _ = self.framed.send(awc::ws::Message::Pong(p)).await;
                }
                Some(Ok(awc::ws::Frame::Close(reason))) => return WsItem::Close(reason),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next `n` events; panics on a close or after `timeout`.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(timeout).await {
                WsItem::Event(e) => out.push(e),
                other => panic!("expected {n} events, got {} then {other:?}", out.len()),
            }
        }
        out
    }
}

/// A real git repository with one commit on `main` (and a `dev` branch).
pub fn git_repo(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=Kiln Test", "-c", "user.email=test@kiln.invalid", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q"]);
    std::fs::write(dir.join("README.md"), "hello\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    git(&["branch", "dev"]);
    dir
}

/// Polls `check` until it answers `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the `kiln` CLI against `server` with a clean home; answers (status, stdout, stderr).
pub fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["--url", &server.url])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &server.dir)
        .env("XDG_CONFIG_HOME", server.dir.join("config"))
        .env("KILN_DATA_DIR", server.data_dir())
        .output()
        .expect("run kiln");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A terminal attach over WebSocket, keeping what arrived and where it is.
pub struct Term {
    pub ws: Ws,
    /// Every byte of terminal output received.
    pub output: Vec<u8>,
    /// The offset the next byte will have.
    pub offset: u64,
    /// Control messages received (`attached`, `offset`, `exited`, …).
    pub controls: Vec<Value>,
    pub closed: Option<Option<awc::ws::CloseReason>>,
}

impl Term {
    pub async fn open(c: &Client, org: &str, task: &str, offset: u64) -> Term {
        let ws = c.ws(&format!("/v1/organizations/{org}/tasks/{task}/terminal?offset={offset}")).await;
        Term { ws, output: Vec::new(), offset, controls: Vec::new(), closed: None }
    }

    /// Reads frames until `done` holds for what has arrived, or panics after `timeout`.
    pub async fn until(&mut self, timeout: Duration, what: &str, done: impl Fn(&Term) -> bool) {
        use futures_util::{SinkExt, StreamExt};
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            let frame = match tokio::time::timeout_at(deadline, self.ws.framed.next()).await {
                Ok(f) => f,
                Err(_) => panic!("terminal: timed out waiting for {what}; got so far:\n{}", self.text()),
            };
            match frame {
                None => {
                    self.closed.get_or_insert(None);
                    assert!(done(self), "terminal ended before {what}; got:\n{}", self.text());
                    return;
                }
                Some(Err(e)) => panic!("terminal websocket error: {e}"),
                Some(Ok(awc::ws::Frame::Binary(b))) => {
                    self.output.extend_from_slice(&b);
                    self.offset += b.len() as u64;
                }
                Some(Ok(awc::ws::Frame::Text(t))) => {
                    let v: Value = serde_json::from_slice(&t).expect("control json");
                    if v["type"] == "offset" {
                        self.offset = v["offset"].as_u64().unwrap();
                    }
                    self.controls.push(v);
                }
                Some(Ok(awc::ws::Frame::Ping(p))) => {
                    let _ = self.ws.framed.send(awc::ws::Message::Pong(p)).await;
                }
                Some(Ok(awc::ws::Frame::Close(reason))) => {
                    self.closed = Some(reason);
                    assert!(done(self), "terminal closed before {what}; got:\n{}", self.text());
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Waits until the output contains `needle`.
    pub async fn expect(&mut self, needle: &str) {
        let n = needle.to_string();
        self.until(Duration::from_secs(30), &format!("{needle:?}"), move |t| t.text().contains(&n)).await;
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).to_string()
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use futures_util::SinkExt;
        self.ws.framed.send(awc::ws::Message::Binary(bytes.to_vec().into())).await.expect("send input");
    }

    pub async fn control(&mut self, value: Value) {
        use futures_util::SinkExt;
        self.ws.framed.send(awc::ws::Message::Text(value.to_string().into())).await.expect("send control");
    }
}

/// Runs git in `dir`; answers stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=Kiln Test", "-c", "user.email=test@kiln.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
