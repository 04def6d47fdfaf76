"""Default run and sweep directory names (the resolvers of conf/train.yaml): within the 255-byte file-name
limit whatever the overrides, and a sweep's directory is a function of its command line, so that running a
preempted sweep's command again continues that sweep. The full overrides of every run are in its
`.hydra/overrides.yaml`.

- `${shorten:TEXT}`: TEXT as one file name (see `shorten`).
- `${sweep_overrides:}`: the launching command line's overrides. Cached, so it is computed once, in the
  launching process, and Hydra's copy of the resolver cache gives every job (also a submitit job in another
  process or on another node) the same value.
- `${sweep_name:LIST}`: the sweep directory name: those overrides without the keys a continued sweep may
  change without changing its results (`SWEEP_FREE`), plus the hash.
- `${job_name:TASK,SWEEP,EXCLUDE}`: a job's subdirectory name: its overrides of the keys the sweep varies
  (all of its overrides when the command line varies none, e.g. an experiment's `hydra.sweeper.params`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence

NAME_BYTES = 80  # readable part of a generated name; with the hash and the time prefix well under 255
# keys a continued sweep may change without changing its results: not part of the sweep's identity
SWEEP_FREE = ("resume", "device", "logger", "trainer.progress", "trainer.threads")
_VALUE_FLAGS = ("-cn", "-cp", "-cd", "-p", "--config-name", "--config-path", "--config-dir", "--package")


def shorten(text: str, always_hash: bool = False) -> str:
    """`text` as it is when it fits NAME_BYTES and has no '/'; else its first NAME_BYTES bytes ('/' as '_')
    plus '-' and the first 8 hex digits of the SHA-1 of the whole text (`always_hash`: always so)."""
    text = str(text)
    safe = text.replace(os.sep, "_")
    if safe == text and len(safe.encode()) <= NAME_BYTES and not always_hash:
        return safe
    prefix = safe.encode()[:NAME_BYTES].decode(errors="ignore")
    return f"{prefix}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_overrides(argv: Sequence[str] | None = None) -> list[str]:
    """The command line's config overrides (no flags, no hydra.*), sorted: the same sweep typed in another
    order is the same sweep."""
    out, skip = [], False
    for arg in sys.argv[1:] if argv is None else argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _VALUE_FLAGS
            continue
        if not _key(arg).startswith(("hydra.", "hydra/")):
            out.append(arg)
    return sorted(out)


def sweep_name(overrides: Sequence[str]) -> str:
    """Of the overrides that decide the results (not the SWEEP_FREE keys)."""
    free = [o for o in overrides if any(_key(o) == k or _key(o).startswith(k + ".") for k in SWEEP_FREE)]
    return shorten(",".join(o for o in overrides if o not in free) or "defaults", always_hash=True)


def job_name(task: Sequence[str], sweep: Sequence[str], exclude: Sequence[str]) -> str:
    """A sweep job's subdirectory name: its overrides of the keys the sweep varies, sorted, `shorten`ed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parse = OverridesParser.create().parse_overrides
    try:
        fixed = {o.key_or_group for o in parse(list(sweep)) if not o.is_sweep_override()}
        mine = [(o.key_or_group, o.input_line) for o in parse(list(task))]
    except Exception:  # noqa: BLE001 - Hydra has parsed them once already; never fail a name on it
        fixed, mine = set(), [(_key(t), str(t)) for t in task]
    kept = [text for key, text in mine if key not in exclude]
    varying = [text for key, text in mine if key not in exclude and key not in fixed]
    return shorten(",".join(sorted(varying or kept)))
