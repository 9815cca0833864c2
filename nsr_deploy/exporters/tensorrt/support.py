"""Which nodes of an exported NSR graph TensorRT's ONNX parser accepts, and which conv form suits it.

Pure Python over the ONNX graph: no TensorRT needed, so the check runs (and is tested) anywhere.

Source of every rule below (checked for this module; cite the same if you update it):
  * onnx/onnx-tensorrt ``docs/operators.md`` at the "ONNX-TensorRT 10.1 GA release" commit 96e7811
    (2024-06-17; the page says "TensorRT 10.0 supports operators in the inclusive range of opset 9 to
    opset 20") - the support matrix and its "Restrictions" column;
  * the same commit's importers (``onnxOpImporters.cpp``: ``Conv``; ``importerUtils.cpp``:
    ``convMultiInput``) for the conditions the matrix leaves implicit;
  * ``docs/operators.md`` at the 8.4.3 commit bf5f48f still listed Conv with "Weights ``W`` must be an
    initializer"; the 8.5 GA commit 3b008c4 (2022-11-02) dropped it and routes a Conv whose weights or
    bias are runtime tensors to ``convMultiInput`` ("dynamic weights convolution").

The NSR sparse conv (Fan et al., NeurIPS 2020, Eq. 10) mixes a kernel per patch at run time, so the
three portable conv forms differ exactly where TensorRT's support differs:

``grouped``    Conv with runtime weights *and* bias, group = patch batch. Parsed by the dynamic-weights
               path (TensorRT >= 8.5): the weight tensor's output-channel count must be known when the
               network is built (a constant Reshape gives it) and the input channel count must resolve
               at build time - hence a static patch batch, no batch profile, one engine per batch.
``matmul``     im2col (Pad + 9 Slices + Concat) then a batched MatMul of two runtime tensors: every op
               is in the matrix without conditions beyond constant ``axes``; batch and size dynamic.
``dense-mix``  constant-weight Convs for all k groups, then a softmax-weighted sum: TensorRT's best
               supported conv path (weights known at build time), but k times the conv FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from nsr_deploy.core.capabilities import DEPLOY_FORMS, TENSORRT_FORM_ORDER

# The TensorRT release these rules were checked against, and the oldest one that parses runtime-weight Conv.
CHECKED_AGAINST = "onnx-tensorrt docs/operators.md + importers, 10.1 GA (commit 96e7811)"
DEFAULT_TRT_VERSION = (10, 0)
RUNTIME_WEIGHT_CONV_SINCE = (8, 5)
OPSET_RANGE = (9, 20)  # "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"

SUPPORTED = "supported"
CONDITIONAL = "conditional"  # parsed, under conditions the graph meets; worth knowing (speed, static shapes)
UNSUPPORTED = "unsupported"
UNCHECKED = "unchecked"  # not in this module's table: TensorRT's parser decides

# Ops the support matrix marks "N" (TensorRT 10.0/10.1): no importer at all.
NOT_IN_TENSORRT = frozenset("""
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow CenterCropPad
    Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow HannWindow ImageDecoder
    MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
    OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch STFT SequenceAt
    SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
    SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

# Ops marked "Y" with no restriction that matters for float graphs (the ones our exports use, plus a few
# neighbours a future rewrite may bring in).
PLAIN = frozenset("""
    Add Sub Mul Div Relu Concat Shape Gather Identity Transpose Flatten Expand Cast Split Reshape MatMul Softmax
    ConstantOfShape Sigmoid Clip Where Equal Range Tile Neg Sqrt Pow Mod ConvTranspose
""".split())
PAD_MODES = ("constant", "reflect", "edge", "wrap")


@dataclass(frozen=True)
class Finding:
    """What the check says about one node (or, for ``node == "<model>"``, about the whole model)."""

    node: str
    op: str
    status: str
    reason: str

    def line(self) -> str:
        return f"{self.node} ({self.op}): {self.reason}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GraphFacts:
    """What the rules need to know about a graph: which tensors are constant, known shapes, opset."""

    constants: dict[str, list[int]]  # initializers and Constant outputs -> dims
    shapes: dict[str, list[int | None]]  # inferred tensor shapes (None where symbolic)
    opset: int

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def shape(self, name: str) -> list[int | None] | None:
        if name in self.constants:
            return list(self.constants[name])
        return self.shapes.get(name)


def graph_facts(model) -> GraphFacts:
    """Constants, inferred shapes and the default-domain opset of ``model`` (an ``onnx.ModelProto``)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph with ops shape inference cannot read: judge without shapes
        inferred = model
    graph = inferred.graph
    constants = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            constants[node.output[0]] = list(value.dims) if value is not None else []
    shapes = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return GraphFacts(constants, shapes, opset)


# -- per-op rules: each returns (status, reason) ------------------------------------------------------
Rule = Callable[[object, GraphFacts, tuple[int, int]], tuple[str, str]]


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _optional_input(node, index: int) -> str | None:
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _conv(node, facts: GraphFacts, version) -> tuple[str, str]:
    weight = node.input[1]
    bias = _optional_input(node, 2)
    shape = facts.shape(weight)
    if shape is not None and len(shape) not in (3, 4, 5):
        return UNSUPPORTED, f"only 1D (as 2D), 2D and 3D convolutions are parsed; weights have rank {len(shape)}"
    runtime = [name for name in (weight, bias) if name and not facts.is_constant(name)]
    if not runtime:
        return SUPPORTED, "constant weights"
    if version < RUNTIME_WEIGHT_CONV_SINCE:
        return UNSUPPORTED, (f"weights/bias are runtime tensors; TensorRT before "
                             f"{'.'.join(map(str, RUNTIME_WEIGHT_CONV_SINCE))} requires W to be an initializer")
    if shape is None or not shape or shape[0] is None:
        return UNSUPPORTED, ("runtime weights whose output-channel count (dim 0) is not known when the network is "
                             "built: TensorRT's dynamic-weights Conv needs it as a number")
    group = _attr(node, "group", 1)
    return CONDITIONAL, (f"runtime weights and bias (TensorRT's dynamic-weights Conv, >= 8.5): {shape[0]} output "
                         f"maps, group {group}; the input channel count must resolve at build time (static patch "
                         f"batch), and weights are reformatted on every call instead of once at build time")


def _constant_input_rule(index: int, what: str) -> Rule:
    """Ops whose ``axes``-like input must be an initializer (or absent)."""

    def rule(node, facts: GraphFacts, version) -> tuple[str, str]:
        name = _optional_input(node, index)
        if name is not None and not facts.is_constant(name):
            return UNSUPPORTED, f"`{what}` is a runtime tensor; TensorRT requires it to be an initializer"
        return SUPPORTED, f"`{what}` constant" if name else "no runtime-shaped arguments"

    return rule


def _reduce(node, facts: GraphFacts, version) -> tuple[str, str]:
    if _attr(node, "axes") is not None:
        return SUPPORTED, "axes attribute"
    return _constant_input_rule(1, "axes")(node, facts, version)


def _pad(node, facts: GraphFacts, version) -> tuple[str, str]:
    mode = _attr(node, "mode", "constant")
    if mode not in PAD_MODES:
        return UNSUPPORTED, f"pad mode {mode!r} (TensorRT: {', '.join(PAD_MODES)})"
    return _constant_input_rule(3, "axes")(node, facts, version)


def _depth_to_space(node, facts: GraphFacts, version) -> tuple[str, str]:
    shape = facts.shape(node.input[0])
    if shape is not None and len(shape) != 4:
        return UNSUPPORTED, f"input must be 4D NCHW, has rank {len(shape)}"
    return SUPPORTED, f"mode {_attr(node, 'mode', 'DCR')}"


def _gemm(node, facts: GraphFacts, version) -> tuple[str, str]:
    for name in node.input[:2]:
        shape = facts.shape(name)
        if shape is not None and len(shape) != 2:
            return UNSUPPORTED, f"Gemm operands must be 2D, {name!r} has rank {len(shape)}"
    return SUPPORTED, "2D operands"


def _constant(node, facts: GraphFacts, version) -> tuple[str, str]:
    kinds = {a.name for a in node.attribute}
    bad = kinds & {"sparse_value", "value_string", "value_strings"}
    if bad:
        return UNSUPPORTED, f"Constant with {', '.join(sorted(bad))} is not parsed"
    return SUPPORTED, "dense value"


def _matmul(node, facts: GraphFacts, version) -> tuple[str, str]:
    if all(not facts.is_constant(name) for name in node.input):
        return SUPPORTED, "both operands runtime tensors (batched, broadcast): a per-call GEMM"
    return SUPPORTED, "one constant operand"


RULES: dict[str, Rule] = {
    "Conv": _conv,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Pad": _pad,
    "Slice": _constant_input_rule(3, "axes"),
    "Squeeze": _constant_input_rule(1, "axes"),
    "Unsqueeze": _constant_input_rule(1, "axes"),
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "ReduceMax": _reduce,
    "DepthToSpace": _depth_to_space,
    "Constant": _constant,
}


def node_finding(node, index: int, facts: GraphFacts, version: tuple[int, int] = DEFAULT_TRT_VERSION) -> Finding:
    """The verdict on one node."""
    name = node.name or f"#{index}"
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
    if node.domain not in ("", "ai.onnx"):
        return Finding(name, op, UNSUPPORTED, f"custom-domain op ({node.domain}): TensorRT's parser reads ai.onnx "
                                              f"ops only (anything else needs a plugin)")
    if op in NOT_IN_TENSORRT:
        return Finding(name, op, UNSUPPORTED, "marked unsupported in TensorRT's ONNX operator matrix")
    if op in RULES:
        status, reason = RULES[op](node, facts, version)
        return Finding(name, op, status, reason)
    if op in PLAIN:
        return Finding(name, op, SUPPORTED, "in the matrix without restrictions for float tensors")
    return Finding(name, op, UNCHECKED, f"not in nsr-deploy's table ({CHECKED_AGAINST}): TensorRT's parser decides")


def check_graph(model, version: tuple[int, int] = DEFAULT_TRT_VERSION,
                facts: GraphFacts | None = None) -> list[Finding]:
    """A finding for every node of ``model`` (plus one for the opset when it is out of range)."""
    facts = facts or graph_facts(model)
    findings = []
    low, high = OPSET_RANGE
    if not low <= facts.opset <= high:
        findings.append(Finding("<model>", "opset", UNSUPPORTED,
                                f"opset {facts.opset} is outside TensorRT 10's range {low}-{high}"))
    findings += [node_finding(node, i, facts, version) for i, node in enumerate(model.graph.node)]
    return findings


def unsupported_nodes(model, version: tuple[int, int] = DEFAULT_TRT_VERSION) -> list[Finding]:
    """Nodes TensorRT's ONNX parser documents as unsupported in this graph, each with why."""
    return [f for f in check_graph(model, version) if f.status == UNSUPPORTED]


def support_summary(model, version: tuple[int, int] = DEFAULT_TRT_VERSION) -> dict:
    """Counts per status, and the nodes that are not plainly supported (for manifests and reports)."""
    findings = check_graph(model, version)
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.status] = counts.get(f.status, 0) + 1
    return {"checked_against": CHECKED_AGAINST, "tensorrt_version": ".".join(map(str, version)), "counts": counts,
            "notes": [f.as_dict() for f in findings if f.status != SUPPORTED]}


# -- the conv form TensorRT supports best -----------------------------------------------------------------
FORM_ORDER = TENSORRT_FORM_ORDER  # tie-break only


@dataclass(frozen=True)
class FormAssessment:
    form: str
    eligible: bool
    dynamic_batch: bool
    flop_factor: int  # conv FLOPs relative to the exact per-patch conv
    runtime_weight_ops: int  # Convs with runtime weights + MatMuls of two runtime tensors
    conditional: int
    unsupported: list[str]

    def rank_key(self) -> tuple:
        return (not self.dynamic_batch, self.flop_factor, self.runtime_weight_ops, FORM_ORDER.index(self.form)
                if self.form in FORM_ORDER else len(FORM_ORDER))

    def as_dict(self) -> dict:
        return asdict(self)


def assess_form(form: str, model, groups: int, version: tuple[int, int] = DEFAULT_TRT_VERSION) -> FormAssessment:
    """How well TensorRT takes ``model`` (an export in conv form ``form``) of a model with ``groups`` (k)."""
    facts = graph_facts(model)
    findings = check_graph(model, version, facts)
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    runtime_ops = sum(
        1 for n in model.graph.node
        if (n.op_type == "Conv" and not facts.is_constant(n.input[1]))
        or (n.op_type == "MatMul" and not any(facts.is_constant(i) for i in n.input)))
    bad = [f.line() for f in findings if f.status == UNSUPPORTED]
    return FormAssessment(form, not bad, not first.HasField("dim_value"), groups if form == "dense-mix" else 1,
                          runtime_ops, sum(f.status == CONDITIONAL for f in findings), bad)


def preferred_conv_form(graphs: Mapping[str, object], groups: int,
                        version: tuple[int, int] = DEFAULT_TRT_VERSION) -> tuple[str, list[dict]]:
    """The conv form to build a TensorRT engine from, and every candidate's assessment (best first).

    ``graphs`` maps conv form -> its exported ONNX model; ``groups`` is the model's k (1 for dense).
    Ranking, among forms with no unsupported node: a dynamic patch batch first (optimisation profiles,
    one engine for every batch), then the fewest conv FLOPs (``dense-mix`` pays k times), then the fewest
    runtime-weight ops (TensorRT prepares constant weights once, at build time).
    """
    assessed = sorted((assess_form(f, m, groups, version) for f, m in graphs.items()), key=FormAssessment.rank_key)
    eligible = [a for a in assessed if a.eligible]
    if not eligible:
        worst = "; ".join(f"{a.form}: {a.unsupported[0]}" for a in assessed)
        from nsr_deploy.core.errors import NSRError

        raise NSRError(f"no conv form is buildable by TensorRT {'.'.join(map(str, version))} ({worst})")
    report = [a.as_dict() for a in eligible] + [a.as_dict() for a in assessed if not a.eligible]
    return eligible[0].form, report


def preferred_conv_form_for(loaded, patch_batch: int | None, opset: int,
                            version: tuple[int, int] = DEFAULT_TRT_VERSION) -> tuple[str, list[dict]]:
    """Export every portable conv form of ``loaded`` and pick TensorRT's best (for ``--conv-form auto``)."""
    from nsr_deploy.exporters.onnx.graph import DEFAULT_PATCH_BATCH, STATIC_FORMS, build_onnx

    cfg = loaded.config
    batch = patch_batch or DEFAULT_PATCH_BATCH
    graphs = {form: build_onnx(loaded, form, batch if form in STATIC_FORMS else None, opset) for form in DEPLOY_FORMS}
    return preferred_conv_form(graphs, cfg.groups if cfg.sparse else 1, version)
