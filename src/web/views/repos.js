// Repositories: the organization's list (live from the store), clones in flight
// with their progress (the stream's `repo.clone_*` events, as `kiln repo add`
// prints them), and a form to add one by path or URL.

import { post, orgPath } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { age, when } from '../lib/format.js';

/** git's phases in words (docs/api.md, `repo.clone_progress`). */
export function phaseWords(phase) {
  return phase ? phase.charAt(0).toUpperCase() + phase.slice(1) : 'Starting';
}

export function reposView(main, app) {
  const store = app.store;
  const source = h('input#repo-source', {
    name: 'source', required: true, autocomplete: 'off', spellcheck: 'false',
    placeholder: 'https://github.com/acme/app.git or /srv/src/app',
  });
  const name = h('input#repo-name', { name: 'name', autocomplete: 'off', spellcheck: 'false', placeholder: 'From the source' });
  const submit = h('button.primary', { type: 'submit' }, 'Add repository');
  const error = h('p.error', { role: 'alert', hidden: true });
  const status = h('div#repo-add-status.clone-log', { role: 'status', 'aria-live': 'polite', hidden: true });
  const clonesEl = h('div#clones');
  const list = h('div#repo-list');
  const summary = h('p.summary.muted');

  // The steps of the clone this page started, from the stream: the request
  // answers when git is done, and its events may arrive just before or after.
  let adding = null; // { source, name, steps: [], done: null, error: null }

  const onEvent = (ev) => {
    if (!adding || !ev.kind.startsWith('repo.') || !ev.repo) return;
    if (adding.name ? ev.repo !== adding.name : ev.kind !== 'repo.clone_started' && !adding.seen.has(ev.repo)) return;
    adding.seen.add(ev.repo);
    const d = ev.data || {};
    if (ev.kind === 'repo.clone_started') adding.steps.push({ text: `Cloning ${d.source}` });
    else if (ev.kind === 'repo.clone_progress') {
      const last = adding.steps[adding.steps.length - 1];
      if (last && last.phase === d.phase) Object.assign(last, { percent: d.percent });
      else adding.steps.push({ phase: d.phase, percent: d.percent });
    } else if (ev.kind === 'repo.registered') adding.steps.push({ text: `Registered \`${ev.repo}\` (default branch ${d.default_branch})`, ok: true });
    else if (ev.kind === 'repo.clone_failed') adding.steps.push({ text: 'The clone failed', bad: true });
    renderStatus();
  };

  function renderStatus() {
    if (!adding) {
      status.hidden = true;
      return;
    }
    status.hidden = false;
    replace(status,
      h('p.clone-head', adding.done ? adding.done : `Adding ${adding.source}…`),
      h('ol.clone-steps', adding.steps.map((s) => s.phase
        ? h('li.clone-step', { dataset: { phase: s.phase } },
            h('span.clone-phase', phaseWords(s.phase)),
            h('progress', { max: 100, value: s.percent, 'aria-label': `${phaseWords(s.phase)}: ${s.percent}%` }),
            h('span.clone-pct', `${s.percent}%`))
        : h(`li.clone-note${s.ok ? '.ok' : ''}${s.bad ? '.bad' : ''}`, s.text))));
  }

  const form = h('form#repo-add-form.card-panel', {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      error.hidden = true;
      const body = { source: source.value.trim() };
      if (name.value.trim()) body.name = name.value.trim();
      adding = { source: body.source, name: body.name || null, steps: [], done: null, seen: new Set() };
      const before = new Set(store.repos ? store.repos.keys() : []);
      renderStatus();
      submit.disabled = true;
      try {
        const repo = await post(orgPath(app.org, '/repos'), body);
        adding.name = repo.name;
        // 200: the same source was registered already; nothing was cloned.
        const again = before.has(repo.name);
        adding.done = again ? `\`${repo.name}\` was registered already, from this very source.` : `Added \`${repo.name}\`.`;
        if (store.repos) store.repos.set(repo.name, repo);
        store.changed();
        source.value = '';
        name.value = '';
        announce(adding.done);
      } catch (err) {
        adding.done = 'Not added.';
        error.hidden = false;
        error.textContent = err.message;
        source.focus();
      } finally {
        submit.disabled = false;
        renderStatus();
      }
    },
  },
  h('h2', 'Add a repository'),
  h('div.two',
    h('div.field-row', h('label', { for: 'repo-source' }, 'Source'), source,
      h('p.muted.small', 'A URL git can clone, or an absolute path on the server (the admin, or inside the server\'s allowed roots).')),
    h('div.field-row', h('label', { for: 'repo-name' }, 'Name'), name,
      h('p.muted.small', 'Optional: the last part of the source.'))),
  error,
  h('div.actions', submit),
  status);

  replace(main,
    h('div.view-head', h('h1', 'Repositories')),
    summary, clonesEl, list, form);

  function render() {
    // Clones in flight and failed ones, whoever started them (the CLI too).
    const clones = [...store.clones.values()];
    replace(clonesEl, clones.length ? h('section.card-panel.clones', { 'aria-label': 'Clones in progress' },
      h('h2', 'Cloning'),
      h('ul.plain', clones.map((c) => h('li.clone-row', { dataset: { clone: c.name } },
        h('strong', c.name), c.source ? h('span.muted.small', ` from ${c.source}`) : null,
        c.error
          ? h('p.error', c.error)
          : h('div.clone-bar', h('span.clone-phase', phaseWords(c.phase)),
              h('progress', { max: 100, value: c.percent || 0, 'aria-label': `${c.name}: ${phaseWords(c.phase)} ${c.percent || 0}%` }),
              h('span.clone-pct', `${c.percent || 0}%`)))))) : null);
    if (!store.repos) {
      summary.textContent = app.reposError ? `The repositories could not be loaded: ${app.reposError.message}` : 'Loading repositories…';
      return;
    }
    const repos = [...store.repos.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
    summary.textContent = repos.length ? `${repos.length} ${repos.length === 1 ? 'repository' : 'repositories'}` : 'No repositories yet: add one below.';
    replace(list, repos.length ? h('table.grid.repos', { 'aria-label': 'Repositories' },
      h('thead', h('tr', h('th', 'Name'), h('th', 'Source'), h('th', 'Default branch'), h('th', 'Tasks'), h('th', 'Added'))),
      h('tbody', repos.map((r) => {
        let active = 0;
        for (const t of store.tasks.values()) if (t.repo === r.name && ['queued', 'provisioning', 'running', 'idle'].includes(t.status)) active++;
        return h('tr', { dataset: { repo: r.name } },
          h('td', { dataset: { label: 'Name' } }, h('a.strong', { href: `/repos/${encodeURIComponent(r.name)}` }, r.name)),
          h('td.wrap', { dataset: { label: 'Source' } }, h('code', r.source)),
          h('td', { dataset: { label: 'Default branch' } }, h('code', r.default_branch)),
          h('td', { dataset: { label: 'Tasks' } }, h('a', { href: `/?repo=${encodeURIComponent(r.name)}` }, active ? `${active} active` : 'none active')),
          h('td', { dataset: { label: 'Added' } }, h('time', { title: when(r.created_at) }, `${age(r.created_at)} ago`)));
      }))) : null);
  }

  const off = store.onEvent(onEvent);
  const unsubscribe = store.subscribe(render);
  store.loadRepos().catch((e) => {
    app.reposError = e;
    render();
  });
  render();
  return () => {
    off();
    unsubscribe();
  };
}
