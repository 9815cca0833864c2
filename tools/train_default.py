#!/usr/bin/env python3
"""Train the bundled default models on ../shared/data/CSun_Hays80 (never on a test set).

    python tools/train_default.py sr-x2          # then denoise-s25, jpeg-q10
    python tools/train_default.py sr-x2 --steps 200 --out /tmp/try   # a quick try

Random 48x48 input patches with flips and rotations, L1 loss, Adam (lr 1e-3) decayed by 0.2 at
2/3 and 5/6 of the steps (the paper's 20 and 25 of 30 epochs, scaled to the budget). Degradations
are made on the fly with nsr_deploy.core.degrade, the functions the bench measures with. Everything is
seeded; a run resumes from ``RUN_DIR/state.pt`` when interrupted. The last 4 photos (sorted by name)
are held out for validation. The result is written as a native model (safetensors + JSON).

Border patches (``--border-fraction`` of each batch): the reference evaluates an image of 192 pixels
or more in patches cut from the image reflect-padded by 4, while the skip branch sees zeros beyond
the image. A plain random crop never shows the body that case (it sees zero padding wherever the
skip does), and a model trained only on such crops darkens and tints the outer pixels of every
large image. So some patches sit on an image side or corner, reflect-padded by 1-4 pixels there,
the skip's input masked to the image (``valid``) and the loss taken on image pixels only.

The 5x5 skip conv of an SR model runs on the whole image with zero padding in the reference's
evaluation, while the tiles of the body see reflected content there: the body cannot tell that the
skip is wrong at the image border. ``--skip-support 1`` keeps only the centre tap of the skip
kernel (the rest stays zero: the file keeps the reference's 5x5 layout), so zero padding cannot
reach it and the body does the interpolation. With ``--init``, the cut taps are first folded into
the tail conv by least squares (``fold_skip``), so fine-tuning starts from the old model's quality.
``--border-pad`` (4: the reference's edge windows; 0: an image edge as a whole image or a cells
window has it), ``--frame-weight`` and ``--crop-ring`` aim the loss at what the tilings use.

    python tools/train_default.py sr-x2 --init sr-x2 --skip-support 1 --lr 2e-4 --steps 2000 \
        --border-fraction 0.5 --border-pad 0 4 --frame-weight 10 --threads 1      # fine-tune (README)
    python tools/train_default.py jpeg-q10 --init denoise-s25                  # warm start
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nsr_deploy.checks.frame import FRAME, border_gap  # noqa: E402
from nsr_deploy.checks.metrics import psnr  # noqa: E402
from nsr_deploy.core.config import NSRConfig  # noqa: E402
from nsr_deploy.core.degrade import add_noise, bicubic_down, bicubic_up, jpeg, modcrop, to_grey  # noqa: E402
from nsr_deploy.models.checkpoint import load_model, save_native, unfold_weight_norm  # noqa: E402
from nsr_deploy.models.network import NSRNet  # noqa: E402
from nsr_deploy.models.reference import reference_forward  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "CSun_Hays80"
HOLD_OUT = 4
BORDER_PAD = 4  # the reference's reflect padding (runtimes.geometry.REFERENCE_PAD)

# Sized to stay under 2 MB of fp32 weights and to train in about an hour per model on 2 cores.
PRESETS = {
    "sr-x2": dict(task="sr", scale=2, channels=3, blocks=6, units=32, block_width=32, k=4, d=8,
                  steps=8000, batch=16),
    "denoise-s25": dict(task="noise", sigma=25, channels=1, blocks=10, units=32, block_width=32,
                        k=2, d=8, steps=7000, batch=16),
    "jpeg-q10": dict(task="jpeg", quality=10, channels=1, blocks=10, units=32, block_width=32,
                     k=2, d=8, steps=7000, batch=16),
}


def load_photos(channels: int) -> tuple[list[np.ndarray], list[str]]:
    paths = sorted(p for p in DATA.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        sys.exit(f"no training photos in {DATA}")
    imgs = []
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        imgs.append(img if channels == 3 else to_grey(img)[..., None])
    return imgs, [p.name for p in paths]


class TaskData:
    """Makes (input, target) pairs as float32 arrays HxWxC in [0, 1] (inputs may leave [0, 1])."""

    def __init__(self, preset: dict, imgs: list[np.ndarray], border_pads: tuple[int, ...] = (),
                 frame_weight: float = 1.0, crop_ring: int = 0):
        self.p = preset
        self.border_pads = border_pads  # drawn per patch side; () = 1 to BORDER_PAD pixels
        self.frame_weight = frame_weight  # loss weight of the image's outer FRAME output pixels
        self.crop_ring = crop_ring  # input pixels at a crop edge (not an image edge) left out of the loss
        self.scale = preset.get("scale", 1)
        self.clean = [modcrop(im, self.scale) for im in imgs]
        if preset["task"] == "sr":
            self.source = [bicubic_down(im, self.scale) for im in self.clean]
        elif preset["task"] == "jpeg":
            self.source = [jpeg(im, preset["quality"]) for im in self.clean]
        else:
            self.source = self.clean  # noise is added per patch, fresh every time

    def degrade_patch(self, src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.p["task"] == "noise":
            return add_noise(src, self.p["sigma"], rng)
        return src.astype(np.float32) / 255.0

    def crop(self, i: int, rng: np.random.Generator, patch: int, border: bool):
        """(input, target, valid) for one patch of photo ``i``; ``border``: on an image side or corner,
        reflect-padded there as the reference pads (valid: the loss weight, 0 on the padding and
        ``frame_weight`` on the image's outer frame, where a fringe shows)."""
        s = self.scale
        src, clean = self.source[i], self.clean[i]
        sides, pads = [0, 0], [(0, 0), (0, 0)]  # per axis: 0 inside, 1 first edge, 2 last edge
        while border and sides == [0, 0]:
            for axis in (0, 1):
                sides[axis] = int(rng.integers(3))
                amount = self.border_pads[int(rng.integers(len(self.border_pads)))] if len(self.border_pads) > 1 \
                    else self.border_pads[0] if self.border_pads else int(rng.integers(1, BORDER_PAD + 1))
                pads[axis] = (amount, 0) if sides[axis] == 1 else (0, amount) if sides[axis] == 2 else (0, 0)
        inner = [patch - a - b for a, b in pads]
        y0, x0 = (0 if side == 1 else n - k if side == 2 else int(rng.integers(n - patch + 1))
                  for side, n, k in zip(sides, src.shape[:2], inner))
        x = self.degrade_patch(src[y0:y0 + inner[0], x0:x0 + inner[1]], rng)
        y = clean[s * y0:s * (y0 + inner[0]), s * x0:s * (x0 + inner[1])].astype(np.float32) / 255.0
        valid = np.ones((*inner, 1), np.float32)
        f = max(FRAME // s, 1)
        for axis, side in enumerate(sides):
            edge = [slice(None)] * 2
            for end, part in ((1, slice(0, f)), (2, slice(inner[axis] - f, inner[axis]))):
                if side == end:  # an image edge: its frame, where a fringe shows
                    edge[axis] = part
                    valid[tuple(edge)] = self.frame_weight
        for axis, side in enumerate(sides):  # no tiling uses outputs this close to a window's cut edge
            edge = [slice(None)] * 2
            for end, part in ((1, slice(0, self.crop_ring)), (2, slice(inner[axis] - self.crop_ring, inner[axis]))):
                if self.crop_ring and side != end:
                    edge[axis] = part
                    valid[tuple(edge)] = 0.0
        if border:
            x = np.pad(x, (*pads, (0, 0)), mode="reflect")
            y = np.pad(y, ((s * pads[0][0], s * pads[0][1]), (s * pads[1][0], s * pads[1][1]), (0, 0)), mode="reflect")
            valid = np.pad(valid, (*pads, (0, 0)))
        return x, y, valid

    def batch(self, rng: np.random.Generator, ids: list[int], n: int, patch: int,
              border_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xs, ys, vs = [], [], []
        n_border = int(round(n * border_fraction))
        for j in range(n):
            i = ids[int(rng.integers(len(ids)))]
            x, y, v = self.crop(i, rng, patch, border=j < n_border)
            k = int(rng.integers(8))  # one of the 8 flips/rotations
            x, y, v = np.rot90(x, k % 4), np.rot90(y, k % 4), np.rot90(v, k % 4)
            if k >= 4:
                x, y, v = x[:, ::-1], y[:, ::-1], v[:, ::-1]
            xs.append(np.ascontiguousarray(x.transpose(2, 0, 1)))
            ys.append(np.ascontiguousarray(y.transpose(2, 0, 1)))
            vs.append(np.ascontiguousarray(v.transpose(2, 0, 1)))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), torch.from_numpy(np.stack(vs))

    def validation_pair(self, i: int, rng: np.random.Generator, size: int = 200):
        """(model input float, ground truth uint8, classic baseline uint8) for one held-out photo."""
        s = self.scale
        src, clean = self.source[i], self.clean[i]
        y0, x0 = (src.shape[0] - size) // 2, (src.shape[1] - size) // 2
        crop = src[y0:y0 + size, x0:x0 + size]
        gt = clean[s * y0:s * (y0 + size), s * x0:s * (x0 + size)]
        x = self.degrade_patch(crop, rng)
        base = bicubic_up(crop, s) if self.p["task"] == "sr" else np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
        return x, gt, base


def evaluate(net: NSRNet, data: TaskData, val_ids: list[int], seed: int) -> tuple[float, float, float]:
    """Held-out (PSNR, baseline PSNR, border gap): 200x200 crops, so the reference tiles them and the
    gap (interior margin over the baseline minus the frame's, dB) shows a border fringe."""
    rng = np.random.default_rng(seed)
    net.eval()
    ours, base, gaps = [], [], []
    shave = data.scale if data.scale > 1 else 0
    for i in val_ids:
        x, gt, b = data.validation_pair(i, rng)
        with torch.no_grad():
            y = reference_forward(net, torch.from_numpy(x.transpose(2, 0, 1).copy())[None])[0]
        out = np.clip(np.round(y.numpy().transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
        ours.append(psnr(out, gt, shave))
        base.append(psnr(b, gt, shave))
        frame, interior = border_gap(out, b, gt)
        gaps.append(interior - frame)
    net.train()
    return float(np.mean(ours)), float(np.mean(base)), float(np.mean(gaps))


def masked_l1(out: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, scale: int) -> torch.Tensor:
    """L1 on image pixels only, weighted (``valid`` at input resolution; 0 on reflect padding)."""
    if scale > 1:
        valid = valid.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return ((out - target).abs() * valid).sum() / (valid.sum() * out.shape[1])


def skip_limiter(net: NSRNet, support: int):
    """A function that zeroes the skip kernel outside its centre ``support`` x ``support`` taps (after
    each step: Adam would regrow them). The kept taps keep their effective values."""
    if not len(net.skip) or support >= net.skip[0].kernel_size:
        return lambda: None
    conv = net.skip[0]
    k, r = conv.kernel_size, (conv.kernel_size - support) // 2
    mask = torch.zeros(1, 1, k, k)
    mask[..., r:k - r, r:k - r] = 1
    with torch.no_grad():  # g = ||masked w||, v = masked w: the centre taps as they were
        w = conv.effective_weight() * mask
        conv.weight_v.copy_(w)
        conv.weight_g.copy_(w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))

    def limit() -> None:
        with torch.no_grad():
            conv.weight_v.mul_(mask)
    return limit


@torch.no_grad()
def fold_skip(net: NSRNet, data: TaskData, ids: list[int], rng: np.random.Generator, support: int,
              batches: int = 20, ridge: float = 0.1) -> float:
    """Refit the tail conv, the kept skip taps and one bias by least squares so that the network, with
    its skip cut to the centre ``support`` taps, reproduces its own output on plain training crops;
    returns the fit's RMS error (0-1 scale, before the shuffle).

    The head and tail are 3x3 convs and the blocks are residual, so the tail sees (through the head)
    the whole 5x5 neighbourhood that the cut taps read: a linear fit moves their work into the tail.
    Cutting the taps without this costs the model its interpolation (about 2 dB held out) and a long
    fine-tune to relearn it; the ridge pulls the fit towards the old weights where crops say little."""
    tail, skip = net.body[-1], net.skip[0]
    cin, cout, r = skip.in_channels, skip.out_channels, support // 2
    n = tail.in_channels * tail.kernel_size ** 2 + cin * support ** 2 + 1
    gram = torch.zeros(n, n, dtype=torch.float64)
    cross = torch.zeros(n, cout, dtype=torch.float64)
    sq, count = 0.0, 0
    for _ in range(batches):
        x, _, _ = data.batch(rng, ids, 16, net.config.patch_size)
        x = x - net.config.image_mean
        target = net.head_tail(x).flatten(2).transpose(1, 2).reshape(-1, cout).double()
        feats = torch.cat([F.unfold(net.body[:-1](x), tail.kernel_size, padding=tail.padding),
                           F.unfold(x, support, padding=r), torch.ones(x.shape[0], 1, x[0, 0].numel())], 1)
        feats = feats.transpose(1, 2).reshape(-1, n).double()
        gram += feats.T @ feats
        cross += feats.T @ target
        sq, count = sq + float((target ** 2).sum()), count + target.numel()
    centre = slice(skip.kernel_size // 2 - r, skip.kernel_size // 2 + r + 1)
    kept = skip.effective_weight()[:, :, centre, centre]
    old = torch.cat([tail.effective_weight().flatten(1).T, kept.flatten(1).T, (tail.bias + skip.bias)[None]]).double()
    fit = torch.linalg.solve(gram + ridge * torch.eye(n, dtype=torch.float64), cross + ridge * old)
    err = (sq - 2 * float((fit * cross).sum()) + float((fit * (gram @ fit)).sum())) / count
    fit = fit.float()
    nt = tail.in_channels * tail.kernel_size ** 2
    w_tail = fit[:nt].T.reshape_as(tail.weight_v)
    w_skip = torch.zeros_like(skip.weight_v)
    w_skip[:, :, centre, centre] = fit[nt:nt + cin * support ** 2].T.reshape(cout, cin, support, support)
    for conv, w in ((tail, w_tail), (skip, w_skip)):
        conv.weight_v.copy_(w)
        conv.weight_g.copy_(w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    tail.bias.copy_(fit[-1])
    skip.bias.zero_()
    return math.sqrt(max(err, 0.0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    ap.add_argument("--out", type=Path, default=ROOT / "nsr_deploy" / "assets", help="where NAME.safetensors/.json go")
    ap.add_argument("--run-dir", type=Path, help="resumable state (default runs/NAME)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--init", help="start from this model's weights (a bundled name or a file): fine-tuning")
    ap.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default 1e-3)")
    ap.add_argument("--border-fraction", type=float, default=0.25,
                    help="share of each batch cut at image borders, reflect-padded as the reference pads")
    ap.add_argument("--border-pad", type=int, nargs="+", choices=range(BORDER_PAD + 1), metavar="N",
                    help="reflect padding of border patches, drawn per patch side from these (default: 1 to 4). "
                         "The reference's edge windows have 4; a whole image (or a cells window) has 0")
    ap.add_argument("--frame-weight", type=float, default=1.0,
                    help="loss weight of the outer 4 output pixels of border patches (default 1)")
    ap.add_argument("--crop-ring", type=int, default=0,
                    help="input pixels at a patch's cut edges left out of the loss (default 0): the reference "
                         "drops 4 of each window, cells 3; only an image edge's outputs are used")
    ap.add_argument("--skip-support", type=int, choices=(1, 3, 5), default=5,
                    help="taps of the skip conv's kernel kept (the centre NxN; default all 5x5)")
    args = ap.parse_args(argv)

    command = sys.argv[1:] if argv is None else argv
    preset = dict(PRESETS[args.name])
    steps = args.steps or preset["steps"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = NSRConfig(channels=preset["channels"], scale=preset.get("scale", 1), num_blocks=preset["blocks"],
                    units=preset["units"], block_width=preset["block_width"], groups=preset["k"],
                    cardinals=preset["d"], sparse=True)
    net = NSRNet(cfg, weight_norm=True)
    if args.init:
        start_from = load_model(args.init)
        if start_from.config != cfg:
            sys.exit(f"--init {args.init}: its configuration differs from the preset {args.name}")
        net.load_state_dict(unfold_weight_norm(start_from.net.state_dict()))
    imgs, names = load_photos(cfg.channels)
    data = TaskData(preset, imgs, tuple(args.border_pad or ()), args.frame_weight, args.crop_ring)
    train_ids = list(range(len(imgs) - HOLD_OUT))
    val_ids = list(range(len(imgs) - HOLD_OUT, len(imgs)))
    run_dir = args.run_dir or ROOT / "runs" / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path, rng_path = run_dir / "state.pt", run_dir / "rng.json"
    resuming = state_path.exists() and rng_path.exists()
    fold_rms = None
    if args.init and len(net.skip) and args.skip_support < net.skip[0].kernel_size and not resuming:
        fold_rms = fold_skip(net, data, train_ids, np.random.default_rng(args.seed + 1), args.skip_support)
        print(f"skip cut to {args.skip_support}x{args.skip_support}, its outer taps folded into the tail: "
              f"RMS fit error {fold_rms * 255:.2f} levels", flush=True)
    limit_skip = skip_limiter(net, args.skip_support)
    limit_skip()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps * 2 // 3, steps * 5 // 6], gamma=0.2)
    rng = np.random.default_rng(args.seed)
    start, elapsed = 0, 0.0
    if resuming:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        saved = json.loads(rng_path.read_text())
        rng.bit_generator.state = saved["numpy"]
        start, elapsed = saved["step"], saved["elapsed"]
        print(f"resuming {args.name} at step {start}")

    t0 = time.time() - elapsed
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=args.name, dynamic_ncols=True)
    running = None
    val = (math.nan, math.nan, math.nan)
    for step in bar:
        x, y, valid = data.batch(rng, train_ids, preset["batch"], cfg.patch_size, args.border_fraction)
        loss = masked_l1(net.finish(net.head_tail(x - cfg.image_mean, (valid > 0).float())), y, valid, cfg.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        limit_skip()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        done = step + 1
        if done % args.eval_every == 0 or done == steps:
            val = evaluate(net, data, val_ids, args.seed)
            tqdm.write(f"step {done}: held-out PSNR {val[0]:.2f} dB (baseline {val[1]:.2f}), "
                       f"border gap {val[2]:.2f} dB, {(time.time() - t0) / 60:.0f} min", file=sys.stdout)
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.1e}",
                        val=f"{val[0]:.2f}/{val[1]:.2f}dB", gap=f"{val[2]:.2f}dB")
        if done % 200 == 0 or done == steps:
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state()}, state_path)
            rng_path.write_text(json.dumps({"numpy": rng.bit_generator.state, "step": done,
                                            "elapsed": time.time() - t0}))
    bar.close()
    if math.isnan(val[0]):  # resumed after the last step: nothing was evaluated in this process
        val = evaluate(net, data, val_ids, args.seed)
    minutes = (time.time() - t0) / 60
    net.eval()
    deploy = NSRNet(cfg)
    from nsr_deploy.models.checkpoint import fold_state_dict

    deploy.load_state_dict(fold_state_dict(net.state_dict()))
    task = {"sr": f"bicubic x{cfg.scale} (Pillow)", "noise": f"gaussian sigma {preset.get('sigma')}",
            "jpeg": f"JPEG quality {preset.get('quality')} (Pillow)"}[preset["task"]]
    meta = {
        "name": args.name,
        "task": preset["task"],
        "degradation": task,
        "sigma": preset.get("sigma"),
        "quality": preset.get("quality"),
        "training": {
            "data": f"CSun_Hays80 (first {len(train_ids)} photos by name; last {HOLD_OUT} held out)",
            "steps": steps, "batch": preset["batch"], "patch": cfg.patch_size, "seed": args.seed,
            "loss": "L1 on image pixels", "optimizer": f"Adam lr {args.lr:g}, x0.2 at 2/3 and 5/6",
            "init": args.init, "border_fraction": args.border_fraction, "border_pad": args.border_pad,
            "frame_weight": args.frame_weight, "crop_ring": args.crop_ring,
            "skip_support": args.skip_support,
            **({"skip_fold_rms": round(fold_rms, 5)} if fold_rms is not None else {}),
            "minutes": round(minutes, 1),
            "threads": args.threads, "command": " ".join(["python tools/train_default.py", *command]),
            "held_out_psnr": round(val[0], 3), "held_out_baseline_psnr": round(val[1], 3),
            "held_out_border_gap_db": round(val[2], 3),
        },
    }
    st, js = save_native(deploy, args.out / args.name, meta)
    print(f"wrote {st} ({st.stat().st_size / 1e6:.2f} MB) and {js}; held-out PSNR {val[0]:.2f} dB "
          f"(baseline {val[1]:.2f} dB) after {minutes:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
