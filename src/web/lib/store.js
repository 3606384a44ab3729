// The page's one source of truth: the organization's tasks, loaded once and then
// kept fresh by the event stream (no polling). After a disconnect the stream
// resumes from the last event id it delivered, so nothing is missed or applied
// twice. Views subscribe and re-render at most once per animation frame.

import { get, orgPath, wsUrl } from './api.js';

/** Close codes after which reconnecting is pointless: the credential is gone. */
const CREDENTIAL_GONE = new Set([4001, 4003, 4004]);

export class Store {
  constructor(org) {
    this.org = org;
    this.tasks = new Map();
    this.cursor = 0;
    this.connected = false;
    this.loaded = false;
    this.listeners = new Set();
    this.eventListeners = new Set();
    this.retry = 500;
    this.closed = false;
    this.scheduled = false;
    // Repositories: null until a view asks for them (loadRepos), then kept fresh
    // by the stream. Clones in flight (and failed ones) by repository name.
    this.repos = null;
    this.reposLoading = null;
    this.clones = new Map();
    // Predicted conflicts, by task id: other task id (or 'base') → files.
    // Loaded once per repository, then kept fresh by `task.conflict_*` events.
    this.predicted = new Map();
  }

  /** Loads the tasks, then follows the stream from the moment before the load. */
  async start() {
    // The cursor first, then the tasks: an event that lands in between is in the
    // snapshot or replayed by the stream, or both (applying it twice is harmless).
    const tail = await get(orgPath(this.org, '/events?tail=1'));
    this.cursor = tail.next_since || 0;
    let cursor = null;
    do {
      const q = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
      const page = await get(orgPath(this.org, `/tasks?limit=500${q}`));
      for (const task of page.items) this.tasks.set(task.id, task);
      cursor = page.next_cursor;
      this.changed();
    } while (cursor && !this.closed);
    await this.loadConflicts();
    this.loaded = true;
    this.changed();
    this.connect();
  }

  /** The conflicts predicted for every repository (after the cursor was taken,
   * so an event in between is folded in twice at worst, which changes nothing). */
  async loadConflicts() {
    try {
      const repos = await get(orgPath(this.org, '/repos'));
      for (const repo of repos.items) {
        const r = await get(orgPath(this.org, `/repos/${encodeURIComponent(repo.name)}/conflicts`));
        for (const c of r.items) {
          this.setPredicted(c.task, c.other, c.files);
          if (c.other !== 'base') this.setPredicted(c.other, c.task, c.files);
        }
      }
    } catch (e) {
      // The board works without them; the stream still brings new ones.
    }
  }

  setPredicted(task, other, files) {
    if (!this.predicted.has(task)) this.predicted.set(task, new Map());
    if (files) this.predicted.get(task).set(other, files);
    else this.predicted.get(task).delete(other);
    if (!this.predicted.get(task).size) this.predicted.delete(task);
  }

  /** The conflicts predicted for a task: [{other, files}], base last. */
  conflictsOf(id) {
    const m = this.predicted.get(id);
    if (!m) return [];
    return [...m].map(([other, files]) => ({ other, files })).sort((a, b) => (a.other === 'base') - (b.other === 'base') || a.other.localeCompare(b.other));
  }

  stop() {
    this.closed = true;
    if (this.ws) this.ws.close(1000);
    clearTimeout(this.reconnectTimer);
  }

  connect() {
    if (this.closed) return;
    const ws = new WebSocket(wsUrl(orgPath(this.org, `/stream?since=${this.cursor}`)));
    this.ws = ws;
    ws.onopen = () => {
      this.connected = true;
      this.retry = 500;
      this.changed();
    };
    ws.onmessage = (msg) => {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch (e) {
        return;
      }
      if (typeof event.id !== 'number' || event.id <= this.cursor) return;
      this.cursor = event.id;
      // When the newest event happened (server clock), for the board's lag reading.
      this.lastEventAt = event.at;
      this.apply(event);
      for (const fn of this.eventListeners) fn(event);
    };
    ws.onclose = (e) => {
      this.connected = false;
      this.changed();
      if (this.closed) return;
      if (CREDENTIAL_GONE.has(e.code)) {
        window.dispatchEvent(new CustomEvent('kiln:signed-out', { detail: { code: e.code, message: e.reason } }));
        return;
      }
      // Reconnect (not a poll): wait a little longer after each failure.
      this.reconnectTimer = setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10000);
    };
  }

  /** Folds one event into the tasks (and the repositories). */
  apply(ev) {
    if (!ev.task) {
      if (ev.repo && ev.kind.startsWith('repo.')) this.applyRepo(ev);
      return;
    }
    const kind = ev.kind;
    if (kind === 'task.conflict_predicted' || kind === 'task.conflict_cleared') {
      const d = ev.data || {};
      this.setPredicted(ev.task, d.other, kind === 'task.conflict_predicted' ? (d.files || []) : null);
      this.changed();
      return;
    }
    if (kind === 'task.created') {
      const d = ev.data || {};
      this.tasks.set(ev.task, {
        id: ev.task, organization: this.org, repo: ev.repo, title: d.title, description: d.description,
        branch: d.branch, base_branch: d.base_branch, agent: d.agent, provider: d.provider,
        status: d.status || 'queued', status_reason: null, awaiting_input: false,
        created_at: ev.at, updated_at: ev.at, pr: null,
      });
      this.changed();
      return;
    }
    const task = this.tasks.get(ev.task);
    if (!task) {
      if (kind.startsWith('task.') || kind.startsWith('pr.')) this.fetchTask(ev.task);
      return;
    }
    const d = ev.data || {};
    const pr = () => (task.pr ||= { number: d.number, state: 'open', ci_state: null, review_decision: null });
    switch (kind) {
      case 'task.status_changed':
        task.status = d.to;
        task.status_reason = d.reason ?? null;
        break;
      case 'task.awaiting_input':
        task.awaiting_input = !!d.awaiting_input;
        break;
      case 'task.sync_conflict':
        task.conflict = true;
        break;
      case 'task.synced':
        task.conflict = false;
        break;
      case 'pr.opened':
      case 'pr.adopted':
        task.pr = { number: d.number, state: 'open', ci_state: task.pr?.ci_state ?? null, review_decision: task.pr?.review_decision ?? null };
        break;
      case 'pr.merged':
        pr().state = 'merged';
        break;
      case 'pr.closed':
        pr().state = 'closed';
        break;
      case 'pr.ci_changed':
        pr().ci_state = d.to;
        break;
      case 'pr.review_changed':
        pr().review_decision = d.to;
        break;
      default:
        return;
    }
    task.updated_at = ev.at;
    this.changed();
  }

  /** Loads the repositories once; later calls answer the same promise. */
  loadRepos() {
    if (!this.reposLoading) {
      // Events that land while the list loads are kept and folded in after it.
      this.pendingRepoEvents = [];
      this.reposLoading = get(orgPath(this.org, '/repos')).then((r) => {
        this.repos = new Map(r.items.map((repo) => [repo.name, repo]));
        const pending = this.pendingRepoEvents;
        this.pendingRepoEvents = null;
        for (const ev of pending) this.applyRepoRow(ev);
        this.changed();
        return this.repos;
      }, (e) => {
        this.reposLoading = null;
        throw e;
      });
    }
    return this.reposLoading;
  }

  /** Folds a `repo.*` event into the clones in flight and the repositories. */
  applyRepo(ev) {
    const name = ev.repo;
    const d = ev.data || {};
    const clone = () => this.clones.get(name) || { name, source: null, phase: null, percent: 0, steps: [], error: null, at: ev.at };
    if (ev.kind === 'repo.clone_started') {
      this.clones.set(name, { name, source: d.source, phase: null, percent: 0, steps: [], error: null, at: ev.at });
    } else if (ev.kind === 'repo.clone_progress') {
      const c = clone();
      Object.assign(c, { phase: d.phase, percent: d.percent });
      c.steps.push({ phase: d.phase, percent: d.percent });
      this.clones.set(name, c);
    } else if (ev.kind === 'repo.clone_failed') {
      const c = clone();
      c.error = d.error || 'the clone failed';
      this.clones.set(name, c);
    } else if (ev.kind === 'repo.registered') {
      this.clones.delete(name);
    }
    if (this.pendingRepoEvents) this.pendingRepoEvents.push(ev);
    else if (this.repos) this.applyRepoRow(ev);
    this.changed();
  }

  /** Folds a `repo.*` event into the loaded list of repositories. */
  applyRepoRow(ev) {
    const d = ev.data || {};
    const repo = this.repos.get(ev.repo);
    if (ev.kind === 'repo.registered') this.fetchRepo(ev.repo);
    else if (ev.kind === 'repo.deleted') this.repos.delete(ev.repo);
    else if (repo && ev.kind === 'repo.setup_changed') repo.setup = { commands: d.commands || [], copy: d.copy || [] };
    else if (repo && ev.kind === 'repo.settings_changed') repo.settings = d;
  }

  /** Reads one repository into the list (after it was registered). */
  async fetchRepo(name) {
    try {
      const repo = await get(orgPath(this.org, `/repos/${encodeURIComponent(name)}`));
      if (this.repos) this.repos.set(name, repo);
      this.changed();
    } catch (e) {
      // Deleted meanwhile: nothing to show.
    }
  }

  async fetchTask(id) {
    try {
      const t = await get(orgPath(this.org, `/tasks/${encodeURIComponent(id)}`));
      const p = t.pull_request;
      this.tasks.set(id, { ...t, pr: p ? { number: p.number, state: p.state, ci_state: p.ci_state, review_decision: p.review_decision } : null });
      this.changed();
    } catch (e) {
      // Deleted or out of reach: nothing to show.
    }
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onEvent(fn) {
    this.eventListeners.add(fn);
    return () => this.eventListeners.delete(fn);
  }

  changed() {
    if (this.scheduled) return;
    this.scheduled = true;
    const run = () => {
      this.scheduled = false;
      for (const fn of this.listeners) fn();
    };
    if (document.hidden) setTimeout(run, 250);
    else requestAnimationFrame(run);
  }
}

/** The board's columns, in order, by what the task needs next. */
export const COLUMNS = [
  { id: 'working', title: 'Working', hint: 'Agents at work' },
  { id: 'needs-you', title: 'Needs you', hint: 'Waiting for input, idle, CI red, changes requested or a conflict' },
  { id: 'review', title: 'Review', hint: 'Pull request open' },
  { id: 'ready', title: 'Ready', hint: 'Approved and green' },
  { id: 'done', title: 'Done', hint: 'Merged or archived' },
  { id: 'stopped', title: 'Stopped', hint: 'Failed, killed, interrupted or stalled' },
];

/** Names the other side of a predicted conflict: a task's title, or the base. */
export function conflictOther(store, t, other) {
  if (other === 'base') return `its base ${t.base_branch || 'branch'}`;
  const o = store.tasks.get(other);
  return o ? `“${o.title || other}”` : `task ${other}`;
}

/** A task's predicted conflicts in a few words and in full, or null. */
export function conflictBadge(store, t) {
  const list = store.conflictsOf(t.id);
  if (!list.length) return null;
  const files = (f) => (f.length > 3 ? `${f.slice(0, 3).join(', ')} and ${f.length - 3} more` : f.join(', '));
  const title = `Predicted to conflict: ${list.map((c) => `with ${conflictOther(store, t, c.other)} in ${files(c.files)}`).join('; ')}`;
  const text = list.length === 1 ? (list[0].other === 'base' ? 'Conflicts with base' : 'Conflict predicted') : `${list.length} conflicts`;
  return { count: list.length, text, title };
}

/** Why a task needs its person, or null. */
export function needsYou(t) {
  if (!['queued', 'provisioning', 'running', 'idle'].includes(t.status)) return null;
  if (t.awaiting_input) return 'Needs input';
  if (t.conflict) return 'Conflict';
  const pr = t.pr && t.pr.state === 'open' ? t.pr : null;
  if (pr?.ci_state === 'failure') return 'CI failed';
  if (pr?.review_decision === 'changes_requested') return 'Changes requested';
  if (t.status === 'idle' && !pr) return 'Idle';
  return null;
}

/** The column a task belongs in: a pure function of the task. */
export function columnOf(t) {
  if (t.status === 'archived' || t.pr?.state === 'merged') return 'done';
  if (['failed', 'killed', 'interrupted', 'stalled'].includes(t.status)) return 'stopped';
  if (needsYou(t)) return 'needs-you';
  const pr = t.pr && t.pr.state === 'open' ? t.pr : null;
  if (pr && pr.review_decision === 'approved' && pr.ci_state !== 'failure' && pr.ci_state !== 'pending') return 'ready';
  if (pr) return 'review';
  return 'working';
}
