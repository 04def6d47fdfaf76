"""Learning-rate schedules, stepped once per iteration. Each returns a torch LR scheduler."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from sam_lab.ranges import Range, declare


def _warm(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@declare(warmup_epochs=Range(0.0), final_lr_frac=Range(0.0, 1.0))
def cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_epochs: float = 0.0,
    steps_per_epoch: int = 1,
    final_lr_frac: float = 0.0,
) -> LRScheduler:
    """lr * (f + (1 - f) * (1 + cos(pi * t / T)) / 2), optional linear warm-up."""
    warm = int(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        t = min(step, total_steps) / max(1, total_steps)
        return _warm(step, warm) * (final_lr_frac + (1 - final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))

    return LambdaLR(optimizer, factor)


@declare(milestones=Range(0.0, 1.0, items=True), gamma=Range(0.0, 1.0, lo_open=True))
def step(
    optimizer: Optimizer,
    total_steps: int,
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8),
    gamma: float = 0.2,
    steps_per_epoch: int = 1,
) -> LRScheduler:
    """lr * gamma^k after the k-th milestone (milestones are fractions of training)."""
    bounds = [int(m * total_steps) for m in milestones]
    return LambdaLR(optimizer, lambda s: gamma ** sum(s >= b for b in bounds))


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int = 1) -> LRScheduler:
    """lr unchanged."""
    return LambdaLR(optimizer, lambda s: 1.0)
