"""``nsr-deploy models``: the bundled default models and their measured quality."""

from __future__ import annotations

import json

import click

from nsr_deploy.core.errors import user_errors


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def models(as_json):
    """The bundled default models, with their measured quality."""
    from nsr_deploy.assets import ASSETS, DEFAULT_MODEL, bundled_description, bundled_names
    from nsr_deploy.core.config import NSRConfig

    rows = []
    for name in bundled_names():
        doc = bundled_description(name)
        cfg = NSRConfig.from_dict(doc["config"])
        meta = doc.get("meta", {})
        rows.append({"name": name, "default": name == DEFAULT_MODEL, "task": cfg.task,
                     "degradation": meta.get("degradation"), "model": cfg.kind, "channels": cfg.channels,
                     "blocks": cfg.num_blocks, "units": cfg.units, "k": cfg.groups, "d": cfg.cardinals,
                     "parameters": cfg.parameter_count(), "mflops_per_pixel": round(cfg.flops_per_pixel() / 1e6, 3),
                     "size_mb": round((ASSETS / f"{name}.safetensors").stat().st_size / 1e6, 2),
                     "measured": meta.get("measured", []), "training": meta.get("training", {})})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no bundled models in this installation")
        return
    for r in rows:
        star = " (default)" if r["default"] else ""
        click.echo(f"{r['name']}{star}: {r['task']}, {r['degradation']}; {r['model']} {r['blocks']}x{r['units']}, "
                   f"k={r['k']} d={r['d']}, {r['parameters']:,} parameters ({r['size_mb']} MB), "
                   f"{r['mflops_per_pixel']} MFLOPs/pixel")
        for m in r["measured"]:
            where = f"{m['dataset']} {m['level']}" if m.get("level") else m["dataset"]
            click.echo(f"    {where:<16} {m['metric']:<7} model {m['model']:.2f}  "
                       f"{m['baseline_name']} {m['baseline']:.2f}  (+{m['model'] - m['baseline']:.2f})")
