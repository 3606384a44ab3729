// The task's pull request: its link, state, CI with every check (state and
// link), mergeability and the review decision; "Open PR" when the task has none
// and may open one. Loaded once from the task detail, then kept fresh by the
// PR poller's events on the store's stream (`pr.*`): nothing polls.

import { get, post, orgPath } from '../lib/api.js';
import { h, replace, announce } from '../lib/dom.js';
import { age, when, plural } from '../lib/format.js';

/** The statuses in which the `pr` action is allowed (docs/api.md). */
const CAN_OPEN = ['running', 'idle'];

const REVIEW_WORDS = { approved: 'Approved', changes_requested: 'Changes requested', review_required: 'Review required' };
const CI_WORDS = { success: 'Passing', failure: 'Failing', pending: 'Running' };

/** What a check's state is, in one word and a class. */
export function checkState(c) {
  if (c.status !== 'completed') return { word: c.status === 'queued' || c.status === 'pending' ? 'Queued' : 'Running', cls: 'pending' };
  switch (c.conclusion) {
    case 'success': return { word: 'Passed', cls: 'success' };
    case 'neutral': return { word: 'Neutral', cls: 'neutral' };
    case 'skipped': return { word: 'Skipped', cls: 'neutral' };
    case 'cancelled': return { word: 'Cancelled', cls: 'neutral' };
    case 'action_required': return { word: 'Action required', cls: 'failure' };
    case 'timed_out': return { word: 'Timed out', cls: 'failure' };
    case 'error': return { word: 'Error', cls: 'failure' };
    default: return { word: c.conclusion === 'failure' ? 'Failed' : (c.conclusion || 'Done'), cls: 'failure' };
  }
}

/** Only http(s) links are followed (the server keeps no others either). */
const safeUrl = (u) => (typeof u === 'string' && /^https?:\/\//.test(u) ? u : null);

export function pullRequestPane(container, app, taskId, getTask) {
  const root = h('section.pr-pane', { 'aria-label': 'Pull request' });
  container.append(root);
  let pr;
  let error = null;
  let busy = false;
  let closed = false;

  async function load() {
    try {
      const t = await get(orgPath(app.org, `/tasks/${taskId}`));
      pr = t.pull_request;
      error = null;
    } catch (e) {
      error = e.message;
    }
    render();
  }

  const off = app.store.onEvent((ev) => {
    if (ev.task !== taskId || !ev.kind.startsWith('pr.')) return;
    const d = ev.data || {};
    if (!pr || d.number !== pr.number || ev.kind === 'pr.opened' || ev.kind === 'pr.adopted') {
      // A new pull request: its title, link and head come with the task detail.
      load();
      return;
    }
    switch (ev.kind) {
      case 'pr.checks_changed':
        pr.checks = Array.isArray(d.checks) ? d.checks : [];
        if (d.head_sha) pr.head_sha = d.head_sha;
        break;
      case 'pr.ci_changed':
        pr.ci_state = d.to;
        break;
      case 'pr.review_changed':
        pr.review_decision = d.to;
        break;
      case 'pr.merged':
        pr.state = 'merged';
        break;
      case 'pr.closed':
        pr.state = 'closed';
        break;
      default:
        return;
    }
    pr.updated_at = ev.at;
    render();
  });

  // The task's status decides whether "Open PR" is offered.
  const unsubscribe = app.store.subscribe(() => {
    if (pr === null) render();
  });

  async function openPr() {
    busy = true;
    error = null;
    render();
    try {
      await post(orgPath(app.org, `/tasks/${taskId}/pr`));
      announce('Pull request opened');
      await load();
    } catch (e) {
      error = `Open PR failed: ${e.message}`;
    } finally {
      busy = false;
      render();
    }
  }

  function render() {
    if (closed) return;
    const err = error ? h('p.error', { role: 'alert' }, error) : null;
    if (pr === undefined) {
      replace(root, h('p.muted', 'Loading…'), err);
      return;
    }
    if (pr === null) {
      const task = getTask();
      const can = task && CAN_OPEN.includes(task.status);
      replace(root, h('div.card-panel.pr-none',
        h('h2', 'No pull request yet'),
        h('p.muted', can
          ? 'Opening one pushes the branch and opens a pull request on GitHub (the repository needs its GitHub settings).'
          : 'This task has no pull request. One can be opened while the task is running or idle.'),
        can ? h('button.primary#pr-open', { type: 'button', disabled: busy, onclick: openPr }, busy ? 'Opening…' : 'Open PR') : null,
        err));
      return;
    }
    const url = safeUrl(pr.url);
    const state = pr.state === 'open' && pr.draft ? 'draft' : pr.state;
    const checks = Array.isArray(pr.checks) ? pr.checks : [];
    const counts = { success: 0, failure: 0, pending: 0, neutral: 0 };
    for (const c of checks) counts[checkState(c).cls]++;
    const summary = checks.length
      ? [counts.failure && `${counts.failure} failing`, counts.pending && `${counts.pending} running`,
        counts.success && `${counts.success} passed`, counts.neutral && `${counts.neutral} neutral or skipped`].filter(Boolean).join(', ')
      : null;
    const review = pr.review_decision;
    replace(root,
      h('div.pr-head',
        h('h2.pr-title',
          url ? h('a#pr-link', { href: url, target: '_blank', rel: 'noopener noreferrer' }, `#${pr.number}`) : h('span', `#${pr.number}`),
          ' ', pr.title || ''),
        h(`span.badge.pr-state.pr-${state}`, { id: 'pr-state' }, state[0].toUpperCase() + state.slice(1))),
      h('dl.facts.pr-facts',
        h('div', h('dt', 'Branch'), h('dd', h('code', pr.head_ref), h('span.muted', ` into ${pr.base_ref}`))),
        h('div', h('dt', 'Head'), h('dd', h('code', (pr.head_sha || '').slice(0, 10)))),
        h('div', h('dt', 'CI'), h('dd#pr-ci', h(`span.ci.ci-${pr.ci_state || 'none'}`, { 'aria-hidden': 'true' }), ' ', CI_WORDS[pr.ci_state] || 'No CI reported')),
        h('div', h('dt', 'Review'), h(`dd#pr-review.review-${review || 'none'}`, REVIEW_WORDS[review] || 'No review yet')),
        pr.state === 'open' ? h('div', h('dt', 'Mergeable'), h('dd', pr.mergeable === true ? 'Yes' : pr.mergeable === false ? 'No: it conflicts with its base' : 'Not known yet')) : null,
        h('div', h('dt', 'Updated'), h('dd', h('time', { title: when(pr.updated_at) }, `${age(pr.updated_at)} ago`)))),
      h('h3.checks-head', 'Checks', h('span.muted.small', checks.length ? ` ${plural(checks.length, 'check')}: ${summary}` : '')),
      checks.length
        ? h('ul.checks', { 'aria-label': 'Checks' }, checks.map((c) => {
          const s = checkState(c);
          const link = safeUrl(c.url);
          return h(`li.check.check-${s.cls}`, { dataset: { check: c.name } },
            h(`span.check-dot.ci-${s.cls}`, { 'aria-hidden': 'true' }),
            link ? h('a.check-name', { href: link, target: '_blank', rel: 'noopener noreferrer' }, c.name) : h('span.check-name', c.name),
            h('span.check-state', s.word),
            h('span.muted.small.check-kind', c.kind === 'status' ? 'status' : 'check run'));
        }))
        : h('p.muted#pr-no-checks', pr.state === 'open' ? 'No checks reported for this head yet.' : 'No checks recorded.'),
      err);
  }

  render();
  load();
  return () => {
    closed = true;
    off();
    unsubscribe();
  };
}
