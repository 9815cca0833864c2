"""`runs_on` lists nothing untested without saying so: every place an export says its file runs names the
test of this repository that executes it (or the export's own gate), and every other place says why it was
not verified here. Checked for each target over entries of each precision and form."""

import ast
import itertools

import pytest

from conftest import ROOT
from nsr_deploy.core.capabilities import ALL_TARGETS
from nsr_deploy.exporters import runs_on as r
from nsr_deploy.exporters.pipeline import target_module

ENTRIES = [{"precision": p, "conv_form": f, "static_batch": b, "ir_version": 8, "io_dtype": "float32",
            "size": {"max_side": 512}} for p, f, b in itertools.product(("fp32", "fp16", "bf16", "int8"),
                                                                        ("grouped", "matmul", "folded"), (None, 16))]
TOOLS = {"onnxruntime": "1.32.0", "openvino": "2026.4.1", "ncnn": "1.0", "executorch": "1.0", "tensorrt": "10.8"}


def _test_functions(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_every_place_names_the_test_that_runs_it_or_why_not(target):
    module = target_module(target)
    assert callable(getattr(module, "runs_on", None)), f"{target} does not say where its files run"
    for entry in ENTRIES:
        manifest = {"targets": {target: {"file": "f", **entry}}, "tools": TOOLS}
        places = r.runs_on(manifest, lambda name: module)[target]
        assert places["verified"], (target, entry)
        for place in places["verified"]:
            if place["by"] == r.GATE:
                continue
            path, _, name = place["by"].partition("::")
            assert path.startswith("tests/") and (ROOT / path).is_file(), place
            assert name in _test_functions(path), f"{target}: {place['by']} is not a test"
        assert all(p["why"] for p in places["not_verified"]), places


def test_arm64_is_claimed_only_for_what_the_emulated_run_executes():
    """The ARM64 run executes the grouped ONNX model, the fp32 folded IR and fp32 ncnn files: any other form
    or precision lists ARM64 as not verified, with the reason."""
    cases = (("onnx", {"conv_form": "grouped"}, True), ("onnx", {"conv_form": "matmul"}, False),
             ("openvino", {"precision": "fp32"}, True), ("openvino", {"precision": "int8"}, False),
             ("ncnn", {"precision": "fp32"}, True), ("ncnn", {"precision": "fp16"}, False))
    for target, entry, claimed in cases:
        manifest = {"targets": {target: {"file": "f", "ir_version": 8, **entry}}, "tools": TOOLS}
        places = r.runs_on(manifest, target_module)[target]
        on_arm = [p for p in places["verified"] if "ARM64" in p["where"]]
        assert bool(on_arm) == claimed and all(p["by"] == r.ARM64 for p in on_arm), (target, entry)
        assert claimed or any("ARM64" in p["where"] for p in places["not_verified"]), (target, entry)


def test_vulkan_is_claimed_only_for_what_the_lavapipe_run_executes():
    """The Vulkan test runs fp32 grouped ncnn files on Mesa's software GPU: other ncnn files list Vulkan as not
    verified, and hardware GPUs stay not verified for all."""
    from nsr_deploy.exporters.ncnn import target

    for entry, claimed in (({"precision": "fp32", "conv_form": "grouped"}, True),
                           ({"precision": "fp16", "conv_form": "grouped"}, False),
                           ({"precision": "fp32", "conv_form": "matmul"}, False)):
        places = r.runs_on({"targets": {"ncnn": {"file": "f", **entry}}, "tools": TOOLS}, target_module)["ncnn"]
        on_gpu = [p for p in places["verified"] if "Vulkan" in p["where"]]
        assert bool(on_gpu) == claimed and all(p["by"] == target.VULKAN for p in on_gpu), entry
        assert any("hardware Vulkan" in p["where"] for p in places["not_verified"]), entry


def test_webgpu_is_claimed_only_for_what_the_browser_run_executes():
    """The WebGPU test runs fp32 grouped ONNX files in Chromium: other forms and precisions list WebGPU as not
    verified, and hardware GPUs stay not verified for all."""
    from nsr_deploy.exporters.onnx import target

    for entry, claimed in (({"precision": "fp32", "conv_form": "grouped"}, True),
                           ({"precision": "fp16", "conv_form": "grouped"}, False),
                           ({"precision": "fp32", "conv_form": "matmul"}, False)):
        manifest = {"targets": {"onnx": {"file": "f", "ir_version": 8, **entry}}, "tools": TOOLS}
        places = r.runs_on(manifest, target_module)["onnx"]
        on_gpu = [p for p in places["verified"] if "WebGPU" in p["where"]]
        assert bool(on_gpu) == claimed and all(p["by"] == target.WEBGPU for p in on_gpu), entry
        assert claimed or any("WebGPU" in p["where"] for p in places["not_verified"]), entry
        assert any("hardware GPU" in p["where"] for p in places["not_verified"]), entry


def test_a_place_is_either_verified_or_says_why():
    with pytest.raises(ValueError):
        r.Where("somewhere")
    with pytest.raises(ValueError):
        r.Where("somewhere", by="tests/x.py::test_y", why="and not")
