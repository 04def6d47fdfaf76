"""SAM under mixed precision (docs/precision.md): the perturbation the forward really applies, the fp32
perturbed pass of the default bf16 mode, the hooks of bf16_hooks, and fp16 with one loss scaler per step."""

import copy
import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sam_lab.metrics.grad_stats import grad_stats
from sam_lab.optim import FSAM, SAM, SGD, MixedPrecision, SGDHess
from sam_lab.optim.closure import batch_closure
from sam_lab.optim.precision import DTYPES, hooked, low_precision_params
from tests.conftest import ROOT, TINY, cli

MODES = list(DTYPES)


def flat(v):
    return torch.cat([t.flatten() for t in v]).double()


# ---- opt/perturb_cos and opt/perturb_norm_ratio --------------------------------------------------------
def test_perturbation_statistics_by_hand():
    e = [torch.tensor([3.0]), torch.tensor([4.0])]
    same = grad_stats(None, e, e=e, e_applied=e)
    assert float(same["opt/perturb_cos"]) == 1.0 and float(same["opt/perturb_norm_ratio"]) == 1.0  # exact
    half = grad_stats(None, e, e=e, e_applied=[torch.tensor([3.0]), torch.tensor([0.0])])
    assert math.isclose(float(half["opt/perturb_cos"]), 9 / (5 * 3), rel_tol=1e-6)  # e.a / (|e| |a|)
    assert math.isclose(float(half["opt/perturb_norm_ratio"]), 3 / 5, rel_tol=1e-6)
    zero = [torch.zeros(1), torch.zeros(1)]  # rho = 0: nothing intended, nothing applied
    assert float(grad_stats(None, e, e=zero, e_applied=zero)["opt/perturb_cos"]) == 1.0


def test_applied_perturbation_by_hand():
    """bf16 has 8 significant bits: its spacing at 1.0 is 2^-7 = 0.0078125."""
    model = nn.Sequential(nn.Linear(3, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(1.0)
        model[1].weight.fill_(1.0)
    params = list(model.parameters())  # linear weight, linear bias, BN weight, BN bias
    e = [
        torch.tensor([[0.001, 0.003, 0.005]]),
        torch.tensor([0.005]),
        torch.tensor([0.001]),
        torch.tensor([0.001]),
    ]
    cast = low_precision_params(model)
    assert set(map(id, cast)) == {id(params[0]), id(params[1])}  # autocast casts the Linear's, not BN's
    naive = MixedPrecision("bf16_naive").applied(params, e, cast)
    assert naive[0].tolist() == [[0.0, 0.0, 0.0078125]]  # 1.001, 1.003 round to 1; 1.005 to 1 + 2^-7
    assert naive[1].tolist() == [0.0078125] and naive[2] is e[2] and naive[3] is e[3]  # BN stays fp32
    hooks = MixedPrecision("bf16_hooks").applied(params, e, cast)  # e cast on its own: relative rounding
    torch.testing.assert_close(hooks[0], e[0].bfloat16().float(), rtol=0, atol=0)
    assert (hooks[0] - e[0]).abs().max() < 2**-9 * 0.005
    for mode in ("fp32", "bf16", "fp16"):  # an fp32 pass at w + e applies e exactly
        assert MixedPrecision(mode).applied(params, e, cast) is e


def test_hooks_compute_each_layer_at_w_plus_e():
    """In fp32 (no rounding to hide behind): f(x, w) + f(x, e) is the layer at w + e, weight and bias
    gradients are those at w + e, and the hooks are gone afterwards."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)
    )
    ref = copy.deepcopy(model)
    x = torch.randn(4, 2, 4, 4)
    params, cast = list(model.parameters()), low_precision_params(model)
    e = [0.1 * torch.randn_like(p) for p in params]
    with hooked(cast, params, e):
        model(x).square().sum().backward()
    with torch.no_grad():
        torch._foreach_add_(list(ref.parameters()), e)
    ref(x).square().sum().backward()
    for p, q in zip(params, ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


# ---- a model on which bf16 is exact except for the perturbation ------------------------------------------
def exact_problem():
    """A bias-free Linear with weights in +-{2, 2.5, 3, 3.5}, inputs in {-1, 0, 1} and a quadratic loss
    around targets t = W* x (W* = W + 0.5 on a quarter of the entries): outputs, residuals and gradients are
    multiples of powers of 2 with few significant bits, so bf16 computes g exactly. Only the perturbation
    (~0.004 per element, below half the bf16 spacing 2^-6 of such weights) can go wrong."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(4, 8, (4, 8), generator=gen) / 2 * (torch.randint(0, 2, (4, 8), generator=gen) * 2 - 1)
    w_star = w + (torch.rand(4, 8, generator=gen) < 0.25) * 0.5
    x = torch.randint(-1, 2, (64, 8), generator=gen).float()
    return w, x, x @ w_star.T


def quadratic(z, t):
    return 0.5 * (z - t).square().sum(1).mean()


def exact_step(mode):
    w, x, t = exact_problem()
    layer = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    amp = MixedPrecision(mode, "cpu")
    opt = SAM(layer.parameters(), lr=0.0, rho=0.02, momentum=0.0)
    opt.watch(layer, amp)
    opt.capture = True
    opt.step(batch_closure(layer, opt, x, t, quadratic, amp.autocast))
    stats = grad_stats(**opt.captured)
    return flat(opt.captured["g"]), flat(opt.captured["g_s"]), float(stats["opt/perturb_cos"])


def test_default_bf16_keeps_the_perturbation_and_matches_fp32():
    g0, gs0, _ = exact_step("fp32")
    sam_part = gs0 - g0

    def cos(gs, g):
        return float((gs - g) @ sam_part / ((gs - g).norm() * sam_part.norm()))

    results = {mode: exact_step(mode) for mode in MODES}
    for mode, (g, _, _) in results.items():
        assert torch.equal(g, g0), mode  # bf16/fp16 compute the clean gradient exactly here
    for mode in ("bf16", "fp16"):  # the default: the pass at w + e in fp32
        g, gs, perturb_cos = results[mode]
        assert perturb_cos == 1.0 and cos(gs, g) >= 0.99, mode
    g, gs, perturb_cos = results["bf16_naive"]  # w + e cast to bf16: most of e is gone
    assert perturb_cos < 0.5 and cos(gs, g) < 0.5
    g, gs, perturb_cos = results["bf16_hooks"]  # the weights see e, the bf16 outputs round part of it away
    assert perturb_cos >= 0.99 and cos(gs, g) < 0.99


# ---- every mode restores w exactly ---------------------------------------------------------------------
def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )


def conv_batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)


@pytest.mark.parametrize("mode", MODES)
def test_weights_bn_and_hooks_are_restored_exactly(mode):
    model, ref = conv_net(), conv_net()
    amp = MixedPrecision(mode, "cpu")
    opt = SAM(model.parameters(), lr=0.0, momentum=0.0, rho=0.5)
    opt.watch(model, amp)
    x, y = conv_batch()
    opt.step(batch_closure(model, opt, x, y, F.cross_entropy, amp.autocast))
    ref.train()
    with torch.autocast("cpu", dtype=amp.dtype or torch.bfloat16, enabled=amp.dtype is not None):
        ref(x)  # exactly one update of the BN running statistics, at the clean weights
    for (k, v), r in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(v, r), k
    assert all(len(m._forward_hooks) == 0 for m in model.modules()) and not amp.suspended


def test_default_bf16_runs_the_perturbed_pass_in_fp32():
    """One bf16 SAM step by hand: g from a bf16 forward, e = rho g / ||g||, g_s from an fp32 forward at
    w + e (autocast off), w restored, SGD along g_s in fp32."""
    lr, wd, rho = 0.1, 5e-4, 0.2
    model, ref = conv_net(), conv_net()
    amp = MixedPrecision("bf16", "cpu")
    opt = SAM(model.parameters(), lr=lr, momentum=0.0, weight_decay=wd, rho=rho)
    opt.watch(model, amp)
    x, y = conv_batch()
    dtypes = []

    def closure(**kw):
        opt.zero_grad()
        with amp.autocast():
            logits = model(x)
        dtypes.append(logits.dtype)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        return loss

    def grads(at, low):
        with torch.no_grad():
            for p, v in zip(ref.parameters(), at):
                p.copy_(v)
        ref.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            F.cross_entropy(ref(x).float(), y).backward()
        return [p.grad.clone() for p in ref.parameters()]

    w = [p.detach().clone() for p in ref.parameters()]
    g = grads(w, low=True)
    norm = torch.linalg.vector_norm(torch.stack([t.norm() for t in g]))
    g_s = grads([a + rho * b / (norm + 1e-12) for a, b in zip(w, g)], low=False)
    opt.step(closure)
    assert dtypes == [torch.bfloat16, torch.float32]
    for p, a, gs in zip(model.parameters(), w, g_s):
        torch.testing.assert_close(p.detach(), a - lr * (gs + wd * a))


# ---- fp16: one GradScaler across the passes -------------------------------------------------------------
def fp16_closure(opt, model, x, y, amp, blow_up=None, seen=None):
    """The trainer's closure; `blow_up` ("clean" or "perturbed") makes that pass's gradients infinite."""

    def closure(loss_scale=None, **kw):
        opt.zero_grad(set_to_none=True)
        with amp.autocast():
            logits = model(x)
        if seen is not None:
            seen.append((logits.dtype, loss_scale))
        loss = F.cross_entropy(logits.float(), y)
        which = "perturbed" if opt.perturbed else "clean"
        factor = float("inf") if blow_up == which else 1.0
        (loss * loss_scale * factor).backward()
        return loss

    return closure


def test_fp16_step_scales_both_passes_and_matches_the_unscaled_step():
    model, ref = conv_net(), conv_net()
    amp = MixedPrecision("fp16", "cpu")
    opt = SAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.2)
    opt.watch(model, amp)
    x, y = conv_batch()
    seen = []
    opt.step(fp16_closure(opt, model, x, y, amp, seen=seen))
    assert [d for d, _ in seen] == [torch.float16, torch.float32]  # clean pass fp16, pass at w + e fp32
    assert all(float(s) == 65536.0 for _, s in seen)  # one scale for both passes
    assert amp.scaler.get_scale() == 65536.0  # no overflow: no back-off (growth after 2000 good steps)
    # the same step by hand, with the same scale: g = grad(S * loss) / S under fp16 autocast, g_s in fp32
    w = [p.detach().clone() for p in ref.parameters()]
    ref.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        (F.cross_entropy(ref(x).float(), y) * 65536.0).backward()
    g = [p.grad / 65536.0 for p in ref.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([t.norm() for t in g]))
    with torch.no_grad():
        for p, a, b in zip(ref.parameters(), w, g):
            p.copy_(a + 0.2 * b / (norm + 1e-12))
    ref.zero_grad()
    F.cross_entropy(ref(x).float(), y).backward()
    for p, a, q in zip(model.parameters(), w, ref.parameters()):
        torch.testing.assert_close(p.detach(), a - 0.1 * (q.grad + 5e-4 * a))  # first step: buf = d


@pytest.mark.parametrize("blow_up", ["clean", "perturbed"])
@pytest.mark.parametrize("cls", [SAM, FSAM, SGD])
def test_fp16_overflow_skips_the_whole_step(cls, blow_up):
    if cls is SGD and blow_up == "perturbed":
        pytest.skip("SGD has no perturbed pass")
    model = conv_net()
    amp = MixedPrecision("fp16", "cpu")
    kw = {} if cls is SGD else {"rho": 0.2}
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, **kw)
    opt.watch(model, amp)
    x, y = conv_batch()
    # an overflow on the very first step: no state is created (no momentum buffer, no F-SAM EMA)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(fp16_closure(opt, model, x, y, amp, blow_up=blow_up))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), before))
    assert all(len(s) == 0 for s in opt.state.values()) and amp.scaler.get_scale() == 32768.0
    # a good step, then an overflow: weights, momentum and EMA exactly as after the good step
    opt.step(fp16_closure(opt, model, x, y, amp))
    weights = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy({id(p): dict(s) for p, s in opt.state.items()})
    assert any("momentum_buffer" in s for s in state.values())
    opt.step(fp16_closure(opt, model, x, y, amp, blow_up=blow_up))
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p, w)
    for p, s in opt.state.items():
        assert s.keys() == state[id(p)].keys() and all(torch.equal(v, state[id(p)][k]) for k, v in s.items())
    assert amp.scaler.get_scale() == 16384.0  # backed off twice
    opt.step(fp16_closure(opt, model, x, y, amp))  # and training goes on
    assert not any(torch.equal(p, w) for p, w in zip(model.parameters(), weights))


def test_fp16_scaler_state_round_trips_and_sgdhess_refuses_fp16():
    model = conv_net()
    amp = MixedPrecision("fp16", "cpu")
    opt = SAM(model.parameters(), lr=0.1, rho=0.1)
    opt.watch(model, amp)
    x, y = conv_batch()
    opt.step(fp16_closure(opt, model, x, y, amp, blow_up="clean"))
    state = copy.deepcopy(opt.state_dict())
    assert state["grad_scaler"]["scale"] == 32768.0
    opt2 = SAM(conv_net().parameters(), lr=0.1, rho=0.1)
    amp2 = MixedPrecision("fp16", "cpu")
    opt2.watch(model, amp2)
    opt2.load_state_dict(state)
    assert amp2.scaler.get_scale() == 32768.0
    with pytest.raises(ValueError, match="fp16"):
        SGDHess(model.parameters(), lr=0.1, rho=0.1).watch(model, MixedPrecision("fp16", "cpu"))


# ---- through the command line ---------------------------------------------------------------------------
def _epoch(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_precision_through_the_cli(tmp_path):
    """bf16 (default) and fp16 keep the perturbation (opt/perturb_cos 1), bf16_naive loses part of it."""
    common = [*TINY, "data.subset=64", "batch_size=32", "metrics.grad_stats_every=1", "rho=0.01"]
    seen = {}
    for mode in ("bf16", "bf16_naive", "fp16"):
        res = cli([*common, f"trainer.precision={mode}", f"hydra.run.dir={tmp_path / mode}"], tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        seen[mode] = _epoch(tmp_path / mode)
        assert math.isfinite(seen[mode]["train/loss"])
    assert seen["bf16"]["opt/perturb_cos"] == 1.0 and seen["bf16"]["opt/perturb_norm_ratio"] == 1.0
    assert seen["fp16"]["opt/perturb_cos"] == 1.0
    assert seen["bf16_naive"]["opt/perturb_cos"] < 0.9 and seen["bf16_naive"]["opt/perturb_norm_ratio"] > 1.1
    res = cli([*TINY, "optimizer=sgdhess", "trainer.precision=fp16", f"hydra.run.dir={tmp_path}/h"], tmp_path)
    assert res.returncode == 1 and "trainer.precision=fp16 is not supported" in res.stderr


def _precision_check(capsys, *args):
    """scripts/precision_check.py in this process; its table as {mode: [cells]}."""
    spec = importlib.util.spec_from_file_location("precision_check", ROOT / "scripts" / "precision_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--width", "4", "--batch", "8", "--steps", "1", "--repeats", "1", "--batches", "1", *args])
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    return {r[1].strip(): [c.strip() for c in r[2:-1]] for r in rows[1:]}


def test_precision_check_prints_one_row_per_mode(capsys):
    table = _precision_check(capsys, "--data", "synthetic")
    assert list(table) == MODES
    assert table["fp32"][:3] == ["1.0000", "1.0000", "1.0000"] and table["bf16"][0] == "1.0000"
    assert float(table["bf16_naive"][0]) < 1.0  # perturb_cos: part of e rounded away


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_precision_check_runs_on_cuda(capsys):
    table = _precision_check(capsys, "--device", "cuda")
    assert table["bf16"][0] == "1.0000" and float(table["bf16_naive"][0]) < 1.0
