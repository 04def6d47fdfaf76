"""Pre-activation WideResNet (Zagoruyko & Komodakis, 2016) for CIFAR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_lab.models.resnet import init_weights
from sam_lab.ranges import Range, declare

DROPOUT = Range(0.0, 1.0, hi_open=True)


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 plus identity / 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(self.drop(out))))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv to `width`, 3 groups of (depth-4)/6 blocks at widths (1, 2, 4)*width*k."""

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 10, width: int = 16, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        groups, cin = [], width
        for i, stride in enumerate((1, 2, 2)):
            cout = width * widen_factor * 2**i
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(WideBlock(cin, cout, s, dropout))
                cin = cout
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.groups(self.stem(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


def wrn(
    depth: int, widen_factor: int, num_classes: int = 10, width: int = 16, dropout: float = 0.0
) -> WideResNet:
    """Generic pre-activation WRN-`depth`-`widen_factor`."""
    return WideResNet(depth, widen_factor, num_classes, width, dropout)


@declare(dropout=DROPOUT)
def wrn28_10(num_classes: int = 10, width: int = 16, dropout: float = 0.0) -> WideResNet:
    """WRN-28-10; ~36.48M params at width 16 / 10 classes."""
    return WideResNet(28, 10, num_classes, width, dropout)


@declare(dropout=DROPOUT)
def wrn16_8(num_classes: int = 10, width: int = 16, dropout: float = 0.0) -> WideResNet:
    """WRN-16-8; ~10.96M params at width 16 / 10 classes."""
    return WideResNet(16, 8, num_classes, width, dropout)
