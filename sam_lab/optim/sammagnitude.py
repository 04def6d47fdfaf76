"""SAMMAGNITUDE: SAM's magnitude with SGD's direction (the empirical-SAM study's definition in words)."""

from __future__ import annotations

from torch import Tensor

from sam_lab.optim.samdirection import SAMDirection, graft


class SAMMagnitude(SAMDirection):
    """SAMMAGNITUDE: e = rho * g / ||g|| as SAM; d = |g_s| * sign(g) (element-wise, the default).

    `granularity="tensor"`: d_P = ||g_s,P|| * g_P / ||g_P|| per parameter tensor P;
    `granularity="global"`: d = ||g_s|| * g / ||g||.
    Naming note: the published empirical-SAM table's "SAMMAGNITUDE" row was produced by sign(g_s) * |g|,
    which is our `SAMDirection` (see docs/optimizers.md).
    """

    def descent_grad(self, params: list[Tensor], g: list[Tensor], g_s: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        return graft(direction=g, magnitude=g_s, granularity=self.hparam("granularity"))
