"""The command group behind ``nsr-deploy``: click's own usage errors become one ``error:`` line (exit 2)
like every other user error, and SIGTERM unwinds like Ctrl-C so temp folders are cleaned up."""

from __future__ import annotations

import signal
import sys
import warnings

import click

from nsr_deploy.core.errors import Terminated, exit_interrupted, one_line_warning


def _raise_terminated(signum, frame):
    raise Terminated()


class OneLineErrorGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread (embedded use): leave signals alone
            pass
        # users read warnings as lines, like errors (the Python API keeps Python's own format)
        warnings.showwarning = one_line_warning
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            message = " ".join(e.format_message().split())
            if isinstance(e, click.UsageError) and e.ctx is not None:
                message += f" (see '{e.ctx.command_path} --help')"
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:  # a signal outside any command (while parsing, importing)
            exit_interrupted(e)
        sys.exit(rv if isinstance(rv, int) else 0)
