"""Every setting reaches its effect: one check per key of the typed schema, through the real path.

`EFFECTS` maps each key of `sam_lab.config.TrainConfig` (top level, `trainer.*`, `metrics.*`, nested ones
included) to a run with an override and a check of what the override changes: weights, a metric, a file, a
summary field, what the model sees during the run (batch sizes, dtypes, the weights a computation uses), or
what the CLI prints. `test_every_schema_key_has_an_effect_check` walks the schema, so a new key fails until
it has an entry here. Add one as one line, e.g.

    "trainer.grad_clip": Effect("fit", ["trainer.grad_clip=0.01"], differs(weights)),

Runs are tiny (ResNet-18 at width 2, 32 synthetic training images, 2 steps) and shared between keys.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sam_lab.config import ConfigError, MetricsConfig, SharpnessConfig, TrainConfig, TrainerConfig
from sam_lab.engine import Trainer
from sam_lab.run.faults import Diverged
from sam_lab.run.files import read_jsonl
from sam_lab.run.launch import THREAD_ENV
from sam_lab.train import build, run
from tests.conftest import ROOT, compose_cfg

BASE = (
    "data=synthetic",
    "data.subset=32",
    "data.val_size=16",
    "model.width=2",
    "epochs=1",
    "batch_size=16",
    "logger=none",
    "device=cpu",
    "trainer.progress=off",
    "metrics.sharpness.enabled=false",
)
# Sharpness on 16 of the 32 images in one batch; a loose tolerance keeps Lanczos (8 vectors) at its minimum
# of 9 products
SHARP = (
    "metrics.sharpness.enabled=true",
    "metrics.sharpness.num_samples=16",
    "metrics.sharpness.batch_size=16",
    "metrics.sharpness.tol=0.5",
)
PER_BATCH = (
    "metrics.sharpness.protocol=per_batch",
    "metrics.sharpness.per_batch_count=2",
    "metrics.sharpness.per_batch_size=8",
    "metrics.sharpness.per_batch_top_k=2",
)
DENSITY = ("metrics.sharpness.density=true", "metrics.sharpness.density_steps=4")
AUTO = ("trainer.progress=auto",)


# ---- what a run saw ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """One forward call of the model's first convolution."""

    phase: str  # train | eval | hvp (eval mode with gradients: a Hessian-vector product)
    batch: int
    dtype: str
    module: int  # id of the convolution: a copy of the model (best-val weights) has its own
    inputs: float  # checksum of the batch
    deterministic: bool
    threads: int


@dataclasses.dataclass
class Run:
    run_dir: Path
    trainer: Trainer | None = None
    calls: list[Call] = dataclasses.field(default_factory=list)
    result: Any = None  # fit: the summary; sharpness: Trainer.sharpness's metrics; else what the run says
    process: subprocess.Popen | None = None  # a CLI run still going
    output: Callable[[], str] | None = None  # its stderr, once it has ended
    err: str = ""

    def wait(self) -> Run:
        if self.process is not None:
            code = self.process.wait(timeout=300)
            self.err, self.process = self.output(), None
            assert code == 0, self.err[-3000:]
        return self

    @property
    def stderr(self) -> str:
        return self.wait().err

    def history(self) -> list[dict]:
        return read_jsonl(self.wait().run_dir / "metrics.jsonl")

    def summary(self) -> dict:
        return json.loads((self.wait().run_dir / "summary.json").read_text())

    def seen(self, phase: str) -> list[Call]:
        return [c for c in self.calls if c.phase == phase]


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def watch(trainer: Trainer, calls: list[Call]) -> None:
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        phase = "train" if module.training else "hvp" if torch.is_grad_enabled() else "eval"
        x = inputs[0]
        calls.append(
            Call(
                phase,
                len(x),
                str(output.dtype),
                id(module),
                float(x.double().sum()),
                torch.are_deterministic_algorithms_enabled(),
                torch.get_num_threads(),
            )
        )

    first_conv(trainer.model).register_forward_hook(hook)  # deepcopy (best-val model) copies it


def merged(*groups: tuple[str, ...] | list[str]) -> list[str]:
    """Overrides with later ones replacing earlier ones of the same key."""
    out: dict[str, str] = {}
    for group in groups:
        for o in group:
            out[o.split("=", 1)[0]] = o
    return list(out.values())


def cli_env() -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}


class Runs:
    """Runs by (how, overrides), each made once per module. `how`:

    build      build the trainer only
    evaluate   build and evaluate on the validation split (one forward pass of 16 images)
    fit        build and train (`Trainer.fit`: metrics.jsonl, summary.json, checkpoint)
    sharpness  build with SHARP and call `Trainer.sharpness` on the initial weights (the engine's call)
    nan        fit with a NaN batch at the first step
    resume     train epoch 1 of 2, then `sam_lab.train.run` in the same directory
    cli        `python -m sam_lab.train` with SHARP in a subprocess whose stderr is a pipe
    terminal   the same with stderr on a pseudo-terminal
    """

    def __init__(self, root: Path) -> None:
        self.root, self.cache, self.made = root, {}, 0

    def get(self, how: str, overrides: tuple[str, ...] = ()) -> Run:
        key = (how, tuple(overrides))
        if key not in self.cache:
            self.cache[key] = self.fresh(how, overrides)
        return self.cache[key]

    def fresh(self, how: str, overrides: tuple[str, ...] = ()) -> Run:
        self.made += 1
        run_dir = self.root / f"{self.made}_{how}"
        threads, env = torch.get_num_threads(), {v: os.environ.get(v) for v in THREAD_ENV}
        try:
            return getattr(self, how)(list(overrides), Run(run_dir))
        finally:  # trainer.threads and deterministic change the process: later runs start as before
            torch.set_num_threads(threads)
            for var, value in env.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
            torch.use_deterministic_algorithms(False)

    def build(self, overrides: list[str], r: Run) -> Run:
        try:
            r.trainer = build(compose_cfg(merged(BASE, overrides)), r.run_dir)
        except ConfigError as err:
            r.result = f"refused: {err}"
            return r
        watch(r.trainer, r.calls)
        return r

    def evaluate(self, overrides: list[str], r: Run) -> Run:
        self.build(overrides, r)
        r.result = r.trainer.evaluate("val")
        return r

    def fit(self, overrides: list[str], r: Run) -> Run:
        self.build(overrides, r)
        if r.trainer is not None:
            r.result = r.trainer.fit()
        return r

    def init(self, overrides: list[str], r: Run) -> Run:
        """`sam_lab.train.run` (where init_from is applied), `CKPT` standing for the base `fit` run's
        checkpoint; the result is the final weights' checksum, compared in `starts_from_the_checkpoint`."""
        ckpt = self.get("fit").run_dir / "checkpoints" / "last.pt"
        cfg = compose_cfg(merged(BASE, [o.replace("CKPT", str(ckpt)) for o in overrides]))
        r.result = run(cfg, r.run_dir)
        state = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        r.result["weights"] = hashlib.sha1(b"".join(t.numpy().tobytes() for t in state.values())).hexdigest()
        return r

    def sharpness(self, overrides: list[str], r: Run) -> Run:
        self.build(merged(SHARP, overrides), r)
        r.result = r.trainer.sharpness(r.trainer.model, "final", 1)
        return r

    def nan(self, overrides: list[str], r: Run) -> Run:
        self.build(overrides, r)
        step = r.trainer.train_step

        def poisoned(x, y, i, sums, global_step=0):
            return step(torch.full_like(x, float("nan")) if global_step == 1 else x, y, i, sums, global_step)

        r.trainer.train_step = poisoned
        try:
            r.result = r.trainer.fit()
        except Diverged as err:
            r.result = {"status": "diverged", "error": str(err)}
        return r

    def resume(self, overrides: list[str], r: Run) -> Run:
        build(compose_cfg(merged(BASE, ["epochs=2"])), r.run_dir).fit(until=1)
        before = r.history()
        try:
            run(compose_cfg(merged(BASE, ["epochs=2"], overrides)), r.run_dir)
        except ConfigError as err:
            r.result = f"refused: {err}"
            return r
        after = r.history()
        # epoch 1's record (its timings included) is still the first run's: only epoch 2 was trained
        r.result = "continued" if after[:1] == before and len(after) == 2 else f"restarted: {after}"
        return r

    def cli(self, overrides: list[str], r: Run, terminal: bool = False) -> Run:
        """Started, not waited for: CLI runs go on while others train (`Run.wait`)."""
        args = [*merged(BASE, SHARP, overrides), f"hydra.run.dir={r.run_dir}"]
        read_end, write_end = pty.openpty() if terminal else os.pipe()
        if terminal:  # a terminal of 0 columns (the default size of a new one) gets empty bars
            fcntl.ioctl(write_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        cmd = [sys.executable, "-m", "sam_lab.train", *args]
        r.process = subprocess.Popen(
            cmd, cwd=self.root, stdout=subprocess.DEVNULL, stderr=write_end, env=cli_env()
        )
        os.close(write_end)
        r.output = drain(read_end)
        return r

    def terminal(self, overrides: list[str], r: Run) -> Run:
        return self.cli(overrides, r, terminal=True)

    def close(self) -> None:
        for r in self.cache.values():
            if r.process is not None:  # not every test ran: stop what this module started
                r.process.kill()
                r.process.wait()


def drain(fd: int) -> Callable[[], str]:
    """Read `fd` to its end in a thread (a full pipe or terminal would block the writer); the text."""
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the process at the other end of a terminal has ended
                break
            if not data:
                break
            chunks.append(data)
        os.close(fd)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def text() -> str:
        reader.join(timeout=60)
        return b"".join(chunks).decode(errors="replace")

    return text


# ---- observations and checks ------------------------------------------------------------------------

Check = Callable[[Run, Run], None]


def differs(observe: Callable[[Run], Any], expected: Any = None, base: Any = None) -> Check:
    """The override changes `observe`; to `expected` (and the baseline shows `base`) where given."""

    def check(r: Run, b: Run) -> None:
        got, was = observe(r), observe(b)
        assert got != was, f"no effect: {got!r} in both runs"
        if expected is not None:
            assert got == expected, f"{got!r} != expected {expected!r} (baseline: {was!r})"
        if base is not None:
            assert was == base, f"baseline {was!r} != {base!r}"

    return check


def changes(observe: Callable[[Run], float], by: float | None = None) -> Check:
    """The override increases `observe` (by exactly `by` where given)."""

    def check(r: Run, b: Run) -> None:
        got, was = observe(r), observe(b)
        assert got > was if by is None else got - was == by, f"{got!r} vs baseline {was!r}"

    return check


def starts_from_the_checkpoint(r: Run, b: Run) -> None:
    """init_from: recorded in the summary, and the same training from those weights ends elsewhere."""
    assert r.result["init_from"] and b.result["init_from"] is None
    assert Path(r.result["init_from"]).name == "last.pt" and r.result["weights"] != b.result["weights"]


def weights(r: Run) -> str:
    state = r.trainer.model.state_dict()
    return hashlib.sha1(b"".join(t.cpu().numpy().tobytes() for t in state.values())).hexdigest()


def batch_sizes(phase: str) -> Callable[[Run], list[int]]:
    return lambda r: [c.batch for c in r.seen(phase)]


def hvp_batch_sizes(r: Run) -> set[int]:
    return {c.batch for c in r.seen("hvp")}


def n_hvp(r: Run) -> int:
    return r.result["sharpness/n_hvp"]


def lambda_max(r: Run) -> float:
    return r.result["sharpness/lambda_max"]


def opt_keys(r: Run) -> list[str]:
    return sorted(k for k in r.history()[-1] if k.startswith("opt/"))


def sharpness_weights(r: Run) -> str:
    """Which model the end-of-training sharpness saw: the trainer's own, or a copy (the best-val weights)."""
    own = id(first_conv(r.trainer.model))
    seen = {c.module for c in r.seen("hvp")}
    return "trained model" if seen == {own} else f"copy at epoch {r.summary()['sharpness/weights_epoch']}"


def precision_seen(r: Run) -> tuple[str, str, set[str]]:
    """The trainer's precision (as text), summary.json's, and the dtypes of the training convolutions."""
    dtypes = {c.dtype for c in r.seen("train")}
    return str(r.trainer.precision), r.summary()["precision"], dtypes


def device_seen(r: Run) -> str:
    return r.result if isinstance(r.result, str) else r.summary()["device"]


NO_CUDA = "refused: device=cuda but no CUDA device is available: use device=auto or device=cpu"
CUDA = "cuda" if torch.cuda.is_available() else NO_CUDA
BAR = re.compile(r"^([a-z]+(?: \w+)?): +(?:\d+%\||(\d+)hvp \[)")


def bars(r: Run) -> set[str]:
    """The progress bars on stderr, by description."""
    return {m[1] for line in re.split(r"[\r\n]", r.stderr) if (m := BAR.match(line.strip()))}


def progress_check(r: Run, b: Run) -> None:
    """Bars for training, evaluation and sharpness; running loss and accuracy; every product counted."""
    differs(bars, expected={"epoch 1", "val", "test", "sharpness final"}, base=set())(r, b)
    last = r.history()[-1]
    assert re.search(r"epoch 1: .*acc=\d\.\d{3}, loss=\d\.\d{3}", r.stderr)
    for which in ("val", "test"):  # one batch each: the bar shows the epoch's own figures
        assert f"{which}: " in r.stderr and f"acc={last[f'{which}/acc']:.3f}" in r.stderr, which
    hvps = [int(m[2]) for line in re.split(r"[\r\n]", r.stderr) if (m := BAR.match(line.strip())) and m[2]]
    assert max(hvps) == r.summary()["sharpness/n_hvp"]


def batch_size_check(r: Run, b: Run) -> None:
    """metrics.sharpness.batch_size bounds memory only: other HVP batches, the same value."""
    differs(hvp_batch_sizes, expected={8}, base={16})(r, b)
    differs(lambda r: len(r.seen("hvp")) / n_hvp(r), expected=2, base=1)(r, b)  # batches per product
    assert lambda_max(r) == pytest.approx(lambda_max(b), rel=1e-4)


@dataclasses.dataclass(frozen=True)
class Effect:
    how: str  # a method of Runs
    overrides: list[str]
    check: Check  # (run with base + overrides, run with base)
    base: tuple[str, ...] = ()  # overrides of the baseline run, where the default is not the right contrast


EFFECTS: dict[str, Effect] = {
    "init_from": Effect("init", ["init_from=CKPT"], starts_from_the_checkpoint),
    "trainer.grad_clip": Effect("fit", ["trainer.grad_clip=0.01"], differs(weights)),
    "trainer.ema_decay": Effect(
        "fit", ["trainer.ema_decay=0.9"], differs(lambda r: "ema/val/acc" in r.history()[-1], expected=True)
    ),
    "seed": Effect("fit", ["seed=1"], differs(weights)),
    "rho": Effect("fit", ["rho=0.5"], differs(weights)),
    "epochs": Effect("fit", ["epochs=2"], differs(lambda r: len(r.history()), expected=2, base=1)),
    # 32 images: 4 SAM steps of 8 (two forward passes each) instead of 2 of 16
    "batch_size": Effect("fit", ["batch_size=8"], differs(batch_sizes("train"), expected=[8] * 8)),
    "lr": Effect("fit", ["lr=0.3"], differs(weights)),
    "weight_decay": Effect("fit", ["weight_decay=0.1"], differs(weights)),
    "device": Effect("fit", ["device=cuda"], differs(device_seen, expected=CUDA, base="cpu")),
    # resume=false refuses a directory that holds a run; the default (auto) continues it
    "resume": Effect(
        "resume",
        ["resume=false"],
        differs(lambda r: r.result.split(":")[0], expected="refused", base="continued"),
    ),
    "deterministic": Effect(
        "evaluate",
        ["deterministic=true"],
        differs(lambda r: {c.deterministic for c in r.calls}, expected={True}, base={False}),
    ),
    "data": Effect("build", ["data=digits"], differs(lambda r: r.trainer.data.name, expected="digits")),
    "model": Effect(
        "build", ["model=wrn16_8"], differs(lambda r: type(r.trainer.model).__name__, expected="WideResNet")
    ),
    "optimizer": Effect(
        "fit", ["optimizer=sgd"], differs(lambda r: (type(r.trainer.optimizer).__name__, weights(r)))
    ),
    # cosine decays to 0 by the last step; constant stays at lr
    "scheduler": Effect(
        "fit",
        ["scheduler=constant"],
        differs(lambda r: r.trainer.optimizer.param_groups[0]["lr"], expected=0.1, base=0.0),
    ),
    "logger": Effect(
        "build",
        ["logger=wandb"],
        differs(lambda r: type(r.trainer.logger).__name__, expected="WandbLogger", base="NoLogger"),
    ),
    "trainer.precision": Effect(
        "fit",
        ["trainer.precision=bf16"],
        differs(
            precision_seen,
            # SAM: the clean pass in bf16, the pass at w + e in fp32 (it keeps the perturbation; precision.md)
            expected=("bf16", "bf16", {"torch.bfloat16", "torch.float32"}),
            base=("fp32", "fp32", {"torch.float32"}),
        ),
    ),
    "trainer.compile": Effect(
        "build",
        ["trainer.compile=true"],
        differs(lambda r: type(r.trainer.forward).__name__, expected="OptimizedModule"),
    ),
    "trainer.channels_last": Effect(
        "build",
        ["trainer.channels_last=false"],
        differs(
            lambda r: first_conv(r.trainer.model).weight.is_contiguous(memory_format=torch.channels_last),
            expected=False,
            base=True,
        ),
    ),
    # val (16) and test (256) in batches of 8, every epoch and for the best-val checkpoint
    "trainer.eval_batch_size": Effect(
        "fit", ["trainer.eval_batch_size=8"], differs(lambda r: set(batch_sizes("eval")(r)), expected={8})
    ),
    "trainer.label_smoothing": Effect(
        "fit", ["trainer.label_smoothing=0.5"], differs(lambda r: r.history()[-1]["train/loss"])
    ),
    "trainer.progress": Effect("cli", ["trainer.progress=on"], progress_check),
    "trainer.checkpoint": Effect(
        "fit",
        ["trainer.checkpoint=false"],
        differs(lambda r: (r.run_dir / "checkpoints" / "last.pt").exists(), expected=False, base=True),
    ),
    "trainer.on_nonfinite": Effect(
        "nan",
        ["trainer.on_nonfinite=skip"],
        differs(
            lambda r: (r.result["status"], r.history()[-1]["train/skipped_steps"] if r.history() else None),
            expected=("finished", 1.0),
            base=("diverged", None),
        ),
    ),
    "trainer.threads": Effect(
        "evaluate",
        [f"trainer.threads={torch.get_num_threads() + 1}"],
        differs(lambda r: {c.threads for c in r.calls}, expected={torch.get_num_threads() + 1}),
    ),
    "metrics.grad_stats_every": Effect("fit", ["metrics.grad_stats_every=0"], differs(opt_keys, expected=[])),
    # sgd has no second gradient: the SAM probe adds the statistics that compare one with g
    "metrics.probe_sam_every": Effect(
        "fit",
        ["metrics.probe_sam_every=1"],
        differs(lambda r: "opt/cos" in opt_keys(r), expected=True, base=False),
        base=("optimizer=sgd",),
    ),
    "metrics.sharpness.enabled": Effect(
        "fit",
        list(SHARP),
        differs(lambda r: "sharpness/lambda_max" in r.summary(), expected=True, base=False),
    ),
    "metrics.sharpness.num_samples": Effect(
        "sharpness",
        ["metrics.sharpness.num_samples=8"],
        differs(lambda r: (hvp_batch_sizes(r), lambda_max(r))),
    ),
    "metrics.sharpness.batch_size": Effect("sharpness", ["metrics.sharpness.batch_size=8"], batch_size_check),
    "metrics.sharpness.every": Effect(
        "fit",
        ["metrics.sharpness.every=1"],
        differs(lambda r: "sharpness/lambda_max" in r.history()[-1], expected=True, base=False),
        base=SHARP,
    ),
    "metrics.sharpness.weights": Effect(
        "fit",
        ["metrics.sharpness.weights=best_val"],
        differs(sharpness_weights, expected="copy at epoch 1", base="trained model"),
        base=SHARP,
    ),
    "metrics.sharpness.top_k": Effect(
        "sharpness",
        ["metrics.sharpness.top_k=2"],
        differs(lambda r: len(r.result.get("sharpness/top_k", [])), expected=2, base=0),
    ),
    "metrics.sharpness.trace": Effect(
        "sharpness",
        ["metrics.sharpness.trace=2"],
        differs(
            lambda r: sorted(k for k in r.result if "trace" in k),
            expected=["sharpness/trace", "sharpness/trace_se"],
        ),
    ),
    "metrics.sharpness.density": Effect(
        "sharpness",
        list(DENSITY),
        differs(
            lambda r: sorted(p.name for p in r.run_dir.glob("sharpness/*.png")),
            expected=["density_final.png"],
        ),
    ),
    "metrics.sharpness.density_steps": Effect(
        "sharpness",
        ["metrics.sharpness.density_steps=6"],
        changes(n_hvp, by=2),  # one product per Lanczos step
        base=DENSITY,
    ),
    # ARPACK checks convergence once per restart: a tight tolerance needs more restarts
    "metrics.sharpness.tol": Effect(
        "sharpness",
        ["metrics.sharpness.tol=1e-12"],
        changes(n_hvp),
    ),
    "metrics.sharpness.protocol": Effect(
        "sharpness",
        list(PER_BATCH),
        differs(lambda r: sorted(k for k in r.result if "lambda" in k or "per_batch" in k)),
    ),
    # the per-batch protocol: each batch is its own Hessian (2 distinct batches vs 1)
    "metrics.sharpness.per_batch_count": Effect(
        "sharpness",
        ["metrics.sharpness.per_batch_count=1"],
        differs(lambda r: len({c.inputs for c in r.seen("hvp")}), expected=1, base=2),
        base=PER_BATCH,
    ),
    "metrics.sharpness.per_batch_size": Effect(
        "sharpness",
        ["metrics.sharpness.per_batch_size=4"],
        differs(hvp_batch_sizes, expected={4}, base={8}),
        base=PER_BATCH,
    ),
    "metrics.sharpness.per_batch_top_k": Effect(
        "sharpness",
        ["metrics.sharpness.per_batch_top_k=1"],
        differs(lambda r: r.result["sharpness/per_batch_mean"]),  # the mean over more pooled values
        base=PER_BATCH,
    ),
    # at the initial weights a batch's top 5 by magnitude include negative eigenvalues; by value they do not
    "metrics.sharpness.per_batch_which": Effect(
        "sharpness",
        ["metrics.sharpness.per_batch_which=LA"],
        differs(lambda r: r.result["sharpness/per_batch_neg_frac"], expected=0.0),
        base=(*PER_BATCH, "metrics.sharpness.per_batch_top_k=5"),
    ),
    "metrics.sharpness.per_batch_augment": Effect(
        "sharpness",
        ["metrics.sharpness.per_batch_augment=true"],
        differs(lambda r: {c.inputs for c in r.seen("hvp")}),  # other (augmented) images
        base=PER_BATCH,
    ),
    "metrics.sharpness.per_batch_cutout_p": Effect(
        "sharpness",
        ["metrics.sharpness.per_batch_cutout_p=1.0"],
        differs(lambda r: {c.inputs for c in r.seen("hvp")}),  # every image cut instead of about half
        base=(*PER_BATCH, "metrics.sharpness.per_batch_augment=true", "data.augment.cutout=8"),
    ),
    "metrics.sharpness.seed": Effect("sharpness", ["metrics.sharpness.seed=1"], differs(lambda_max)),
}


def schema_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every key of the typed schema, nested dataclasses walked (their leaves are the keys)."""
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys += schema_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


# ---- tests ----------------------------------------------------------------------------------------


CLI_RUNS = {  # the CLI runs of each test that makes some: started first, they go on while others train
    **{
        f"test_setting_reaches_its_effect[{key}]": [(e.how, e.base), (e.how, (*e.base, *e.overrides))]
        for key, e in EFFECTS.items()
        if e.how in ("cli", "terminal")
    },
    "test_progress_auto_shows_bars_on_a_terminal_only": [("terminal", AUTO), ("cli", AUTO)],
}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> Iterator[Runs]:
    runs = Runs(tmp_path_factory.mktemp("settings"))
    for item in request.session.items:
        for how, overrides in CLI_RUNS.get(item.name, []):
            runs.get(how, overrides)
    yield runs
    runs.close()


def test_every_schema_key_has_an_effect_check():
    keys = set(schema_keys())
    nested = {"trainer": TrainerConfig, "metrics": MetricsConfig, "metrics.sharpness": SharpnessConfig}
    for prefix, cls in nested.items():  # the walk reaches every nested dataclass
        assert {f"{prefix}.{f.name}" for f in dataclasses.fields(cls)} - keys <= set(nested), prefix
    missing, stale = sorted(keys - set(EFFECTS)), sorted(set(EFFECTS) - keys)
    assert not missing, f"no effect check for {missing}: add EFFECTS[key] = Effect(how, [override], check)"
    assert not stale, f"EFFECTS has keys the schema does not: {stale}"


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_setting_reaches_its_effect(key, runs):
    effect = EFFECTS[key]
    base = runs.get(effect.how, effect.base)
    effect.check(runs.get(effect.how, (*effect.base, *effect.overrides)), base)


def test_baseline_runs_are_reproducible(runs):
    """A rerun of the baseline gives the same weights and sharpness, so a difference above is the key's."""
    assert weights(runs.fresh("fit")) == weights(runs.get("fit"))
    assert lambda_max(runs.fresh("sharpness")) == lambda_max(runs.get("sharpness"))


def test_progress_auto_shows_bars_on_a_terminal_only(runs):
    """trainer.progress=auto (the default): bars when stderr is a terminal, none in logs and CI."""
    assert bars(runs.get("terminal", AUTO)) == {"epoch 1", "val", "test", "sharpness final"}
    assert bars(runs.get("cli", AUTO)) == set()


def test_wall_time_includes_every_sharpness_computation(runs):
    """wall_time_s counts the end-of-training sharpness; perf/sharpness_s is the run's total, once each."""
    slow = runs.get("fit", (*SHARP, "metrics.sharpness.tol=1e-12"))  # at the end only, longer than the epoch
    s = slow.summary()
    assert s["perf/sharpness_s"] == s["sharpness/seconds"] > 0
    assert s["wall_time_s"] >= s["perf/epoch_s"] + s["perf/sharpness_s"]
    every = runs.get("fit", (*SHARP, "metrics.sharpness.every=1", "epochs=2"))  # after each epoch, reused
    s, history = every.summary(), every.history()
    assert s["perf/sharpness_s"] == sum(r["sharpness/seconds"] for r in history)
    assert len(every.seen("hvp")) == sum(r["sharpness/n_hvp"] for r in history)  # none again at the end
