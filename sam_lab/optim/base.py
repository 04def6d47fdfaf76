"""`BaseSGD`: what every sam_lab optimizer shares.

torch SGD (momentum, dampening 0, coupled weight decay, optional Nesterov) driven through the closure protocol
(`sam_lab.optim.closure`: `loss = opt.step(closure)`); subclasses change only the descent gradient `d` handed
to SGD. `TwoPass` (sam_lab/optim/twopass.py) builds the SAM family on it.

Parameters whose gradient is None after the clean pass are left alone for that step: no perturbation, no
weight decay, no momentum, and no place in the statistics (as torch SGD does).

Behaviour is declared by class flags, which the trainer reads (never the class name):
  `second_order` - the closure is called as `closure(create_graph=True)`;
  `needs_clean_grad` - `descent_grad` reads `g`, so it is kept alive during the second pass;
  `two_pass` - the optimizer evaluates the loss twice per step;
  `supports_loss_scaling` - the optimizer can run under fp16 with a loss scaler.

`opt.watch(model, precision)` (done by the trainer) tells the optimizer its BatchNorm layers (frozen on
perturbed passes), parameter names (ASAM `adaptive_params="weights"`) and the run's precision
(`sam_lab.optim.precision`): under bf16/fp16 the passes at w + e run in fp32 so that autocast cannot round e
away, and fp16 scales the loss with one GradScaler across the passes of a step, skipping a step whose
gradients overflowed as a whole.
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
from sam_lab.optim.ops import frozen_bn, global_norm
from sam_lab.optim.precision import MixedPrecision, hooked, low_precision_params
from sam_lab.ranges import Range, check_values, ranges_of

__all__ = ["BaseSGD", "Closure", "frozen_bn", "global_norm"]


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
    supports_loss_scaling = True

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
        super().__init__(params, defaults)  # `params` may be model.named_parameters(): names kept
        self.capture = False  # set by the trainer on steps whose gradient statistics it wants
        self.captured: dict[str, list[Tensor]] | None = None
        self._bn: list[nn.Module] = []
        self.perturbed = False  # True while a closure is evaluated at perturbed weights
        self.probe_rho: float | None = None  # set by the trainer on SAM-probe steps (single-pass only)
        self.amp = MixedPrecision()
        self._cast: dict[Tensor, tuple[nn.Module, str]] = {}  # parameters autocast casts -> their layer
        self._names = {p: n for g in self.param_groups for p, n in zip(g["params"], g.get("param_names", ()))}
        self._w: dict[Tensor, Tensor] = {}  # the one extra parameter-sized buffer: w, for an exact restore
        self._overflow: Tensor | None = None  # fp16: True once a pass of this step had inf/nan gradients
        self.captured_e: dict[str, list[Tensor]] = {}  # e and what the forward applied, on capture steps
        self.clip_norm: float | None = None  # set by the trainer (trainer.grad_clip): max ||d|| per step

    def watch(self, model: nn.Module, precision: MixedPrecision | None = None) -> None:
        """Tell the optimizer its model (BatchNorm layers, parameter names, the layers autocast casts) and,
        optionally, the run's precision. The trainer calls it; standalone code may."""
        self._bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._names.update({p: n for n, p in model.named_parameters()})
        self._cast = low_precision_params(model)
        if precision is not None:
            if precision.scaler is not None and not self.supports_loss_scaling:
                raise ValueError(
                    f"{type(self).__name__} does not support fp16 loss scaling: use bf16 or fp32"
                )
            self.amp = precision

    watch_bn = watch  # the earlier name, for standalone code

    def hparam(self, key: str):
        return self.param_groups[0][key]

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _call(self, closure: Closure, **kwargs) -> Tensor:
        if self.second_order:
            kwargs["create_graph"] = True
        if self.amp.scaler is not None:
            kwargs["loss_scale"] = self.amp.loss_scale(self._params()[0].device)
        with torch.enable_grad():
            return closure(**kwargs)

    def _unscale(self, params: list[Tensor]) -> None:
        """fp16: unscale this pass's gradients and remember an overflow (zeroed, so e and d stay finite)."""
        if self.amp.scaler is not None:
            bad = self.amp.unscale(params)
            self._overflow = bad if self._overflow is None else self._overflow | bad

    def descent_grad(self, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        """Hook: the gradient SGD descends along. Default: the clean gradient."""
        return g

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure (see sam_lab.optim.closure)")
        loss = self._call(closure)
        params = [p for p in self._params() if p.grad is not None]
        self._unscale(params)
        g = [p.grad.detach() for p in params]
        if self.amp.scaler is not None:
            self._snapshot(params)  # fp16: w, to undo an overflowing step
        with self._skip_on_overflow(params):
            d = self.descent_grad(params, g)
            if self.capture:
                self.captured = {"g": g, "d": d}
                if self.probe_rho is not None:
                    self.captured.update(g_s=self._probe(closure, params, g), **self.captured_e)
                    self.captured_e = {}
            self.descend(params, d)
        return loss

    # ---- moving the weights to w + e and back --------------------------------------------------------
    def _in_place(self, params: list[Tensor]) -> list[Tensor]:
        """The parameters a perturbation moves in place; under bf16_hooks the cast ones are hooked instead."""
        return [p for p in params if p not in self._cast] if self.amp.hooks else params

    def _snapshot(self, keep: list[Tensor]) -> None:
        """Copy w of `keep` into the persistent buffers that `_restore` reads."""
        w = [self._w[p] if p in self._w else self._w.setdefault(p, torch.empty_like(p)) for p in keep]
        if keep:
            torch._foreach_copy_(w, keep)

    def _restore(self, params: list[Tensor]) -> None:
        moved = self._in_place(params)
        if moved:
            torch._foreach_copy_(moved, [self._w[p] for p in moved])  # exact: the copy of w, not w + e - e

    def _perturb(self, params: list[Tensor], e: list[Tensor]) -> contextlib.AbstractContextManager:
        """Move the in-place parameters to w + e now; the context hooks the rest for the pass under it."""
        if self.capture:  # perturbation fidelity: what the low-precision forward really applies
            self.captured_e = {"e": e, "e_applied": self.amp.applied(params, e, self._cast)}
        if not self.amp.hooks:
            torch._foreach_add_(params, e)
            return self.amp.full_precision() if self.amp.fp32_perturbed else contextlib.nullcontext()
        plain = [(p, x) for p, x in zip(params, e) if p not in self._cast]
        if plain:
            torch._foreach_add_(*map(list, zip(*plain)))
        cast = [(p, x) for p, x in zip(params, e) if p in self._cast]
        return hooked(self._cast, *map(list, zip(*cast))) if cast else contextlib.nullcontext()

    def _probe(self, closure: Closure, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        """SAM's gradient g_s at w + probe_rho * g / ||g|| for statistics only: BN frozen, w restored."""
        self._snapshot(self._in_place(params))
        e = torch._foreach_mul(g, self.probe_rho / (global_norm(g) + 1e-12))
        self.perturbed = True
        try:
            with self._perturb(params, e), frozen_bn(self._bn):
                self._call(closure)
        finally:
            self.perturbed = False
        self._unscale(params)
        g_s = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
        self._restore(params)
        for p, gp in zip(params, g):
            p.grad = gp
        return g_s

    # ---- the descent -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _skip_on_overflow(self, params: list[Tensor]) -> Iterator[None]:
        """fp16: if any pass of the step overflowed, undo the descent (w and optimizer state as before, state
        the step created removed) and let the scaler back off; otherwise the scaler counts a good step."""
        if self.amp.scaler is None:
            yield
            return
        state = [(p, k, v) for p in params for k, v in self.state.get(p, {}).items() if isinstance(v, Tensor)]
        saved = {(id(p), k): v.clone() for p, k, v in state}
        yield
        bad, self._overflow = self._overflow, None
        for p in params:
            p.copy_(torch.where(bad, self._w[p], p))
        for p, k, _ in state:
            self.state[p][k].copy_(torch.where(bad, saved[id(p), k], self.state[p][k]))
        new = [(p, k) for p in params for k in self.state.get(p, {}) if (id(p), k) not in saved]
        if new and bool(bad):  # only on the steps that create state (the first): one host read
            for p, k in new:
                del self.state[p][k]
        self.amp.update()

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

    def state_dict(self) -> dict:
        out = super().state_dict()
        if self.amp.scaler is not None:
            out["grad_scaler"] = self.amp.scaler.state_dict()
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        scaler = state_dict.pop("grad_scaler", None)
        super().load_state_dict(state_dict)
        if scaler is not None and self.amp.scaler is not None:
            self.amp.scaler.load_state_dict(scaler)
