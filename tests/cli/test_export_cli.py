"""What `nsr-deploy export` tells the user: the summary line names every file it wrote."""
import json

import pytest
from click.testing import CliRunner

from conftest import decisive_net
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.models.checkpoint import save_native

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)


@pytest.mark.parametrize("extra", [[], ["--conformance"]])
def test_wrote_line_names_every_file_in_the_folder(tmp_path, extra):
    """An OpenVINO IR is two files (.xml and its .bin), and the conformance vectors a folder: an app that
    copies only the listed files must get all of them, so the line lists exactly what is in the folder."""
    save_native(decisive_net(TINY, 0), tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["export", str(tmp_path / "tiny.safetensors"), "--target", "openvino", "--conv-form", "matmul",
            "--threads", "1", "-o", str(out), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    wrote = [line for line in result.output.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1
    listed = set(wrote[0].split("(", 1)[1].rstrip(")").split(", "))
    assert listed == {p.name + "/" * p.is_dir() for p in out.iterdir()}
    assert {"model.xml", "model.bin", "nsr.json"} <= listed and ("conformance/" in listed) == bool(extra)


def test_auto_form_rule_speaks_of_the_model_not_of_another_target(tmp_path):
    """model.onnx is the portable file of every export: its auto rule does not name the target beside it."""
    save_native(decisive_net(TINY, 0), tmp_path / "tiny")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "tiny.safetensors"), "--target", "openvino",
                                       "--threads", "1", "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    rules = {name: entry["auto"]["rule"] for name, entry in json.loads(result.stdout)["targets"].items()}
    assert set(rules) == {"onnx", "openvino"} and rules["onnx"].startswith("sparse model: grouped is standard ONNX")
    assert not any("for openvino" in rule for rule in rules.values())
