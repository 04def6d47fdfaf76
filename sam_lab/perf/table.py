"""The benchmark's plain-text table."""

from __future__ import annotations

import math
from typing import Any

COLUMNS = [
    ("model", "model", "{}"),
    ("impl", "impl", "{}"),
    ("optimizer", "opt", "{}"),
    ("img_per_s", "img/s", "{:.0f}"),
    ("ms_per_step", "ms/step", "{:.1f}"),
    ("noise_pct", "+-%", "{:.1f}"),
    ("vs_sgd", "x SGD", "{:.2f}"),
    ("data_ms", "data ms", "{:.2f}"),
    ("data_pct", "data %", "{:.2f}"),
    ("step_ms", "step ms", "{:.1f}"),
    ("s_per_epoch", "s/epoch(50k)", "{:.1f}"),
    ("peak_mb", "peak MB", "{:.1f}"),
    ("speedup", "speed-up", "{:.2f}"),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with the columns of COLUMNS; NaN prints as '-'."""

    def cell(fmt: str, v: Any) -> str:
        return "-" if isinstance(v, float) and math.isnan(v) else fmt.format(v)

    body = [[cell(fmt, r[k]) for k, _, fmt in COLUMNS] for r in rows]
    head = [h for _, h, _ in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])
