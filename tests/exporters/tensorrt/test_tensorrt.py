"""`--target tensorrt`: what can be checked without TensorRT (operator support over our exported graphs,
optimisation profiles against the host tiling, fp16 judging, error paths), and an end-to-end test that
builds, gates and runs an engine where TensorRT and a GPU exist (skipped here, with the reason).

TensorRT is never emulated: without it these tests check our own logic and our refusal to go on.
"""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import data_image, decisive_net
from nsr_deploy.checks import verdicts
from nsr_deploy.checks.gates import float_gate
from nsr_deploy.checks.results import GateResult
from nsr_deploy.checks.verdicts import judge_fp16_gate
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import BackendUnavailable, NSRError
from nsr_deploy.exporters.onnx import graph as onnx_graph
from nsr_deploy.exporters.onnx.routing import routing_nodes
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.exporters.tensorrt import support
from nsr_deploy.exporters.tensorrt import target as trt_target
from nsr_deploy.exporters.tensorrt.profiles import DimRange, profile_plan
from nsr_deploy.models.checkpoint import LoadedModel, save_native
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.host.tiling import make_plan
from nsr_deploy.runtimes.tensorrt.compat import major_of, version_refusal
from nsr_deploy.runtimes.tensorrt.logger import summarize
from nsr_deploy.runtimes.tensorrt.runner import EngineProfile, select_profile, unavailable

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
ONE_GROUP = NSRConfig(channels=1, scale=2, num_blocks=1, units=8, block_width=8, groups=1, cardinals=4)
# widths that are multiples of either NCHWc block (8 or 16): the ORT-only nchwc graph can be built for both
BLOCKABLE = NSRConfig(channels=3, scale=2, num_blocks=1, units=16, block_width=16, groups=2, cardinals=4)
DENSE = NSRConfig.create(channels=1, scale=2, num_blocks=1, units=8, width_multiplier=1, sparse=False)
PORTABLE = ("grouped", "matmul", "dense-mix")
BATCH = 4
TRT_MISSING = unavailable()


def _loaded(cfg: NSRConfig, seed: int = 0) -> LoadedModel:
    return LoadedModel(decisive_net(cfg, seed), "tiny", "built", "0" * 64, "tiny")


def _graphs(cfg: NSRConfig, forms=PORTABLE) -> dict:
    loaded = _loaded(cfg)
    return {f: onnx_graph.build_onnx(loaded, f, BATCH if f == "grouped" else None) for f in forms}


@pytest.fixture(scope="module")
def graphs():
    return _graphs(TINY)


# -- operator support over our exported graphs ----------------------------------------------------------------
def test_dynamic_forms_use_only_unconditionally_supported_ops(graphs):
    for form in ("matmul", "dense-mix"):
        findings = support.check_graph(graphs[form])
        assert {f.status for f in findings} == {support.SUPPORTED}, form


def test_grouped_form_is_supported_through_runtime_weight_convs(graphs):
    """The per-patch convs (2 per block) have runtime weights: parsed by TensorRT >= 8.5 only, and only
    with their output-channel count known (static batch); every other node is plainly supported."""
    findings = support.check_graph(graphs["grouped"])
    conditional = [f for f in findings if f.status == support.CONDITIONAL]
    assert [f.op for f in conditional] == ["Conv"] * 2 * TINY.num_blocks
    assert all(f"group {BATCH}" in f.reason and ">= 8.5" in f.reason for f in conditional)
    assert support.unsupported_nodes(graphs["grouped"]) == []
    # the same nodes, judged against TensorRT 8.4 (W had to be an initializer): unsupported
    old = support.unsupported_nodes(graphs["grouped"], version=(8, 4))
    assert [f.node for f in old] == [f.node for f in conditional]
    # every runtime-weight conv really consumes computed weights: no initializer feeds it
    inits = {i.name for i in graphs["grouped"].graph.initializer}
    convs = {n.name: n for n in graphs["grouped"].graph.node if n.op_type == "Conv"}
    assert all(convs[f.node].input[1] not in inits for f in conditional)


@pytest.mark.parametrize("block", [8, 16])  # AVX2's and AVX-512's NCHWc blocks: built here whatever this CPU has
def test_ort_only_nchwc_form_is_refused_with_the_nodes_named(block):
    from nsr_deploy.exporters.onnx.nchwc import build_nchwc_onnx

    model = build_nchwc_onnx(_loaded(BLOCKABLE), BATCH, block)
    bad = support.unsupported_nodes(model)
    assert bad and all(f.op.startswith("com.microsoft") for f in bad)
    # exactly the ORT-internal nodes are named, and the blocked convs are among them
    internal = [n for n in model.graph.node if n.domain.startswith("com.microsoft")]
    assert len(bad) == len(internal) and {f.op for f in bad} == {f"{n.domain}.{n.op_type}" for n in internal}
    assert "com.microsoft.nchwc.Conv" in {f.op for f in bad}
    with pytest.raises(NSRError, match=r"node\(s\) TensorRT cannot parse: .*com\.microsoft") as e:
        trt_target.refuse_unsupported(model, "model.onnx")
    assert "\n" not in str(e.value)


def _tiny_graph(node, inputs, opset=17, initializers=()):
    import onnx
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(name, TensorProto.INT64 if name in ("s", "e", "axes") else
                                            TensorProto.FLOAT, shape) for name, shape in inputs]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", values, [out], list(initializers))
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def test_documented_restrictions_are_enforced():
    from onnx import helper, numpy_helper

    slice_runtime_axes = _tiny_graph(helper.make_node("Slice", ["x", "s", "e", "axes"], ["out"], name="sl"),
                                     [("x", [2, 3]), ("s", [1]), ("e", [1]), ("axes", [1])])
    reduce_runtime_axes = _tiny_graph(helper.make_node("ReduceMean", ["x", "axes"], ["out"], name="rm"),
                                      [("x", [2, 3]), ("axes", [1])], opset=18)
    reduce_constant_axes = _tiny_graph(helper.make_node("ReduceMean", ["x", "axes"], ["out"], name="rm"),
                                       [("x", [2, 3])], opset=18,
                                       initializers=[numpy_helper.from_array(np.array([1]), "axes")])
    unique = _tiny_graph(helper.make_node("Unique", ["x"], ["out"], name="u"), [("x", [4])])
    conv_unknown_maps = _tiny_graph(helper.make_node("Conv", ["x", "w"], ["out"], name="c"),
                                    [("x", [1, 2, 5, 5]), ("w", [None, 2, 3, 3])])
    too_new = _tiny_graph(helper.make_node("Relu", ["x"], ["out"], name="r"), [("x", [2])], opset=21)
    verdicts = {name: [f.line() for f in support.unsupported_nodes(m)] for name, m in [
        ("slice", slice_runtime_axes), ("reduce", reduce_runtime_axes), ("reduce_ok", reduce_constant_axes),
        ("unique", unique), ("conv", conv_unknown_maps), ("opset", too_new)]}
    assert verdicts["slice"] == ["sl (Slice): `axes` is a runtime tensor; TensorRT requires it to be an initializer"]
    assert verdicts["reduce"] and verdicts["reduce_ok"] == []
    assert "marked unsupported" in verdicts["unique"][0]
    assert "output-channel count" in verdicts["conv"][0]
    assert verdicts["opset"] == ["<model> (opset): opset 21 is outside TensorRT 10's range 9-20"]


def test_routing_kept_in_fp32_is_pooling_mlp_softmax_and_mixing(graphs):
    """Per sparse conv: its Softmax, the ReduceMean it pools with, and the MatMul that mixes kernels;
    never a Conv (the convolutions themselves run in fp16)."""
    sparse_convs = 2 * TINY.num_blocks
    for form, model in graphs.items():
        routing = routing_nodes(model)
        ops = {n.name: n.op_type for n in model.graph.node}
        chosen = [ops[name] for name in routing.nodes]
        assert chosen.count("Softmax") == chosen.count("ReduceMean") == sparse_convs, form
        assert chosen.count("MatMul") >= sparse_convs and "Conv" not in chosen, form
        if form == "dense-mix":  # the gamma-weighted sum of the k group outputs is the mixing there
            assert chosen.count("ReduceSum") == sparse_convs


def test_preferred_conv_form_for_tensorrt(graphs):
    """k = 2: matmul (dynamic batch, exact FLOPs) over dense-mix (k x FLOPs) over grouped (static batch).
    k = 1: dense-mix costs no extra FLOPs and uses only constant-weight convs, so it wins."""
    form, report = support.preferred_conv_form(graphs, TINY.groups)
    assert form == "matmul"
    assert [r["form"] for r in report] == ["matmul", "dense-mix", "grouped"]
    assert report[2]["dynamic_batch"] is False and report[1]["flop_factor"] == TINY.groups
    assert support.preferred_conv_form(graphs, TINY.groups, version=(8, 4))[1][-1]["eligible"] is False
    one_group = _graphs(ONE_GROUP, ("matmul", "dense-mix"))
    assert support.preferred_conv_form(one_group, 1)[0] == "dense-mix"
    with pytest.raises(NSRError, match="no conv form is buildable"):
        support.preferred_conv_form({"grouped": graphs["grouped"]}, TINY.groups, version=(8, 4))


def test_onnx_facts_the_target_reads(graphs):
    assert trt_target.static_batch_of(graphs["grouped"]) == BATCH
    assert trt_target.static_batch_of(graphs["matmul"]) is None
    assert {f: trt_target.conv_form_of(m) for f, m in graphs.items()} == {f: f for f in graphs}


# -- optimisation profiles ------------------------------------------------------------------------------------
def test_profiles_from_options():
    default = profile_plan(TINY, patch_batch=16)
    assert [p.name for p in default] == ["tiles", "whole-image", "whole-image-wide", "whole-image-tall"]
    tiles = default[0]
    assert tiles.input_shapes(3) == {"x": ((1, 3, 1, 1), (16, 3, 48, 48), (16, 3, 86, 86)),
                                     "valid": ((1, 1, 1, 1), (16, 1, 48, 48), (16, 1, 86, 86))}
    assert [p.batch.as_list() for p in default[1:]] == [[1, 1, 1]] * 3  # whole images come one at a time
    assert default[1].height.as_list() == [1, 192, 512] and default[2].width.as_list() == [1, 512, 1372]
    chosen = profile_plan(TINY, batch_profile=(2, 8, 32))
    assert chosen[0].batch == DimRange(2, 8, 32)
    assert profile_plan(TINY, static_batch=16)[0].batch == DimRange(16, 16, 16)
    # a static batch spends the whole-image pixel budget N times, but always holds images below 4 patches
    assert [p.height.max for p in profile_plan(TINY, static_batch=16)[1:]] == [192]
    assert [(p.height.max, p.width.max) for p in profile_plan(TINY, static_batch=4)[1:]] == \
        [(256, 256), (191, 343), (343, 191)]
    assert [(p.name, p.height.as_list()) for p in profile_plan(DENSE)] == [("tiles", [1, 200, 200])]
    assert profile_plan(TINY.replace(patch_size=96))[0].height.as_list() == [1, 96, 96]


def test_profile_options_that_cannot_apply_are_refused():
    with pytest.raises(NSRError, match="--batch-profile needs a dynamic-batch conv form"):
        profile_plan(TINY, static_batch=16, batch_profile=(1, 8, 16))
    with pytest.raises(NSRError, match="MIN,OPT,MAX"):
        profile_plan(TINY, batch_profile=(8, 4, 16))


def _as_engine_profiles(profiles):
    """The ranges a built engine reports (what the runner reads with get_tensor_profile_shape)."""
    return [EngineProfile(i, (p.batch.min, p.batch.max), (p.height.min, p.height.max), (p.width.min, p.width.max))
            for i, p in enumerate(profiles)]


@pytest.mark.parametrize("cfg", [TINY, DENSE], ids=["sparse", "dense"])
def test_every_window_the_tiling_sends_has_a_profile(cfg):
    """Cross-check against the host tiling itself: for images within the documented limits, every window
    of the reference and cells modes lands in a profile, in batches the profile takes."""
    profiles = _as_engine_profiles(profile_plan(cfg, patch_batch=16))
    widest = max(profiles, key=lambda p: p.height[1] * p.width[1])  # what TrtRunner.max_window() gives the plan
    sizes = [(1, 1), (20, 31), (96, 120), (191, 1372), (1372, 191), (512, 512), (200, 700), (1000, 1500)]
    for h, w in sizes:
        for mode in ("reference", "cells"):
            plan = make_plan(mode, h, w, cfg.patch_size, cfg.sparse, cfg.receptive_radius(),
                             max_side=(widest.height[1], widest.width[1]))
            n = 1 if plan.whole_image else min(16, len(plan.tiles))
            chosen = select_profile(profiles, n, plan.window_h, plan.window_w)
            assert chosen.covers_tile(plan.window_h, plan.window_w) and n <= chosen.batch[1], (h, w, mode)


def test_runner_profile_choice_and_refusal():
    profiles = _as_engine_profiles(profile_plan(TINY, patch_batch=16))
    assert select_profile(profiles, 16, 48, 48).index == 0
    assert select_profile(profiles, 40, 48, 48).index == 0  # the runner slices 40 into 16 + 16 + 8
    assert select_profile(profiles, 1, 150, 900).index == 2  # a wide strip
    with pytest.raises(NSRError, match=r"no batch of 1 150x2000 tiles \(profile 0: batch 1-16, 1-86 x 1-86;"):
        select_profile(profiles, 1, 150, 2000)


# -- gates, messages ----------------------------------------------------------------------------------------------
def _gate(psnrs):
    checks = [{"check": f"c{i}", "max_abs": 0.01, "psnr": p, "tolerance": 0.1, "passed": True, "detail": "d"}
              for i, p in enumerate(psnrs)]
    return {"tolerance_max_abs": 0.1, "passed": True, "checks": checks}


def _judge_fp16(gate: dict) -> GateResult:
    """TensorRT's fp16 verdict: the shared fp16 judge at TensorRT's PSNR floor, on every check."""
    return judge_fp16_gate(GateResult.from_manifest(gate), verdicts.TRT_FP16_MIN_PSNR)


def test_fp16_is_judged_on_psnr_against_the_fp32_reference():
    assert _judge_fp16(_gate([45.0, None])).to_manifest()["passed"]  # None: identical outputs
    judged = _judge_fp16(_gate([45.0, 39.9]))
    failed = judged.to_manifest()
    assert not failed["passed"] and [c["passed"] for c in failed["checks"]] == [True, False]
    assert failed["min_psnr"] == 40.0 and "PSNR vs fp32 reference 39.9 dB" in failed["checks"][1]["detail"]
    message = judged.failure_line("TensorRT fp16")
    assert message == ("parity gate failed: TensorRT fp16 vs PyTorch reference: max abs 0.01 (limit 0.1), "
                       "PSNR 39.9 dB (at least 40) on c1; nothing written")


def test_engine_gate_has_the_onnx_gate_shape(tmp_path):
    """The gate logic on its own, through the ONNX Runtime runner (the backend does not matter to it): the
    same dict shape the ONNX gate writes, with the fp16 PSNR floor added to every check."""
    from nsr_deploy.runtimes.onnxruntime.runner import OrtRunner

    loaded = _loaded(TINY)
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_graph.build_onnx(loaded, "matmul", None).SerializeToString())
    with OrtRunner(str(path), threads=1) as runner:
        reference = float_gate(loaded.net, runner, 1e-4).to_manifest()
        gate = trt_target.engine_gate(loaded, runner, "fp16").to_manifest()
    assert gate["passed"] and set(gate) == set(reference) | {"min_psnr"}
    assert [c["check"] for c in gate["checks"]] == [c["check"] for c in reference["checks"]]
    assert all(c["min_psnr"] == 40.0 and c["tolerance"] == 0.1 for c in gate["checks"])


def test_parser_errors_become_one_line():
    issues = [trt_target.ParserIssue(12, "/body.1/Conv", "Conv", "kernel weights has count 9\nbut 18 expected"),
              trt_target.ParserIssue(-1, "", "", "opset 22 unsupported")]
    line = trt_target.format_parser_errors("model.onnx", issues)
    assert line == ("TensorRT's ONNX parser rejected model.onnx (2 errors): [1] node 12 /body.1/Conv (Conv): kernel "
                    "weights has count 9 but 18 expected; [2] model: opset 22 unsupported")
    assert "without saying why" in trt_target.format_parser_errors("model.onnx", [])
    assert summarize(["a\nb", "a b", "c"]) == "a b; c"


def test_options_the_target_cannot_honour(tmp_path):
    with pytest.raises(NSRError, match=r"int8 is not supported.*explicitly quantized \(Q/DQ\).*--precision fp16"):
        trt_target.validate_options(ExportOptions(precision="int8"))
    with pytest.raises(NSRError, match="--timing-cache .* is a folder"):
        trt_target.validate_options(ExportOptions(timing_cache=str(tmp_path)))
    trt_target.validate_options(ExportOptions(precision="fp16", timing_cache=str(tmp_path / "trt.cache")))
    assert major_of("10.3.0.26") == 10 and major_of("11.4.0") == 11 and major_of("x") == 0
    assert version_refusal("10.16.1") is None and version_refusal("11.4.0.12") is None
    assert version_refusal("8.6.1") == "TensorRT 10.0 or newer is needed, found 8.6.1"
    assert "newer than the releases nsr-deploy was checked against (10.x and 11.x)" in version_refusal("12.0")


# -- without TensorRT: refuse clearly, write nothing ------------------------------------------------------------------
needs_no_trt = pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT and a GPU are present: no refusal to test")


@needs_no_trt
def test_export_without_tensorrt_exits_2_and_writes_nothing(tmp_path):
    save_native(_loaded(TINY).net, tmp_path / "tiny")
    out = tmp_path / "out"
    for extra in ([], ["--precision", "fp16", "--batch-profile", "1,8,16"]):
        result = CliRunner().invoke(main, ["export", str(tmp_path / "tiny.safetensors"), "--target", "tensorrt",
                                           "-o", str(out), *extra])
        assert result.exit_code == 2
        assert result.stderr == f"error: cannot build target 'tensorrt' here: {TRT_MISSING}\n"
        assert "TensorRT is not installed" in result.stderr or "CUDA" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]  # no OUT, no temp folder


@needs_no_trt
def test_a_folder_named_tensorrt_is_not_an_install(tmp_path, monkeypatch):
    """An empty ``tensorrt/`` folder on sys.path imports as a namespace package: still "not installed"."""
    from nsr_deploy.runtimes.tensorrt.runner import tensorrt_unavailable

    (tmp_path / "tensorrt").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    assert tensorrt_unavailable().startswith("TensorRT is not installed")


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "export"
    export(_loaded(TINY), out, "onnx", ExportOptions(conv_form="matmul", threads=1, show_progress=False))
    return out


@needs_no_trt
def test_loading_an_engine_without_tensorrt_says_what_is_missing(onnx_folder, tmp_path):
    """An export folder made on a GPU machine (its engine entry added here; the engine bytes are never read)."""
    folder = tmp_path / "from-gpu"
    shutil.copytree(onnx_folder, folder)
    (folder / "model.engine").write_bytes(b"never read without TensorRT")
    doc = json.loads((folder / "nsr.json").read_text())
    import hashlib

    sha = hashlib.sha256((folder / "model.engine").read_bytes()).hexdigest()
    doc["targets"]["tensorrt"] = {"file": "model.engine", "sha256": sha, "precision": "fp32", "runtime": "tensorrt"}
    (folder / "nsr.json").write_text(json.dumps(doc))
    for target, backend in ((folder / "model.engine", "auto"), (folder, "tensorrt")):
        with pytest.raises(BackendUnavailable) as e:
            load(target, backend)
        assert str(e.value) == TRT_MISSING
    with load(folder, threads=1) as engine:  # auto: falls back to the ONNX model in the same folder
        assert engine.runner.backend == "onnxruntime"
        assert engine.restore(data_image("CSet5", 0)[:40, :40]).shape == (80, 80, 3)


def test_cuda_reasons_are_plain_words():
    from nsr_deploy.runtimes.tensorrt import cuda_device

    assert cuda_device.unavailable("opencl") == "unknown CUDA provider 'opencl' (choose from auto, torch, cuda-python)"
    try:
        cuda_device._import_cudart()
    except ImportError:
        assert cuda_device.unavailable("cuda-python") == "no CUDA device via cuda-python (cuda-python is not installed)"
    if not torch.cuda.is_available():
        assert cuda_device.unavailable("torch") == "no CUDA device via torch (torch is missing or a CPU-only build)"


def test_runner_module_imports_no_torch():
    import subprocess

    code = ("import sys, nsr_deploy.runtimes.tensorrt.runner as r, nsr_deploy.runtimes.tensorrt.cuda_device as c; "
            "r.tensorrt_unavailable(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- with TensorRT and a GPU: build, gate, run ---------------------------------------------------------------------
needs_trt = pytest.mark.skipif(TRT_MISSING is not None, reason=f"TensorRT target cannot run here: {TRT_MISSING}")


@needs_trt
@pytest.mark.parametrize("form", ["matmul", "grouped"])
def test_engine_builds_passes_parity_and_restores_like_the_reference(tmp_path, form):
    from nsr_deploy.models.reference import reference_forward

    loaded = _loaded(TINY)
    cache = tmp_path / "trt.cache"
    options = ExportOptions(conv_form=form, patch_batch=BATCH, precision="fp32", timing_cache=str(cache),
                            show_progress=False, threads=1)
    manifest = export(loaded, tmp_path / "out", "tensorrt", options)
    entry = manifest["targets"]["tensorrt"]
    assert manifest["parity"]["tensorrt/fp32"]["passed"] and (tmp_path / "out" / "model.engine").exists()
    assert entry["conv_form"] == form and entry["static_batch"] == (BATCH if form == "grouped" else None)
    assert entry["gpu"] and entry["compute_capability"].count(".") == 1 and entry["tf32"] is False
    assert entry["timing_cache"]["status"] == "new" and cache.stat().st_size > 0
    again = export(loaded, tmp_path / "again", "tensorrt", options)
    assert again["targets"]["tensorrt"]["timing_cache"]["status"] == "reused"
    image = data_image("CSet14", 2).astype(np.float32).transpose(2, 0, 1) / 255.0
    strip = image[:, :120, :300]  # short side below 4 patches: the whole-image profiles
    with load(tmp_path / "out", "tensorrt") as engine, torch.no_grad():
        for picture in (image, strip):
            want = reference_forward(loaded.net, torch.from_numpy(picture[None]))[0].numpy()
            assert np.abs(engine.restore_chw(picture) - want).max() <= verdicts.TRT_FP32_MAX_ABS


@needs_trt
def test_fp16_engine_keeps_routing_fp32_and_meets_psnr(tmp_path):
    from nsr_deploy.checks.compare import psnr_float
    from nsr_deploy.models.reference import reference_forward

    loaded = _loaded(TINY)
    manifest = export(loaded, tmp_path / "out", "tensorrt",
                      ExportOptions(conv_form="matmul", precision="fp16", show_progress=False, threads=1))
    assert manifest["parity"]["tensorrt/fp16"]["passed"] and manifest["parity"]["onnx/fp16"]["passed"]
    assert manifest["targets"]["tensorrt"]["onnx_source"] == "model.fp16.onnx"
    image = data_image("CSet5", 1).astype(np.float32).transpose(2, 0, 1) / 255.0
    with load(tmp_path / "out", "tensorrt") as engine, torch.no_grad():
        got = engine.restore_chw(image)
        want = reference_forward(loaded.net, torch.from_numpy(image[None]))[0].numpy()
    assert psnr_float(got, want) >= verdicts.TRT_FP16_MIN_PSNR


@needs_trt
def test_tensorrt_parser_agrees_with_the_support_table(graphs):
    import tensorrt as trt

    from nsr_deploy.runtimes.tensorrt.compat import network_flags
    from nsr_deploy.runtimes.tensorrt.logger import collecting_logger

    for form, model in graphs.items():
        logger = collecting_logger(trt)
        builder = trt.Builder(logger)
        parser = trt.OnnxParser(builder.create_network(network_flags(trt)), logger)
        assert parser.parse(model.SerializeToString()), (form, trt_target.read_parser_errors(parser))


# -- TensorRT 11: the removed weak-typing APIs stay out ---------------------------------------------------------------
REMOVED_IN_11 = {  # the 10.x -> 11.x migration guide, "Removed Python APIs and Replacements"
    "precision builder flags": r"BuilderFlag\.(FP16|INT8|BF16|FP8|INT4|FP4|DIRECT_IO)\b",
    "precision constraints": r"(OBEY|PREFER)_PRECISION_CONSTRAINTS",
    "calibrators": r"int8_calibrator|calibration_profile|quantization_flag",
    "platform queries": r"platform_has_fast_(fp16|int8)",
    "per-layer precision (refused by strongly typed networks)": r"set_output_type|layer\.precision\b",
    "implicit/explicit batch flag": r"EXPLICIT_BATCH",
    "device_memory_size without _v2 (outside trt_compat)": r"device_memory_size(?!_v2)",
}


def _tensorrt_sources():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    files = [*root.glob("nsr_deploy/exporters/tensorrt/*.py"), *root.glob("nsr_deploy/runtimes/tensorrt/*.py"),
             root / "tools/gpu_check.sh"]
    return {f.relative_to(root).as_posix(): f.read_text() for f in files}


def test_no_api_tensorrt_11_removed_comes_back():
    import re

    sources = _tensorrt_sources()
    assert {"nsr_deploy/exporters/tensorrt/target.py", "nsr_deploy/runtimes/tensorrt/runner.py", "tools/gpu_check.sh",
            "nsr_deploy/runtimes/tensorrt/compat.py"} <= set(sources)
    found = [f"{path}: {what} ({m.group(0)})" for path, text in sources.items()
             for what, pattern in REMOVED_IN_11.items() for m in re.finditer(pattern, text)
             if not (path.endswith("tensorrt/compat.py") and what.startswith("device_memory_size"))]
    assert found == []
    # the patterns catch what the TensorRT 10 build did
    old = ("config.set_flag(trt.BuilderFlag.FP16); config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS); "
           "layer.precision = trt.float32; layer.set_output_type(j, trt.float32); engine.device_memory_size")
    assert all(re.search(p, old) for w, p in REMOVED_IN_11.items() if "calibrat" not in w and "platform" not in w
               and "batch" not in w)
