"""Figures of a sweep, from its runs' metrics.jsonl and summary.json (matplotlib, Agg backend, PNG).

Runs that differ only in the seed form one group: a line is the mean over its seeds, the band their range.
Single-pass optimizers (no `rho` in their optimizer config, e.g. sgd) ignore rho: their runs at several rho
are one group (one run per seed), and against rho they are a horizontal reference line.
- `plot_curves`: test accuracy and train loss per epoch;
- `plot_ratio`: `opt/ratio_gt1_frac` per epoch, the fraction of weights whose SAM-family gradient is larger
  than the SGD gradient (the empirical study reported > 50% early, rising to about 85%);
- `plot_vs_rho`: final accuracy and sharpness against rho, one line per optimizer.
Every figure's title names the dataset, model (and width) and epochs of its runs.
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
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from sam_lab.report.runs import Run, dedupe_over_rho  # noqa: E402
from sam_lab.report.tables import NO_RHO, OPTIMIZER_ORDER, optimizer_rank  # noqa: E402

_NOT_GROUPING = {"seed", "resume", "device", "logger", "experiment"}
# one per rho value of a sweep, in increasing rho (cycled beyond six)
_LINESTYLES = ("-", "--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)), (0, (1, 4)))
_BAND_ALPHA = 0.12
_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def group_label(run: Run, keys: Sequence[str]) -> str:
    parts = [str(run.get("optimizer"))]
    if run.ignores_rho:
        parts[0] += f" ({NO_RHO})"
    elif run.get("rho") is not None:
        parts.append(f"rho={run.get('rho'):g}")
    parts += [f"{k}={run.get(k)}" for k in keys]
    return " ".join(parts)


def _varying_keys(runs: Sequence[Run]) -> list[str]:
    keys = {k for r in runs for k in r.overrides} - _NOT_GROUPING - {"optimizer", "rho"}
    keys = {k for k in keys if not k.startswith("hydra")}
    return sorted(k for k in keys if len({str(r.get(k)) for r in runs}) > 1)


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs that differ only in the seed (single-pass runs: or in rho), under one label."""
    keys = _varying_keys(runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[group_label(run, keys)].append(run)
    return {label: dedupe_over_rho(members) for label, members in groups.items()}


def describe_runs(runs: Sequence[Run]) -> str:
    """`digits · resnet18 (width 4) · 3 epochs`: what the runs trained, each part's values joined by /."""

    def values(key: str) -> str:
        seen = [str(v) for v in dict.fromkeys(r.get(key) for r in runs) if v is not None]
        return "/".join(seen) if seen else "?"

    return f"{values('data')} · {values('model')} (width {values('model.width')}) · {values('epochs')} epochs"


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
    """One colour per optimizer, the same in every figure (tab10 by the optimizer's place in the usual
    order, others after them), in that order."""
    cmap, known = plt.get_cmap("tab10"), len(OPTIMIZER_ORDER)
    others = sorted({n for n in names if n not in OPTIMIZER_ORDER})
    slot = {**{n: i for i, n in enumerate(OPTIMIZER_ORDER)}, **{n: known + i for i, n in enumerate(others)}}
    return {n: cmap(slot[n] % cmap.N) for n in sorted(set(names), key=slot.__getitem__)}


def _sort_groups(groups: dict[str, list[Run]]) -> list[tuple[str, list[Run]]]:
    def key(item: tuple[str, list[Run]]) -> tuple:
        run = item[1][0]
        rho = -1.0 if run.ignores_rho or run.get("rho") is None else float(run.get("rho"))
        return (optimizer_rank(run.get("optimizer")), rho, item[0])

    return sorted(groups.items(), key=key)


def _log_scale(ax, axis: str, values: Sequence[float]) -> None:
    """Log scale with plain-number labels (1, 2, 5 x 10^k within one decade) and no minor tick labels."""
    ax_ = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) < 30:
        lo, hi = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
        ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in (1, 2, 5)]
        ax_.set_major_locator(FixedLocator(ticks))
    ax_.set_major_formatter(_PLAIN)
    ax_.set_minor_locator(NullLocator())


def _curve_panel(ax, groups: dict[str, list[Run]], key: str, scale: float = 1.0) -> list[float]:
    """Colour = optimizer, line style = rho (in increasing order); band = min-max over seeds. Returns the
    plotted values (empty: nothing drawn)."""
    items = _sort_groups(groups)
    colors = _optimizer_colors([str(runs[0].get("optimizer")) for _, runs in items])
    rhos = sorted(
        {float(r[0].get("rho")) for _, r in items if not r[0].ignores_rho and r[0].get("rho") is not None}
    )
    drawn: list[float] = []
    for label, runs in items:
        epochs, mean, lo, hi = _per_epoch(runs, key)
        if not epochs:
            continue
        color = colors[str(runs[0].get("optimizer"))]
        rho = runs[0].get("rho")
        style = (
            "-"
            if runs[0].ignores_rho or rho is None
            else _LINESTYLES[rhos.index(float(rho)) % len(_LINESTYLES)]
        )
        ys = [scale * m for m in mean]
        marker = "." if len(epochs) <= 12 else None  # points readable, not a bead chain
        ax.plot(epochs, ys, color=color, ls=style, lw=1.7, marker=marker, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(
                epochs, [scale * v for v in lo], [scale * v for v in hi], color=color, alpha=_BAND_ALPHA, lw=0
            )
        drawn += ys
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
    losses = _curve_panel(ax_loss, groups, "train/loss")
    ax_loss.set_ylabel("train loss (mean over the epoch's steps)")
    if losses and min(losses) > 0 and max(losses) / min(losses) > 5:
        _log_scale(ax_loss, "y", losses)
    ax_loss.set_title("Train loss per epoch")
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside right center", fontsize=8, title="run group (mean; band: min-max)"
    )
    fig.suptitle(describe_runs(runs))
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
            "no run logged opt/ratio_gt1_frac\n"
            "(two-pass optimizers log it every metrics.grad_stats_every steps)",
        )
    ax.set_title(f"Weights whose SAM-family gradient exceeds the SGD gradient\n{describe_runs(runs)}")
    return _save(fig, path)


def _reference_line(ax, label: str, values: Sequence[float], color) -> None:
    """A single-pass baseline across the rho axis: the mean as a dashed line labelled at its right end,
    ± std over seeds as thin dotted lines (no band over the whole panel)."""
    mean = statistics.fmean(values)
    ax.axhline(mean, color=color, ls="--", lw=1.5, label=f"{label}, n={len(values)}")
    if len(values) > 1:
        sd = statistics.stdev(values)
        for y in (mean - sd, mean + sd):
            ax.axhline(y, color=color, ls=":", lw=0.8, alpha=0.6)
    ax.annotate(
        label,
        (1.0, mean),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 3),
        textcoords="offset points",
        ha="right",
        va="bottom",
        color=color,
        fontsize=8,
    )


def _vs_rho_panel(ax, runs: Sequence[Run], key: str, scale: float) -> bool:
    """Mean ± std over seeds per (optimizer, rho), markers at the rho values run; single-pass optimizers as a
    horizontal line (band: ± std) across the panel."""
    by_opt: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    flat: dict[str, list[float]] = defaultdict(list)
    for run in dedupe_over_rho([r for r in runs if r.finished]):
        v, rho = (run.summary or {}).get(key), run.get("rho")
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if run.ignores_rho:
            flat[str(run.get("optimizer"))].append(scale * float(v))
        elif rho is not None:
            by_opt[str(run.get("optimizer"))][float(rho)].append(scale * float(v))
    colors = _optimizer_colors([*by_opt, *flat])
    for opt in colors:
        if opt in flat:
            _reference_line(ax, f"{opt} ({NO_RHO})", flat[opt], colors[opt])
        if opt in by_opt:
            rhos = sorted(by_opt[opt])
            means = [statistics.fmean(by_opt[opt][r]) for r in rhos]
            errs = [statistics.stdev(by_opt[opt][r]) if len(by_opt[opt][r]) > 1 else 0.0 for r in rhos]
            counts = sorted({len(by_opt[opt][r]) for r in rhos})
            n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            ax.errorbar(
                rhos, means, yerr=errs, color=colors[opt], marker="o", ms=6, capsize=3, label=f"{opt} (n={n})"
            )
    all_rho = sorted({r for d in by_opt.values() for r in d})
    if all_rho:
        if min(all_rho) > 0 and max(all_rho) / min(all_rho) >= 4:
            _log_scale(ax, "x", all_rho)
        ax.xaxis.set_major_locator(FixedLocator(all_rho))  # ticks at exactly the rho values that were run
        ax.xaxis.set_major_formatter(_PLAIN)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("rho (ticks: the values run)")
    if by_opt or flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return bool(by_opt or flat)


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
    fig.suptitle(describe_runs(runs))
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
