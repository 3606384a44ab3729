// One repository: its facts, its settings (reactions and issue intake included)
// and setup step (forms that show the current values, save with PUT and show
// the API's own validation message), its
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

/** The reactions' defaults, as the API fills them in (docs/git.md, "Reactions"). */
const REACTION_DEFAULTS = {
  ci_failed: { enabled: false, max_attempts: 3 },
  changes_requested: { enabled: false, max_attempts: 3 },
  bot_comments: { enabled: false, max_attempts: 3 },
  bot_logins: [],
  merge_conflict: { enabled: false, max_attempts: 3, auto_sync: false },
  agent_stuck: { enabled: false, silent_secs: 1800, idle_without_pr_secs: 3600 },
  approved_and_green: { enabled: false, merge: false, method: 'squash' },
};

/** Issue intake's defaults, as the API fills them in (docs/git.md, "Issues in"). */
const ISSUES_DEFAULTS = { enabled: false, label: 'kiln', agent: null, max_active: 5 };

/** The settings as the form shows them: `{}` until first set, so the defaults fill in. */
export function settingsOf(repo) {
  const s = repo.settings || {};
  const a = s.automation || {};
  const r = s.reactions || {};
  const reactions = {};
  for (const [key, dflt] of Object.entries(REACTION_DEFAULTS)) {
    reactions[key] = Array.isArray(dflt) ? [...(r[key] || dflt)] : { ...dflt, ...(r[key] || {}) };
  }
  // The older `automation.on_ci_failure` still runs ci_failed when ci_failed is off: show it as such.
  if (!reactions.ci_failed.enabled && a.on_ci_failure?.enabled) {
    reactions.ci_failed = { enabled: true, max_attempts: a.on_ci_failure.max_attempts ?? 3 };
  }
  return {
    github: s.github || '',
    keep_after_merge: !!s.keep_after_merge,
    on_idle: { commit: !!a.on_idle?.commit, push: !!a.on_idle?.push, draft_pr: !!a.on_idle?.draft_pr },
    archive_on_external_merge: !!a.archive_on_external_merge,
    reactions,
    issues: { ...ISSUES_DEFAULTS, ...(s.issues || {}) },
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
      error.textContent = ['invalid_settings', 'invalid_setup', 'invalid_body', 'unknown_agent'].includes(e.code)
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

/** A whole number input, `min`–`max`. */
function numberInput(id, min, max) {
  return h(`input#${id}`, { type: 'number', min, max, step: 1, inputmode: 'numeric' });
}

function settingsPane(pane, app, base, current, saved) {
  const out = outcome('settings');
  const github = h('input#rs-github', { autocomplete: 'off', spellcheck: 'false', placeholder: 'owner/name' });
  const submit = h('button.primary', { type: 'submit' }, 'Save settings');
  let dirty = false;
  const boxes = {};

  const keepRow = check('rs-keep', 'Keep a task after its PR is merged through Kiln', false, 'Instead of archiving it (and removing its sandbox).');
  const commitRow = check('rs-idle-commit', 'Commit what the agent left');
  const pushRow = check('rs-idle-push', 'Push the task\'s branch');
  const draftRow = check('rs-idle-draft', 'Open a draft pull request when the task has none');
  const archiveRow = check('rs-archive-external', 'Archive a task whose PR was merged or closed outside Kiln');
  Object.assign(boxes, {
    keep: keepRow.querySelector('input'), commit: commitRow.querySelector('input'), push: pushRow.querySelector('input'),
    draft: draftRow.querySelector('input'), archive: archiveRow.querySelector('input'),
  });

  // Reactions: one switch each, with its own bounds; the inputs are named after the API's fields.
  const sw = (id, label, hint) => {
    const row = check(id, label, false, hint);
    row.querySelector('input').setAttribute('role', 'switch');
    return row;
  };
  const nums = {};
  // `path`: the field as the API names it in a refusal, to put the focus there.
  const field = (id, label, min, max, hint, path) => {
    nums[id] = { input: numberInput(id, min, max), label, path };
    return h('div.field-row.inline', h('label', { for: id }, label, hint ? h('span.muted.small.block', hint) : null), nums[id].input);
  };
  const attempts = (key) => field(`rx-${key}-max`, 'At most this many hand-overs per task, then escalate', 0, 20, null, `${key}.max_attempts`);
  const rows = {
    ci_failed: sw('rx-ci_failed', 'CI failed: hand each failing check to the agent',
      'Name, conclusion, link, annotations, the output\'s tail and the Actions job log\'s tail.'),
    changes_requested: sw('rx-changes_requested', 'Changes requested: hand new reviews and review comments from people to the agent'),
    bot_comments: sw('rx-bot_comments', 'Bot comments: the same for bots, in a message of their own'),
    merge_conflict: sw('rx-merge_conflict', 'Merge conflict: tell the agent which files conflict with the base',
      'From the PR, or from conflict prediction when the task has no PR.'),
    auto_sync: sw('rx-merge_conflict-auto_sync', 'Let Kiln sync first, when the rebase is clean'),
    agent_stuck: sw('rx-agent_stuck', 'Agent stuck: say so when it is silent, or idle without a PR, too long'),
    approved_and_green: sw('rx-approved_and_green', 'Approved and green: act when the PR is approved, green and mergeable'),
    merge: sw('rx-approved_and_green-merge', 'Merge it', 'Off: only say it is ready to merge.'),
  };
  const bots = h('input#rx-bot_logins', { autocomplete: 'off', spellcheck: 'false', placeholder: 'ci-helper, renovate' });
  const method = h('select#rx-approved_and_green-method',
    ['squash', 'merge', 'rebase'].map((m) => h('option', { value: m }, m)));
  const input = (row) => row.querySelector('input');

  // Issue intake: a switch, the label, the agent (`GET …/agents`; '' = null, the
  // server's default) and how many such tasks may be active at once.
  const intakeRow = sw('issues-enabled', 'Make a task of each open GitHub issue that carries the label',
    'Once per issue, oldest first; its pull request says “Closes #N”, and a comment on the issue links to it.');
  const label = h('input#issues-label', { autocomplete: 'off', spellcheck: 'false', placeholder: 'kiln' });
  const agent = h('select#issues-agent', h('option', { value: '' }, 'Server default'));
  let agents = null;
  // The options: the server's profiles, plus the saved one should it be gone from the config.
  function fillAgents(saved) {
    const list = agents || [];
    const dflt = list.find((x) => x.default);
    const options = [h('option', { value: '' }, dflt ? `Server default (${dflt.name})` : 'Server default'),
      ...list.map((x) => h('option', { value: x.name }, x.name))];
    if (saved && !list.some((x) => x.name === saved)) {
      options.push(h('option', { value: saved }, agents ? `${saved} (not on this server)` : saved));
    }
    replace(agent, ...options);
    agent.value = saved || '';
  }

  function fill() {
    const s = settingsOf(current());
    const r = s.reactions;
    github.value = s.github;
    boxes.keep.checked = s.keep_after_merge;
    boxes.commit.checked = s.on_idle.commit;
    boxes.push.checked = s.on_idle.push;
    boxes.draft.checked = s.on_idle.draft_pr;
    boxes.archive.checked = s.archive_on_external_merge;
    for (const key of ['ci_failed', 'changes_requested', 'bot_comments', 'merge_conflict', 'agent_stuck', 'approved_and_green']) {
      input(rows[key]).checked = !!r[key].enabled;
    }
    for (const key of ['ci_failed', 'changes_requested', 'bot_comments', 'merge_conflict']) {
      nums[`rx-${key}-max`].input.value = String(r[key].max_attempts);
    }
    input(rows.auto_sync).checked = !!r.merge_conflict.auto_sync;
    nums['rx-agent_stuck-silent_secs'].input.value = String(r.agent_stuck.silent_secs);
    nums['rx-agent_stuck-idle_without_pr_secs'].input.value = String(r.agent_stuck.idle_without_pr_secs);
    input(rows.merge).checked = !!r.approved_and_green.merge;
    method.value = r.approved_and_green.method;
    bots.value = r.bot_logins.join(', ');
    input(intakeRow).checked = !!s.issues.enabled;
    label.value = s.issues.label;
    fillAgents(s.issues.agent);
    nums['issues-max_active'].input.value = String(s.issues.max_active);
    dirty = false;
  }

  const block = (title, ...children) => h('fieldset.reaction', h('legend', title), ...children);
  const reactionsPart = [
    block('CI failed', rows.ci_failed, attempts('ci_failed')),
    block('Reviews', rows.changes_requested, attempts('changes_requested'), rows.bot_comments, attempts('bot_comments'),
      h('div.field-row', h('label', { for: 'rx-bot_logins' }, 'Also bots (logins, separated by commas)'), bots,
        h('p.muted.small', 'Logins ending in [bot] are bots already. Compared without case.'))),
    block('Merge conflict', rows.merge_conflict, rows.auto_sync, attempts('merge_conflict')),
    block('Agent stuck', rows.agent_stuck,
      field('rx-agent_stuck-silent_secs', 'Running without output for (seconds)', 1, 2592000, '1800 = 30 minutes', 'silent_secs'),
      field('rx-agent_stuck-idle_without_pr_secs', 'Idle without a pull request for (seconds)', 1, 2592000, '3600 = 1 hour', 'idle_without_pr_secs')),
    block('Approved and green', rows.approved_and_green, rows.merge,
      h('div.field-row.inline', h('label', { for: 'rx-approved_and_green-method' }, 'Merge method'), method)),
  ];
  const issuesPart = block('Issue intake', intakeRow,
    h('div.field-row.inline', h('label', { for: 'issues-label' }, 'Label',
      h('span.muted.small.block', 'Compared without case, as GitHub does.')), label),
    h('div.field-row.inline', h('label', { for: 'issues-agent' }, 'Agent for those tasks'), agent),
    field('issues-max_active', 'At most this many of those tasks active at once', 1, 100, 'The other issues wait their turn.', 'issues.max_active'));

  function reactionsBody() {
    const n = (id) => Number(nums[id].input.value);
    const on = (key) => input(rows[key]).checked;
    return {
      ci_failed: { enabled: on('ci_failed'), max_attempts: n('rx-ci_failed-max') },
      changes_requested: { enabled: on('changes_requested'), max_attempts: n('rx-changes_requested-max') },
      bot_comments: { enabled: on('bot_comments'), max_attempts: n('rx-bot_comments-max') },
      bot_logins: bots.value.split(/[\s,]+/).map((l) => l.trim()).filter(Boolean),
      merge_conflict: { enabled: on('merge_conflict'), max_attempts: n('rx-merge_conflict-max'), auto_sync: on('auto_sync') },
      agent_stuck: {
        enabled: on('agent_stuck'),
        silent_secs: n('rx-agent_stuck-silent_secs'),
        idle_without_pr_secs: n('rx-agent_stuck-idle_without_pr_secs'),
      },
      approved_and_green: { enabled: on('approved_and_green'), merge: on('merge'), method: method.value },
    };
  }

  const form = h('form#settings-form.card-panel.narrow-form', {
    novalidate: true,
    oninput: () => {
      dirty = true;
      out.clear();
    },
    // A select or a switch says `change`; a stream update must not undo it either.
    onchange: () => {
      dirty = true;
    },
    onsubmit: async (e) => {
      e.preventDefault();
      // Only what cannot be sent as a number is stopped here; the API judges the range.
      for (const f of Object.values(nums)) {
        const v = f.input.value.trim();
        if (v === '' || !Number.isInteger(Number(v))) {
          out.fail({ message: `Not saved: “${f.label}” must be a whole number.` });
          f.input.focus();
          return;
        }
      }
      const body = {
        keep_after_merge: boxes.keep.checked,
        automation: {
          on_idle: { commit: boxes.commit.checked, push: boxes.push.checked, draft_pr: boxes.draft.checked },
          // The older name of ci_failed: this form writes reactions.ci_failed and clears it.
          on_ci_failure: { enabled: false, max_attempts: 3 },
          archive_on_external_merge: boxes.archive.checked,
        },
        reactions: reactionsBody(),
      };
      if (github.value.trim()) body.github = github.value.trim();
      body.issues = {
        enabled: input(intakeRow).checked,
        label: label.value.trim(),
        agent: agent.value || null,
        max_active: Number(nums['issues-max_active'].input.value),
      };
      submit.disabled = true;
      try {
        const repo = await put(`${base}/settings`, body);
        saved(repo);
        fill();
        out.ok('Settings saved.');
      } catch (err) {
        out.fail(err);
        const named = Object.values(nums).find((f) => err.message.includes(f.path));
        if (/issues\.label/.test(err.message)) label.focus();
        else if (/issues\.agent/.test(err.message)) agent.focus();
        else if (/github/.test(err.message)) github.focus();
        else if (/bot_logins/.test(err.message)) bots.focus();
        else if (named) named.input.focus();
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
  h('h2', 'Reactions'),
  h('p.muted.small', 'What Kiln does on its own about a task\'s pull request or agent. Each fires once per cause; past its bound it is escalated to a person.'),
  ...reactionsPart,
  h('h2', 'Issues in'),
  h('p.muted.small', 'GitHub issues that become tasks: needs the repository on GitHub and the organization\'s GitHub token (reading issues; writing them, for the comment).'),
  issuesPart,
  h('h2', 'Outside Kiln'),
  archiveRow,
  out.error, out.saved,
  h('div.actions', submit, h('button.ghost', { type: 'button', onclick: () => { fill(); out.clear(); } }, 'Reset')),
  h('p.muted.small', 'Everything that makes Kiln act on its own is off until you switch it on. docs/git.md explains each switch.'));
  pane.append(form);
  fill();
  get(orgPath(app.org, '/agents')).then((a) => {
    agents = a.agents;
    // Keeps an unsaved choice: only the options change.
    fillAgents(dirty ? agent.value : settingsOf(current()).issues.agent);
  }).catch(() => {});
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
