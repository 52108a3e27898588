// The library (and "My LoRAs"): search as you type, sort, filter by status, pages of 30 from the
// API ("Load more"), never the whole list. Sets performance marks for bench/web_library.sh:
// `lf-first-rows` when the first rows are painted, and window.__lf.searchMs (last keystroke →
// results painted, debounce included) after each search.
//
// The state lives in the route's query, so a reload, back/forward and a shared link show the
// same list: `#/library?q=cyber&sort=name&status=completed&page=2` (`page`: pages of 30 shown).
// Picking a sort or a status adds a history entry; typing and "Load more" replace the current
// one (a back press does not step through every keystroke). Defaults are left out of the URL.

import { api } from './api.js';
import { h, badge, fmtDate, debounce, creatorName, errorBanner, STATUSES } from './dom.js';

const PAGE = 30;
const DEBOUNCE_MS = 60;
window.__lf = window.__lf || { searchMs: [] };

export function renderLibrary(main, { me, mine, params = new URLSearchParams() }) {
  const title = mine ? 'My LoRAs' : 'Library';
  const search = h('input', { type: 'search', id: 'search', name: 'search', autocomplete: 'off',
    placeholder: 'Name or description', 'aria-controls': 'loras' });
  const sort = h('select', { id: 'sort', name: 'sort' },
    h('option', { value: mine ? 'recent' : 'popular' }, mine ? 'Recent' : 'Popular'),
    h('option', { value: mine ? 'popular' : 'recent' }, mine ? 'Popular' : 'Recent'),
    h('option', { value: 'name' }, 'Name'));
  const status = h('select', { id: 'status', name: 'status' },
    h('option', { value: '' }, 'Any status'), STATUSES.map((s) => h('option', { value: s }, s)));
  const defaultSort = sort.options[0].value;
  // The state from the URL; values the controls do not offer fall back to the defaults.
  search.value = params.get('q') || '';
  sort.value = params.get('sort') || defaultSort;
  if (sort.selectedIndex < 0) sort.value = defaultSort;
  status.value = params.get('status') || '';
  if (status.selectedIndex < 0) status.value = '';
  const wantPages = Math.min(Math.max(parseInt(params.get('page'), 10) || 1, 1), 20);
  const list = h('ul', { class: 'loras', id: 'loras', 'aria-busy': 'true', 'aria-label': title });
  const summary = h('p', { class: 'muted', id: 'summary', 'aria-live': 'polite' }, '\u00a0');
  const more = h('button', { type: 'button', class: 'secondary', id: 'load-more', hidden: true }, 'Load more');
  const msg = h('div');
  main.replaceChildren(
    h('h1', {}, title),
    h('div', { class: 'controls', role: 'search' },
      h('div', { class: 'search' }, h('label', { for: 'search' }, 'Search'), search),
      h('div', {}, h('label', { for: 'sort' }, 'Sort by'), sort),
      h('div', {}, h('label', { for: 'status' }, 'Status'), status)),
    msg, list, h('div', { class: 'pager' }, summary, more));

  let offset = 0;
  let pages = 0;
  let ctrl = null;
  let lastKeyAt = null;
  let first = true;

  const skeleton = (n) => Array.from({ length: n }, () =>
    h('li', { class: 'lora-row skeleton', 'aria-hidden': 'true' }, h('div', { class: 'main' }, h('div', { class: 'bar' }), h('div', { class: 'bar' }))));

  const row = (l) => h('li', { class: 'lora-row', 'data-id': l.id },
    badge(l.training_status),
    h('div', { class: 'main' },
      h('a', { class: 'name', href: `#/loras/${l.id}` }, `${l.name} (by ${creatorName(l.creator)})`),
      // Only the owner (My LoRAs) and admins get hidden rows: say so, and why.
      l.hidden ? h('div', { class: 'hidden-note error' }, `Hidden by an admin: ${l.hidden.reason}`) : '',
      h('div', { class: 'meta' }, l.description ? l.description + ' · ' : '', fmtDate(l.created_at))),
    h('span', { class: 'uses', title: 'times used' }, `${l.usage_count} use${l.usage_count === 1 ? '' : 's'}`));

  async function load(append) {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    const keyAt = lastKeyAt;
    const q = new URLSearchParams({ limit: PAGE, offset: append ? offset : 0, sort: sort.value });
    if (search.value.trim()) q.set('search', search.value.trim());
    if (status.value) q.set('status', status.value);
    if (mine) q.set('creator', me.id);
    if (!append) { list.setAttribute('aria-busy', 'true'); if (!list.children.length || first) list.replaceChildren(...skeleton(6)); }
    more.disabled = true;
    let page;
    try {
      page = await api('/api/v1/lora-models?' + q, { signal: ctrl.signal });
    } catch (e) {
      if (e.name === 'AbortError') return;
      msg.replaceChildren(errorBanner(e));
      list.replaceChildren();
      list.setAttribute('aria-busy', 'false');
      return;
    }
    msg.replaceChildren();
    pages = append ? pages + 1 : 1;
    const rows = page.items.map(row);
    if (append) list.append(...rows); else list.replaceChildren(...rows);
    offset = page.offset + page.items.length;
    list.setAttribute('aria-busy', 'false');
    if (!append && !page.items.length) {
      list.replaceChildren(h('li', { class: 'muted', id: 'empty' }, search.value.trim() ? 'No LoRA matches your search.' : 'No LoRAs yet.'));
    }
    const total = page.total_exact ? page.total.toLocaleString() : 'about ' + page.total.toLocaleString();
    summary.textContent = `Showing ${offset.toLocaleString()} of ${total}`;
    more.hidden = offset >= page.total || page.items.length < PAGE;
    more.disabled = false;
    // Painted: the frame after this one has been laid out and drawn.
    requestAnimationFrame(() => setTimeout(() => {
      if (first) {
        first = false;
        performance.mark('lf-first-rows');
        window.__lf.firstRowsMs = performance.now();
      }
      if (keyAt != null) {
        window.__lf.searchMs.push(performance.now() - keyAt);
        list.dataset.searched = search.value;
      }
    }, 0));
  }

  /** Writes the controls' state into the route's query (see the top of this file). */
  function keep(push) {
    const q = new URLSearchParams();
    if (search.value.trim()) q.set('q', search.value.trim());
    if (sort.value !== defaultSort) q.set('sort', sort.value);
    if (status.value) q.set('status', status.value);
    if (pages > 1) q.set('page', String(pages));
    const hash = `#/${mine ? 'mine' : 'library'}${q.toString() ? '?' + q : ''}`;
    if (hash === location.hash) return;
    if (push) history.pushState(null, '', hash); else history.replaceState(null, '', hash);
  }

  let restoring = true; // until the person changes something
  const searchSoon = debounce(() => { keep(false); load(false); }, DEBOUNCE_MS);
  search.addEventListener('input', () => { restoring = false; lastKeyAt = performance.now(); searchSoon(); });
  sort.addEventListener('change', () => { restoring = false; lastKeyAt = null; pages = 1; keep(true); load(false); });
  status.addEventListener('change', () => { restoring = false; lastKeyAt = null; pages = 1; keep(true); load(false); });
  more.addEventListener('click', async () => { restoring = false; lastKeyAt = null; await load(true); keep(false); });
  (async () => {
    await load(false);
    // A shared or reloaded `page=N`: the same rows again, one page after the other.
    while (restoring && pages >= 1 && pages < wantPages && !more.hidden) await load(true);
  })();
  return () => ctrl?.abort();
}
