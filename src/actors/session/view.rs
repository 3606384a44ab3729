//! The pure part of a session: its journal entries folded, in order, into a
//! [`SessionView`]. The same fold serves the live SessionActor (what is in
//! flight, which permissions wait, what changed with each entry) and the
//! `/transcript` endpoint (messages assembled from chunks, thoughts, tool calls
//! with their latest state, the current plan). No I/O here; unit-tested below.
//!
//! ACP facts it relies on (PROTOCOLS.md §1.7): a turn starts with the client's
//! `session/prompt` and ends with the response to it (`stopReason`, or a JSON-RPC
//! error); `session/update` notifications carry the turn's content; an
//! agent→client request `session/request_permission` waits for the client's
//! response with the same id; `_adapter/agent_exited` means the agent is gone.
//! Unknown update kinds and fields are ignored, as the schema keeps growing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Which way an envelope went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Kiln posted it to the agent.
    Out,
    /// It came from the agent (on SSE, or as a POST's response body).
    In,
}

/// One journal entry: an envelope and where it sits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The per-session journal cursor: 1, 2, 3… across restores.
    pub seq: u64,
    pub dir: Dir,
    /// The ACP server id it went through.
    pub server: String,
    /// The SSE event id, for envelopes read from the stream.
    #[serde(default)]
    pub remote_seq: Option<u64>,
    /// The instance's `createdAtMs` when the envelope was read from SSE.
    #[serde(default)]
    pub epoch: Option<i64>,
    /// Arrived while `session/load` replayed the history: already in the transcript.
    #[serde(default)]
    pub replay: bool,
    /// Why Kiln sent it, when that matters later: `restore` (a `session/new`
    /// that replaced a lost session) or `preamble` (a prompt whose first block
    /// is the replay preamble).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    pub envelope: Value,
}

impl Entry {
    /// Whether folding this entry may change the session's status or its
    /// `awaiting_input` (everything but the agent's `session/update`s, which
    /// only carry a turn's content). The journal is written in runs that end
    /// at such an entry, so a status event can follow its cause at once.
    pub fn may_change_status(&self) -> bool {
        !(self.dir == Dir::In && self.envelope.get("method").and_then(Value::as_str) == Some("session/update"))
    }

    /// The event kind this entry is journaled under.
    pub fn kind(&self) -> &'static str {
        if self.dir == Dir::Out {
            return "session.sent";
        }
        let env = &self.envelope;
        match (env.get("method").and_then(Value::as_str), env.get("id").is_some_and(|i| !i.is_null())) {
            (Some("session/update"), _) => "session.update",
            (Some(_), true) => "session.request",
            (Some(_), false) => "session.notification",
            (None, _) => "session.response",
        }
    }
}

/// A JSON-RPC id as a map key: `1` and `"1"` stay different.
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

/// One thing in the transcript, in the order it first appeared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    /// What the user asked (a prompt Kiln sent, or a `user_message_chunk`).
    User { text: String, seq: u64 },
    /// The agent's reply, assembled from `agent_message_chunk`s.
    Agent {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        seq: u64,
    },
    /// The agent's reasoning, assembled from `agent_thought_chunk`s.
    Thought { text: String, seq: u64 },
    /// A tool call with its latest status and content.
    ToolCall {
        tool_call_id: String,
        title: Option<String>,
        kind: Option<String>,
        status: Option<String>,
        content: Value,
        locations: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        raw_input: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        raw_output: Option<Value>,
        seq: u64,
    },
    /// A `session/request_permission` and, once answered, the answer.
    Permission {
        request: String,
        tool_call_id: Option<String>,
        options: Value,
        outcome: Option<Value>,
        seq: u64,
    },
    /// A turn ended: its `stopReason`, or the error that ended it.
    TurnEnded {
        #[serde(skip_serializing_if = "Option::is_none")]
        stop_reason: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        seq: u64,
    },
}

/// A permission request waiting for its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingPermission {
    /// The JSON-RPC id as the agent sent it (number or string).
    pub id: Value,
    /// The id in path form (`5`, or `"abc"` for a string id).
    pub request: String,
    pub tool_call_id: Option<String>,
    pub options: Value,
    pub seq: u64,
}

/// What one entry changed, for the actor to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A prompt was sent: the session is working.
    TurnStarted,
    /// The prompt's response arrived.
    TurnEnded { stop_reason: Option<String>, error: Option<String> },
    /// Whether any permission request waits for an answer.
    AwaitingInput(bool),
    /// The agent process exited (`_adapter/agent_exited`).
    AgentExited { detail: String },
}

/// A session folded from its journal.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub items: Vec<Item>,
    /// The current plan's entries (a `plan` update replaces the whole list).
    pub plan: Option<Value>,
    pub pending_permissions: Vec<PendingPermission>,
    /// Other requests from the agent (`fs/*`, `terminal/*`, …) not answered yet:
    /// Kiln advertises none of those capabilities and answers them with an error.
    #[serde(skip)]
    pub unsupported_requests: Vec<(Value, String)>,
    /// The id of the `session/prompt` in flight, if any.
    pub prompt_in_flight: Option<Value>,
    /// The journal cursor of that prompt.
    #[serde(skip)]
    pub prompt_seq: Option<u64>,
    /// The journal cursor of the last envelope from the agent.
    #[serde(skip)]
    pub last_in_seq: u64,
    pub stop_reason: Option<String>,
    pub current_mode: Option<String>,
    pub usage: Option<Value>,
    /// The last journal cursor.
    pub seq: u64,
    /// The next id for a request Kiln sends (one more than the largest used).
    #[serde(skip)]
    pub next_request_id: u64,
    /// A restore made a new session and no prompt has carried the preamble yet.
    #[serde(skip)]
    pub preamble_due: bool,
    /// Ids of responses already journaled (to rebuild the dedup set).
    #[serde(skip)]
    pub response_ids: Vec<Value>,
    /// Requests Kiln sent and not yet answered, by id key → method.
    #[serde(skip)]
    outstanding: BTreeMap<String, String>,
    /// The largest SSE id journaled per (server, epoch).
    #[serde(skip)]
    cursors: BTreeMap<(String, Option<i64>), u64>,
    #[serde(skip)]
    tools: BTreeMap<String, usize>,
}

/// A view saved whole (every field, the internal ones too), so a long journal
/// need not be folded again from its start: the view as of one journal event,
/// plus the entries after it, is the view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    items: Vec<Item>,
    plan: Option<Value>,
    pending_permissions: Vec<PendingPermission>,
    unsupported_requests: Vec<(Value, String)>,
    prompt_in_flight: Option<Value>,
    prompt_seq: Option<u64>,
    last_in_seq: u64,
    stop_reason: Option<String>,
    current_mode: Option<String>,
    usage: Option<Value>,
    seq: u64,
    next_request_id: u64,
    preamble_due: bool,
    response_ids: Vec<Value>,
    outstanding: BTreeMap<String, String>,
    cursors: Vec<(String, Option<i64>, u64)>,
    tools: BTreeMap<String, usize>,
}

fn text_of(content: &Value) -> String {
    match content.get("type").and_then(Value::as_str) {
        Some("text") => content.get("text").and_then(Value::as_str).unwrap_or_default().to_string(),
        Some("resource_link") => content.get("uri").and_then(Value::as_str).map(|u| format!("[{u}]")).unwrap_or_default(),
        Some(other) => format!("[{other}]"),
        None => String::new(),
    }
}

fn prompt_text(blocks: &Value, skip_first: bool) -> String {
    let blocks = blocks.as_array().map(Vec::as_slice).unwrap_or_default();
    let blocks = if skip_first && !blocks.is_empty() { &blocks[1..] } else { blocks };
    blocks.iter().map(text_of).filter(|t| !t.is_empty()).collect::<Vec<_>>().join("\n")
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

impl SessionView {
    /// Folds a whole journal.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> SessionView {
        let mut view = SessionView { next_request_id: 1, ..Default::default() };
        for e in entries {
            view.apply(e);
        }
        view
    }

    /// The whole view as JSON text, for a checkpoint.
    pub fn checkpoint(&self) -> String {
        let saved = Saved {
            items: self.items.clone(),
            plan: self.plan.clone(),
            pending_permissions: self.pending_permissions.clone(),
            unsupported_requests: self.unsupported_requests.clone(),
            prompt_in_flight: self.prompt_in_flight.clone(),
            prompt_seq: self.prompt_seq,
            last_in_seq: self.last_in_seq,
            stop_reason: self.stop_reason.clone(),
            current_mode: self.current_mode.clone(),
            usage: self.usage.clone(),
            seq: self.seq,
            next_request_id: self.next_request_id,
            preamble_due: self.preamble_due,
            response_ids: self.response_ids.clone(),
            outstanding: self.outstanding.clone(),
            cursors: self.cursors.iter().map(|((s, e), c)| (s.clone(), *e, *c)).collect(),
            tools: self.tools.clone(),
        };
        serde_json::to_string(&saved).unwrap_or_default()
    }

    /// A view from a checkpoint; `None` if the text is not one.
    pub fn from_checkpoint(text: &str) -> Option<SessionView> {
        let s: Saved = serde_json::from_str(text).ok()?;
        Some(SessionView {
            items: s.items,
            plan: s.plan,
            pending_permissions: s.pending_permissions,
            unsupported_requests: s.unsupported_requests,
            prompt_in_flight: s.prompt_in_flight,
            prompt_seq: s.prompt_seq,
            last_in_seq: s.last_in_seq,
            stop_reason: s.stop_reason,
            current_mode: s.current_mode,
            usage: s.usage,
            seq: s.seq,
            next_request_id: s.next_request_id,
            preamble_due: s.preamble_due,
            response_ids: s.response_ids,
            outstanding: s.outstanding,
            cursors: s.cursors.into_iter().map(|(s, e, c)| ((s, e), c)).collect(),
            tools: s.tools,
        })
    }

    /// The largest SSE id journaled from `server` while its instance had `epoch`.
    pub fn cursor(&self, server: &str, epoch: Option<i64>) -> Option<u64> {
        self.cursors.get(&(server.to_string(), epoch)).copied()
    }

    /// Whether a turn is in flight.
    pub fn prompting(&self) -> bool {
        self.prompt_in_flight.is_some()
    }

    /// The prompt in flight, if nothing from the agent has been journaled since
    /// it was sent (no sign that the agent got it).
    pub fn unacknowledged_prompt(&self) -> Option<(Value, u64)> {
        let seq = self.prompt_seq?;
        let id = self.prompt_in_flight.clone()?;
        (self.last_in_seq < seq).then_some((id, seq))
    }

    /// Applies one entry; answers what it changed.
    pub fn apply(&mut self, e: &Entry) -> Vec<Change> {
        self.seq = self.seq.max(e.seq);
        if let Some(r) = e.remote_seq {
            let c = self.cursors.entry((e.server.clone(), e.epoch)).or_insert(0);
            *c = (*c).max(r);
        }
        match e.dir {
            Dir::Out => self.apply_out(e),
            Dir::In => self.apply_in(e),
        }
    }

    fn apply_out(&mut self, e: &Entry) -> Vec<Change> {
        let env = &e.envelope;
        let mut changes = Vec::new();
        let method = env.get("method").and_then(Value::as_str);
        let id = env.get("id").filter(|i| !i.is_null());
        if let (Some(m), Some(id)) = (method, id) {
            if let Some(n) = id.as_u64() {
                self.next_request_id = self.next_request_id.max(n + 1);
            }
            self.outstanding.insert(id_key(id), m.to_string());
        }
        match (method, id) {
            (Some("session/prompt"), Some(id)) => {
                let preamble = e.purpose.as_deref() == Some("preamble");
                self.preamble_due &= !preamble;
                let text = prompt_text(&env["params"]["prompt"], preamble);
                self.items.push(Item::User { text, seq: e.seq });
                self.prompt_in_flight = Some(id.clone());
                self.prompt_seq = Some(e.seq);
                changes.push(Change::TurnStarted);
            }
            (Some("session/new"), Some(_)) if e.purpose.as_deref() == Some("restore") => self.preamble_due = true,
            (None, Some(id)) => {
                // Kiln's answer to an agent request (a permission).
                let key = id_key(id);
                self.unsupported_requests.retain(|(i, _)| id_key(i) != key);
                let before = self.pending_permissions.len();
                self.pending_permissions.retain(|p| id_key(&p.id) != key);
                if let Some(Item::Permission { outcome, .. }) = self
                    .items
                    .iter_mut()
                    .rev()
                    .find(|i| matches!(i, Item::Permission { request, .. } if *request == key))
                {
                    *outcome = env.get("result").and_then(|r| r.get("outcome")).cloned().or_else(|| env.get("error").cloned());
                }
                if before > 0 && self.pending_permissions.is_empty() {
                    changes.push(Change::AwaitingInput(false));
                }
            }
            _ => {}
        }
        changes
    }

    fn apply_in(&mut self, e: &Entry) -> Vec<Change> {
        self.last_in_seq = self.last_in_seq.max(e.seq);
        let env = &e.envelope;
        let mut changes = Vec::new();
        let id = env.get("id").filter(|i| !i.is_null());
        match env.get("method").and_then(Value::as_str) {
            Some("session/update") if !e.replay => self.apply_update(&env["params"]["update"], e.seq),
            Some("session/update") => {}
            Some("session/request_permission") if id.is_some() => {
                let id = id.cloned().unwrap_or(Value::Null);
                let request = id_key(&id);
                let params = &env["params"];
                let tool_call_id = params.get("toolCall").and_then(|t| opt_str(t, "toolCallId"));
                let options = params.get("options").cloned().unwrap_or(json!([]));
                let was_empty = self.pending_permissions.is_empty();
                self.pending_permissions.retain(|p| p.request != request);
                self.pending_permissions.push(PendingPermission {
                    id,
                    request: request.clone(),
                    tool_call_id: tool_call_id.clone(),
                    options: options.clone(),
                    seq: e.seq,
                });
                self.items.push(Item::Permission { request, tool_call_id, options, outcome: None, seq: e.seq });
                if was_empty {
                    changes.push(Change::AwaitingInput(true));
                }
            }
            Some(m @ ("_adapter/agent_exited" | "_kiln/session_lost")) => {
                // Kiln's own note names its cause; the adapter's says the process exited.
                let reason = env["params"]["reason"].as_str().filter(|_| m == "_kiln/session_lost");
                let detail = match reason {
                    Some(r) => r.to_string(),
                    None => format!("the agent process exited ({})", env["params"]),
                };
                if self.prompt_in_flight.take().is_some() {
                    self.items.push(Item::TurnEnded { stop_reason: None, error: Some(detail.clone()), seq: e.seq });
                    changes.push(Change::TurnEnded { stop_reason: None, error: Some(detail.clone()) });
                }
                if !self.pending_permissions.is_empty() {
                    self.pending_permissions.clear();
                    changes.push(Change::AwaitingInput(false));
                }
                self.outstanding.clear();
                self.unsupported_requests.clear();
                changes.push(Change::AgentExited { detail });
            }
            Some(method) if id.is_some() => {
                let id = id.cloned().unwrap_or(Value::Null);
                self.unsupported_requests.push((id, method.to_string()));
            }
            Some(_) => {}
            None => {
                let Some(id) = id else { return changes };
                self.response_ids.push(id.clone());
                let method = self.outstanding.remove(&id_key(id));
                let is_prompt = self.prompt_in_flight.as_ref().is_some_and(|p| p == id);
                if is_prompt || method.as_deref() == Some("session/prompt") {
                    if is_prompt {
                        self.prompt_in_flight = None;
                    }
                    let stop_reason = env.get("result").and_then(|r| opt_str(r, "stopReason"));
                    let error = env.get("error").map(|err| {
                        err.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| err.to_string())
                    });
                    if stop_reason.is_some() {
                        self.stop_reason = stop_reason.clone();
                    }
                    self.items.push(Item::TurnEnded { stop_reason: stop_reason.clone(), error: error.clone(), seq: e.seq });
                    changes.push(Change::TurnEnded { stop_reason, error });
                }
            }
        }
        changes
    }

    fn apply_update(&mut self, update: &Value, seq: u64) {
        let kind = update.get("sessionUpdate").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "agent_message_chunk" | "agent_thought_chunk" | "user_message_chunk" => {
                let text = update.get("content").map(text_of).unwrap_or_default();
                let message_id = opt_str(update, "messageId");
                let last = self.items.last_mut();
                match (kind, last) {
                    ("agent_message_chunk", Some(Item::Agent { text: t, message_id: m, .. }))
                        if message_id.is_none() || *m == message_id =>
                    {
                        t.push_str(&text)
                    }
                    ("agent_thought_chunk", Some(Item::Thought { text: t, .. })) => t.push_str(&text),
                    ("agent_message_chunk", _) => self.items.push(Item::Agent { text, message_id, seq }),
                    ("agent_thought_chunk", _) => self.items.push(Item::Thought { text, seq }),
                    _ => self.items.push(Item::User { text, seq }),
                }
            }
            "tool_call" => {
                let Some(id) = opt_str(update, "toolCallId") else { return };
                let item = Item::ToolCall {
                    tool_call_id: id.clone(),
                    title: opt_str(update, "title"),
                    kind: opt_str(update, "kind"),
                    status: opt_str(update, "status"),
                    content: update.get("content").cloned().unwrap_or(json!([])),
                    locations: update.get("locations").cloned().unwrap_or(json!([])),
                    raw_input: update.get("rawInput").cloned(),
                    raw_output: update.get("rawOutput").cloned(),
                    seq,
                };
                match self.tools.get(&id) {
                    Some(&i) => self.items[i] = item,
                    None => {
                        self.tools.insert(id, self.items.len());
                        self.items.push(item);
                    }
                }
            }
            "tool_call_update" => {
                let Some(id) = opt_str(update, "toolCallId") else { return };
                let i = match self.tools.get(&id) {
                    Some(&i) => i,
                    None => {
                        // An update for a call we never saw: start it from the update.
                        self.tools.insert(id.clone(), self.items.len());
                        self.items.push(Item::ToolCall {
                            tool_call_id: id,
                            title: None,
                            kind: None,
                            status: None,
                            content: json!([]),
                            locations: json!([]),
                            raw_input: None,
                            raw_output: None,
                            seq,
                        });
                        self.items.len() - 1
                    }
                };
                if let Item::ToolCall { title, kind, status, content, locations, raw_input, raw_output, .. } = &mut self.items[i] {
                    let set = |slot: &mut Option<String>, key: &str| {
                        if let Some(v) = opt_str(update, key) {
                            *slot = Some(v);
                        }
                    };
                    set(title, "title");
                    set(kind, "kind");
                    set(status, "status");
                    if let Some(c) = update.get("content").filter(|c| !c.is_null()) {
                        *content = c.clone();
                    }
                    if let Some(l) = update.get("locations").filter(|l| !l.is_null()) {
                        *locations = l.clone();
                    }
                    if let Some(r) = update.get("rawInput") {
                        *raw_input = Some(r.clone());
                    }
                    if let Some(r) = update.get("rawOutput") {
                        *raw_output = Some(r.clone());
                    }
                }
            }
            "plan" => self.plan = update.get("entries").cloned(),
            "current_mode_update" => self.current_mode = opt_str(update, "currentModeId"),
            "usage_update" => self.usage = Some(update.clone()),
            _ => {}
        }
    }

    /// The replay preamble for a session restored with `session/new`: the most
    /// recent transcript items, at most `max_events` of them and at most
    /// `max_chars` characters (older lines are dropped first; a single line
    /// longer than the budget is cut from its start). `None` when there is
    /// nothing to replay.
    pub fn preamble(&self, max_events: usize, max_chars: usize) -> Option<String> {
        const HEAD: &str = "[Kiln] The agent was restarted and this is a new session. \
                            Here is the earlier conversation, most recent last:\n";
        let lines: Vec<String> = self
            .items
            .iter()
            .filter_map(|item| match item {
                Item::User { text, .. } if !text.is_empty() => Some(format!("User: {text}")),
                Item::Agent { text, .. } if !text.is_empty() => Some(format!("Agent: {text}")),
                Item::ToolCall { title, status, .. } => Some(format!(
                    "Tool: {} ({})",
                    title.as_deref().unwrap_or("tool call"),
                    status.as_deref().unwrap_or("unknown")
                )),
                _ => None,
            })
            .collect();
        let budget = max_chars.saturating_sub(HEAD.chars().count());
        let mut picked: Vec<String> = Vec::new();
        let mut used = 0;
        for line in lines.iter().rev().take(max_events) {
            let n = line.chars().count() + 1;
            if used + n > budget {
                let room = budget.saturating_sub(used + 1);
                if room > 0 && picked.is_empty() {
                    let skip = line.chars().count() - room;
                    picked.push(line.chars().skip(skip).collect());
                }
                break;
            }
            used += n;
            picked.push(line.clone());
        }
        if picked.is_empty() {
            return None;
        }
        picked.reverse();
        Some(format!("{HEAD}{}", picked.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct J {
        entries: Vec<Entry>,
        remote: u64,
    }

    impl J {
        fn new() -> J {
            J { entries: Vec::new(), remote: 0 }
        }
        fn out(&mut self, envelope: Value) -> &mut Entry {
            self.push(Dir::Out, None, envelope)
        }
        fn sse(&mut self, envelope: Value) -> &mut Entry {
            self.remote += 1;
            let r = self.remote;
            self.push(Dir::In, Some(r), envelope)
        }
        fn push(&mut self, dir: Dir, remote_seq: Option<u64>, envelope: Value) -> &mut Entry {
            let seq = self.entries.len() as u64 + 1;
            self.entries.push(Entry {
                seq,
                dir,
                server: "s1".into(),
                remote_seq,
                epoch: Some(1),
                replay: false,
                purpose: None,
                envelope,
            });
            self.entries.last_mut().expect("pushed")
        }
        fn update(&mut self, update: Value) {
            self.sse(json!({"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"sess_1","update": update}}));
        }
        fn view(&self) -> SessionView {
            SessionView::from_entries(&self.entries)
        }
    }

    fn prompt(id: u64, text: &str) -> Value {
        json!({"jsonrpc":"2.0","id":id,"method":"session/prompt","params":{"sessionId":"sess_1","prompt":[{"type":"text","text":text}]}})
    }

    #[test]
    fn a_turn_folds_into_a_transcript() {
        let mut j = J::new();
        j.out(prompt(3, "Fix the test"));
        j.update(json!({"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"Thinking"}}));
        j.update(json!({"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":" hard"}}));
        j.update(json!({"sessionUpdate":"plan","entries":[{"content":"a","priority":"high","status":"pending"}]}));
        j.update(json!({"sessionUpdate":"tool_call","toolCallId":"c1","title":"Edit","kind":"edit","status":"pending"}));
        j.update(json!({"sessionUpdate":"tool_call_update","toolCallId":"c1","status":"in_progress"}));
        j.update(json!({"sessionUpdate":"agent_message_chunk","messageId":"m1","content":{"type":"text","text":"Hello"}}));
        j.update(json!({"sessionUpdate":"tool_call_update","toolCallId":"c1","status":"completed","content":[{"type":"content","content":{"type":"text","text":"ok"}}]}));
        j.update(json!({"sessionUpdate":"agent_message_chunk","messageId":"m2","content":{"type":"text","text":"Bye"}}));
        j.update(json!({"sessionUpdate":"agent_message_chunk","messageId":"m2","content":{"type":"text","text":" now"}}));
        j.update(json!({"sessionUpdate":"plan","entries":[{"content":"b","priority":"low","status":"completed"}]}));
        j.update(json!({"sessionUpdate":"something_new","x":1}));
        j.sse(json!({"jsonrpc":"2.0","id":3,"result":{"stopReason":"end_turn"}}));
        let v = j.view();
        let kinds: Vec<&str> = v
            .items
            .iter()
            .map(|i| match i {
                Item::User { .. } => "user",
                Item::Agent { .. } => "agent",
                Item::Thought { .. } => "thought",
                Item::ToolCall { .. } => "tool",
                Item::Permission { .. } => "permission",
                Item::TurnEnded { .. } => "end",
            })
            .collect();
        assert_eq!(kinds, ["user", "thought", "tool", "agent", "agent", "end"]);
        assert!(matches!(&v.items[0], Item::User { text, .. } if text == "Fix the test"));
        assert!(matches!(&v.items[1], Item::Thought { text, .. } if text == "Thinking hard"));
        match &v.items[2] {
            Item::ToolCall { status, title, content, .. } => {
                assert_eq!(status.as_deref(), Some("completed"));
                assert_eq!(title.as_deref(), Some("Edit"), "an update keeps the fields it does not name");
                assert_eq!(content[0]["content"]["text"], "ok");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&v.items[3], Item::Agent { text, .. } if text == "Hello"));
        assert!(matches!(&v.items[4], Item::Agent { text, .. } if text == "Bye now"));
        assert_eq!(v.plan, Some(json!([{"content":"b","priority":"low","status":"completed"}])));
        assert_eq!(v.stop_reason.as_deref(), Some("end_turn"));
        assert!(!v.prompting());
        assert_eq!(v.next_request_id, 4);
        assert_eq!(v.cursor("s1", Some(1)), Some(12));
        assert_eq!(v.cursor("s1", Some(2)), None);
    }

    #[test]
    fn changes_say_when_a_turn_starts_ends_and_waits() {
        let mut v = SessionView::from_entries(&[]);
        let mut j = J::new();
        j.out(prompt(1, "go"));
        j.sse(json!({"jsonrpc":"2.0","id":1000,"method":"session/request_permission","params":{"sessionId":"sess_1","toolCall":{"toolCallId":"c1"},"options":[{"optionId":"allow-once","kind":"allow_once"}]}}));
        j.sse(json!({"jsonrpc":"2.0","id":"p2","method":"session/request_permission","params":{"sessionId":"sess_1","toolCall":{"toolCallId":"c2"},"options":[]}}));
        j.out(json!({"jsonrpc":"2.0","id":1000,"result":{"outcome":{"outcome":"selected","optionId":"allow-once"}}}));
        j.out(json!({"jsonrpc":"2.0","id":"p2","result":{"outcome":{"outcome":"cancelled"}}}));
        j.sse(json!({"jsonrpc":"2.0","id":1,"result":{"stopReason":"cancelled"}}));
        let changes: Vec<Vec<Change>> = j.entries.iter().map(|e| v.apply(e)).collect();
        assert_eq!(changes[0], [Change::TurnStarted]);
        assert_eq!(changes[1], [Change::AwaitingInput(true)]);
        assert!(changes[2].is_empty(), "already awaiting");
        assert!(changes[3].is_empty(), "one still waits");
        assert_eq!(changes[4], [Change::AwaitingInput(false)]);
        assert_eq!(changes[5], [Change::TurnEnded { stop_reason: Some("cancelled".into()), error: None }]);
        let answered: Vec<&Value> = v
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Permission { outcome: Some(o), .. } => Some(o),
                _ => None,
            })
            .collect();
        assert_eq!(answered.len(), 2);
        assert_eq!(answered[0]["optionId"], "allow-once");
        assert!(v.pending_permissions.is_empty());
    }

    #[test]
    fn a_prompt_is_unacknowledged_until_the_agent_sends_anything() {
        let mut j = J::new();
        j.out(prompt(1, "a"));
        assert_eq!(j.view().unacknowledged_prompt(), Some((json!(1), 1)));
        j.update(json!({"sessionUpdate":"agent_thought_chunk","content":{"type":"text","text":"hm"}}));
        assert_eq!(j.view().unacknowledged_prompt(), None, "the agent is on it");
        j.sse(json!({"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn"}}));
        j.out(prompt(2, "b"));
        assert_eq!(j.view().unacknowledged_prompt(), Some((json!(2), 4)));
        j.sse(json!({"jsonrpc":"2.0","id":2,"result":{"stopReason":"end_turn"}}));
        assert_eq!(j.view().unacknowledged_prompt(), None, "no turn in flight");
    }

    #[test]
    fn other_agent_requests_wait_for_an_answer() {
        let mut j = J::new();
        j.out(prompt(1, "a"));
        j.sse(json!({"jsonrpc":"2.0","id":7,"method":"fs/read_text_file","params":{"path":"/x"}}));
        j.sse(json!({"jsonrpc":"2.0","id":8,"method":"terminal/create","params":{}}));
        let v = j.view();
        assert_eq!(v.unsupported_requests, [(json!(7), "fs/read_text_file".to_string()), (json!(8), "terminal/create".to_string())]);
        assert!(v.pending_permissions.is_empty(), "not permissions");
        j.out(json!({"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"no"}}));
        assert_eq!(j.view().unsupported_requests.len(), 1);
    }

    #[test]
    fn a_checkpoint_plus_the_rest_of_the_journal_is_the_whole_fold() {
        let mut j = J::new();
        j.out(prompt(1, "first"));
        j.update(json!({"sessionUpdate":"tool_call","toolCallId":"c1","title":"Edit","status":"pending"}));
        j.update(json!({"sessionUpdate":"agent_message_chunk","messageId":"m","content":{"type":"text","text":"Hel"}}));
        j.sse(json!({"jsonrpc":"2.0","id":9,"method":"session/request_permission","params":{"sessionId":"s","toolCall":{"toolCallId":"c1"},"options":[]}}));
        j.sse(json!({"jsonrpc":"2.0","id":10,"method":"fs/read_text_file","params":{}}));
        let cut = j.entries.len();
        j.update(json!({"sessionUpdate":"agent_message_chunk","messageId":"m","content":{"type":"text","text":"lo"}}));
        j.out(json!({"jsonrpc":"2.0","id":9,"result":{"outcome":{"outcome":"cancelled"}}}));
        j.update(json!({"sessionUpdate":"tool_call_update","toolCallId":"c1","status":"completed"}));
        j.sse(json!({"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn"}}));
        j.out(prompt(2, "second"));
        let whole = j.view();
        let head = SessionView::from_entries(&j.entries[..cut]);
        let mut resumed = SessionView::from_checkpoint(&head.checkpoint()).expect("checkpoint");
        assert_eq!(resumed.checkpoint(), head.checkpoint(), "a checkpoint reads back as it was");
        for e in &j.entries[cut..] {
            resumed.apply(e);
        }
        assert_eq!(resumed.checkpoint(), whole.checkpoint());
        assert_eq!(serde_json::to_value(&resumed).unwrap(), serde_json::to_value(&whole).unwrap());
        assert!(SessionView::from_checkpoint("{not json").is_none());
    }

    #[test]
    fn pending_permissions_keep_the_id_as_sent() {
        let mut j = J::new();
        j.out(prompt(1, "go"));
        j.sse(json!({"jsonrpc":"2.0","id":"abc","method":"session/request_permission","params":{"sessionId":"s","toolCall":{"toolCallId":"c"},"options":[]}}));
        let v = j.view();
        assert_eq!(v.pending_permissions.len(), 1);
        assert_eq!(v.pending_permissions[0].id, json!("abc"));
        assert_eq!(v.pending_permissions[0].request, "\"abc\"");
        assert!(v.prompting());
    }

    #[test]
    fn an_error_response_or_agent_exit_ends_the_turn() {
        let mut j = J::new();
        j.out(prompt(1, "a"));
        j.sse(json!({"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"boom"}}));
        j.out(prompt(2, "b"));
        j.sse(json!({"jsonrpc":"2.0","method":"_adapter/agent_exited","params":{"success":false,"code":1}}));
        let mut v = SessionView::from_entries(&[]);
        let changes: Vec<Vec<Change>> = j.entries.iter().map(|e| v.apply(e)).collect();
        assert_eq!(changes[1], [Change::TurnEnded { stop_reason: None, error: Some("boom".into()) }]);
        assert!(matches!(&changes[3][0], Change::TurnEnded { error: Some(e), .. } if e.contains("exited")));
        assert!(matches!(&changes[3][1], Change::AgentExited { .. }));
        assert!(!v.prompting());
    }

    #[test]
    fn kilns_own_loss_note_names_its_cause() {
        let mut j = J::new();
        j.out(prompt(1, "a"));
        let mut note = j.push(
            Dir::In,
            None,
            json!({"jsonrpc":"2.0","method":"_kiln/session_lost","params":{"reason":"the ACP instance is gone"}}),
        )
        .clone();
        note.purpose = Some("kiln".into());
        let mut v = SessionView::from_entries(&j.entries[..1]);
        let changes = v.apply(&note);
        let cause = Some("the ACP instance is gone".to_string());
        assert_eq!(changes[0], Change::TurnEnded { stop_reason: None, error: cause.clone() });
        assert_eq!(changes.last(), Some(&Change::AgentExited { detail: "the ACP instance is gone".into() }));
        // The adapter's own notification still says the process exited.
        let exited = json!({"jsonrpc":"2.0","method":"_adapter/agent_exited","params":{"reason":"x"}});
        let e = Entry { envelope: exited, ..note };
        assert!(matches!(&v.apply(&e)[0], Change::AgentExited { detail } if detail.starts_with("the agent process exited")));
    }

    #[test]
    fn only_the_agents_updates_leave_the_status_alone() {
        let mut j = J::new();
        j.out(prompt(1, "a"));
        j.update(json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"x"}}));
        j.sse(json!({"jsonrpc":"2.0","id":1000,"method":"session/request_permission","params":{}}));
        j.sse(json!({"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn"}}));
        j.sse(json!({"jsonrpc":"2.0","method":"_adapter/agent_exited","params":{}}));
        let split: Vec<bool> = j.entries.iter().map(Entry::may_change_status).collect();
        assert_eq!(split, [true, false, true, true, true]);
    }

    #[test]
    fn load_replays_and_the_preamble_prompt_stay_out_of_the_transcript() {
        let mut j = J::new();
        j.out(prompt(1, "first"));
        j.sse(json!({"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn"}}));
        j.update(json!({"sessionUpdate":"user_message_chunk","content":{"type":"text","text":"first"}}));
        j.entries.last_mut().expect("entry").replay = true;
        j.out(json!({"jsonrpc":"2.0","id":2,"method":"session/new","params":{"cwd":"/w","mcpServers":[]}})).purpose =
            Some("restore".into());
        assert!(j.view().preamble_due);
        let mut p = prompt(3, "second");
        p["params"]["prompt"] = json!([{"type":"text","text":"PREAMBLE"},{"type":"text","text":"second"}]);
        j.out(p).purpose = Some("preamble".into());
        let v = j.view();
        assert!(!v.preamble_due, "the preamble went out once");
        let users: Vec<&str> = v
            .items
            .iter()
            .filter_map(|i| match i {
                Item::User { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(users, ["first", "second"]);
    }

    #[test]
    fn the_preamble_is_capped_by_events_and_characters() {
        let mut j = J::new();
        for i in 0..10u64 {
            j.out(prompt(i + 1, &format!("question {i}")));
            j.update(json!({"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":format!("answer {i}")}}));
            j.sse(json!({"jsonrpc":"2.0","id":i + 1,"result":{"stopReason":"end_turn"}}));
        }
        let v = j.view();
        let p = v.preamble(3, 10_000).expect("preamble");
        assert!(p.ends_with("User: question 9\nAgent: answer 9"), "{p}");
        assert!(p.contains("Agent: answer 8"));
        assert!(!p.contains("question 8"), "only the last 3 items: {p}");
        let p = v.preamble(100, 200).expect("preamble");
        assert!(p.chars().count() <= 200, "{} chars", p.chars().count());
        assert!(p.ends_with("Agent: answer 9"));
        assert!(!p.contains("question 0"));
        assert_eq!(SessionView::default().preamble(10, 1000), None);
        // A budget smaller than the last line cuts the line from its start.
        let p = v.preamble(1, 130).expect("preamble");
        assert!(p.chars().count() <= 130 && p.ends_with("answer 9"), "{p}");
    }

    #[test]
    fn kinds_follow_the_envelope_shape() {
        let e = |dir, envelope| Entry {
            seq: 1,
            dir,
            server: "s".into(),
            remote_seq: None,
            epoch: None,
            replay: false,
            purpose: None,
            envelope,
        };
        assert_eq!(e(Dir::Out, json!({"id":1,"method":"x"})).kind(), "session.sent");
        assert_eq!(e(Dir::In, json!({"method":"session/update"})).kind(), "session.update");
        assert_eq!(e(Dir::In, json!({"id":5,"method":"session/request_permission"})).kind(), "session.request");
        assert_eq!(e(Dir::In, json!({"method":"_adapter/agent_exited"})).kind(), "session.notification");
        assert_eq!(e(Dir::In, json!({"id":1,"result":null})).kind(), "session.response");
    }
}
