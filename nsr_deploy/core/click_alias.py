"""A click option with a spelling that still works but is not shown in ``--help``.

``-m`` is ``--model``'s short option on every command; ``inspect``, ``export`` and ``bench`` spelled it
``-M`` before, so scripts written then keep working.
"""

from __future__ import annotations

import click


class QuietAliasOption(click.Option):
    """``click.Option`` whose ``quiet_aliases`` parse as usual and stay out of the help text."""

    def __init__(self, *args, quiet_aliases: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.quiet_aliases = tuple(quiet_aliases)

    def get_help_record(self, ctx):
        shown = self.opts
        self.opts = [o for o in shown if o not in self.quiet_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown
