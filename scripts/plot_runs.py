#!/usr/bin/env python
"""Plot a sweep: `python scripts/plot_runs.py SWEEP_DIR... --out DIR`.

Writes three PNG files into DIR (runs that differ only in the seed are one line: mean, band = range):
  curves.png       test accuracy and train loss per epoch
  ratio_gt1.png    opt/ratio_gt1_frac per epoch (fraction of weights with |g_SAM| > |g_SGD|)
  vs_rho.png       accuracy and sharpness against rho, one line per optimizer
The plotting functions live in sam_lab/plots.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sam_lab.plots import plot_curves, plot_ratio, plot_vs_rho
from sam_lab.results import find_runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep or run directories (searched recursively)")
    p.add_argument("--out", type=Path, default=Path("plots"), help="output directory (default ./plots)")
    p.add_argument("--acc-key", default="best_val/test_acc", help="summary.json accuracy key for vs_rho.png")
    p.add_argument(
        "--sharpness-key",
        default="sharpness/lambda_max",
        help="summary.json sharpness key for vs_rho.png (e.g. sharpness/per_batch_max)",
    )
    args = p.parse_args(argv)
    try:
        runs = find_runs(args.sweeps)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(
            f"error: no runs (directories with .hydra/) under {', '.join(map(str, args.sweeps))}",
            file=sys.stderr,
        )
        return 2
    written = [
        plot_curves(runs, args.out / "curves.png"),
        plot_ratio(runs, args.out / "ratio_gt1.png"),
        plot_vs_rho(runs, args.out / "vs_rho.png", args.acc_key, args.sharpness_key),
    ]
    unfinished = sum(not r.finished for r in runs)
    print(f"{len(runs)} runs ({unfinished} not finished)")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
