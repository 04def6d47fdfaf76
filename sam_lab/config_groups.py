"""The config groups (data, model, optimizer, scheduler, logger): their keys are the keyword arguments of
their `_target_`, whose ranges the target declares (`sam_lab.ranges`). Checked at start by
`sam_lab.config.validate`; `check_built` adds what needs the dataset and the model, after building them and
before anything is written.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from sam_lab.data.base import Augment
from sam_lab.ranges import ConfigError, Range, accepted_keys, check_values, ranges_of

# What every option of a group takes (docs/EXTENDING.md), beyond what its target declares itself.
GROUP_KEYS: dict[str, dict[str, Any]] = {
    "model": {"width": Range(1, integer=True)},
    "data": {
        "val_size": Range(0, integer=True),
        "subset": Range(1, integer=True, null=True),
        "augment": Augment,  # its fields' metadata: the ranges Augment checks itself
    },
}
# Groups whose keys are the keyword arguments of their `_target_`, and the arguments the trainer supplies.
TARGET_GROUPS = {
    "data": (),
    "model": ("num_classes",),
    "optimizer": ("params",),
    "scheduler": ("optimizer", "total_steps", "steps_per_epoch"),
    "logger": (),
}


def _declared(group: str, target: Any) -> dict[str, Any]:
    return {**GROUP_KEYS.get(group, {}), **ranges_of(target)}


def _target(node: Any) -> Any:
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    try:
        return get_method(node._target_)
    except Exception:  # noqa: BLE001 - a target that cannot be imported: instantiate reports it
        return None


def check_ranges(cfg: DictConfig) -> None:
    """The declared ranges of every group's keys; raises ConfigError naming the key."""
    for group in TARGET_GROUPS:
        target = _target(cfg.get(group))
        if target is not None:
            values = OmegaConf.to_container(cfg[group], resolve=True)
            check_values(values, _declared(group, target), f"{group}.")


def check_keys(cfg: DictConfig) -> None:
    """Refuse `+optimizer.typo=1` in a group whose target takes no such argument (followed up the class
    hierarchy: a SAM variant passes its **kwargs on to `TwoPass`), nested keys (`data.augment`), and keys the
    trainer supplies itself."""
    for group, supplied in TARGET_GROUPS.items():
        target = _target(cfg.get(group))
        if target is None:
            continue
        keys = [k for k in cfg[group] if not str(k).startswith("_")]
        given = [k for k in keys if k in supplied]
        if given:
            raise ConfigError(f"{group}.{given[0]} is set by the trainer, not by the config: remove it")
        allowed = accepted_keys(target)
        if allowed is None:
            continue
        allowed = [k for k in allowed if k not in supplied]
        unknown = sorted(k for k in keys if k not in allowed)
        if unknown:
            takes = ", ".join(allowed)
            raise ConfigError(f"unknown key {group}.{unknown[0]}: {cfg[group]._target_} takes {takes}")
        for key, rng in _declared(group, target).items():  # nested schemas (data.augment): their keys
            node = cfg[group].get(key)
            if isinstance(rng, type) and isinstance(node, DictConfig):
                fields = accepted_keys(rng) or []
                extra = sorted(k for k in node if k not in fields)
                if extra:
                    takes = ", ".join(fields)
                    raise ConfigError(f"unknown key {group}.{key}.{extra[0]}: {group}.{key} takes {takes}")


def check_built(cfg: DictConfig, train_size: int, num_params: int) -> None:
    """Cross-checks that need the dataset or the model, run after building them and before any write."""
    m, bs = OmegaConf.select(cfg, "optimizer.m"), cfg.batch_size
    smallest = min(bs, train_size) if train_size % bs == 0 or train_size < bs else train_size % bs
    if isinstance(m, int) and m > smallest:
        raise ConfigError(
            f"optimizer.m={m} is out of range: each of the m micro-batches needs at least one example, and "
            f"the smallest batch has {smallest} ({train_size} training examples in batches of {bs}); use "
            f"optimizer.m <= {smallest}"
        )
    top_k = cfg.metrics.sharpness.top_k
    if cfg.metrics.sharpness.enabled and top_k >= num_params:
        raise ConfigError(
            f"metrics.sharpness.top_k={top_k} is out of range: the model has {num_params} trainable "
            f"parameters, so at most {num_params - 1} eigenvalues can be computed"
        )
