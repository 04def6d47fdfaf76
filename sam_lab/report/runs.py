"""Read the runs of one or more sweeps: a run is a directory with a `.hydra/` folder (what Hydra writes before
the job starts). It is finished when its `summary.json` says `status: finished`; every other run (no
summary.json: failed, killed or still running; or another status) is reported, never dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sam_lab.report.published import Metric
from sam_lab.run.files import read_jsonl


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

    @property
    def experiment(self) -> str | None:
        return self.choices.get("experiment")

    @cached_property
    def ignores_rho(self) -> bool:
        """A single-pass optimizer: its resolved optimizer node has no `rho` (e.g. sgd). Runs of it that
        differ only in rho are the same computation."""
        node = OmegaConf.select(self.config, "optimizer", default=None)
        return isinstance(node, DictConfig) and "rho" not in node

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
        value = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    def matches(self, select: Mapping[str, Any]) -> bool:
        return selects(self.get, select)

    def off_recipe(self, recipe: Mapping[str, Any]) -> dict[str, Any]:
        """The recipe keys whose value in this run differs: key -> this run's value."""
        return {k: self.get(k) for k, want in recipe.items() if not same(self.get(k), want)}

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


def selects(get: Callable[[str], Any], select: Mapping[str, Any]) -> bool:
    """Whether the record read by `get` has every value of `select` (a block's, row's or column's)."""
    return all(same(get(k), v) for k, v in select.items())


def same(a: Any, b: Any) -> bool:
    """Equal as numbers when both read as numbers (0.1 == "0.1" == 1e-1), else as strings (an enum by its
    name, as a saved config writes it); lists item-wise."""
    a, b = (x.name if isinstance(x, Enum) else x for x in (a, b))
    if a is None or b is None:
        return a is b
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(map(same, a, b))
        )
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)


def dedupe_over_rho(runs: Iterable[Run]) -> list[Run]:
    """Runs of a single-pass optimizer that differ only in rho computed the same thing: keep the first of
    each such set (config and choices equal but for rho). Other runs are kept as they are."""
    out, seen = [], set()
    for run in runs:
        if run.ignores_rho:
            config = OmegaConf.to_container(run.config, resolve=False)
            config.pop("rho", None)
            key = (json.dumps(config, sort_keys=True, default=str), json.dumps(run.choices, sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
        out.append(run)
    return out


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
