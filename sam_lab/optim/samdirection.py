"""SAMDIRECTION: SAM's direction with SGD's magnitude (the empirical-SAM study's definition in words)."""

from __future__ import annotations

import torch
from torch import Tensor

from sam_lab.optim.ops import global_norm
from sam_lab.optim.twopass import TwoPass
from sam_lab.ranges import Range

GRANULARITIES = ("element", "tensor", "global")


def graft(direction: list[Tensor], magnitude: list[Tensor], granularity: str) -> list[Tensor]:
    """The direction of `direction` with the size of `magnitude`, at the given granularity.

    element: sign(direction) * |magnitude|
    tensor:  ||magnitude_P|| * direction_P / ||direction_P||   for each parameter tensor P
    global:  ||magnitude|| * direction / ||direction||         (whole-model L2 norms)
    """
    if granularity == "element":
        return torch._foreach_mul(torch._foreach_sign(direction), torch._foreach_abs(magnitude))
    if granularity == "tensor":
        num, den = torch._foreach_norm(magnitude), torch._foreach_norm(direction)
        scale = torch._foreach_div(num, torch._foreach_clamp_min(den, 1e-12))
        return torch._foreach_mul(direction, scale)
    return torch._foreach_mul(direction, global_norm(magnitude) / (global_norm(direction) + 1e-12))


class SAMDirection(TwoPass):
    """SAMDIRECTION: e = rho * g / ||g|| as SAM; d = sign(g_s) * |g| (element-wise, the default).

    `granularity="tensor"`: d_P = ||g_P|| * g_s,P / ||g_s,P|| per parameter tensor P;
    `granularity="global"`: d = ||g|| * g_s / ||g_s||.
    Naming note: the published empirical-SAM table's "SAMDIRECTION" row was produced by |g_s| * sign(g),
    which is our `SAMMagnitude` (see docs/optimizers.md).
    """

    needs_clean_grad = True
    ranges = {"granularity": Range(choices=GRANULARITIES)}

    def __init__(self, params, lr: float, granularity: str = "element", **kwargs) -> None:
        super().__init__(params, lr, granularity=granularity, **kwargs)

    def descent_grad(self, params: list[Tensor], g: list[Tensor], g_s: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        return graft(direction=g_s, magnitude=g, granularity=self.hparam("granularity"))
