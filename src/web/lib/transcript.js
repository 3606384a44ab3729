// A session's transcript in the page: the server's fold
// (`GET …/sessions/{id}/transcript`, src/actors/session/view.rs) loaded once,
// then the session's journal events from the organization stream applied in the
// same way, so the page never asks again while the stream runs. Pure: no DOM,
// no fetch. An event at or below the loaded cursor (`seq`) is already in it.

/** A JSON-RPC id as the server keys it (`1000`, or `"abc"` for a string id). */
export const idKey = (id) => JSON.stringify(id);

function textOf(block) {
  if (!block || typeof block !== 'object') return '';
  if (block.type === 'text') return String(block.text ?? '');
  if (block.type === 'resource_link') return block.uri ? `[${block.uri}]` : '';
  return block.type ? `[${block.type}]` : '';
}

function promptText(blocks, skipFirst) {
  const list = Array.isArray(blocks) ? blocks : [];
  return (skipFirst ? list.slice(1) : list).map(textOf).filter(Boolean).join('\n');
}

export class Transcript {
  /** From `GET …/transcript`'s answer: `{session, transcript}`. */
  constructor({ session, transcript }) {
    this.session = session;
    this.status = session.status;
    this.items = (transcript.items || []).map((i) => ({ ...i }));
    this.plan = transcript.plan || null;
    this.pending = (transcript.pending_permissions || []).map((p) => ({ ...p }));
    this.promptInFlight = transcript.prompt_in_flight ?? null;
    this.stopReason = transcript.stop_reason ?? null;
    this.seq = transcript.seq || 0;
    this.loadedSeq = this.seq;
    this.tools = new Map();
    this.items.forEach((item, i) => {
      if (item.type === 'tool_call') this.tools.set(item.tool_call_id, i);
    });
  }

  get prompting() {
    return this.promptInFlight !== null && this.promptInFlight !== undefined;
  }

  /** Applies one event of this session; answers whether anything changed. */
  apply(ev) {
    const d = ev.data || {};
    if (ev.kind === 'session.status_changed') {
      // A status event carries the cursor it follows; one from before the load is
      // in the loaded row already. The TaskActor's `closed` carries none.
      if (typeof d.seq === 'number' && d.seq < this.loadedSeq) return false;
      this.status = d.to;
      if (d.to === 'closed' || d.to === 'lost') this.pending = [];
      return true;
    }
    if (!d.envelope || typeof d.seq !== 'number' || d.seq <= this.seq) return false;
    this.seq = d.seq;
    const env = d.envelope;
    if (d.dir === 'out') this.applyOut(env, d);
    else this.applyIn(env, d);
    return true;
  }

  applyOut(env, d) {
    const hasId = env.id !== undefined && env.id !== null;
    if (env.method === 'session/prompt' && hasId) {
      const text = promptText(env.params?.prompt, d.purpose === 'preamble');
      this.items.push({ type: 'user', text, seq: d.seq });
      this.promptInFlight = env.id;
    } else if (!env.method && hasId) {
      // Kiln's answer to the agent's request: a permission answered.
      const key = idKey(env.id);
      this.pending = this.pending.filter((p) => idKey(p.id) !== key);
      for (let i = this.items.length - 1; i >= 0; i--) {
        const item = this.items[i];
        if (item.type === 'permission' && item.request === key) {
          item.outcome = env.result?.outcome ?? env.error ?? null;
          break;
        }
      }
    }
  }

  applyIn(env, d) {
    const hasId = env.id !== undefined && env.id !== null;
    const method = env.method;
    if (method === 'session/update') {
      if (!d.replay) this.applyUpdate(env.params?.update || {}, d.seq);
    } else if (method === 'session/request_permission' && hasId) {
      const request = idKey(env.id);
      const p = env.params || {};
      const entry = { id: env.id, request, tool_call_id: p.toolCall?.toolCallId ?? null, options: p.options || [], seq: d.seq };
      this.pending = this.pending.filter((x) => x.request !== request).concat([entry]);
      this.items.push({ type: 'permission', request, tool_call_id: entry.tool_call_id, options: entry.options, outcome: null, seq: d.seq });
    } else if (method === '_adapter/agent_exited' || method === '_kiln/session_lost') {
      const reason = method === '_kiln/session_lost' && env.params?.reason;
      if (this.prompting) {
        this.items.push({ type: 'turn_ended', error: reason || 'the agent process exited', seq: d.seq });
        this.promptInFlight = null;
      }
      this.pending = [];
    } else if (!method && hasId && this.prompting && idKey(env.id) === idKey(this.promptInFlight)) {
      this.promptInFlight = null;
      const stop = env.result?.stopReason ?? null;
      const error = env.error ? (env.error.message || JSON.stringify(env.error)) : null;
      if (stop) this.stopReason = stop;
      const item = { type: 'turn_ended', seq: d.seq };
      if (stop) item.stop_reason = stop;
      if (error) item.error = error;
      this.items.push(item);
    }
  }

  applyUpdate(u, seq) {
    const kind = u.sessionUpdate;
    const last = this.items[this.items.length - 1];
    if (kind === 'agent_message_chunk' || kind === 'agent_thought_chunk' || kind === 'user_message_chunk') {
      const text = textOf(u.content);
      const messageId = u.messageId ?? null;
      if (kind === 'agent_message_chunk' && last?.type === 'agent' && (messageId === null || (last.message_id ?? null) === messageId)) {
        last.text += text;
      } else if (kind === 'agent_thought_chunk' && last?.type === 'thought') {
        last.text += text;
      } else if (kind === 'agent_message_chunk') {
        const item = { type: 'agent', text, seq };
        if (messageId !== null) item.message_id = messageId;
        this.items.push(item);
      } else if (kind === 'agent_thought_chunk') {
        this.items.push({ type: 'thought', text, seq });
      } else {
        this.items.push({ type: 'user', text, seq });
      }
    } else if (kind === 'tool_call' && u.toolCallId) {
      const item = {
        type: 'tool_call', tool_call_id: u.toolCallId, title: u.title ?? null, kind: u.kind ?? null, status: u.status ?? null,
        content: u.content ?? [], locations: u.locations ?? [], raw_input: u.rawInput, raw_output: u.rawOutput, seq,
      };
      if (this.tools.has(u.toolCallId)) this.items[this.tools.get(u.toolCallId)] = item;
      else {
        this.tools.set(u.toolCallId, this.items.length);
        this.items.push(item);
      }
    } else if (kind === 'tool_call_update' && u.toolCallId) {
      if (!this.tools.has(u.toolCallId)) {
        this.tools.set(u.toolCallId, this.items.length);
        this.items.push({ type: 'tool_call', tool_call_id: u.toolCallId, title: null, kind: null, status: null, content: [], locations: [], seq });
      }
      const item = this.items[this.tools.get(u.toolCallId)];
      for (const key of ['title', 'kind', 'status']) if (typeof u[key] === 'string') item[key] = u[key];
      if (u.content !== undefined && u.content !== null) item.content = u.content;
      if (u.locations !== undefined && u.locations !== null) item.locations = u.locations;
      if (u.rawInput !== undefined) item.raw_input = u.rawInput;
      if (u.rawOutput !== undefined) item.raw_output = u.rawOutput;
    } else if (kind === 'plan') {
      this.plan = u.entries ?? null;
    }
  }
}
