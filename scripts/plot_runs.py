#!/usr/bin/env python
"""Plot a sweep: `python scripts/plot_runs.py SWEEP_DIR... --out DIR`.

Writes three PNG files into DIR (runs that differ only in the seed are one line: mean, band = range):
  curves.png       test accuracy and train loss per epoch
  ratio_gt1.png    opt/ratio_gt1_frac per epoch (fraction of weights with |g_SAM| > |g_SGD|)
  vs_rho.png       accuracy and sharpness against rho, one line per optimizer; single-pass optimizers
                   (no rho, e.g. sgd) as horizontal reference lines
The plotting functions live in sam_lab/report/plots.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sam_lab.report import cli
from sam_lab.report.plots import plot_curves, plot_ratio, plot_vs_rho


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--out", type=Path, default=Path("plots"), help="output directory (default ./plots)")
    p.add_argument("--acc-key", default="best_val/test_acc", help="summary.json accuracy key for vs_rho.png")
    p.add_argument(
        "--sharpness-key",
        default="sharpness/lambda_max",
        help="summary.json sharpness key for vs_rho.png (e.g. sharpness/per_batch_max)",
    )
    args = p.parse_args(argv)
    try:
        runs = cli.read_runs(args.sweeps)
        if runs is None:
            return 2
        written = [
            plot_curves(runs, args.out / "curves.png"),
            plot_ratio(runs, args.out / "ratio_gt1.png"),
            plot_vs_rho(runs, args.out / "vs_rho.png", args.acc_key, args.sharpness_key),
        ]
    except OSError as err:  # a path that cannot be read or written: one line, not a traceback
        return cli.error(f"cannot use {err.filename}: {err.strerror}")
    unfinished = sum(not r.finished for r in runs)
    print(f"{len(runs)} runs ({unfinished} not finished)")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
