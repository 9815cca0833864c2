"""``--plot``: the paper's Figure 5 curves beside ours, one line per backend and conv form, as a PNG.

Top row: time relative to each side's own baseline (the comparable reading) for fixed model size and
fixed FLOPs, k on a log2 axis with the baseline at k = 1. Bottom row: the absolute milliseconds, ours
per call of our batch, the paper's as printed (see :mod:`nsr_deploy.bench.paper` on what they mean).
Drawn on a private Agg canvas: no display needed, and the caller's matplotlib backend is untouched.
"""

from __future__ import annotations

from pathlib import Path

from nsr_deploy.bench import paper

PROTOCOLS = ("fixed size", "fixed FLOPs")


def _series(rows: list[dict], backend: str, variant: str, protocol: str, key: str) -> tuple[list, list]:
    base = next((r for r in rows if r["backend"] == backend and r["protocol"] == "baseline" and key in r
                 and r.get("timed_with", f"{variant} {protocol}") == f"{variant} {protocol}"), None)  # timed beside
    xs, ys = ([1], [base[key]]) if base and base.get(key) is not None else ([], [])
    for r in sorted((r for r in rows if r["backend"] == backend and r["variant"] == variant
                     and r["protocol"] == protocol and r.get(key) is not None), key=lambda r: r["k"]):
        xs.append(r["k"])
        ys.append(r[key])
    return xs, ys


def _paper(protocol: str, ratio: bool) -> tuple[list, list]:
    ks = sorted(paper.FIXED_SIZE_MS)
    f = paper.paper_ratio if ratio else paper.paper_ms
    return [1, *ks], [f("baseline", 1), *[f(protocol, k) for k in ks]]


def figure5_png(layer: dict, path: str | Path) -> Path:
    """Write the PNG of the layer suite's result (its JSON section) to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = layer["rows"]
    lines = list(dict.fromkeys((r["backend"], r["variant"]) for r in rows if r["variant"] != "baseline"))
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for col, protocol in enumerate(PROTOCOLS):
        for row, (key, ratio) in enumerate((("ratio", True), ("ms", False))):
            ax = axes[row][col]
            ax.plot(*_paper(protocol, ratio), "k--o", lw=2, label="paper (i5-2500, PyTorch)")
            for backend, variant in lines:
                xs, ys = _series(rows, backend, variant, protocol, key)
                if xs:
                    label = "torch eager" if backend == "torch" else f"{backend} {variant}"
                    ax.plot(xs, ys, "-o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks([1, *paper.FIXED_SIZE_MS], ["base", *map(str, paper.FIXED_SIZE_MS)])
            ax.set_xlabel("k (sparsity groups)")
            if ratio:
                ax.axhline(1.0, color="grey", lw=0.8)
                ax.set_ylabel("time / own baseline")
            else:
                ax.set_yscale("log")
                ax.set_ylabel("ms (ours: per call; paper: as printed)")
            ax.set_title(f"{protocol}: {'relative' if ratio else 'absolute'}")
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    p = layer["protocol"]
    fig.suptitle(f"Figure 5 protocol: one sparse conv {p['channels']}->{p['channels']}, batch {p['batch']} of "
                 f"{p['patch']}x{p['patch']}, d={p['cardinals']}, mean of {p['runs']} runs, {p['threads']} threads")
    path = Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path
