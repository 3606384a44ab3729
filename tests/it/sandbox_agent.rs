//! The sandbox-agent transport against the REAL binary (pinned 0.4.2, installed
//! from npm by `.ci/run`, found through `KILN_SANDBOX_AGENT_BIN` or `PATH`) and
//! its built-in `mock` agent, which echoes every envelope: server start and
//! health, the token, POST and SSE, response deduplication, `Last-Event-ID`
//! resume, a crash followed by a restart on the same port, and DELETE with a
//! timeout. These tests fail (never skip) when the binary is missing.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};

use kiln::integrations::sandbox_agent::{
    find_binary, free_port, is_sequence_reset, spawn_server, AcpClient, AcpError, Dedup, PostOutcome, SseMessage,
};

const TOKEN: &str = "kiln-test-token";
/// Every wait below polls against this deadline.
const WAIT: Duration = Duration::from_secs(20);

/// Where `.ci/run` caches the pinned binary, so `cargo test` finds it after one
/// run of `.ci/run` without any variable set.
fn ci_cache() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let bin = cache.join("kiln-ci/sandbox-agent-0.4.2/node_modules/@sandbox-agent/cli-linux-x64/bin/sandbox-agent");
    bin.is_file().then_some(bin)
}

fn binary() -> PathBuf {
    let configured = std::env::var_os("KILN_SANDBOX_AGENT_BIN").is_some();
    match find_binary(None).or_else(|| if configured { None } else { ci_cache() }) {
        Some(bin) => bin,
        None => panic!(
            "the sandbox-agent binary was not found: run `.ci/run`, or `npm install @sandbox-agent/cli-linux-x64@0.4.2` \
             and set KILN_SANDBOX_AGENT_BIN=<dir>/node_modules/@sandbox-agent/cli-linux-x64/bin/sandbox-agent \
             (KILN_SANDBOX_AGENT_BIN is now {:?})",
            std::env::var("KILN_SANDBOX_AGENT_BIN").ok()
        ),
    }
}

/// One `sandbox-agent server` with its own `$HOME` (where it keeps agents and
/// logs) on an ephemeral loopback port. Killed on drop, panics included.
struct SaServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    home: tempfile::TempDir,
}

impl SaServer {
    /// Starts a server, waits for health and installs the `mock` agent (a fresh
    /// `$HOME` does not have it, and the first POST would answer 502).
    async fn start() -> SaServer {
        let home = tempfile::Builder::new().prefix("kiln-sa-test-").tempdir().expect("tempdir");
        let mut server = SaServer { child: None, bin: binary(), port: free_port().expect("free port"), home };
        server.boot().await;
        let installed = server.client().install_agent("mock").await.expect("install mock");
        assert!(installed["artifacts"].is_array() || installed["already_installed"] == true, "{installed}");
        server
    }

    async fn boot(&mut self) {
        let env = vec![("HOME".to_string(), self.home.path().display().to_string())];
        let child = spawn_server(&self.bin, "127.0.0.1", self.port, Some(TOKEN), &env).expect("spawn sandbox-agent");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("sandbox-agent exited during startup with {status} (port {} taken?)", self.port);
            }
            match self.client().health().await {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!("sandbox-agent never became healthy: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Kills the server as a crash would (SIGKILL) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The pids of the server's direct children (its agent processes).
    fn agent_pids(&self) -> Vec<i32> {
        let Some(server) = self.child.as_ref().map(|c| c.id().to_string()) else { return Vec::new() };
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            if after.split_whitespace().nth(1) == Some(server.as_str()) {
                pids.push(pid);
            }
        }
        pids
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn client(&self) -> AcpClient {
        AcpClient::new(&self.url(), Some(TOKEN))
    }
}

impl Drop for SaServer {
    fn drop(&mut self) {
        self.kill();
        // The server logs to files under its $HOME, which goes with the test:
        // show their end when the test failed.
        if std::thread::panicking() {
            let logs = self.home.path().join(".local/share/sandbox-agent/logs");
            for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {} (last lines)", entry.path().display());
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

fn request(id: u64, method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"protocolVersion": 1, "clientCapabilities": {}}})
}

async fn post_request(c: &AcpClient, server_id: &str, agent: Option<&str>, envelope: &Value) -> Value {
    match c.post(server_id, agent, envelope).await {
        Ok(PostOutcome::Response(v)) => v,
        other => panic!("expected a 200 response to {envelope}, got {other:?}"),
    }
}

/// The next SSE message, waiting at most until `deadline`.
pub(crate) async fn next_before<S>(stream: &mut S, deadline: Instant) -> SseMessage
where
    S: Stream<Item = Result<SseMessage, AcpError>> + Unpin,
{
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, stream.next()).await {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(e))) => panic!("SSE error: {e}"),
        Ok(None) => panic!("SSE stream ended"),
        Err(_) => panic!("no SSE message before the deadline"),
    }
}

/// Reads SSE messages until one satisfies `done`; answers all of them.
pub(crate) async fn read_until<S>(stream: &mut S, done: impl Fn(&SseMessage) -> bool) -> Vec<SseMessage>
where
    S: Stream<Item = Result<SseMessage, AcpError>> + Unpin,
{
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let m = next_before(stream, deadline).await;
        let stop = done(&m);
        seen.push(m);
        if stop {
            return seen;
        }
    }
}

fn is_response_to(m: &SseMessage, id: u64) -> bool {
    m.data["id"] == id && m.data.get("result").is_some()
}

fn assert_increasing(messages: &[SseMessage]) {
    for pair in messages.windows(2) {
        assert!(pair[1].id > pair[0].id, "ids not increasing: {} then {}", pair[0].id, pair[1].id);
    }
}

#[actix_web::test]
async fn server_starts_and_checks_the_token() {
    let server = SaServer::start().await;
    server.client().health().await.expect("health with the token");
    server.client().wait_healthy(Duration::from_secs(5)).await.expect("wait_healthy");

    let anonymous = AcpClient::new(&server.url(), None);
    assert!(matches!(anonymous.health().await, Err(AcpError::Unauthorized(_))), "no token must be refused");
    let wrong = AcpClient::new(&server.url(), Some("wrong"));
    assert!(matches!(wrong.health().await, Err(AcpError::Unauthorized(_))));
    assert!(matches!(wrong.list().await, Err(AcpError::Unauthorized(_))));
    // A refused token ends the wait at once instead of polling until the timeout.
    let started = Instant::now();
    let waited = wrong.wait_healthy(Duration::from_secs(30)).await;
    assert!(matches!(waited, Err(AcpError::Unauthorized(_))), "{waited:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(server.client().list().await.expect("list").is_empty());
}

#[actix_web::test]
async fn first_post_needs_the_agent_and_the_mock_echoes() {
    let server = SaServer::start().await;
    let c = server.client();
    let init = request(1, "initialize");

    match c.post("s1", None, &init).await {
        Err(AcpError::Http { status: 400, kind, message }) => {
            assert_eq!(kind.as_deref(), Some("invalid_request"));
            assert!(message.contains("agent"), "{message}");
        }
        other => panic!("expected 400 for a first POST without agent, got {other:?}"),
    }
    // The SSE GET does not create an instance.
    let mut stream = c.subscribe("s1", None);
    match stream.next().await {
        Some(Err(AcpError::NotFound(m))) => assert!(m.contains("s1"), "{m}"),
        other => panic!("expected 404 before the first POST, got {other:?}"),
    }
    assert!(stream.next().await.is_none());

    let reply = post_request(&c, "s1", Some("mock"), &init).await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["result"]["echoed"], init);

    // Later POSTs may leave the agent out; a notification answers 202.
    let reply = post_request(&c, "s1", None, &request(2, "session/new")).await;
    assert_eq!(reply["result"]["echoed"]["method"], "session/new");
    let cancel = json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": "x"}});
    assert_eq!(c.post("s1", None, &cancel).await.expect("notification"), PostOutcome::Accepted);
    // So does a response to an agent→client request.
    let answer = json!({"jsonrpc": "2.0", "id": 5, "result": {"outcome": {"outcome": "cancelled"}}});
    assert_eq!(c.post("s1", None, &answer).await.expect("response"), PostOutcome::Accepted);
    // Another agent for the same id is a conflict.
    assert!(matches!(c.post("s1", Some("claude"), &request(3, "initialize")).await, Err(AcpError::Conflict(_))));

    let servers = c.list().await.expect("list");
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["serverId"], "s1");
    assert_eq!(servers[0]["agent"], "mock");
}

#[actix_web::test]
async fn sse_carries_the_envelopes_and_the_duplicated_response() {
    let server = SaServer::start().await;
    let c = server.client();
    let mut dedup = Dedup::default();

    let init = request(1, "initialize");
    let reply = post_request(&c, "s1", Some("mock"), &init).await;
    assert!(dedup.is_new(&reply), "the POST body is the first copy");

    let mut stream = c.subscribe("s1", None);
    let first = read_until(&mut stream, |m| is_response_to(m, 1)).await;
    assert_eq!(first[0].id, 1, "a new instance numbers from 1");
    assert_increasing(&first);
    assert!(first.iter().all(|m| m.event == "message"));
    let echo = first.iter().find(|m| m.data["method"] == "mock/echo").expect("the mock's echo notification");
    assert_eq!(echo.data["params"]["message"], init);
    assert!(dedup.is_new(&echo.data), "a notification is always new");
    let copy = first.last().expect("response");
    assert_eq!(copy.data, reply, "SSE carries the same response the POST answered");
    assert!(!dedup.is_new(&copy.data), "the second copy is not new");

    // A live subscriber sees what comes next, still in order.
    let reply = post_request(&c, "s1", None, &request(2, "session/new")).await;
    assert!(dedup.is_new(&reply));
    let more = read_until(&mut stream, |m| is_response_to(m, 2)).await;
    assert!(more[0].id > copy.id);
    assert_increasing(&more);
    assert!(dedup.is_new(&more[0].data));
    assert_eq!(more.last().expect("response").data, reply);
    assert!(!dedup.is_new(&more.last().expect("response").data));
}

#[actix_web::test]
async fn last_event_id_replays_only_later_events() {
    let server = SaServer::start().await;
    let c = server.client();
    post_request(&c, "s1", Some("mock"), &request(1, "initialize")).await;
    post_request(&c, "s1", None, &request(2, "session/new")).await;
    post_request(&c, "s1", None, &request(3, "session/prompt")).await;

    let mut all = c.subscribe("s1", None);
    let everything = read_until(&mut all, |m| is_response_to(m, 3)).await;
    assert_increasing(&everything);
    let ids: Vec<u64> = everything.iter().map(|m| m.id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "no gaps");
    assert!(ids.len() >= 4, "{ids:?}");

    let cursor = everything[1].id;
    let mut resumed = c.subscribe("s1", Some(cursor));
    let replay = read_until(&mut resumed, |m| is_response_to(m, 3)).await;
    assert_eq!(replay.first().map(|m| m.id), Some(cursor + 1), "replay starts right after the cursor");
    assert_eq!(replay, everything[2..].to_vec(), "the same envelopes, under the same ids");
    assert!(replay.iter().all(|m| !is_sequence_reset(Some(cursor), m.id)));

    // Then it goes on live.
    post_request(&c, "s1", None, &request(4, "ping")).await;
    let live = read_until(&mut resumed, |m| is_response_to(m, 4)).await;
    assert_eq!(live[0].id, everything.last().expect("last").id + 1);

    // A cursor at the end replays nothing: the next event is a live one.
    let end = live.last().expect("last").id;
    let mut at_end = c.connect("s1", Some(end)).await.expect("connect");
    post_request(&c, "s1", None, &request(5, "ping")).await;
    let next = next_before(&mut at_end, Instant::now() + WAIT).await;
    assert_eq!(next.id, end + 1);
}

#[actix_web::test]
async fn a_crash_and_restart_resets_the_sequence() {
    let mut server = SaServer::start().await;
    let c = server.client();
    post_request(&c, "s1", Some("mock"), &request(1, "initialize")).await;
    post_request(&c, "s1", None, &request(2, "session/new")).await;
    post_request(&c, "s1", None, &request(3, "session/prompt")).await;
    let before = c.list().await.expect("list")[0]["createdAtMs"].as_u64().expect("createdAtMs");
    let mut stream = c.subscribe("s1", None);
    let seen = read_until(&mut stream, |m| is_response_to(m, 3)).await;
    let cursor = seen.last().expect("seen").id;
    assert!(cursor >= 4, "{cursor}");

    // The crash: the open stream breaks off or ends.
    server.kill();
    match tokio::time::timeout(WAIT, stream.next()).await {
        Err(_) => panic!("the stream outlived the server"),
        Ok(None) | Ok(Some(Err(_))) => {}
        Ok(Some(Ok(m))) => panic!("an event after the crash: {m:?}"),
    }

    // The restart, on the same port: the instance is gone and must be re-created.
    server.boot().await;
    assert!(c.list().await.expect("list").is_empty(), "a restarted server has no instances");
    assert!(matches!(c.connect("s1", Some(cursor)).await.err(), Some(AcpError::NotFound(_))));
    post_request(&c, "s1", Some("mock"), &request(10, "initialize")).await;
    let after = c.list().await.expect("list")[0]["createdAtMs"].as_u64().expect("createdAtMs");
    assert!(after > before, "the re-created instance has a new createdAtMs ({before} then {after})");

    // Resuming with the old cursor replays nothing and raises no error; the
    // first event the client sees carries an id at or below its cursor.
    let mut resumed = c.connect("s1", Some(cursor)).await.expect("resume");
    post_request(&c, "s1", None, &request(11, "ping")).await;
    let first = next_before(&mut resumed, Instant::now() + WAIT).await;
    assert!(first.id <= cursor, "first id {} after a reset, cursor {cursor}", first.id);
    assert!(is_sequence_reset(Some(cursor), first.id));
    // From scratch, the new sequence starts again at 1.
    let mut fresh = c.subscribe("s1", None);
    let again = read_until(&mut fresh, |m| is_response_to(m, 11)).await;
    assert_eq!(again[0].id, 1);
    assert_increasing(&again);
}

#[actix_web::test]
async fn delete_with_a_timeout_returns_and_the_instance_goes() {
    let server = SaServer::start().await;
    let c = server.client();
    post_request(&c, "s1", Some("mock"), &request(1, "initialize")).await;
    let mut stream = c.subscribe("s1", None);
    read_until(&mut stream, |m| is_response_to(m, 1)).await;

    let started = Instant::now();
    let confirmed = c.delete("s1", Duration::from_secs(2)).await.expect("delete");
    assert!(started.elapsed() < Duration::from_secs(10), "delete took {:?}", started.elapsed());
    // 0.4.2 never answers a DELETE on a live instance; a later release may.
    eprintln!("DELETE confirmed by the server: {confirmed}");

    let servers = c.list().await.expect("list");
    assert!(servers.iter().all(|s| s["serverId"] != "s1"), "{servers:?}");

    // Once the client has given up on the DELETE, the agent is shut down: the
    // subscriber hears `_adapter/agent_exited` and the stream closes.
    let exited = read_until(&mut stream, |m| m.data["method"] == "_adapter/agent_exited").await;
    assert_eq!(exited.last().expect("exited").data["params"]["success"], true);
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(None) => {}
        other => panic!("expected the stream to close, got {other:?}"),
    }
    assert!(matches!(c.subscribe("s1", None).next().await, Some(Err(AcpError::NotFound(_)))));

    // An id that does not exist is answered (204) at once.
    assert!(c.delete("nope", Duration::from_secs(2)).await.expect("delete unknown"));
}

#[actix_web::test]
async fn an_agent_that_dies_is_reported() {
    let server = SaServer::start().await;
    let c = server.client();
    post_request(&c, "s1", Some("mock"), &request(1, "initialize")).await;
    let mut stream = c.connect("s1", None).await.expect("connect");
    read_until(&mut stream, |m| is_response_to(m, 1)).await;

    let pids = server.agent_pids();
    assert_eq!(pids.len(), 1, "one agent process for one instance: {pids:?}");
    // SAFETY: kill(2) on a process this test's server started.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);

    let exited = read_until(&mut stream, |m| m.data["method"] == "_adapter/agent_exited").await;
    assert_eq!(exited.last().expect("exited").data["params"]["success"], false);
    // A request to the dead agent is an error, not a hang.
    let deadline = Instant::now() + WAIT;
    loop {
        match c.post_with_timeout("s1", None, &request(2, "ping"), WAIT).await {
            Err(AcpError::AgentExited(_)) => break,
            other if Instant::now() >= deadline => panic!("expected AgentExited, got {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // 0.4.2 keeps the dead instance listed (and its stream open); deleting it
    // clears the way, and a DELETE of a dead instance is answered at once.
    assert!(c.list().await.expect("list").iter().any(|s| s["serverId"] == "s1"));
    let confirmed = c.delete("s1", Duration::from_secs(2)).await.expect("delete");
    eprintln!("DELETE of a dead instance confirmed by the server: {confirmed}");
    assert!(c.list().await.expect("list").is_empty());
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(None) => {}
        other => panic!("expected the stream to close after the DELETE, got {other:?}"),
    }
    post_request(&c, "s1", Some("mock"), &request(3, "initialize")).await;
    let mut fresh = c.connect("s1", None).await.expect("connect");
    let again = read_until(&mut fresh, |m| is_response_to(m, 3)).await;
    assert_eq!(again[0].id, 1, "a re-created instance numbers from 1 again");
}

/// A task whose agent profile has `acp` gets a supervised sandbox-agent server
/// beside its terminal: started at provisioning, started again when it dies,
/// stopped with the task.
#[actix_web::test]
async fn an_acp_task_gets_a_supervised_sandbox_agent_server() {
    use crate::common::*;
    assert!(sandbox_agent_bin().is_some(), "the sandbox-agent binary is missing: run .ci/run");
    let (server, dir) = Server::start(&[]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let t = c.create_task_with("default", json!({"repo": "app", "description": "structured", "agent": "acp"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    c.wait_status("default", &id, "running").await;
    let record_path = server.data_dir().join(format!("sandboxes/{id}/sandbox-agent.json"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&record_path).unwrap().permissions().mode() & 0o777, 0o600, "the token stays private");
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let client = AcpClient::new(record["url"].as_str().unwrap(), record["token"].as_str());
    client.health().await.expect("the server answers with its token");
    assert!(matches!(AcpClient::new(record["url"].as_str().unwrap(), Some("wrong")).health().await, Err(AcpError::Unauthorized(_))));
    let started = c.events_since("default", 0).await.into_iter().find(|e| e["kind"] == "sandbox.agent_started").expect("an event");
    assert!(!started.to_string().contains(record["token"].as_str().unwrap()), "the token is never in an event");

    // It dies: the status poller starts it again, with an event.
    let old_pid = record["pid"].as_i64().unwrap() as i32;
    unsafe { libc::kill(old_pid, libc::SIGKILL) };
    let restarted = crate::common::eventually(WAIT, "a restart", || {
        let c = c.clone();
        async move { c.events_since("default", 0).await.into_iter().find(|e| e["kind"] == "sandbox.agent_restarted") }
    })
    .await;
    assert_ne!(restarted["data"]["pid"].as_i64().unwrap() as i32, old_pid);
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    AcpClient::new(record["url"].as_str().unwrap(), record["token"].as_str()).health().await.expect("the new server answers");

    // Kill the task: the server goes with it.
    let r = c.post(&format!("/v1/organizations/default/tasks/{id}/kill"), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!record_path.exists());
    let url = record["url"].as_str().unwrap().to_string();
    crate::common::eventually(WAIT, "the server is gone", || {
        let client = AcpClient::new(&url, record["token"].as_str());
        async move { client.health().await.is_err().then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn without_the_binary_an_acp_task_fails_and_says_how_to_install_it() {
    use crate::common::*;
    let (server, dir) = Server::start(&[("KILN_SANDBOX_AGENT_BIN", "/nonexistent/sandbox-agent")]);
    let c = server.client();
    c.add_repo("default", &git_repo(dir.path(), "app")).await;
    let t = c.create_task_with("default", json!({"repo": "app", "description": "x", "agent": "acp"})).await;
    let id = t["id"].as_str().unwrap();
    let failed = c.wait_status("default", id, "failed").await;
    let reason = failed["status_reason"].as_str().unwrap();
    assert!(reason.contains("sandbox-agent is not installed") && reason.contains("npm install"), "{reason}");
    assert!(!server.data_dir().join(format!("worktrees/default/app/{id}")).exists(), "the sandbox was taken down");
}
