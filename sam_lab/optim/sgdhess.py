"""SGDHESS: SGD along a gradient preconditioned by a diagonal Hessian estimate (or the exact H g)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from sam_lab.optim.base import BaseSGD, Closure, frozen_bn
from sam_lab.ranges import Range

HESSIANS = ("hutchinson", "gnb", "hvp")


class SGDHess(BaseSGD):
    """SGDHESS: d = g + rho * D * g, D a diagonal Hessian estimate of the loss (weight decay not included).

    hessian="hutchinson" (default): D = |H z|, one Rademacher z (global RNG), conv kernels (4-dim weights)
      averaged over their spatial dims;  "gnb" (Gauss-Newton-Bartlett): D = B * g_hat^2, g_hat the gradient
      of the batch-mean loss at labels drawn from the model's softmax (`closure(sample_labels=True)`, BN
      frozen). Both refresh D every `hessian_every` steps and keep it in `self.state[p]["hess_d"]`.
    hessian="hvp": exact d = g + rho * H g, one Hessian-vector product with v = g (detached), every step.
    """

    second_order = True  # p.grad carries its graph (closure(create_graph=True)) for the H v products
    ranges = {"rho": Range(0.0), "hessian": Range(choices=HESSIANS), "hessian_every": Range(1, integer=True)}
    supports_loss_scaling = False  # H v and the GNB pass would need the scale threaded through them

    def __init__(
        self, params, lr: float, rho: float, hessian: str = "hutchinson", hessian_every: int = 1, **kw
    ) -> None:
        super().__init__(params, lr, rho=rho, hessian=hessian, hessian_every=hessian_every, **kw)
        self.second_order = hessian != "gnb"  # GNB needs first-order gradients only

    def _due(self) -> bool:
        return self.state[self._params()[0]].get("hess_step", 0) % self.hparam("hessian_every") == 0

    def _hvp(self, params: list[Tensor], v: list[Tensor]) -> list[Tensor]:
        """H v by a second backward through the graph that p.grad carries."""
        live = [(p.grad, x) for p, x in zip(params, v) if p.grad.requires_grad]
        if not live:  # the loss is linear in every parameter
            return [torch.zeros_like(p) for p in params]
        with torch.enable_grad():
            outs, vs = zip(*live)
            return list(torch.autograd.grad(outs, params, vs, allow_unused=True, materialize_grads=True))

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        if closure is not None and self.hparam("hessian") == "gnb" and self._due():
            with frozen_bn(self._bn):
                batch = self._call(closure, sample_labels=True).numel()
            for p in self._params():
                if p.grad is not None:
                    self.state[p]["hess_d"] = p.grad.detach().square().mul_(batch)
        with warnings.catch_warnings():  # descent_grad breaks the cycle this warning is about
            warnings.filterwarnings("ignore", message="Using backward.. with create_graph=True")
            return super().step(closure)

    def descent_grad(self, params: list[Tensor], g: list[Tensor]) -> list[Tensor]:
        kind, rho = self.hparam("hessian"), self.hparam("rho")
        if kind == "hvp":
            d = torch._foreach_add(g, self._hvp(params, g), alpha=rho)
        else:
            if kind == "hutchinson" and self._due():
                z = [torch.randint_like(p, 0, 2).mul_(2).sub_(1) for p in params]
                for p, hz in zip(params, self._hvp(params, z)):
                    hz = hz.abs_()
                    self.state[p]["hess_d"] = (
                        hz.mean((2, 3), keepdim=True).expand_as(hz).clone() if hz.ndim == 4 else hz
                    )
            dg = [self.state[p].get("hess_d", torch.zeros_like(p)) for p in params]
            d = torch._foreach_addcmul(g, dg, g, value=rho)
        first = self.state[self._params()[0]]
        first["hess_step"] = first.get("hess_step", 0) + 1
        for p, gp in zip(params, g):
            p.grad = gp  # drop the graph: no parameter <-> gradient reference cycle survives the step
        return d
