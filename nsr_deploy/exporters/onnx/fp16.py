"""The fp16 ONNX model (``model.fp16.onnx``): fp16 weights and activations, the sparsity routing in fp32.

    nsr-deploy export CKPT --target onnx --precision fp16     # model.onnx (fp32) + model.fp16.onnx

Written for GPU runtimes that run an fp16 graph as typed (ONNX Runtime CUDA / DirectML, OpenVINO GPU,
TensorRT's strongly typed networks, which is how the TensorRT target builds fp16 engines from it).

Conversion: onnxconverter-common's ``convert_float_to_float16`` (maintained, used by ONNX Runtime's
own tools) with ``keep_io_types`` (inputs and output stay float32, so every runner feeds it as it
feeds ``model.onnx``) and a node block list: the sparsity routing of every sparse conv (the patch
pooling ReduceMean, the MLP, the softmax over k and the kernel mixing, found by
:func:`~nsr_deploy.exporters.onnx.routing.routing_nodes`) stays fp32 behind explicit Casts,
because an fp16 softmax over MLP logits is where restoration nets overflow to NaN.

Gates, before anything is written (a failure writes nothing):

* structure: the fp16 graph is walked with ONNX type inference; every routing node must take and
  produce float32, every Conv must compute in float16;
* parity: the fp16 graph run with fp16 arithmetic on the CPU (:mod:`.fp16_reference`; ONNX Runtime's
  and OpenVINO's CPU backends compute fp16 graphs in fp32/bf16, see there) against the fp32 PyTorch
  reference, judged by the fp16 verdict the OpenVINO target uses (max abs <= 5e-3, PSNR >= 45 dB on a
  real image), plus ONNX Runtime CPU running the file (fp32 arithmetic over the fp16 weights).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

from nsr_deploy.checks.results import GateResult
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.exporters.common import sha256_bytes
from nsr_deploy.exporters.target import Artifact

NAME = "onnx-fp16"  # the manifest's targets["onnx-fp16"] and parity["onnx/fp16"]
FP16_FILE = "model.fp16.onnx"
STAGES = ["fp16-convert", "fp16-parity"]
KEPT_FP32_WHY = "sparsity routing (patch pooling, MLP, softmax over k, kernel mixing): fp16 softmax logits overflow"


def unavailable() -> str | None:
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError:
        return "the fp16 ONNX model needs onnxconverter-common: pip install 'nsr-deploy[export]'"
    return None


def validate_options(options) -> None:
    why = unavailable()
    if why:
        raise BackendUnavailable(why)


def convert(model):
    """The fp16 twin of an fp32 ONNX model (see the module docstring); checked by the ONNX checker."""
    import onnx
    from onnxconverter_common import float16

    from nsr_deploy.exporters.onnx.routing import routing_nodes

    why = unavailable()
    if why:
        raise NSRError(why)
    routing = routing_nodes(model)
    with warnings.catch_warnings():  # it warns for every weight below fp16's range it rounds to 1e-7
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(routing.nodes))
    drop_fp16_round_trips(half.graph)
    props = {p.key: p.value for p in half.metadata_props}
    props["nsr_precision"] = "fp16"
    onnx.helper.set_model_props(half, props)
    half.doc_string = f"{model.doc_string}, fp16 (routing fp32)"
    try:
        onnx.checker.check_model(half, full_check=True)
    except onnx.checker.ValidationError as e:
        raise NSRError(f"the fp16 ONNX model fails the checker: {str(e).splitlines()[0]}") from None
    return half


def drop_fp16_round_trips(graph) -> int:
    """Remove ``Cast(to fp16) -> Cast(to fp32)`` pairs between two fp32 nodes; returns how many.

    The converter puts a Cast to fp16 after every blocked node and a Cast to fp32 before every blocked
    node, then removes the pairs it made between two blocked nodes, except where the fp16 tensor has
    several consumers (its ``remove_unnecessary_cast_node`` compares ``Cast.to`` against 32/16 there,
    not the ONNX codes 1/10; onnxconverter-common 1.16). Left in, the dense-mix softmax weights would be
    rounded to fp16 on their way to the fp32 mixing."""
    from onnx import TensorProto

    def is_cast(node, to):
        return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    dropped, rename = [], {}
    for first in (n for n in graph.node if is_cast(n, TensorProto.FLOAT16)):
        users = consumers.get(first.output[0], [])
        if not users or first.output[0] in outputs or not all(is_cast(u, TensorProto.FLOAT) for u in users):
            continue
        if any(u.output[0] in outputs for u in users):
            continue
        for second in users:
            rename[second.output[0]] = first.input[0]
        dropped += [first, *users]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for node in dropped:
        graph.node.remove(node)
    return len(dropped) // 2


# -- structure: what runs in which type ------------------------------------------------------------------------
def element_types(model) -> dict[str, int]:
    """Tensor name -> ONNX element type, after type inference (inputs, outputs, initializers, values)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def precision_report(model) -> dict:
    """Which nodes compute in which type, and every break of the fp16 contract (``violations``)."""
    from onnx import TensorProto

    from nsr_deploy.exporters.onnx.routing import routing_nodes

    types = element_types(model)
    name_of = TensorProto.DataType.Name
    routing = routing_nodes(model)
    kept, violations = Counter(), []
    for node in (n for n in model.graph.node if n.name in routing.nodes):
        kept[node.op_type] += 1
        for role, names in (("input", node.input), ("output", node.output)):
            for name in (n for n in names if n):
                dtype = types.get(name, TensorProto.UNDEFINED)
                if dtype in (TensorProto.FLOAT16, TensorProto.UNDEFINED):  # int64 shapes and axes are fine
                    violations.append(f"{node.name} ({node.op_type}) {role} {name} is {name_of(dtype)}, not FLOAT")
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        if types.get(conv.input[0]) != TensorProto.FLOAT16:
            violations.append(f"{conv.name} (Conv) computes in {name_of(types.get(conv.input[0], 0))}, not FLOAT16")
    io = {v.name: name_of(v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]}
    return {"kept_fp32": dict(sorted(kept.items())), "fp16_convs": len(convs),
            "casts": sum(n.op_type == "Cast" for n in model.graph.node), "io": io, "violations": violations}


def routing_counts(model) -> dict[str, int]:
    """Op type -> how many routing nodes the (fp32) graph has: what its fp16 twin must keep in fp32."""
    from nsr_deploy.exporters.onnx.routing import routing_nodes

    names = routing_nodes(model).nodes
    return dict(sorted(Counter(n.op_type for n in model.graph.node if n.name in names).items()))


def check_structure(model, sparse: bool, expected: dict[str, int] | None = None) -> dict:
    """:func:`precision_report`, raising when the contract is broken: a routing node off fp32, a Conv off
    fp16, no routing found in a sparse model, or fewer routing nodes than the fp32 source had
    (``expected``, from :func:`routing_counts`: a Cast inside the routing hides the nodes behind it)."""
    report = precision_report(model)
    if sparse and not report["kept_fp32"].get("Softmax"):
        report["violations"].append("no softmax over k found to keep in fp32")
    if expected is not None and report["kept_fp32"] != expected:
        report["violations"].append(f"routing kept fp32 {report['kept_fp32']} differs from the fp32 graph's "
                                    f"{expected} (a Cast to fp16 inside the routing)")
    if report["violations"]:
        listed = "; ".join(report["violations"][:4])
        more = len(report["violations"]) - 4
        raise NSRError(f"fp16 ONNX structure check failed: {listed}{f'; and {more} more' if more > 0 else ''}; "
                       f"nothing written")
    return report


# -- the pipeline steps (run after the ONNX target when the export asks for fp16) -------------------------------
def smallest_sample(channels: int) -> tuple:
    """The smallest bundled sample photo as ``(float32 CHW, name)``: fp16 arithmetic on the CPU is slow."""
    from nsr_deploy.checks.samples import as_chw, sample_images

    name, chw = min(as_chw(sample_images(channels)), key=lambda item: item[1].shape[1] * item[1].shape[2])
    return chw, name


def build(ctx) -> Artifact:
    """``model.fp16.onnx`` into ``ctx.folder`` from the ONNX model just built, structure-checked."""
    import onnx
    from onnxconverter_common import __version__ as converter_version

    source = ctx.onnx_path  # model.onnx, or its portable twin when model.onnx is ORT-only (nchwc)
    with ctx.stages.stage("fp16-convert"):
        model = onnx.load(str(source))
        half = convert(model)
        report = check_structure(half, ctx.loaded.config.sparse, routing_counts(model))
        data = half.SerializeToString()
        path = ctx.folder / FP16_FILE
        path.write_bytes(data)
    contract = json.loads({p.key: p.value for p in half.metadata_props}.get("nsr_manifest", "{}"))
    entry = {
        "file": FP16_FILE, "sha256": sha256_bytes(data), "bytes": len(data), "precision": "fp16",
        "runtime": "GPU runtimes that run fp16 ONNX as typed (ONNX Runtime CUDA/DirectML, OpenVINO GPU, TensorRT)",
        "conv_form": contract.get("conv_form"), "static_batch": contract.get("io", {}).get("static_batch"),
        "io": "float32 (Casts to fp16 inside the graph)", "kept_fp32": {"why": KEPT_FP32_WHY, **report},
        "converter": f"onnxconverter-common {converter_version} convert_float_to_float16 (keep_io_types, "
                     f"node block list)",
    }
    return Artifact(NAME, path, "fp16 ONNX (fp16 arithmetic, onnx.reference)", "onnx/fp16", entry,
                    {"onnxconverter-common": converter_version})


def gate(artifact: Artifact, ctx) -> GateResult:
    """fp16 arithmetic (:mod:`.fp16_reference`) against the PyTorch reference, judged as the OpenVINO fp16
    IR is; then ONNX Runtime CPU on the same file (fp32 arithmetic over the fp16 weights: it runs there)."""
    from nsr_deploy.checks.compare import patch_parity
    from nsr_deploy.checks.gates import GATE_PATCHES, precision_gate
    from nsr_deploy.checks.verdicts import tolerance_of
    from nsr_deploy.exporters.onnx.fp16_reference import Fp16GraphRunner
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    net = ctx.loaded.net
    with ctx.stages.stage("fp16-parity"):
        with Fp16GraphRunner(str(artifact.path)) as runner:
            result = precision_gate(net, runner, "fp16", smallest_sample(net.config.channels))
        with OrtRunner(str(artifact.path), ctx.options.threads) as runner:
            ort = patch_parity(net, runner, runner.static_batch or GATE_PATCHES, net.config.patch_size,
                               tolerance_of("fp16"))
    ort = replace(ort, check="onnxruntime_cpu_patches",
                  detail=ort.detail + " (ONNX Runtime CPU: fp32 arithmetic over the fp16 weights)")
    limits = {**result.limits, "runtime": "onnx.reference, fp16 arithmetic (MatMul/Conv accumulate in fp32)"}
    return GateResult((*result.checks, ort), limits)


def fp16_onnx_for(ctx, source: Path) -> Path:
    """The fp16 twin of ``source`` (an ONNX file of this export): the shipped ``model.fp16.onnx`` when it
    was made from the same file, else one made (and structure-checked) in the scratch folder."""
    import onnx

    shipped = ctx.artifacts.get(NAME)
    if shipped is not None and Path(source) == ctx.onnx_path:
        return shipped.path
    model = onnx.load(str(source))
    half = convert(model)
    check_structure(half, ctx.loaded.config.sparse, routing_counts(model))
    path = ctx.scratch / f"{Path(source).stem}.fp16.onnx"
    path.write_bytes(half.SerializeToString())
    return path
