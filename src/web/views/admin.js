// Admin (at `/server`: `/admin` is the operator API's own prefix): a metrics
// summary read from `/metrics`, the pollers with Poll now and Stop, the live
// actors, and a database backup. The admin's only; an organization's session
// gets a plain refusal and asks the server nothing. Actors and pollers have no
// events, so the page reads them on load, after each action, and on Refresh:
// never on a timer.

import { get, getText, post } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { age, when, STATUS_WORDS } from '../lib/format.js';
import { parsePrometheus, headlines } from '../lib/prometheus.js';

/** The page an organization's session sees instead of an admin view: no data. */
export function adminOnly(main, app, what) {
  replace(main,
    h('div.narrow',
      h('h1', what),
      h('p.error#admin-only', { role: 'alert' },
        'Only the Kiln admin can see this page. ',
        app.session.organization ? `You are signed in with a token of organization \`${app.session.organization}\`, which cannot reach it.` : ''),
      h('p', h('a', { href: '/' }, 'Back to the board'))));
  return () => {};
}

export function adminView(main, app) {
  if (!app.session.admin) return adminOnly(main, app, 'Admin');
  const asOf = h('span.muted.small#admin-as-of');
  const metricsEl = h('section.card-panel#metrics', h('p.muted', 'Loading metrics…'));
  const pollersEl = h('section.card-panel#pollers', h('p.muted', 'Loading pollers…'));
  const actorsEl = h('section.card-panel#actors', h('p.muted', 'Loading actors…'));
  const backupResult = h('p#backup-result', { role: 'status', hidden: true });
  const backupButton = h('button#backup', { type: 'button', onclick: backup }, 'Back up the database now');
  const backupEl = h('section.card-panel#backup-panel',
    h('h2', 'Backup'),
    h('p.muted.small', 'A consistent copy of the database (VACUUM INTO), written on the server under its data dir\'s backups/. docs/operations.md says how to restore one.'),
    h('div.actions', backupButton), backupResult);
  const pollStatus = h('p.saved#poller-status', { role: 'status', hidden: true });
  let actorFilter = '';
  let actors = [];
  let closed = false;

  replace(main,
    h('div.view-head', h('h1', 'Admin'),
      h('div.actions', asOf, h('button#admin-refresh', { type: 'button', onclick: () => { pollStatus.hidden = true; loadAll(); } }, 'Refresh'))),
    h('p.muted.small', 'The whole server, every organization. Actors and pollers are read when the page opens, after each action and on Refresh.'),
    metricsEl, pollersEl, backupEl, actorsEl);

  async function loadMetrics() {
    try {
      const m = headlines(parsePrometheus(await getText('/metrics')));
      if (closed) return;
      const card = (label, value, hint, id) => h('div.metric', { id }, h('span.metric-value', value == null ? '–' : value.toLocaleString()), h('span.metric-label', label), hint ? h('span.muted.small', hint) : null);
      const statuses = Object.entries(m.tasks).filter(([, n]) => n > 0);
      const allTasks = Object.values(m.tasks).reduce((a, b) => a + b, 0);
      const req = m.requests;
      const reqTotal = Object.values(req).reduce((a, b) => a + b, 0);
      replace(metricsEl,
        h('h2', 'Metrics'),
        h('div.metrics',
          card('tasks', allTasks, null, 'metric-tasks'),
          card('HTTP requests', reqTotal, `${(req['4xx'] || 0).toLocaleString()} 4xx · ${(req['5xx'] || 0).toLocaleString()} 5xx`, 'metric-requests'),
          card('events appended', m.events, m.batches == null ? null : `${m.batches.toLocaleString()} batches`, 'metric-events'),
          card('stream subscribers', m.subscribers, m.overflows ? `${m.overflows} dropped for falling behind` : null, 'metric-subscribers'),
          card('live actors', m.actors, null, 'metric-actors')),
        h('h3', 'Tasks by status'),
        statuses.length
          ? h('ul.plain.status-counts', statuses.map(([s, n]) => h('li', { dataset: { status: s } }, h(`span.status.s-${s}`, STATUS_WORDS[s] || s), h('strong', n.toLocaleString()))))
          : h('p.muted', 'No tasks yet.'),
        h('p.muted.small', 'From /metrics, which a Prometheus scraper reads with the admin token.'));
    } catch (e) {
      replace(metricsEl, h('h2', 'Metrics'), h('p.error', e.message));
    }
  }

  async function loadPollers() {
    try {
      const r = await get('/admin/pollers');
      if (closed) return;
      const rows = r.items.sort((a, b) => (a.key < b.key ? -1 : 1));
      replace(pollersEl,
        h('h2', 'Pollers', h('span.col-count', String(rows.length))),
        pollStatus,
        rows.length ? h('table.grid.pollers', { 'aria-label': 'Pollers' },
          h('thead', h('tr', h('th', 'Poller'), h('th', 'Kind'), h('th', 'Every'), h('th', 'Polls'), h('th', 'Last poll'), h('th', 'Last error'), h('th', h('span.visually-hidden', 'Actions')))),
          h('tbody', rows.map((p) => h('tr', { dataset: { poller: p.key } },
            h('td.wrap', { dataset: { label: 'Poller' } }, h('code', p.key)),
            h('td', { dataset: { label: 'Kind' } }, p.kind),
            h('td', { dataset: { label: 'Every' } }, seconds(p.interval_ms)),
            h('td.polls', { dataset: { label: 'Polls' } }, String(p.polls)),
            h('td', { dataset: { label: 'Last poll' } }, p.last_poll_at ? h('time', { title: when(p.last_poll_at) }, `${age(p.last_poll_at)} ago`) : 'never'),
            h('td.wrap', { dataset: { label: 'Last error' } }, p.last_error ? h('span.bad-text', p.last_error) : h('span.muted', 'none'),
              p.paused_until ? h('span.muted.small.block', `paused until ${when(p.paused_until)}`) : null),
            h('td.row-actions', { dataset: { label: 'Actions' } },
              h('button', { type: 'button', dataset: { op: 'poll' }, 'aria-label': `Poll ${p.key} now`, onclick: (e) => control(p.key, 'poll', e.currentTarget) }, 'Poll now'),
              h('button.danger', { type: 'button', dataset: { op: 'stop' }, 'aria-label': `Stop ${p.key}`, onclick: (e) => control(p.key, 'stop', e.currentTarget) }, 'Stop')))))) :
          h('p.muted', 'No pollers are running.'));
    } catch (e) {
      replace(pollersEl, h('h2', 'Pollers'), h('p.error', e.message));
    }
  }

  async function control(key, op, button) {
    if (op === 'stop' && !confirm(`Stop the poller ${key}? docs/api.md says what starts it again (a restart, a resume, a settings change…).`)) return;
    button.disabled = true;
    try {
      await post(`/admin/pollers/${key.split('/').map(encodeURIComponent).join('/')}/${op}`);
      await loadPollers();
      pollStatus.hidden = false;
      pollStatus.classList.remove('error');
      pollStatus.textContent = op === 'poll' ? `Poll requested: ${key}. Refresh to see its count.` : `Stopped: ${key}.`;
      announce(pollStatus.textContent);
    } catch (e) {
      button.disabled = false;
      pollStatus.hidden = false;
      pollStatus.classList.add('error');
      pollStatus.textContent = e.message;
    }
  }

  async function loadActors() {
    try {
      const r = await get('/admin/actors');
      if (closed) return;
      actors = r.items;
      renderActors();
    } catch (e) {
      replace(actorsEl, h('h2', 'Actors'), h('p.error', e.message));
    }
  }

  const filterInput = h('input#actor-filter', {
    type: 'search', placeholder: 'Filter by key or kind', autocomplete: 'off',
    oninput: (e) => {
      actorFilter = e.target.value.trim().toLowerCase();
      renderActors();
    },
  });
  const actorTable = h('div');
  function renderActors() {
    if (!actorsEl.contains(filterInput)) {
      replace(actorsEl, h('div.panel-head', h('h2', 'Actors', h('span.col-count#actor-count')),
        h('label.field', h('span.visually-hidden', 'Filter actors'), filterInput)), actorTable);
    }
    const shown = actors.filter((a) => !actorFilter || a.key.toLowerCase().includes(actorFilter) || a.kind.includes(actorFilter));
    actorsEl.querySelector('#actor-count').textContent = String(actors.length);
    const LIMIT = 200;
    replace(actorTable, shown.length ? h('table.grid.actors', { 'aria-label': 'Actors' },
      h('thead', h('tr', h('th', 'Actor'), h('th', 'Kind'), h('th', 'Started'), h('th', 'Last activity'), h('th', 'Backlog'))),
      h('tbody', shown.slice(0, LIMIT).map((a) => h('tr', { dataset: { actor: a.key } },
        h('td.wrap', { dataset: { label: 'Actor' } }, h('code', a.key)),
        h('td', { dataset: { label: 'Kind' } }, a.kind),
        h('td', { dataset: { label: 'Started' } }, h('time', { title: when(a.started_at) }, `${age(a.started_at)} ago`)),
        h('td', { dataset: { label: 'Last activity' } }, a.last_activity_at ? h('time', { title: when(a.last_activity_at) }, `${age(a.last_activity_at)} ago`) : '–'),
        h('td', { dataset: { label: 'Backlog' } }, a.mailbox_backlog ? h('strong.bad-text', String(a.mailbox_backlog)) : '0'))))) :
      h('p.muted', actors.length ? 'No actor matches.' : 'No live actors.'),
    shown.length > LIMIT ? h('p.muted.small', `The first ${LIMIT} of ${shown.length}: filter to narrow them.`) : null);
  }

  async function backup() {
    backupButton.disabled = true;
    backupResult.hidden = false;
    backupResult.className = 'muted';
    backupResult.textContent = 'Backing up…';
    try {
      const r = await post('/admin/db/backup');
      backupResult.className = 'saved';
      replace(backupResult, 'Written to ', h('code#backup-path', r.path), ` (${bytes(r.bytes)}).`);
      announce(`Backup written to ${r.path}`);
    } catch (e) {
      backupResult.className = 'error';
      backupResult.textContent = e.message;
    } finally {
      backupButton.disabled = false;
    }
  }

  function loadAll() {
    asOf.textContent = `as of ${new Date().toLocaleTimeString()}`;
    return Promise.all([loadMetrics(), loadPollers(), loadActors()]);
  }
  loadAll();
  return () => {
    closed = true;
  };
}

function seconds(ms) {
  return ms >= 1000 ? `${(ms / 1000).toLocaleString()} s` : `${ms} ms`;
}

function bytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${n} bytes`;
}
