// New LoRA: drop or pick images (previews), upload them as a dataset (each image's problems
// shown beside it), a name checked as you type, trigger word, advanced parameters with the
// server's own ranges (GET /api/v1/params), the monthly limit; create, then go to its page.

import { api, optional, ApiError } from './api.js';
import { h, errorBanner, fmtDate, fmtBytes, debounce } from './dom.js';

export async function renderNew(main, { navigate }) {
  const [limits, params] = await Promise.all([
    api('/api/v1/me/limits').catch((e) => ({ error: e })),
    api('/api/v1/params').catch(() => null),
  ]);

  const files = []; // {file, url, li, problems}
  let datasetId = null;

  const picker = h('input', { type: 'file', id: 'images', name: 'images', multiple: true,
    accept: 'image/png,image/jpeg,image/webp', class: 'visually-hidden' });
  const drop = h('div', { class: 'drop', id: 'drop', role: 'button', tabindex: '0', 'aria-describedby': 'drop-hint' },
    h('strong', {}, 'Drop training images here'), h('div', { id: 'drop-hint', class: 'muted' }, 'or press Enter to choose files (PNG or JPEG)'));
  const previews = h('ul', { class: 'previews', id: 'previews', 'aria-label': 'Chosen images' });
  const uploadBtn = h('button', { type: 'button', id: 'upload', disabled: true }, 'Upload images');
  const uploadMsg = h('div', { id: 'upload-message', 'aria-live': 'polite' });

  const name = h('input', { type: 'text', id: 'name', name: 'name', maxlength: 255, required: true, autocomplete: 'off', 'aria-describedby': 'name-check' });
  const nameCheck = h('div', { id: 'name-check', 'aria-live': 'polite', class: 'hint' });
  const description = h('textarea', { id: 'description', name: 'description', rows: 2, maxlength: 10000 });
  const trigger = h('input', { type: 'text', id: 'trigger', name: 'trigger', maxlength: 64, autocomplete: 'off', 'aria-describedby': 'trigger-hint' });
  const advanced = h('div', { class: 'params', id: 'params' });
  const createBtn = h('button', { type: 'submit', id: 'create', disabled: true }, 'Create LoRA');
  const createMsg = h('div', { id: 'create-message' });

  main.replaceChildren(
    h('h1', {}, 'New LoRA'),
    limitsBox(limits),
    h('section', { class: 'card stack', 'aria-labelledby': 'img-h' },
      h('h2', { id: 'img-h' }, '1. Training images'),
      h('label', { for: 'images', class: 'hint' }, 'Images (file picker)'), picker, drop, previews, h('div', { class: 'row' }, uploadBtn), uploadMsg),
    h('form', { class: 'card stack', id: 'create-form', 'aria-labelledby': 'det-h', novalidate: true },
      h('h2', { id: 'det-h' }, '2. Details'),
      h('div', {}, h('label', { for: 'name' }, 'Name'), name, nameCheck),
      h('div', {}, h('label', { for: 'description' }, 'Description ', h('span', { class: 'hint' }, '(optional)')), description),
      h('div', {}, h('label', { for: 'trigger' }, 'Trigger word ', h('span', { class: 'hint', id: 'trigger-hint' }, '(the word that calls up your character in prompts)')), trigger),
      h('details', { id: 'advanced' }, h('summary', {}, 'Advanced parameters'), advanced),
      createMsg, h('div', { class: 'row' }, createBtn)));

  const inputs = params ? paramInputs(advanced, params) : new Map();
  if (!params) advanced.append(h('p', { class: 'muted' }, 'The parameter ranges could not be loaded; the defaults will be used.'));

  // Images: picker, drag and drop, keyboard.
  drop.addEventListener('click', () => picker.click());
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); picker.click(); } });
  // dragenter and dragover must be cancelled for the zone to accept a drop.
  const over = (e) => { e.preventDefault(); if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy'; drop.classList.add('over'); };
  drop.addEventListener('dragenter', over);
  drop.addEventListener('dragover', over);
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); add([...(e.dataTransfer?.files || [])]); });
  picker.addEventListener('change', () => { add([...picker.files]); picker.value = ''; });

  function add(list) {
    for (const file of list) {
      if (files.some((f) => f.file.name === file.name && f.file.size === file.size)) continue;
      const url = URL.createObjectURL(file);
      const problems = h('ul', { class: 'problems error' });
      const entry = { file, url, problems };
      const remove = h('button', { type: 'button', class: 'link', 'aria-label': `Remove ${file.name}` }, 'Remove');
      entry.li = h('li', { 'data-file': file.name },
        h('img', { class: 'thumb', src: url, alt: file.name, width: 150, height: 150 }),
        h('div', { class: 'fname' }, file.name), h('div', { class: 'muted' }, fmtBytes(file.size)), problems, remove);
      remove.addEventListener('click', () => {
        URL.revokeObjectURL(url);
        files.splice(files.indexOf(entry), 1);
        entry.li.remove();
        changed();
      });
      files.push(entry);
      previews.append(entry.li);
    }
    changed();
  }

  function changed() {
    datasetId = null;
    uploadBtn.disabled = files.length === 0;
    uploadMsg.replaceChildren(files.length ? h('p', { class: 'muted' }, `${files.length} image(s) chosen; upload them to continue.`) : '');
    updateCreate();
  }

  uploadBtn.addEventListener('click', async () => {
    const form = new FormData();
    for (const f of files) { form.append('images', f.file, f.file.name); f.problems.replaceChildren(); f.li.classList.remove('bad'); }
    uploadBtn.disabled = true;
    uploadMsg.replaceChildren(h('p', { class: 'muted' }, 'Uploading and checking…'));
    try {
      const ds = await api('/api/v1/datasets', { method: 'POST', form });
      datasetId = ds.dataset_id;
      for (const img of ds.images || []) {
        const f = files.find((x) => x.file.name === img.file_name);
        if (f) for (const w of img.warnings || []) f.problems.append(h('li', { class: 'notice' }, w));
      }
      uploadMsg.replaceChildren(h('p', { class: 'ok', id: 'upload-ok' }, `Uploaded ${ds.images.length} images.`),
        ...(ds.warnings || []).map((w) => h('p', { class: 'notice' }, w)));
    } catch (e) {
      uploadMsg.replaceChildren(errorBanner(e));
      if (e instanceof ApiError) showImageProblems(e);
    }
    uploadBtn.disabled = files.length === 0;
    updateCreate();
  });

  function showImageProblems(e) {
    for (const img of e.details.images || []) {
      const f = files.find((x) => x.file.name === img.file_name);
      if (!f) continue;
      for (const p of img.errors || []) f.problems.append(h('li', { 'data-code': p.code }, p.message));
      for (const p of img.warnings || []) f.problems.append(h('li', { class: 'notice' }, p.message));
      if (img.errors?.length) f.li.classList.add('bad');
    }
    if (e.details.file_name) {
      const f = files.find((x) => x.file.name === e.details.file_name);
      if (f) { f.problems.append(h('li', {}, e.message)); f.li.classList.add('bad'); }
    }
  }

  // The name, checked as you type (GET /api/v1/lora-names/check; hidden if the route is absent).
  let nameOk = true;
  let nameCtrl;
  const checkName = debounce(async () => {
    const v = name.value.trim();
    nameCtrl?.abort();
    if (!v) { nameCheck.replaceChildren(); nameOk = true; updateCreate(); return; }
    nameCtrl = new AbortController();
    try {
      const r = await optional('/api/v1/lora-names/check?' + new URLSearchParams({ name: v }), { signal: nameCtrl.signal });
      if (!r) return;
      nameOk = r.valid && !r.yours;
      nameCheck.className = nameOk ? 'hint ok' : 'hint error';
      if (!r.valid) nameCheck.textContent = r.problem?.message || 'This name is not allowed.';
      else if (r.yours) nameCheck.textContent = 'You already have a LoRA with this name; choose another.';
      else if (r.others > 0) { nameCheck.className = 'hint notice'; nameCheck.textContent = `${r.others} other creator(s) use this name; yours will show with your name.`; }
      else nameCheck.textContent = 'Name is available.';
    } catch (e) {
      if (e.name !== 'AbortError') { nameCheck.className = 'hint'; nameCheck.textContent = ''; nameOk = true; }
    }
    updateCreate();
  }, 250);
  name.addEventListener('input', () => { nameOk = true; checkName(); updateCreate(); });

  function updateCreate() {
    createBtn.disabled = !datasetId || !name.value.trim() || !nameOk;
  }

  main.querySelector('#create-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    createMsg.replaceChildren();
    let p;
    try { p = readParams(inputs, params); } catch (err) { createMsg.replaceChildren(errorBanner(err)); err.input?.focus(); return; }
    if (trigger.value.trim()) p.trigger_words = [trigger.value.trim()];
    const body = { name: name.value.trim(), dataset_id: datasetId, params: p };
    if (description.value.trim()) body.description = description.value.trim();
    createBtn.disabled = true;
    try {
      const r = await api('/api/v1/lora-models', { method: 'POST', json: body });
      navigate(`#/loras/${r.lora_id}`);
    } catch (err) {
      createMsg.replaceChildren(errorBanner(err));
      const field = err.details?.field;
      const input = field && (field === 'name' ? name : inputs.get(field));
      if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); }
      updateCreate();
    }
  });
}

function limitsBox(limits) {
  if (limits.error) return errorBanner(limits.error);
  const cls = limits.remaining === 0 ? 'banner' : 'banner info';
  return h('p', { class: cls, id: 'limits' },
    `You have used ${limits.used} of ${limits.limit} LoRAs this month (${limits.remaining} left); the count resets ${fmtDate(limits.resets_at)}.`);
}

const HIDDEN = new Set(['trigger_words', 'class_prompt', 'num_class_images', 'prior_loss_weight']);

/** One labelled input per parameter, with the range from the server; returns name → input. */
function paramInputs(box, params) {
  const inputs = new Map();
  for (const f of params.fields) {
    if (HIDDEN.has(f.name)) continue;
    const id = 'param-' + f.name;
    const def = params.defaults[f.name];
    let input;
    let hint = '';
    if (f.kind === 'int' || f.kind === 'float') {
      input = h('input', { type: 'number', id, name: f.name, min: f.min, max: f.max,
        step: f.kind === 'int' ? (f.multiple_of || 1) : 'any', value: def ?? '' });
      hint = `${f.min}–${f.max}${f.multiple_of > 1 ? `, multiple of ${f.multiple_of}` : ''}`;
    } else if (f.kind === 'one_of') {
      input = h('select', { id, name: f.name }, f.allowed.map((v) => h('option', { value: v, selected: v === def }, v)));
    } else if (f.kind === 'list') {
      input = h('input', { type: 'text', id, name: f.name, value: (def || []).join(', ') });
      hint = f.allowed ? 'comma-separated: ' + f.allowed.join(', ') : 'comma-separated';
    } else {
      input = h('input', { type: 'text', id, name: f.name, value: def ?? '', maxlength: f.max_chars });
    }
    input.dataset.kind = f.kind;
    input.dataset.default = JSON.stringify(def ?? null);
    inputs.set(f.name, input);
    box.append(h('div', {}, h('label', { for: id }, f.name.replace(/_/g, ' '), hint ? h('span', { class: 'hint' }, ` (${hint})`) : null), input));
  }
  return inputs;
}

/** The parameters that differ from the defaults, checked against their ranges. */
function readParams(inputs, params) {
  const out = {};
  if (!params) return out;
  for (const f of params.fields) {
    const input = inputs.get(f.name);
    if (!input) continue;
    const raw = input.value.trim();
    let v;
    if (f.kind === 'int' || f.kind === 'float') {
      if (raw === '') continue;
      v = Number(raw);
      const bad = !Number.isFinite(v) || v < f.min || v > f.max || (f.kind === 'int' && (!Number.isInteger(v) || v % (f.multiple_of || 1) !== 0));
      if (bad) {
        const err = new Error(`${f.name.replace(/_/g, ' ')} must be ${f.kind === 'int' ? 'a whole number' : 'a number'} from ${f.min} to ${f.max}${f.multiple_of > 1 ? `, a multiple of ${f.multiple_of}` : ''}.`);
        err.input = input;
        input.setAttribute('aria-invalid', 'true');
        throw err;
      }
    } else if (f.kind === 'list') {
      v = raw.split(',').map((s) => s.trim()).filter(Boolean);
    } else {
      if (raw === '') continue;
      v = raw;
    }
    input.removeAttribute('aria-invalid');
    if (JSON.stringify(v) !== input.dataset.default) out[f.name] = v;
  }
  return out;
}
