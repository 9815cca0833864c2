"""TensorRT target: the parity-checked ONNX model -> a serialized engine (``model.engine``).

    nsr-deploy export ckpt.pt --target tensorrt [--precision fp32|fp16] [--batch-profile MIN,OPT,MAX]
                              [--workspace MiB] [--timing-cache FILE]

Steps, each a pipeline stage (the export folder appears only if every one passes):

``tensorrt-check``   the ONNX graph against TensorRT's documented operator support
                     (:mod:`.support`): documented-unsupported nodes stop the export before
                     TensorRT is asked; optimisation profiles from the options (:mod:`.profiles`).
``tensorrt-build``   TensorRT's ONNX parser (every parser error reported, in one line) into a strongly typed
                     network (TensorRT 10.x and 11.x alike, :mod:`~nsr_deploy.runtimes.tensorrt.compat`): the
                     graph's own types decide each layer's precision. ``fp32`` parses ``model.onnx``;
                     ``fp16`` parses the fp16 graph (``model.fp16.onnx``,
                     :mod:`~nsr_deploy.exporters.onnx.fp16`: fp16 weights and activations, the sparsity
                     routing fp32 behind explicit Casts). No precision builder flags (TensorRT 11
                     removed them). Builder config: workspace limit, TF32 off (fp32 tensors compute in
                     fp32), one profile per tile regime, the timing cache file loaded and written back.
``tensorrt-parity``  the engine through :class:`~nsr_deploy.runtimes.tensorrt.runner.TrtRunner` against the
                     PyTorch reference: fp32 max abs <= 1e-3 (GPU convolutions sum in another order than
                     the CPU reference); fp16 PSNR >= 40 dB against the fp32 reference on random patches
                     and a real image, plus a 0.1 max-abs guard against isolated broken pixels.

Not supported: ``int8``. TensorRT 11 takes int8 only from explicit Q/DQ nodes in the graph (its
calibrator API is gone); nsr-deploy does not write a Q/DQ graph for TensorRT yet, and one could not be
verified without a GPU. Use fp16, or OpenVINO for int8.
An engine is tied to the TensorRT version and the GPU (compute capability) that built it: the manifest
records both and the runner names them when an engine is loaded elsewhere.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from nsr_deploy.checks import verdicts
from nsr_deploy.checks.results import GateResult
from nsr_deploy.core.capabilities import AUTO_FORM, PRECISIONS_OF_TARGET
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.exporters.common import sha256_bytes
from nsr_deploy.exporters.target import Artifact

NAME = "tensorrt"
STAGES = ["tensorrt-check", "tensorrt-build", "tensorrt-parity"]
MODEL_FILE = "model.engine"
PRECISIONS = PRECISIONS_OF_TARGET["tensorrt"]
MIB = 1 << 20


def unavailable() -> str | None:
    """Building needs what running needs (the parity gate runs the engine): TensorRT >= 10 and a GPU."""
    from nsr_deploy.runtimes.tensorrt.runner import unavailable as runtime_unavailable

    return runtime_unavailable()



def runs_on(entry: dict, tools: dict) -> list:
    """Where the engine runs: tied to the TensorRT version and the GPU model it was built with."""
    from nsr_deploy.exporters import runs_on as r

    gpu = entry.get("gpu") or tools.get("gpu") or "the GPU it was built on"
    return [r.verified(f"TensorRT {tools.get('tensorrt')} on {gpu}", r.GATE),
            r.unverified("other GPU models or TensorRT versions",
                         "an engine is tied to the TensorRT version and GPU model that built it: rebuild it there")]


def validate_options(options) -> None:
    """Refuse options this target cannot honour, before any work (the pipeline may call it up front)."""
    if options.precision == "int8":
        raise NSRError("TensorRT int8 is not supported by nsr-deploy: TensorRT takes int8 only from an explicitly "
                       "quantized (Q/DQ) ONNX graph (TensorRT 11 removed calibrators), which nsr-deploy does not "
                       "write for TensorRT yet: use --precision fp16 for TensorRT, or --target openvino "
                       "--precision int8")
    if options.precision not in PRECISIONS:
        raise NSRError(f"TensorRT supports precisions {', '.join(PRECISIONS)}, not {options.precision!r}")
    if options.workspace_mib < 1:
        raise NSRError(f"--workspace must be at least 1 MiB, got {options.workspace_mib}")
    if options.timing_cache and Path(options.timing_cache).is_dir():
        raise NSRError(f"--timing-cache {options.timing_cache}: is a folder; give a file path")


# -- the ONNX model handed to TensorRT --------------------------------------------------------------------
def static_batch_of(model) -> int | None:
    """The fixed patch batch of an ONNX model (input ``x``, axis 0), or None when it is dynamic."""
    for value in model.graph.input:
        if value.name == "x":
            first = value.type.tensor_type.shape.dim[0]
            return first.dim_value if first.HasField("dim_value") else None
    raise NSRError("the ONNX model has no input 'x'")


def conv_form_of(model) -> str | None:
    """The conv form recorded in the model's own I/O contract (``nsr_manifest`` metadata)."""
    import json

    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props.get("nsr_manifest", "{}")).get("conv_form")


def refuse_unsupported(model, source: str) -> None:
    """Stop, naming every node TensorRT documents as unsupported, and the conv forms to use instead."""
    from nsr_deploy.exporters.tensorrt.support import unsupported_nodes

    bad = unsupported_nodes(model)
    if bad:
        listed = "; ".join(f.line() for f in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NSRError(f"{source}: {len(bad)} node(s) TensorRT cannot parse: {listed} "
                       f"(re-export with --conv-form matmul, dense-mix or grouped)")


# -- parser errors -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParserIssue:
    """One error of TensorRT's ONNX parser, in plain data."""

    node: int
    node_name: str
    op: str
    desc: str

    def line(self) -> str:
        where = f"node {self.node}" if self.node >= 0 else "model"
        label = " ".join(p for p in (self.node_name, f"({self.op})" if self.op else "") if p)
        return f"{where}{' ' + label if label else ''}: {' '.join(self.desc.split())}"


def read_parser_errors(parser) -> list[ParserIssue]:
    """Every error the parser holds (node name / operator where this TensorRT reports them)."""
    issues = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name = getattr(err, "node_name", None)
        op = getattr(err, "node_operator", None)
        issues.append(ParserIssue(int(err.node()), str(name() if callable(name) else ""),
                                  str(op() if callable(op) else ""), str(err.desc())))
    return issues


def format_parser_errors(source: str, issues: list[ParserIssue]) -> str:
    """One line naming every parser error (the CLI prints it after ``error:``)."""
    if not issues:
        return f"TensorRT's ONNX parser rejected {source} without saying why"
    listed = "; ".join(f"[{i + 1}] {issue.line()}" for i, issue in enumerate(issues))
    return f"TensorRT's ONNX parser rejected {source} ({len(issues)} error{'s' * (len(issues) > 1)}): {listed}"


# -- builder pieces (need tensorrt) ---------------------------------------------------------------------------
@dataclass
class EngineBuild:
    engine: bytes
    seconds: float
    tf32_off: bool
    timing_cache: dict | None = None


def attach_timing_cache(config, path: str | None) -> dict | None:
    """Load the timing cache file into the builder config (a new one when absent or made elsewhere)."""
    if not path:
        return None
    file = Path(path)
    data = file.read_bytes() if file.exists() else b""
    status = "reused" if data else "new"
    try:
        cache = config.create_timing_cache(data)
        accepted = cache is not None and config.set_timing_cache(cache, False)
    except Exception:  # unreadable bytes
        accepted = False
    if not accepted:
        config.set_timing_cache(config.create_timing_cache(b""), False)
        status = "replaced (the file was made by another TensorRT version or GPU, or is damaged)"
    return {"file": str(file), "status": status, "bytes_read": len(data)}


def save_timing_cache(config, info: dict | None) -> None:
    """Write the (grown) timing cache back, atomically, for the next build."""
    if info is None:
        return
    data = memoryview(config.get_timing_cache().serialize()).tobytes()
    target = Path(info["file"])
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    info["bytes_written"] = len(data)


def add_profiles(builder, config, profiles, channels: int) -> None:
    """One ``IOptimizationProfile`` per :class:`.profiles.ShapeProfile`, in order (index = order)."""
    for shape_profile in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shape_profile.input_shapes(channels).items():
            profile.set_shape(name, low, opt, high)
        if config.add_optimization_profile(profile) < 0:
            raise NSRError(f"TensorRT refused optimisation profile {shape_profile.name!r}")


def build_engine(onnx_bytes: bytes, source: str, profiles, channels: int, workspace_mib: int,
                 timing_cache: str | None) -> EngineBuild:
    """Parse into a strongly typed network, configure and build; the precision is the graph's own (an fp32
    or an fp16-typed ONNX model). Raises NSRError with TensorRT's own words when any step fails."""
    import tensorrt as trt

    from nsr_deploy.runtimes.tensorrt.compat import disable_tf32, network_flags
    from nsr_deploy.runtimes.tensorrt.logger import collecting_logger

    logger = collecting_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        raise NSRError(format_parser_errors(source, read_parser_errors(parser)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib * MIB)
    tf32_off = disable_tf32(trt, config)
    add_profiles(builder, config, profiles, channels)
    cache_info = attach_timing_cache(config, timing_cache)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise NSRError(f"TensorRT could not build the engine ({logger.summary()})")
    save_timing_cache(config, cache_info)
    return EngineBuild(memoryview(serialized).tobytes(), seconds, tf32_off, cache_info)


# -- parity gates ---------------------------------------------------------------------------------------------
def engine_gate(loaded, runner, precision: str) -> GateResult:
    """The engine against the PyTorch reference: fp32 within ``verdicts.TRT_FP32_MAX_ABS``; fp16 on PSNR
    against the fp32 reference (every check, >= ``verdicts.TRT_FP16_MIN_PSNR``) behind a loose max-abs guard."""
    from nsr_deploy.checks.gates import float_gate

    if precision == "fp32":
        return float_gate(loaded.net, runner, verdicts.TRT_FP32_MAX_ABS)
    guarded = float_gate(loaded.net, runner, verdicts.TRT_FP16_MAX_ABS_GUARD)
    return verdicts.judge_fp16_gate(guarded, verdicts.TRT_FP16_MIN_PSNR)


# -- the pipeline steps -----------------------------------------------------------------------------------------
def build(ctx) -> Artifact:
    """Pipeline step: ``model.engine`` into ``ctx.folder``; the engine's build facts for the manifest."""
    import onnx
    import tensorrt as trt

    from nsr_deploy.exporters.tensorrt.profiles import profile_plan
    from nsr_deploy.exporters.tensorrt.support import support_summary

    options, cfg = ctx.options, ctx.loaded.config
    validate_options(options)
    why = unavailable()
    if why:
        raise BackendUnavailable(f"cannot build target 'tensorrt' here: {why}")
    ranking = None
    if options.conv_form == AUTO_FORM:  # TensorRT's own choice, by documented support and FLOPs
        from nsr_deploy.exporters.tensorrt.support import preferred_conv_form_for

        form, ranking = preferred_conv_form_for(ctx.loaded, options.patch_batch, options.opset)
        onnx_path = Path(ctx.onnx_for(form))
    else:
        onnx_path = Path(ctx.onnx_path)
    with ctx.stages.stage("tensorrt-check"):
        model = onnx.load(str(onnx_path))
        refuse_unsupported(model, onnx_path.name)
        static = static_batch_of(model)
        profiles = profile_plan(cfg, static, options.batch_profile, options.patch_batch)
        if options.precision == "fp16":  # the graph's types make the engine fp16 (strong typing)
            from nsr_deploy.exporters.onnx.fp16 import fp16_onnx_for

            onnx_path = fp16_onnx_for(ctx, onnx_path)
    with ctx.stages.stage("tensorrt-build"):
        built = build_engine(onnx_path.read_bytes(), onnx_path.name, profiles, cfg.channels,
                             options.workspace_mib, options.timing_cache)
        path = ctx.folder / MODEL_FILE
        path.write_bytes(built.engine)
    entry = target_entry(built, profiles, cfg.channels, options, static, conv_form_of(model))
    entry["operator_support"] = support_summary(model)
    if ranking is not None:
        entry["auto"] = ranking
    entry["onnx_source"] = onnx_path.name if onnx_path.parent == ctx.folder else \
        f"an ONNX twin of model.onnx in the {entry['conv_form']} form, {options.precision} (not shipped)"
    return Artifact(NAME, path, f"TensorRT {options.precision}", f"tensorrt/{options.precision}", entry,
                    {"tensorrt": trt.__version__})


def gate(artifact: Artifact, ctx) -> GateResult:
    """Pipeline step: the engine through ``TrtRunner`` against the PyTorch reference; where it runs (GPU,
    compute capability, memory) as the gate's facts."""
    import tensorrt as trt

    from nsr_deploy.runtimes.tensorrt.compat import device_memory_bytes
    from nsr_deploy.runtimes.tensorrt.runner import TrtRunner

    with ctx.stages.stage("tensorrt-parity"), TrtRunner(str(artifact.path), ctx.options.threads) as runner:
        result = engine_gate(ctx.loaded, runner, ctx.options.precision)
        info = runner.device_info
        facts = runtime_entry(trt.__version__, info.name, info.compute_capability, runner.device.provider,
                              device_memory_bytes(runner.engine), runner.load_seconds)
    return replace(result, facts=facts)


def runtime_entry(version: str, gpu: str, capability: str, provider: str, memory_bytes: int,
                  load_seconds: float) -> dict:
    """The manifest's ``targets.tensorrt`` facts that only running the engine shows: where it runs."""
    return {"tensorrt": version, "gpu": gpu, "compute_capability": capability,
            "portability": (f"runs only with TensorRT {version} on a GPU of compute capability {capability} "
                            f"(built on {gpu}); elsewhere, re-export"),
            "device_memory_mib": round(memory_bytes / MIB, 1), "cuda_provider": provider,
            "load_seconds": round(load_seconds, 3)}


def target_entry(built: EngineBuild, profiles, channels: int, options, static: int | None, form: str | None
                 ) -> dict:
    """The manifest's ``targets.tensorrt``: the file and how it was built (where it runs: :func:`gate`)."""
    tiles = profiles[0]
    entry = {
        "file": MODEL_FILE,
        "sha256": sha256_bytes(built.engine),
        "bytes": len(built.engine),
        "precision": options.precision,
        "runtime": "tensorrt",
        "conv_form": form,
        "static_batch": static,
        "batch_profile": tiles.batch.as_list(),
        "profiles": [p.as_dict(channels) for p in profiles],
        "tf32": not built.tf32_off,
        "network": "strongly typed (layer precisions are the ONNX graph's types)",
        "workspace_mib": options.workspace_mib,
        "timing_cache": built.timing_cache,
        "build_seconds": round(built.seconds, 3),
    }
    return entry
