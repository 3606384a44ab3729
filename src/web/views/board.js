// The board: every task of the organization in columns by what it needs next,
// live from the store. Filter by repository and agent, search titles. Each
// column shows its newest 50 cards and grows on request, so 10,000 tasks stay fast.

import { COLUMNS, columnOf, conflictBadge, needsYou } from '../lib/store.js';
import { h, replace } from '../lib/dom.js';
import { age, when, plural, STATUS_WORDS } from '../lib/format.js';

const PAGE = 50;
/** The least time between two renders the stream causes (ms). */
const LIVE_MS = 100;

// What the benchmarks read (docs/performance.md): the board sets the User Timing
// marks `kiln:board-first-render` (the first render with tasks in it) and
// `kiln:board-ready` (every task loaded and rendered, the stream following), and
// counts its renders here. Numbers only; no data.
const stats = { renders: 0, renderMs: 0, maxRenderMs: 0, lags: [] };
globalThis.kilnBoardStats = stats;
let marked = { first: false, ready: false };

/** Sets an element's text only when it changed (an equal write still costs a style pass). */
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** Makes `list`'s children exactly `want`, in order, moving only what is out of place. */
function reconcile(list, want) {
  const keep = new Set(want);
  for (const child of [...list.children]) if (!keep.has(child)) child.remove();
  let at = list.firstElementChild;
  for (const el of want) {
    if (el === at) at = at.nextElementSibling;
    else list.insertBefore(el, at);
  }
}

export function boardView(main, app) {
  const store = app.store;
  const params = new URLSearchParams(location.search);
  const filter = { q: params.get('q') || '', repo: params.get('repo') || '', agent: params.get('agent') || '' };
  const shown = Object.fromEntries(COLUMNS.map((c) => [c.id, PAGE]));

  const search = h('input#search', { type: 'search', value: filter.q, placeholder: 'Search titles', 'aria-keyshortcuts': '/', autocomplete: 'off' });
  const repoSel = h('select#filter-repo', h('option', { value: '' }, 'All repositories'));
  const agentSel = h('select#filter-agent', h('option', { value: '' }, 'All agents'));
  const summary = h('p.summary.muted', { role: 'status' });
  const grid = h('div.board', { role: 'region', 'aria-label': 'Tasks by next action' });
  const columns = {};
  for (const c of COLUMNS) {
    const count = h('span.col-count');
    const list = h('ol.cards');
    const more = h('button.more.ghost', { type: 'button', hidden: true, onclick: () => { shown[c.id] += PAGE * 4; render(); } });
    const section = h(`section.column.col-${c.id}`, { 'aria-labelledby': `col-${c.id}`, dataset: { column: c.id } },
      h('h2', { id: `col-${c.id}`, title: c.hint }, h('span.col-dot', { 'aria-hidden': 'true' }), c.title, count),
      list, more);
    columns[c.id] = { section, count, list, more, empty: h('li.empty', 'Nothing here') };
    grid.append(section);
  }

  const onFilter = () => {
    filter.q = search.value.trim();
    filter.repo = repoSel.value;
    filter.agent = agentSel.value;
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(filter)) if (v) p.set(k, v);
    history.replaceState(null, '', p.toString() ? `/?${p}` : '/');
    render();
  };
  search.addEventListener('input', onFilter);
  repoSel.addEventListener('change', onFilter);
  agentSel.addEventListener('change', onFilter);

  replace(main,
    h('div.board-head',
      h('h1', 'Board'),
      h('div.filters', { role: 'search' },
        h('label.field', h('span.visually-hidden', 'Search titles'), search),
        h('label.field', h('span.visually-hidden', 'Repository'), repoSel),
        h('label.field', h('span.visually-hidden', 'Agent'), agentSel),
        h('a.button.primary.new-task', { href: '/new' }, '+ New task'))),
    summary, grid);

  let options = '';
  function syncOptions(tasks) {
    const repoSet = new Set();
    const agentSet = new Set();
    for (const t of tasks) {
      repoSet.add(t.repo);
      agentSet.add(t.agent);
    }
    const repos = [...repoSet].sort();
    const agents = [...agentSet].sort();
    const key = repos.join('\n') + '\0' + agents.join('\n');
    if (key === options) return;
    options = key;
    replace(repoSel, h('option', { value: '' }, 'All repositories'), ...repos.map((r) => h('option', { value: r, selected: r === filter.repo }, r)));
    replace(agentSel, h('option', { value: '' }, 'All agents'), ...agents.map((a) => h('option', { value: a, selected: a === filter.agent }, a)));
  }

  let lastSeenEventAt = store.lastEventAt;
  function render() {
    const t0 = performance.now();
    lastRender = t0;
    draw();
    const ms = performance.now() - t0;
    stats.renders++;
    stats.renderMs += ms;
    stats.maxRenderMs = Math.max(stats.maxRenderMs, ms);
    // How long after the newest event (server time) the board showed it: the live update's lag.
    if (store.lastEventAt && store.lastEventAt !== lastSeenEventAt) {
      lastSeenEventAt = store.lastEventAt;
      if (stats.lags.length >= 10000) stats.lags.shift();
      stats.lags.push(Date.now() - store.lastEventAt);
    }
    if (!marked.first && store.tasks.size > 0) {
      marked.first = true;
      performance.mark('kiln:board-first-render');
    }
    if (!marked.ready && store.loaded) {
      marked.ready = true;
      performance.mark('kiln:board-ready');
    }
  }

  function draw() {
    const all = [...store.tasks.values()];
    syncOptions(all);
    const q = filter.q.toLowerCase();
    const groups = Object.fromEntries(COLUMNS.map((c) => [c.id, []]));
    let matched = 0;
    for (const t of all) {
      if (filter.repo && t.repo !== filter.repo) continue;
      if (filter.agent && t.agent !== filter.agent) continue;
      if (q && !(t.title || '').toLowerCase().includes(q)) continue;
      groups[columnOf(t)].push(t);
      matched++;
    }
    const focused = document.activeElement?.closest?.('[data-task]')?.dataset.task;
    renderId++;
    for (const c of COLUMNS) {
      const tasks = groups[c.id].sort((a, b) => b.updated_at - a.updated_at || (a.id < b.id ? -1 : 1));
      const col = columns[c.id];
      const visible = tasks.slice(0, shown[c.id]);
      setText(col.count, String(tasks.length));
      reconcile(col.list, visible.length ? visible.map(cardFor) : [col.empty]);
      const rest = tasks.length - visible.length;
      if (col.more.hidden !== rest <= 0) col.more.hidden = rest <= 0;
      setText(col.more, `Show more (${rest} hidden)`);
      col.section.classList.toggle('is-empty', tasks.length === 0);
    }
    // Forget the cards no column shows now.
    for (const [id, entry] of cards) if (entry.seen !== renderId) cards.delete(id);
    if (focused) grid.querySelector(`[data-task="${focused}"]`)?.focus();
    const total = store.tasks.size;
    setText(summary, !store.loaded && total === 0
      ? 'Loading tasks…'
      : app.storeError ? `The tasks could not be loaded: ${app.storeError.message}`
      : total === 0 ? 'No tasks yet: create one with New task (or press n).'
      : matched === total ? plural(total, 'task') : `${matched} of ${plural(total, 'task')} match`);
  }

  // Cards are kept between renders and rebuilt only when what they show changed,
  // and a column's list is patched in place: with 10,000 tasks and a stream of
  // events, a render touches the few cards that moved, not every card on screen.
  const cards = new Map();
  let renderId = 0;
  function cardFor(t) {
    const pr = t.pr;
    const predicted = conflictBadge(store, t);
    const key = [t.status, t.title, t.repo, t.branch, t.agent, needsYou(t),
      pr ? `${pr.number} ${pr.state} ${pr.ci_state} ${pr.review_decision}` : '',
      predicted ? predicted.title : ''].join('\u0001');
    let entry = cards.get(t.id);
    if (!entry || entry.key !== key) {
      const el = card(t);
      entry = { key, el, age: el.querySelector('time.age') };
      cards.set(t.id, entry);
    }
    entry.seen = renderId;
    // The age moves on with the clock: its text is updated in place.
    if (entry.age) setText(entry.age, age(t.created_at));
    return entry.el;
  }

  function card(t) {
    const why = needsYou(t);
    const pr = t.pr;
    const badges = [];
    // The status pill already says idle; other reasons get a badge.
    if (why && why !== 'Idle') badges.push(h('span.badge.attn', why));
    const predicted = conflictBadge(store, t);
    if (predicted) {
      badges.push(h('span.badge.predicted', { title: predicted.title, 'aria-label': predicted.title, dataset: { conflicts: predicted.count } },
        h('span.predicted-mark', { 'aria-hidden': 'true' }, '⚠'), predicted.text));
    }
    if (pr) {
      const ci = pr.ci_state ? h(`span.ci.ci-${pr.ci_state}`, { title: `CI: ${pr.ci_state}`, 'aria-label': `CI ${pr.ci_state}` }) : null;
      badges.push(h(`span.badge.pr.pr-${pr.state}`, { title: `Pull request #${pr.number}: ${pr.state}` }, ci, `#${pr.number}`));
      if (pr.review_decision) {
        const words = { approved: 'Approved', changes_requested: 'Changes requested', review_required: 'Review required' };
        badges.push(h(`span.badge.review.review-${pr.review_decision}`, words[pr.review_decision] || pr.review_decision));
      }
    }
    return h('li',
      h('a.card', { href: `/tasks/${t.id}`, dataset: { task: t.id, status: t.status } },
        h('span.card-title', t.title || '(untitled)'),
        h('span.card-meta', h('span.repo', t.repo), ' · ', h('span.branch', { title: t.branch }, t.branch)),
        h('span.card-foot',
          h(`span.status.s-${t.status}`, STATUS_WORDS[t.status] || t.status),
          h('span.agent', t.agent),
          h('time.age', { datetime: new Date(t.created_at).toISOString(), title: `Created ${when(t.created_at)}` }, age(t.created_at)),
          ...badges)));
  }

  // Keys: / searches; arrows move between cards (up/down) and columns (left/right).
  const onKey = (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === '/' && !e.target.closest('input, textarea, select')) {
      e.preventDefault();
      search.focus();
      return;
    }
    const cardEl = e.target.closest?.('.card');
    if (!cardEl || !['ArrowDown', 'ArrowUp', 'ArrowLeft', 'ArrowRight'].includes(e.key)) return;
    e.preventDefault();
    const col = cardEl.closest('.column');
    const cards = [...col.querySelectorAll('.card')];
    const i = cards.indexOf(cardEl);
    if (e.key === 'ArrowDown') cards[i + 1]?.focus();
    else if (e.key === 'ArrowUp') cards[i - 1]?.focus();
    else {
      const cols = [...grid.querySelectorAll('.column')];
      const step = e.key === 'ArrowRight' ? 1 : -1;
      for (let j = cols.indexOf(col) + step; j >= 0 && j < cols.length; j += step) {
        const target = cols[j].querySelectorAll('.card')[Math.min(i, cols[j].querySelectorAll('.card').length - 1)];
        if (target) {
          target.focus();
          break;
        }
      }
    }
  };
  document.addEventListener('keydown', onKey);
  // The stream's changes render at most every LIVE_MS: at 100 events a second a
  // render per frame would spend the frame budget on layout a person cannot
  // follow anyway. Typing and filters render at once.
  let lastRender = 0;
  let pending = null;
  const live = () => {
    if (pending) return;
    const wait = lastRender + LIVE_MS - performance.now();
    if (wait <= 0) render();
    else pending = setTimeout(() => { pending = null; render(); }, wait);
  };
  const unsubscribe = store.subscribe(live);
  // Ages move on with the clock; this re-renders from memory and asks the server nothing.
  const tick = setInterval(render, 30000);
  render();
  return () => {
    unsubscribe();
    clearInterval(tick);
    clearTimeout(pending);
    document.removeEventListener('keydown', onKey);
  };
}
