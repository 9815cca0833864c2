"""Nothing misleading: the torch backend refuses a model whose output is absurd (as export's gate would),
warnings reach users as one ``warning:`` line each, and ``--json`` writes the error when a command fails."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hostile import assert_one_error
from PIL import Image

from conftest import ROOT, decisive_net
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.exporters.pipeline import ExportOptions, export
from nsr_deploy.models.checkpoint import LoadedModel, save_reference_checkpoint
from nsr_deploy.runtimes import load

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)


def _cli(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                            "NSR_DEPLOY_CACHE": str(cwd / "cache")})
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def photo(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    return tmp_path / "a.png"


def _absurd_checkpoint(path):
    """Finite weights, every conv scaled by 1e8 (as a checkpoint whose weight_g were multiplied)."""
    net = decisive_net(TINY, 0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".weight") and "mlp" not in name:
                p.mul_(1e8)
    save_reference_checkpoint(net, path)
    return path


def test_torch_backend_refuses_absurd_weights(tmp_path, photo):
    ckpt = _absurd_checkpoint(tmp_path / "absurd.pt")
    code, _, stderr = _cli(["restore", str(photo), "-m", str(ckpt), "-o", str(tmp_path / "out.png")], tmp_path)
    assert_one_error(code, stderr, contains="test card")
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(NSRError, match="test card"), load(ckpt) as engine:  # the Python API too
        engine.restore(np.asarray(Image.open(photo)))


def test_torch_backend_still_runs_a_small_untrained_model(tmp_path, photo):
    save_reference_checkpoint(decisive_net(TINY, 1), tmp_path / "small.pt")
    with load(tmp_path / "small.pt") as engine:
        assert engine.restore(np.asarray(Image.open(photo))).shape == (40, 48, 3)


def test_warnings_are_one_line(tmp_path, photo):
    """A tiny model's widths cannot take ONNX Runtime's NCHWc rewrite: restore warns, in one line."""
    loaded = LoadedModel(decisive_net(TINY, 0), "tiny", "built", "0" * 64, "tiny")
    export(loaded, tmp_path / "exp", "onnx", ExportOptions(conv_form="matmul", patch_batch=4, show_progress=False))
    code, _, stderr = _cli(["restore", str(photo), "-m", str(tmp_path / "exp"), "-o", str(tmp_path / "o.png")],
                           tmp_path)
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.strip()]
    assert warnings and all(line.startswith("warning: ") for line in warnings), stderr
    assert any("NCHWc" in line for line in warnings)


def test_json_is_written_when_the_model_fails_to_load(tmp_path, photo):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    code, stdout, stderr = _cli(["restore", str(photo), "-m", str(tmp_path / "broken.pt"), "-o",
                                 str(tmp_path / "o.png"), "--json"], tmp_path)
    message = assert_one_error(code, stderr)
    doc = json.loads(stdout)
    assert doc["ok"] is False and doc["error"] == message.removeprefix("error: ")
    code, stdout, _ = _cli(["inspect", str(tmp_path / "broken.pt"), "--json"], tmp_path)
    assert code == 2 and json.loads(stdout)["ok"] is False
