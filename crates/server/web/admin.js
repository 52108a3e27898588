// Admin: the review queue (LoRAs waiting for a person: `validating` with their checks done,
// `awaiting_review=true`, hidden ones included), alerts (ack), the
// training backends, and — in its own section below a separator — reports, when that route
// exists.

import { api, optional } from './api.js';
import { h, badge, fmtDate, creatorName, errorBanner, toast } from './dom.js';

export async function renderAdmin(main, { me }) {
  if (!me.is_admin) {
    main.replaceChildren(h('h1', {}, 'Admin'), errorBanner(new Error('This page is for admins; your token does not carry the admin role.')));
    return null;
  }
  const review = h('section', { class: 'admin-section', id: 'review', 'aria-labelledby': 'rv-h' }, h('h2', { id: 'rv-h' }, 'Waiting for review'));
  const alerts = h('section', { class: 'admin-section', id: 'alerts', 'aria-labelledby': 'al-h' }, h('h2', { id: 'al-h' }, 'Alerts'));
  const backends = h('section', { class: 'admin-section', id: 'backends', 'aria-labelledby': 'be-h' }, h('h2', { id: 'be-h' }, 'Backends'));
  // Reports and hidden LoRAs are another part's; this spot renders them when the route answers.
  const reports = h('section', { class: 'admin-section extension', id: 'reports', hidden: true, 'aria-labelledby': 'rp-h' });
  main.replaceChildren(h('h1', {}, 'Admin'), review, alerts, backends, reports);
  await Promise.all([loadReview(review), loadAlerts(alerts), loadBackends(backends), loadReports(reports)]);
  return null;
}

async function loadReview(box) {
  const body = h('div');
  box.replaceChildren(box.firstChild, body);
  let page;
  try { page = await api('/api/v1/lora-models?awaiting_review=true&include_hidden=true&sort=recent&limit=50'); } catch (e) { body.append(errorBanner(e)); return; }
  if (!page.items.length) { body.append(h('p', { class: 'muted', id: 'review-empty' }, 'Nothing is waiting for review.')); return; }
  const list = h('ul', { class: 'loras' });
  for (const l of page.items) {
    const reason = h('input', { type: 'text', id: `reason-${l.id}`, maxlength: 1000, placeholder: 'Reason (shown to the creator)' });
    const msg = h('div', { 'aria-live': 'polite' });
    const decide = async (decision) => {
      try {
        const r = reason.value.trim();
        await api(`/api/v1/admin/lora-models/${l.id}/review`, { method: 'POST', json: { decision, ...(r ? { reason: r } : {}) } });
        toast(`${l.name}: ${decision === 'approve' ? 'approved' : 'rejected'}.`);
        li.remove();
        if (!list.children.length) body.replaceChildren(h('p', { class: 'muted', id: 'review-empty' }, 'Nothing is waiting for review.'));
      } catch (e) { msg.replaceChildren(errorBanner(e)); }
    };
    const li = h('li', { class: 'lora-row wrap', 'data-id': l.id },
      badge(l.training_status),
      h('div', { class: 'main' }, h('a', { class: 'name', href: `#/loras/${l.id}` }, `${l.name} (by ${creatorName(l.creator)})`),
        h('div', { class: 'meta' }, fmtDate(l.created_at), l.hidden ? ` · hidden: ${l.hidden.reason}` : '')),
      h('div', { class: 'row grow' },
        h('label', { for: `reason-${l.id}`, class: 'visually-hidden' }, `Reason for ${l.name}`), reason,
        h('button', { type: 'button', class: 'approve', onclick: () => decide('approve') }, 'Approve'),
        h('button', { type: 'button', class: 'danger reject', onclick: () => decide('reject') }, 'Reject')),
      msg);
    list.append(li);
  }
  body.append(list);
}

async function loadAlerts(box) {
  const body = h('div');
  box.replaceChildren(box.firstChild, body);
  let r;
  try { r = await api('/api/v1/admin/alerts'); } catch (e) { body.append(errorBanner(e)); return; }
  if (!r.alerts.length) { body.append(h('p', { class: 'muted' }, 'No alerts.')); return; }
  body.append(h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, ['Kind', 'Subject', 'Message', 'Count', 'Last seen', ''].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, r.alerts.map((a) => {
      const cell = h('td', {});
      if (a.acknowledged_at) cell.append(h('span', { class: 'muted' }, 'acknowledged'));
      else cell.append(h('button', { type: 'button', class: 'secondary', onclick: async (ev) => {
        try { await api(`/api/v1/admin/alerts/${a.id}/ack`, { method: 'POST' }); cell.replaceChildren(h('span', { class: 'muted' }, 'acknowledged')); }
        catch (e) { cell.append(errorBanner(e)); ev.target.disabled = false; }
      } }, 'Acknowledge'));
      return h('tr', {}, h('td', {}, a.kind), h('td', {}, a.subject), h('td', {}, a.message), h('td', {}, a.count), h('td', {}, fmtDate(a.last_seen)), cell);
    })))));
}

async function loadBackends(box) {
  const body = h('div');
  box.replaceChildren(box.firstChild, body);
  let r;
  try { r = await api('/api/v1/admin/backends'); } catch (e) { body.append(errorBanner(e)); return; }
  body.append(h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, ['#', 'Backend', 'Breaker', 'Failures', 'Runs', 'Next probe'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, r.backends.map((b) => h('tr', {}, h('td', {}, b.position), h('td', {}, b.name), h('td', {}, b.breaker_state),
      h('td', {}, b.failures_in_window), h('td', {}, `${b.live_runs} / ${b.max_runs}`), h('td', {}, fmtDate(b.next_probe_at))))))),
    h('p', { class: 'muted' }, `A breaker opens after ${r.failures_to_open} failures within ${r.window_secs} s and probes again after ${r.open_secs} s.`));
}

async function loadReports(box) {
  let r;
  try { r = await optional('/api/v1/admin/reports?status=open'); } catch { return; }
  if (!r) return;
  // {items: [{report: {id, reason, details, …}, lora: {id, name, creator, hidden, open_reports}}]}
  const items = r.items || [];
  box.hidden = false;
  box.replaceChildren(h('h2', { id: 'rp-h' }, `Open reports (${r.total ?? items.length})`), items.length ? h('ul', { class: 'reports' }, items.map(({ report, lora }) => {
    const actions = h('span', { class: 'actions' });
    const act = (label, path, json) => h('button', { type: 'button', class: label.toLowerCase(), onclick: async () => {
      try { await api(path, { method: 'POST', ...(json ? { json } : {}) }); actions.replaceChildren(h('span', { class: 'muted' }, `${label}: done`)); }
      catch (e) { toast(e.message); }
    } }, label);
    actions.append(
      lora.hidden ? h('span', { class: 'muted' }, 'hidden') : act('Hide', `/api/v1/admin/lora-models/${lora.id}/hide`, { reason: `Reported: ${report.reason}` }),
      ' ', act('Dismiss', `/api/v1/admin/reports/${report.id}/dismiss`));
    return h('li', { 'data-report': report.id, 'data-lora': lora.id }, h('a', { href: `#/loras/${lora.id}` }, `${lora.name} (by ${creatorName(lora.creator)})`), ' — ',
      report.reason, report.details ? `: ${report.details}` : '', ` · ${lora.open_reports} open · ${fmtDate(report.created_at)} `, actions);
  })) : h('p', { class: 'muted' }, 'No open reports.'));
}
