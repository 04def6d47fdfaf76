"""Update-magnitude statistics from gradients an optimizer already holds (pure functions, no host sync)."""

from __future__ import annotations

import torch
from torch import Tensor


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return torch.stack([torch.vdot(x.flatten().float(), y.flatten().float()) for x, y in zip(a, b)]).sum()


def _norm(a: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(a)).float())


def grad_stats(g: list[Tensor] | None, d: list[Tensor], g_s: list[Tensor] | None = None) -> dict[str, Tensor]:
    """Statistics of the clean gradient g, the perturbed (SAM) gradient g_s and the descent gradient d.

    opt/ratio_gt1_frac   fraction of weight elements with |g_s| / |g| > 1, i.e. |g_s| > |g| (in [0, 1])
    opt/norm_ratio       ||g_s|| / ||g||
    opt/cos              cosine(g_s, g)
    opt/sign_agree_frac  fraction of elements with sign(g_s) == sign(g)
    opt/grad_norm        ||g||
    opt/update_norm      ||d||, the gradient handed to SGD (before momentum and weight decay)
    """
    out = {"opt/update_norm": _norm(d)}
    if g is None:
        return out
    g_norm = _norm(g)
    out["opt/grad_norm"] = g_norm
    if g_s is None:
        return out
    numel = sum(x.numel() for x in g)
    gs_norm = _norm(g_s)
    out["opt/ratio_gt1_frac"] = sum((b.abs() > a.abs()).sum() for a, b in zip(g, g_s)).float() / numel
    out["opt/sign_agree_frac"] = (
        sum((torch.sign(a) == torch.sign(b)).sum() for a, b in zip(g, g_s)).float() / numel
    )
    out["opt/norm_ratio"] = gs_norm / g_norm
    out["opt/cos"] = _dot(g, g_s) / (g_norm * gs_norm)
    return out
