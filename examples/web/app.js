// The page: drop an image, restore it with nsr.js, show before and after. window.nsrRestoreUrl is the
// hook the headless test drives (tests/test_web_example.py).
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { loadExport, restore } from "./nsr.js";

ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain static server lacks
const status = document.getElementById("status");
let engine = null, engineBase = null;

async function engineFor(base) {
  if (!engine || engineBase !== base) {
    status.textContent = `loading ${base} …`;
    engine = await loadExport(ort, new URL(base, location.href));
    engineBase = base;
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

async function run(blob) {
  const eng = await engineFor(document.getElementById("base").value);
  const mode = document.getElementById("tiling").value;
  const img = await decode(blob);
  const scale = eng.manifest.semantics.scale;
  show(document.getElementById("before"), img, scale);
  const t0 = performance.now();
  const out = await restore(ort, eng, img, mode, (done, all) => { status.textContent = `${done} / ${all} windows`; });
  const seconds = (performance.now() - t0) / 1000;
  show(document.getElementById("after"), out);
  status.textContent = `${img.width}x${img.height} -> ${out.width}x${out.height}, ${mode} tiling, ` +
    `${out.plan.windows.length} windows of ${out.plan.ww}x${out.plan.wh}, ${seconds.toFixed(2)} s`;
  return { out, seconds };
}

window.nsrRestoreUrl = async (url, mode) => {
  document.getElementById("tiling").value = mode;
  const { out, seconds } = await run(await (await fetch(url)).blob());
  let bin = "";
  for (let i = 0; i < out.rgba.length; i++) bin += String.fromCharCode(out.rgba[i]);
  return { width: out.width, height: out.height, rgba: btoa(bin), seconds, windows: out.plan.windows,
           window: [out.plan.wh, out.plan.ww], pad: out.pad };
};

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) run(e.dataTransfer.files[0]).catch((err) => { status.textContent = `error: ${err}`; });
});
document.getElementById("file").addEventListener("change", (e) => {
  if (e.target.files.length) run(e.target.files[0]).catch((err) => { status.textContent = `error: ${err}`; });
});
const wanted = new URLSearchParams(location.search).get("export");  // index.html?export=FOLDER/
if (wanted) document.getElementById("base").value = wanted;
engineFor(document.getElementById("base").value).then(
  () => { status.textContent = "ready: drop an image"; window.nsrReady = true; },
  (err) => { status.textContent = `error: ${err}`; window.nsrReady = "error: " + err; });
