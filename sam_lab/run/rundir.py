"""One run directory holds one run, and nothing that fails damages it.

A start goes: `validate` the config (sam_lab.config) -> take the run directory's lock (`Claim`, .claim) ->
`prepare` (read only: what the directory holds and what this start means for it) -> build everything and,
on resume, load the checkpoint -> `commit` (the first write: the owner's name in .claim, .hydra/, the
bookkeeping put back in line with the checkpoint) -> train. A start refused anywhere before `commit` leaves
the directory byte for byte as it was. What `prepare` decides:

  a checkpoint, resume=auto|true   continue from it (unless the config differs where it may not:
                                   `MAY_CHANGE_ON_RESUME`); if the run finished and summary.json says so,
                                   there is nothing to do; a missing or damaged summary.json or metrics.jsonl
                                   is rebuilt from the checkpoint
  a checkpoint, resume=false       refused: the directory holds a run
  no checkpoint, resume=true       refused: nothing to resume
  no checkpoint, a finished run    refused (a run with trainer.checkpoint=false: it cannot be continued)
  no checkpoint otherwise          start over: what is there is a start that never reached its first
                                   checkpoint (killed, disk full, diverged in epoch 1); nothing is lost

Hydra's own writing of `.hydra/` is switched off (`hydra.output_subdir: null` in conf/train.yaml) because
Hydra writes before any check; `commit` writes the same three files. `RunDirCallback` refuses an output
directory that cannot be written, or that is `/`, the working directory or above it, before Hydra writes
anything, and names every failed job of a sweep (default directory names: sam_lab/run/dirnames.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sam_lab.ranges import ConfigError
from sam_lab.run import checkpoint
from sam_lab.run.checkpoint import CheckpointMismatch
from sam_lab.run.claim import Claim
from sam_lab.run.files import open_run_logs, sync_jsonl, write_atomic

log = logging.getLogger(__name__)
CKPT = checkpoint.PATH
RUN_FILES = (str(CKPT), "metrics.jsonl", "summary.json")

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
    """The run directory cannot be used as asked (already holds a run, nothing to resume)."""


@dataclass
class Plan:
    resume: bool
    finished: dict | None = None  # the summary of a run that has already finished: nothing to do
    state: dict | None = None  # the checkpoint to resume from, read once
    notes: list[str] = field(default_factory=list)  # what `commit` repairs, logged as warnings


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


def read_summary(run_dir: Path) -> tuple[dict | None, str | None]:
    """(summary.json, None), (None, None) if there is none, or (None, why it cannot be read)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None, None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return (summary, None) if isinstance(summary, dict) else (None, "not a JSON object")


def prepare(cfg: DictConfig, run_dir: Path) -> Plan:
    """What this start means for `run_dir` (module doc), deciding from files only: nothing is written."""
    run_dir = Path(run_dir)
    ckpt, mode = run_dir / CKPT, cfg.resume
    summary, damaged = read_summary(run_dir)
    found = [f for f in RUN_FILES if (run_dir / f).exists()]
    if ckpt.exists():
        if mode is False:
            raise RunDirError(
                f"run dir {run_dir} already holds a run ({', '.join(found)}); resume=auto or resume=true "
                "continues it, or choose a new hydra.run.dir to start another"
            )
        state = checkpoint.read(ckpt)
        diffs = config_differences(state["config"], run_config(cfg)) if state.get("config") else []
        if diffs:
            more = f", and {len(diffs) - 3} more" if len(diffs) > 3 else ""
            raise CheckpointMismatch(
                f"cannot resume {ckpt}: it was written with {', '.join(diffs[:3])}{more}; resume with the "
                f"same settings, or choose a new hydra.run.dir for a new run"
            )
        done = state["epoch"] >= cfg.epochs and state.get("position") is None
        if done and summary is not None and summary.get("status") == "finished":
            return Plan(resume=True, finished=summary, state=state)
        notes = [f"summary.json cannot be read ({damaged}): computed again"] if done and damaged else []
        return Plan(resume=True, state=state, notes=notes)
    if mode is True:
        raise RunDirError(
            f"resume=true but {ckpt} does not exist: nothing to resume in {run_dir} (resume=auto starts a "
            f"new run when there is no checkpoint)"
        )
    if (summary or {}).get("status") == "finished" or damaged:
        what = f"its summary.json cannot be read ({damaged}) and it" if damaged else "it"
        raise RunDirError(
            f"run dir {run_dir} already holds a run ({', '.join(found)}); {what} has no checkpoint to "
            f"continue from: choose a new hydra.run.dir, or delete {run_dir}"
        )
    return Plan(resume=False)


def write_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes to `.hydra/` (config.yaml, hydra.yaml, overrides.yaml), written after the checks."""
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is not None:
        return  # no Hydra (library use), or Hydra writes them itself
    hc = HydraConfig.instance().cfg
    out = run_dir / ".hydra"
    write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg), "start", 1)
    write_atomic(out / "hydra.yaml", OmegaConf.to_yaml(hc))
    write_atomic(out / "overrides.yaml", OmegaConf.to_yaml(hc.hydra.overrides.task))


def _sync_metrics(run_dir: Path, plan: Plan) -> None:
    """metrics.jsonl = the checkpoint's epochs: each epoch once, damaged or missing lines rebuilt."""
    path = run_dir / "metrics.jsonl"
    wrong = sync_jsonl(path, checkpoint.history(plan.state, path))
    if wrong:
        plan.notes.append(f"metrics.jsonl {wrong}: rebuilt from {CKPT} (epochs 1-{plan.state['epoch']})")


def commit(cfg: DictConfig, run_dir: Path, plan: Plan, claim: Claim) -> None:
    """The first write of a start, once every check has passed (module doc)."""
    claim.commit()
    open_run_logs()
    write_hydra_files(cfg, run_dir)
    for tmp in [*run_dir.glob("*.tmp"), *(run_dir / CKPT).parent.glob("*.tmp")]:
        tmp.unlink(missing_ok=True)  # left by a kill in the middle of an atomic write
    if plan.resume:
        _sync_metrics(run_dir, plan)
    else:  # start over: what a start that never reached its first checkpoint left
        for name in ("metrics.jsonl", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    for note in plan.notes:
        log.warning("%s", note)


def repair_finished(run_dir: Path, plan: Plan) -> None:
    """A finished run started again: only put metrics.jsonl back in line with the checkpoint if it is not."""
    _sync_metrics(run_dir, plan)
    if plan.notes:
        open_run_logs()
    for note in plan.notes:
        log.warning("%s", note)


def continue_hint(run_dir: Path) -> str:
    """How the user continues this run after an interruption, for the one-line messages."""
    if not HydraConfig.initialized():
        return f"resume=auto continues the run in {run_dir}"
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return f"the same command with hydra.sweep.dir={os.path.abspath(hc.sweep.dir)} continues the sweep"
    return f"the same command with hydra.run.dir={run_dir} continues the run"


# ---- output directory checks ---------------------------------------------------------------------------


def _own_dir(value: str, key: str) -> Path:
    """A run or sweep needs a directory of its own: not empty, not /, not the working directory or above."""
    example = f"{key}=outputs/my_run"
    if not value.strip():
        raise SystemExit(
            _fail(f"{key} is empty: give the directory for the files of this run, e.g. {example}")
        )
    path, cwd = Path(value).expanduser().resolve(), Path.cwd().resolve()
    what = (
        "the file-system root" if path == Path(path.anchor)
        else "the working directory" if path == cwd
        else "a parent of the working directory" if path in cwd.parents
        else "your home directory" if path == Path.home().resolve()
        else None
    )  # fmt: skip
    if what:
        raise SystemExit(
            _fail(
                f"{key}={value} is {what}: a run writes its files into its own directory; use e.g. {example}"
            )
        )
    return path


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _writable(path: Path, key: str) -> None:
    """Exit with one line if `path` cannot be created and written (before Hydra tries, with a traceback)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise SystemExit(_fail(f"cannot write to {key}={path}: {err.strerror or err}")) from None


class RunDirCallback(Callback):
    """Hydra callback (`hydra.callbacks` in conf/train.yaml): output directory checks, failed sweep jobs."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        value = str(config.hydra.run.dir)
        _own_dir(value, "hydra.run.dir")
        _writable(Path(value), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        value = str(config.hydra.sweep.dir)
        _own_dir(value, "hydra.sweep.dir")
        _writable(Path(value), "hydra.sweep.dir")
        # Resolve ${sweep_overrides:} here, in the launching process, also when hydra.sweep.dir does not use
        # it: Hydra copies this config's resolver cache into every job, so a job's subdirectory name
        # (${job_name:...}) sees the launching command line, not the job process's own argv.
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra["_sweep_overrides"] = "${sweep_overrides:}"
            str(config.hydra["_sweep_overrides"])
            del config.hydra["_sweep_overrides"]

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED and config.hydra.mode == RunMode.MULTIRUN:
            err = job_return._return_value
            out = config.hydra.runtime.output_dir
            print(f"sweep job {config.hydra.job.num} failed ({out}): {err}", file=sys.stderr, flush=True)
