// ssvp inspection station: the browser UI (vanilla ES module, no dependencies, works offline).
// Talks to the JSON API under /station/api (see docs/station.md). Every API request carries
// `Authorization: Bearer KEY` once the user gave a key (asked on the first 401, kept per tab).

const API = '/station/api';
const KEY_STORE = 'ssvp.station.key';
const WHO_STORE = 'ssvp.station.who';
const LIVE_LIMIT = 500;
const LIVE_PAGE = 60;
const REVIEW_LIMIT = 50;

// ---------------------------------------------------------------- small helpers

const $ = (sel, root = document) => root.querySelector(sel);
const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'indeterminate']);

/** Creates an element: h('div', {class, text, testid, onclick, ...attrs}, ...children). */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'testid') el.setAttribute('data-testid', v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (PROPS.has(k)) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of kids.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

function fmtScore(v) {
  if (v == null || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  const d = a >= 1000 ? 0 : a >= 100 ? 1 : a >= 10 ? 2 : a >= 1 ? 3 : 4;
  return v.toFixed(d);
}
function fmtPct(v, d = 1) {
  return v == null || !Number.isFinite(v) ? '—' : `${(v * 100).toFixed(d)} %`;
}
function fmtInt(v) {
  return v == null || !Number.isFinite(v) ? '—' : Math.round(v).toLocaleString();
}
function fmtTime(at) {
  if (!at) return '—';
  const d = new Date(at);
  if (Number.isNaN(d.getTime())) return String(at);
  return d.toLocaleString(undefined, {
    year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}
function fmtTimeShort(at) {
  const d = new Date(at);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay
    ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString(undefined, { month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit' });
}
function storeGet(store, k) {
  try { return store.getItem(k) || ''; } catch { return ''; }
}
function storeSet(store, k, v) {
  try { if (v) store.setItem(k, v); else store.removeItem(k); } catch { /* storage disabled */ }
}

// ---------------------------------------------------------------- toasts

const recentToasts = new Map();
function toast(msg, kind = 'error') {
  const text = String(msg && msg.message ? msg.message : msg);
  const now = Date.now();
  const last = recentToasts.get(text);
  if (last && now - last < 4000) return; // the same message in a burst shows once
  recentToasts.set(text, now);
  if (recentToasts.size > 50) recentToasts.clear();
  const box = $('#toasts');
  const el = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: 'toast', 'data-kind': kind },
    h('span', { class: 'toast-text', text }),
    h('button', { class: 'toast-close', type: 'button', 'aria-label': 'Dismiss', text: '×', onclick: () => el.remove() }));
  box.append(el);
  while (box.children.length > 5) box.firstElementChild.remove();
  setTimeout(() => el.remove(), kind === 'error' ? 12000 : 5000);
}

// ---------------------------------------------------------------- API access (auth, JSON, errors)

let keyPromise = null;
function askKey(rejected) {
  if (keyPromise) return keyPromise;
  keyPromise = new Promise((resolve) => {
    const dlg = $('#key-dialog');
    const form = $('#key-form');
    const input = $('#key-input');
    $('#key-message').textContent = rejected
      ? 'The key was not accepted. Enter the API key of this station.'
      : 'This station needs an API key. It is kept in this browser tab only.';
    input.value = '';
    const onSubmit = (e) => {
      e.preventDefault();
      const k = input.value.trim();
      if (!k) return;
      storeSet(sessionStorage, KEY_STORE, k);
      form.removeEventListener('submit', onSubmit);
      dlg.close();
      keyPromise = null;
      resolve(k);
    };
    form.addEventListener('submit', onSubmit);
    if (!dlg.open) dlg.showModal();
    setTimeout(() => input.focus(), 0);
  });
  return keyPromise;
}

async function httpError(res) {
  let msg = `${res.status} ${res.statusText || 'error'}`;
  try {
    const t = await res.text();
    try {
      const j = JSON.parse(t);
      if (j && j.error) msg = String(j.error);
    } catch {
      if (t) msg += `: ${t.slice(0, 200)}`;
    }
  } catch { /* no body */ }
  const e = new Error(msg);
  e.status = res.status;
  return e;
}

/** fetch() with the API key; asks for the key on 401 and retries; throws on a non-2xx answer. */
async function apiFetch(path, opts = {}) {
  for (let attempt = 0; attempt < 6; attempt++) {
    const headers = new Headers(opts.headers || {});
    const key = storeGet(sessionStorage, KEY_STORE);
    if (key) headers.set('Authorization', `Bearer ${key}`);
    let res;
    try {
      res = await fetch(path, { ...opts, headers, cache: 'no-store', credentials: 'same-origin' });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new Error(`network error: ${e.message || e}`);
    }
    if (res.status === 401) {
      if (key && storeGet(sessionStorage, KEY_STORE) === key) storeSet(sessionStorage, KEY_STORE, '');
      await askKey(Boolean(key));
      continue;
    }
    if (!res.ok) throw await httpError(res);
    return res;
  }
  throw new Error('not authorised');
}
async function apiJson(path, opts) {
  const res = await apiFetch(path, opts);
  return res.json();
}
function postJson(path, body) {
  return apiJson(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
}
const partsOf = (r) => (Array.isArray(r) ? r : r.parts || r.items || r.rows || []);
const totalOf = (r) => (Array.isArray(r) ? r.length : r.total ?? r.count ?? partsOf(r).length);
const partOf = (r) => (r && r.part && typeof r.part === 'object' ? r.part : r);

// ---------------------------------------------------------------- images as blob: URLs (LRU)

const blobCache = new Map();
const BLOB_MAX = 300;
let blobActive = 0;
const blobQueue = [];
function pumpBlobs() {
  while (blobActive < 6 && blobQueue.length) {
    const job = blobQueue.shift();
    blobActive++;
    job.fn().then(job.resolve, job.reject).finally(() => { blobActive--; pumpBlobs(); });
  }
}
function limited(fn) {
  return new Promise((resolve, reject) => { blobQueue.push({ fn, resolve, reject }); pumpBlobs(); });
}
function evictBlobs() {
  while (blobCache.size > BLOB_MAX) {
    const [k, e] = blobCache.entries().next().value;
    blobCache.delete(k);
    e.evicted = true;
    if (e.url) URL.revokeObjectURL(e.url);
  }
}
/** A blob: URL of an API image, fetched with the key; cached by `cacheKey`. */
function blobUrl(path, cacheKey = path) {
  const hit = blobCache.get(cacheKey);
  if (hit) {
    blobCache.delete(cacheKey);
    blobCache.set(cacheKey, hit);
    return hit.promise;
  }
  const e = { url: null, evicted: false };
  e.promise = limited(() => apiFetch(path).then((r) => r.blob())).then((b) => {
    const url = URL.createObjectURL(b);
    if (e.evicted) {
      setTimeout(() => URL.revokeObjectURL(url), 30000);
    } else e.url = url;
    return url;
  }, (err) => {
    if (blobCache.get(cacheKey) === e) blobCache.delete(cacheKey);
    throw err;
  });
  blobCache.set(cacheKey, e);
  evictBlobs();
  return e.promise;
}
function loadImg(img, path, cacheKey, quiet = false) {
  img.classList.add('loading');
  return blobUrl(path, cacheKey).then((url) => {
    img.src = url;
    img.classList.remove('loading');
  }, (err) => {
    img.classList.remove('loading');
    img.classList.add('broken');
    if (!quiet) toast(`image ${path}: ${err.message}`);
    else toast(`Some images could not be loaded: ${err.message}`);
  });
}
const imagePath = (id) => `${API}/parts/${encodeURIComponent(id)}/image`;
const mapPath = (id) => `${API}/parts/${encodeURIComponent(id)}/map.png`;
const mapKey = (p) => `map:${p.id}:${p.bank_version ?? ''}:${S.state?.bank?.version ?? ''}`;

// ---------------------------------------------------------------- application state

const S = {
  state: null,
  view: null,
  viewName: '',
  lastPartId: null,
};
const live = { parts: [], byId: new Map(), loaded: false, loading: null };

function thresholdValue() {
  const t = S.state && S.state.threshold;
  return t && Number.isFinite(t.value) ? t.value : null;
}
/** The decision at the current threshold (`score > threshold`), decided in the browser. */
function decide(p) {
  const t = thresholdValue();
  if (t != null && Number.isFinite(p.score)) return p.score > t;
  return typeof p.anomalous === 'boolean' ? p.anomalous : null;
}
function badge(anom, testid = 'decision-badge') {
  const kind = anom == null ? 'unknown' : anom ? 'defect' : 'good';
  return h('span', { class: `badge ${kind}`, testid, 'data-decision': kind, text: anom == null ? '—' : anom ? 'DEFECT' : 'GOOD' });
}
function feedbackTag(fb, testid) {
  if (!fb) return h('span', { class: 'tag none', testid, 'data-feedback': 'none', text: 'not marked' });
  return h('span', { class: `tag fb-${fb}`, testid, 'data-feedback': fb, text: fb === 'good' ? 'marked good' : 'marked defective' });
}

let statePromise = null;
function refreshState() {
  if (!statePromise) {
    statePromise = apiJson(`${API}/state`).then((s) => {
      S.state = s;
      renderStatus();
      return s;
    }).finally(() => { statePromise = null; });
  }
  return statePromise;
}

function renderStatus() {
  const st = S.state;
  const thEl = $('#status-threshold');
  const bankEl = $('#status-bank');
  if (st) {
    const t = st.threshold;
    thEl.textContent = t && t.value != null
      ? `Threshold v${t.version ?? '?'} = ${fmtScore(t.value)} · ${t.conformal ? 'conformal' : 'operator'}`
      : 'No threshold';
    thEl.title = t ? `set ${fmtTime(t.at)}${t.who ? ` by ${t.who}` : ''}${t.why ? `: ${t.why}` : ''}` : '';
    const b = st.bank;
    bankEl.textContent = b ? `Bank v${b.version ?? '?'}${b.references != null ? ` · ${b.references} refs` : ''}` : 'Bank —';
    bankEl.title = b && b.digest ? `digest ${b.digest}` : '';
    const m = st.model;
    $('#model-name').textContent = m ? `${m.class_name || ''}${m.mode ? ` · ${m.mode}` : ''}${m.calibrated === false ? ' · uncalibrated' : ''}` : '';
  }
}
function setConn(state, retryMs) {
  const el = $('#status-conn');
  el.dataset.state = state;
  el.textContent = state === 'live' ? '● live'
    : state === 'connecting' ? '○ connecting…'
      : `○ offline${retryMs ? ` · retry in ${Math.round(retryMs / 1000)} s` : ''}`;
}

// ---------------------------------------------------------------- live parts store

function upsertLive(p) {
  if (!p || p.id == null) return { part: p, isNew: false };
  const old = live.byId.get(p.id);
  if (old) {
    Object.assign(old, p);
    return { part: old, isNew: false };
  }
  const t = Date.parse(p.at) || 0;
  let i = 0;
  while (i < live.parts.length && (Date.parse(live.parts[i].at) || 0) > t) i++;
  live.parts.splice(i, 0, p);
  live.byId.set(p.id, p);
  while (live.parts.length > 3000) live.byId.delete(live.parts.pop().id);
  return { part: p, isNew: true, index: i };
}
/** Keeps state.counts current between state refreshes when a new part arrives. */
function countNew(p) {
  const c = S.state && S.state.counts;
  if (!c) return;
  if (Number.isFinite(c.parts)) c.parts++;
  if (Number.isFinite(c.anomalous) && decide(p)) c.anomalous++;
}
function loadLive(limit = LIVE_LIMIT) {
  if (live.loading) return live.loading;
  live.loading = apiJson(`${API}/parts?sort=created&order=desc&offset=0&limit=${limit}`).then((r) => {
    for (const p of partsOf(r)) upsertLive(p);
    live.loaded = true;
    updateNavPart();
  }).finally(() => { live.loading = null; });
  return live.loading;
}
function updateNavPart() {
  const id = S.lastPartId ?? (live.parts[0] && live.parts[0].id);
  $('#nav-part').setAttribute('href', id != null ? `#/part/${id}` : '#/part');
}

// ---------------------------------------------------------------- live events (fetch + text/event-stream)

async function readSse(body, onEvent, onActivity) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = '';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onActivity();
    buf += value;
    for (;;) {
      const i = buf.search(/[\r\n]/);
      if (i < 0) break;
      if (buf[i] === '\r' && i + 1 === buf.length) break; // a "\r\n" may be split across chunks
      const line = buf.slice(0, i);
      buf = buf.slice(i + (buf[i] === '\r' && buf[i + 1] === '\n' ? 2 : 1));
      if (line === '') {
        if (data.length) onEvent(ev || 'message', data.join('\n'));
        ev = '';
        data = [];
        continue;
      }
      if (line[0] === ':') continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let val = c < 0 ? '' : line.slice(c + 1);
      if (val[0] === ' ') val = val.slice(1);
      if (field === 'event') ev = val;
      else if (field === 'data') data.push(val);
    }
  }
}

function onServerEvent(type, data) {
  let d;
  try { d = JSON.parse(data); } catch { d = null; }
  if (type === 'part') {
    const p = partOf(d);
    if (!p || p.id == null) return;
    const oldest = live.parts[live.parts.length - 1];
    if (!live.byId.has(p.id) && live.parts.length >= LIVE_LIMIT && oldest && (Date.parse(p.at) || 0) < (Date.parse(oldest.at) || 0)) {
      // an old part re-scored (after a bank change): not in the live list, but the part view may show it
      if (S.view && S.view.onPart) S.view.onPart(p, false);
      return;
    }
    const r = upsertLive(p);
    if (r.isNew && r.index === 0) countNew(r.part);
    updateNavPart();
    if (S.view && S.view.onPart) S.view.onPart(r.part, r.isNew);
  } else if (type === 'lagged') {
    resync(); // the server dropped events for this stream: fetch what was missed
  } else if (type === 'state') {
    const apply = () => { if (S.view && S.view.onState) S.view.onState(); };
    if (d && typeof d === 'object' && 'threshold' in d && 'bank' in d && 'regions' in d) {
      S.state = { ...(S.state || {}), ...d };
      renderStatus();
      apply();
    } else {
      refreshState().then(apply, (e) => toast(e));
    }
  }
}

async function runEvents() {
  let backoff = 1000;
  let connectedBefore = false;
  for (;;) {
    setConn('connecting');
    const ctl = new AbortController();
    let lastActivity = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - lastActivity > 120000) ctl.abort();
    }, 10000);
    try {
      const res = await apiFetch(`${API}/events`, { headers: { Accept: 'text/event-stream' }, signal: ctl.signal });
      setConn('live');
      backoff = 1000;
      if (connectedBefore) resync();
      connectedBefore = true;
      await readSse(res.body, onServerEvent, () => { lastActivity = Date.now(); });
    } catch (e) {
      if (e && e.status && e.status !== 401 && e.status !== 404) console.warn('events:', e.message);
    } finally {
      clearInterval(watchdog);
    }
    setConn('offline', backoff);
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 30000);
  }
}
function resync() {
  refreshState().then(() => { if (S.view && S.view.onState) S.view.onState(); }, (e) => toast(e));
  if (live.loaded) {
    apiJson(`${API}/parts?sort=created&order=desc&offset=0&limit=100`).then((r) => {
      for (const p of partsOf(r).reverse()) {
        const x = upsertLive(p);
        if (S.view && S.view.onPart) S.view.onPart(x.part, x.isNew);
      }
    }, (e) => toast(e));
  }
}

// ---------------------------------------------------------------- who / why dialog

function askWhoWhy({ title, message = '', confirm = 'Confirm', why = '', danger = false }) {
  return new Promise((resolve) => {
    const dlg = $('#who-dialog');
    const form = $('#who-form');
    const who = $('#who-input');
    const whyEl = $('#why-input');
    const submit = $('#who-submit');
    $('#who-title').textContent = title;
    $('#who-message').textContent = message;
    submit.textContent = confirm;
    submit.classList.toggle('danger', danger);
    who.value = storeGet(localStorage, WHO_STORE);
    whyEl.value = why;
    let done = false;
    const finish = (v) => {
      if (done) return;
      done = true;
      form.removeEventListener('submit', onSubmit);
      $('#who-cancel').removeEventListener('click', onCancel);
      dlg.removeEventListener('close', onClose);
      if (dlg.open) dlg.close();
      resolve(v);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const w = who.value.trim();
      if (!w) { who.focus(); return; }
      storeSet(localStorage, WHO_STORE, w);
      finish({ who: w, why: whyEl.value.trim() });
    };
    const onCancel = () => finish(null);
    const onClose = () => finish(null);
    form.addEventListener('submit', onSubmit);
    $('#who-cancel').addEventListener('click', onCancel);
    dlg.addEventListener('close', onClose);
    dlg.showModal();
    setTimeout(() => (who.value ? whyEl : who).focus(), 0);
  });
}

// ---------------------------------------------------------------- downloads

async function downloadExport(kind) {
  const res = await apiFetch(`${API}/export.${kind}`);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-');
  const a = h('a', { href: url, download: `station-parts-${stamp}.${kind}` });
  a.classList.add('hidden-link');
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---------------------------------------------------------------- canvas helpers

function fitCanvas(canvas, cssW, cssH) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(cssW * dpr));
  const hh = Math.max(1, Math.round(cssH * dpr));
  if (canvas.width !== w || canvas.height !== hh) {
    canvas.width = w;
    canvas.height = hh;
  }
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}
let hatchPattern = null;
function hatch(ctx) {
  if (!hatchPattern) {
    const c = document.createElement('canvas');
    c.width = 10;
    c.height = 10;
    const g = c.getContext('2d');
    g.strokeStyle = 'rgba(255, 196, 0, 0.9)';
    g.lineWidth = 2;
    g.beginPath();
    g.moveTo(-2, 12); g.lineTo(12, -2);
    g.moveTo(-2, 2); g.lineTo(2, -2);
    g.moveTo(8, 12); g.lineTo(12, 8);
    g.stroke();
    hatchPattern = c;
  }
  return ctx.createPattern(hatchPattern, 'repeat');
}

// ================================================================= views

// ---------------------------------------------------------------- Live

function LiveView(root) {
  let shown = LIVE_PAGE;
  const grid = h('div', { class: 'cards', testid: 'live-cards' });
  const more = h('button', { class: 'btn', type: 'button', testid: 'live-more', text: 'Show more', onclick: () => { shown += LIVE_PAGE; renderCards(); } });
  const chart = h('div', { class: 'hchart', testid: 'hourly-chart' });
  const chartNote = h('span', { class: 'muted small', testid: 'hourly-note' });
  const counts = h('div', { class: 'counts', testid: 'live-counts' });
  const empty = h('p', { class: 'empty', testid: 'live-empty', text: 'No parts yet. Drop images on the upload zone, or wait for the line.' });
  const uploadList = h('ul', { class: 'upload-list', testid: 'upload-status' });
  const fileInput = h('input', { type: 'file', multiple: true, accept: 'image/*', class: 'visually-hidden', id: 'upload-input', testid: 'upload-input' });
  const drop = h('div', { class: 'drop', testid: 'upload-drop', tabindex: '0' },
    h('div', { class: 'drop-text' },
      h('strong', { text: 'Drop images here' }), ' to inspect them, or ',
      h('label', { for: 'upload-input', class: 'btn primary', testid: 'upload-button', text: 'Choose files…' }),
      fileInput));

  const observer = new IntersectionObserver((entries) => {
    for (const en of entries) {
      if (!en.isIntersecting) continue;
      observer.unobserve(en.target);
      loadThumb(en.target);
    }
  }, { rootMargin: '300px' });

  root.append(
    h('section', { class: 'live-top' },
      h('div', { class: 'panel upload-panel' }, h('h2', { text: 'Inspect images' }), drop, uploadList),
      h('div', { class: 'panel chart-panel' },
        h('div', { class: 'panel-head' }, h('h2', { text: 'Parts per hour, last 24 h' }), chartNote),
        chart, counts)),
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', { text: 'Newest parts' }),
        h('span', { class: 'muted small', text: 'decisions at the current threshold; overlay: anomaly map' })),
      empty, grid, h('div', { class: 'more-row' }, more)));

  // uploads
  fileInput.addEventListener('change', () => {
    const files = [...fileInput.files];
    fileInput.value = '';
    uploadFiles(files);
  });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragenter', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const files = [...(e.dataTransfer ? e.dataTransfer.files : [])].filter((f) => !f.type || f.type.startsWith('image/'));
    if (!files.length) { toast('Drop image files (PNG, JPEG, …).'); return; }
    uploadFiles(files);
  });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fileInput.click(); } });

  async function uploadFiles(files) {
    for (const f of files) {
      const status = h('span', { class: 'up-status', testid: 'upload-item-status', text: 'uploading…' });
      const item = h('li', { class: 'upload-item', testid: 'upload-item', 'data-status': 'pending' }, h('span', { class: 'up-name', text: f.name }), status);
      uploadList.prepend(item);
      while (uploadList.children.length > 8) uploadList.lastElementChild.remove();
      try {
        const fd = new FormData();
        fd.append('image', f, f.name);
        const r = partOf(await apiJson(`${API}/parts`, { method: 'POST', body: fd }));
        item.dataset.status = 'ok';
        status.textContent = '';
        if (r && r.id != null) {
          const x = upsertLive(r);
          if (x.isNew) { countNew(x.part); onPart(x.part, true); }
          status.append(badge(decide(r)), ' ', h('a', { href: `#/part/${r.id}`, text: `score ${fmtScore(r.score)}` }));
        } else status.textContent = 'done';
      } catch (e) {
        item.dataset.status = 'error';
        status.textContent = e.message;
        toast(`${f.name}: ${e.message}`);
      }
    }
  }

  function card(p) {
    const anom = decide(p);
    const base = h('img', { class: 'base', alt: p.name || `part ${p.id}`, draggable: 'false' });
    const over = h('img', { class: 'overlay', alt: '', draggable: 'false' });
    const thumb = h('div', { class: 'thumb' }, base, over);
    thumb.dataset.id = p.id;
    const el = h('a', { class: `card ${anom ? 'is-defect' : anom === false ? 'is-good' : ''}`, href: `#/part/${p.id}`, testid: 'live-card', 'data-part-id': p.id },
      thumb,
      h('div', { class: 'card-body' },
        h('div', { class: 'card-row' }, badge(anom), h('span', { class: 'card-calib', testid: 'card-calibrated', title: 'calibrated score', text: fmtPct(p.calibrated_score) })),
        h('div', { class: 'card-name', testid: 'card-name', title: p.name, text: p.name || `#${p.id}` }),
        h('div', { class: 'card-row small muted' },
          h('span', { testid: 'card-score', text: `raw ${fmtScore(p.score)}` }),
          h('span', { text: fmtTimeShort(p.at) })),
        p.feedback ? feedbackTag(p.feedback, 'card-feedback') : null));
    thumb._part = p;
    observer.observe(thumb);
    return el;
  }
  function loadThumb(thumb) {
    const p = thumb._part;
    const [base, over] = thumb.querySelectorAll('img');
    loadImg(base, imagePath(p.id), `img:${p.id}`, true);
    loadImg(over, mapPath(p.id), mapKey(p), true);
  }
  function renderCards() {
    observer.disconnect();
    const list = live.parts.slice(0, shown);
    grid.replaceChildren(...list.map(card));
    more.hidden = live.parts.length <= shown;
    empty.hidden = live.parts.length > 0 || !live.loaded;
  }

  let chartQueued = false;
  function queueChart() {
    if (chartQueued) return;
    chartQueued = true;
    requestAnimationFrame(() => { chartQueued = false; renderChart(); });
  }
  function renderChart() {
    const HOUR = 3600000;
    const now = Date.now();
    const start = Math.floor(now / HOUR) * HOUR - 23 * HOUR;
    const tot = new Array(24).fill(0);
    const bad = new Array(24).fill(0);
    let oldest = Infinity;
    for (const p of live.parts) {
      const t = Date.parse(p.at);
      if (!Number.isFinite(t)) continue;
      oldest = Math.min(oldest, t);
      if (t < start || t >= start + 24 * HOUR) continue;
      const i = Math.floor((t - start) / HOUR);
      tot[i]++;
      if (decide(p)) bad[i]++;
    }
    const max = Math.max(1, ...tot);
    const bars = tot.map((n, i) => {
      const hourStart = new Date(start + i * HOUR);
      const label = hourStart.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
      const fill = h('div', { class: 'hbar-fill' });
      const def = h('div', { class: 'hbar-def' });
      fill.style.height = `${(n / max) * 100}%`;
      def.style.height = n ? `${(bad[i] / n) * 100}%` : '0';
      fill.append(def);
      return h('div', { class: 'hbar', testid: 'hour-bar', 'data-count': n, 'data-defects': bad[i], title: `${label}: ${n} parts, ${bad[i]} DEFECT` },
        h('div', { class: 'hbar-track' }, fill),
        h('div', { class: 'hbar-label', text: i % 3 === 0 ? label : '' }));
    });
    chart.replaceChildren(...bars);
    const total = tot.reduce((a, b) => a + b, 0);
    const totalBad = bad.reduce((a, b) => a + b, 0);
    const truncated = live.parts.length >= LIVE_LIMIT && oldest > start;
    chartNote.textContent = `${total} parts, ${totalBad} DEFECT${truncated ? ` (newest ${live.parts.length} parts only)` : ''}`;
    const c = S.state && S.state.counts;
    counts.replaceChildren(...(c ? [
      stat('Parts stored', fmtInt(c.parts), 'count-parts'),
      stat('Flagged', fmtInt(c.anomalous), 'count-anomalous', 'defect'),
      stat('Marked good', fmtInt(c.marked_good), 'count-marked-good'),
      stat('Marked defective', fmtInt(c.marked_defective), 'count-marked-defective'),
    ] : []));
  }

  function onPart(p, isNew) {
    if (isNew && live.parts[0] === p && grid.firstChild !== null) {
      grid.prepend(card(p));
      while (grid.children.length > shown) grid.lastElementChild.remove();
      more.hidden = live.parts.length <= shown;
      empty.hidden = true;
    } else {
      const old = grid.querySelector(`[data-part-id="${CSS.escape(String(p.id))}"]`);
      if (old) old.replaceWith(card(p));
      else if (isNew) renderCards();
    }
    queueChart();
  }

  renderCards();
  renderChart();
  const timer = setInterval(renderChart, 60000);
  if (!live.loaded) loadLive().then(() => { renderCards(); renderChart(); }, (e) => { toast(e); empty.hidden = false; });

  return {
    onPart,
    onState() { renderCards(); renderChart(); },
    destroy() { observer.disconnect(); clearInterval(timer); },
  };
}

function stat(label, value, testid, cls = '') {
  return h('div', { class: `stat ${cls}` }, h('div', { class: 'stat-value', testid, text: value }), h('div', { class: 'stat-label', text: label }));
}

// ---------------------------------------------------------------- Part

function regionBox(r) {
  const b = Array.isArray(r.bbox) ? r.bbox : [r.x, r.y, r.width, r.height];
  return { x: +b[0], y: +b[1], w: +b[2], hh: +b[3], area: r.area, peak: r.peak ?? r.max_score, mean: r.mean };
}

function PartView(root, idStr) {
  if (idStr == null || idStr === '') {
    const pick = () => {
      const id = live.parts[0] && live.parts[0].id;
      if (id != null) location.replace(`#/part/${id}`);
      else root.replaceChildren(h('p', { class: 'empty', testid: 'part-empty', text: 'No part yet: open one from Live or Review.' }));
    };
    if (live.loaded) pick();
    else loadLive().then(pick, (e) => toast(e));
    return {};
  }
  const id = decodeURIComponent(idStr);
  S.lastPartId = id;
  updateNavPart();
  let part = null;
  let destroyed = false;

  // editor state: polygons in normalised coordinates
  let polys = [];
  let dirty = false;
  let mode = 'none';
  let draft = null; // rect: {x0, y0, x1, y1}; poly: [[x, y], ...]
  let hover = null; // normalised pointer position in polygon mode
  let highlight = -1;

  const head = h('div', { class: 'part-head' });
  const baseImg = h('img', { class: 'base', alt: 'part image', testid: 'part-image', draggable: 'false' });
  const mapImg = h('img', { class: 'overlay', alt: 'anomaly map', testid: 'part-map', draggable: 'false' });
  const canvas = h('canvas', { class: 'stage-canvas', testid: 'region-canvas' });
  const stage = h('div', { class: 'stage', testid: 'part-stage' }, baseImg, mapImg, canvas);
  const opacity = h('input', { type: 'range', min: '0', max: '100', step: '1', value: storeGet(localStorage, 'ssvp.station.opacity') || '50', testid: 'overlay-opacity', id: 'overlay-opacity' });
  const opacityLabel = h('output', { testid: 'overlay-opacity-value', for: 'overlay-opacity' });
  const showBoxes = h('input', { type: 'checkbox', checked: true, testid: 'show-boxes', id: 'show-boxes' });
  const side = h('div', { class: 'side-col' });
  const decisionPanel = h('div', { class: 'panel' });
  const changesPanel = h('div', { class: 'panel changes', testid: 'changes-panel', hidden: true });
  const detectedPanel = h('div', { class: 'panel' });
  const historyPanel = h('div', { class: 'panel' });
  side.append(decisionPanel, changesPanel, detectedPanel);

  const modeBtns = {};
  for (const [m, label] of [['none', 'View'], ['rect', 'Rectangle'], ['poly', 'Polygon']]) {
    modeBtns[m] = h('button', { type: 'button', class: 'btn seg', testid: `region-mode-${m}`, 'data-mode': m, text: label, onclick: () => setMode(m) });
  }
  const closeBtn = h('button', { type: 'button', class: 'btn', testid: 'region-close-poly', text: 'Close polygon', onclick: () => closePoly() });
  const cancelBtn = h('button', { type: 'button', class: 'btn', testid: 'region-cancel', text: 'Cancel drawing', onclick: () => { draft = null; draw(); syncEditor(); } });
  const saveBtn = h('button', { type: 'button', class: 'btn primary', testid: 'regions-save', text: 'Save regions', onclick: () => saveRegions() });
  const resetBtn = h('button', { type: 'button', class: 'btn', testid: 'regions-reset', text: 'Discard changes', onclick: () => { resetPolys(); } });
  const regionList = h('ol', { class: 'region-list', testid: 'region-list' });
  const editorHint = h('p', { class: 'muted small', testid: 'region-hint' });
  const editor = h('div', { class: 'panel editor', testid: 'region-editor' },
    h('div', { class: 'panel-head' }, h('h2', { text: "Don't-care regions" }),
      h('span', { class: 'muted small', text: 'apply to every part: masked pixels are never anomalous' })),
    h('div', { class: 'editor-tools' }, h('div', { class: 'segmented' }, Object.values(modeBtns)), closeBtn, cancelBtn),
    editorHint, regionList,
    h('div', { class: 'editor-tools' }, saveBtn, resetBtn));

  root.append(
    head,
    h('div', { class: 'part-grid' },
      h('div', { class: 'stage-col' },
        h('div', { class: 'panel' },
          h('div', { class: 'stage-tools' },
            h('label', { class: 'inline', for: 'overlay-opacity' }, 'Anomaly map'), opacity, opacityLabel,
            h('label', { class: 'inline check' }, showBoxes, ' detected regions')),
          h('div', { class: 'stage-wrap' }, stage)),
        editor),
      side),
    historyPanel);

  function applyOpacity() {
    mapImg.style.opacity = String(opacity.value / 100);
    opacityLabel.textContent = `${opacity.value} %`;
  }
  opacity.addEventListener('input', () => { applyOpacity(); storeSet(localStorage, 'ssvp.station.opacity', opacity.value); });
  showBoxes.addEventListener('change', () => draw());
  applyOpacity();

  const ro = new ResizeObserver(() => draw());
  ro.observe(stage);

  function imgSize() {
    const w = part && part.width ? part.width : baseImg.naturalWidth || 1;
    const hh = part && part.height ? part.height : baseImg.naturalHeight || 1;
    return [w, hh];
  }
  function sizeStage() {
    const [w, hh] = imgSize();
    stage.style.aspectRatio = `${w} / ${hh}`;
    stage.style.maxWidth = `min(100%, calc(68vh * ${w / hh}))`;
  }
  baseImg.addEventListener('load', () => { if (!part || !part.width) sizeStage(); draw(); });

  // -------- drawing
  function tracePoly(ctx, pts, cw, ch) {
    ctx.beginPath();
    pts.forEach(([x, y], i) => (i ? ctx.lineTo(x * cw, y * ch) : ctx.moveTo(x * cw, y * ch)));
    ctx.closePath();
  }
  function draw() {
    const cw = stage.clientWidth;
    const ch = stage.clientHeight;
    if (!cw || !ch) return;
    const ctx = fitCanvas(canvas, cw, ch);
    ctx.clearRect(0, 0, cw, ch);
    const [iw, ih] = imgSize();
    if (part && showBoxes.checked) {
      ctx.lineWidth = 2;
      ctx.font = '600 12px system-ui, sans-serif';
      (part.regions || []).forEach((r, i) => {
        const b = regionBox(r);
        const x = (b.x / iw) * cw;
        const y = (b.y / ih) * ch;
        const w = (b.w / iw) * cw;
        const hh = (b.hh / ih) * ch;
        ctx.strokeStyle = '#000';
        ctx.lineWidth = 4;
        ctx.strokeRect(x, y, w, hh);
        ctx.strokeStyle = '#ff3b3b';
        ctx.lineWidth = 2;
        ctx.strokeRect(x, y, w, hh);
        const label = `${i + 1}${b.peak != null ? ` · ${fmtScore(b.peak)}` : ''}`;
        const tw = ctx.measureText(label).width + 8;
        const ly = y >= 16 ? y - 16 : y + hh;
        ctx.fillStyle = '#ff3b3b';
        ctx.fillRect(x - 1, ly, tw, 16);
        ctx.fillStyle = '#fff';
        ctx.fillText(label, x + 3, ly + 12);
      });
    }
    polys.forEach((p, i) => {
      tracePoly(ctx, p.points, cw, ch);
      if (p.saved) {
        ctx.fillStyle = hatch(ctx);
        ctx.fill();
        ctx.setLineDash([6, 4]);
        ctx.strokeStyle = 'rgba(255, 196, 0, 1)';
      } else {
        ctx.fillStyle = 'rgba(56, 132, 255, 0.28)';
        ctx.fill();
        ctx.setLineDash([]);
        ctx.strokeStyle = '#3884ff';
      }
      ctx.lineWidth = i === highlight ? 4 : 2;
      ctx.stroke();
      ctx.setLineDash([]);
      const [cx, cy] = p.points.reduce((a, q) => [a[0] + q[0], a[1] + q[1]], [0, 0]).map((v) => v / p.points.length);
      ctx.font = '700 13px system-ui, sans-serif';
      ctx.fillStyle = '#000';
      ctx.fillText(`R${i + 1}`, cx * cw - 8 + 1, cy * ch + 5 + 1);
      ctx.fillStyle = '#fff';
      ctx.fillText(`R${i + 1}`, cx * cw - 8, cy * ch + 5);
    });
    if (draft) {
      ctx.strokeStyle = '#00e0ff';
      ctx.fillStyle = 'rgba(0, 224, 255, 0.2)';
      ctx.lineWidth = 2;
      if (mode === 'rect' && !Array.isArray(draft)) {
        const x = Math.min(draft.x0, draft.x1) * cw;
        const y = Math.min(draft.y0, draft.y1) * ch;
        ctx.fillRect(x, y, Math.abs(draft.x1 - draft.x0) * cw, Math.abs(draft.y1 - draft.y0) * ch);
        ctx.strokeRect(x, y, Math.abs(draft.x1 - draft.x0) * cw, Math.abs(draft.y1 - draft.y0) * ch);
      } else if (Array.isArray(draft) && draft.length) {
        ctx.beginPath();
        draft.forEach(([x, y], i) => (i ? ctx.lineTo(x * cw, y * ch) : ctx.moveTo(x * cw, y * ch)));
        if (hover) ctx.lineTo(hover[0] * cw, hover[1] * ch);
        ctx.stroke();
        for (const [x, y] of draft) {
          ctx.fillStyle = '#00e0ff';
          ctx.fillRect(x * cw - 3, y * ch - 3, 6, 6);
        }
      }
    }
  }

  // -------- editor
  function resetPolys() {
    const regs = (S.state && S.state.regions) || [];
    polys = regs.filter((p) => Array.isArray(p) && p.length >= 3).map((p) => ({ points: p.map((q) => [+q[0], +q[1]]), saved: true }));
    dirty = false;
    draft = null;
    syncEditor();
    draw();
  }
  function setMode(m) {
    mode = m;
    draft = null;
    hover = null;
    for (const [k, b] of Object.entries(modeBtns)) {
      b.classList.toggle('active', k === m);
      b.setAttribute('aria-pressed', String(k === m));
    }
    canvas.classList.toggle('drawing', m !== 'none');
    canvas.dataset.mode = m;
    syncEditor();
    draw();
  }
  function syncEditor() {
    closeBtn.hidden = mode !== 'poly';
    closeBtn.disabled = !(Array.isArray(draft) && draft.length >= 3);
    cancelBtn.hidden = !draft;
    saveBtn.disabled = !dirty;
    resetBtn.hidden = !dirty;
    editorHint.textContent = mode === 'rect' ? 'Drag on the image to draw a rectangle.'
      : mode === 'poly' ? 'Click to add points; double-click, click the first point, press Enter or "Close polygon" to finish. Esc cancels.'
        : 'Pick Rectangle or Polygon to draw. Hatched: saved regions. Blue: new, not saved yet.';
    regionList.replaceChildren(...polys.map((p, i) => {
      const xs = p.points.map((q) => q[0]);
      const ys = p.points.map((q) => q[1]);
      const desc = `${p.points.length} points · x ${fmtPct(Math.min(...xs), 0)}–${fmtPct(Math.max(...xs), 0)}, y ${fmtPct(Math.min(...ys), 0)}–${fmtPct(Math.max(...ys), 0)}`;
      const li = h('li', { class: `region-item ${p.saved ? 'saved' : 'new'}`, testid: 'region-item', 'data-index': i, 'data-saved': String(p.saved) },
        h('span', { class: 'region-name', text: `R${i + 1}` }),
        h('span', { class: `tag ${p.saved ? 'saved' : 'new'}`, text: p.saved ? 'saved' : 'new' }),
        h('span', { class: 'region-desc small', text: desc }),
        h('button', { type: 'button', class: 'btn small danger-outline', testid: 'region-delete', text: 'Delete',
          onclick: () => { polys.splice(i, 1); dirty = true; highlight = -1; syncEditor(); draw(); } }));
      li.addEventListener('mouseenter', () => { highlight = i; draw(); });
      li.addEventListener('mouseleave', () => { highlight = -1; draw(); });
      return li;
    }));
    if (!polys.length) regionList.append(h('li', { class: 'muted small', text: 'No don\'t-care regions.' }));
  }
  function addPoly(points) {
    polys.push({ points: points.map(([x, y]) => [+clamp(x, 0, 1).toFixed(5), +clamp(y, 0, 1).toFixed(5)]), saved: false });
    dirty = true;
    draft = null;
    syncEditor();
    draw();
  }
  function closePoly() {
    if (Array.isArray(draft) && draft.length >= 3) addPoly(draft);
  }
  function norm(e) {
    const r = canvas.getBoundingClientRect();
    return [clamp((e.clientX - r.left) / r.width, 0, 1), clamp((e.clientY - r.top) / r.height, 0, 1)];
  }
  function nearPx(a, b, px) {
    const r = canvas.getBoundingClientRect();
    return Math.hypot((a[0] - b[0]) * r.width, (a[1] - b[1]) * r.height) <= px;
  }
  canvas.addEventListener('pointerdown', (e) => {
    if (mode !== 'rect' || e.button !== 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    const [x, y] = norm(e);
    draft = { x0: x, y0: y, x1: x, y1: y };
    syncEditor();
  });
  canvas.addEventListener('pointermove', (e) => {
    if (mode === 'rect' && draft && !Array.isArray(draft)) {
      [draft.x1, draft.y1] = norm(e);
      draw();
    } else if (mode === 'poly' && Array.isArray(draft)) {
      hover = norm(e);
      draw();
    }
  });
  canvas.addEventListener('pointerup', (e) => {
    if (mode !== 'rect' || !draft || Array.isArray(draft)) return;
    [draft.x1, draft.y1] = norm(e);
    const x0 = Math.min(draft.x0, draft.x1);
    const x1 = Math.max(draft.x0, draft.x1);
    const y0 = Math.min(draft.y0, draft.y1);
    const y1 = Math.max(draft.y0, draft.y1);
    if (x1 - x0 > 0.003 && y1 - y0 > 0.003) addPoly([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]);
    else { draft = null; syncEditor(); draw(); }
  });
  canvas.addEventListener('click', (e) => {
    if (mode !== 'poly') return;
    const p = norm(e);
    if (!Array.isArray(draft)) draft = [];
    if (draft.length >= 3 && nearPx(p, draft[0], 8)) { closePoly(); return; }
    if (draft.length && nearPx(p, draft[draft.length - 1], 4)) return; // second click of a double-click
    draft.push(p);
    syncEditor();
    draw();
  });
  canvas.addEventListener('dblclick', (e) => {
    if (mode !== 'poly') return;
    e.preventDefault();
    closePoly();
  });
  const onKey = (e) => {
    if (mode === 'none' || e.target.closest('input, textarea, select, dialog')) return;
    if (e.key === 'Escape' && draft) { draft = null; syncEditor(); draw(); }
    if (e.key === 'Enter' && mode === 'poly') closePoly();
  };
  document.addEventListener('keydown', onKey);

  async function saveRegions() {
    const ww = await askWhoWhy({
      title: "Save don't-care regions",
      message: `${polys.length} region(s) for every part. This makes a new bank version and re-scores the parts.`,
      confirm: 'Save regions',
    });
    if (!ww) return;
    saveBtn.disabled = true;
    try {
      const r = await postJson(`${API}/regions`, { polygons: polys.map((p) => p.points), who: ww.who, why: ww.why });
      toast('Regions saved.', 'ok');
      dirty = false;
      await refreshState().catch(() => {});
      resetPolys();
      showChanges(r, 'Regions saved');
      reload();
    } catch (e) {
      toast(e);
      syncEditor();
    }
  }

  // -------- feedback / changes / undo
  async function feedback(label) {
    const ww = await askWhoWhy(label === 'good' ? {
      title: 'Mark this part good',
      message: 'It becomes a reference: a new bank version, and the stored parts are re-scored.',
      confirm: 'Mark good',
    } : {
      title: 'Mark this part defective',
      message: 'Records that this part is defective (counts as a miss if it scores below the threshold).',
      confirm: 'Mark defective',
      danger: true,
    });
    if (!ww) return;
    try {
      const r = await postJson(`${API}/parts/${encodeURIComponent(id)}/feedback`, { label, who: ww.who, why: ww.why });
      toast(label === 'good' ? 'Marked good.' : 'Marked defective.', 'ok');
      if (label === 'good' || r.changes) showChanges(r, 'Marked good');
      await refreshState().catch(() => {});
      reload();
    } catch (e) {
      toast(e);
    }
  }
  async function showChanges(r, what) {
    const version = r ? r.bank_version ?? (r.bank && r.bank.version) ?? null : null;
    let changes = r && Array.isArray(r.changes) ? r.changes : null;
    if (!changes && version != null) {
      try {
        const c = await apiJson(`${API}/changes/${encodeURIComponent(version)}`);
        changes = Array.isArray(c) ? c : c.changes || [];
      } catch (e) {
        toast(e);
        changes = [];
      }
    }
    renderChanges(what, version, changes || [], true);
  }
  function renderChanges(what, version, changes, undoable, note = '') {
    changesPanel.hidden = false;
    const undoBtn = h('button', { type: 'button', class: 'btn danger-outline', testid: 'undo-button', text: 'Undo', onclick: () => undo(undoBtn) });
    undoBtn.hidden = !undoable;
    const rows = changes.map((c) => {
      const b = c.before || {};
      const a = c.after || {};
      return h('li', { class: 'change-row', testid: 'change-row', 'data-part-id': c.id },
        h('a', { href: `#/part/${c.id}`, class: 'change-name', text: c.name || `#${c.id}` }),
        h('span', { class: 'change-side' }, badge(b.anomalous, 'change-before'), h('span', { class: 'small', text: fmtScore(b.score) })),
        h('span', { class: 'arrow', text: '→' }),
        h('span', { class: 'change-side' }, badge(a.anomalous, 'change-after'), h('span', { class: 'small', text: fmtScore(a.score) })));
    });
    changesPanel.replaceChildren(
      h('div', { class: 'panel-head' },
        h('h2', { text: what }),
        h('span', { class: 'muted', testid: 'changes-bank', text: version != null ? `${undoable ? 'new ' : ''}bank v${version}` : '' })),
      // replaceChildren would print a null as text: an absent note is no child at all.
      ...(note ? [h('p', { class: 'changes-note', testid: 'changes-note', text: note })] : []),
      h('p', { testid: 'changes-summary', text: changes.length === 1 ? '1 part changed decision:' : `${changes.length} parts changed decision${changes.length ? ':' : '.'}` }),
      h('ul', { class: 'change-list', testid: 'changes-list', hidden: !rows.length }, rows),
      h('div', { class: 'editor-tools' }, undoBtn,
        h('button', { type: 'button', class: 'btn', testid: 'changes-dismiss', text: 'Dismiss', onclick: () => { changesPanel.hidden = true; } })));
  }
  async function undo(btn) {
    const ww = await askWhoWhy({
      title: 'Undo the bank change',
      message: 'Goes back to the previous bank version, exactly: its references, regions and threshold (an Apply made since then is undone too).',
      confirm: 'Undo',
      why: 'undo',
      danger: true,
    });
    if (!ww) return;
    btn.disabled = true;
    try {
      const before = S.state && S.state.threshold;
      const r = await postJson(`${API}/undo`, ww);
      const v = r && (r.bank_version ?? (r.bank && r.bank.version));
      // The previous version's threshold comes back with it: say so when it is another value.
      const t = r && r.threshold;
      const moved = before && t && t.version !== before.version && t.value !== before.value;
      const note = moved ? `Threshold back to v${t.version ?? '?'} = ${fmtScore(t.value)} (was ${fmtScore(before.value)}).` : '';
      toast(`Undone${v != null ? `: back to bank v${v}` : ''}.${note ? ` ${note}` : ''}`, 'ok');
      renderChanges('Undone', v, Array.isArray(r && r.changes) ? r.changes : [], false, note);
      await refreshState().catch(() => {});
      resetPolys();
      reload();
    } catch (e) {
      btn.disabled = false;
      toast(e);
    }
  }

  // -------- render part
  function renderPart() {
    const p = part;
    const anom = decide(p);
    const t = thresholdValue();
    head.replaceChildren(
      h('div', { class: 'part-title' },
        h('h1', { testid: 'part-name', text: p.name || `part ${p.id}` }),
        badge(anom, 'part-decision')),
      h('div', { class: 'muted part-meta' },
        h('span', { text: `#${p.id}` }),
        h('span', { testid: 'part-time', text: fmtTime(p.at) }),
        p.width ? h('span', { text: `${p.width}×${p.height} px` }) : null,
        p.sha256 ? h('span', { class: 'mono', title: p.sha256, text: `sha256 ${String(p.sha256).slice(0, 12)}…` }) : null,
        p.bank_version != null ? h('span', { text: `scored with bank v${p.bank_version}` }) : null));

    // score vs threshold
    const score = Number.isFinite(p.score) ? p.score : 0;
    const maxScale = Math.max(score, t ?? 0, 1e-9) * 1.35;
    const fill = h('div', { class: `sbar-fill ${anom ? 'defect' : 'good'}` });
    fill.style.width = `${clamp(score / maxScale, 0, 1) * 100}%`;
    const mark = h('div', { class: 'sbar-mark', title: `threshold ${fmtScore(t)}` });
    mark.style.left = `${clamp((t ?? 0) / maxScale, 0, 1) * 100}%`;
    mark.hidden = t == null;
    const fb = p.feedback;
    decisionPanel.replaceChildren(
      h('div', { class: `decision-big ${anom ? 'defect' : anom === false ? 'good' : ''}`, testid: 'part-decision-big', text: anom == null ? '—' : anom ? 'DEFECT' : 'GOOD' }),
      h('div', { class: 'sbar', testid: 'score-bar' }, fill, mark),
      h('div', { class: 'sbar-caption small muted', testid: 'score-ratio' },
        t ? `score is ${(score / t).toFixed(2)}× the threshold (black mark)` : 'no threshold'),
      h('dl', { class: 'kv' },
        h('dt', { text: 'Score' }), h('dd', { testid: 'part-score', text: fmtScore(p.score) }),
        h('dt', { text: 'Threshold' }), h('dd', { testid: 'part-threshold', text: t == null ? '—' : `${fmtScore(t)} (v${S.state.threshold.version ?? '?'})` }),
        h('dt', { text: 'Calibrated' }), h('dd', { testid: 'part-calibrated', text: fmtPct(p.calibrated_score) }),
        h('dt', { text: 'Feedback' }), h('dd', null, feedbackTag(fb, 'part-feedback')),
        h('dt', { text: 'In bank' }), h('dd', { testid: 'part-in-bank', text: p.in_bank ? 'yes (a reference)' : 'no' })),
      h('div', { class: 'fb-buttons' },
        h('button', { type: 'button', class: 'btn big good', testid: 'mark-good', text: 'Mark good', disabled: fb === 'good' && p.in_bank, onclick: () => feedback('good') }),
        h('button', { type: 'button', class: 'btn big defect', testid: 'mark-defective', text: 'Mark defective', disabled: fb === 'defective', onclick: () => feedback('defective') })));

    // detected regions
    const regs = (p.regions || []).map(regionBox);
    detectedPanel.replaceChildren(
      h('div', { class: 'panel-head' }, h('h2', { text: 'Detected regions' }), h('span', { class: 'muted small', text: `${regs.length}` })),
      regs.length ? h('table', { class: 'table compact', testid: 'detected-regions' },
        h('thead', null, h('tr', null, ['#', 'x, y', 'size', 'area', 'peak', 'mean'].map((c) => h('th', { text: c })))),
        h('tbody', null, regs.map((b, i) => h('tr', { testid: 'detected-region-row' },
          h('td', { text: String(i + 1) }), h('td', { text: `${Math.round(b.x)}, ${Math.round(b.y)}` }),
          h('td', { text: `${Math.round(b.w)}×${Math.round(b.hh)}` }), h('td', { text: fmtInt(b.area) }),
          h('td', { text: fmtScore(b.peak) }), h('td', { text: fmtScore(b.mean) })))))
        : h('p', { class: 'muted small', text: 'None above the map threshold.' }));

    // history
    const hist = p.history || [];
    historyPanel.replaceChildren(
      h('div', { class: 'panel-head' }, h('h2', { text: 'Decision history' })),
      hist.length ? h('div', { class: 'table-scroll' }, h('table', { class: 'table compact', testid: 'history-table' },
        h('thead', null, h('tr', null, ['time', 'event', 'score', 'threshold', 'decision', 'bank', 'who', 'why'].map((c) => h('th', { text: c })))),
        h('tbody', null, hist.map((e) => h('tr', { testid: 'history-row' },
          h('td', { class: 'nowrap', text: fmtTime(e.at) }), h('td', { text: e.event || '' }),
          h('td', { class: 'num', text: fmtScore(e.score) }), h('td', { class: 'num', text: fmtScore(e.threshold) }),
          h('td', null, badge(typeof e.anomalous === 'boolean' ? e.anomalous : null, 'history-decision')),
          h('td', { text: e.bank_version != null ? `v${e.bank_version}` : '' }),
          h('td', { text: e.who || '' }), h('td', { class: 'why', text: e.why || '' }))))))
        : h('p', { class: 'muted small', text: 'No history.' }));
    draw();
  }

  let mapShownKey = '';
  async function reload() {
    try {
      const r = await apiJson(`${API}/parts/${encodeURIComponent(id)}`);
      if (destroyed) return;
      part = r.part && typeof r.part === 'object' ? { ...r.part, regions: r.regions ?? r.part.regions, history: r.history ?? r.part.history } : r;
      if (live.byId.has(part.id)) upsertLive({ ...part, regions: undefined, history: undefined });
      sizeStage();
      if (!baseImg.getAttribute('src')) loadImg(baseImg, imagePath(id), `img:${id}`);
      const mk = mapKey(part);
      if (mk !== mapShownKey) { mapShownKey = mk; loadImg(mapImg, mapPath(id), mk); }
      renderPart();
    } catch (e) {
      if (destroyed) return;
      toast(e);
      if (!part) head.replaceChildren(h('p', { class: 'empty', testid: 'part-error', text: `Part ${id}: ${e.message}` }));
    }
  }

  setMode('none');
  resetPolys();
  reload();

  let reloadTimer = null;
  const soon = () => { clearTimeout(reloadTimer); reloadTimer = setTimeout(reload, 300); };
  return {
    onPart(p) { if (String(p.id) === String(id)) soon(); },
    onState() {
      if (!dirty && !draft) resetPolys();
      if (part) renderPart();
      soon();
    },
    destroy() {
      destroyed = true;
      ro.disconnect();
      clearTimeout(reloadTimer);
      document.removeEventListener('keydown', onKey);
    },
  };
}

// ---------------------------------------------------------------- Threshold

function upperBound(arr, t) { // first index with arr[i] > t (arr sorted ascending)
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (arr[mid] > t) hi = mid; else lo = mid + 1;
  }
  return lo;
}
const countAbove = (arr, t) => arr.length - upperBound(arr, t);

function ThresholdView(root) {
  let data = null; // {all, good, defective, unmarked, calib, lo, hi}
  let destroyed = false;
  const canvas = h('canvas', { class: 'hist', testid: 'threshold-histogram' });
  const slider = h('input', { type: 'range', min: '0', max: '1', step: 'any', value: '0', testid: 'threshold-slider', id: 'threshold-slider', disabled: true });
  slider.addEventListener('keydown', (e) => {
    if (!data) return;
    const span = data.hi - data.lo;
    const d = { ArrowLeft: -span / 1000, ArrowDown: -span / 1000, ArrowRight: span / 1000, ArrowUp: span / 1000, PageDown: -span / 50, PageUp: span / 50 }[e.key];
    if (d == null) return;
    e.preventDefault();
    slider.value = String(clamp(current() + d * (e.shiftKey ? 10 : 1), data.lo, data.hi));
    update();
  });
  const valueLabel = h('output', { class: 'th-value', testid: 'threshold-value', for: 'threshold-slider', text: '—' });
  const flagged = h('div', { class: 'stat-value', testid: 'flagged-count', text: '—' });
  const flaggedSub = h('div', { class: 'stat-sub', testid: 'flagged-detail' });
  const far = h('div', { class: 'stat-value', testid: 'false-alarm-rate', text: '—' });
  const farSub = h('div', { class: 'stat-sub', testid: 'false-alarm-detail' });
  const misses = h('div', { class: 'stat-value', testid: 'misses', text: '—' });
  const missesSub = h('div', { class: 'stat-sub', testid: 'misses-detail' });
  const applyBtn = h('button', { type: 'button', class: 'btn primary big', testid: 'threshold-apply', text: 'Apply threshold', disabled: true, onclick: () => apply() });
  const resetBtn = h('button', { type: 'button', class: 'btn big', testid: 'threshold-reset', text: 'Back to current', onclick: () => { setSlider(thresholdValue()); } });
  const info = h('div', { class: 'panel', testid: 'threshold-info' });
  const legend = h('div', { class: 'legend', testid: 'histogram-legend' });
  const auditBody = h('tbody');
  const auditPanel = h('details', { class: 'panel audit', testid: 'audit-panel' },
    h('summary', { testid: 'audit-toggle', text: 'Audit log' }),
    h('div', { class: 'editor-tools' }, h('button', { type: 'button', class: 'btn small', testid: 'audit-refresh', text: 'Refresh', onclick: () => loadAudit() })),
    h('div', { class: 'table-scroll tall' }, h('table', { class: 'table compact', testid: 'audit-table' },
      h('thead', null, h('tr', null, ['time', 'who', 'action', 'detail'].map((c) => h('th', { text: c })))), auditBody)));
  auditPanel.addEventListener('toggle', () => { if (auditPanel.open) loadAudit(); });

  root.append(
    h('div', { class: 'th-grid' },
      h('div', { class: 'panel th-main' },
        h('div', { class: 'panel-head' }, h('h2', { text: 'Scores' }), legend),
        h('div', { class: 'hist-wrap' }, canvas),
        h('div', { class: 'slider-row' },
          h('label', { for: 'threshold-slider', class: 'inline', text: 'Try a threshold' }), slider, valueLabel),
        h('div', { class: 'stats' },
          h('div', { class: 'stat big' }, flagged, h('div', { class: 'stat-label', text: 'parts flagged DEFECT' }), flaggedSub),
          h('div', { class: 'stat big' }, far, h('div', { class: 'stat-label', text: 'false alarms on good parts' }), farSub),
          h('div', { class: 'stat big' }, misses, h('div', { class: 'stat-label', text: 'misses on marked-defective' }), missesSub)),
        h('div', { class: 'editor-tools' }, applyBtn, resetBtn)),
      h('div', { class: 'th-side' }, info)),
    auditPanel);

  const ro = new ResizeObserver(() => drawHist());
  ro.observe(canvas.parentElement);

  function renderInfo() {
    const t = S.state && S.state.threshold;
    if (!t) { info.replaceChildren(h('h2', { text: 'Current threshold' }), h('p', { class: 'muted', text: 'None: the model is not calibrated.' })); return; }
    const conformal = t.conformal
      ? `conformal bound at FPR ≤ ${+(t.target_fpr * 100).toFixed(2)} % resting on ${t.rests_on} good images`
      : 'set by an operator';
    info.replaceChildren(
      h('div', { class: 'panel-head' }, h('h2', { text: 'Current threshold' }), h('span', { class: 'muted', testid: 'threshold-version', text: `version ${t.version ?? '?'}` })),
      h('div', { class: 'th-current', testid: 'threshold-current', text: fmtScore(t.value) }),
      h('p', { class: 'conformal', testid: 'threshold-conformal', text: conformal }),
      h('dl', { class: 'kv' },
        h('dt', { text: 'Source' }), h('dd', { testid: 'threshold-source', text: t.source || '—' }),
        h('dt', { text: 'Who' }), h('dd', { testid: 'threshold-who', text: t.who || '—' }),
        h('dt', { text: 'When' }), h('dd', { testid: 'threshold-when', text: fmtTime(t.at) }),
        h('dt', { text: 'Why' }), h('dd', { testid: 'threshold-why', class: 'why', text: t.why || '—' })));
  }

  function setSlider(v) {
    if (v == null || !data) return;
    slider.value = String(v);
    update();
  }
  function current() { return Number(slider.value); }

  function update() {
    if (!data) return;
    const t = current();
    valueLabel.textContent = fmtScore(t);
    const nAll = data.all.length;
    const f = countAbove(data.all, t);
    flagged.textContent = fmtInt(f);
    flaggedSub.textContent = `of ${fmtInt(nAll)} stored parts (${fmtPct(nAll ? f / nAll : null)})`;
    const nGood = data.good.length;
    const fa = countAbove(data.good, t);
    far.textContent = nGood ? fmtPct(fa / nGood) : '—';
    farSub.textContent = `${fmtInt(fa)} of ${fmtInt(nGood)} good (${data.calib.length} calibration + ${nGood - data.calib.length} marked good)`;
    const nDef = data.defective.length;
    const miss = nDef - countAbove(data.defective, t);
    misses.textContent = nDef ? `${fmtInt(miss)} of ${fmtInt(nDef)}` : '—';
    missesSub.textContent = nDef ? `${fmtPct(miss / nDef)} of the parts marked defective score ≤ threshold` : 'no part is marked defective';
    const cur = thresholdValue();
    applyBtn.disabled = cur != null && Math.abs(t - cur) < 1e-12;
    drawHist();
  }

  let drawQueued = false;
  function drawHist() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => { drawQueued = false; drawNow(); });
  }
  function drawNow() {
    const wrap = canvas.parentElement;
    const cw = wrap.clientWidth;
    const ch = 280;
    if (!cw) return;
    const ctx = fitCanvas(canvas, cw, ch);
    ctx.clearRect(0, 0, cw, ch);
    if (!data) return;
    const padL = 8;
    const padR = 8;
    const padT = 14;
    const padB = 26;
    const pw = cw - padL - padR;
    const ph = ch - padT - padB;
    const { lo, hi } = data;
    const X = (v) => padL + ((v - lo) / (hi - lo)) * pw;
    const bins = data.bins;
    const bw = pw / bins.n;
    const series = [
      { counts: bins.unmarked, color: 'rgba(120, 130, 145, 0.28)', stroke: 'rgba(120,130,145,0.55)' },
      { counts: bins.good, color: 'rgba(22, 163, 74, 0.55)', stroke: 'rgb(21, 128, 61)' },
      { counts: bins.defective, color: 'rgba(220, 38, 38, 0.55)', stroke: 'rgb(185, 28, 28)' },
    ];
    ctx.strokeStyle = '#d5dbe3';
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(padL, padT + ph + 0.5);
    ctx.lineTo(padL + pw, padT + ph + 0.5);
    ctx.stroke();
    for (const s of series) {
      const max = Math.max(1, ...s.counts);
      ctx.fillStyle = s.color;
      s.counts.forEach((n, i) => {
        if (!n) return;
        const bh = (n / max) * ph;
        ctx.fillRect(padL + i * bw + 0.5, padT + ph - bh, Math.max(1, bw - 1), bh);
      });
    }
    { // the unmarked parts again as a step outline, so the filled series cannot hide them
      const u = bins.unmarked;
      const max = Math.max(1, ...u);
      ctx.strokeStyle = 'rgba(71, 85, 105, 0.75)';
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(padL, padT + ph);
      u.forEach((n, i) => {
        const y = padT + ph - (n / max) * ph;
        ctx.lineTo(padL + i * bw, y);
        ctx.lineTo(padL + (i + 1) * bw, y);
      });
      ctx.lineTo(padL + pw, padT + ph);
      ctx.stroke();
    }
    // x axis labels
    ctx.fillStyle = '#5b6675';
    ctx.font = '12px system-ui, sans-serif';
    ctx.textBaseline = 'top';
    for (let k = 0; k <= 5; k++) {
      const v = lo + ((hi - lo) * k) / 5;
      const x = X(v);
      ctx.textAlign = k === 0 ? 'left' : k === 5 ? 'right' : 'center';
      ctx.fillText(fmtScore(v), x, padT + ph + 6);
    }
    // A dashed vertical line at `value`, labelled beside it (on its left near the right edge).
    const marker = (value, colour, dash, label, labelY, room) => {
      const x = Math.round(X(value)) + 0.5;
      ctx.strokeStyle = colour;
      ctx.setLineDash(dash);
      ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(x, padT); ctx.lineTo(x, padT + ph); ctx.stroke();
      ctx.setLineDash([]);
      const left = x > cw - room;
      ctx.textAlign = left ? 'right' : 'left';
      ctx.textBaseline = 'top';
      ctx.fillStyle = colour;
      ctx.fillText(label, x + (left ? -4 : 4), labelY);
    };
    // current threshold
    const cur = thresholdValue();
    if (cur != null) marker(cur, '#1f2937', [4, 4], 'current', padT - 12, 80);
    // the calibration's conformal bound, whatever threshold is applied
    const bound = data.calibration && Number.isFinite(data.calibration.threshold) ? data.calibration.threshold : null;
    if (bound != null) marker(bound, '#15803d', [2, 3], 'conformal bound', padT + 2, 120);
    // trial line
    const t = current();
    const x = Math.round(X(t)) + 0.5;
    ctx.strokeStyle = '#2563eb';
    ctx.lineWidth = 2.5;
    ctx.beginPath(); ctx.moveTo(x, padT - 4); ctx.lineTo(x, padT + ph); ctx.stroke();
    ctx.fillStyle = 'rgba(37, 99, 235, 0.06)';
    ctx.fillRect(x, padT, padL + pw - x, ph);
  }

  function build(r) {
    const ids = r.ids || [];
    const scores = r.scores || [];
    const fb = r.feedback || [];
    const calib = (r.calibration_scores || []).filter(Number.isFinite);
    const all = [];
    const good = [...calib];
    const defective = [];
    const unmarked = [];
    for (let i = 0; i < scores.length; i++) {
      const s = scores[i];
      if (!Number.isFinite(s)) continue;
      all.push(s);
      if (fb[i] === 'good') good.push(s);
      else if (fb[i] === 'defective') defective.push(s);
      else unmarked.push(s);
    }
    const asc = (a, b) => a - b;
    const A = Float64Array.from(all).sort();
    const G = Float64Array.from(good).sort();
    const D = Float64Array.from(defective).sort();
    const U = Float64Array.from(unmarked).sort();
    let lo = Infinity;
    let hi = -Infinity;
    for (const arr of [A, G, D]) if (arr.length) { lo = Math.min(lo, arr[0]); hi = Math.max(hi, arr[arr.length - 1]); }
    const thr = r.threshold && Number.isFinite(r.threshold.value) ? r.threshold.value : thresholdValue();
    if (thr != null) { lo = Math.min(lo, thr); hi = Math.max(hi, thr); }
    const cal = r.calibration && Number.isFinite(r.calibration.threshold) ? r.calibration : null;
    if (cal) { lo = Math.min(lo, cal.threshold); hi = Math.max(hi, cal.threshold); }
    if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.04;
    lo = Math.max(lo >= 0 ? 0 : -Infinity, lo - pad);
    hi += pad;
    const n = 60;
    const binOf = (arr) => {
      const c = new Array(n).fill(0);
      for (const v of arr) c[clamp(Math.floor(((v - lo) / (hi - lo)) * n), 0, n - 1)]++;
      return c;
    };
    void asc; void ids;
    return { all: A, good: G, defective: D, unmarked: U, calib, calibration: cal, lo, hi, bins: { n, good: binOf(G), defective: binOf(D), unmarked: binOf(U) } };
  }

  async function load(keepValue) {
    try {
      const r = await apiJson(`${API}/scores`);
      if (destroyed) return;
      if (r.threshold && S.state) { S.state.threshold = r.threshold; renderStatus(); }
      const prev = keepValue && data ? current() : null;
      data = build(r);
      slider.min = String(data.lo);
      slider.max = String(data.hi);
      slider.disabled = false;
      // replaceChildren would print a null as text: absent entries are filtered out.
      legend.replaceChildren(...[
        h('span', { class: 'lg good', text: `good: ${data.good.length} (calibration ${data.calib.length} + marked)` }),
        h('span', { class: 'lg defect', text: `marked defective: ${data.defective.length}` }),
        h('span', { class: 'lg unmarked', text: `unmarked: ${data.unmarked.length}` }),
        data.calibration
          ? h('span', { class: 'lg bound', testid: 'calibration-bound', text: `conformal bound of the calibration: ${fmtScore(data.calibration.threshold)} (FPR ≤ ${+(data.calibration.target_fpr * 100).toFixed(2)} %, ${data.calibration.images} good images)` })
          : null,
        h('span', { class: 'lg note', text: 'each series scaled to its own peak' }),
      ].filter(Boolean));
      setSlider(prev ?? thresholdValue() ?? (data.lo + data.hi) / 2);
      renderInfo();
    } catch (e) {
      if (!destroyed) toast(e);
    }
  }

  async function apply() {
    const v = current();
    const ww = await askWhoWhy({
      title: `Set the threshold to ${fmtScore(v)}`,
      message: data ? `${flagged.textContent} parts flagged, false alarms ${far.textContent}, misses ${misses.textContent}.` : '',
      confirm: 'Apply threshold',
    });
    if (!ww) return;
    applyBtn.disabled = true;
    try {
      const r = await postJson(`${API}/threshold`, { value: v, who: ww.who, why: ww.why });
      const ver = r && (r.version ?? (r.threshold && r.threshold.version));
      toast(`Threshold ${fmtScore(v)} applied${ver != null ? ` (v${ver})` : ''}.`, 'ok');
      await refreshState().catch((e) => toast(e));
      renderInfo();
      update();
      if (auditPanel.open) loadAudit();
    } catch (e) {
      toast(e);
      update();
    }
  }

  async function loadAudit() {
    try {
      const r = await apiJson(`${API}/audit`);
      const entries = Array.isArray(r) ? r : r.entries || [];
      auditBody.replaceChildren(...entries.map((e) => h('tr', { testid: 'audit-row' },
        h('td', { class: 'nowrap', text: fmtTime(e.at) }), h('td', { text: e.who || '' }),
        h('td', { text: e.action || '' }),
        h('td', { class: 'why', text: typeof e.detail === 'string' ? e.detail : JSON.stringify(e.detail ?? '') }))));
      if (!entries.length) auditBody.append(h('tr', null, h('td', { colspan: '4', class: 'muted', text: 'Empty.' })));
    } catch (e) {
      toast(e);
    }
  }

  slider.addEventListener('input', update);
  renderInfo();
  load(false);
  let reloadTimer = null;
  let lastLoad = Date.now();
  const later = () => {
    if (reloadTimer) return;
    const wait = Math.max(2000, 15000 - (Date.now() - lastLoad));
    reloadTimer = setTimeout(() => { reloadTimer = null; lastLoad = Date.now(); load(true); }, wait);
  };
  return {
    onPart: later,
    onState() { renderInfo(); update(); later(); if (auditPanel.open) loadAudit(); },
    destroy() { destroyed = true; ro.disconnect(); clearTimeout(reloadTimer); },
  };
}

// ---------------------------------------------------------------- Review

const review = { offset: 0, sort: 'created', order: 'desc', decision: '', feedback: '', q: '' };

function ReviewView(root) {
  let ctl = null;
  let total = 0;
  let destroyed = false;
  const q = h('input', { type: 'search', placeholder: 'Name contains…', value: review.q, testid: 'filter-q', 'aria-label': 'name contains' });
  const decisionSel = h('select', { testid: 'filter-decision', 'aria-label': 'decision' },
    [['', 'All decisions'], ['anomalous', 'DEFECT'], ['good', 'GOOD']].map(([v, l]) => h('option', { value: v, text: l, selected: review.decision === v })));
  const feedbackSel = h('select', { testid: 'filter-feedback', 'aria-label': 'feedback' },
    [['', 'All feedback'], ['good', 'Marked good'], ['defective', 'Marked defective'], ['none', 'Not marked']].map(([v, l]) => h('option', { value: v, text: l, selected: review.feedback === v })));
  const tbody = h('tbody', { testid: 'review-body' });
  const info = h('span', { class: 'pager-info', testid: 'pager-info', text: '…' });
  const first = h('button', { type: 'button', class: 'btn', testid: 'pager-first', text: '« First', onclick: () => go(0) });
  const prev = h('button', { type: 'button', class: 'btn', testid: 'pager-prev', text: '‹ Prev', onclick: () => go(review.offset - REVIEW_LIMIT) });
  const next = h('button', { type: 'button', class: 'btn', testid: 'pager-next', text: 'Next ›', onclick: () => go(review.offset + REVIEW_LIMIT) });
  const last = h('button', { type: 'button', class: 'btn', testid: 'pager-last', text: 'Last »', onclick: () => go(Math.floor(Math.max(0, total - 1) / REVIEW_LIMIT) * REVIEW_LIMIT) });
  const sortable = { name: 'name', created: 'date', score: 'score', decision: 'decision', feedback: 'feedback' };
  const headers = {};
  const th = (key, label, cls = '') => {
    if (!sortable[key]) return h('th', { class: cls, text: label });
    const b = h('button', { type: 'button', class: 'sort', testid: `sort-${key}`, 'data-sort': key, text: label, onclick: () => sortBy(key) });
    headers[key] = b;
    return h('th', { class: cls }, b);
  };
  const table = h('table', { class: 'table review', testid: 'review-table' },
    h('thead', null, h('tr', null,
      th('name', 'Name'), th('created', 'Date'), th('score', 'Score', 'num'), th('calibrated', 'Calibrated', 'num'),
      th('decision', 'Decision'), th('feedback', 'Feedback'), th('in_bank', 'In bank'))),
    tbody);
  const exportCsv = h('button', { type: 'button', class: 'btn', testid: 'export-csv', text: 'Export CSV', onclick: () => doExport('csv', exportCsv) });
  const exportJsonl = h('button', { type: 'button', class: 'btn', testid: 'export-jsonl', text: 'Export JSONL', onclick: () => doExport('jsonl', exportJsonl) });

  root.append(h('div', { class: 'panel' },
    h('div', { class: 'toolbar' },
      h('div', { class: 'filters' }, q, decisionSel, feedbackSel),
      h('div', { class: 'exports' }, exportCsv, exportJsonl)),
    h('div', { class: 'table-scroll' }, table),
    h('div', { class: 'pager', testid: 'pager' }, first, prev, info, next, last)));

  async function doExport(kind, btn) {
    btn.disabled = true;
    try { await downloadExport(kind); } catch (e) { toast(e); } finally { btn.disabled = false; }
  }
  function sortBy(key) {
    if (review.sort === key) review.order = review.order === 'asc' ? 'desc' : 'asc';
    else { review.sort = key; review.order = key === 'name' ? 'asc' : 'desc'; }
    review.offset = 0;
    load();
  }
  function go(off) {
    review.offset = Math.max(0, off);
    load();
  }
  let qTimer = null;
  q.addEventListener('input', () => {
    clearTimeout(qTimer);
    qTimer = setTimeout(() => { review.q = q.value.trim(); review.offset = 0; load(); }, 250);
  });
  decisionSel.addEventListener('change', () => { review.decision = decisionSel.value; review.offset = 0; load(); });
  feedbackSel.addEventListener('change', () => { review.feedback = feedbackSel.value; review.offset = 0; load(); });

  function row(p) {
    const tr = h('tr', { class: 'clickable', testid: 'review-row', 'data-part-id': p.id, tabindex: '0' },
      h('td', { class: 'name' }, h('a', { href: `#/part/${p.id}`, testid: 'cell-name', text: p.name || `#${p.id}` })),
      h('td', { class: 'nowrap', testid: 'cell-date', text: fmtTime(p.at) }),
      h('td', { class: 'num', testid: 'cell-score', text: fmtScore(p.score) }),
      h('td', { class: 'num', testid: 'cell-calibrated', text: fmtPct(p.calibrated_score) }),
      h('td', null, badge(typeof p.anomalous === 'boolean' ? p.anomalous : decide(p), 'cell-decision')),
      h('td', null, feedbackTag(p.feedback, 'cell-feedback')),
      h('td', { testid: 'cell-in-bank', text: p.in_bank ? 'yes' : '—' }));
    const open = () => { location.hash = `#/part/${p.id}`; };
    tr.addEventListener('click', (e) => { if (!e.target.closest('a')) open(); });
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
    return tr;
  }

  async function load() {
    for (const [k, b] of Object.entries(headers)) {
      const on = review.sort === k;
      b.classList.toggle('active', on);
      b.dataset.order = on ? review.order : '';
      b.textContent = b.textContent.replace(/ [▲▼]$/, '') + (on ? (review.order === 'asc' ? ' ▲' : ' ▼') : '');
      b.closest('th').setAttribute('aria-sort', on ? (review.order === 'asc' ? 'ascending' : 'descending') : 'none');
    }
    if (ctl) ctl.abort();
    ctl = new AbortController();
    const params = new URLSearchParams({ offset: String(review.offset), limit: String(REVIEW_LIMIT), sort: review.sort, order: review.order });
    if (review.decision) params.set('decision', review.decision);
    if (review.feedback) params.set('feedback', review.feedback);
    if (review.q) params.set('q', review.q);
    table.classList.add('busy');
    try {
      const r = await apiJson(`${API}/parts?${params}`, { signal: ctl.signal });
      if (destroyed) return;
      const parts = partsOf(r);
      total = totalOf(r);
      if (!parts.length && review.offset > 0 && total > 0) { go(Math.floor((total - 1) / REVIEW_LIMIT) * REVIEW_LIMIT); return; }
      tbody.replaceChildren(...parts.map(row));
      if (!parts.length) tbody.append(h('tr', null, h('td', { colspan: '7', class: 'empty', testid: 'review-empty', text: 'No parts match.' })));
      const from = parts.length ? review.offset + 1 : 0;
      const to = review.offset + parts.length;
      info.textContent = `${fmtInt(from)}–${fmtInt(to)} of ${fmtInt(total)}`;
      info.dataset.from = from;
      info.dataset.to = to;
      info.dataset.total = total;
      first.disabled = prev.disabled = review.offset <= 0;
      next.disabled = last.disabled = to >= total;
    } catch (e) {
      if (e.name !== 'AbortError' && !destroyed) toast(e);
    } finally {
      table.classList.remove('busy');
    }
  }
  load();
  let stateTimer = null;
  return {
    onState() { clearTimeout(stateTimer); stateTimer = setTimeout(load, 300); },
    destroy() { destroyed = true; if (ctl) ctl.abort(); clearTimeout(qTimer); clearTimeout(stateTimer); },
  };
}

// ================================================================= router

const VIEWS = { live: LiveView, part: PartView, threshold: ThresholdView, review: ReviewView };

function route() {
  const m = (location.hash || '').match(/^#\/([a-z]+)(?:\/([^?#]*))?/);
  const name = m && VIEWS[m[1]] ? m[1] : null;
  if (!name) { location.replace('#/live'); return; }
  const viewName = name;
  if (S.view && S.view.destroy) S.view.destroy();
  const root = $('#view');
  root.replaceChildren();
  root.dataset.view = viewName;
  S.viewName = viewName;
  for (const a of document.querySelectorAll('.nav a')) {
    if (a.dataset.view === viewName) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.title = `${viewName[0].toUpperCase()}${viewName.slice(1)} · ssvp station`;
  try {
    S.view = VIEWS[viewName](root, m[2]) || {};
  } catch (e) {
    S.view = {};
    toast(e);
    console.error(e);
  }
  window.scrollTo(0, 0);
}

async function init() {
  window.addEventListener('hashchange', route);
  window.addEventListener('unhandledrejection', (e) => { if (e.reason && e.reason.name !== 'AbortError') toast(e.reason); });
  $('#key-dialog').addEventListener('cancel', (e) => e.preventDefault());
  try { await refreshState(); } catch (e) { toast(e); }
  route();
  runEvents();
  if (!live.loaded) loadLive().catch((e) => toast(e));
}

init();
