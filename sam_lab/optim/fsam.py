"""Friendly SAM (Li et al., 2024): perturb along the batch-specific part of the gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from sam_lab.optim.twopass import TwoPass
from sam_lab.ranges import Range


class FSAM(TwoPass):
    """F-SAM: u = g - sigma * m;  e = rho * u / ||u||  (`adaptive`: rho * T^2 u / ||T u||);  d = g_s.

    m is an EMA of past clean minibatch gradients, updated once per step after every u of the step is
    formed, with the clean g:  m <- lmbda * m + (1 - lmbda) * g.  At the very first step m = g and u = g.
    With `ascent_steps` > 1 every ascent step uses the same (old) m; with `m` micro-batches (m-sharpness)
    the EMA takes the average of their clean gradients. m lives in `self.state[p]["fsam_m"]`.
    """

    needs_clean_grad = True  # the EMA update in `descent_grad` reads g
    ranges = {"sigma": Range(0.0), "lmbda": Range(0.0, 1.0)}  # sigma = 0 is SAM, as rho = 0 is SGD

    def __init__(self, params, lr: float, sigma: float = 1.0, lmbda: float = 0.9, **kwargs) -> None:
        super().__init__(params, lr, sigma=sigma, lmbda=lmbda, **kwargs)

    def perturbation(self, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        ema = [self.state[p].get("fsam_m") for p in params]
        u = g if any(x is None for x in ema) else torch._foreach_add(g, ema, alpha=-self.hparam("sigma"))
        return self.rho_step(params, u)

    def descent_grad(self, params: list[Tensor], g: list[Tensor], g_s: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        ema = [self.state[p].get("fsam_m") for p in params]
        if any(x is None for x in ema):
            for p, gp in zip(params, g):
                self.state[p]["fsam_m"] = gp.clone()
        else:  # lerp: m + (1 - lmbda) * (g - m) = lmbda * m + (1 - lmbda) * g
            torch._foreach_lerp_(ema, g, 1.0 - self.hparam("lmbda"))
        return g_s
