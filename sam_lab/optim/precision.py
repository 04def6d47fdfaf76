"""Mixed precision for the closure protocol: autocast, a SAM perturbation that survives it, fp16 loss scaling.

A SAM perturbation e is tiny next to the weights w, so casting w + e to bf16 (autocast does so at every
convolution and matmul) rounds most elements of e away: on a full-width ResNet-18 at rho 0.05, the applied
perturbation has cosine 0.53 with e and 1.9x its norm. `trainer.precision` (numbers: docs/precision.md):

  fp32        no autocast; on CUDA also no TF32 (its 10-bit mantissa would round e away as well)
  bf16        bf16 autocast for the clean pass; every pass at w + e runs in fp32 (no autocast, no TF32), so
              it sees exactly w + e
  bf16_hooks  bf16 autocast everywhere; Conv/Linear layers keep w and a forward hook adds f(x, e) to their
              output (f linear in the weight, so the layer computes f(x, w + e) with e cast on its own, and
              the weight gradient x^T dy is the one at w + e); other parameters move to w + e in place. The
              weights see all of e, but the bf16 layer outputs round much of its effect away again (measured)
  bf16_naive  bf16 autocast everywhere, weights moved to w + e in place: what a plain SAM loop does
  fp16        fp16 autocast for the clean pass, passes at w + e in fp32 as in bf16, and one GradScaler across
              all passes of a step: an overflow in any pass skips the whole step
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPES: dict[str, torch.dtype | None] = {  # mode -> autocast dtype of the clean pass
    "fp32": None,
    "bf16": torch.bfloat16,
    "bf16_hooks": torch.bfloat16,
    "bf16_naive": torch.bfloat16,
    "fp16": torch.float16,
}
FP32_PERTURBED = ("bf16", "fp16")  # modes whose passes at w + e run in fp32


def _conv_delta(m: nn.Module, x: Tensor, e_w: Tensor, e_b: Tensor | None) -> Tensor:
    return m._conv_forward(x, e_w, e_b)  # the module's own padding mode, stride, dilation, groups


def _linear_delta(m: nn.Module, x: Tensor, e_w: Tensor, e_b: Tensor | None) -> Tensor:
    return F.linear(x, e_w, e_b)


# Layers whose parameters autocast casts to low precision, and f(x, e) for each (linear in the parameters).
LOW_PRECISION_LAYERS: dict[type, Callable[..., Tensor]] = {
    nn.Linear: _linear_delta,
    nn.Conv1d: _conv_delta,
    nn.Conv2d: _conv_delta,
    nn.Conv3d: _conv_delta,
}


def low_precision_params(model: nn.Module) -> dict[Tensor, tuple[nn.Module, str]]:
    """parameter -> (layer, "weight" or "bias") for the parameters autocast casts (LOW_PRECISION_LAYERS)."""
    out = {}
    for m in model.modules():
        if any(isinstance(m, t) for t in LOW_PRECISION_LAYERS):
            for name in ("weight", "bias"):
                p = getattr(m, name, None)
                if isinstance(p, nn.Parameter):
                    out[p] = (m, name)
    return out


def _add_delta(delta: Callable[..., Tensor], e_w: Tensor, e_b: Tensor | None, m: nn.Module, args, out):
    return out + delta(m, args[0], e_w, e_b)


class MixedPrecision:
    """A run's precision: the autocast dtype, how passes at w + e run, and the fp16 loss scaler.

    The trainer makes one and hands it to the optimizer (`opt.watch(model, precision)`) and to the closure
    (`autocast=precision.autocast`); standalone code does the same.
    """

    def __init__(self, mode: str = "fp32", device_type: str = "cpu") -> None:
        if mode not in DTYPES:
            raise ValueError(f"precision must be one of {tuple(DTYPES)} (got {mode!r})")
        self.mode, self.device_type, self.dtype = mode, device_type, DTYPES[mode]
        self.fp32_perturbed = mode in FP32_PERTURBED
        self.hooks = mode == "bf16_hooks"  # Conv/Linear layers perturbed by forward hooks
        self.suspended = False  # True while a pass at w + e runs in fp32
        self.scaler = torch.amp.GradScaler(device_type) if mode == "fp16" else None
        self._passes: list[types.SimpleNamespace] = []  # this step's unscaled gradient groups
        if device_type == "cuda" and mode == "fp32":  # fp32 means fp32: TF32 would round most of e away
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.dtype or torch.bfloat16  # unused when disabled
        return torch.autocast(
            self.device_type, dtype=dtype, enabled=self.dtype is not None and not self.suspended
        )

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """No autocast (and on CUDA no TF32) for the closures called under it."""
        self.suspended = True
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            self.suspended = False
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags

    # ---- fp16 loss scaling: one GradScaler across every pass of a step ---------------------------------
    def loss_scale(self, device: torch.device) -> Tensor:
        """The factor the closure multiplies the loss by before backward (a device tensor, no sync)."""
        return self.scaler.scale(torch.ones((), device=device))

    def unscale(self, params: list[Tensor]) -> Tensor:
        """Unscale the gradients of one pass in place; returns a 0-dim bool tensor, True if any is not finite.
        Non-finite gradients are zeroed so that nothing downstream (e, BatchNorm statistics) sees them."""
        group = types.SimpleNamespace(param_groups=[{"params": params}])  # what GradScaler.unscale_ reads
        self._passes.append(group)  # kept until update(): the scaler tells passes apart by id()
        self.scaler.unscale_(group)
        grads = [p.grad for p in params if p.grad is not None]
        bad = (
            ~torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())
            if grads
            else torch.zeros((), dtype=bool)
        )
        for x in grads:
            x.masked_fill_(bad, 0.0)
        return bad

    def update(self) -> None:
        """After the step: back off if any pass overflowed, else count towards growth."""
        self.scaler.update()
        self._passes.clear()

    # ---- the perturbation that autocast keeps --------------------------------------------------------
    def applied(self, params: list[Tensor], e: list[Tensor], cast: dict) -> list[Tensor]:
        """What the forward pass at w + e really adds to w, parameter by parameter (params at w): e itself
        in an fp32 pass and for parameters autocast leaves fp32; cast(e) with hooks; cast(w + e) - cast(w)
        when the weights are moved in place under autocast (bf16_naive)."""
        if self.dtype is None or self.fp32_perturbed:
            return e
        out = []
        for p, ep in zip(params, e):
            if p not in cast:
                out.append(ep)
            elif self.hooks:
                out.append(ep.to(self.dtype).float())
            else:
                out.append((p + ep).to(self.dtype).float() - p.to(self.dtype).float())
        return out


@contextlib.contextmanager
def hooked(
    cast: dict[Tensor, tuple[nn.Module, str]], params: list[Tensor], e: list[Tensor]
) -> Iterator[None]:
    """Forward hooks adding f(x, e_P) to each layer whose parameter P is in `cast`; removed on exit."""
    per_layer: dict[nn.Module, dict[str, Tensor]] = {}
    for p, ep in zip(params, e):
        layer, name = cast[p]
        per_layer.setdefault(layer, {})[name] = ep
    handles = []
    try:
        for layer, es in per_layer.items():
            delta = next(f for t, f in LOW_PRECISION_LAYERS.items() if isinstance(layer, t))
            e_w = es.get("weight")
            if e_w is None:  # a frozen weight with a trainable bias: f(x, 0) + e_b
                e_w = torch.zeros_like(layer.weight)
            hook = functools.partial(_add_delta, delta, e_w, es.get("bias"))
            handles.append(layer.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
