"""The two training loops the benchmark times: sam_lab's own (`Ours`) and the conventional `Reference`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sam_lab.perf.reference import ReferenceLoop

CONF = Path(__file__).resolve().parents[2] / "conf"


def config_names(group: str) -> list[str]:
    """The names a Hydra config group offers, e.g. config_names("model") -> ["resnet18", ...]."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


class Runner:
    """A named training configuration: `next_batch()` then `step(x, y)`, as a training loop does them."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def next_batch(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def step(self, x: Tensor, y: Tensor) -> Any:
        raise NotImplementedError

    def mean_loss(self) -> float:
        raise NotImplementedError


class Ours(Runner):
    """sam_lab's own path: `sam_lab.train.build` (the Trainer of `python -m sam_lab.train`), its device
    `Batches` and `Trainer.train_step` — the code a training run executes, not a copy of it."""

    def __init__(self, overrides: Sequence[str], run_dir: Path) -> None:
        from hydra import compose, initialize_config_dir

        from sam_lab.engine import Sums
        from sam_lab.train import build

        with initialize_config_dir(str(CONF), version_base="1.3"):
            self.cfg = compose("train", overrides=list(overrides))
        self.trainer = build(self.cfg, run_dir)
        self.model, self.optimizer = self.trainer.model, self.trainer.optimizer
        self.sums, self.i = Sums(self.trainer.device), 0
        self._batches = self._stream()

    def _stream(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = 0
        while True:
            epoch += 1
            yield from self.trainer.train_batches.epoch(epoch)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        return next(self._batches)

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        self.model.train()
        loss = self.trainer.train_step(x, y, self.i, self.sums)
        self.i += 1
        return loss

    def mean_loss(self) -> float:
        return self.sums.means()["train/loss"]


class Reference(Runner):
    """The conventional loop of `sam_lab.perf.reference` on the same model config, data and device."""

    def __init__(self, ours: Ours, sam: bool, num_workers: int) -> None:
        from hydra.utils import instantiate

        cfg, data = ours.cfg, ours.trainer.data
        torch.manual_seed(cfg.seed)
        model = instantiate(cfg.model, num_classes=data.num_classes)
        self.loop = ReferenceLoop(
            model,
            data.train.images,
            data.train.labels,
            data.mean,
            data.std,
            cfg.batch_size,
            ours.trainer.device,
            sam=sam,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            rho=cfg.rho,
            num_workers=num_workers,
            seed=cfg.seed,
        )
        self.model, self.optimizer = self.loop.model, self.loop.optimizer
        self._batches = self.loop.batches()

    def next_batch(self) -> tuple[Tensor, Tensor]:
        return next(self._batches)

    def step(self, x: Tensor, y: Tensor) -> float:
        return self.loop.step(x, y)

    def mean_loss(self) -> float:
        return self.loop.loss_sum / max(1, self.loop.seen)
