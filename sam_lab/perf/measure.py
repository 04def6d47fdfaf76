"""Benchmark timing: interleaved rounds over the runners, medians, per-round ratios, one row per config.

Timing. Every configuration runs `warmup` untimed steps, then `repeats` rounds; in each round every
configuration runs `steps` timed steps in turn (interleaved, so slow drifts of a shared machine hit all of
them alike). Per step we mark three instants: before asking for the batch, after getting it, after the step.
On CUDA the marks are events on the current stream (no host sync inside a round; one synchronize at its end),
so a phase's time is the device timeline between its marks; on CPU they are `time.perf_counter()`.
Figures are medians over rounds; ratios (SAM/SGD, reference/ours) are taken within a round, then the median.

Memory: `sam_lab.perf.memory`. Runners: `sam_lab.perf.runners`. Table: `sam_lab.perf.table`.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sam_lab.perf.memory import resident_bytes, step_peak_bytes
from sam_lab.perf.runners import Ours, Reference, Runner

EPOCH_IMAGES = 50_000  # CIFAR training set


# ---- timing --------------------------------------------------------------------------------------------
class Clock:
    """Host clock on CPU, CUDA events on the current stream on GPU; times in milliseconds."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


@dataclass
class Timings:
    """Per-round averages per step (ms)."""

    total: list[float] = field(default_factory=list)
    data: list[float] = field(default_factory=list)
    step: list[float] = field(default_factory=list)


def time_round(runner: Runner, steps: int, clock: Clock) -> tuple[float, float, float]:
    """(total, data, step) ms per step, averaged over `steps` consecutive steps."""
    marks = []
    start = clock.mark()
    for _ in range(steps):
        a = clock.mark()
        x, y = runner.next_batch()
        b = clock.mark()
        runner.step(x, y)
        marks.append((a, b, clock.mark()))
    end = clock.mark()
    clock.sync()
    data = sum(clock.ms(a, b) for a, b, _ in marks)
    step = sum(clock.ms(b, c) for _, b, c in marks)
    return clock.ms(start, end) / steps, data / steps, step / steps


# ---- the benchmark --------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    models: Sequence[str] = ("resnet18",)
    optimizers: Sequence[str] = ("sgd", "sam")
    width: int | None = None
    batch_size: int = 128
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    channels_last: bool = True
    steps: int = 10
    repeats: int = 5
    warmup: int = 3
    ref_workers: int = 0
    reference: bool = True
    grad_stats_every: int = 0
    images: int | None = None  # synthetic training images; None: batch_size * max(2, steps)
    extra: Sequence[str] = ()


def our_overrides(cfg: BenchConfig, model: str, optimizer: str) -> list[str]:
    n_train = cfg.images or cfg.batch_size * max(2, cfg.steps)  # cycling over batches, as an epoch does
    out = [
        f"model={model}",
        f"optimizer={optimizer}",
        "data=synthetic",
        f"data.num_train={n_train}",
        "data.val_size=0",
        "data.num_test=1",
        f"batch_size={cfg.batch_size}",
        f"device={cfg.device}",
        "logger=none",
        "trainer.progress=off",
        "trainer.checkpoint=false",
        f"trainer.precision={cfg.precision}",
        f"trainer.compile={str(cfg.compile).lower()}",
        f"trainer.channels_last={str(cfg.channels_last).lower()}",
        f"metrics.grad_stats_every={cfg.grad_stats_every}",
    ]
    if cfg.width is not None:
        out.append(f"model.width={cfg.width}")
    return out + list(cfg.extra)


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Build every (model, implementation, optimizer), time them interleaved, and return one row each."""
    runners: dict[tuple[str, str, str], Runner] = {}
    tmp = tempfile.TemporaryDirectory(prefix="sam_lab_bench_")
    for model in cfg.models:
        for opt in cfg.optimizers:
            ours = Ours(our_overrides(cfg, model, opt), Path(tmp.name) / f"{model}_{opt}")
            runners[(model, "ours", opt)] = ours
            if cfg.reference:
                sam = ours.optimizer.two_pass
                runners[(model, "reference", opt)] = Reference(ours, sam=sam, num_workers=cfg.ref_workers)
    device = next(iter(runners.values())).model.parameters().__next__().device  # where build() put it
    clock = Clock(device)
    for key, r in runners.items():
        log(f"warm-up {'/'.join(key)}")
        for _ in range(cfg.warmup):
            r.step(*r.next_batch())
        clock.sync()
    timings = {k: Timings() for k in runners}
    for i in range(cfg.repeats):
        for key, r in runners.items():
            total, data, step = time_round(r, cfg.steps, clock)
            t = timings[key]
            t.total.append(total), t.data.append(data), t.step.append(step)
        log(f"round {i + 1}/{cfg.repeats}")
    rows = []
    for key, r in runners.items():
        r.model.zero_grad(set_to_none=True)
        resident = resident_bytes(r.model, r.optimizer)
        transient = step_peak_bytes(lambda r=r: r.step(*r.next_batch()), device)
        t = timings[key]
        ms = _median(t.total)
        rows.append(
            {
                "model": key[0],
                "impl": key[1],
                "optimizer": key[2],
                "img_per_s": cfg.batch_size / ms * 1e3,
                "ms_per_step": ms,
                "noise_pct": 100 * (max(t.total) - min(t.total)) / 2 / ms,
                "data_ms": _median(t.data),
                "data_pct": 100 * _median([d / s for d, s in zip(t.data, t.total)]),
                "step_ms": _median(t.step),
                "s_per_epoch": ms * math.ceil(EPOCH_IMAGES / cfg.batch_size) / 1e3,
                "peak_mb": (resident + transient) / 2**20,
                "loss": r.mean_loss(),
                "_totals": t.total,
            }
        )
    _ratios(rows)
    tmp.cleanup()
    return rows


def _ratios(rows: list[dict[str, Any]]) -> None:
    """SAM/SGD step-time ratio and reference/ours speed-up, per round, then the median over rounds."""
    by = {(r["model"], r["impl"], r["optimizer"]): r for r in rows}
    for r in rows:
        base = by.get((r["model"], r["impl"], "sgd"))
        r["vs_sgd"] = (
            _median([a / b for a, b in zip(r["_totals"], base["_totals"])]) if base is not None else math.nan
        )
        ref = by.get((r["model"], "reference", r["optimizer"]))
        r["speedup"] = (
            _median([a / b for a, b in zip(ref["_totals"], r["_totals"])])
            if ref is not None and r["impl"] == "ours"
            else math.nan
        )
    for r in rows:
        del r["_totals"]
