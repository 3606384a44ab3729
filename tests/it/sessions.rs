//! ACP sessions end to end: a real Kiln server, real tasks and worktrees, and
//! the fake sandbox-agent (tests/fake_sandbox_agent.rs), which scripts an
//! agent's turns (chunks, thoughts, a plan, a tool call and its updates, a
//! permission request that waits, stopReason, cancel, session/load) and lets a
//! test kill the agent, reset an instance's sequence or inject envelopes. The
//! real binary's `mock` agent only echoes, so it serves the transport tests in
//! sandbox_agent.rs.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{cli, eventually, git_repo, Client, Server};
use crate::fake_sandbox_agent::fake_sandbox_agent_bin;

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    server: Server,
    _dir: tempfile::TempDir,
    c: Client,
    task: String,
}

impl Setup {
    async fn new(extra: &[(&str, &str)]) -> Setup {
        let bin = fake_sandbox_agent_bin();
        let mut env = vec![("KILN_SANDBOX_AGENT_BIN", bin.to_str().expect("path"))];
        env.extend_from_slice(extra);
        let (server, dir) = Server::start(&env);
        let c = server.client();
        let repo = git_repo(dir.path(), "widget");
        c.add_repo("default", &repo).await;
        let task = c.create_task("default", "widget", "sessions").await;
        let task = task["id"].as_str().expect("id").to_string();
        Setup { server, _dir: dir, c, task }
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/organizations/default/tasks/{}/sessions{rest}", self.task)
    }

    async fn open(&self, agent: &str) -> String {
        let r = self.c.post(&self.path(""), json!({"agent": agent})).await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.body["status"], "ready", "{r:?}");
        r.body["id"].as_str().expect("id").to_string()
    }

    async fn prompt(&self, sid: &str, text: &str) -> Value {
        let r = self.c.post(&self.path(&format!("/{sid}/prompt")), json!({"text": text})).await;
        assert_eq!(r.status, 202, "{r:?}");
        r.body
    }

    async fn session(&self, sid: &str) -> Value {
        let r = self.c.get(&self.path(&format!("/{sid}"))).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    }

    /// Waits until the session's turn is over and answers the session.
    async fn wait_turn(&self, sid: &str, stop: &str) -> Value {
        eventually(WAIT, &format!("the turn to end with {stop}"), || async {
            let s = self.session(sid).await;
            (s["status"] == "ready" && s["stop_reason"] == stop && s["prompt_in_flight"].is_null()).then_some(s)
        })
        .await
    }

    async fn transcript(&self, sid: &str) -> Value {
        let r = self.c.get(&self.path(&format!("/{sid}/transcript"))).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["transcript"].clone()
    }

    /// The session's journal: its envelope events, in order (`?session=`).
    async fn journal(&self, sid: &str) -> Vec<Value> {
        self.events(sid).await.into_iter().filter(|e| e["data"]["envelope"].is_object()).collect()
    }

    /// Every event of the session (its journal and its status), in order.
    async fn events(&self, sid: &str) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut since = 0;
        loop {
            let r = self.c.get(&format!("/v1/organizations/default/events?session={sid}&since={since}&limit=1000")).await;
            assert_eq!(r.status, 200, "{r:?}");
            let items = r.body["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return out;
            }
            since = r.body["next_since"].as_i64().expect("next_since");
            assert!(items.iter().all(|e| e["session"] == sid), "the filter holds");
            out.extend(items);
        }
    }

    /// A client for the task's sandbox-agent (the fake), from its 0600 record.
    fn fake(&self) -> Client {
        let record = std::fs::read(self.server.data_dir().join(format!("sandboxes/{}/sandbox-agent.json", self.task)))
            .expect("sandbox-agent record");
        let record: Value = serde_json::from_slice(&record).expect("record json");
        Client::new(record["url"].as_str().expect("url"), record["token"].as_str())
    }

    /// Every envelope the fake received on `server_id`, in order.
    async fn received(&self, server_id: &str) -> Vec<Value> {
        let r = self.fake().get("/_fake/received").await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body
            .as_array()
            .expect("array")
            .iter()
            .filter(|x| x["serverId"] == server_id)
            .map(|x| x["envelope"].clone())
            .collect()
    }
}

/// Waits until the session has no turn in flight and is `ready`.
async fn wait_ready(s: &Setup, sid: &str) -> Value {
    eventually(WAIT, "the turn to end", || async {
        let v = s.session(sid).await;
        (v["status"] == "ready" && v["prompt_in_flight"].is_null()).then_some(v)
    })
    .await
}

/// Asserts one turn's events, in the session's event order: the prompt sent,
/// at once `prompting` (with the prompt's id and nothing of an earlier turn),
/// the turn's updates, its response, and at once `ready` with this turn's
/// `stop_reason` (`Ok`) or error (`Err`).
fn assert_turn_in_order(events: &[Value], request_id: &Value, end: Result<&str, &str>) {
    let show = |i: usize| format!("{} {}", events[i]["kind"], events[i]["data"]);
    let sent = events
        .iter()
        .position(|e| e["kind"] == "session.sent" && e["data"]["envelope"]["id"] == *request_id && e["data"]["envelope"]["method"] == "session/prompt")
        .unwrap_or_else(|| panic!("no prompt {request_id} sent"));
    let prompting = &events[sent + 1];
    assert_eq!(
        (prompting["kind"].as_str(), prompting["data"]["to"].as_str(), &prompting["data"]["request_id"]),
        (Some("session.status_changed"), Some("prompting"), request_id),
        "the status right after prompt {request_id}: {}",
        show(sent + 1)
    );
    assert_eq!(prompting["data"]["from"], "ready");
    let stale: Vec<&str> = ["stop_reason", "error"].into_iter().filter(|k| !prompting["data"][*k].is_null()).collect();
    assert!(stale.is_empty(), "prompting carries nothing of an earlier state: {}", prompting["data"]);
    let response = events
        .iter()
        .position(|e| e["kind"] == "session.response" && e["data"]["envelope"]["id"] == *request_id)
        .unwrap_or_else(|| panic!("no response to {request_id}"));
    assert!(response > sent + 1, "the response comes after prompting");
    for (i, e) in events.iter().enumerate().take(response).skip(sent + 2) {
        let kind = e["kind"].as_str().unwrap_or("");
        assert!(kind != "session.status_changed", "no status change inside the turn: {}", show(i));
    }
    let ready = &events[response + 1];
    assert_eq!(
        (ready["kind"].as_str(), ready["data"]["from"].as_str(), ready["data"]["to"].as_str()),
        (Some("session.status_changed"), Some("prompting"), Some("ready")),
        "the status right after response {request_id}: {}",
        show(response + 1)
    );
    match end {
        Ok(stop) => assert_eq!((ready["data"]["stop_reason"].as_str(), &ready["data"]["error"]), (Some(stop), &Value::Null), "{}", ready["data"]),
        Err(error) => assert_eq!((&ready["data"]["stop_reason"], ready["data"]["error"].as_str()), (&Value::Null, Some(error)), "{}", ready["data"]),
    }
    assert!(ready["data"]["seq"].as_u64() >= events[response]["data"]["seq"].as_u64(), "it names the journal cursor it follows");
}

/// The session's status events form one chain: each starts where the last ended.
fn assert_status_chain(events: &[Value]) {
    let moves: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "session.status_changed")
        .map(|e| (e["data"]["from"].as_str().unwrap_or("?"), e["data"]["to"].as_str().unwrap_or("?")))
        .collect();
    for pair in moves.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "an unbroken chain: {moves:?}");
    }
}

fn items_of(transcript: &Value, kind: &str) -> Vec<Value> {
    transcript["items"].as_array().expect("items").iter().filter(|i| i["type"] == kind).cloned().collect()
}

#[actix_rt::test]
async fn a_turn_is_journaled_once_and_projected_into_a_transcript() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    let started = s.c.events_since("default", 0).await;
    assert!(started.iter().any(|e| e["kind"] == "sandbox.agent_started"), "the server was started on demand");
    s.prompt(&sid, "Fix the broken test").await;
    let session = s.wait_turn(&sid, "end_turn").await;
    assert_eq!(session["awaiting_input"], false);

    let t = s.transcript(&sid).await;
    let kinds: Vec<&str> = t["items"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user", "thought", "tool_call", "agent", "turn_ended"], "{t}");
    assert_eq!(items_of(&t, "user")[0]["text"], "Fix the broken test");
    assert_eq!(items_of(&t, "thought")[0]["text"], "Thinking about it.");
    assert_eq!(items_of(&t, "agent")[0]["text"], "Hello world", "chunks of one message are joined");
    let tool = &items_of(&t, "tool_call")[0];
    assert_eq!(tool["status"], "completed", "the latest status: {tool}");
    assert_eq!(tool["title"], "Edit src/lib.rs", "kept from the tool_call");
    assert_eq!(tool["content"][0]["content"]["text"], "edited");
    assert_eq!(t["plan"].as_array().expect("plan").len(), 2);
    assert_eq!(items_of(&t, "turn_ended")[0]["stop_reason"], "end_turn");

    // Every response came twice (the POST's body and SSE) and is journaled once.
    let journal = s.journal(&sid).await;
    let responses: Vec<&Value> = journal.iter().filter(|e| e["kind"] == "session.response").collect();
    let ids: Vec<&Value> = responses.iter().map(|e| &e["data"]["envelope"]["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(3)], "initialize, session/new, session/prompt");
    // The cursor is per session, contiguous, in journal order.
    let seqs: Vec<u64> = journal.iter().map(|e| e["data"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=journal.len() as u64).collect::<Vec<_>>());
    // Everything Kiln posted is journaled as sent, in the order posted; like every
    // event, with the data dir's location written `<data_dir>` (the agent's cwd).
    let sent: Vec<Value> =
        journal.iter().filter(|e| e["kind"] == "session.sent").map(|e| e["data"]["envelope"].clone()).collect();
    let data_dir = s.server.data_dir().to_string_lossy().to_string();
    let received: Vec<Value> = s
        .received(&sid)
        .await
        .into_iter()
        .map(|v| serde_json::from_str(&v.to_string().replace(&data_dir, "<data_dir>")).unwrap())
        .collect();
    assert_eq!(sent, received);
    // SSE ids never repeat.
    let mut remote: Vec<u64> = journal.iter().filter_map(|e| e["data"]["remote_seq"].as_u64()).collect();
    let n = remote.len();
    remote.dedup();
    assert_eq!(remote.len(), n);

    // The protocol drove the task: running during the turn, idle after it.
    let events = s.c.events_since("default", 0).await;
    let moves: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["kind"] == "task.status_changed" && e["data"]["action"] == "session")
        .map(|e| (e["data"]["from"].as_str().unwrap().into(), e["data"]["to"].as_str().unwrap().into()))
        .collect();
    assert_eq!(moves.last().map(|m| m.1.as_str()), Some("idle"), "{moves:?}");
    let status = events.iter().filter(|e| e["kind"] == "session.status_changed" && e["session"] == sid.as_str()).count();
    assert!(status >= 3, "starting→ready→prompting→ready");
    s.c.wait_status("default", &s.task, "idle").await;

    // A response injected again later (a replay) is still journaled once.
    let r = s.fake().post(&format!("/_fake/emit/{sid}"), json!({"jsonrpc":"2.0","id":3,"result":{"stopReason":"end_turn"}})).await;
    assert!(r.status < 300, "{r:?}");
    s.fake().post(&format!("/_fake/emit/{sid}"), json!({"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"x","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"late"}}}})).await;
    eventually(WAIT, "the late chunk to be journaled", || async {
        let t = s.transcript(&sid).await;
        (items_of(&t, "agent").last().map(|a| a["text"] == "late") == Some(true)).then_some(())
    })
    .await;
    let again = s.journal(&sid).await;
    assert_eq!(again.iter().filter(|e| e["kind"] == "session.response").count(), 3);
}

#[actix_rt::test]
async fn a_permission_request_sets_awaiting_input_until_answered() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    s.prompt(&sid, "this needs permission").await;
    let waiting = eventually(WAIT, "awaiting_input", || async {
        let v = s.session(&sid).await;
        (v["awaiting_input"] == true).then_some(v)
    })
    .await;
    assert_eq!(waiting["status"], "prompting");
    let pending = &waiting["pending_permissions"][0];
    let request = pending["request"].as_str().expect("request").to_string();
    // The task's flag follows its session's row, a moment later.
    let task = eventually(WAIT, "the task to show it too", || async {
        let task = s.c.get(&format!("/v1/organizations/default/tasks/{}", s.task)).await;
        (task.body["awaiting_input"] == true).then_some(task)
    })
    .await;
    assert_eq!(task.body["sessions"][0]["awaiting_input"], true, "and its sessions");
    let events = s.events(&sid).await;
    let asked = events.iter().position(|e| e["kind"] == "session.request").expect("the request");
    assert_eq!(
        (events[asked + 1]["kind"].as_str(), events[asked + 1]["data"]["awaiting_input"].as_bool()),
        (Some("session.awaiting_input"), Some(true)),
        "the session's flag is journaled right after the request"
    );
    let events = s.c.events_since("default", 0).await;
    assert!(events.iter().any(|e| e["kind"] == "task.awaiting_input" && e["data"]["awaiting_input"] == true));

    // Bad answers are refused with what would work.
    let perm = s.path(&format!("/{sid}/permissions/{request}"));
    let r = s.c.post(&perm, json!({"option_id": "maybe"})).await;
    assert_eq!((r.status, r.code()), (422, "unknown_option"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("allow-once"));
    let r = s.c.post(&perm, json!({})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_answer"));
    let r = s.c.post(&s.path(&format!("/{sid}/permissions/4242")), json!({"option_id": "allow-once"})).await;
    assert_eq!((r.status, r.code()), (404, "permission_not_found"));

    let r = s.c.post(&perm, json!({"option_id": "allow-once"})).await;
    assert_eq!(r.status, 202, "{r:?}");
    let done = s.wait_turn(&sid, "end_turn").await;
    assert_eq!(done["awaiting_input"], false);
    assert!(done["pending_permissions"].as_array().unwrap().is_empty());
    let t = s.transcript(&sid).await;
    let permission = &items_of(&t, "permission")[0];
    assert_eq!(permission["outcome"]["optionId"], "allow-once");
    assert_eq!(items_of(&t, "tool_call")[0]["status"], "completed");
    assert_eq!(items_of(&t, "agent").last().unwrap()["text"], "allowed");
    // The answer went to the agent with the id exactly as it came.
    let answer = s.received(&sid).await.into_iter().find(|e| e["method"].is_null() && e["result"].is_object()).expect("answer");
    assert_eq!(answer["id"], pending["id"]);
    eventually(WAIT, "the task's flag to clear", || async {
        let task = s.c.get(&format!("/v1/organizations/default/tasks/{}", s.task)).await;
        (task.body["awaiting_input"] == false).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn cancel_ends_the_turn_and_declines_pending_permissions() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    s.prompt(&sid, "wait for me").await;
    eventually(WAIT, "prompting", || async { (s.session(&sid).await["status"] == "prompting").then_some(()) }).await;
    let r = s.c.post(&s.path(&format!("/{sid}/prompt")), json!({"text": "another"})).await;
    assert_eq!((r.status, r.code()), (409, "turn_in_progress"), "one turn at a time");
    s.c.wait_status("default", &s.task, "running").await;
    let r = s.c.post(&s.path(&format!("/{sid}/cancel")), json!({})).await;
    assert_eq!(r.status, 202, "{r:?}");
    s.wait_turn(&sid, "cancelled").await;
    s.c.wait_status("default", &s.task, "idle").await;
    let r = s.c.post(&s.path(&format!("/{sid}/cancel")), json!({})).await;
    assert_eq!((r.status, r.code()), (409, "no_turn"));

    // With a permission pending, cancel answers it `cancelled` as ACP requires.
    s.prompt(&sid, "permission please").await;
    eventually(WAIT, "awaiting_input", || async { (s.session(&sid).await["awaiting_input"] == true).then_some(()) }).await;
    let r = s.c.post(&s.path(&format!("/{sid}/cancel")), json!({})).await;
    assert_eq!((r.status, r.body["permissions_cancelled"].as_u64()), (202, Some(1)), "{r:?}");
    let done = s.wait_turn(&sid, "cancelled").await;
    assert_eq!(done["awaiting_input"], false);
    let sent = s.received(&sid).await;
    assert!(sent.iter().any(|e| e["result"]["outcome"]["outcome"] == "cancelled"), "{sent:?}");
}

#[actix_rt::test]
async fn a_lost_session_is_restored_with_a_capped_preamble_sent_once() {
    let s = Setup::new(&[("KILN_SESSIONS__PREAMBLE_MAX_EVENTS", "3"), ("KILN_SESSIONS__PREAMBLE_MAX_CHARS", "400")]).await;
    let sid = s.open("fake").await;
    for text in ["first question", "second question", "third question"] {
        s.prompt(&sid, text).await;
        s.wait_turn(&sid, "end_turn").await;
    }
    // The agent dies: the stream says so and the session is lost.
    let r = s.fake().post(&format!("/_fake/exit/{sid}"), json!({})).await;
    assert!(r.status < 300, "{r:?}");
    let lost = eventually(WAIT, "the session to be lost", || async {
        let v = s.session(&sid).await;
        (v["status"] == "lost").then_some(v)
    })
    .await;
    assert!(lost["last_error"].as_str().unwrap().contains("exited"), "{lost}");

    let accepted = s.prompt(&sid, "fourth question").await;
    assert_eq!(accepted["restored"], "new", "fake cannot session/load");
    s.wait_turn(&sid, "end_turn").await;
    s.prompt(&sid, "fifth question").await;
    let session = s.wait_turn(&sid, "end_turn").await;
    assert_eq!(session["acp_server_id"], format!("{sid}-2"), "a new instance");

    let sent = s.received(&format!("{sid}-2")).await;
    let methods: Vec<&str> = sent.iter().filter_map(|e| e["method"].as_str()).collect();
    assert_eq!(methods, ["initialize", "session/new", "session/prompt", "session/prompt"]);
    let first = &sent[2]["params"]["prompt"];
    assert_eq!(first.as_array().unwrap().len(), 2, "preamble + the prompt: {first}");
    let preamble = first[0]["text"].as_str().unwrap();
    assert!(preamble.chars().count() <= 400, "capped by characters: {}", preamble.chars().count());
    assert!(preamble.contains("third question") && preamble.contains("Hello world"), "{preamble}");
    assert!(!preamble.contains("first question"), "capped by events: {preamble}");
    assert_eq!(first[1]["text"], "fourth question");
    assert_eq!(sent[3]["params"]["prompt"].as_array().unwrap().len(), 1, "the preamble went once");
    let t = s.transcript(&sid).await;
    let users: Vec<Value> = items_of(&t, "user").iter().map(|u| u["text"].clone()).collect();
    assert_eq!(users.len(), 5, "the preamble is not a user message: {users:?}");
    // lost (with its cause) → starting (with nothing stale) → ready → prompting…
    let events = s.events(&sid).await;
    assert_status_chain(&events);
    let moves: Vec<&Value> = events.iter().filter(|e| e["kind"] == "session.status_changed").map(|e| &e["data"]).collect();
    let at = moves.iter().position(|m| m["to"] == "lost").expect("lost");
    assert!(moves[at]["error"].as_str().unwrap().contains("exited"), "{}", moves[at]);
    assert_eq!(moves[at + 1]["to"], "starting");
    assert!(moves[at + 1].get("error").is_none() && moves[at + 1].get("stop_reason").is_none(), "{}", moves[at + 1]);
    assert_eq!(moves[at + 2]["to"], "ready");
}

#[actix_rt::test]
async fn an_agent_that_can_load_is_restored_with_session_load() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake-load").await;
    s.prompt(&sid, "remember this").await;
    s.wait_turn(&sid, "end_turn").await;
    let remote = s.session(&sid).await["remote_session_id"].clone();
    s.fake().post(&format!("/_fake/exit/{sid}"), json!({})).await;
    eventually(WAIT, "lost", || async { (s.session(&sid).await["status"] == "lost").then_some(()) }).await;
    let accepted = s.prompt(&sid, "and now?").await;
    assert_eq!(accepted["restored"], "load");
    let session = s.wait_turn(&sid, "end_turn").await;
    assert_eq!(session["remote_session_id"], remote, "the same agent session");
    let sent = s.received(&format!("{sid}-2")).await;
    let methods: Vec<&str> = sent.iter().filter_map(|e| e["method"].as_str()).collect();
    assert_eq!(methods, ["initialize", "session/load", "session/prompt"]);
    assert_eq!(sent[2]["params"]["prompt"].as_array().unwrap().len(), 1, "no preamble after a load");
    // The replayed history is journaled (as replay) but not shown twice.
    let t = s.transcript(&sid).await;
    let users: Vec<Value> = items_of(&t, "user").iter().map(|u| u["text"].clone()).collect();
    assert_eq!(users, [json!("remember this"), json!("and now?")], "{t}");
    let journal = s.journal(&sid).await;
    assert!(journal.iter().any(|e| e["data"]["replay"] == true));
}

#[actix_rt::test]
async fn the_stream_resumes_after_a_kiln_restart_without_loss_or_duplicates() {
    let mut s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    s.prompt(&sid, "before the restart").await;
    s.wait_turn(&sid, "end_turn").await;
    let fake = s.fake();
    let chunk = |text: &str| {
        json!({"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"x","update":{"sessionUpdate":"agent_message_chunk","messageId":"m9","content":{"type":"text","text":text}}}})
    };
    s.server.kill();
    // While Kiln is down the agent keeps talking; sandbox-agent buffers it.
    for part in ["while ", "kiln ", "was down"] {
        let r = fake.post(&format!("/_fake/emit/{sid}"), chunk(part)).await;
        assert!(r.status < 300, "{r:?}");
    }
    s.server.restart();
    s.c = s.server.client();
    eventually(WAIT, "the missed chunks", || async {
        let t = s.transcript(&sid).await;
        (items_of(&t, "agent").last().map(|a| a["text"] == "while kiln was down") == Some(true)).then_some(())
    })
    .await;
    // Live again after the resume.
    fake.post(&format!("/_fake/emit/{sid}"), chunk(" and back")).await;
    eventually(WAIT, "the live chunk", || async {
        let t = s.transcript(&sid).await;
        (items_of(&t, "agent").last().map(|a| a["text"] == "while kiln was down and back") == Some(true)).then_some(())
    })
    .await;
    let journal = s.journal(&sid).await;
    let mut remote: Vec<u64> = journal.iter().filter_map(|e| e["data"]["remote_seq"].as_u64()).collect();
    let sorted = {
        let mut r = remote.clone();
        r.sort();
        r
    };
    assert_eq!(remote, sorted, "in order");
    let n = remote.len();
    remote.dedup();
    assert_eq!(remote.len(), n, "no SSE event journaled twice");
    assert_eq!(s.session(&sid).await["status"], "ready");
}

#[actix_rt::test]
async fn a_reset_remote_sequence_is_noticed_and_resynced() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    s.prompt(&sid, "one").await;
    s.wait_turn(&sid, "end_turn").await;
    let before = s.session(&sid).await["remote_epoch"].as_i64().expect("epoch");
    let r = s.fake().post(&format!("/_fake/reset/{sid}"), json!({})).await;
    assert!(r.status < 300, "{r:?}");
    eventually(WAIT, "session.resynced", || async {
        let events = s.c.events_since("default", 0).await;
        events.iter().any(|e| e["kind"] == "session.resynced" && e["session"] == sid.as_str()).then_some(())
    })
    .await;
    // The new sequence starts at 1 again, and is followed from there.
    s.prompt(&sid, "two").await;
    let session = s.wait_turn(&sid, "end_turn").await;
    assert!(session["remote_epoch"].as_i64().unwrap() > before);
    let t = s.transcript(&sid).await;
    assert_eq!(items_of(&t, "turn_ended").len(), 2);
    let journal = s.journal(&sid).await;
    let epochs: Vec<i64> = journal.iter().filter_map(|e| e["data"]["epoch"].as_i64()).collect();
    assert!(epochs.contains(&before) && epochs.iter().any(|e| *e > before));
}

#[actix_rt::test]
async fn sessions_refuse_bad_input_and_close() {
    let s = Setup::new(&[]).await;
    let r = s.c.post(&s.path(""), json!({"agent": "no such agent!"})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_session"), "{r:?}");
    let r = s.c.post(&s.path(""), json!({})).await;
    assert_eq!((r.status, r.code()), (422, "agent_required"), "the fake profile has no acp: {r:?}");
    let r = s.c.post(&s.path(""), json!({"agent": "nope"})).await;
    assert_eq!((r.status, r.code()), (422, "unsupported_agent"), "{r:?}");
    let r = s.c.get(&s.path("/0123456789ab")).await;
    assert_eq!((r.status, r.code()), (404, "session_not_found"));
    let sid = s.open("fake").await;
    let r = s.c.post(&s.path(&format!("/{sid}/prompt")), json!({"text": "  "})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_prompt"));
    let r = s.c.post(&s.path(&format!("/{sid}/prompt")), json!({"txt": "x"})).await;
    assert_eq!((r.status, r.code()), (422, "invalid_body"), "{r:?}");
    // A prompt that the agent fails ends the turn with the error.
    s.prompt(&sid, "please fail").await;
    eventually(WAIT, "the failed turn", || async {
        let t = s.transcript(&sid).await;
        items_of(&t, "turn_ended").first().filter(|e| e["error"] == "scripted failure").cloned()
    })
    .await;
    let list = s.c.get(&s.path("")).await;
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "the unsupported agent's session is kept: {items:?}");
    let unsupported = items.iter().find(|i| i["agent"] == "nope").expect("the unsupported agent's session");
    assert_eq!(unsupported["status"], "closed", "it never opened: nothing to restore");
    assert!(unsupported["last_error"].as_str().unwrap().contains("does not know agent"), "{unsupported}");
    // Close answers even though 0.4.2's DELETE never does (the fake hangs the same way).
    let r = s.c.delete(&s.path(&format!("/{sid}"))).await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("closed")), "{r:?}");
    let r = s.c.post(&s.path(&format!("/{sid}/prompt")), json!({"text": "hello?"})).await;
    assert_eq!((r.status, r.code()), (409, "session_closed"));
    let r = s.c.post(&s.path(&format!("/{sid}/permissions/1000")), json!({"option_id": "allow-once"})).await;
    assert_eq!((r.status, r.code()), (409, "session_not_open"), "{r:?}");
    // An empty mode or model means none (not an empty id sent to the agent).
    let r = s.c.post(&s.path(""), json!({"agent": "fake", "mode": "", "model": " "})).await;
    assert_eq!((r.status, r.body["mode"].clone(), r.body["model"].clone()), (201, Value::Null, Value::Null), "{r:?}");
    let other = r.body["id"].as_str().unwrap().to_string();
    // A mode and a model are set on the agent's new session.
    let r = s.c.post(&s.path(""), json!({"agent": "fake", "mode": "plan", "model": "m1"})).await;
    assert_eq!((r.status, r.body["mode"].as_str()), (201, Some("plan")), "{r:?}");
    let methods: Vec<Value> = s.received(r.body["id"].as_str().unwrap()).await.iter().map(|e| e["method"].clone()).collect();
    assert_eq!(methods, ["initialize", "session/new", "session/set_mode", "session/set_model"].map(|m| json!(m)));
    // Archiving the task closes every session.
    let r = s.c.post(&format!("/v1/organizations/default/tasks/{}/archive", s.task), json!({})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.session(&other).await["status"], "closed");
}

#[actix_rt::test]
async fn a_missing_sandbox_agent_is_a_clear_error() {
    let s = Setup::new(&[("KILN_SANDBOX_AGENT_BIN", "/nonexistent/sandbox-agent")]).await;
    let r = s.c.post(&s.path(""), json!({"agent": "fake"})).await;
    assert_eq!((r.status, r.code()), (422, "sandbox_agent_missing"), "{r:?}");
    assert!(r.body["message"].as_str().unwrap().contains("npm install"));
}

#[actix_rt::test]
async fn the_cli_opens_prompts_streams_and_shows_sessions() {
    let s = Setup::new(&[]).await;
    let server = &s.server;
    let (code, out, err) = cli(server, &["session", "new", &s.task, "--agent", "fake", "--json"]);
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).expect("json");
    let sid = created["id"].as_str().unwrap().to_string();
    let (code, out, err) = cli(server, &["session", "prompt", &s.task, &sid, "Fix", "it"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Hello world", "the reply streamed: {out} / {err}");
    assert!(err.contains("[tool]") && err.contains("[end_turn]"), "{err}");
    let (code, out, _) = cli(server, &["session", "list", &s.task, "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(list["items"][0]["stop_reason"], "end_turn");
    let (code, out, _) = cli(server, &["session", "show", &s.task, &sid]);
    assert_eq!(code, 0);
    assert!(out.contains("> Fix it") && out.contains("Hello world") && out.contains("[turn ended: end_turn]"), "{out}");
    let (code, out, _) = cli(server, &["session", "show", &s.task, &sid, "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["transcript"]["plan"].as_array().unwrap().len(), 2);
    let (code, _, err) = cli(server, &["session", "cancel", &s.task, &sid]);
    assert_eq!(code, 1);
    assert!(err.contains("no prompt is in progress"), "{err}");
    let (code, out, err) = cli(server, &["session", "close", &s.task, &sid, "--json"]);
    assert_eq!(code, 0, "{err}");
    let closed: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(closed["status"], "closed");
}

#[actix_rt::test]
async fn a_sandbox_agent_crash_is_supervised_and_the_session_restored() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    s.prompt(&sid, "before the crash").await;
    s.wait_turn(&sid, "end_turn").await;
    let record = s.server.data_dir().join(format!("sandboxes/{}/sandbox-agent.json", s.task));
    let old: Value = serde_json::from_slice(&std::fs::read(&record).expect("record")).expect("json");
    let pid = old["pid"].as_i64().expect("pid") as i32;
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // The status poller starts a new server; the session sees its instance gone.
    eventually(WAIT, "sandbox.agent_restarted", || async {
        let events = s.c.events_since("default", 0).await;
        events.iter().any(|e| e["kind"] == "sandbox.agent_restarted").then_some(())
    })
    .await;
    let lost = eventually(WAIT, "the session to be lost", || async {
        let v = s.session(&sid).await;
        (v["status"] == "lost").then_some(v)
    })
    .await;
    assert!(lost["last_error"].as_str().unwrap().contains("gone"), "{lost}");
    // The cause is named as it is: the instance went, the agent did not exit.
    let events = s.events(&sid).await;
    let lost_event = events.iter().find(|e| e["kind"] == "session.status_changed" && e["data"]["to"] == "lost").expect("lost");
    let cause = lost_event["data"]["error"].as_str().unwrap();
    assert!(cause.contains("instance is gone") && !cause.contains("exited"), "{cause}");
    let accepted = s.prompt(&sid, "after the crash").await;
    assert_eq!(accepted["restored"], "new");
    s.wait_turn(&sid, "end_turn").await;
    let new: Value = serde_json::from_slice(&std::fs::read(&record).expect("record")).expect("json");
    assert_ne!(new["pid"], old["pid"], "a new server");
    let sent = s.received(&format!("{sid}-2")).await;
    let preamble = sent[2]["params"]["prompt"][0]["text"].as_str().expect("preamble");
    assert!(preamble.contains("before the crash"), "{preamble}");
}

/// With the real sandbox-agent binary: its `mock` agent is installed on demand
/// and answers `initialize` and `session/new` through the real bridge, but only
/// by echoing, so the session cannot open: a clear 502, both exchanges
/// journaled with each response once, the ACP instance (a real agent process)
/// deleted again, and the session `closed` with the cause.
#[actix_rt::test]
async fn the_real_sandbox_agent_mock_cannot_open_a_session_and_says_why() {
    let bin = crate::common::sandbox_agent_bin().expect("the sandbox-agent binary: run .ci/run");
    let s = Setup::new(&[("KILN_SANDBOX_AGENT_BIN", &bin)]).await;
    let r = s.c.post(&s.path(""), json!({"agent": "mock"})).await;
    assert_eq!((r.status, r.code()), (502, "agent_error"), "{r:?}");
    let message = r.body["message"].as_str().unwrap();
    assert!(message.contains("without a sessionId"), "{r:?}");
    assert!(message.contains("was deleted") && message.contains("is closed"), "it says what became of it: {message}");
    let list = s.c.get(&s.path("")).await;
    let session = &list.body["items"][0];
    assert_eq!(session["status"], "closed", "not `lost`: there is nothing to restore");
    assert!(session["last_error"].as_str().unwrap().contains("without a sessionId"), "{session}");
    let sid = session["id"].as_str().unwrap().to_string();
    // sandbox-agent lists no instance any more (PROTOCOLS §1.4.3), and its
    // agent processes are gone.
    let acp = s.fake().get("/v1/acp").await;
    assert_eq!(acp.status, 200, "{acp:?}");
    assert_eq!(acp.body["servers"], json!([]), "no instance is left: {acp:?}");
    let record = std::fs::read(s.server.data_dir().join(format!("sandboxes/{}/sandbox-agent.json", s.task))).expect("record");
    let pid = serde_json::from_slice::<Value>(&record).expect("json")["pid"].as_i64().expect("pid");
    eventually(WAIT, "the mock agent process to exit", || async { children_of(pid as i32).is_empty().then_some(()) }).await;
    let journal = s.journal(&sid).await;
    let kinds: Vec<(&str, &str)> = journal
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["data"]["envelope"]["method"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds[..4],
        [("session.sent", "initialize"), ("session.response", ""), ("session.sent", "session/new"), ("session.response", "")],
        "{kinds:?}"
    );
    assert_eq!(journal[1]["data"]["envelope"]["result"]["echoed"]["method"], "initialize");
    // The deletion is journaled, then the closing, with its cause.
    let events = s.events(&sid).await;
    let deleted = events.iter().position(|e| e["data"]["envelope"]["method"] == "_kiln/instance_deleted").expect("the note");
    assert_eq!(events[deleted]["data"]["envelope"]["params"]["confirmed"], true, "{}", events[deleted]);
    assert_eq!(events[deleted]["data"]["purpose"], "kiln");
    let closed = &events[deleted + 1];
    assert_eq!((closed["data"]["from"].as_str(), closed["data"]["to"].as_str()), (Some("starting"), Some("closed")), "{closed}");
    assert!(closed["data"]["error"].as_str().unwrap().contains("without a sessionId"), "{closed}");
}

/// The live processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
        let mut rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace();
        let state = rest.next().unwrap_or("");
        if rest.next() == Some(pid.to_string().as_str()) && state != "Z" {
            out.push(child);
        }
    }
    out
}

#[actix_rt::test]
async fn a_turn_that_ends_while_kiln_is_down_is_picked_up_after_the_restart() {
    let mut s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    // Kiln dies once the agent has the prompt; the agent finishes the turn alone.
    s.prompt(&sid, "flood 500").await;
    eventually(WAIT, "the prompt to reach the agent", || async {
        s.received(&sid).await.iter().any(|e| e["method"] == "session/prompt").then_some(())
    })
    .await;
    s.server.kill();
    s.server.restart();
    s.c = s.server.client();
    let session = s.wait_turn(&sid, "end_turn").await;
    assert_eq!(session["status"], "ready");
    let journal = s.journal(&sid).await;
    let chunks = journal
        .iter()
        .filter(|e| e["data"]["envelope"]["params"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .count();
    assert_eq!(chunks, 500, "every update once");
    assert_eq!(journal.last().expect("journal")["kind"], "session.response", "the response ends the turn");
    let t = s.transcript(&sid).await;
    assert_eq!(items_of(&t, "agent")[0]["text"].as_str().unwrap().len(), 500);
    s.c.wait_status("default", &s.task, "idle").await;
}

/// A task that is `running` for a reason other than a turn (here its terminal
/// agent, whose quiet time is an hour; after a restart, output quiet-time while
/// the sessions were `lost`) follows its sessions once one is open: none is
/// prompting, so it is idle. It used to stay `running` until a turn ended.
#[actix_rt::test]
async fn a_running_task_with_an_open_session_and_no_turn_is_idle() {
    let s = Setup::new(&[]).await;
    s.c.wait_status("default", &s.task, "running").await;
    let sid = s.open("fake").await;
    assert_eq!(s.session(&sid).await["status"], "ready");
    s.c.wait_status("default", &s.task, "idle").await;
    // And a turn still drives it: running during it, idle after it.
    s.prompt(&sid, "wait for me").await;
    s.c.wait_status("default", &s.task, "running").await;
    let r = s.c.post(&s.path(&format!("/{sid}/cancel")), json!({})).await;
    assert_eq!(r.status, 202, "{r:?}");
    s.wait_turn(&sid, "cancelled").await;
    s.c.wait_status("default", &s.task, "idle").await;
}

/// A prompt journaled right before Kiln died may never have been posted. The
/// journal is written here by hand, as a crash between the two would leave it.
#[actix_rt::test]
async fn a_prompt_that_never_reached_the_agent_ends_its_turn_after_a_restart() {
    use diesel::prelude::*;
    let mut s = Setup::new(&[("KILN_SESSIONS__UNDELIVERED_GRACE_MS", "1500")]).await;
    let sid = s.open("fake").await;
    let journal = s.journal(&sid).await;
    let last = journal.last().expect("journal").clone();
    s.server.kill();
    let seq = last["data"]["seq"].as_u64().unwrap() + 1;
    let data = json!({"seq": seq, "dir": "out", "server": sid, "replay": false,
        "envelope": {"jsonrpc": "2.0", "id": 3, "method": "session/prompt",
                     "params": {"sessionId": "sess_1", "prompt": [{"type": "text", "text": "lost in the crash"}]}}});
    let db = s.server.data_dir().join("kiln.db");
    let mut conn = diesel::sqlite::SqliteConnection::establish(db.to_str().unwrap()).expect("db");
    diesel::sql_query(format!(
        "INSERT INTO events (organization, repo, task, kind, at, data, session) VALUES ('default', 'widget', '{}', 'session.sent', 0, '{}', '{}')",
        s.task,
        data.to_string().replace('\'', "''"),
        sid
    ))
    .execute(&mut conn)
    .expect("insert");
    drop(conn);
    s.server.restart();
    s.c = s.server.client();
    let t = eventually(WAIT, "the undelivered turn to end", || async {
        let t = s.transcript(&sid).await;
        items_of(&t, "turn_ended").first().cloned().map(|_| t)
    })
    .await;
    let ended = &items_of(&t, "turn_ended")[0];
    assert!(ended["error"].as_str().unwrap().contains("send it again"), "{ended}");
    assert!(s.received(&sid).await.iter().all(|e| e["method"] != "session/prompt"), "never posted");
    // The session works on.
    s.prompt(&sid, "once more").await;
    s.wait_turn(&sid, "end_turn").await;
}

#[actix_rt::test]
async fn requests_kiln_does_not_serve_are_refused_so_the_agent_goes_on() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    s.prompt(&sid, "read file please").await;
    s.wait_turn(&sid, "end_turn").await;
    let t = s.transcript(&sid).await;
    let reply = items_of(&t, "agent")[0]["text"].as_str().unwrap().to_string();
    assert!(reply.starts_with("cannot read:") && reply.contains("fs/read_text_file"), "{reply}");
    let refusal = s.received(&sid).await.into_iter().find(|e| e["error"]["code"] == -32601).expect("refusal");
    assert_eq!(refusal["id"], 1000);
}

#[actix_rt::test]
async fn the_sandbox_agent_server_gets_the_organizations_secrets_and_no_kiln_settings() {
    let s = Setup::new(&[]).await;
    let r = s.c.put("/v1/organizations/default/providers/worktree", json!({"secrets": {"ACME_API_KEY": "s3cret"}})).await;
    assert_eq!(r.status, 200, "{r:?}");
    s.open("fake").await;
    let env = s.fake().get("/_fake/env").await.body;
    assert_eq!(env["ACME_API_KEY"], "s3cret", "agents need their credentials");
    assert_eq!(env["KILN_TASK"], s.task.as_str());
    let leaked: Vec<&String> = env.as_object().unwrap().keys().filter(|k| k.starts_with("KILN_") && *k != "KILN_TASK").collect();
    assert!(leaked.is_empty(), "the server's own settings stay out: {leaked:?}");
    assert!(env["SANDBOX_AGENT_ACP_REQUEST_TIMEOUT_MS"].as_str().is_some(), "the raised ACP timeout is kept");
}

#[actix_rt::test]
async fn the_stream_can_follow_one_session() {
    let s = Setup::new(&[]).await;
    let first = s.open("fake").await;
    let second = s.open("fake").await;
    s.prompt(&first, "one").await;
    s.wait_turn(&first, "end_turn").await;
    s.prompt(&second, "two").await;
    s.wait_turn(&second, "end_turn").await;
    let expected: Vec<i64> = s
        .c
        .get(&format!("/v1/organizations/default/events?session={second}&limit=1000"))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    let mut ws = s.c.ws(&format!("/v1/organizations/default/stream?since=0&session={second}")).await;
    let got = ws.events(expected.len(), WAIT).await;
    let ids: Vec<i64> = got.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, expected, "the replay holds that session's events only");
    // Live: a turn of the other session is not sent; this one's is.
    s.prompt(&first, "three").await;
    s.wait_turn(&first, "end_turn").await;
    s.prompt(&second, "four").await;
    let live = ws.events(1, WAIT).await;
    assert_eq!(live[0]["session"], second.as_str(), "{live:?}");
    let r = s.c.get(&format!("/v1/organizations/default/stream?task={}", s.task)).await;
    assert_eq!(r.status, 400, "not a WebSocket: {r:?}");
}

#[actix_rt::test]
async fn kiln_session_chat_prompts_per_line_and_asks_for_permissions() {
    use std::io::Write;
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["--url", &s.server.url, "session", "chat", &s.task, &sid])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &s.server.dir)
        .env("XDG_CONFIG_HOME", s.server.dir.join("config"))
        .env("KILN_DATA_DIR", s.server.data_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln session chat");
    // The answer to the permission question follows its prompt line; the chat
    // reads it when the request arrives.
    child.stdin.take().expect("stdin").write_all(b"hello there\n\nthis needs permission\n1\n").expect("write");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("join").expect("output");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Hello world") && stdout.contains("allowed"), "{stdout} / {stderr}");
    assert!(stderr.contains("1. Allow once (allow-once)") && stderr.contains("[allow-once]"), "{stderr}");
    let t = s.transcript(&sid).await;
    assert_eq!(items_of(&t, "permission")[0]["outcome"]["optionId"], "allow-once");
    assert_eq!(items_of(&t, "turn_ended").len(), 2);
}

#[actix_rt::test]
async fn long_sessions_load_from_a_checkpoint_that_matches_the_whole_journal() {
    use diesel::prelude::*;
    let mut s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    s.prompt(&sid, "flood 2500").await;
    s.wait_turn(&sid, "end_turn").await;
    let db = s.server.data_dir().join("kiln.db");
    let checkpoint_event = |db: &std::path::Path| -> i64 {
        let mut conn = diesel::sqlite::SqliteConnection::establish(db.to_str().unwrap()).expect("db");
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            checkpoint_event_id: i64,
        }
        let rows: Vec<Row> = diesel::sql_query(format!("SELECT checkpoint_event_id FROM task_sessions WHERE id = '{sid}'"))
            .load(&mut conn)
            .expect("query");
        rows[0].checkpoint_event_id
    };
    eventually(WAIT, "a checkpoint", || async { (checkpoint_event(&db) > 0).then_some(()) }).await;
    let with_checkpoint = s.transcript(&sid).await;
    assert_eq!(items_of(&with_checkpoint, "agent")[0]["text"].as_str().unwrap().len(), 2500);
    // Without the checkpoint the whole journal is folded: the same view.
    s.server.kill();
    let mut conn = diesel::sqlite::SqliteConnection::establish(db.to_str().unwrap()).expect("db");
    diesel::sql_query("UPDATE task_sessions SET checkpoint = NULL, checkpoint_event_id = 0").execute(&mut conn).expect("clear");
    drop(conn);
    s.server.restart();
    s.c = s.server.client();
    assert_eq!(s.transcript(&sid).await, with_checkpoint);
    // And the session goes on (saving a new checkpoint as it does).
    s.prompt(&sid, "more").await;
    s.wait_turn(&sid, "end_turn").await;
    assert_eq!(items_of(&s.transcript(&sid).await, "turn_ended").len(), 2);
}

/// Each turn's status changes are journaled in the order they happened, with
/// only the new state's fields, over many turns of every kind: the default
/// turn, a response that comes at once (before the POST even answers), a
/// failed turn and a cancelled one.
#[actix_rt::test]
async fn every_turns_status_changes_are_journaled_in_order() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    let mut turns = Vec::new();
    for i in 0..11 {
        let (text, end) = match i % 4 {
            0 => ("fix the bug", Ok("end_turn")),
            1 => ("answer at once", Ok("end_turn")),
            2 => ("please fail", Err("scripted failure")),
            _ => ("wait for me", Ok("cancelled")),
        };
        let accepted = s.prompt(&sid, text).await;
        if i % 4 == 3 {
            eventually(WAIT, "the turn to run", || async { (s.session(&sid).await["status"] == "prompting").then_some(()) }).await;
            let r = s.c.post(&s.path(&format!("/{sid}/cancel")), json!({})).await;
            assert_eq!(r.status, 202, "{r:?}");
        }
        wait_ready(&s, &sid).await;
        turns.push((accepted["request_id"].clone(), end));
    }
    let events = s.events(&sid).await;
    for (id, end) in &turns {
        assert_turn_in_order(&events, id, *end);
    }
    assert_status_chain(&events);
    let opened = events.iter().find(|e| e["kind"] == "session.status_changed").expect("a status event");
    assert_eq!((opened["data"]["from"].as_str(), opened["data"]["to"].as_str()), (Some("starting"), Some("ready")));
    assert!(opened["data"].get("stop_reason").is_none() && opened["data"].get("error").is_none(), "{opened}");
}

/// The race behind out-of-order status events, made certain: the TaskActor
/// (which writes the session's row) is held up in the repository's on-idle
/// push, to a remote that never answers, while a whole turn runs and its
/// response is journaled. The turn's status changes are the SessionActor's
/// own, so they are in the journal already, around the response.
#[actix_rt::test]
async fn a_turns_status_is_journaled_in_order_while_the_task_actor_is_busy() {
    // The repository's own origin (a local folder) gets a pre-receive hook that
    // holds every push until released (then refuses it). Kiln's git on a mirror
    // reaches the registered folder only, so the hook lives there.
    let s = Setup::new(&[]).await;
    let source = s.server.data_dir().parent().unwrap().join("widget");
    let (accepted, release) = (source.join(".git/accepted"), source.join(".git/release"));
    let hook = source.join(".git/hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntouch '{}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho held push refused >&2\nexit 1\n",
            accepted.display(),
            release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Opening the session makes the task idle (no turn in flight) before the
    // on-idle push is set, so the first push is the one after the first turn.
    let sid = s.open("fake").await;
    s.c.wait_status("default", &s.task, "idle").await;
    let r = s.c.put("/v1/organizations/default/repos/widget/settings", json!({"automation": {"on_idle": {"push": true}}})).await;
    assert_eq!(r.status, 200, "{r:?}");

    s.prompt(&sid, "first").await;
    wait_ready(&s, &sid).await;
    // The turn's end made the task idle, and its on-idle push now hangs in the TaskActor.
    eventually(WAIT, "the on-idle push to reach the remote", || async { accepted.exists().then_some(()) }).await;
    let second = s.prompt(&sid, "answer at once").await;
    let id = second["request_id"].clone();
    let events = eventually(WAIT, "the second turn's response in the journal, and a status after it", || async {
        let events = s.events(&sid).await;
        let response = events.iter().position(|e| e["kind"] == "session.response" && e["data"]["envelope"]["id"] == id)?;
        events[response..].iter().any(|e| e["kind"] == "session.status_changed").then_some(events)
    })
    .await;
    assert_eq!(s.session(&sid).await["status"], "ready", "the row is still behind: the TaskActor is busy");
    assert_turn_in_order(&events, &id, Ok("end_turn"));

    // Let the push fail; the TaskActor catches up with the row.
    std::fs::write(&release, "").unwrap();
    eventually(WAIT, "the push to fail", || async {
        let events = s.c.events_since("default", 0).await;
        events.iter().any(|e| e["kind"] == "task.push_failed").then_some(())
    })
    .await;
    let session = wait_ready(&s, &sid).await;
    assert_eq!(session["stop_reason"], "end_turn");
    let events = s.events(&sid).await;
    assert_turn_in_order(&events, &id, Ok("end_turn"));
    assert_status_chain(&events);
}

/// A failed open deletes the ACP instance it made and leaves the session
/// `closed` with the cause: nothing that looks restorable, no agent process.
#[actix_rt::test]
async fn a_failed_open_deletes_its_instance_and_closes_the_session() {
    let s = Setup::new(&[]).await;
    let r = s.c.post(&s.path(""), json!({"agent": "fake", "mode": "no-such-mode"})).await;
    assert_eq!((r.status, r.code()), (502, "agent_error"), "{r:?}");
    let message = r.body["message"].as_str().unwrap();
    assert!(message.contains("unknown mode") && message.contains("was deleted") && message.contains("is closed"), "{message}");
    let list = s.c.get(&s.path("")).await;
    let session = list.body["items"][0].clone();
    let sid = session["id"].as_str().unwrap().to_string();
    assert_eq!(session["status"], "closed", "{session}");
    assert!(session["last_error"].as_str().unwrap().contains("unknown mode"), "{session}");
    let acp = s.fake().get("/v1/acp").await;
    assert!(acp.body["servers"].as_array().unwrap().iter().all(|i| i["serverId"] != sid.as_str()), "no instance left: {acp:?}");
    // The journal says what happened, in order.
    let events = s.events(&sid).await;
    let tail: Vec<(String, String)> = events
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(|e| {
            let what = e["data"]["envelope"]["method"].as_str().or(e["data"]["to"].as_str()).unwrap_or("");
            (e["kind"].as_str().unwrap().to_string(), what.to_string())
        })
        .collect();
    let expected = [
        ("session.sent", "session/set_mode"),
        ("session.response", ""),
        ("session.notification", "_kiln/instance_deleted"),
        ("session.status_changed", "closed"),
    ];
    assert_eq!(tail, expected.map(|(k, w)| (k.to_string(), w.to_string())), "{events:?}");
    assert_eq!(events[events.len() - 2]["data"]["envelope"]["params"]["confirmed"], true);
    assert!(events.last().unwrap()["data"]["error"].as_str().unwrap().contains("unknown mode"));
    assert_status_chain(&events);
    // It is closed for good: a prompt is refused, and closing it again is the same answer.
    let r = s.c.post(&s.path(&format!("/{sid}/prompt")), json!({"text": "hello?"})).await;
    assert_eq!((r.status, r.code()), (409, "session_closed"), "{r:?}");
    let r = s.c.delete(&s.path(&format!("/{sid}"))).await;
    assert_eq!((r.status, &r.body), (200, &session), "{r:?}");
}

/// DELETE is idempotent: two closes at once, and one more later, all answer
/// 200 with the same closed session, and the close is journaled once.
#[actix_rt::test]
async fn closing_a_closed_session_answers_the_closed_session() {
    let s = Setup::new(&[]).await;
    let sid = s.open("fake").await;
    let path = s.path(&format!("/{sid}"));
    // The first close waits out the DELETE that 0.4.2 (and the fake) never
    // answers; the second arrives meanwhile and waits behind it.
    let (a, b) = tokio::join!(s.c.delete(&path), s.c.delete(&path));
    assert_eq!((a.status, a.body["status"].as_str()), (200, Some("closed")), "{a:?}");
    assert_eq!((b.status, &b.body), (200, &a.body), "{b:?}");
    let again = s.c.delete(&path).await;
    assert_eq!((again.status, &again.body), (200, &a.body), "{again:?}");
    let events = s.events(&sid).await;
    let closes: Vec<&Value> =
        events.iter().filter(|e| e["kind"] == "session.status_changed" && e["data"]["to"] == "closed").collect();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0]["data"]["from"], "ready");
    assert!(closes[0]["data"].get("error").is_none(), "closed on request: no cause: {}", closes[0]);
    assert_status_chain(&events);
}
