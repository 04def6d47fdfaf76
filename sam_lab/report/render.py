"""Tables as text: our cells beside the published numbers (Markdown, CSV), the runs that did not finish,
and the published tables alone (docs/published.md is this module's `published_markdown()`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from sam_lab.report.published import Part, TableSpec, load
from sam_lab.report.runs import Run
from sam_lab.report.tables import Cell, Table

_SHOWN_RECIPE_KEYS = 4  # a cell lists at most this many differing keys; the CSV has them all


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _fmt_delta(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


def _fmt_value(v: Any) -> str:
    """As a Hydra override would write it: 0.001, true, null, [0.3,0.6]."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(_fmt_value, v)) + "]"
    return "null" if v is None else str(v)


def recipe_differences(cell: Cell, limit: int | None = None) -> str:
    """`epochs=1≠200, model.width=2≠64`: our value(s) ≠ the published recipe's, for each differing key."""
    items = [
        f"{k}={','.join(map(_fmt_value, ours))}≠{_fmt_value(cell.recipe[k])}"
        for k, ours in cell.off_recipe.items()
    ]
    if limit is not None and len(items) > limit:
        items = [*items[:limit], f"+{len(items) - limit} more"]
    return ", ".join(items)


def format_cell(cell: Cell) -> str:
    """`mean ± std (n=3)`; `—` without runs; unfinished and metric-less runs counted in brackets; a run off
    the published recipe named in parentheses (and then no difference to the published number is shown)."""
    if not cell.applies:
        return ""
    if cell.n == 0:
        text = "—"
    elif cell.n == 1:
        text = _fmt(cell.mean)
    else:
        text = f"{_fmt(cell.mean)} ± {_fmt(cell.std)} (n={cell.n})"
    if cell.off_recipe:
        text += f" (recipe: {recipe_differences(cell, _SHOWN_RECIPE_KEYS)})"
    flags = []
    if cell.not_finished:
        flags.append(f"{len(cell.not_finished)} not finished")
    if cell.missing_metric:
        flags.append(f"{len(cell.missing_metric)} without metric")
    if cell.repeated_seeds:
        flags.append("repeated seeds")
    return f"{text} [{'; '.join(flags)}]" if flags else text


def _table_lines(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" + "---:|" * (len(columns) - 1)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(table: Table) -> str:
    spec, lines = table.spec, []
    with_published = bool(spec.published)
    lines.append(f"### {spec.name}: {spec.title}" if spec.letter else f"### {spec.title}")
    lines.append("")
    metrics = {spec.cell_metric(c).describe() for c in spec.columns}
    legend = f"Metric: {'; '.join(sorted(metrics))}. Ours: mean ± sample std over seeds (n runs)"
    if with_published:
        legend += (
            "; pub: published; Δ: ours − pub, shown only when every run follows the published recipe "
            "(else `(recipe: key=ours≠published)`)"
        )
    if any(r.rho_free for r in spec.rows):
        legend += "; single-pass optimizers ignore rho: one value from their runs at any rho (one per seed)"
    lines.append(legend + ".")
    for block in spec.blocks:
        header = ["method"]
        for c in spec.columns:
            header += [c.title()] + (["pub", "Δ"] if with_published else [])
        rows = []
        for row in spec.rows:
            cells = [row.title()]
            for c in spec.columns:
                cell = table.cells[(block.label, row.label, c.label)]
                cells.append(format_cell(cell))
                if with_published:
                    pub = spec.published.get((block.label, row.label, c.label))
                    cells += ["??" if pub is None else _fmt(pub), _fmt_delta(cell.delta(pub))]
            rows.append(cells)
        lines += ["", f"**{block.title()}**", "", *_table_lines(header, rows)]
    for note in spec.notes:
        lines += ["", f"Note: {note}"]
    if table.unplaced:
        lines += ["", f"Runs in no cell of this table ({len(table.unplaced)}):"]
        lines += [f"- {r.path}" for r in table.unplaced]
    return "\n".join(lines)


def problems_markdown(runs: Sequence[Run]) -> str:
    bad = [(r, r.problem()) for r in runs if not r.finished]
    if not bad:
        return f"All {len(runs)} runs finished."
    lines = [f"Runs not finished ({len(bad)} of {len(runs)}):"]
    lines += [f"- {r.path}: {why}" for r, why in bad]
    return "\n".join(lines)


CSV_FIELDS = (
    "table",
    "block",
    "row",
    "column",
    "metric",
    "n",
    "mean",
    "std",
    "published",
    "delta",
    "off_recipe",
    "not_finished",
    "without_metric",
    "seeds",
    "runs",
)


def csv_text(tables: Sequence[Table]) -> str:
    """One line per cell (long format), the published value and the difference beside ours."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for t in tables:
        spec = t.spec
        for (b, r, c), cell in t.cells.items():
            if not cell.applies:
                continue
            pub = spec.published.get((b, r, c))
            delta = cell.delta(pub)
            row = next(x for x in spec.rows if x.label == r)
            column = next(x for x in spec.columns if x.label == c)
            writer.writerow(
                {
                    "table": spec.name,
                    "block": b,
                    "row": row.title(),
                    "column": c,
                    "metric": spec.cell_metric(column).describe(),
                    "n": cell.n,
                    "mean": "" if cell.mean is None else f"{cell.mean:.4f}",
                    "std": "" if cell.std is None else f"{cell.std:.4f}",
                    "published": "" if pub is None else pub,
                    "delta": "" if delta is None else f"{delta:.4f}",
                    "off_recipe": recipe_differences(cell),
                    "not_finished": len(cell.not_finished),
                    "without_metric": len(cell.missing_metric),
                    "seeds": " ".join(map(str, cell.seeds)),
                    "runs": " ".join(str(x.path) for x in cell.runs),
                }
            )
    return buf.getvalue()


# ---- the published numbers alone (docs/published.md) ----------------------------------------------------
def _recipe_text(recipe: Mapping[str, Any]) -> str:
    return ", ".join(f"`{k}={_fmt_value(v)}`" for k, v in recipe.items())


def _part_recipes(parts: Sequence[Part]) -> list[str]:
    return [f"{p.label}: {_recipe_text(p.recipe)}" for p in parts if p.recipe]


def published_table_markdown(spec: TableSpec) -> str:
    lines = [f"### {spec.name}: {spec.title}", ""]
    lines.append(f"Metric: {'; '.join(sorted({spec.cell_metric(c).describe() for c in spec.columns}))}.")
    lines.append(f"Experiment: {', '.join(f'`{e}`' for e in spec.experiments)}.")
    lines.append(f"Recipe: {_recipe_text(spec.recipe)}.")
    extra = _part_recipes(spec.blocks) + _part_recipes(spec.rows) + _part_recipes(spec.columns)
    if extra:
        lines.append(f"Also: {'; '.join(extra)}.")
    for block in spec.blocks:
        rows = []
        for r in spec.rows:
            values = [spec.published.get((block.label, r.label, c.label)) for c in spec.columns]
            rows.append([r.title(), *("??" if v is None else _fmt(v) for v in values)])
        lines += ["", f"**{block.title()}** (selects {_recipe_text(block.select)})", ""]
        lines += _table_lines(["method", *(c.title() for c in spec.columns)], rows)
    lines += [f"\nNote: {n}" for n in spec.notes]
    return "\n".join(lines)


def published_markdown() -> str:
    """The whole of docs/published.md: every published source (A-F), its recipe and its numbers."""
    pub = load()
    lines = [
        "# Published results",
        "",
        "<!-- Generated from sam_lab/report/published.yaml by `python scripts/make_tables.py --published`;",
        "     edit the YAML and regenerate (tests/test_report.py checks that they agree). -->",
        "",
        "The numbers `scripts/make_tables.py` compares our sweeps with, the sources they come from and the",
        "recipe each was produced with. `??` marks a cell the source itself left empty. Row and column",
        "headers are the published ones; brackets say which of our configs fills a row where it differs.",
        "A run is compared with a published number only if its config has every recipe value listed",
        "(`key=value` in the resolved Hydra config); otherwise make_tables shows its value without a",
        "difference, marked `(recipe: key=ours≠published)`.",
    ]
    for section in pub.sections:
        lines += ["", f"## {section.letter}. {section.title}", "", f"Source: {section.source}"]
        if section.text:
            lines += ["", section.text.strip()]
        if section.header:
            lines += ["", *_table_lines(list(section.header), [list(r) for r in section.rows])]
        for spec in pub.tables:
            if spec.letter == section.letter:
                lines += ["", published_table_markdown(spec)]
    return "\n".join(lines) + "\n"
