"""Reading W&B's own run files back: `<run dir>/wandb/<segment>-<id>/run-<id>.wandb`, one per start of the
run (a resume adds a segment with the same id). wandb (0.31) ships no reader for them; the format is LevelDB's
log: after a 7-byte W&B header (":W&B", magic, version), 32 KiB blocks of chunks, each with a 7-byte header
(crc32c, little-endian length, type 1 full / 2 first / 3 middle / 4 last); a block tail shorter than a
header is padding. Each record is a `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def records(path: Path) -> list[Any]:
    """The records of one `.wandb` file, up to a torn or unreadable tail (a killed process)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data, pos, buf, out = Path(path).read_bytes(), HEADER, b"", []
    if not data.startswith(b":W&B"):
        return out
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        if len(chunk) < length or kind not in (1, 2, 3, 4):
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(buf)
            except DecodeError:
                break
            out.append(record)
    return out


def segments(run_dir: Path, run_id: str) -> list[Path]:
    """The `.wandb` files of W&B run `run_id` under `run_dir`, oldest first."""
    return sorted(Path(run_dir).glob(f"wandb/*-{run_id}/run-{run_id}.wandb"))


def history_steps(run_dir: Path, run_id: str) -> set[int]:
    """The history steps that the local files of W&B run `run_id` hold, over all its segments."""
    return {
        r.history.step.num
        for path in segments(run_dir, run_id)
        for r in records(path)
        if r.WhichOneof("record_type") == "history"
    }
