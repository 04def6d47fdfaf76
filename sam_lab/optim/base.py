"""Shared mechanics of every sam_lab optimizer.

`BaseSGD` is torch SGD (momentum, dampening 0, coupled weight decay, optional Nesterov) driven through the
closure protocol (`sam_lab.optim.closure`: `loss = opt.step(closure)`). Subclasses change only the descent
gradient `d` handed to SGD.

`TwoPass` adds the SAM mechanics: first pass at `w` gives `g`; the `perturbation` hook gives `e`; second pass
at `w + e` gives `g_s`; the weights are restored to `w` bit for bit; the `descent_grad` hook turns
(g, g_s) into `d`; SGD steps at `w`. A variant overrides one or two hooks and nothing else.

Behaviour is declared by class flags, which the trainer reads (never the class name):
  `second_order` - the closure is called as `closure(create_graph=True)`;
  `needs_clean_grad` - `descent_grad` reads `g`, so it is kept alive during the second pass;
  `two_pass` - the optimizer evaluates the loss twice per step.

Research knobs of the SAM family: `m` (m-sharpness) and `ascent_fraction` call `closure(part=(a, b))`;
`ascent_steps` takes several normalised ascent steps projected onto the rho-ball. BatchNorm running
statistics are frozen during the second pass when the optimizer knows the model (`opt.watch_bn(model)`, done
by the trainer); `bn_second_pass="update"` lets them update.
SAM probe for single-pass optimizers: when the trainer sets `opt.probe_rho` on a capture step, the step
also evaluates the gradient g_s at w + probe_rho * g / ||g|| (BN frozen, weights restored bit for bit) and
adds it to `captured`; the descent is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.optim.sgd import sgd as sgd_update

from sam_lab.optim.closure import Closure
from sam_lab.ranges import Range, check_values, ranges_of


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


class BaseSGD(torch.optim.Optimizer):
    """SGD through the closure protocol: `d = descent_grad(g)` (default `d = g`), then torch SGD.

    w <- w - lr * (buf <- momentum * buf + (d + weight_decay * w))   (Nesterov optional)
    """

    second_order = False
    needs_clean_grad = False
    two_pass = False
    # What each hyper-parameter may be, merged with the subclasses' own `ranges` (sam_lab.ranges): the
    # constructor checks them, and the trainer's config validation reads them to name the key at start.
    ranges = {
        "lr": Range(0.0),
        "momentum": Range(0.0, 1.0, hi_open=True),
        "weight_decay": Range(0.0),
        "nesterov": Range(flag=True),
    }

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        **extra,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, **extra)
        check_values(defaults, ranges_of(type(self)))
        super().__init__(params, defaults)
        self.capture = False  # set by the trainer on steps whose gradient statistics it wants
        self.captured: dict[str, list[Tensor]] | None = None
        self._bn: list[nn.Module] = []
        self.perturbed = False  # True while a closure is evaluated at perturbed weights
        self.probe_rho: float | None = None  # set by the trainer on SAM-probe steps (single-pass only)
        self.clip_norm: float | None = None  # set by the trainer (trainer.grad_clip): max ||d|| per step

    def watch_bn(self, model: nn.Module) -> None:
        """Tell the optimizer which BatchNorm layers to freeze on extra forward passes."""
        self._bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def hparam(self, key: str):
        return self.param_groups[0][key]

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _call(self, closure: Closure, **kwargs) -> Tensor:
        if self.second_order:
            kwargs["create_graph"] = True
        with torch.enable_grad():
            return closure(**kwargs)

    def descent_grad(self, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        """Hook: the gradient SGD descends along. Default: the clean gradient."""
        return g

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure (see sam_lab.optim.closure)")
        loss = self._call(closure)
        params = [p for p in self._params() if p.grad is not None]
        g = [p.grad.detach() for p in params]
        d = self.descent_grad(params, g)
        if self.capture:
            self.captured = {"g": g, "d": d}
            if self.probe_rho is not None:
                self.captured["g_s"] = self._probe(closure, params, g)
        self.descend(params, d)
        return loss

    def _probe(self, closure: Closure, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        """SAM's gradient g_s at w + probe_rho * g / ||g|| for statistics only: BN frozen, w restored."""
        w = [p.clone() for p in params]
        torch._foreach_add_(params, torch._foreach_mul(g, self.probe_rho / (global_norm(g) + 1e-12)))
        self.perturbed = True
        try:
            with frozen_bn(self._bn):
                self._call(closure)
        finally:
            self.perturbed = False
        g_s = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
        torch._foreach_copy_(params, w)
        for p, gp in zip(params, g):
            p.grad = gp
        return g_s

    def descend(self, params: list[Tensor], d: list[Tensor]) -> None:
        """Torch's own SGD update (foreach kernels), momentum buffers kept in `self.state`."""
        if self.clip_norm is not None:  # clip_grad_norm_'s rule; a copy: captured g, g_s stay unclipped
            d = torch._foreach_mul(d, torch.clamp(self.clip_norm / (global_norm(d) + 1e-6), max=1.0))
        by_id = {id(p): p for p in params}
        d_of = dict(zip(map(id, params), d))
        for group in self.param_groups:
            ps = [p for p in group["params"] if id(p) in by_id]
            if not ps:
                continue
            bufs = [self.state[p].get("momentum_buffer") for p in ps]
            sgd_update(
                ps,
                [d_of[id(p)] for p in ps],
                bufs,
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=False,
                foreach=True,  # torch._foreach_* kernels on every device (torch picks them on CUDA only)
            )
            if group["momentum"] > 0:
                for p, b in zip(ps, bufs):
                    self.state[p]["momentum_buffer"] = b


class TwoPass(BaseSGD):
    """Base of the SAM family: descend at `w` along `descent_grad(g, g_s)`, `g_s` taken at `w + e`.

    Default hooks give SAM: e = rho * g / ||g||, d = g_s.
    """

    two_pass = True
    ranges = {
        "rho": Range(0.0),
        "m": Range(1, integer=True),
        "ascent_fraction": Range(0.0, 1.0, lo_open=True),
        "ascent_steps": Range(1, integer=True),
        "bn_second_pass": Range(choices=("freeze", "update")),
        "adaptive": Range(flag=True),
        "eta": Range(0.0, lo_open=True),
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
            **extra,
        )
        self._w: dict[Tensor, Tensor] = {}  # the one extra parameter-sized buffer: w, for an exact restore
        self.g_is_scratch = False  # True while no one reads g after the ascent (perturbation may reuse it)

    # ---- hooks -------------------------------------------------------------------------------------
    def perturbation(self, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        """Hook: e from the clean gradient. SAM: rho * g / ||g|| (adaptive: rho * T^2 g / ||T g||).

        When nothing reads g after the ascent (`self.g_is_scratch`), e is written over g: SAM then holds one
        parameter-sized buffer (the copy of w) beyond what SGD holds, at every moment of the step."""
        return self.rho_step(params, g, inplace=self.g_is_scratch)

    def rho_step(self, params: list[Tensor], v: list[Tensor], inplace: bool = False) -> list[Tensor]:
        """rho * v / ||v||, or with `adaptive` (ASAM) rho * T^2 v / ||T v||, T = |w| + eta element-wise.

        `inplace=True` overwrites v with the result (no new parameter-sized buffer for SAM)."""
        rho = self.hparam("rho")
        if not self.hparam("adaptive"):
            scale = rho / (global_norm(v) + 1e-12)
            if inplace:
                torch._foreach_mul_(v, scale)
                return v
            return torch._foreach_mul(v, scale)
        t = torch._foreach_add(torch._foreach_abs(params), self.hparam("eta"))
        if inplace:
            torch._foreach_mul_(v, t)
            tv = v
        else:
            tv = torch._foreach_mul(t, v)
        scale = rho / (global_norm(tv) + 1e-12)
        torch._foreach_mul_(tv, t)
        torch._foreach_mul_(tv, scale)
        return tv

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
        g = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        return g

    def _project(self, e: list[Tensor]) -> list[Tensor]:
        """Back onto the rho-ball (global L2)."""
        scale = torch.clamp(self.hparam("rho") / (global_norm(e) + 1e-12), max=1.0)
        return torch._foreach_mul(e, scale)

    def _ascend(self, closure: Closure, params: list[Tensor], w: list[Tensor], g: list[Tensor], part) -> None:
        """Move the weights from w to w + e. With ascent_steps > 1, each step adds the perturbation of the
        gradient at the current point (norm rho) and projects the sum back onto the rho-ball."""
        e = self.perturbation(params, g)
        for _ in range(self.hparam("ascent_steps") - 1):
            torch._foreach_add_(params, e)
            self._call_part(closure, part, perturbed=True)
            g_k = self._take_grads(params)
            torch._foreach_copy_(params, w)
            e = self._project(torch._foreach_add(e, self.perturbation(params, g_k)))
        torch._foreach_add_(params, e)

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure (see sam_lab.optim.closure)")
        params = self._params()
        w = [self._w[p] if p in self._w else self._w.setdefault(p, torch.empty_like(p)) for p in params]
        m, frac = self.hparam("m"), self.hparam("ascent_fraction")
        keep_g = self.needs_clean_grad or self.capture
        losses, g_sum, gs_sum = [], None, None
        # m-sharpness: each of m chunks of the batch gets its own perturbation; descent grads are averaged.
        # ascent_fraction: the clean (ascent) gradient sees only that fraction of its chunk.
        for i in range(m):
            part = None if m == 1 else (i / m, (i + 1) / m)
            lo, hi = part or (0.0, 1.0)
            ascent_part = part if frac == 1.0 else (lo, lo + (hi - lo) * frac)
            losses.append(self._call_part(closure, ascent_part, perturbed=False))
            g = self._take_grads(params)
            torch._foreach_copy_(w, params)
            self.g_is_scratch = not keep_g
            try:
                self._ascend(closure, params, w, g, ascent_part)
            finally:
                self.g_is_scratch = False
            g = g if keep_g else None  # SAM keeps one extra buffer (w) during the second pass, not two
            self._call_part(closure, part, perturbed=True)
            g_s = self._take_grads(params)
            torch._foreach_copy_(params, w)  # exact restore
            g_sum = _accumulate(g_sum, g)
            gs_sum = _accumulate(gs_sum, g_s)
        g = None if g_sum is None else _div(g_sum, m)
        g_s = _div(gs_sum, m)
        d = self.descent_grad(params, g, g_s)
        if self.capture:
            self.captured = {"g": g, "g_s": g_s, "d": d}
        self.descend(params, d)
        return losses[0] if m == 1 else torch.stack([torch.as_tensor(x) for x in losses]).mean()


def _accumulate(total: list[Tensor] | None, new: list[Tensor] | None) -> list[Tensor] | None:
    if new is None:
        return total
    if total is None:
        return new
    torch._foreach_add_(total, new)
    return total


def _div(total: list[Tensor], n: int) -> list[Tensor]:
    return total if n == 1 else torch._foreach_div(total, float(n))
