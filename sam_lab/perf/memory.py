"""Peak memory of a training step: resident model + optimizer bytes and one step's transient peak.

Peak = resident (parameters, buffers, gradients, optimizer state, including any parameter-sized buffers the
optimizer keeps) + the step's transient peak (batch, activations, gradients, temporaries) of one step
started with gradients cleared. The transient peak is `torch.cuda.max_memory_allocated` minus the allocated
bytes before the step on CUDA, and the running sum of the CPU allocator's events recorded by
`torch.profiler(profile_memory=True)` on CPU. Datasets are not counted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn


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


# What the profiler's C++ code writes straight to file descriptor 2 on every CPU memory profile: kineto's
# "USDT: ... profiler_start" / "profiler_stop" lines and c10's "Memory block of unknown size was allocated
# before the profiling started" warning (a block freed in the step that was allocated before it).
PROFILER_CHATTER = ("] profiler_start", "] profiler_stop", "Memory block of unknown size")


@contextlib.contextmanager
def _without_profiler_chatter() -> Iterator[None]:
    """Capture file descriptor 2 while the profiler runs; pass on every line but PROFILER_CHATTER."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not any(c in line for c in PROFILER_CHATTER):
                    sys.stderr.write(line)


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of (bytes allocated - bytes freed) on the CPU allocator while `fn` runs, from profiler events.

    Frees of blocks allocated before `fn` are not recorded, so callers start from a clean state (e.g. with
    gradients set to None)."""
    from torch.profiler import ProfilerActivity, profile

    with _without_profiler_chatter(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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
