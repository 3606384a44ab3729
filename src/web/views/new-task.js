// New task: repository, base branch (the branches API), agent profile and
// provider (the agents API), title and description. Creating opens the task.

import { get, post, orgPath } from '../lib/api.js';
import { h, replace } from '../lib/dom.js';

export function newTaskView(main, app) {
  const org = app.org;
  const error = h('p.error', { role: 'alert', hidden: true });
  const repo = h('select#nt-repo', { name: 'repo', required: true }, h('option', { value: '' }, 'Loading…'));
  const base = h('select#nt-base', { name: 'base_branch' }, h('option', { value: '' }, 'Default branch'));
  const agent = h('select#nt-agent', { name: 'agent' });
  const provider = h('select#nt-provider', { name: 'provider' });
  const title = h('input#nt-title', { name: 'title', maxlength: 200, autocomplete: 'off', placeholder: 'From the first line of the description' });
  const description = h('textarea#nt-description', { name: 'description', required: true, rows: 8, placeholder: 'What should the agent do?' });
  const submit = h('button.primary', { type: 'submit' }, 'Create task');
  let repos = [];

  const field = (id, label, control, hint) =>
    h('div.field-row', h('label', { for: id }, label), control, hint ? h('p.muted.small', hint) : null);

  const show = (e) => {
    error.hidden = false;
    error.textContent = e.message;
  };

  async function loadBranches() {
    const r = repos.find((x) => x.name === repo.value);
    replace(base, h('option', { value: '' }, r ? `Default (${r.default_branch})` : 'Default branch'));
    if (!r) return;
    try {
      const branches = await get(orgPath(org, `/repos/${encodeURIComponent(r.name)}/branches`));
      const names = branches.items.map((b) => b.name).filter((n) => !n.startsWith('kiln/'));
      replace(base, h('option', { value: '' }, `Default (${r.default_branch})`),
        ...names.filter((n) => n !== r.default_branch).map((n) => h('option', { value: n }, n)));
    } catch (e) {
      show(e);
    }
  }
  repo.addEventListener('change', loadBranches);

  const form = h('form.card-panel.new-task-form', {
    onsubmit: async (e) => {
      e.preventDefault();
      error.hidden = true;
      submit.disabled = true;
      const body = { repo: repo.value, description: description.value };
      if (title.value.trim()) body.title = title.value.trim();
      if (base.value) body.base_branch = base.value;
      if (agent.value) body.agent = agent.value;
      if (provider.value) body.provider = provider.value;
      try {
        const task = await post(orgPath(org, '/tasks'), body);
        app.store.apply({ id: 0, kind: 'task.created', task: task.id, repo: task.repo, at: task.created_at, data: task });
        app.navigate(`/tasks/${task.id}`);
      } catch (err) {
        submit.disabled = false;
        show(err);
      }
    },
  },
  field('nt-repo', 'Repository', repo),
  field('nt-base', 'Base branch', base),
  h('div.two',
    field('nt-agent', 'Agent', agent),
    field('nt-provider', 'Provider', provider)),
  field('nt-title', 'Title', title, 'Optional: blank takes the first line of the description.'),
  field('nt-description', 'Description', description),
  error,
  h('div.actions', submit, h('a.button.ghost', { href: '/' }, 'Cancel')));

  replace(main, h('div.narrow', h('h1', 'New task'), form));

  Promise.all([get(orgPath(org, '/repos')), get(orgPath(org, '/agents'))]).then(([r, a]) => {
    repos = r.items;
    if (!repos.length) {
      replace(repo, h('option', { value: '' }, 'No repositories yet'));
      show({ message: 'This organization has no repositories: add one with `kiln repo add` first.' });
    } else {
      replace(repo, ...repos.map((x) => h('option', { value: x.name }, x.name)));
      loadBranches();
    }
    replace(agent, ...a.agents.map((x) => h('option', { value: x.name, selected: x.default }, x.name + (x.sessions ? ' (sessions)' : ''))));
    replace(provider, ...a.providers.map((x) => h('option', { value: x.name, selected: x.default, disabled: !x.available }, x.name + (x.available ? '' : ' (not on this server)'))));
  }).catch(show);
  description.focus();
  return () => {};
}
