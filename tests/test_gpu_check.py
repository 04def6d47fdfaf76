"""scripts/gpu_check.sh on a CPU: the commands it would run are valid, and it judges real bench output."""

from __future__ import annotations

import json
import math
import shlex
import subprocess

import pytest

from sam_lab import bench
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def gpu_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )


def test_dry_run_prints_valid_commands_and_installs_nothing(tmp_path):
    res = gpu_check(
        "--dry-run", "--wheels", str(tmp_path / "wheels"), env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    pip = next(line for line in lines if " -m pip install" in line)
    assert "--no-index" in pip and f"{tmp_path}/wheels/*.whl" in pip and "--target" in pip
    assert any("precision_check.py --device cuda" in line for line in lines)
    command = shlex.split(next(line for line in lines if "-m sam_lab.bench" in line))
    args = command[command.index("sam_lab.bench") + 1 :]
    assert args[args.index("--device") + 1] == "cuda"
    args[args.index("--device") + 1] = "cpu"  # the bench refuses cuda without a GPU
    cfg = bench.parse(args)  # flags and options the bench really has
    assert (cfg.models, cfg.optimizers) == (["resnet18", "wrn28_10"], ["sgd", "sam"])
    assert (cfg.batch_size, cfg.steps, cfg.repeats, cfg.warmup, cfg.images) == (128, 20, 5, 10, 50000)
    assert lines[-1] == f"# results: {tmp_path}/gpu_check.txt"
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


@pytest.fixture(scope="module")
def bench_rows(tmp_path_factory) -> dict:
    """The JSON a real (tiny, CPU) bench writes: the rows the targets are read from."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    tiny = ["--width", "2", "--batch-size", "4", "--steps", "1", "--repeats", "1", "--warmup", "0"]
    bench.main(["--models", "resnet18", "--device", "cpu", "--images", "8", *tiny, "--json", str(path)])
    return json.loads(path.read_text())


def judge(rows: dict, tmp_path) -> tuple[int, list[str]]:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(rows))
    res = gpu_check("--judge", str(path))
    return res.returncode, res.stdout.splitlines()


def test_targets_are_judged_from_the_bench_json(bench_rows, tmp_path):
    code, lines = judge(bench_rows, tmp_path)  # a narrow ResNet-18 on a CPU, no WRN-28-10: fails
    assert code == 1 and len(lines) == 8 and all(line[:4] in ("PASS", "FAIL") for line in lines)
    sam = next(r for r in bench_rows["rows"] if r["impl"] == "ours" and r["optimizer"] == "sam")
    assert f"FAIL  ResNet-18 SAM s per 50k-image epoch: {sam['s_per_epoch']:.3f} (target <= 1.5)" in lines
    assert "FAIL  WRN-28-10 SAM s per 50k-image epoch: nan (target <= 12.0)" in lines  # not measured

    fast = {"s_per_epoch": 1.0, "vs_sgd": 2.0, "speedup": 6.0}
    rows = [
        {**r, **fast, "model": model}
        for r in bench_rows["rows"]
        if r["impl"] == "ours"
        for model in ("resnet18", "wrn28_10")
    ]
    code, lines = judge({"rows": rows}, tmp_path)
    assert code == 0 and all(line.startswith("PASS") for line in lines), lines
    for key, value in [("vs_sgd", 2.06), ("speedup", 4.9), ("s_per_epoch", math.nan)]:
        worse = [{**r, key: value} if r["optimizer"] == "sam" else r for r in rows]
        code, lines = judge({"rows": worse}, tmp_path)
        assert code == 1 and sum(line.startswith("FAIL") for line in lines) == 2, (key, lines)
