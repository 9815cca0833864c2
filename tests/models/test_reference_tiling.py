"""The whole-image reference evaluation against a direct reimplementation of the trainer's
unfold/fold tiling (written here from ../shared/REFERENCE.md, independently of our geometry)."""

import math

import torch
import torch.nn.functional as F

from nsr_deploy.core.config import NSRConfig
from nsr_deploy.core.geometry import reference_windows
from nsr_deploy.models import NSRNet, reference_forward


def _grid(h, w, patch, pad, stride):
    nh = math.floor((h + 2 * pad - patch) / stride) + 1
    nw = math.floor((w + 2 * pad - patch) / stride) + 1
    crop_h = h + 2 * pad - ((nh - 1) * stride + patch)
    crop_w = w + 2 * pad - ((nw - 1) * stride + patch)
    return nh, nw, crop_h, crop_w


def _unfold(region, patch, stride):
    b, c = region.shape[:2]
    cols = F.unfold(region, patch, stride=stride)  # [b, c*p*p, L]
    return cols.transpose(1, 2).reshape(b, -1, c, patch, patch)


def direct_tiled_forward(net, x, patch=48, pad=4):
    """Direct form: five unfolds of the padded image, body, five folds, weighted average."""
    cfg = net.config
    stride = patch - 2 * pad - 8
    b, c, h, w = x.shape
    nh, nw, ch, cw = _grid(h, w, patch, pad, stride)
    xm = x - cfg.image_mean
    skip = net.skip(xm) if len(net.skip) else xm
    xp = F.pad(xm, (pad,) * 4, mode="reflect")
    hp, wp = h + 2 * pad, w + 2 * pad
    groups = [
        _unfold(xp[:, :, ch // 2:hp - ch // 2, cw // 2:wp - cw // 2], patch, stride),  # main grid
        _unfold(xp[:, :, :patch, :wp - cw], patch, stride),  # top row
        _unfold(xp[:, :, :hp - ch, wp - patch:], patch, stride),  # right column
        _unfold(xp[:, :, hp - patch:, cw:], patch, stride),  # bottom row
        _unfold(xp[:, :, ch:, :patch], patch, stride),  # left column
    ]
    counts = [g.shape[1] for g in groups]
    assert counts == [nh * nw, nw, nh, nw, nh]
    allp = torch.cat(groups, 1).flatten(0, 1)
    body = net.body(allp)
    oc = body.shape[1]
    q = patch - 2 * pad
    body = body[..., pad:patch - pad, pad:patch - pad].reshape(b, -1, oc, q, q)
    out = torch.zeros(b, oc, h, w)
    cnt = torch.zeros(b, oc, h, w)
    # (size of the folded area, where it lands, weight), per group in the same order
    places = [
        ((h - ch, w - cw), (slice(ch // 2, h - (ch - ch // 2)), slice(cw // 2, w - (cw - cw // 2))), 1.0),
        ((q, w - cw), (slice(0, q), slice(0, w - cw)), 0.3),
        ((h - ch, q), (slice(0, h - ch), slice(w - q, w)), 0.3),
        ((q, w - cw), (slice(h - q, h), slice(cw, w)), 0.3),
        ((h - ch, q), (slice(ch, h), slice(0, q)), 0.3),
    ]
    start = 0
    for n, (size, (rs, cs), weight) in zip(counts, places):
        part = body[:, start:start + n]
        start += n
        cols = part.reshape(b, n, -1).transpose(1, 2)
        folded = F.fold(cols, size, q, stride=stride)
        ones = F.fold(torch.ones_like(cols), size, q, stride=stride)
        out[:, :, rs, cs] += weight * folded
        cnt[:, :, rs, cs] += weight * ones
    y = out / cnt + skip
    if cfg.scale > 1:
        y = F.pixel_shuffle(y, cfg.scale)
    return y + cfg.image_mean


def _net(scale=2, channels=3):
    torch.manual_seed(1)
    cfg = NSRConfig(channels=channels, scale=scale, num_blocks=2, units=8, block_width=16, groups=2, cardinals=4)
    net = NSRNet(cfg).eval()
    with torch.no_grad():
        for conv in net.sparse_convs():
            conv.mlp[0].weight.mul_(20)  # make the pooled statistics matter
    return net


def test_patch_path_matches_direct_reimplementation():
    net = _net()
    x = torch.rand(1, 3, 200, 210)
    with torch.no_grad():
        got = reference_forward(net, x)
        want = direct_tiled_forward(net, x)
    assert got.shape == (1, 3, 400, 420)
    assert (got - want).abs().max().item() <= 1e-5


def test_patch_path_batch_and_grey():
    net = _net(scale=3, channels=1)
    x = torch.rand(2, 1, 197, 260)
    with torch.no_grad():
        got = reference_forward(net, x)
        want = direct_tiled_forward(net, x)
    assert (got - want).abs().max().item() <= 1e-5


def test_whole_image_path():
    net = _net()
    x = torch.rand(1, 3, 100, 90)
    with torch.no_grad():
        got = reference_forward(net, x)
        xm = x - 0.5
        want = F.pixel_shuffle(net.body(xm) + net.skip(xm), 2) + 0.5
    assert (got - want).abs().max().item() <= 1e-6


def test_tiling_differs_from_whole_image_pooling():
    """The patch path must really pool per patch: whole-image pooling gives another result."""
    net = _net()
    x = torch.rand(1, 3, 200, 210)
    x[..., :100, :] *= 0.2  # two very different halves
    with torch.no_grad():
        tiled = reference_forward(net, x)
        whole = net(x)
    assert (tiled - whole).abs().max().item() > 1e-3


def test_windows_cover_every_pixel_and_stay_in_reflect_range():
    for h, w in [(192, 192), (200, 210), (257, 193), (500, 333)]:
        wins = reference_windows(h, w, 48)
        cover = torch.zeros(h, w)
        for win in wins:
            assert -4 <= win.y and win.y + 48 <= h + 4 and -4 <= win.x and win.x + 48 <= w + 4
            cover[win.y + 4:win.y + 44, win.x + 4:win.x + 44] += win.weight
        assert cover.min().item() > 0.29  # every pixel is covered, if only by a border strip
