// What needs its person, from the event stream: the inbox's entries (a task that
// needs input, went idle, whose CI failed, whose PR merged), which of them are
// read (localStorage, per organization and token), and browser notifications for
// the ones that arrive live. Nothing here polls: the history is read once at
// load, then the store's stream adds entries as they happen.

import { get, orgPath } from './api.js';

/** How many entries the inbox keeps (newest first). */
export const INBOX_LIMIT = 100;
/** A live event older than this (a reconnect's catch-up) is listed, not notified. */
const NOTIFY_MAX_AGE_MS = 10 * 60 * 1000;
/** The event kinds that can make an entry, and how many of each history gives. */
const HISTORY = [
  ['task.awaiting_input', 50],
  ['task.status_changed', 200],
  ['pr.ci_changed', 50],
  ['pr.merged', 50],
];

/** The entry an event makes, or null: a pure function of the event. */
export function attentionOf(ev) {
  if (!ev || !ev.task || typeof ev.id !== 'number') return null;
  const d = ev.data || {};
  switch (ev.kind) {
    case 'task.awaiting_input':
      return d.awaiting_input ? { reason: 'input', label: 'Needs input' } : null;
    case 'task.status_changed':
      return d.to === 'idle' ? { reason: 'idle', label: 'Went idle' } : null;
    case 'pr.ci_changed':
      return d.to === 'failure' ? { reason: 'ci', label: 'CI failed' } : null;
    case 'pr.merged':
      return { reason: 'merged', label: 'PR merged' };
    default:
      return null;
  }
}

/**
 * Which entries are read: every id up to `upTo` (mark all read), and the ids
 * marked one by one above it. Bounded: marking all read forgets the list.
 */
export class ReadState {
  constructor(key, storage = globalThis.localStorage) {
    this.key = key;
    this.storage = storage;
    this.upTo = 0;
    this.ids = new Set();
    try {
      const saved = JSON.parse(storage?.getItem(key) || 'null');
      if (saved && typeof saved.upTo === 'number') this.upTo = saved.upTo;
      if (saved && Array.isArray(saved.ids)) for (const id of saved.ids) if (typeof id === 'number' && id > this.upTo) this.ids.add(id);
    } catch (e) {
      // A corrupt or blocked store: everything is unread.
    }
  }

  has(id) {
    return id <= this.upTo || this.ids.has(id);
  }

  mark(id) {
    if (this.has(id)) return;
    this.ids.add(id);
    this.save();
  }

  markUpTo(id) {
    this.upTo = Math.max(this.upTo, id);
    for (const x of this.ids) if (x <= this.upTo) this.ids.delete(x);
    this.save();
  }

  save() {
    // Keep the newest 500 single marks: older ones belong to entries long gone.
    const ids = [...this.ids].sort((a, b) => b - a).slice(0, 500);
    try {
      this.storage?.setItem(this.key, JSON.stringify({ upTo: this.upTo, ids }));
    } catch (e) {
      // Storage full or blocked: the marks last as long as the page.
    }
  }
}

/**
 * The inbox of one organization's store. `identity` names who is signed in (the
 * token), so two tokens on one browser keep their own read marks. `isWatching(task)`
 * answers whether the person is looking at that task right now (no notification then).
 */
export class Inbox {
  constructor(store, identity, { isWatching = () => false, open = () => {} } = {}) {
    this.store = store;
    this.read = new ReadState(`kiln:inbox-read:${store.org}:${identity}`);
    this.entries = [];
    this.ids = new Set();
    this.listeners = new Set();
    this.isWatching = isWatching;
    this.open = open;
    this.loaded = false;
    this.off = store.onEvent((ev) => this.add(ev, true));
  }

  /** Reads the recent history once (no notification for it). */
  async load() {
    const pages = await Promise.all(
      HISTORY.map(([kind, tail]) =>
        get(orgPath(this.store.org, `/events?kind=${encodeURIComponent(kind)}&tail=${tail}`)).catch(() => ({ items: [] }))));
    for (const page of pages) for (const ev of page.items || []) this.add(ev, false, false);
    this.loaded = true;
    this.changed();
  }

  stop() {
    this.off();
    this.listeners.clear();
  }

  /** Adds the entry `ev` makes, if any; notifies when it arrived live. */
  add(ev, live, announce = true) {
    const a = attentionOf(ev);
    if (!a || this.ids.has(ev.id)) return;
    const entry = { id: ev.id, task: ev.task, repo: ev.repo, at: ev.at, ...a };
    this.ids.add(ev.id);
    let i = this.entries.findIndex((e) => e.id < ev.id);
    if (i < 0) i = this.entries.length;
    this.entries.splice(i, 0, entry);
    while (this.entries.length > INBOX_LIMIT) this.ids.delete(this.entries.pop().id);
    if (live) this.notify(entry);
    if (announce) this.changed();
  }

  isRead(entry) {
    return this.read.has(entry.id);
  }

  get unread() {
    let n = 0;
    for (const e of this.entries) if (!this.read.has(e.id)) n++;
    return n;
  }

  markRead(entry) {
    this.read.mark(entry.id);
    this.changed();
  }

  markAllRead() {
    if (this.entries.length) this.read.markUpTo(this.entries[0].id);
    this.changed();
  }

  /** The title of an entry's task, as the store knows it now. */
  titleOf(entry) {
    return this.store.tasks.get(entry.task)?.title || `Task ${entry.task}`;
  }

  notify(entry) {
    const N = globalThis.Notification;
    if (!N || N.permission !== 'granted') return;
    if (typeof entry.at === 'number' && Date.now() - entry.at > NOTIFY_MAX_AGE_MS) return;
    if (this.isWatching(entry.task)) return;
    try {
      const n = new N(`${entry.label}: ${this.titleOf(entry)}`, {
        body: [entry.repo, this.store.org].filter(Boolean).join(' · '),
        tag: `kiln:${this.store.org}:${entry.task}`,
        icon: '/favicon.svg',
      });
      n.onclick = () => {
        globalThis.focus?.();
        this.open(entry);
        n.close();
      };
    } catch (e) {
      // Some browsers (Android Chrome) only notify through a service worker.
    }
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed() {
    for (const fn of this.listeners) fn();
  }
}

/** Whether this browser can notify, and what it was told: 'granted', 'denied', 'default' or 'unsupported'. */
export function notificationState() {
  const N = globalThis.Notification;
  return N ? N.permission : 'unsupported';
}

/** Asks for permission: call it from a click (browsers refuse it otherwise). */
export async function askForNotifications() {
  const N = globalThis.Notification;
  if (!N) return 'unsupported';
  try {
    return await N.requestPermission();
  } catch (e) {
    return N.permission;
  }
}
