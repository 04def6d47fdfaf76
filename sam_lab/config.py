"""The typed schema of a run: every top-level, `trainer.*` and `metrics.*` key, its default and its range.

This file is the one home of those defaults and ranges (conf/train.yaml only composes the groups). Hydra
merges the composed config onto `TrainConfig`, so a misspelled key, an unknown option or a value of the wrong
type is refused at composition with a message naming the key; `validate` adds the ranges, read from each
field's metadata (`at_least`, `within`), refuses non-finite numbers anywhere, and checks the groups'
keys and declared ranges (`sam_lab.config_groups`, which also holds the cross-checks that need the dataset
and the model). All of it runs before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from sam_lab import config_groups
from sam_lab.ranges import ConfigError, Range, check
from sam_lab.run import dirnames


def at_least(lo: float, default: Any, why: str = "") -> Any:
    """A field whose value must be >= lo (None allowed where the default is None)."""
    return field(default=default, metadata={"range": Range(lo, null=default is None), "why": why})


def within(lo: float, hi: float, default: Any) -> Any:
    """A field whose value must lie in [lo, hi]."""
    return field(default=default, metadata={"range": Range(lo, hi)})


def value_of(x: Any) -> Any:
    """The plain value of a config enum (`str()` of a `(str, Enum)` member is "Class.member" on 3.11)."""
    return x.value if isinstance(x, Enum) else x


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):  # docs/precision.md, sam_lab/optim/precision.py
    auto = "auto"  # bf16 autocast on CUDA, fp32 elsewhere
    bf16 = "bf16"  # bf16 autocast; passes at w + e (SAM's second pass) in fp32, so e is kept
    bf16_hooks = "bf16_hooks"  # bf16 everywhere; Conv/Linear see w and e separately (forward hooks)
    bf16_naive = "bf16_naive"  # bf16 autocast of w + e: most of the perturbation is rounded away
    fp16 = "fp16"  # fp16 autocast as bf16, one loss scaler across the passes of a step
    fp32 = "fp32"  # no autocast (on CUDA also no TF32)


class OnNonfinite(str, Enum):
    stop = "stop"  # end the run with status "diverged", keeping the last good checkpoint
    skip = "skip"  # undo the step (weights, buffers, optimizer state), go on; counted in train/skipped_steps


class Progress(str, Enum):
    auto = "auto"  # a tqdm bar only when stderr is a terminal
    on = "on"
    off = "off"


@dataclass
class TrainerConfig:
    precision: Precision = Precision.auto
    compile: bool = False  # torch.compile the model (not on double-backward paths)
    # auto: channels_last on every device (CPU too: 1.15-1.5x faster, docs/performance.md) | true | false;
    # Any: OmegaConf has no Union. On CPU the layers of oneDNN issue #6035 run safely in either layout
    channels_last: Any = "auto"
    eval_batch_size: int = at_least(1, 1024)
    label_smoothing: float = within(0.0, 1.0, 0.0)
    progress: Progress = Progress.auto
    checkpoint: bool = True  # write checkpoints/last.pt every epoch
    on_nonfinite: OnNonfinite = OnNonfinite.stop  # what a NaN/inf training loss does (docs/reliability.md)
    threads: int | None = at_least(1, None)  # CPU threads; None = the launcher's cpus_per_task, else torch's
    # max global L2 norm of the descent gradient d, clipped before momentum and weight decay; null = off
    grad_clip: float | None = field(default=None, metadata={"range": Range(0.0, lo_open=True, null=True)})
    # exponential moving average of weights and BN buffers, evaluated as ema/*; null = off (sam_lab/ema.py)
    ema_decay: float | None = field(default=None, metadata={"range": Range(0.0, 1.0, null=True)})


class SharpnessWeights(str, Enum):
    final = "final"  # the weights at the end of training
    best_val = "best_val"  # the best-validation-accuracy checkpoint (final weights if there is no val split)


class SharpnessProtocol(str, Enum):
    standard = "standard"  # Hessian of the mean loss over the whole fixed subset (docs/sharpness.md)
    per_batch = "per_batch"  # empirical-SAM reference: lambda_max of each of `per_batch_count` batches


class EigenOrder(str, Enum):
    LM = "LM"  # largest magnitude
    LA = "LA"  # largest algebraic


@dataclass
class SharpnessConfig:
    """Top Hessian eigenvalue(s) of the training loss; docs/sharpness.md, sam_lab/metrics/hessian.py."""

    enabled: bool = True
    num_samples: int = at_least(
        1, 5120
    )  # fixed, seeded, un-augmented subset of the training set (capped at its size)
    batch_size: int = at_least(1, 256)  # HVP batch size: bounds memory only, the result does not depend on it
    every: int | None = at_least(
        0, None
    )  # epochs between computations during training; null/0 = at the end only
    weights: SharpnessWeights = SharpnessWeights.final  # which weights the end-of-training value uses
    top_k: int = at_least(
        1, 1
    )  # eigenvalues reported as sharpness/top_k (the first one is sharpness/lambda_max)
    trace: int = at_least(0, 0)  # Hutchinson probes for sharpness/trace and trace_se (0 = off)
    density: bool = False  # SLQ eigenvalue density PNG under <run dir>/sharpness/, logged to W&B
    density_steps: int = at_least(2, 64)  # Lanczos steps of the density (one probe)
    tol: float = within(1e-12, 0.5, 1e-3)  # relative residual of the Ritz pairs (ARPACK's rule)
    protocol: SharpnessProtocol = SharpnessProtocol.standard
    # per_batch protocol (the empirical-SAM study's code; docs/sharpness.md): the top `per_batch_top_k`
    # eigenvalues of each of `per_batch_count` batches of `per_batch_size`, pooled
    per_batch_count: int = at_least(1, 40)
    per_batch_size: int = at_least(1, 128)
    per_batch_top_k: int = at_least(1, 5)
    per_batch_which: EigenOrder = EigenOrder.LM  # LM: largest magnitude (PyHessian's deflation) | LA: largest
    per_batch_augment: bool = (
        False  # batches from the augmented training stream (the study) or a fixed subset
    )
    per_batch_cutout_p: float = within(
        0.0, 1.0, 0.5
    )  # with per_batch_augment: cutout probability (study: 0.5)
    seed: int = 0  # subset and start vectors; independent of the training seed


@dataclass
class MetricsConfig:
    grad_stats_every: int = at_least(0, 10)  # steps between update-magnitude statistics (0 = off)
    probe_sam_every: int = at_least(
        0, 0
    )  # sgd only: statistics against a SAM probe gradient every N steps (0 = off)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)


@dataclass
class TrainConfig:
    seed: int = at_least(0, 0)
    rho: float = at_least(0.0, 0.05)  # the SAM family's radius, interpolated by conf/optimizer/*.yaml
    epochs: int = at_least(1, 200)
    batch_size: int = at_least(1, 128)
    lr: float = at_least(0.0, 0.1)
    weight_decay: float = at_least(0.0, 5e-4)
    device: Device = Device.auto
    # auto: continue <run dir>/checkpoints/last.pt if there is one | true | false (sam_lab/run/rundir.py);
    # Any because OmegaConf has no Union
    resume: Any = "auto"
    deterministic: bool = False  # torch deterministic algorithms (slower on GPU; README: Determinism)
    # a checkpoint whose model weights start this NEW run (optimizer state fresh; e.g. SAM fine-tuning of an
    # SGD-trained model); a resume ignores it: the run's own checkpoint has the weights
    init_from: str | None = None
    data: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    logger: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def precision(cfg: DictConfig, device: Any) -> str:
    """`trainer.precision` on `device`: auto = bf16 autocast on CUDA, fp32 elsewhere."""
    value = value_of(cfg.trainer.precision)
    return ("bf16" if device.type == "cuda" else "fp32") if value == "auto" else value


def channels_last(cfg: DictConfig, device: Any) -> bool:
    """`trainer.channels_last` on `device`: auto = channels_last everywhere (measured faster on CPU and GPU);
    the CPU layers that oneDNN gets wrong in any layout run as matrix products (sam_lab/models/layout.py)."""
    value = cfg.trainer.channels_last
    return True if value == "auto" else bool(value)


def progress(cfg: DictConfig) -> bool:
    """`trainer.progress`: on, off, or auto (a bar only when stderr is a terminal)."""
    value = value_of(cfg.trainer.progress)
    return value == "on" or (value == "auto" and sys.stderr.isatty())


def register() -> None:
    from sam_lab.run.sweep import register_resolvers  # here: sweep.py's callback is imported by Hydra alone

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    # Resolvers of the run and sweep directory names (conf/train.yaml, sam_lab/run/dirnames.py). `${pid:}`:
    # two runs started in the same microsecond still differ. The cached ones are computed once, in the
    # launching process: Hydra copies the resolver cache into each job's config, also for submitit jobs.
    resolvers = {"pid": os.getpid, "sweep_overrides": dirnames.sweep_overrides}
    resolvers.update(shorten=dirnames.shorten, sweep_name=dirnames.sweep_name, job_name=dirnames.job_name)
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=name in ("pid", "sweep_overrides"))
    register_resolvers()  # the launcher configs' ${sam_lab.cpus_per_job:N} and ${sam_lab.gpus:}


def _ranges(cls: type, prefix: str = "") -> dict[str, Range]:
    """Every ranged field of a schema dataclass, nested ones included, as dotted key -> Range."""
    out = {}
    for f in dataclasses.fields(cls):
        if "range" in f.metadata:
            out[prefix + f.name] = f.metadata["range"]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out.update(_ranges(type(default), f"{prefix}{f.name}."))
    return out


def _finite(node: Any, key: str) -> None:
    """No NaN or infinity anywhere: `nan < 0` is False, so a range alone lets them through."""
    if isinstance(node, DictConfig):
        for k in node:
            _finite(node[k], f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for item in node:
            _finite(item, key)
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} is not allowed: must be a finite number")


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked from the config alone; raises ConfigError naming the key."""
    for key, rng in _ranges(TrainConfig).items():
        check(key, OmegaConf.select(cfg, key), rng)
    _finite(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), "")
    if OmegaConf.select(cfg, "metrics.sharpness.trace") == 1:
        raise ConfigError("metrics.sharpness.trace=1 is out of range: 0 (off) or >= 2 probes (an error bar)")
    check_fp16(cfg)
    resume = cfg.get("resume")
    if not (isinstance(resume, bool) or resume == "auto"):
        raise ConfigError(f"resume={resume} is not allowed: must be true, false or auto")
    layout = OmegaConf.select(cfg, "trainer.channels_last")
    if not (isinstance(layout, bool) or layout == "auto"):
        raise ConfigError(f"trainer.channels_last={layout} is not allowed: must be true, false or auto")
    config_groups.check_ranges(cfg)
    check_keys(cfg)
    config_groups.check_keys(cfg)


def check_fp16(cfg: DictConfig) -> None:
    """fp16 needs an optimizer that can thread a loss scale through its passes (class flag)."""
    target = OmegaConf.select(cfg, "optimizer._target_")
    if value_of(OmegaConf.select(cfg, "trainer.precision")) != "fp16" or not target:
        return
    try:
        ok = getattr(get_method(target), "supports_loss_scaling", True)
    except Exception:  # noqa: BLE001 - a target that cannot be imported: instantiate reports it
        return
    if not ok:
        raise ConfigError(f"trainer.precision=fp16 is not supported by {target}: use bf16 or fp32")


def check_keys(cfg: DictConfig) -> None:
    """Refuse keys that nothing reads: `+typo=1` at the top level or in `trainer`/`metrics` (Hydra lets `+`
    append to a structured config); the groups' keys: `config_groups.check_keys`."""
    schema = {"": TrainConfig, "trainer.": TrainerConfig, "metrics.": MetricsConfig}
    for prefix, cls in schema.items():
        node = cfg if not prefix else cfg.get(prefix[:-1]) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(node) - known - {"hydra"})
        if unknown:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"unknown key {prefix}{unknown[0]}: not in the schema (allowed: {allowed})")
