"""Fixed-width text tables for the terminal (plans, pre-flight, evaluation)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, with a dashed rule under the header."""
    lines = [[str(c) for c in header], *([str(c) for c in r] for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
