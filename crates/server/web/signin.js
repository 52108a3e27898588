// Sign in: paste a token (from `loraforge token` or your identity provider), or, on a service
// running on this computer with a generated secret, one click.

import { api, session, ApiError } from './api.js';
import { h, errorBanner } from './dom.js';

export async function renderSignIn(main, { onSignedIn }) {
  const msg = h('div', { id: 'signin-message' });
  const token = h('textarea', { id: 'token', name: 'token', rows: 4, autocomplete: 'off', spellcheck: 'false', required: true });
  const form = h('form', { class: 'card stack', id: 'signin-form' },
    h('div', {}, h('label', { for: 'token' }, 'Access token ', h('span', { class: 'hint' }, '(a JWT; run `loraforge token --user <uuid>` on the server)')), token),
    h('button', { type: 'submit', id: 'signin-token' }, 'Sign in'));
  const local = h('section', { class: 'card stack', id: 'local-signin', hidden: true },
    h('h2', {}, 'On this computer'),
    h('p', { class: 'muted' }, 'This service runs on your machine with a generated secret: sign in as its local admin.'),
    h('button', { type: 'button', id: 'signin-local' }, 'Sign in on this computer'));
  main.replaceChildren(h('h1', {}, 'Sign in'), msg, h('div', { class: 'stack' }, form, local));

  const accept = async (t) => {
    session.set(t);
    try {
      await api('/api/v1/me', { auth: true });
      onSignedIn();
    } catch (e) {
      session.clear();
      msg.replaceChildren(errorBanner(e));
    }
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const t = token.value.trim().replace(/^Bearer\s+/i, '');
    if (!t) { msg.replaceChildren(errorBanner(new Error('Paste a token first.'))); return; }
    await accept(t);
  });
  local.querySelector('button').addEventListener('click', async () => {
    try {
      const r = await api('/api/v1/auth/local', { method: 'POST', auth: false });
      await accept(r.token);
    } catch (e) {
      msg.replaceChildren(errorBanner(e instanceof ApiError ? e : new Error(String(e))));
    }
  });
  try {
    const a = await api('/api/v1/auth/local', { auth: false });
    local.hidden = !a?.available;
  } catch { local.hidden = true; }
}
