// docs/contract.md (version 1) in JavaScript: window lists, padding, valid, blending, rounding, with an
// onnxruntime-web session. Images are {width, height, rgba: Uint8ClampedArray} (canvas ImageData).

// ep: "wasm" or "webgpu". A fixed-batch file may have a batch-1 twin (targets.onnx.batch_one): calls of
// fewer windows than the batch go there one window at a time instead of being filled with copies.
export async function loadExport(ort, baseUrl, ep = "wasm", sessionOptions = {}) {
  const manifest = await (await fetch(new URL("nsr.json", baseUrl))).json();
  if (manifest.contract_version !== 1) throw new Error(`contract version ${manifest.contract_version} (this page implements 1)`);
  const onnx = manifest.targets.onnx;
  if (onnx.portable === false) throw new Error("model.onnx is ONNX-Runtime-CPU only (conv form nchwc): export a portable form");
  const open = (file) => ort.InferenceSession.create(new URL(file, baseUrl).href, { ...sessionOptions, executionProviders: [ep] });
  const staticBatch = manifest.io.static_batch || 0;
  const main = { file: onnx.file, session: await open(onnx.file) };
  const single = staticBatch > 1 && onnx.batch_one ? { file: onnx.batch_one.file, session: await open(onnx.batch_one.file) } : null;
  return { manifest, ep, staticBatch, main, single };
}

function wholePlan(h, w) {
  return { wh: h, ww: w, overlapping: false, windows: [[0, 0, 0, 0, h, w, 1]] };
}

function referencePlan(h, w, t) {
  const pad = t.reflect_pad, p = t.patch, s = t.stride;
  const hp = h + 2 * pad, wp = w + 2 * pad;
  const nh = Math.floor((hp - p) / s) + 1, nw = Math.floor((wp - p) / s) + 1;
  const ch = hp - ((nh - 1) * s + p), cw = wp - ((nw - 1) * s + p);
  const at = [];
  for (let i = 0; i < nh; i++) for (let j = 0; j < nw; j++) at.push([Math.floor(ch / 2) + i * s, Math.floor(cw / 2) + j * s, t.main_weight]);
  for (let j = 0; j < nw; j++) at.push([0, j * s, t.strip_weight]);
  for (let i = 0; i < nh; i++) at.push([i * s, wp - p, t.strip_weight]);
  for (let j = 0; j < nw; j++) at.push([hp - p, cw + j * s, t.strip_weight]);
  for (let i = 0; i < nh; i++) at.push([ch + i * s, 0, t.strip_weight]);
  return { wh: p, ww: p, overlapping: true, windows: at.map(([y, x, wt]) => [y - pad, x - pad, pad, pad, p - pad, p - pad, wt]) };
}

function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : r;
}

function cuts(size, n) {  // Python's round(i * size / n)
  const c = [];
  for (let i = 0; i <= n; i++) c.push(roundHalfEven((i * size) / n));
  return c;
}

function cellsPlan(h, w, t, batch) {
  const halo = t.halo;
  let rows = Math.ceil(h / t.cell_max), cols = Math.ceil(w / t.cell_max);
  if (batch > 1) {
    const r0 = rows, c0 = cols;
    let best = null;
    for (let r = r0; r <= r0 + t.grid_slack; r++) {
      for (let c = c0; c <= c0 + t.grid_slack; c++) {
        if (!(r === r0 && c === c0) && !(Math.floor(h / r) >= t.min_cell && Math.floor(w / c) >= t.min_cell)) continue;
        const cost = Math.ceil((r * c) / batch) * batch * (Math.ceil(h / r) + 2 * halo) * (Math.ceil(w / c) + 2 * halo);
        if (best === null || cost < best[0] || (cost === best[0] && r * c < best[1])) { best = [cost, r * c]; rows = r; cols = c; }
      }
    }
  }
  const yc = cuts(h, rows), xc = cuts(w, cols);
  let chMax = 0, cwMax = 0;
  for (let i = 0; i < rows; i++) chMax = Math.max(chMax, yc[i + 1] - yc[i]);
  for (let j = 0; j < cols; j++) cwMax = Math.max(cwMax, xc[j + 1] - xc[j]);
  const wh = chMax + 2 * halo, ww = cwMax + 2 * halo;
  // border "clamp": windows stay inside the image (the halo moves inwards), see docs/contract.md
  const place = (start, win, size) => Math.min(Math.max(0, start - halo), Math.max(0, size - win));
  const windows = [];
  for (let i = 0; i < rows; i++) {
    const wy = place(yc[i], wh, h);
    for (let j = 0; j < cols; j++) {
      const wx = place(xc[j], ww, w);
      windows.push([wy, wx, yc[i] - wy, xc[j] - wx, yc[i + 1] - wy, xc[j + 1] - wx, 1]);
    }
  }
  return { wh, ww, overlapping: false, windows };
}

export function makePlan(mode, h, w, semantics, batch) {
  const t = semantics.tiling[mode];
  if (!t || h < t.whole_image_if_side_below || w < t.whole_image_if_side_below) return wholePlan(h, w);
  return mode === "reference" ? referencePlan(h, w, t) : cellsPlan(h, w, t, batch);
}

export function planPad(plan, h, w) {
  let p = 0;
  for (const [y, x] of plan.windows) p = Math.max(p, -y, -x, y + plan.wh - h, x + plan.ww - w);
  return p;
}

function paddedIndex(i, n, reflect) {  // numpy 'reflect' (edge not repeated) or 'symmetric'
  if (reflect) { i = Math.abs(i); return i >= n ? 2 * (n - 1) - i : i; }
  if (i < 0) i = -i - 1;
  return i >= n ? 2 * n - 1 - i : i;
}

// Colour per contract section 2 (RGB models: RGB; grey models: Pillow's luma); alpha is ignored.
function toPlanes(img, c) {
  const n = img.width * img.height, x = new Float32Array(c * n), d = img.rgba;
  for (let i = 0; i < n; i++) {
    if (c === 3) for (let k = 0; k < 3; k++) x[k * n + i] = Math.fround(d[4 * i + k] / 255);
    else x[i] = Math.fround(((d[4 * i] * 19595 + d[4 * i + 1] * 38470 + d[4 * i + 2] * 7471 + 0x8000) >>> 16) / 255);
  }
  return x;
}

// Windows `ids` of the plan cut from the padded image into x [n, c, wh, ww] and valid [n, 1, wh, ww];
// a fixed batch longer than ids is filled with copies of the last window (contract section 1).
function cutWindows(src, plan, ids, n) {
  const { x, c, h, w, reflect } = src, wh = plan.wh, ww = plan.ww;
  const xs = new Float32Array(n * c * wh * ww), vs = new Float32Array(n * wh * ww);
  for (let b = 0; b < n; b++) {
    const [ty, tx] = plan.windows[ids[Math.min(b, ids.length - 1)]];
    for (let i = 0; i < wh; i++) {
      const yy = ty + i, sy = paddedIndex(yy, h, reflect);
      for (let j = 0; j < ww; j++) {
        const xx = tx + j, sx = paddedIndex(xx, w, reflect);
        for (let k = 0; k < c; k++) xs[((b * c + k) * wh + i) * ww + j] = x[(k * h + sy) * w + sx];
        vs[(b * wh + i) * ww + j] = yy >= 0 && yy < h && xx >= 0 && xx < w ? 1 : 0;
      }
    }
  }
  return { xs, vs, n };
}

// The kept part of each window's output y into the accumulator (blended when windows overlap).
function keep(acc, plan, ids, y) {
  const { out, weight, c, s, oh, ow } = acc, yh = plan.wh * s, yw = plan.ww * s;
  ids.forEach((id, b) => {
    const [ty, tx, ky0, kx0, ky1, kx1, wt] = plan.windows[id];
    const w32 = Math.fround(wt);
    for (let i = ky0 * s; i < ky1 * s; i++) {
      const oy = ty * s + i;
      for (let j = kx0 * s; j < kx1 * s; j++) {
        const ox = tx * s + j;
        for (let k = 0; k < c; k++) {
          const v = y[((b * c + k) * yh + i) * yw + j], o = (k * oh + oy) * ow + ox;
          out[o] = weight ? out[o] + Math.fround(w32 * v) : v;  // Float32Array stores round to float32
        }
        if (weight) weight[oy * ow + ox] += w32;
      }
    }
  });
}

async function runWindows(ort, file, src, plan, ids, n, calls) {
  const { xs, vs } = cutWindows(src, plan, ids, n);
  const result = await file.session.run({
    x: new ort.Tensor("float32", xs, [n, src.c, plan.wh, plan.ww]), valid: new ort.Tensor("float32", vs, [n, 1, plan.wh, plan.ww]),
  });
  calls[file.file] = (calls[file.file] || 0) + 1;
  return result.y.data;
}

// One call's windows through the engine: a full fixed batch (or any number, for a dynamic batch) to the
// main file; fewer than the fixed batch to batch_one one at a time, else filled to the batch.
async function runCall(ort, engine, src, plan, ids, acc, calls) {
  const { main, single, staticBatch } = engine;
  if (single && ids.length < staticBatch) {
    for (const id of ids) keep(acc, plan, [id], await runWindows(ort, single, src, plan, [id], 1, calls));
  } else {
    keep(acc, plan, ids, await runWindows(ort, main, src, plan, ids, staticBatch || ids.length, calls));
  }
}

function toRgba(acc) {
  const { out, weight, c, oh, ow } = acc, rgba = new Uint8ClampedArray(4 * oh * ow), n = oh * ow;
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < 3; k++) {
      let v = out[(c === 3 ? k : 0) * n + i];
      if (weight) v = Math.fround(v / weight[i]);
      rgba[4 * i + k] = roundHalfEven(Math.min(255, Math.max(0, Math.fround(v * 255))));
    }
    rgba[4 * i + 3] = 255;
  }
  return rgba;
}

// The image restored per docs/contract.md; `calls` counts the engine calls per file.
export async function restore(ort, engine, img, mode, onProgress = () => {}) {
  const { manifest, staticBatch } = engine;
  const c = manifest.semantics.channels, s = manifest.semantics.scale;
  const h = img.height, w = img.width;
  const plan = makePlan(mode, h, w, manifest.semantics, staticBatch);
  const pad = planPad(plan, h, w);
  const src = { x: toPlanes(img, c), c, h, w, reflect: pad < h && pad < w };
  const oh = h * s, ow = w * s;
  const acc = { out: new Float32Array(c * oh * ow), weight: plan.overlapping ? new Float32Array(oh * ow) : null, c, s, oh, ow };
  const call = staticBatch || 16, calls = {};
  for (let first = 0; first < plan.windows.length; first += call) {
    const ids = [];
    for (let id = first; id < Math.min(first + call, plan.windows.length); id++) ids.push(id);
    await runCall(ort, engine, src, plan, ids, acc, calls);
    onProgress(first + ids.length, plan.windows.length);
  }
  return { width: ow, height: oh, rgba: toRgba(acc), plan, pad, calls };
}
