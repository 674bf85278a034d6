// sdseg-volume review page: the case index and a small canvas viewer. Vanilla JavaScript, no
// build step, nothing fetched. The index JSON (element #review-index) is written by
// src/review/mod.rs; each case's images are one gzip stream in base64 (element
// #case-data-N), inflated with the browser's DecompressionStream when the case is opened.
//
// Geometry (src/review/data.rs): the layers sit on the label volume's grid seen in the
// closest RAS frame (axis t of that frame is original axis perm[t], reversed when flip[t]).
// A full-resolution voxel p = (x, y, z) of that frame falls in sample floor(p[t] / f[t]) of a
// layer cut down by f; the original voxel (i, j, k) undoes the permutation, and RAS mm is the
// output's affine times (i, j, k, 1): the readout is the NIfTI output's.
//
// Screen: radiological convention. Every view reverses both screen axes of the RAS frame:
// axial (z fixed) has R on the left and A at the top, coronal (y fixed) R left and S top,
// sagittal (x fixed) A left and S top. Pixels are drawn with the voxel spacing, so anisotropic
// voxels keep their physical aspect.
(function () {
  'use strict';

  const INDEX = JSON.parse(document.getElementById('review-index').textContent);
  const HU_OF_CODE = Float32Array.from(INDEX.hu_of_code);
  const PRESETS = { abdomen: [400, 40], bone: [1800, 400], lung: [1500, -600] };
  const VIEW_AXES = {
    axial: { fixed: 2, col: 0, row: 1, letters: ['R', 'L', 'A', 'P'] },
    coronal: { fixed: 1, col: 0, row: 2, letters: ['R', 'L', 'S', 'I'] },
    sagittal: { fixed: 0, col: 1, row: 2, letters: ['A', 'P', 'S', 'I'] },
  };
  const LABELS = new Map(INDEX.labels.map((l) => [l.id, l]));
  const SCORED = INDEX.scores !== null && INDEX.scores !== undefined;
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  const fmt = (v, digits) => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits));
  const colorOf = (id) => (LABELS.get(id) || { color: [200, 200, 200] }).color;
  const ONE_LABEL = INDEX.labels.filter((l) => l.id !== 0).length <= 1;
  const contourColor = (id) => (ONE_LABEL ? [255, 230, 0] : colorOf(id));
  const nameOf = (id) => (LABELS.get(id) || { name: 'label ' + id }).name;
  const rgb = (c) => 'rgb(' + c[0] + ',' + c[1] + ',' + c[2] + ')';
  const isoTime = (s) => (s ? new Date(s * 1000).toISOString().replace('.000Z', 'Z') : '–');

  // ------------------------------------------------------------------------------------
  // Summary and provenance

  function renderSummary() {
    const cases = INDEX.cases;
    const count = (s) => cases.filter((c) => c.status === s).length;
    const parts = [
      cases.length + ' case(s): ' + count('written') + ' written, ' + count('skipped') + ' skipped, ' + count('failed') + ' failed',
    ];
    if (SCORED) {
      const dice = cases.map((c) => c.mean_dice).filter((v) => v !== null && v !== undefined);
      const mean = dice.length ? dice.reduce((a, b) => a + b, 0) / dice.length : null;
      parts.push('scores: ' + INDEX.scores.source + ' (protocol ' + INDEX.scores.protocol + '), mean Dice over ' + dice.length + ' scored case(s) ' + fmt(mean, 4));
    }
    const by = INDEX.generated_by;
    parts.push('page by ' + by.name + ' ' + by.version + (by.git_hash ? ' (' + by.git_hash.slice(0, 12) + ')' : '') + ', ' + isoTime(INDEX.generated_unix_s));
    const box = $('summary');
    box.append(el('div', { text: parts.join(' · ') }));
    const demo = cases.some((c) => (c.warnings || []).some((w) => w.includes('DEMO MODEL')));
    if (demo) box.append(el('div', { class: 'notes', text: 'Some cases were segmented by the demo model on inputs that are not demo phantoms: not a medical result (see the warnings column).' }));
    for (const n of INDEX.notes || []) box.append(el('div', { class: 'notes', text: n }));
  }

  function renderProvenance() {
    const runs = INDEX.runs;
    const rows = [
      ['report', (r) => r.report],
      ['tool', (r) => r.tool.name + ' ' + r.tool.version + (r.tool.git_hash ? ' (git ' + r.tool.git_hash + ')' : '')],
      ['command', (r) => r.command],
      ['started', (r) => isoTime(r.started_unix_s)],
      ['finished', (r) => isoTime(r.finished_unix_s)],
      ['cases', (r) => r.cases],
      ['pipeline', (r) => r.pipeline.name + ' (' + r.pipeline.origin + ')'],
      ['pipeline summary', (r) => r.pipeline.summary],
      ['model', (r) => (r.model ? r.model.kind + (r.model.demo_model ? ' (demo model)' : '') + ', ' + r.model.num_classes + ' classes, ' + r.model.slice_size + '² slices, ' + (r.model.ema ? 'EMA' : 'raw') + ' UNet weights' : '–')],
      ['model config', (r) => (r.model ? r.model.config_source : '–')],
      ['weights', (r) => (r.model && r.model.weights ? r.model.weights : '–')],
      ['weights sha256', (r) => (r.model && r.model.weights_sha256 ? r.model.weights_sha256 : '–')],
    ];
    const settingKeys = ['device', 'dtype', 'seed', 'noise', 'samples', 'batch_size', 'resize', 'shard', 'formats', 'postprocess'];
    for (const k of settingKeys) {
      rows.push([k, (r) => {
        const v = r.settings ? r.settings[k] : undefined;
        return v === undefined || v === null ? '–' : typeof v === 'object' ? JSON.stringify(v) : String(v);
      }]);
    }
    const head = el('tr', {}, el('th', { text: '' }), ...runs.map((_, i) => el('th', { text: runs.length > 1 ? 'report ' + (i + 1) : 'run' })));
    const body = rows.map(([name, f]) => el('tr', {}, el('th', { text: name }), ...runs.map((r) => el('td', { text: String(f(r)) }))));
    $('provenance').append(el('table', {}, el('thead', {}, head), el('tbody', {}, ...body)));
    if (SCORED && INDEX.scores.definitions) {
      $('provenance').append(el('p', { class: 'muted', text: 'Scores: ' + INDEX.scores.definitions }));
    }
  }

  // ------------------------------------------------------------------------------------
  // The case index

  const scoredLabels = (() => {
    const seen = new Map();
    for (const c of INDEX.cases) for (const s of c.scores || []) if (!seen.has(s.label)) seen.set(s.label, s.name);
    return [...seen.entries()].map(([id, name]) => ({ id, name }));
  })();
  const statLabels = (() => {
    const seen = new Map();
    for (const c of INDEX.cases) for (const s of c.labels || []) if (s.label !== 0 && !seen.has(s.label)) seen.set(s.label, s.name);
    return [...seen.entries()].map(([id, name]) => ({ id, name }));
  })();
  const scoreOf = (c, id, key) => {
    const s = (c.scores || []).find((x) => x.label === id);
    return s ? s[key] : null;
  };
  const statOf = (c, id) => (c.labels || []).find((x) => x.label === id);

  const COLUMNS = [
    { key: 'case', title: 'case', value: (c) => c.case, text: (c) => c.case },
    { key: 'status', title: 'status', value: (c) => c.status, text: (c) => c.status + (c.failed_stage ? ' (' + c.failed_stage + ')' : ''), cls: 'status' },
  ];
  if (SCORED) {
    if (scoredLabels.length > 1) {
      COLUMNS.push({ key: 'dice', title: 'mean Dice', value: (c) => c.mean_dice, num: 4 });
    }
    for (const l of scoredLabels) {
      COLUMNS.push({ key: 'dice:' + l.id, title: 'Dice ' + l.name, value: (c) => scoreOf(c, l.id, 'dice'), num: 4, swatch: l.id });
    }
    for (const l of scoredLabels) {
      COLUMNS.push({ key: 'hd95:' + l.id, title: 'HD95 ' + l.name + ' (mm)', value: (c) => scoreOf(c, l.id, 'hd95_mm'), num: 2 });
    }
  }
  for (const l of statLabels) {
    COLUMNS.push({
      key: 'ml:' + l.id, title: l.name + ' (ml · mean HU)', swatch: l.id,
      value: (c) => { const s = statOf(c, l.id); return s ? s.volume_ml : null; },
      text: (c) => { const s = statOf(c, l.id); return s ? s.volume_ml.toFixed(1) + ' ml · ' + fmt(s.mean_hu, 0) + ' HU' : '–'; },
      numeric: true,
    });
  }
  COLUMNS.push(
    { key: 'series', title: 'series', value: (c) => c.series_description || c.series_uid || '', text: (c) => (c.series_description || '') + (c.series_uid ? ' ' + c.series_uid : '') || '–' },
    { key: 'shape', title: 'shape', value: (c) => (c.shape ? c.shape[0] * c.shape[1] * c.shape[2] : null), text: (c) => (c.shape ? c.shape.join('×') : '–'), numeric: true },
    { key: 'time', title: 'time (s)', value: (c) => (c.seconds && Number.isFinite(c.seconds.wall) ? c.seconds.wall : null), num: 1 },
    { key: 'warnings', title: 'warnings', value: (c) => (c.error ? 'error: ' + c.error + ' ' : '') + (c.warnings || []).join(' | '), cls: 'warn' },
  );

  const rows = [];
  let sortKey = null;
  let sortDir = 1;
  let selectedRow = null;

  function buildTable() {
    const head = el('tr', {});
    for (const col of COLUMNS) {
      const th = el('th', { 'data-col': col.key, title: 'sort by ' + col.title, onclick: () => sortBy(col.key) });
      if (col.swatch !== undefined) th.append(el('span', { class: 'swatch', style: 'background:' + rgb(colorOf(col.swatch)) }));
      th.append(col.title);
      head.append(th);
    }
    document.querySelector('#cases thead').append(head);
    const tbody = document.querySelector('#cases tbody');
    INDEX.cases.forEach((c, i) => {
      const tr = el('tr', { 'data-case': c.case, class: 'status-' + c.status, onclick: () => show(i) });
      for (const col of COLUMNS) {
        const v = col.value(c);
        const text = col.text ? col.text(c) : col.num !== undefined ? fmt(v, col.num) : v === null || v === undefined ? '–' : String(v);
        const td = el('td', { 'data-col': col.key, class: [col.cls, col.num !== undefined || col.numeric ? 'num' : ''].filter(Boolean).join(' ') || null, title: col.key === 'warnings' ? v : null, text });
        if (typeof v === 'number' && Number.isFinite(v)) td.setAttribute('data-value', String(v));
        tr.append(td);
      }
      rows.push({ tr, c, i });
      tbody.append(tr);
    });
    const statuses = [...new Set(INDEX.cases.map((c) => c.status))].sort();
    for (const s of statuses) $('status-filter').append(el('option', { value: s, text: s }));
    $('filter').addEventListener('input', applyFilter);
    $('status-filter').addEventListener('change', applyFilter);
  }

  // Worst first: failed cases, then (with scores) the lowest mean Dice; unscored cases last.
  function defaultOrder(a, b) {
    const fa = a.c.status === 'failed' ? 0 : 1;
    const fb = b.c.status === 'failed' ? 0 : 1;
    if (fa !== fb) return fa - fb;
    if (SCORED) {
      const da = a.c.mean_dice;
      const db = b.c.mean_dice;
      const na = da === null || da === undefined;
      const nb = db === null || db === undefined;
      if (na !== nb) return na ? 1 : -1;
      if (!na && da !== db) return da - db;
    }
    return a.c.case < b.c.case ? -1 : a.c.case > b.c.case ? 1 : 0;
  }

  function sortBy(key) {
    if (sortKey === key) sortDir = -sortDir;
    else { sortKey = key; sortDir = 1; }
    applySort();
  }

  function applySort() {
    const col = COLUMNS.find((c) => c.key === sortKey);
    const order = col
      ? (a, b) => {
        const va = col.value(a.c);
        const vb = col.value(b.c);
        const na = va === null || va === undefined || (typeof va === 'number' && !Number.isFinite(va));
        const nb = vb === null || vb === undefined || (typeof vb === 'number' && !Number.isFinite(vb));
        if (na !== nb) return na ? 1 : -1;
        if (na) return 0;
        return (va < vb ? -1 : va > vb ? 1 : 0) * sortDir;
      }
      : defaultOrder;
    rows.sort(order);
    const tbody = document.querySelector('#cases tbody');
    for (const r of rows) tbody.append(r.tr);
    document.querySelectorAll('#cases th').forEach((th) => {
      th.classList.toggle('sorted-asc', th.dataset.col === sortKey && sortDir > 0);
      th.classList.toggle('sorted-desc', th.dataset.col === sortKey && sortDir < 0);
    });
  }

  function applyFilter() {
    const q = $('filter').value.trim().toLowerCase();
    const status = $('status-filter').value;
    let shown = 0;
    for (const r of rows) {
      const c = r.c;
      const hay = [c.case, c.status, c.error || '', c.series_description || '', c.series_uid || '', ...(c.warnings || [])].join(' ').toLowerCase();
      const ok = (!q || hay.includes(q)) && (!status || c.status === status);
      r.tr.hidden = !ok;
      if (ok) shown++;
    }
    $('count').textContent = shown + ' of ' + rows.length + ' case(s)';
  }

  function visibleOrder() {
    return rows.filter((r) => !r.tr.hidden).map((r) => r.i);
  }

  // ------------------------------------------------------------------------------------
  // Case data

  function fromBase64(s) {
    if (typeof Uint8Array.fromBase64 === 'function') return Uint8Array.fromBase64(s);
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function inflateBlock(id) {
    let node = document.getElementById(id);
    if (!node && document.readyState === 'loading') {
      await new Promise((resolve) => document.addEventListener('DOMContentLoaded', resolve, { once: true }));
      node = document.getElementById(id);
    }
    if (!node) throw new Error('the page has no data element ' + id);
    const stream = new Blob([fromBase64(node.textContent.trim())]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  function layersOf(view, bytes) {
    const out = {};
    for (const l of view.layers) {
      const data = l.dtype === 'u16'
        ? new Uint16Array(bytes.buffer, bytes.byteOffset + l.offset, l.bytes / 2)
        : bytes.subarray(l.offset, l.offset + l.bytes);
      out[l.name] = { meta: l, data, stride: [1, l.dims[0], l.dims[0] * l.dims[1]] };
    }
    return out;
  }

  // ------------------------------------------------------------------------------------
  // The viewer

  const views = [...document.querySelectorAll('.view')].map((fig) => {
    const name = fig.dataset.view;
    const canvas = fig.querySelector('canvas');
    return { name, fig, canvas, ctx: canvas.getContext('2d'), axes: VIEW_AXES[name], plane: document.createElement('canvas'), image: null };
  });
  const viewByName = Object.fromEntries(views.map((v) => [v.name, v]));
  let current = null;
  let activeView = views[0];
  let openSeq = 0;

  const options = { opacity: 0.45, showGt: true, showUnc: false, crosshair: true, hidden: new Set() };

  function windowLut() {
    const w = Math.max(1, Number($('window-width').value) || 1);
    const l = Number($('window-level').value) || 0;
    const lo = l - w / 2;
    const lut = new Uint8Array(256);
    for (let c = 0; c < 256; c++) lut[c] = Math.max(0, Math.min(255, Math.round(((HU_OF_CODE[c] - lo) / w) * 255)));
    return lut;
  }

  function setPreset(name) {
    $('window-preset').value = name;
    if (PRESETS[name]) {
      $('window-width').value = PRESETS[name][0];
      $('window-level').value = PRESETS[name][1];
    }
    renderAll();
  }

  function labelLut(maxValue) {
    const n = maxValue + 1;
    const r = new Uint8Array(n);
    const g = new Uint8Array(n);
    const b = new Uint8Array(n);
    const show = new Uint8Array(n);
    for (let v = 1; v < n; v++) {
      const c = colorOf(v);
      r[v] = c[0]; g[v] = c[1]; b[v] = c[2];
      show[v] = options.hidden.has(v) ? 0 : 1;
    }
    return { r, g, b, show };
  }

  // Per screen column / row of a view, the offset of the voxel in a layer; `base` adds the
  // fixed slice. Full-resolution voxel p lies in sample floor(p / f).
  function offsets(layer, v, slice) {
    const g = current.grid.dims;
    const a = v.axes;
    const f = layer.meta.factors;
    const W = g[a.col];
    const H = g[a.row];
    const col = new Int32Array(W);
    const row = new Int32Array(H);
    for (let c = 0; c < W; c++) col[c] = Math.floor((W - 1 - c) / f[a.col]) * layer.stride[a.col];
    for (let r = 0; r < H; r++) row[r] = Math.floor((H - 1 - r) / f[a.row]) * layer.stride[a.row];
    const base = Math.floor(slice[a.fixed] / f[a.fixed]) * layer.stride[a.fixed];
    return { col, row, base };
  }

  function layout() {
    if (!current) return;
    const g = current.grid;
    const avail = Math.max(480, $('views').clientWidth || 1200);
    const box = Math.max(160, Math.min(480, Math.floor((avail - 2 * 14) / 3)));
    const dpr = window.devicePixelRatio || 1;
    for (const v of views) {
      const a = v.axes;
      const pw = g.dims[a.col] * g.spacing[a.col];
      const ph = g.dims[a.row] * g.spacing[a.row];
      const s = box / Math.max(pw, ph);
      const w = Math.max(1, Math.round(pw * s));
      const h = Math.max(1, Math.round(ph * s));
      v.canvas.style.width = w + 'px';
      v.canvas.style.height = h + 'px';
      v.canvas.width = Math.round(w * dpr);
      v.canvas.height = Math.round(h * dpr);
    }
  }

  function renderView(v) {
    if (!current) return;
    const g = current.grid;
    const a = v.axes;
    const W = g.dims[a.col];
    const H = g.dims[a.row];
    if (!v.image || v.image.width !== W || v.image.height !== H) {
      v.plane.width = W;
      v.plane.height = H;
      v.image = new ImageData(W, H);
    }
    const px = v.image.data;
    const slice = current.slice;
    const L = current.layers;
    const grey = windowLut();
    const ct = L.ct ? offsets(L.ct, v, slice) : null;
    const ctData = L.ct ? L.ct.data : null;
    const lab = offsets(L.labels, v, slice);
    const labData = L.labels.data;
    const gt = L.gt && options.showGt ? offsets(L.gt, v, slice) : null;
    const gtData = L.gt ? L.gt.data : null;
    const unc = L.uncertainty && options.showUnc ? offsets(L.uncertainty, v, slice) : null;
    const uncData = L.uncertainty ? L.uncertainty.data : null;
    const lut = current.lut;
    const alpha = options.opacity;
    for (let r = 0; r < H; r++) {
      const lr = lab.base + lab.row[r];
      const cr = ct ? ct.base + ct.row[r] : 0;
      const ur = unc ? unc.base + unc.row[r] : 0;
      let o = r * W * 4;
      for (let c = 0; c < W; c++, o += 4) {
        let R = ct ? grey[ctData[cr + ct.col[c]]] : 0;
        let G = R;
        let B = R;
        if (unc) {
          const u = uncData[ur + unc.col[c]] / 255;
          if (u > 0) {
            const k = Math.min(1, u * 1.25) * 0.85;
            R += (255 - R) * k;
            G += (255 * (1 - u) - G) * k;
            B += (0 - B) * k;
          }
        }
        const lv = labData[lr + lab.col[c]];
        if (lv !== 0 && lv < lut.show.length && lut.show[lv]) {
          R += (lut.r[lv] - R) * alpha;
          G += (lut.g[lv] - G) * alpha;
          B += (lut.b[lv] - B) * alpha;
        }
        px[o] = R; px[o + 1] = G; px[o + 2] = B; px[o + 3] = 255;
      }
    }
    if (gt) {
      // The ground truth's boundary in this plane: a labelled voxel with a 4-neighbour of
      // another value, drawn in its label's colour (yellow when there is one label, whose
      // colour the prediction's fill already has).
      const at = (c, r) => gtData[gt.base + gt.row[r] + gt.col[c]];
      for (let r = 0; r < H; r++) {
        for (let c = 0; c < W; c++) {
          const v0 = at(c, r);
          if (v0 === 0) continue;
          const edge = (c > 0 && at(c - 1, r) !== v0) || (c < W - 1 && at(c + 1, r) !== v0)
            || (r > 0 && at(c, r - 1) !== v0) || (r < H - 1 && at(c, r + 1) !== v0);
          if (!edge) continue;
          const col = contourColor(v0);
          const o = (r * W + c) * 4;
          px[o] = col[0]; px[o + 1] = col[1]; px[o + 2] = col[2];
        }
      }
    }
    v.plane.getContext('2d').putImageData(v.image, 0, 0);
    const ctx = v.ctx;
    const cw = v.canvas.width;
    const ch = v.canvas.height;
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, cw, ch);
    ctx.drawImage(v.plane, 0, 0, cw, ch);
    const dpr = window.devicePixelRatio || 1;
    if (options.crosshair) {
      const x = (W - 1 - slice[a.col] + 0.5) / W * cw;
      const y = (H - 1 - slice[a.row] + 0.5) / H * ch;
      ctx.strokeStyle = 'rgba(90,169,230,0.55)';
      ctx.lineWidth = dpr;
      ctx.beginPath();
      ctx.moveTo(x, 0); ctx.lineTo(x, ch);
      ctx.moveTo(0, y); ctx.lineTo(cw, y);
      ctx.stroke();
    }
    ctx.fillStyle = 'rgba(255,255,255,0.8)';
    ctx.font = (11 * dpr) + 'px sans-serif';
    const [left, right, top, bottom] = a.letters;
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'left';
    ctx.fillText(left, 3 * dpr, ch / 2);
    ctx.textAlign = 'right';
    ctx.fillText(right, cw - 3 * dpr, ch / 2);
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    ctx.fillText(top, cw / 2, 3 * dpr);
    ctx.textBaseline = 'bottom';
    ctx.fillText(bottom, cw / 2, ch - 3 * dpr);
    v.fig.querySelector('.slice').textContent = (slice[a.fixed] + 1) + ' / ' + g.dims[a.fixed];
  }

  function renderAll() {
    if (!current) return;
    for (const v of views) renderView(v);
  }

  // Full-resolution RAS-frame voxel ↔ original voxel (i, j, k) ↔ RAS mm.
  function toIjk(p) {
    const g = current.grid;
    const ijk = [0, 0, 0];
    for (let t = 0; t < 3; t++) ijk[g.perm[t]] = g.flip[t] ? g.dims[t] - 1 - p[t] : p[t];
    return ijk;
  }
  function fromIjk(ijk) {
    const g = current.grid;
    const p = [0, 0, 0];
    for (let t = 0; t < 3; t++) {
      const s = ijk[g.perm[t]];
      p[t] = g.flip[t] ? g.dims[t] - 1 - s : s;
    }
    return p;
  }
  function toWorld(ijk) {
    const A = current.grid.affine;
    return [0, 1, 2].map((r) => A[r][0] * ijk[0] + A[r][1] * ijk[1] + A[r][2] * ijk[2] + A[r][3]);
  }
  function sample(layer, p) {
    if (!layer) return null;
    const f = layer.meta.factors;
    const idx = Math.floor(p[0] / f[0]) * layer.stride[0] + Math.floor(p[1] / f[1]) * layer.stride[1] + Math.floor(p[2] / f[2]) * layer.stride[2];
    return layer.data[idx];
  }

  function voxelUnder(v, clientX, clientY) {
    const rect = v.canvas.getBoundingClientRect();
    const g = current.grid;
    const a = v.axes;
    const W = g.dims[a.col];
    const H = g.dims[a.row];
    const c = Math.floor(((clientX - rect.left) / rect.width) * W);
    const r = Math.floor(((clientY - rect.top) / rect.height) * H);
    if (c < 0 || r < 0 || c >= W || r >= H) return null;
    const p = current.slice.slice();
    p[a.col] = W - 1 - c;
    p[a.row] = H - 1 - r;
    return p;
  }

  function readout(p) {
    const L = current.layers;
    const ijk = toIjk(p);
    const w = toWorld(ijk);
    const parts = [];
    if (L.ct) {
      const f = L.ct.meta.factors;
      const block = f[0] * f[1] * f[2] > 1 ? ' (mean of ' + f.join('×') + ' voxels)' : '';
      parts.push('HU ≈ ' + Math.round(HU_OF_CODE[sample(L.ct, p)]) + block);
    } else {
      parts.push('HU –');
    }
    const lv = sample(L.labels, p);
    parts.push('label ' + lv + (lv ? ' ' + nameOf(lv) : ''));
    if (L.gt) {
      const gv = sample(L.gt, p);
      parts.push('ground truth ' + gv + (gv ? ' ' + nameOf(gv) : ''));
    }
    if (L.uncertainty) {
      const u = (sample(L.uncertainty, p) / 255) * L.uncertainty.meta.scale;
      parts.push('uncertainty ' + u.toFixed(3));
    }
    parts.push('voxel (i, j, k) = (' + ijk.join(', ') + ')');
    parts.push('RAS (x, y, z) = (' + w.map((x) => x.toFixed(1)).join(', ') + ') mm');
    $('readout').textContent = parts.join(' · ');
  }

  function scroll(v, delta) {
    if (!current) return;
    const a = v.axes;
    const n = current.grid.dims[a.fixed];
    const next = Math.max(0, Math.min(n - 1, current.slice[a.fixed] + delta));
    if (next === current.slice[a.fixed]) return;
    current.slice[a.fixed] = next;
    renderAll();
  }

  for (const v of views) {
    v.canvas.addEventListener('mousemove', (e) => {
      if (!current) return;
      activeView = v;
      const p = voxelUnder(v, e.clientX, e.clientY);
      if (p) readout(p);
    });
    v.canvas.addEventListener('click', (e) => {
      if (!current) return;
      activeView = v;
      v.canvas.focus({ preventScroll: true });
      const p = voxelUnder(v, e.clientX, e.clientY);
      if (!p) return;
      current.slice = p;
      renderAll();
      readout(p);
    });
    v.canvas.addEventListener('wheel', (e) => {
      if (!current) return;
      e.preventDefault();
      activeView = v;
      scroll(v, e.deltaY > 0 ? -1 : e.deltaY < 0 ? 1 : 0);
    }, { passive: false });
    v.canvas.addEventListener('focus', () => { activeView = v; });
  }

  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'SELECT' || t.tagName === 'TEXTAREA')) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (current && (e.key === 'ArrowUp' || e.key === 'PageUp')) {
      e.preventDefault();
      scroll(activeView, e.key === 'PageUp' ? 10 : 1);
    } else if (current && (e.key === 'ArrowDown' || e.key === 'PageDown')) {
      e.preventDefault();
      scroll(activeView, e.key === 'PageDown' ? -10 : -1);
    } else if (e.key === 'n' || e.key === 'p') {
      stepCase(e.key === 'n' ? 1 : -1);
    }
  });

  function stepCase(d) {
    const order = visibleOrder();
    if (!order.length) return;
    const at = current ? order.indexOf(current.index) : -1;
    const next = order[Math.max(0, Math.min(order.length - 1, at + d))];
    if (next !== undefined && (!current || next !== current.index)) show(next);
  }

  function buildLabelToggles(maxValue) {
    const box = $('label-toggles');
    box.replaceChildren();
    const ids = new Set(INDEX.labels.map((l) => l.id).filter((id) => id !== 0 && id <= maxValue));
    for (const id of [...ids].sort((x, y) => x - y)) {
      const input = el('input', { type: 'checkbox', 'data-label': id });
      input.checked = !options.hidden.has(id);
      input.addEventListener('change', () => {
        if (input.checked) options.hidden.delete(id); else options.hidden.add(id);
        current.lut = labelLut(current.maxLabel);
        renderAll();
      });
      box.append(el('label', { class: 'toggle' }, input, el('span', { class: 'swatch', style: 'background:' + rgb(colorOf(id)) }), nameOf(id)));
    }
  }

  function maxOf(a) {
    let m = 0;
    for (let i = 0; i < a.length; i++) if (a[i] > m) m = a[i];
    return m;
  }

  // Where to look first: the centre of the predicted labels (else of the volume).
  function labelCentre(layer, dims) {
    const d = layer.meta.dims;
    const f = layer.meta.factors;
    const data = layer.data;
    let n = 0;
    const s = [0, 0, 0];
    for (let z = 0, i = 0; z < d[2]; z++) {
      for (let y = 0; y < d[1]; y++) {
        for (let x = 0; x < d[0]; x++, i++) {
          if (data[i] !== 0) { n++; s[0] += x; s[1] += y; s[2] += z; }
        }
      }
    }
    if (n === 0) return dims.map((x) => Math.floor(x / 2));
    return [0, 1, 2].map((t) => Math.min(dims[t] - 1, Math.floor((s[t] / n) * f[t] + f[t] / 2)));
  }

  function caseDetails(c) {
    const box = $('case-details');
    box.replaceChildren();
    const withU = (c.labels || []).some((s) => s.mean_uncertainty !== undefined && s.mean_uncertainty !== null);
    const head = ['label', 'name', 'voxels', 'volume (ml)', 'mean HU'];
    if (withU) head.push('mean uncertainty', 'uncertain (ml)');
    const scoreHead = ['Dice', 'IoU', 'HD95 (mm)', 'ASSD (mm)', 'NSD', 'voxels pred', 'voxels gt'];
    if (c.scores) head.push(...scoreHead);
    const ids = new Set([...(c.labels || []).map((s) => s.label), ...(c.scores || []).map((s) => s.label)]);
    const body = [...ids].sort((a, b) => a - b).map((id) => {
      const s = statOf(c, id);
      const cells = [
        el('td', {}, el('span', { class: 'swatch', style: 'background:' + rgb(colorOf(id)) }), String(id)),
        el('td', { text: s ? s.name : nameOf(id) }),
        el('td', { class: 'num', text: s ? String(s.voxels) : '–' }),
        el('td', { class: 'num', text: s ? s.volume_ml.toFixed(2) : '–' }),
        el('td', { class: 'num', text: s ? fmt(s.mean_hu, 1) : '–' }),
      ];
      if (withU) {
        cells.push(el('td', { class: 'num', text: s ? fmt(s.mean_uncertainty, 4) : '–' }), el('td', { class: 'num', text: s ? fmt(s.uncertain_ml, 2) : '–' }));
      }
      if (c.scores) {
        const m = c.scores.find((x) => x.label === id);
        const keys = [['dice', 4], ['iou', 4], ['hd95_mm', 2], ['assd_mm', 2], ['nsd', 4], ['n_pred', 0], ['n_gt', 0]];
        for (const [k, d] of keys) cells.push(el('td', { class: 'num', text: m ? fmt(m[k], d) : '–' }));
      }
      return el('tr', {}, ...cells);
    });
    box.append(el('table', {}, el('thead', {}, el('tr', {}, ...head.map((h) => el('th', { text: h })))), el('tbody', {}, ...body)));
    const dl = el('dl', {});
    const item = (k, v) => { if (v !== null && v !== undefined && v !== '') dl.append(el('dt', { text: k }), el('dd', { text: String(v) })); };
    item('input', c.input);
    item('output', c.output);
    item('ground truth', c.gt);
    item('uncertainty', c.uncertainty);
    item('series', [c.series_description, c.series_uid].filter(Boolean).join(' '));
    item('shape', c.shape ? c.shape.join(' × ') : null);
    item('spacing (mm)', c.spacing_mm ? c.spacing_mm.map((x) => x.toFixed(3)).join(' × ') : null);
    item('orientation', c.orientation);
    item('slices segmented', c.slices);
    if (c.seconds && typeof c.seconds === 'object') {
      item('time (s)', Object.entries(c.seconds).map(([k, v]) => k + ' ' + (Number.isFinite(v) ? v.toFixed(2) : v)).join(', '));
    }
    if (c.view) {
      const ct = c.view.layers.find((l) => l.name === 'ct');
      item('embedded', (c.view.page_bytes / 1e6).toFixed(2) + ' MB in the page; CT ' + (ct ? ct.dims.join('×') + ' (blocks of ' + ct.factors.join('×') + ' voxels, 8-bit)' : 'absent') + ', labels ' + c.view.layers.find((l) => l.name === 'labels').dims.join('×'));
      item('output orientation', c.view.grid.axcodes);
    }
    box.append(dl);
  }

  function caseNotes(c, extra) {
    const box = $('case-notes');
    box.replaceChildren();
    if (c.error) box.append(el('div', { class: 'error', text: 'failed' + (c.failed_stage ? ' (' + c.failed_stage + ')' : '') + ': ' + c.error }));
    for (const w of c.warnings || []) box.append(el('div', { class: 'note', text: 'warning: ' + w }));
    for (const n of c.notes || []) box.append(el('div', { class: 'note', text: n }));
    if (extra) box.append(el('div', { class: 'error', text: extra }));
  }

  async function openCase(index) {
    const c = INDEX.cases[index];
    const seq = ++openSeq;
    $('viewer').hidden = false;
    $('case-title').textContent = c.case;
    $('case-status').textContent = c.status + (SCORED && c.mean_dice !== null && c.mean_dice !== undefined ? ' · mean Dice ' + fmt(c.mean_dice, 4) : '');
    if (selectedRow) selectedRow.classList.remove('selected');
    selectedRow = rows.find((r) => r.i === index).tr;
    selectedRow.classList.add('selected');
    const hash = '#case=' + encodeURIComponent(c.case);
    if (location.hash !== hash) {
      // A link to the case; some browsers refuse history changes on file:// pages.
      try { history.replaceState(null, '', hash); } catch (_) { /* the page works without it */ }
    }
    caseNotes(c);
    caseDetails(c);
    current = null;
    $('views').hidden = true;
    if (!c.view) {
      $('readout').textContent = c.status === 'failed' ? 'This case failed: nothing to show.' : 'No images for this case (see the notes).';
      return;
    }
    $('readout').textContent = 'decoding…';
    const bytes = await inflateBlock(c.view.block);
    if (seq !== openSeq) return;
    const layers = layersOf(c.view, bytes);
    const grid = c.view.grid;
    const maxLabel = Math.max(maxOf(layers.labels.data), layers.gt ? maxOf(layers.gt.data) : 0, ...INDEX.labels.map((l) => l.id));
    current = { index, c, grid, layers, maxLabel, slice: labelCentre(layers.labels, grid.dims), lut: null };
    current.lut = labelLut(maxLabel);
    $('gt-toggle-label').hidden = !layers.gt;
    $('gt-swatch').style.background = ONE_LABEL ? rgb(contourColor(1)) : 'linear-gradient(90deg,' + INDEX.labels.filter((l) => l.id).map((l) => rgb(l.color)).join(',') + ')';
    $('unc-toggle-label').hidden = !layers.uncertainty;
    $('unc-scale').textContent = layers.uncertainty ? '(yellow 0 → red ' + layers.uncertainty.meta.scale.toFixed(3) + ')' : '';
    buildLabelToggles(maxLabel);
    $('views').hidden = false;
    layout();
    renderAll();
    $('readout').textContent = 'Hover over an image: HU, label, voxel (i, j, k) and RAS (mm). Wheel or ↑/↓ scroll slices; click to move the crosshair; n/p: next/previous case.';
  }

  function openCaseChecked(index) {
    return openCase(index).catch((err) => {
      caseNotes(INDEX.cases[index], 'cannot show this case: ' + err.message);
      throw err;
    });
  }

  // From a click or a key: a failure is on the page and in the console.
  function show(index) {
    openCaseChecked(index).catch((err) => console.error(err));
  }

  // ------------------------------------------------------------------------------------
  // Controls

  $('window-preset').addEventListener('change', () => setPreset($('window-preset').value));
  for (const id of ['window-width', 'window-level']) {
    $(id).addEventListener('input', () => { $('window-preset').value = 'custom'; renderAll(); });
  }
  $('opacity').addEventListener('input', () => { options.opacity = Number($('opacity').value); renderAll(); });
  $('gt-toggle').addEventListener('change', () => { options.showGt = $('gt-toggle').checked; renderAll(); });
  $('unc-toggle').addEventListener('change', () => { options.showUnc = $('unc-toggle').checked; renderAll(); });
  $('crosshair-toggle').addEventListener('change', () => { options.crosshair = $('crosshair-toggle').checked; renderAll(); });
  $('prev-case').addEventListener('click', () => stepCase(-1));
  $('next-case').addEventListener('click', () => stepCase(1));
  window.addEventListener('resize', () => { layout(); renderAll(); });

  // ------------------------------------------------------------------------------------
  // Start: the index first; the data elements after this script are parsed later.

  renderSummary();
  buildTable();
  applySort();
  applyFilter();
  renderProvenance();
  $('window-width').value = PRESETS.abdomen[0];
  $('window-level').value = PRESETS.abdomen[1];
  $('opacity').value = options.opacity;
  const indexShownMs = performance.now();

  const fromHash = decodeURIComponent((location.hash.match(/^#case=(.*)$/) || [])[1] || '');
  const initial = INDEX.cases.findIndex((c) => c.case === fromHash);
  if (initial >= 0) show(initial);

  // A small API for tests and for scripting the page from the browser console.
  window.sdsegReview = {
    index: INDEX,
    indexShownMs,
    /** Open a case by id; resolves once its views are drawn. */
    openCase(id) {
      const i = INDEX.cases.findIndex((c) => c.case === id);
      if (i < 0) return Promise.reject(new Error('no case ' + id));
      return openCaseChecked(i);
    },
    /** The open case, its slice (full-resolution RAS-frame voxel) and the view options. */
    state() {
      return current
        ? { case: current.c.case, slice: current.slice.slice(), dims: current.grid.dims.slice(), opacity: options.opacity, window: [Number($('window-width').value), Number($('window-level').value)] }
        : null;
    },
    /** The table's case ids in display order (hidden rows left out). */
    rowOrder() {
      return rows.filter((r) => !r.tr.hidden).map((r) => r.c.case);
    },
    /**
     * Show original voxel (i, j, k) in `view` (its slice is moved there) and return the page
     * coordinates (CSS pixels, document origin) of the voxel's centre.
     */
    voxelToScreen(view, ijk) {
      const v = viewByName[view];
      const p = fromIjk(ijk);
      current.slice[v.axes.fixed] = p[v.axes.fixed];
      renderAll();
      const g = current.grid;
      const a = v.axes;
      const rect = v.canvas.getBoundingClientRect();
      const W = g.dims[a.col];
      const H = g.dims[a.row];
      return {
        x: rect.left + window.scrollX + ((W - 1 - p[a.col] + 0.5) / W) * rect.width,
        y: rect.top + window.scrollY + ((H - 1 - p[a.row] + 0.5) / H) * rect.height,
      };
    },
    /** Set a view option: opacity (0..1), gt, uncertainty, crosshair (booleans), preset. */
    set(name, value) {
      if (name === 'opacity') { $('opacity').value = value; options.opacity = Number(value); }
      else if (name === 'gt') { $('gt-toggle').checked = value; options.showGt = !!value; }
      else if (name === 'uncertainty') { $('unc-toggle').checked = value; options.showUnc = !!value; }
      else if (name === 'crosshair') { $('crosshair-toggle').checked = value; options.crosshair = !!value; }
      else if (name === 'preset') { setPreset(value); return; }
      else throw new Error('unknown option ' + name);
      renderAll();
    },
  };
})();
