"""Loggers: W&B when `logger=wandb`, nothing more with `logger=none` (the run directory always gets
metrics.jsonl and summary.json: sam_lab.run.files).

W&B must never hang or crash training: with no API key, an unreachable server or any error at start-up
the logger warns and falls back to offline mode (files under the run directory), then to nothing.

How a run looks in W&B (`run_identity`): a short unique name `<optimizer>-<model>-rho<rho>-s<seed>-<hash>`,
one group per sweep (its directory), the optimizer as job type, the data/model/optimizer choices as tags and
in the run config (`choices`), and no W&B console output inside sweeps. A resumed run continues the same W&B
run (its id is in the checkpoint) and first re-logs the epochs W&B lost (`backfill`: a killed process takes
the records W&B had not yet written with it).
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import socket
import threading
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from sam_lab.run.files import jsonable
from sam_lab.run.wandb_files import history_steps

log = logging.getLogger(__name__)


class NoLogger:
    """`logger=none`: only the local files."""

    run_id: str | None = None

    def start(
        self,
        config: dict,
        run_dir: Path,
        name: str | None = None,
        run_id: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        quiet: bool = False,
    ) -> None:
        pass

    def log(self, metrics: dict, step: int) -> None:
        pass

    def backfill(self, history: list[dict]) -> None:
        pass

    def log_image(self, key: str, path: Path, step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def run_identity(config: dict, choices: dict | None, run_dir: Path) -> dict[str, Any]:
    """`start` keywords for a training run: name, group (the sweep directory in a multirun), job_type, tags,
    quiet (inside sweeps), and the config with the composed choices added (so sam and asam runs differ)."""
    picked = {k: v for k, v in (choices or {}).items() if not k.startswith("hydra/") and v is not None}
    parts = [picked.get("optimizer"), picked.get("model")]
    if isinstance(config.get("optimizer"), dict) and "rho" in config["optimizer"]:
        parts.append(f"rho{config['optimizer']['rho']:g}")  # the optimizer's own rho (an arm may set it)
    parts.append(f"s{config.get('seed')}")
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:6]  # unique per run dir
    group = None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = Path(
            HydraConfig.get().sweep.dir
        )  # outputs/sweeps/<name> or outputs/sweeps/<experiment>/<time>
        group = sweep.name if sweep.parent.name == "sweeps" else f"{sweep.parent.name}_{sweep.name}"
    return {
        "config": {**config, "choices": picked},
        "name": "-".join(str(p) for p in parts if p is not None) + f"-{digest}",
        "group": group,
        "job_type": picked.get("optimizer"),
        "tags": [str(picked[k]) for k in ("data", "model", "optimizer", "experiment") if k in picked],
        "quiet": group is not None,
    }


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def wandb_unreachable(url: str, timeout: float) -> str | None:
    """Why the W&B server at `url` cannot be reached within `timeout` seconds, or None if it can.

    wandb itself retries an unreachable server for about 30 s (login, key check, then `init_timeout`) before
    it gives up; one TCP connection decides in at most `timeout`. DNS and connect run in a daemon thread
    because getaddrinfo has no timeout of its own. Behind a proxy the direct connection says nothing, so
    the check is skipped and wandb's `init_timeout` bounds the wait.
    """
    if any(os.environ.get(k) for k in PROXY_VARS):
        return None
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(f"{type(err).__name__}: {err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no connection within {timeout:g} s"


class WandbLogger(NoLogger):
    """One W&B run per training run (also per job of an in-process multirun)."""

    def __init__(
        self,
        project: str = "sam_lab",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str | None = None,
        init_timeout: float = 20.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self.project, self.entity, self.group, self.tags = project, entity, group, list(tags or [])
        self.mode, self.init_timeout, self.connect_timeout = mode, init_timeout, connect_timeout
        self.run, self.run_dir = None, None

    def start(
        self,
        config: dict,
        run_dir: Path,
        name: str | None = None,
        run_id: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        quiet: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        try:
            import wandb
        except ImportError:
            warnings.warn("wandb is not installed: logging to local files only", stacklevel=2)
            return
        mode = self.mode or os.environ.get("WANDB_MODE") or "online"
        if mode == "online" and not _has_wandb_key():
            warnings.warn(
                "W&B: no API key (set WANDB_API_KEY or run `wandb login`): logging offline to "
                f"{run_dir / 'wandb'}; upload later with `wandb sync`",
                stacklevel=2,
            )
            mode = "offline"
        if mode == "online":
            url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            why = wandb_unreachable(url, self.connect_timeout)
            if why is not None:
                warnings.warn(
                    f"W&B: server {url} is unreachable ({why}): logging offline to {run_dir / 'wandb'}; "
                    "upload later with `wandb sync`",
                    stacklevel=2,
                )
                mode = "offline"
        for attempt in (mode, "offline"):
            try:
                self.run = wandb.init(
                    project=self.project,
                    entity=self.entity,
                    group=self.group or group,  # logger.group set by the user wins
                    job_type=job_type,
                    tags=self.tags + [t for t in tags or [] if t not in self.tags] or None,
                    name=name,
                    config=config,
                    dir=str(run_dir),
                    mode=attempt,
                    id=run_id,
                    resume="allow" if run_id else None,
                    reinit="create_new",
                    settings=wandb.Settings(init_timeout=self.init_timeout, console="off", silent=quiet),
                )
                self.run_id = self.run.id
                return
            except Exception as err:  # noqa: BLE001 - any W&B failure must not stop training
                warnings.warn(
                    f"W&B {attempt} start failed ({type(err).__name__}: {err}); "
                    + ("trying offline" if attempt != "offline" else "logging to local files only"),
                    stacklevel=2,
                )
                if attempt == "offline":
                    break
        self.run = None

    def _safe(self, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"W&B call failed ({type(err).__name__}: {err}); continuing", stacklevel=3)

    def log(self, metrics: dict, step: int) -> None:
        self._safe(lambda: self.run.log({k: jsonable(v) for k, v in metrics.items()}, step=step))

    def backfill(self, history: list[dict]) -> None:
        """Log the epochs of `history` (the resumed run's metrics.jsonl) that W&B does not have: online,
        those from the server's next step on; offline, those in none of the run's local W&B files."""

        def fill() -> None:
            if self.run.settings.mode == "online":
                have = set(range(self.run.starting_step))
            else:
                have = history_steps(self.run_dir, self.run.id)
            missing = [r for r in history if r["epoch"] not in have]
            for record in missing:
                self.run.log({k: jsonable(v) for k, v in record.items()}, step=record["epoch"])
            if missing:
                log.info(
                    "W&B: re-logged epochs %s from metrics.jsonl", ", ".join(str(r["epoch"]) for r in missing)
                )

        self._safe(fill)

    def log_image(self, key: str, path: Path, step: int) -> None:
        import wandb

        self._safe(lambda: self.run.log({key: wandb.Image(str(path))}, step=step))

    def summary(self, values: dict) -> None:
        self._safe(lambda: self.run.summary.update({k: jsonable(v) for k, v in values.items()}))

    def finish(self, exit_code: int = 0) -> None:
        self._safe(lambda: self.run.finish(exit_code=exit_code))
        self.run = None
