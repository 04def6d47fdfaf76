"""Batched crop + flip (`augment_batch`) against torchvision's per-sample functional ops, on random inputs."""

import pytest
import torch

from sam_lab.data import augment_batch, import_torchvision


@pytest.mark.parametrize("pad, shape", [(4, (16, 3, 32, 32)), (2, (5, 1, 7, 9)), (0, (3, 2, 6, 6))])
def test_augment_batch_equals_torchvision_per_sample(pad, shape):
    TF = import_torchvision().transforms.functional
    gen = torch.Generator().manual_seed(sum(shape) + pad)
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    b, _, h, w = shape
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    flip[0], flip[1] = True, False  # both branches, whatever the draw
    out = augment_batch(x, dx, dy, flip, pad)
    for i in range(b):
        img = TF.crop(TF.pad(x[i], [pad]), int(dy[i]), int(dx[i]), h, w)  # RandomCrop(padding=pad)
        img = TF.hflip(img) if flip[i] else img  # RandomHorizontalFlip
        assert torch.equal(out[i], img), i
    assert out.dtype == torch.uint8 and out.shape == shape and out.is_contiguous()


def test_augment_batch_keeps_channels_apart_and_works_on_noncontiguous_input():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    dx, dy, flip = torch.tensor([1, 2]), torch.tensor([2, 0]), torch.tensor([False, True])
    out = augment_batch(xt, dx, dy, flip, pad=1)
    ref = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.equal(out[0], ref[0, :, 2:10, 1:9])
    assert torch.equal(out[1], ref[1, :, 0:8, 2:10].flip(-1))
