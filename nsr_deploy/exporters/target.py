"""The target protocol: what a target module (``nsr_deploy.exporters.<name>``) provides, and the
:class:`Artifact` its build returns. Building and gating are separate steps, so the pipeline gates
every engine it ships and the bench builds the same engines ungated, to measure them::

    NAME = "openvino"
    STAGES = [...]                                          # progress stage names
    def unavailable() -> str | None                         # why it cannot be built here, or None
    def validate_options(options) -> None                   # optional: refuse options up front
    def build(ctx: ExportContext) -> Artifact               # files into ctx.folder; manifest sections
    def gate(artifact, ctx: ExportContext) -> GateResult | None   # the engine against the reference
    def runs_on(entry, tools) -> list[str]                  # optional: where its file runs (nsr.json)

A target never writes the manifest: its artifact carries the sections, and the gate's result its
``parity`` entry and what running the engine showed (``GateResult.facts``); the pipeline puts them
together and writes ``nsr.json`` once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Artifact:
    """What one target built, and the manifest sections it contributes."""

    target: str
    path: Path | None  # the engine file (absolute); None for a layout target
    engine: str = ""  # how a failed gate names it: "OpenVINO fp16"
    parity_key: str | None = None  # its key in the manifest's ``parity``: "openvino/fp16"
    entry: Mapping | None = None  # the manifest's ``targets[target]``
    tools: Mapping = field(default_factory=dict)  # tool versions, merged into ``tools``
    sections: Mapping = field(default_factory=dict)  # top-level sections (ONNX: the I/O contract; triton)
    moved: Mapping = field(default_factory=dict)  # target -> new ``file`` of an engine this target moved
    state: Any = None  # what the target's own gate needs (not serialised)
