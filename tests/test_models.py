"""Model zoo tests, driven by the conf/model/*.yaml registry."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sam_lab.models import num_params

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml"))
# Published reference parameter counts (millions) at full width for (10, 100) classes.
EXPECTED = {
    "resnet18": (11.17, 11.22),
    "resnet34": (21.28, 21.33),
    "resnet50": (23.52, 23.71),
    "wrn28_10": (36.48, 36.54),
    "wrn16_8": (10.96, 11.01),
}


def _build(path: Path, num_classes: int, narrow: bool = False) -> torch.nn.Module:
    cfg = OmegaConf.load(path)
    if narrow:
        cfg.width = max(2, cfg.width // 16)  # resnet 64 -> 4, wrn 16 -> 2
    return instantiate(cfg, num_classes=num_classes)


def test_registry_nonempty() -> None:
    assert {p.stem for p in CONFIGS} >= set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_param_counts(path: Path) -> None:
    assert path.stem in EXPECTED, f"add a reference param count for conf/model/{path.name}"
    for nc, ref in zip((10, 100), EXPECTED[path.stem]):
        with torch.device("meta"):
            n = num_params(_build(path, nc))
        assert n == pytest.approx(ref * 1e6, rel=1e-3), (path.stem, nc, n)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_forward_backward_channels_last_bf16(path: Path) -> None:
    torch.manual_seed(0)
    model, x = _build(path, 7, narrow=True), torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.to(memory_format=torch.channels_last)
    out_cl = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf = model(x)
    assert out_bf.dtype == torch.bfloat16 and out_bf.shape == (2, 7) and torch.isfinite(out_bf).all()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_hessian_vector_product(path: Path) -> None:
    torch.manual_seed(0)
    model = _build(path, 10, narrow=True)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 3]))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vs = [torch.randn_like(p) for p in params]
    hvs = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vs)), params)
    assert all(h.shape == p.shape and torch.isfinite(h).all() for h, p in zip(hvs, params))
    assert sum(h.abs().sum() for h in hvs) > 0
