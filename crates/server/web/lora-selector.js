// <lora-selector>: loraforge's LoRA selector for host apps (PRD 1, "LoRA Selector Component").
// A dependency-free ES module served by the service at /ui/lora-selector.js; importing it defines
// the element. Documented in docs/lora-selector.md (attributes, properties, events, theming).
//
// Contracts it relies on (all in the service's OpenAPI document at /openapi.json):
//   GET /api/v1/lora-models?status=completed&sort=&search=&limit=&offset=  the library
//   GET /api/v1/lora-models/{id}            one LoRA (to name a preset `existing` value)
//   GET /api/v1/lora-models/{id}/status     { training_status, progress, estimated_remaining, … }
//   GET /api/v1/lora-models/{id}/events     SSE (read with fetch, so the bearer token is sent)
//   GET /api/v1/lora-names/check?name=      { name, valid, problem?, yours, others }
//   GET /api/v1/me/limits                   { limit, remaining, … }
// The token is kept in a private field: never written to an attribute, the DOM or the console.

const SCRIPT_ORIGIN = (() => {
  try {
    return new URL(import.meta.url).origin;
  } catch {
    return globalThis.location ? globalThis.location.origin : '';
  }
})();

const PAGE = 20;
const SEARCH_DEBOUNCE_MS = 250;
const NAME_DEBOUNCE_MS = 300;
const STATUS_POLL_MS = 30_000;
const MAX_NAME_CHARS = 255;
const DEFAULT_MONTHLY_LIMIT = 5;
const FINAL = new Set(['completed', 'failed', 'cancelled']);
const IN_PROGRESS = new Set(['pending', 'queued', 'training', 'validating']);
const NOTICE =
  'LoRA training in progress. Video will use reference images. You can regenerate with LoRA once training completes.';
const helpText = (n) =>
  `A new LoRA will be trained from character reference images. This adds ~30-60 minutes to generation time. Training costs are covered by the system. Maximum ${n} LoRAs per month per user.`;

const STYLE = `
:host { display: block; font: var(--lora-selector-font, inherit); color: var(--lora-selector-fg, inherit);
  --_accent: var(--lora-selector-accent, #4f46e5); --_border: var(--lora-selector-border, #c8c8d0);
  --_bg: var(--lora-selector-bg, #fff); --_muted: var(--lora-selector-muted, #5f6170);
  --_danger: var(--lora-selector-danger, #b42318); --_warn: var(--lora-selector-warning, #8a5a00);
  --_ok: var(--lora-selector-success, #1a7f37); --_radius: var(--lora-selector-radius, 8px); }
:host([hidden]) { display: none; }
* { box-sizing: border-box; }
fieldset { border: 0; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: .25rem 1rem; }
legend { font-weight: 600; padding: 0; margin-bottom: .25rem; }
.choice { display: inline-flex; align-items: center; gap: .4rem; min-height: 44px; cursor: pointer; }
.choice small { color: var(--_muted); }
input[type=radio] { accent-color: var(--_accent); width: 1.1rem; height: 1.1rem; margin: 0; }
.panel { margin-top: .5rem; }
.panel[hidden] { display: none; }
.row { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; }
.foot { min-height: 44px; align-items: center; justify-content: space-between; }
.field { display: flex; flex-direction: column; gap: .2rem; flex: 1 1 12rem; min-width: 0; }
.field.narrow { flex: 0 1 10rem; }
label.lbl { font-size: .875rem; font-weight: 600; }
input[type=text], input[type=search], select { font: inherit; color: inherit; background: var(--_bg);
  border: 1px solid var(--_border); border-radius: var(--_radius); padding: .55rem .65rem; min-height: 44px; width: 100%; }
input:focus-visible, select:focus-visible, button:focus-visible { outline: 2px solid var(--_accent); outline-offset: 1px; }
[role=listbox] { list-style: none; margin: .5rem 0 0; padding: 0; border: 1px solid var(--_border);
  border-radius: var(--_radius); background: var(--_bg); height: 15rem; overflow-y: auto; overscroll-behavior: contain; }
[role=option] { padding: .5rem .65rem; min-height: 44px; cursor: pointer; display: flex; gap: .5rem;
  align-items: center; justify-content: space-between; border-bottom: 1px solid color-mix(in srgb, var(--_border) 40%, transparent); }
[role=option] .txt { min-width: 0; }
[role=option] .label { display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
[role=option] .desc { display: block; font-size: .8rem; color: var(--_muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
[role=option].active { background: color-mix(in srgb, var(--_accent) 12%, transparent); }
[role=option][aria-selected=true] { box-shadow: inset 3px 0 0 var(--_accent); font-weight: 600; }
.badge { display: inline-block; font-size: .75rem; font-weight: 600; line-height: 1.4; padding: .05rem .5rem;
  border-radius: 999px; border: 1px solid currentColor; white-space: nowrap; color: var(--_muted); }
.badge.completed { color: var(--_ok); } .badge.failed, .badge.cancelled { color: var(--_danger); }
.badge.training, .badge.validating { color: var(--_accent); }
.line { min-height: 1.5rem; margin: .35rem 0 0; font-size: .875rem; }
.muted { color: var(--_muted); } .error { color: var(--_danger); } .warn { color: var(--_warn); } .ok { color: var(--_ok); }
button { font: inherit; min-height: 44px; padding: .4rem .9rem; border-radius: var(--_radius);
  border: 1px solid var(--_border); background: var(--_bg); color: inherit; cursor: pointer; }
button[hidden] { display: none; }
.help { font-size: .8rem; color: var(--_muted); margin: .35rem 0 0; }
.status { margin-top: .75rem; padding: .6rem .75rem; border: 1px solid var(--_border); border-radius: var(--_radius); }
.status[hidden] { display: none; }
.bar { height: .5rem; background: color-mix(in srgb, var(--_border) 50%, transparent); border-radius: 999px; overflow: hidden; margin: .4rem 0; }
.bar > div { height: 100%; width: 0; background: var(--_accent); transition: width .3s; }
:host([disabled]) { opacity: .6; }
@media (prefers-reduced-motion: reduce) { .bar > div { transition: none; } }
`;

const TEMPLATE = `
<fieldset part="group">
  <legend part="legend">LoRA</legend>
  <label class="choice" part="choice"><input type="radio" name="mode" value="none"> No LoRA <small>(use reference images only)</small></label>
  <label class="choice" part="choice"><input type="radio" name="mode" value="existing"> Use existing LoRA</label>
  <label class="choice" part="choice"><input type="radio" name="mode" value="new"> Train new LoRA</label>
</fieldset>
<div class="panel" id="existing" hidden part="existing">
  <div class="row">
    <div class="field"><label class="lbl" for="search">Search LoRAs</label>
      <input id="search" type="text" part="search" role="combobox" autocomplete="off" spellcheck="false"
        aria-autocomplete="list" aria-expanded="true" aria-controls="listbox" aria-describedby="list-msg"
        placeholder="Name or description"></div>
    <div class="field narrow"><label class="lbl" for="sort">Sort by</label>
      <select id="sort" part="sort"><option value="popular">Popularity</option><option value="recent">Recent</option><option value="name">Name</option></select></div>
  </div>
  <ul id="listbox" role="listbox" part="listbox" aria-label="Completed LoRAs" tabindex="-1"></ul>
  <div class="row foot"><p id="list-msg" class="line muted" role="status" aria-live="polite" part="message"></p>
    <button id="retry" type="button" hidden part="button">Retry</button>
    <button id="more" type="button" hidden part="button load-more">Load more</button></div>
  <p id="picked" class="line" part="picked"></p>
</div>
<div class="panel" id="new" hidden part="new">
  <div class="field"><label class="lbl" for="name">Character name</label>
    <input id="name" type="text" part="name-input" autocomplete="off" maxlength="${MAX_NAME_CHARS}" required
      aria-describedby="name-msg name-help"></div>
  <p id="name-msg" class="line" role="status" aria-live="polite" part="message"></p>
  <p id="name-help" class="help" part="help"></p>
</div>
<section class="status" id="status" hidden part="status" aria-live="polite" aria-label="LoRA training status">
  <div class="row" style="justify-content:space-between;align-items:center">
    <span id="st-name"></span><span id="st-badge" class="badge" part="badge status-badge"></span></div>
  <div class="bar" id="st-bar" role="progressbar" aria-label="Training progress" aria-valuemin="0" aria-valuemax="100" part="progress"><div></div></div>
  <p id="st-text" class="line muted" part="status-text"></p>
  <p id="st-notice" class="line warn" part="notice"></p>
</section>`;

/** `{error: {code, message}}` of a failed response, or a plain description. */
class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const chars = (s) => [...s].length;
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function formatEta(secs) {
  if (secs == null) return '';
  if (secs < 60) return 'less than a minute remaining';
  const m = Math.round(secs / 60);
  if (m < 60) return `about ${m} min remaining`;
  const h = Math.floor(m / 60);
  return `about ${h} h ${m % 60} min remaining`;
}

/** A `LoRASelection` from anything a host passes, or null when it is not one. */
function parseSelection(v) {
  if (typeof v === 'string') {
    try {
      v = JSON.parse(v);
    } catch {
      return null;
    }
  }
  if (!v || typeof v !== 'object') return null;
  if (v.type === 'none') return { type: 'none' };
  if (v.type === 'existing' && typeof v.loraId === 'string' && v.loraId) {
    return { type: 'existing', loraId: v.loraId };
  }
  if (v.type === 'new' && typeof v.characterName === 'string') {
    return { type: 'new', characterName: v.characterName };
  }
  return null;
}

export class LoraSelector extends HTMLElement {
  static formAssociated = true;
  static observedAttributes = ['api-base', 'token', 'value', 'disabled', 'lora-id'];

  #token = null;
  #internals = null;
  #root;
  #$ = {};
  #mode = 'none';
  #picked = null; // { id, label } of the chosen existing LoRA
  #emitted = null; // the last selection sent in a `change` event (or set by the host)
  #list = { items: [], total: 0, offset: 0, loading: false, error: null, seq: 0, abort: null };
  #active = -1; // index of the option the combobox points at
  #nameState = { kind: 'empty', message: '' }; // empty | invalid | checking | taken | warn | ok | unchecked
  #nameSeq = 0;
  #limit = DEFAULT_MONTHLY_LIMIT;
  #remaining = null;
  #timers = {};
  #watch = { id: null, abort: null, timer: null, last: null };
  #connected = false;
  #settingValue = false;

  constructor() {
    super();
    this.#root = this.attachShadow({ mode: 'open', delegatesFocus: true });
    this.#root.innerHTML = `<style>${STYLE}</style>${TEMPLATE}`;
    for (const id of ['existing', 'new', 'search', 'sort', 'listbox', 'list-msg', 'retry', 'more',
      'picked', 'name', 'name-msg', 'name-help', 'status', 'st-name', 'st-badge', 'st-bar', 'st-text', 'st-notice']) {
      this.#$[id] = this.#root.getElementById(id);
    }
    this.#$.radios = [...this.#root.querySelectorAll('input[type=radio]')];
    if (this.attachInternals) {
      try {
        this.#internals = this.attachInternals();
      } catch {
        this.#internals = null;
      }
    }
    this.#$['name-help'].textContent = helpText(this.#limit);
    this.#wire();
  }

  // ---- public API -------------------------------------------------------------------------

  get apiBase() {
    return (this.getAttribute('api-base') || SCRIPT_ORIGIN).replace(/\/+$/, '');
  }
  set apiBase(v) {
    this.setAttribute('api-base', v);
  }

  /** Write-only: reading gives null (see `hasToken`), so the token never leaves the element. */
  get token() {
    return null;
  }
  get hasToken() {
    return this.#token !== null;
  }
  set token(v) {
    const t = v == null || v === '' ? null : String(v);
    if (t === this.#token) return;
    this.#token = t;
    this.#reload();
  }

  /** The current choice as a `LoRASelection`, or null while it is incomplete or invalid. */
  get value() {
    return this.#currentSelection();
  }
  set value(v) {
    const sel = parseSelection(v);
    if (sel) this.#applyValue(sel);
  }

  get disabled() {
    return this.hasAttribute('disabled');
  }
  set disabled(v) {
    this.toggleAttribute('disabled', Boolean(v));
  }

  /** The LoRA whose training status is shown (e.g. the one a `new` selection started). */
  get loraId() {
    return this.getAttribute('lora-id');
  }
  set loraId(v) {
    if (v) this.setAttribute('lora-id', v);
    else this.removeAttribute('lora-id');
  }

  get validity() {
    return this.#internals ? this.#internals.validity : { valid: this.#validationMessage() === '' };
  }
  get validationMessage() {
    return this.#validationMessage();
  }
  get form() {
    return this.#internals ? this.#internals.form : null;
  }
  checkValidity() {
    return this.#internals ? this.#internals.checkValidity() : this.#validationMessage() === '';
  }
  reportValidity() {
    return this.#internals ? this.#internals.reportValidity() : this.checkValidity();
  }

  connectedCallback() {
    // Properties a host (React, say) set before this script defined the element shadow the
    // setters; hand them to the setters now.
    for (const p of ['apiBase', 'token', 'value', 'disabled', 'loraId']) {
      if (Object.prototype.hasOwnProperty.call(this, p)) {
        const v = this[p];
        delete this[p];
        this[p] = v;
      }
    }
    this.#connected = true;
    if (!this.#emitted && !this.hasAttribute('value')) this.#applyValue({ type: 'none' });
    this.#syncDisabled();
    this.#loadLimits();
    if (this.#mode === 'existing' && !this.#list.items.length) this.#fetchList(true);
    if (this.#picked && !this.#picked.label) this.#describePicked(this.#picked.id);
    this.#startWatch(this.loraId);
  }

  disconnectedCallback() {
    this.#connected = false;
    for (const t of Object.values(this.#timers)) clearTimeout(t);
    this.#list.abort?.abort();
    this.#stopWatch();
  }

  attributeChangedCallback(name, old, now) {
    if (old === now) return;
    switch (name) {
      case 'token':
        this.token = now;
        break;
      case 'api-base':
        this.#reload();
        break;
      case 'value': {
        const sel = parseSelection(now);
        if (sel && !this.#settingValue) this.#applyValue(sel);
        break;
      }
      case 'disabled':
        this.#syncDisabled();
        break;
      case 'lora-id':
        if (this.#connected) this.#startWatch(now);
        break;
    }
  }

  formDisabledCallback(disabled) {
    this.#syncDisabled(disabled);
  }

  formResetCallback() {
    this.#applyValue({ type: 'none' });
  }

  // ---- wiring -----------------------------------------------------------------------------

  #wire() {
    for (const r of this.#$.radios) {
      r.addEventListener('change', () => r.checked && this.#setMode(r.value, true));
    }
    const search = this.#$.search;
    search.addEventListener('input', () => {
      clearTimeout(this.#timers.search);
      this.#timers.search = setTimeout(() => this.#fetchList(true), SEARCH_DEBOUNCE_MS);
    });
    search.addEventListener('keydown', (e) => this.#onComboKey(e));
    this.#$.sort.addEventListener('change', () => this.#fetchList(true));
    this.#$.more.addEventListener('click', () => this.#fetchList(false));
    this.#$.retry.addEventListener('click', () => this.#fetchList(this.#list.items.length === 0));
    const lb = this.#$.listbox;
    // Keep focus in the combobox when an option is clicked.
    lb.addEventListener('mousedown', (e) => e.preventDefault());
    lb.addEventListener('click', (e) => {
      const li = e.target.closest('[role=option]');
      if (li) this.#pick(Number(li.dataset.index));
    });
    this.#$.name.addEventListener('input', () => this.#onNameInput());
  }

  #onComboKey(e) {
    const n = this.#list.items.length;
    const move = (i) => {
      e.preventDefault();
      if (n) this.#setActive(Math.max(0, Math.min(n - 1, i)));
    };
    switch (e.key) {
      case 'ArrowDown':
        return move(this.#active < 0 ? 0 : this.#active + 1);
      case 'ArrowUp':
        return move(this.#active < 0 ? n - 1 : this.#active - 1);
      case 'PageDown':
        return move(this.#active + 5);
      case 'PageUp':
        return move(this.#active - 5);
      case 'Home':
        if (e.ctrlKey) return move(0);
        return undefined;
      case 'End':
        if (e.ctrlKey) return move(n - 1);
        return undefined;
      case 'Enter':
        if (this.#active >= 0) {
          e.preventDefault();
          this.#pick(this.#active);
        }
        return undefined;
      case 'Escape':
        e.preventDefault();
        if (this.#active >= 0) this.#setActive(-1);
        else if (this.#$.search.value) {
          this.#$.search.value = '';
          this.#fetchList(true);
        }
        return undefined;
      default:
        return undefined;
    }
  }

  #setActive(i) {
    const opts = this.#$.listbox.children;
    opts[this.#active]?.classList.remove('active');
    this.#active = i;
    const el = opts[i];
    if (el) {
      el.classList.add('active');
      el.scrollIntoView({ block: 'nearest' });
      this.#$.search.setAttribute('aria-activedescendant', el.id);
      // Loading the next page when the keyboard reaches the end of what is loaded.
      if (i === opts.length - 1 && this.#hasMore()) this.#fetchList(false);
    } else {
      this.#$.search.removeAttribute('aria-activedescendant');
    }
  }

  #syncDisabled(formDisabled = false) {
    const off = formDisabled || this.disabled;
    for (const el of [...this.#$.radios, this.#$.search, this.#$.sort, this.#$.more, this.#$.retry, this.#$.name]) {
      el.disabled = off;
    }
    this.#$.listbox.setAttribute('aria-disabled', String(off));
  }

  // ---- modes and value --------------------------------------------------------------------

  #setMode(mode, byUser) {
    this.#mode = mode;
    for (const r of this.#$.radios) r.checked = r.value === mode;
    this.#$.existing.hidden = mode !== 'existing';
    this.#$.new.hidden = mode !== 'new';
    if (mode === 'existing' && this.#connected && !this.#list.items.length && !this.#list.loading) {
      this.#fetchList(true);
    }
    if (mode === 'new' && byUser && this.#nameState.kind === 'empty') this.#onNameInput();
    this.#update(byUser);
  }

  #applyValue(sel) {
    this.#settingValue = true;
    try {
      if (sel.type === 'existing') {
        if (this.#picked?.id !== sel.loraId) {
          this.#picked = { id: sel.loraId, label: '' };
          this.#describePicked(sel.loraId);
        }
      } else if (sel.type === 'new') {
        this.#$.name.value = sel.characterName;
      }
      this.#emitted = sel; // set by the host: not echoed back as a change
      this.#setMode(sel.type, false);
      if (sel.type === 'new') this.#onNameInput();
    } finally {
      this.#settingValue = false;
    }
  }

  #currentSelection() {
    switch (this.#mode) {
      case 'none':
        return { type: 'none' };
      case 'existing':
        return this.#picked ? { type: 'existing', loraId: this.#picked.id } : null;
      case 'new': {
        const ok = ['ok', 'warn', 'unchecked'].includes(this.#nameState.kind);
        return ok ? { type: 'new', characterName: this.#$.name.value.trim() } : null;
      }
      default:
        return null;
    }
  }

  #validationMessage() {
    if (this.#mode === 'existing' && !this.#picked) return 'Choose a LoRA from the list.';
    if (this.#mode === 'new') {
      const k = this.#nameState.kind;
      if (k === 'empty') return 'Enter a character name.';
      if (k === 'checking') return 'Checking the name…';
      if (k === 'invalid' || k === 'taken') return this.#nameState.message;
    }
    return '';
  }

  /** Refreshes validity and the form value; emits `change` when a new valid selection arose. */
  #update(byUser) {
    const sel = this.#currentSelection();
    const msg = this.#validationMessage();
    if (this.#internals) {
      const anchor = this.#mode === 'new' ? this.#$.name : this.#mode === 'existing' ? this.#$.search : undefined;
      if (msg) {
        const flags = this.#nameState.kind === 'empty' || (this.#mode === 'existing' && !this.#picked)
          ? { valueMissing: true } : { customError: true };
        this.#internals.setValidity(flags, msg, anchor);
      } else {
        this.#internals.setValidity({});
      }
      this.#internals.setFormValue(sel ? JSON.stringify(sel) : null);
    }
    if (byUser && sel && !same(sel, this.#emitted)) {
      this.#emitted = sel;
      this.dispatchEvent(new CustomEvent('change', { detail: sel, bubbles: true, composed: true }));
    }
  }

  // ---- HTTP -------------------------------------------------------------------------------

  async #get(path, signal) {
    const headers = { Accept: 'application/json' };
    if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
    let resp;
    try {
      resp = await fetch(`${this.apiBase}${path}`, { headers, signal, credentials: 'omit' });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiFailure(0, 'network', 'Cannot reach the LoRA service. Check your connection and retry.');
    }
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (!resp.ok) {
      const err = body && body.error ? body.error : {};
      const message = resp.status === 401
        ? 'You are not signed in to the LoRA service (missing or expired token).'
        : err.message || `The LoRA service answered ${resp.status}.`;
      throw new ApiFailure(resp.status, err.code || 'http_error', message);
    }
    return body;
  }

  #reload() {
    if (!this.#connected) return;
    this.#loadLimits();
    if (this.#mode === 'existing') this.#fetchList(true);
    if (this.#picked && !this.#picked.label) this.#describePicked(this.#picked.id);
    if (this.#mode === 'new') this.#onNameInput();
    this.#startWatch(this.loraId);
  }

  async #loadLimits() {
    if (!this.#token) return;
    try {
      const l = await this.#get('/api/v1/me/limits');
      if (Number.isInteger(l.limit) && l.limit > 0) this.#limit = l.limit;
      this.#remaining = Number.isInteger(l.remaining) ? l.remaining : null;
    } catch {
      // The help text keeps the PRD's default of 5.
    }
    this.#$['name-help'].textContent = helpText(this.#limit);
    if (this.#mode === 'new') this.#renderName();
  }

  // ---- the library (existing) -------------------------------------------------------------

  #hasMore() {
    return this.#list.items.length < this.#list.total;
  }

  async #fetchList(reset) {
    const L = this.#list;
    if (!reset && (L.loading || !this.#hasMore())) return;
    L.abort?.abort();
    const abort = new AbortController();
    L.abort = abort;
    const seq = ++L.seq;
    const offset = reset ? 0 : L.items.length;
    const q = new URLSearchParams({ status: 'completed', sort: this.#$.sort.value, limit: String(PAGE), offset: String(offset) });
    const search = this.#$.search.value.trim().slice(0, 200);
    if (search) q.set('search', search);
    L.loading = true;
    L.error = null;
    if (reset) {
      L.items = [];
      L.total = 0;
      this.#renderList();
    }
    this.#renderListMessage();
    try {
      const page = await this.#get(`/api/v1/lora-models?${q}`, abort.signal);
      if (seq !== L.seq) return;
      L.items = reset ? page.items : L.items.concat(page.items);
      L.total = page.total;
      L.loading = false;
      this.#renderList(reset ? 0 : offset);
    } catch (e) {
      if (seq !== L.seq || e.name === 'AbortError') return;
      L.loading = false;
      L.error = e.message;
    }
    this.#renderListMessage();
  }

  static labelOf(item) {
    return `${item.name} (by ${item.creator?.display_name || 'unknown'})`;
  }

  /** Renders options from `from` on (earlier ones are kept, so scrolling does not jump). */
  #renderList(from = 0) {
    const lb = this.#$.listbox;
    if (from === 0) {
      lb.replaceChildren();
      this.#active = -1;
      this.#$.search.removeAttribute('aria-activedescendant');
    }
    const frag = document.createDocumentFragment();
    this.#list.items.slice(from).forEach((item, k) => {
      const i = from + k;
      const li = document.createElement('li');
      li.id = `opt-${i}`;
      li.setAttribute('role', 'option');
      li.setAttribute('part', 'option');
      li.dataset.index = String(i);
      li.dataset.loraId = item.id;
      li.setAttribute('aria-selected', String(this.#picked?.id === item.id));
      const txt = document.createElement('span');
      txt.className = 'txt';
      const label = document.createElement('span');
      label.className = 'label';
      label.textContent = LoraSelector.labelOf(item);
      const desc = document.createElement('span');
      desc.className = 'desc';
      desc.textContent = [item.description, `used ${Number(item.usage_count).toLocaleString()}×`].filter(Boolean).join(' · ');
      txt.append(label, desc);
      const badge = document.createElement('span');
      badge.className = `badge ${item.training_status}`;
      badge.setAttribute('part', 'badge');
      badge.textContent = item.training_status;
      li.append(txt, badge);
      frag.append(li);
    });
    lb.append(frag);
  }

  #renderListMessage() {
    const L = this.#list;
    const msg = this.#$['list-msg'];
    msg.className = `line ${L.error ? 'error' : 'muted'}`;
    if (L.error) msg.textContent = L.error;
    else if (L.loading) msg.textContent = 'Loading LoRAs…';
    else if (!L.items.length) msg.textContent = this.#$.search.value.trim() ? 'No LoRA matches your search.' : 'No completed LoRAs yet.';
    else msg.textContent = `${L.items.length} of ${L.total} LoRAs`;
    this.#$.retry.hidden = !L.error;
    this.#$.more.hidden = L.loading || Boolean(L.error) || !this.#hasMore();
    this.#$.listbox.setAttribute('aria-busy', String(L.loading));
  }

  #pick(i) {
    const item = this.#list.items[i];
    if (!item || this.disabled) return;
    this.#picked = { id: item.id, label: LoraSelector.labelOf(item) };
    for (const li of this.#$.listbox.children) {
      li.setAttribute('aria-selected', String(li.dataset.loraId === item.id));
    }
    this.#setActive(i);
    this.#renderPicked();
    this.#update(true);
  }

  async #describePicked(id) {
    this.#renderPicked();
    if (!this.#token || !this.#connected) return;
    try {
      const d = await this.#get(`/api/v1/lora-models/${encodeURIComponent(id)}`);
      if (this.#picked?.id === id) this.#picked.label = LoraSelector.labelOf(d);
    } catch {
      // Shown by id.
    }
    this.#renderPicked();
  }

  #renderPicked() {
    const p = this.#picked;
    this.#$.picked.textContent = p ? `Selected: ${p.label || p.id}` : '';
  }

  // ---- a new LoRA's name ------------------------------------------------------------------

  #onNameInput() {
    clearTimeout(this.#timers.name);
    const seq = ++this.#nameSeq;
    const name = this.#$.name.value.trim();
    const n = chars(name);
    if (n === 0) this.#nameState = { kind: 'empty', message: 'Enter a character name (1–255 characters).' };
    else if (n > MAX_NAME_CHARS) this.#nameState = { kind: 'invalid', message: `The name is ${n} characters; at most ${MAX_NAME_CHARS}.` };
    else {
      this.#nameState = { kind: 'checking', message: 'Checking the name…' };
      this.#timers.name = setTimeout(() => this.#checkName(name, seq), NAME_DEBOUNCE_MS);
    }
    this.#renderName();
    this.#update(!this.#settingValue);
  }

  async #checkName(name, seq) {
    let state;
    try {
      const r = await this.#get(`/api/v1/lora-names/check?name=${encodeURIComponent(name)}`);
      if (!r.valid) {
        state = { kind: 'invalid', message: r.problem?.message || 'This name is not allowed.' };
      } else if (r.yours) {
        state = { kind: 'taken', message: `You already have a LoRA named “${name}”. Choose another name.` };
      } else if (r.others > 0) {
        const who = r.others === 1 ? '1 other user has' : `${r.others} other users have`;
        state = { kind: 'warn', message: `${who} a LoRA with this name; yours will show your name next to it.` };
      } else {
        state = { kind: 'ok', message: 'This name is available.' };
      }
    } catch (e) {
      if (e.status === 400) state = { kind: 'invalid', message: e.message };
      else state = { kind: 'unchecked', message: 'The name could not be checked now; it will be checked when the LoRA is created.' };
    }
    if (seq !== this.#nameSeq) return; // the name changed meanwhile
    this.#nameState = state;
    this.#renderName();
    this.#update(true);
  }

  #renderName() {
    const s = this.#nameState;
    const msg = this.#$['name-msg'];
    const cls = { empty: 'muted', checking: 'muted', invalid: 'error', taken: 'error', warn: 'warn', ok: 'ok', unchecked: 'warn' };
    let text = s.message;
    if (['ok', 'warn'].includes(s.kind) && this.#remaining === 0) {
      text += ` You have used all ${this.#limit} LoRAs for this month.`;
    }
    msg.className = `line ${cls[s.kind] || 'muted'}`;
    msg.dataset.state = s.kind;
    msg.textContent = text;
    this.#$.name.setAttribute('aria-invalid', String(s.kind === 'invalid' || s.kind === 'taken'));
  }

  // ---- training status --------------------------------------------------------------------

  #stopWatch() {
    const w = this.#watch;
    w.abort?.abort();
    clearTimeout(w.timer);
    w.abort = null;
    w.timer = null;
  }

  #startWatch(id) {
    this.#stopWatch();
    const w = this.#watch;
    w.id = id || null;
    w.last = null;
    this.#$.status.hidden = !w.id;
    if (!w.id || !this.#connected) return;
    w.abort = new AbortController();
    this.#$['st-name'].textContent = '';
    this.#nameWatched(w.id, w.abort.signal);
    this.#pollStatus(w.id, w.abort.signal);
    this.#followEvents(w.id, w.abort.signal);
  }

  async #nameWatched(id, signal) {
    try {
      const d = await this.#get(`/api/v1/lora-models/${encodeURIComponent(id)}`, signal);
      if (!signal.aborted) this.#$['st-name'].textContent = d.name;
    } catch {
      // The status line says what went wrong.
    }
  }

  async #pollStatus(id, signal) {
    const w = this.#watch;
    clearTimeout(w.timer);
    try {
      const s = await this.#get(`/api/v1/lora-models/${encodeURIComponent(id)}/status`, signal);
      if (signal.aborted) return;
      this.#renderStatus(s);
      if (FINAL.has(s.training_status)) return;
    } catch (e) {
      if (signal.aborted) return;
      this.#$['st-text'].className = 'line error';
      this.#$['st-text'].textContent = e.message;
    }
    w.timer = setTimeout(() => this.#pollStatus(id, signal), STATUS_POLL_MS);
  }

  /** Reads the SSE stream with fetch (EventSource cannot send the bearer token); every event
   * triggers a status read. Polling every 30 s continues regardless, so a proxy that buffers
   * the stream only delays updates. */
  async #followEvents(id, signal) {
    if (!this.#token || typeof ReadableStream === 'undefined') return;
    try {
      const resp = await fetch(`${this.apiBase}/api/v1/lora-models/${encodeURIComponent(id)}/events`, {
        headers: { Accept: 'text/event-stream', Authorization: `Bearer ${this.#token}` },
        signal,
        credentials: 'omit',
      });
      if (!resp.ok || !resp.body) return;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        let saw = false;
        while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
          if (/^data:/m.test(buf.slice(0, cut))) saw = true;
          buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
        }
        if (buf.length > 1 << 20) buf = ''; // a stream without event ends: keep memory bounded
        if (saw) {
          clearTimeout(this.#timers.sse);
          this.#timers.sse = setTimeout(() => !signal.aborted && this.#pollStatus(id, signal), 200);
        }
      }
    } catch {
      // Polling covers it.
    }
  }

  #renderStatus(s) {
    const st = String(s.training_status || '');
    const pct = Math.max(0, Math.min(100, Number(s.progress) || 0));
    const badge = this.#$['st-badge'];
    badge.className = `badge ${st}`;
    badge.textContent = st;
    const bar = this.#$['st-bar'];
    bar.setAttribute('aria-valuenow', String(pct));
    bar.setAttribute('aria-valuetext', `${pct}%`);
    bar.firstElementChild.style.width = `${pct}%`;
    let text;
    if (st === 'validating') text = 'Validating quality…';
    else if (st === 'training') text = [`${pct}%`, formatEta(s.estimated_remaining)].filter(Boolean).join(' · ');
    else if (st === 'pending' || st === 'queued') text = `Waiting to start (${st}).`;
    else if (st === 'completed') text = 'Training completed. You can regenerate with this LoRA.';
    else if (st === 'failed') text = `Training failed${s.error ? `: ${s.error}` : '.'}`;
    else if (st === 'cancelled') text = 'Training was cancelled.';
    else text = st;
    const t = this.#$['st-text'];
    t.className = `line ${st === 'failed' ? 'error' : 'muted'}`;
    t.textContent = text;
    this.#$['st-notice'].textContent = IN_PROGRESS.has(st) ? NOTICE : '';
    const prev = this.#watch.last;
    this.#watch.last = st;
    if (prev !== st) {
      this.dispatchEvent(new CustomEvent('lora-status', { detail: { ...s }, bubbles: true, composed: true }));
    }
  }
}

if (!customElements.get('lora-selector')) customElements.define('lora-selector', LoraSelector);
