"""One run directory holds one run, and nothing that fails damages it.

Before anything is written, `prepare` decides what a start means for the directory:

  resume=auto (default)  continue from checkpoints/last.pt if there is one, else start a new run;
  resume=true            continue; refuse if there is no checkpoint;
  resume=false           start a new run; refuse if the directory already holds one.

A new run claims the directory by creating `.claim` exclusively (O_EXCL), so two processes given the same
directory cannot both start in it: the second fails loudly. A claim whose process has ended (checked on the
same host) is taken over, so a start that failed before its first checkpoint does not block the directory.
A resume first checks that the checkpoint is readable and was written with the same configuration
(`MAY_CHANGE_ON_RESUME` lists what may differ), so a typo while resuming ends with one message and leaves
the run as it was. Hydra's own `.hydra/` writing is switched off (`hydra.output_subdir: null` in
conf/train.yaml) because Hydra writes before any check; `prepare` writes the same three files once the checks
have passed. `RunDirCallback` refuses an output directory that cannot be written before Hydra tries, and
names every failed job of a sweep.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sam_lab.config import ConfigError, validate
from sam_lab.run import checkpoint
from sam_lab.run.checkpoint import CheckpointMismatch
from sam_lab.run.files import write_json_atomic

CKPT = checkpoint.PATH
CLAIM = ".claim"
RUN_FILES = (CLAIM, str(CKPT), "metrics.jsonl", "summary.json")

# Keys that do not change what is computed (or only how fast / where it is logged): a resume may change them.
MAY_CHANGE_ON_RESUME = (
    "resume",
    "device",
    "deterministic",
    "logger",
    "metrics",
    "data.root",
    "data.download",
    "trainer.progress",
    "trainer.eval_batch_size",
    "trainer.compile",
    "trainer.channels_last",
    "trainer.checkpoint",
    "trainer.on_nonfinite",
    "trainer.threads",
)


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (already holds a run, claimed, nothing to resume)."""


@dataclass
class Plan:
    resume: bool
    finished: dict | None = None  # the summary of a run that has already finished: nothing to do
    state: dict | None = None  # the checkpoint to resume from, read once


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (stored in checkpoints, compared on resume)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[return-value]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def config_differences(saved: dict, now: dict) -> list[str]:
    """`key=old (this run: new)` for every key that differs and may not change on resume."""
    a, b = _flat(saved), _flat(now)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in MAY_CHANGE_ON_RESUME):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}={a.get(key, '<unset>')} (this run: {b.get(key, '<unset>')})")
    return diffs


def _gone(claim: dict) -> bool:
    """The claiming process is this one, or has ended (only knowable on the same host)."""
    if claim.get("host") != socket.gethostname():
        return False
    try:
        pid = int(claim["pid"])
        if pid != os.getpid():
            os.kill(pid, 0)  # signal 0: does the process exist?
    except ProcessLookupError:
        return True
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return pid == os.getpid()


def _claim(run_dir: Path, exclusive: bool) -> None:
    """Write `.claim`; `exclusive`: only if no live run claimed the directory first (O_EXCL, no race)."""
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = run_dir / CLAIM
    if not exclusive:
        write_json_atomic(path, info)
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            other = json.loads(path.read_text())
        except (OSError, ValueError):
            other = {}
        if _gone(other):  # a start that failed or was killed before its first checkpoint
            write_json_atomic(path, info)
            return
        raise RunDirError(
            f"run dir {run_dir} is already used by another run (started {other.get('started', '?')} by "
            f"pid {other.get('pid', '?')} on {other.get('host', '?')}) that has written no checkpoint yet; "
            f"choose a new hydra.run.dir, or delete {run_dir} if that run is dead"
        ) from None
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)


def write_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes to `.hydra/` (config.yaml, hydra.yaml, overrides.yaml), written after the checks."""
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is not None:
        return  # no Hydra (library use), or Hydra writes them itself
    hc = HydraConfig.instance().cfg
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (out / "hydra.yaml").write_text(OmegaConf.to_yaml(hc))
    (out / "overrides.yaml").write_text(OmegaConf.to_yaml(hc.hydra.overrides.task))


def prepare(cfg: DictConfig, run_dir: Path) -> Plan:
    """Check everything that can be checked without loading data, then claim `run_dir` (see module doc)."""
    validate(cfg)
    run_dir = Path(run_dir)
    ckpt = run_dir / CKPT
    mode = cfg.resume
    if ckpt.exists() and mode in (True, "auto"):
        state = checkpoint.read(ckpt)
        diffs = config_differences(state["config"], run_config(cfg)) if state.get("config") else []
        if diffs:
            more = f", and {len(diffs) - 3} more" if len(diffs) > 3 else ""
            raise CheckpointMismatch(
                f"cannot resume {ckpt}: it was written with {', '.join(diffs[:3])}{more}; resume with the "
                f"same settings, or choose a new hydra.run.dir for a new run"
            )
        summary_path = run_dir / "summary.json"
        if state["epoch"] >= cfg.epochs and state.get("position") is None and summary_path.exists():
            summary = json.loads(summary_path.read_text())
            if summary.get("status") == "finished":
                return Plan(resume=True, finished=summary, state=state)
        _claim(run_dir, exclusive=False)
        write_hydra_files(cfg, run_dir)
        return Plan(resume=True, state=state)
    if mode is True:
        raise RunDirError(
            f"resume=true but {ckpt} does not exist: nothing to resume in {run_dir} (resume=auto starts a "
            f"new run when there is no checkpoint)"
        )
    found = [f for f in RUN_FILES if (run_dir / f).exists()]
    if found and (mode is False or found != [CLAIM]):  # only a claim: maybe a run still in its first epoch
        how = (
            "resume=auto or resume=true continues it, or choose a new hydra.run.dir to start another"
            if ckpt.exists()
            else f"it has no checkpoint to continue from: choose a new hydra.run.dir, or delete {run_dir}"
        )
        raise RunDirError(f"run dir {run_dir} already holds a run ({', '.join(found)}); {how}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _claim(run_dir, exclusive=True)
    write_hydra_files(cfg, run_dir)
    return Plan(resume=False)


def _writable(path: Path, key: str) -> None:
    """Exit with one line if `path` cannot be created and written (before Hydra tries, with a traceback)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        print(f"error: cannot write to {key}={path}: {err.strerror or err}", file=sys.stderr)
        raise SystemExit(1) from None


class RunDirCallback(Callback):
    """Hydra callback (`hydra.callbacks` in conf/train.yaml): output directory checks, failed sweep jobs."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED and config.hydra.mode == RunMode.MULTIRUN:
            err = job_return._return_value
            out = config.hydra.runtime.output_dir
            print(f"sweep job {config.hydra.job.num} failed ({out}): {err}", file=sys.stderr, flush=True)
