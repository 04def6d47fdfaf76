"""The bad-input table: every row is a mistake a user can make, and the exact text they then see.

`docs/reliability.md` shows this table (`python -m tests.bad_inputs` prints it; a test checks that the doc
shows exactly these rows), and `tests/test_bad_inputs.py` runs every row through the real command line
(`sam_lab.train.main` with sys.argv, in this process) and checks the exit status, the text, that there is no
traceback, and that no existing run directory changed.

Templates in `args`, `env` and `expect`: {run} is the run directory the row uses, {tmp} the test's scratch
directory, {port} a local TCP port that accepts connections, {md5} / {md5_expected} the checksums of the
corrupted CIFAR file, {pid} / {host} / {started} the live process that holds a run directory. Targets:
"victim" = a finished run (every file must be byte-identical afterwards), "broken" = a copy of it whose
checkpoint is truncated, "fresh" = a new directory (a refused start must leave no file in it). Rows with a
`script` run `scripts/<script>.py ARGS` instead of the trainer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> str:
    """Hydra's list of a group's options, from conf/ (a new option changes the expected message by itself)."""
    return "".join(f"\t{p.stem}\n" for p in sorted((CONF / group).glob("*.yaml")))


HYDRA_TAIL = "\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."

# The tiny run every row starts from (one SAM step on synthetic data; rows on CIFAR drop SYNTHETIC).
SYNTHETIC = ["data=synthetic", "data.num_train=40", "data.val_size=8", "data.num_test=16"]
BASE = [
    "batch_size=32",
    "model.width=4",
    "optimizer=sam",
    "epochs=1",
    "logger=none",
    "device=cpu",
    "trainer.progress=off",
]


@dataclass(frozen=True)
class Row:
    what: str  # the mistake, in words
    args: tuple[str, ...]  # command-line arguments after BASE
    expect: str  # the exact text the user sees (stderr; for W&B rows the warnings, one per line)
    code: int = 1  # exit status (0: training goes on)
    target: str = "victim"  # victim | broken | fresh (see module doc)
    env: tuple[tuple[str, str | None], ...] = ()  # environment (None = unset)
    setup: str | None = None  # a fixture in test_bad_inputs.py that prepares the row
    kind: str = "config"  # config | checks | resume | data | output | scripts | wandb (the doc's sections)
    synthetic: bool = True  # start from BASE + SYNTHETIC (False: BASE only; the row picks the data)
    script: str | None = None  # scripts/<script>.py ARGS instead of the trainer

    def argv(self, run: str, fill) -> list[str]:
        """The command line: flags first (argparse), then BASE, the run directory, the row's overrides."""
        mine = [fill(a) for a in self.args]
        if self.script:
            return mine
        flags = [a for a in mine if a.startswith("-")]
        data = SYNTHETIC if self.synthetic else []
        return [*flags, *BASE, *data, f"hydra.run.dir={run}", *(a for a in mine if not a.startswith("-"))]


def _bad_value(key: str, value: str, expect: str, *pre: str, what: str = "out of range") -> Row:
    return Row(f"`{key}` {what}", (*pre, f"{key}={value}"), expect)


def _unknown(key: str, value: str, expect: str, *pre: str, what: str) -> Row:
    return Row(what, (*pre, f"+{key}={value}"), expect)


SAM_KEYS = ", ".join(
    ["lr", "rho", "momentum", "weight_decay", "nesterov", "m", "ascent_fraction", "ascent_steps"]
    + ["bn_second_pass", "adaptive", "eta", "adaptive_params"]
)


ROWS: list[Row] = [
    # ---- config values of the wrong type or range (checked before anything is written) -------------------
    _bad_value("rho", "-0.1", "error: rho=-0.1 is out of range: must be >= 0.0"),
    _bad_value("epochs", "0", "error: epochs=0 is out of range: must be >= 1"),
    _bad_value("batch_size", "0", "error: batch_size=0 is out of range: must be >= 1"),
    _bad_value("lr", "-1", "error: lr=-1.0 is out of range: must be >= 0.0"),
    _bad_value("weight_decay", "-5e-4", "error: weight_decay=-0.0005 is out of range: must be >= 0.0"),
    _bad_value("seed", "-1", "error: seed=-1 is out of range: must be >= 0"),
    _bad_value("model.width", "0", "error: model.width=0 is out of range: must be an integer >= 1"),
    _bad_value(
        "trainer.label_smoothing",
        "1.5",
        "error: trainer.label_smoothing=1.5 is out of range: must be in [0.0, 1.0]",
    ),
    _bad_value(
        "metrics.grad_stats_every", "-1", "error: metrics.grad_stats_every=-1 is out of range: must be >= 0"
    ),
    _bad_value("data.subset", "0", "error: data.subset=0 is out of range: must be an integer >= 1 or null"),
    _bad_value("lr", "nan", "error: lr=nan is not allowed: must be a finite number", what="not finite"),
    _bad_value(
        "optimizer.momentum",
        "inf",
        "error: optimizer.momentum=inf is not allowed: must be a finite number",
        what="not finite (a group's key)",
    ),
    _bad_value(
        "optimizer.momentum", "1.0", "error: optimizer.momentum=1.0 is out of range: must be in [0.0, 1.0)"
    ),
    _bad_value(
        "optimizer.momentum",
        "abc",
        "error: optimizer.momentum=abc is not allowed: must be a number in [0.0, 1.0)",
        what="not a number",
    ),
    _bad_value("optimizer.m", "0", "error: optimizer.m=0 is out of range: must be an integer >= 1"),
    _bad_value(
        "optimizer.m",
        "1.5",
        "error: optimizer.m=1.5 is not allowed: must be an integer >= 1",
        what="not an integer",
    ),
    _bad_value(
        "optimizer.ascent_fraction",
        "0",
        "error: optimizer.ascent_fraction=0 is out of range: must be in (0.0, 1.0]",
    ),
    _bad_value(
        "optimizer.ascent_steps",
        "0",
        "error: optimizer.ascent_steps=0 is out of range: must be an integer >= 1",
    ),
    _bad_value(
        "optimizer.bn_second_pass",
        "reset",
        "error: optimizer.bn_second_pass=reset is not allowed: must be one of freeze, update",
        what="not one of its options",
    ),
    _bad_value(
        "optimizer.eta",
        "-0.01",
        "error: optimizer.eta=-0.01 is out of range: must be >= 0.0",
        "optimizer=asam",
    ),
    _bad_value(
        "optimizer.lmbda",
        "1.5",
        "error: optimizer.lmbda=1.5 is out of range: must be in [0.0, 1.0]",
        "optimizer=fsam",
    ),
    _bad_value(
        "optimizer.sigma", "-1", "error: optimizer.sigma=-1 is out of range: must be >= 0.0", "optimizer=fsam"
    ),
    _bad_value(
        "optimizer.granularity",
        "layer",
        "error: optimizer.granularity=layer is not allowed: must be one of element, tensor, global",
        "optimizer=samdirection",
        what="not one of its options",
    ),
    _bad_value(
        "optimizer.hessian",
        "exact",
        "error: optimizer.hessian=exact is not allowed: must be one of hutchinson, gnb, hvp",
        "optimizer=sgdhess",
        what="not one of its options",
    ),
    _bad_value(
        "optimizer.hessian_every",
        "0",
        "error: optimizer.hessian_every=0 is out of range: must be an integer >= 1",
        "optimizer=sgdhess",
    ),
    _bad_value(
        "scheduler.final_lr_frac",
        "2",
        "error: scheduler.final_lr_frac=2 is out of range: must be in [0.0, 1.0]",
    ),
    _bad_value(
        "scheduler.warmup_epochs", "-1", "error: scheduler.warmup_epochs=-1 is out of range: must be >= 0.0"
    ),
    _bad_value(
        "scheduler.gamma",
        "0",
        "error: scheduler.gamma=0 is out of range: must be in (0.0, 1.0]",
        "scheduler=step",
    ),
    _bad_value(
        "scheduler.milestones",
        "[0.5,1.5]",
        "error: scheduler.milestones=[0.5, 1.5] is out of range: must be a list of numbers, each in "
        "[0.0, 1.0]",
        "scheduler=step",
    ),
    _bad_value(
        "data.augment.crop", "-1", "error: data.augment.crop=-1 is out of range: must be an integer >= 0"
    ),
    _bad_value(
        "data.augment.cutout",
        "1.5",
        "error: data.augment.cutout=1.5 is not allowed: must be an integer >= 0",
        what="not an integer",
    ),
    _bad_value("data.num_train", "1", "error: data.num_train=1 is out of range: must be an integer >= 2"),
    _bad_value(
        "model.dropout",
        "1.5",
        "error: model.dropout=1.5 is out of range: must be in [0.0, 1.0)",
        "model=wrn16_8",
    ),
    Row(
        "`rho` not a number",
        ("rho=abc",),
        "Error merging override rho=abc\nValue 'abc' of type 'str' could not be converted to Float\n"
        "    full_key: rho\n    object_type=TrainConfig" + HYDRA_TAIL,
    ),
    Row(
        "`epochs` not an integer",
        ("epochs=1.5",),
        "Error merging override epochs=1.5\nValue '1.5' of type 'float' could not be converted to Integer\n"
        "    full_key: epochs\n    object_type=TrainConfig" + HYDRA_TAIL,
    ),
    Row(
        "`device` not one of its options",
        ("device=gpu",),
        "Error merging override device=gpu\nInvalid value 'gpu', expected one of [auto, cpu, cuda]\n"
        "    full_key: device\n    object_type=TrainConfig" + HYDRA_TAIL,
    ),
    Row(
        "`device=cuda` on a machine without CUDA",
        ("device=cuda",),
        "error: device=cuda but no CUDA device is available: use device=auto or device=cpu",
        target="fresh",
        setup="no_cuda",
    ),
    Row(
        "`trainer.precision` not one of its options",
        ("trainer.precision=fp8",),
        "Error merging override trainer.precision=fp8\nInvalid value 'fp8', expected one of [auto, bf16, "
        "bf16_hooks, bf16_naive, fp16, fp32]\n    full_key: trainer.precision\n"
        "    reference_type=TrainerConfig\n    object_type=TrainerConfig" + HYDRA_TAIL,
    ),
    Row(
        "`trainer.on_nonfinite` not one of its options",
        ("trainer.on_nonfinite=ignore",),
        "Error merging override trainer.on_nonfinite=ignore\nInvalid value 'ignore', expected one of [stop, "
        "skip]\n    full_key: trainer.on_nonfinite\n    reference_type=TrainerConfig\n"
        "    object_type=TrainerConfig" + HYDRA_TAIL,
    ),
    Row(
        "`resume` not true, false or auto",
        ("resume=maybe",),
        "error: resume=maybe is not allowed: must be true, false or auto",
    ),
    # ---- unknown keys and options --------------------------------------------------------------------
    Row(
        "misspelled top-level key",
        ("rhoo=0.1",),
        "Could not override 'rhoo'.\nTo append to your config use +rhoo=0.1\n"
        "Key 'rhoo' not in 'TrainConfig'\n    full_key: rhoo\n    object_type=TrainConfig" + HYDRA_TAIL,
    ),
    Row(
        "misspelled key forced in with `+`",
        ("+rhoo=0.1",),
        "error: unknown key rhoo: not in the schema (allowed: batch_size, data, deterministic, device, "
        "epochs, init_from, logger, lr, metrics, model, optimizer, resume, rho, scheduler, seed, trainer, "
        "weight_decay)",
    ),
    Row(
        "misspelled `trainer` key forced in with `+`",
        ("+trainer.precison=bf16",),
        "error: unknown key trainer.precison: not in the schema (allowed: channels_last, checkpoint, "
        "compile, ema_decay, eval_batch_size, grad_clip, label_smoothing, on_nonfinite, precision, progress, "
        "threads)",
    ),
    Row(
        "misspelled key inside a group",
        ("data.augment.rotate=5",),
        "Could not override 'data.augment.rotate'.\nTo append to your config use +data.augment.rotate=5\n"
        "Key 'rotate' is not in struct\n    full_key: data.augment.rotate\n    object_type=dict" + HYDRA_TAIL,
    ),
    Row(
        "a key the model does not take, forced in with `+`",
        ("+model.depth=50",),
        "error: unknown key model.depth: sam_lab.models.resnet18 takes width",
    ),
    Row(
        "a key the scheduler does not take, forced in with `+`",
        ("+scheduler.warmup=5",),
        "error: unknown key scheduler.warmup: sam_lab.schedulers.cosine takes warmup_epochs, final_lr_frac",
    ),
    _unknown(
        "optimizer.rhoo",
        "0.1",
        f"error: unknown key optimizer.rhoo: sam_lab.optim.SAM takes {SAM_KEYS}",
        what="a misspelled optimizer key (SAM passes its **kwargs on to TwoPass)",
    ),
    _unknown(
        "optimizer.sigma",
        "1.0",
        f"error: unknown key optimizer.sigma: sam_lab.optim.SAM takes {SAM_KEYS}",
        what="a key of another optimizer (F-SAM's `sigma` given to SAM)",
    ),
    _unknown(
        "data.augment.rotate",
        "5",
        "error: unknown key data.augment.rotate: data.augment takes crop, flip, cutout, cutout_p",
        what="a misspelled `data.augment` key forced in with `+`",
    ),
    _unknown(
        "model.num_classes",
        "5",
        "error: model.num_classes is set by the trainer, not by the config: remove it",
        what="a key the trainer sets itself (from the dataset)",
    ),
    Row(
        "unknown option of a group",
        ("optimizer=adamw",),
        "In 'train': Could not find 'optimizer/adamw'\n\nAvailable options in 'optimizer':\n"
        + options("optimizer")
        + "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf\n\tprovider=main, "
        "path=file://{conf}\n\tprovider=schema, path=structured://" + HYDRA_TAIL,
    ),
    Row(
        "unknown group",
        ("dataset=cifar10",),
        "Could not override 'dataset'.\nTo append to your config use +dataset=cifar10\nKey 'dataset' not in "
        "'TrainConfig'\n    full_key: dataset\n    object_type=TrainConfig" + HYDRA_TAIL,
    ),
    # ---- cross-checks that need the dataset or the model (after building them, before any write) ---------
    Row(
        "`optimizer.m` micro-batches larger than a batch",
        ("optimizer.m=64",),
        "error: optimizer.m=64 is out of range: each of the m micro-batches needs at least one example, and "
        "the smallest batch has 32 (32 training examples in batches of 32); use optimizer.m <= 32",
        target="fresh",
        kind="checks",
    ),
    Row(
        "`optimizer.m` larger than the last, partial batch of an epoch",
        ("optimizer.m=8", "data.num_train=45"),
        "error: optimizer.m=8 is out of range: each of the m micro-batches needs at least one example, and "
        "the smallest batch has 5 (37 training examples in batches of 32); use optimizer.m <= 5",
        target="fresh",
        kind="checks",
    ),
    Row(
        "`metrics.sharpness.top_k` more eigenvalues than the model has parameters",
        ("metrics.sharpness.top_k=100000",),
        "error: metrics.sharpness.top_k=100000 is out of range: the model has 44622 trainable parameters, so "
        "at most 44621 eigenvalues can be computed",
        target="fresh",
        kind="checks",
    ),
    # ---- resume ------------------------------------------------------------------------------------------
    Row(
        "resume with a different model",
        ("model=resnet34",),
        "error: cannot resume {run}/checkpoints/last.pt: it was written with model._target_="
        "sam_lab.models.resnet18 (this run: sam_lab.models.resnet34); resume with the same settings, or "
        "choose a new hydra.run.dir for a new run",
        kind="resume",
    ),
    Row(
        "resume with the same model class, another width",
        ("model.width=8",),
        "error: cannot resume {run}/checkpoints/last.pt: it was written with model.width=4 (this run: 8); "
        "resume with the same settings, or choose a new hydra.run.dir for a new run",
        kind="resume",
    ),
    Row(
        "resume with a different optimizer",
        ("optimizer=sgd",),
        "error: cannot resume {run}/checkpoints/last.pt: it was written with "
        "optimizer._target_=sam_lab.optim.SAM (this run: sam_lab.optim.SGD), optimizer.adaptive=False "
        "(this run: <unset>), "
        "optimizer.adaptive_params=all (this run: <unset>), and 6 more; resume with the same settings, or "
        "choose a new hydra.run.dir for a new run",
        kind="resume",
    ),
    Row(
        "resume with another learning rate",
        ("lr=0.05",),
        "error: cannot resume {run}/checkpoints/last.pt: it was written with lr=0.1 (this run: 0.05), "
        "optimizer.lr=0.1 (this run: 0.05); resume with the same settings, or choose a new hydra.run.dir "
        "for a new run",
        kind="resume",
    ),
    Row(
        "`resume=false` in a directory that holds a run",
        ("resume=false",),
        "error: run dir {run} already holds a run (checkpoints/last.pt, metrics.jsonl, summary.json); "
        "resume=auto or resume=true continues it, or choose a new hydra.run.dir to start another",
        kind="resume",
    ),
    Row(
        "`resume=true` where there is no checkpoint",
        ("resume=true",),
        "error: resume=true but {run}/checkpoints/last.pt does not exist: nothing to resume in {run} "
        "(resume=auto starts a new run when there is no checkpoint)",
        target="fresh",
        kind="resume",
    ),
    Row(
        "resume from a truncated (damaged) checkpoint",
        (),
        "error: cannot read checkpoint {run}/checkpoints/last.pt (RuntimeError: PytorchStreamReader failed "
        "reading zip archive: failed finding central directory): the file is damaged or not a sam_lab "
        "checkpoint; restore a copy, or delete {run} to start the run over",
        target="broken",
        kind="resume",
    ),
    Row(
        "a finished run without checkpoints (`trainer.checkpoint=false`) started again in its directory",
        ("trainer.checkpoint=false",),
        "error: run dir {run} already holds a run (metrics.jsonl, summary.json); it has no checkpoint to "
        "continue from: choose a new hydra.run.dir, or delete {run}",
        target="fresh",
        setup="no_checkpoint_run",
        kind="resume",
    ),
    Row(
        "a run without a checkpoint whose summary.json is damaged",
        (),
        "error: run dir {run} already holds a run (metrics.jsonl, summary.json); its summary.json cannot be "
        "read (JSONDecodeError: Unterminated string starting at: line 1 column 12 (char 11)) and it has no "
        "checkpoint to continue from: choose a new hydra.run.dir, or delete {run}",
        target="fresh",
        setup="damaged_summary",
        kind="resume",
    ),
    Row(
        "the same command started again while the first is still running (or a requeue while the old job "
        "runs)",
        (),
        "error: run dir {run} is in use by a live run (pid {pid} on {host}, started {started}); one run "
        "directory holds one running process: wait for it to end (or stop it), or choose a new hydra.run.dir",
        target="fresh",
        setup="locked",
        kind="resume",
    ),
    # ---- data ---------------------------------------------------------------------------------------------
    Row(
        "`data.subset` larger than the training set",
        ("data.subset=1000",),
        "error: data.subset must be null or in [1, 32] (training examples left after the val split of 8), "
        "got 1000",
        target="fresh",
        kind="data",
    ),
    Row(
        "`data.val_size` as large as the training set",
        ("data.val_size=40",),
        "error: data.val_size must be in [0, 39] (the training set has 40 examples), got 40",
        target="fresh",
        kind="data",
    ),
    Row(
        "CIFAR-10 files missing, download off",
        ("data=cifar10", "data.root={tmp}/empty", "data.download=false"),
        "error: CIFAR10 files not found under data.root={tmp}/empty: expected "
        "{tmp}/empty/cifar-10-batches-py with data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
        "data_batch_5, test_batch, batches.meta. Set data.download=true to fetch them, or download "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz yourself and extract it into "
        "data.root={tmp}/empty (or point data.root / $SAM_LAB_DATA at a directory with "
        "cifar-10-batches-py/).",
        target="fresh",
        kind="data",
        synthetic=False,
    ),
    Row(
        "a CIFAR-10 file truncated (interrupted copy)",
        ("data=cifar10", "data.root={tmp}/cifar", "data.download=false"),
        "error: CIFAR10 checksum mismatch: {tmp}/cifar/cifar-10-batches-py/data_batch_3 has md5 {md5}, "
        "expected {md5_expected}. The file is corrupted; delete {tmp}/cifar/cifar-10-batches-py and set "
        "data.download=true, or re-extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into "
        "data.root={tmp}/cifar.",
        target="fresh",
        setup="cifar_truncated",
        kind="data",
        synthetic=False,
    ),
    # ---- output directory -----------------------------------------------------------------------------
    Row(
        "run directory cannot be created (a file is in the way)",
        ("hydra.run.dir={tmp}/afile/run",),
        "error: cannot write to hydra.run.dir={tmp}/afile/run: Not a directory",
        target="fresh",
        setup="afile",
        kind="output",
    ),
    Row(
        "sweep directory cannot be created",
        ("-m", "hydra.sweep.dir={tmp}/afile/sweep"),
        "error: cannot write to hydra.sweep.dir={tmp}/afile/sweep: Not a directory",
        target="fresh",
        setup="afile",
        kind="output",
    ),
    Row(
        "run directory is the file-system root",
        ("hydra.run.dir=/",),
        "error: hydra.run.dir=/ is the file-system root: a run writes its files into its own directory; use "
        "e.g. hydra.run.dir=outputs/my_run",
        target="fresh",
        kind="output",
    ),
    Row(
        "run directory is empty",
        ("hydra.run.dir=",),
        "error: hydra.run.dir is empty: give the directory for the files of this run, e.g. "
        "hydra.run.dir=outputs/my_run",
        target="fresh",
        kind="output",
    ),
    Row(
        "run directory is the working directory",
        ("hydra.run.dir=.",),
        "error: hydra.run.dir=. is the working directory: a run writes its files into its own directory; use "
        "e.g. hydra.run.dir=outputs/my_run",
        target="fresh",
        setup="chdir",
        kind="output",
    ),
    Row(
        "sweep directory is the file-system root",
        ("-m", "hydra.sweep.dir=/"),
        "error: hydra.sweep.dir=/ is the file-system root: a run writes its files into its own directory; "
        "use e.g. hydra.sweep.dir=outputs/my_run",
        target="fresh",
        kind="output",
    ),
    # ---- scripts: make_tables.py, plot_runs.py -----------------------------------------------------------
    Row(
        "tables of a directory that does not exist",
        ("{tmp}/nope",),
        "error: no such sweep directory: {tmp}/nope",
        code=2,
        target="fresh",
        kind="scripts",
        script="make_tables",
    ),
    Row(
        "plots of a directory without runs",
        ("{tmp}", "--out", "{tmp}/plots"),
        "error: no runs (directories with .hydra/) under {tmp}",
        code=2,
        target="fresh",
        kind="scripts",
        script="plot_runs",
    ),
    Row(
        "tables written where a file is in the way",
        ("{run}", "--csv", "{tmp}/afile/table.csv"),
        "error: cannot use {tmp}/afile: File exists",
        code=2,
        setup="afile",
        kind="scripts",
        script="make_tables",
    ),
    Row(
        "plots written where a file is in the way",
        ("{run}", "--out", "{tmp}/afile/plots"),
        "error: cannot use {tmp}/afile/plots: Not a directory",
        code=2,
        setup="afile",
        kind="scripts",
        script="plot_runs",
    ),
    # ---- Weights & Biases: training goes on, with one warning ------------------------------------------
    Row(
        "W&B: no API key",
        ("logger=wandb",),
        "W&B: no API key (set WANDB_API_KEY or run `wandb login`): logging offline to {run}/wandb; upload "
        "later with `wandb sync`",
        code=0,
        target="fresh",
        env=(("WANDB_MODE", "online"), ("WANDB_API_KEY", None), ("HOME", "{tmp}")),
        setup="fake_wandb",
        kind="wandb",
    ),
    Row(
        "W&B: server unreachable",
        ("logger=wandb",),
        "W&B: server http://127.0.0.1:9 is unreachable (ConnectionRefusedError: [Errno 111] Connection "
        "refused): logging offline to {run}/wandb; upload later with `wandb sync`",
        code=0,
        target="fresh",
        env=(("WANDB_MODE", "online"), ("WANDB_API_KEY", "k" * 40), ("WANDB_BASE_URL", "http://127.0.0.1:9")),
        setup="fake_wandb",
        kind="wandb",
    ),
    Row(
        "W&B: the server rejects the start (bad key, server error)",
        ("logger=wandb",),
        "W&B online start failed (AuthenticationError: API key rejected by http://127.0.0.1:{port}); trying "
        "offline",
        code=0,
        target="fresh",
        env=(
            ("WANDB_MODE", "online"),
            ("WANDB_API_KEY", "k" * 40),
            ("WANDB_BASE_URL", "http://127.0.0.1:{port}"),
        ),
        setup="fake_wandb:reject_online",
        kind="wandb",
    ),
    Row(
        "W&B: even the offline start fails (e.g. disk full)",
        ("logger=wandb",),
        "W&B offline start failed (OSError: [Errno 28] No space left on device); logging to local files only",
        code=0,
        target="fresh",
        env=(("WANDB_MODE", "offline"),),
        setup="fake_wandb:fail_init",
        kind="wandb",
    ),
    Row(
        "W&B: `log` raises during training",
        ("logger=wandb",),
        "W&B call failed (ConnectionResetError: connection reset by peer); continuing",
        code=0,
        target="fresh",
        env=(("WANDB_MODE", "offline"),),
        setup="fake_wandb:fail_log",
        kind="wandb",
    ),
    Row(
        "W&B: `finish` raises at the end",
        ("logger=wandb",),
        "W&B call failed (TimeoutError: upload timed out); continuing",
        code=0,
        target="fresh",
        env=(("WANDB_MODE", "offline"),),
        setup="fake_wandb:fail_finish",
        kind="wandb",
    ),
    Row(
        "W&B: wandb not installed",
        ("logger=wandb",),
        "wandb is not installed: logging to local files only",
        code=0,
        target="fresh",
        setup="no_wandb",
        kind="wandb",
    ),
]

SECTIONS = {
    "config": "Config values and keys (refused before anything is written; also when resuming a run)",
    "checks": "Settings checked against the dataset and the model (after building them, before any write)",
    "resume": "The run directory (the existing run directory is left exactly as it was)",
    "data": "Data",
    "output": "Output directory",
    "scripts": "Scripts (`scripts/make_tables.py`, `scripts/plot_runs.py`; exit status 2)",
    "wandb": "Weights & Biases (exit status 0: training goes on and writes its local files)",
}


def row_id(row: Row) -> str:
    return row.what.replace("`", "")


def call_main(args: list[str]) -> tuple[int, str, list[str]]:
    """`python -m sam_lab.train ARGS` in this process: (exit status, stderr, sam_lab's warnings).

    Same code path as the command line (Hydra parses sys.argv); Hydra's logging set-up is undone afterwards
    so that its file handler does not stay open on a run directory."""
    from hydra.core.global_hydra import GlobalHydra

    from sam_lab.train import main

    root = logging.getLogger()
    handlers, level, argv = root.handlers[:], root.level, sys.argv
    err, code = io.StringIO(), 0
    sys.argv = ["sam_lab.train", *args]
    try:
        with contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers, root.level = handlers, level
    mine = [str(w.message) for w in caught if issubclass(w.category, UserWarning) and "sam_lab" in w.filename]
    return code, err.getvalue(), mine


def call_script(name: str, args: list[str]) -> tuple[int, str]:
    """`python scripts/NAME.py ARGS` in this process: (exit status, stderr)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, CONF.parent / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = module.main(args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, err.getvalue()


def _cell(text: str) -> str:
    return text.replace("<", "&lt;").replace("|", "\\|").replace("\n", "<br>")


def render() -> str:
    """The Markdown tables of docs/reliability.md (paths and checksums as RUN, TMP, CONF, PORT, MD5)."""
    subs = {
        "{run}": "RUN",
        "{tmp}": "TMP",
        "{port}": "PORT",
        "{md5}": "MD5",
        "{md5_expected}": "MD5_EXPECTED",
        "{conf}": "CONF",
        "{pid}": "PID",
        "{host}": "HOST",
        "{started}": "STARTED",
    }
    out, n = [], 0
    for kind, title in SECTIONS.items():
        out += [
            f"### {title}",
            "",
            "| # | bad input | arguments | exit | what the user sees |",
            "|---|---|---|---|---|",
        ]
        for row in ROWS:
            if row.kind != kind:
                continue
            n += 1
            args, expect = " ".join(row.args), row.expect
            for k, v in subs.items():
                args, expect = args.replace(k, v), expect.replace(k, v)
            env = " ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in row.env)
            for k, v in subs.items():
                env = env.replace(k, v)
            args = f"{row.script}.py {args}" if row.script else args
            shown = f"`{args}`" if args else "(none)"
            if env:
                shown += f" with `{env}`"
            out.append(f"| {n} | {_cell(row.what)} | {_cell(shown)} | {row.code} | {_cell(expect)} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
