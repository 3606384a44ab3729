// Reads the Prometheus text of `/metrics` into samples, and the few headline
// numbers the Admin view shows. Pure functions: no DOM, no fetch.

/** `name{a="x",b="y"} 12` lines → [{name, labels, value}]; comments and junk are skipped. */
export function parsePrometheus(text) {
  const samples = [];
  for (const raw of String(text).split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, '$1');
    const value = Number(m[3]);
    if (!Number.isNaN(value)) samples.push({ name: m[1], labels, value });
  }
  return samples;
}

/** The sum of a metric's samples whose labels include `match`; null when it has none. */
export function total(samples, name, match = {}) {
  let sum = null;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(match).some(([k, v]) => s.labels[k] !== v)) continue;
    sum = (sum || 0) + s.value;
  }
  return sum;
}

/** The headline numbers: tasks by status, HTTP requests by class, events, streams, actors. */
export function headlines(samples) {
  const byLabel = (name, label) => {
    const out = {};
    for (const s of samples) if (s.name === name && s.labels[label] !== undefined) out[s.labels[label]] = s.value;
    return out;
  };
  return {
    tasks: byLabel('kiln_tasks', 'status'),
    requests: byLabel('kiln_http_requests_total', 'class'),
    events: total(samples, 'kiln_events_appended_total'),
    batches: total(samples, 'kiln_event_batches_total'),
    subscribers: total(samples, 'kiln_stream_subscribers'),
    overflows: total(samples, 'kiln_stream_overflows_total'),
    actors: total(samples, 'kiln_live_actors'),
  };
}
