"""The model a command works on: ``[CKPT]`` or ``--model NAME``, the bundled default otherwise."""

from __future__ import annotations

import click

from nsr_deploy.core.click_alias import QuietAliasOption
from nsr_deploy.core.errors import NSRError


def model_argument(fn):
    """``[CKPT]`` positional or ``--model NAME``; the bundled default when neither is given."""
    fn = click.option("--model", "-m", "-M", "model_name", metavar="NAME", cls=QuietAliasOption,
                      quiet_aliases=("-M",), help="A bundled model by name (see `nsr-deploy models`).")(fn)
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
