"""What `nsr-deploy export` tells the user: the summary line names every file it wrote."""
from click.testing import CliRunner

from conftest import decisive_net
from nsr_deploy.cli import main
from nsr_deploy.core.config import NSRConfig
from nsr_deploy.models.checkpoint import save_native

TINY = NSRConfig(channels=3, scale=2, num_blocks=1, units=8, block_width=8, groups=2, cardinals=4)


def test_wrote_line_names_every_file_in_the_folder(tmp_path):
    """An OpenVINO IR is two files (.xml and its .bin): an app that copies only the listed files must
    get both, so the line lists exactly what is in the folder."""
    save_native(decisive_net(TINY, 0), tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["export", str(tmp_path / "tiny.safetensors"), "--target", "openvino", "--conv-form", "matmul",
            "--threads", "1", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    wrote = [line for line in result.output.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1
    listed = set(wrote[0].split("(", 1)[1].rstrip(")").split(", "))
    assert listed == {p.name for p in out.iterdir()}
    assert {"model.xml", "model.bin", "nsr.json"} <= listed
