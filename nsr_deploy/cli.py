"""The ``nsr-deploy`` command line.

Every user error (bad file, bad option, unusable model) ends as one ``error:`` line on stderr and
exit code 2; heavy imports (torch, onnx, openvino) happen inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from nsr_deploy import __version__
from nsr_deploy.errors import NSRError


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def user_errors(fn):
    """Turn NSRError (and unreadable inputs) into a one-line message and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NSRError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def model_argument(fn):
    """``[CKPT]`` positional or ``--model NAME``; the bundled default when neither is given."""
    fn = click.option("--model", "-M", "model_name", metavar="NAME",
                      help="A bundled model by name (see `nsr-deploy models`).")(fn)
    fn = click.option("--patch-size", type=click.IntRange(min=8), default=None,
                      help="Pooling patch size (reference lr_patch_size; default 48).")(fn)
    fn = click.option("--image-mean", type=float, default=None,
                      help="Mean subtracted from the [0,1] input (reference default 0.5).")(fn)
    return click.argument("checkpoint", required=False, metavar="[CKPT]")(fn)


def resolve_model(checkpoint, model_name, image_mean, patch_size):
    from nsr_deploy.assets import DEFAULT_MODEL
    from nsr_deploy.models.checkpoint import load_model

    if checkpoint and model_name:
        raise NSRError("give a checkpoint or --model, not both")
    return load_model(checkpoint or model_name or DEFAULT_MODEL, image_mean, patch_size)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nsr-deploy")
def main():
    """Export and run Neural Sparse Representation (NSR) restoration networks on edge devices."""


@main.command()
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


if __name__ == "__main__":  # pragma: no cover
    main()
