// The task's terminal: xterm.js attached over the terminal WebSocket (the
// session cookie authenticates it). Output is replayed from the start, typing
// and resizing go to the agent, and a dropped connection resumes from the
// offset it reached, with no gap and no duplicate.

import { Terminal } from '/vendor/xterm/xterm.mjs';
import { FitAddon } from '/vendor/xterm-addon-fit/addon-fit.mjs';
import { orgPath, wsUrl } from '../lib/api.js';
import { h } from '../lib/dom.js';
import { isDark } from '../lib/theme.js';

const DARK = { background: '#0d1117', foreground: '#e6edf3', cursor: '#e6edf3', selectionBackground: '#264f78' };
const LIGHT = { background: '#ffffff', foreground: '#1f2328', cursor: '#1f2328', selectionBackground: '#b6d4fe' };

/** Codes after which the terminal is over (or the credential gone). */
const FINAL = new Set([1000, 4001, 4003, 4004]);

export function terminalPane(container, app, taskId) {
  const status = h('p.term-status.muted.small', { role: 'status' }, 'Connecting…');
  const host = h('div.term', { 'aria-label': 'Terminal' });
  container.append(status, host);
  const term = new Terminal({
    convertEol: false,
    cursorBlink: true,
    fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace',
    fontSize: 13,
    scrollback: 5000,
    theme: isDark() ? DARK : LIGHT,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(host);
  let ws = null;
  let next = 0;
  let closed = false;
  let retry = 500;
  let timer = null;
  const encoder = new TextEncoder();

  const sendSize = () => {
    if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
  };
  const refit = () => {
    try {
      fit.fit();
    } catch (e) {
      // Not laid out yet.
    }
    sendSize();
  };
  const observer = new ResizeObserver(() => refit());
  // The theme toggle (and the system's switch) recolour the terminal too.
  const onTheme = () => {
    term.options.theme = isDark() ? DARK : LIGHT;
  };
  window.addEventListener('kiln:theme', onTheme);
  observer.observe(host);

  term.onData((data) => {
    if (ws?.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
  });

  function connect() {
    if (closed) return;
    ws = new WebSocket(wsUrl(orgPath(app.org, `/tasks/${taskId}/terminal?offset=${next}`)));
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      retry = 500;
      status.textContent = 'Attached: type to talk to the agent.';
      refit();
    };
    ws.onmessage = (msg) => {
      if (typeof msg.data === 'string') {
        let frame;
        try {
          frame = JSON.parse(msg.data);
        } catch (e) {
          return;
        }
        if (frame.type === 'attached' || frame.type === 'offset') next = frame.offset;
        else if (frame.type === 'exited') status.textContent = frame.reason ? `Ended: ${frame.reason}` : `The agent exited${frame.code !== null && frame.code !== undefined ? ` with code ${frame.code}` : ''}.`;
        return;
      }
      const bytes = new Uint8Array(msg.data);
      next += bytes.length;
      term.write(bytes);
    };
    ws.onclose = (e) => {
      if (closed) return;
      if (FINAL.has(e.code)) {
        if (e.code !== 1000) status.textContent = `Disconnected: ${e.reason || 'signed out'}.`;
        else if (!status.textContent.startsWith('Ended') && !status.textContent.startsWith('The agent')) status.textContent = e.reason ? `Ended: ${e.reason}.` : 'Ended.';
        return;
      }
      status.textContent = 'Reconnecting…';
      timer = setTimeout(connect, retry);
      retry = Math.min(retry * 2, 5000);
    };
  }
  connect();
  return () => {
    closed = true;
    clearTimeout(timer);
    observer.disconnect();
    window.removeEventListener('kiln:theme', onTheme);
    ws?.close(1000);
    term.dispose();
  };
}
