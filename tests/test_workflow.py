"""The workflow around a run, each through the real command line: `python -m sam_lab.evaluate`, `init_from`,
`trainer.grad_clip`, `trainer.ema_decay`, how runs and sweeps appear in W&B (offline files read back), the
final line, Hydra tab completion, composing the config from Python, and the CPU submitit_local recipe."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sam_lab.optim.closure import batch_closure
from sam_lab.run import wandb_files
from sam_lab.run.claim import Claim
from sam_lab.run.files import read_jsonl
from sam_lab.run.sweep import cpus_per_job
from sam_lab.train import build
from tests.conftest import CONF, ROOT, TINY, cli, compose_cfg

pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/submitit_(local|slurm)' is validated")
OFFLINE = {"WANDB_MODE": "offline"}
SHARPNESS = ["metrics.sharpness.enabled=true", "metrics.sharpness.num_samples=32"]


def evaluate_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m sam_lab.evaluate ARGS` as a user runs it (the environment of tests.conftest.cli)."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sam_lab.evaluate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**full_env, **(env or {})},
    )


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 1, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.pt", map_location="cpu", weights_only=True)


def initial_state(overrides: list[str], tmp: Path) -> dict:
    """The weights a run with `overrides` starts from (same seed, same build as the command line)."""
    model = build(compose_cfg(overrides), tmp).model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def history_steps(run_dir: Path, run_id: str) -> list[list[int]]:
    """The W&B history steps of each local segment of run `run_id`, oldest first."""
    records = [wandb_files.records(f) for f in wandb_files.segments(run_dir, run_id)]
    return [[r.history.step.num for r in rs if r.WhichOneof("record_type") == "history"] for rs in records]


def run_records(run_dir: Path) -> list:
    return [
        r.run
        for f in sorted(run_dir.glob("wandb/*/run-*.wandb"))
        for r in wandb_files.records(f)
        if r.WhichOneof("record_type") == "run"
    ]


# ---- python -m sam_lab.evaluate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run with W&B (offline), EMA and sharpness, and what it printed."""
    out = tmp_path_factory.mktemp("trained") / "run"
    args = [*TINY, "epochs=2", "logger=wandb", "trainer.ema_decay=0.5", *SHARPNESS, f"hydra.run.dir={out}"]
    res = cli(args, cwd=out.parent, env=OFFLINE)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_final_line_shows_test_accuracy_and_sharpness(trained):
    out, res = trained
    summary = json.loads((out / "summary.json").read_text())
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(f"final test accuracy: {summary['test/acc']:.4f}"), last
    assert f"sharpness/lambda_max: {summary['sharpness/lambda_max']:.4g}" in last, last


def test_evaluate_adds_results_to_summary_and_wandb_without_touching_the_run(trained, tmp_path):
    src, _ = trained
    out = tmp_path / "run"
    shutil.copytree(src, out)
    before = {p: sha(out / p) for p in ("checkpoints/last.pt", "metrics.jsonl")}
    trained_summary = json.loads((out / "summary.json").read_text())
    overrides = ["metrics.sharpness.top_k=2", "metrics.sharpness.trace=2"]
    res = evaluate_cli([str(out), *overrides], cwd=tmp_path, env=OFFLINE)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p: sha(out / p) for p in before} == before  # checkpoint and history byte-identical

    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary[k] for k in trained_summary} == trained_summary  # nothing of the run changed
    # the checkpoint's last weights are the run's final weights: the same numbers come back
    assert summary["eval/last/test/acc"] == trained_summary["test/acc"]
    assert summary["eval/last/val/loss"] == pytest.approx(trained_summary["val/loss"], rel=1e-6)
    assert summary["eval/ema/test/loss"] == pytest.approx(trained_summary["ema/test/loss"], rel=1e-6)
    lam = trained_summary["sharpness/lambda_max"]
    assert summary["eval/last/sharpness/lambda_max"] == pytest.approx(lam, rel=1e-2)
    assert len(summary["eval/last/sharpness/top_k"]) == 2  # the overrides applied
    assert {"eval/last/sharpness/trace", "eval/last/sharpness/trace_se"} <= set(summary)  # trace=0 in the run
    assert "eval/best_val/sharpness/lambda_max" in summary
    entry = summary["evaluations"][-1]
    assert entry["overrides"] == overrides and entry["checkpoint_epoch"] == 2
    assert "best_val (checkpoint epoch 2)" in res.stdout

    run_id = checkpoint(out)["logger_run_id"]
    segments = sorted(out.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(segments) == 2  # the training run, then the same W&B run resumed by evaluate
    keys = {
        item.key
        for r in wandb_files.records(segments[-1])
        if r.WhichOneof("record_type") == "summary"
        for item in r.summary.update
    }
    assert {"eval/last/test/acc", "eval/best_val/sharpness/lambda_max", "eval/ema/test/acc"} <= keys
    assert not [
        line for line in res.stdout.splitlines() + res.stderr.splitlines() if line.startswith("wandb:")
    ]


@pytest.mark.parametrize("case", ["missing dir", "no checkpoint", "unknown key", "in use"])
def test_evaluate_refuses_with_one_line(case, trained, tmp_path):
    run = tmp_path / "run"
    args = [str(run)]
    if case == "no checkpoint":
        shutil.copytree(trained[0] / ".hydra", run / ".hydra")
    if case in ("unknown key", "in use"):
        shutil.copytree(trained[0], run)
        args.append("metrics.sharpness.topk=3" if case == "unknown key" else "logger=none")
    with Claim(run) if case == "in use" else contextlib.nullcontext() as claim:  # a training process
        if claim is not None:
            claim.commit()
        line = one_line_error(evaluate_cli(args, cwd=tmp_path))
    expected = {
        "missing dir": "does not exist",
        "no checkpoint": "has no checkpoint (checkpoints/last.pt)",
        "unknown key": "metrics.sharpness.topk=3: the run's config has no key metrics.sharpness.topk",
        "in use": f"is in use by a live run (pid {os.getpid()}",
    }[case]
    assert expected in line, line


# ---- init_from and checkpoints that would run code ----------------------------------------------------


def test_init_from_starts_a_new_run_from_the_checkpoint_weights(trained, tmp_path):
    """SAM-trained weights, fine-tuned with SGD at lr 0: the weights stay the checkpoint's; fresh epochs."""
    src = trained[0] / "checkpoints/last.pt"
    out = tmp_path / "tuned"
    args = [*TINY, "optimizer=sgd", "lr=0", f"init_from={src}", "trainer.ema_decay=1", f"hydra.run.dir={out}"]
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    init, new = checkpoint(trained[0]), checkpoint(out)
    params = [k for k in init["model"] if "running" not in k and "num_batches" not in k]
    for k in params:
        assert torch.equal(new["model"][k], init["model"][k]), k
        assert torch.equal(new["ema"][f"module.{k}"], init["model"][k]), k  # the average starts there too
    assert new["optimizer_class"] == "SGD" and [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    assert json.loads((out / "summary.json").read_text())["init_from"] == str(src.resolve())


class RunsCode:
    """Unpickling this calls os.system: what a checkpoint from an untrusted source could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_that_would_run_code_are_refused(trained, tmp_path):
    marker = tmp_path / "code_ran"
    zipped, plain = tmp_path / "zipped.pt", tmp_path / "plain.pt"
    torch.save({"model": RunsCode(marker), "epoch": 1}, zipped)  # torch's format, a pickle inside
    plain.write_bytes(pickle.dumps({"model": RunsCode(marker)}))  # a bare pickle
    for bad in (zipped, plain):
        out = tmp_path / f"init_{bad.stem}"
        line = one_line_error(cli([*TINY, f"init_from={bad}", f"hydra.run.dir={out}"], cwd=tmp_path))
        assert f"cannot read checkpoint {bad}" in line and "init_from=" in line, line
        assert not out.exists() or not any(out.iterdir())  # refused before anything was written
        run = tmp_path / f"eval_{bad.stem}"
        shutil.copytree(trained[0] / ".hydra", run / ".hydra")
        (run / "checkpoints").mkdir()
        shutil.copy(bad, run / "checkpoints/last.pt")
        line = one_line_error(evaluate_cli([str(run)], cwd=tmp_path))
        assert f"cannot read checkpoint {run / 'checkpoints/last.pt'}" in line, line
    assert not marker.exists()


# ---- trainer.grad_clip --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml")))
def test_grad_clip_bounds_every_optimizers_step(name, tmp_path):
    """A huge gradient, momentum 0, weight decay 0: the step moves the weights by at most lr * clip."""
    cfg = compose_cfg([f"optimizer={name}", "optimizer.momentum=0", "weight_decay=0", "lr=0.5"])
    moved = {}
    for clip in (0.1, None):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 3)
        opt = instantiate(cfg.optimizer)(model.parameters())
        opt.clip_norm = clip  # what the trainer sets from trainer.grad_clip
        x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))

        def loss_fn(logits, ys):
            return 1e4 * torch.nn.functional.cross_entropy(logits, ys)  # a huge gradient

        w = [p.detach().clone() for p in model.parameters()]
        opt.step(batch_closure(model, opt, x, y, loss_fn))
        moved[clip] = float(
            torch.cat([(p.detach() - w0).flatten() for p, w0 in zip(model.parameters(), w)]).norm()
        )
    assert moved[0.1] <= 0.5 * 0.1 * (1 + 1e-5), moved
    assert moved[None] > 10 * 0.5 * 0.1, moved


def test_grad_clip_through_the_command_line(tmp_path):
    common = [*TINY, "optimizer=sam", "optimizer.momentum=0", "weight_decay=0", "lr=0.1"]
    sweep = tmp_path / "sweep"
    res = cli(["-m", *common, "trainer.grad_clip=1e-4,null", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    init = initial_state(common, tmp_path / "init")
    steps = 7  # 448 training images in batches of 64; the cosine rate never exceeds lr
    moved = {}
    for job in sweep.glob("[0-9]_*"):
        clip = OmegaConf.load(job / ".hydra/config.yaml").trainer.grad_clip
        state = checkpoint(job)["model"]
        keys = [k for k in init if "running" not in k and "num_batches" not in k]
        moved[clip] = float(torch.cat([(state[k] - init[k]).flatten() for k in keys]).norm())
    assert moved[1e-4] <= steps * 0.1 * 1e-4 * (1 + 1e-4), moved
    assert moved[None] > 100 * steps * 0.1 * 1e-4, moved


# ---- trainer.ema_decay --------------------------------------------------------------------------------


def test_ema_decay_0_is_the_raw_model_and_1_keeps_the_initial_weights(tmp_path):
    sweep = tmp_path / "sweep"
    res = cli(["-m", *TINY, "trainer.ema_decay=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = {OmegaConf.load(d / ".hydra/config.yaml").trainer.ema_decay: d for d in sweep.glob("[0-9]_*")}
    zero, one = jobs[0], jobs[1]
    record = read_jsonl(zero / "metrics.jsonl")[-1]
    for key in ("val/acc", "val/loss", "test/acc", "test/loss"):
        assert record[f"ema/{key}"] == record[key], key
    state = checkpoint(zero)
    assert all(torch.equal(state["ema"][f"module.{k}"], v) for k, v in state["model"].items())
    init, ema = initial_state(TINY, tmp_path / "init"), checkpoint(one)["ema"]
    assert all(torch.equal(ema[f"module.{k}"], v) for k, v in init.items())  # weights and BN buffers
    record = read_jsonl(one / "metrics.jsonl")[-1]
    assert record["ema/test/loss"] != record["test/loss"]


@pytest.mark.slow
def test_resume_after_kill_is_exact_with_ema_and_wandb_gets_the_lost_epochs(tmp_path):
    """kill -9 in epoch 2 (W&B had written nothing to disk yet): the resumed run equals an uninterrupted one,
    EMA included, and the W&B run gets every epoch exactly once."""
    common = [*TINY, "epochs=2", "trainer.ema_decay=0.9", "logger=wandb"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli([*common, f"hydra.run.dir={straight}"], cwd=tmp_path, env=OFFLINE).returncode == 0
    res = cli([*common, f"hydra.run.dir={killed}"], cwd=tmp_path, env={**OFFLINE, "SAM_LAB_FAULT": "step:10"})
    assert res.returncode == -9, res.stderr[-3000:]
    run_id = checkpoint(killed)["logger_run_id"]
    lost = set(range(1, 2)) - {s for seg in history_steps(killed, run_id) for s in seg}
    res = cli([*common, f"hydra.run.dir={killed}"], cwd=tmp_path, env=OFFLINE)
    assert res.returncode == 0, res.stderr[-3000:]

    a, b = checkpoint(straight), checkpoint(killed)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    ha, hb = read_jsonl(straight / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    drop = ("perf/img_per_s", "perf/epoch_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ha] == [
        {k: v for k, v in r.items() if k not in drop} for r in hb
    ]
    segments = history_steps(killed, run_id)
    assert len(segments) == 2 and sorted(s for seg in segments for s in seg) == [1, 2]  # each epoch once
    assert set(segments[1]) == lost | {2}  # the resumed segment re-logged what the killed one lost
    if lost:
        assert "W&B: re-logged epochs 1 from metrics.jsonl" in res.stdout + res.stderr


# ---- W&B in sweeps ------------------------------------------------------------------------------------


def test_sweep_jobs_in_wandb_one_group_short_names_choices_and_one_line_each(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "logger=wandb", "optimizer=sam,asam", f"hydra.sweep.dir={sweep}"]
    res = cli(args, cwd=tmp_path, env=OFFLINE)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = {r.job_type: r for job in sweep.glob("[0-9]_*") for r in run_records(job)}
    assert set(runs) == {"sam", "asam"}
    for opt, r in runs.items():
        assert re.fullmatch(rf"{opt}-resnet18-rho0\.05-s0-[0-9a-f]{{6}}", r.display_name), r.display_name
        assert r.run_group == f"{sweep.parent.name}_{sweep.name}"  # a sweep dir outside outputs/sweeps/
        assert {"synthetic", "resnet18", opt} <= set(r.tags)
        config = {item.key: json.loads(item.value_json) for item in r.config.update}
        assert config["choices"]["optimizer"] == opt and config["choices"]["data"] == "synthetic"
    assert len({r.display_name for r in runs.values()}) == 2
    output = res.stdout.splitlines() + res.stderr.splitlines()
    assert not [line for line in output if line.startswith("wandb:")]  # W&B silent inside sweeps
    lines = [line for line in res.stdout.splitlines() if line.startswith("sweep job")]
    assert len(lines) == 2 and all("finished: test/acc" in line for line in lines), res.stdout
    assert "final test accuracy" not in res.stdout


# ---- Hydra conveniences -------------------------------------------------------------------------------


def test_hydra_help_and_tab_completion(tmp_path):
    res = cli(["--hydra-help"], cwd=tmp_path)
    assert res.returncode == 0 and "-sc install=bash" in res.stdout, res.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        ["bash", "-c", f'eval "$({sys.executable} -m sam_lab.train -sc install=bash)" && complete -p python'],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0 and "hydra_bash_completion" in res.stdout, res.stderr[-3000:]
    # the `sam-train` console script (pyproject.toml) is what pip installs: completion of its overrides
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sam-train").write_text(f"#!{sys.executable}\nfrom sam_lab.train import main\nmain()\n")
    (bindir / "sam-train").chmod(0o755)
    script = (
        'eval "$(sam-train -sc install=bash)"; COMP_LINE="sam-train optimizer=fs"; COMP_POINT=${#COMP_LINE}; '
        'COMP_CWORD=1; hydra_bash_completion; echo "${COMPREPLY[@]}"'
    )
    env["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    res = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0 and res.stdout.split() == ["optimizer=fsam"], (res.stdout, res.stderr[-3000:])


def test_readme_compose_snippet_runs_in_a_fresh_process():
    """The README's snippet composes `train` with Hydra's compose API, importing nothing of sam_lab."""
    readme = (ROOT / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "initialize_config_dir" in b]
    assert "sam_lab" not in snippet
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "sam_lab.optim.FSAM 0.2" in res.stdout, res.stdout


@pytest.mark.slow
def test_cpu_submitit_local_recipe_shares_the_cores_and_prints_a_line_per_job(tmp_path):
    """docs/reproduce.md's CPU recipe: J jobs at a time, cores // J threads each, no GPU needed."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "seed=1,2,3", "hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2"]
    res = cli([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("sweep job")]
    assert [line.split()[2] for line in lines] == ["0", "1", "2"], res.stdout
    assert all(" finished: test/acc " in line for line in lines), lines
    for job in sweep.glob("[0-9]_*"):
        assert f"CPU threads: {cpus_per_job(2)}" in (job / "train.log").read_text()
