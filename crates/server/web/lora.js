// One LoRA: status, live progress over SSE (no reload), stages, validation images with their
// scores, attempts and cost (owner), downloads, "Try it" samples (refreshed while they render),
// usage, report (others), cancel (owner).

import { api, optional, streamEvents } from './api.js';
import { h, badge, fmtDate, fmtDuration, fmtBytes, creatorName, errorBanner, toast, FINAL } from './dom.js';

const STAGES = ['pending', 'queued', 'training', 'validating', 'completed'];

export async function renderLora(main, { arg: id, me }) {
  const ctrl = new AbortController();
  main.replaceChildren(h('h1', {}, h('span', { class: 'muted' }, 'Loading…')));
  let lora;
  try {
    lora = await api(`/api/v1/lora-models/${encodeURIComponent(id)}`, { signal: ctrl.signal });
  } catch (e) {
    main.replaceChildren(h('h1', {}, 'LoRA'), errorBanner(e), h('p', {}, h('a', { href: '#/library' }, 'Back to the library')));
    return null;
  }
  const owner = me && lora.creator?.id === me.id;

  const statusBadge = h('span', { id: 'lora-status' }, badge(lora.training_status));
  const bar = h('div', {});
  const progress = h('div', { class: 'progress', role: 'progressbar', id: 'progress', 'aria-label': 'Training progress',
    'aria-valuemin': 0, 'aria-valuemax': 100 }, bar);
  const progressText = h('p', { id: 'progress-text', class: 'muted' });
  const stages = h('ol', { class: 'stages', 'aria-label': 'Stages' });
  const errorBox = h('div', { id: 'lora-error' });
  const cancel = h('button', { type: 'button', class: 'danger', id: 'cancel', hidden: true }, 'Cancel training');
  const downloads = h('section', { id: 'downloads', 'aria-labelledby': 'dl-h' });
  const validation = h('section', { id: 'validation' });
  const attempts = h('section', { id: 'attempts' });
  const samples = h('section', { id: 'samples', hidden: true });
  const tryBox = h('div', {}); // "Try it", once the LoRA is completed (also when it completes here)
  const usage = h('section', { id: 'usage', hidden: true });

  main.replaceChildren(
    h('div', { class: 'head' }, h('h1', { id: 'lora-name' }, lora.name), statusBadge),
    h('p', { class: 'muted' }, `by ${creatorName(lora.creator)} · created ${fmtDate(lora.created_at)} · ${lora.usage_count} uses`),
    lora.description ? h('p', {}, lora.description) : '',
    h('section', { class: 'card', 'aria-labelledby': 'st-h' }, h('h2', { id: 'st-h' }, 'Status'), progress, progressText, stages, errorBox,
      owner ? h('p', {}, cancel) : null),
    lora.hidden ? h('p', { class: 'banner', role: 'note', id: 'hidden-note' },
      `Hidden from the library by an admin since ${fmtDate(lora.hidden.at)}: ${lora.hidden.reason}`) : '',
    downloads, validation, attempts, samples,
    tryBox,
    usage,
    h('section', {}, h('h2', {}, 'Parameters'), facts(lora.params)),
    owner ? '' : reportForm(id));

  function showStatus(s) {
    statusBadge.replaceChildren(badge(s.training_status));
    const pct = s.training_status === 'completed' ? 100 : (s.progress ?? 0);
    bar.style.width = pct + '%';
    progress.setAttribute('aria-valuenow', pct);
    const parts = [`${pct}%`];
    if (s.stage) parts.push(s.stage);
    if (s.estimated_remaining != null && !FINAL.has(s.training_status)) parts.push(`about ${fmtDuration(s.estimated_remaining)} left`);
    if (s.status_message) parts.push(s.status_message);
    progressText.textContent = parts.join(' · ');
    const at = STAGES.indexOf(s.training_status);
    stages.replaceChildren(...STAGES.map((st, i) => h('li', {
      class: st === s.training_status ? 'now' : (at > i || s.training_status === 'completed' ? 'done' : ''),
      'aria-current': st === s.training_status ? 'step' : null }, st)));
    if (s.training_status === 'failed' || s.training_status === 'cancelled') {
      stages.append(h('li', { class: 'now' }, s.training_status));
    }
    errorBox.replaceChildren(s.error ? h('div', { class: 'banner', role: 'alert' }, s.error) : '');
    cancel.hidden = !owner || FINAL.has(s.training_status);
  }

  function showDetails(l) {
    showStatus(l);
    downloads.replaceChildren();
    if (l.download_url || l.kohya_download_url) {
      downloads.append(h('h2', { id: 'dl-h' }, 'Download'), h('p', { class: 'row' },
        l.download_url ? h('a', { class: 'button', id: 'download-diffusers', href: l.download_url, download: `${l.name}.safetensors` }, 'Diffusers / PEFT') : null,
        l.kohya_download_url ? h('a', { class: 'button secondary', id: 'download-kohya', href: l.kohya_download_url, download: `${l.name}-kohya.safetensors` }, 'kohya (ComfyUI, A1111)') : null),
        h('p', { class: 'muted' }, `${fmtBytes(l.file_size)}${l.download_url_expires_at ? ' · links valid until ' + fmtDate(l.download_url_expires_at) : ''}`));
    }
    showValidation(validation, l);
    if (l.training_status === 'completed' && !tryBox.firstChild) tryBox.append(tryIt(id, samples, ctrl.signal));
    attempts.replaceChildren();
    if (owner && l.attempts?.length) {
      attempts.append(h('h2', {}, 'Attempts and cost'),
        h('p', {}, `Training cost: ${l.training_cost?.display ?? '—'}`),
        h('div', { class: 'scroll' }, h('table', {},
          h('thead', {}, h('tr', {}, ['#', 'Backend', 'GPU', 'Started', 'Ended', 'Outcome', 'Cost'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, l.attempts.map((a) => h('tr', {},
            h('td', {}, a.attempt), h('td', {}, a.backend), h('td', {}, a.gpu_type || ''),
            h('td', {}, fmtDate(a.started_at)), h('td', {}, fmtDate(a.ended_at)),
            h('td', {}, a.outcome || 'running', a.message ? h('div', { class: 'muted' }, a.message) : ''),
            h('td', {}, a.cost?.display || '')))))));
    }
  }

  showDetails(lora);
  optionalSections(id, samples, usage, ctrl.signal);

  cancel.addEventListener('click', async () => {
    if (!confirm(`Cancel training "${lora.name}"?`)) return;
    cancel.disabled = true;
    try {
      showStatus(await api(`/api/v1/lora-models/${id}/cancel`, { method: 'POST' }));
      toast('Cancelled.');
    } catch (e) { errorBox.replaceChildren(errorBanner(e)); }
    cancel.disabled = false;
  });

  if (!FINAL.has(lora.training_status)) follow(id, ctrl.signal, showStatus, showDetails);
  return () => ctrl.abort();
}

const score = (x) => Number(x).toFixed(2);

/** The validation images, each with its score and whether it reached the threshold. */
function showValidation(box, l) {
  box.replaceChildren();
  const v = l.validation || {};
  // `images` carries the scores; older servers sent only `image_urls`.
  const images = v.images || (v.image_urls || []).map((url, index) => ({ index, url }));
  if (v.passed == null && !images.length) return;
  const verdict = v.passed != null ? (v.passed ? 'Passed.' : 'Did not pass.')
    : l.stage === 'awaiting_review' ? 'Waiting for an admin\u2019s review.' : 'Not judged yet.';
  const rule = v.threshold != null
    ? `At least ${v.required_passing} of ${images.length} images need a similarity of ${score(v.threshold)} or more.`
    : images.length ? 'No scoring model judged these images.' : '';
  box.setAttribute('aria-labelledby', 'val-h');
  box.append(h('h2', { id: 'val-h' }, 'Validation'),
    h('p', { id: 'validation-result' }, verdict, ' ', h('span', { class: 'muted', id: 'validation-rule' }, rule)),
    h('ul', { class: 'grid validation', id: 'validation-images' }, images.map((im) => {
      const label = `Validation image ${im.index + 1}`;
      const judged = im.passed == null ? h('span', { class: 'muted' }, 'no score')
        : [`score ${score(im.score)} `, h('strong', { class: im.passed ? 'ok' : 'error' }, im.passed ? '\u2713 passed' : '\u2717 below')];
      return h('li', { 'data-index': im.index, 'data-passed': im.passed == null ? null : String(im.passed) },
        h('figure', {},
          im.url ? h('img', { class: 'thumb', src: im.url, alt: label, width: 256, height: 256, loading: 'lazy' })
            : h('div', { class: 'thumb gone', role: 'img', 'aria-label': `${label} (no longer kept)` }),
          h('figcaption', { class: 'score' }, `#${im.index + 1}: `, judged)));
    })));
}

/** Follows the event stream; each event refreshes the status, a final one the details too. */
async function follow(id, signal, showStatus, showDetails) {
  let last = null;
  let refreshing = null;
  const refresh = async (final) => {
    if (final) { showDetails(await api(`/api/v1/lora-models/${id}`, { signal })); return true; }
    const s = await api(`/api/v1/lora-models/${id}/status`, { signal });
    showStatus(s);
    if (FINAL.has(s.training_status)) showDetails(await api(`/api/v1/lora-models/${id}`, { signal }));
    return FINAL.has(s.training_status);
  };
  for (let tries = 0; !signal.aborted && tries < 50; tries++) {
    let ended = false;
    try {
      await streamEvents(`/api/v1/lora-models/${id}/events`, { signal, lastEventId: last, onEvent: (ev) => {
        last = ev.id || last;
        const final = ev.event === 'status' && FINAL.has(ev.data?.training_status);
        if (final) ended = true;
        // One refresh at a time; a burst of progress events coalesces into the next one.
        refreshing = (refreshing || Promise.resolve()).then(() => refresh(final)).catch(() => {});
      } });
      await refreshing;
      if (ended || await refresh(false)) return;
    } catch (e) {
      if (signal.aborted) return;
      if (e.status && e.status < 500) return;
    }
    // The stream dropped (a restart, a proxy): wait a moment and resume after the last event.
    await new Promise((r) => setTimeout(r, Math.min(1000 * (tries + 1), 10000)));
  }
}

/** "Try it": render sample images with this LoRA (POST …/samples); the section refreshes. */
function tryIt(id, samples, signal) {
  const prompt = h('input', { id: 'sample-prompt', required: true, maxlength: 1000, placeholder: 'a portrait in the rain' });
  // The API's ranges (`loraforge_domain::samples`); the server checks them again.
  const num = (fid, attrs) => h('input', { type: 'number', id: fid, required: true, ...attrs });
  const size = num('sample-size', { min: 64, max: 2048, step: 64, value: 1024 });
  const steps = num('sample-steps', { min: 1, max: 100, step: 1, value: 30 });
  const scale = num('sample-scale', { min: 0, max: 2, step: 0.05, value: 1 });
  const out = h('p', { class: 'muted', role: 'status', id: 'sample-message' });
  const submit = h('button', { type: 'submit', id: 'sample-submit' }, 'Render a sample');
  const field = (input, label, hint) => h('div', {}, h('label', { for: input.id }, label, h('span', { class: 'hint' }, ` (${hint})`)), input);
  const form = h('form', { class: 'card stack', id: 'try-it', 'aria-labelledby': 'try-h' }, h('h2', { id: 'try-h' }, 'Try it'),
    h('div', {}, h('label', { for: 'sample-prompt' }, 'Prompt'), prompt),
    h('div', { class: 'params' }, field(size, 'Size in pixels', 'square, 64–2048, a multiple of 64'),
      field(steps, 'Steps', '1–100'), field(scale, 'LoRA strength', '0–2; 0 renders without it')),
    submit, out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!form.reportValidity()) return;
    submit.disabled = true;
    try {
      const side = Number(size.value);
      await api(`/api/v1/lora-models/${id}/samples`, { method: 'POST', json: {
        prompts: [{ prompt: prompt.value, scale: Number(scale.value) }], width: side, height: side, steps: Number(steps.value) } });
      out.replaceChildren('Queued: it renders on a training GPU; the Samples section shows it when done.');
      watchSamples(id, samples, signal);
    } catch (e) { out.replaceChildren(errorBanner(e)); }
    submit.disabled = false;
  });
  return form;
}

/** Refreshes the Samples section every 2 s while a batch is queued or rendering. */
async function watchSamples(id, samples, signal) {
  if (samples.dataset.watching) return;
  samples.dataset.watching = '1';
  try {
    while (!signal.aborted && await loadSamples(id, samples, signal) > 0) {
      await new Promise((r) => setTimeout(r, 2000));
    }
  } finally { delete samples.dataset.watching; }
}

const REPORT_REASONS = ['sexual_content', 'minor', 'violence', 'hate', 'impersonation', 'copyright', 'spam', 'other'];

/** Report this LoRA to the admins (POST …/reports). */
function reportForm(id) {
  const reason = h('select', { id: 'report-reason' }, REPORT_REASONS.map((r) => h('option', { value: r }, r.replace('_', ' '))));
  const details = h('textarea', { id: 'report-details', maxlength: 1000, rows: 2 });
  const out = h('p', { role: 'status' });
  const form = h('form', {}, h('label', { for: 'report-reason' }, 'Reason'), reason,
    h('label', { for: 'report-details' }, 'Details (required for "other")'), details,
    h('button', { type: 'submit', class: 'secondary' }, 'Send report'), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await api(`/api/v1/lora-models/${id}/reports`, { method: 'POST',
        json: { reason: reason.value, ...(details.value.trim() ? { details: details.value } : {}) } });
      out.textContent = 'Thank you: the admins will look at it.';
    } catch (e) { out.replaceChildren(errorBanner(e)); }
  });
  return h('details', { id: 'report' }, h('summary', {}, 'Report this LoRA'), form);
}

/** Draws the Samples section; resolves to the number of batches still queued or rendering. */
async function loadSamples(id, samples, signal) {
  let s;
  try { s = await optional(`/api/v1/lora-models/${id}/samples`, { signal }); } catch { return 0; }
  // {batches: [{id, status, error, images: [{prompt, url, …}]}]}: finished batches carry links.
  const batches = s && Array.isArray(s.batches) ? s.batches : null;
  if (!batches) return 0;
  const items = batches.flatMap((b) => (b.images || []).filter((i) => i.url));
  const open = batches.filter((b) => b.status === 'queued' || b.status === 'rendering');
  const failed = batches.filter((b) => b.status === 'failed' && b.error);
  samples.hidden = false;
  samples.setAttribute('aria-labelledby', 'samples-h');
  samples.replaceChildren(h('h2', { id: 'samples-h' }, 'Samples'),
    open.length ? h('p', { class: 'muted', role: 'status', id: 'samples-open' },
      open.map((b) => h('span', { class: 'batch', 'data-batch': b.id, 'data-status': b.status }, `A batch is ${b.status}… `))) : '',
    failed.slice(0, 1).map((b) => h('p', { class: 'notice' }, `The last failed batch: ${b.error}`)),
    items.length ? h('div', { class: 'grid', id: 'sample-images' }, items.map((it, i) =>
      h('figure', { class: 'sample' }, h('img', { class: 'thumb', src: it.url, alt: it.prompt || `Sample ${i + 1}`, width: 256, height: 256, loading: 'lazy' }),
        it.prompt ? h('figcaption', { class: 'muted' }, it.prompt) : null))) : h('p', { class: 'muted' }, 'No samples yet.'));
  return open.length;
}

async function optionalSections(id, samples, usage, signal) {
  if (await loadSamples(id, samples, signal) > 0) watchSamples(id, samples, signal);
  if (!usage) return;
  try {
    const u = await optional(`/api/v1/lora-models/${id}/usage?days=30`, { signal });
    if (u) {
      usage.hidden = false;
      const days = (u.by_day || []).filter((d) => d.uses > 0);
      usage.replaceChildren(h('h2', {}, 'Usage (30 days)'),
        u.total != null ? h('p', {}, `${u.total} uses`) : '',
        Array.isArray(days) && days.length ? h('div', { class: 'scroll' }, h('table', {},
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Day'), h('th', { scope: 'col' }, 'Uses'))),
          h('tbody', {}, days.map((d) => h('tr', {}, h('td', {}, d.day), h('td', {}, String(d.uses))))))) : '');
    }
  } catch { /* hidden */ }
}

function facts(params) {
  if (!params) return '';
  return h('dl', { class: 'facts' }, Object.entries(params).flatMap(([k, v]) =>
    [h('dt', {}, k), h('dd', {}, Array.isArray(v) ? v.join(', ') : String(v))]));
}

