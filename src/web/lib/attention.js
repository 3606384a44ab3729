// What needs its person: the organization's inbox, from the server (`GET
// …/inbox`: the same list and read marks as `kiln inbox`), kept live from the
// event stream (`inbox.added` adds an entry, `inbox.read` marks entries read, for
// every page and token of the organization), and browser notifications for the
// entries that arrive live. Nothing here polls: the inbox is read once at load,
// then the store's stream keeps it fresh.

import { get, post, orgPath } from './api.js';

/** How many entries the page keeps (newest first). */
export const INBOX_LIMIT = 100;
/** A live entry older than this (a reconnect's catch-up) is listed, not notified. */
const NOTIFY_MAX_AGE_MS = 10 * 60 * 1000;
/** The CSS class suffix of each notification kind (`r-…`). */
const REASONS = { needs_input: 'input', idle: 'idle', ci_failed: 'ci', merged: 'merged' };

/** A page entry from the API's inbox entry: a pure function. */
export function entryOf(e) {
  if (!e || typeof e.id !== 'number') return null;
  return {
    id: e.id, task: e.task, repo: e.repo, at: e.at, title: e.title, kind: e.kind,
    reason: REASONS[e.kind] || e.kind, label: e.label || e.kind, read: e.read_at != null,
  };
}

/**
 * The inbox of one organization's store. `isWatching(task)` answers whether the
 * person is looking at that task right now (no notification then).
 */
export class Inbox {
  constructor(store, { isWatching = () => false, open = () => {} } = {}) {
    this.store = store;
    this.entries = [];
    this.ids = new Set();
    this.unreadTotal = 0;
    this.listeners = new Set();
    this.isWatching = isWatching;
    this.open = open;
    this.loaded = false;
    this.error = null;
    // Events that arrive while the list loads wait, then apply in order.
    this.early = [];
    this.off = store.onEvent((ev) => (this.loaded ? this.apply(ev, true) : this.early.push(ev)));
  }

  /** Reads the inbox once (no notification for what it lists). */
  async load() {
    try {
      const page = await get(orgPath(this.store.org, `/inbox?limit=${INBOX_LIMIT}`));
      for (const e of page.items || []) this.add(entryOf(e), false);
      this.unreadTotal = page.unread || 0;
      this.error = null;
    } catch (e) {
      this.error = e;
    }
    this.loaded = true;
    // Only what is newer than the list (the stream may have replayed older events).
    for (const ev of this.early.splice(0)) this.apply(ev, true);
    this.changed();
  }

  stop() {
    this.off();
    this.listeners.clear();
  }

  /** An event of the stream: a new entry, or read marks. */
  apply(ev, live) {
    if (ev?.kind === 'inbox.added') {
      const entry = entryOf(ev.data?.entry);
      if (entry && !this.ids.has(entry.id)) {
        this.add(entry, live);
        if (!entry.read) this.unreadTotal++;
        this.changed();
      }
    } else if (ev?.kind === 'inbox.read') {
      const ids = new Set(ev.data?.ids || []);
      for (const e of this.entries) if (ids.has(e.id)) e.read = true;
      if (typeof ev.data?.unread === 'number') this.unreadTotal = ev.data.unread;
      this.changed();
    }
  }

  add(entry, live) {
    if (!entry || this.ids.has(entry.id)) return;
    this.ids.add(entry.id);
    let i = this.entries.findIndex((e) => e.id < entry.id);
    if (i < 0) i = this.entries.length;
    this.entries.splice(i, 0, entry);
    while (this.entries.length > INBOX_LIMIT) this.ids.delete(this.entries.pop().id);
    if (live && !entry.read) this.notify(entry);
  }

  isRead(entry) {
    return entry.read;
  }

  /** Unread entries of the whole inbox (the server's count). */
  get unread() {
    return Math.max(0, this.unreadTotal);
  }

  /** Marks one entry read, for the organization; the page shows it at once. */
  markRead(entry) {
    if (entry.read) return;
    entry.read = true;
    this.unreadTotal--;
    this.changed();
    this.send({ ids: [entry.id] });
  }

  markAllRead() {
    for (const e of this.entries) e.read = true;
    this.unreadTotal = 0;
    this.changed();
    this.send({ all: true });
  }

  async send(body) {
    try {
      const res = await post(orgPath(this.store.org, '/inbox/read'), body);
      if (typeof res?.unread === 'number') this.unreadTotal = res.unread;
      this.error = null;
    } catch (e) {
      this.error = e;
    }
    this.changed();
  }

  /** The title of an entry's task: as the store knows it now, else as the entry was made. */
  titleOf(entry) {
    return this.store.tasks.get(entry.task)?.title || entry.title || (entry.task ? `Task ${entry.task}` : this.store.org);
  }

  notify(entry) {
    const N = globalThis.Notification;
    if (!N || N.permission !== 'granted') return;
    if (typeof entry.at === 'number' && Date.now() - entry.at > NOTIFY_MAX_AGE_MS) return;
    if (entry.task && this.isWatching(entry.task)) return;
    try {
      const n = new N(`${entry.label}: ${this.titleOf(entry)}`, {
        body: [entry.repo, this.store.org].filter(Boolean).join(' · '),
        tag: `kiln:${this.store.org}:${entry.task || entry.id}`,
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
