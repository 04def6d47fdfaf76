"""Which batches and which computation `metrics.sharpness` asks for: the standard protocol (the Hessian of
the mean loss over a fixed, un-augmented, seeded training subset) or the empirical-SAM study's per-batch
protocol. Model, loss and data in, numbers out; when to run it and with which weights is the engine's call."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sam_lab.config import value_of
from sam_lab.data import DataBundle
from sam_lab.metrics import sharpness
from sam_lab.metrics.hessian import LossFn, OnHvp


def sharpness_of(
    model: nn.Module,
    loss_fn: LossFn,
    data: DataBundle,
    device: torch.device,
    cfg: Any,
    channels_last: bool,
    on_hvp: OnHvp | None = None,
) -> sharpness.SharpnessResult:
    """`cfg` is a `metrics.sharpness` node (sam_lab.config.SharpnessConfig); `on_hvp(n)` after each
    Hessian-vector product (progress)."""
    kw = dict(device=device, seed=cfg.seed, channels_last=channels_last)
    common = dict(tol=cfg.tol, seed=cfg.seed, on_hvp=on_hvp)
    if value_of(cfg.protocol) == "per_batch":
        augment = dict(augment=cfg.per_batch_augment, cutout_p=cfg.per_batch_cutout_p)
        batches = sharpness.per_batch_batches(data, cfg.per_batch_count, cfg.per_batch_size, **augment, **kw)
        which = value_of(cfg.per_batch_which)
        metrics = sharpness.measure_per_batch(
            model, loss_fn, batches, top_k=cfg.per_batch_top_k, which=which, **common
        )
        return sharpness.SharpnessResult(metrics)
    batches = sharpness.fixed_subset(data, cfg.num_samples, cfg.batch_size, **kw)
    steps = cfg.density_steps if cfg.density else 0
    return sharpness.measure(
        model, loss_fn, batches, top_k=cfg.top_k, trace=cfg.trace, density_steps=steps, **common
    )
