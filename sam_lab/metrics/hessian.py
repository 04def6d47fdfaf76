"""Curvature of a loss: Hessian-vector products, top eigenvalues and the trace.

Everything works on any `model`, `loss_fn(output, target) -> mean loss of the batch` and re-iterable
`batches` of `(x, y)`; nothing here knows about the trainer. The operator is the Hessian of the MEAN loss
over all examples of `batches`,

    H = sum_b (n_b / N) * d^2 L_b / dw^2,     L_b = loss_fn(model(x_b), y_b),  N = sum_b n_b,

so the result does not depend on how the examples are split into batches (the split only bounds memory).

* Hessian-vector products by double backward (`torch.autograd.grad` of `<grad L, v>`), batch by batch, in
  fp32 with autocast off, model in eval mode (BatchNorm uses its running statistics and never updates them;
  the train/eval flag of every module is restored afterwards). `.grad` of the parameters is not touched.
* `hessian_eigs`: the k largest eigenvalues (algebraic, which="LA", or by magnitude, which="LM") with
  scipy's `eigsh` (ARPACK implicitly restarted Lanczos) on a `LinearOperator`; or a plain power iteration
  with the same stopping rule, for comparison. Stopping rule (ARPACK's): every wanted Ritz pair
  (theta, u) has residual ||H u - theta u|| <= tol * |theta|. For a symmetric matrix this bounds the
  eigenvalue error by tol * |theta| (usually far less: the error is ~ residual^2 / gap).
* `hessian_trace`: Hutchinson's estimator with Rademacher probes, mean of z^T H z and its standard error.
* The spectral density (stochastic Lanczos quadrature) is in `sam_lab.metrics.density`.

Every function takes `on_hvp(n)`, called after the n-th Hessian-vector product (e.g. a progress bar's
update). Deterministic for a fixed `seed` (probe and start vectors come from seeded generators).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]
OnHvp = Callable[[int], None]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode; restore each module's own flag afterwards (mixed modes survive)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


class HessianOperator:
    """v -> H v for the Hessian of the mean loss over `batches` w.r.t. the trainable parameters.

    Vectors are flat fp32 tensors on the parameters' device, in `model.parameters()` order. Use inside
    `with op:` (or through the functions below) so the model is in eval mode while products are taken.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], on_hvp: OnHvp | None = None
    ) -> None:
        self.model, self.loss_fn, self.batches, self.on_hvp = model, loss_fn, batches, on_hvp
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in self.params)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self.n_hvp = 0
        self._mode = None

    def __enter__(self) -> HessianOperator:
        self._mode = eval_mode(self.model)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._mode = None

    def _split(self, v: Tensor) -> list[Tensor]:
        return [c.view_as(p) for c, p in zip(v.split([p.numel() for p in self.params]), self.params)]

    def _flat(self, ts: Iterable[Tensor | None]) -> Tensor:
        return torch.cat(
            [(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(ts, self.params)]
        )

    def _losses(self) -> Iterator[tuple[Tensor, int]]:
        no_autocast = torch.autocast(self.device.type, enabled=False)
        for x, y in self.batches:
            with torch.enable_grad(), no_autocast:
                out = self.model(x)  # fp32 at least (fp64 models stay fp64)
                yield self.loss_fn(out.to(torch.promote_types(out.dtype, torch.float32)), y), len(y)

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """Mean loss and its flat gradient (one backward per batch)."""
        total, grad, count = 0.0, torch.zeros(self.numel, device=self.device, dtype=self.dtype), 0
        for loss, n in self._losses():
            g = torch.autograd.grad(loss, self.params, allow_unused=True)
            grad.add_(self._flat(g), alpha=n)
            total += loss.item() * n
            count += n
        return total / count, grad / count

    def matvec(self, v: Tensor) -> Tensor:
        """H v, accumulated batch by batch: sum_b n_b * d/dw <dL_b/dw, v>, divided by N."""
        if self._mode is None:
            raise RuntimeError("use HessianOperator inside `with op:` (model in eval mode)")
        v = v.to(self.device, self.dtype)
        vs = self._split(v)
        out, count = torch.zeros_like(v), 0
        for loss, n in self._losses():
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs) if g is not None)
            hv = torch.autograd.grad(dot, self.params, allow_unused=True)
            out.add_(self._flat(hv), alpha=n)
            count += n
        self.n_hvp += 1
        if self.on_hvp is not None:
            self.on_hvp(self.n_hvp)
        return out / count

    __call__ = matvec


@dataclass
class EigResult:
    """The k wanted eigenvalues (descending by value for which="LA", by magnitude for "LM"), their cost."""

    eigenvalues: list[float]
    n_hvp: int
    seconds: float
    method: str
    tol: float
    converged: bool
    residuals: list[float]  # ||H u - theta u|| / |theta| of each returned pair (when vectors are returned)
    eigenvectors: Tensor | None = field(default=None, repr=False)  # (k, numel), unit norm, fp32

    @property
    def lambda_max(self) -> float:
        """The first eigenvalue: the largest one ("LA"), or the one of largest magnitude ("LM")."""
        return self.eigenvalues[0]


@dataclass
class TraceResult:
    """Hutchinson estimate of tr(H) = E[z^T H z], z Rademacher; se = sample std / sqrt(num_probes)."""

    trace: float
    se: float
    samples: list[float]
    n_hvp: int
    seconds: float


def _op(
    model: nn.Module, loss_fn: LossFn | None, batches: Iterable[Batch], on_hvp: OnHvp | None = None
) -> HessianOperator:
    return HessianOperator(model, loss_fn or F.cross_entropy, batches, on_hvp)


def _power(op: HessianOperator, tol: float, max_hvp: int, seed: int) -> tuple[float, Tensor, bool]:
    """Power iteration on H: theta = u^T H u; stop when ||H u - theta u|| <= tol * |theta|.

    Converges to the eigenvalue of largest MAGNITUDE (the largest algebraic one near a minimum)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(op.numel, generator=g, dtype=torch.float64).to(op.device, op.dtype)
    u /= u.norm()
    theta = 0.0
    for _ in range(max_hvp):
        hu = op(u)
        theta = float(u @ hu)
        if (hu - theta * u).norm() <= tol * abs(theta):
            return theta, u, True
        u = hu / hu.norm()
    return theta, u, False


def hessian_eigs(
    model: nn.Module,
    loss_fn: LossFn | None,
    batches: Iterable[Batch],
    k: int = 1,
    tol: float = 1e-3,
    seed: int = 0,
    method: str = "lanczos",
    ncv: int | None = None,
    max_hvp: int = 1000,
    return_vectors: bool = False,
    which: str = "LA",
    on_hvp: OnHvp | None = None,
) -> EigResult:
    """The k largest eigenvalues of the Hessian of the mean loss over `batches`.

    which="LA": the k algebraically largest; which="LM": the k of largest magnitude (possibly negative),
    what power iteration with deflation (PyHessian's `eigenvalues(top_n=k)`) converges to.
    method="lanczos": `scipy.sparse.linalg.eigsh(which=which)` (ARPACK); `ncv` Lanczos vectors per restart,
    default max(2k + 4, 8). ARPACK checks convergence once per restart, so a run costs at least ncv + 1
    products: scipy's default ncv = 20 wastes ~10 products when the top eigenvalue is well separated (the
    usual case for trained networks), and on a hard tiny-model spectrum ncv = 8 needed the fewest products.
    method="power": power iteration with the same stopping rule (k=1 only). The start vector is N(0, I)
    from `seed`. `max_hvp` bounds the cost (for ARPACK approximately, as a number of restarts); if it is
    reached the result has `converged=False` and the best estimates so far.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    if which not in ("LA", "LM"):
        raise ValueError(f"which must be 'LA' or 'LM', got {which!r}")
    t0 = time.perf_counter()
    op = _op(model, loss_fn, batches, on_hvp)
    with op:
        if method == "power":
            if k != 1:
                raise ValueError("method='power' finds one eigenvalue: use method='lanczos' for k > 1")
            theta, u, converged = _power(op, tol, max_hvp, seed)
            values, vectors = [theta], u[None]
        elif method == "lanczos":
            n = op.numel

            def mv(x: np.ndarray) -> np.ndarray:
                v = torch.from_numpy(np.ascontiguousarray(x).reshape(-1))  # matvec casts to op.dtype
                return op(v).double().cpu().numpy()

            lin = LinearOperator((n, n), matvec=mv, dtype=np.float64)
            v0 = np.random.default_rng(seed).standard_normal(n)
            ncv_ = min(n, max(2 * k + 4, 8) if ncv is None else ncv)
            restarts = max(1, max_hvp // max(1, ncv_ - k))  # ARPACK counts restarts, not products
            try:
                w, vecs = eigsh(lin, k=k, which=which, tol=tol, v0=v0, ncv=ncv_, maxiter=restarts)
                converged = True
            except ArpackNoConvergence as err:  # keep what converged; the caller sees converged=False
                w, vecs, converged = err.eigenvalues, err.eigenvectors, False
                if len(w) == 0:
                    raise
            order = np.argsort(w if which == "LA" else np.abs(w), kind="stable")[::-1]
            values = [float(x) for x in w[order]]
            vectors = torch.from_numpy(np.ascontiguousarray(vecs[:, order].T)).to(op.device, op.dtype)
        else:
            raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
        n_hvp = op.n_hvp
        seconds = time.perf_counter() - t0
        residuals = []
        if return_vectors:  # an independent check of every pair (extra HVPs, not counted in n_hvp/seconds)
            for lam, u in zip(values, vectors):
                residuals.append(float((op(u) - lam * u).norm() / max(abs(lam), 1e-30)))
    return EigResult(
        eigenvalues=values,
        n_hvp=n_hvp,
        seconds=seconds,
        method=method,
        tol=tol,
        converged=converged,
        residuals=residuals,
        eigenvectors=vectors.cpu() if return_vectors else None,
    )


def rademacher(numel: int, generator: torch.Generator) -> Tensor:
    """A vector of independent +-1 entries (fp32, CPU) drawn from `generator`."""
    return torch.randint(0, 2, (numel,), generator=generator).float().mul_(2).sub_(1)


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn | None,
    batches: Iterable[Batch],
    num_probes: int = 10,
    seed: int = 0,
    on_hvp: OnHvp | None = None,
) -> TraceResult:
    """Hutchinson: tr(H) ~ mean_i z_i^T H z_i, z_i Rademacher; standard error std_i / sqrt(num_probes)."""
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 for a standard error, got {num_probes}")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    op = _op(model, loss_fn, batches, on_hvp)
    samples = []
    with op:
        for _ in range(num_probes):
            z = rademacher(op.numel, g).to(op.device, op.dtype)
            samples.append(float(z @ op(z)))
    s = np.asarray(samples)
    return TraceResult(
        trace=float(s.mean()),
        se=float(s.std(ddof=1) / math.sqrt(len(s))),
        samples=samples,
        n_hvp=op.n_hvp,
        seconds=time.perf_counter() - t0,
    )
