"""`TwoPass`, the base of the SAM family: descend at `w` along `descent_grad(g, g_s)`, `g_s` taken at `w + e`.

First pass at `w` gives `g`; the `perturbation` hook gives `e`; second pass at `w + e` gives `g_s`; the
weights are restored to `w` bit for bit; the `descent_grad` hook turns (g, g_s) into `d`; torch SGD steps at
`w` (`BaseSGD.descend`). A variant overrides one or two hooks and nothing else (docs/EXTENDING.md).

Research knobs: `m` (m-sharpness) and `ascent_fraction` call `closure(part=(a, b))`; `ascent_steps` takes
several normalised ascent steps projected onto the rho-ball; `bn_second_pass` freezes (default) or updates the
BatchNorm running statistics on perturbed passes; `adaptive` (ASAM) with `eta` and `adaptive_params`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from sam_lab.optim.base import BaseSGD
from sam_lab.optim.closure import Closure
from sam_lab.optim.ops import accumulate, frozen_bn, global_norm, mean_of
from sam_lab.ranges import Range


class TwoPass(BaseSGD):
    """Base of the SAM family: descend at `w` along `descent_grad(g, g_s)`, `g_s` taken at `w + e`.

    Default hooks give SAM: e = rho * g / ||g||, d = g_s.
    """

    two_pass = True
    ranges = {  # merged with BaseSGD's (sam_lab.ranges): checked here and at start, naming the key
        "rho": Range(0.0),
        "m": Range(1, integer=True),
        "ascent_fraction": Range(0.0, 1.0, lo_open=True),
        "ascent_steps": Range(1, integer=True),
        "bn_second_pass": Range(choices=("freeze", "update")),
        "adaptive": Range(flag=True),
        "eta": Range(0.0),  # 0: the reference PyTorch SAM's ASAM (T = |w|)
        "adaptive_params": Range(choices=("all", "weights")),
    }

    def __init__(
        self,
        params,
        lr: float,
        rho: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        m: int = 1,
        ascent_fraction: float = 1.0,
        ascent_steps: int = 1,
        bn_second_pass: str = "freeze",
        adaptive: bool = False,
        eta: float = 0.01,
        adaptive_params: str = "all",
        **extra,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            rho=rho,
            m=m,
            ascent_fraction=ascent_fraction,
            ascent_steps=ascent_steps,
            bn_second_pass=bn_second_pass,
            adaptive=adaptive,
            eta=eta,
            adaptive_params=adaptive_params,
            **extra,
        )
        self.g_is_scratch = False  # True while no one reads g after the ascent (perturbation may reuse it)

    # ---- hooks -------------------------------------------------------------------------------------
    def perturbation(self, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        """Hook: e from the clean gradient. SAM: rho * g / ||g|| (adaptive: rho * T^2 g / ||T g||).

        When nothing reads g after the ascent (`self.g_is_scratch`), e is written over g: SAM then holds one
        parameter-sized buffer (the copy of w) beyond what SGD holds, at every moment of the step."""
        return self.rho_step(params, g, inplace=self.g_is_scratch)

    def rho_step(self, params: list[Tensor], v: list[Tensor], inplace: bool = False) -> list[Tensor]:
        """rho * v / ||v||, or with `adaptive` (ASAM) rho * T^2 v / ||T v||, T = |w| + eta element-wise
        (`adaptive_params="weights"`: T = 1 for parameters whose name has no "weight", as ASAM's code).

        `inplace=True` overwrites v with the result (no new parameter-sized buffer for SAM)."""
        rho = self.hparam("rho")
        if not self.hparam("adaptive"):
            scale = rho / (global_norm(v) + 1e-12)
            if inplace:
                torch._foreach_mul_(v, scale)
                return v
            return torch._foreach_mul(v, scale)
        t = self._asam_t(params)
        if inplace:
            torch._foreach_mul_(v, t)
            tv = v
        else:
            tv = torch._foreach_mul(t, v)
        scale = rho / (global_norm(tv) + 1e-12)
        torch._foreach_mul_(tv, t)
        torch._foreach_mul_(tv, scale)
        return tv

    def _asam_t(self, params: list[Tensor]) -> list[Tensor]:
        t = torch._foreach_add(torch._foreach_abs(params), self.hparam("eta"))
        if self.hparam("adaptive_params") == "all":
            return t
        if any(p not in self._names for p in params):
            raise ValueError(
                'adaptive_params="weights" needs parameter names: build the optimizer from '
                "model.named_parameters() or call opt.watch(model)"
            )
        return [tp if "weight" in self._names[p] else torch.ones_like(p) for p, tp in zip(params, t)]

    def descent_grad(self, params: list[Tensor], g: list[Tensor] | None, g_s: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        """Hook: the gradient SGD descends along at `w`. SAM: g_s."""
        return g_s

    # ---- mechanics ---------------------------------------------------------------------------------
    def _call_part(self, closure: Closure, part: tuple[float, float] | None, perturbed: bool) -> Tensor:
        """One loss evaluation; `self.perturbed` tells a closure whether the weights are at w + e."""
        kwargs = {} if part is None else {"part": part}
        freeze = perturbed and self._bn and self.hparam("bn_second_pass") == "freeze"
        self.perturbed = perturbed
        try:
            with frozen_bn(self._bn) if freeze else contextlib.nullcontext():
                return self._call(closure, **kwargs)
        finally:
            self.perturbed = False

    def _take_grads(self, params: list[Tensor]) -> list[Tensor]:
        """Detach the gradients from the params, so that the next closure cannot clear them."""
        self._unscale(params)
        g = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        return g

    def _project(self, e: list[Tensor]) -> list[Tensor]:
        """Back onto the rho-ball (global L2)."""
        scale = torch.clamp(self.hparam("rho") / (global_norm(e) + 1e-12), max=1.0)
        return torch._foreach_mul(e, scale)

    def _ascend(self, closure: Closure, params: list[Tensor], g: list[Tensor], part) -> list[Tensor]:
        """The perturbation e. With ascent_steps > 1, each step adds the perturbation of the gradient at the
        current point w + e (norm rho) and projects the sum back onto the rho-ball."""
        e = self.perturbation(params, g)
        for _ in range(self.hparam("ascent_steps") - 1):
            with self._perturb(params, e):
                self._call_part(closure, part, perturbed=True)
            g_k = self._take_grads(params)
            self._restore(params)
            e = self._project(torch._foreach_add(e, self.perturbation(params, g_k)))
        return e

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure (see sam_lab.optim.closure)")
        m, frac = self.hparam("m"), self.hparam("ascent_fraction")
        keep_g = self.needs_clean_grad or self.capture
        losses, g_sum, gs_sum, params = [], None, None, None
        # m-sharpness: each of m chunks of the batch gets its own perturbation; descent grads are averaged.
        # ascent_fraction: the clean (ascent) gradient sees only that fraction of its chunk.
        for i in range(m):
            part = None if m == 1 else (i / m, (i + 1) / m)
            lo, hi = part or (0.0, 1.0)
            ascent_part = part if frac == 1.0 else (lo, lo + (hi - lo) * frac)
            losses.append(self._call_part(closure, ascent_part, perturbed=False))
            if params is None:  # a parameter without a gradient now is left alone for the whole step
                params = [p for p in self._params() if p.grad is not None]
                # w of what moves in place (fp16: of everything, to undo an overflowing step)
                self._snapshot(params if self.amp.scaler else self._in_place(params))
            g = self._take_grads(params)
            self.g_is_scratch = not keep_g
            try:
                e = self._ascend(closure, params, g, ascent_part)
            finally:
                self.g_is_scratch = False
            g = g if keep_g else None  # SAM keeps one extra buffer (w) during the second pass, not two
            with self._perturb(params, e):
                del e  # in place already, or held by the hooks: no second buffer
                self._call_part(closure, part, perturbed=True)
            g_s = self._take_grads(params)
            self._restore(params)  # exact
            g_sum = accumulate(g_sum, g)
            gs_sum = accumulate(gs_sum, g_s)
        g = None if g_sum is None else mean_of(g_sum, m)
        g_s = mean_of(gs_sum, m)
        with self._skip_on_overflow(params):
            d = self.descent_grad(params, g, g_s)
            if self.capture:
                self.captured, self.captured_e = {"g": g, "g_s": g_s, "d": d, **self.captured_e}, {}
            self.descend(params, d)
        return losses[0] if m == 1 else torch.stack([torch.as_tensor(x) for x in losses]).mean()
