"""int8 for *sparse* models on OpenVINO: every conv int8, the per-patch ones included (Fan et al.,
NeurIPS 2020, Eq. 10), judged by the task.

The graph is :func:`~nsr_deploy.exporters.openvino.network.build_network` with the int8 convs of
:mod:`.split_graph` (the per-patch convs one Convolution per patch; the run-time kernels quantised per
output channel inside their static convex bound, inputs unsigned). Calibration: the same graph in f32
with every conv input as an extra output, run on degraded tiles of real images
(:func:`.nncf_int8.calibration_tiles`, the ``--calib`` folder or the bundled samples); each conv input
gets its min / max. The gate: task PSNR against ground truth may drop at most
``verdicts.SPARSE_INT8_MAX_DROP_DB`` (0.1 dB) from the fp32 PyTorch reference on real images, and every
conv (per-patch ones included) must *execute* in int8 in the compiled model -- a failed gate writes
nothing. The keep-float retries are :mod:`.search`'s.

    build_int8_sparse_ir(loaded, folder, calib=None, gate_images=None, patch_batch=16, threads=None,
                         save=None, scratch=None) -> Int8SparseBuild(path, report, gate)

``save(model, path)`` writes the IR (default ``openvino.save_model`` with f32 weights); the exporter
passes its own, which stores the I/O contract in the IR's rt_info.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.openvino.quantize.search import Int8Attempt


def calibrate(cfg, convs, tiles: np.ndarray, batch: int, threads: int | None = None) -> dict:
    """Conv name -> :class:`~.split_graph.Range` of its input over ``tiles`` (whole batches)."""
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


@dataclass(frozen=True)
class SparseRecord:
    """What one attempt of this route left: its IR in the scratch folder and how the plugin runs its convs."""

    path: Path  # model.xml in the attempt's scratch folder
    int8_layers: int
    float_layers: list[str]
    unexpected_float: list[str]  # float though not kept float: the attempt fails

    def as_dict(self) -> dict:
        return {"int8_layers": self.int8_layers, "float_layers": self.float_layers,
                "unexpected_float": self.unexpected_float}


def build_int8_sparse_ir(loaded, folder: str | Path, calib: str | None = None, gate_images: str | None = None,
                         patch_batch: int = 16, threads: int | None = None,
                         tolerance: float | None = None, save: Callable | None = None,
                         scratch: Path | None = None) -> Int8SparseBuild:
    """Calibrate, build, gate; ``folder/model.xml`` (+ ``.bin``) only when the gate passes (else NSRError
    and nothing written): first every conv int8, then, if the gate fails, the image-facing layers float.
    The attempts are written under ``scratch`` (an export's marked scratch folder; default: one beside
    ``folder``, so a killed run's are found and cleaned by the next)."""
    from nsr_deploy.exporters.output_folder import scratch_folder

    if scratch is not None:
        return _build(loaded, Path(folder), calib, gate_images, patch_batch, threads, tolerance, save, Path(scratch))
    with scratch_folder(folder) as own:
        return _build(loaded, Path(folder), calib, gate_images, patch_batch, threads, tolerance, save, Path(own))


def _build(loaded, folder: Path, calib, gate_images, patch_batch: int, threads, tolerance, save,
           scratch: Path) -> Int8SparseBuild:
    from nsr_deploy.checks import verdicts
    from nsr_deploy.checks.gates import task_references
    from nsr_deploy.checks.samples import sample_folder
    from nsr_deploy.checks.task import read_images, task_of
    from nsr_deploy.exporters.openvino.quantize import nncf_int8 as q
    from nsr_deploy.exporters.openvino.quantize.search import image_facing_layers, keep_float_search
    from nsr_deploy.exporters.openvino.quantize.split_graph import build_graph, weights_of

    cfg = loaded.config
    if not cfg.sparse:
        raise NSRError("build_int8_sparse_ir is for sparse models (a dense model quantises with NNCF)")
    tolerance = verdicts.SPARSE_INT8_MAX_DROP_DB if tolerance is None else tolerance
    task = task_of(loaded)
    convs = weights_of(loaded.net)
    images = read_images(Path(calib) if calib else sample_folder(), cfg.channels, q.CALIB_MAX_IMAGES)
    count = -(-q.CALIB_TILES // patch_batch) * patch_batch
    tiles = q.calibration_tiles(images, task, cfg.patch_size, count)
    ranges = calibrate(cfg, convs, tiles, patch_batch, threads)
    gate_set = read_images(Path(gate_images) if gate_images else sample_folder(), cfg.channels)
    references = task_references(loaded.net, gate_set, task)
    source = str(gate_images) if gate_images else "the bundled sample photos"
    image_facing = image_facing_layers(cfg)

    def attempt(keep_float: tuple[str, ...]) -> Int8Attempt:
        model = build_graph(cfg, convs, patch_batch, {k: r for k, r in ranges.items() if k not in keep_float})
        where = scratch / f"int8-attempt-{len(keep_float)}"
        return _gated(model, loaded, (references, task, source, tolerance), threads, keep_float, save or _save_f32,
                      where)

    attempts = keep_float_search(attempt, ((), image_facing))
    report = {"form": "split int8 (every conv int8, the per-patch ones one Convolution per patch)",
              "patch_batch": patch_batch,
              "calibration": {"images": str(calib) if calib else "the bundled sample photos",
                              "image_count": len(images), "tiles": count, "method": "min / max per conv input",
                              "ranges": {k: [round(r.lo, 5), round(r.hi, 5)] for k, r in ranges.items()}},
              "gate_images": source, "tolerance_db": tolerance,
              "attempts": [{"kept_float": list(a.kept_float), **a.figures, **a.record.as_dict(), "passed": a.passed}
                           for a in attempts]}
    final = attempts[-1]
    if not final.passed:
        drop = final.figures["drop_db"]
        why = (f"task PSNR drop {drop:.3f} dB > {tolerance:g} dB" if drop > tolerance else
               f"convs {', '.join(final.record.unexpected_float)} would run in float")
        raise NSRError(f"int8 (sparse) gate failed: {why} ({task.describe()}, last attempt with "
                       f"{', '.join(image_facing)} float); nothing written")
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".xml", ".bin"):
        os.replace(final.record.path.with_suffix(suffix), folder / f"model{suffix}")
    return Int8SparseBuild(folder / "model.xml", report, final.gate)


def _gated(model, loaded, gate_on: tuple, threads, keep_float: tuple[str, ...], save: Callable,
           where: Path) -> Int8Attempt:
    """Save ``model`` into ``where``, run the task gate and the execution check on it."""
    from nsr_deploy.checks.gates import task_drop_gate
    from nsr_deploy.runtimes.engine import Engine
    from nsr_deploy.runtimes.openvino.runner import OvRunner

    references, task, source, tolerance = gate_on
    where.mkdir(parents=True, exist_ok=True)
    path = where / "model.xml"
    save(model, path)
    layers = [shape.name for shape in loaded.config.conv_shapes()]
    with OvRunner(str(path), threads, cache=False) as runner:
        gate = task_drop_gate(Engine(runner, loaded.config), references, task, source, tolerance)
        execution = int8_execution(runner.runtime_ops(), layers)
    unexpected = [name for name in execution["float"] if name not in keep_float]
    record = SparseRecord(path, len(execution["int8"]), execution["float"], unexpected)
    return Int8Attempt(keep_float, gate, gate.checks[0].passed and not unexpected, record)
