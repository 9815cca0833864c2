"""tools/train_default.py's skip fold: sr-x2 with a full 5x5 skip cut to the centre tap keeps its output
once the cut taps are folded into the tail conv (least squares), on real photos.

The bundled sr-x2 was itself made by this fold (its skip is the centre tap alone), so the test gives it
back 5x5 taps first: per sub-pixel phase, the bicubic x2 kernel less its centre tap (an interpolation's
neighbour taps, as the first sr-x2 had learned)."""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import DATA
from nsr_deploy.models import load_model
from nsr_deploy.models.checkpoint import unfold_weight_norm
from nsr_deploy.models.network import NSRNet

ROOT = Path(__file__).resolve().parents[2]


def _trainer():
    spec = importlib.util.spec_from_file_location("train_default", ROOT / "tools" / "train_default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# bicubic (a = -0.5) x2 weights of input taps -2..2 for output phase 0 and 1
BICUBIC_X2 = {0: [-0.0234, 0.2266, 0.8672, -0.0703, 0.0], 1: [0.0, -0.0703, 0.8672, 0.2266, -0.0234]}


def _with_full_skip(loaded):
    """Add to each output channel of the skip (colour c, phase i, j: pixel shuffle order) the 5x5 bicubic
    phase kernel of colour c less its centre tap: taps that cutting to the centre removes."""
    conv = loaded.net.skip[0]
    with torch.no_grad():
        for o in range(conv.out_channels):
            c, i, j = o // 4, (o % 4) // 2, o % 2
            k = torch.outer(torch.tensor(BICUBIC_X2[i]), torch.tensor(BICUBIC_X2[j]))
            k[2, 2] = 0.0
            conv.weight[o, c] += k
    return loaded


def test_folding_the_cut_skip_taps_keeps_the_output_of_sr_x2_with_a_full_skip():
    trainer = _trainer()
    torch.manual_seed(0)
    loaded = _with_full_skip(load_model("sr-x2"))
    assert float(loaded.net.skip[0].weight.detach()[:, :, 0].abs().sum()) > 0  # outer taps really there
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((DATA / "CSet14").iterdir())[:6]]
    data = trainer.TaskData(trainer.PRESETS["sr-x2"], photos)

    def cut(fold: bool) -> NSRNet:
        net = NSRNet(loaded.config, weight_norm=True)
        net.load_state_dict(unfold_weight_norm(loaded.net.state_dict()))
        if fold:
            trainer.fold_skip(net, data, [0, 1, 2, 3], np.random.default_rng(1), 1, batches=3)
        trainer.skip_limiter(net, 1)()
        return net

    x, _, _ = data.batch(np.random.default_rng(2), [4, 5], 8, loaded.config.patch_size)  # photos not fitted on
    with torch.no_grad():
        want = loaded.net(x)
        rms = {fold: float(((cut(fold)(x) - want) ** 2).mean().sqrt()) * 255 for fold in (False, True)}
    skip = cut(True).skip[0].effective_weight().detach()
    assert float(skip.abs().sum()) > 0 and float(skip[:, :, 2, 2].abs().sum()) == float(skip.abs().sum())
    assert rms[False] > 10.0, rms  # the cut alone: the interpolation is gone
    assert rms[True] < 2.0, rms    # folded: within a couple of 8-bit levels
