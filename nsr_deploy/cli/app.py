"""The ``nsr-deploy`` command group: one module per command, registered here.

Every user error (bad file, bad option, unusable model) ends as one ``error:`` line on stderr and
exit code 2; heavy imports (torch, onnx, openvino) happen inside the commands that need them.
"""

from __future__ import annotations

import click

from nsr_deploy import __version__
from nsr_deploy.bench.command import bench
from nsr_deploy.cli.export import export
from nsr_deploy.cli.group import OneLineErrorGroup
from nsr_deploy.cli.inspect import inspect
from nsr_deploy.cli.models import models
from nsr_deploy.cli.restore import restore


@click.group(cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nsr-deploy")
def main():
    """Export and run Neural Sparse Representation (NSR) restoration networks on edge devices."""


for command in (inspect, export, restore, bench, models):
    main.add_command(command)
