"""No crash and no wrong gradient on any x86 CPU (oneDNN issue #6035; sam_lab/models/layout.py).

torch 2.13.0+cpu's AVX2 kernel for the weight gradient of a 1x1, stride > 1 convolution with < 8 input
channels writes past its workspace: segfault, abort, hang, or (2 threads) gradients off by up to 45%.
`ONEDNN_MAX_CPU_ISA=AVX2` makes an AVX-512 machine take the same kernel, so these tests fail on every x86
machine if the bug comes back, not only on AVX2-only ones (conftest.py sets it for the whole suite too).

The gradient reference is float64 (oneDNN has no float64 kernels), with BatchNorm in eval mode: the loss is
then a well-conditioned function of the weights and fp32 rounding stays near 1e-6. In train mode, or against
an fp32 reference with `torch.backends.mkldnn` disabled, the reference itself moves by up to 5e-3 (a
pre-activation within rounding of zero flips a ReLU), which would hide nothing and prove nothing."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sam_lab.models import resnet18
from sam_lab.models.layout import MatmulConv1x1, onednn_unsafe, to_layout, unsafe_layers
from tests.conftest import ROOT, cli

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2"}  # 2 threads: the silent wrong-gradient case


@pytest.mark.parametrize("width, expected", [(1, 3), (2, 2), (4, 1), (7, 1), (8, 0), (64, 0)])
def test_the_resnet_shortcuts_with_fewer_than_8_input_channels_are_found(width, expected):
    names = unsafe_layers(resnet18(10, width))
    assert len(names) == expected
    assert all(n.endswith("shortcut.0") for n in names)


@pytest.mark.parametrize(
    "cin, cout, stride, padding, groups, bias",
    [(4, 8, 2, 0, 1, False), (3, 5, 3, 0, 1, True), (6, 6, 4, 1, 2, True), (2, 4, (2, 1), 0, 1, False)],
)
def test_matmul_conv_is_the_convolution(cin, cout, stride, padding, groups, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, 1, stride, padding, groups=groups, bias=bias).double()
    assert onednn_unsafe(conv)
    x = torch.randn(3, cin, 11, 10, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, groups=groups)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, *conv.parameters()])
    conv.__class__ = MatmulConv1x1
    out = conv(x)
    g = torch.autograd.grad(out.square().sum(), [x, *conv.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_to_layout_keeps_parameters_and_state_dict_keys():
    model = resnet18(10, 4)
    params, keys = [id(p) for p in model.parameters()], list(model.state_dict())
    to_layout(model, torch.device("cpu"), channels_last=True)
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    assert all(type(model.get_submodule(n)) is MatmulConv1x1 for n in ("layers.1.0.shortcut.0",))
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert unsafe_layers(model) == []  # nothing left for the bug


GRADIENT_CHECK = r"""
import copy, json, sys, torch
import torch.nn.functional as F
from sam_lab.train import build
from tests.conftest import TINY, compose_cfg
torch.set_num_threads(2)
width, out = int(sys.argv[1]), {}
cfg = compose_cfg([*TINY, f"model.width={width}", "batch_size=32", "optimizer=sgd"])
trainer = build(cfg, sys.argv[2])
model = trainer.model                      # as the trainer runs it: channels_last (auto), the safe layers
ref = copy.deepcopy(model).double().to(memory_format=torch.contiguous_format)
x, y = next(trainer.train_batches.epoch(1))
for m in (model, ref):
    m.eval()                               # BN as an affine map: a well-conditioned loss (module docstring)
g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
g64 = torch.autograd.grad(F.cross_entropy(ref(x.double()), y), list(ref.parameters()))
for (name, _), a, b in zip(model.named_parameters(), g, g64):
    out[name] = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
print(json.dumps(out))
"""


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_gradients_of_one_step_equal_float64_with_the_avx2_kernels(width, tmp_path):
    env = {**os.environ, **AVX2, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    run = subprocess.run(
        [sys.executable, "-c", GRADIENT_CHECK, str(width), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=150, env=env, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-5, (worst, errors[worst])


@pytest.mark.slow
@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_every_narrow_resnet_trains_on_cpu_with_the_default_settings(width, tmp_path):
    """The issue's command, through the CLI, with the AVX2 kernels (it used to exit 139/134 or hang)."""
    args = ["data=synthetic", "data.num_train=80", f"model.width={width}", "epochs=1", "batch_size=32"]
    args += ["logger=none", "device=cpu", "metrics.sharpness.num_samples=32"]
    args += [f"hydra.run.dir={tmp_path / 'run'}"]
    run = cli(args, tmp_path, timeout=300, env=AVX2)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"
