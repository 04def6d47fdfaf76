"""Progress bars on stderr for training, evaluation and the sharpness computation (`trainer.progress`).

`trainer.progress=auto` (the default) shows them only when stderr is a terminal, so log files, Slurm output
and CI stay quiet; `on` forces them, `off` hides them. Reading the running loss and accuracy from the device
is a host sync, so a training bar refreshes them every `TRAIN_EVERY` steps only; evaluation has no backward
pass to keep the device busy while the host waits, so its bar refreshes every batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from tqdm import tqdm

from sam_lab.metrics.running import Sums

TRAIN_EVERY = 25


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """`iterable` wrapped in a bar that disappears when done (the epoch's log line stays)."""
    return tqdm(iterable, total=total, initial=initial, desc=desc, leave=False, disable=not enabled)


def show_running(pbar: tqdm, sums: Sums, step: int, prefix: str, every: int = TRAIN_EVERY) -> bool:
    """Put `<prefix>/loss` and `<prefix>/acc` so far on the bar every `every` steps; True when it read them
    (a host sync the caller may reuse)."""
    if pbar.disable or step % every:
        return False
    m = sums.means()
    pbar.set_postfix(loss=f"{m[f'{prefix}/loss']:.3f}", acc=f"{m[f'{prefix}/acc']:.3f}")
    return True


@contextlib.contextmanager
def hvp_bar(desc: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A bar counting Hessian-vector products (their number is not known in advance: Lanczos stops when it
    has converged); yields the `on_hvp(n)` callback for `sam_lab.metrics.sharpness`, None when disabled."""
    if not enabled:
        yield None
        return
    with tqdm(desc=desc, unit="hvp", leave=False) as counter:

        def on_hvp(n: int) -> None:
            counter.n = n
            counter.refresh()  # each product: one takes far longer than a redraw, and the last count shows

        yield on_hvp
