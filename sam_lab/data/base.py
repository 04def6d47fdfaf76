"""Containers shared by every dataset, and the split logic they all use.

A dataset is three uint8 image sets (train / val / test) plus the per-channel statistics used to normalise
them; normalisation and augmentation happen later, batched on the device (`sam_lab.data.loader`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sam_lab.ranges import Range, check_values, ranges_of


class DataError(ValueError):
    """A dataset cannot be loaded as configured; the message names the `data.*` key and the fix."""


@dataclass
class ImageSet:
    """uint8 images (N, 3, H, W), contiguous, and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"ImageSet.images must be uint8 (N, 3, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"ImageSet.labels must be int64 ({len(self.images)},), got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: torch.Tensor | slice) -> ImageSet:
        """The examples at `index` (e.g. a fixed un-augmented subset for sharpness)."""
        return ImageSet(self.images[index].contiguous(), self.labels[index].contiguous())


@dataclass
class Augment:
    """Training-time augmentation; val/test batches are never augmented."""

    # random-crop zero padding in pixels (torchvision RandomCrop(32, padding=crop)); 0 = off
    crop: int = dataclasses.field(default=4, metadata={"range": Range(0, integer=True)})
    # random horizontal flip, p=0.5
    flip: bool = dataclasses.field(default=True, metadata={"range": Range(flag=True)})
    # side of a square zeroed after normalisation (DeVries & Taylor 2017); 0 = off
    cutout: int = dataclasses.field(default=0, metadata={"range": Range(0, integer=True)})
    # probability that an image gets the cutout square (1 = every image, as the SAM paper; the reference
    # PyTorch SAM code uses 0.5)
    cutout_p: float = dataclasses.field(default=1.0, metadata={"range": Range(0.0, 1.0)})

    def __post_init__(self) -> None:
        check_values(dataclasses.asdict(self), ranges_of(Augment), "data.augment.")


@dataclass
class DataBundle:
    train: ImageSet
    val: ImageSet | None  # None when val_size == 0
    test: ImageSet
    num_classes: int
    mean: tuple[float, float, float]  # per-channel, [0, 1] units
    std: tuple[float, float, float]
    augment: Augment
    name: str


def as_augment(augment: Augment | Mapping[str, Any] | None) -> Augment:
    """Accept the Hydra dict (or DictConfig) form of `data.augment` as well as an Augment."""
    if augment is None:
        return Augment(crop=0, flip=False, cutout=0)
    if isinstance(augment, Augment):
        return augment
    allowed = [f.name for f in dataclasses.fields(Augment)]
    unknown = sorted(set(augment) - set(allowed))
    if unknown:
        raise DataError(f"unknown key data.augment.{unknown[0]}: takes {', '.join(allowed)}")
    return Augment(**{k: augment[k] for k in augment})


def split_train_val(
    data: ImageSet, val_size: int, subset: int | None, seed: int
) -> tuple[ImageSet, ImageSet | None]:
    """Seeded train/val split, then the training subset.

    A permutation of the training set is drawn with `torch.Generator().manual_seed(seed)`; its LAST `val_size`
    entries form the validation set. Both parts keep the original (official) order, so `subset=N` keeps the
    first N official training examples that are not in val, and `val_size=0` leaves the official set intact.
    """
    n = len(data)
    if not 0 <= val_size < n:
        raise DataError(
            f"data.val_size must be in [0, {n - 1}] (the training set has {n} examples), got {val_size}"
        )
    val = None
    if val_size > 0:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val = data.select(perm[n - val_size :].sort().values)
        data = data.select(perm[: n - val_size].sort().values)
    if subset is not None:
        if not 1 <= subset <= len(data):
            raise DataError(
                f"data.subset must be null or in [1, {len(data)}] (training examples left after "
                f"the val split of {val_size}), got {subset}"
            )
        data = data.select(slice(0, subset))
    return data, val


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.to(torch.float64).div_(255).transpose(0, 1).reshape(3, -1)
    mean, std = x.mean(1).tolist(), x.std(1).tolist()
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
