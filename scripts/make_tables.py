#!/usr/bin/env python
"""Turn sweeps into the published tables: `python scripts/make_tables.py SWEEP_DIR... [--table auto|A|B|C|D]`.

Reads every run (a directory with `.hydra/`) below the given directories, prints Markdown tables in the
published layouts (docs/published.md; rows: method; columns: rho or metric; one block per model or dataset)
with our mean ± std over seeds, the published value and the difference beside each cell (only for runs that
follow the published recipe), then the runs that did not finish. `--csv OUT` also writes one CSV line per
cell. `--published` prints docs/published.md (the published numbers alone). The layouts and numbers live in
sam_lab/report/published.yaml; the code in sam_lab/report/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sam_lab.report import cli
from sam_lab.report.published import Metric, load, table_names
from sam_lab.report.render import csv_text, markdown, problems_markdown, published_markdown
from sam_lab.report.tables import tables_for_runs


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, sweeps_required=False)
    p.add_argument(
        "--table",
        default="auto",
        help="auto (from each run's experiment; default), generic (optimizer x rho), or one of: "
        + ", ".join(table_names()),
    )
    p.add_argument("--csv", type=Path, help="also write the cells as CSV to this file")
    p.add_argument(
        "--metric",
        default="best_val/test_acc",
        help="summary.json key of generic tables (default best_val/test_acc, shown as %%)",
    )
    sharpness_key = load().sharpness_key
    p.add_argument(
        "--sharpness-key",
        default=sharpness_key,
        help=f"summary.json key the sharpness cells read (default {sharpness_key})",
    )
    p.add_argument("--published", action="store_true", help="print the published tables alone and exit")
    args = p.parse_args(argv)
    if args.published:
        print(published_markdown(), end="")
        return 0
    if not args.sweeps:
        p.error("give at least one sweep directory (or --published)")
    try:
        runs = cli.read_runs(args.sweeps)
        if runs is None:
            return 2
        unit = "acc%" if "acc" in args.metric else "raw"
        tables = tables_for_runs(runs, args.table, Metric(args.metric, unit), args.sharpness_key)
        print("\n\n".join(markdown(t) for t in tables))
        print()
        print(problems_markdown(runs))
        if args.csv:
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            args.csv.write_text(csv_text(tables))
            print(f"\nCSV: {args.csv}")
    except KeyError as err:
        return cli.error(err.args[0])
    except OSError as err:  # a path that cannot be read or written: one line, not a traceback
        return cli.error(f"cannot use {err.filename}: {err.strerror}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
