"""What a sweep adds around its jobs: one line per finished job, and each job's share of the machine.

- `JobLineCallback` (`hydra.callbacks` in conf/train.yaml) prints `sweep job <n> finished: test/acc ...
  sharpness/lambda_max ...  <run dir>` when a job ends. Jobs of the basic launcher run in this process, so the
  line comes as each one ends; `submitit_*` jobs run elsewhere (their output goes to `.submitit/` logs), so
  the same lines are printed from their summary.json files when the sweep ends.
- Resolvers for `conf/hydra/launcher/submitit_local.yaml`: `${sam_lab.cpus_per_job:N}` = the cores this
  process may use divided by N jobs at a time (at least 1; 1 when N is null: Hydra then starts every job at
  once and the count is unknown), so jobs x threads <= cores; `${sam_lab.gpus:}` = the GPUs torch sees
  (0 on a machine without GPUs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


def cpus_per_job(jobs_at_once: int | None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(jobs_at_once)) if jobs_at_once else 1


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def register_resolvers() -> None:
    for name, fn in {"sam_lab.cpus_per_job": cpus_per_job, "sam_lab.gpus": visible_gpus}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def job_line(num: Any, run_dir: Path) -> str:
    """`sweep job <num> <status>: test/acc ... sharpness/lambda_max ...  <run dir>` from its summary.json."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return f"sweep job {num}: no summary.json (failed, killed or still running)  {run_dir}"
    keys = ("test/acc", "best_val/test_acc", "sharpness/lambda_max")
    shown = "  ".join(f"{k} {summary[k]:.4g}" for k in keys if isinstance(summary.get(k), int | float))
    return f"sweep job {num} {summary.get('status', '?')}: {shown}  {run_dir}"


class JobLineCallback(Callback):
    """One line per finished sweep job (see the module docstring)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and job_return.status == JobStatus.COMPLETED:
            print(job_line(config.hydra.job.num, Path(config.hydra.runtime.output_dir)), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if "submitit" not in str(OmegaConf.select(config, "hydra.launcher._target_", default="")):
            return  # the basic launcher's jobs have printed their lines already
        jobs = [d for d in Path(str(config.hydra.sweep.dir)).iterdir() if (d / ".hydra").is_dir()]
        for d in sorted(jobs, key=lambda d: (len(d.name.split("_")[0]), d.name)):
            print(job_line(d.name.split("_")[0], d), flush=True)
