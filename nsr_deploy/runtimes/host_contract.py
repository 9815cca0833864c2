"""What an app does around the engine, as ``nsr.json`` states it: the tiling parameters and the pixel
rules (conversion, padding, blending, rounding, colour). docs/contract.md spells out the algorithm
these parameters drive; :mod:`~nsr_deploy.runtimes.host.tiling` and :mod:`.engine` are its implementation here.

``CONTRACT_VERSION`` changes whenever an app following the previous text would get other pixels.
"""

from __future__ import annotations

from nsr_deploy.core.geometry import REFERENCE_PAD, STRIP_WEIGHT, reference_stride
from nsr_deploy.runtimes.host.tiling import CELL_HALO, CELL_MAX, GRID_SLACK

CONTRACT_VERSION = 1
CONTRACT_DOC = "docs/contract.md"


def tiling_parameters(cfg) -> dict:
    """The parameters of each tiling mode (sparse models: ``reference`` and ``cells``; dense: ``exact``)."""
    if not cfg.sparse:
        return {"exact": {"radius": cfg.receptive_radius(),
                          "windows": "the whole image, or the fewest-pixel grid of windows that fits the app's "
                                     "memory and the engine's largest window, each tile with radius pixels of "
                                     "context inside the image",
                          "note": "dense model: every mode is exact tiling, equal to the whole-image result"}}
    whole = 4 * cfg.patch_size
    return {
        "reference": {
            "whole_image_if_side_below": whole,
            "whole_image_rule": "whole image when height < this OR width < this",
            "patch": cfg.patch_size,
            "reflect_pad": REFERENCE_PAD,
            "stride": reference_stride(cfg.patch_size),
            "strip_weight": STRIP_WEIGHT,
            "main_weight": 1.0,
            "blend": "weighted mean of patch centres (pad ring dropped); main grid weight 1, "
                     "top/right/bottom/left border strips weight 0.3",
        },
        "cells": {
            "whole_image_if_side_below": whole,
            "whole_image_rule": "whole image when height < this OR width < this",
            "cell_max": CELL_MAX,
            "halo": CELL_HALO,
            "border": "clamp",
            "grid_slack": GRID_SLACK,
            "min_cell": cfg.patch_size,
            "blend": "none: each cell's output is written straight through",
        },
    }


def host_rules(cfg) -> dict:
    """The pixel rules every tiling shares."""
    return {
        "contract": f"{CONTRACT_DOC} (version {CONTRACT_VERSION})",
        "input": "x = float32(u8) / float32(255), NCHW, RGB order for 3 channels",
        "image_mean": "subtracted and added back inside the model: feed x in [0, 1] as is",
        "padding": "numpy 'reflect' (edge pixel not repeated: p[-i] = p[i]); numpy 'symmetric' "
                   "(edge repeated) when the pad is at least the image's height or its width",
        "valid": "1 where the window pixel lies inside the image, 0 on padding; all ones for a whole image",
        "output": "float32 y; u8 = round_half_even(clip(float32(y * 255), 0, 255))",
        "colour": (f"the model takes {cfg.channels} channel(s): "
                   + ("RGB; grey files are converted to RGB" if cfg.channels == 3 else
                      "grey; colour files are converted to ITU-R 601 luma as Pillow does: "
                      "L = (R*19595 + G*38470 + B*7471 + 32768) >> 16")
                   + "; an alpha channel is not restored: it is resized bicubic to the output size"),
        "fixed_batch": "an engine with io.static_batch N takes exactly N windows a call; a call of fewer windows "
                       "(a whole image, the last call) goes to targets.<t>.batch_one one window at a time where "
                       "the target has it, else is filled with copies of its last window whose outputs are "
                       "dropped; cells choose their grid for N either way",
    }
