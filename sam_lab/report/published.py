"""The published tables, loaded from `published.yaml` (package data) into table specs.

A table has blocks (e.g. one per model), rows (methods) and columns (rho, or a metric); a cell is filled by
the finished runs that match its block's, row's and column's selectors, and compared with the published
number only when the runs follow the cell's recipe (the table's, plus what its block, row and column add).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

Cell3 = tuple[str, str, str]  # (block label, row label, column label)


@dataclass(frozen=True)
class Metric:
    """How a cell's number is read from one run and shown.

    `key` is a summary.json key; with `best_epoch` it is a metrics.jsonl key maximised over epochs (the
    "best test accuracy" of authors' logs). `unit`: "acc%" shows 100 x, "err%" 100 (1 - x), "raw" x.
    """

    key: str
    unit: str = "acc%"
    best_epoch: bool = False

    def __post_init__(self) -> None:
        if self.unit not in ("acc%", "err%", "raw"):
            raise ValueError(f"Metric.unit must be acc%, err% or raw, got {self.unit!r}")

    def show(self, value: float) -> float:
        return {"acc%": 100.0 * value, "err%": 100.0 * (1.0 - value), "raw": value}[self.unit]

    def describe(self) -> str:
        what = f"max over epochs of {self.key}" if self.best_epoch else self.key
        return {"acc%": f"100 x {what}", "err%": f"100 x (1 - {what})", "raw": what}[self.unit]


@dataclass(frozen=True)
class Part:
    """A block, row or column: its label as published, and which runs it takes.

    `recipe`: config keys this part fixes beyond the table's recipe (e.g. a model's width). `rho_free`:
    a row of single-pass optimizers (they ignore rho), or the one column such rows fill.
    """

    label: str
    select: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""  # shown after the label, e.g. which of our configs produced a published row
    metric: Metric | None = None  # columns only: a different metric than the table's
    recipe: Mapping[str, Any] = field(default_factory=dict)
    rho_free: bool = False

    def title(self) -> str:
        return f"{self.label} [{self.note}]" if self.note else self.label


@dataclass(frozen=True)
class TableSpec:
    name: str  # e.g. "A-accuracy"; `make_tables.py --table` takes it, or its letter
    letter: str  # A, B, C or D: the section of docs/published.md
    title: str
    experiments: tuple[str, ...]  # experiment configs whose runs fill it (auto mode)
    metric: Metric
    blocks: tuple[Part, ...]
    rows: tuple[Part, ...]
    columns: tuple[Part, ...]
    published: Mapping[Cell3, float | None] = field(default_factory=dict)  # None = the source's "??"
    recipe: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def cell_metric(self, column: Part) -> Metric:
        return column.metric or self.metric

    def cell_recipe(self, block: Part, row: Part, column: Part) -> dict[str, Any]:
        return {**self.recipe, **block.recipe, **row.recipe, **column.recipe}

    def with_sharpness_key(self, key: str) -> TableSpec:
        """The same table reading sharpness from `key` instead of the published protocol's key."""

        def swap(m: Metric | None) -> Metric | None:
            return dataclasses.replace(m, key=key) if m and m.key.startswith("sharpness/") else m

        columns = tuple(dataclasses.replace(c, metric=swap(c.metric)) for c in self.columns)
        return dataclasses.replace(self, metric=swap(self.metric), columns=columns)


@dataclass(frozen=True)
class Section:
    """One published source (A-F): its title, where the numbers come from, and any plain table."""

    letter: str
    title: str
    source: str
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Published:
    tables: tuple[TableSpec, ...]
    sections: tuple[Section, ...]
    sharpness_key: str  # the key the sharpness cells read by default


@cache
def load() -> Published:
    """Parse sam_lab/report/published.yaml (once per process)."""
    text = resources.files("sam_lab.report").joinpath("published.yaml").read_text()
    raw = yaml.safe_load(text)
    metrics = {name: Metric(**m) for name, m in raw["metrics"].items()}

    def part(d: Mapping[str, Any]) -> Part:
        metric = metrics[d["metric"]] if "metric" in d else None
        return Part(
            d["label"], dict(d.get("select") or {}), d.get("note", ""), metric, dict(d.get("recipe") or {})
        )

    tables = []
    for t in raw["tables"]:
        blocks, rows, columns = (tuple(part(p) for p in t[k]) for k in ("blocks", "rows", "columns"))
        published: dict[Cell3, float | None] = {}
        for b in blocks:
            for r in rows:
                values = t["published"][b.label][r.label]
                if len(values) != len(columns):
                    raise ValueError(
                        f"{t['name']} {b.label}/{r.label}: {len(values)} values, {len(columns)} columns"
                    )
                published.update({(b.label, r.label, c.label): v for c, v in zip(columns, values)})
        tables.append(
            TableSpec(
                name=t["name"],
                letter=t["letter"],
                title=t["title"],
                experiments=tuple(t["experiments"]),
                metric=metrics[t["metric"]],
                blocks=blocks,
                rows=rows,
                columns=columns,
                published=published,
                recipe=dict(raw["recipes"][t["recipe"]]),
                notes=tuple(t.get("notes") or ()),
            )
        )
    sections = tuple(
        Section(
            letter,
            s["title"],
            s["source"],
            s.get("text", ""),
            tuple(s.get("header") or ()),
            tuple(tuple(map(str, r)) for r in s.get("rows") or ()),
        )
        for letter, s in raw["sections"].items()
    )
    return Published(tuple(tables), sections, metrics["sharpness"].key)


def tables() -> tuple[TableSpec, ...]:
    return load().tables


def table_names() -> list[str]:
    return sorted({t.letter for t in tables()} | {t.name for t in tables()})


def tables_named(name: str) -> list[TableSpec]:
    """`A` -> the three A tables; `A-sharpness` -> that one. Case-insensitive."""
    found = [t for t in tables() if name.lower() in (t.letter.lower(), t.name.lower())]
    if not found:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(table_names())}")
    return found


def tables_for_experiment(experiment: str) -> list[TableSpec]:
    return [t for t in tables() if experiment in t.experiments]
