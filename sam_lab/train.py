"""Hydra entry point: `python -m sam_lab.train [overrides]`, `-m` for sweeps.

Composes data, model, optimizer, scheduler and logger from `conf/`, builds them with `_target_`, and hands
them to `engine.Trainer`; `sam_lab.run` prepares the run directory. Everything a run writes goes under
its Hydra run directory.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sam_lab.config import ConfigError, precision, register, validate, value_of
from sam_lab.config_groups import check_built
from sam_lab.data import DataError
from sam_lab.engine import Trainer
from sam_lab.run import checkpoint, loggers, rundir, summary
from sam_lab.run.checkpoint import CheckpointMismatch, CheckpointUnreadable
from sam_lab.run.claim import Claim
from sam_lab.run.faults import EXIT_DIVERGED, EXIT_INTERRUPTED, Diverged
from sam_lab.run.files import EXIT_OUTPUT, OutputError, read_jsonl
from sam_lab.run.launch import limit_threads, local_job_cuda_index, silence_launcher_schema_warning

log = logging.getLogger("sam_lab.train")
USER_ERRORS = (ConfigError, DataError, CheckpointMismatch)
# absolute, so that the same when this file runs as `__main__` and when it is imported as `sam_lab.train`
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
register()
silence_launcher_schema_warning()


class JobFailed(CompactHydraException):
    """A sweep job's user error: Hydra prints the job's overrides and this one message, no traceback."""


def user_facing(err: Exception, run_dir: Path) -> tuple[str, int] | None:
    """(message, exit status) for errors the user can fix or must know about; None for bugs (traceback)."""
    cause = err.__cause__ if isinstance(err, InstantiationException) else err
    if isinstance(cause, USER_ERRORS):
        return str(cause), 1
    if isinstance(err, InstantiationException) and isinstance(cause, TypeError):  # arguments of a _target_
        return " ".join(line.strip() for line in str(err).splitlines()), 1
    if isinstance(err, Diverged):
        return str(err), EXIT_DIVERGED
    if isinstance(err, OutputError):  # disk full, quota, read-only: nothing half-written was kept
        how = rundir.continue_hint(run_dir)
        return f"{err}; nothing half-written was kept: make room, then {how}", EXIT_OUTPUT
    return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available: use device=auto or device=cpu")
    index = local_job_cuda_index() if name == "cuda" else None
    if index is not None:  # a submitit_local job that sees several GPUs: one GPU per job
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def build(cfg: DictConfig, run_dir: Path, choices: dict | None = None) -> Trainer:
    """Everything a run needs, from a composed config."""
    validate(cfg)
    limit_threads(cfg.trainer.threads)
    device = resolve_device(value_of(cfg.device))
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: CUDA ops without a deterministic kernel (AdaptiveAvgPool2d's backward, per torch's docs) warn
    # instead of stopping the run (README: Determinism). Also switched off again for a later in-process run.
    torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic

    data = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, num_classes=data.num_classes)
    check_built(cfg, len(data.train), sum(p.numel() for p in model.parameters() if p.requires_grad))
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    scheduler = instantiate(cfg.scheduler)(
        optimizer, total_steps=cfg.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch
    )
    extra = {"config": choices or {}, "git_commit": git_commit(), "device": str(device)}
    extra.update({"precision": precision(cfg, device), "seed": cfg.seed, "rho": cfg.rho})
    extra["init_from"] = str(Path(cfg.init_from).resolve()) if cfg.init_from else None
    return Trainer(model, optimizer, scheduler, data, device, run_dir, cfg, instantiate(cfg.logger), extra)


def run(cfg: DictConfig, run_dir: Path, choices: dict | None = None) -> dict[str, Any]:
    """Train one run into `run_dir` (new, or resumed as `resume` says: sam_lab.run.rundir); its summary.
    Holds the run directory's lock throughout; writes nothing there until every check has passed."""
    run_dir = Path(run_dir)
    validate(cfg)
    # init_from: read (tensors only) before anything is written; a resume takes its own checkpoint's weights
    init = read_init(cfg.init_from) if cfg.init_from and not (run_dir / checkpoint.PATH).exists() else None
    with Claim(run_dir) as claim:
        plan = rundir.prepare(cfg, run_dir)
        if plan.finished is not None:
            rundir.repair_finished(run_dir, plan)
            log.info("%s already holds the finished run: nothing to do", run_dir)
            return plan.finished
        trainer = build(cfg, run_dir, choices)
        if plan.resume:
            checkpoint.restore(trainer, plan.state)
        elif init is not None:
            checkpoint.init_from(trainer, Path(cfg.init_from), init)
        rundir.commit(cfg, run_dir, plan, claim)
        return _train(trainer, cfg, run_dir, plan, choices)


def _train(
    trainer: Trainer, cfg: DictConfig, run_dir: Path, plan: rundir.Plan, choices: dict | None = None
) -> dict[str, Any]:
    run_id = None
    if plan.resume:
        run_id = plan.state["logger_run_id"]
        where = f", step {trainer.position['step']} of epoch {trainer.epoch + 1}" if trainer.position else ""
        log.info("resumed from %s after epoch %d%s", trainer.ckpt_path, trainer.epoch, where)
    elif cfg.init_from:
        log.info("model weights from init_from=%s; optimizer state fresh", cfg.init_from)
    trainer.preemption.hint = rundir.continue_hint(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer.logger.start(run_dir=run_dir, run_id=run_id, **loggers.run_identity(config, choices, run_dir))
    if plan.resume:  # epochs W&B lost when the previous process was killed
        trainer.logger.backfill(read_jsonl(trainer.metrics_path))
    try:
        with trainer.preemption:  # SIGTERM/SIGUSR1: checkpoint at the next step, then exit for a requeue
            result = trainer.fit()
    except Diverged as err:
        summary.diverged(trainer, err)
        raise
    finally:
        trainer.logger.finish()
    return result


def read_init(path: str) -> dict[str, Any]:
    """The checkpoint `init_from` names, read before anything is written (tensors only, never code)."""
    if not Path(path).is_file():
        raise CheckpointUnreadable(f"init_from={path}: no such file (give a run's checkpoints/last.pt)")
    return checkpoint.read(
        Path(path), advice=f"init_from={path} must be a checkpoints/last.pt that sam_lab wrote"
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        result = run(cfg, run_dir, dict(hc.runtime.choices))
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print(f"error: stopped by Ctrl-C; {rundir.continue_hint(run_dir)}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:
        known = user_facing(err, run_dir)
        if known is None:
            raise  # a bug: full traceback
        if hc.mode == RunMode.MULTIRUN:  # the sweep goes on with the other jobs, then names this one
            raise JobFailed(f"error: {known[0]}") from err
        print(f"error: {known[0]}", file=sys.stderr)
        sys.exit(known[1])
    acc, best = result.get("test/acc"), result.get("best_val/test_acc")
    shown = [f"{x:.4f}" if isinstance(x, int | float) else "n/a" for x in (acc, best)]
    lam = result.get("sharpness/lambda_max")
    sharp = f"  sharpness/lambda_max: {lam:.4g}" if isinstance(lam, int | float) else ""
    if hc.mode != RunMode.MULTIRUN:  # a sweep prints one line per job instead (sam_lab/run/sweep.py)
        print(f"final test accuracy: {shown[0]} (best-val checkpoint: {shown[1]}){sharp}  run dir: {run_dir}")
    return acc


if __name__ == "__main__":
    # Call the function of the importable module `sam_lab.train`, not of `__main__`: the submitit launchers
    # pickle the task function, and a function of `__main__` would be pickled by value with its globals.
    from sam_lab.train import main as _main

    _main()
