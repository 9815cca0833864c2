"""int8 for *sparse* models on OpenVINO: every conv int8, the per-patch ones included (Fan et al.,
NeurIPS 2020, Eq. 10), judged by the task.

The graph is :mod:`.openvino_int8_graph`'s (patches folded into channels; the run-time kernels
quantised per output channel inside their static convex bound, inputs unsigned). Calibration: the
same graph in f32 with every conv input as an extra output, run on degraded tiles of real images
(:func:`.openvino_int8.calibration_tiles`, the ``--calib`` folder or the bundled samples); each conv
input gets its min / max. The gate: task PSNR against ground truth may drop at most
``SPARSE_INT8_MAX_DROP_DB`` (0.1 dB) from the fp32 PyTorch reference on real images, and every conv
(per-patch ones included) must *execute* in int8 in the compiled model -- a failed gate writes nothing.

    build_int8_sparse_ir(loaded, folder, calib=None, gate_images=None, patch_batch=16, threads=None,
                         save=None) -> Int8SparseBuild(path, report, gate)   # the bench's and exporter's call

``save(model, path)`` writes the IR (default ``openvino.save_model`` with f32 weights); the exporter
passes its own, which stores the I/O contract in the IR's rt_info.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsr_deploy.core.errors import NSRError

SPARSE_INT8_MAX_DROP_DB = 0.1


def calibrate(cfg, convs, tiles: np.ndarray, batch: int, threads: int | None = None) -> dict:
    """Conv name -> :class:`~.openvino_int8_graph.Range` of its input over ``tiles`` (whole batches)."""
    from nsr_deploy.exporters.openvino.quantize.split_graph import Range, build_graph
    from nsr_deploy.runtimes.openvino.quiet_import import ov

    model = build_graph(cfg, convs, batch, probes=True)
    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    probes = {o.get_any_name().split(":", 1)[1]: o for o in compiled.outputs if o.get_any_name().startswith("probe:")}
    lo = dict.fromkeys(probes, np.inf)
    hi = dict.fromkeys(probes, -np.inf)
    for i in range(0, len(tiles) - batch + 1, batch):
        x = tiles[i:i + batch]
        out = request.infer({"x": x, "valid": np.ones((batch, 1, *x.shape[2:]), np.float32)})
        for name, port in probes.items():
            lo[name] = min(lo[name], float(out[port].min()))
            hi[name] = max(hi[name], float(out[port].max()))
    if not np.isfinite(list(lo.values())).all():
        raise NSRError(f"int8 calibration needs at least {batch} tiles")
    return {name: Range(lo[name], hi[name]) for name in probes}


@dataclass(frozen=True)
class Int8SparseBuild:
    path: Path  # model.xml (its .bin beside it)
    report: dict  # calibration, the attempts' gate figures and execution precisions (for nsr.json)
    gate: object  # the kept attempt's GateResult (checks.results)


def _save_f32(model, path: Path) -> None:
    from nsr_deploy.runtimes.openvino.quiet_import import ov

    ov.save_model(model, str(path), compress_to_fp16=False)


def int8_execution(runtime_ops: list[dict], layers: list[str]) -> dict:
    """Which of the checkpoint's conv ``layers`` the compiled model runs in int8 (u8 / i8) and which in
    float, from its runtime graph (each conv op is named after its layer, fused ops listed with it)."""
    from nsr_deploy.exporters.openvino.quantize.split_graph import PATCH_SEP

    precisions: dict[str, set[str]] = {}  # layer -> precisions of its convs (split layout: one per patch)
    for op in runtime_ops:
        if op["type"] == "Convolution":
            for name in op["original"]:
                precisions.setdefault(name.split(PATCH_SEP)[0], set()).add(op["precision"])
    int8 = [name for name in layers if precisions.get(name) and precisions[name] <= {"u8", "i8"}]
    return {"int8": int8, "float": [name for name in layers if name not in int8]}


def build_int8_sparse_ir(loaded, folder: str | Path, calib: str | None = None, gate_images: str | None = None,
                         patch_batch: int = 16, threads: int | None = None,
                         tolerance: float = SPARSE_INT8_MAX_DROP_DB,
                         save: Callable | None = None) -> Int8SparseBuild:
    """Calibrate, build, gate; ``folder/model.xml`` (+ ``.bin``) only when the gate passes (else NSRError
    and nothing written): first every conv int8, then, if the gate fails, the image-facing layers float."""
    from nsr_deploy.checks.gates import task_references
    from nsr_deploy.checks.samples import sample_folder
    from nsr_deploy.checks.task import read_images, task_of
    from nsr_deploy.exporters.openvino.quantize import nncf_int8 as q
    from nsr_deploy.exporters.openvino.quantize.split_graph import build_graph, weights_of

    cfg = loaded.config
    if not cfg.sparse:
        raise NSRError("build_int8_sparse_ir is for sparse models (a dense model quantises with NNCF)")
    task = task_of(loaded)
    convs = weights_of(loaded.net)
    images = read_images(Path(calib) if calib else sample_folder(), cfg.channels, q.CALIB_MAX_IMAGES)
    count = -(-q.CALIB_TILES // patch_batch) * patch_batch
    tiles = q.calibration_tiles(images, task, cfg.patch_size, count)
    ranges = calibrate(cfg, convs, tiles, patch_batch, threads)
    gate_set = read_images(Path(gate_images) if gate_images else sample_folder(), cfg.channels)
    references = task_references(loaded.net, gate_set, task)
    source = str(gate_images) if gate_images else "the bundled sample photos"
    # measured on sr-x2: all int8 drops 0.19 dB, tail + skip float 0.11, head + tail + skip float 0.02 (the
    # per-patch convs alone cost little; the thin layers that touch the image cost the rest) -- and the
    # image-facing layers carry ~1% of the FLOPs
    image_facing = ["body.0", f"body.{cfg.num_blocks + 1}"] + (["skip.0"] if cfg.has_skip else [])
    attempts = []
    for keep_float in ([], image_facing):
        model = build_graph(cfg, convs, patch_batch, {k: r for k, r in ranges.items() if k not in keep_float})
        attempt = _gated(model, loaded, (references, task, source, tolerance), threads, keep_float, save or _save_f32)
        attempts.append(attempt)
        if attempt["passed"]:
            break
    for earlier in attempts[:-1]:
        shutil.rmtree(earlier["tmp"], ignore_errors=True)
    report = {"form": "folded int8 (openvino_int8_graph)", "patch_batch": patch_batch,
              "calibration": {"images": str(calib) if calib else "the bundled sample photos",
                              "image_count": len(images), "tiles": count, "method": "min / max per conv input",
                              "ranges": {k: [round(r.lo, 5), round(r.hi, 5)] for k, r in ranges.items()}},
              "gate_images": source, "tolerance_db": tolerance,
              "attempts": [{k: v for k, v in a.items() if k not in ("path", "tmp", "gate")} for a in attempts]}
    final = attempts[-1]
    if not final["passed"]:
        shutil.rmtree(final["tmp"], ignore_errors=True)
        why = (f"task PSNR drop {final['drop_db']:.3f} dB > {tolerance:g} dB" if final["drop_db"] > tolerance else
               f"convs {', '.join(final['unexpected_float'])} would run in float")
        raise NSRError(f"int8 (sparse) gate failed: {why} ({task.describe()}, last attempt with "
                       f"{', '.join(image_facing)} float); nothing written")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".xml", ".bin"):
        shutil.move(str(final["path"].with_suffix(suffix)), str(folder / f"model{suffix}"))
    shutil.rmtree(final["tmp"], ignore_errors=True)
    return Int8SparseBuild(folder / "model.xml", report, final["gate"])


def _gated(model, loaded, gate_on: tuple, threads, keep_float, save: Callable) -> dict:
    """Save ``model`` to a temporary folder, run the task gate and the execution check on it."""
    from nsr_deploy.checks.gates import task_drop_gate
    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.openvino.runner import OvRunner

    references, task, source, tolerance = gate_on
    tmp = Path(tempfile.mkdtemp(prefix="nsr-int8-"))
    path = tmp / "model.xml"
    save(model, path)
    layers = [name for name, *_ in loaded.config.conv_shapes()]
    with OvRunner(str(path), threads, cache=False) as runner:
        gate = task_drop_gate(Engine(runner, loaded.config), references, task, source, tolerance)
        execution = int8_execution(runner.runtime_ops(), layers)
    check = gate.checks[0]
    unexpected = [name for name in execution["float"] if name not in keep_float]
    return {"kept_float": keep_float, **{k: check.figures[k] for k in ("drop_db", "fp32_psnr", "int8_psnr")},
            "int8_layers": len(execution["int8"]), "float_layers": execution["float"],
            "unexpected_float": unexpected, "passed": check.passed and not unexpected, "path": path,
            "tmp": str(tmp), "gate": gate}
