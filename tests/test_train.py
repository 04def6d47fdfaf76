"""End-to-end: the CLI, the config contract, outputs, resume and logging."""

import json

import pytest
import torch

from sam_lab.engine import Sums
from sam_lab.run.files import read_jsonl
from sam_lab.train import build, run
from tests.conftest import ROOT, cli, compose_cfg


def test_sums_average_over_all_steps():
    s = Sums(torch.device("cpu"))
    for v, n in [(1.0, 2), (4.0, 1), (0.0, 1)]:
        s.add("train/loss", torch.tensor(v * n), n)
    assert s.means()["train/loss"] == pytest.approx(6.0 / 4)


@pytest.mark.slow
def test_digits_sam_learns(tmp_path):
    """The README's demo, in small: real images, SAM, test accuracy >= 0.90."""
    out = tmp_path / "run"
    res = cli(
        [
            "data=digits",
            "model.width=8",
            "optimizer=sam",
            "rho=0.05",
            "epochs=8",
            "batch_size=64",
            "lr=0.05",
            "logger=none",
            "device=cpu",
            "metrics.sharpness.num_samples=128",  # the default 5120 (all 1300 digits) costs ~1 min on CPU
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test/acc"] >= 0.90, summary
    assert "final test accuracy" in res.stdout
    history = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in history] == list(range(1, 9))
    for key in [
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "test/loss",
        "test/acc",
        "lr",
        "perf/img_per_s",
        "opt/ratio_gt1_frac",
        "opt/norm_ratio",
        "opt/cos",
        "opt/grad_norm",
    ]:
        assert key in history[-1], key
    assert 0.0 <= history[-1]["opt/ratio_gt1_frac"] <= 1.0
    assert (out / "checkpoints" / "last.pt").exists() and (out / ".hydra" / "config.yaml").exists()
    assert summary["best_val/test_acc"] >= 0.85 and summary["config"]["optimizer"] == "sam"
    assert summary["sharpness/lambda_max"] > 0 and summary["sharpness/n_hvp"] > 0


def test_two_job_multirun_writes_separate_outputs(tmp_path, tiny):
    sweep = tmp_path / "sweep"
    res = cli(["-m", *tiny, "optimizer=sgd,sam", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 2 and jobs[0] != jobs[1]
    choices = {json.loads((j / "summary.json").read_text())["config"]["optimizer"] for j in jobs}
    assert choices == {"sgd", "sam"}
    assert all("optimizer=" in j.name for j in jobs)  # directories name what distinguishes them


@pytest.mark.parametrize(
    "override,key",
    [
        ("rho=-0.1", "rho"),
        ("rho=abc", "rho"),
        ("batch_size=0", "batch_size"),
        ("rhoo=0.1", "rhoo"),
        ("optimizer=nope", "optimizer"),
        ("device=gpu", "device"),
        ("epochs=1.5", "epochs"),
    ],
)
def test_bad_values_exit_1_naming_the_key(tmp_path, tiny, override, key):
    res = cli([*tiny, override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=120)
    assert res.returncode == 1
    assert key in res.stderr
    assert "Traceback" not in res.stderr


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_resume_finishes_identically(tmp_path):
    common = [
        "data=synthetic",
        "model.width=4",
        "epochs=3",
        "batch_size=128",
        "logger=none",
        "device=cpu",
        "optimizer=sam",
        "metrics.sharpness.enabled=false",  # resume exactness is about training; sharpness has its own tests
        "trainer.progress=off",
        "metrics.grad_stats_every=2",
    ]
    straight = tmp_path / "straight"
    run(compose_cfg(common), straight)

    interrupted = tmp_path / "interrupted"
    trainer = build(compose_cfg(common), interrupted)
    trainer.fit(until=1)  # "crash" after the first epoch's checkpoint
    run(compose_cfg([*common, "resume=true"]), interrupted)

    a, b = _weights(straight / "checkpoints/last.pt"), _weights(interrupted / "checkpoints/last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha, hb = read_jsonl(straight / "metrics.jsonl"), read_jsonl(interrupted / "metrics.jsonl")
    assert [r["epoch"] for r in hb] == [1, 2, 3]
    for ra, rb in zip(ha, hb):
        assert {k: v for k, v in ra.items() if not k.startswith("perf/") and k != "sharpness/seconds"} == {
            k: v for k, v in rb.items() if not k.startswith("perf/") and k != "sharpness/seconds"
        }


def test_wandb_offline_writes_files_and_missing_key_falls_back(tmp_path, tiny):
    out = tmp_path / "offline"
    res = cli([*tiny, "logger=wandb", f"hydra.run.dir={out}"], cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((out / "wandb").glob("offline-run-*"))
    out2 = tmp_path / "nokey"
    res = cli(
        [*tiny, "logger=wandb", f"hydra.run.dir={out2}"],
        cwd=tmp_path,
        timeout=120,
        env={"WANDB_MODE": "online", "HOME": str(tmp_path), "NETRC": str(tmp_path / "none")},
        unset=("WANDB_API_KEY",),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no API key" in res.stderr
    assert (out2 / "summary.json").exists()


def test_module_entry_runs_from_any_directory(tmp_path, tiny):
    """Nothing depends on the working directory: outputs go to the run dir only."""
    out = tmp_path / "elsewhere"
    res = cli([*tiny, f"hydra.run.dir={out}"], cwd=ROOT / "tests")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "summary.json").exists()


def test_each_multirun_job_is_its_own_wandb_run(tmp_path, tiny):
    """The basic launcher runs all jobs in one process: each must start and finish its own W&B run."""
    sweep = tmp_path / "sweep"
    res = cli(
        ["-m", *tiny, "logger=wandb", "seed=1,2", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env={"WANDB_MODE": "offline"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 2 and runs[0].parent.parent != runs[1].parent.parent
    assert len({r.name.rsplit("-", 1)[-1] for r in runs}) == 2  # two distinct run ids
