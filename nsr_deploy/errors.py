"""User-facing errors: one line, exit code 2, never a traceback."""


class NSRError(Exception):
    """A problem with the user's input (file, option, model) rather than a bug in nsr-deploy."""

    exit_code = 2


class BackendUnavailable(NSRError):
    """A runtime or exporter whose library (or device) is missing on this machine."""
