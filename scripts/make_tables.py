#!/usr/bin/env python
"""Turn sweeps into the published tables: `python scripts/make_tables.py SWEEP_DIR... [--table auto|A|B|C|D]`.

Reads every run (a directory with `.hydra/`) below the given directories, prints Markdown tables in the
layout of REFERENCE.md (rows: method; columns: rho or metric; one block per model or dataset) with our mean
± std over seeds, the published value and the difference beside each cell, then the runs that did not
finish. `--csv OUT` also writes one CSV line per cell. The table layouts and published numbers live in
sam_lab/tables.py; the reading and formatting in sam_lab/results.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sam_lab.results import csv_text, find_runs, markdown, problems_markdown, tables_for_runs
from sam_lab.tables import SHARPNESS_KEY, TABLES, Metric


def main(argv: list[str] | None = None) -> int:
    names = sorted({t.letter for t in TABLES} | {t.name for t in TABLES})
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep or run directories (searched recursively)")
    p.add_argument(
        "--table",
        default="auto",
        help="auto (from each run's experiment; default), generic (optimizer x rho), or one of: "
        + ", ".join(names),
    )
    p.add_argument("--csv", type=Path, help="also write the cells as CSV to this file")
    p.add_argument(
        "--metric",
        default="best_val/test_acc",
        help="summary.json key of generic tables (default best_val/test_acc, shown as %%)",
    )
    p.add_argument(
        "--sharpness-key",
        default=SHARPNESS_KEY,
        help=f"summary.json key the sharpness cells read (default {SHARPNESS_KEY})",
    )
    args = p.parse_args(argv)
    try:
        runs = find_runs(args.sweeps)
        unit = "acc%" if "acc" in args.metric else "raw"
        tables = tables_for_runs(runs, args.table, Metric(args.metric, unit), args.sharpness_key)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    if not runs:
        print(
            f"error: no runs (directories with .hydra/) under {', '.join(map(str, args.sweeps))}",
            file=sys.stderr,
        )
        return 2
    print("\n\n".join(markdown(t) for t in tables))
    print()
    print(problems_markdown(runs))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(csv_text(tables))
        print(f"\nCSV: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
