#!/usr/bin/env python3
"""Can ONNX Runtime run a sparse NSR model in int8 near its int8 dense twin? A whole-model probe on real
patches, 2 threads, interleaved rounds (nsr_deploy.core.timing):

    python tools/ort_int8_model.py [MODEL]          # a bundled model name or checkpoint (default sr-x2)

Engines, all on the same 16 patches of the model's patch size:

* ``twin fp32`` / ``twin int8``: the dense twin (k = d = 1, the bench's), fp32 and quantised by ONNX
  Runtime's own ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations; ORT fuses it into
  QLinearConv);
* ``sparse fp32 nchwc-at-load``: what the ONNX Runtime runner runs for the portable grouped model;
* ``sparse int8 quantize_static``: ``quantize_static`` on the sparse grouped model with the routing
  (pooling, MLP, softmax, mixing) left fp32: it cannot quantise a conv whose bias is computed, so only the
  image-facing convs become int8;
* ``sparse int8 qlinear``: every per-patch conv rewritten by hand as QuantizeLinear(x) ->
  QLinearConv(x_q, QuantizeLinear(mixed kernel)) -> DequantizeLinear -> + bias, with ranges calibrated on
  the patches (a per-tensor weight scale: speed does not depend on it).

Prints each engine's median against the twin at the same precision, and ONNX Runtime's own per-op
profile of the qlinear graph and the int8 twin (where the time goes).
"""

import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

THREADS = 2
RUNS = 20


def patches(cfg) -> np.ndarray:
    from PIL import Image

    from nsr_deploy.assets import sample_paths

    img = np.asarray(Image.open(sample_paths()[0]).convert("RGB"), np.float32) / 255
    p = cfg.patch_size
    tiles = [img[i * p:(i + 1) * p, j * p:(j + 1) * p].transpose(2, 0, 1) for i in range(4) for j in range(4)]
    return np.ascontiguousarray(np.stack(tiles))


class Reader:
    """The calibration patches, once, as ONNX Runtime's calibration reader wants them."""

    def __init__(self, x, valid):
        self.feeds = [{"x": x, "valid": valid}]

    def get_next(self):
        return self.feeds.pop() if self.feeds else None


def quantize(src: Path, out: Path, x, valid, nodes=None, exclude=()) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(out), Reader(x, valid), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                    nodes_to_quantize=nodes, nodes_to_exclude=list(exclude))
    return out


def qlinear_rewrite(src: Path, out: Path, x, valid) -> Path:
    """Every conv with run-time weights as QLinearConv on quantised inputs and kernels, bias added after."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name for i in g.initializer}
    convs = [n for n in g.node if n.op_type == "Conv" and n.input[1] not in inits]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    watched = [t for n in convs for t in (n.input[0], n.input[1], n.output[0])]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in watched)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    seen = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x, "valid": valid})))
    extra, replace = [], {}

    def const(name, value):
        extra.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def affine(t):  # uint8 scale and zero point of a calibrated range (0 inside it)
        lo, hi = min(0.0, float(t.min())), max(0.0, float(t.max()))
        scale = (hi - lo) / 255 or 1.0
        return np.float32(scale), np.uint8(round(-lo / scale))

    for i, n in enumerate(convs):
        x_in, w_in = n.input[0], n.input[1]
        bias = n.input[2] if len(n.input) > 2 else None
        p = f"q{i}_"
        sx, zx = affine(seen[x_in])
        sy, zy = affine(seen[n.output[0]])
        const(p + "sx", sx), const(p + "zx", zx), const(p + "sy", sy), const(p + "zy", zy)
        const(p + "sw", np.float32(np.abs(seen[w_in]).max() / 127 or 1.0)), const(p + "zw", np.int8(0))
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        nodes = [helper.make_node("QuantizeLinear", [x_in, p + "sx", p + "zx"], [p + "xq"]),
                 helper.make_node("QuantizeLinear", [w_in, p + "sw", p + "zw"], [p + "wq"]),
                 helper.make_node("QLinearConv", [p + "xq", p + "sx", p + "zx", p + "wq", p + "sw", p + "zw",
                                                  p + "sy", p + "zy"], [p + "yq"], **attrs),
                 helper.make_node("DequantizeLinear", [p + "yq", p + "sy", p + "zy"],
                                  [p + "y"] if bias else [n.output[0]])]
        if bias:
            const(p + "shape", np.array([1, -1, 1, 1], np.int64))
            nodes += [helper.make_node("Reshape", [bias, p + "shape"], [p + "b"]),
                      helper.make_node("Add", [p + "y", p + "b"], [n.output[0]])]
        replace[id(n)] = nodes
    old = list(g.node)
    del g.node[:]
    for n in old:
        g.node.extend(replace.get(id(n), [n]))
    g.initializer.extend(extra)
    onnx.save(model, str(out))
    return out


def profile(path: Path, x, valid) -> list[tuple[str, float]]:
    """ONNX Runtime's own per-op kernel time (ms per call, mean of 10)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling, opts.intra_op_num_threads, opts.log_severity_level = True, THREADS, 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, {"x": x, "valid": valid})
    for _ in range(10):
        sess.run(None, {"x": x, "valid": valid})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 13 / 1000
    return per_op.most_common(6)


def main(model: str = "sr-x2") -> None:
    import onnx

    from nsr_deploy.bench.engines import EngineFactory
    from nsr_deploy.core.machine import describe_cpu
    from nsr_deploy.core.timing import measure_interleaved
    from nsr_deploy.exporters.onnx.routing import routing_nodes
    from nsr_deploy.models import load_model
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    loaded = load_model(model)
    cfg = loaded.config
    scratch = Path(tempfile.mkdtemp(prefix="ort-int8-"))
    factory = EngineFactory(loaded, THREADS, scratch, patch_batch=16)
    twin, sparse = factory.onnx_path("matmul", twin=True), factory.onnx_path("grouped")
    x = patches(cfg)
    valid = np.ones((len(x), 1, cfg.patch_size, cfg.patch_size), np.float32)
    routing = routing_nodes(onnx.load(str(sparse))).nodes
    files = {"twin fp32": (twin, False), "twin int8": (quantize(twin, scratch / "twin-int8.onnx", x, valid), False),
             "sparse fp32 nchwc-at-load": (sparse, True),
             "sparse int8 quantize_static": (quantize(sparse, scratch / "qs.onnx", x, valid, exclude=routing), False),
             "sparse int8 qlinear": (qlinear_rewrite(sparse, scratch / "ql.onnx", x, valid), False)}
    runners = {k: OrtRunner(str(p), THREADS, specialise=s).activate() for k, (p, s) in files.items()}
    timings = measure_interleaved({k: (lambda r=r: r.infer(x, valid)) for k, r in runners.items()}, RUNS, 2)
    print(f"{describe_cpu()}, {THREADS} threads; {model}: 16 patches {cfg.patch_size}x{cfg.patch_size}, "
          f"median of {RUNS}, interleaved")
    for k, t in timings.items():
        base = timings["twin int8" if "int8" in k else "twin fp32"].median
        print(f"  {k:30s} {t.median:8.2f} ms   / twin at its precision {t.median / base:5.2f}")
    for k in ("sparse int8 qlinear", "twin int8"):
        print(f"  profile {k}: " + ", ".join(f"{op} {ms:.2f} ms" for op, ms in profile(files[k][0], x, valid)))


if __name__ == "__main__":
    main(*sys.argv[1:])
