"""What one sweep job may use of the machine: CPU threads and, under `submitit_local`, which GPU.

The launchers (`conf/hydra/launcher/submitit_{local,slurm}.yaml`) state the resources of a job
(`cpus_per_task`, `gpus_per_node`); this module makes the job keep to them from inside the job process, so
the same rule holds for local parallel jobs, SLURM jobs and plain runs:

- threads: `trainer.threads` if set, else the launcher's `cpus_per_task`, else `$SLURM_CPUS_PER_TASK`, else
  torch's default (all cores). Without a limit, N local jobs each start one thread per core and the machine
  runs N x cores threads on cores cores.
- GPU: submitit's local executor shows every job the same `gpus_per_node` devices; with several visible, job
  `k` trains on device `k mod count`, so `hydra.launcher.gpus_per_node=G hydra.sweeper.max_batch_size=G` runs
  G jobs at a time, one per GPU.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def silence_launcher_schema_warning() -> None:
    """Our `conf/hydra/launcher/submitit_*.yaml` share their names with the submitit plugin's structured
    configs, so Hydra validates them against those schemas (what we want: a misspelled key is refused) and
    warns that such name matching is deprecated. Each file sets every key and `_target_` itself, so it keeps
    working where Hydra drops the matching; the warning says nothing actionable and is silenced here only."""
    warnings.filterwarnings(
        "ignore",
        message=r"\s*'hydra/launcher/submitit_(local|slurm)' is validated against ConfigStore schema",
    )


def _launcher_value(key: str) -> object | None:
    if not HydraConfig.initialized():
        return None
    return OmegaConf.select(HydraConfig.get(), f"launcher.{key}", default=None)


def job_threads(setting: int | None) -> int | None:
    """The number of CPU threads this job should use (None: leave torch's default)."""
    if setting is not None:
        return int(setting)
    cpus = _launcher_value("cpus_per_task")
    if cpus is not None:
        return int(cpus)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(slurm) if slurm and slurm.isdigit() else None


def limit_threads(setting: int | None) -> int | None:
    """Apply `job_threads` to torch (intra-op pool) and to the environment of any child process."""
    n = job_threads(setting)
    if n is not None and n >= 1:
        torch.set_num_threads(n)
        for var in THREAD_ENV:
            os.environ[var] = str(n)
        log.info("CPU threads: %d", n)
    return n


def local_job_cuda_index() -> int | None:
    """Under submitit's local executor with several visible GPUs: `hydra.job.num mod count`; else None."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or not HydraConfig.initialized():
        return None
    count = torch.cuda.device_count()
    num = OmegaConf.select(HydraConfig.get(), "job.num", default=None)
    if count < 2 or num is None:
        return None
    return int(num) % count
