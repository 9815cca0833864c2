"""The ``nsr-deploy`` command line (entry point ``nsr_deploy.cli:main``): the click group and one module per
command (:mod:`.inspect`, :mod:`.export`, :mod:`.restore`, :mod:`.models`; ``bench`` lives with the bench)."""

from nsr_deploy.cli.app import main

__all__ = ["main"]
