"""Loading reference-trainer checkpoints: layouts, inferred hyperparameters, errors, safety."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.models import NSRNet, load_model
from nsr_deploy.models.checkpoint import save_native, save_reference_checkpoint


def trained_like(cfg: NSRConfig) -> NSRNet:
    """A weight-normed net (the trainer's layout) with non-trivial g, v, biases and MLPs."""
    torch.manual_seed(cfg.scale * 10 + cfg.channels + cfg.groups)
    net = NSRNet(cfg, weight_norm=True)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight_g"):
                p.uniform_(0.3, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.05)
            elif "mlp" in name:
                p.normal_(0, 2.0)
    return net.eval()


CASES = [
    NSRConfig(channels=c, scale=s, num_blocks=2, units=8, block_width=12, sparse=sp,
              groups=k if sp else 1, cardinals=4 if sp else 1)
    for s in (1, 2, 3, 4) for c in (1, 3) for sp, k in ((True, 3), (False, 1))
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.kind}-x{c.scale}-c{c.channels}")
def test_reference_layout_round_trip(cfg, tmp_path):
    net = trained_like(cfg)
    path = tmp_path / "ckpt.pt"
    save_reference_checkpoint(net, path, epoch=30)
    sd = torch.load(path, weights_only=True)["model_state_dict"]
    assert "body.0.weight_g" in sd and "body.0.weight_v" in sd
    assert ("body.1.body.0.mlp.0.weight" in sd) == cfg.sparse
    loaded = load_model(path)
    assert loaded.config == cfg
    assert loaded.source_format == "reference"
    x = torch.rand(2, cfg.channels, 20, 17)
    with torch.no_grad():
        assert (loaded.net(x) - net(x)).abs().max().item() <= 1e-5


def test_bare_and_module_prefixed_state_dicts(tmp_path):
    cfg = CASES[3]
    net = trained_like(cfg)
    x = torch.rand(1, cfg.channels, 16, 16)
    with torch.no_grad():
        want = net(x)
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)
    prefixed = tmp_path / "dp.pt"
    torch.save({"model_state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, prefixed)
    for path in (bare, prefixed):
        with torch.no_grad():
            assert (load_model(path).net(x) - want).abs().max().item() <= 1e-5


def test_parametrizations_weight_norm_spelling(tmp_path):
    cfg = CASES[2]
    net = trained_like(cfg)
    sd = {}
    for k, v in net.state_dict().items():
        k = k.replace(".weight_g", ".parametrizations.weight.original0")
        sd[k.replace(".weight_v", ".parametrizations.weight.original1")] = v
    torch.save(sd, tmp_path / "p.pt")
    x = torch.rand(1, cfg.channels, 9, 9)
    with torch.no_grad():
        assert (load_model(tmp_path / "p.pt").net(x) - net(x)).abs().max().item() <= 1e-5


def test_options_are_recorded(tmp_path):
    net = trained_like(CASES[2])
    save_reference_checkpoint(net, tmp_path / "c.pt")
    cfg = load_model(tmp_path / "c.pt", image_mean=0.4, patch_size=64).config
    assert (cfg.image_mean, cfg.patch_size) == (0.4, 64)


def test_native_round_trip(tmp_path):
    net = trained_like(CASES[6])
    save_native(net, tmp_path / "m", {"name": "m"})
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.source_format == "native" and loaded.config == CASES[6]
    assert json.loads((tmp_path / "m.json").read_text())["config"]["groups"] == 3
    (tmp_path / "m.json").unlink()  # the safetensors metadata alone suffices
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert (load_model(tmp_path / "m.safetensors").net(x) - net(x)).abs().max().item() <= 1e-5


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"body.0.weight": torch.zeros(1)}, "x": _Exploit(marker)}, path)
    # the file really is an exploit: an unsafe load would run it
    assert not marker.exists()
    with pytest.raises(NSRError, match="refused"):
        load_model(path)
    assert not marker.exists()
    with zipfile.ZipFile(path) as z:  # sanity: the payload is in there
        assert any(b"system" in z.read(n) for n in z.namelist() if n.endswith(".pkl"))


def test_unsafe_load_would_have_run_it(tmp_path):
    """Control for the test above, in a child process: the same file executes when unpickled."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_Exploit(marker), path)
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(__file__), capture_output=True)
    assert marker.exists()


def test_error_messages(tmp_path):
    with pytest.raises(NSRError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello, not a checkpoint")
    with pytest.raises(NSRError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "text.pt")
    good = tmp_path / "good.pt"
    save_reference_checkpoint(trained_like(CASES[2]), good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(NSRError, match="truncated"):
        load_model(tmp_path / "trunc.pt")
    torch.save({"model_state_dict": {"encoder.weight": torch.zeros(3, 3)}}, tmp_path / "other.pt")
    with pytest.raises(NSRError, match="unknown checkpoint layout"):
        load_model(tmp_path / "other.pt")
    torch.save({"epoch": 3}, tmp_path / "notensors.pt")
    with pytest.raises(NSRError, match="unknown checkpoint layout"):
        load_model(tmp_path / "notensors.pt")


def test_contradictory_shapes(tmp_path):
    cfg = next(c for c in CASES if c.sparse and c.scale == 2 and c.channels == 3)
    net = trained_like(cfg)
    base = net.state_dict()

    def check(mutate, pattern):
        sd = {k: v.clone() for k, v in base.items()}
        mutate(sd)
        torch.save(sd, tmp_path / "bad.pt")
        with pytest.raises(NSRError, match=pattern):
            load_model(tmp_path / "bad.pt")

    check(lambda sd: sd.update({"body.3.weight_v": torch.ones(11, 8, 3, 3), "body.3.weight_g": torch.ones(11, 1, 1, 1),
                                "body.3.bias": torch.zeros(11)}), "not scale")
    check(lambda sd: sd.update({"body.3.weight_v": torch.ones(11, 8, 3, 3)}), "12 entries")
    check(lambda sd: sd.update({"body.2.body.0.weight_v": torch.ones(24, 8, 3, 3),
                                "body.2.body.0.weight_g": torch.ones(24, 1, 1, 1)}), "differ from block 1")
    check(lambda sd: sd.update({"body.1.body.2.mlp.0.weight": torch.zeros(10, 12)}), "logits")
    check(lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("skip.")], "skip conv missing")
    check(lambda sd: sd.update({"body.1.body.0.mlp.0.weight": torch.zeros(12, 5)}), "takes 5 inputs")


def test_pickle_protocol_file_is_not_a_zip_but_still_checked(tmp_path):
    path = tmp_path / "legacy.pt"
    with open(path, "wb") as f:
        pickle.dump({"a": 1}, f, protocol=2)
    with pytest.raises(NSRError):
        load_model(path)
