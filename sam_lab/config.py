"""The structured schema of the top-level config, and the range checks the types cannot express.

Hydra merges `conf/train.yaml` onto `TrainConfig`, so a misspelled key, an unknown option or a value of the
wrong type is refused at composition with a message naming the key. `validate` adds the ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast on CUDA, fp32 elsewhere
    bf16 = "bf16"
    fp32 = "fp32"


class Progress(str, Enum):
    auto = "auto"  # a tqdm bar only when stderr is a terminal
    on = "on"
    off = "off"


@dataclass
class TrainerConfig:
    precision: Precision = Precision.auto
    compile: bool = False  # torch.compile the model (not on double-backward paths)
    channels_last: bool = True
    eval_batch_size: int = 1024
    label_smoothing: float = 0.0
    progress: Progress = Progress.auto
    checkpoint: bool = True  # write checkpoints/last.pt every epoch
    threads: int | None = None  # CPU threads; None = the launcher's cpus_per_task, else torch's default


@dataclass
class MetricsConfig:
    grad_stats_every: int = 10  # steps between update-magnitude statistics (0 = off)
    probe_sam_every: int = 0  # sgd only: statistics against a SAM probe gradient every N steps (0 = off)
    sharpness: Any = field(default_factory=dict)


@dataclass
class TrainConfig:
    seed: int = 0
    rho: float = 0.05
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    device: Device = Device.auto
    resume: bool = False
    deterministic: bool = False
    data: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    logger: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


class ConfigError(ValueError):
    """A user error in the configuration: reported as one line, exit code 1, no traceback."""


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


RANGES: dict[str, tuple[float, float | None, str]] = {
    # key: (lower bound, upper bound or None, how the bound applies)
    "rho": (0.0, None, ">="),
    "epochs": (1, None, ">="),
    "batch_size": (1, None, ">="),
    "lr": (0.0, None, ">="),
    "weight_decay": (0.0, None, ">="),
    "trainer.eval_batch_size": (1, None, ">="),
    "trainer.threads": (1, None, ">="),
    "trainer.label_smoothing": (0.0, 1.0, "in"),
    "metrics.grad_stats_every": (0, None, ">="),
    "metrics.probe_sam_every": (0, None, ">="),
}


def validate(cfg: DictConfig) -> None:
    """Range checks on the composed config; raises ConfigError naming the key."""
    from omegaconf import OmegaConf

    for key, (lo, hi, kind) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if kind == ">=" and value < lo:
            raise ConfigError(f"{key}={value} is out of range: must be >= {lo}")
        if kind == "in" and not lo <= value <= hi:
            raise ConfigError(f"{key}={value} is out of range: must be in [{lo}, {hi}]")
    subset = OmegaConf.select(cfg, "data.subset")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise ConfigError(f"data.subset={subset} is out of range: must be a positive integer or null")
    val_size = OmegaConf.select(cfg, "data.val_size")
    if val_size is not None and (not isinstance(val_size, int) or val_size < 0):
        raise ConfigError(f"data.val_size={val_size} is out of range: must be an integer >= 0")
