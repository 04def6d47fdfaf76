"""Update-magnitude statistics from gradients an optimizer already holds (pure functions, no host sync).

Every reduction runs over the whole parameter list at once with `torch._foreach_*` kernels (a few launches
per statistic instead of a few per parameter tensor): counts are L1 norms of 0/1 indicator tensors, and the
dot product comes from the polarisation identity  a.b = (||a + b||^2 - ||a - b||^2) / 4.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _total(per_tensor: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """Sum of per-tensor reductions, in float64 so that counts above 2^24 stay exact."""
    return torch.stack(list(per_tensor)).double().sum()


def _norm(a: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(a)).float())


def _count_positive(x: list[Tensor]) -> Tensor:
    """Number of elements > 0 over all tensors; overwrites x."""
    torch._foreach_sign_(x)
    torch._foreach_clamp_min_(x, 0.0)
    return _total(torch._foreach_norm(x, ord=1))


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """sum_i a_i . b_i by polarisation (two temporaries, four foreach launches)."""
    plus = torch.stack(torch._foreach_norm(torch._foreach_add(a, b))).double().square().sum()
    minus = torch.stack(torch._foreach_norm(torch._foreach_sub(a, b))).double().square().sum()
    return ((plus - minus) / 4).float()


def _fidelity(e: list[Tensor], applied: list[Tensor]) -> tuple[Tensor, Tensor]:
    """cosine(applied, e) and ||applied|| / ||e||, in float64 so that applied == e gives exactly 1.0 (and
    so does e == applied == 0)."""
    ne = torch.stack(torch._foreach_norm(e)).double().square().sum()
    na = torch.stack(torch._foreach_norm(applied)).double().square().sum()
    plus = torch.stack(torch._foreach_norm(torch._foreach_add(applied, e))).double().square().sum()
    minus = torch.stack(torch._foreach_norm(torch._foreach_sub(applied, e))).double().square().sum()
    cos = (plus - minus) / 4 / (ne.sqrt() * na.sqrt())
    ratio = na.sqrt() / ne.sqrt()
    none = (ne == 0) & (na == 0)  # rho = 0: nothing intended, nothing applied
    return torch.where(none, 1.0, cos).float(), torch.where(none, 1.0, ratio).float()


def grad_stats(
    g: list[Tensor] | None,
    d: list[Tensor],
    g_s: list[Tensor] | None = None,
    e: list[Tensor] | None = None,
    e_applied: list[Tensor] | None = None,
) -> dict[str, Tensor]:
    """Statistics of the clean gradient g, the perturbed (SAM) gradient g_s and the descent gradient d, and
    of the perturbation e against what the (low-precision) forward pass really applied, e_applied.

    opt/ratio_gt1_frac   fraction of weight elements with |g_s| / |g| > 1, i.e. |g_s| > |g| (in [0, 1])
    opt/norm_ratio       ||g_s|| / ||g||
    opt/cos              cosine(g_s, g)
    opt/sign_agree_frac  fraction of elements with sign(g_s) == sign(g)
    opt/grad_norm        ||g||
    opt/update_norm      ||d||, the gradient handed to SGD (before momentum and weight decay)
    opt/perturb_cos         cosine(e_applied, e): 1.0 in fp32 and with the bf16/fp16 perturbation kept
    opt/perturb_norm_ratio  ||e_applied|| / ||e||
    """
    out = {"opt/update_norm": _norm(d)}
    if e is not None and e_applied is not None:
        out["opt/perturb_cos"], out["opt/perturb_norm_ratio"] = _fidelity(e, e_applied)
    if g is None:
        return out
    g_norm = _norm(g)
    out["opt/grad_norm"] = g_norm
    if g_s is None:
        return out
    numel = float(sum(x.numel() for x in g))
    gs_norm = _norm(g_s)
    # |g_s| - |g| > 0
    gt = torch._foreach_abs(g_s)
    torch._foreach_sub_(gt, torch._foreach_abs(g))
    out["opt/ratio_gt1_frac"] = (_count_positive(gt) / numel).float()
    # sign(g_s) != sign(g)  <=>  |sign(g_s) - sign(g)| in {1, 2}, clamped to 1 and counted
    diff = torch._foreach_sign(g_s)
    torch._foreach_sub_(diff, torch._foreach_sign(g))
    torch._foreach_abs_(diff)
    torch._foreach_clamp_max_(diff, 1.0)
    out["opt/sign_agree_frac"] = (1 - _total(torch._foreach_norm(diff, ord=1)) / numel).float()
    out["opt/norm_ratio"] = gs_norm / g_norm
    out["opt/cos"] = _dot(g, g_s) / (g_norm * gs_norm)
    return out
