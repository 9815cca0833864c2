"""`--target triton`: the model repository's layout, every config.pbtxt parsed by Triton's own ModelConfig
protobuf (from tritonclient) and checked against the exported engine, and the client's requests.

No Triton server can run here (no container engine): the live call is skipped unless NSR_TRITON_URL
names a server that holds this test's repository.
"""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from conftest import data_image
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export, resolve_targets
from nsr_deploy.exporters.triton import target as triton
from nsr_deploy.models.checkpoint import LoadedModel, save_native
from nsr_deploy.models.network import NSRNet
from nsr_deploy.runtimes import load
from nsr_deploy.runtimes.engine import Engine
from nsr_deploy.runtimes.host.tiling import Padded, make_plan
from nsr_deploy.runtimes.manifest import manifest_config, read_manifest
from nsr_deploy.runtimes.triton.runner import TritonRunner, batch_limits, build_inputs, build_outputs, split_url

pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install 'nsr-deploy[serve]')")
from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
FORMS = ["grouped", "matmul"]  # the portable forms an export ships (nchwc is made at load, not exported)


def _loaded():
    torch.manual_seed(0)
    net = NSRNet(TINY).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "mlp" in name:
                p.normal_(0, 3.0)  # patch-dependent mixing
    return LoadedModel(net, "tiny", "built", "0" * 64, "tiny")


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """{conv form: Triton repository} for a tiny model (patch batch 4); 'matmul' goes through the CLI."""
    root = tmp_path_factory.mktemp("triton")
    loaded = _loaded()
    out = {}
    for form in FORMS:
        if form == "matmul":
            save_native(loaded.net, root / "tiny", {"name": "tiny"})
            result = CliRunner().invoke(main, ["export", str(root / "tiny.safetensors"), "--target", "triton",
                                               "--conv-form", "matmul", "-o", str(root / form), "--json"])
            assert result.exit_code == 0, result.stderr
            assert json.loads(result.stdout)["triton"]["models"]["onnx"]["model"] == "tiny_onnx"
            out[form] = root / form
            continue
        try:
            export(loaded, root / form, "triton", ExportOptions(conv_form=form, patch_batch=4, show_progress=False))
        except NSRError as e:
            if "not available here" not in str(e):
                raise
            continue  # nchwc needs an x86 CPU whose ORT blocks it supports
        out[form] = root / form
    return out


def parse(path):
    """config.pbtxt -> Triton's ModelConfig, with protobuf's own text parser (independent of the exporter)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


FILES = {"onnx": ["model.onnx"], "openvino": ["model.bin", "model.xml"], "tensorrt": ["model.plan"]}
PLATFORM = {"onnx": ("onnxruntime_onnx", ""), "openvino": ("", "openvino"), "tensorrt": ("tensorrt_plan", "")}
KIND = {"onnx": "KIND_CPU", "openvino": "KIND_CPU", "tensorrt": "KIND_GPU"}


def engine_dims(target, version_dir):
    """Each tensor's dims in the engine file itself (-1 where dynamic)."""
    if target == "onnx":
        graph = onnx.load(str(version_dir / "model.onnx")).graph
        return {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
                for v in list(graph.input) + list(graph.output)}
    if target == "openvino":
        import openvino

        model = openvino.Core().read_model(str(version_dir / "model.xml"))
        return {t.get_any_name(): [d.get_length() if d.is_static else -1 for d in t.get_partial_shape()]
                for t in list(model.inputs) + list(model.outputs)}
    pytest.skip("a TensorRT plan cannot be opened without TensorRT")


def served(repo):
    """{engine target: model folder} of a repository, from its manifest."""
    models = read_manifest(repo)["triton"]["models"]
    return {target: repo / m["model"] for target, m in models.items()}


@pytest.mark.parametrize("form", FORMS)
def test_repository_layout(repos, form):
    if form not in repos:
        pytest.skip(f"conv form {form} cannot be built on this CPU")
    repo = repos[form]
    root = read_manifest(repo)
    built = [t for t in ("onnx", "openvino", "tensorrt") if t in root["targets"]]
    assert set(built) | set(root.get("skipped_targets", {})) == {"onnx", "openvino", "tensorrt"}
    # Triton serves every sub-folder of the repository as a model: there must be no other folder
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(f"tiny_{t}" for t in built)
    assert {p.name for p in repo.iterdir() if p.is_file()} >= {"nsr.json", "client_example.py"}
    for target, folder in served(repo).items():
        assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "nsr.json"]
        assert sorted(p.name for p in (folder / "1").iterdir()) == FILES[target]
        own = read_manifest(folder)
        assert list(own["targets"]) == [target] and own["targets"][target]["file"] == f"1/{FILES[target][-1]}"
        assert own["triton"]["model"] == folder.name and own["io"]["inputs"][0]["name"] == "x"
        if root["targets"][target].get("portable", True):  # the root manifest follows the engine
            assert root["targets"][target]["file"] == f"{folder.name}/1/{FILES[target][-1]}"


@pytest.mark.parametrize("form", FORMS)
def test_configs_parse_as_triton_modelconfig_and_match_the_engines(repos, form):
    if form not in repos:
        pytest.skip(f"conv form {form} cannot be built on this CPU")
    for target, folder in served(repos[form]).items():
        config = parse(folder / "config.pbtxt")
        dims = engine_dims(target, folder / "1")
        assert config.name == folder.name and (config.platform, config.backend) == PLATFORM[target]
        assert [i.name for i in config.input] == ["x", "valid"] and [o.name for o in config.output] == ["y"]
        assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in list(config.input) + list(config.output))
        declared = {t.name: list(t.dims) for t in list(config.input) + list(config.output)}
        static = dims["x"][0] > 0  # the served engine's own batch axis decides
        if static:  # grouped (and the portable twin of nchwc): fixed batch of 4, Triton must not batch
            assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
            assert declared == dims and declared["x"] == [4, 3, -1, -1]
        else:
            assert config.max_batch_size == triton.DYNAMIC_MAX_BATCH and config.HasField("dynamic_batching")
            assert declared == {name: d[1:] for name, d in dims.items()} and declared["x"] == [3, -1, -1]
        kinds = [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in config.instance_group]
        assert kinds == [(KIND[target], 1)]
        assert triton.config_problems(config) == []
        # what the client learns from the server's config (the JSON both protocols return)
        as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
        assert batch_limits(as_json) == ((4, None) if static else (None, triton.DYNAMIC_MAX_BATCH))


@pytest.mark.parametrize("target,static", [(t, s) for t in triton.SERVINGS for s in (None, 8)])
def test_every_engine_kind_gets_a_valid_config(repos, target, static):
    """TensorRT cannot be built here (and OpenVINO may not be): every kind's config is also checked from
    the manifest's I/O contract, as the exporter writes it; TensorRT with the profiles its exporter plans."""
    from nsr_deploy.exporters.tensorrt.profiles import profile_plan

    manifest = read_manifest(next(iter(repos.values())))
    serving = triton.SERVINGS[target]
    plan = profile_plan(TINY, static, None if static else (1, 16, 32)) if target == "tensorrt" else []
    entry = {"profiles": [p.as_dict(3) for p in plan]}
    max_batch = 0 if static else triton.max_batch_for(target, entry, ExportOptions())
    text = triton.config_text(triton.model_name("tiny", target), serving, manifest["io"], static, max_batch,
                              len(plan))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == f"tiny_{target}" and (config.platform, config.backend) == PLATFORM[target]
    group = config.instance_group[0]
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == KIND[target]
    # a TensorRT plan with several profiles: every one is offered, or Triton would use only the first
    assert list(group.profile) == ([str(i) for i in range(len(plan))] if len(plan) > 1 else [])
    expected_max = 0 if static else (32 if target == "tensorrt" else triton.DYNAMIC_MAX_BATCH)  # TRT: profile max
    assert config.max_batch_size == expected_max
    assert list(config.output[0].dims) == ([static, 3, -1, -1] if static else [3, -1, -1])
    assert triton.config_problems(config) == []


def test_configs_triton_would_refuse_are_caught():
    manifest_io = {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3, "h", "w"]}],
                   "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3, "h", "w"]}]}
    text = triton.config_text("m", triton.SERVINGS["onnx"], manifest_io, None, 16)
    bad = text.replace("max_batch_size: 16", "max_batch_size: 0")  # dynamic batching without batching
    assert "dynamic batching needs max_batch_size > 0" in triton.config_problems(triton.parse_config(bad))
    with pytest.raises(NSRError, match="does not parse as Triton's ModelConfig"):
        triton.parse_config(text.replace("KIND_CPU", "KIND_TOASTER"))
    assert "optimisation profiles are for TensorRT plans only" in triton.config_problems(triton.parse_config(
        text.replace("kind: KIND_CPU", 'kind: KIND_CPU\n    profile: [ "0" ]')))
    with pytest.raises(NSRError, match="dims must be positive or -1"):
        triton.validate_config(text.replace("dims: [ 3, -1, -1 ]", "dims: [ 0, -1, -1 ]", 1), "m/config.pbtxt")


def test_served_model_folder_is_an_export_folder_too(repos):
    """REPO/<model> carries its own nsr.json: local runtimes load it, and give the root's result."""
    repo = next(iter(repos.values()))
    image = data_image("CSet14", 5)  # face, 276x276: tiled
    with load(repo / "tiny_onnx", threads=1) as own, load(repo, "onnxruntime", threads=1) as whole:
        assert np.array_equal(own.restore(image), whole.restore(image))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_requests_carry_tiled_patches(repos, protocol):
    """The client tiles with nsr_deploy.runtimes and packs x/valid as the config declares them."""
    import importlib

    module = importlib.import_module(f"tritonclient.{protocol}")
    image = data_image("CSet14", 5).astype(np.float32).transpose(2, 0, 1) / 255.0
    plan = make_plan("reference", *image.shape[1:], TINY.patch_size, True, TINY.receptive_radius())
    x, valid = Padded(image, plan.pad).windows(plan, plan.tiles[:4])
    inputs = build_inputs(module, x, valid)
    assert [(i.name(), i.shape(), i.datatype()) for i in inputs] == [
        ("x", [4, 3, TINY.patch_size, TINY.patch_size], "FP32"),
        ("valid", [4, 1, TINY.patch_size, TINY.patch_size], "FP32")]
    if protocol == "grpc":  # the raw bytes that go on the wire are the patches themselves
        assert inputs[0]._get_content() == x.tobytes() and inputs[1]._get_content() == valid.tobytes()
    assert [o.name() for o in build_outputs(module)] == ["y"]
    assert split_url("http://h:8000") == ("http", "h:8000", False) and split_url("h:8001") == ("grpc", "h:8001", False)


def test_live_server_restores_like_the_local_engine(repos):
    url = os.environ.get("NSR_TRITON_URL")
    if not url:
        pytest.skip("no Triton server can run here (no container engine); set NSR_TRITON_URL to a server "
                    "serving this test's repository to run the live call")
    repo = repos.get("matmul") or next(iter(repos.values()))
    manifest = read_manifest(repo / "tiny_onnx")
    image = data_image("CSet14", 5)
    with Engine(TritonRunner(url, "tiny_onnx"), manifest_config(manifest)) as remote, \
            load(repo, "onnxruntime", threads=1) as local:
        assert np.abs(remote.restore(image).astype(int) - local.restore(image)).max() <= 1


def test_client_example_reports_an_unreachable_server(repos):
    repo = next(iter(repos.values()))
    image = repo.parent / "face.png"
    image.write_bytes(b"")  # never read: the server is asked first
    proc = subprocess.run([sys.executable, str(repo / "client_example.py"), str(image), str(repo.parent / "o.png"),
                           "--url", "127.0.0.1:9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot reach Triton at 127.0.0.1:9")
    assert proc.stderr.count("\n") == 1


def test_triton_builds_every_engine_target_it_can_and_never_joins_all():
    chosen, skipped = resolve_targets("triton")
    assert chosen[0] == "onnx" and chosen[-1] == "triton"
    assert set(chosen[1:-1]) | set(skipped) == {"openvino", "tensorrt"}
    assert "triton" not in resolve_targets("all")[0]
