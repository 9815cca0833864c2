"""``python -m nsr_deploy.cli``: the ``nsr-deploy`` command, for environments without its script on PATH."""

from nsr_deploy.cli.app import main

main()
