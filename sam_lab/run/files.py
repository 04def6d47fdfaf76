"""The run directory's own files: `metrics.jsonl` (one JSON object per line) and atomic JSON documents."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the fact visible
    return v


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({k: jsonable(v) for k, v in record.items()}) + "\n")
        f.flush()
        os.fsync(f.fileno())


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


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=jsonable) + "\n")
    os.replace(tmp, path)


def trim_jsonl(path: Path, last_epoch: int) -> None:
    """Keep each epoch once: drop records written after the checkpoint of `last_epoch` (and a torn line)."""
    kept = [r for r in read_jsonl(path, partial_ok=True) if r.get("epoch", 0) <= last_epoch]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
