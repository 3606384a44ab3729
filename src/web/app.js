// The dashboard's entry: who is signed in, the shell (header, navigation), the
// router, and the organization's store that every view reads.

import { api, get, del, ApiError } from './lib/api.js';
import { h, replace } from './lib/dom.js';
import { Store, needsYou } from './lib/store.js';
import { signInView } from './views/sign-in.js';
import { boardView } from './views/board.js';
import { newTaskView } from './views/new-task.js';
import { taskView } from './views/task.js';
import { reposView } from './views/repos.js';
import { repoView } from './views/repo.js';
import { organizationView } from './views/organization.js';
import { tokensView } from './views/tokens.js';
import { adminView } from './views/admin.js';

const app = {
  session: null,
  org: null,
  store: null,
  cleanup: null,
  navigate,
};

function navigate(path, { replace: rep = false } = {}) {
  if (rep) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  route();
}

// Same-origin links go through the router, not a page load.
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[href]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || a.target || a.hasAttribute('download') || url.pathname.startsWith('/v1/')) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener('popstate', () => route());
window.addEventListener('kiln:signed-out', () => {
  if (!app.session) return;
  signedOut('Your session has ended: sign in again.');
});

function signedOut(message) {
  app.session = null;
  if (app.store) app.store.stop();
  app.store = null;
  navigate(`/sign-in${message ? '?ended=1' : ''}`, { replace: true });
}

async function whoAmI() {
  try {
    return await get('/v1/dashboard/session');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null;
    throw e;
  }
}

/** Opens the organization's store (once per organization). */
function useOrg(org) {
  if (app.store && app.org === org) return;
  if (app.store) app.store.stop();
  app.org = org;
  app.store = new Store(org);
  app.store.subscribe(updateTitle);
  app.store.start().catch((e) => {
    app.storeError = e;
    app.store.changed();
  });
}

function updateTitle() {
  if (!app.store) return;
  let n = 0;
  for (const t of app.store.tasks.values()) if (needsYou(t)) n++;
  document.title = n ? `(${n}) Kiln` : 'Kiln';
  const badge = document.getElementById('needs-count');
  if (badge) badge.textContent = n ? String(n) : '';
  const live = document.getElementById('live');
  if (live) {
    live.textContent = app.store.connected ? 'Live' : app.store.loaded ? 'Reconnecting…' : 'Loading…';
    live.className = `live ${app.store.connected ? 'on' : 'off'}`;
  }
}

function shell(main) {
  const s = app.session;
  const orgPicker = s.admin
    ? h('label.org-picker', h('span.visually-hidden', 'Organization'),
        (() => {
          const select = h('select#org-select', { 'aria-label': 'Organization', onchange: (e) => { useOrg(e.target.value); navigate(samePageAfterSwitch()); } },
            h('option', { value: app.org, selected: true }, app.org));
          get('/v1/organizations').then((r) => {
            replace(select, ...r.items.map((o) => h('option', { value: o.name, selected: o.name === app.org }, o.display_name || o.name)));
          }).catch(() => {});
          return select;
        })())
    : h('span.org-name', { title: 'Organization' }, app.org);
  const header = h('header.topbar',
    h('a.brand', { href: '/', 'aria-label': 'Kiln board' }, h('span.logo', { 'aria-hidden': 'true' }, 'K'), h('span.brand-name', 'Kiln')),
    orgPicker,
    h('nav.nav', { 'aria-label': 'Main' },
      h('a', { href: '/', 'aria-current': location.pathname === '/' ? 'page' : null }, 'Board', h('span#needs-count.count', { 'aria-label': 'tasks that need you' })),
      h('a', { href: '/new', 'aria-current': location.pathname === '/new' ? 'page' : null, 'aria-keyshortcuts': 'n' }, 'New task'),
      NAV.filter((n) => !n.admin || s.admin).map((n) => h('a', {
        href: n.path, dataset: { nav: n.id }, 'aria-current': current(n.path) ? 'page' : null,
      }, n.label))),
    h('span#live.live.off', { role: 'status' }, 'Loading…'),
    h('button.ghost#sign-out', { type: 'button', onclick: signOut }, 'Sign out'));
  // At phone width the navigation is a strip that scrolls: keep the current view in sight.
  requestAnimationFrame(() => {
    const nav = header.querySelector('.nav');
    const here = nav?.querySelector('[aria-current="page"]');
    if (nav && here && nav.scrollWidth > nav.clientWidth) nav.scrollLeft = here.offsetLeft - nav.offsetLeft - 8;
  });
  return [header, main, h('div#announce.visually-hidden', { 'aria-live': 'polite' })];
}

/** The views after Board and New task; admin-only ones are not shown to an organization's token. */
const NAV = [
  { id: 'repos', path: '/repos', label: 'Repositories' },
  { id: 'organization', path: '/organization', label: 'Organization' },
  { id: 'tokens', path: '/tokens', label: 'Tokens', admin: true },
  { id: 'admin', path: '/server', label: 'Admin', admin: true },
];

/** A percent-decoded path segment; a malformed one is kept as it is (and is not found). */
function decodePart(part) {
  try {
    return decodeURIComponent(part);
  } catch (e) {
    return part;
  }
}

function current(path) {
  return location.pathname === path || location.pathname.startsWith(`${path}/`);
}

/** Where the organization switcher goes: the same view when it is not one organization's object. */
function samePageAfterSwitch() {
  return ['/repos', '/organization', '/tokens', '/server', '/new'].includes(location.pathname) ? location.pathname : '/';
}

async function signOut() {
  try {
    await del('/v1/dashboard/session');
  } catch (e) {
    // Signed out already.
  }
  signedOut(null);
}

async function route() {
  const root = document.getElementById('app');
  if (app.cleanup) {
    app.cleanup();
    app.cleanup = null;
  }
  const path = location.pathname;
  if (path === '/sign-in') {
    if (!app.session) app.session = await whoAmI();
    if (app.session && !new URLSearchParams(location.search).has('code')) return navigate('/', { replace: true });
    const main = h('main#main.page.narrow');
    replace(root, main);
    app.cleanup = signInView(main, app, async () => {
      app.session = await whoAmI();
      navigate('/', { replace: true });
    });
    return;
  }
  if (!app.session) app.session = await whoAmI();
  if (!app.session) return navigate('/sign-in', { replace: true });
  useOrg(app.org && app.session.admin ? app.org : app.session.organization || 'default');
  const main = h('main#main.page');
  replace(root, ...shell(main));
  updateTitle();
  const task = path.match(/^\/tasks\/([0-9a-f]{8})$/);
  if (path === '/') app.cleanup = boardView(main, app);
  else if (path === '/new') app.cleanup = newTaskView(main, app);
  else if (task) app.cleanup = taskView(main, app, task[1]);
  else if (path === '/repos') app.cleanup = reposView(main, app);
  else if (path.startsWith('/repos/') && path.split('/').length === 3) app.cleanup = repoView(main, app, decodePart(path.slice(7)));
  else if (path === '/organization') app.cleanup = organizationView(main, app);
  else if (path === '/tokens') app.cleanup = tokensView(main, app);
  else if (path === '/server') app.cleanup = adminView(main, app);
  else replace(main, h('h1', 'Not found'), h('p', 'There is no page here. ', h('a', { href: '/' }, 'Back to the board.')));
  main.focus?.();
}

// Shortcuts: n = new task, g then b = board, / = search (the board's own).
let lastKey = '';
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const typing = e.target.closest?.('input, textarea, select, [contenteditable], .xterm');
  if (typing) return;
  if (e.key === 'n' && app.session) {
    e.preventDefault();
    navigate('/new');
  } else if (e.key === 'b' && lastKey === 'g' && app.session) {
    navigate('/');
  }
  lastKey = e.key;
});

route().catch((e) => {
  replace(document.getElementById('app'), h('main#main.page', h('h1', 'Kiln could not start'), h('p.error', e.message)));
});
