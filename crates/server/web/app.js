// The app shell: hash routing (#/library, #/loras/{id}, #/new, #/mine, #/admin), the session,
// and the navigation. Each page module exports render(main, ctx) and may return a cleanup
// function (closing an event stream) that runs when the page is left. A route may carry a query
// (`#/library?q=cyber&sort=name`): ctx.params; a page that keeps its state there writes it with
// history.pushState/replaceState (no hashchange), and back/forward re-render from it.

import { session, api, ApiError } from './api.js';
import { h, toast } from './dom.js';
import { renderLibrary } from './library.js';

performance.mark('lf-app-start');

// Errors and CSP violations, kept for the browser tests (which assert there are none).
window.__errors = [];
window.addEventListener('error', (e) => window.__errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason?.message || e.reason)));
document.addEventListener('securitypolicyviolation', (e) => window.__errors.push(`CSP: ${e.violatedDirective} ${e.blockedURI}`));

const main = document.getElementById('main');
const nav = document.getElementById('nav');
let cleanup = null;
let me = null;

const pages = {
  library: (ctx) => renderLibrary(main, ctx),
  mine: (ctx) => renderLibrary(main, { ...ctx, mine: true }),
  loras: async (ctx) => (await import('./lora.js')).renderLora(main, ctx),
  new: async (ctx) => (await import('./new.js')).renderNew(main, ctx),
  admin: async (ctx) => (await import('./admin.js')).renderAdmin(main, ctx),
};

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const i = raw.indexOf('?');
  const path = i < 0 ? raw : raw.slice(0, i);
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || 'library', arg: parts[1], params: new URLSearchParams(i < 0 ? '' : raw.slice(i + 1)) };
}

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* already closed */ } cleanup = null; }
  if (!session.token) {
    nav.hidden = true;
    const { renderSignIn } = await import('./signin.js');
    renderSignIn(main, { onSignedIn: signedIn });
    return;
  }
  nav.hidden = false;
  const { page, arg, params } = parseHash();
  for (const a of nav.querySelectorAll('a[data-page]')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const render = pages[page];
  main.replaceChildren();
  if (!render) {
    main.append(h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/library' }, 'Go to the library')));
    return;
  }
  try {
    // The library needs no account details: its first page is not held up by /me.
    const mePromise = whoAmI();
    if (page === 'library') mePromise.catch(() => {});
    const ctx = { arg, params, me: page === 'library' ? null : await mePromise, navigate };
    const done = await render(ctx);
    if (typeof done === 'function') cleanup = done;
  } catch (e) {
    if (e.name === 'AbortError') return;
    main.append(h('div', { class: 'banner', role: 'alert' }, e.message));
  }
}

function navigate(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

async function whoAmI() {
  if (me) return me;
  me = await api('/api/v1/me');
  me.is_admin = session.isAdmin();
  document.getElementById('who').textContent = me.display_name + (me.is_admin ? ' (admin)' : '');
  document.getElementById('nav-admin').hidden = !me.is_admin;
  return me;
}

function signedIn() {
  me = null;
  if (!location.hash || location.hash === '#/' ) location.hash = '#/library';
  route();
  main.focus();
}

function signOut(message) {
  session.clear();
  me = null;
  document.getElementById('who').textContent = '';
  if (message) toast(message);
  route();
}

document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
window.addEventListener('lf-unauthorized', (e) => {
  const err = e.detail;
  if (err instanceof ApiError && ['token_expired', 'invalid_token', 'invalid_signature', 'missing_token'].includes(err.code)) {
    signOut(err.message);
  }
});
window.addEventListener('hashchange', () => { route(); main.focus({ preventScroll: true }); });
route();
