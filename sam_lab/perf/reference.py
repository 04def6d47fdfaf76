"""The conventional CIFAR training loop the benchmark compares against, written the way most code bases do.

- Data: a map-style dataset of HWC uint8 arrays (as torchvision's CIFAR10 stores them), each sample turned
  into a PIL image and passed through per-sample torchvision transforms (RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize), batched by a torch DataLoader, copied to the device.
- fp32, NCHW, torch.optim.SGD with its default implementation choice.
- SAM as in the widely copied reference implementation (github.com/davda54/sam): `first_step` climbs to
  w + e with a per-parameter loop and a fresh copy of every parameter, `second_step` restores w and calls the
  base optimizer; BatchNorm running statistics are kept out of the second pass by setting momentum to 0.
- Per-step logging with `.item()`, as such loops print running loss and accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sam_lab.data import import_torchvision
from sam_lab.models.layout import to_layout  # the conventional loop, NCHW; safe on every CPU


class ReferenceSAM(torch.optim.Optimizer):
    """Two-pass SAM as in davda54/sam: e = rho * g / ||g||, descend with the base optimizer along g(w + e)."""

    def __init__(
        self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05, **kwargs
    ) -> None:
        defaults = dict(rho=rho, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * scale.to(p))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def _grad_norm(self) -> Tensor:
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        return torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)


def disable_running_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.backup_momentum = m.momentum
            m.momentum = 0


def enable_running_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and hasattr(m, "backup_momentum"):
            m.momentum = m.backup_momentum


class CifarLike(Dataset):
    """HWC uint8 images and int labels, read like torchvision.datasets.CIFAR10: PIL image, then transform."""

    def __init__(self, images_nchw: Tensor, labels: Tensor, transform) -> None:
        self.data = images_nchw.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3), as CIFAR10.data
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = Image.fromarray(self.data[i])
        return self.transform(img), self.targets[i]


def cifar_transform(mean: Sequence[float], std: Sequence[float], crop: int = 4):
    """The standard CIFAR training transform, per sample."""
    T = import_torchvision().transforms
    return T.Compose(
        [T.RandomCrop(32, padding=crop), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
    )


class ReferenceLoop:
    """One conventional training step per call; `batches()` yields device batches from the DataLoader."""

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        device: torch.device,
        sam: bool,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        rho: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        self.model, self.device, self.sam = to_layout(model, device, False), device, sam
        kw = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.optimizer = (
            ReferenceSAM(model.parameters(), torch.optim.SGD, rho=rho, **kw)
            if sam
            else (torch.optim.SGD(model.parameters(), **kw))
        )
        dataset = CifarLike(images, labels, cifar_transform(mean, std))
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless device batches, epoch after epoch."""
        while True:
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def step(self, x: Tensor, y: Tensor) -> float:
        self.model.train()
        if self.sam:
            enable_running_stats(self.model)
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            self.optimizer.first_step(zero_grad=True)
            disable_running_stats(self.model)
            F.cross_entropy(self.model(x), y).backward()
            self.optimizer.second_step(zero_grad=True)
        else:
            self.optimizer.zero_grad()
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            self.optimizer.step()
        value = loss.item()
        self.loss_sum += value * len(y)
        self.correct += (out.argmax(1) == y).sum().item()
        self.seen += len(y)
        return value
