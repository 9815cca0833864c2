"""Triton target: lay the engines of one export out as a Triton Inference Server model repository.

Runs last in the pipeline, on the engines built before it in the same temp folder::

    REPO/nsr.json                  the manifest (targets point into the model folders)
    REPO/client_example.py         tiles an image on the client and calls the server
    REPO/<name>_onnx/config.pbtxt  platform onnxruntime_onnx, KIND_CPU
    REPO/<name>_onnx/nsr.json      this model's I/O contract (its file: 1/model.onnx)
    REPO/<name>_onnx/1/model.onnx
    REPO/<name>_openvino/1/model.xml + model.bin     backend openvino, KIND_CPU
    REPO/<name>_tensorrt/1/model.plan                platform tensorrt_plan, KIND_GPU

Triton serves only sub-folders of the repository as models, so the root files do not disturb it,
and it ignores plain files inside a model folder beside ``config.pbtxt``.

Batching: the patch network's first axis is the patch batch and every patch is pooled on its own
(Eq. 8 pools over each batch item), so Triton may batch requests along it. Dynamic-batch conv forms
get ``max_batch_size > 0`` with per-item dims ``[C, -1, -1]`` and a dynamic batcher. The ``grouped``
form fixes its batch at export (ONNX ``Conv.group``), so it is served as a non-batching model
(``max_batch_size: 0``) whose dims include that batch: clients send exactly that many patches.

Every config is checked before anything lands: parsed into Triton's own ``ModelConfig`` protobuf
(shipped in ``tritonclient``) and held to the rules Triton applies when it loads a model.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from nsr_deploy.checks.results import GateResult
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.exporters.common import tool_versions
from nsr_deploy.exporters.target import Artifact
from nsr_deploy.runtimes.manifest import MANIFEST, write_json

NAME = "triton"
STAGES = ["triton"]
VERSION = "1"
CLIENT_EXAMPLE = "client_example.py"
DYNAMIC_MAX_BATCH = 64  # patches per batched execution for dynamic-batch engines (ORT, OpenVINO)
QUEUE_DELAY_US = 500  # how long the dynamic batcher may hold a request to fill a batch

DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
PORTABLE_ENGINE = "ONNX Runtime fp32 (the portable model served by Triton)"
PORTABLE_PARITY_KEY = "triton-onnxruntime/fp32"


@dataclass(frozen=True)
class Serving:
    """How Triton runs one kind of engine: which platform/backend, which file name, which device."""

    target: str
    platform: str | None
    backend: str | None
    file_name: str
    instance_kind: str


SERVINGS = {
    "onnx": Serving("onnx", "onnxruntime_onnx", None, "model.onnx", "KIND_CPU"),
    "openvino": Serving("openvino", None, "openvino", "model.xml", "KIND_CPU"),
    "tensorrt": Serving("tensorrt", "tensorrt_plan", None, "model.plan", "KIND_GPU"),
}
# Files that travel with an engine file and must keep its stem (OpenVINO finds its weights by name).
COMPANIONS = {"openvino": (".bin",)}


def unavailable() -> str | None:
    """Writing configs needs nothing, but every config is validated with Triton's own protobuf."""
    try:
        from google.protobuf import text_format  # noqa: F401
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install 'nsr-deploy[serve]')"
    return None



def runs_on(entry: dict, tools: dict) -> list:
    """A model repository: wherever a Triton server with the backends of its engines runs."""
    from nsr_deploy.exporters import runs_on as r

    return [r.verified("the repository layout and config.pbtxt, checked against Triton's documented schema",
                       "tests/exporters/triton/test_triton.py::test_configs_parse_as_triton_modelconfig_and_match_the_engines"),
            r.unverified("a Triton Inference Server serving it", "no container engine here to run the server "
                         "(set NSR_TRITON_URL to run the live test against one)")]


# -- config text ---------------------------------------------------------------------------------
def model_name(base: str, target: str) -> str:
    """``<model>_<target>``: a folder name Triton accepts (letters, digits, ``_ . -``)."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "model"
    return f"{clean}_{target}"


def io_dims(manifest_io: dict, static_batch: int | None) -> dict[str, list[int]]:
    """Triton dims per tensor: ``-1`` where dynamic; the batch axis only when Triton must not batch."""
    dims = {}
    for tensor in manifest_io["inputs"] + manifest_io["outputs"]:
        per_item = [d if isinstance(d, int) else -1 for d in tensor["shape"][1:]]
        dims[tensor["name"]] = [static_batch, *per_item] if static_batch else per_item
    return dims


def _tensor_block(tensors: list[dict], dims: dict[str, list[int]]) -> str:
    entries = []
    for t in tensors:
        if t["dtype"] not in DTYPES:
            raise NSRError(f"tensor {t['name']!r}: dtype {t['dtype']} has no Triton type here")
        entries.append(f'  {{\n    name: "{t["name"]}"\n    data_type: {DTYPES[t["dtype"]]}\n'
                       f'    dims: [ {", ".join(str(d) for d in dims[t["name"]])} ]\n  }}')
    return "[\n" + ",\n".join(entries) + "\n]"


def config_text(name: str, serving: Serving, manifest_io: dict, static_batch: int | None, max_batch_size: int,
                profiles: int = 0) -> str:
    """The ``config.pbtxt`` of one engine, in protobuf text format, with comments that say why.

    ``static_batch``: the engine's fixed patch batch (served without Triton batching), or None.
    ``profiles``: how many optimisation profiles a TensorRT plan holds; Triton uses only the first
    unless the instance group lists them, and then picks one per request by its shapes.
    """
    dims = io_dims(manifest_io, static_batch)
    lines = [f"# nsr-deploy: {serving.target} engine of the NSR patch network (I/O contract: nsr.json)",
             f'name: "{name}"']
    lines.append(f'platform: "{serving.platform}"' if serving.platform else f'backend: "{serving.backend}"')
    if static_batch:
        lines.append(f"# conv form with a fixed patch batch ({static_batch}): Triton must not batch; "
                     f"send exactly {static_batch} patches")
        lines.append("max_batch_size: 0")
    else:
        lines.append("# axis 0 is the patch batch (each patch is pooled on its own): Triton may batch along it")
        lines.append(f"max_batch_size: {max_batch_size}")
    lines.append(f"input {_tensor_block(manifest_io['inputs'], dims)}")
    lines.append(f"output {_tensor_block(manifest_io['outputs'], dims)}")
    if not static_batch:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}")
    group = f"    count: 1\n    kind: {serving.instance_kind}\n"
    if profiles > 1:
        names = ", ".join(f'"{i}"' for i in range(profiles))
        group += f"    profile: [ {names} ]\n"
    lines.append(f"instance_group [\n  {{\n{group}  }}\n]")
    return "\n".join(lines) + "\n"


# -- validation with Triton's own schema ----------------------------------------------------------
def parse_config(text: str):
    """``config.pbtxt`` text -> ``inference.ModelConfig`` (Triton's protobuf, from tritonclient)."""
    why = unavailable()
    if why:
        raise BackendUnavailable(why)
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise NSRError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from None


def config_problems(config) -> list[str]:
    """What Triton would refuse when loading this config (the checks of its model-config validation
    that apply to these models); empty when it is fine."""
    from tritonclient.grpc import model_config_pb2 as pb

    problems = []
    if config.max_batch_size < 0:
        problems.append("max_batch_size must be non-negative")
    if not config.platform and not config.backend:
        problems.append("neither platform nor backend is set")
    for io in list(config.input) + list(config.output):
        if not io.dims:
            problems.append(f"{io.name}: no dims")
        if any(d < 1 and d != -1 for d in io.dims):
            problems.append(f"{io.name}: dims must be positive or -1, got {list(io.dims)}")
        if io.data_type == pb.TYPE_INVALID:
            problems.append(f"{io.name}: no data_type")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            problems.append("dynamic batching needs max_batch_size > 0")
        if any(s <= 0 or s > config.max_batch_size for s in config.dynamic_batching.preferred_batch_size):
            problems.append("preferred batch sizes must lie in 1..max_batch_size")
    for group in config.instance_group:
        if group.kind == pb.ModelInstanceGroup.KIND_CPU and group.gpus:
            problems.append("a KIND_CPU instance group lists GPUs")
        if group.count < 1:
            problems.append("instance group count must be >= 1")
        if group.profile and config.platform != "tensorrt_plan":
            problems.append("optimisation profiles are for TensorRT plans only")
        if any(not p.isdigit() for p in group.profile):
            problems.append("profiles are named by their index")
    return problems


def validate_config(text: str, where: str):
    config = parse_config(text)
    problems = config_problems(config)
    if problems:
        raise NSRError(f"{where}: Triton would refuse this config ({'; '.join(problems)})")
    return config


# -- the repository layout -------------------------------------------------------------------------
def max_batch_for(target: str, entry: dict, options) -> int:
    """Triton's max_batch_size for a dynamic-batch engine. A TensorRT engine takes no more than its
    optimisation profiles allow, so their largest batch bounds it."""
    if target == "tensorrt":
        if entry.get("profiles"):
            return max(int(p["batch"][2]) for p in entry["profiles"])
        profile = entry.get("batch_profile") or options.batch_profile
        return int(profile[2]) if profile else int(options.patch_batch or 16)
    return DYNAMIC_MAX_BATCH


def move_engine(folder: Path, entry: dict, serving: Serving, version_dir: Path) -> None:
    """Move the engine file (and the files that must keep its stem) into the version folder, renamed
    to the file name Triton's backend looks for."""
    source = folder / entry["file"]
    if not source.exists():
        raise NSRError(f"triton: the {serving.target} engine {entry['file']} was not built")
    version_dir.mkdir(parents=True)
    target = version_dir / serving.file_name
    for suffix in COMPANIONS.get(serving.target, ()):
        companion = source.with_suffix(suffix)
        if companion.exists():
            shutil.move(str(companion), str(target.with_suffix(suffix)))
    shutil.move(str(source), str(target))


def portable_onnx(ctx, version_dir: Path, serving: Serving) -> tuple[dict, GateResult]:
    """An ORT-only model.onnx (internal ops tied to this CPU's vector width) cannot be trusted on a
    server's CPU: serve the portable twin the other targets are lowered from, parity-gated here (before
    the model folders' manifests, which record it). The ORT-only file stays where it was for local use.
    Returns the served model's target entry and its gate."""
    import onnx

    from nsr_deploy.checks import verdicts
    from nsr_deploy.checks.gates import float_gate
    from nsr_deploy.exporters.common import sha256_bytes
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    version_dir.mkdir(parents=True)
    served = version_dir / serving.file_name
    shutil.copyfile(ctx.onnx_path, served)
    with OrtRunner(str(served), ctx.options.threads) as runner:
        parity = float_gate(ctx.loaded.net, runner, verdicts.FP32_MAX_ABS)
    if not parity.passed:
        raise NSRError(parity.failure_line(PORTABLE_ENGINE))
    contract = {p.key: p.value for p in onnx.load(str(served), load_external_data=False).metadata_props}
    return {"sha256": sha256_bytes(served.read_bytes()), "precision": "fp32", "runtime": "onnxruntime",
            "conv_form": json.loads(contract.get("nsr_manifest", "{}")).get("conv_form"), "portable": True,
            "note": "portable twin of the ORT-only model.onnx at the repository root"}, parity


def engine_static_batch(target: str, path: Path, claimed: int | None) -> int | None:
    """The engine file's own patch batch when it is fixed, else None: the config must match the engine,
    whatever the manifest says. A TensorRT plan cannot be opened without TensorRT: ``claimed`` then."""
    if target == "onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        first = next(i for i in graph.input if i.name == "x").type.tensor_type.shape.dim[0]
        return first.dim_value if first.HasField("dim_value") else None
    if target == "openvino":
        import openvino

        import nsr_deploy.runtimes.openvino.quiet_import  # noqa: F401 (OpenVINO's telemetry off first)

        first = openvino.Core().read_model(str(path)).input("x").get_partial_shape()[0]
        return first.get_length() if first.is_static else None
    return claimed


def model_manifest(manifest: dict, target: str, served: dict, static_batch: int | None, triton_entry: dict,
                   parity: dict | None = None) -> dict:
    """The manifest one model folder carries: only its engine, its file relative to the folder.
    ``parity``: gates run while laying out (the portable ONNX twin's), added to the export's."""
    doc = {k: v for k, v in manifest.items() if k not in ("targets", "skipped_targets")}
    if parity:
        doc["parity"] = {**manifest.get("parity", {}), **parity}
    doc["io"] = {**manifest["io"], "static_batch": static_batch}
    doc["targets"] = {target: served}
    doc["triton"] = triton_entry
    return doc


@dataclass
class Layout:
    """What laying out the engines did: the triton entries, the engines' new root paths, and the gate
    of a portable ONNX twin served in place of an ORT-only model.onnx."""

    models: dict = field(default_factory=dict)
    moved: dict = field(default_factory=dict)
    portable_gate: GateResult | None = None


def layout_model(ctx, target: str, base: str, layout: Layout) -> None:
    """One engine -> ``REPO/<name>/{config.pbtxt, nsr.json, 1/<file>}``; its triton entry into ``layout``."""
    serving = SERVINGS[target]
    entry = ctx.manifest["targets"][target]
    name = model_name(base, target)
    model_dir = ctx.folder / name
    relative = f"{VERSION}/{serving.file_name}"
    if target == "onnx" and not entry.get("portable", True):
        served, layout.portable_gate = portable_onnx(ctx, model_dir / VERSION, serving)
        served["file"] = relative
    else:
        move_engine(ctx.folder, entry, serving, model_dir / VERSION)
        layout.moved[target] = f"{name}/{relative}"  # the root manifest follows the engine into the repository
        served = {**entry, "file": relative}
    served.pop("batch_one", None)  # the server serves one file (its twin stays at the root, for local runs)
    claimed = served.get("static_batch", ctx.manifest["io"].get("static_batch"))
    static_batch = engine_static_batch(target, model_dir / relative, claimed)
    served["static_batch"] = static_batch
    max_batch = 0 if static_batch else max_batch_for(target, entry, ctx.options)
    text = config_text(name, serving, ctx.manifest["io"], static_batch, max_batch, len(entry.get("profiles", [])))
    validate_config(text, f"{name}/config.pbtxt")
    (model_dir / "config.pbtxt").write_text(text)
    triton_entry = {"model": name, "platform": serving.platform, "backend": serving.backend,
                    "max_batch_size": max_batch, "instance_kind": serving.instance_kind, "static_batch": static_batch,
                    "profiles": len(entry.get("profiles", [])) or None}
    gated = {PORTABLE_PARITY_KEY: layout.portable_gate.to_manifest()} if layout.portable_gate else None
    write_json(model_dir / MANIFEST, model_manifest(ctx.manifest, target, served, static_batch, triton_entry, gated))
    layout.models[target] = triton_entry


def build(ctx) -> Artifact:
    """Pipeline step: re-lay every engine built so far as a Triton model; write the client example."""
    why = unavailable()
    if why:
        raise BackendUnavailable(why)
    with ctx.stages.stage("triton"):
        base = ctx.manifest["model"]["name"] or "nsr"
        layout = Layout()
        for target in [t for t in SERVINGS if t in ctx.manifest["targets"]]:
            layout_model(ctx, target, base, layout)
        (ctx.folder / CLIENT_EXAMPLE).write_text(client_example(layout.models))
    section = {"version": VERSION, "models": layout.models, "client_example": CLIENT_EXAMPLE,
               "validated_with": tool_versions("tritonclient", "protobuf")}
    return Artifact(NAME, None, PORTABLE_ENGINE, PORTABLE_PARITY_KEY, None, sections={"triton": section},
                    moved=layout.moved, state=layout.portable_gate)


def gate(artifact: Artifact, ctx) -> GateResult | None:
    """Pipeline step: the served portable ONNX twin's gate, run while laying out (None: no twin served;
    the engines themselves were gated by their own targets)."""
    return artifact.state


# -- the client example ------------------------------------------------------------------------
def client_example(models: dict) -> str:
    first = next(iter(models.values()))["model"] if models else "MODEL"
    return CLIENT_TEMPLATE.replace("@DEFAULT_MODEL@", first).replace(
        "@MODELS@", ", ".join(m["model"] for m in models.values()))


CLIENT_TEMPLATE = '''"""Restore an image with a model of this Triton repository: client-side tiling, server inference.

    pip install 'nsr-deploy[serve]'          # nsr-deploy's runtime (no torch) + tritonclient
    tritonserver --model-repository=/path/to/this/folder
    python client_example.py photo.png big.png --url localhost:8001 --model @DEFAULT_MODEL@

Models here: @MODELS@. The server holds the patch network only: the image is cut into patches,
padded and blended on the client (nsr_deploy.runtimes tiling), exactly as local engines do.
"""

import argparse
import sys
from pathlib import Path

from nsr_deploy.core.errors import NSRError
from nsr_deploy.runtimes.engine import Engine
from nsr_deploy.runtimes.host.images import read_image, write_image
from nsr_deploy.runtimes.manifest import manifest_config, read_manifest
from nsr_deploy.runtimes.triton.runner import TritonRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("output")
    parser.add_argument("--url", default="localhost:8001", help="host:port (gRPC), or http://host:port")
    parser.add_argument("--model", default="@DEFAULT_MODEL@")
    parser.add_argument("--tiling", default="reference", choices=["reference", "cells"])
    args = parser.parse_args()
    manifest = read_manifest(Path(__file__).resolve().parent / args.model)  # the I/O contract
    runner = TritonRunner(args.url, args.model)
    with Engine(runner, manifest_config(manifest), args.tiling) as engine:
        image = read_image(args.image, engine.config.channels)
        write_image(args.output, engine.restore(image.pixels), image.alpha)
    print(f"{args.image} -> {args.output} ({args.model} at {args.url})")


if __name__ == "__main__":
    try:
        main()
    except NSRError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
'''
