"""Sweeps -> table cells: place every run in the cells of the published tables (or of a generic optimizer x
rho table), aggregate over seeds, and note which runs do not follow the cell's published recipe.
`sam_lab.report.render` writes the cells as Markdown or CSV.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam_lab.report.published import (
    Cell3,
    Metric,
    Part,
    TableSpec,
    tables,
    tables_for_experiment,
    tables_named,
)
from sam_lab.report.runs import Run, dedupe_over_rho

# Keys that never distinguish two table rows of a generic (experiment-less) sweep.
_NOT_A_ROW_KEY = {"seed", "rho", "optimizer", "model", "data", "resume", "device", "logger", "experiment"}
OPTIMIZER_ORDER = ("sgd", "sam", "asam", "samdirection", "sammagnitude", "fsam", "sgdhess")
NO_RHO = "no rho"  # the column of single-pass optimizers in an optimizer x rho table


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)  # finished runs with the metric
    not_finished: list[Run] = field(default_factory=list)
    missing_metric: list[Run] = field(default_factory=list)  # finished, but without this metric
    off_recipe: dict[str, list[Any]] = field(default_factory=dict)  # key -> values of runs that differ
    recipe: dict[str, Any] = field(default_factory=dict)  # the published recipe of this cell
    applies: bool = True  # False: a rho column of a single-pass row (or the reverse); left blank

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds (n - 1 in the denominator); None for fewer than 2 runs."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def repeated_seeds(self) -> bool:
        return len(set(map(str, self.seeds))) < len(self.seeds)

    def delta(self, published: float | None) -> float | None:
        """Ours − published; None without both, or when a run does not follow the published recipe."""
        if published is None or self.mean is None or self.off_recipe:
            return None
        return self.mean - published


@dataclass
class Table:
    spec: TableSpec
    cells: dict[Cell3, Cell]
    unplaced: list[Run]  # runs given to this table that fit no cell


def applies(row: Part, column: Part) -> bool:
    """Single-pass rows fill only the `no rho` column; other rows every column but that one."""
    if row.rho_free:
        return column.rho_free or "rho" not in column.select
    return not column.rho_free


def build_table(spec: TableSpec, runs: Sequence[Run]) -> Table:
    cells: dict[Cell3, Cell] = {}
    placed: set[Path] = set()
    for b in spec.blocks:
        for r in spec.rows:
            for c in spec.columns:
                recipe = spec.cell_recipe(b, r, c) if spec.published else {}
                cell = cells[(b.label, r.label, c.label)] = Cell(recipe=recipe, applies=applies(r, c))
                if not cell.applies:
                    continue
                select = {**b.select, **r.select, **c.select}
                mine = [run for run in runs if run.matches(select)]
                placed.update(run.path for run in mine)
                _fill(cell, dedupe_over_rho(mine), spec.cell_metric(c))
    return Table(spec, cells, [r for r in runs if r.path not in placed])


def _fill(cell: Cell, runs: Sequence[Run], metric: Metric) -> None:
    for run in runs:
        if not run.finished:
            cell.not_finished.append(run)
            continue
        v = run.value(metric)
        if v is None:
            cell.missing_metric.append(run)
            continue
        cell.values.append(v)
        cell.seeds.append(run.get("seed"))
        cell.runs.append(run)
        for key, value in run.off_recipe(cell.recipe).items():
            seen = cell.off_recipe.setdefault(key, [])
            if value not in seen:
                seen.append(value)


def optimizer_rank(name: Any) -> tuple:
    """The usual order of optimizers (sgd first), unknown ones after them by name."""
    return (OPTIMIZER_ORDER.index(name), "") if name in OPTIMIZER_ORDER else (len(OPTIMIZER_ORDER), str(name))


def generic_spec(runs: Sequence[Run], metric: Metric) -> TableSpec:
    """A table for any sweep: one block per (data, model), rows = optimizer (+ any other override that
    varies between the runs, seed and rho aside), columns = rho; single-pass optimizers (no rho in their
    config) get one `no rho` column instead of one value per rho."""
    keys: set[str] = set()
    for run in runs:
        keys |= {k for k in run.overrides if k not in _NOT_A_ROW_KEY and not k.startswith("hydra")}
    varying = sorted(k for k in keys if len({str(r.get(k)) for r in runs}) > 1)

    blocks, rows, rhos = {}, {}, set()
    for run in runs:
        data, model = run.get("data"), run.get("model")
        blocks.setdefault((data, model), Part(f"{model}, {data}", {"data": data, "model": model}))
        extra = {k: run.get(k) for k in varying}
        opt = run.get("optimizer")
        row_key = (optimizer_rank(opt), tuple(str(v) for v in extra.values()))
        name = f"{opt} ({NO_RHO})" if run.ignores_rho else str(opt)
        label = ", ".join([name] + [f"{k}={v}" for k, v in extra.items()])
        rows.setdefault(row_key, Part(label, {"optimizer": opt, **extra}, rho_free=run.ignores_rho))
        if run.get("rho") is not None and not run.ignores_rho:
            rhos.add(float(run.get("rho")))
    columns = tuple(Part(f"rho={r:g}", {"rho": r}) for r in sorted(rhos))
    if any(r.rho_free for r in rows.values()):
        columns = (Part(NO_RHO, rho_free=True), *columns)
    return TableSpec(
        name="generic",
        letter="",
        title="Sweep results by optimizer and rho (no published table to compare with)",
        experiments=(),
        metric=metric,
        blocks=tuple(blocks[k] for k in sorted(blocks, key=str)),
        rows=tuple(rows[k] for k in sorted(rows)),
        columns=columns,
    )


def tables_for_runs(
    runs: Sequence[Run], which: str = "auto", metric: Metric | None = None, sharpness_key: str | None = None
) -> list[Table]:
    """`auto`: the published tables of the experiments the runs come from (only those runs), plus a generic
    table of the runs of no known experiment. `generic`: one generic table of all runs. Else a table name
    or letter (see sam_lab.report.published.tables_named), filled from all runs."""
    metric = metric or Metric("best_val/test_acc", "acc%")

    def fix(spec: TableSpec) -> TableSpec:
        return spec.with_sharpness_key(sharpness_key) if sharpness_key else spec

    if which == "generic":
        return [build_table(generic_spec(runs, metric), runs)] if runs else []
    if which != "auto":
        return [build_table(fix(spec), runs) for spec in tables_named(which)]
    out = []
    known = set()
    for spec in tables():
        mine = [r for r in runs if r.experiment in spec.experiments]
        if mine:
            out.append(build_table(fix(spec), mine))
            known.update(r.path for r in mine)
    rest = [r for r in runs if r.path not in known and not tables_for_experiment(r.experiment or "")]
    if rest:
        out.append(build_table(generic_spec(rest, metric), rest))
    return out
