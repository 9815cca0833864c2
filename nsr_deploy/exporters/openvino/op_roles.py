"""What each compute op of a lowered NSR graph is for (Fan et al., NeurIPS 2020, Eq. 6-10).

The OpenVINO exporter needs this twice: int8 must know which ops have weights it can quantize (and
say why the others stay float), and fp16 must prove the sparsity softmax and kernel mixing still
execute in f32. Roles:

``conv``            a convolution with constant weights: head, tail, skip, dense block convs and the
                    ``dense-mix`` all-groups convs
``per_patch_conv``  the sparse conv itself: its kernel is mixed per patch at run time (``grouped``:
                    GroupConvolution with computed weights; ``matmul``: a MatMul of two activations)
``pooling_mlp``     patch mean-pool -> MLP (Eq. 8): the routing logits
``kernel_mixing``   softmax weights x stacked kernels (Eq. 10), kernels and biases alike
``softmax``         the softmax over the k groups (Eq. 9)

Layers are named as in the reference checkpoint (``body.0``, ``body.1.body.2``, ``skip.0``): the
exporter traces modules with those names, and OpenVINO keeps them in its friendly names.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

COMPUTE_TYPES = ("Convolution", "GroupConvolution", "MatMul")
# ops a constant passes through on its way to a weight input (decompression, layout, quantization)
CONST_PASS_THROUGH = ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Multiply", "Subtract",
                      "FakeQuantize", "Tile")  # Tile: the folded form's per-patch copies of a constant conv
# ops that only carry routing values from one routing op to the next (the folded form picks each softmax
# weight with a Gather): they keep f32 with them
CARRIERS = ("Reshape", "Gather", "Unsqueeze")
LAYER_PART = re.compile(r"^(?:body|skip)\.\d+$")
SEARCH_DEPTH = 6


@dataclass(frozen=True)
class GraphOp:
    name: str  # OpenVINO friendly name
    op_type: str
    role: str
    layer: str | None  # checkpoint layer name, None when the graph lost it
    aliases: tuple[str, ...] = ()  # the bias Add it feeds: the plugin names a fused MatMul+Add after it

    def as_dict(self) -> dict:
        return asdict(self)


def name_by_graph_order(model):
    """Name every node that has no name of its own after its place in the graph. OpenVINO names them from
    a process-wide counter (Constant_1234), so the same graph built twice in one process would otherwise
    be saved with other names: this keeps an export a function of the checkpoint alone."""
    for i, node in enumerate(model.get_ordered_ops()):
        if node.get_friendly_name() == node.get_name():
            node.set_friendly_name(f"{node.get_type_name()}_{i}")
    return model


def layer_of_name(name: str) -> str | None:
    """``/body/body.1/body/body.0/Conv`` -> ``body.1.body.0``; None when no layer path is in it."""
    parts = [p for p in name.split("/") if LAYER_PART.match(p)]
    return ".".join(parts) or None


def _is_constant(output, depth: int = SEARCH_DEPTH) -> bool:
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    if kind in CONST_PASS_THROUGH and depth > 0:
        return all(_is_constant(node.input_value(i), depth - 1) for i in range(node.get_input_size()))
    return False


def _ancestors(node, depth: int = SEARCH_DEPTH):
    """Producers of ``node`` up to ``depth`` hops back, nearest first."""
    frontier, seen = [node], set()
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for i in range(n.get_input_size()):
                src = n.input_value(i).get_node()
                if src.get_friendly_name() not in seen:
                    seen.add(src.get_friendly_name())
                    nxt.append(src)
                    yield src
        frontier = nxt


def _layer_of(node) -> str | None:
    """The op's layer from its own name, else from the nearest producer that kept one (onnxsim may
    rename a fused Gemm to ``Gemm_0``; its ReduceMean input still says where it lives)."""
    found = layer_of_name(node.get_friendly_name())
    if found:
        return found
    for src in _ancestors(node):
        found = layer_of_name(src.get_friendly_name())
        if found:
            return found
    return None


def _role(node) -> str:
    kind = node.get_type_name()
    if kind == "Softmax":
        return "softmax"
    weights_constant = _is_constant(node.input_value(1))
    if kind in ("Convolution", "GroupConvolution"):
        return "conv" if weights_constant else "per_patch_conv"
    weights_constant = weights_constant or _is_constant(node.input_value(0))  # the folded MLP: W^T @ pooled^T
    if not weights_constant:
        return "per_patch_conv"  # MatMul of the mixed kernels with the im2col columns
    producers = {src.get_type_name() for src in _ancestors(node, 3)}
    return "pooling_mlp" if "ReduceMean" in producers else "kernel_mixing"


def _mixes_kernels(node, mixing: set[str]) -> bool:
    """An elementwise step of Eq. 10 written as Multiply-Adds (the folded form): ``softmax weight x
    constant kernel``, or the sum of two such terms."""
    kind = node.get_type_name()
    inputs = [node.input_value(i) for i in range(node.get_input_size())]
    if kind == "Multiply" and any(_is_constant(v) for v in inputs):
        return any(src.get_type_name() == "Softmax" for v in inputs if not _is_constant(v)
                   for src in [v.get_node(), *_ancestors(v.get_node(), 3)])
    return kind == "Add" and all(v.get_node().get_friendly_name() in mixing for v in inputs)


def classify(model) -> list[GraphOp]:
    """Every compute op and softmax of an ``ov.Model`` lowered from our ONNX graph (or built from opsets),
    in graph order."""
    ops, mixing = [], set()
    for node in model.get_ordered_ops():
        if node.get_type_name() in COMPUTE_TYPES + ("Softmax",):
            ops.append(GraphOp(node.get_friendly_name(), node.get_type_name(), _role(node), _layer_of(node),
                               _bias_adds(node)))
        elif _mixes_kernels(node, mixing):
            mixing.add(node.get_friendly_name())
            ops.append(GraphOp(node.get_friendly_name(), node.get_type_name(), "kernel_mixing", _layer_of(node)))
    return ops


def _bias_adds(node) -> tuple[str, ...]:
    """Consumers that add a constant (a bias), not a residual branch."""
    consumers = [t.get_node() for out in node.outputs() for t in out.get_target_inputs()]
    return tuple(c.get_friendly_name() for c in consumers if c.get_type_name() == "Add"
                 and any(_is_constant(c.input_value(i)) for i in range(c.get_input_size())))


def routing_names(model, ops: list[GraphOp], roles: tuple[str, ...]) -> list[str]:
    """Names of the ops of ``roles`` (and their bias Adds) plus the ``CARRIERS`` that take their outputs on
    to the next of them: what must keep f32 between the pooling and the per-patch conv."""
    names = {n for op in ops if op.role in roles for n in (op.name, *op.aliases)}
    for node in model.get_ordered_ops():  # producers come first, so a chain of Reshapes is followed
        if node.get_type_name() in CARRIERS and node.input_value(0).get_node().get_friendly_name() in names:
            names.add(node.get_friendly_name())
    return sorted(names)


def runtime_precisions(runtime_ops: list[dict], graph_ops: list[GraphOp]) -> dict[str, list[str]]:
    """Role -> precisions the plugin really executes them in (from the compiled model's runtime graph,
    whose nodes list the original ops they absorbed)."""
    role_of = {name: op.role for op in graph_ops for name in (op.name, *op.aliases)}
    out: dict[str, set[str]] = {}
    for rt in runtime_ops:
        for original in rt.get("original", [rt["name"]]):
            role = role_of.get(original)
            if role:
                out.setdefault(role, set()).add(rt["precision"])
    return {role: sorted(p) for role, p in sorted(out.items())}


def weight_quantized_ops(model) -> set[str]:
    """Names of compute ops whose weights pass through a quantizer or are stored as 8-bit integers."""
    done = set()
    for node in model.get_ordered_ops():
        if node.get_type_name() in COMPUTE_TYPES and _weights_are_int8(node.input_value(1)):
            done.add(node.get_friendly_name())
    return done


def _weights_are_int8(output, depth: int = SEARCH_DEPTH) -> bool:
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_output_element_type(0).get_type_name() in ("i8", "u8")
    if kind in CONST_PASS_THROUGH and depth > 0:
        return any(_weights_are_int8(node.input_value(i), depth - 1) for i in range(node.get_input_size()))
    return False
