"""ncnn target: the deploy network traced at one patch and converted by pnnx into ``model.ncnn.param`` +
``model.ncnn.bin``, for phones, boards and desktop GPUs (ncnn runs on ARM NEON, x86 and Vulkan).

    nsr-deploy export ckpt.pt --target ncnn [--precision fp32|fp16] [--conv-form grouped|matmul|dense-mix]

``fp32``  weights stored f32 (pnnx stores f16 unless told ``fp16=0``). Gate: max abs <= 1e-4 against
          the PyTorch reference on random patches and a real image.
``fp16``  the constant conv and InnerProduct weights stored f16, computed in f32 by the runner; pnnx keeps
          the sparse convs' stacked kernels (``MemoryData``) f32, so the file shrinks little for a
          sparse model. Gate: fp16's judge (max abs <= 5e-3 and PSNR >= 45 dB against the fp32
          reference on the real image).

Batch: ncnn has no batch axis, so the graph is traced at batch 1 and the runner feeds one patch per
extractor call (a graph traced at batch 4 converts but crashes ncnn). Spatial size stays dynamic: pnnx
is given a second input shape, so no size is frozen into a Reshape.

Conv form: ``--conv-form`` when it is a deploy form, else ``grouped`` (``capabilities.NCNN_FORM``): at
batch 1 it is one ncnn ``Convolution`` taking its weights as a second input, the fastest of the three.
The gate runs ncnn on this machine's CPU; the Vulkan path (Mesa's software GPU) and ARM64 (emulated) are
verified by tests, hardware GPUs and phones are stated as not verified.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from nsr_deploy.checks.gates import precision_gate
from nsr_deploy.checks.results import GateResult
from nsr_deploy.core.capabilities import DEPLOY_FORMS, NCNN_FORM, PRECISIONS_OF_TARGET, is_static_batch
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.common import sha256_bytes
from nsr_deploy.exporters.target import Artifact

NAME = "ncnn"
STAGES = ["ncnn-trace", "ncnn-convert", "ncnn-parity"]
MODEL_FILE = "model.ncnn.param"
PRECISIONS = PRECISIONS_OF_TARGET["ncnn"]
WEIGHTS_STORED = {"fp32": "f32", "fp16": ("f16 for the constant conv / InnerProduct weights (computed in f32 by "
                                          "the runner); the sparse convs' stacked kernels stay f32")}
CONVERT_SECONDS = 600
# what an app embedding ncnn must set to get the fp32 results the gate checked
APP_SETTINGS = ("ncnn enables fp16 storage / arithmetic by default where the device has them (ARMv8.2, Vulkan); "
                "set opt.use_fp16_storage / use_fp16_packed / use_fp16_arithmetic / use_bf16_storage = false for "
                "the fp32 results the gate checked")
VULKAN = ("tests/runtimes/ncnn/test_ncnn_vulkan.py::"
          "test_vulkan_restores_a_real_crop_as_the_cpu_does_and_names_its_device")


def unavailable() -> str | None:
    from nsr_deploy.runtimes.ncnn.runner import unavailable as runtime_unavailable

    for module in ("torch", "pnnx"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'nsr-deploy[ncnn]')"
    return runtime_unavailable()


def runs_on(entry: dict, tools: dict) -> list:
    """Where the ``.param`` / ``.bin`` pair runs: ncnn's CPU path here and under ARM64 emulation."""
    from nsr_deploy.exporters import runs_on as r

    precision = entry.get("precision")
    places = [r.verified(f"ncnn {tools.get('ncnn')} CPU path on the CPU it was exported on, precision {precision} "
                         "(fp16 storage and arithmetic off)", r.GATE),
              r.verified("ncnn's CPU path on x86-64 CPUs", r.CONFORMANCE)]
    if precision == "fp32":
        places.append(r.verified(f"ncnn's CPU path (NEON) on {r.ARM64_WHERE}", r.ARM64))
    else:
        places.append(r.unverified("ncnn on ARM64 CPUs", f"the emulated ARM64 run executes the fp32 files, not "
                                   f"{precision}"))
    if precision == "fp32" and entry.get("conv_form") == NCNN_FORM:  # what the Vulkan test exports
        places.append(r.verified("ncnn's Vulkan path on a software GPU (Mesa's lavapipe), fp16 storage and "
                                 "arithmetic off", VULKAN))
    else:
        places.append(r.unverified("ncnn's Vulkan path", f"the Vulkan test runs the fp32 {NCNN_FORM} files"))
    return [*places, r.unverified("ncnn on hardware Vulkan GPUs (desktop, Android)", "no GPU here; only Mesa's "
                                  "software device ran"),
            r.unverified("ncnn builds other than the Python wheel (Android, iOS, C++)", "not run here")]


def validate_options(options) -> None:
    """Refuse what this target cannot honour before any work (the pipeline calls it up front)."""
    if options.precision not in PRECISIONS:
        raise NSRError(f"ncnn supports precisions {', '.join(PRECISIONS)}, not {options.precision!r}")
    if options.calib:
        raise NSRError(f"--calib is for int8; ncnn {options.precision} needs no calibration")


def form_of(options) -> str:
    return options.conv_form if options.conv_form in DEPLOY_FORMS else NCNN_FORM


# -- conversion ------------------------------------------------------------------------------
def trace(loaded, form: str, path: Path) -> tuple[list[int], list[int]]:
    """The deploy network in ``form`` at batch 1, traced to TorchScript at ``path``; the two input shapes
    pnnx is given (the patch, and a different size that keeps height and width dynamic)."""
    import torch

    from nsr_deploy.models.deploy import DeployNet

    cfg = loaded.config
    deploy = DeployNet(loaded.net, form, 1 if is_static_batch(form) else None).eval()
    p = cfg.patch_size
    x = torch.rand(1, cfg.channels, p, p, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.jit.trace(deploy, (x, torch.ones(1, 1, p, p))).save(str(path))
    return [p, p], [p + 8, p - 8 if p > 16 else p + 16]


def convert(traced: Path, shapes: tuple[list[int], list[int]], channels: int, precision: str, work: Path) -> Path:
    """pnnx on the TorchScript file; the ``.param`` it wrote in ``work`` (its ``.bin`` beside it)."""
    from pnnx import EXEC_PATH

    def inputs(hw: list[int]) -> str:
        return f"[1,{channels},{hw[0]},{hw[1]}]f32,[1,1,{hw[0]},{hw[1]}]f32"

    param = work / MODEL_FILE
    files = {"ncnnparam": param, "ncnnbin": param.with_suffix(".bin"), "ncnnpy": work / "model_ncnn.py",
             "pnnxparam": work / "model.pnnx.param", "pnnxbin": work / "model.pnnx.bin",
             "pnnxpy": work / "model_pnnx.py", "pnnxonnx": work / "model.pnnx.onnx"}
    cmd = [EXEC_PATH, str(traced), f"inputshape={inputs(shapes[0])}", f"inputshape2={inputs(shapes[1])}",
           "device=cpu", f"fp16={int(precision == 'fp16')}", *(f"{k}={v}" for k, v in files.items())]
    try:
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=CONVERT_SECONDS)
    except subprocess.TimeoutExpired:
        raise NSRError(f"pnnx did not finish converting within {CONVERT_SECONDS} s") from None
    if done.returncode != 0 or not param.is_file() or not param.with_suffix(".bin").is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise NSRError(f"pnnx could not convert the network to ncnn (exit {done.returncode}: {last[0][:200]})")
    return param


def check_blobs(param: Path) -> None:
    """The runner binds pnnx's positional blob names; refuse a conversion that named them otherwise."""
    from nsr_deploy.runtimes.ncnn.runner import INPUT_BLOBS, OUTPUT_BLOB

    inputs = [line.split()[1] for line in param.read_text().splitlines()[2:] if line.startswith("Input ")]
    if inputs != list(INPUT_BLOBS) or OUTPUT_BLOB not in param.read_text().split():
        raise NSRError(f"pnnx named the model's blobs {inputs}, not {list(INPUT_BLOBS)} -> {OUTPUT_BLOB}")


def layer_counts(param: Path) -> dict[str, int]:
    """ncnn layer type -> count, from the ``.param`` text (line 2 is the layer / blob count)."""
    counts: dict[str, int] = {}
    for line in param.read_text().splitlines()[2:]:
        if line.strip():
            counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return dict(sorted(counts.items()))


# -- the pipeline step -----------------------------------------------------------------------
def build(ctx) -> Artifact:
    """Pipeline step: ``model.ncnn.param`` + ``model.ncnn.bin`` into ``ctx.folder``."""
    validate_options(ctx.options)
    precision, form = ctx.options.precision, form_of(ctx.options)
    work = ctx.scratch / f"ncnn-{form}-{precision}"
    work.mkdir(parents=True, exist_ok=True)
    with ctx.stages.stage("ncnn-trace"):
        shapes = trace(ctx.loaded, form, work / "model.pt")
    with ctx.stages.stage("ncnn-convert"):
        param = convert(work / "model.pt", shapes, ctx.loaded.config.channels, precision, work)
        check_blobs(param)
        path = ctx.folder / MODEL_FILE
        shutil.copyfile(param, path)
        shutil.copyfile(param.with_suffix(".bin"), path.with_suffix(".bin"))
    tools = {"pnnx": metadata.version("pnnx"), "ncnn": metadata.version("ncnn")}
    return Artifact(NAME, path, f"ncnn {precision}", f"ncnn/{precision}", _target_entry(path, precision, form), tools)


def gate(artifact: Artifact, ctx) -> GateResult:
    """Pipeline step: ncnn on this CPU against the PyTorch reference (fp16: also the PSNR floor)."""
    from nsr_deploy.runtimes.ncnn.runner import NcnnRunner

    precision = ctx.options.precision
    with ctx.stages.stage("ncnn-parity"), NcnnRunner(str(artifact.path), ctx.options.threads) as runner:
        result = precision_gate(ctx.loaded.net, runner, precision)
    return replace(result, facts={"gate_device": "cpu"})


def _target_entry(path: Path, precision: str, form: str) -> dict:
    weights = path.with_suffix(".bin")
    return {
        "file": path.name,
        "weights": weights.name,
        "sha256": sha256_bytes(path.read_bytes()),
        "weights_sha256": sha256_bytes(weights.read_bytes()),
        "precision": precision,
        "runtime": "ncnn",
        "conv_form": form,
        "static_batch": None,
        "batch": "none: ncnn has no batch axis; one patch [C, h, w] per extractor call (NcnnRunner loops)",
        "size": "dynamic (pnnx given two input sizes)",
        "blobs": {"in0": "x [C, h, w]", "in1": "valid [1, h, w]", "out0": "y [C, h*scale, w*scale]"},
        "weights_stored": WEIGHTS_STORED[precision],
        "execution_precision": "f32 (NcnnRunner turns ncnn's fp16 / bf16 storage and fp16 arithmetic off)",
        "layers": layer_counts(path),
        "app_settings": APP_SETTINGS,  # where it runs: runs_on
    }
