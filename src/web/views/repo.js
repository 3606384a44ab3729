// One repository: its facts, its settings and setup step (forms that show the
// current values, save with PUT and show the API's own validation message), its
// branches and its pull requests (kept fresh by the stream's `branch.*` and
// `pr.*` events), and deleting it.

import { get, put, del, orgPath } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { age, when } from '../lib/format.js';

const TABS = [
  { id: 'settings', label: 'Settings' },
  { id: 'setup', label: 'Setup' },
  { id: 'branches', label: 'Branches' },
  { id: 'pulls', label: 'Pull requests' },
];

/** The settings as the form shows them: `{}` until first set, so the defaults fill in. */
export function settingsOf(repo) {
  const s = repo.settings || {};
  const a = s.automation || {};
  return {
    github: s.github || '',
    keep_after_merge: !!s.keep_after_merge,
    on_idle: { commit: !!a.on_idle?.commit, push: !!a.on_idle?.push, draft_pr: !!a.on_idle?.draft_pr },
    on_ci_failure: { enabled: !!a.on_ci_failure?.enabled, max_attempts: a.on_ci_failure?.max_attempts ?? 3 },
    archive_on_external_merge: !!a.archive_on_external_merge,
  };
}

/** The GitHub `owner/name` the repository's source URL names, if it is a github.com URL. */
function githubOfSource(source) {
  const m = /^(?:https?:\/\/github\.com\/|ssh:\/\/git@github\.com\/|git@github\.com:)([^/]+)\/([^/]+?)(?:\.git)?$/.exec(source || '');
  return m ? `${m[1]}/${m[2]}` : null;
}

export function repoView(main, app, name) {
  const store = app.store;
  const base = orgPath(app.org, `/repos/${encodeURIComponent(name)}`);
  let repo = null;
  let tab = new URLSearchParams(location.search).get('tab');
  if (!TABS.some((t) => t.id === tab)) tab = 'settings';
  const head = h('div.repo-head', h('h1', name));
  const tabs = h('div.tabs', { role: 'tablist', 'aria-label': 'Repository views' });
  const pane = h('div.pane', { role: 'tabpanel' });
  let closePane = null;

  replace(main, h('p.crumbs', h('a', { href: '/repos' }, '← Repositories')), head, tabs, pane);

  function renderHead() {
    if (!repo) return;
    const slug = repo.settings?.github || githubOfSource(repo.source);
    const delError = h('p.error', { role: 'alert', hidden: true });
    const delButton = h('button.danger', {
      type: 'button', id: 'repo-delete',
      onclick: async () => {
        if (!confirm(`Delete the repository \`${repo.name}\`? Its finished tasks and its mirror go with it; the source is not touched.`)) return;
        delButton.disabled = true;
        try {
          await del(base);
          store.repos?.delete(repo.name);
          announce(`Deleted ${repo.name}`);
          app.navigate('/repos');
        } catch (e) {
          delButton.disabled = false;
          delError.hidden = false;
          delError.textContent = e.message;
        }
      },
    }, 'Delete…');
    replace(head,
      h('div.task-title', h('h1', repo.name), h('span.status.big', repo.source_kind === 'path' ? 'Local path' : 'URL')),
      h('dl.facts',
        h('div', h('dt', 'Source'), h('dd.wrap', h('code', repo.source))),
        h('div', h('dt', 'Default branch'), h('dd', h('code', repo.default_branch))),
        h('div', h('dt', 'GitHub'), h('dd', slug || h('span.muted', 'not on GitHub'))),
        h('div', h('dt', 'Added'), h('dd', h('time', { title: when(repo.created_at) }, `${age(repo.created_at)} ago`))),
        h('div', h('a', { href: `/?repo=${encodeURIComponent(repo.name)}` }, 'Its tasks on the board'))),
      h('div.actions', delButton), delError);
  }

  function renderTabs() {
    replace(tabs, TABS.map((t) => h('button.tab', {
      type: 'button', role: 'tab', id: `tab-${t.id}`, 'aria-selected': String(tab === t.id),
      onclick: () => {
        tab = t.id;
        history.replaceState(null, '', `?tab=${t.id}`);
        renderTabs();
        renderPane();
      },
    }, t.label)));
  }

  function renderPane() {
    if (closePane) closePane();
    closePane = null;
    replace(pane);
    if (!repo) return;
    const panes = { settings: settingsPane, setup: setupPane, branches: branchesPane, pulls: pullsPane };
    closePane = panes[tab](pane, app, base, () => repo, (r) => {
      repo = r;
      if (store.repos) store.repos.set(r.name, r);
      renderHead();
    });
  }

  // The store's copy follows `repo.settings_changed` and `repo.setup_changed`.
  const unsubscribe = store.subscribe(() => {
    const fresh = store.repos?.get(name);
    if (fresh && fresh !== repo) {
      repo = fresh;
      renderHead();
    } else if (repo && store.repos && !fresh) {
      replace(head, h('h1', name), h('p.notice', 'This repository was deleted.'));
      replace(pane);
    }
  });

  renderTabs();
  get(base).then((r) => {
    repo = store.repos?.get(name) || r;
    renderHead();
    renderPane();
  }).catch((e) => {
    replace(head, h('h1', 'Repository not found'), h('p.error', e.message));
    replace(tabs);
  });
  store.loadRepos().catch(() => {});

  return () => {
    unsubscribe();
    if (closePane) closePane();
  };
}

/** A form's footer: the API's refusal, or "Saved". */
function outcome(id) {
  const error = h('p.error', { id: `${id}-error`, role: 'alert', hidden: true });
  const saved = h('p.saved', { id: `${id}-saved`, role: 'status', hidden: true });
  return {
    error, saved,
    fail(e) {
      saved.hidden = true;
      error.hidden = false;
      error.textContent = e.code === 'invalid_settings' || e.code === 'invalid_setup' || e.code === 'invalid_body'
        ? `Not saved: ${e.message}`
        : e.message;
    },
    ok(text) {
      error.hidden = true;
      saved.hidden = false;
      saved.textContent = text;
      announce(text);
    },
    clear() {
      error.hidden = true;
      saved.hidden = true;
    },
  };
}

function check(id, label, checked, hint) {
  return h('div.check-row',
    h('input', { type: 'checkbox', id, checked }),
    h('label', { for: id }, label, hint ? h('span.muted.small.block', hint) : null));
}

function settingsPane(pane, app, base, current, saved) {
  const out = outcome('settings');
  const github = h('input#rs-github', { autocomplete: 'off', spellcheck: 'false', placeholder: 'owner/name' });
  const max = h('input#rs-ci-max', { type: 'number', min: 0, max: 20, step: 1, inputmode: 'numeric' });
  const submit = h('button.primary', { type: 'submit' }, 'Save settings');
  let dirty = false;
  const boxes = {};

  function fill() {
    const s = settingsOf(current());
    github.value = s.github;
    max.value = String(s.on_ci_failure.max_attempts);
    boxes.keep.checked = s.keep_after_merge;
    boxes.commit.checked = s.on_idle.commit;
    boxes.push.checked = s.on_idle.push;
    boxes.draft.checked = s.on_idle.draft_pr;
    boxes.ci.checked = s.on_ci_failure.enabled;
    boxes.archive.checked = s.archive_on_external_merge;
    dirty = false;
  }

  const keepRow = check('rs-keep', 'Keep a task after its PR is merged through Kiln', false, 'Instead of archiving it (and removing its sandbox).');
  const commitRow = check('rs-idle-commit', 'Commit what the agent left');
  const pushRow = check('rs-idle-push', 'Push the task\'s branch');
  const draftRow = check('rs-idle-draft', 'Open a draft pull request when the task has none');
  const ciRow = check('rs-ci-enabled', 'Hand a CI failure on the task\'s PR to its agent');
  const archiveRow = check('rs-archive-external', 'Archive a task whose PR was merged or closed outside Kiln');
  Object.assign(boxes, {
    keep: keepRow.querySelector('input'), commit: commitRow.querySelector('input'), push: pushRow.querySelector('input'),
    draft: draftRow.querySelector('input'), ci: ciRow.querySelector('input'), archive: archiveRow.querySelector('input'),
  });

  const form = h('form#settings-form.card-panel.narrow-form', {
    novalidate: true,
    oninput: () => {
      dirty = true;
      out.clear();
    },
    onsubmit: async (e) => {
      e.preventDefault();
      const body = {
        keep_after_merge: boxes.keep.checked,
        automation: {
          on_idle: { commit: boxes.commit.checked, push: boxes.push.checked, draft_pr: boxes.draft.checked },
          on_ci_failure: { enabled: boxes.ci.checked, max_attempts: Number(max.value) },
          archive_on_external_merge: boxes.archive.checked,
        },
      };
      if (github.value.trim()) body.github = github.value.trim();
      // A PUT replaces every setting: keep the reactions and issue intake this form does not show.
      const reactions = current().settings?.reactions;
      if (reactions) body.reactions = reactions;
      const issues = current().settings?.issues;
      if (issues) body.issues = issues;
      if (max.value.trim() === '' || !Number.isInteger(Number(max.value)) || Number(max.value) < 0) {
        out.fail({ message: 'Not saved: the number of CI hand-overs must be a whole number from 0 to 20.' });
        max.focus();
        return;
      }
      submit.disabled = true;
      try {
        const repo = await put(`${base}/settings`, body);
        saved(repo);
        fill();
        out.ok('Settings saved.');
      } catch (err) {
        out.fail(err);
        if (/github/.test(err.message)) github.focus();
        else if (/max_attempts/.test(err.message)) max.focus();
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('h2', 'GitHub'),
  h('div.field-row', h('label', { for: 'rs-github' }, 'Repository on GitHub'), github,
    h('p.muted.small', 'owner/name, when the source URL does not say it. Blank: from the source URL.')),
  h('h2', 'After a merge'),
  keepRow,
  h('h2', 'When a task goes idle'),
  commitRow, pushRow, draftRow,
  h('h2', 'When CI fails'),
  ciRow,
  h('div.field-row.inline', h('label', { for: 'rs-ci-max' }, 'At most this many hand-overs per task'), max),
  h('h2', 'Outside Kiln'),
  archiveRow,
  out.error, out.saved,
  h('div.actions', submit, h('button.ghost', { type: 'button', onclick: () => { fill(); out.clear(); } }, 'Reset')),
  h('p.muted.small', 'Everything that makes Kiln act on its own is off until you switch it on. docs/git.md explains each switch.'));
  pane.append(form);
  fill();
  // Someone else saved: show their values unless this form has unsaved edits.
  const unsubscribe = app.store.subscribe(() => {
    if (!dirty) fill();
  });
  return unsubscribe;
}

function setupPane(pane, app, base, current, saved) {
  const out = outcome('setup');
  const commands = h('textarea#setup-commands', { rows: 6, spellcheck: 'false', placeholder: 'npm ci\ncp .env.example .env' });
  const copy = h('textarea#setup-copy', { rows: 4, spellcheck: 'false', placeholder: '.env\nconfig/local.json' });
  const submit = h('button.primary', { type: 'submit' }, 'Save setup');
  let dirty = false;
  const lines = (el) => el.value.split('\n').map((l) => l.trim()).filter(Boolean);

  function fill() {
    const s = current().setup || {};
    commands.value = (s.commands || []).join('\n');
    copy.value = (s.copy || []).join('\n');
    dirty = false;
  }

  const form = h('form#setup-form.card-panel.narrow-form', {
    novalidate: true,
    oninput: () => {
      dirty = true;
      out.clear();
    },
    onsubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      try {
        const repo = await put(`${base}/setup`, { commands: lines(commands), copy: lines(copy) });
        saved(repo);
        fill();
        out.ok('Setup saved: it applies to tasks started from now on.');
      } catch (err) {
        out.fail(err);
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('div.field-row', h('label', { for: 'setup-commands' }, 'Commands'), commands,
    h('p.muted.small', 'One shell command a line, run in each new task\'s terminal before its agent starts (at most 50).')),
  h('div.field-row', h('label', { for: 'setup-copy' }, 'Files to copy'), copy,
    h('p.muted.small', 'One path a line, relative to the checkout: untracked files copied into each new worktree from the source path (local repositories only; at most 200).')),
  out.error, out.saved,
  h('div.actions', submit, h('button.ghost', { type: 'button', onclick: () => { fill(); out.clear(); } }, 'Reset')));
  pane.append(form);
  fill();
  const unsubscribe = app.store.subscribe(() => {
    if (!dirty) fill();
  });
  return unsubscribe;
}

function branchesPane(pane, app, base, current) {
  const body = h('div', h('p.muted', 'Loading branches…'));
  pane.append(body);
  let rows = null;
  const render = () => {
    if (!rows) return;
    const def = current().default_branch;
    replace(body, rows.length ? h('table.grid.branches', { 'aria-label': 'Branches' },
      h('thead', h('tr', h('th', 'Branch'), h('th', 'Head'), h('th', `Ahead / behind ${def}`), h('th', 'Uncommitted'), h('th', 'Updated'))),
      h('tbody', rows.map((b) => h('tr', { dataset: { branch: b.name } },
        h('td.wrap', { dataset: { label: 'Branch' } }, h('code', b.name), b.name === def ? [' ', h('span.badge', 'default')] : null),
        h('td', { dataset: { label: 'Head' } }, h('code', (b.head_sha || '').slice(0, 8))),
        h('td', { dataset: { label: 'Ahead / behind' } }, b.ahead == null ? '–' : `↑${b.ahead} ↓${b.behind}`),
        h('td', { dataset: { label: 'Uncommitted' } }, b.dirty_files == null ? '–' : String(b.dirty_files)),
        h('td', { dataset: { label: 'Updated' } }, h('time', { title: when(b.updated_at) }, `${age(b.updated_at)} ago`)))))) :
      h('p.muted', 'No branches yet: the branch poller lists them after its first poll.'));
  };
  get(`${base}/branches`).then((r) => {
    rows = r.items;
    render();
  }).catch((e) => replace(body, h('p.error', e.message)));
  // The branch poller's findings arrive on the stream: apply them in place.
  const off = app.store.onEvent((ev) => {
    if (!rows || ev.repo !== current().name) return;
    const d = ev.data || {};
    if (ev.kind === 'branch.updated') {
      const row = { name: d.branch, head_sha: d.head, ahead: d.ahead ?? null, behind: d.behind ?? null, dirty_files: d.dirty_files ?? null, updated_at: ev.at };
      const i = rows.findIndex((b) => b.name === d.branch);
      if (i >= 0) rows[i] = row;
      else rows = [...rows, row].sort((a, b) => (a.name < b.name ? -1 : 1));
      render();
    } else if (ev.kind === 'branch.deleted') {
      rows = rows.filter((b) => b.name !== d.branch);
      render();
    }
  });
  return off;
}

function pullsPane(pane, app, base, current) {
  const body = h('div', h('p.muted', 'Loading pull requests…'));
  pane.append(body);
  let loading = false;
  let again = false;
  const load = () => {
    // One read at a time; a burst of events makes one more read, not many.
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    get(`${base}/pulls`).then((r) => {
      const words = { approved: 'Approved', changes_requested: 'Changes requested', review_required: 'Review required' };
      replace(body, r.items.length ? h('table.grid.pulls', { 'aria-label': 'Pull requests' },
        h('thead', h('tr', h('th', '#'), h('th', 'Title'), h('th', 'State'), h('th', 'CI'), h('th', 'Review'), h('th', 'Branches'))),
        h('tbody', r.items.map((p) => h('tr', { dataset: { pr: String(p.number) } },
          h('td', { dataset: { label: '#' } }, /^https?:\/\//.test(p.url || '') ? h('a', { href: p.url, target: '_blank', rel: 'noopener noreferrer' }, `#${p.number}`) : `#${p.number}`),
          h('td.wrap', { dataset: { label: 'Title' } }, p.title, p.draft ? [' ', h('span.badge', 'draft')] : null),
          h('td', { dataset: { label: 'State' } }, h(`span.badge.pr-${p.state}`, p.state)),
          h('td', { dataset: { label: 'CI' } }, p.ci_state ? h('span.ci-cell', h(`span.ci.ci-${p.ci_state}`, { 'aria-hidden': 'true' }), p.ci_state) : '–'),
          h('td', { dataset: { label: 'Review' } }, p.review_decision ? h(`span.review-${p.review_decision}`, words[p.review_decision] || p.review_decision) : '–'),
          h('td.wrap', { dataset: { label: 'Branches' } }, h('code', p.head_ref), ' → ', h('code', p.base_ref)))))) :
        h('p.muted', current().settings?.github || githubOfSource(current().source)
          ? 'No pull requests seen yet. The pull-request poller reads them every 30 s while the organization\'s GitHub profile has a token.'
          : 'This repository is not on GitHub: set its GitHub owner/name in Settings to follow its pull requests.'));
    }).catch((e) => replace(body, h('p.error', e.message))).finally(() => {
      loading = false;
      if (again) {
        again = false;
        load();
      }
    });
  };
  load();
  const off = app.store.onEvent((ev) => {
    if (ev.repo === current().name && ev.kind.startsWith('pr.')) load();
  });
  return off;
}
