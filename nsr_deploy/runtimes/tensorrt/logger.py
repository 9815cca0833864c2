"""A TensorRT logger that keeps what TensorRT reports, so failures end as one readable line.

TensorRT's builder, parser and runtime report *why* they fail only through the logger (a failed
``build_serialized_network`` or ``deserialize_cuda_engine`` just returns None). This logger collects
errors and warnings instead of printing them; ``summary()`` is the reason nsr-deploy shows the user.
"""

from __future__ import annotations

SUMMARY_CHARS = 400


def collecting_logger(trt):
    """A ``trt.ILogger`` that records errors and warnings (``trt`` is the imported tensorrt module)."""

    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(str(msg))
            elif severity == trt.ILogger.WARNING:
                self.warnings.append(str(msg))

        def summary(self) -> str:
            return summarize(self.errors)

    return CollectingLogger()


def summarize(errors: list[str], limit: int = SUMMARY_CHARS) -> str:
    """The first line of each distinct error, joined into one line of at most ``limit`` characters."""
    seen, lines = set(), []
    for message in errors:
        first = " ".join(str(message).split())
        if first and first not in seen:
            seen.add(first)
            lines.append(first)
    text = "; ".join(lines) or "TensorRT gave no error message"
    return text if len(text) <= limit else text[:limit - 3] + "..."
