// The dashboard's entry: who is signed in, the shell (header, navigation), the
// router, and the organization's store that every view reads.

import { api, get, del, ApiError } from './lib/api.js';
import { h, replace } from './lib/dom.js';
import { Store, needsYou } from './lib/store.js';
import { signInView } from './views/sign-in.js';
import { boardView } from './views/board.js';
import { newTaskView } from './views/new-task.js';
import { taskView } from './views/task.js';
import { Inbox } from './lib/attention.js';
import { dialogOpen, closeDialog } from './lib/dialog.js';
import { applyTheme, setTheme, themeChoice, THEMES } from './lib/theme.js';
import { inboxButton, openInbox, updateInboxButton } from './views/inbox.js';
import { openPalette, openShortcuts } from './views/palette.js';
import { reposView } from './views/repos.js';
import { repoView } from './views/repo.js';
import { organizationView } from './views/organization.js';
import { tokensView } from './views/tokens.js';
import { adminView } from './views/admin.js';

applyTheme();

const app = {
  session: null,
  org: null,
  store: null,
  inbox: null,
  // The current page's own commands for the palette (the task page's actions).
  pageCommands: null,
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
  closeDialog();
  if (app.inbox) app.inbox.stop();
  app.inbox = null;
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
  if (app.inbox) app.inbox.stop();
  if (app.store) app.store.stop();
  app.org = org;
  app.store = new Store(org);
  app.store.subscribe(updateTitle);
  // The inbox and its read marks are the organization's (GET …/inbox).
  app.inbox = new Inbox(app.store, {
    // No notification for what the person is looking at now.
    isWatching: (task) => !document.hidden && document.hasFocus() && location.pathname === `/tasks/${task}`,
    open: (entry) => {
      app.inbox?.markRead(entry);
      if (entry.task) navigate(`/tasks/${entry.task}`);
    },
  });
  app.inbox.subscribe(() => updateInboxButton(app));
  app.inbox.load().catch(() => {});
  app.store.start().catch((e) => {
    app.storeError = e;
    app.store.changed();
  });
}

function updateTitle() {
  if (!app.store) return;
  let n = 0;
  for (const t of app.store.tasks.values()) if (needsYou(t)) n++;
  // Writes only what changed: this runs on every frame the stream changes something.
  const title = n ? `(${n}) Kiln` : 'Kiln';
  if (document.title !== title) document.title = title;
  const badge = document.getElementById('needs-count');
  if (badge && badge.textContent !== (n ? String(n) : '')) badge.textContent = n ? String(n) : '';
  const live = document.getElementById('live');
  if (live) {
    const text = app.store.connected ? 'Live' : app.store.loaded ? 'Reconnecting…' : 'Loading…';
    const cls = `live ${app.store.connected ? 'on' : 'off'}`;
    if (live.textContent !== text) live.textContent = text;
    if (live.className !== cls) live.className = cls;
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
    h('button.ghost.icon-button#palette-button', {
      type: 'button', 'aria-haspopup': 'dialog', 'aria-keyshortcuts': 'Control+K Meta+K', title: 'Commands (Ctrl+K)',
      'aria-label': 'Command palette', onclick: () => openPalette(app),
    }, searchIcon(), h('span.kbd-hint', { 'aria-hidden': 'true' }, /Mac|iPhone|iPad/.test(navigator.platform) ? '⌘K' : 'Ctrl K')),
    inboxButton(app),
    themeButton(),
    h('button.ghost#sign-out', { type: 'button', onclick: signOut }, 'Sign out'));
  // At phone width the navigation is a strip that scrolls: keep the current view in sight.
  requestAnimationFrame(() => {
    const nav = header.querySelector('.nav');
    const here = nav?.querySelector('[aria-current="page"]');
    if (nav && here && nav.scrollWidth > nav.clientWidth) nav.scrollLeft = here.offsetLeft - nav.offsetLeft - 8;
  });
  return [header, main, h('div#announce.visually-hidden', { 'aria-live': 'polite' })];
}

/** A magnifier, drawn (no icon font). */
function searchIcon() {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  for (const [k, v] of Object.entries({ viewBox: '0 0 16 16', width: '16', height: '16', 'aria-hidden': 'true', class: 'icon', fill: 'none', stroke: 'currentColor', 'stroke-width': '1.6' })) svg.setAttribute(k, v);
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', 'M7 2.5a4.5 4.5 0 1 1 0 9 4.5 4.5 0 0 1 0-9Zm3.3 7.8 3.4 3.4');
  path.setAttribute('stroke-linecap', 'round');
  svg.append(path);
  return svg;
}

/** Cycles the theme: system → light → dark. */
function themeButton() {
  const button = h('button.ghost.icon-button#theme-button', { type: 'button' });
  button.addEventListener('click', () => setTheme(THEMES[(THEMES.indexOf(themeChoice()) + 1) % THEMES.length]));
  showTheme(button);
  return button;
}

function showTheme(button) {
  if (!button) return;
  const words = { system: 'Theme: system', light: 'Theme: light', dark: 'Theme: dark' };
  const glyph = { system: '◐', light: '☀', dark: '☾' };
  const t = themeChoice();
  button.textContent = glyph[t];
  button.setAttribute('aria-label', `${words[t]} (change)`);
  button.title = words[t];
}
// One listener for the page (the header is rebuilt on every route): the palette changes the theme too.
window.addEventListener('kiln:theme', () => showTheme(document.getElementById('theme-button')));

/** The views after Board and New task; admin-only ones are not shown to an organization's token. */
const NAV = [
  { id: 'repos', path: '/repos', label: 'Repositories' },
  { id: 'organization', path: '/organization', label: 'Organization' },
  { id: 'tokens', path: '/tokens', label: 'Tokens', admin: true },
  { id: 'admin', path: '/server', label: 'Admin', admin: true },
];
// The palette offers the same views.
app.nav = NAV;

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
  app.pageCommands = null;
  closeDialog();
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
  updateInboxButton(app);
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

// Shortcuts: Ctrl+K / Cmd+K = palette, ? = shortcuts, n = new task, g then b =
// board, i = inbox, / = search (the board's own).
let lastKey = '';
document.addEventListener('keydown', (e) => {
  // Ctrl+K works in inputs too, but not in the terminal: it is readline's kill-line there.
  if ((e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey && e.key.toLowerCase() === 'k' && app.session && app.store) {
    if (e.target.closest?.('.xterm')) return;
    e.preventDefault();
    if (document.getElementById('palette')) closeDialog();
    else openPalette(app);
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const typing = e.target.closest?.('input, textarea, select, [contenteditable], .xterm');
  if (typing || dialogOpen()) return;
  if (e.key === '?' && app.session) {
    e.preventDefault();
    openShortcuts();
  } else if (e.key === 'i' && app.session && app.inbox) {
    e.preventDefault();
    openInbox(app);
  } else if (e.key === 'n' && app.session) {
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
