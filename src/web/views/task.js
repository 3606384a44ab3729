// One task: its header (status, reason, the actions the lifecycle allows now,
// with the API's own words when one is refused), and its panes: terminal, ACP
// session, pull request and events.

import { get, post, orgPath } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { age, when, STATUS_WORDS } from '../lib/format.js';
import { conflictOther } from '../lib/store.js';
import { terminalPane } from './terminal.js';
import { sessionPane } from './session.js';
import { pullRequestPane } from './pull-request.js';
import { changesPane } from './changes.js';

/** Which actions each status allows (docs/api.md, task actions). */
const ACTIONS = [
  { action: 'push', label: 'Push', from: ['running', 'idle'] },
  { action: 'sync', label: 'Sync', from: ['running', 'idle'] },
  { action: 'pr', label: 'Open PR', from: ['running', 'idle'] },
  { action: 'merge', label: 'Merge', from: ['running', 'idle'] },
  { action: 'resume', label: 'Resume', from: ['stalled', 'interrupted'] },
  { action: 'archive', label: 'Archive', from: ['queued', 'failed', 'running', 'idle', 'stalled', 'interrupted'], confirm: true },
  { action: 'kill', label: 'Kill', from: ['queued', 'provisioning', 'running', 'idle', 'stalled', 'interrupted'], confirm: true, danger: true },
];

// A terminal host exists from late in provisioning; attach once the agent runs.
const NO_TERMINAL = ['queued', 'provisioning'];

export function taskView(main, app, id) {
  const store = app.store;
  const head = h('div.task-head');
  const actionError = h('p.error', { role: 'alert', hidden: true });
  const tabs = h('div.tabs', { role: 'tablist', 'aria-label': 'Task views' });
  const pane = h('div.pane', { role: 'tabpanel' });
  let task = store.tasks.get(id) || null;
  let tab = new URLSearchParams(location.search).get('tab') || 'terminal';
  let closePane = null;
  let busy = null;
  // A remote sandbox's power state (`run_state`, …) from the task detail, kept
  // live by its `sandbox.auto_stopped` and `sandbox.resumed` events.
  let sandbox = null;

  replace(main, h('p.crumbs', h('a', { href: '/' }, '← Board')), head, actionError, tabs, pane);

  async function act(a) {
    if (a.confirm && !confirm(`${a.label} this task? Its agent stops and its worktree is removed (uncommitted work is saved to a snapshot ref).`)) return;
    busy = a.action;
    actionError.hidden = true;
    renderHead();
    try {
      const res = await post(orgPath(app.org, `/tasks/${id}/${a.action}`));
      if (res?.task) Object.assign(task, res.task);
      announce(`${a.label}: done`);
    } catch (e) {
      actionError.hidden = false;
      actionError.textContent = `${a.label} failed: ${e.message}`;
    } finally {
      busy = null;
      renderHead();
    }
  }

  function renderHead() {
    if (!task) {
      replace(head, h('h1', 'Loading…'));
      return;
    }
    const allowed = ACTIONS.filter((a) => a.from.includes(task.status));
    const pr = task.pr;
    replace(head,
      h('div.task-title',
        h('h1', task.title || '(untitled)'),
        h(`span.status.big.s-${task.status}`, { id: 'task-status' }, STATUS_WORDS[task.status] || task.status)),
      task.status_reason ? h('p.reason', { id: 'task-reason' }, task.status_reason) : null,
      predictedConflicts(),
      h('dl.facts',
        h('div', h('dt', 'Repository'), h('dd', task.repo)),
        h('div', h('dt', 'Branch'), h('dd', h('code', task.branch)), h('span.muted', ` from ${task.base_branch}`)),
        h('div', h('dt', 'Agent'), h('dd', `${task.agent} · ${task.provider}`)),
        h('div', h('dt', 'Created'), h('dd', h('time', { title: when(task.created_at) }, `${age(task.created_at)} ago`))),
        sandboxFact(),
        pr ? h('div', h('dt', 'Pull request'), h('dd', `#${pr.number} ${pr.state}${pr.ci_state ? ` · CI ${pr.ci_state}` : ''}${pr.review_decision ? ` · ${pr.review_decision.replace('_', ' ')}` : ''}`)) : null),
      h('div.actions', { role: 'group', 'aria-label': 'Actions' },
        allowed.length ? allowed.map((a) => h(`button${a.danger ? '.danger' : ''}`, {
          type: 'button', disabled: !!busy, dataset: { action: a.action }, onclick: () => act(a),
        }, busy === a.action ? `${a.label}…` : a.label)) : h('span.muted', 'No actions: this task is finished.')));
  }

  // A remote sandbox stopped while idle says so, and that the next use starts
  // it again; a running one says nothing more than its provider.
  function sandboxFact() {
    const state = sandbox?.run_state;
    if (!state || state === 'started') return null;
    const words = {
      stopped: sandbox.stopped_by === 'daytona' ? 'Stopped outside Kiln' : 'Stopped while idle',
      stopping: 'Stopping (idle)',
      starting: 'Starting again…',
    };
    return h('div', { id: 'task-sandbox' }, h('dt', 'Sandbox'),
      h('dd', h(`span.badge.sandbox-${state}`, words[state] || state),
        state === 'stopped' && sandbox.auto_stopped_at
          ? h('span.muted', ' since ', h('time', { title: when(sandbox.auto_stopped_at) }, `${age(sandbox.auto_stopped_at)} ago`), ' · starts again on the next input, attach, prompt or git action')
          : null));
  }

  // What would conflict if this task and the others were merged now (the
  // branch poller's prediction, live from `task.conflict_*` events).
  function predictedConflicts() {
    const list = store.conflictsOf(id);
    if (!list.length) return null;
    return h('div.predicted-conflicts', { id: 'task-conflicts', role: 'status' },
      h('span.badge.predicted', h('span.predicted-mark', { 'aria-hidden': 'true' }, '⚠'), list.length === 1 ? 'Conflict predicted' : `${list.length} conflicts predicted`),
      h('ul', list.map((c) => h('li', { dataset: { other: c.other } },
        'With ',
        c.other === 'base' ? conflictOther(store, task, c.other) : h('a', { href: `/tasks/${c.other}` }, conflictOther(store, task, c.other)),
        ' in ',
        ...c.files.slice(0, 10).flatMap((f, i) => [i ? ', ' : null, h('code', f)]),
        c.files.length > 10 ? ` and ${c.files.length - 10} more` : null))));
  }

  function renderTabs() {
    const mk = (id, label) => h('button.tab', {
      type: 'button', role: 'tab', id: `tab-${id}`, 'aria-selected': String(tab === id),
      onclick: () => { tab = id; history.replaceState(null, '', `?tab=${id}`); renderTabs(); renderPane(); },
    }, label);
    replace(tabs, mk('terminal', 'Terminal'), mk('changes', 'Changes'), mk('session', 'Session'), mk('pr', 'Pull request'), mk('events', 'Events'));
  }

  // Whether the pane was drawn with the task known: the task may come first
  // from the store or from the detail request, whichever answers first.
  let paneHasTask = false;

  function renderPane() {
    if (closePane) closePane();
    closePane = null;
    paneHasTask = Boolean(task);
    replace(pane);
    if (tab === 'terminal') {
      if (!task) return;
      if (NO_TERMINAL.includes(task.status)) {
        pane.append(h('p.muted', 'The terminal opens once the agent has started.'));
        return;
      }
      closePane = terminalPane(pane, app, id);
    } else if (tab === 'session') {
      closePane = sessionPane(pane, app, id, () => task);
    } else if (tab === 'pr') {
      closePane = pullRequestPane(pane, app, id, () => task);
    } else if (tab === 'changes') {
      closePane = changesPane(pane, app, id);
    } else {
      closePane = eventsPane(pane, app, id);
    }
  }

  // The palette offers the same actions, run by the same code.
  app.pageCommands = () => (task && !busy
    ? ACTIONS.filter((a) => a.from.includes(task.status)).map((a) => ({
      id: `task-${a.action}`, label: `${a.label}: ${task.title || id}`, hint: 'Task action', danger: a.danger, run: () => act(a),
    }))
    : []);

  let lastStatus = task?.status;
  const offSandbox = store.onEvent((e) => {
    if (e.task !== id || !sandbox) return;
    if (e.kind === 'sandbox.auto_stopped') sandbox = { ...sandbox, run_state: 'stopped', stopped_by: e.data?.by, auto_stopped_at: e.at };
    else if (e.kind === 'sandbox.resumed') sandbox = { ...sandbox, run_state: 'started', stopped_by: null, auto_stopped_at: null };
    else return;
    renderHead();
  });
  const unsubscribe = store.subscribe(() => {
    const t = store.tasks.get(id);
    if (!t) return;
    task = t;
    renderHead();
    // The pane is drawn once the task is known; the terminal appears when a
    // queued task starts.
    if (!paneHasTask) renderPane();
    else if (tab === 'terminal' && NO_TERMINAL.includes(lastStatus) && !NO_TERMINAL.includes(t.status)) renderPane();
    lastStatus = t.status;
  });

  renderHead();
  renderTabs();
  if (task) renderPane();
  get(orgPath(app.org, `/tasks/${id}`)).then((t) => {
    const p = t.pull_request;
    const fresh = { ...t, pr: p ? { number: p.number, state: p.state, ci_state: p.ci_state, review_decision: p.review_decision } : null };
    task = store.tasks.get(id) || fresh;
    if (!store.tasks.has(id)) store.tasks.set(id, fresh);
    sandbox = t.sandbox || null;
    lastStatus = task.status;
    renderHead();
    if (!paneHasTask) renderPane();
  }).catch((e) => {
    replace(head, h('h1', 'Task not found'), h('p.error', e.message));
  });

  return () => {
    unsubscribe();
    offSandbox();
    if (closePane) closePane();
  };
}

/** The task's events: the latest 200, then live from the store's stream. */
function eventsPane(pane, app, id) {
  const list = h('ol.events', { 'aria-label': 'Events, newest first' });
  pane.append(list);
  const row = (e) => h('li.event',
    h('time', { title: when(e.at) }, new Date(e.at).toLocaleTimeString()),
    h('span.kind', e.kind),
    h('code.data', summarize(e.data)));
  const seen = new Set();
  const add = (e, top) => {
    if (seen.has(e.id)) return;
    seen.add(e.id);
    if (top) list.prepend(row(e));
    else list.append(row(e));
  };
  const off = app.store.onEvent((e) => {
    if (e.task === id) add(e, true);
  });
  get(orgPath(app.org, `/events?task=${id}&tail=200`)).then((r) => {
    for (const e of r.items.reverse()) add(e, false);
    if (!r.items.length && !list.children.length) list.append(h('li.muted', 'No events yet.'));
  }).catch((e) => list.append(h('li.error', e.message)));
  return off;
}

function summarize(data) {
  const text = JSON.stringify(data ?? {});
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}
