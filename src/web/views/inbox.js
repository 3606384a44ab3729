// The inbox: what happened that needs you (a task needs input, went idle, its CI
// failed, changes were requested, it is ready to merge or merged, a conflict is
// predicted, its agent is stuck), newest first, unread in bold. The list and its
// read marks are the organization's (`GET …/inbox`, shared with `kiln inbox`). A
// click opens the task and marks the entry read. Browser notifications are
// switched on here, by a button: browsers only ask on a person's gesture.

import { h, replace, announce } from '../lib/dom.js';
import { age, when } from '../lib/format.js';
import { openDialog } from '../lib/dialog.js';
import { notificationState, askForNotifications } from '../lib/attention.js';

/** The header's inbox button; `updateInboxButton` keeps its count fresh. */
export function inboxButton(app) {
  const button = h('button.ghost.icon-button#inbox-button', {
    type: 'button', 'aria-haspopup': 'dialog', 'aria-keyshortcuts': 'i', title: 'Inbox (i)', 'aria-label': 'Inbox',
    onclick: () => openInbox(app),
  }, bell(), h('span.label-text', 'Inbox'), h('span#inbox-count.count'));
  updateInboxButton(app);
  return button;
}

/** Shows the unread count on the header's inbox button (found by id: the shell is rebuilt per route). */
export function updateInboxButton(app) {
  const count = document.getElementById('inbox-count');
  const button = document.getElementById('inbox-button');
  if (!count || !button) return;
  const n = app.inbox ? app.inbox.unread : 0;
  if (count.textContent !== (n ? String(n) : '')) count.textContent = n ? String(n) : '';
  const label = n ? `Inbox, ${n} unread` : 'Inbox';
  if (button.getAttribute('aria-label') !== label) button.setAttribute('aria-label', label);
}

/** Opens the inbox dialog. */
export function openInbox(app) {
  const inbox = app.inbox;
  if (!inbox) return;
  const list = h('ol.inbox-list', { 'aria-label': 'Inbox entries, newest first' });
  const notify = h('div.inbox-notify');
  const markAll = h('button.ghost#inbox-mark-all', { type: 'button', onclick: () => { inbox.markAllRead(); announce('All marked read'); } }, 'Mark all read');
  const close = h('button.ghost#inbox-close', { type: 'button', 'aria-label': 'Close the inbox', onclick: () => dialog.close() }, '✕');
  const body = h('div.inbox',
    h('div.inbox-head', h('h2', 'Inbox'), markAll, close),
    notify, list);

  function renderNotify() {
    const state = notificationState();
    if (state === 'default') {
      replace(notify, h('button#enable-notifications', {
        type: 'button',
        onclick: async () => {
          const answer = await askForNotifications();
          announce(answer === 'granted' ? 'Notifications on' : 'Notifications not allowed');
          renderNotify();
        },
      }, bell(), 'Enable notifications'),
      h('span.muted.small', 'A notification when a task needs you and this page is not showing it.'));
    } else if (state === 'granted') {
      replace(notify, h('span.muted.small', 'Notifications are on for this browser.'));
    } else if (state === 'denied') {
      replace(notify, h('span.muted.small', 'Notifications are blocked: allow them in this browser’s site settings.'));
    } else {
      replace(notify, h('span.muted.small', 'This browser cannot show notifications.'));
    }
  }

  let scheduled = false;
  function render() {
    scheduled = false;
    const entries = inbox.entries;
    markAll.disabled = inbox.unread === 0;
    if (!entries.length) {
      const empty = inbox.error
        ? `The inbox could not be read: ${inbox.error.message}`
        : inbox.loaded
          ? 'Nothing needs you. Entries appear here when a task needs input, goes idle, fails CI, gets changes requested, is ready to merge or merged, may conflict, or its agent is stuck.'
          : 'Loading…';
      replace(list, h('li.empty', empty));
      return;
    }
    replace(list, ...entries.map((e) => {
      const unread = !inbox.isRead(e);
      return h(`li.inbox-entry${unread ? '.unread' : ''}`,
        h('a', {
          href: e.task ? `/tasks/${e.task}` : '/', dataset: { entry: String(e.id), task: e.task || '', reason: e.reason },
          onclick: () => {
            inbox.markRead(e);
            dialog.close();
          },
        },
        h(`span.inbox-reason.r-${e.reason}`, e.label),
        h('span.inbox-title', inbox.titleOf(e)),
        h('span.inbox-meta.muted', e.repo ? `${e.repo} · ` : '', h('time', { title: when(e.at) }, `${age(e.at)} ago`)),
        unread ? h('span.visually-hidden', ' (unread)') : null));
    }));
  }
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(render);
  };
  const off = inbox.subscribe(schedule);
  const offStore = app.store.subscribe(schedule);
  renderNotify();
  render();
  const dialog = openDialog({
    id: 'inbox', label: 'Inbox', className: 'inbox-dialog', body, focus: null,
    onClose: () => {
      off();
      offStore();
    },
  });
  (list.querySelector('a') || close).focus();
  return dialog;
}

/** A bell, drawn (no icon font, no emoji: it looks the same everywhere). */
function bell() {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('width', '16');
  svg.setAttribute('height', '16');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'icon');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', 'M8 1.5a4.5 4.5 0 0 0-4.5 4.5v2.6L2.2 11h11.6l-1.3-2.4V6A4.5 4.5 0 0 0 8 1.5Zm-1.8 11a1.8 1.8 0 0 0 3.6 0');
  path.setAttribute('fill', 'none');
  path.setAttribute('stroke', 'currentColor');
  path.setAttribute('stroke-width', '1.4');
  path.setAttribute('stroke-linejoin', 'round');
  svg.append(path);
  return svg;
}
