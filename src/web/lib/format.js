// Words and numbers as a person reads them.

/** "3m", "2h", "5d": how long ago `ms` was. */
export function age(ms, now = Date.now()) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m}m`;
  const hours = Math.round(m / 60);
  if (hours < 48) return `${hours}h`;
  return `${Math.round(hours / 24)}d`;
}

/** A full date for a tooltip. */
export function when(ms) {
  return new Date(ms).toLocaleString();
}

/** Status names as words. */
export const STATUS_WORDS = {
  queued: 'Queued', provisioning: 'Starting', running: 'Running', idle: 'Idle',
  stalled: 'Stalled', interrupted: 'Interrupted', failed: 'Failed', archived: 'Archived', killed: 'Killed',
};

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}
