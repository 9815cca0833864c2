#!/usr/bin/env python3
"""Which int8 formulations of the NSR sparse conv run as int8 kernels in OpenVINO's CPU plugin, and
how fast, and what no per-patch graph can beat at each precision (issue 18). Timed in interleaved rounds
(nsr_deploy.core.timing), 2 threads:

    python tools/int8_study.py layer     # one sparse conv (64->64, k=4, d=16, 16 patches 48x48)
    python tools/int8_study.py model     # EDSR+NSR x2 (16 blocks, 64 units, k=4, d=16), 16 patches 48x48
    python tools/int8_study.py floor [f32|bf16|int8]   # 16 residual blocks of convs alone: the floor
    python tools/int8_study.py ort       # ONNX Runtime: QLinearConv / ConvInteger with run-time weights

``layer`` prints, per formulation, the conv / matmul kernels the compiled model runs (oneDNN's
primitive names: ``*_I8`` / ``*_i8`` is int8, ``*_f32`` float) and its latency against the dense
conv (fp32 = 1.00) and the int8 dense conv. Formulations: ``grouped`` the per-patch kernel mixed at
run time then a GroupConvolution (one group per patch) with FakeQuantize on input and weights;
``densemix`` all k kernels as one constant-weight int8 conv, mixed after (k x the FLOPs);
``matmul`` im2col and a batched u8/i8 x i8 MatMul with the run-time weights. ``-signed``: the conv
input is the signed residual stream (``conv1`` of a block) instead of a ReLU output.

``model`` times the dense twin (fp32; int8 by NNCF as the export does), the sparse ``grouped`` export
(fp32; the NNCF int8 of before: head/tail/skip only) and the int8 graph of
``nsr_deploy.exporters.openvino.quantize.split_graph`` (calibrated on the bundled samples) in its two layouts,
with its image-facing layers (head, tail, skip) int8 and float.
"""

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("NNCF_CI", "1")
THREADS = 2
CONFIG = {"INFERENCE_NUM_THREADS": THREADS, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def kernels(compiled) -> list[tuple[str, str]]:
    """(layer type, oneDNN primitive) of every conv / matmul the plugin runs."""
    out = set()
    for n in compiled.get_runtime_model().get_ordered_ops():
        info = n.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "MatMul", "FullyConnected"):
            out.add((info["layerType"].astype(str), info["primitiveType"].astype(str)))
    return sorted(out)


def report(timings: dict, base: str, base8: str) -> None:
    b, b8 = timings[base].median, timings[base8].median
    print(f"{'engine':34s} {'median ms':>10s} {'vs fp32':>8s} {'vs int8':>8s}")
    for k, v in timings.items():
        print(f"{k:34s} {v.median:10.2f} {v.median / b:8.2f} {v.median / b8:8.2f}")
    print("load", [round(x, 2) for x in os.getloadavg()])


def layer_study() -> None:
    import openvino as ov
    import openvino.opset13 as ops

    from nsr_deploy.core.timing import measure_interleaved

    core = ov.Core()
    N, C, H, W, K, D = 16, 64, 48, 48, 4, 16
    rng = np.random.default_rng(0)
    def c(v, dt=np.float32): return ops.constant(np.asarray(v, dt))
    def fq(x, lo, hi, levels=256, olo=None, ohi=None):
        return ops.fake_quantize(x, c(lo), c(hi), c(lo if olo is None else olo), c(hi if ohi is None else ohi), levels)
    Wk = (rng.standard_normal((K, C, C, 3, 3)) * 0.05).astype(np.float32)   # k kernels, [k, cout, cin, 3,3]
    wmax = np.abs(Wk).max(axis=(0, 2, 3, 4))                                 # per cout bound of any convex mix
    mlp = (rng.standard_normal((C, K * D)) * 0.5).astype(np.float32)
    def gamma_of(x4):  # x4 [N, C, H, W] -> softmax [N, D, K]
        pooled = ops.reduce_mean(x4, c([2, 3], np.int64), False)
        logits = ops.reshape(ops.matmul(pooled, c(mlp), False, False), c([N, D, K], np.int64), False)
        return ops.softmax(logits, 2)
    def mixed_weights(g):  # g [N, D, K] -> [N, C, C, 3, 3] (bias ignored here)
        stacked = Wk.reshape(K, D, C // D, C * 9).transpose(1, 0, 2, 3).reshape(D, K, -1)
        w = ops.matmul(ops.unsqueeze(g, c([2], np.int64)), c(stacked), False, False)  # [N, D, 1, F]
        return ops.reshape(w, c([N, C, C, 3, 3], np.int64), False)
    def model(kind):
        signed = "signed" in kind
        x = ops.parameter([N, C, H, W], np.float32, name="x")
        xin = x if signed else ops.relu(x)   # the conv input: relu output (u8) or residual stream (signed)
        if kind.startswith("twin"):
            w = c(Wk[0])
            if "int8" in kind:
                xq = fq(xin, -1.0, 1.0) if signed else fq(xin, 0, 2.0)
                r = wmax.reshape(C, 1, 1, 1)
                y = ops.convolution(xq, fq(w, -r, r, 255), [1, 1], [1, 1], [1, 1], [1, 1])
            else:
                y = ops.convolution(xin, w, [1,1],[1,1],[1,1],[1,1])
            return ov.Model([y], [x])
        g = gamma_of(xin)
        if kind.startswith("grouped"):
            w = mixed_weights(g)
            xf = ops.reshape(xin, c([1, N * C, H, W], np.int64), False)
            if "int8" in kind:
                r = np.tile(wmax, N).reshape(N, C, 1, 1, 1)
                wq = fq(w, -r, r, 255)
                if signed:
                    xp = ops.pad(xf, c([0,0,1,1], np.int64), c([0,0,1,1], np.int64), "constant", c(0.0))
                    y = ops.group_convolution(fq(xp, -1.0, 1.0, 256, 0.0, 2.0), wq, [1,1],[0,0],[0,0],[1,1])
                    corr = ops.reshape(ops.reduce_sum(w, c([2, 3, 4], np.int64), False), c([1, N * C, 1, 1], np.int64),
                                       False)
                    y = ops.subtract(y, ops.multiply(corr, c(1.0)))
                else:
                    y = ops.group_convolution(fq(xf, 0, 2.0), wq, [1,1],[1,1],[1,1],[1,1])
            else:
                y = ops.group_convolution(xf, w, [1,1],[1,1],[1,1],[1,1])
            return ov.Model([ops.reshape(y, c([N, C, H, W], np.int64), False)], [x])
        if kind.startswith("densemix"):
            wall = c(Wk.reshape(K * C, C, 3, 3))
            r = np.tile(wmax, K).reshape(K * C, 1, 1, 1)
            xq = fq(xin, -1.0, 1.0) if signed else fq(xin, 0, 2.0)
            yall = ops.convolution(xq, fq(wall, -r, r, 255), [1,1],[1,1],[1,1],[1,1])  # [N, K*C, H, W]
            yall = ops.reshape(yall, c([N, K, D, C // D, H * W], np.int64), False)
            gg = ops.reshape(ops.transpose(g, c([0, 2, 1], np.int64)), c([N, K, D, 1, 1], np.int64), False)
            y = ops.reduce_sum(ops.multiply(yall, gg), c([1], np.int64), False)
            return ov.Model([ops.reshape(y, c([N, C, H, W], np.int64), False)], [x])
        if kind.startswith("matmul"):  # im2col (NHWC), u8/i8 x i8 batched MatMul: [N, HW, 9C] @ [N, 9C, C]
            xt = ops.transpose(xin, c([0, 2, 3, 1], np.int64))
            xp = ops.pad(xt, c([0,1,1,0], np.int64), c([0,1,1,0], np.int64), "constant", c(0.0))
            xq = fq(xp, -128/127., 1.0) if signed else fq(xp, 0, 2.0)
            step = c([1, 1, 1, 1], np.int64)
            taps = [ops.slice(xq, c([0, dy, dx, 0], np.int64), c([N, dy + H, dx + W, C], np.int64), step)
                    for dy in range(3) for dx in range(3)]
            cols = ops.reshape(ops.concat(taps, 3), c([N, H * W, 9 * C], np.int64), False)
            w = mixed_weights(g)  # [N, cout, cin, 3, 3] -> [N, (dy,dx,cin), cout]
            wt = ops.reshape(ops.transpose(w, c([0, 3, 4, 2, 1], np.int64)), c([N, 9 * C, C], np.int64), False)
            r = wmax.reshape(1, 1, C)
            y = ops.matmul(cols, fq(wt, -r, r, 255), False, False)  # [N, HW, C]
            return ov.Model([ops.reshape(y, c([N, H, W, C], np.int64), False)], [x])
    kinds = ["twin-fp32", "twin-int8", "grouped-fp32", "grouped-int8", "densemix-int8", "matmul-int8",
             "twin-int8-signed", "grouped-int8-signed", "densemix-int8-signed", "matmul-int8-signed"]
    xin = (rng.standard_normal((N, C, H, W)) * 0.5).astype(np.float32)
    calls = {}
    for k in kinds:
        cm = core.compile_model(model(k), "CPU", CONFIG)
        print(f"{k:22s} {kernels(cm)}", flush=True)
        r = cm.create_infer_request()
        calls[k] = (lambda r=r: r.infer({"x": xin}))
    print("load", [round(x, 2) for x in os.getloadavg()])
    report(measure_interleaved(calls, runs=60, warmup=3, rounds=6), "twin-fp32", "twin-int8")


def model_study() -> None:
    import openvino as ov
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from make_bench_checkpoint import EDSR_NSR_X2

    from nsr_deploy.bench.engines import dense_twin_of
    from nsr_deploy.checks.samples import sample_images
    from nsr_deploy.checks.task import task_of
    from nsr_deploy.core.timing import measure_interleaved
    from nsr_deploy.exporters.openvino.op_roles import classify
    from nsr_deploy.exporters.openvino.quantize import nncf_int8 as q
    from nsr_deploy.exporters.openvino.quantize.sparse_int8 import calibrate
    from nsr_deploy.exporters.openvino.quantize.split_graph import build_graph, weights_of
    from nsr_deploy.exporters.pipeline import ExportOptions, build_ungated
    from nsr_deploy.models.checkpoint import LoadedModel
    from nsr_deploy.models.network import NSRNet

    n, p = 16, 48
    torch.manual_seed(0)
    net = NSRNet(EDSR_NSR_X2).eval()
    with torch.no_grad():  # a peaked softmax, as in a trained network (tools/make_bench_checkpoint.py)
        for name, w in net.named_parameters():
            if "mlp" in name and w.dim() > 1:
                w.normal_(0, 0.5)
    loaded = LoadedModel(net, "edsr-nsr-x2", "built", "0" * 64, "edsr-nsr-x2")
    core = ov.Core()
    task = task_of(loaded)
    tiles = q.calibration_tiles(sample_images(3), task, p, 128)
    batches = q.calibration_batches(tiles, n)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        opts = ExportOptions(conv_form="grouped", patch_batch=n, show_progress=False, threads=THREADS)
        for key, src in (("twin", dense_twin_of(loaded)), ("sparse grouped", loaded)):
            onnx = build_ungated(src, Path(tmp) / key.replace(" ", "-"), "onnx", opts).path
            m = core.read_model(str(onnx))
            m.reshape({"x": [n, 3, p, p], "valid": [n, 1, p, p]})
            models[f"{key} fp32"] = m
            convs = [op.name for op in classify(m) if op.role == "conv"]
            label = "twin int8 (NNCF)" if key == "twin" else "sparse grouped int8 (today)"
            print("quantizing", label, flush=True)
            models[label] = q.quantize(m, batches, convs)
    convs = weights_of(net)
    ranges = calibrate(EDSR_NSR_X2, convs, tiles, n, THREADS)
    facing = ("body.0", "body.17", "skip.0")
    models["sparse split int8 (all convs)"] = build_graph(EDSR_NSR_X2, convs, n, ranges, layout="split")
    models["sparse split int8 (head/tail/skip f32)"] = build_graph(
        EDSR_NSR_X2, convs, n, {k: r for k, r in ranges.items() if k not in facing}, layout="split")
    models["sparse folded int8 (all convs)"] = build_graph(EDSR_NSR_X2, convs, n, ranges, layout="folded")
    x = {"x": tiles[:n], "valid": np.ones((n, 1, p, p), np.float32)}
    calls = {}
    for k, m in models.items():
        cm = core.compile_model(m, "CPU", CONFIG)
        print(f"{k:40s} {kernels(cm)}", flush=True)
        r = cm.create_infer_request()
        calls[k] = (lambda r=r: r.infer(x))
    print("load", [round(v, 2) for v in os.getloadavg()])
    report(measure_interleaved(calls, runs=30, warmup=2, rounds=5), "twin fp32", "twin int8 (NNCF)")


def real_twin_runner(precision: str):
    """The real dense twin of EDSR+NSR x2 (k = d = 1 with the model's shapes: head, tail, upsampling and all),
    built as the bench builds it, in OpenVINO at ``precision``: the reference a floor is read against."""
    sys.path.insert(0, str(Path(__file__).parent))
    from make_bench_checkpoint import EDSR_NSR_X2

    from nsr_deploy.bench.engines import EngineFactory, EngineSpec
    from nsr_deploy.models.checkpoint import LoadedModel
    from nsr_deploy.models.network import NSRNet

    loaded = LoadedModel(NSRNet(EDSR_NSR_X2).eval(), "edsr-nsr-x2", "built", "0" * 64, "edsr-nsr-x2")
    factory = EngineFactory(loaded, THREADS, Path(tempfile.mkdtemp(prefix="floor-twin-")), patch_batch=16)
    spec = EngineSpec("openvino", "matmul", "fp32" if precision == "f32" else precision, twin=True)
    return factory.runner(spec).activate()


def floor_study(precision: str = "int8") -> None:
    """16 residual blocks of 3x3 convs (64 ch, 16 patches 48x48) at ``precision`` (f32, bf16: the CPU
    plugin's hint; int8: u8 x i8 through FakeQuantize), no routing at all: the twin's batched convs vs the
    same convs with per-patch weights (constant, or fed at run time) folded into one GroupConvolution or
    split into one Convolution per patch. What a sparse graph in this runtime cannot beat (before any
    routing: pooling, MLP, softmax, mixing), against the twin at the same precision: the chain's own batched
    convs and the real dense twin of EDSR+NSR x2 (``real twin``: the bench's, with its head, tail and
    upsampling), timed in the same rounds. The floor is read against the real twin."""
    from collections import Counter

    import openvino as ov
    import openvino.opset13 as ops

    from nsr_deploy.core.timing import measure_interleaved

    if precision not in ("f32", "bf16", "int8"):
        raise SystemExit(f"floor: precision is f32, bf16 or int8, not {precision!r}")
    core = ov.Core()
    config = {**CONFIG, "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    N, C, H, W, B = 16, 64, 48, 48, 16
    rng = np.random.default_rng(0)
    def c(v, dt=np.float32): return ops.constant(np.array(v, dt))
    def fq(x, lo, hi, levels=256):
        return ops.fake_quantize(x, c(lo), c(hi), c(lo), c(hi), levels) if precision == "int8" else x
    Wc = (rng.standard_normal((C, C, 3, 3)) * 0.03).astype(np.float32)
    bias = c(np.full((1, C, 1, 1), 0.01))
    def wq(w): return fq(w, -0.2, 0.2, 255)
    def conv_batched(x): return ops.add(ops.convolution(x, wq(c(Wc)), [1,1],[1,1],[1,1],[1,1]), bias)
    def conv_folded(x, w):  # x [1, N*C, H, W]
        y = ops.group_convolution(fq(x, 0, 2.0), wq(w), [1,1],[1,1],[1,1],[1,1])
        return ops.add(y, c(np.full((1, N * C, 1, 1), 0.01)))
    def conv_split(x, w):  # x [N, C, H, W], w [N, C, C, 3, 3]
        xs = ops.split(fq(x, 0, 2.0), c(0, np.int64), N).outputs()
        ws = ops.split(w, c(0, np.int64), N).outputs()
        ys = [ops.convolution(xi, wq(ops.squeeze(wi, c([0], np.int64))), [1, 1], [1, 1], [1, 1], [1, 1])
              for xi, wi in zip(xs, ws)]
        return ops.add(ops.concat(ys, 0), bias)
    def net(kind):
        x = ops.parameter([N, C, H, W], np.float32, name="x")
        params = [x]
        feed = {"x": (rng.standard_normal((N, C, H, W)) * 0.3).astype(np.float32)}
        runtime = "const" not in kind and kind != "batched"
        def weights(i):
            if not runtime:
                return c(np.broadcast_to(Wc, (N, C, C, 3, 3)))
            p = ops.parameter([N, C, C, 3, 3], np.float32, name=f"w{i}")
            params.append(p)
            feed[f"w{i}"] = np.broadcast_to(Wc, (N, C, C, 3, 3)).astype(np.float32).copy()
            return p
        folded = kind.startswith("folded")
        # a float head conv first, as in the model: the chain then starts on the runtime's own layout and
        # precision (fed straight from the f32 input, the bf16 twin paid Reorders and an unfused Add)
        if folded:
            head = c(np.broadcast_to(Wc, (N, C, C, 3, 3)))
            h = ops.group_convolution(ops.reshape(x, c([1, N * C, H, W], np.int64), False), head,
                                      [1, 1], [1, 1], [1, 1], [1, 1])
        else:
            h = ops.convolution(x, c(Wc), [1, 1], [1, 1], [1, 1], [1, 1])
        def stream(h):  # int8: the conv input quantised u8 (a ReLU'd or shifted stream), so non-negative
            return ops.relu(h) if precision == "int8" else h
        for b in range(B):
            if kind == "batched":
                t = ops.relu(conv_batched(fq(stream(h), 0, 2.0)))
                h = ops.add(h, conv_batched(fq(t, 0, 2.0)))
            elif folded:
                t = ops.relu(conv_folded(stream(h), weights(2 * b)))
                h = ops.add(h, conv_folded(t, weights(2 * b + 1)))
            else:
                t = ops.relu(conv_split(stream(h), weights(2 * b)))
                h = ops.add(h, conv_split(t, weights(2 * b + 1)))
        if folded:
            h = ops.reshape(h, c([N, C, H, W], np.int64), False)
        return ov.Model([h], params), feed
    def conv_kernel_ms(m, feed) -> float:
        """The convs' own time (PERF_COUNT, mean of 5 calls): the kernels alone, without the Eltwise and
        Reorder ops each layout brings (the batched chain's are not all fused as in the twin). A second
        compile of its own, so that the counters never run inside the timed calls."""
        r = core.compile_model(m, "CPU", {**config, "PERF_COUNT": True}).create_infer_request()
        for _ in range(3):
            r.infer(feed)
        total = 0.0
        for _ in range(5):
            r.infer(feed)
            total += sum(p.real_time.total_seconds() for p in r.profiling_info
                         if p.node_type in ("Convolution", "GroupConvolution"))
        return total * 1e3 / 5
    kinds = ["batched", "folded-const", "folded-runtime", "split-const", "split-runtime"]
    calls, kernel_ms = {}, {}
    for k in kinds:
        m, feed = net(k)
        cm = core.compile_model(m, "CPU", config)
        prims = Counter(i["primitiveType"].astype(str) for i in (n.get_rt_info() for n in
                        cm.get_runtime_model().get_ordered_ops()) if i["layerType"].astype(str) == "Convolution")
        print(f"{k:22s} {dict(prims)}", flush=True)
        r = cm.create_infer_request()
        calls[k] = (lambda r=r, f=feed: r.infer(f))
        kernel_ms[k] = conv_kernel_ms(m, feed)
    twin = real_twin_runner(precision)
    xs = rng.random((N, 3, H, W), dtype=np.float32)
    valid = np.ones((N, 1, H, W), np.float32)
    calls["real twin"] = lambda: twin.infer(xs, valid)
    print("load", [round(v, 2) for v in os.getloadavg()])
    timings = measure_interleaved(calls, runs=20, warmup=2, rounds=5)
    real = timings["real twin"].median
    print(f"{'engine (' + precision + ')':34s} {'median ms':>10s} {'/ batched':>10s} {'/ real twin':>12s} "
          f"{'conv kernels / batched':>24s}")
    for k, v in timings.items():
        kernels_ratio = f"{kernel_ms[k] / kernel_ms['batched']:24.2f}" if k in kernel_ms else f"{'-':>24s}"
        print(f"{k:34s} {v.median:10.2f} {v.median / timings['batched'].median:10.2f} {v.median / real:12.2f} "
              f"{kernels_ratio}")
    print("load", [round(v, 2) for v in os.getloadavg()])


def ort_study() -> None:
    """ONNX Runtime: QLinearConv / ConvInteger with run-time (non-constant) int8 weights, one group per
    patch, against QLinearConv with constant weights on the batch (the int8 twin's conv). Conv only."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from nsr_deploy.core.timing import measure_interleaved

    N, C, H, W = 16, 64, 48, 48
    rng = np.random.default_rng(0)
    def qlinear(const_w, groups):
        G = groups
        inits = [nh.from_array(np.array(0.01, np.float32), "xs"), nh.from_array(np.array(0, np.uint8), "xz"),
                 nh.from_array(np.array(0.002, np.float32), "ws"), nh.from_array(np.array(0, np.int8), "wz"),
                 nh.from_array(np.array(0.02, np.float32), "ys"), nh.from_array(np.array(0, np.uint8), "yz")]
        wshape = [N * C if G > 1 else C, C, 3, 3]
        inputs = [h.make_tensor_value_info("x", T.UINT8, [1 if G > 1 else N, N * C if G > 1 else C, H, W])]
        if const_w:
            inits.append(nh.from_array(rng.integers(-100, 100, wshape).astype(np.int8), "w"))
        else:
            inputs.append(h.make_tensor_value_info("w", T.INT8, wshape))
        node = h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], group=G,
                           pads=[1, 1, 1, 1])
        g = h.make_graph([node], "g", inputs, [h.make_tensor_value_info("y", T.UINT8, None)], inits)
        return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    def conv_integer(groups):
        G = groups
        inputs = [h.make_tensor_value_info("x", T.UINT8, [1, N * C, H, W]),
                  h.make_tensor_value_info("w", T.INT8, [N * C, C, 3, 3])]
        node = h.make_node("ConvInteger", ["x", "w"], ["y"], group=G, pads=[1, 1, 1, 1])
        g = h.make_graph([node], "g", inputs, [h.make_tensor_value_info("y", T.INT32, None)])
        return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    xg = rng.integers(0, 255, (1, N * C, H, W)).astype(np.uint8)
    xb = xg.reshape(N, C, H, W)
    wg = rng.integers(-100, 100, (N * C, C, 3, 3)).astype(np.int8)
    calls = {}
    for name, model, feed in [("qlinear const batched (twin)", qlinear(True, 1), {"x": xb}),
                              ("qlinear const grouped16", qlinear(True, N), {"x": xg}),
                              ("qlinear runtime-w grouped16", qlinear(False, N), {"x": xg, "w": wg}),
                              ("convinteger runtime-w grouped16", conv_integer(N), {"x": xg, "w": wg})]:
        try:
            s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            s.run(None, feed)
            calls[name] = (lambda s=s, f=feed: s.run(None, f))
            print(name, "runs")
        except Exception as e:
            print(name, "FAILS:", str(e).splitlines()[0][:200])
    print("load", [round(v, 2) for v in os.getloadavg()])
    t = measure_interleaved(calls, runs=30, warmup=2, rounds=5)
    report(t, "qlinear const batched (twin)", "qlinear const batched (twin)")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "layer"
    {"layer": layer_study, "model": model_study, "floor": floor_study, "ort": ort_study}[which](*sys.argv[2:])
