"""Small tensor helpers shared by the optimizers (no host sync, `torch._foreach_*` where it matters)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def global_norm(tensors: list[Tensor]) -> Tensor:
    """L2 norm over all elements of all tensors (a 0-dim tensor, no host sync)."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


@contextlib.contextmanager
def frozen_bn(modules: list[nn.Module]) -> Iterator[None]:
    """BatchNorm uses batch statistics but leaves running_mean/var and num_batches_tracked untouched."""
    saved = [m.track_running_stats for m in modules]
    for m in modules:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, s in zip(modules, saved):
            m.track_running_stats = s


def accumulate(total: list[Tensor] | None, new: list[Tensor] | None) -> list[Tensor] | None:
    """total += new (in place), treating None as "nothing yet"."""
    if new is None:
        return total
    if total is None:
        return new
    torch._foreach_add_(total, new)
    return total


def mean_of(total: list[Tensor], n: int) -> list[Tensor]:
    return total if n == 1 else torch._foreach_div(total, float(n))
