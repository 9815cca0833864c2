"""`--precision fp16` for ONNX: ``model.fp16.onnx`` keeps the sparsity routing fp32, runs in fp16 on the CPU
gate runtime, passes its gate against the fp32 PyTorch reference, and a failed gate writes nothing."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import data_image, decisive_net
from nsr_deploy.checks.compare import psnr_float
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.common import Stages
from nsr_deploy.exporters.onnx import fp16 as onnx_fp16
from nsr_deploy.exporters.onnx import graph as onnx_exporter
from nsr_deploy.exporters.onnx.fp16_reference import Fp16GraphRunner
from nsr_deploy.exporters.onnx.routing import routing_nodes
from nsr_deploy.exporters.pipeline import ExportContext, ExportOptions, export
from nsr_deploy.exporters.target import Artifact
from nsr_deploy.models.checkpoint import LoadedModel, load_model, save_native
from nsr_deploy.models.reference import reference_forward
from nsr_deploy.runtimes import load

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
PORTABLE = ("grouped", "matmul", "dense-mix")


def _loaded(cfg=TINY, seed=0) -> LoadedModel:
    return LoadedModel(decisive_net(cfg, seed), "tiny", "built", "0" * 64, "tiny")


@pytest.mark.parametrize("form", PORTABLE)
def test_fp16_graph_keeps_routing_fp32_and_convs_fp16(form):
    """The graph walk: per sparse conv, its ReduceMean, MLP, Softmax and mixing take and produce float32;
    every Conv computes in float16; the I/O stays float32. Counted against the fp32 graph's routing."""
    model = onnx_exporter.build_onnx(_loaded(), form, 4 if form == "grouped" else None)
    ops = {n.name: n.op_type for n in model.graph.node}
    want = {}
    for name in routing_nodes(model).nodes:
        want[ops[name]] = want.get(ops[name], 0) + 1
    half = onnx_fp16.convert(model)
    report = onnx_fp16.check_structure(half, sparse=True, expected=onnx_fp16.routing_counts(model))
    assert report["violations"] == [] and report["kept_fp32"] == dict(sorted(want.items()))
    casts = [n for n in half.graph.node if n.op_type == "Cast"]  # none feeds another: no fp16 round trip
    assert not {c.output[0] for c in casts} & {i for c in casts for i in c.input}
    assert report["kept_fp32"]["Softmax"] == report["kept_fp32"]["ReduceMean"] == 2 * TINY.num_blocks
    assert report["io"] == {"x": "FLOAT", "valid": "FLOAT", "y": "FLOAT"} and report["fp16_convs"] > 0
    assert {p.key: p.value for p in half.metadata_props}["nsr_precision"] == "fp16"
    kinds = {i.data_type for i in half.graph.initializer if i.dims and len(i.dims) == 4}
    assert kinds == {10}  # conv weights stored as FLOAT16 (ONNX type 10)


def test_structure_check_refuses_an_fp16_softmax():
    """The same conversion without the block list puts the softmax in fp16: the check names it."""
    from onnxconverter_common import float16

    model = onnx_exporter.build_onnx(_loaded(), "matmul", None)
    plain = float16.convert_float_to_float16(model, keep_io_types=True)
    with pytest.raises(NSRError, match=r"fp16 ONNX structure check failed: .*\((ReduceMean|MatMul|Softmax|Gemm|Add)\)"
                                       r".* is FLOAT16, not FLOAT"):
        onnx_fp16.check_structure(plain, sparse=True)


def _two_conv_graph():
    """x -> fp16 -> Conv(w=1000) -> Conv(w=1e-3) -> float -> * valid: 100 * 1000 overflows fp16."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Cast", ["x"], ["h"], to=T.FLOAT16), helper.make_node("Conv", ["h", "w1"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["b"]), helper.make_node("Cast", ["b"], ["c"], to=T.FLOAT),
             helper.make_node("Mul", ["c", "valid"], ["y"])]
    weights = [numpy_helper.from_array(np.full((1, 1, 1, 1), v, np.float16), name)
               for name, v in (("w1", 1000), ("w2", 1e-3))]
    io = [helper.make_tensor_value_info(n, T.FLOAT, [1, 1, 2, 2]) for n in ("x", "valid", "y")]
    graph = helper.make_graph(nodes, "g", io[:2], io[2:], weights)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_gate_runtime_rounds_every_fp16_node(tmp_path):
    """What makes it the gate runtime: each node's output is rounded to fp16 (overflow gives inf), as numpy
    computes it in float16 step by step (ONNX Runtime's CPU provider gives ~100 here: fp32 in between)."""
    path = tmp_path / "g.onnx"
    path.write_bytes(_two_conv_graph().SerializeToString())
    x = np.array([[[[100.0, 0.1], [1.0009765625, 3.0]]]], np.float32)
    with Fp16GraphRunner(str(path)) as runner:
        got = runner.infer(x, np.ones_like(x))
    h = x.astype(np.float16)
    with np.errstate(over="ignore"):
        want = ((h * np.float16(1000)).astype(np.float16) * np.float16(1e-3)).astype(np.float16).astype(np.float32)
    assert np.isinf(got[0, 0, 0, 0]) and np.array_equal(got, want)


def test_onnx_fp16_export_ships_gated_model_that_onnxruntime_runs(tmp_path):
    save_native(_loaded().net, tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["--target", "onnx", "--precision", "fp16", "--conv-form", "matmul", "--threads", "1", "-o", str(out)]
    result = CliRunner().invoke(main, ["export", str(tmp_path / "tiny.safetensors"), *args])
    assert result.exit_code == 0, result.output
    wrote = [line for line in result.output.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1 and "model.fp16.onnx" in wrote[0]
    assert sorted(p.name for p in out.iterdir()) == ["model.fp16.onnx", "model.onnx", "nsr.json"]
    doc = json.loads((out / "nsr.json").read_text())
    entry, gate = doc["targets"]["onnx-fp16"], doc["parity"]["onnx/fp16"]
    assert entry["file"] == "model.fp16.onnx" and entry["kept_fp32"]["violations"] == []
    assert gate["passed"] and gate["tolerance_max_abs"] == 5e-3 and gate["min_psnr"] == 45.0
    assert [c["check"] for c in gate["checks"]] == ["random_patches", "real_image", "onnxruntime_cpu_patches"]
    # the file itself, through the runtimes' ONNX Runtime runner, against the reference on a real photo
    image = data_image("CSet5", 1)[:72, :90].astype(np.float32).transpose(2, 0, 1) / 255.0
    with load(out / "model.fp16.onnx", threads=1) as engine, torch.no_grad():
        assert engine.runner.backend == "onnxruntime"
        got = engine.restore_chw(image)
        want = reference_forward(_loaded().net, torch.from_numpy(image[None]))[0].numpy()
    assert psnr_float(got, want) >= 45.0


def test_failed_fp16_gate_writes_nothing(tmp_path):
    """Features beyond fp16's range (65504) between head and tail (the tail scales them back): fine in
    fp32, inf in fp16 -> refused."""
    loaded = _loaded()
    with torch.no_grad():
        for p in loaded.net.body[0].parameters():  # the head conv
            p.mul_(1e6)
        next(loaded.net.body[-1].parameters()).mul_(1e-6)  # the tail conv's weight
    out = tmp_path / "out"
    with pytest.raises(NSRError, match=r"^(parity gate failed: fp16 ONNX|fp16 ONNX structure).*nothing written$"):
        export(loaded, out, "onnx", ExportOptions(conv_form="matmul", precision="fp16", threads=1,
                                                  show_progress=False))
    assert list(tmp_path.iterdir()) == []


def test_bundled_sr_x2_fp16_graph_passes_its_gate(tmp_path):
    loaded = load_model("sr-x2")
    half = onnx_fp16.convert(onnx_exporter.build_onnx(loaded, "matmul", None))
    report = onnx_fp16.check_structure(half, sparse=True)
    assert report["kept_fp32"]["Softmax"] == report["kept_fp32"]["ReduceMean"] == 2 * loaded.config.num_blocks
    path = tmp_path / "sr.fp16.onnx"
    path.write_bytes(half.SerializeToString())
    artifact = Artifact(onnx_fp16.NAME, path)
    context = ExportContext(loaded, tmp_path, ExportOptions(threads=1), Stages([], show=False), tmp_path)
    gate = onnx_fp16.gate(artifact, context)
    assert gate.passed, gate.to_manifest()
    assert all(c.max_abs > 1e-5 for c in gate.checks[:2])  # fp16 arithmetic really ran
