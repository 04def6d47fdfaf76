"""Pins the optimizer semantics of docs/optimizers.md with hand-checkable cases."""

import copy
import json
import math

import pytest
import torch
from torch import nn

from sam_lab.metrics.grad_stats import grad_stats
from sam_lab.optim import SAM, SGD, frozen_bn
from tests.conftest import TINY, cli


def quad_problem(seed=0, n=5):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen)
    A = a @ a.T + n * torch.eye(n)
    b = torch.randn(n, generator=gen)
    w = nn.Parameter(torch.randn(n, generator=gen))
    return A, b, w


def quad_closure(opt, A, b, w, log=None):
    def closure():
        opt.zero_grad()
        if log is not None:
            log.append(w.detach().clone())
        loss = 0.5 * w @ A @ w - b @ w
        loss.backward()
        return loss

    return closure


def small_net(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def net_closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def same_steps(o1, m1, o2, m2, n: int = 4) -> None:
    """n steps of two optimizers on the same batches end at bit-identical weights."""
    for s in range(n):
        x, y = batch(s)
        o1.step(net_closure(o1, m1, x, y))
        o2.step(net_closure(o2, m2, x, y))
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_equals_torch_sgd(nesterov):
    m1, m2 = small_net(), small_net()
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    o1, o2 = SGD(m1.parameters(), **kw), torch.optim.SGD(m2.parameters(), **kw)
    same_steps(o1, m1, o2, m2)


@pytest.mark.parametrize("bn", [False, True])
def test_sam_rho0_equals_sgd(bn):
    m1, m2 = small_net(bn=bn), small_net(bn=bn)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    o1, o2 = SAM(m1.parameters(), rho=0.0, **kw), SGD(m2.parameters(), **kw)
    o1.watch_bn(m1)
    for s in range(3):
        x, y = batch(s)
        o1.step(net_closure(o1, m1, x, y))
        o2.step(net_closure(o2, m2, x, y))
    for p, q in zip(m1.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_sam_two_steps_on_quadratic_match_closed_form():
    A, b, w = quad_problem()
    lr, mom, wd, rho = 0.05, 0.9, 0.01, 0.3
    opt = SAM([w], lr=lr, momentum=mom, weight_decay=wd, rho=rho)
    seen = []
    x = w.detach().clone()
    buf = None
    for _ in range(2):
        g = A @ x - b
        e = rho * g / g.norm()
        g_s = A @ (x + e) - b  # weight decay is not part of g or g_s
        d = g_s + wd * x
        buf = d if buf is None else mom * buf + d
        expect_points = [x.clone(), x + e]
        x = x - lr * buf
        opt.step(quad_closure(opt, A, b, w, seen))
        torch.testing.assert_close(seen[-2], expect_points[0])
        torch.testing.assert_close(seen[-1], expect_points[1])  # a wrong sign or norm shows here
        torch.testing.assert_close(w.detach(), x)  # ...and a missing restore here


def test_asam_step_matches_closed_form():
    A, b, w = quad_problem(3)
    lr, rho, eta = 0.1, 0.5, 0.01
    opt = SAM([w], lr=lr, momentum=0.0, rho=rho, adaptive=True, eta=eta)
    x = w.detach().clone()
    g = A @ x - b
    t = x.abs() + eta
    e = rho * t * t * g / (t * g).norm()
    expect = x - lr * (A @ (x + e) - b)
    opt.step(quad_closure(opt, A, b, w))
    torch.testing.assert_close(w.detach(), expect)


def test_second_pass_leaves_batchnorm_buffers_unchanged():
    model, ref = small_net(bn=True), small_net(bn=True)
    opt = SAM(model.parameters(), lr=0.1, rho=0.5)
    opt.watch_bn(model)
    x, y = batch()
    opt.step(net_closure(opt, model, x, y))
    ref.train()
    ref(x)  # exactly one update of the running statistics, at the clean weights
    bn, bn_ref = model[1], ref[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == 1
    assert bn.track_running_stats


def test_bn_second_pass_update_updates_twice():
    model = small_net(bn=True)
    opt = SAM(model.parameters(), lr=0.1, rho=0.5, bn_second_pass="update")
    opt.watch_bn(model)
    x, y = batch()
    opt.step(net_closure(opt, model, x, y))
    assert int(model[1].num_batches_tracked) == 2


@pytest.mark.parametrize("cls,kw", [(SGD, {}), (SAM, {"rho": 0.1}), (SAM, {"rho": 0.1, "adaptive": True})])
def test_state_dict_round_trip_steps_identically(cls, kw):
    model = small_net()
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, **kw)
    for s in range(2):
        opt.step(net_closure(opt, model, *batch(s)))
    clone = copy.deepcopy(model)
    opt2 = cls(clone.parameters(), lr=0.5, momentum=0.0, **kw)  # wrong hyper-parameters, fixed by loading
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for s in range(2, 4):
        opt.step(net_closure(opt, model, *batch(s)))
        opt2.step(net_closure(opt2, clone, *batch(s)))
    for p, q in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_sam_requires_closure_and_rejects_bad_values():
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(RuntimeError, match="closure"):
        SAM([w], lr=0.1, rho=0.05).step()
    with pytest.raises(ValueError, match="rho"):
        SAM([w], lr=0.1, rho=-1.0)


def test_sam_keeps_one_extra_buffer_and_exact_restore():
    A, b, w = quad_problem(5)
    opt = SAM([w], lr=0.0, momentum=0.0, rho=0.2)
    before = w.detach().clone()
    opt.step(quad_closure(opt, A, b, w))
    assert torch.equal(w.detach(), before)  # lr 0: weights back at w bit for bit
    assert len(opt._w) == 1 and "momentum_buffer" not in opt.state[w]


# ---- parameters without a gradient are left alone ------------------------------------------------------
class WithUnused(nn.Module):
    """small_net plus a layer the forward never calls (e.g. an unused head): its grad stays None."""

    def __init__(self, seed=0):
        super().__init__()
        self.used = small_net(seed)
        self.unused = nn.Linear(6, 4)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sam_rho0_equals_torch_sgd_and_leaves_an_unused_layer_alone(nesterov):
    m1, m2 = WithUnused(), WithUnused()
    m2.load_state_dict(m1.state_dict())
    unused = copy.deepcopy(m1.unused.state_dict())
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    o1, o2 = SAM(m1.parameters(), rho=0.0, **kw), torch.optim.SGD(m2.parameters(), **kw)
    same_steps(o1, m1, o2, m2)
    for k, v in m1.unused.state_dict().items():  # no weight decay, no momentum: bit-identical
        assert torch.equal(v, unused[k])
    assert all(len(o1.state[p]) == 0 for p in m1.unused.parameters())


def test_statistics_count_only_parameters_with_a_gradient():
    model = WithUnused()
    opt = SAM(model.parameters(), lr=0.1, rho=0.5)
    opt.capture = True
    opt.step(net_closure(opt, model, *batch()))
    used = sum(p.numel() for p in model.used.parameters())
    assert used == 6 * 8 + 8 + 8 * 3 + 3 == 83  # the unused 6x4 + 4 layer is not counted
    g, g_s = opt.captured["g"], opt.captured["g_s"]
    assert sum(t.numel() for t in g) == sum(t.numel() for t in g_s) == 83
    a, b = (torch.cat([t.flatten() for t in v]) for v in (g, g_s))
    stats = grad_stats(**opt.captured)
    count = int((b.abs() > a.abs()).sum())  # by hand, over the 83 elements
    assert math.isclose(float(stats["opt/ratio_gt1_frac"]), count / 83, rel_tol=1e-6)
    agree = int((torch.sign(a) == torch.sign(b)).sum())
    assert math.isclose(float(stats["opt/sign_agree_frac"]), agree / 83, rel_tol=1e-6)


# ---- ASAM: which parameters are scaled ------------------------------------------------------------------
def _asam_point(adaptive_params, named):
    """The point of the second pass of one ASAM step on a Linear layer (weight 3x2, bias 3)."""
    torch.manual_seed(0)
    layer = nn.Linear(2, 3)
    x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    params = layer.named_parameters() if named else layer.parameters()
    opt = SAM(params, lr=0.1, rho=0.5, adaptive=True, eta=0.01, adaptive_params=adaptive_params)
    seen = []

    def closure():
        opt.zero_grad()
        seen.append([p.detach().clone() for p in layer.parameters()])
        loss = nn.functional.cross_entropy(layer(x), y)
        loss.backward()
        return loss

    w = [p.detach().clone() for p in layer.parameters()]
    loss = nn.functional.cross_entropy(nn.functional.linear(x, *[v.requires_grad_() for v in w]), y)
    g = torch.autograd.grad(loss, w)
    opt.step(closure)
    return [v.detach() for v in w], g, seen[1]


@pytest.mark.parametrize("adaptive_params", ["all", "weights"])
def test_asam_scales_all_parameters_or_only_weights(adaptive_params):
    (w, b), (gw, gb), (pw, pb) = _asam_point(adaptive_params, named=True)
    tw = w.abs() + 0.01
    tb = b.abs() + 0.01 if adaptive_params == "all" else torch.ones_like(b)  # ASAM's code: bias T = 1
    norm = torch.cat([(tw * gw).flatten(), tb * gb]).norm()
    torch.testing.assert_close(pw, w + 0.5 * tw * tw * gw / norm)
    torch.testing.assert_close(pb, b + 0.5 * tb * tb * gb / norm)


def test_asam_weights_needs_names_and_watch_supplies_them():
    with pytest.raises(ValueError, match="named_parameters"):
        _asam_point("weights", named=False)
    layer = nn.Linear(2, 3)
    opt = SAM(layer.parameters(), lr=0.1, rho=0.5, adaptive=True, adaptive_params="weights")
    opt.watch(layer)  # the trainer's call: names come from the model
    opt.step(net_closure(opt, layer, torch.randn(4, 2), torch.randint(0, 3, (4,))))
    with pytest.raises(ValueError, match="adaptive_params"):
        SAM(layer.parameters(), lr=0.1, rho=0.5, adaptive_params="biases")


# ---- known differences from the reference implementations (docs/optimizers.md): the sizes quoted there ---
def _asam_weights(adaptive_params, eta, steps=3):
    m = small_net(bn=True)
    kw = dict(lr=0.1, rho=2.0, momentum=0.9, weight_decay=5e-4, adaptive=True, eta=eta)
    opt = SAM(m.named_parameters(), adaptive_params=adaptive_params, **kw)
    for s in range(steps):
        opt.step(net_closure(opt, m, *batch(s)))
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_asam_scalings_differ_by_the_documented_amount():
    w0 = torch.cat([p.detach().flatten() for p in small_net(bn=True).parameters()])
    every, weights, eta0 = (
        _asam_weights("all", 0.01),
        _asam_weights("weights", 0.01),
        _asam_weights("all", 0.0),
    )
    moved = (every - w0).norm()
    assert 0.30 < (every - weights).norm() / moved < 0.45  # docs: 0.37 of the distance moved in 3 steps
    assert (every - eta0).norm() / moved < 0.03  # docs: eta 0.01 vs 0: 0.015


def test_bn_freeze_equals_the_momentum0_bypass_but_for_num_batches_tracked():
    """davda54/sam sets BN momentum to 0 on the second pass; we switch track_running_stats off."""
    x, y = batch(3)
    ours, theirs = small_net(bn=True), small_net(bn=True)
    for m in (ours, theirs):
        m(x)  # one clean pass: running statistics that are not the initial ones
    with frozen_bn([ours[1]]):
        nn.functional.cross_entropy(ours(x), y).backward()
    theirs[1].momentum = 0.0
    nn.functional.cross_entropy(theirs(x), y).backward()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p.grad, q.grad)
    assert torch.equal(ours[1].running_mean, theirs[1].running_mean)
    assert torch.equal(ours[1].running_var, theirs[1].running_var)
    assert (int(ours[1].num_batches_tracked), int(theirs[1].num_batches_tracked)) == (1, 2)


def test_restoring_by_subtraction_is_not_exact():
    """Ours copies w back; w + e - e (empirical-SAM's and ASAM's code) misses w in the last bit."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(100_000, generator=gen) * 0.1
    g = torch.randn(100_000, generator=gen)
    e = 0.05 * g / g.norm()
    back = (w + e) - e
    assert 0 < (back != w).double().mean() < 0.05 and (back - w).abs().max() < 1e-7


def test_hutchinson_abs_estimate_is_biased_on_a_2x2_example():
    """SGDHESS follows the empirical-SAM code: D = |H z|. E over all four Rademacher z of |H z| is (2, 2) for
    H = [[1, 2], [2, -1]], not diag(H) = (1, -1); E[z * H z] (no abs) is diag(H) exactly."""
    h = torch.tensor([[1.0, 2.0], [2.0, -1.0]])
    zs = [torch.tensor([a, b]) for a in (-1.0, 1.0) for b in (-1.0, 1.0)]
    assert torch.stack([(h @ z).abs() for z in zs]).mean(0).tolist() == [2.0, 2.0]
    assert torch.stack([z * (h @ z) for z in zs]).mean(0).tolist() == [1.0, -1.0]


def test_adaptive_params_through_the_cli(tmp_path):
    """`optimizer.adaptive_params` reaches ASAM: one step with each value, different g_s (opt/update_norm)."""
    seen = {}
    for value in ("all", "weights"):
        run = tmp_path / value
        args = [*TINY, "optimizer=asam", f"optimizer.adaptive_params={value}", "rho=2.0", "data.subset=32"]
        res = cli([*args, "batch_size=32", "metrics.grad_stats_every=1", f"hydra.run.dir={run}"], tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        seen[value] = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["opt/update_norm"]
    assert seen["all"] != seen["weights"]
