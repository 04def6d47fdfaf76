"""Data layer: CIFAR through torchvision's real code on fake files, digits, synthetic, device batching."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_lab.data import (
    Augment,
    Batches,
    DataError,
    ImageSet,
    augment_batch,
    cutout,
    load_cifar,
    load_digits,
    load_synthetic,
)
from sam_lab.data.cifar import STATS
from sam_lab.data.loader import normalize
from tests.cifar_fakes import patch_cifar_md5, write_fake_cifar

N_PER_BATCH = 10


@pytest.fixture(params=["cifar10", "cifar100"])
def fake_cifar(request, tmp_path, monkeypatch):
    expected = write_fake_cifar(tmp_path, request.param, N_PER_BATCH)
    patch_cifar_md5(monkeypatch, tmp_path, request.param)
    return request.param, tmp_path, expected


def _cifar(name, root, **kw):
    args = dict(download=False, val_size=0, subset=None, seed=0, augment={"crop": 4, "flip": True})
    return load_cifar(name, str(root), **{**args, **kw})


def test_compat_import_in_fresh_process():
    code = (
        "from sam_lab.data.compat import import_torchvision; tv = import_torchvision(); "
        "assert tv.datasets.CIFAR10.base_folder == 'cifar-10-batches-py'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cifar_images_labels_and_order(fake_cifar):
    name, root, exp = fake_cifar
    b = _cifar(name, root)
    assert b.name == name and b.num_classes == {"cifar10": 10, "cifar100": 100}[name] and b.val is None
    assert (b.mean, b.std) == STATS[name] and b.augment == Augment(4, True, 0)
    for got, split in ((b.train, "train"), (b.test, "test")):
        assert got.images.dtype == torch.uint8 and got.images.is_contiguous()
        assert got.labels.dtype == torch.int64
        assert torch.equal(got.images, torch.from_numpy(exp[f"{split}_images"]))
        assert torch.equal(got.labels, torch.from_numpy(exp[f"{split}_labels"]))


def test_cifar_val_split_and_subset(fake_cifar):
    name, root, exp = fake_cifar
    n = len(exp["train_labels"])
    a, a2, c = (
        _cifar(name, root, val_size=4, seed=1),
        _cifar(name, root, val_size=4, seed=1),
        _cifar(name, root, val_size=4, seed=2),
    )
    assert len(a.train) == n - 4 and len(a.val) == 4
    assert torch.equal(a.val.images, a2.val.images) and torch.equal(a.train.images, a2.train.images)
    assert not torch.equal(a.val.images, c.val.images)
    # disjoint and covering: every original image lands in exactly one split (images are random, so unique)
    rows = {bytes(x.numpy().tobytes()) for x in torch.cat([a.train.images, a.val.images])}
    assert len(rows) == n and rows == {bytes(x.tobytes()) for x in exp["train_images"]}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))  # documented: val = last val_size
    assert torch.equal(a.val.labels, torch.from_numpy(exp["train_labels"])[perm[-4:].sort().values])
    s = _cifar(name, root, val_size=4, seed=1, subset=3)
    assert torch.equal(s.train.images, a.train.images[:3]) and torch.equal(s.val.images, a.val.images)
    for bad in (0, n - 3):
        with pytest.raises(DataError, match="data.subset"):
            _cifar(name, root, val_size=4, subset=bad)


def _offline(*args, **kwargs):
    raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))


def test_cifar_corrupted_file(fake_cifar, monkeypatch):
    name, root, _ = fake_cifar
    folder = next(root.iterdir())
    victim = folder / ("data_batch_3" if name == "cifar10" else "train")
    raw = bytearray(victim.read_bytes())
    raw[200:210] = bytes(255 - x for x in raw[200:210])
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch") as e:
        _cifar(name, root)
    assert str(victim) in str(e.value)
    monkeypatch.setattr(urllib.request, "urlopen", _offline)  # download=True refetches: offline
    with pytest.raises(DataError, match="failed the md5 check"):
        _cifar(name, root, download=True)


def test_cifar_missing_without_download(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        _cifar("cifar10", root)
    msg = str(e.value)
    assert "data.root" in msg and str(root / "cifar-10-batches-py") in msg
    assert "data.download=true" in msg and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg


def test_cifar_download_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DataError, match="could not download") as e:
        _cifar("cifar100", tmp_path, download=True)
    assert "name resolution" in str(e.value) and "data.root" in str(e.value)


def test_unknown_cifar_name(tmp_path):
    with pytest.raises(DataError, match="data.name"):
        _cifar("cifar11", tmp_path)


def test_digits():
    a = load_digits(val_size=200, subset=None, seed=0, augment={"crop": 2, "flip": False, "cutout": 0})
    b = load_digits(val_size=200, subset=None, seed=1, augment=Augment())
    assert a.train.images.shape == (1797 - 297 - 200, 3, 32, 32) and a.train.images.dtype == torch.uint8
    assert a.test.images.shape == (297, 3, 32, 32) and a.val.labels.dtype == torch.int64
    assert int(a.train.images.max()) == 255 and int(a.train.images.min()) == 0
    assert set(a.train.labels.tolist()) == set(range(10)) and a.num_classes == 10
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.val.images, b.val.images)
    assert torch.equal(a.train.images[:, 0], a.train.images[:, 2])  # grey replicated to RGB
    assert all(0.05 < m < 0.6 for m in a.mean) and all(0.1 < s < 0.5 for s in a.std)
    s = load_digits(val_size=0, subset=50, seed=0, augment=Augment())
    assert len(s.train) == 50 and s.val is None


def test_synthetic():
    b = load_synthetic(num_train=64, num_test=32, num_classes=5, val_size=8, seed=3, augment=None)
    assert (len(b.train), len(b.val), len(b.test)) == (56, 8, 32) and b.augment == Augment(0, False, 0)
    assert int(b.train.labels.max()) < 5 and b.train.images.shape[1:] == (3, 32, 32)
    x = torch.cat([b.train.images, b.val.images]).float() / 255
    assert abs(x.mean() - b.mean[0]) < 0.02 and abs(x.std() - b.std[0]) < 0.02
    with pytest.raises(DataError, match="data.val_size"):
        load_synthetic(num_train=64, val_size=64)


# ---------------------------------------------------------------- batching


def _set(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n))


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
FULL = Augment(crop=4, flip=True, cutout=8)


def test_batches_deterministic_resume_and_coverage():
    data = _set()
    batches = Batches(data, 8, MEAN, STD, "cpu", augment=FULL, shuffle=True, seed=5)
    assert len(batches) == 5  # 37 = 4 * 8 + 5: last partial batch kept
    full = list(batches.epoch(3))
    again = list(Batches(data, 8, MEAN, STD, "cpu", augment=FULL, shuffle=True, seed=5).epoch(3))
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(full, again))
    tail = list(batches.epoch(3, start=2))
    assert len(tail) == 3 and all(torch.equal(x, x2) for (x, _), (x2, _) in zip(tail, full[2:]))
    ys = torch.cat([y for _, y in full])
    assert [x.shape[0] for x, _ in full] == [8, 8, 8, 8, 5] and sorted(ys.tolist()) == list(range(37))
    assert not torch.equal(ys, torch.cat([y for _, y in batches.epoch(4)]))  # new epoch, new order
    assert all(x.dtype == torch.float32 for x, _ in full)


def test_eval_batches_are_exact_normalisation():
    data = _set()
    batches = Batches(data, 10, MEAN, STD, "cpu")
    x = torch.cat([x for x, _ in batches])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(x, (data.images.float() / 255 - mean) / std)
    assert torch.equal(torch.cat([y for _, y in batches.epoch(7)]), data.labels)


def test_crop_matches_padded_slice():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 32, 32)
    dx, dy, no = torch.tensor([0, 7]), torch.tensor([0, 3]), torch.zeros(2, dtype=torch.bool)
    out = augment_batch(x, dx, dy, no, pad=4)
    padded = F.pad(x, (4, 4, 4, 4))
    assert out.dtype == torch.uint8
    assert torch.equal(out[0], padded[0, :, 0:32, 0:32]) and torch.equal(out[1], padded[1, :, 3:35, 7:39])
    assert torch.equal(out[0, :, :4], torch.zeros(3, 4, 32, dtype=torch.uint8))  # zero padding shows
    centre = augment_batch(x, torch.tensor([4, 4]), torch.tensor([4, 4]), no, pad=4)
    assert torch.equal(centre, x)


def test_flip_reverses_width():
    x = _set(2).images
    out = augment_batch(
        x,
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, dtype=torch.long),
        torch.tensor([True, False]),
        pad=0,
    )
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_cutout_square():
    x = torch.ones(3, 3, 32, 32)
    out = cutout(x, torch.tensor([16, 0, 31]), torch.tensor([10, 0, 31]), size=8)
    zeros = (out == 0).all(1)  # all channels
    assert torch.equal((out == 0).any(1), zeros)
    assert zeros[0].sum() == 64 and zeros[0, 12:20, 6:14].all()  # rows/cols [c - 4, c + 4)
    assert zeros[1].sum() == 16 and zeros[1, :4, :4].all()  # clipped at the top-left corner
    assert zeros[2].sum() == 25 and zeros[2, 27:, 27:].all()  # rows [27, 35) clipped to 5
    assert torch.equal(
        normalize(
            torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
        ),
        torch.zeros(1, 3, 2, 2),
    )


def test_training_batches_are_augmented_eval_ones_not():
    data = _set()
    ref = torch.cat([x for x, _ in Batches(data, 37, MEAN, STD, "cpu")])
    aug = Batches(data, 37, MEAN, STD, "cpu", augment=FULL, shuffle=False)
    ((xa, ya),) = list(aug.epoch(0))
    assert torch.equal(ya, data.labels) and not torch.equal(xa, ref)
    assert ((xa == 0).all(1).flatten(1).sum(1) >= 16).all()  # every image has a cutout hole of >= 4x4


def test_channels_last():
    batches = Batches(_set(), 16, MEAN, STD, "cpu", augment=FULL, shuffle=True, channels_last=True)
    x, _ = next(batches.epoch(0))
    assert x.is_contiguous(memory_format=torch.channels_last)
    plain = Batches(_set(), 16, MEAN, STD, "cpu", augment=FULL, shuffle=True)
    assert torch.equal(x, next(plain.epoch(0))[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_same_on_gpu():
    cpu = list(Batches(_set(), 16, MEAN, STD, "cpu", augment=FULL, shuffle=True).epoch(2))
    gpu = list(Batches(_set(), 16, MEAN, STD, "cuda", augment=FULL, shuffle=True).epoch(2))
    for (x, y), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and torch.equal(y, yg.cpu())
        torch.testing.assert_close(x, xg.cpu())


def test_random_draws_cover_crop_range():
    data = _set(n=400)
    b = Batches(data, 400, MEAN, STD, "cpu", augment=Augment(crop=4, flip=True), shuffle=True)
    r = b._draw(0)
    assert set(r["dx"].tolist()) == set(range(9)) and 0.4 < r["flip"].float().mean() < 0.6
    assert np.array_equal(r["perm"].sort().values.numpy(), np.arange(400))


def test_cutout_probability_is_a_data_option(tmp_path):
    """data.augment.cutout_p reaches the training batches: about that fraction of images gets the square."""
    from sam_lab.train import build
    from tests.conftest import TINY, compose_cfg

    over = [
        *TINY,
        "data.subset=256",
        "data.augment.cutout=8",
        "data.augment.crop=0",
        "data.augment.flip=false",
    ]
    cut = {}
    for p in (1.0, 0.5):
        trainer = build(compose_cfg([*over, f"data.augment.cutout_p={p}"]), tmp_path / str(p))
        plain = build(compose_cfg([*over, "data.augment.cutout=0"]), tmp_path / f"plain{p}")
        x = torch.cat([b[0] for b in trainer.train_batches.epoch(1)])
        y = torch.cat([b[0] for b in plain.train_batches.epoch(1)])
        cut[p] = (x != y).flatten(1).any(1).float().mean().item()
    assert cut[1.0] == 1.0 and 0.35 < cut[0.5] < 0.65, cut
