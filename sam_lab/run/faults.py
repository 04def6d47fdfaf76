"""What stops a run early, kept out of the training loop: preemption signals, Ctrl-C, non-finite losses,
and the test-only fault injection that proves a killed run resumes exactly.

Preemption. SIGTERM (what SLURM and most schedulers send before killing a job), SIGUSR1, and submitit's own
preemption signal (`$SUBMITIT_PREEMPT_SIGNAL`, USR2 by default) only set a flag; the trainer checks it at
every step boundary, writes a checkpoint that includes the position inside the epoch, and calls `handoff`:
under submitit that runs submitit's own handler, which requeues the job (the local executor exits with 144,
SLURM gets `scontrol requeue`) and the requeued job resumes by itself (`resume=auto`); elsewhere the process
exits with `EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again") for a wrapper script to requeue. Ctrl-C (SIGINT)
does the same and exits with 130, never requeued; a second Ctrl-C stops at once (KeyboardInterrupt). After
training, the final evaluation and sharpness check the flag before every forward pass of the model
(`interruptible`), so a signal there hands off within one Hessian-vector product, not after all of them.

Non-finite losses. The step loop never waits for the device, so a NaN is found there: `NonfiniteGuard` keeps
the index of the first non-finite step in a device tensor and the trainer reads it at the syncs it already
makes (end of epoch, progress bar, checkpoint). `stop` ends the run (`Diverged`); `skip` undoes such steps
on the device.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: the run stopped cleanly after a checkpoint; run it again
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_DIVERGED = 3


class Preempted(BaseException):  # noqa: N818 - like KeyboardInterrupt: no `except Exception` may swallow it
    """A preemption signal came during the final evaluation: stop it and hand off."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, global_step: int, value: float, checkpoint: str | None) -> None:
        self.epoch, self.step, self.global_step, self.value = epoch, step, global_step, value
        self.checkpoint = checkpoint
        kept = (
            f"the last good checkpoint {checkpoint} is kept"
            if checkpoint
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"training diverged: the loss became {value} at epoch {epoch}, step {step} (global step "
            f"{global_step}); {kept} and summary.json has status: diverged. Lower lr or rho, or set "
            f"trainer.on_nonfinite=skip to skip such steps"
        )


# ---- preemption ---------------------------------------------------------------------------------------


def _submitit_signal() -> int | None:
    """The signal submitit requeues on, if this process is a submitit job (submitit is then imported)."""
    submitit = sys.modules.get("submitit")
    if submitit is None or not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return submitit.JobEnvironment._usr_sig()


class Preemption:
    """`with Preemption():` turns SIGTERM / SIGUSR1 / submitit's signal into a flag (`requested`).

    The handler does nothing else: writing a checkpoint from inside a signal handler could interrupt a
    half-done optimizer step. Handlers are installed only in the main thread (Python's rule) and the previous
    ones are restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self.hint = "resume=auto continues the run"  # how to continue; set by sam_lab.train.run

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"

    def __enter__(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            return self
        sigs = {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT} | ({s} if (s := _submitit_signal()) else set())
        for s in sigs:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:  # a second Ctrl-C: the user does not want to wait for the checkpoint
            raise KeyboardInterrupt

    def handoff(self, where: str) -> NoReturn:
        """After the checkpoint: let submitit requeue the job, or exit with EXIT_PREEMPTED (Ctrl-C: 130)."""
        if self.signum == signal.SIGINT:
            print(
                f"interrupted by Ctrl-C (SIGINT) {where}: checkpoint written; exiting with status "
                f"{EXIT_INTERRUPTED} ({self.hint})",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(EXIT_INTERRUPTED)
        usr = _submitit_signal()
        requeue = self._previous.get(usr) if usr is not None else None
        print(
            f"preempted by {self.name} {where}: checkpoint written; "
            + (
                "submitit requeues the job (resume=auto continues the run)"
                if callable(requeue)
                else f"exiting with status {EXIT_PREEMPTED} ({self.hint})"
            ),
            file=sys.stderr,
            flush=True,
        )
        if callable(requeue):
            requeue(usr, None)  # submitit's checkpoint_and_try_requeue: pickles the job, requeues, exits
        raise SystemExit(EXIT_PREEMPTED)

    @contextlib.contextmanager
    def interruptible(self, model_type: type) -> Iterator[None]:
        """Raise `Preempted` at the next forward pass of a `model_type` model once a signal has come (a
        global forward pre-hook: it also sees the deep copies the final metrics make)."""
        count = 0

        def hook(module: nn.Module, args: Any) -> None:
            nonlocal count
            if type(module) is model_type:
                count += 1
                inject("final", count)
                if self.requested:
                    raise Preempted

        handle = nn.modules.module.register_module_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()


# ---- non-finite losses --------------------------------------------------------------------------------


class NonfiniteGuard:
    """First non-finite training loss, tracked on the device; `skip` mode also undoes that step.

    first = global index of the first step whose loss is not finite (-1 while none), updated per step with
    `torch.where`, so no host sync. `skip` snapshots every tensor a step changes (weights, BatchNorm buffers,
    optimizer state, the epoch's metric sums) and afterwards keeps the old values where the loss was not
    finite; state the bad step created (e.g. the first momentum buffer) is zeroed, which for SGD momentum
    equals not having it. The snapshot costs one copy of that state per step, so it is opt-in.
    """

    def __init__(self, mode: str, steps_per_epoch: int, device: torch.device) -> None:
        self.mode, self.steps_per_epoch = mode, steps_per_epoch
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.first_value = torch.zeros((), device=device)
        self._saved: dict[int, Tensor] = {}

    @staticmethod
    def _state(model: nn.Module, optimizer: torch.optim.Optimizer, sums: Any) -> list[Tensor]:
        tensors = list(model.state_dict(keep_vars=True).values())
        tensors += [v for st in optimizer.state.values() for v in st.values() if isinstance(v, Tensor)]
        return tensors + list(sums.sums.values()) + list(sums.counts.values())

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, sums: Any) -> None:
        if self.mode == "skip":
            with torch.no_grad():
                self._saved = {id(t): t.detach().clone() for t in self._state(model, optimizer, sums)}

    def after_step(
        self, loss: Tensor, global_step: int, model: nn.Module, optimizer: torch.optim.Optimizer, sums: Any
    ) -> None:
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss)
        if self.mode == "skip":  # a NaN in a perturbed (second) pass leaves the loss finite, not the weights
            bad |= ~torch.isfinite(torch.stack(torch._foreach_norm(list(model.parameters()))).sum())
        new = bad & (self.first < 0)
        self.first = torch.where(new, global_step, self.first)
        self.first_value = torch.where(new, loss, self.first_value)
        if self.mode != "skip":
            return
        with torch.no_grad():
            for t in self._state(model, optimizer, sums):
                old = self._saved.get(id(t))
                t.copy_(torch.where(bad, old, t) if old is not None else t.masked_fill(bad, 0))
        self._saved = {}
        sums.add("train/skipped_steps", bad.float() * self.steps_per_epoch, 1.0)  # mean = count per epoch

    def check(self, checkpoint: str | None) -> None:
        """Raise Diverged if a step had a non-finite loss (a host sync: call where one happens anyway)."""
        if self.mode == "skip":
            return
        first = int(self.first)
        if first >= 0:
            epoch, step = divmod(max(first - 1, 0), self.steps_per_epoch)  # global steps count from 1
            raise Diverged(epoch + 1, step + 1, first, float(self.first_value), checkpoint)


# ---- test-only fault injection ------------------------------------------------------------------------

FAULT_ENV = "SAM_LAB_FAULT"


@functools.lru_cache(maxsize=4)
def _plan(spec: str) -> dict[tuple[int | None, str, int], list[str]]:
    plan: dict[tuple[int | None, str, int], list[str]] = {}
    for item in filter(None, spec.split(",")):
        job, _, item = item.rpartition("@")
        point, index, *action = item.split(":")
        key = (int(job) if job else None, point, int(index))
        plan.setdefault(key, []).append(action[0] if action else "KILL")
    return plan


def _job_num() -> int | None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    return OmegaConf.select(HydraConfig.get(), "job.num", default=None)


def inject(point: str, index: int) -> None:
    """TEST-ONLY fault injection: `SAM_LAB_FAULT="[<job>@]<point>:<index>[:<ACTION>],..."` makes this very
    process meet ACTION when it reaches `point` with `index` (in sweep job number `job` only, if given):
    a signal name (default KILL) is sent to the process, an errno name (ENOSPC) is raised as OSError.

      step:<g>        after global step g (1-based, counted from the start of training)
      eval:<e>        during the evaluation of epoch e (after the validation set, before the test set)
      checkpoint:<e>  while writing the checkpoint after epoch e (the temporary file is written, not renamed)
      metrics:<e>     while appending epoch e to metrics.jsonl (the line is written, not yet synced)
      summary:1       while writing summary.json
      start:1         while writing the run directory's bookkeeping at the start (.claim, .hydra/)
      final:<n>       before the n-th forward pass of the model in the final evaluation and sharpness

    e.g. `step:6` kills the run mid-epoch, `step:5:TERM` preempts it, `1@step:5:TERM` preempts sweep job 1,
    `checkpoint:2:ENOSPC` fails epoch 2's checkpoint as a full disk would; an item given twice acts twice.
    Unset (the normal case) this is one dictionary lookup.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    plan, job = _plan(spec), _job_num()
    actions = plan.get((None, point, index), []) + (
        plan.get((job, point, index), []) if job is not None else []
    )
    for action in actions:
        log.warning("%s: %s at %s %d", FAULT_ENV, action, point, index)
        if action.startswith("E"):
            code = getattr(errno, action)
            raise OSError(code, os.strerror(code))
        os.kill(os.getpid(), signal.Signals["SIG" + action])
