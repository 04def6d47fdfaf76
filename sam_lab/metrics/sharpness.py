"""Sharpness as pure functions: model, loss function and batches in, `sharpness/*` numbers out.

* `fixed_subset`: the fixed, seeded, un-augmented subset of the training set the standard value uses.
* `measure`: top eigenvalue(s), Hutchinson trace and SLQ density of the Hessian of the mean loss over it.
* `per_batch_batches` + `measure_per_batch`: the per-batch protocol of the empirical-SAM study's code
  (docs/sharpness.md): the top-5 eigenvalues of each batch's own loss Hessian, pooled.

Nothing here knows about a trainer, a logger or files: the caller decides when, on which weights and where
the results go (`sam_lab.metrics.density.plot_density` writes a density to a PNG). `on_hvp(n)` is called
after the n-th Hessian-vector product of a call (for a progress bar); `sharpness/n_hvp` is the total.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sam_lab.data import Batches, DataBundle
from sam_lab.metrics.density import DensityResult, hessian_density
from sam_lab.metrics.hessian import Batch, LossFn, OnHvp, hessian_eigs, hessian_trace

Metrics = dict[str, Any]


def fixed_subset(
    data: DataBundle,
    num_samples: int,
    batch_size: int,
    device: torch.device | str,
    seed: int = 0,
    channels_last: bool = False,
) -> Batches:
    """The first `num_samples` of a `seed`-ed permutation of the training set (capped at its size), in the
    training set's order, normalised like training batches but never augmented, in fixed batches."""
    train = data.train
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(train), generator=g)[: min(num_samples, len(train))].sort().values
    return Batches(
        train.select(index),
        batch_size,
        mean=data.mean,
        std=data.std,
        device=device,
        augment=None,
        shuffle=False,
        channels_last=channels_last,
    )


def per_batch_batches(
    data: DataBundle,
    count: int,
    size: int,
    device: torch.device | str,
    seed: int = 0,
    augment: bool = False,
    cutout_p: float = 0.5,
    channels_last: bool = False,
) -> list[Batch]:
    """`count` batches of `size` training examples for `measure_per_batch`, materialised on `device`.

    augment=False: `fixed_subset(data, count * size, size)` (fewer batches if the training set is smaller).
    augment=True: the first `count` full batches of the training loader's own stream (shuffled with `seed`,
    the run's `data.augment`: crop, flip and cutout, the cutout square applied to each image with
    probability `cutout_p`; the empirical-SAM code used 0.5), continuing into the next epochs if needed."""
    if count < 1 or size < 1:
        raise ValueError(f"count and size must be >= 1, got count={count}, size={size}")
    if not augment:
        return list(fixed_subset(data, count * size, size, device, seed=seed, channels_last=channels_last))
    loader = Batches(
        data.train,
        size,
        mean=data.mean,
        std=data.std,
        device=device,
        augment=data.augment,
        shuffle=True,
        seed=seed,
        channels_last=channels_last,
        cutout_p=cutout_p,
    )
    full = min(size, len(data.train))
    out: list[Batch] = []
    epoch = 0
    while len(out) < count:
        out += [(x, y) for x, y in loader.epoch(epoch) if len(y) == full][: count - len(out)]
        epoch += 1
    return out


class _Counter:
    """Total Hessian-vector products over several operators, forwarded to the caller's `on_hvp`."""

    def __init__(self, on_hvp: OnHvp | None) -> None:
        self.n, self.on_hvp = 0, on_hvp

    def __call__(self, _: int) -> None:
        self.n += 1
        if self.on_hvp is not None:
            self.on_hvp(self.n)


@dataclass
class SharpnessResult:
    """`metrics`: the `sharpness/*` numbers; `density`: the SLQ density when asked for (else None)."""

    metrics: Metrics
    density: DensityResult | None = None


def measure(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    top_k: int = 1,
    trace: int = 0,
    tol: float = 1e-3,
    seed: int = 0,
    density_steps: int = 0,
    on_hvp: OnHvp | None = None,
) -> SharpnessResult:
    """Curvature of the mean `loss_fn` over `batches` (re-iterable, e.g. `fixed_subset`) at `model`'s weights.

    Keys: `sharpness/lambda_max` (the largest eigenvalue; top_k=0 skips the eigenvalues), `sharpness/top_k`
    (the top_k largest, if top_k > 1), `sharpness/converged` (only when False), `sharpness/trace` and
    `sharpness/trace_se` (Hutchinson with `trace` >= 2 probes, if trace), `sharpness/n_hvp`,
    `sharpness/seconds`. `density_steps` > 0: also an SLQ density with that many Lanczos steps."""
    t0, count, out = time.perf_counter(), _Counter(on_hvp), {}
    if top_k > 0:
        eig = hessian_eigs(model, loss_fn, batches, k=top_k, tol=tol, seed=seed, on_hvp=count)
        out["sharpness/lambda_max"] = eig.lambda_max
        if top_k > 1:
            out["sharpness/top_k"] = eig.eigenvalues
        if not eig.converged:
            out["sharpness/converged"] = False
    if trace:
        tr = hessian_trace(model, loss_fn, batches, trace, seed=seed, on_hvp=count)
        out.update({"sharpness/trace": tr.trace, "sharpness/trace_se": tr.se})
    density = None
    if density_steps > 0:
        density = hessian_density(model, loss_fn, batches, steps=density_steps, seed=seed, on_hvp=count)
    out.update({"sharpness/n_hvp": count.n, "sharpness/seconds": time.perf_counter() - t0})
    return SharpnessResult(metrics=out, density=density)


def pool_per_batch(eigenvalues: list[float]) -> Metrics:
    """The study's summary of pooled eigenvalues: largest positive (nan if none), mean of the positive ones
    (nan if none), fraction strictly negative."""
    pos = [v for v in eigenvalues if v > 0]
    return {
        "sharpness/per_batch_max": max(pos) if pos else math.nan,
        "sharpness/per_batch_mean": sum(pos) / len(pos) if pos else math.nan,
        "sharpness/per_batch_neg_frac": sum(v < 0 for v in eigenvalues) / len(eigenvalues),
    }


def measure_per_batch(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    top_k: int = 5,
    tol: float = 1e-3,
    seed: int = 0,
    which: str = "LM",
    on_hvp: OnHvp | None = None,
) -> Metrics:
    """The per-batch protocol: the `top_k` eigenvalues of each batch's own loss Hessian, pooled.

    which="LM" (default): the top_k of largest MAGNITUDE, as the study's PyHessian power iteration with
    deflation finds them (a negative one counts when it is large); "LA": the top_k largest. Returns
    `pool_per_batch` of all pooled values plus `sharpness/n_hvp` and `sharpness/seconds`."""
    t0, count, pooled = time.perf_counter(), _Counter(on_hvp), []
    for i, batch in enumerate(batches):
        res = hessian_eigs(
            model, loss_fn, [batch], k=top_k, tol=tol, seed=seed + i, which=which, on_hvp=count
        )
        pooled += res.eigenvalues
    if not pooled:
        raise ValueError("measure_per_batch needs at least one batch")
    out = pool_per_batch(pooled)
    out.update({"sharpness/n_hvp": count.n, "sharpness/seconds": time.perf_counter() - t0})
    return out
