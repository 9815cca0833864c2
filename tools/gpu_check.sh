#!/usr/bin/env bash
# GPU check for the TensorRT target (issue 9). Run from anywhere in the repository on an NVIDIA GPU machine:
#
#   tools/gpu_check.sh [OUT_DIR]        # total time limit: NSR_GPU_CHECK_SECONDS (default 480)
#
# With TensorRT (10.x or 11.x) and a GPU: exports a tiny NSR model (and the bundled sr-x2 when present) with
# --target tensorrt, conv forms matmul and grouped, fp32 and fp16 (strongly typed, from model.fp16.onnx). Every
# export runs the target's own parity gate (fp32 max abs <= 1e-3, fp16 PSNR >= 40 dB vs the fp32 PyTorch
# reference); then the engines are timed and fp16 is compared with fp32 directly.
# TensorRT 10.x and 11.x side by side: one venv per major, e.g.
#   python -m venv --system-site-packages .venv-trt10 && .venv-trt10/bin/pip install 'tensorrt~=10.16' cuda-python
#   python -m venv --system-site-packages .venv-trt11 && .venv-trt11/bin/pip install 'tensorrt~=11.4' cuda-python
# Every venv of NSR_TRT_VENVS (default ".venv-trt10 .venv-trt11") that exists is run, into OUT_DIR/<venv>;
# with none of them, the current python runs once, into OUT_DIR. The time limit applies to each run.
# On a GPU without TensorRT, what can run: the PyTorch reference on CUDA vs on the CPU (fp32 with TF32 off,
# and fp16 autocast), the ONNX export of every conv form with the TensorRT operator-support analysis, and
# ONNX Runtime parity (CPU, plus the CUDA provider when this onnxruntime has it).
# Every figure is printed as "key: value" and kept in OUT_DIR/gpu_check.json (rewritten after each figure,
# so a run stopped by the time limit keeps what it measured). Exit status: 0 all passed, 1 a gate failed,
# 124 the time limit hit (the first failing run's status).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: not available"
CHECK=$(cat <<'PY'
import copy, json, statistics, sys, time
from pathlib import Path

import numpy as np
import torch

from nsr_deploy.assets import bundled_path
from nsr_deploy.checks.compare import psnr_float, random_patches
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.models.checkpoint import LoadedModel, load_model
from nsr_deploy.models.network import NSRNet
from nsr_deploy.runtimes.tensorrt.runner import unavailable

OUT, REPORT, BATCH, FAILED = Path(sys.argv[1]), {}, 16, []


def say(key, value, failed=False):
    if failed:
        FAILED.append(key)
    REPORT[key] = value
    print(f"{key}: {value}", flush=True)
    (OUT / "gpu_check.json").write_text(json.dumps(REPORT, indent=2, default=str))


def median_ms(fn, repeats=20, sync=lambda: None):
    fn(); sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def tiny():
    torch.manual_seed(0)
    cfg = NSRConfig(channels=3, scale=2, num_blocks=2, units=16, block_width=32, groups=4, cardinals=4)
    net = NSRNet(cfg).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "mlp" in name:
                p.normal_(0, 3.0)  # decisive, patch-dependent mixing
    return LoadedModel(net, "tiny", "built", "0" * 64, "tiny")


def tensorrt_checks(name, loaded, x, valid):
    from nsr_deploy.exporters.pipeline import ExportOptions, export
    from nsr_deploy.runtimes.tensorrt.runner import TrtRunner

    p = loaded.config.patch_size
    for form in ("matmul", "grouped"):
        outputs = {}
        for precision in ("fp32", "fp16"):
            key, folder = f"{name}/{form}/{precision}", OUT / f"{name}-{form}-{precision}"
            options = ExportOptions(conv_form=form, patch_batch=BATCH, precision=precision, force=True,
                                    timing_cache=str(OUT / "trt.timing-cache"), show_progress=False)
            try:
                manifest = export(loaded, folder, "tensorrt", options)
            except NSRError as e:
                say(key, f"FAILED: {e}", failed=True)
                continue
            entry, gate = manifest["targets"]["tensorrt"], manifest["parity"][f"tensorrt/{precision}"]
            say(f"{key} parity", "; ".join(f"{c['check']} max abs {c['max_abs']:.2e} PSNR {c['psnr']} dB"
                                           for c in gate["checks"]) + " -> pass")
            say(f"{key} engine", f"{entry['gpu']} (cc {entry['compute_capability']}), TensorRT {entry['tensorrt']}, "
                                 f"build {entry['build_seconds']} s, timing cache {entry['timing_cache']['status']}, "
                                 f"{entry['network']}, TF32 {'on' if entry['tf32'] else 'off'}, "
                                 f"from {entry['onnx_source']}")
            if precision == "fp16":
                kept = manifest["targets"]["onnx-fp16"]["kept_fp32"]["kept_fp32"]
                say(f"{key} fp16 graph kept fp32", kept)
            with TrtRunner(str(folder / "model.engine")) as runner:
                outputs[precision] = runner.infer(x, valid)
                say(f"{key} latency", f"{median_ms(lambda: runner.infer(x, valid)):.3f} ms / {BATCH} patches of "
                                      f"{p}x{p} (host copies included)")
        if len(outputs) == 2:
            say(f"{name}/{form} fp16 vs fp32 engine", f"PSNR {psnr_float(outputs['fp16'], outputs['fp32']):.2f} dB")


def fallback_checks(name, loaded, x, valid):
    import onnxruntime as ort

    from nsr_deploy.checks.compare import patch_parity
    from nsr_deploy.exporters.onnx import graph as onnx_exporter
    from nsr_deploy.exporters.tensorrt.support import preferred_conv_form, support_summary
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    cfg, net = loaded.config, loaded.net.eval()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        want = net(xt).numpy()
        say(f"{name} torch cpu latency", f"{median_ms(lambda: net(xt)):.2f} ms / {BATCH} patches")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        gnet, xg, sync = copy.deepcopy(net).cuda(), xt.cuda(), torch.cuda.synchronize
        with torch.no_grad():
            got = gnet(xg).cpu().numpy()
            diff = float(np.abs(got - want).max())
            say(f"{name} torch cuda fp32 vs cpu", f"max abs {diff:.2e} (<= 1e-3), PSNR {psnr_float(got, want):.2f} "
                                                  f"dB (TF32 off)", failed=diff > 1e-3)
            say(f"{name} torch cuda latency", f"{median_ms(lambda: gnet(xg), sync=sync):.3f} ms / {BATCH} patches")
            with torch.autocast("cuda", dtype=torch.float16):
                half = gnet(xg).float().cpu().numpy()
            say(f"{name} torch cuda fp16 autocast vs fp32 cpu", f"PSNR {psnr_float(half, want):.2f} dB")
    graphs = {}
    for form in ("grouped", "matmul", "dense-mix"):
        model = graphs[form] = onnx_exporter.build_onnx(loaded, form, BATCH if form == "grouped" else None)
        say(f"{name}/{form} tensorrt op support", support_summary(model)["counts"])
        path = OUT / f"{name}-{form}.onnx"
        path.write_bytes(model.SerializeToString())
        with OrtRunner(str(path)) as runner:
            check = patch_parity(net, runner, BATCH, cfg.patch_size)
        say(f"{name}/{form} onnxruntime cpu vs torch", f"max abs {check.max_abs:.2e} (<= {check.tolerance:g})",
            failed=not check.passed)
        if "CUDAExecutionProvider" in ort.get_available_providers():
            session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
            run = lambda s=session: s.run(["y"], {"x": x, "valid": valid})[0]  # noqa: E731
            say(f"{name}/{form} onnxruntime cuda vs torch", f"max abs {np.abs(run() - want).max():.2e}, "
                                                            f"{median_ms(run):.3f} ms / {BATCH} patches")
    form, ranking = preferred_conv_form(graphs, cfg.groups if cfg.sparse else 1)
    say(f"{name} preferred conv form for tensorrt", f"{form} ({[r['form'] for r in ranking]})")


why = unavailable()
try:
    import tensorrt as _trt
    found = _trt.__version__
except Exception:
    found = None
say("tensorrt", f"{found} available" if why is None else f"not usable here: {why}")
say("torch", f"{torch.__version__}, CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
models = {"tiny": tiny}
if bundled_path("sr-x2"):
    models["sr-x2"] = lambda: load_model("sr-x2")
for name, make in models.items():
    loaded = make()
    p = loaded.config.patch_size
    x = random_patches(loaded.config.channels, BATCH, p, seed=3)
    valid = np.ones((BATCH, 1, p, p), np.float32)
    (tensorrt_checks if why is None else fallback_checks)(name, loaded, x, valid)
say("done", f"figures in {OUT / 'gpu_check.json'}; failed: {', '.join(FAILED) or 'none'}")
sys.exit(1 if FAILED else 0)
PY
)
runs=()
for venv in ${NSR_TRT_VENVS:-.venv-trt10 .venv-trt11}; do
  if [ -x "$venv/bin/python" ]; then runs+=("$venv"); fi
done
status=0
if [ ${#runs[@]} -eq 0 ]; then
  timeout --kill-after=15 "${NSR_GPU_CHECK_SECONDS:-480}" python - "$OUT_DIR" <<<"$CHECK" || status=$?
else
  for venv in "${runs[@]}"; do
    echo "== $venv"
    mkdir -p "$OUT_DIR/$(basename "$venv")"
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout --kill-after=15 "${NSR_GPU_CHECK_SECONDS:-480}" \
      "$venv/bin/python" - "$OUT_DIR/$(basename "$venv")" <<<"$CHECK" || { rc=$?; [ $status -ne 0 ] || status=$rc; }
  done
fi
exit $status
