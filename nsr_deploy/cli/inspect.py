"""``nsr-deploy inspect``: what a checkpoint holds."""

from __future__ import annotations

import json

import click

from nsr_deploy.cli.model_option import model_argument, resolve_model
from nsr_deploy.core.errors import user_errors


@click.command()
@model_argument
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def inspect(checkpoint, model_name, image_mean, patch_size, as_json):
    """What a checkpoint holds: task, shape, k, d, parameters and FLOPs per pixel."""
    loaded = resolve_model(checkpoint, model_name, image_mean, patch_size)
    info = {"source": loaded.source, "format": loaded.source_format, "sha256": loaded.sha256,
            **loaded.config.summary()}
    twin = loaded.config.dense_twin()
    info["dense_twin"] = {"model": "wdsr", "units": twin.units, "block_width": twin.block_width,
                          "parameters": twin.parameter_count()}
    if loaded.meta:
        info["meta"] = loaded.meta
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [
        ("source", f"{loaded.source} ({loaded.source_format})"),
        ("model", f"{info['model']}  ({'sparse, NSR' if loaded.config.sparse else 'dense'})"),
        ("task", info["task"]),
        ("channels", info["channels"]),
        ("blocks x units", f"{info['blocks']} x {info['units']} (width multiplier {info['width_multiplier']:g}, "
                           f"{info['block_width']} inside a block)"),
        ("sparsity", f"k={info['k']} groups, d={info['d']} cardinals" if loaded.config.sparse else "none (dense)"),
        ("image mean / patch", f"{info['image_mean']:g} / {info['patch_size']}"),
        ("parameters", f"{info['parameters']:,} folded; {info['parameters_reference']:,} as the trainer counts "
                       f"(weight_g and weight_v)"),
        ("MFLOPs / pixel", f"{info['mflops_per_pixel']:.3f} effective (per patch, mixing included); "
                           f"{info['mflops_per_pixel_dense_equivalent']:.3f} dense-equivalent (all k groups)"),
        ("dense twin", f"wdsr {twin.num_blocks}x{twin.units}, {twin.parameter_count():,} parameters, "
                       f"{info['dense_twin_mflops_per_pixel']:.3f} MFLOPs / pixel"),
        ("sha256", loaded.sha256),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")
