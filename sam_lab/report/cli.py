"""What scripts/make_tables.py and scripts/plot_runs.py share: the sweep arguments and reading the runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sam_lab.report.runs import Run, find_runs


def parser(doc: str, sweeps_required: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the script's first docstring paragraph and the sweep directories."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument(
        "sweeps",
        nargs="+" if sweeps_required else "*",
        type=Path,
        help="sweep or run directories (searched recursively)",
    )
    return p


def error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def read_runs(sweeps: Sequence[Path]) -> list[Run] | None:
    """The runs below `sweeps`; None (after saying why on stderr) when a directory is missing or has none."""
    try:
        runs = find_runs(sweeps)
    except FileNotFoundError as err:
        error(str(err.args[0]))
        return None
    if not runs:
        error(f"no runs (directories with .hydra/) under {', '.join(map(str, sweeps))}")
        return None
    return runs
