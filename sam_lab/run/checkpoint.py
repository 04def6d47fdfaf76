"""`checkpoints/last.pt`: written atomically, read once, and checked against the run that loads it.

A checkpoint holds the trainer's `state_dict()` (model, optimizer, scheduler, epoch, best-val weights, RNG,
the resolved config, the position inside an epoch for a preemption checkpoint) and the metrics history of
the epochs it has seen, from which a missing or damaged `metrics.jsonl` is rebuilt. It is read with
`weights_only=True`: tensors and plain containers only, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from sam_lab.ranges import ConfigError
from sam_lab.run.files import atomic, read_records

if TYPE_CHECKING:
    from sam_lab.engine import Trainer

PATH = Path("checkpoints") / "last.pt"


class CheckpointMismatch(ConfigError):
    """Resuming from a checkpoint of a different model, optimizer or configuration."""


class CheckpointUnreadable(CheckpointMismatch):
    """The checkpoint exists but cannot be read."""


def read(path: Path, advice: str | None = None) -> dict[str, Any]:
    """Load a checkpoint on the CPU (mmap: tensors are read from disk only when touched). Every checkpoint
    load goes through here (resume, `init_from`, `python -m sam_lab.evaluate`); `advice` ends the message."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - zip, pickle, EOF and OS errors all mean "damaged"
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
        advice = advice or f"restore a copy, or delete {path.parent.parent} to start the run over"
        raise CheckpointUnreadable(
            f"cannot read checkpoint {path} ({type(err).__name__}: {first}): the file is damaged or not a "
            f"sam_lab checkpoint; {advice}"
        ) from err


def save(path: Path, state: dict[str, Any], epoch: int) -> None:
    """Atomic: a crash leaves either the old or the new file, never half of one; a failed write (disk full)
    leaves the old file and no temporary one, and raises OutputError naming the path."""
    with atomic(path, "checkpoint", epoch) as f:
        torch.save(state, f)


def load_weights(path: Path, model: torch.nn.Module, state: dict[str, Any], optimizer=None) -> None:
    """Load model (and optimizer) state from a checkpoint read by `read`, or say in one line why it does
    not fit this run (same classes, other shapes, e.g. another `model.width`)."""
    mine = (type(model).__name__, type(optimizer).__name__ if optimizer is not None else None)
    theirs = (state.get("model_class"), state.get("optimizer_class") if optimizer is not None else None)
    if mine != theirs:
        raise CheckpointMismatch(
            f"checkpoint {path} was written by model {theirs[0]}"
            + (f" with optimizer {theirs[1]}" if optimizer is not None else "")
            + f"; this run has model {mine[0]}"
            + (f" with optimizer {mine[1]}" if optimizer is not None else "")
        )
    try:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointMismatch(
            f"checkpoint {path} does not fit this run's {' / '.join(filter(None, mine))}: "
            + str(err).strip().splitlines()[0]
        ) from err


def state_of(trainer: Trainer, position: dict | None = None, seconds: float = 0.0) -> dict[str, Any]:
    """Everything a resume needs. `position` (epoch, step, lr at the epoch start, the epoch's metric sums)
    marks a checkpoint taken inside an epoch; `seconds` is the time already spent in that epoch."""
    return {
        "epoch": trainer.epoch,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "best": trainer.best,
        "elapsed": trainer.elapsed + seconds,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "logger_run_id": getattr(trainer.logger, "run_id", None),
        "position": position,
        "config": OmegaConf.to_container(trainer.cfg, resolve=True, enum_to_str=True),
        "model_class": type(trainer.model).__name__,
        "optimizer_class": type(trainer.optimizer).__name__,
        "history": [r for r in read_records(trainer.metrics_path)[0] if r.get("epoch", 0) <= trainer.epoch],
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
    }


def restore(trainer: Trainer, state: dict[str, Any]) -> None:
    """Continue `trainer` from a checkpoint read (once) by `read`."""
    load_weights(trainer.ckpt_path, trainer.model, state, trainer.optimizer)
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.epoch, trainer.best, trainer.elapsed = state["epoch"], state["best"], state["elapsed"]
    if trainer.best["state"] is not None:  # off the checkpoint's memory map, onto the device
        trainer.best["state"] = {k: v.to(trainer.device, copy=True) for k, v in trainer.best["state"].items()}
    trainer.position = state.get("position")
    if trainer.ema is not None:
        trainer.ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng_cpu"].clone())
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.clone() for s in state["rng_cuda"]])


def history(state: dict[str, Any], metrics_path: Path) -> list[dict]:
    """The metrics records of the epochs a checkpoint has seen (what metrics.jsonl must hold on resume); a
    checkpoint from before the history was stored: the readable lines of the file up to its epoch."""
    if "history" in state:
        return list(state["history"])
    return [r for r in read_records(metrics_path)[0] if r.get("epoch", 0) <= state["epoch"]]


def init_from(trainer: Trainer, path: Path, state: dict[str, Any]) -> None:
    """`init_from=<checkpoint>`: a new run starts from that checkpoint's model weights (read by `read`);
    optimizer, scheduler and epoch start fresh, and the weight average (if any) starts from these weights."""
    load_weights(path, trainer.model, state)
    if trainer.ema is not None:
        trainer.ema = type(trainer.ema)(trainer.model, trainer.cfg.trainer.ema_decay)
