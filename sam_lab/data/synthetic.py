"""Random images and labels for unit tests: no files, no downloads, any size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sam_lab.data.base import Augment, DataBundle, ImageSet, as_augment, split_train_val
from sam_lab.ranges import Range, declare

DATA_SEED = 1234  # the images are fixed; `seed` only moves the train/val split, as for the real datasets
STD = ((256**2 - 1) / 12) ** 0.5 / 255  # std of the uniform distribution on 0..255, in [0, 1] units (~0.29)


@declare(
    num_train=Range(2, integer=True), num_test=Range(1, integer=True), num_classes=Range(2, integer=True)
)
def load_synthetic(
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 10,
    val_size: int = 0,
    subset: int | None = None,
    seed: int = 0,
    augment: Augment | Mapping[str, Any] | None = None,
) -> DataBundle:
    """Uniform random uint8 images with uniform labels; `num_train` includes the `val_size` val examples.

    Every argument has a default so tests can call `load_synthetic()`; `augment=None` means no augmentation.
    """
    g = torch.Generator().manual_seed(DATA_SEED)
    n = num_train + num_test
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=g, dtype=torch.int64)
    train, val = split_train_val(ImageSet(images[:num_train], labels[:num_train]), val_size, subset, seed)
    test = ImageSet(images[num_train:].contiguous(), labels[num_train:].contiguous())
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        mean=(0.5, 0.5, 0.5),
        std=(STD, STD, STD),
        augment=as_augment(augment),
        name="synthetic",
    )
