// The page: drop an image, restore it with nsr.js on the chosen execution provider, show before and after.
// window.nsrRestoreUrl and window.nsrResults are the hooks the headless test drives
// (tests/examples/test_web_example.py).
import { loadExport, restore } from "./nsr.js";

// ORT web builds: the plain WebAssembly one, and the one with the WebGPU execution provider
const BUILDS = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };

// ORT says where it placed each node only in its verbose session log, written by its wasm module to
// console.error: while sessions are created those lines are collected (and kept off the console).
let collecting = null;
const consoleError = console.error.bind(console);
console.error = (...args) => (collecting ? collecting.push(args.join(" ")) : consoleError(...args));

const status = document.getElementById("status");
const results = window.nsrResults = [];
let engine = null, engineKey = null, lastBlob = null;

async function ortFor(ep) {
  const ort = await import(`./node_modules/onnxruntime-web/dist/${BUILDS[ep]}`);
  ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain static server lacks
  return ort;
}

// The adapter ORT will use, asked for here so that the page can name it (ORT takes it from env.webgpu).
async function adapterFor(ort) {
  if (!navigator.gpu) throw new Error("this browser has no WebGPU (navigator.gpu is missing)");
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) throw new Error("WebGPU offers no adapter here");
  ort.env.webgpu.adapter = adapter;
  const { vendor, architecture, device, description } = adapter.info;
  return { vendor, architecture, device, description };
}

// Per session, in creation order: {nodes: {EP: count}, ops: {EP: {op type: count}}} from ORT's
// "Node placements" block (the per-node lines are listed only when more than one EP has nodes).
function placements(lines) {
  const found = [];
  for (const line of lines) {
    if (line.includes("Node placements")) found.push({ nodes: {}, ops: {} });
    const at = /placed on \[(\w+)\]\. Number of nodes: (\d+)/.exec(line);
    if (at) { found.at(-1).nodes[at[1]] = Number(at[2]); found.at(-1).ops[at[1]] = {}; found.at(-1).ep = at[1]; }
    const node = /VerifyEachNodeIsAssignedToAnEp\]\s{3}(\w+) \(/.exec(line);
    if (node && found.length) { const ops = found.at(-1).ops[found.at(-1).ep]; ops[node[1]] = (ops[node[1]] || 0) + 1; }
  }
  return found.map(({ nodes, ops }) => ({ nodes, ops }));
}

async function load(base, ep) {
  const ort = await ortFor(ep);
  const adapter = ep === "webgpu" ? await adapterFor(ort) : null;
  collecting = [];
  try {
    const eng = await loadExport(ort, new URL(base, location.href), ep, { logSeverityLevel: 0 });
    const found = placements(collecting);
    eng.placements = Object.fromEntries([eng.main, eng.single].filter(Boolean).map((f, i) => [f.file, found[i]]));
    return { ...eng, ort, adapter };
  } finally {
    collecting = null;
  }
}

async function engineFor(base, ep) {
  if (!engine || engineKey !== `${ep} ${base}`) {
    status.textContent = `loading ${base} on ${ep} …`;
    engine = null;
    engine = await load(base, ep);
    engineKey = `${ep} ${base}`;
  }
  return engine;
}

async function decode(blob) {  // the file's own 8-bit samples: no colour management, no premultiplying
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  return { width: data.width, height: data.height, rgba: data.data };
}

function show(canvas, img, scale = 1) {
  canvas.width = img.width * scale;
  canvas.height = img.height * scale;
  const ctx = canvas.getContext("2d");
  const tmp = new OffscreenCanvas(img.width, img.height);
  tmp.getContext("2d").putImageData(new ImageData(img.rgba, img.width, img.height), 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, 0, 0, canvas.width, canvas.height);
}

function where(eng) {
  const gpu = eng.adapter ? ` (${eng.adapter.vendor} ${eng.adapter.architecture})` : "";
  const nodes = eng.placements[eng.main.file]?.nodes || {};
  return `${eng.ep}${gpu}: ` + Object.entries(nodes).map(([ep, n]) => `${n} nodes on ${ep}`).join(", ");
}

async function run(blob) {
  lastBlob = blob;
  const eng = await engineFor(document.getElementById("base").value, document.getElementById("ep").value);
  const mode = document.getElementById("tiling").value;
  const img = await decode(blob);
  show(document.getElementById("before"), img, eng.manifest.semantics.scale);
  const t0 = performance.now();
  const out = await restore(eng.ort, eng, img, mode, (done, all) => { status.textContent = `${done} / ${all} windows`; });
  const seconds = (performance.now() - t0) / 1000;
  show(document.getElementById("after"), out);
  const calls = Object.entries(out.calls).map(([file, n]) => `${n} x ${file}`).join(", ");
  status.textContent = `${img.width}x${img.height} -> ${out.width}x${out.height}, ${mode} tiling, ` +
    `${out.plan.windows.length} windows of ${out.plan.ww}x${out.plan.wh} (${calls}), ${seconds.toFixed(2)} s; ${where(eng)}`;
  results.push({ tiling: mode, windows: out.plan.windows, calls: out.calls, ep: eng.ep });
  return { out, seconds, eng };
}

function runAndReport(blob) {
  run(blob).catch((err) => { status.textContent = `error: ${err}`; });
}

window.nsrRestoreUrl = async (url, mode) => {
  document.getElementById("tiling").value = mode;
  const { out, seconds, eng } = await run(await (await fetch(url)).blob());
  let bin = "";
  for (let i = 0; i < out.rgba.length; i++) bin += String.fromCharCode(out.rgba[i]);
  return { width: out.width, height: out.height, rgba: btoa(bin), seconds, windows: out.plan.windows,
           window: [out.plan.wh, out.plan.ww], pad: out.pad, calls: out.calls, ep: eng.ep,
           adapter: eng.adapter, placements: eng.placements };
};

// Seconds of one full call of the main file (its fixed batch, or 16 windows for a dynamic one) of side x side
// windows: what a whole small image's cost per pixel is read against (tools/per_pixel_cost.py).
window.nsrTimeFullCall = async (side) => {
  const eng = await engineFor(document.getElementById("base").value, document.getElementById("ep").value);
  const c = eng.manifest.semantics.channels, n = eng.staticBatch || 16, { Tensor } = eng.ort;
  const x = new Tensor("float32", new Float32Array(n * c * side * side).fill(0.5), [n, c, side, side]);
  const valid = new Tensor("float32", new Float32Array(n * side * side).fill(1), [n, 1, side, side]);
  const t0 = performance.now();
  await eng.main.session.run({ x, valid });
  return { seconds: (performance.now() - t0) / 1000, windows: n };
};

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) runAndReport(e.dataTransfer.files[0]);
});
document.getElementById("file").addEventListener("change", (e) => {
  if (!e.target.files.length) return;
  runAndReport(e.target.files[0]);
  e.target.value = "";  // so that picking the same file again is a change too
});
// the last image again, with the new tiling or execution provider
document.getElementById("tiling").addEventListener("change", () => { if (lastBlob) runAndReport(lastBlob); });
document.getElementById("ep").addEventListener("change", () => { if (lastBlob) runAndReport(lastBlob); });

const params = new URLSearchParams(location.search);  // index.html?export=FOLDER/&ep=webgpu
if (params.get("export")) document.getElementById("base").value = params.get("export");
if (params.get("ep") in BUILDS) document.getElementById("ep").value = params.get("ep");
engineFor(document.getElementById("base").value, document.getElementById("ep").value).then(
  (eng) => { status.textContent = `ready: drop an image (${where(eng)})`; window.nsrReady = true; },
  (err) => { status.textContent = `error: ${err}`; window.nsrReady = "error: " + err; });
