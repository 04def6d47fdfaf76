"""scikit-learn's 8x8 digits as a tiny CIFAR-shaped dataset: real images that ship inside a package, so
offline demos and CI can train something that actually learns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from sam_lab.data.base import (
    Augment,
    DataBundle,
    DataError,
    ImageSet,
    as_augment,
    channel_stats,
    split_train_val,
)
from sam_lab.ranges import Range, declare

TEST_SPLIT_SEED = 0  # fixed, independent of `seed`, so the test set never changes between runs


def digits_images() -> ImageSet:
    """All 1797 digits: 16 grey levels scaled to 0..255, bilinearly upsampled once to 32x32, 3 channels."""
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = sk_load_digits(return_X_y=True)
    grey = torch.from_numpy(x).float().view(-1, 1, 8, 8) * (255.0 / 16.0)
    big = F.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ImageSet(images, torch.from_numpy(y).to(torch.int64))


@declare(test_size=Range(1, integer=True))
def load_digits(
    val_size: int, subset: int | None, seed: int, augment: Augment | Mapping[str, Any], test_size: int = 297
) -> DataBundle:
    """Digits as a DataBundle: a fixed test split of `test_size`, then a `seed`-dependent val split."""
    data = digits_images()
    n = len(data)
    if not 1 <= test_size < n:
        raise DataError(f"data.test_size must be in [1, {n - 1}], got {test_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
    test = data.select(perm[n - test_size :].sort().values)
    rest = data.select(perm[: n - test_size].sort().values)
    train, val = split_train_val(rest, val_size, subset, seed)
    mean, std = channel_stats(train.images)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=10,
        mean=mean,
        std=std,
        augment=as_augment(augment),
        name="digits",
    )
