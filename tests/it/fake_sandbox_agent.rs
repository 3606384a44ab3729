//! The fake sandbox-agent server (`tests/fake_sandbox_agent.rs`, built as the
//! example `fake-sandbox-agent`) against Kiln's own client: the transport rules
//! it copies from 0.4.2 (PROTOCOLS.md §1.4) and its scripted ACP agent (§1.7).
//! Other tests find the binary with [`fake_sandbox_agent_bin`].

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};

use kiln::integrations::sandbox_agent::{free_port, spawn_server, AcpClient, AcpError, PostOutcome, SseMessage};

use crate::sandbox_agent::{next_before, read_until};

const TOKEN: &str = "fake-test-token";
/// Every wait below gives up at this deadline.
const WAIT: Duration = Duration::from_secs(20);

/// The fake's binary: `examples/fake-sandbox-agent` next to the `kiln` binary.
pub fn fake_sandbox_agent_bin() -> PathBuf {
    let kiln = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
    let bin = kiln.parent().map(|dir| dir.join("examples/fake-sandbox-agent")).unwrap_or_default();
    if !bin.is_file() {
        panic!(
            "the fake sandbox-agent is missing at {}: build it with `cargo build --example fake-sandbox-agent`; \
             `cargo test` builds it",
            bin.display()
        );
    }
    // `cargo test --test it` does not rebuild examples: refuse a stale fake.
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake_sandbox_agent.rs");
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(src), Some(built)) = (modified(&source), modified(&bin)) {
        assert!(
            built >= src,
            "the fake sandbox-agent at {} is older than tests/fake_sandbox_agent.rs: \
             run `cargo build --example fake-sandbox-agent` (plain `cargo test` rebuilds it)",
            bin.display()
        );
    }
    bin
}

/// One fake server on an ephemeral loopback port, killed on drop.
struct Fake {
    child: Child,
    url: String,
    token: Option<String>,
}

impl Fake {
    /// Starts the fake as Kiln would (with the token) and waits for health.
    async fn start(env: &[(&str, &str)]) -> Fake {
        Fake::start_with(Some(TOKEN), env).await
    }

    async fn start_with(token: Option<&str>, env: &[(&str, &str)]) -> Fake {
        let bin = fake_sandbox_agent_bin();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        // The port may be taken between `free_port` and the bind: try another.
        for _ in 0..5 {
            let port = free_port().expect("free port");
            let child = spawn_server(&bin, "127.0.0.1", port, token, &env).expect("spawn the fake");
            let mut fake = Fake { child, url: format!("http://127.0.0.1:{port}"), token: token.map(str::to_string) };
            let deadline = Instant::now() + WAIT;
            loop {
                if fake.child.try_wait().expect("try_wait").is_some() {
                    break;
                }
                match fake.client().health().await {
                    Ok(()) => return fake,
                    Err(e) if Instant::now() >= deadline => panic!("the fake never became healthy: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        panic!("the fake sandbox-agent exited during startup five times");
    }

    fn client(&self) -> AcpClient {
        AcpClient::new(&self.url, self.token.as_deref())
    }

    /// A raw request with the token (see [`raw`]).
    async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String, String) {
        raw(&self.url, self.token.as_deref(), method, path, headers, body).await
    }

    /// A `/_fake/*` control call with a JSON body; answers the status and the
    /// JSON body (`null` when empty).
    async fn control(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (status, _, text) =
            self.raw(method, path, &[("content-type", "application/json")], Some(&body.to_string())).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw request (for what `AcpClient` does not expose): answers the status,
/// the content type and the body.
async fn raw(
    url: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let client = awc::Client::builder().timeout(WAIT).finish();
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, format!("{url}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let sent = match body {
        Some(b) => req.send_body(b.to_string()).await,
        None => req.send().await,
    };
    let mut res = sent.expect("send");
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = res.body().await.expect("body");
    (res.status().as_u16(), ct, String::from_utf8_lossy(&body).to_string())
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn initialize(id: u64) -> Value {
    request(id, "initialize", json!({"protocolVersion": 1, "clientCapabilities": {}}))
}

fn new_session(id: u64) -> Value {
    request(id, "session/new", json!({"cwd": "/work", "mcpServers": []}))
}

fn prompt(id: u64, session: &str, text: &str) -> Value {
    request(id, "session/prompt", json!({"sessionId": session, "prompt": [{"type": "text", "text": text}]}))
}

fn cancel(session: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": session}})
}

async fn post_request(c: &AcpClient, server_id: &str, agent: Option<&str>, envelope: &Value) -> Value {
    match c.post(server_id, agent, envelope).await {
        Ok(PostOutcome::Response(v)) => v,
        other => panic!("expected a 200 response to {envelope}, got {other:?}"),
    }
}

/// `initialize` (creating the instance for `agent`) and `session/new`; answers
/// the session id.
async fn open_session(c: &AcpClient, server_id: &str, agent: &str) -> String {
    post_request(c, server_id, Some(agent), &initialize(1)).await;
    let created = post_request(c, server_id, None, &new_session(2)).await;
    created["result"]["sessionId"].as_str().expect("sessionId").to_string()
}

/// Waits for the stream to end (the server closed it).
async fn assert_closes<S>(stream: &mut S)
where
    S: Stream<Item = Result<SseMessage, AcpError>> + Unpin,
{
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(None) => {}
        other => panic!("expected the stream to close, got {other:?}"),
    }
}

fn is_response_to(m: &SseMessage, id: u64) -> bool {
    m.data["id"] == id && m.data.get("method").is_none() && (m.data.get("result").is_some() || m.data.get("error").is_some())
}

/// The `sessionUpdate` kinds among `messages`, in order.
fn update_kinds(messages: &[SseMessage]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.data["method"] == "session/update")
        .filter_map(|m| m.data["params"]["update"]["sessionUpdate"].as_str().map(str::to_string))
        .collect()
}

/// The texts of the `kind` chunks among `messages`.
fn chunk_texts(messages: &[SseMessage], kind: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.data["params"]["update"]["sessionUpdate"] == kind)
        .filter_map(|m| m.data["params"]["update"]["content"]["text"].as_str().map(str::to_string))
        .collect()
}

fn is_chunk(m: &SseMessage, text: &str) -> bool {
    m.data["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
        && m.data["params"]["update"]["content"]["text"] == text
}

fn assert_consecutive(messages: &[SseMessage], first: u64) {
    let ids: Vec<u64> = messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, (first..first + ids.len() as u64).collect::<Vec<_>>(), "ids with gaps");
}

#[actix_rt::test]
async fn version_token_health_and_install() {
    let out = Command::new(fake_sandbox_agent_bin()).arg("--version").output().expect("run --version");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sandbox-agent 0.4.2-fake");

    let fake = Fake::start(&[]).await;
    let c = fake.client();
    c.health().await.expect("health with the token");
    let anonymous = AcpClient::new(&fake.url, None);
    assert!(matches!(anonymous.health().await, Err(AcpError::Unauthorized(_))), "no token must be refused");
    let wrong = AcpClient::new(&fake.url, Some("wrong"));
    assert!(matches!(wrong.health().await, Err(AcpError::Unauthorized(_))));
    assert!(matches!(wrong.list().await, Err(AcpError::Unauthorized(_))));
    assert!(matches!(wrong.post("s1", Some("fake"), &initialize(1)).await, Err(AcpError::Unauthorized(_))));

    // The exact 401 answer, on an API route and on a control route.
    for path in ["/v1/health", "/_fake/received", "/v1/no-such-route"] {
        let (status, ct, body) = raw(&fake.url, None, "GET", path, &[], None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(ct, "application/problem+json");
        let body: Value = serde_json::from_str(&body).expect("problem json");
        assert_eq!(body["type"], "urn:sandbox-agent:error:token_invalid");
        assert_eq!(body["title"], "Token Invalid");
        assert_eq!(body["status"], 401);
        assert_eq!(body["detail"], "token invalid");
    }
    // `/` needs no token.
    let (status, _, body) = raw(&fake.url, None, "GET", "/", &[], None).await;
    assert_eq!(status, 200, "{body}");

    // An unknown route with the token: 404 problem.
    let (status, ct, body) = fake.raw("GET", "/v1/nope", &[], None).await;
    assert_eq!((status, ct.as_str()), (404, "application/problem+json"), "{body}");

    let installed = c.install_agent("fake").await.expect("install fake");
    assert_eq!(installed, json!({"already_installed": true, "artifacts": []}));
    match c.install_agent("nope").await {
        Err(AcpError::Http { status: 400, kind, .. }) => assert_eq!(kind.as_deref(), Some("unsupported_agent")),
        other => panic!("expected unsupported_agent, got {other:?}"),
    }
    let (status, ct, _) = fake.raw("POST", "/v1/agents/fake/install", &[], Some("{}")).await;
    assert_eq!((status, ct.starts_with("text/plain")), (415, true), "install without a JSON content type");
    assert!(c.list().await.expect("list").is_empty());

    // Without a token, anyone may call.
    let open = Fake::start_with(None, &[]).await;
    AcpClient::new(&open.url, None).health().await.expect("health without a token");
}

#[actix_rt::test]
async fn the_first_post_names_a_known_agent_and_the_transport_rules_hold() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();

    match c.post("s1", None, &initialize(1)).await {
        Err(AcpError::Http { status: 400, kind, message }) => {
            assert_eq!(kind.as_deref(), Some("invalid_request"));
            assert!(message.contains("missing required 'agent' query parameter for first POST to /v1/acp/s1"), "{message}");
        }
        other => panic!("expected 400 for a first POST without agent, got {other:?}"),
    }
    match c.post("s1", Some("claude"), &initialize(1)).await {
        Err(AcpError::Http { status: 400, kind, .. }) => assert_eq!(kind.as_deref(), Some("unsupported_agent")),
        other => panic!("expected unsupported_agent, got {other:?}"),
    }
    // The SSE GET does not create an instance.
    assert!(matches!(c.connect("s1", None).await.err(), Some(AcpError::NotFound(_))));
    assert!(c.list().await.expect("list").is_empty());

    let init = post_request(&c, "s1", Some("fake"), &initialize(1)).await;
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], 1);
    assert_eq!(init["result"]["agentCapabilities"]["loadSession"], false);
    assert_eq!(init["result"]["agentInfo"]["name"], "fake");
    // Later POSTs may leave the agent out or repeat it; another agent conflicts.
    post_request(&c, "s1", None, &initialize(2)).await;
    post_request(&c, "s1", Some("fake"), &initialize(3)).await;
    assert!(matches!(c.post("s1", Some("fake-load"), &initialize(4)).await, Err(AcpError::Conflict(_))));
    let unknown = post_request(&c, "s1", None, &request(5, "nope/nope", json!({}))).await;
    assert_eq!(unknown["error"]["code"], -32601);
    let bad = post_request(&c, "s1", None, &request(6, "session/new", json!({"cwd": "relative", "mcpServers": []}))).await;
    assert_eq!(bad["error"]["code"], -32602);
    let bad = post_request(&c, "s1", None, &request(7, "session/new", json!({"cwd": "/abs"}))).await;
    assert_eq!(bad["error"]["code"], -32602, "mcpServers is required");
    // A notification and a response to nothing pending are both 202.
    assert_eq!(c.post("s1", None, &cancel("sess_x")).await.expect("notification"), PostOutcome::Accepted);
    let answer = json!({"jsonrpc": "2.0", "id": 99, "result": {"outcome": {"outcome": "cancelled"}}});
    assert_eq!(c.post("s1", None, &answer).await.expect("response"), PostOutcome::Accepted);

    // The framework rules.
    let json_ct = ("content-type", "application/json");
    let (status, ct, _) = fake.raw("POST", "/v1/acp/s1", &[("content-type", "text/plain")], Some("{}")).await;
    assert_eq!((status, ct.starts_with("text/plain")), (415, true));
    let (status, ct, _) = fake.raw("POST", "/v1/acp/s1", &[json_ct, ("accept", "text/html")], Some("{}")).await;
    assert_eq!((status, ct.as_str()), (406, "application/problem+json"));
    let (status, _, body) = fake.raw("POST", "/v1/acp/s1", &[json_ct], Some("[]")).await;
    assert_eq!(status, 400);
    assert!(body.contains("request body must be a JSON-RPC object"), "{body}");
    let (status, _, _) = fake.raw("PUT", "/v1/acp/s1", &[json_ct], Some("{}")).await;
    assert_eq!(status, 405);

    let servers = c.list().await.expect("list");
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["serverId"], "s1");
    assert_eq!(servers[0]["agent"], "fake");
    assert!(servers[0]["createdAtMs"].as_u64().is_some(), "{servers:?}");

    // Every envelope that reached an instance is recorded, in order.
    let (status, received) = fake.control("GET", "/_fake/received", Value::Null).await;
    assert_eq!(status, 200);
    let ids: Vec<Value> = received.as_array().expect("array").iter().map(|r| r["envelope"]["id"].clone()).collect();
    assert_eq!(ids, [json!(1), json!(2), json!(3), json!(5), json!(6), json!(7), Value::Null, json!(99)]);
    assert!(received.as_array().expect("array").iter().all(|r| r["serverId"] == "s1"));
}

#[actix_rt::test]
async fn a_default_prompt_streams_its_updates_then_the_duplicated_response() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();
    let session = open_session(&c, "s1", "fake").await;
    assert!(session.starts_with("sess_"), "{session}");
    let mut stream = c.connect("s1", None).await.expect("connect");

    let reply = post_request(&c, "s1", None, &prompt(3, &session, "Fix the tests")).await;
    assert_eq!(reply["result"], json!({"stopReason": "end_turn"}));

    let seen = read_until(&mut stream, |m| is_response_to(m, 3)).await;
    assert_consecutive(&seen, 1);
    assert!(seen.iter().all(|m| m.event == "message"));
    // The responses to initialize and session/new come first (they were
    // replayed), then the turn, then the copy of the prompt's response.
    assert!(is_response_to(&seen[0], 1) && is_response_to(&seen[1], 2), "{seen:?}");
    assert_eq!(seen.last().expect("response").data, reply, "SSE repeats the response the POST answered");
    assert_eq!(
        update_kinds(&seen),
        [
            "agent_thought_chunk",
            "plan",
            "tool_call",
            "tool_call_update",
            "tool_call_update",
            "agent_message_chunk",
            "agent_message_chunk"
        ]
    );
    let updates: Vec<&Value> = seen.iter().filter(|m| m.data["method"] == "session/update").map(|m| &m.data).collect();
    assert!(updates.iter().all(|u| u["params"]["sessionId"] == session.as_str()));
    let u = |i: usize| &updates[i]["params"]["update"];
    assert_eq!(u(0)["content"], json!({"type": "text", "text": "Thinking about it."}));
    assert_eq!(u(1)["entries"][0]["status"], "completed");
    assert_eq!(u(1)["entries"][1]["status"], "in_progress");
    let call = u(2)["toolCallId"].as_str().expect("toolCallId");
    assert!(call.starts_with("call_"));
    assert_eq!((u(2)["kind"].as_str(), u(2)["status"].as_str()), (Some("edit"), Some("pending")));
    assert_eq!(u(2)["locations"], json!([{"path": "/src/lib.rs"}]));
    assert_eq!((u(3)["toolCallId"].as_str(), u(3)["status"].as_str()), (Some(call), Some("in_progress")));
    assert_eq!((u(4)["toolCallId"].as_str(), u(4)["status"].as_str()), (Some(call), Some("completed")));
    assert_eq!(u(4)["content"][0]["content"]["text"], "edited");
    assert_eq!(chunk_texts(&seen, "agent_message_chunk"), ["Hello", " world"]);
    assert!(u(5)["messageId"].is_string());
    assert_eq!(u(5)["messageId"], u(6)["messageId"]);

    // A test can inject a duplicate: it goes out as-is under the next id.
    let (status, emitted) = fake.control("POST", "/_fake/emit/s1", reply.clone()).await;
    assert_eq!(status, 200);
    let dup = next_before(&mut stream, Instant::now() + WAIT).await;
    assert_eq!(Some(dup.id), emitted["eventId"].as_u64());
    assert_eq!(dup.id, seen.last().expect("last").id + 1);
    assert_eq!(dup.data, reply);

    // Another session of the same agent gets a new id; a failing prompt errors.
    let other = post_request(&c, "s1", None, &new_session(4)).await;
    assert_ne!(other["result"]["sessionId"], session.as_str());
    let failed = post_request(&c, "s1", None, &prompt(5, &session, "please fail")).await;
    assert_eq!(failed["error"], json!({"code": -32000, "message": "scripted failure"}));
    let unknown = post_request(&c, "s1", None, &prompt(6, "sess_nope", "hi")).await;
    assert_eq!(unknown["error"]["code"], -32602);
}

#[actix_rt::test]
async fn a_permission_request_waits_for_the_clients_answer() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();
    let session = open_session(&c, "s1", "fake").await;
    let mut stream = c.connect("s1", None).await.expect("connect");

    let mut last_request_id = None;
    for (n, (choice, expected_status, expected_text)) in
        [("allow-once", "completed", "allowed"), ("reject-once", "failed", "rejected")].into_iter().enumerate()
    {
        let prompt_id = 10 + n as u64;
        let turn = {
            let (c, p) = (c.clone(), prompt(prompt_id, &session, "needs permission"));
            actix_rt::spawn(async move { c.post("s1", None, &p).await })
        };
        let seen = read_until(&mut stream, |m| m.data["method"] == "session/request_permission").await;
        let asked = &seen.last().expect("request").data;
        let request_id = asked["id"].as_u64().expect("a numeric id");
        assert!(request_id >= 1000, "{asked}");
        if let Some(previous) = last_request_id {
            assert!(request_id > previous, "agent request ids are unique");
        }
        last_request_id = Some(request_id);
        let tool_call = seen.iter().rev().find(|m| m.data["params"]["update"]["sessionUpdate"] == "tool_call").expect("tool_call");
        let call = tool_call.data["params"]["update"]["toolCallId"].clone();
        assert_eq!(tool_call.data["params"]["update"]["status"], "pending");
        assert_eq!(asked["params"]["sessionId"], session.as_str());
        assert_eq!(asked["params"]["toolCall"]["toolCallId"], call);
        let options: Vec<&str> =
            asked["params"]["options"].as_array().expect("options").iter().filter_map(|o| o["optionId"].as_str()).collect();
        assert_eq!(options, ["allow-once", "reject-once"]);

        let answer = json!({"jsonrpc": "2.0", "id": request_id, "result": {"outcome": {"outcome": "selected", "optionId": choice}}});
        assert_eq!(c.post("s1", None, &answer).await.expect("answer"), PostOutcome::Accepted);
        match turn.await.expect("join") {
            Ok(PostOutcome::Response(r)) => assert_eq!(r["result"]["stopReason"], "end_turn", "{r}"),
            other => panic!("the prompt answered {other:?}"),
        }
        let rest = read_until(&mut stream, |m| is_response_to(m, prompt_id)).await;
        let update = rest.iter().find(|m| m.data["params"]["update"]["sessionUpdate"] == "tool_call_update").expect("update");
        assert_eq!(update.data["params"]["update"]["toolCallId"], call);
        assert_eq!(update.data["params"]["update"]["status"], expected_status);
        assert_eq!(chunk_texts(&rest, "agent_message_chunk"), [expected_text]);
    }

    // A cancel while the permission is pending: the client answers `cancelled`
    // (as ACP requires) and the prompt ends cancelled.
    let turn = {
        let (c, p) = (c.clone(), prompt(20, &session, "permission again"));
        actix_rt::spawn(async move { c.post("s1", None, &p).await })
    };
    let seen = read_until(&mut stream, |m| m.data["method"] == "session/request_permission").await;
    let request_id = seen.last().expect("request").data["id"].clone();
    assert_eq!(c.post("s1", None, &cancel(&session)).await.expect("cancel"), PostOutcome::Accepted);
    let answer = json!({"jsonrpc": "2.0", "id": request_id, "result": {"outcome": {"outcome": "cancelled"}}});
    assert_eq!(c.post("s1", None, &answer).await.expect("answer"), PostOutcome::Accepted);
    match turn.await.expect("join") {
        Ok(PostOutcome::Response(r)) => assert_eq!(r["result"]["stopReason"], "cancelled", "{r}"),
        other => panic!("the prompt answered {other:?}"),
    }
}

#[actix_rt::test]
async fn a_waiting_prompt_ends_cancelled_and_one_prompt_runs_at_a_time() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();
    let session = open_session(&c, "s1", "fake").await;
    let mut stream = c.connect("s1", None).await.expect("connect");

    let turn = {
        let (c, p) = (c.clone(), prompt(3, &session, "wait for me"));
        actix_rt::spawn(async move { c.post("s1", None, &p).await })
    };
    read_until(&mut stream, |m| is_chunk(m, "waiting")).await;
    let second = post_request(&c, "s1", None, &prompt(4, &session, "hello")).await;
    assert!(second["error"]["code"].is_i64(), "a second prompt while one runs is an error: {second}");
    assert!(!turn.is_finished(), "the prompt waits for the cancel");

    assert_eq!(c.post("s1", None, &cancel(&session)).await.expect("cancel"), PostOutcome::Accepted);
    match turn.await.expect("join") {
        Ok(PostOutcome::Response(r)) => assert_eq!(r["result"], json!({"stopReason": "cancelled"})),
        other => panic!("the prompt answered {other:?}"),
    }
    read_until(&mut stream, |m| is_response_to(m, 3)).await;
    // The session is free again.
    let next = post_request(&c, "s1", None, &prompt(5, &session, "hello")).await;
    assert_eq!(next["result"]["stopReason"], "end_turn");
}

#[actix_rt::test]
async fn a_request_past_the_acp_timeout_is_504_and_its_late_answer_goes_to_sse() {
    let fake = Fake::start(&[("SANDBOX_AGENT_ACP_REQUEST_TIMEOUT_MS", "300")]).await;
    let c = fake.client();
    let session = open_session(&c, "s1", "fake").await;
    let mut stream = c.connect("s1", None).await.expect("connect");
    let started = Instant::now();
    match c.post("s1", None, &prompt(3, &session, "wait")).await {
        Err(AcpError::Timeout(_)) => {}
        other => panic!("expected a 504, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(c.post("s1", None, &cancel(&session)).await.expect("cancel"), PostOutcome::Accepted);
    let seen = read_until(&mut stream, |m| is_response_to(m, 3)).await;
    assert_eq!(seen.last().expect("late").data["result"]["stopReason"], "cancelled");
}

#[actix_rt::test]
async fn last_event_id_replays_the_ring_buffer() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();
    let session = open_session(&c, "s1", "fake").await;
    post_request(&c, "s1", None, &prompt(3, &session, "go")).await;

    let mut all = c.connect("s1", None).await.expect("connect");
    let everything = read_until(&mut all, |m| is_response_to(m, 3)).await;
    assert_consecutive(&everything, 1);
    let cursor = everything[2].id;
    let mut resumed = c.connect("s1", Some(cursor)).await.expect("resume");
    let replay = read_until(&mut resumed, |m| is_response_to(m, 3)).await;
    assert_eq!(replay, everything[3..].to_vec(), "the same envelopes, under the same ids");

    // Then both go on live.
    post_request(&c, "s1", None, &prompt(4, &session, "again")).await;
    let live = read_until(&mut resumed, |m| is_response_to(m, 4)).await;
    assert_eq!(live[0].id, everything.last().expect("last").id + 1);
    assert_eq!(read_until(&mut all, |m| is_response_to(m, 4)).await, live, "several subscribers see the same");

    // Only the last 1024 are kept.
    let flood = post_request(&c, "s1", None, &prompt(5, &session, "flood 1500")).await;
    assert_eq!(flood["result"]["stopReason"], "end_turn");
    let flooded = read_until(&mut all, |m| is_response_to(m, 5)).await;
    assert_eq!(chunk_texts(&flooded, "agent_message_chunk").len(), 1500);
    let last = flooded.last().expect("last").id;
    let mut from_zero = c.connect("s1", Some(0)).await.expect("replay");
    let first = next_before(&mut from_zero, Instant::now() + WAIT).await;
    assert_eq!(first.id, last - 1023, "the ring holds 1024 events");

    // A bad cursor and a bad accept.
    let sse = ("accept", "text/event-stream");
    let (status, ct, body) = fake.raw("GET", "/v1/acp/s1", &[sse, ("last-event-id", "abc")], None).await;
    assert_eq!((status, ct.as_str()), (400, "application/problem+json"));
    assert!(body.contains("Last-Event-ID must be a positive integer"), "{body}");
    let (status, _, _) = fake.raw("GET", "/v1/acp/s1", &[("accept", "application/json")], None).await;
    assert_eq!(status, 406);
}

#[actix_rt::test]
async fn heartbeats_flow_and_gone_subscribers_are_dropped() {
    let fake = Fake::start(&[("FAKE_HEARTBEAT_MS", "100")]).await;
    let c = fake.client();
    post_request(&c, "s1", Some("fake"), &initialize(1)).await;

    let client = awc::Client::builder().timeout(WAIT).finish();
    let mut res = client
        .get(format!("{}/v1/acp/s1", fake.url))
        .bearer_auth(TOKEN)
        .insert_header(("accept", "text/event-stream"))
        .send()
        .await
        .expect("open the stream");
    assert_eq!(res.status().as_u16(), 200);
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let deadline = Instant::now() + WAIT;
    let mut text = String::new();
    while !text.contains(": heartbeat\n\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, res.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("no heartbeat (so far {text:?}): {other:?}"),
        }
    }
    assert!(text.starts_with("event: message\nid: 1\ndata: {"), "{text:?}");

    let fake = &fake;
    let subscribers = move || async move {
        let (status, body) = fake.control("GET", "/_fake/subscribers/s1", Value::Null).await;
        assert_eq!(status, 200, "{body}");
        body["subscribers"].as_u64().expect("count")
    };
    let other = c.connect("s1", None).await.expect("connect");
    assert_eq!(subscribers().await, 2);
    drop(other);
    drop(res);
    // The next heartbeat to a closed connection fails, and the fake lets go.
    crate::common::eventually(WAIT, "the disconnected subscribers are dropped", || async move {
        (subscribers().await == 0).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn an_agent_that_exits_fails_pending_and_later_posts() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();
    let session = open_session(&c, "s1", "fake").await;
    let mut stream = c.connect("s1", None).await.expect("connect");
    let turn = {
        let (c, p) = (c.clone(), prompt(3, &session, "wait"));
        actix_rt::spawn(async move { c.post("s1", None, &p).await })
    };
    read_until(&mut stream, |m| is_chunk(m, "waiting")).await;

    let (status, _) = fake.control("POST", "/_fake/exit/s1", json!({})).await;
    assert_eq!(status, 204);
    let exited = read_until(&mut stream, |m| m.data["method"] == "_adapter/agent_exited").await;
    assert_eq!(exited.last().expect("exited").data["params"], json!({"success": false, "code": 1}));
    match turn.await.expect("join") {
        Err(AcpError::AgentExited(_)) => {}
        other => panic!("the pending prompt answered {other:?}"),
    }
    match c.post("s1", None, &prompt(4, &session, "hello")).await {
        Err(AcpError::AgentExited(m)) => assert!(m.contains("Broken pipe"), "{m}"),
        other => panic!("expected AgentExited, got {other:?}"),
    }
    assert!(c.list().await.expect("list").iter().any(|s| s["serverId"] == "s1"), "still listed");
    assert_eq!(c.post("s1", None, &cancel(&session)).await.err().map(|e| matches!(e, AcpError::AgentExited(_))), Some(true));

    // DELETE of a dead instance answers at once, and closes the stream.
    assert!(c.delete("s1", Duration::from_secs(2)).await.expect("delete"));
    assert!(c.list().await.expect("list").is_empty());
    assert_closes(&mut stream).await;
}

#[actix_rt::test]
async fn a_reset_numbers_from_one_and_keeps_the_agent() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();
    let session = open_session(&c, "s1", "fake").await;
    post_request(&c, "s1", None, &prompt(3, &session, "go")).await;
    let before = c.list().await.expect("list")[0]["createdAtMs"].as_u64().expect("createdAtMs");
    let mut old = c.connect("s1", None).await.expect("connect");
    let seen = read_until(&mut old, |m| is_response_to(m, 3)).await;
    let cursor = seen.last().expect("last").id;
    assert!(cursor > 3, "{cursor}");

    let (status, _) = fake.control("POST", "/_fake/reset/s1", json!({})).await;
    assert_eq!(status, 204);
    assert_closes(&mut old).await;
    let after = c.list().await.expect("list")[0]["createdAtMs"].as_u64().expect("createdAtMs");
    assert!(after > before, "createdAtMs {before} then {after}");

    // Nothing is replayed past an old cursor; the agent still knows the session.
    let mut resumed = c.connect("s1", Some(cursor)).await.expect("resume");
    let reply = post_request(&c, "s1", None, &prompt(4, &session, "go on")).await;
    assert_eq!(reply["result"]["stopReason"], "end_turn");
    let first = next_before(&mut resumed, Instant::now() + WAIT).await;
    assert_eq!(first.id, 1, "a re-created instance numbers from 1");
    let mut fresh = c.connect("s1", None).await.expect("connect");
    let again = read_until(&mut fresh, |m| is_response_to(m, 4)).await;
    assert_consecutive(&again, 1);
}

#[actix_rt::test]
async fn delete_hangs_until_the_client_gives_up_unless_switched_off() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();
    post_request(&c, "s1", Some("fake"), &initialize(1)).await;
    let mut stream = c.connect("s1", None).await.expect("connect");
    read_until(&mut stream, |m| is_response_to(m, 1)).await;

    let started = Instant::now();
    let confirmed = c.delete("s1", Duration::from_secs(1)).await.expect("delete");
    assert!(!confirmed, "the 0.4.2 DELETE never answers");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(c.list().await.expect("list").is_empty(), "gone from the list at once");
    let exited = read_until(&mut stream, |m| m.data["method"] == "_adapter/agent_exited").await;
    assert_eq!(exited.last().expect("exited").data["params"], json!({"success": true, "code": 0}));
    assert_closes(&mut stream).await;
    assert!(matches!(c.connect("s1", None).await.err(), Some(AcpError::NotFound(_))));
    assert!(c.delete("nope", Duration::from_secs(2)).await.expect("delete unknown"), "204 at once");

    let (status, body) = fake.control("POST", "/_fake/delete_hangs", json!({"hang": false})).await;
    assert_eq!((status, body), (200, json!({"hang": false})));
    post_request(&c, "s2", Some("fake"), &initialize(1)).await;
    assert!(c.delete("s2", Duration::from_secs(2)).await.expect("delete"), "answered once switched off");
    // The id may be used again, and numbers from 1.
    post_request(&c, "s1", Some("fake-load"), &initialize(1)).await;
    let mut again = c.connect("s1", None).await.expect("connect");
    assert_eq!(next_before(&mut again, Instant::now() + WAIT).await.id, 1);
}

#[actix_rt::test]
async fn a_session_loads_on_a_fresh_instance_and_replays_its_conversation() {
    let fake = Fake::start(&[]).await;
    let c = fake.client();
    let session = open_session(&c, "a1", "fake").await;
    post_request(&c, "a1", None, &prompt(3, &session, "first question")).await;
    let load = request(4, "session/load", json!({"sessionId": session, "cwd": "/work", "mcpServers": []}));
    let refused = post_request(&c, "a1", None, &load).await;
    assert_eq!(refused["error"]["code"], -32601, "`fake` cannot load sessions");

    let init = post_request(&c, "a2", Some("fake-load"), &initialize(1)).await;
    assert_eq!(init["result"]["agentCapabilities"]["loadSession"], true);
    let unknown_here = post_request(&c, "a2", None, &prompt(2, &session, "hi")).await;
    assert_eq!(unknown_here["error"]["code"], -32602, "a fresh agent does not know the session before a load");
    let nope = request(3, "session/load", json!({"sessionId": "sess_nope", "cwd": "/work", "mcpServers": []}));
    assert_eq!(post_request(&c, "a2", None, &nope).await["error"]["code"], -32602);

    let loaded = post_request(&c, "a2", None, &load).await;
    assert_eq!(loaded["result"], Value::Null);
    assert!(loaded.get("result").is_some(), "{loaded}");
    let mut stream = c.connect("a2", None).await.expect("connect");
    let seen = read_until(&mut stream, |m| is_response_to(m, 4)).await;
    assert_eq!(update_kinds(&seen), ["user_message_chunk", "agent_message_chunk"]);
    assert_eq!(chunk_texts(&seen, "user_message_chunk"), ["first question"]);
    assert_eq!(chunk_texts(&seen, "agent_message_chunk"), ["Hello world"]);
    let mode = request(5, "session/set_mode", json!({"sessionId": session, "modeId": "plan"}));
    assert_eq!(post_request(&c, "a2", None, &mode).await["result"], json!({}));
    let next = post_request(&c, "a2", None, &prompt(6, &session, "second")).await;
    assert_eq!(next["result"]["stopReason"], "end_turn");
}
