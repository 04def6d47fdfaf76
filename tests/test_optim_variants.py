"""Pins the SAM-variant family of docs/optimizers.md: every expected value is computed here, independently
of the optimizers, from the equations (flat vectors, explicit Hessians), on tiny hand-checkable problems."""

import copy

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.func import functional_call

from sam_lab.config import register
from sam_lab.optim import FSAM, SAM, SGD, SAMDirection, SAMMagnitude, SGDHess, TwoPass
from sam_lab.optim.closure import sampled_label_losses
from sam_lab.optim.samdirection import graft
from tests.conftest import CONF, compose_cfg

# ---- problems --------------------------------------------------------------------------------------------
SLICES = [slice(0, 3), slice(3, 7)]  # a vector of 3 and a 2x2 matrix: two parameter tensors, 7 elements


class Quad:
    """L(x) = 0.5 x^T A x - b^T x over x = concat(w1, w2.flatten()), A symmetric and indefinite (so that
    sign(g_s) != sign(g) somewhere); the closure logs every point visited."""

    def __init__(self, seed=0, diag=False):
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(7, 7, generator=gen)
        self.A = (
            torch.diag(torch.rand(7, generator=gen) * 4 - 1) if diag else (a + a.T) / 2 + 0.5 * torch.eye(7)
        )
        self.b = torch.randn(7, generator=gen)
        x0 = torch.randn(7, generator=gen)
        self.params = [nn.Parameter(x0[:3].clone()), nn.Parameter(x0[3:].reshape(2, 2).clone())]
        self.seen: list[torch.Tensor] = []

    def x(self):
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def grad(self, x):
        return self.A @ x - self.b

    def closure(self, opt):
        def closure(create_graph=False):
            opt.zero_grad()
            x = torch.cat([p.reshape(-1) for p in self.params])
            self.seen.append(x.detach().clone())
            loss = 0.5 * x @ self.A @ x - self.b @ x
            loss.backward(create_graph=create_graph)
            return loss

        return closure


def sgd_ref(x, d, buf, lr, mom, wd):
    """torch SGD (dampening 0, coupled weight decay) on flat vectors."""
    d = d + wd * x
    buf = d.clone() if buf is None else mom * buf + d
    return x - lr * buf, buf


def sam_e(g, rho):
    return rho * g / g.norm()


def graft_ref(direction, magnitude, granularity):
    if granularity == "element":
        return torch.sign(direction) * magnitude.abs()
    if granularity == "global":
        return magnitude.norm() * direction / direction.norm()
    out = torch.empty_like(direction)
    for s in SLICES:
        out[s] = magnitude[s].norm() * direction[s] / direction[s].norm()
    return out


HP = dict(lr=0.05, momentum=0.9, weight_decay=0.01)


def run_two_steps(opt_cls, descent, perturb=sam_e, steps=2, rho=1.0, **kw):
    """Two optimizer steps vs. the reference: points visited (w, w + e) and the weights after each step.
    Returns (g, g_s) of each step."""
    q = Quad()
    opt = opt_cls(q.params, rho=rho, **HP, **kw)
    x, buf, seen = q.x(), None, []
    for _ in range(steps):
        g = q.grad(x)
        e = perturb(g, rho)
        g_s = q.grad(x + e)
        x_next, buf = sgd_ref(x, descent(g, g_s), buf, HP["lr"], HP["momentum"], HP["weight_decay"])
        q.seen.clear()
        opt.step(q.closure(opt))
        torch.testing.assert_close(q.seen[0], x)  # clean pass at w
        torch.testing.assert_close(q.seen[1], x + e)  # a wrong sign or norm of e shows here
        torch.testing.assert_close(q.x(), x_next)  # a wrong descent gradient or a missing restore here
        x = x_next
        seen.append((g, g_s))
    return seen


# ---- SAMDIRECTION / SAMMAGNITUDE ---------------------------------------------------------------------------
def test_graft_granularities_by_hand():
    direction = [torch.tensor([3.0, -4.0]), torch.tensor([0.0, 2.0])]
    magnitude = [torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 0.0])]
    expect = {
        # sign(dir) * |mag|
        "element": [[1.0, -2.0], [0.0, 0.0]],
        # per tensor: ||mag_P|| dir_P / ||dir_P||: sqrt5 * [3, -4] / 5 and 1 * [0, 2] / 2
        "tensor": [[3 * 5**0.5 / 5, -4 * 5**0.5 / 5], [0.0, 1.0]],
        # whole model: ||mag|| = sqrt6, ||dir|| = sqrt29
        "global": [[3 * (6 / 29) ** 0.5, -4 * (6 / 29) ** 0.5], [0.0, 2 * (6 / 29) ** 0.5]],
    }
    for granularity, want in expect.items():
        got = graft(direction, magnitude, granularity)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, torch.tensor(b))


@pytest.mark.parametrize("granularity", ["element", "tensor", "global"])
def test_samdirection_two_steps(granularity):
    steps = run_two_steps(
        SAMDirection, lambda g, g_s: graft_ref(g_s, g, granularity), granularity=granularity
    )
    for g, g_s in steps:  # the case tells direction from magnitude apart at every step
        assert (torch.sign(g) != torch.sign(g_s)).any()
        assert (g_s.abs() > g.abs()).any() and (g_s.abs() < g.abs()).any()


@pytest.mark.parametrize("granularity", ["element", "tensor", "global"])
def test_sammagnitude_two_steps(granularity):
    run_two_steps(SAMMagnitude, lambda g, g_s: graft_ref(g, g_s, granularity), granularity=granularity)


def test_direction_and_magnitude_differ_from_sam_and_each_other():
    q = Quad()
    x = q.x()
    g = q.grad(x)
    g_s = q.grad(x + sam_e(g, 1.0))
    dirn, magn = graft_ref(g_s, g, "element"), graft_ref(g, g_s, "element")
    assert not torch.allclose(dirn, magn) and not torch.allclose(dirn, g_s) and not torch.allclose(magn, g_s)


def test_bad_granularity_names_the_key():
    with pytest.raises(ValueError, match="granularity"):
        SAMDirection([nn.Parameter(torch.ones(2))], lr=0.1, rho=0.05, granularity="layer")


# ---- F-SAM -------------------------------------------------------------------------------------------------
def test_fsam_ema_order_over_three_steps():
    rho, sigma, lmbda = 0.5, 0.7, 0.8
    q = Quad()
    opt = FSAM(q.params, rho=rho, sigma=sigma, lmbda=lmbda, **HP)
    x, buf, m = q.x(), None, None
    for step in range(3):
        g = q.grad(x)
        u = g if m is None else g - sigma * m  # u is formed with the OLD m ...
        m = g.clone() if m is None else lmbda * m + (1 - lmbda) * g  # ... then m takes the clean g
        e = rho * u / u.norm()
        x_next, buf = sgd_ref(x, q.grad(x + e), buf, HP["lr"], HP["momentum"], HP["weight_decay"])
        q.seen.clear()
        opt.step(q.closure(opt))
        torch.testing.assert_close(q.seen[1], x + e, msg=f"perturbation at step {step}")
        torch.testing.assert_close(q.x(), x_next)
        ema = torch.cat([opt.state[p]["fsam_m"].reshape(-1) for p in q.params])
        torch.testing.assert_close(ema, m, msg=f"EMA after step {step}")
        x = x_next


def test_fsam_sigma0_is_sam_and_ascent_steps_update_m_once():
    q1, q2 = Quad(), Quad()
    o1 = FSAM(q1.params, rho=0.3, sigma=0.0, **HP)
    o2 = SAM(q2.params, rho=0.3, **HP)
    for _ in range(3):
        o1.step(q1.closure(o1))
        o2.step(q2.closure(o2))
    torch.testing.assert_close(q1.x(), q2.x())
    q = Quad()
    opt = FSAM(q.params, rho=0.3, lmbda=0.5, ascent_steps=3, **HP)
    x = q.x()
    opt.step(q.closure(opt))
    ema = torch.cat([opt.state[p]["fsam_m"].reshape(-1) for p in q.params])
    torch.testing.assert_close(ema, q.grad(x))  # m = g once, not updated by the extra ascent gradients


# ---- SAM-family knobs --------------------------------------------------------------------------------------
def small_net(seed=0, bn=False, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [act(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def batch(seed=1, n=16):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def slice_part(n, part):
    """The trainer's reading of `part`: examples round(a n) .. round(b n), at least one."""
    if part is None:
        return slice(0, n)
    lo = round(part[0] * n)
    return slice(lo, max(round(part[1] * n), lo + 1))


def net_closure(opt, model, x, y, log=None):
    """The closure protocol with every keyword: create_graph, part, sample_labels."""

    def closure(create_graph=False, part=None, sample_labels=False):
        opt.zero_grad()
        s = slice_part(len(x), part)
        if log is not None:
            log.append([p.detach().clone() for p in model.parameters()])
        logits = model(x[s])
        if sample_labels:
            losses = sampled_label_losses(logits)
            losses.mean().backward()
            return losses
        loss = nn.functional.cross_entropy(logits, y[s])
        loss.backward(create_graph=create_graph)
        return loss

    return closure


def grads_at(model, params, x, y):
    """Gradient of the mean cross-entropy at the given parameter tensors, computed functionally."""
    names = [n for n, _ in model.named_parameters()]
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    loss = nn.functional.cross_entropy(functional_call(model, dict(zip(names, ps)), (x,)), y)
    return list(torch.autograd.grad(loss, ps))


def flat_norm(ts):
    return torch.cat([t.reshape(-1) for t in ts]).norm()


def sam_descent(model, w, x, y, rho, ascent=None):
    """SAM's g_s on (x, y) with the perturbation from the gradient on `ascent` = (xa, ya)."""
    g = grads_at(model, w, *(ascent or (x, y)))
    n = flat_norm(g)
    return grads_at(model, [wi + rho * gi / n for wi, gi in zip(w, g)], x, y)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_m_sharpness_averages_per_chunk_sam_gradients(m):
    """m = 1 is SAM; m > 1 gives each chunk its own perturbation and averages the chunk g_s."""
    model, rho = small_net(), 0.3
    x, y = batch()
    w = [p.detach().clone() for p in model.parameters()]
    chunks = [slice_part(len(x), (i / m, (i + 1) / m)) for i in range(m)]
    gs = [sam_descent(model, w, x[c], y[c], rho) for c in chunks]
    d = [sum(parts) / m for parts in zip(*gs)]
    opt = SAM(model.parameters(), lr=1.0, momentum=0.0, rho=rho, m=m)
    opt.step(net_closure(opt, model, x, y))
    for p, wi, di in zip(model.parameters(), w, d):
        torch.testing.assert_close(p.detach(), wi - di)


@pytest.mark.parametrize("frac", [1.0, 0.5, 0.25])
def test_ascent_fraction(frac):
    """frac = 1 is SAM; otherwise e comes from the first `frac` of the batch and g_s from all of it."""
    model, rho = small_net(), 0.3
    x, y = batch()
    w = [p.detach().clone() for p in model.parameters()]
    k = round(frac * len(x))
    d = sam_descent(model, w, x, y, rho, ascent=(x[:k], y[:k]))
    opt = SAM(model.parameters(), lr=1.0, momentum=0.0, rho=rho, ascent_fraction=frac)
    opt.step(net_closure(opt, model, x, y))
    for p, wi, di in zip(model.parameters(), w, d):
        torch.testing.assert_close(p.detach(), wi - di)


def saddle():
    """L = 0.5 x^T A x with one negative curvature: the second ascent step turns back, ||e1 + e2|| < rho."""
    q = Quad()
    q.A, q.b = torch.diag(torch.tensor([-1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])), torch.zeros(7)
    with torch.no_grad():
        q.params[0].copy_(torch.tensor([0.1, 0.2, 0.0]))
        q.params[1].zero_()
    return q


@pytest.mark.parametrize("steps,problem", [(2, Quad), (3, Quad), (2, saddle)])
def test_ascent_steps_project_onto_rho_ball(steps, problem):
    """Each step adds rho * g_k / ||g_k||; the sum is scaled back onto the ball only if it leaves it."""
    rho = 0.4
    q = problem()
    opt = SAM(q.params, rho=rho, lr=0.1, momentum=0.0, ascent_steps=steps)
    x = q.x()
    e = sam_e(q.grad(x), rho)
    points = [x, x + e]
    for _ in range(steps - 1):
        e = e + sam_e(q.grad(x + e), rho)
        e = e * min(1.0, rho / float(e.norm()))
        points.append(x + e)
    opt.step(q.closure(opt))
    assert len(q.seen) == steps + 1
    for got, want in zip(q.seen, points):
        torch.testing.assert_close(got, want)
    inside = problem is saddle
    assert float((q.seen[-1] - x).norm()) == pytest.approx(0.62 * rho if inside else rho, rel=1e-2)
    torch.testing.assert_close(q.x(), x - 0.1 * q.grad(x + e))


@pytest.mark.parametrize("mode", ["freeze", "update"])
def test_bn_second_pass_running_stats(mode):
    """freeze: the stats see only the clean pass; update: they also see the batch at w + e."""
    model, rho = small_net(bn=True), 0.5
    x, y = batch()
    ref = copy.deepcopy(model)
    w = [p.detach().clone() for p in model.parameters()]
    g = grads_at(ref, w, x, y)  # functional_call in train mode: one clean update of ref's stats
    n = flat_norm(g)
    if mode == "update":
        with torch.no_grad():
            for p, wi, gi in zip(ref.parameters(), w, g):
                p.copy_(wi + rho * gi / n)
            ref(x)
    opt = SAM(model.parameters(), lr=0.1, rho=rho, bn_second_pass=mode)
    opt.watch_bn(model)
    opt.step(net_closure(opt, model, x, y))
    for a, b in zip(model[1].buffers(), ref[1].buffers()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert int(model[1].num_batches_tracked) == (1 if mode == "freeze" else 2)


TWO_PASS = [
    (SAM, {}),
    (SAM, {"adaptive": True, "rho": 1.0}),
    (SAM, {"m": 2, "ascent_fraction": 0.5, "ascent_steps": 2}),
    (SAMDirection, {"granularity": "tensor"}),
    (SAMMagnitude, {"ascent_steps": 2}),
    (FSAM, {"m": 2}),
]


@pytest.mark.parametrize("cls,kw", TWO_PASS)
def test_weights_back_at_w_before_every_descent(cls, kw):
    model = small_net(bn=True)
    opt = cls(model.parameters(), **{"lr": 0.1, "rho": 0.2, **HP, **kw})
    opt.watch_bn(model)
    assert isinstance(opt, TwoPass)
    at_descent, descend = [], opt.descend

    def spy(params, d):
        at_descent.append([p.detach().clone() for p in params])
        descend(params, d)

    opt.descend = spy
    for s in range(3):
        log = []
        opt.step(net_closure(opt, model, *batch(s), log=log))
        assert len(log) > 1
        for a, b in zip(at_descent[-1], log[0]):
            assert torch.equal(a, b)  # bit for bit the clean point
        assert any(not torch.equal(a, b) for a, b in zip(log[1], log[0]))  # the second pass was elsewhere


# ---- SGDHESS -----------------------------------------------------------------------------------------------
class Separable:
    """L = sum(a x^4 / 4 + c x^2 / 2 - b x) over a vector (3,) and a conv kernel (2, 1, 2, 2): the Hessian is
    diagonal, diag H = 3 a x^2 + c (some negative), and changes with x."""

    def __init__(self, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.a, self.c, self.b = (torch.randn(11, generator=gen) for _ in range(3))
        x0 = torch.randn(11, generator=gen)
        self.params = [nn.Parameter(x0[:3].clone()), nn.Parameter(x0[3:].reshape(2, 1, 2, 2).clone())]

    def x(self):
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def grad(self, x):
        return self.a * x**3 + self.c * x - self.b

    def hess_diag(self, x):
        return 3 * self.a * x**2 + self.c

    def closure(self, opt):
        def closure(create_graph=False):
            opt.zero_grad()
            x = torch.cat([p.reshape(-1) for p in self.params])
            loss = (self.a * x**4 / 4 + self.c * x**2 / 2 - self.b * x).sum()
            loss.backward(create_graph=create_graph)
            return loss

        return closure


def hutchinson_ref(x, prob):
    d = prob.hess_diag(x).abs()
    conv = d[3:].reshape(2, 1, 2, 2).mean((2, 3), keepdim=True).expand(2, 1, 2, 2)
    return torch.cat([d[:3], conv.reshape(-1)])  # conv kernels: averaged over their spatial dims


@pytest.mark.parametrize("every", [1, 2])
def test_hutchinson_exact_on_diagonal_hessian(every):
    """|H z| = |diag H| for any Rademacher z when H is diagonal; D is refreshed every `every` steps."""
    prob, rho = Separable(), 0.3
    opt = SGDHess(prob.params, rho=rho, hessian="hutchinson", hessian_every=every, **HP)
    x, buf, D = prob.x(), None, None
    for step in range(4):
        g = prob.grad(x)
        if step % every == 0:
            D = hutchinson_ref(x, prob)
        x, buf = sgd_ref(x, g + rho * D * g, buf, HP["lr"], HP["momentum"], HP["weight_decay"])
        opt.step(prob.closure(opt))
        torch.testing.assert_close(prob.x(), x, msg=f"step {step}")
        assert all(p.grad.grad_fn is None for p in prob.params)  # no graph kept alive after the step


def test_hutchinson_two_steps_on_diagonal_quadratic():
    q, rho = Quad(diag=True), 0.5
    opt = SGDHess(q.params, rho=rho, **HP)
    assert opt.second_order
    D = torch.diag(q.A).abs()
    x, buf = q.x(), None
    for _ in range(2):
        g = q.grad(x)
        x, buf = sgd_ref(x, g + rho * D * g, buf, HP["lr"], HP["momentum"], HP["weight_decay"])
        opt.step(q.closure(opt))
        torch.testing.assert_close(q.x(), x)


def test_hvp_equals_explicit_hessian_on_tiny_bn_model():
    """d = g + rho H g with H from torch.autograd.functional.hessian (double backward through BatchNorm)."""
    model, rho = small_net(bn=True, act=nn.Tanh), 0.7
    x, y = batch(n=12)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        chunks = torch.split(flat, [s.numel() for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    H = torch.autograd.functional.hessian(loss_of, w)
    w_req = w.clone().requires_grad_(True)
    g = torch.autograd.grad(loss_of(w_req), w_req)[0]
    opt = SGDHess(model.parameters(), lr=1.0, momentum=0.0, rho=rho, hessian="hvp")
    opt.watch_bn(model)
    opt.step(net_closure(opt, model, x, y))
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, w - (g + rho * H @ g), rtol=1e-5, atol=1e-6)


def test_gnb_two_steps_with_given_sampled_labels():
    """D = B * g_hat^2, g_hat the mean-loss gradient at the sampled labels, refreshed every 2 steps."""
    model, rho = nn.Linear(6, 3), 0.5
    torch.manual_seed(0)
    nn.init.normal_(model.weight)
    x, y = batch(n=10)
    y_hat = (y + 1) % 3  # stands in for the labels a closure draws from the softmax
    calls = []

    def closure(create_graph=False, sample_labels=False):
        opt.zero_grad()
        calls.append(sample_labels)
        out = model(x)
        if sample_labels:
            losses = nn.functional.cross_entropy(out, y_hat, reduction="none")
            losses.mean().backward()
            return losses
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        return loss

    opt = SGDHess(model.parameters(), lr=0.1, momentum=0.9, rho=rho, hessian="gnb", hessian_every=2)
    assert not opt.second_order  # GNB needs no double backward
    w, buf, D = [p.detach().clone() for p in model.parameters()], None, None
    for step in range(3):
        g = grads_at(model, w, x, y)
        if step % 2 == 0:
            D = [len(x) * gh**2 for gh in grads_at(model, w, x, y_hat)]
        d = [gi + rho * Di * gi for gi, Di in zip(g, D)]
        buf = [di.clone() for di in d] if buf is None else [0.9 * b + di for b, di in zip(buf, d)]
        w = [wi - 0.1 * b for wi, b in zip(w, buf)]
        opt.step(closure)
        for p, wi in zip(model.parameters(), w):
            torch.testing.assert_close(p.detach(), wi)
    assert calls == [True, False, False, True, False]


def test_gnb_estimate_is_unbiased_for_gauss_newton_diagonal():
    """For a linear softmax model the Gauss-Newton matrix is the Hessian: E[B g_hat^2] = diag H."""
    model = nn.Linear(4, 3)
    x, y = batch(n=8)
    x = x[:, :4]
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        W, b = flat[:12].reshape(3, 4), flat[12:]
        return nn.functional.cross_entropy(x @ W.T + b, y)

    diag_h = torch.diag(torch.autograd.functional.hessian(loss_of, w))
    opt = SGDHess(model.parameters(), lr=0.0, rho=0.1, hessian="gnb")
    torch.manual_seed(0)
    total, n = torch.zeros_like(w), 1000  # Monte Carlo error about 10%; a wrong factor B is 8x off
    for _ in range(n):
        opt.step(net_closure(opt, model, x, y))
        total += torch.cat([opt.state[p]["hess_d"].reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(total / n, diag_h, rtol=0.25, atol=0.0)


def test_gnb_pass_leaves_batchnorm_stats_alone():
    model = small_net(bn=True)
    opt = SGDHess(model.parameters(), lr=0.1, rho=0.05, hessian="gnb")
    opt.watch_bn(model)
    opt.step(net_closure(opt, model, *batch()))
    assert int(model[1].num_batches_tracked) == 1


# ---- SAM probe for single-pass optimizers ------------------------------------------------------------------
def test_sam_probe_captures_sam_gradient_and_keeps_sgd_trajectory():
    q, ref = Quad(), Quad()
    opt, opt_ref = SGD(q.params, **HP), SGD(ref.params, **HP)
    for step in range(3):
        x = q.x()
        opt.capture, opt.probe_rho = True, 0.3
        opt.step(q.closure(opt))
        opt_ref.step(ref.closure(opt_ref))
        g_s = torch.cat([t.reshape(-1) for t in opt.captured["g_s"]])
        torch.testing.assert_close(g_s, q.grad(x + sam_e(q.grad(x), 0.3)), msg=f"step {step}")
        for a, b in zip(q.params, ref.params):
            assert torch.equal(a, b)  # bit for bit the SGD trajectory


# ---- state round-trip: every optimizer config --------------------------------------------------------------
register()  # the structured schema that conf/train.yaml extends
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
ROUND_TRIP = [[f"optimizer={name}"] for name in OPTIMIZERS] + [
    ["optimizer=sgdhess", "optimizer.hessian=gnb", "optimizer.hessian_every=2"],
    ["optimizer=sgdhess", "optimizer.hessian=hvp"],
    ["optimizer=sgdhess", "optimizer.hessian_every=2"],
    ["optimizer=fsam", "optimizer.m=2"],
]


@pytest.mark.parametrize("overrides", ROUND_TRIP, ids=" ".join)
def test_state_dict_round_trip_steps_identically(overrides):
    cfg = compose_cfg([*overrides, "rho=0.1", "lr=0.1"])
    model = small_net(bn=True, act=nn.Tanh)
    opt = instantiate(cfg.optimizer)(model.parameters())
    opt.watch_bn(model)
    for s in range(3):  # odd: hessian_every=2 must carry D and the step count
        opt.step(net_closure(opt, model, *batch(s)))
    clone = copy.deepcopy(model)
    opt2 = instantiate(compose_cfg([*overrides, "rho=0.9", "lr=0.7"]).optimizer)(clone.parameters())
    opt2.watch_bn(clone)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # fixes the hyper-parameters too
    for s in range(3, 6):
        torch.manual_seed(s)  # the global RNG (Hutchinson z, GNB labels) is the trainer's to restore
        opt.step(net_closure(opt, model, *batch(s)))
        torch.manual_seed(s)
        opt2.step(net_closure(opt2, clone, *batch(s)))
    for p, q in zip(model.state_dict().values(), clone.state_dict().values()):
        assert torch.equal(p, q)


def test_every_config_is_tested():
    assert {"sgd", "sam", "asam", "samdirection", "sammagnitude", "fsam", "sgdhess"} <= set(OPTIMIZERS)
