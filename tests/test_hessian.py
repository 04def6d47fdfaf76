"""Curvature metrics against the explicitly formed Hessian of tiny models, and the trainer integration."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from sam_lab.data import load_synthetic
from sam_lab.data.base import Augment
from sam_lab.metrics.density import hessian_density, plot_density
from sam_lab.metrics.hessian import HessianOperator, hessian_eigs, hessian_trace
from sam_lab.metrics.sharpness import measure, measure_per_batch, per_batch_batches
from sam_lab.run.files import read_jsonl
from sam_lab.train import run
from tests.conftest import TINY, compose_cfg


class TinyBN(nn.Module):
    """A few hundred parameters with BatchNorm (used in eval mode: running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(6, 12), nn.BatchNorm1d(12), nn.Linear(12, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def tiny_model(bn: bool) -> nn.Module:
    torch.manual_seed(0)
    if not bn:
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))  # 180 parameters
    model = TinyBN()  # 184 parameters (+24 BN affine)
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BN is not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def tiny_batches(sizes=(7, 11, 14)):
    """Uneven batches: the operator must weight them by size to give the Hessian of the overall mean."""
    g = torch.Generator().manual_seed(1)
    n = sum(sizes)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)
    return list(zip(x.split(list(sizes)), y.split(list(sizes))))


def explicit_hessian(model: nn.Module, batches) -> torch.Tensor:
    """The full Hessian of the mean cross-entropy over all examples, float64, by torch.func.hessian."""
    m = _double(model).eval()
    names = [n for n, p in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    buffers = dict(m.named_buffers())
    x = torch.cat([b[0] for b in batches]).double()
    y = torch.cat([b[1] for b in batches])

    def loss(flat):
        chunks = flat.split([s.numel() for s in shapes])
        params = dict(zip(names, [c.view(s) for c, s in zip(chunks, shapes)]))
        return F.cross_entropy(functional_call(m, {**params, **buffers}, (x,)), y)

    return hessian(loss)(flat0)


def _double(model):
    import copy

    return copy.deepcopy(model).double()


@pytest.fixture(params=[False, True], ids=["mlp", "bn"])
def case(request):
    model = tiny_model(request.param)
    batches = tiny_batches()
    return model, batches, torch.linalg.eigvalsh(explicit_hessian(model, batches))


def test_operator_matches_explicit_hessian_product(case):
    model, batches, _ = case
    h = explicit_hessian(model, batches)
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(3))
    with HessianOperator(model, F.cross_entropy, batches) as op:
        hv = op(v)
    assert torch.allclose(hv.double(), h @ v.double(), rtol=1e-4, atol=1e-5)


def test_top_eigenvalues_match_eigvalsh(case):
    model, batches, exact = case
    top3 = exact.flip(0)[:3]
    res = hessian_eigs(model, None, batches, k=3, tol=1e-7, seed=0, return_vectors=True)
    assert res.converged
    got = torch.tensor(res.eigenvalues, dtype=torch.float64)
    assert torch.allclose(got, top3, rtol=1e-4, atol=0), (got, top3)
    assert max(res.residuals) < 1e-4
    one = hessian_eigs(model, None, batches, k=1, tol=1e-7, seed=0)
    assert one.lambda_max == pytest.approx(float(exact.max()), rel=1e-4)
    assert one.n_hvp > 0 and one.seconds > 0


def test_power_iteration_same_rule(case):
    model, batches, exact = case
    dominant = float(exact[exact.abs().argmax()])  # power iteration finds the largest |eigenvalue|
    res = hessian_eigs(model, None, batches, tol=1e-6, method="power", max_hvp=20000)
    assert res.converged
    assert res.lambda_max == pytest.approx(dominant, rel=1e-4)
    loose = hessian_eigs(model, None, batches, tol=1e-2, method="lanczos")
    assert loose.lambda_max == pytest.approx(float(exact.max()), rel=1e-2)


def test_trace_within_standard_error(case):
    model, batches, exact = case
    res = hessian_trace(model, None, batches, num_probes=300, seed=0)
    true = float(exact.sum())
    assert 0 < res.se < 0.1 * abs(true)  # a meaningful error bar, not one that makes the check vacuous
    assert abs(res.trace - true) <= 3 * res.se, (res.trace, true, res.se)
    assert res.n_hvp == 300


def test_same_seed_same_results_and_state_untouched():
    model = tiny_model(bn=True)
    model.train()
    model.fc2.eval()  # mixed modes must be restored module by module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = tiny_batches()
    a = hessian_eigs(model, None, batches, k=2, tol=1e-3, seed=5)
    b = hessian_eigs(model, None, batches, k=2, tol=1e-3, seed=5)
    assert a.eigenvalues == b.eigenvalues and a.n_hvp == b.n_hvp
    ta, tb = hessian_trace(model, None, batches, 5, seed=2), hessian_trace(model, None, batches, 5, seed=2)
    assert ta.samples == tb.samples
    da = hessian_density(model, None, batches, steps=10, seed=1)
    assert da.nodes == hessian_density(model, None, batches, steps=10, seed=1).nodes
    assert hessian_trace(model, None, batches, 5, seed=3).samples != ta.samples
    after = model.state_dict()
    for k in before:  # BN running statistics and num_batches_tracked too
        assert torch.equal(before[k], after[k]), k
    assert model.training and model.fc1.training and model.bn.training and not model.fc2.training
    assert all(p.grad is None for p in model.parameters())


def test_density_nodes_and_png(case, tmp_path):
    model, batches, exact = case
    n = exact.numel()
    res = hessian_density(model, None, batches, steps=n, num_probes=2, seed=0)
    for nodes, weights in zip(res.nodes, res.weights):
        assert sum(weights) == pytest.approx(1.0, abs=1e-9)
        # a full Krylov space: the extreme Ritz values are the extreme eigenvalues
        assert max(nodes) == pytest.approx(float(exact.max()), rel=1e-3)
        assert min(nodes) == pytest.approx(float(exact.min()), rel=1e-3, abs=1e-4)
    grid, dens = torch.tensor(res.grid), torch.tensor(res.density)
    mass = float(torch.trapezoid(dens, grid))
    assert mass == pytest.approx(1.0, abs=1e-2)
    # SLQ's quadrature of f(t) = t estimates tr(H) / n
    mean_eig = sum(sum(t * w for t, w in zip(th, ws)) for th, ws in zip(res.nodes, res.weights)) / 2
    assert math.isfinite(mean_eig)
    path = plot_density(res, tmp_path / "density.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tiny31():
    """3 -> 4 -> 3 tanh MLP: 31 parameters, so every batch's Hessian is formed and diagonalised exactly."""
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _tiny31_batches(count=4, size=6):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(count * size, 3, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (count * size,), generator=g)
    return list(zip(x.split(size), y.split(size)))


def _exact_batch_eigs(model, batch) -> torch.Tensor:
    """eigvalsh of one batch's explicit Hessian (torch.autograd.functional.hessian over the flat weights)."""
    params = dict(model.named_parameters())
    shapes = {k: p.shape for k, p in params.items()}
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss(flat):
        chunks = dict(zip(shapes, flat.split([s.numel() for s in shapes.values()])))
        w = {k: c.view(shapes[k]) for k, c in chunks.items()}
        return F.cross_entropy(functional_call(model, w, (batch[0],)), batch[1])

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat0))


def test_per_batch_protocol_matches_explicit_hessians():
    """Pooled top-5 by magnitude (PyHessian's power iteration with deflation), then the study's summary."""
    model, batches = _tiny31(), _tiny31_batches()
    assert sum(p.numel() for p in model.parameters()) == 31
    pooled = []
    for b in batches:
        ev = _exact_batch_eigs(model, b)
        mag = ev.abs().sort(descending=True)
        assert mag.values[4] > 1.001 * mag.values[5]  # the top 5 by magnitude are well defined
        pooled += ev[mag.indices[:5]].tolist()
    pos = [v for v in pooled if v > 0]
    neg_frac = sum(v < 0 for v in pooled) / len(pooled)
    assert 0 < neg_frac < 1  # negative curvature among the top 5: 'LM' and 'LA' differ here
    hvps = []
    got = measure_per_batch(model, None, batches, top_k=5, tol=1e-12, on_hvp=hvps.append)
    assert got["sharpness/per_batch_max"] == pytest.approx(max(pos), rel=1e-6)
    assert got["sharpness/per_batch_mean"] == pytest.approx(sum(pos) / len(pos), rel=1e-6)
    assert got["sharpness/per_batch_neg_frac"] == pytest.approx(neg_frac, abs=1e-12)
    assert got["sharpness/n_hvp"] == len(hvps) == hvps[-1] > 0 and got["sharpness/seconds"] > 0
    la = measure_per_batch(model, None, batches, top_k=5, tol=1e-12, which="LA")
    exact_la = [v for b in batches for v in _exact_batch_eigs(model, b).flip(0)[:5].tolist()]
    assert la["sharpness/per_batch_neg_frac"] == sum(v < 0 for v in exact_la) / len(exact_la)


def test_per_batch_no_positive_is_nan():
    from sam_lab.metrics.sharpness import pool_per_batch

    out = pool_per_batch([-1.0, -2.0])
    assert math.isnan(out["sharpness/per_batch_max"]) and math.isnan(out["sharpness/per_batch_mean"])
    assert out["sharpness/per_batch_neg_frac"] == 1.0


def test_measure_keys_and_progress(case):
    model, batches, exact = case
    ticks = []
    res = measure(model, None, batches, top_k=2, trace=3, tol=1e-7, density_steps=5, on_hvp=ticks.append)
    m = res.metrics
    assert m["sharpness/lambda_max"] == pytest.approx(float(exact.max()), rel=1e-4)
    assert m["sharpness/top_k"][0] == m["sharpness/lambda_max"] and len(m["sharpness/top_k"]) == 2
    assert {"sharpness/trace", "sharpness/trace_se", "sharpness/seconds"} <= set(m)
    assert "sharpness/converged" not in m
    assert ticks == list(range(1, m["sharpness/n_hvp"] + 1))
    assert res.density is not None and res.density.n_hvp == 5
    plain = measure(model, None, batches).metrics
    assert set(plain) == {"sharpness/lambda_max", "sharpness/n_hvp", "sharpness/seconds"}
    assert measure(model, None, batches).density is None


def test_per_batch_batches_fixed_and_augmented():
    data = load_synthetic(num_train=64, num_test=1)
    fixed = per_batch_batches(data, 3, 8, "cpu", seed=0)
    assert [len(y) for _, y in fixed] == [8, 8, 8]
    again = per_batch_batches(data, 3, 8, "cpu", seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(fixed, again))
    data.augment = Augment(crop=4, flip=True, cutout=16)
    aug = per_batch_batches(data, 10, 8, "cpu", seed=0, augment=True, cutout_p=0.5)  # 8 per epoch: 2 epochs
    assert len(aug) == 10 and all(x.shape == (8, 3, 32, 32) for x, _ in aug)
    x = torch.cat([x for x, _ in aug])
    # a 16x16 cutout square is exactly 0 after normalisation; about half of the images have one
    zero_rows = (x == 0).all(dim=1).flatten(1).sum(1)  # zeroed pixels per image
    frac = float((zero_rows >= 64).float().mean())
    assert 0.2 < frac < 0.8, frac


def test_trainer_writes_sharpness(tmp_path):
    over = [
        *TINY,
        "epochs=2",
        "optimizer=sgd",
        "metrics.sharpness.enabled=true",
        "metrics.sharpness.num_samples=24",
        "metrics.sharpness.batch_size=16",
        "metrics.sharpness.every=1",
        "metrics.sharpness.top_k=2",
        "metrics.sharpness.trace=2",
        "metrics.sharpness.density=true",
        "metrics.sharpness.density_steps=4",
    ]
    summary = run(compose_cfg(over), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    lam = on_disk["sharpness/lambda_max"]
    assert lam == summary["sharpness/lambda_max"] and math.isfinite(lam)
    assert on_disk["sharpness/top_k"][0] == lam and len(on_disk["sharpness/top_k"]) == 2
    for key in ["sharpness/trace", "sharpness/trace_se", "sharpness/seconds", "sharpness/n_hvp"]:
        assert key in on_disk, key
    history = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all("sharpness/lambda_max" in r for r in history)
    assert history[-1]["sharpness/lambda_max"] == lam  # final weights at the last epoch: computed once
    assert sorted(p.name for p in (tmp_path / "run" / "sharpness").glob("*.png")) == [
        "density_epoch1.png",
        "density_epoch2.png",
    ]


def test_trainer_per_batch_and_best_val(tmp_path):
    over = [
        *TINY,
        "metrics.sharpness.enabled=true",
        "metrics.sharpness.protocol=per_batch",
        "metrics.sharpness.per_batch_count=2",
        "metrics.sharpness.per_batch_size=8",
        "metrics.sharpness.weights=best_val",
    ]
    summary = run(compose_cfg(over), tmp_path / "run")
    assert summary["sharpness/per_batch_max"] >= summary["sharpness/per_batch_mean"]
    assert 0 <= summary["sharpness/per_batch_neg_frac"] <= 1
    assert "sharpness/lambda_max" not in summary
    assert summary["sharpness/weights_epoch"] == summary["best_val/epoch"]


def test_trainer_per_batch_options_reach_the_protocol(tmp_path):
    """The run's per_batch settings (augmented stream, cutout p, top-k, order) give exactly what the pure
    functions give on the same batches and best-val weights."""
    from sam_lab.metrics.sharpness import per_batch_batches as batches_of
    from sam_lab.run.summary import best_model
    from sam_lab.train import build

    over = [*TINY, "metrics.sharpness.enabled=true", "metrics.sharpness.protocol=per_batch",
            "metrics.sharpness.per_batch_count=2", "metrics.sharpness.per_batch_size=8",
            "metrics.sharpness.per_batch_top_k=2", "metrics.sharpness.per_batch_which=LA",
            "metrics.sharpness.per_batch_augment=true", "metrics.sharpness.per_batch_cutout_p=0.5",
            "metrics.sharpness.weights=best_val", "data.augment.cutout=8"]  # fmt: skip
    trainer = build(compose_cfg(over), tmp_path / "run")
    summary = trainer.fit()
    batches = batches_of(trainer.data, 2, 8, "cpu", seed=0, augment=True, cutout_p=0.5, channels_last=True)
    fixed = batches_of(trainer.data, 2, 8, "cpu", seed=0, augment=False, channels_last=True)
    assert not torch.equal(batches[0][0], fixed[0][0])  # the augmented stream, not the fixed subset
    want = measure_per_batch(best_model(trainer), trainer.loss_fn, batches, top_k=2, tol=1e-3, which="LA")
    for key in ("sharpness/per_batch_max", "sharpness/per_batch_mean", "sharpness/per_batch_neg_frac"):
        assert summary[key] == pytest.approx(want[key], rel=1e-5), key
    assert summary["sharpness/n_hvp"] == want["sharpness/n_hvp"]


def test_disabled_and_bad_values(tmp_path):
    assert compose_cfg([]).metrics.sharpness.enabled  # on by default, for every optimizer (docs/sharpness.md)
    summary = run(compose_cfg([*TINY, "metrics.sharpness.enabled=false"]), tmp_path / "off")
    assert not any(k.startswith("sharpness/") for k in summary)
    from sam_lab.config import ConfigError

    for bad in ["tol=0", "trace=1", "top_k=0"]:
        with pytest.raises(ConfigError, match="metrics.sharpness." + bad.split("=")[0]):
            run(compose_cfg([*TINY, "metrics.sharpness." + bad]), tmp_path / "bad")
