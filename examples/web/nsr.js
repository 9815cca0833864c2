// docs/contract.md (version 1) in JavaScript: window lists, padding, valid, blending, rounding, with an
// onnxruntime-web session. Images are {width, height, rgba: Uint8ClampedArray} (canvas ImageData).

export async function loadExport(ort, baseUrl) {
  const manifest = await (await fetch(new URL("nsr.json", baseUrl))).json();
  if (manifest.contract_version !== 1) throw new Error(`contract version ${manifest.contract_version} (this page implements 1)`);
  const onnx = manifest.targets.onnx;
  if (onnx.portable === false) throw new Error("model.onnx is ONNX-Runtime-CPU only (conv form nchwc): export a portable form");
  const session = await ort.InferenceSession.create(new URL(onnx.file, baseUrl).href, { executionProviders: ["wasm"] });
  return { manifest, session, staticBatch: manifest.io.static_batch || 0 };
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

export async function restore(ort, engine, img, mode, onProgress = () => {}) {
  const { manifest, session, staticBatch } = engine;
  const c = manifest.semantics.channels, s = manifest.semantics.scale;
  const h = img.height, w = img.width;
  const plan = makePlan(mode, h, w, manifest.semantics, staticBatch);
  const pad = planPad(plan, h, w), reflect = pad < h && pad < w;
  const x = toPlanes(img, c);
  const oh = h * s, ow = w * s;
  const out = new Float32Array(c * oh * ow), weight = plan.overlapping ? new Float32Array(oh * ow) : null;
  const call = staticBatch || 16, wh = plan.wh, ww = plan.ww;
  for (let first = 0; first < plan.windows.length; first += call) {
    const m = Math.min(call, plan.windows.length - first), n = staticBatch || m;
    const xs = new Float32Array(n * c * wh * ww), vs = new Float32Array(n * wh * ww);
    for (let b = 0; b < n; b++) {
      const [ty, tx] = plan.windows[first + Math.min(b, m - 1)];  // a fixed batch: filled with the last window
      for (let i = 0; i < wh; i++) {
        const yy = ty + i, sy = paddedIndex(yy, h, reflect);
        for (let j = 0; j < ww; j++) {
          const xx = tx + j, sx = paddedIndex(xx, w, reflect);
          for (let k = 0; k < c; k++) xs[((b * c + k) * wh + i) * ww + j] = x[(k * h + sy) * w + sx];
          vs[(b * wh + i) * ww + j] = yy >= 0 && yy < h && xx >= 0 && xx < w ? 1 : 0;
        }
      }
    }
    const result = await session.run({
      x: new ort.Tensor("float32", xs, [n, c, wh, ww]), valid: new ort.Tensor("float32", vs, [n, 1, wh, ww]),
    });
    const y = result.y.data, yh = wh * s, yw = ww * s;
    for (let b = 0; b < m; b++) {
      const [ty, tx, ky0, kx0, ky1, kx1, wt] = plan.windows[first + b];
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
    }
    onProgress(Math.min(plan.windows.length, first + m), plan.windows.length);
  }
  const rgba = new Uint8ClampedArray(4 * oh * ow), n = oh * ow;
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < 3; k++) {
      let v = out[(c === 3 ? k : 0) * n + i];
      if (weight) v = Math.fround(v / weight[i]);
      rgba[4 * i + k] = roundHalfEven(Math.min(255, Math.max(0, Math.fround(v * 255))));
    }
    rgba[4 * i + 3] = 255;
  }
  return { width: ow, height: oh, rgba, plan, pad };
}
