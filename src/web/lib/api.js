// The one API client of the page: JSON over fetch with the session cookie (the
// page never sees a token), and the API's errors as `ApiError`s whose message is
// the server's own words.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API; answers the parsed JSON (null for 204). Throws ApiError. */
export async function api(method, path, body) {
  const init = { method, headers: { accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'unreachable', 'Kiln cannot be reached: check that the server is running and the network is up.');
  }
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch (e) {
    data = null;
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data?.error || 'http_error', data?.message || `The server answered ${res.status}.`);
    if (res.status === 401 && !path.startsWith('/v1/dashboard/session')) {
      window.dispatchEvent(new CustomEvent('kiln:signed-out', { detail: err }));
    }
    throw err;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);
export const del = (path) => api('DELETE', path);
export const put = (path, body) => api('PUT', path, body);
export const patch = (path, body) => api('PATCH', path, body);

/** GETs a text answer (the Prometheus text of `/metrics`). Throws ApiError. */
export async function getText(path) {
  let res;
  try {
    res = await fetch(path, { headers: { accept: 'text/plain' }, credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'unreachable', 'Kiln cannot be reached: check that the server is running and the network is up.');
  }
  const text = await res.text();
  if (!res.ok) {
    let data = null;
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = null;
    }
    const err = new ApiError(res.status, data?.error || 'http_error', data?.message || `The server answered ${res.status}.`);
    if (res.status === 401) window.dispatchEvent(new CustomEvent('kiln:signed-out', { detail: err }));
    throw err;
  }
  return text;
}

/** `/v1/organizations/{org}` + rest, with the name escaped. */
export function orgPath(org, rest = '') {
  return `/v1/organizations/${encodeURIComponent(org)}${rest}`;
}

/** The WebSocket URL of an API path (same host; the cookie goes with it). */
export function wsUrl(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}
