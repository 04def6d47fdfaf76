"""One process per run directory: an exclusive lock on `<run dir>/.claim`, held for the life of the run.

The lock is `fcntl.flock` on the open claim file. The kernel releases it when the process ends in any way
(exit, exception, kill -9, OOM killer), so a crashed owner never blocks anyone and a claim file left behind
(even an empty one) means nothing until someone holds its lock. Starting a second process in the same
directory (two terminals, a requeue while the old job still runs) fails at once with one message that names
the live owner, read from the claim file, and leaves the directory as it was: a start writes its pid, host
and start time into the claim only when every check has passed (`Claim.commit`). On NFS, Linux implements
flock with the server's byte-range locks, so the lock also holds across nodes; a file system without locks
(e.g. Lustre mounted without `-o flock`) gets a warning and no exclusivity.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from sam_lab.ranges import ConfigError
from sam_lab.run.files import OutputError

CLAIM = ".claim"
WAIT_FOR_OWNER_S = 3.0  # how long a refused start waits for a just-started owner to write its name


class RunDirInUse(ConfigError):
    """Another live process holds the run directory."""


def _owner(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _alive(info: dict[str, Any]) -> bool:
    """The claim names a process that may hold the lock (one that has ended on this host cannot)."""
    if "pid" not in info:
        return False
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (OSError, TypeError, ValueError):
        return True
    return True


class Claim:
    """`with Claim(run_dir) as claim:` holds the lock; `claim.commit()` records this process as the owner.

    A refused or failed start removes only what it created itself (a new claim file, a new empty
    directory); the lock goes with the process or with the `with` block."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / CLAIM
        self.fd: int | None = None
        self.created_dir = self.created_file = self.committed = False

    def __enter__(self) -> Claim:
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.created_file = not self.path.exists()
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(self.path, err) from err
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse()
        except OSError as err:  # ENOLCK, EOPNOTSUPP, ENOSYS: a file system without locks
            warnings.warn(
                f"cannot lock {self.path} ({os.strerror(err.errno or errno.ENOLCK)}): this file system has "
                "no file locks, so a second start in this run directory would not be detected",
                stacklevel=2,
            )
        return self

    def _refuse(self) -> None:
        """Another process holds the lock: name it (it writes its name just after its checks) and leave."""
        deadline = time.monotonic() + WAIT_FOR_OWNER_S
        info = _owner(self.fd)
        while not _alive(info) and time.monotonic() < deadline:
            time.sleep(0.1)
            info = _owner(self.fd)
        self.close(remove=False)
        owner = (
            f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}"
            if _alive(info)
            else "a process that is still starting and has not written its name yet"
        )
        raise RunDirInUse(
            f"run dir {self.run_dir} is in use by a live run ({owner}); one run directory holds one running "
            f"process: wait for it to end (or stop it), or choose a new hydra.run.dir"
        )

    def commit(self) -> None:
        """Record this process as the owner (after every check has passed)."""
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        data = json.dumps(info).encode()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
            os.fsync(self.fd)
        except OSError as err:
            raise OutputError(self.path, err) from err
        self.committed = True

    def close(self, remove: bool) -> None:
        if self.fd is None:
            return
        if remove and self.created_file:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)  # releases the lock
        self.fd = None
        if remove and self.created_dir:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only if still empty

    def __exit__(self, *exc: object) -> None:
        self.close(remove=not self.committed)
