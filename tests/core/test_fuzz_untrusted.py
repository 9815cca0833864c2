"""Fuzzing what nsr-deploy reads from untrusted files: mutated checkpoints (tensors, keys, bytes) and
mutated export manifests must load and run, or fail with an ``NSRError`` (one error line), never
anything else. In-process on a tiny model: 60 cases each take seconds (NSR_FUZZ_EXAMPLES=600 hunts longer)."""

import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel, load_model, save_reference_checkpoint
from nsr_deploy.runtimes import load

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)
FUZZ = settings(max_examples=int(os.environ.get("NSR_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=list(HealthCheck))
IMAGE = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    net = decisive_net(TINY)
    save_reference_checkpoint(net, root / "tiny.pt")
    loaded = LoadedModel(net, str(root / "tiny.pt"), "reference", "0" * 64, "tiny")
    export(loaded, root / "export", "onnx", ExportOptions(conv_form="matmul", patch_batch=4, show_progress=False))
    state = torch.load(root / "tiny.pt", weights_only=True)["model_state_dict"]
    return {"root": root, "state": state, "ckpt": root / "tiny.pt", "export": root / "export"}


# -- checkpoints ---------------------------------------------------------------------------------------
def _mutate_tensor(t: torch.Tensor, how: str, draw) -> object:
    if t.numel() > 10**5:  # an earlier stride-0 mutation: converting it would allocate here, in the test
        return t
    if how == "nan" and t.numel() and t.is_floating_point() and t.layout == torch.strided:
        t = t.contiguous().clone()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
        return t
    if how == "shape":
        return torch.zeros(draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
    if how == "dtype":
        return t.to(draw(st.sampled_from([torch.int64, torch.uint8, torch.bool, torch.float16, torch.complex64])))
    if how == "stride0":
        return torch.zeros(1).expand(*[draw(st.integers(1, 10**4)) for _ in range(t.dim() or 1)])
    if how == "transpose" and t.dim() >= 2:
        return t.transpose(0, 1)
    if how == "sparse":
        return t.to_sparse()
    if how == "not_a_tensor":
        return draw(st.one_of(st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=3)))
    return t


@st.composite
def mutated_state(draw, state):
    state = dict(state)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(state, key=str)))
        how = draw(st.sampled_from(["delete", "rename", "nan", "shape", "dtype", "stride0", "transpose", "sparse",
                                    "not_a_tensor", "int_key"]))
        value = state.pop(key)
        if how == "delete":
            continue
        if how == "rename":
            state[draw(st.sampled_from(["body.9.weight", "module." + str(key), "skip.0.weight", ""]))] = value
        elif how == "int_key":
            state[draw(st.integers(-3, 3))] = value
        else:
            state[key] = _mutate_tensor(value, how, draw) if isinstance(value, torch.Tensor) else value
    return {"model_state_dict": state}


def _load_or_clean_error(path) -> None:
    try:
        loaded = load_model(path)
    except NSRError as e:
        assert str(e) and "\n" not in str(e)
        return
    with torch.no_grad():  # what loads must be usable: finite output of the right shape
        y = loaded.net(torch.rand(1, 3, 12, 12))
    assert y.shape == (1, 3, 24, 24) and bool(torch.isfinite(y).all())


def test_fuzz_checkpoint_tensor_mutations(base, tmp_path):
    @FUZZ
    @given(data=st.data())
    def run(data):
        obj = data.draw(mutated_state(base["state"]))
        buf = io.BytesIO()
        torch.save(obj, buf)
        (tmp_path / "m.pt").write_bytes(buf.getvalue())
        _load_or_clean_error(tmp_path / "m.pt")

    run()


def test_fuzz_checkpoint_bytes(base, tmp_path):
    raw = base["ckpt"].read_bytes()

    @FUZZ
    @given(cut=st.integers(0, len(raw)), flips=st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)),
                                                         max_size=6))
    def run(cut, flips):
        data = bytearray(raw)
        for at, xor in flips:
            data[at] ^= xor
        (tmp_path / "b.pt").write_bytes(bytes(data[:cut] if cut < len(raw) // 2 else data))
        _load_or_clean_error(tmp_path / "b.pt")

    run()


# -- manifests -----------------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _set(doc, path, value, delete):
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def test_fuzz_manifest_mutations(base, tmp_path):
    folder = tmp_path / "exp"
    shutil.copytree(base["export"], folder)
    original = json.loads((base["export"] / "nsr.json").read_text())
    paths = [p for p in _paths(original) if not (p and p[0] == "parity")]  # parity is a report, not the contract

    @FUZZ
    @given(edits=st.lists(st.tuples(st.sampled_from(paths), JSON_VALUES, st.booleans()), min_size=1, max_size=3))
    def run(edits):
        doc = json.loads(json.dumps(original))
        for path, value, delete in edits:
            try:
                doc = _set(doc, path, value, delete and bool(path))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed the path
        (folder / "nsr.json").write_text(json.dumps(doc))
        try:
            with load(folder, backend="onnxruntime") as engine:
                out = engine.restore(IMAGE)
        except NSRError as e:
            assert str(e) and "\n" not in str(e)
            return
        assert out.shape == (20, 24, 3)

    run()
