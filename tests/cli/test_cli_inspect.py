"""`nsr-deploy inspect` and the CLI's error contract."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from nsr_deploy import __version__
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.models import NSRNet
from nsr_deploy.models.checkpoint import save_reference_checkpoint


@pytest.fixture()
def edsr_nsr_x2(tmp_path):
    cfg = NSRConfig(channels=3, scale=2, num_blocks=16, units=64, block_width=64, groups=4, cardinals=16)
    path = tmp_path / "edsr_nsr_x2.pt"
    save_reference_checkpoint(NSRNet(cfg, weight_norm=True), path)
    return path


def test_version_and_help():
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for name in main.commands:
        res = runner.invoke(main, [name, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output, name


def test_inspect_json_reports_reference_counts(edsr_nsr_x2):
    res = CliRunner().invoke(main, ["inspect", str(edsr_nsr_x2), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["task"] == "super-resolution x2"
    assert (info["blocks"], info["units"], info["k"], info["d"]) == (16, 64, 4, 16)
    assert info["width_multiplier"] == 1.0
    assert info["parameters_reference"] == 4_877_812
    assert info["parameters"] == 4_877_812 - (64 + 16 * 2 * 256 + 12 + 12)  # minus every weight_g
    assert info["mflops_per_pixel_dense_equivalent"] > 3.9 * info["mflops_per_pixel"]
    assert info["dense_twin"]["model"] == "wdsr"
    assert info["format"] == "reference" and len(info["sha256"]) == 64


def test_inspect_text_and_options(edsr_nsr_x2):
    res = CliRunner().invoke(main, ["inspect", str(edsr_nsr_x2), "--image-mean", "0.45", "--patch-size", "64"])
    assert res.exit_code == 0
    assert "super-resolution x2" in res.output and "0.45 / 64" in res.output


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b"PK\x03\x04truncated"])
def test_bad_input_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "nsr_deploy.cli", "inspect", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_model_short_option_is_m_everywhere_and_the_old_M_still_works():
    runner = CliRunner()
    for name in ("inspect", "export", "restore", "bench"):
        shown = runner.invoke(main, [name, "--help"]).output
        assert "-m, --model" in shown and "-M" not in shown, name
    old, new = (runner.invoke(main, ["inspect", flag, "denoise-s25", "--json"]) for flag in ("-M", "-m"))
    assert old.exit_code == new.exit_code == 0 and old.output == new.output
    assert json.loads(new.output)["source"].endswith("denoise-s25.safetensors")


def test_checkpoint_and_model_together_is_refused(edsr_nsr_x2):
    res = CliRunner().invoke(main, ["inspect", str(edsr_nsr_x2), "--model", "sr-x2"])
    assert res.exit_code == 2
