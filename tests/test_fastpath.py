"""The fast path (docs/performance.md): no host sync in a step, one extra buffer for SAM, foreach statistics,
bf16 autocast with fp32 master weights, compile only where allowed. CUDA-only checks skip without a GPU."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sam_lab.config import TrainConfig
from sam_lab.engine import Sums, Trainer
from sam_lab.metrics.grad_stats import grad_stats
from sam_lab.optim import SAM, SGD
from sam_lab.perf import resident_bytes, step_peak_bytes
from sam_lab.schedulers import constant
from sam_lab.train import build
from tests.conftest import TINY, compose_cfg

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ---- foreach gradient statistics ---------------------------------------------------------------------
def test_grad_stats_match_float64_reference():
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(30, 20, generator=gen), torch.randn(7, generator=gen), torch.zeros(5)]
    g_s = [x + 0.7 * torch.randn(x.shape, generator=gen) for x in g]
    g_s[2][:2] = 0.0  # sign(0) == sign(0) agrees; |0| > |0| does not
    g_s[0][0, 0] = -g[0][0, 0]  # equal magnitude: not > 1
    out = grad_stats(g, g_s, g_s)
    a, b = (torch.cat([x.flatten() for x in v]).double() for v in (g, g_s))
    expect = {
        "opt/ratio_gt1_frac": (b.abs() > a.abs()).double().mean(),
        "opt/sign_agree_frac": (torch.sign(a) == torch.sign(b)).double().mean(),
        "opt/cos": a @ b / (a.norm() * b.norm()),
        "opt/norm_ratio": b.norm() / a.norm(),
        "opt/grad_norm": a.norm(),
        "opt/update_norm": b.norm(),
    }
    assert set(out) == set(expect)
    for k, v in expect.items():
        assert out[k].dtype == torch.float32 and out[k].ndim == 0
        assert math.isclose(float(out[k]), float(v), rel_tol=1e-6, abs_tol=1e-7), k


# ---- no host synchronisation ------------------------------------------------------------------------
class HostSyncCounter(TorchDispatchMode):
    """Counts ops that read device values on the host (item/float/bool/int, data-dependent shapes)."""

    SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "equal")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.SYNC_OPS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_tolist(monkeypatch):
    """Python-level reads that bypass the dispatcher on CPU."""
    calls = []
    for name in ("tolist", "numpy", "cpu"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return calls


def _trainer(tmp_path, *overrides):
    return build(compose_cfg([*TINY, "batch_size=16", *overrides]), tmp_path)


@pytest.mark.parametrize(
    "optimizer,precision",
    [
        ("sgd", "fp32"),
        ("sam", "fp32"),
        ("asam", "fp32"),
        ("sam", "bf16"),
        ("sam", "bf16_hooks"),
        ("sam", "fp16"),
    ],
)
def test_train_step_makes_no_host_sync(tmp_path, no_tolist, optimizer, precision):
    trainer = _trainer(
        tmp_path, f"optimizer={optimizer}", "metrics.grad_stats_every=1", f"trainer.precision={precision}"
    )
    sums = Sums(trainer.device)
    batches = trainer.train_batches.epoch(1)
    trainer.train_step(*next(batches), 0, sums)  # first step creates the optimizer state
    x, y = next(batches)
    no_tolist.clear()
    with HostSyncCounter() as counter:
        trainer.train_step(x, y, 1, sums)  # grad_stats_every=1: statistics are taken on this step
        x, y = next(batches)  # the next batch: gather, augmentation, normalisation
    assert "opt/cos" in sums.sums or optimizer == "sgd"
    assert counter.calls == [] and no_tolist == []
    with HostSyncCounter() as counter:  # the counter does see a sync
        sums.sums["train/loss"].item()
    assert counter.calls == ["_local_scalar_dense"]


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_cuda_train_step_has_no_sync(tmp_path, optimizer):
    trainer = _trainer(tmp_path, f"optimizer={optimizer}", "device=cuda", "metrics.grad_stats_every=1")
    assert trainer.precision == "bf16" and trainer.channels_last
    sums = Sums(trainer.device)
    batches = trainer.train_batches.epoch(1)
    trainer.train_step(*next(batches), 0, sums)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in (1, 2):
            trainer.train_step(*next(batches), step, sums)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(sums.means()["train/loss"])


# ---- exactly one extra parameter-sized buffer -----------------------------------------------------------
def _peak_total(opt_cls, device, **kw):
    """Resident + transient peak bytes of the second step on a model whose parameters dominate memory."""
    torch.manual_seed(0)
    model = nn.Linear(512, 512, bias=False).to(device)
    opt = opt_cls(model.parameters(), lr=0.1, momentum=0.9, **kw)
    x = torch.randn(2, 512, device=device)

    def step():
        def closure():
            opt.zero_grad(set_to_none=True)
            loss = model(x).square().mean()
            loss.backward()
            return loss

        opt.step(closure)

    step()
    model.zero_grad(set_to_none=True)
    return resident_bytes(model, opt) + step_peak_bytes(step, torch.device(device))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.gpu])])
def test_sam_holds_one_parameter_sized_buffer_more_than_sgd(device):
    p = 512 * 512 * 4
    sgd = _peak_total(SGD, device)
    sam = _peak_total(SAM, device, rho=0.05)
    assert abs((sam - sgd) - p) < 0.05 * p, (sgd, sam)

    class Kept(SAM):  # a variant that reads g after the ascent keeps it: the measurement sees 2 buffers
        needs_clean_grad = True

    assert abs((_peak_total(Kept, device, rho=0.05) - sgd) - 2 * p) < 0.05 * p


# ---- bf16 autocast with fp32 master weights ----------------------------------------------------------------
def _net(seed=0, bn=True):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def _batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)


def _bf16_closure(opt, model, x, y, seen=None):
    def closure():
        opt.zero_grad(set_to_none=True)
        if seen is not None:
            seen.append([p.detach().clone() for p in model.parameters()])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        assert logits.dtype == torch.bfloat16  # the matmuls really ran in bf16
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        return loss

    return closure


def test_sam_step_under_bf16_autocast_matches_hand_computed_step():
    """e = rho g/||g|| from the bf16-forward gradient, g_s at w + e, restore to w, SGD along g_s in fp32."""
    lr, wd, rho = 0.1, 5e-4, 0.2
    model, ref = _net(bn=False), _net(bn=False)
    opt = SAM(model.parameters(), lr=lr, momentum=0.0, weight_decay=wd, rho=rho)
    x, y = _batch()

    def grads(m, at):
        with torch.no_grad():
            for p, v in zip(m.parameters(), at):
                p.copy_(v)
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(m(x).float(), y)
        loss.backward()
        return [p.grad.clone() for p in m.parameters()]

    w = [p.detach().clone() for p in ref.parameters()]
    g = grads(ref, w)
    norm = torch.linalg.vector_norm(torch.stack([t.norm() for t in g]))
    e = [rho * t / (norm + 1e-12) for t in g]
    g_s = grads(ref, [a + b for a, b in zip(w, e)])
    expect = [a - lr * (gs + wd * a) for a, gs in zip(w, g_s)]

    seen = []
    opt.step(_bf16_closure(opt, model, x, y, seen))
    for p, v in zip(seen[0], w):
        torch.testing.assert_close(p, v, rtol=0, atol=0)
    for p, a, b in zip(seen[1], w, e):
        torch.testing.assert_close(p, a + b)  # a wrong sign or norm of e shows here
    for p, v in zip(model.parameters(), expect):
        assert p.dtype == torch.float32  # master weights stay fp32
        torch.testing.assert_close(p.detach(), v)


def test_sam_rho0_equals_sgd_and_keeps_bn_buffers_under_bf16():
    m1, m2 = _net(), _net()
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    o1, o2 = SAM(m1.parameters(), rho=0.0, **kw), SGD(m2.parameters(), **kw)
    o1.watch_bn(m1)
    for s in range(3):
        x, y = _batch(s)
        o1.step(_bf16_closure(o1, m1, x, y))
        o2.step(_bf16_closure(o2, m2, x, y))
    for p, q in zip(m1.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # incl. BN running stats: one update per step
    assert int(m1[1].num_batches_tracked) == 3


# ---- torch.compile only on paths that allow it ------------------------------------------------------
def test_compile_wraps_the_model_except_for_second_order(tmp_path):
    from sam_lab.data import load_synthetic

    class SecondOrder(SAM):
        second_order = True

    data = load_synthetic(num_train=8, num_test=4)
    for cls, compiled in [(SAM, True), (SecondOrder, False)]:
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        opt = cls(model.parameters(), lr=0.1, rho=0.05)
        cfg = OmegaConf.structured(TrainConfig(epochs=1, batch_size=4))
        cfg.trainer.compile = True
        t = Trainer(model, opt, constant(opt, 1), data, torch.device("cpu"), tmp_path, cfg)
        assert (t.forward is not t.model) == compiled
        assert isinstance(t.forward, torch._dynamo.eval_frame.OptimizedModule) == compiled
