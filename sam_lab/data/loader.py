"""Mini-batches from uint8 tensors that already live on the training device.

Why not a DataLoader: CIFAR fits in GPU memory as uint8 (150 MB), and per-sample PIL transforms in worker
processes are the bottleneck of small-model training. Here a batch is one gather plus a few element-wise ops
on the device, and all randomness of an epoch is drawn up front from a generator seeded by (seed, epoch), so
a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_lab.data.base import Augment, ImageSet


def augment_batch(
    x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Random crop + horizontal flip of uint8 images (B, C, H, W) in one gather.

    The batch is zero-padded by `pad` once; image b is the window whose top-left corner is (dy[b], dx[b]) in
    padded coordinates (each in [0, 2 * pad]; `pad` = no shift), mirrored left-right where flip[b] is True.
    Same result as torchvision's RandomCrop(H, padding=pad) followed by RandomHorizontalFlip.
    """
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols_fwd = torch.arange(w, device=x.device)
    cols = dx[:, None] + torch.where(flip[:, None], cols_fwd.flip(0), cols_fwd)  # (B, W); flip = index
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def cutout(
    x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int, apply: torch.Tensor | None = None
) -> torch.Tensor:
    """Zero a size x size square centred at (cy[b], cx[b]) in each image, clipped at the borders; only in
    the images where `apply[b]` is True when `apply` (bool, (B,)) is given."""
    h, w = x.shape[-2:]
    y0, x0 = (cy - size // 2)[:, None], (cx - size // 2)[:, None]
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside = ((ys >= y0) & (ys < y0 + size))[:, :, None] & ((xs >= x0) & (xs < x0 + size))[:, None, :]
    if apply is not None:
        inside = inside & apply[:, None, None]
    return x.masked_fill(inside[:, None], 0.0)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 (x / 255 - mean) / std, with mean and std shaped (1, C, 1, 1).

    In place after one conversion: the same arithmetic as the formula, one float buffer instead of four."""
    return x.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends on (seed, epoch) only, so batches survive restarts and device changes."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Batches:
    """Mini-batches of a uint8 ImageSet held on `device`; normalisation and augmentation batched there."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        augment: Augment | None = None,
        shuffle: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        cutout_p: float | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.augment = augment if augment is not None else Augment(crop=0, flip=False, cutout=0)
        cutout_p = self.augment.cutout_p if cutout_p is None else cutout_p  # None: data.augment.cutout_p
        if not 0.0 <= cutout_p <= 1.0:
            raise ValueError(f"cutout_p must be in [0, 1], got {cutout_p}")
        self.cutout_p = cutout_p  # probability that an image gets the cutout square (1: every image)
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def _draw(self, epoch: int) -> dict[str, torch.Tensor]:
        """All random choices of one epoch, indexed by position in the epoch, drawn in a fixed order."""
        n, a = len(self.labels), self.augment
        g = epoch_generator(self.seed, epoch) if (self.shuffle or a.crop or a.flip or a.cutout) else None
        r = {"perm": torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)}
        if a.crop or a.flip:
            r["dx"] = torch.randint(0, 2 * a.crop + 1, (n,), generator=g)
            r["dy"] = torch.randint(0, 2 * a.crop + 1, (n,), generator=g)
            r["flip"] = torch.rand(n, generator=g) < 0.5 if a.flip else torch.zeros(n, dtype=torch.bool)
        if a.cutout:
            h, w = self.images.shape[-2:]
            r["cy"] = torch.randint(0, h, (n,), generator=g)
            r["cx"] = torch.randint(0, w, (n,), generator=g)
            if self.cutout_p < 1.0:  # drawn last: runs with cutout_p=1 see the same stream as before
                r["cut"] = torch.rand(n, generator=g) < self.cutout_p
        return {k: v.to(self.device, non_blocking=True) for k, v in r.items()}

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 (B, C, H, W) normalised, y int64) on the device, from batch `start` on."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        r, a = self._draw(epoch), self.augment
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = r["perm"][sl] if self.shuffle else sl  # eval order: a plain slice, no gather
            x = self.images[idx]
            if "dx" in r:
                x = augment_batch(x, r["dx"][sl], r["dy"][sl], r["flip"][sl], a.crop)
            x = normalize(x, self.mean, self.std)
            if "cy" in r:
                x = cutout(x, r["cy"][sl], r["cx"][sl], a.cutout, r["cut"][sl] if "cut" in r else None)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
