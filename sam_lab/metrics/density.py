"""Spectral density of a loss Hessian by stochastic Lanczos quadrature, and its plot.

`hessian_density` (Ghorbani et al. 2019, as in PyHessian) uses the Hessian-vector products of
`sam_lab.metrics.hessian`; `plot_density` writes a result to a PNG (the only function here that touches a
file, and only the one it is given).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sam_lab.metrics.hessian import Batch, LossFn, OnHvp, _op, rademacher


@dataclass
class DensityResult:
    """Stochastic Lanczos quadrature: Ritz values (nodes) and weights per probe, and a smoothed density."""

    nodes: list[list[float]]
    weights: list[list[float]]
    grid: list[float]
    density: list[float]
    sigma: float
    n_hvp: int
    seconds: float


def lanczos_tridiagonal(op: Callable[[Tensor], Tensor], v0: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """`steps` Lanczos steps from v0 with full re-orthogonalisation; returns the diagonals (alpha, beta) of
    the tridiagonal T = V^T H V (beta has one entry fewer). Stops early if the Krylov space is exhausted.

    Hand-written because SLQ needs T itself (its eigenvectors' first components are the quadrature weights),
    which scipy's ARPACK wrapper does not expose."""
    basis = [v0 / v0.norm()]
    alpha, beta = [], []
    for j in range(steps):
        w = op(basis[j])
        a = float(basis[j] @ w)
        alpha.append(a)
        if j == steps - 1:
            break
        vs = torch.stack(basis)
        w = w - vs.T @ (vs @ w)  # full re-orthogonalisation (twice is enough, Parlett's "twice is enough")
        w = w - vs.T @ (vs @ w)
        b = float(w.norm())
        if b < 1e-10 * max(1.0, abs(a)):
            break
        beta.append(b)
        basis.append(w / b)
    return torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)


def hessian_density(
    model: nn.Module,
    loss_fn: LossFn | None,
    batches: Iterable[Batch],
    steps: int = 64,
    num_probes: int = 1,
    seed: int = 0,
    grid_points: int = 1000,
    sigma_frac: float = 1e-3,
    on_hvp: OnHvp | None = None,
) -> DensityResult:
    """Eigenvalue density by stochastic Lanczos quadrature.

    For each Rademacher probe z, `steps` Lanczos steps give T = Q diag(theta) Q^T; the spectral measure of H
    seen from z/||z|| is approximated by nodes theta_j with weights Q[0, j]^2 (they sum to 1). The density is
    the probe average of sum_j w_j N(t; theta_j, sigma^2), sigma = sigma_frac * (max - min node range)."""
    from scipy.linalg import eigh_tridiagonal

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    op = _op(model, loss_fn, batches, on_hvp)
    nodes, weights = [], []
    with op:
        for _ in range(num_probes):
            z = rademacher(op.numel, g).to(op.device, op.dtype)
            alpha, beta = lanczos_tridiagonal(op, z, steps)
            if len(alpha) == 1:
                theta, q = alpha.numpy(), np.ones((1, 1))
            else:
                theta, q = eigh_tridiagonal(alpha.numpy(), beta.numpy())
            nodes.append([float(x) for x in theta])
            weights.append([float(x) for x in q[0] ** 2])
    lo, hi = min(min(n) for n in nodes), max(max(n) for n in nodes)
    span = max(hi - lo, 1e-12 * max(1.0, abs(hi)))
    sigma = sigma_frac * span
    grid = np.linspace(lo - 0.05 * span, hi + 0.05 * span, grid_points)
    dens = np.zeros_like(grid)
    for th, w in zip(nodes, weights):
        th, w = np.asarray(th), np.asarray(w)
        dens += (w[None] * np.exp(-0.5 * ((grid[:, None] - th[None]) / sigma) ** 2)).sum(1)
    dens /= len(nodes) * sigma * math.sqrt(2 * math.pi)
    return DensityResult(
        nodes=nodes,
        weights=weights,
        grid=grid.tolist(),
        density=dens.tolist(),
        sigma=sigma,
        n_hvp=op.n_hvp,
        seconds=time.perf_counter() - t0,
    )


def plot_density(result: DensityResult, path: Path | str, title: str = "Hessian eigenvalue density") -> Path:
    """Save the density (log scale, as PyHessian plots it) to a PNG; matplotlib's Agg backend, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    dens = np.maximum(np.asarray(result.density), 1e-12)
    ax.semilogy(result.grid, dens)
    ax.set_ylim(max(dens.max() * 1e-8, 1e-12), dens.max() * 2)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
