"""Benchmark mechanics: runners for our trainer and the reference loop, interleaved timing, peak memory.

Timing. Every configuration runs `warmup` untimed steps, then `repeats` rounds; in each round every
configuration runs `steps` timed steps in turn (interleaved, so slow drifts of a shared machine hit all of
them alike). Per step we mark three instants: before asking for the batch, after getting it, after the step.
On CUDA the marks are events on the current stream (no host sync inside a round; one synchronize at its end),
so a phase's time is the device timeline between its marks; on CPU they are `time.perf_counter()`.
Figures are medians over rounds; ratios (SAM/SGD, reference/ours) are taken within a round, then the median.

Memory. Peak = resident (parameters, buffers, gradients, optimizer state, including any parameter-sized
buffers the optimizer keeps) + the step's transient peak (batch, activations, gradients, temporaries) of one
step started with gradients cleared. The transient peak is `torch.cuda.max_memory_allocated` minus the
allocated bytes before the step on CUDA, and the running sum of the CPU allocator's events recorded by
`torch.profiler(profile_memory=True)` on CPU. Datasets are not counted (ours keeps the uint8 set on the
device).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sam_lab.perf.reference import ReferenceLoop

CONF = Path(__file__).resolve().parents[2] / "conf"
EPOCH_IMAGES = 50_000  # CIFAR training set


# ---- memory ----------------------------------------------------------------------------------------
def _tensors(obj: Any, depth: int = 0) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif depth > 4:
        return
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(k, depth + 1)
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, torch.optim.Optimizer):
        yield from _tensors(vars(obj), depth + 1)


def resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of distinct storages held by the model (params, buffers, grads) and the optimizer (all state)."""
    seen: dict[int, int] = {}
    tensors = [
        *model.parameters(),
        *model.buffers(),
        *(p.grad for p in model.parameters() if p.grad is not None),
    ]
    for t in [*tensors, *_tensors(vars(optimizer))]:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of (bytes allocated - bytes freed) on the CPU allocator while `fn` runs, from profiler events.

    Frees of blocks allocated before `fn` are not recorded, so callers start from a clean state (e.g. with
    gradients set to None)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type() == torch.autograd.DeviceType.CPU:
            current += e.nbytes()
            peak = max(peak, current)
    return peak


def step_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Transient peak bytes of one call of `fn` on `device`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return cpu_peak_bytes(fn)


# ---- runners -----------------------------------------------------------------------------------------
class Runner:
    """A named training configuration: `next_batch()` then `step(x, y)`, as a training loop does them."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def next_batch(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def step(self, x: Tensor, y: Tensor) -> Any:
        raise NotImplementedError

    def mean_loss(self) -> float:
        raise NotImplementedError


class Ours(Runner):
    """sam_lab's own path: `sam_lab.train.build` (the Trainer of `python -m sam_lab.train`), its device
    `Batches` and `Trainer.train_step` — the code a training run executes, not a copy of it."""

    def __init__(self, overrides: Sequence[str], run_dir: Path) -> None:
        from hydra import compose, initialize_config_dir

        from sam_lab.engine import Sums
        from sam_lab.train import build

        with initialize_config_dir(str(CONF), version_base="1.3"):
            self.cfg = compose("train", overrides=list(overrides))
        self.trainer = build(self.cfg, run_dir)
        self.model, self.optimizer = self.trainer.model, self.trainer.optimizer
        self.sums, self.i = Sums(self.trainer.device), 0
        self._batches = self._stream()

    def _stream(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = 0
        while True:
            epoch += 1
            yield from self.trainer.train_batches.epoch(epoch)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        return next(self._batches)

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        self.model.train()
        loss = self.trainer.train_step(x, y, self.i, self.sums)
        self.i += 1
        return loss

    def mean_loss(self) -> float:
        return self.sums.means()["train/loss"]


class Reference(Runner):
    """The conventional loop of `sam_lab.perf.reference` on the same model config, data and device."""

    def __init__(self, ours: Ours, sam: bool, num_workers: int) -> None:
        from hydra.utils import instantiate

        cfg, data = ours.cfg, ours.trainer.data
        torch.manual_seed(cfg.seed)
        model = instantiate(cfg.model, num_classes=data.num_classes)
        self.loop = ReferenceLoop(
            model,
            data.train.images,
            data.train.labels,
            data.mean,
            data.std,
            cfg.batch_size,
            ours.trainer.device,
            sam=sam,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            rho=cfg.rho,
            num_workers=num_workers,
            seed=cfg.seed,
        )
        self.model, self.optimizer = self.loop.model, self.loop.optimizer
        self._batches = self.loop.batches()

    def next_batch(self) -> tuple[Tensor, Tensor]:
        return next(self._batches)

    def step(self, x: Tensor, y: Tensor) -> float:
        return self.loop.step(x, y)

    def mean_loss(self) -> float:
        return self.loop.loss_sum / max(1, self.loop.seen)


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


COLUMNS = [
    ("model", "model", "{}"),
    ("impl", "impl", "{}"),
    ("optimizer", "opt", "{}"),
    ("img_per_s", "img/s", "{:.0f}"),
    ("ms_per_step", "ms/step", "{:.1f}"),
    ("noise_pct", "+-%", "{:.1f}"),
    ("vs_sgd", "x SGD", "{:.2f}"),
    ("data_ms", "data ms", "{:.2f}"),
    ("data_pct", "data %", "{:.2f}"),
    ("step_ms", "step ms", "{:.1f}"),
    ("s_per_epoch", "s/epoch(50k)", "{:.1f}"),
    ("peak_mb", "peak MB", "{:.1f}"),
    ("speedup", "speed-up", "{:.2f}"),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with the columns of COLUMNS; NaN prints as '-'."""

    def cell(fmt: str, v: Any) -> str:
        return "-" if isinstance(v, float) and math.isnan(v) else fmt.format(v)

    body = [[cell(fmt, r[k]) for k, _, fmt in COLUMNS] for r in rows]
    head = [h for _, h, _ in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])
