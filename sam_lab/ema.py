"""`trainer.ema_decay`: an exponential moving average of the weights, evaluated beside the raw ones (`ema/*`).

    w_ema <- decay * w_ema + (1 - decay) * w     after every optimizer step, from the initial weights on

torch's `AveragedModel` holds the copy (`use_buffers=True`: BatchNorm running statistics are averaged the same
way, so the average model is evaluated with statistics that match its weights) and its `state_dict` goes into
the checkpoint; `get_ema_multi_avg_fn` does the arithmetic (`torch._foreach_lerp_`). decay 0 is the raw model,
decay 1 keeps the initial weights.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA(AveragedModel):
    """The average model (`.module`), seeded with the weights `model` has now."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.update_parameters(
            model
        )  # n_averaged = 1: a copy of the current weights, the start of the average

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """`update_parameters` without its host syncs (it tests `n_averaged` on the device at every call;
        here the average is seeded at construction): the same multi_avg_fn on lists grouped by dtype."""
        groups: dict[torch.dtype, tuple[list[Tensor], list[Tensor]]] = {}
        mine = itertools.chain(self.module.parameters(), self.module.buffers())
        theirs = itertools.chain(model.parameters(), model.buffers())
        for a, b in zip(mine, theirs, strict=True):
            pair = groups.setdefault(a.dtype, ([], []))
            pair[0].append(a.detach())
            pair[1].append(b.detach())
        for avg, cur in groups.values():
            self.multi_avg_fn(avg, cur, self.n_averaged)
        self.n_averaged += 1


def ema_of(model: nn.Module, decay: float | None) -> EMA | None:
    """The average of `model` for `trainer.ema_decay` (None = off)."""
    return None if decay is None else EMA(model, decay)
