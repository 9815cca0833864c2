#!/usr/bin/env python3
"""Write the EDSR+NSR x2 checkpoint the performance figures in README are measured on.

    python tools/make_bench_checkpoint.py [OUT.pt]        # default: edsr_nsr_x2.pt

The shape of the paper's EDSR+NSR x2 (16 residual blocks, 64 units, no width expansion, k=4 groups,
d=16 cardinals) in the reference trainer's checkpoint layout (weight-normalised convs, as `wdsr_nsr`
saves them). Weights are random (seeded): latency does not depend on their values, and nothing here
may download a trained model. The MLP weights get a wider spread than the default init so that the
softmax over the k groups is far from uniform, as in a trained network.
"""

import sys

import torch

from nsr_deploy.core.config import NSRConfig
from nsr_deploy.models.checkpoint import save_reference_checkpoint
from nsr_deploy.models.network import NSRNet

EDSR_NSR_X2 = NSRConfig(channels=3, scale=2, num_blocks=16, units=64, block_width=64, groups=4, cardinals=16)


def main(out: str = "edsr_nsr_x2.pt") -> None:
    torch.manual_seed(0)
    net = NSRNet(EDSR_NSR_X2, weight_norm=True).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "mlp" in name and p.dim() > 1:
                p.normal_(0, 0.5)
    save_reference_checkpoint(net, out)
    print(f"wrote {out}: {EDSR_NSR_X2.parameter_count():,} parameters")


if __name__ == "__main__":
    main(*sys.argv[1:])
