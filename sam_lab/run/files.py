"""The run directory's own files: `metrics.jsonl` (one JSON object per line), atomic documents, `train.log`.

Every write either completes or leaves the previous content: documents go to `<name>.tmp`, are fsync'ed and
renamed over the old file; an append that fails is cut back to the old length. A failed write (disk full,
quota, read-only file system) leaves no `.tmp` behind and raises `OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sam_lab.run import faults

EXIT_OUTPUT = 74  # sysexits.h EX_IOERR: an output file could not be written


class OutputError(OSError):
    """A file of the run could not be written: one line naming the path, exit status EXIT_OUTPUT."""

    def __init__(self, path: Path, err: BaseException) -> None:
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
        super().__init__(getattr(err, "errno", None), f"cannot write {path}: {reason}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def _write_error(err: BaseException) -> bool:
    # torch.save reports a failed write as RuntimeError("... file write failed")
    return isinstance(err, OSError) or (isinstance(err, RuntimeError) and "write" in str(err))


def jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the fact visible
    return v


@contextlib.contextmanager
def atomic(path: Path, point: str | None = None, index: int = 0) -> Iterator[IO[bytes]]:
    """`with atomic(path) as f:` writes `path` whole or not at all (`point`: a fault-injection point)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if point is not None:
                faults.inject(point, index)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _write_error(err) and not isinstance(err, OutputError):
            raise OutputError(path, err) from err
        raise


def write_atomic(path: Path, data: bytes | str, point: str | None = None, index: int = 0) -> None:
    with atomic(path, point, index) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json_atomic(path: Path, obj: dict, point: str | None = None) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=jsonable) + "\n", point, 1)


def append_jsonl(path: Path, record: dict, point: str | None = None, index: int = 0) -> None:
    line = json.dumps({k: jsonable(v) for k, v in record.items()}) + "\n"
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            f.write(line)
            f.flush()
            if point is not None:
                faults.inject(point, index)
            os.fsync(f.fileno())
    except OSError as err:
        with contextlib.suppress(OSError):
            os.truncate(path, size)  # no torn line
        raise OutputError(path, err) from err


def read_records(path: Path) -> tuple[list[dict], int]:
    """The readable records of a JSON-lines file and the number of lines that are not (torn or damaged)."""
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def read_jsonl(path: Path, partial_ok: bool = False) -> list[dict]:
    """The records of a JSON-lines file; `partial_ok` drops a torn last line (a crash mid-write)."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if not (partial_ok and i == len(lines) - 1):
                raise
    return records


def lines_of(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def sync_jsonl(path: Path, records: list[dict]) -> str | None:
    """Make `path` hold exactly `records` (a checkpoint's history), rewriting it only when it differs.
    Returns what was wrong, for a warning ('was missing', 'had N damaged lines', 'did not match the
    checkpoint'), or None when at most lines after the checkpoint had to go (a kill between the append and
    the checkpoint)."""
    existed = path.exists()
    found, bad = read_records(path)
    if (existed and not bad and found == records) or (not existed and not records):
        return None
    write_atomic(path, lines_of(records))
    if not existed:
        return "was missing"
    if bad:
        return f"had {bad} damaged line{'s' * (bad > 1)}"
    return None if found[: len(records)] == records else "did not match the checkpoint"


class RunLogHandler(logging.FileHandler):
    """`train.log` (conf/train.yaml: hydra.job_logging). Records wait in memory until the run directory
    has been claimed (`open_run_logs`), so a refused start writes no log into someone's run directory; a
    failing write (disk full) is reported once on stderr instead of a traceback per record."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = True):
        super().__init__(filename, mode, encoding, delay=True)
        self.held: list[logging.LogRecord] | None = []
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        elif not self.failed:
            super().emit(record)

    def open(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            self.emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            err = sys.exc_info()[1]
            why = getattr(err, "strerror", None) or err
            print(f"warning: cannot write {self.baseFilename} ({why}): the log goes on on the console only",
                  file=sys.stderr)  # fmt: skip


def open_run_logs() -> None:
    """Let `train.log` be written: the run directory is ours."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RunLogHandler):
            handler.open()
