"""Cost of `sharpness/lambda_max`: Lanczos (scipy eigsh, ARPACK) vs plain power iteration, same stopping rule.

    python scripts/bench_sharpness.py                      # ResNet-18 width 8, 5120 synthetic images, tol 1%
    python scripts/bench_sharpness.py --data digits --checkpoint outputs/runs/.../checkpoints/last.pt

Prints, per method, lambda_max, the number of Hessian-vector products, the seconds and whether the rule
(||H u - theta u|| <= tol * |theta|) was met. Synthetic data (random images, random labels, the weights at
initialisation) has the right shapes and cost; `--data digits` with a trained `--checkpoint` gives the
spectrum of a trained network (at most the 1300 digits training images).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sam_lab.data import load_digits, load_synthetic
from sam_lab.metrics.hessian import HessianOperator, hessian_eigs
from sam_lab.metrics.sharpness import fixed_subset
from sam_lab.models import num_params, resnet18
from sam_lab.run import checkpoint


@torch.no_grad()
def calibrate_bn(model: torch.nn.Module, batches) -> None:
    """Running statistics = the cumulative average of the batch statistics over `batches` (momentum None)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _ in batches:
        model(x)
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["synthetic", "digits"], default="synthetic")
    ap.add_argument("--samples", type=int, default=5120)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--checkpoint", help="a run's checkpoints/last.pt (same width, 10 classes)")
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--methods", nargs="+", default=["lanczos", "power"], choices=["lanczos", "power"])
    ap.add_argument("--ncv", type=int, default=None, help="Lanczos vectors per ARPACK restart")
    ap.add_argument("--max-hvp", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--calibrate-bn",
        action="store_true",
        help="set BN running statistics to the subset's (at init they are (0, 1): the eval-mode network is "
        "then un-normalised and its Hessian has one huge isolated eigenvalue, easy for power iteration)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.data == "synthetic":
        data = load_synthetic(num_train=args.samples, num_test=1)
    else:
        data = load_digits(val_size=200, subset=None, seed=0, augment=None)
    batches = fixed_subset(data, args.samples, args.batch_size, "cpu", seed=args.seed)
    model = resnet18(num_classes=10, width=args.width)
    if args.checkpoint:
        state = checkpoint.read(Path(args.checkpoint), advice="give a checkpoints/last.pt that sam_lab wrote")
        model.load_state_dict(state["model"])  # read with weights_only: tensors only, never code
    if args.calibrate_bn:
        calibrate_bn(model, batches)
    n = len(batches.labels)
    print(f"resnet18 width {args.width}: {num_params(model)} parameters; {args.data}, {n} samples in batches")
    print(f"of {args.batch_size}; {torch.get_num_threads()} CPU threads; tol {args.tol:g}")

    with HessianOperator(model, torch.nn.functional.cross_entropy, batches) as op:
        v = torch.randn(op.numel, generator=torch.Generator().manual_seed(args.seed))
        t0 = time.perf_counter()
        op(v)
        print(f"one Hessian-vector product: {time.perf_counter() - t0:.2f} s")

    print(f"{'method':<8} {'lambda_max':>12} {'n_hvp':>6} {'seconds':>8} {'s/hvp':>6} converged")
    for method in args.methods:
        res = hessian_eigs(
            model,
            None,
            batches,
            tol=args.tol,
            seed=args.seed,
            method=method,
            ncv=args.ncv,
            max_hvp=args.max_hvp,
        )
        print(
            f"{method:<8} {res.lambda_max:12.5g} {res.n_hvp:6d} {res.seconds:8.1f} "
            f"{res.seconds / res.n_hvp:6.2f} {res.converged}",
            flush=True,
        )


if __name__ == "__main__":
    main()
