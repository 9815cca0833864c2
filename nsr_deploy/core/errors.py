"""User-facing errors: one line, exit code 2, never a traceback."""

# optional libraries -> the extra that installs them (a command run without them says what to install)
OPTIONAL_MODULES = {"torch": "export", "onnx": "export", "onnxsim": "export", "onnxscript": "export",
                    "nncf": "export", "onnxruntime": "runtime", "openvino": "runtime", "safetensors": "export"}


class NSRError(Exception):
    """A problem with the user's input (file, option, model) rather than a bug in nsr-deploy."""

    exit_code = 2


class BackendUnavailable(NSRError):
    """A runtime or exporter whose library (or device) is missing on this machine."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks (temp folders) run as on Ctrl-C."""


def missing_module_message(e: ModuleNotFoundError) -> str | None:
    top = (e.name or "").split(".")[0]
    extra = OPTIONAL_MODULES.get(top)
    if extra is None:
        return None
    return f"this command needs {top}, which is not installed: pip install 'nsr-deploy[{extra}]'"


def user_errors(fn):
    """Command decorator: NSRError -> one ``error:`` line on stderr and its exit code; Ctrl-C -> 130,
    SIGTERM -> 143 (after cleanup); a missing optional library -> what to install."""
    import functools
    import sys

    import click

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NSRError as e:
            click.echo(f"error: {e}", err=True)
            json_error(str(e))
            sys.exit(e.exit_code)
        except ModuleNotFoundError as e:
            message = missing_module_message(e)
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:
            exit_interrupted(e)

    return wrapper


def json_error(message: str) -> None:
    """With ``--json``, a failed command still writes one JSON document on stdout: machines reading it
    get the error instead of nothing (``{"ok": false, "error": ..., "failed": 1}``)."""
    import json

    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("as_json"):
        click.echo(json.dumps({"ok": False, "error": message, "failed": 1}, indent=2))


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: ``warning: <first line>``, no source line."""
    import sys

    text = " ".join(str(message).strip().split("\n")[0].split()) or category.__name__
    print(f"warning: {text}", file=file or sys.stderr)


def exit_interrupted(e: KeyboardInterrupt):
    """Ctrl-C -> ``error: interrupted``, exit 130; SIGTERM -> ``error: terminated``, exit 143."""
    import sys

    import click

    terminated = isinstance(e, Terminated)
    click.echo(f"error: {'terminated' if terminated else 'interrupted'}", err=True)
    sys.exit(143 if terminated else 130)
