"""Read an NSR network's weights back out of a portable ``model.onnx`` (torch-free, ``onnx`` only).

The load-time NCHWc specialisation (:mod:`.specialise`) rebuilds the graph in ONNX Runtime's
blocked layout from these. The portable graph's structure is ours (:mod:`nsr_deploy.models.deploy`),
and its own metadata says the architecture, so this reads initializers in graph order and checks every
shape against the config: per sparse conv the MLP (a MatMul + Add or a Gemm after a ReduceMean) and
the stacked kernels of the mixing MatMul ``[d, k, (out/d) * (in*ks*ks + 1)]`` (bias last per output
channel; the ``matmul`` form orders a kernel's columns (ky, kx, in), the ``grouped`` form (in, ky, kx));
plus the constant-weight head, tail and 5x5 skip convs. Anything unexpected raises
:class:`PortableGraphError` and the runner keeps the portable model.
"""

from __future__ import annotations

import numpy as np

from nsr_deploy.core.capabilities import SPECIALISABLE_FORMS
from nsr_deploy.core.config import SKIP_KERNEL, NSRConfig
from nsr_deploy.runtimes.onnxruntime.nchwc_graph import NetWeights, SparseConv, StaticConv

READABLE_FORMS = SPECIALISABLE_FORMS


class PortableGraphError(Exception):
    """The graph is not the portable NSR network this module knows how to read."""


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _attr(node, name: str, default=0):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _mlps(graph, consts) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sparse conv, in graph order: the MLP weight ``[in, d*k]`` and bias after the patch pooling."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in graph.node:
        pooled = n.input and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "ReduceMean"
        if not pooled or len(n.input) < 2 or n.input[1] not in consts:
            continue
        if n.op_type == "Gemm":
            if _attr(n, "transA") or len(n.input) < 3 or n.input[2] not in consts:
                raise PortableGraphError("an MLP Gemm of an unexpected shape")
            w = consts[n.input[1]]
            out.append((w.T if _attr(n, "transB") else w, consts[n.input[2]]))
        elif n.op_type == "MatMul":
            adds = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
            bias = [i for a in adds for i in a.input if i in consts]
            if len(bias) != 1:
                raise PortableGraphError("an MLP MatMul without its bias Add")
            out.append((consts[n.input[1]], consts[bias[0]]))
    return out


def _stacks(graph, consts) -> list[np.ndarray]:
    """The mixing MatMuls' stacked kernels ``[d, k, L]``, in graph order."""
    return [consts[n.input[1]] for n in graph.node
            if n.op_type == "MatMul" and n.input[1] in consts and consts[n.input[1]].ndim == 3]


def _static_convs(graph, consts) -> list[StaticConv]:
    out = []
    for n in graph.node:
        if n.op_type == "Conv" and n.input[1] in consts:
            if _attr(n, "group", 1) != 1 or len(n.input) < 3 or n.input[2] not in consts:
                raise PortableGraphError("a constant-weight conv with groups or no bias")
            out.append(StaticConv(consts[n.input[1]].astype(np.float32), consts[n.input[2]].astype(np.float32)))
    return out


def _sparse(stacked: np.ndarray, mlp: tuple[np.ndarray, np.ndarray], cin: int, cout: int, ks: int, k: int, d: int,
            form: str) -> SparseConv:
    per, f = cout // d, cin * ks * ks
    if stacked.shape != (d, k, per * (f + 1)) or mlp[0].shape != (cin, d * k) or mlp[1].shape != (d * k,):
        raise PortableGraphError(f"sparse conv {cin}->{cout}: stacked {list(stacked.shape)}, MLP "
                                 f"{list(mlp[0].shape)} do not match the config")
    rows = stacked.reshape(d, k, per, f + 1).transpose(1, 0, 2, 3)  # [k, d, per, F+1]
    w = rows[..., :f].reshape(k * cout, f)
    if form == "matmul":  # columns (ky, kx, in) -> (in, ky, kx)
        w = w.reshape(k * cout, ks, ks, cin).transpose(0, 3, 1, 2)
    w = np.ascontiguousarray(w.reshape(k * cout, cin, ks, ks), np.float32)
    b = np.ascontiguousarray(rows[..., f].reshape(-1), np.float32)
    return SparseConv(w, b, np.ascontiguousarray(mlp[0], np.float32), np.ascontiguousarray(mlp[1], np.float32), k, d)


def read_weights(model, config: NSRConfig, conv_form: str) -> NetWeights:
    """The weights of a sparse NSR network exported in ``conv_form`` (one of :data:`READABLE_FORMS`)."""
    if conv_form not in READABLE_FORMS:
        raise PortableGraphError(f"conv form {conv_form!r} is not read back (only {', '.join(READABLE_FORMS)})")
    if not config.sparse:
        raise PortableGraphError("a dense model has no sparse conv to specialise")
    consts = _initializers(model.graph)
    mlps, stacks, statics = _mlps(model.graph, consts), _stacks(model.graph, consts), _static_convs(model.graph, consts)
    shapes = config.conv_shapes()
    sparse_shapes = [s for s in shapes if s.sparse]
    if len(mlps) != len(sparse_shapes) or len(stacks) != len(sparse_shapes):
        raise PortableGraphError(f"found {len(mlps)} MLPs and {len(stacks)} mixing MatMuls for "
                                 f"{len(sparse_shapes)} sparse convs")
    k, d = config.groups, config.cardinals
    sparse = [_sparse(st, mlp, s.cin, s.cout, s.kernel, k, d, conv_form)
              for st, mlp, s in zip(stacks, mlps, sparse_shapes)]
    skip = [c for c in statics if c.w.shape[-1] == SKIP_KERNEL]
    body = [c for c in statics if c.w.shape[-1] != SKIP_KERNEL]
    want_skip = 1 if config.has_skip else 0
    if len(skip) != want_skip or len(body) != 2:
        raise PortableGraphError(f"found {len(body)} head/tail and {len(skip)} skip convs")
    head, tail = body
    for conv, (_, cin, cout, ks, _) in ((head, shapes[0]), (tail, shapes[-1 - want_skip])):
        if conv.w.shape != (cout, cin, ks, ks):
            raise PortableGraphError(f"a static conv of shape {list(conv.w.shape)}, expected {[cout, cin, ks, ks]}")
    blocks = tuple(zip(sparse[0::2], sparse[1::2]))
    return NetWeights(config.channels, config.out_channels, config.scale, config.image_mean, head, blocks, tail,
                      skip[0] if skip else None)
