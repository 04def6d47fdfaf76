#!/usr/bin/env python
"""How faithful and how costly is a SAM step in each `trainer.precision`? One table (docs/precision.md).

For every precision mode, from the same weights and the same batch (digits, or synthetic images), one SAM
step (lr 0) with the statistics captured, compared with the same step in fp32 (means over `--batches`):
  perturb_cos, norm_ratio  opt/perturb_cos, opt/perturb_norm_ratio: the perturbation the low-precision forward
                           applies vs the intended e (1 = kept)
  cos(gs-g)                cosine of this mode's g_s - g with fp32's g_s - g (the part of SAM's gradient that
                           the perturbation causes)
  err(gs)                  ||g_s - g_s,fp32|| / ||g_s,fp32 - g_fp32||: the error of SAM's descent gradient,
                           relative to what the perturbation changes
  err(pass)                ||g_s - g_s*|| / ||g_s,fp32 - g_fp32||, g_s* = the fp32 gradient at w + this mode's
                           e: the error of the perturbed pass alone, which the perturbation handling decides
  err(g)                   ||g - g_fp32|| / ||g_s,fp32 - g_fp32||: the same for the clean gradient, i.e. the
                           low-precision floor that plain SGD has too
  ms/step, x fp32          a full SAM step (both passes, descent): median over rounds, modes interleaved in
                           each round; x fp32 = median over rounds of the ratio within the round
Runs on CPU or CUDA (`--device cuda` for a GPU check).

    python scripts/precision_check.py --width 16 --batch 128            # docs/precision.md, CPU
    python scripts/precision_check.py --width 64 --batch 128 --steps 1 --repeats 1
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_lab.data import Batches, load_digits, load_synthetic
from sam_lab.metrics.grad_stats import grad_stats
from sam_lab.models import resnet18
from sam_lab.models.layout import to_layout
from sam_lab.optim import SAM, SGD, MixedPrecision, frozen_bn
from sam_lab.optim.closure import batch_closure
from sam_lab.optim.precision import DTYPES


def flat(v: list[Tensor]) -> Tensor:
    return torch.cat([t.flatten() for t in v]).double()


def cos(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def sam_step(model: nn.Module, x: Tensor, y: Tensor, mode: str, rho: float, lr: float, capture: bool):
    """A SAM optimizer on `model` under `mode` and the closure the trainer would build."""
    amp = MixedPrecision(mode, x.device.type)
    opt = SAM(model.parameters(), lr=lr, rho=rho, momentum=0.9, weight_decay=5e-4)
    opt.watch(model, amp)
    opt.capture = capture
    return opt, batch_closure(model, opt, x, y, F.cross_entropy, amp.autocast)


def fp32_grad_at(model: nn.Module, x: Tensor, y: Tensor, e: list[Tensor]) -> Tensor:
    """The fp32 gradient at w + e, BatchNorm as on SAM's second pass (batch stats, running ones kept)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        torch._foreach_add_([p for p in m.parameters() if p.requires_grad], e)
    with frozen_bn([b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]):
        F.cross_entropy(m(x), y).backward()
    return flat([p.grad for p in m.parameters() if p.requires_grad])


def fidelity(model: nn.Module, x: Tensor, y: Tensor, modes: list[str], rho: float) -> dict[str, dict]:
    out, ref = {}, None
    for mode in ["fp32", *[m for m in modes if m != "fp32"]]:
        m = copy.deepcopy(model)
        opt, closure = sam_step(m, x, y, mode, rho, lr=0.0, capture=True)
        opt.step(closure)
        c = opt.captured
        g, g_s = flat(c["g"]), flat(c["g_s"])
        stats = grad_stats(**c)
        ref = ref or (g, g_s)
        sam_part = (ref[1] - ref[0]).norm()
        out[mode] = {
            "perturb_cos": float(stats["opt/perturb_cos"]),
            "norm_ratio": float(stats["opt/perturb_norm_ratio"]),
            "cos(gs-g)": cos(g_s - g, ref[1] - ref[0]),
            "err(gs)": float((g_s - ref[1]).norm() / sam_part),
            "err(pass)": float((g_s - fp32_grad_at(model, x, y, c["e"])).norm() / sam_part),
            "err(g)": float((g - ref[0]).norm() / sam_part),
        }
    return out


def timing(model: nn.Module, x: Tensor, y: Tensor, modes: list[str], rho: float, steps: int, repeats: int):
    """ms per SAM step of each mode in each round; modes interleaved within each round."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    runs = {}
    for mode in modes:
        m = copy.deepcopy(model)
        runs[mode] = sam_step(m, x, y, mode, rho, lr=0.01, capture=False)
        for _ in range(2):  # warm-up: state, allocator, cuDNN autotuning
            runs[mode][0].step(runs[mode][1])
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode, (opt, closure) in runs.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step(closure)
            sync()
            times[mode].append(1000 * (time.perf_counter() - t0) / steps)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--width", type=int, default=16, help="ResNet-18 base width (64 = full)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--data", default="digits", choices=["digits", "synthetic"])
    p.add_argument("--warmup-steps", type=int, default=0, help="fp32 SGD steps before measuring (0: at init)")
    p.add_argument("--modes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--batches", type=int, default=4, help="fidelity: mean over this many batches")
    p.add_argument("--steps", type=int, default=3, help="timed SAM steps per round (0: no timing)")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (median)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(
        "cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    torch.manual_seed(a.seed)
    if a.data == "digits":
        data = load_digits(
            val_size=0, subset=None, seed=a.seed, augment={"crop": 4, "flip": False, "cutout": 0}
        )
    else:
        data = load_synthetic(num_train=max(2, a.batch * 2))
    kw = dict(mean=data.mean, std=data.std, device=device, channels_last=True, seed=a.seed)
    batches = Batches(data.train, a.batch, augment=data.augment, shuffle=True, **kw)
    model = to_layout(resnet18(num_classes=data.num_classes, width=a.width), device, channels_last=True)
    model.train()
    stream = (b for epoch in range(1, 10**6) for b in batches.epoch(epoch))
    sgd = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(a.warmup_steps):
        sgd.step(batch_closure(model, sgd, *next(stream), F.cross_entropy))
    per_batch = [fidelity(model, *next(stream), a.modes, a.rho) for _ in range(a.batches)]
    fid = {m: {c: statistics.mean(f[m][c] for f in per_batch) for c in per_batch[0][m]} for m in per_batch[0]}
    x, y = next(stream)
    times = timing(model, x, y, a.modes, a.rho, a.steps, a.repeats) if a.steps else {}
    ms = {mode: statistics.median(t) for mode, t in times.items()}
    # ratios within each round (the load of a shared machine moves between rounds), then the median
    base = times.get("fp32")
    rel = {m: statistics.median(a / b for a, b in zip(t, base)) for m, t in times.items()} if base else {}
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"ResNet-18 width {a.width} ({params / 1e6:.2f}M parameters), {a.data}, batch {a.batch}, "
        f"rho {a.rho}, {a.warmup_steps} warm-up steps, fidelity: mean of {a.batches} batches; "
        f"{device.type} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    cols = ["perturb_cos", "norm_ratio", "cos(gs-g)", "err(gs)", "err(pass)", "err(g)"]
    print("| precision | " + " | ".join(cols) + " | ms/step | x fp32 |")
    print("|---|" + "---:|" * (len(cols) + 2))
    for mode in a.modes:
        row = [f"{fid[mode][c]:.4f}" for c in cols]
        t = ms.get(mode)
        row += [f"{t:.0f}" if t is not None else "-", f"{rel[mode]:.2f}" if mode in rel else "-"]
        print(f"| {mode} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
