"""Tiny fake CIFAR-10/100 files in torchvision's exact pickle layout, and the md5 patch that makes them pass.

Usage in a test:
    expected = write_fake_cifar(tmp_path, "cifar10", n_per_batch=10)
    patch_cifar_md5(monkeypatch, tmp_path, "cifar10")
    bundle = load_cifar("cifar10", str(tmp_path), download=False, ...)
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

# name -> (torchvision class, folder, train files, test file, meta file, meta key, label key, classes)
LAYOUT = {
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "label_names",
        "labels",
        10,
    ),
    "cifar100": (
        "CIFAR100",
        "cifar-100-python",
        ["train"],
        "test",
        "meta",
        "fine_label_names",
        "fine_labels",
        100,
    ),
}


def write_fake_cifar(
    root: str | Path, name: str, n_per_batch: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write random CIFAR files under `root`; returns train/test images (N, 3, 32, 32) uint8 and labels."""
    _, folder, train_files, test_file, meta_file, meta_key, label_key, classes = LAYOUT[name]
    rng = np.random.default_rng(seed)
    path = Path(root) / folder
    path.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[np.ndarray]] = {
        "train_images": [],
        "train_labels": [],
        "test_images": [],
        "test_labels": [],
    }
    for split, files in (("train", train_files), ("test", [test_file])):
        for f in files:
            images = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, classes, n_per_batch)
            entry = {
                "batch_label": f"fake {f}",
                "data": images.reshape(n_per_batch, 3072),  # R, G, B planes
                label_key: labels.tolist(),
                "filenames": [f"{f}_{i}.png" for i in range(n_per_batch)],
            }
            if name == "cifar100":
                entry["coarse_labels"] = (labels // 5).tolist()
            with open(path / f, "wb") as fh:
                pickle.dump(entry, fh)
            out[f"{split}_images"].append(images)
            out[f"{split}_labels"].append(labels)
    with open(path / meta_file, "wb") as fh:
        pickle.dump({meta_key: [f"class_{i}" for i in range(classes)]}, fh)
    return {k: np.concatenate(v) for k, v in out.items()}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def patch_cifar_md5(monkeypatch: pytest.MonkeyPatch, root: str | Path, name: str) -> None:
    """Point the torchvision class's expected md5s at the fake files (production code stays strict)."""
    from sam_lab.data.compat import import_torchvision

    cls_name, folder, train_files, test_file, meta_file, meta_key, _, _ = LAYOUT[name]
    cls = getattr(import_torchvision().datasets, cls_name)
    path = Path(root) / folder
    monkeypatch.setattr(cls, "train_list", [[f, _md5(path / f)] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[test_file, _md5(path / test_file)]])
    monkeypatch.setattr(cls, "meta", {"filename": meta_file, "key": meta_key, "md5": _md5(path / meta_file)})
