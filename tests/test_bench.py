"""The benchmark CLI and the reference loop it measures against."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from sam_lab import bench
from sam_lab.optim import SAM
from sam_lab.perf.measure import BenchConfig, _ratios, our_overrides
from sam_lab.perf.reference import ReferenceSAM, disable_running_stats, enable_running_stats
from sam_lab.perf.runners import Ours, Reference
from sam_lab.perf.table import COLUMNS, format_table
from tests.conftest import ROOT

TINY_BENCH = ["--models", "resnet18", "--width", "4", "--batch-size", "8", "--steps", "2", "--repeats", "2"]
TINY_BENCH += ["--warmup", "1", "--threads", "1"]


def test_cli_prints_every_column_for_ours_and_reference(capsys, tmp_path):
    out_json = tmp_path / "rows.json"
    bench.main([*TINY_BENCH, "--device", "cpu", "--json", str(out_json)])
    lines = capsys.readouterr().out.splitlines()
    header = next(ln for ln in lines if ln.lstrip().startswith("model"))
    for _, title, _ in COLUMNS:
        assert title in header
    body = [ln.split() for ln in lines if ln.lstrip().startswith("resnet18")]
    assert sorted((r[1], r[2]) for r in body) == [("ours", "sam"), ("ours", "sgd"), ("reference", "sam"),
                                                   ("reference", "sgd")]  # fmt: skip
    rows = json.loads(out_json.read_text())["rows"]
    for r in rows:
        assert r["ms_per_step"] > 0 and r["peak_mb"] > 0 and 0 <= r["data_pct"] <= 100
        assert math.isfinite(r["loss"])  # both loops really trained
        assert math.isclose(r["s_per_epoch"], r["ms_per_step"] * math.ceil(50_000 / 8) / 1e3)
        assert math.isfinite(r["speedup"]) == (r["impl"] == "ours")
    assert lines[0].startswith("# ") and "torch" in lines[0]


def test_module_entry_point_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "sam_lab.bench", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "--optimizers" in out.stdout and "--ref-workers" in out.stdout


def test_ratios_are_per_round_medians():
    rows = [
        {"model": "m", "impl": "ours", "optimizer": "sgd", "_totals": [1.0, 2.0, 4.0]},
        {"model": "m", "impl": "ours", "optimizer": "sam", "_totals": [2.0, 4.2, 8.0]},
        {"model": "m", "impl": "reference", "optimizer": "sgd", "_totals": [3.0, 6.0, 12.0]},
    ]
    _ratios(rows)
    assert rows[1]["vs_sgd"] == 2.0 and rows[0]["vs_sgd"] == 1.0
    assert rows[0]["speedup"] == 3.0 and math.isnan(rows[1]["speedup"]) and math.isnan(rows[2]["speedup"])
    table = format_table([{**r, **{k: 1.0 for k, _, _ in COLUMNS[3:] if k not in r}} for r in rows])
    assert table.splitlines()[3].split()[-1] == "-"  # NaN shown as '-'


def test_reference_and_ours_train_the_same_model_on_the_same_data(tmp_path):
    cfg = BenchConfig(width=4, batch_size=8, device="cpu", steps=2)
    ours = Ours(our_overrides(cfg, "resnet18", "sam"), tmp_path)
    ref = Reference(ours, sam=True, num_workers=0)
    assert type(ref.model) is type(ours.model)
    for a, b in zip(ours.model.state_dict().values(), ref.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same config, same seed: same initial weights
    x, y = ref.next_batch()
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.5 and 0.6 < float(x.std()) < 1.4  # normalised like ours
    for _ in range(2):
        ref.step(*ref.next_batch())
        ours.step(*ours.next_batch())
    assert math.isfinite(ref.mean_loss()) and math.isfinite(ours.mean_loss())


def test_reference_sam_is_the_same_algorithm_as_ours():
    """Same weights, same batches: davda54-style SAM and sam_lab's SAM make the same updates."""
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))  # noqa: E731
    m1 = make()
    m2 = make()
    m2.load_state_dict(m1.state_dict())
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    ours = SAM(m1.parameters(), rho=0.1, **kw)
    ref = ReferenceSAM(m2.parameters(), torch.optim.SGD, rho=0.1, **kw)
    ours.watch_bn(m1)
    loss = nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)

        def closure(x=x, y=y):
            ours.zero_grad()
            out = loss(m1(x), y)
            out.backward()
            return out

        ours.step(closure)
        enable_running_stats(m2)
        loss(m2(x), y).backward()
        ref.first_step(zero_grad=True)
        disable_running_stats(m2)
        loss(m2(x), y).backward()
        ref.second_step(zero_grad=True)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        if "num_batches_tracked" not in k:  # the momentum-0 trick still counts the second pass
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cli_on_cuda(capsys):
    bench.main([*TINY_BENCH, "--device", "cuda", "--precision", "bf16"])
    out = capsys.readouterr().out
    assert "reference" in out and "ours" in out


def test_images_flag_sets_the_synthetic_set_of_both_loops(tmp_path):
    cfg = bench.parse(["--width", "4", "--batch-size", "8", "--device", "cpu", "--images", "40"])
    assert cfg.images == 40 and "data.num_train=40" in our_overrides(cfg, "resnet18", "sgd")
    assert "data.num_train=16" in our_overrides(BenchConfig(batch_size=8, steps=2), "resnet18", "sgd")
    ours = Ours(our_overrides(cfg, "resnet18", "sgd"), tmp_path)
    ref = Reference(ours, sam=False, num_workers=0)
    assert len(ours.trainer.train_batches) == 5 and len(ref.loop.loader.dataset) == 40


BAD_ARGS = [
    (["--steps", "0"], "--steps"),
    (["--steps", "x"], "--steps"),
    (["--repeats", "-1"], "--repeats"),
    (["--warmup", "-1"], "--warmup"),
    (["--batch-size", "0"], "--batch-size"),
    (["--width", "0"], "--width"),
    (["--images", "0"], "--images"),
    (["--threads", "0"], "--threads"),
    (["--ref-workers", "-2"], "--ref-workers"),
    (["--models", "resnet18", "vgg11"], "invalid choice: 'vgg11'"),
    (["--optimizers", "sgd", "adamw"], "invalid choice: 'adamw'"),
    (["--precision", "fp8"], "--precision"),
    (["rho=-1"], "rho=-1"),
    (["no_such_key=1"], "no_such_key"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", *argv])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("python -m sam_lab.bench: error:") and message in last, last
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cuda"])
    assert exc.value.code == 2 and "no CUDA device" in capsys.readouterr().err.splitlines()[-1]


def test_allowed_names_come_from_the_config_groups():
    from sam_lab.perf.runners import CONF, config_names

    assert config_names("optimizer") == sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
    assert {"sgd", "sam"} <= set(config_names("optimizer")) and "resnet18" in config_names("model")


def _run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "sam_lab.bench", *args], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


def test_subprocess_bad_argument_exits_2_without_traceback():
    out = _run_cli(["--steps", "0"])
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1].startswith("python -m sam_lab.bench: error: argument --steps")


def test_stdout_holds_only_the_table():
    """No profiler chatter (kineto's 'USDT: ... profiler_start') on either stream; stdout: the table."""
    args = ["--width", "4", "--batch-size", "8", "--steps", "1", "--repeats", "1", "--warmup", "0"]
    out = _run_cli([*args, "--threads", "1", "--device", "cpu", "--optimizers", "sgd", "--no-reference"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    table = [ln for ln in lines if not ln.startswith("# ")]
    assert len(lines) == 3 + len(table) and lines[0].startswith("# ") and lines[-1].startswith("# medians")
    assert table[0].split()[:3] == ["model", "impl", "opt"] and set(table[1]) <= {"-", " "}
    assert [r.split()[:3] for r in table[2:]] == [["resnet18", "ours", "sgd"]]
    assert "USDT" not in out.stdout + out.stderr and "profiler_st" not in out.stdout + out.stderr
    assert all(ln.startswith("# ") for ln in out.stderr.splitlines()), out.stderr  # progress lines only
