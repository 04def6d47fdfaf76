"""Memory layout of a model: channels_last where it is fast and safe, contiguous where it is not.

torch 2.13.0+cpu (oneDNN 3.12) computes the weight gradient of a 1x1 convolution with stride > 1 and fewer
than 8 input channels in channels_last through a kernel that writes past its workspace on CPUs without
AVX-512 (`jit_avx2_1x1_convolution_bwd_weights`, oneDNN issue #6035): a segfault, a heap abort, a hang, or,
with 2 threads, weight gradients off by up to 45% with no error (docs/performance.md). The ResNet shortcuts of
the downsampling stages are exactly this layer when `model.width` < 8. On CPU such a layer is computed as the
matrix product it is (`MatmulConv1x1`), the rest of the network in the chosen layout; CUDA has no such kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_ISSUE = "oneDNN issue #6035"


def onednn_unsafe(module: nn.Module) -> bool:
    """A convolution whose channels_last weight-gradient kernel is broken on AVX2 CPUs (see above)."""
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and max(module.stride) > 1
        and module.in_channels // module.groups < 8
    )


def unsafe_layers(model: nn.Module) -> list[str]:
    """Names of the layers that must not run channels_last on CPU."""
    return [name for name, m in model.named_modules() if onednn_unsafe(m) and type(m) is nn.Conv2d]


class MatmulConv1x1(nn.Conv2d):
    """A 1x1 convolution computed as what it is, a matrix product over channels at every `stride`-th pixel:
    the same numbers, without oneDNN's convolution kernels. `to_layout` turns the CPU model's unsafe layers
    into this class (same parameters, same state_dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (sh, sw), g = self.padding, self.stride, self.groups
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        x = x[:, :, ::sh, ::sw]
        n, _, h, w = x.shape
        weight = self.weight.reshape(g, self.out_channels // g, self.in_channels // g)
        out = torch.einsum("ngchw,goc->ngohw", x.reshape(n, g, -1, h, w), weight).reshape(n, -1, h, w)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def to_layout(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move `model` to `device` in the chosen layout (in place, returned). On CPU the layers that the oneDNN
    bug hits become `MatmulConv1x1`, in either layout: with contiguous weights and input the same kernel
    still runs when the gradient arriving from the next layer is channels_last (seen in a debugger)."""
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if device.type == "cpu":
        for name in unsafe_layers(model):
            model.get_submodule(name).__class__ = MatmulConv1x1
    return model
