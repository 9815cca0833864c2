"""Aligned plain-text tables for the terminal report (no dependency, monospace only)."""

from __future__ import annotations

from dataclasses import dataclass, field


def fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    """``value`` formatted with ``spec``; ``missing`` for None (a figure that does not exist)."""
    if value is None:
        return missing
    if isinstance(value, str):
        return value
    return format(value, spec)


@dataclass
class Table:
    """A title, column headers, rows of already formatted cells, and notes printed below.

    ``groups`` optionally puts spanning titles over runs of columns: ``[(title, span), ...]`` with
    the spans adding up to the number of columns. The first ``left`` columns are left-aligned (labels),
    the rest right-aligned (figures).
    """

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    groups: list[tuple[str, int]] | None = None
    left: int = 1

    def widths(self) -> list[int]:
        cells = [self.header, *self.rows]
        return [max(len(str(r[i])) for r in cells) for i in range(len(self.header))]

    def _line(self, cells, widths) -> str:
        parts = [str(c).ljust(w) if i < self.left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    def _group_line(self, widths) -> str:
        parts, i = [], 0
        for title, span in self.groups:
            width = sum(widths[i:i + span]) + 2 * (span - 1)
            parts.append(title.center(width) if title else " " * width)
            i += span
        return "  ".join(parts).rstrip()

    def render(self) -> str:
        widths = self.widths()
        if self.groups:  # a spanning title wider than its columns widens the last of them
            i = 0
            for title, span in self.groups:
                have = sum(widths[i:i + span]) + 2 * (span - 1)
                widths[i + span - 1] += max(0, len(title) - have)
                i += span
        lines = [self.title]
        if self.groups:
            lines.append(self._group_line(widths))
        lines.append(self._line(self.header, widths))
        lines.append("  ".join("-" * w for w in widths))
        lines += [self._line(r, widths) for r in self.rows]
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)
