"""Which export options each target honours, in one place (torch-free: checked before anything loads).

An option given on the command line that no requested target honours is refused (exit 2, one line)
instead of being silently ignored. ``all`` and packaging targets honour what any target they build does.
"""

from __future__ import annotations

from nsr_deploy.core.capabilities import PRECISIONS_OF_TARGET
from nsr_deploy.core.errors import NSRError

# target -> {option: values it takes (a tuple) or True (any value)}
HONOURED = {
    "onnx": {"precision": PRECISIONS_OF_TARGET["onnx"]},
    "openvino": {"precision": PRECISIONS_OF_TARGET["openvino"], "calib": True, "gate_images": True},
    "tensorrt": {"precision": PRECISIONS_OF_TARGET["tensorrt"], "batch_profile": True, "workspace_mib": True,
                 "timing_cache": True},
    "ncnn": {"precision": PRECISIONS_OF_TARGET["ncnn"]},
    "executorch": {"precision": PRECISIONS_OF_TARGET["executorch"], "allow_fallback": True,
                   "max_side": True},
}
FLAGS = {"precision": "--precision", "calib": "--calib", "gate_images": "--gate-images",
         "batch_profile": "--batch-profile", "workspace_mib": "--workspace", "timing_cache": "--timing-cache",
         "allow_fallback": "--allow-fallback", "max_side": "--max-side"}
# options that only mean something with int8
INT8_ONLY = ("calib", "gate_images")


def refuse_unhonoured(targets: list[str], given: dict) -> None:
    """``given``: the options the user set explicitly (name -> value). ``targets``: what will be built,
    or what was asked for when it could not be built here."""
    engines = [t for t in targets if t in HONOURED]
    for option, value in given.items():
        if option not in FLAGS:
            continue
        takers = [t for t in engines if option in HONOURED[t]]
        if option == "precision":
            takers = [t for t in takers if value in HONOURED[t]["precision"]]
        if not takers:
            raise NSRError(f"{FLAGS[option]} {value if option == 'precision' else ''}".rstrip()
                           + f" is not honoured by --target {'/'.join(targets)} "
                           + f"({_who_does(option, value)}); nothing was built")
    if any(o in given for o in INT8_ONLY) and given.get("precision") != "int8":
        flags = ", ".join(FLAGS[o] for o in INT8_ONLY if o in given)
        raise NSRError(f"{flags} is for --precision int8 only")


def _who_does(option: str, value) -> str:
    takers = [t for t, opts in HONOURED.items()
              if option in opts and (option != "precision" or value in opts["precision"])]
    return f"honoured by: {', '.join(takers)}" if takers else "no target honours it"
