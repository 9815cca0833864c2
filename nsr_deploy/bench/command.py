"""`nsr-deploy bench` (placeholder until the bench harness lands)."""

import click


@click.command()
def bench():
    """Parity and latency of exported engines, the paper's CPU protocol side by side."""
    raise click.ClickException("bench is not implemented yet")
