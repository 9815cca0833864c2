// Runs an ONNX model in onnxruntime-node and onnxruntime-web (WebAssembly, in Node) on raw float32
// inputs and writes each runtime's output, for tests/test_js_runtimes.py to compare with Python.
// usage: node run_onnx.js MODEL X.bin X_SHAPE_JSON VALID.bin VALID_SHAPE_JSON OUT_PREFIX
const fs = require('fs');

function floats(path) {
  const buf = fs.readFileSync(path);
  return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
}

async function run(name, model, feeds) {
  const ort = require(name);
  if (name === 'onnxruntime-web') {
    ort.env.wasm.numThreads = 1;
  }
  const session = await ort.InferenceSession.create(fs.readFileSync(model));
  const inputs = {};
  for (const [key, [data, shape]] of Object.entries(feeds)) {
    inputs[key] = new ort.Tensor('float32', data, shape);
  }
  const result = await session.run(inputs);
  return Buffer.from(result.y.data.buffer, result.y.data.byteOffset, result.y.data.byteLength);
}

async function main() {
  const [model, xPath, xShape, vPath, vShape, out] = process.argv.slice(2);
  const feeds = { x: [floats(xPath), JSON.parse(xShape)], valid: [floats(vPath), JSON.parse(vShape)] };
  for (const name of ['onnxruntime-node', 'onnxruntime-web']) {
    fs.writeFileSync(`${out}.${name}.bin`, await run(name, model, feeds));
    console.log(`${name}: ok`);
  }
}

main().catch((e) => { console.error(String(e && e.message || e)); process.exit(1); });
