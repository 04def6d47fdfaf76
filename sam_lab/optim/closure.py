"""The closure protocol: how an optimizer asks for a loss and its gradient.

`loss = opt.step(closure)`. `closure()` clears the gradients, computes the batch loss, back-propagates and
returns the loss; the optimizer calls it at every point it needs (twice for SAM). Keywords an optimizer may
pass, each declared by the optimizer that uses it:

  create_graph=True     keep the graph of the gradient (`second_order` optimizers: Hessian-vector products)
  part=(a, b)           use only the examples from fraction a to fraction b of the batch (m-sharpness,
                        `ascent_fraction`)
  sample_labels=True    the loss at labels drawn from the model's own softmax, no gradient through the draw;
                        back-propagates the batch MEAN and returns the per-example losses (SGDHESS `gnb`)
  loss_scale=s          back-propagate loss * s (a device tensor) and return the unscaled loss: fp16 loss
                        scaling (`trainer.precision=fp16`, sam_lab/optim/precision.py)

`batch_closure` builds such a closure for a model and one batch; the trainer and the benchmark use it, and
so can any training loop of your own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Closure = Callable[..., Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def sampled_label_losses(logits: Tensor) -> Tensor:
    """Per-example cross-entropy at labels drawn from softmax(logits), no gradient through the draw (GNB)."""
    y = torch.multinomial(torch.softmax(logits.detach().float(), dim=-1), 1).squeeze(1)
    return F.cross_entropy(logits.float(), y, reduction="none")


def batch_part(x: Tensor, y: Tensor, part: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """The examples from fraction part[0] to part[1] of the batch (at least one)."""
    if part is None:
        return x, y
    lo = round(part[0] * len(x))
    hi = max(round(part[1] * len(x)), lo + 1)
    return x[lo:hi], y[lo:hi]


def batch_closure(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    on_clean: Callable[[Tensor, Tensor, Tensor], None] | None = None,
) -> Closure:
    """A closure over one batch. `on_clean(loss, logits, y)` sees every pass at the clean weights (never at
    w + e, which optimizers mark with `optimizer.perturbed`): the trainer records loss and accuracy there."""

    def closure(
        create_graph: bool = False,
        part: tuple[float, float] | None = None,
        sample_labels: bool = False,
        loss_scale: Tensor | None = None,
    ) -> Tensor:
        xs, ys = batch_part(x, y, part)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(xs)
        if sample_labels:
            losses = sampled_label_losses(logits)
            losses.mean().backward()
            return losses
        loss = loss_fn(logits.float(), ys)
        (loss if loss_scale is None else loss * loss_scale).backward(create_graph=create_graph)
        if on_clean is not None and not getattr(optimizer, "perturbed", False):
            on_clean(loss, logits, ys)
        return loss

    return closure
