"""The sparsity routing in an ONNX graph (Fan et al., NeurIPS 2020, Eq. 8-10): the patch pooling
(ReduceMean), the MLP, the softmax over k and the ops that mix the k kernels and biases with its weights.

Every precision-reducing target keeps these in fp32 (DEVELOPERS.md): the fp16 ONNX graph
(:mod:`~nsr_deploy.exporters.onnx.fp16`) puts them behind explicit Casts, and TensorRT's fp16 engines are
built from that graph. Found by walking back from each Softmax to its ReduceMean and forward to the mixing
op; shape-only ops are passed through.
"""

from __future__ import annotations

from dataclasses import dataclass

_SHAPE_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten")
_MLP_OPS = ("MatMul", "Gemm", "Add", *_SHAPE_OPS)


@dataclass(frozen=True)
class RoutingNodes:
    """ONNX nodes of the sparsity routing (pooling -> MLP -> softmax -> mixing) and their outputs."""

    nodes: frozenset[str]
    outputs: frozenset[str]


def routing_nodes(model) -> RoutingNodes:
    """Walk back from each Softmax to its ReduceMean and forward to the op that mixes with the gamma."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chosen: dict[int, object] = {}
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        chosen[id(softmax)] = softmax
        _walk_back(softmax, producer, chosen)
        _walk_forward(softmax, consumers, chosen)
    nodes = list(chosen.values())
    return RoutingNodes(frozenset(n.name for n in nodes if n.name), frozenset(o for n in nodes for o in n.output))


def _walk_back(node, producer: dict, chosen: dict) -> None:
    """Softmax <- shape ops <- MLP (MatMul/Gemm + Add) <- ReduceMean: the routing logits."""
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for name in current.input:
            src = producer.get(name)
            if src is None or id(src) in chosen:
                continue
            if src.op_type == "ReduceMean":
                chosen[id(src)] = src
            elif src.op_type in _MLP_OPS:
                chosen[id(src)] = src
                frontier.append(src)


def _walk_forward(node, consumers: dict, chosen: dict) -> None:
    """Softmax -> shape ops -> the mixing MatMul (kernels, biases) or Mul (+ its ReduceSum, dense-mix)."""
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for out in current.output:
            for dst in consumers.get(out, []):
                if id(dst) in chosen:
                    continue
                if dst.op_type in _SHAPE_OPS:
                    chosen[id(dst)] = dst
                    frontier.append(dst)
                elif dst.op_type in ("MatMul", "Mul"):
                    chosen[id(dst)] = dst
                    for follower in (d for o in dst.output for d in consumers.get(o, [])):
                        if dst.op_type == "Mul" and follower.op_type == "ReduceSum":
                            chosen[id(follower)] = follower
