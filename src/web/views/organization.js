// The organization: its display name, the admin's switcher (every
// organization), and its provider profiles with their secrets, which are
// write-only: the page shows which are set, never a value, and sets, replaces or
// clears one at a time.

import { get, put, patch, orgPath } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { age, when } from '../lib/format.js';

/** The profiles and what each is for (docs/api.md, "Provider profiles"). */
const PROVIDERS = [
  { name: 'github', title: 'GitHub', hint: 'Read by pr, merge, push and sync, and by the pull-request poller. Never given to agents.', secrets: ['token', 'webhook_secret'], config: 'api_url' },
  { name: 'worktree', title: 'Worktree sandboxes', hint: 'Its secrets reach every agent of this organization\'s worktree tasks as environment variables.', secrets: [], config: null },
  { name: 'daytona', title: 'Daytona', hint: 'Stored for a Daytona provider; this server offers none yet.', secrets: [], config: 'json' },
];

export function organizationView(main, app) {
  const org = app.org;
  const headEl = h('div.view-head', h('h1', 'Organization'));
  const orgPanel = h('section.card-panel', h('p.muted', 'Loading…'));
  const switcher = app.session.admin ? h('section.card-panel#org-switcher', h('p.muted', 'Loading organizations…')) : null;
  const providers = h('div.providers');
  replace(main, headEl, orgPanel, switcher, h('h2.section-title', 'Provider secrets'),
    h('p.muted.small', 'Secrets are write-only: Kiln shows which are set, never their values. Setting one replaces it; they are stored in the server\'s database (and its backups).'),
    providers);

  // The display name.
  function renderOrg(o) {
    const input = h('input#org-display-name', { value: o.display_name || '', maxlength: 200, autocomplete: 'off' });
    const error = h('p.error', { role: 'alert', hidden: true });
    const saved = h('p.saved', { role: 'status', hidden: true });
    const submit = h('button.primary', { type: 'submit' }, 'Save');
    replace(orgPanel,
      h('div.task-title', h('h2', o.display_name || o.name), h('code.muted', o.name)),
      h('p.muted.small', { title: when(o.created_at) }, `Created ${age(o.created_at)} ago`),
      h('form.inline-form', {
        novalidate: true,
        onsubmit: async (e) => {
          e.preventDefault();
          submit.disabled = true;
          error.hidden = true;
          try {
            const fresh = await patch(orgPath(org, ''), { display_name: input.value.trim() });
            renderOrg(fresh);
            announce('Display name saved.');
          } catch (err) {
            error.hidden = false;
            error.textContent = err.message;
            saved.hidden = true;
          } finally {
            submit.disabled = false;
          }
        },
      }, h('label', { for: 'org-display-name' }, 'Display name'), h('div.inline', input, submit)),
      error, saved);
  }

  function loadOrg() {
    get(orgPath(org, '')).then(renderOrg).catch((e) => replace(orgPanel, h('p.error', e.message)));
  }

  // The admin's switcher: every organization, the current one marked.
  function loadOrgs() {
    if (!switcher) return;
    get('/v1/organizations').then((r) => {
      replace(switcher,
        h('h2', 'All organizations'),
        h('p.muted.small', 'You are the admin: switch to any organization. The board, repositories and tokens follow.'),
        h('ul.plain.org-list', r.items.map((o) => h('li', { dataset: { org: o.name } },
          h('span', h('strong', o.display_name || o.name), ' ', h('code.muted', o.name)),
          o.name === app.org
            ? h('span.badge', 'current')
            : h('button', { type: 'button', onclick: () => switchTo(o.name) }, 'Switch')))));
    }).catch((e) => replace(switcher, h('p.error', e.message)));
  }

  function switchTo(name) {
    const select = document.getElementById('org-select');
    if (select) {
      select.value = name;
      select.dispatchEvent(new Event('change'));
    }
  }

  const cards = new Map();
  for (const p of PROVIDERS) {
    const card = h('section.card-panel.provider', { id: `provider-${p.name}`, 'aria-labelledby': `provider-${p.name}-title` });
    providers.append(card);
    cards.set(p.name, card);
    loadProvider(p);
  }

  function loadProvider(p) {
    get(orgPath(org, `/providers/${p.name}`))
      .then((profile) => renderProvider(p, profile))
      .catch((e) => replace(cards.get(p.name), h('h2', p.title), h('p.error', e.message)));
  }

  function renderProvider(p, profile) {
    const card = cards.get(p.name);
    const error = h('p.error', { role: 'alert', hidden: true });
    const done = h('p.saved', { role: 'status', hidden: true });
    const fail = (e) => {
      done.hidden = true;
      error.hidden = false;
      error.textContent = e.message;
    };
    // `config` is replaced as a whole by every PUT: send the one shown.
    const save = async (body, text) => {
      try {
        const fresh = await put(orgPath(org, `/providers/${p.name}`), { config: profile.config || {}, ...body });
        renderProvider(p, fresh);
        cards.get(p.name).querySelector('.saved').hidden = false;
        cards.get(p.name).querySelector('.saved').textContent = text;
        announce(text);
      } catch (e) {
        fail(e);
      }
    };

    const secretName = h('input', { id: `secret-name-${p.name}`, autocomplete: 'off', spellcheck: 'false', placeholder: p.secrets[0] || 'API_KEY', list: p.secrets.length ? `secret-names-${p.name}` : null });
    const secretValue = h('input', { id: `secret-value-${p.name}`, type: 'password', autocomplete: 'new-password', spellcheck: 'false', placeholder: 'Value' });
    const setButton = h('button.primary', { type: 'submit' }, 'Set secret');
    const secretForm = h('form.secret-form', {
      novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const key = secretName.value.trim();
        if (!key || !secretValue.value) {
          fail({ message: 'Give the secret a name and a value (to remove one, use its Clear button).' });
          return;
        }
        setButton.disabled = true;
        const replacing = profile.secrets.includes(key);
        await save({ secrets: { [key]: secretValue.value } }, replacing ? `Secret ${key} replaced.` : `Secret ${key} set.`);
        secretValue.value = '';
        setButton.disabled = false;
      },
    },
    h('div.secret-inputs',
      h('div.field-row', h('label', { for: `secret-name-${p.name}` }, 'Name'), secretName),
      h('div.field-row', h('label', { for: `secret-value-${p.name}` }, 'Value'), secretValue),
      h('div.field-row', h('span.label-spacer', { 'aria-hidden': 'true' }, ' '), setButton)),
    p.secrets.length ? h('datalist', { id: `secret-names-${p.name}` }, p.secrets.map((s) => h('option', { value: s }))) : null);

    let configForm = null;
    if (p.config === 'api_url') {
      const url = h('input', { id: `config-${p.name}-api_url`, value: profile.config?.api_url || '', placeholder: 'https://api.github.com', autocomplete: 'off', spellcheck: 'false' });
      configForm = h('form.inline-form', {
        novalidate: true,
        onsubmit: (e) => {
          e.preventDefault();
          const config = { ...(profile.config || {}) };
          if (url.value.trim()) config.api_url = url.value.trim();
          else delete config.api_url;
          save({ config }, 'Settings saved.');
        },
      }, h('label', { for: `config-${p.name}-api_url` }, 'API URL'), h('div.inline', url, h('button', { type: 'submit' }, 'Save')),
      h('p.muted.small', 'Blank: https://api.github.com. For GitHub Enterprise, e.g. https://ghe.example.com/api/v3.'));
    } else if (p.config === 'json') {
      const text = h('textarea', { id: `config-${p.name}`, rows: 3, spellcheck: 'false' });
      text.value = JSON.stringify(profile.config || {}, null, 2);
      configForm = h('form.inline-form', {
        novalidate: true,
        onsubmit: (e) => {
          e.preventDefault();
          let config;
          try {
            config = JSON.parse(text.value || '{}');
          } catch (err) {
            fail({ message: `Settings must be a JSON object: ${err.message}` });
            return;
          }
          save({ config }, 'Settings saved.');
        },
      }, h('label', { for: `config-${p.name}` }, 'Settings (JSON)'), text, h('div.actions', h('button', { type: 'submit' }, 'Save settings')));
    }

    replace(card,
      h('div.provider-head', h('h2', { id: `provider-${p.name}-title` }, p.title), h('code.muted', p.name),
        profile.updated_at ? h('span.muted.small', `updated ${age(profile.updated_at)} ago`) : null),
      h('p.muted.small', p.hint),
      h('ul.plain.secrets', { 'aria-label': `${p.title} secrets` },
        profile.secrets.length
          ? profile.secrets.map((s) => h('li.secret', { dataset: { secret: s } },
              h('code', s), h('span.badge.set', 'set'), h('span.muted.small', '••••••••'),
              h('button.ghost.danger', {
                type: 'button', 'aria-label': `Clear secret ${s}`,
                onclick: () => {
                  if (confirm(`Clear the secret ${s} of ${p.title}? What reads it stops getting it.`)) save({ secrets: { [s]: null } }, `Secret ${s} cleared.`);
                },
              }, 'Clear')))
          : h('li.muted', 'No secrets set.')),
      secretForm, configForm, error, done);
  }

  const off = app.store.onEvent((ev) => {
    if (ev.kind === 'provider.updated') {
      const p = PROVIDERS.find((x) => x.name === ev.data?.provider);
      // Our own save re-rendered already; another browser's or the CLI's shows now.
      if (p && !cards.get(p.name).contains(document.activeElement)) loadProvider(p);
    } else if (ev.kind === 'organization.updated') {
      loadOrg();
    }
  });
  loadOrg();
  loadOrgs();
  return off;
}
