// The command palette (Ctrl+K or Cmd+K) and the keyboard shortcuts sheet (?).
// The palette finds a task by title or id and runs the page's commands: go to the
// board, create a task, the inbox, the theme, and on a task page the actions its
// status allows now (the task page's own action code, so the rules and the error
// messages are the same).

import { h, replace } from '../lib/dom.js';
import { openDialog } from '../lib/dialog.js';
import { STATUS_WORDS } from '../lib/format.js';
import { setTheme, themeChoice } from '../lib/theme.js';
import { openInbox } from './inbox.js';

const MAX_TASKS = 30;

/** The commands the page offers now, page commands (a task's actions) first. */
function commands(app) {
  const list = [];
  for (const c of app.pageCommands?.() || []) list.push(c);
  list.push(
    { id: 'board', label: 'Go to the board', keys: 'g b', run: () => app.navigate('/') },
    { id: 'new', label: 'Create a task', keys: 'n', run: () => app.navigate('/new') },
    ...(app.nav || []).filter((n) => !n.admin || app.session?.admin)
      .map((n) => ({ id: n.id, label: `Go to ${n.label}`, run: () => app.navigate(n.path) })),
    { id: 'inbox', label: 'Open the inbox', keys: 'i', run: () => openInbox(app) },
    { id: 'shortcuts', label: 'Show keyboard shortcuts', keys: '?', run: () => openShortcuts() },
  );
  const theme = themeChoice();
  for (const t of ['system', 'light', 'dark']) {
    if (t !== theme) list.push({ id: `theme-${t}`, label: `Theme: ${t === 'system' ? 'follow the system' : t}`, run: () => setTheme(t) });
  }
  return list;
}

/** Tasks whose title or id matches every word of `q`, most recently changed first. */
export function findTasks(tasks, q, max = MAX_TASKS) {
  const words = q.toLowerCase().split(/\s+/).filter(Boolean);
  const out = [];
  for (const t of tasks) {
    const title = (t.title || '').toLowerCase();
    if (words.every((w) => title.includes(w) || t.id.startsWith(w))) out.push(t);
  }
  out.sort((a, b) => b.updated_at - a.updated_at || (a.id < b.id ? -1 : 1));
  return out.slice(0, max);
}

export function openPalette(app) {
  const input = h('input#palette-input', {
    type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'Search tasks and commands…',
    role: 'combobox', 'aria-expanded': 'true', 'aria-controls': 'palette-list', 'aria-autocomplete': 'list',
    'aria-label': 'Search tasks and commands',
  });
  const list = h('ul#palette-list', { role: 'listbox', 'aria-label': 'Results' });
  const body = h('div.palette', h('div.palette-field', input), list,
    h('p.palette-foot.muted.small', h('kbd', '↑'), h('kbd', '↓'), ' to move · ', h('kbd', 'Enter'), ' to open · ', h('kbd', 'Esc'), ' to close'));
  let items = [];
  let active = 0;

  function render() {
    const q = input.value.trim().toLowerCase();
    const cmds = commands(app).filter((c) => !q || c.label.toLowerCase().includes(q));
    const tasks = app.store ? findTasks(app.store.tasks.values(), q, q ? MAX_TASKS : 8) : [];
    items = [
      ...cmds.map((c) => ({ kind: 'command', label: c.label, hint: c.keys || c.hint || '', danger: c.danger, run: c.run })),
      ...tasks.map((t) => ({
        kind: 'task', label: t.title || '(untitled)', hint: `${t.id} · ${STATUS_WORDS[t.status] || t.status}`, task: t.id,
        run: () => app.navigate(`/tasks/${t.id}`),
      })),
    ];
    // With a query, a matching task is what most people want first.
    if (q && tasks.length) items.sort((a, b) => (a.kind === 'task' ? 0 : 1) - (b.kind === 'task' ? 0 : 1));
    active = Math.min(active, Math.max(items.length - 1, 0));
    if (!items.length) {
      replace(list, h('li.empty', { role: 'presentation' }, 'Nothing matches.'));
      input.removeAttribute('aria-activedescendant');
      return;
    }
    replace(list, ...items.map((it, i) => h(`li.palette-item${it.danger ? '.danger' : ''}`, {
      id: `palette-opt-${i}`, role: 'option', 'aria-selected': String(i === active), dataset: { kind: it.kind, task: it.task },
      onmousedown: (e) => e.preventDefault(),
      onclick: () => choose(i),
    },
    h('span.palette-kind', it.kind === 'task' ? 'Task' : 'Command'),
    h('span.palette-label', it.label),
    it.hint ? h('span.palette-hint.muted', it.hint) : null)));
    input.setAttribute('aria-activedescendant', `palette-opt-${active}`);
  }

  function move(step) {
    if (!items.length) return;
    active = (active + step + items.length) % items.length;
    for (const [i, el] of [...list.children].entries()) el.setAttribute('aria-selected', String(i === active));
    input.setAttribute('aria-activedescendant', `palette-opt-${active}`);
    list.children[active]?.scrollIntoView({ block: 'nearest' });
  }

  function choose(i) {
    const it = items[i];
    if (!it) return;
    dialog.close();
    it.run();
  }

  input.addEventListener('input', () => {
    active = 0;
    render();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown') {
      e.preventDefault();
      move(1);
    } else if (e.key === 'ArrowUp') {
      e.preventDefault();
      move(-1);
    } else if (e.key === 'Enter') {
      e.preventDefault();
      choose(active);
    }
  });
  render();
  const dialog = openDialog({ id: 'palette', label: 'Command palette', className: 'palette-dialog', body, focus: input });
  return dialog;
}

/** The keyboard shortcuts sheet. */
export function openShortcuts() {
  const rows = [
    ['Ctrl K', 'Command palette: find a task, run a command (⌘ K on a Mac; not inside the terminal, which keeps Ctrl K)'],
    ['?', 'This sheet'],
    ['n', 'New task'],
    ['g then b', 'The board'],
    ['i', 'The inbox'],
    ['/', 'Search the board'],
    ['↑ ↓ ← →', 'Move between cards on the board'],
    ['Esc', 'Close a dialog'],
  ];
  const close = h('button.ghost', { type: 'button', 'aria-label': 'Close', onclick: () => dialog.close() }, '✕');
  const body = h('div.shortcuts',
    h('div.inbox-head', h('h2', 'Keyboard shortcuts'), close),
    h('dl.shortcut-list', rows.map(([k, what]) => h('div', h('dt', k.split(' ').map((p) => (p === 'then' ? ' then ' : h('kbd', p)))), h('dd', what)))));
  const dialog = openDialog({ id: 'shortcuts', label: 'Keyboard shortcuts', className: 'shortcuts-dialog', body, focus: close });
  return dialog;
}
