"""User-facing errors: one line, exit code 2, never a traceback."""


class NSRError(Exception):
    """A problem with the user's input (file, option, model) rather than a bug in nsr-deploy."""

    exit_code = 2


class BackendUnavailable(NSRError):
    """A runtime or exporter whose library (or device) is missing on this machine."""


def user_errors(fn):
    """Command decorator: NSRError -> one ``error:`` line on stderr and its exit code; Ctrl-C -> 130."""
    import functools
    import sys

    import click

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NSRError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)

    return wrapper
