"""Model zoo: CIFAR ResNets and pre-activation WideResNets."""

from torch import nn

from sam_lab.models.resnet import resnet18, resnet34, resnet50
from sam_lab.models.wrn import wrn, wrn16_8, wrn28_10


def num_params(model: nn.Module) -> int:
    """Total number of parameters (trainable or not); works on meta-device models."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["num_params", "resnet18", "resnet34", "resnet50", "wrn", "wrn16_8", "wrn28_10"]
