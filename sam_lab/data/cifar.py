"""CIFAR-10 / CIFAR-100 through torchvision (its download and md5 checks), turned into uint8 tensors.

Every failure a user can cause (files missing, no network, a corrupted file) ends in one `DataError` that says
which path was expected and how to get the files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sam_lab.data.base import Augment, DataBundle, DataError, ImageSet, as_augment, split_train_val
from sam_lab.data.compat import import_torchvision

# The usual per-channel statistics of each training set, in [0, 1] units (std over pixels, not of the means).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CLASSES = {"cifar10": ("CIFAR10", 10), "cifar100": ("CIFAR100", 100)}


def _files(cls: Any) -> list[tuple[str, str]]:
    return [(f, md5) for f, md5 in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _how_to_get(cls: Any, root: Path) -> str:
    return (
        f"Set data.download=true to fetch them, or download {cls.url} yourself and extract it into "
        f"data.root={root} (or point data.root / $SAM_LAB_DATA at a directory with {cls.base_folder}/)."
    )


def _diagnose(cls: Any, root: Path, cause: Exception) -> DataError:
    """Turn torchvision's generic 'not found or corrupted' into a message naming the bad file."""
    folder = root / cls.base_folder
    missing = [f for f, _ in _files(cls) if not (folder / f).is_file()]
    if missing:
        return DataError(
            f"{cls.__name__} files not found under data.root={root}: expected {folder} with "
            f"{', '.join(missing)}. " + _how_to_get(cls, root)
        )
    for f, md5 in _files(cls):
        got = _md5(folder / f)
        if got != md5:
            return DataError(
                f"{cls.__name__} checksum mismatch: {folder / f} has md5 {got}, expected {md5}. "
                f"The file is corrupted; delete {folder} and set data.download=true, or "
                f"re-extract {cls.url} into data.root={root}."
            )
    return DataError(f"could not load {cls.__name__} from data.root={root} ({folder}): {cause}")


def load_cifar(
    name: str,
    root: str,
    download: bool,
    val_size: int,
    subset: int | None,
    seed: int,
    augment: Augment | Mapping[str, Any],
) -> DataBundle:
    """CIFAR-10/100 as a DataBundle; val = last `val_size` of a `seed`-permutation of the official train set.

    Data live under `root`/cifar-10-batches-py (or cifar-100-python); `download` lets torchvision fetch them.
    """
    if name not in _CLASSES:
        raise DataError(f"data.name must be one of {sorted(_CLASSES)}, got {name!r}")
    augment = as_augment(augment)
    tv = import_torchvision()
    cls_name, num_classes = _CLASSES[name]
    cls = getattr(tv.datasets, cls_name)
    root_path = Path(root).expanduser().resolve()
    missing = [f for f, _ in _files(cls) if not (root_path / cls.base_folder / f).is_file()]
    if missing and not download:
        raise _diagnose(cls, root_path, FileNotFoundError(missing[0]))
    try:
        train = cls(root=str(root_path), train=True, download=download)
        test = cls(root=str(root_path), train=False, download=False)
    except OSError as err:  # urllib.error.URLError (no network, DNS), HTTP errors, unwritable root
        why = "" if missing else f" (the files under {root_path / cls.base_folder} failed the md5 check)"
        raise DataError(
            f"could not download {cls.__name__} from {cls.url} "
            f"into data.root={root_path}{why}: {err}. "
            f"Check the network, or fetch the archive on another machine and extract it so that "
            f"{root_path / cls.base_folder} exists, then run with data.download=false."
        ) from err
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise _diagnose(cls, root_path, err) from err

    def to_set(ds: Any) -> ImageSet:  # torchvision keeps HWC numpy; we want contiguous NCHW
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64))

    train_set, val_set = split_train_val(to_set(train), val_size, subset, seed)
    mean, std = STATS[name]
    return DataBundle(
        train=train_set,
        val=val_set,
        test=to_set(test),
        num_classes=num_classes,
        mean=mean,
        std=std,
        augment=augment,
        name=name,
    )
