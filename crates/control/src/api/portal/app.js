// The ferry portal: a page per view (overview, VM, jobs, job, events), drawn from the API with
// the token the operator signs in with. The token lives in this tab's session storage only.
'use strict';

const TOKEN_KEY = 'ferry-token';
const REFRESH_MS = 2000;
let refreshTimer = null;

const $ = (sel, el = document) => el.querySelector(sel);

function esc(v) {
  return String(v ?? '-').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token()}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = text;
  try { data = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (r.status === 401) throw new Unauthorized(data.error || 'the token was refused');
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

// ---- sign in ------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $('#nav').hidden = true;
  showSignIn(message);
}

function showSignIn(message) {
  stopRefresh();
  $('#main').innerHTML = `
    <section id="signin-page" class="card narrow">
      <h1>Sign in</h1>
      <p>Paste the API token (the file <code>admin-token</code> in the server's data directory).</p>
      <form id="signin">
        <input id="token" type="password" autocomplete="off" placeholder="token" required>
        <button type="submit" class="primary">Sign in</button>
      </form>
      <p id="signin-error" class="error" ${message ? '' : 'hidden'}>${esc(message)}</p>
    </section>`;
  $('#signin').addEventListener('submit', async (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    try {
      await api('GET', '/v1/regions');
      $('#nav').hidden = false;
      if (location.hash === '' || location.hash === '#/') route(); else location.hash = '#/';
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      const p = $('#signin-error');
      p.textContent = err instanceof Unauthorized
        ? `The token was refused: ${err.message}`
        : `The server could not be reached: ${err.message}`;
      p.hidden = false;
    }
  });
}

// ---- helpers ------------------------------------------------------------------------------

function badge(text) {
  return `<span class="badge ${esc(text)}">${esc(text)}</span>`;
}

function seconds(v) {
  if (v === null || v === undefined) return '-';
  return v < 120 ? `${v.toFixed(1)} s` : `${(v / 60).toFixed(1)} min`;
}

function mib(b) {
  return `${(b / 1048576).toFixed(0)} MiB`;
}

function stopRefresh() {
  if (refreshTimer) clearTimeout(refreshTimer);
  refreshTimer = null;
}

// The error of the last refresh, shown once above the page (not one more every two seconds),
// or none.
function showPollError(message) {
  const p = $('#poll-error');
  p.textContent = message || '';
  p.hidden = !message;
}

// Draw `view` now and again every two seconds while it stays the current page (not while a
// dialog is open). A failed refresh shows its error until one succeeds.
function keepFresh(view) {
  const hash = location.hash;
  const tick = async () => {
    if (location.hash !== hash) return;
    if (!$('#dialog').open) {
      try {
        await view();
        showPollError(null);
      } catch (err) {
        if (err instanceof Unauthorized) return signOut(`Signed out: ${err.message}`);
        showPollError(err.message);
      }
    }
    refreshTimer = setTimeout(tick, REFRESH_MS);
  };
  stopRefresh();
  tick();
}

// Ask before acting: `body` is extra form content; `act` gets the form and returns a job.
// Each opening of the dialog has its own handlers, removed however it closes (confirmed,
// cancelled, Esc), so a confirmation runs only the action it was opened for, once.
function confirmAction(title, body, act) {
  const d = $('#dialog');
  $('#dialog-title').textContent = title;
  $('#dialog-body').innerHTML = body;
  $('#dialog-error').hidden = true;
  const form = $('#dialog-form');
  const opening = new AbortController();
  let busy = false;
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (busy) return;
    busy = true;
    try {
      const job = await act(form);
      // Closed meanwhile (Esc): the job started all the same; say so.
      if (!opening.signal.aborted) d.close();
      if (job && job.id !== undefined) {
        showNotice(`Job ${job.id} (${job.kind}) started.`, `#/jobs/${job.id}`);
      }
    } catch (err) {
      $('#dialog-error').textContent = err.message;
      $('#dialog-error').hidden = false;
    } finally {
      busy = false;
    }
  }, { signal: opening.signal });
  $('#cancel').addEventListener('click', () => d.close(), { signal: opening.signal });
  d.addEventListener('close', () => opening.abort(), { signal: opening.signal });
  d.showModal();
}

function showNotice(text, link) {
  let n = $('#notice');
  if (!n) {
    n = document.createElement('p');
    n.id = 'notice';
    document.body.appendChild(n);
  }
  n.innerHTML = `${esc(text)} <a id="job-link" href="${esc(link)}">Follow it</a>`;
  // It stays until the page after the one it links to.
  n.dataset.fresh = '1';
}

function itemPath(name) {
  const [g, v] = name.split('/');
  return `/v1/groups/${encodeURIComponent(g)}/vms/${encodeURIComponent(v)}`;
}

// ---- overview -----------------------------------------------------------------------------

async function overview() {
  const [items, vms] = await Promise.all([api('GET', '/v1/replications'), api('GET', '/v1/vms')]);
  const count = (key) => items.reduce((m, i) => ({ ...m, [i[key]]: (m[i[key]] || 0) + 1 }), {});
  const tiles = (counts) => Object.entries(counts)
    .map(([k, n]) => `<div class="tile">${badge(k)}<strong>${n}</strong></div>`).join('');
  const protectedNames = new Set(items.map((i) => i.name));
  const free = vms.filter((v) => !protectedNames.has(`${v.group}/${v.name}`));
  $('#main').innerHTML = `
    <section id="overview">
      <h1>Protected items</h1>
      <div class="tiles" id="by-health">${tiles(count('health'))}</div>
      <div class="tiles" id="by-state">${tiles(count('state'))}</div>
      <table id="items">
        <thead><tr><th>Item</th><th>State</th><th>Health</th><th>RPO</th><th>Last point</th><th>Target</th></tr></thead>
        <tbody>${items.map((i) => `
          <tr data-item="${esc(i.name)}">
            <td><a href="#/vm/${esc(i.name)}">${esc(i.name)}</a></td>
            <td class="state">${esc(i.state)}</td>
            <td class="health">${badge(i.health)}</td>
            <td>${seconds(i.rpo_seconds)}</td>
            <td>${esc(i.last_recovery_point && i.last_recovery_point.time)}</td>
            <td>${esc(i.target.region)}</td>
          </tr>`).join('') || '<tr><td colspan="6">Nothing is protected yet.</td></tr>'}
        </tbody>
      </table>
      <h2>Not protected</h2>
      <table id="unprotected">
        <thead><tr><th>VM</th><th>Region</th><th>State</th><th></th></tr></thead>
        <tbody>${free.map((v) => `
          <tr><td><a href="#/vm/${esc(v.group)}/${esc(v.name)}">${esc(v.group)}/${esc(v.name)}</a></td>
          <td>${esc(v.region)}</td><td>${esc(v.state)}</td>
          <td><button class="primary" data-enable="${esc(v.group)}/${esc(v.name)}" data-region="${esc(v.region)}">Enable replication</button></td></tr>`).join('')
          || '<tr><td colspan="4">Every VM is protected.</td></tr>'}
        </tbody>
      </table>
    </section>`;
  for (const b of document.querySelectorAll('[data-enable]')) {
    b.addEventListener('click', () => enableDialog(b.dataset.enable, b.dataset.region));
  }
}

async function enableDialog(name, sourceRegion) {
  const [regions, policies] = await Promise.all([api('GET', '/v1/regions'), api('GET', '/v1/policies')]);
  const targets = regions.map((r) => r.name || r).filter((r) => r !== sourceRegion);
  confirmAction(`Enable replication of ${name}`, `
    <label>Target region <select id="enable-region">${targets.map((r) => `<option>${esc(r)}</option>`).join('')}</select></label>
    <label>Policy <select id="enable-policy"><option value="">default</option>${policies.map((p) => `<option>${esc(p.name)}</option>`).join('')}</select></label>
    <p>Its disks are copied to the target region, then every write is replicated.</p>`,
  (form) => api('POST', `${itemPath(name)}/replication`, {
    target_region: $('#enable-region', form).value,
    policy: $('#enable-policy', form).value || null,
  }));
}

// ---- one VM -------------------------------------------------------------------------------

// The RPO over time as a line, with the policy's thresholds as dashed lines.
function rpoChart(history, warning, critical) {
  const w = 640; const h = 160; const pad = 30;
  const pts = history.filter((s) => s.rpo_seconds !== null)
    .map((s) => ({ t: Date.parse(s.time), r: s.rpo_seconds }));
  if (pts.length === 0) return '<p class="muted">No RPO recorded yet (one sample every 30 s).</p>';
  const t0 = Math.min(...pts.map((p) => p.t)); const t1 = Math.max(...pts.map((p) => p.t), t0 + 1);
  const top = Math.max(warning * 1.2, ...pts.map((p) => p.r));
  const x = (t) => pad + ((t - t0) / (t1 - t0)) * (w - 2 * pad);
  const y = (r) => h - pad - (Math.min(r, top) / top) * (h - 2 * pad);
  const line = pts.map((p) => `${x(p.t).toFixed(1)},${y(p.r).toFixed(1)}`).join(' ');
  const rule = (v, cls, label) => (v <= top ? `<line class="${cls}" x1="${pad}" x2="${w - pad}" y1="${y(v)}" y2="${y(v)}"/>
    <text x="${w - pad}" y="${y(v) - 3}" text-anchor="end" class="axis">${label} ${v} s</text>` : '');
  return `<svg viewBox="0 0 ${w} ${h}" role="img" aria-label="RPO over time">
    <line class="axisline" x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}"/>
    ${rule(warning, 'warn', 'warning')}${rule(critical, 'crit', 'critical')}
    <polyline class="rpo" points="${line}"/>
    <circle class="rpo-now" cx="${x(pts[pts.length - 1].t).toFixed(1)}" cy="${y(pts[pts.length - 1].r).toFixed(1)}" r="3"/>
    <text x="${pad}" y="${h - 8}" class="axis">${esc(new Date(t0).toISOString())}</text>
    <text x="${w - pad}" y="${h - 8}" text-anchor="end" class="axis">${esc(new Date(t1).toISOString())}</text>
    <text x="4" y="${pad - 8}" class="axis">max ${seconds(Math.max(...pts.map((p) => p.r)))}</text>
  </svg>`;
}

// The recovery points on a time line, one row per kind.
function pointsTimeline(points) {
  if (points.length === 0) return '<p class="muted">No recovery point yet.</p>';
  const kinds = ['crash-consistent', 'app-consistent'];
  const w = 640; const row = 28; const pad = 130;
  const ts = points.map((p) => Date.parse(p.time));
  const t0 = Math.min(...ts); const t1 = Math.max(...ts, t0 + 1);
  const x = (t) => pad + ((t - t0) / (t1 - t0)) * (w - pad - 20);
  const dots = points.map((p) => {
    const k = Math.max(0, kinds.indexOf(p.kind));
    return `<circle class="${esc(p.kind)}" cx="${x(Date.parse(p.time)).toFixed(1)}" cy="${18 + k * row}" r="5"><title>${esc(p.id)} ${esc(p.kind)} ${esc(p.time)}</title></circle>`;
  }).join('');
  const labels = kinds.map((k, i) => `<text x="4" y="${22 + i * row}" class="axis">${k}</text>`).join('');
  return `<svg viewBox="0 0 ${w} ${kinds.length * row + 20}" role="img" aria-label="Recovery points">${labels}${dots}</svg>`;
}

function actionsFor(rep) {
  const a = [];
  if (rep.test_failover) a.push(['test-failover-cleanup', 'Clean up test failover']);
  else if (rep.state === 'protected') a.push(['test-failover', 'Test failover']);
  if (rep.state === 'protected') a.push(['failover', 'Failover']);
  if (rep.state === 'failed-over') a.push(['commit', 'Commit failover']);
  if (rep.state === 'failed-over' || rep.state === 'failover-committed') a.push(['reprotect', 'Reprotect']);
  a.push(['disable', 'Disable replication']);
  return a;
}

function act(kind, name, points) {
  const p = itemPath(name);
  const picker = `<label>Recovery point <select id="point">
      <option value="latest">latest</option><option value="latest-app-consistent">latest app-consistent</option>
      ${points.slice().reverse().map((x) => `<option value="${esc(x.id)}">${esc(x.time)} ${esc(x.kind)} (${esc(x.id)})</option>`).join('')}
    </select></label>`;
  const dialogs = {
    'test-failover': ['Test failover', `<p>Boots a copy of ${esc(name)} in an isolated network of the target region; replication goes on.</p>${picker}`,
      (f) => api('POST', `${p}/test-failover`, { recovery_point: $('#point', f).value })],
    'test-failover-cleanup': ['Clean up the test failover', `<p>Deletes the test VM and its disks.</p>`,
      () => api('DELETE', `${p}/test-failover`)],
    failover: ['Failover', `<p>Boots ${esc(name)} in the target region from the chosen point. Replication stops until a reprotect.</p>${picker}
      <label><input type="checkbox" id="shutdown"> Planned: stop the source VM and replicate its last writes first</label>`,
      (f) => api('POST', `${p}/failover`, { recovery_point: $('#point', f).value, shutdown_source: $('#shutdown', f).checked })],
    commit: ['Commit the failover', '<p>The failed-over VM stays; the recovery points are no longer needed for it.</p>',
      () => api('POST', `${p}/failover/commit`, {})],
    reprotect: ['Reprotect', '<p>Replicates the failed-over VM back to the original region.</p>',
      () => api('POST', `${p}/reprotect`, {})],
    disable: ['Disable replication', `<p>Stops protecting ${esc(name)} and deletes its cache and replica data. The VM is untouched.</p>`,
      () => api('DELETE', `${p}/replication`)],
  };
  const [title, body, run] = dialogs[kind];
  confirmAction(title, body, run);
}

async function vmPage(name) {
  const p = itemPath(name);
  const vm = await api('GET', p);
  let rep = null;
  try { rep = await api('GET', `${p}/replication`); } catch (err) {
    if (err instanceof Unauthorized) throw err;
  }
  const [history, points] = rep
    ? await Promise.all([api('GET', `${p}/replication/rpo-history?since_seconds=86400`), api('GET', `${p}/recovery-points`)])
    : [[], []];
  const disks = (vm.disks || []).map((d, i) => `<tr><td>${i}</td><td>${mib(d.size_bytes || d.size || 0)}</td>
      <td>${esc(d.storage || d.account)}</td><td><code>${esc(d.nbd_uri || d.uri)}</code></td></tr>`).join('');
  const t = rep ? rep.target : null;
  $('#main').innerHTML = `
    <section id="vm-page">
      <h1>${esc(name)} ${rep ? badge(rep.health) : ''}</h1>
      <p>VM in ${esc(vm.region)}, ${esc(vm.state)}. ${rep ? `Replication: <span id="item-state">${esc(rep.state)}</span>, RPO ${seconds(rep.rpo_seconds)}.` : 'Not protected.'}</p>
      ${rep && rep.health_reasons.length ? `<ul class="reasons">${rep.health_reasons.map((r) => `<li>${esc(r)}</li>`).join('')}</ul>` : ''}
      <div id="actions">${rep ? actionsFor(rep).map(([k, label]) => `<button id="action-${k}" data-action="${k}">${label}</button>`).join('')
        : `<button id="action-enable" class="primary">Enable replication</button>`}</div>
      <div class="grid">
        <div class="card"><h2>Disks</h2><table id="disks"><thead><tr><th>#</th><th>Size</th><th>Account</th><th>NBD</th></tr></thead><tbody>${disks}</tbody></table></div>
        ${t ? `<div class="card" id="target"><h2>Target</h2><dl>
          <dt>Region</dt><dd>${esc(t.region)}</dd><dt>Group</dt><dd>${esc(t.group)}</dd>
          <dt>Network</dt><dd>${esc(t.network)} / ${esc(t.subnet)}</dd>
          <dt>Storage</dt><dd>${esc(Object.entries(t.storage || {}).map(([a, b]) => `${a} → ${b}`).join(', '))}</dd>
          <dt>Cache</dt><dd>${esc(t.cache_storage)}</dd><dt>Policy</dt><dd>${esc(rep.policy)}</dd></dl></div>` : ''}
      </div>
      ${rep ? `<div class="card"><h2>RPO, last 24 h</h2><div id="rpo-chart">${rpoChart(history, rep.rpo_warning_seconds, rep.rpo_critical_seconds)}</div></div>
      <div class="card"><h2>Recovery points (${points.length})</h2><div id="points-timeline">${pointsTimeline(points)}</div></div>` : ''}
    </section>`;
  if (!rep) {
    $('#action-enable').addEventListener('click', () => enableDialog(name, vm.region));
    return;
  }
  for (const b of document.querySelectorAll('[data-action]')) {
    b.addEventListener('click', () => act(b.dataset.action, name, points));
  }
}

// ---- jobs and events ----------------------------------------------------------------------

function jobRow(j) {
  return `<tr><td><a href="#/jobs/${j.id}">${j.id}</a></td><td>${esc(j.kind)}</td><td>${esc(j.target)}</td>
    <td>${badge(j.state)}</td><td>${j.percent === null ? '-' : `${j.percent}%`}</td><td>${esc(j.updated)}</td></tr>`;
}

async function jobsPage() {
  const jobs = await api('GET', '/v1/jobs');
  $('#main').innerHTML = `<section id="jobs"><h1>Jobs</h1><table><thead><tr><th>Id</th><th>Kind</th><th>Target</th><th>State</th><th>Done</th><th>Updated</th></tr></thead>
    <tbody>${jobs.slice().reverse().map(jobRow).join('')}</tbody></table></section>`;
}

async function jobPage(id) {
  const j = await api('GET', `/v1/jobs/${encodeURIComponent(id)}`);
  const bytes = j.bytes_total ? ` ${mib(j.bytes_done)} of ${mib(j.bytes_total)}` : '';
  $('#main').innerHTML = `<section id="job"><h1>Job ${j.id}: ${esc(j.kind)} of <a href="#/vm/${esc(j.target)}">${esc(j.target)}</a></h1>
    <p><span id="job-state">${esc(j.state)}</span>, ${j.percent ?? 0}% done${bytes}</p>
    <progress max="100" value="${j.percent ?? 0}"></progress>
    ${j.error ? `<p class="error">${esc(j.error)}</p>` : ''}
    <ol id="steps">${j.steps.map((s) => `<li class="step"><span class="step-name">${esc(s.name)}</span>
      <span class="step-state ${esc(s.state)}">${esc(s.state)}</span>${s.detail ? ` <span class="muted">${esc(s.detail)}</span>` : ''}</li>`).join('')}</ol></section>`;
}

async function eventsPage() {
  const events = await api('GET', '/v1/events?limit=200');
  $('#main').innerHTML = `<section id="events"><h1>Events</h1><table><thead><tr><th>Time</th><th>Severity</th><th>Kind</th><th>Target</th><th>Message</th></tr></thead>
    <tbody>${events.slice().reverse().map((e) => `<tr><td>${esc(e.time)}</td><td>${badge(e.severity)}</td><td>${esc(e.kind)}</td>
      <td>${esc(e.target)}</td><td>${esc(e.message)}</td></tr>`).join('')}</tbody></table></section>`;
}

// ---- routing ------------------------------------------------------------------------------

function route() {
  const notice = $('#notice');
  if (notice && !notice.dataset.fresh) notice.remove();
  if (notice) delete notice.dataset.fresh;
  if (!token()) return showSignIn();
  $('#nav').hidden = false;
  const h = location.hash.replace(/^#\/?/, '');
  const parts = h.split('/').map(decodeURIComponent);
  if (parts[0] === 'vm' && parts.length === 3) return keepFresh(() => vmPage(`${parts[1]}/${parts[2]}`));
  if (parts[0] === 'jobs' && parts[1]) return keepFresh(() => jobPage(parts[1]));
  if (parts[0] === 'jobs') return keepFresh(jobsPage);
  if (parts[0] === 'events') return keepFresh(eventsPage);
  return keepFresh(overview);
}

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  $('#sign-out').addEventListener('click', () => signOut());
  route();
});
