// Tokens (the admin's): the organization's tokens, revoked ones included; create
// one (its secret is shown once, with a copy button and a warning); revoke one
// (after a confirmation: its sessions and WebSockets end at once). The list
// follows `token.created` and `token.revoked` on the stream.

import { get, post, del, orgPath } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { age, when } from '../lib/format.js';
import { adminOnly } from './admin.js';

export function tokensView(main, app) {
  if (!app.session.admin) return adminOnly(main, app, 'Tokens');
  const org = app.org;
  const list = h('div#token-list', h('p.muted', 'Loading tokens…'));
  const name = h('input#token-name', { maxlength: 100, autocomplete: 'off', placeholder: 'ci, laptop, alice…', required: true });
  const submit = h('button.primary', { type: 'submit' }, 'Create token');
  const error = h('p.error', { role: 'alert', hidden: true });
  const created = h('div#token-created', { hidden: true });
  const listError = h('p.error', { role: 'alert', hidden: true });

  const form = h('form#token-form.card-panel', {
    novalidate: true,
    onsubmit: async (e) => {
      e.preventDefault();
      error.hidden = true;
      submit.disabled = true;
      try {
        const t = await post(orgPath(org, '/tokens'), { name: name.value });
        name.value = '';
        showCreated(t);
        load();
      } catch (err) {
        error.hidden = false;
        error.textContent = err.message;
        name.focus();
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('h2', 'Create a token'),
  h('label', { for: 'token-name' }, 'Name'),
  h('div.inline', name, submit),
  h('p.muted.small', 'A token reaches this organization only, with the API, the CLI (kiln --token) or this dashboard.'),
  error);

  replace(main,
    h('div.view-head', h('h1', 'Tokens'), h('span.org-name', org)),
    created, form, listError, list);

  /** The new secret, this once: a copy button and a warning, and no way back to it. */
  function showCreated(t) {
    const secret = h('input#token-secret', { type: 'text', readonly: true, value: t.token, spellcheck: 'false', 'aria-label': 'The new token' });
    const copied = h('span.muted.small', { role: 'status' });
    const copy = h('button.primary#token-copy', {
      type: 'button',
      onclick: async () => {
        secret.select();
        try {
          await navigator.clipboard.writeText(t.token);
          copied.textContent = 'Copied.';
        } catch (e) {
          // No clipboard access (a page served over plain http to another host): the text is selected for Ctrl+C.
          copied.textContent = document.execCommand && document.execCommand('copy') ? 'Copied.' : 'Selected: press Ctrl+C (⌘C) to copy.';
        }
      },
    }, 'Copy');
    created.hidden = false;
    replace(created, h('section.card-panel.token-once', { 'aria-labelledby': 'token-once-title' },
      h('h2#token-once-title', `Token “${t.name}” created`),
      h('p.warning', { role: 'alert' }, 'Copy it now: this is the only time Kiln shows it. Only its hash is stored; if you lose it, revoke it and create another.'),
      h('div.inline', secret, copy), copied,
      h('div.actions', h('button.ghost', { type: 'button', onclick: () => { created.hidden = true; replace(created); } }, 'I have copied it'))));
    secret.focus();
    secret.select();
    announce('Token created: copy it now, it is shown only once.');
  }

  async function revoke(t, button) {
    if (!confirm(`Revoke the token “${t.name}” (${t.id})? It stops working at once: its dashboard sessions end and its open streams and terminals close.`)) return;
    button.disabled = true;
    listError.hidden = true;
    try {
      await del(orgPath(org, `/tokens/${encodeURIComponent(t.id)}`));
      announce(`Revoked ${t.name}`);
      load();
    } catch (e) {
      button.disabled = false;
      listError.hidden = false;
      listError.textContent = e.message;
    }
  }

  function load() {
    get(orgPath(org, '/tokens')).then((r) => {
      const items = [...r.items].sort((a, b) => (!!a.revoked_at - !!b.revoked_at) || b.created_at - a.created_at);
      replace(list, items.length ? h('table.grid.tokens', { 'aria-label': 'Tokens' },
        h('thead', h('tr', h('th', 'Name'), h('th', 'Id'), h('th', 'Created'), h('th', 'State'), h('th', h('span.visually-hidden', 'Actions')))),
        h('tbody', items.map((t) => h(`tr${t.revoked_at ? '.revoked' : ''}`, { dataset: { token: t.id } },
          h('td.wrap', { dataset: { label: 'Name' } }, h('strong', t.name)),
          h('td', { dataset: { label: 'Id' } }, h('code', t.id)),
          h('td', { dataset: { label: 'Created' } }, h('time', { title: when(t.created_at) }, `${age(t.created_at)} ago`)),
          h('td', { dataset: { label: 'State' } }, t.revoked_at
            ? h('span.status', { title: when(t.revoked_at) }, `Revoked ${age(t.revoked_at)} ago`)
            : h('span.status.s-running', 'Active')),
          h('td.row-actions', { dataset: { label: 'Actions' } }, t.revoked_at ? null : h('button.danger', {
            type: 'button', dataset: { revoke: t.id }, 'aria-label': `Revoke token ${t.name}`, onclick: (e) => revoke(t, e.currentTarget),
          }, 'Revoke')))))) :
        h('p.muted', 'No tokens yet: the admin token reaches everything; create one per person or machine.'));
    }).catch((e) => replace(list, h('p.error', e.message)));
  }

  const off = app.store.onEvent((ev) => {
    if (ev.kind === 'token.created' || ev.kind === 'token.revoked') load();
  });
  load();
  name.focus();
  return off;
}
