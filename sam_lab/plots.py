"""Figures of a sweep, from its runs' metrics.jsonl and summary.json (matplotlib, Agg backend, PNG).

Runs that differ only in the seed form one group: a line is the mean over its seeds, the band their range.
- `plot_curves`: test accuracy and train loss per epoch;
- `plot_ratio`: `opt/ratio_gt1_frac` per epoch, the fraction of weights whose SAM-family gradient is larger
  than the SGD gradient (the empirical study reported > 50% early, rising to about 85%);
- `plot_vs_rho`: final accuracy and sharpness against rho, one line per optimizer.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sam_lab.results import Run  # noqa: E402

_NOT_GROUPING = {"seed", "resume", "device", "logger", "experiment"}
_OPTIMIZER_ORDER = ("sgd", "sam", "asam", "samdirection", "sammagnitude", "fsam", "sgdhess")
_LINESTYLES = ("-", "--", ":", "-.")


def group_label(run: Run, keys: Sequence[str]) -> str:
    parts = [str(run.get("optimizer"))]
    if run.get("rho") is not None:
        parts.append(f"rho={run.get('rho'):g}")
    parts += [f"{k}={run.get(k)}" for k in keys]
    return " ".join(parts)


def _varying_keys(runs: Sequence[Run]) -> list[str]:
    keys = {k for r in runs for k in r.overrides} - _NOT_GROUPING - {"optimizer", "rho"}
    keys = {k for k in keys if not k.startswith("hydra")}
    return sorted(k for k in keys if len({str(r.get(k)) for r in runs}) > 1)


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs that differ only in the seed, under one label (optimizer, rho, other varying overrides)."""
    keys = _varying_keys(runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[group_label(run, keys)].append(run)
    return dict(groups)


def _per_epoch(runs: Sequence[Run], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs, and mean / min / max over runs of `key` at each epoch some run logged it."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for rec in run.history:
            v = rec.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                by_epoch[int(rec["epoch"])].append(float(v))
    epochs = sorted(by_epoch)
    vals = [by_epoch[e] for e in epochs]
    return epochs, [statistics.fmean(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def _optimizer_colors(names: Sequence[str]) -> dict[str, tuple]:
    """One colour per optimizer, the same in every figure (tab10 by the optimizer's place in
    _OPTIMIZER_ORDER, others after them), in that order."""
    cmap, known = plt.get_cmap("tab10"), len(_OPTIMIZER_ORDER)
    others = sorted({n for n in names if n not in _OPTIMIZER_ORDER})
    slot = {**{n: i for i, n in enumerate(_OPTIMIZER_ORDER)}, **{n: known + i for i, n in enumerate(others)}}
    return {n: cmap(slot[n] % cmap.N) for n in sorted(set(names), key=slot.__getitem__)}


def _sort_groups(groups: dict[str, list[Run]]) -> list[tuple[str, list[Run]]]:
    def key(item: tuple[str, list[Run]]) -> tuple:
        opt, rho = str(item[1][0].get("optimizer")), item[1][0].get("rho")
        rank = _OPTIMIZER_ORDER.index(opt) if opt in _OPTIMIZER_ORDER else 99
        return (rank, opt, float(rho) if rho is not None else -1.0, item[0])

    return sorted(groups.items(), key=key)


def _curve_panel(ax, groups: dict[str, list[Run]], key: str, scale: float = 1.0) -> bool:
    """Colour = optimizer, line style = rho (in increasing order); band = min-max over seeds."""
    items = _sort_groups(groups)
    colors = _optimizer_colors([str(runs[0].get("optimizer")) for _, runs in items])
    rhos = sorted({float(runs[0].get("rho")) for _, runs in items if runs[0].get("rho") is not None})
    drawn = False
    for label, runs in items:
        epochs, mean, lo, hi = _per_epoch(runs, key)
        if not epochs:
            continue
        color = colors[str(runs[0].get("optimizer"))]
        rho = runs[0].get("rho")
        style = _LINESTYLES[rhos.index(float(rho)) % len(_LINESTYLES)] if rho is not None else "-"
        ax.plot(
            epochs, [scale * m for m in mean], color=color, ls=style, lw=1.7, label=f"{label} (n={len(runs)})"
        )
        if len(runs) > 1:
            ax.fill_between(epochs, [scale * v for v in lo], [scale * v for v in hi], color=color, alpha=0.12)
        drawn = True
    ax.grid(alpha=0.3)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return drawn


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_curves(runs: Sequence[Run], path: Path) -> Path:
    """Test accuracy (%) and train loss per epoch; one line per group, band = range over seeds."""
    groups = group_runs(runs)
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    _curve_panel(ax_acc, groups, "test/acc", 100.0)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Test accuracy per epoch")
    _curve_panel(ax_loss, groups, "train/loss")
    ax_loss.set_ylabel("train loss (mean over the epoch's steps)")
    ax_loss.set_yscale("log")
    ax_loss.set_title("Train loss per epoch")
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside right center", fontsize=8, title="run group (mean; band: min-max)"
    )
    return _save(fig, path)


def plot_ratio(runs: Sequence[Run], path: Path) -> Path:
    """`opt/ratio_gt1_frac` per epoch for each group of two-pass optimizer runs."""
    groups = {
        k: v
        for k, v in group_runs(runs).items()
        if any("opt/ratio_gt1_frac" in r for x in v for r in x.history)
    }
    fig, ax = plt.subplots(figsize=(8.5, 4.8), constrained_layout=True)
    if _curve_panel(ax, groups, "opt/ratio_gt1_frac", 100.0):
        ax.axhline(50, color="grey", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], 51, " 50%", color="grey", va="bottom", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("weights with |g_SAM| > |g_SGD| (%)")
        ax.legend(fontsize=8, loc="best")
    else:
        _empty(
            ax,
            "no run logged opt/ratio_gt1_frac\n(two-pass optimizers log it every metrics.grad_stats_every"
            " steps)",
        )
    ax.set_title("Fraction of weights whose SAM-family gradient is larger than the SGD gradient")
    return _save(fig, path)


def _vs_rho_panel(ax, runs: Sequence[Run], key: str, scale: float) -> bool:
    by_opt: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        v = (run.summary or {}).get(key) if run.finished else None
        rho = run.get("rho")
        if isinstance(v, (int, float)) and math.isfinite(v) and rho is not None:
            by_opt[str(run.get("optimizer"))][float(rho)].append(scale * float(v))
    colors = _optimizer_colors(list(by_opt))
    for opt in colors:
        rhos = sorted(by_opt[opt])
        means = [statistics.fmean(by_opt[opt][r]) for r in rhos]
        errs = [statistics.stdev(by_opt[opt][r]) if len(by_opt[opt][r]) > 1 else 0.0 for r in rhos]
        counts = sorted({len(by_opt[opt][r]) for r in rhos})
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        ax.errorbar(rhos, means, yerr=errs, color=colors[opt], marker="o", capsize=3, label=f"{opt} (n={n})")
    if by_opt:
        all_rho = [r for d in by_opt.values() for r in d]
        if min(all_rho) > 0 and max(all_rho) / min(all_rho) >= 4:
            ax.set_xscale("log")
        ax.set_xlabel("rho")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return bool(by_opt)


def plot_vs_rho(
    runs: Sequence[Run],
    path: Path,
    acc_key: str = "best_val/test_acc",
    sharpness_key: str = "sharpness/lambda_max",
) -> Path:
    """Final accuracy and sharpness against rho, one line per optimizer (error bars: std over seeds)."""
    fig, (ax_acc, ax_sh) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    if _vs_rho_panel(ax_acc, runs, acc_key, 100.0):
        ax_acc.set_ylabel(f"test accuracy (%), mean ± std over seeds\n[{acc_key}]")
    else:
        _empty(ax_acc, f"no finished run has {acc_key}")
    ax_acc.set_title("Accuracy vs rho")
    if _vs_rho_panel(ax_sh, runs, sharpness_key, 1.0):
        ax_sh.set_ylabel(f"top Hessian eigenvalue, mean ± std\n[{sharpness_key}]")
    else:
        _empty(ax_sh, f"no finished run has {sharpness_key}\n(enable metrics.sharpness)")
    ax_sh.set_title("Sharpness vs rho")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
