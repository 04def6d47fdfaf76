"""Read the runs of one or more sweeps and turn them into tables (Markdown, CSV) with the published numbers.

A run is a directory with a `.hydra/` folder (what Hydra writes before the job starts). It is finished when
its `summary.json` says `status: finished`; every other run (no summary.json: failed, killed or still
running; or another status) is reported, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sam_lab.logging import read_jsonl
from sam_lab.tables import TABLES, Metric, Part, TableSpec, tables_for_experiment

# Keys that never distinguish two table rows of a generic (experiment-less) sweep.
_NOT_A_ROW_KEY = {"seed", "rho", "optimizer", "model", "data", "resume", "device", "logger", "experiment"}
_OPTIMIZER_ORDER = ("sgd", "sam", "asam", "samdirection", "sammagnitude", "fsam", "sgdhess")


@dataclass
class Run:
    """One job directory of a sweep (or a single run directory)."""

    path: Path

    @cached_property
    def hydra(self) -> DictConfig:
        path = self.path / ".hydra" / "hydra.yaml"
        return OmegaConf.load(path) if path.exists() else OmegaConf.create({})

    @cached_property
    def choices(self) -> dict[str, Any]:
        choices = OmegaConf.select(self.hydra, "hydra.runtime.choices", default=None)
        if choices is None and self.summary:
            return dict(self.summary.get("config") or {})
        return OmegaConf.to_container(choices) if choices is not None else {}

    @cached_property
    def overrides(self) -> dict[str, str]:
        """This job's command-line/sweep overrides, key -> value (`+`, `++` prefixes dropped)."""
        path = self.path / ".hydra" / "overrides.yaml"
        out: dict[str, str] = {}
        for line in OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else []:
            key, _, value = str(line).partition("=")
            if not key.startswith("~"):
                out[key.lstrip("+")] = value
        return out

    @cached_property
    def config(self) -> DictConfig:
        path = self.path / ".hydra" / "config.yaml"
        return OmegaConf.load(path) if path.exists() else OmegaConf.create({})

    @cached_property
    def summary(self) -> dict[str, Any] | None:
        path = self.path / "summary.json"
        try:
            return json.loads(path.read_text()) if path.exists() else None
        except json.JSONDecodeError:
            return None

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        try:
            return read_jsonl(self.path / "metrics.jsonl")
        except json.JSONDecodeError:  # a job killed while writing its last line
            return []

    @property
    def finished(self) -> bool:
        return self.summary is not None and self.summary.get("status") == "finished"

    def problem(self) -> str | None:
        """Why this run is not finished, in words; None when it is."""
        if self.finished:
            return None
        epochs = OmegaConf.select(self.config, "epochs", default=None)
        done = max((r.get("epoch", 0) for r in self.history), default=0)
        progress = f"{done}/{epochs} epochs in metrics.jsonl"
        if self.summary is None:
            return f"no summary.json (failed, killed or still running; {progress})"
        return f"status={self.summary.get('status')!r} ({progress})"

    def get(self, key: str) -> Any:
        """A config-group choice, a summary value, or a config value (in that order); None if absent."""
        if key in self.choices:
            return self.choices[key]
        if self.summary and key in self.summary:
            return self.summary[key]
        return OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)

    def matches(self, select: Mapping[str, Any]) -> bool:
        return selects(self.get, select)

    def value(self, metric: Metric) -> float | None:
        """The metric of a finished run, in the table's unit; None when the run lacks it."""
        if metric.best_epoch:
            xs = [r[metric.key] for r in self.history if isinstance(r.get(metric.key), (int, float))]
            raw = max(xs) if xs else None
        else:
            raw = (self.summary or {}).get(metric.key)
        if not isinstance(raw, (int, float)) or isinstance(raw, bool) or not math.isfinite(raw):
            return None
        return metric.show(float(raw))

    @property
    def experiment(self) -> str | None:
        return self.choices.get("experiment")


def selects(get: Callable[[str], Any], select: Mapping[str, Any]) -> bool:
    """Whether the record read by `get` has every value of `select` (a block's, row's or column's)."""
    return all(_same(get(k), v) for k, v in select.items())


def _same(a: Any, b: Any) -> bool:
    """Equal as numbers when both read as numbers (0.1 == "0.1" == 1e-1), else as strings."""
    if a is None or b is None:
        return a is b
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)


def find_runs(dirs: Iterable[str | Path]) -> list[Run]:
    """Every job directory (one holding `.hydra/`) at or below each of `dirs`, sorted, without repeats."""
    found: dict[Path, Run] = {}
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"no such sweep directory: {root}")
        for hydra_dir in sorted([root / ".hydra", *root.rglob(".hydra")]):
            if hydra_dir.is_dir() and (hydra_dir / "config.yaml").exists():
                job = hydra_dir.parent.resolve()
                found.setdefault(job, Run(job))
    return sorted(found.values(), key=lambda r: _natural(r.path))


def _natural(path: Path) -> tuple:
    """Sort `2_...` before `10_...`."""
    parts: list[tuple] = []
    for p in path.parts:
        head = p.split("_", 1)[0]
        parts.append((0, int(head), p) if head.isdigit() else (1, 0, p))
    return tuple(parts)


# ---- aggregation ---------------------------------------------------------------------------------------
@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)  # finished runs with the metric
    not_finished: list[Run] = field(default_factory=list)
    missing_metric: list[Run] = field(default_factory=list)  # finished, but without this metric

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


@dataclass
class Table:
    spec: TableSpec
    cells: dict[tuple[str, str, str], Cell]
    unplaced: list[Run]  # runs given to this table that fit no cell


def build_table(spec: TableSpec, runs: Sequence[Run]) -> Table:
    cells: dict[tuple[str, str, str], Cell] = {}
    placed: set[Path] = set()
    for b in spec.blocks:
        for r in spec.rows:
            for c in spec.columns:
                cell = cells[(b.label, r.label, c.label)] = Cell()
                select = {**b.select, **r.select, **c.select}
                metric = spec.cell_metric(c)
                for run in runs:
                    if not run.matches(select):
                        continue
                    placed.add(run.path)
                    if not run.finished:
                        cell.not_finished.append(run)
                        continue
                    v = run.value(metric)
                    if v is None:
                        cell.missing_metric.append(run)
                    else:
                        cell.values.append(v)
                        cell.seeds.append(run.get("seed"))
                        cell.runs.append(run)
    return Table(spec, cells, [r for r in runs if r.path not in placed])


def generic_spec(runs: Sequence[Run], metric: Metric) -> TableSpec:
    """A table for any sweep: one block per (data, model), rows = optimizer (+ any other override that
    varies between the runs, seed and rho aside), columns = rho."""
    keys: set[str] = set()
    for run in runs:
        keys |= {k for k in run.overrides if k not in _NOT_A_ROW_KEY and not k.startswith("hydra")}
    varying = sorted(k for k in keys if len({str(r.get(k)) for r in runs}) > 1)

    def order(opt: Any) -> tuple:
        return (
            (_OPTIMIZER_ORDER.index(opt), "")
            if opt in _OPTIMIZER_ORDER
            else (len(_OPTIMIZER_ORDER), str(opt))
        )

    blocks, rows, rhos = {}, {}, set()
    for run in runs:
        data, model = run.get("data"), run.get("model")
        blocks.setdefault((data, model), Part(f"{model}, {data}", {"data": data, "model": model}))
        extra = {k: run.get(k) for k in varying}
        row_key = (order(run.get("optimizer")), tuple(str(v) for v in extra.values()))
        label = ", ".join([str(run.get("optimizer"))] + [f"{k}={v}" for k, v in extra.items()])
        rows.setdefault(row_key, Part(label, {"optimizer": run.get("optimizer"), **extra}))
        if run.get("rho") is not None:
            rhos.add(float(run.get("rho")))
    columns = tuple(Part(f"rho={_fmt_num(r)}", {"rho": r}) for r in sorted(rhos))
    return TableSpec(
        name="generic",
        letter="",
        title="Sweep results by optimizer and rho (no published table to compare with)",
        experiments=(),
        metric=metric,
        blocks=tuple(blocks[k] for k in sorted(blocks, key=str)),
        rows=tuple(rows[k] for k in sorted(rows)),
        columns=columns,
        published={},
    )


def tables_for_runs(
    runs: Sequence[Run], which: str = "auto", metric: Metric | None = None, sharpness_key: str | None = None
) -> list[Table]:
    """`auto`: the published tables of the experiments the runs come from (only those runs), plus a generic
    table of the runs of no known experiment. `generic`: one generic table of all runs. Else a table name
    or letter (see sam_lab.tables.tables_named), filled from all runs."""
    from sam_lab.tables import tables_named

    metric = metric or Metric("best_val/test_acc", "acc%")

    def fix(spec: TableSpec) -> TableSpec:
        return spec.with_sharpness_key(sharpness_key) if sharpness_key else spec

    if which == "generic":
        return [build_table(generic_spec(runs, metric), runs)] if runs else []
    if which != "auto":
        return [build_table(fix(spec), runs) for spec in tables_named(which)]
    out = []
    known = set()
    for spec in TABLES:
        mine = [r for r in runs if r.experiment in spec.experiments]
        if mine:
            out.append(build_table(fix(spec), mine))
            known.update(r.path for r in mine)
    rest = [r for r in runs if r.path not in known and not tables_for_experiment(r.experiment or "")]
    if rest:
        out.append(build_table(generic_spec(rest, metric), rest))
    return out


# ---- rendering -------------------------------------------------------------------------------------------
def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def format_cell(cell: Cell) -> str:
    """`mean ± std (n=3)`; `—` without runs; unfinished and metric-less runs counted in brackets."""
    if cell.n == 0:
        text = "—"
    elif cell.n == 1:
        text = _fmt(cell.mean)
    else:
        text = f"{_fmt(cell.mean)} ± {_fmt(cell.std)} (n={cell.n})"
    flags = []
    if cell.not_finished:
        flags.append(f"{len(cell.not_finished)} not finished")
    if cell.missing_metric:
        flags.append(f"{len(cell.missing_metric)} without metric")
    if cell.repeated_seeds:
        flags.append("repeated seeds")
    return f"{text} [{'; '.join(flags)}]" if flags else text


def markdown(table: Table) -> str:
    spec, lines = table.spec, []
    with_published = bool(spec.published)
    lines.append(f"### {spec.name}: {spec.title}" if spec.letter else f"### {spec.title}")
    lines.append("")
    metrics = {spec.cell_metric(c).describe() for c in spec.columns}
    legend = f"Metric: {'; '.join(sorted(metrics))}. Ours: mean ± sample std over seeds (n runs)"
    if with_published:
        legend += "; pub: published; Δ: ours − pub"
    lines.append(legend + ".")
    for block in spec.blocks:
        lines += ["", f"**{block.title()}**", ""]
        header = ["method"]
        for c in spec.columns:
            header += [c.title()] + (["pub", "Δ"] if with_published else [])
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" + "---:|" * (len(header) - 1))
        for row in spec.rows:
            cells = [row.title()]
            for c in spec.columns:
                cell = table.cells[(block.label, row.label, c.label)]
                cells.append(format_cell(cell))
                if with_published:
                    pub = spec.published.get((block.label, row.label, c.label))
                    delta = None if pub is None or cell.mean is None else cell.mean - pub
                    cells += ["??" if pub is None else _fmt(pub), _fmt_delta(delta)]
            lines.append("| " + " | ".join(cells) + " |")
    for note in spec.notes:
        lines += ["", f"Note: {note}"]
    if table.unplaced:
        lines += ["", f"Runs in no cell of this table ({len(table.unplaced)}):"]
        lines += [f"- {r.path}" for r in table.unplaced]
    return "\n".join(lines)


def _fmt_delta(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


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
        for b in spec.blocks:
            for r in spec.rows:
                for c in spec.columns:
                    cell = t.cells[(b.label, r.label, c.label)]
                    pub = spec.published.get((b.label, r.label, c.label))
                    delta = None if pub is None or cell.mean is None else cell.mean - pub
                    writer.writerow(
                        {
                            "table": spec.name,
                            "block": b.label,
                            "row": r.title(),
                            "column": c.label,
                            "metric": spec.cell_metric(c).describe(),
                            "n": cell.n,
                            "mean": "" if cell.mean is None else f"{cell.mean:.4f}",
                            "std": "" if cell.std is None else f"{cell.std:.4f}",
                            "published": "" if pub is None else pub,
                            "delta": "" if delta is None else f"{delta:.4f}",
                            "not_finished": len(cell.not_finished),
                            "without_metric": len(cell.missing_metric),
                            "seeds": " ".join(map(str, cell.seeds)),
                            "runs": " ".join(str(x.path) for x in cell.runs),
                        }
                    )
    return buf.getvalue()
