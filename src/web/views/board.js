// The board: every task of the organization in columns by what it needs next,
// live from the store. Filter by repository and agent, search titles. Each
// column shows its newest 50 cards and grows on request, so 10,000 tasks stay fast.

import { COLUMNS, columnOf, needsYou } from '../lib/store.js';
import { h, replace } from '../lib/dom.js';
import { age, when, STATUS_WORDS } from '../lib/format.js';

const PAGE = 50;

// What the benchmarks read (docs/performance.md): the board sets the User Timing
// marks `kiln:board-first-render` (the first render with tasks in it) and
// `kiln:board-ready` (every task loaded and rendered, the stream following), and
// counts its renders here. Numbers only; no data.
const stats = { renders: 0, renderMs: 0, maxRenderMs: 0 };
globalThis.kilnBoardStats = stats;
let marked = { first: false, ready: false };

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
    columns[c.id] = { section, count, list, more };
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
    const repos = [...new Set(tasks.map((t) => t.repo))].sort();
    const agents = [...new Set(tasks.map((t) => t.agent))].sort();
    const key = repos.join('\n') + '\0' + agents.join('\n');
    if (key === options) return;
    options = key;
    replace(repoSel, h('option', { value: '' }, 'All repositories'), ...repos.map((r) => h('option', { value: r, selected: r === filter.repo }, r)));
    replace(agentSel, h('option', { value: '' }, 'All agents'), ...agents.map((a) => h('option', { value: a, selected: a === filter.agent }, a)));
  }

  function render() {
    const t0 = performance.now();
    draw();
    const ms = performance.now() - t0;
    stats.renders++;
    stats.renderMs += ms;
    stats.maxRenderMs = Math.max(stats.maxRenderMs, ms);
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
    for (const c of COLUMNS) {
      const tasks = groups[c.id].sort((a, b) => b.updated_at - a.updated_at || (a.id < b.id ? -1 : 1));
      const col = columns[c.id];
      col.count.textContent = String(tasks.length);
      const visible = tasks.slice(0, shown[c.id]);
      replace(col.list, ...visible.map(card));
      if (!visible.length) col.list.append(h('li.empty', 'Nothing here'));
      const rest = tasks.length - visible.length;
      col.more.hidden = rest <= 0;
      col.more.textContent = `Show more (${rest} hidden)`;
      col.section.classList.toggle('is-empty', tasks.length === 0);
    }
    if (focused) grid.querySelector(`[data-task="${focused}"]`)?.focus();
    const total = store.tasks.size;
    summary.textContent = !store.loaded && total === 0
      ? 'Loading tasks…'
      : app.storeError ? `The tasks could not be loaded: ${app.storeError.message}`
      : total === 0 ? 'No tasks yet: create one with New task (or press n).'
      : matched === total ? `${total} tasks` : `${matched} of ${total} tasks match`;
  }

  function card(t) {
    const why = needsYou(t);
    const pr = t.pr;
    const badges = [];
    // The status pill already says idle; other reasons get a badge.
    if (why && why !== 'Idle') badges.push(h('span.badge.attn', why));
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
  const unsubscribe = store.subscribe(render);
  // Ages move on with the clock; this re-renders from memory and asks the server nothing.
  const tick = setInterval(render, 30000);
  render();
  return () => {
    unsubscribe();
    clearInterval(tick);
    document.removeEventListener('keydown', onKey);
  };
}
