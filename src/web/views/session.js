// The task's ACP session: its transcript (your prompts, the agent's replies,
// thoughts, tool calls with their status, the plan, permission requests with
// their options), a prompt box (Enter sends, Shift+Enter is a new line) and
// Cancel while a turn runs; "Open session" when none is open. The transcript is
// loaded once, then the session's journal events from the store's stream are
// folded in (lib/transcript.js): nothing polls.

import { get, post, orgPath } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { markdown } from '../lib/markdown.js';
import { Transcript } from '../lib/transcript.js';

/** Statuses of a session that can still take a prompt (a `lost` one is restored by it). */
const OPEN = ['starting', 'ready', 'prompting', 'lost'];

const STATUS_WORDS = {
  starting: 'Starting', ready: 'Ready', prompting: 'Working', lost: 'Lost: your next prompt restores it', closed: 'Closed',
};

/** How many transcript items are drawn (the newest). */
const SHOWN = 500;

const TOOL_WORDS = { pending: 'Pending', in_progress: 'Running', completed: 'Done', failed: 'Failed' };

export function sessionPane(container, app, taskId, getTask) {
  const base = orgPath(app.org, `/tasks/${taskId}/sessions`);
  const root = h('section.session', { 'aria-label': 'Session' });
  container.append(root);
  let view = null;
  let sid = null;
  let buffered = null;
  let closed = false;
  let busy = false;
  let error = null;
  let frame = 0;

  // Subscribe first, then load: events that land while the transcript loads are
  // buffered and folded after it (those already in it are skipped by seq).
  const off = app.store.onEvent((ev) => {
    if (ev.task !== taskId || !ev.session) return;
    if (ev.session !== sid) {
      // A session opened elsewhere (the CLI, another browser) shows up here
      // when none is open in the pane.
      if (ev.kind === 'session.status_changed' && !busy && (!sid || view?.status === 'closed')) load();
      return;
    }
    if (!view && !buffered) return;
    if (buffered) buffered.push(ev);
    else if (view.apply(ev)) schedule();
  });

  function schedule() {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      render();
    });
  }

  async function load() {
    try {
      const list = await get(base);
      const open = list.items.filter((s) => OPEN.includes(s.status));
      const latest = open[open.length - 1];
      if (!latest) {
        sid = null;
        view = null;
        render();
        return;
      }
      await attach(latest.id);
    } catch (e) {
      error = e.message;
      render();
    }
  }

  async function attach(id) {
    sid = id;
    buffered = [];
    try {
      const t = await get(`${base}/${id}/transcript`);
      if (closed || sid !== id) return;
      view = new Transcript(t);
      for (const ev of buffered) view.apply(ev);
    } finally {
      buffered = null;
    }
    render();
  }

  async function run(what, fn) {
    busy = true;
    error = null;
    render();
    try {
      await fn();
    } catch (e) {
      error = `${what} failed: ${e.message}`;
    } finally {
      busy = false;
      render();
    }
  }

  function openSession(agent) {
    return run('Opening the session', async () => {
      const body = agent ? { agent } : {};
      const s = await post(base, body);
      announce('Session opened');
      await attach(s.id);
    });
  }

  function send(textarea) {
    const text = textarea.value;
    if (!text.trim() || busy) return;
    run('Sending', async () => {
      await post(`${base}/${sid}/prompt`, { text });
      textarea.value = '';
      announce('Prompt sent');
    }).then(() => root.querySelector('#session-prompt')?.focus());
  }

  function cancel() {
    run('Cancelling', async () => {
      await post(`${base}/${sid}/cancel`, {});
      announce('Cancel sent');
    });
  }

  function answer(p, option) {
    run('Answering', async () => {
      const body = option ? { option_id: option.optionId } : { outcome: 'cancelled' };
      await post(`${base}/${sid}/permissions/${encodeURIComponent(p.request)}`, body);
      announce(option ? `Answered: ${option.name || option.optionId}` : 'Declined');
    });
  }

  // The session's parts are made once and updated in place, so the prompt box
  // keeps its focus and what you typed while the agent streams.
  const head = h('div.session-head');
  const planBox = h('div.plan-box');
  const log = h('ol.transcript', { 'aria-label': 'Transcript' });
  const errBox = h('div');
  const textarea = h('textarea#session-prompt', {
    rows: 3, placeholder: 'Ask the agent…', 'aria-describedby': 'session-hint',
    onkeydown: (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send(textarea);
      }
    },
  });
  const cancelBtn = h('button#session-cancel', { type: 'button', onclick: cancel }, 'Cancel');
  const sendBtn = h('button.primary#session-send', { type: 'submit' }, 'Send');
  const composer = h('form.composer', {
    onsubmit: (e) => {
      e.preventDefault();
      send(textarea);
    },
  },
    h('label.visually-hidden', { for: 'session-prompt' }, 'Prompt'),
    textarea,
    h('div.composer-actions',
      h('span#session-hint.muted.small', 'Enter sends · Shift+Enter for a new line'),
      cancelBtn, sendBtn));
  const sessionParts = [head, planBox, log, errBox, composer];

  function render() {
    if (closed) return;
    const err = error ? h('p.error', { role: 'alert' }, error) : null;
    if (!sid || (view && view.status === 'closed' && !busy)) {
      renderOpen(err, view);
      return;
    }
    if (!view) {
      replace(root, h('p.muted', 'Loading the session…'), err);
      return;
    }
    if (root.firstChild !== head) replace(root, ...sessionParts);
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    const prompting = view.prompting;
    const waiting = prompting && view.pending.length > 0;
    const statusWord = waiting ? 'Waiting for your answer' : STATUS_WORDS[view.status] || view.status;
    replace(head,
      h(`span.status.s-session-${waiting ? 'waiting' : view.status}`, { id: 'session-status' }, statusWord),
      h('span.muted.small', `${view.session.agent} · session ${view.session.id}`),
      view.stopReason && !prompting ? h('span.muted.small', `last turn: ${view.stopReason.replace('_', ' ')}`) : null);
    replace(planBox, view.plan && view.plan.length ? renderPlan(view.plan) : null);
    // The newest items only: a very long session stays quick to draw.
    const shown = view.items.slice(-SHOWN);
    replace(log,
      view.items.length > shown.length ? h('li.muted.small', `${view.items.length - shown.length} earlier items are not shown (\`GET …/transcript\` has them all).`) : null,
      shown.length ? shown.map((item) => renderItem(item, view, answer, busy)) : h('li.muted.empty', 'Nothing said yet: send the agent a prompt.'));
    replace(errBox, err);
    cancelBtn.hidden = !prompting;
    cancelBtn.disabled = busy;
    sendBtn.disabled = busy || prompting;
    sendBtn.textContent = prompting ? 'Working…' : 'Send';
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function renderOpen(err, last) {
    const task = getTask();
    const agent = h('input#session-agent', { autocomplete: 'off', placeholder: 'The profile’s ACP agent', maxlength: 64 });
    const active = !task || ['running', 'idle'].includes(task.status);
    replace(root,
      h('div.card-panel.session-open',
        h('h2', last ? 'The session is closed' : 'No session open'),
        h('p.muted', 'A session talks to the task’s agent over ACP: you see its messages, tool calls and plan, and answer what it asks.'),
        active ? null : h('p.notice', 'Sessions open while the task is running or idle.'),
        h('form.session-open-form', {
          onsubmit: (e) => {
            e.preventDefault();
            openSession(agent.value.trim());
          },
        },
          h('div.field-row',
            h('label', { for: 'session-agent' }, 'Agent (optional)'),
            agent,
            h('p.muted.small', `Leave empty for the ACP agent of the task’s profile (${task?.agent || '…'}); or name a sandbox-agent agent such as claude or codex.`)),
          h('button.primary#session-open', { type: 'submit', disabled: busy || !active }, busy ? 'Opening…' : 'Open session')),
        err));
  }

  // The task's status decides whether a session may be opened.
  const unsubscribe = app.store.subscribe(() => {
    if (!sid && !busy) render();
  });

  load();
  return () => {
    closed = true;
    off();
    unsubscribe();
    if (frame) cancelAnimationFrame(frame);
  };
}

function renderPlan(entries) {
  return h('details.plan', { open: true },
    h('summary', 'Plan'),
    h('ol', entries.map((e) => h(`li.plan-${e.status || 'pending'}`,
      h('span.plan-mark', { 'aria-hidden': 'true' }, e.status === 'completed' ? '✓' : e.status === 'in_progress' ? '▸' : '○'),
      h('span', String(e.content ?? '')),
      h('span.visually-hidden', ` (${e.status || 'pending'})`)))));
}

function toolText(content) {
  const parts = [];
  for (const c of Array.isArray(content) ? content : []) {
    if (c?.type === 'content' && c.content?.type === 'text') parts.push(c.content.text);
    else if (c?.type === 'diff') parts.push(`diff ${c.path || ''}`);
    else if (c?.type === 'terminal') parts.push(`terminal ${c.terminalId || ''}`);
  }
  return parts.join('\n');
}

function renderItem(item, view, answer, busy) {
  switch (item.type) {
    case 'user':
      return h('li.msg.msg-user', h('span.who', 'You'), h('div.bubble', item.text));
    case 'agent':
      return h('li.msg.msg-agent', h('span.who', 'Agent'), h('div.bubble', markdown(item.text)));
    case 'thought':
      return h('li.thought', h('details', h('summary', 'Thinking'), h('div.muted', markdown(item.text))));
    case 'tool_call': {
      const status = item.status || 'pending';
      const text = toolText(item.content);
      const where = (Array.isArray(item.locations) ? item.locations : []).map((l) => l?.path).filter(Boolean);
      return h(`li.tool.tool-${status}`, { dataset: { tool: item.tool_call_id } },
        h('span.tool-status', TOOL_WORDS[status] || status),
        h('span.tool-title', item.title || 'Tool call'),
        item.kind ? h('span.muted.small', item.kind) : null,
        where.length ? h('code.small.tool-where', where.join(', ')) : null,
        text ? h('details.tool-output', h('summary', 'Output'), h('pre', text)) : null);
    }
    case 'permission': {
      const pending = view.pending.find((p) => p.request === item.request);
      const tool = item.tool_call_id && view.items.find((i) => i.type === 'tool_call' && i.tool_call_id === item.tool_call_id);
      const options = Array.isArray(item.options) ? item.options : [];
      const chosen = item.outcome?.optionId && options.find((o) => o.optionId === item.outcome.optionId);
      return h(`li.permission${pending ? '.permission-pending' : ''}`, { dataset: { request: item.request } },
        h('p', h('strong', 'The agent asks permission'), tool ? `: ${tool.title || 'a tool call'}` : ''),
        pending
          ? h('div.actions', { role: 'group', 'aria-label': 'Answer' },
            options.map((o) => h(`button${/^allow/.test(o.kind || '') ? '.primary' : ''}`, {
              type: 'button', disabled: busy, dataset: { option: o.optionId }, onclick: () => answer(pending, o),
            }, o.name || o.optionId)),
            h('button.ghost', { type: 'button', disabled: busy, onclick: () => answer(pending, null) }, 'Dismiss'))
          : h('p.muted.small', chosen ? `Answered: ${chosen.name || chosen.optionId}` : item.outcome ? 'Cancelled' : 'No longer waiting'));
    }
    case 'turn_ended':
      return h(`li.turn-end${item.error ? '.turn-failed' : ''}`,
        item.error ? `Turn failed: ${item.error}` : `Turn ended: ${(item.stop_reason || 'done').replace('_', ' ')}`);
    default:
      return h('li.muted.small', item.type);
  }
}
