"""Hydra entry point: `python -m sam_lab.train [overrides]`, `-m` for sweeps.

Composes data, model, optimizer, scheduler and logger from `conf/`, builds them with `_target_`, and hands
them to `engine.Trainer`. Everything a run writes goes under its Hydra run directory.
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
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sam_lab.config import ConfigError, register, validate
from sam_lab.data import DataError
from sam_lab.engine import CheckpointMismatch, Options, Trainer, progress_enabled
from sam_lab.metrics.sharpness import Sharpness

log = logging.getLogger("sam_lab.train")
USER_ERRORS = (ConfigError, DataError, CheckpointMismatch)
register()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available: use device=auto or device=cpu")
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
    device = resolve_device(str(cfg.device.value if hasattr(cfg.device, "value") else cfg.device))
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    precision = str(cfg.trainer.precision)
    precision = ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision

    data = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, num_classes=data.num_classes)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    scheduler = instantiate(cfg.scheduler)(
        optimizer, total_steps=cfg.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch
    )
    opts = Options(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        precision=precision,
        channels_last=cfg.trainer.channels_last and device.type == "cuda",
        compile=cfg.trainer.compile,
        eval_batch_size=cfg.trainer.eval_batch_size,
        label_smoothing=cfg.trainer.label_smoothing,
        progress=progress_enabled(str(cfg.trainer.progress)),
        checkpoint=cfg.trainer.checkpoint,
        grad_stats_every=cfg.metrics.grad_stats_every,
        probe_sam_every=cfg.metrics.probe_sam_every,
        extra_summary={
            "config": choices or {},
            "git_commit": git_commit(),
            "device": str(device),
            "precision": precision,
            "seed": cfg.seed,
            "rho": cfg.rho,
        },
    )
    sharp = OmegaConf.to_container(cfg.metrics.sharpness, resolve=True, enum_to_str=True)
    return Trainer(
        model,
        optimizer,
        scheduler,
        data,
        device,
        run_dir,
        opts,
        logger=instantiate(cfg.logger),
        sharpness=Sharpness(**sharp) if sharp["enabled"] else None,
    )


def run(cfg: DictConfig, run_dir: Path, choices: dict | None = None) -> dict[str, Any]:
    """Train one run into `run_dir` and return its summary."""
    trainer = build(cfg, run_dir, choices)
    run_id = None
    if cfg.resume and trainer.ckpt_path.exists():
        trainer.load_checkpoint()
        run_id = torch.load(trainer.ckpt_path, map_location="cpu", weights_only=False)["logger_run_id"]
        log.info("resumed from %s after epoch %d", trainer.ckpt_path, trainer.epoch)
    elif cfg.resume:
        log.info("resume=true but no checkpoint at %s: starting from scratch", trainer.ckpt_path)
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer.logger.start(config=config, run_dir=run_dir, name=run_dir.name, run_id=run_id)
    try:
        summary = trainer.fit()
    finally:
        trainer.logger.finish()
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        summary = run(cfg, run_dir, dict(hc.runtime.choices))
    except (*USER_ERRORS, InstantiationException) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if not isinstance(cause, USER_ERRORS) or hc.mode == RunMode.MULTIRUN:
            raise  # a bug (full traceback), or a sweep job: the sweep records it and goes on with the others
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)
    acc, best = summary.get("test/acc"), summary.get("best_val/test_acc")
    print(f"final test accuracy: {acc:.4f} (best-val checkpoint: {best:.4f})  run dir: {run_dir}")
    return acc


if __name__ == "__main__":
    main()
