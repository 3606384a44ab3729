// One modal dialog at a time (the command palette, the shortcuts sheet, the
// inbox): role=dialog with aria-modal, focus kept inside while it is open (Tab
// and Shift+Tab cycle), Escape or a click outside closes it, and the focus goes
// back to where it was.

import { h } from './dom.js';

let current = null;

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

/**
 * Opens a dialog labelled `label` holding `body` (an element). Answers
 * `{ el, close }`. `onClose` runs once when it closes, however it closes.
 */
export function openDialog({ label, id, className = '', body, focus, onClose }) {
  closeDialog();
  const before = document.activeElement;
  const titleId = `${id || 'dialog'}-title`;
  const panel = h(`div.dialog${className ? `.${className}` : ''}`, {
    id, role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': titleId, tabindex: '-1',
  }, h('h2.visually-hidden', { id: titleId }, label), body);
  const backdrop = h('div.dialog-backdrop', {
    onmousedown: (e) => {
      if (e.target === backdrop) close();
    },
  }, panel);
  const onKey = (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      close();
      return;
    }
    if (e.key !== 'Tab') return;
    const items = [...panel.querySelectorAll(FOCUSABLE)].filter((el) => !el.closest('[hidden]'));
    if (!items.length) {
      e.preventDefault();
      panel.focus();
      return;
    }
    const first = items[0];
    const last = items[items.length - 1];
    if (e.shiftKey && (document.activeElement === first || !panel.contains(document.activeElement))) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && (document.activeElement === last || !panel.contains(document.activeElement))) {
      e.preventDefault();
      first.focus();
    }
  };
  // Focus that wanders out (a click on the page behind) comes back.
  const onFocusIn = (e) => {
    if (!panel.contains(e.target)) panel.focus();
  };
  let closed = false;
  function close() {
    if (closed) return;
    closed = true;
    document.removeEventListener('keydown', onKey, true);
    document.removeEventListener('focusin', onFocusIn);
    backdrop.remove();
    if (current?.close === close) current = null;
    onClose?.();
    if (before && before.isConnected && typeof before.focus === 'function') before.focus();
  }
  document.addEventListener('keydown', onKey, true);
  document.addEventListener('focusin', onFocusIn);
  document.body.append(backdrop);
  (focus || panel).focus();
  current = { el: panel, close };
  return current;
}

/** Closes the open dialog, if any. */
export function closeDialog() {
  current?.close();
}

/** Whether a dialog is open now. */
export function dialogOpen() {
  return !!current;
}
