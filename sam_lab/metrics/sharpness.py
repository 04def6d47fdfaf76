"""`metrics.sharpness` for the trainer: which data, which weights, when, and under which metric names.

The numerics live in `sam_lab.metrics.hessian`; this module only chooses the fixed, seeded, un-augmented
subset of the training set, the weights (final or best-val), and turns the results into `sharpness/*`
metrics (plus a density PNG under `<run dir>/sharpness/`, also sent to the logger).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sam_lab.data import Batches, DataBundle
from sam_lab.metrics.hessian import (
    hessian_density,
    hessian_eigs,
    hessian_trace,
    per_batch_lambda_max,
    plot_density,
)

if TYPE_CHECKING:
    from sam_lab.engine import Trainer


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


@dataclass
class Sharpness:
    """The trainer hook: `sharpness(trainer, epoch, final) -> dict of sharpness/* metrics`.

    Computed after epoch e when `every` divides e (current weights), and once at the end of training
    (`final=True`) on the `weights` the config asks for. At the end, a value already computed for the same
    final weights in the last epoch is reused rather than computed twice.
    """

    num_samples: int = 5120
    batch_size: int = 256
    every: int | None = None
    weights: str = "final"
    top_k: int = 1
    trace: int = 0
    density: bool = False
    density_steps: int = 64
    tol: float = 1e-3
    protocol: str = "standard"
    per_batch_count: int = 40
    per_batch_size: int = 128
    seed: int = 0
    enabled: bool = True

    def __post_init__(self) -> None:
        self.weights = str(getattr(self.weights, "value", self.weights))  # accept the config's enums too
        self.protocol = str(getattr(self.protocol, "value", self.protocol))
        self._batches: dict[tuple[int, int], Batches] = {}
        self._last: tuple[int, dict[str, Any]] | None = None  # (epoch, metrics) of the last computation

    def __call__(self, trainer: Trainer, epoch: int, final: bool) -> dict[str, Any]:
        if not self.enabled:
            return {}
        if not final:
            if not self.every or epoch % self.every:
                return {}
            out = self.compute(trainer, trainer.model, tag=f"epoch{epoch}", step=epoch)
            self._last = (epoch, out)
            return out
        if self.weights == "best_val" and trainer.best["state"] is not None:
            model = copy.deepcopy(trainer.model)
            model.load_state_dict(trainer.best["state"])
            out = self.compute(trainer, model, tag="best_val", step=epoch)
            out["sharpness/weights_epoch"] = trainer.best["epoch"]
            return out
        if self._last is not None and self._last[0] == epoch:
            out = dict(self._last[1])
        else:
            out = self.compute(trainer, trainer.model, tag="final", step=epoch)
        out["sharpness/weights_epoch"] = epoch
        return out

    def subset(self, trainer: Trainer, batch_size: int, num_samples: int) -> Batches:
        """`fixed_subset` of the run's training set, built once per (batch size, size)."""
        key = (batch_size, num_samples)
        if key not in self._batches:
            self._batches[key] = fixed_subset(
                trainer.data,
                num_samples,
                batch_size,
                trainer.device,
                seed=self.seed,
                channels_last=trainer.opts.channels_last,
            )
        return self._batches[key]

    def loss_fn(self, trainer: Trainer):
        """The training loss (cross-entropy with the run's label smoothing; weight decay is not included)."""
        smoothing = trainer.opts.label_smoothing
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)

    def compute(self, trainer: Trainer, model: nn.Module, tag: str, step: int) -> dict[str, Any]:
        t0, n_hvp, out = time.perf_counter(), 0, {}
        loss_fn = self.loss_fn(trainer)
        batches = self.subset(trainer, self.batch_size, self.num_samples)
        if self.protocol == "per_batch":  # per_batch_count batches of per_batch_size, each its own Hessian
            size = self.per_batch_size
            res = per_batch_lambda_max(
                model, loss_fn, self.subset(trainer, size, self.per_batch_count * size), self.tol, self.seed
            )
            out.update({"sharpness/per_batch_max": res.max, "sharpness/per_batch_mean": res.mean})
            n_hvp += res.n_hvp
        else:
            eig = hessian_eigs(model, loss_fn, batches, k=self.top_k, tol=self.tol, seed=self.seed)
            out["sharpness/lambda_max"] = eig.lambda_max
            if self.top_k > 1:
                out["sharpness/top_k"] = eig.eigenvalues
            if not eig.converged:
                out["sharpness/converged"] = False
            n_hvp += eig.n_hvp
        if self.trace:
            tr = hessian_trace(model, loss_fn, batches, self.trace, seed=self.seed)
            out.update({"sharpness/trace": tr.trace, "sharpness/trace_se": tr.se})
            n_hvp += tr.n_hvp
        if self.density:
            dens = hessian_density(model, loss_fn, batches, steps=self.density_steps, seed=self.seed)
            path = plot_density(dens, trainer.run_dir / "sharpness" / f"density_{tag}.png", title=tag)
            trainer.logger.log_image("sharpness/density", path, step=step)
            n_hvp += dens.n_hvp
        out.update({"sharpness/seconds": time.perf_counter() - t0, "sharpness/n_hvp": n_hvp})
        return out


# ---- temporary pure API (replaced by the metrics branch) ----
@dataclass
class SharpnessResult:
    metrics: dict[str, Any]
    density: Any = None


def measure(
    model, loss_fn, batches, *, top_k=1, trace=0, tol=1e-3, seed=0, density_steps=0
) -> SharpnessResult:
    t0, out = time.perf_counter(), {}
    eig = hessian_eigs(model, loss_fn, batches, k=top_k, tol=tol, seed=seed)
    out["sharpness/lambda_max"], n = eig.lambda_max, eig.n_hvp
    if top_k > 1:
        out["sharpness/top_k"] = eig.eigenvalues
    if not eig.converged:
        out["sharpness/converged"] = False
    if trace:
        tr = hessian_trace(model, loss_fn, batches, trace, seed=seed)
        out.update({"sharpness/trace": tr.trace, "sharpness/trace_se": tr.se})
        n += tr.n_hvp
    dens = None
    if density_steps:
        dens = hessian_density(model, loss_fn, batches, steps=density_steps, seed=seed)
        n += dens.n_hvp
    out.update({"sharpness/seconds": time.perf_counter() - t0, "sharpness/n_hvp": n})
    return SharpnessResult(out, dens)


def measure_per_batch(model, loss_fn, batches, *, top_k=5, tol=1e-3, seed=0) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = per_batch_lambda_max(model, loss_fn, batches, tol, seed)
    return {
        "sharpness/per_batch_max": res.max,
        "sharpness/per_batch_mean": res.mean,
        "sharpness/n_hvp": res.n_hvp,
        "sharpness/seconds": time.perf_counter() - t0,
    }
