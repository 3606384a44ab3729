// The task's Changes pane, with its review: the diff against the base
// (GET …/diff: committed, uncommitted and untracked files), unified or split,
// and comments on its lines that "Send to agent" delivers as one message
// (POST …/review). The diff is fetched again when the task's events say its
// worktree or head moved; no timers. Big diffs stay responsive: a file's lines
// are only built when it is open, and files past the first few thousand lines
// start closed.

import { get, post, orgPath } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { plural } from '../lib/format.js';

/** Files are opened, in order, until this many lines are shown. */
const OPEN_LINES = 3000;
/** A file with more lines than this starts closed whatever the budget. */
const OPEN_FILE_LINES = 1500;
/** Events after which the worktree or its base may differ. */
const TASK_KINDS = new Set(['task.committed', 'task.synced', 'task.status_changed', 'task.merged', 'task.snapshot_saved']);

const STATUS_LABEL = { added: 'Added', modified: 'Modified', deleted: 'Deleted', renamed: 'Renamed', copied: 'Copied', type_changed: 'Type changed' };

/** Pending comments live in the tab's session storage: a reload keeps the draft. */
function draftKey(org, id) {
  return `kiln.review.${org}.${id}`;
}

export function changesPane(pane, app, id) {
  const key = draftKey(app.org, id);
  const state = {
    diff: null,
    view: localStorage.getItem('kiln.diff.view') === 'split' ? 'split' : 'unified',
    open: new Map(), // path -> open?
    comments: loadDraft(key),
    // Comment boxes open but not added yet, by line (formKey): their unsent text
    // outlives every redraw of the diff (a branch.updated, a refresh, a layout switch).
    forms: new Map(),
    note: '',
    loading: false,
    again: false,
    closed: false,
  };

  const summary = h('p.diff-summary', { id: 'diff-summary', 'aria-live': 'polite' }, 'Loading the changes…');
  const viewButtons = ['unified', 'split'].map((v) => h('button.ghost', {
    type: 'button', 'aria-pressed': String(state.view === v), dataset: { view: v },
    onclick: () => { state.view = v; localStorage.setItem('kiln.diff.view', v); syncViewButtons(); renderFiles(); },
  }, v === 'unified' ? 'Unified' : 'Split'));
  const refresh = h('button', { type: 'button', id: 'diff-refresh', onclick: () => load() }, 'Refresh');
  const toolbar = h('div.diff-toolbar',
    summary,
    h('div.diff-controls', h('div.segmented', { role: 'group', 'aria-label': 'Diff layout' }, viewButtons), refresh));
  const notice = h('p.notice.diff-notice', { id: 'diff-truncated', hidden: true });
  const error = h('p.error', { role: 'alert', hidden: true });
  const files = h('div.diff-files', { id: 'diff-files' });
  const review = h('aside.review-panel', { id: 'review', 'aria-label': 'Review' });
  replace(pane, h('div.changes', h('div.changes-main', toolbar, notice, error, files), review));

  function syncViewButtons() {
    for (const b of viewButtons) b.setAttribute('aria-pressed', String(b.dataset.view === state.view));
  }

  async function load() {
    if (state.loading) {
      state.again = true;
      return;
    }
    state.loading = true;
    refresh.disabled = true;
    refresh.textContent = 'Refreshing…';
    const started = performance.now();
    try {
      const diff = await get(orgPath(app.org, `/tasks/${id}/diff`));
      if (state.closed) return;
      const fetched = performance.now();
      state.diff = diff;
      error.hidden = true;
      renderSummary();
      renderFiles();
      // What a measurement reads (docs/performance.md): fetch, and DOM built
      // through the next frame.
      requestAnimationFrame(() => {
        files.dataset.fetchMs = String(Math.round(fetched - started));
        files.dataset.renderMs = String(Math.round(performance.now() - fetched));
        files.dataset.loaded = String((Number(files.dataset.loaded) || 0) + 1);
      });
    } catch (e) {
      if (state.closed) return;
      error.hidden = false;
      error.textContent = e.code === 'no_worktree' ? `No changes to show: ${e.message}` : `The changes could not be loaded: ${e.message}`;
      if (!state.diff) replace(summary, 'No diff.');
    } finally {
      state.loading = false;
      refresh.disabled = false;
      refresh.textContent = 'Refresh';
      if (state.again && !state.closed) {
        state.again = false;
        load();
      }
    }
  }

  function renderSummary() {
    const d = state.diff;
    const n = d.files.length;
    replace(summary,
      n ? h('strong', plural(n + d.omitted_files, 'file')) : h('strong', 'No changes'),
      n ? [' changed · ', h('span.add-count', `+${d.additions}`), ' ', h('span.del-count', `−${d.deletions}`)] : ' against the base',
      h('span.muted', ` · against ${d.base_branch} at `, h('code', d.base_commit.slice(0, 8))));
    const parts = [];
    if (d.omitted_files) parts.push(`${plural(d.omitted_files, 'more file')} not listed (over ${d.limits.max_files})`);
    const large = d.files.filter((f) => f.too_large).length;
    if (d.truncated || large) parts.push(`${plural(large, 'file')} too large to show here (over ${d.limits.max_file_lines.toLocaleString()} changed lines each, or past the diff's ${d.limits.max_lines.toLocaleString()}-line budget); their counts are exact`);
    notice.hidden = !parts.length;
    notice.textContent = parts.length ? `This diff is truncated: ${parts.join('; ')}. See the whole change with git in the worktree.` : '';
  }

  function renderFiles() {
    const d = state.diff;
    if (!d) return;
    const focus = focusedForm();
    const frag = document.createDocumentFragment();
    let budget = OPEN_LINES;
    for (const f of d.files) {
      const lines = f.hunks.reduce((n, hk) => n + hk.lines.length, 0);
      if (!state.open.has(f.path)) {
        const open = !f.too_large && !f.binary && lines <= OPEN_FILE_LINES && lines <= budget;
        if (open) budget -= lines;
        state.open.set(f.path, open);
      }
      frag.append(fileSection(f, lines));
    }
    if (!d.files.length) frag.append(h('p.muted.empty-diff', 'The worktree has no changes against its base yet.'));
    files.replaceChildren(frag);
    restoreFocus(focus);
  }

  /** The comment box being typed in, with its caret, so a redraw can give it back. */
  function focusedForm() {
    const a = document.activeElement;
    if (!a || a.tagName !== 'TEXTAREA' || !a.dataset.form || !files.contains(a)) return null;
    return { key: a.dataset.form, start: a.selectionStart, end: a.selectionEnd };
  }

  function restoreFocus(focus) {
    if (!focus) return;
    const box = [...files.querySelectorAll('textarea[data-form]')].find((t) => t.dataset.form === focus.key);
    if (!box) return;
    box.focus({ preventScroll: true });
    box.setSelectionRange(focus.start, focus.end);
  }

  function fileSection(f, lines) {
    const section = h('section.diff-file', { dataset: { path: f.path } });
    const body = h('div.diff-body');
    const open = state.open.get(f.path);
    const toggle = h('button.diff-toggle', {
      type: 'button', 'aria-expanded': String(open),
      onclick: () => {
        const now = !state.open.get(f.path);
        state.open.set(f.path, now);
        toggle.setAttribute('aria-expanded', String(now));
        if (now) renderBody(f, body);
        else body.replaceChildren(); // its open boxes stay in state.forms, back on reopening
      },
    },
    h('span.chev', { 'aria-hidden': 'true' }, '▸'),
    h('span.diff-path', f.old_path && f.old_path !== f.path ? `${f.old_path} → ${f.path}` : f.path));
    const badges = [h(`span.badge.st-${f.status}`, STATUS_LABEL[f.status] || f.status)];
    if (f.binary) badges.push(h('span.badge', 'Binary'));
    if (f.symlink) badges.push(h('span.badge', 'Symlink'));
    if (f.too_large) badges.push(h('span.badge.attn', 'Too large'));
    if (f.old_mode) badges.push(h('span.badge', `${f.old_mode} → ${f.new_mode}`));
    const counts = f.binary ? null : h('span.diff-counts', h('span.add-count', `+${f.additions}`), ' ', h('span.del-count', `−${f.deletions}`));
    section.append(h('header.diff-file-head', toggle, h('span.diff-badges', badges, counts)), body);
    if (open) renderBody(f, body);
    return section;
  }

  function renderBody(f, body) {
    if (f.binary) {
      replace(body, h('p.muted.diff-note', 'Binary file: its contents are not shown.'));
      return;
    }
    if (f.too_large) {
      replace(body, h('p.muted.diff-note', `Too large to show here: +${f.additions} −${f.deletions}. Look at it with git in the worktree.`));
      return;
    }
    if (!f.hunks.length) {
      replace(body, h('p.muted.diff-note', f.old_mode ? 'Only the mode changed.' : 'No line changed (a rename, or an empty file).'));
      return;
    }
    const table = state.view === 'split' ? splitTable(f) : unifiedTable(f);
    body.replaceChildren(h('div.diff-scroll', table));
  }

  // Lines are built with plain createElement: thousands of rows, no parsing.
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function commentButton(f, line, side, text) {
    const b = el('button', 'add-comment', '+');
    b.type = 'button';
    b.setAttribute('aria-label', `Comment on ${f.path} line ${line}${side === 'old' ? ' (deleted)' : ''}`);
    b.dataset.path = f.path;
    b.dataset.line = String(line);
    b.dataset.side = side;
    b.addEventListener('click', () => openForm(b.closest('tr'), f, line, side, text, 4));
    return b;
  }

  function hunkRow(hk, cols) {
    const tr = el('tr', 'hunk');
    const td = el('td', null, `@@ -${hk.old_start},${hk.old_lines} +${hk.new_start},${hk.new_lines} @@ ${hk.section}`);
    td.colSpan = cols;
    tr.append(td);
    return tr;
  }

  function unifiedTable(f) {
    const table = el('table', 'diff-table unified');
    const tbody = el('tbody');
    for (const hk of f.hunks) {
      tbody.append(hunkRow(hk, 4));
      for (const l of hk.lines) {
        const tr = el('tr', `ln-${l.kind}`);
        const gut = el('td', 'gut');
        const side = l.kind === 'del' ? 'old' : 'new';
        const no = side === 'old' ? l.old_no : l.new_no;
        if (l.kind !== 'note' && no) gut.append(commentButton(f, no, side, l.text));
        tr.append(gut, el('td', 'num', l.old_no ?? ''), el('td', 'num', l.new_no ?? ''),
          el('td', 'code', l.kind === 'note' ? l.text : `${l.kind === 'add' ? '+' : l.kind === 'del' ? '-' : ' '}${l.text}`));
        tbody.append(tr);
        appendComments(tbody, f.path, side, no, 4);
      }
    }
    table.append(tbody);
    return table;
  }

  function splitTable(f) {
    const table = el('table', 'diff-table split');
    const tbody = el('tbody');
    const cell = (l, side) => {
      const num = el('td', 'num');
      const code = el('td', 'code');
      if (!l) {
        num.className = 'num blank';
        code.className = 'code blank';
        return [num, code];
      }
      const no = side === 'old' ? l.old_no : l.new_no;
      num.textContent = no ?? '';
      if (l.kind !== 'note' && no) num.prepend(commentButton(f, no, side, l.text));
      code.textContent = l.kind === 'note' ? l.text : `${l.kind === 'add' ? '+' : l.kind === 'del' ? '-' : ' '}${l.text}`;
      code.className = `code ln-${l.kind}`;
      return [num, code];
    };
    for (const hk of f.hunks) {
      tbody.append(hunkRow(hk, 4));
      const ls = hk.lines;
      for (let i = 0; i < ls.length;) {
        if (ls[i].kind === 'context' || ls[i].kind === 'note') {
          const tr = el('tr', `ln-${ls[i].kind}`);
          tr.append(...cell(ls[i], 'old'), ...cell(ls[i], 'new'));
          tbody.append(tr);
          appendComments(tbody, f.path, 'new', ls[i].new_no, 4);
          i += 1;
          continue;
        }
        // A run of deletions and additions, side by side.
        const dels = [];
        const adds = [];
        while (i < ls.length && ls[i].kind === 'del') dels.push(ls[i++]);
        while (i < ls.length && ls[i].kind === 'add') adds.push(ls[i++]);
        if (!dels.length && !adds.length) { i += 1; continue; }
        for (let k = 0; k < Math.max(dels.length, adds.length); k += 1) {
          const tr = el('tr', 'ln-pair');
          tr.append(...cell(dels[k], 'old'), ...cell(adds[k], 'new'));
          tbody.append(tr);
          if (dels[k]) appendComments(tbody, f.path, 'old', dels[k].old_no, 4);
          if (adds[k]) appendComments(tbody, f.path, 'new', adds[k].new_no, 4);
        }
      }
    }
    table.append(tbody);
    return table;
  }

  /** The pending comments on one line, as rows under it, then its open comment box. */
  function appendComments(tbody, path, side, line, cols) {
    if (!line) return;
    for (const c of state.comments) {
      if (c.path === path && c.side === side && c.line === line) tbody.append(commentRow(c, cols));
    }
    const form = state.forms.get(formKey(path, line, side));
    if (form) tbody.append(formRow(form, cols));
  }

  function commentRow(c, cols) {
    const tr = el('tr', 'comment-row');
    const td = el('td');
    td.colSpan = cols;
    td.append(h('div.inline-comment', h('span.muted', 'Pending: '), h('span', c.text),
      h('button.ghost.small', { type: 'button', onclick: () => removeComment(c) }, 'Remove')));
    tr.append(td);
    return tr;
  }

  function formKey(path, line, side) {
    return `${side}:${line}:${path}`;
  }

  function openForm(row, f, line, side, code, cols) {
    const next = row.nextElementSibling;
    if (next && next.classList.contains('comment-form-row')) {
      next.querySelector('textarea').focus();
      return;
    }
    const k = formKey(f.path, line, side);
    const form = state.forms.get(k) || { key: k, path: f.path, line, side, code, text: '' };
    state.forms.set(k, form);
    const tr = formRow(form, cols);
    row.after(tr);
    tr.querySelector('textarea').focus();
  }

  /** An open comment box; its text lives in `form` (state.forms) as it is typed. */
  function formRow(form, cols) {
    const { path, line, side } = form;
    const tr = el('tr', 'comment-form-row');
    const td = el('td');
    td.colSpan = cols;
    const text = h('textarea', {
      rows: 3, 'aria-label': `Comment on ${path} line ${line}`, placeholder: 'What should the agent change here?',
      dataset: { form: form.key },
      oninput: () => { form.text = text.value; },
    });
    text.value = form.text;
    const close = () => {
      state.forms.delete(form.key);
      tr.remove();
    };
    const add = () => {
      if (!text.value.trim()) { text.focus(); return; }
      const c = { path, line, side, code: form.code, text: text.value.trim() };
      state.comments.push(c);
      saveDraft(key, state.comments);
      state.forms.delete(form.key);
      tr.replaceWith(commentRow(c, cols));
      renderReview();
      announce(`Comment added on ${path} line ${line}`);
    };
    text.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) add();
      if (e.key === 'Escape') close();
    });
    td.append(h('form.comment-form', { onsubmit: (e) => { e.preventDefault(); add(); } },
      h('label.small', `${path}:${line}${side === 'old' ? ' (deleted line)' : ''}`), text,
      h('div.actions', h('button.primary', { type: 'submit' }, 'Add comment'), h('button.ghost', { type: 'button', onclick: close }, 'Cancel'))));
    tr.append(td);
    return tr;
  }

  function removeComment(c) {
    state.comments = state.comments.filter((x) => x !== c);
    saveDraft(key, state.comments);
    renderFiles();
    renderReview();
  }

  const result = h('p.review-result', { role: 'status', hidden: true });
  const reviewError = h('p.error', { role: 'alert', hidden: true });

  function renderReview() {
    const n = state.comments.length;
    const note = h('textarea', { id: 'review-note', rows: 3, placeholder: 'An overall note (optional)', oninput: (e) => { state.note = e.target.value; } });
    note.value = state.note;
    const send = h('button.primary', { type: 'button', id: 'review-send', disabled: !n, onclick: () => sendReview(send) }, 'Send to agent');
    replace(review,
      h('h2', 'Review ', h('span.count', { id: 'review-count' }, n ? String(n) : '')),
      n ? h('ol.review-list', state.comments.map((c) => h('li',
        h('div.review-where', h('code', `${c.path}:${c.line}`), c.side === 'old' ? h('span.muted', ' deleted') : null),
        c.code ? h('pre.review-code', c.code) : null,
        h('p.review-text', c.text),
        h('button.ghost.small', { type: 'button', onclick: () => removeComment(c) }, 'Remove'))))
        : h('p.muted.small', 'Click + beside a line of the diff to comment on it. Comments are sent together, as one message.'),
      h('label', { for: 'review-note' }, 'Note'), note,
      h('div.actions', send),
      reviewError, result);
  }

  async function sendReview(button) {
    button.disabled = true;
    button.textContent = 'Sending…';
    reviewError.hidden = true;
    try {
      const body = { comments: state.comments.map(({ path, line, side, code, text }) => ({ path, line, side, code, text })) };
      if (state.note.trim()) body.message = state.note.trim();
      const res = await post(orgPath(app.org, `/tasks/${id}/review`), body);
      state.comments = [];
      state.note = '';
      saveDraft(key, state.comments);
      renderFiles();
      renderReview();
      result.hidden = false;
      result.textContent = res.delivered_via === 'session'
        ? `Sent ${plural(res.comments, 'comment')} to the agent's session ${res.session}.`
        : `Sent ${plural(res.comments, 'comment')}: typed into the agent's terminal.`;
      announce(result.textContent);
    } catch (e) {
      reviewError.hidden = false;
      reviewError.textContent = `Not sent: ${e.message}`;
      button.disabled = false;
      button.textContent = 'Send to agent';
    }
  }

  const off = app.store.onEvent((e) => {
    const task = app.store.tasks.get(id);
    const mine = e.task === id && TASK_KINDS.has(e.kind);
    const branch = e.kind === 'branch.updated' && task && e.repo === task.repo && e.data?.branch === task.branch;
    if (mine || branch) load();
  });

  renderReview();
  load();
  return () => {
    state.closed = true;
    off();
  };
}

function loadDraft(key) {
  try {
    const v = JSON.parse(sessionStorage.getItem(key) || '[]');
    return Array.isArray(v) ? v.filter((c) => c && typeof c.path === 'string' && Number.isInteger(c.line)) : [];
  } catch (e) {
    return [];
  }
}

function saveDraft(key, comments) {
  try {
    if (comments.length) sessionStorage.setItem(key, JSON.stringify(comments));
    else sessionStorage.removeItem(key);
  } catch (e) {
    // Storage full or off: the draft lives as long as the page.
  }
}
