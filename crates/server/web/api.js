// The API client: the bearer token (kept in localStorage), JSON calls with the API's own error
// messages, and Server-Sent Events read with fetch() so the token travels in the Authorization
// header (EventSource cannot send one, and tokens do not belong in URLs).

const TOKEN_KEY = 'loraforge.token';

export const session = {
  get token() { return localStorage.getItem(TOKEN_KEY); },
  set(token) { localStorage.setItem(TOKEN_KEY, token); },
  clear() { localStorage.removeItem(TOKEN_KEY); },
  /** The token's claims (for what to show only: the server checks every call). */
  claims() {
    const t = this.token;
    if (!t) return null;
    try {
      const part = t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(part.padEnd(part.length + (4 - part.length % 4) % 4, '=')));
    } catch { return null; }
  },
  isAdmin() {
    const c = this.claims();
    return !!c && (c.role === 'admin' || c.app_metadata?.role === 'admin');
  },
};

/** An error answer: `code` and `message` from the API's `{"error": {…}}`, with its details. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `request failed (${status})`);
    this.status = status;
    this.code = error?.code || 'http_' + status;
    this.details = error || {};
  }
}

/** Calls the API; resolves to the JSON body, rejects with an ApiError. */
export async function api(path, { method = 'GET', json, form, signal, auth = true } = {}) {
  const headers = {};
  if (auth && session.token) headers.Authorization = 'Bearer ' + session.token;
  let body;
  if (json !== undefined) { headers['Content-Type'] = 'application/json'; body = JSON.stringify(json); }
  if (form) body = form;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { code: 'network', message: 'The server could not be reached; check your connection and try again.' });
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const err = new ApiError(resp.status, data?.error);
    if (resp.status === 401 && auth) window.dispatchEvent(new CustomEvent('lf-unauthorized', { detail: err }));
    throw err;
  }
  return data;
}

/** As api(), but null when the route answers 404 (optional features other parts add). */
export async function optional(path, opts) {
  try { return await api(path, opts); } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return null;
    throw e;
  }
}

/**
 * Reads a text/event-stream: calls onEvent({event, id, data}) for each event until the server
 * ends the stream or `signal` aborts. Resolves when the stream ends; rejects with an ApiError
 * when the server refuses it.
 */
export async function streamEvents(path, { signal, lastEventId, onEvent }) {
  const headers = { Accept: 'text/event-stream', Authorization: 'Bearer ' + session.token };
  if (lastEventId) headers['Last-Event-ID'] = String(lastEventId);
  const resp = await fetch(path, { headers, signal, cache: 'no-store' });
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch { /* not JSON */ }
    throw new ApiError(resp.status, data?.error);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { event: 'message', id: null, data: '' };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (ev.data) {
          let data = ev.data.replace(/\n$/, '');
          try { data = JSON.parse(data); } catch { /* plain text */ }
          onEvent({ event: ev.event, id: ev.id, data });
        }
        ev = { event: 'message', id: ev.id, data: '' };
      } else if (!line.startsWith(':')) {
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (field === 'event') ev.event = val;
        else if (field === 'data') ev.data += val + '\n';
        else if (field === 'id') ev.id = val;
      }
    }
  }
}
