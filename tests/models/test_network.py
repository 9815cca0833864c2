"""Networks built from the NSR layer: parameter counts, shapes, dense twin."""

import pytest
import torch

from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.errors import NSRError
from nsr_deploy.models import NSRNet


@pytest.mark.parametrize("scale,expected", [(2, 4_877_812), (3, 4_887_637), (4, 4_901_392)])
def test_edsr_nsr_parameter_counts_match_reference(scale, expected):
    cfg = NSRConfig(channels=3, scale=scale, num_blocks=16, units=64, block_width=64, groups=4, cardinals=16)
    net = NSRNet(cfg, weight_norm=True)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert cfg.parameter_count(weight_norm=True) == expected
    folded = NSRNet(cfg)
    assert sum(p.numel() for p in folded.parameters()) == cfg.parameter_count()


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sparse", [True, False])
def test_shapes_and_skip(scale, channels, sparse):
    cfg = NSRConfig.create(channels=channels, scale=scale, num_blocks=1, units=8, width_multiplier=1.5,
                           sparse=sparse, **({"groups": 2, "cardinals": 4} if sparse else {}))
    net = NSRNet(cfg).eval()
    assert len(net.skip) == (0 if scale == 1 else 1)
    with torch.no_grad():
        y = net(torch.rand(2, channels, 13, 7))
    assert y.shape == (2, channels, 13 * scale, 7 * scale)


def test_dense_twin_flops_match_effective_flops_closely():
    cfg = NSRConfig(channels=3, scale=2, num_blocks=16, units=64, block_width=64, groups=4, cardinals=16)
    twin = cfg.dense_twin()
    assert not twin.sparse and twin.groups == 1
    ratio = cfg.flops_per_pixel() / twin.flops_per_pixel()
    assert 1.0 < ratio < 1.01  # the mixing overhead is a fraction of a percent at patch 48
    assert cfg.flops_per_pixel(dense_equivalent=True) > 3.9 * twin.flops_per_pixel()


def test_invalid_configs_are_refused():
    with pytest.raises(NSRError):
        NSRConfig(units=12, block_width=12, groups=2, cardinals=5)
    with pytest.raises(NSRError):
        NSRConfig(sparse=False, groups=4, cardinals=1)
