"""Experiment configs (one per published table), launchers, make_tables.py and plot_runs.py.

- Every grid point of every experiment composes to the published recipe (docs/published.md; the recipes of
  sam_lab/report/published.yaml, and the copy written out below), and the grid covers every cell of its
  tables. Points whose optimizer config does not exist yet (built by
  another issue) are skipped, nothing else.
- One point of every experiment trains for one epoch through build/Trainer on fake CIFAR files, and
  make_tables puts it in the right cell.
- A 2x2 sweep through hydra/launcher=submitit_local finishes, one CPU thread per job; make_tables turns it
  into the right table (and lists an unfinished run); plot_runs draws it.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf, open_dict

from sam_lab.report import published
from sam_lab.report.runs import Run, find_runs, same, selects
from sam_lab.report.tables import tables_for_runs
from sam_lab.run import launch
from sam_lab.train import run
from tests.cifar_fakes import patch_cifar_md5, write_fake_cifar
from tests.conftest import CONF, ROOT, cli
from tests.test_report import make_tables_text, run_script

# our launcher files share their names with the submitit plugin's schemas (see sam_lab/run/launch.py)
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/submitit_(local|slurm)' is validated")
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FUTURE_OPTIMIZERS = {"samdirection", "sammagnitude", "fsam", "sgdhess"}  # issue 3 adds these configs

# The published recipes (docs/published.md), written out independently of the configs: key -> value in the
# composed config.
EMPIRICAL = {
    "data": "cifar100",
    "batch_size": 256,
    "lr": 0.1,
    "optimizer.momentum": 0.9,
    "weight_decay": 1e-3,
    "scheduler": "cosine",
    "epochs": 200,
    "data.augment.crop": 4,
    "data.augment.flip": True,
    "data.augment.cutout": 16,
    "data.val_size": 5000,
    "trainer.label_smoothing": 0.0,
    "metrics.sharpness.protocol": "per_batch",
    "metrics.sharpness.weights": "best_val",
    "metrics.sharpness.per_batch_count": 40,
    "metrics.sharpness.per_batch_size": 256,
    "metrics.sharpness.per_batch_top_k": 5,
    "metrics.sharpness.per_batch_augment": True,
    "metrics.sharpness.per_batch_cutout_p": 0.5,
}
RECIPES = {
    "empirical_sam_accuracy": EMPIRICAL,
    "empirical_sam_sharpness": {**EMPIRICAL, "model": "resnet18"},
    "empirical_sam_sgdhess": {**EMPIRICAL, "model": "resnet18"},
    "friendly_sam": {
        "data": "cifar100",
        "model": "resnet18",
        "batch_size": 128,
        "lr": 0.05,
        "optimizer.momentum": 0.9,
        "weight_decay": 1e-3,
        "scheduler": "cosine",
        "epochs": 200,
        "data.augment.flip": True,
        "data.augment.crop": 4,
        "data.augment.cutout": 16,
        "rho": 0.2,
        "data.val_size": 0,
    },
    "sam_paper_wrn28_10": {
        "model": "wrn28_10",
        "batch_size": 256,
        "lr": 0.1,
        "optimizer.momentum": 0.9,
        "weight_decay": 5e-4,
        "scheduler": "cosine",
        "epochs": 200,
        "data.augment.crop": 4,
        "data.augment.flip": True,
        "data.val_size": 0,
    },
    "sam_reference_wrn16_8": {
        "data": "cifar10",
        "model": "wrn16_8",
        "batch_size": 128,
        "lr": 0.1,
        "optimizer.momentum": 0.9,
        "weight_decay": 5e-4,
        "trainer.label_smoothing": 0.1,
        "data.augment.cutout": 16,
        "scheduler": "step",
        "scheduler.milestones": [0.3, 0.6, 0.8],
        "scheduler.gamma": 0.2,
        "epochs": 200,
        "data.val_size": 0,
    },
}
# (data, model, optimizer, rho, cutout, F-SAM lambda) of every job of one seed, from docs/published.md.
_A = [
    ("cifar100", m, o, r, 16, None)
    for m in ("resnet18", "resnet34", "resnet50", "wrn28_10")
    for o in ("sam", "samdirection", "sammagnitude")
    for r in (0.1, 0.2, 0.4)
]
GRIDS = {
    "empirical_sam_accuracy": _A,
    "empirical_sam_sharpness": [p for p in _A if p[1] == "resnet18"],
    "empirical_sam_sgdhess": [("cifar100", "resnet18", "sgd", 0.0, 16, None)]
    + [("cifar100", "resnet18", "sgdhess", r, 16, None) for r in (0.05, 1.0, 2.0)],
    "friendly_sam": [("cifar100", "resnet18", "sam", 0.2, 16, None)]
    + [("cifar100", "resnet18", "fsam", 0.2, 16, lm) for lm in (0.6, 0.95)],
    "sam_paper_wrn28_10": [
        (d, "wrn28_10", o, r, c, None)
        for d, r in (("cifar10", 0.05), ("cifar100", 0.1))
        for o in ("sgd", "sam")
        for c in (0, 16)
    ],
    "sam_reference_wrn16_8": [
        ("cifar10", "wrn16_8", "sgd", 0.0, 16, None),
        ("cifar10", "wrn16_8", "sam", 0.05, 16, None),
        ("cifar10", "wrn16_8", "asam", 2.0, 16, None),
    ],
}


def _compose(overrides: list[str]):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def grid(experiment: str) -> list[list[str]]:
    """The jobs `python -m sam_lab.train +experiment=NAME -m` launches, as override lists (Hydra's code)."""
    cfg = _compose([f"+experiment={experiment}"])
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return [[f"+experiment={experiment}", *point] for point in batch]


def compose_point(overrides: list[str]):
    """The composed config of one grid point, or None if it needs an optimizer config not written yet."""
    try:
        return _compose(overrides)
    except MissingConfigException as err:
        missing = {o for o in FUTURE_OPTIMIZERS if f"optimizer/{o}" in str(err)}
        assert missing and not any((CONF / "optimizer" / f"{o}.yaml").exists() for o in missing), err
        return None


def _getter(cfg):
    choices = cfg.hydra.runtime.choices
    return lambda key: choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)


def _plain(v):
    return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def test_experiments_exist():
    assert set(EXPERIMENTS) == set(RECIPES), "every experiment needs its recipe and grid in this test"
    assert {e for t in published.tables() for e in t.experiments} == set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_grid_composes_to_the_published_recipe_and_covers_the_table(experiment):
    points = grid(experiment)
    assert len(points) == len(GRIDS[experiment])
    composed = [c for c in map(compose_point, points) if c is not None]
    if not composed:
        pytest.skip(f"{experiment}: every point needs an optimizer config of another issue")
    jobs = set()
    for cfg in composed:
        get = _getter(cfg)
        for key, want in RECIPES[experiment].items():
            assert _plain(get(key)) == want, (experiment, key, get(key))
        assert cfg.resume == "auto"  # a requeued job continues from its checkpoint
        jobs.add(
            (
                get("data"),
                get("model"),
                get("optimizer"),
                cfg.rho,
                get("data.augment.cutout"),
                get("optimizer.lmbda"),
            )
        )
    expected = GRIDS[experiment]
    assert jobs <= set(expected) and len(jobs) == len(composed), sorted(jobs, key=str)
    missing = {p for p in expected if p not in jobs}
    assert all(p[2] in FUTURE_OPTIMIZERS for p in missing), missing  # only points that were skipped
    # every table cell of this experiment is filled by some composable point, unless its optimizer is missing
    for spec in published.tables_for_experiment(experiment):
        for b in spec.blocks:
            for r in spec.rows:
                if (
                    r.select.get("optimizer") in FUTURE_OPTIMIZERS
                    and not (CONF / "optimizer" / f"{r.select['optimizer']}.yaml").exists()
                ):
                    continue
                for c in spec.columns:
                    select = {**b.select, **r.select, **c.select}
                    mine = [cfg for cfg in composed if selects(_getter(cfg), select)]
                    assert mine, (spec.name, select)
                    # published.yaml's recipe is the one source make_tables judges runs by: the experiment
                    # must run exactly it
                    for cfg in mine:
                        get = _getter(cfg)
                        for key, want in spec.cell_recipe(b, r, c).items():
                            assert same(_plain(get(key)), want), (spec.name, key, get(key), want)


@pytest.fixture(scope="module")
def fake_cifar_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    for name in ("cifar10", "cifar100"):
        write_fake_cifar(root, name, n_per_batch=24)
    return root


@pytest.fixture
def fake_cifar_root(fake_cifar_files, monkeypatch):
    for name in ("cifar10", "cifar100"):
        patch_cifar_md5(monkeypatch, fake_cifar_files, name)
    return fake_cifar_files


def train_point(overrides: list[str], run_dir: Path) -> dict:
    """What `python -m sam_lab.train OVERRIDES` does for one job, in-process, with Hydra's .hydra/ files."""
    cfg = _compose(overrides)
    HydraConfig.instance().set_config(cfg)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), run_dir / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run(cfg, run_dir, choices)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_trains_one_tiny_job_into_its_table_cell(experiment, fake_cifar_root, tmp_path):
    point = next((p for p in grid(experiment) if compose_point(p) is not None), None)
    if point is None:
        pytest.skip(f"{experiment}: every point needs an optimizer config of another issue")
    val = 8 if RECIPES[experiment]["data.val_size"] else 0
    tiny = [
        f"data.root={fake_cifar_root}",
        "data.download=false",
        f"data.val_size={val}",
        "data.subset=16",
        "model.width=1",
        "epochs=1",
        "batch_size=8",
        "trainer.eval_batch_size=64",
        "logger=none",
        "device=cpu",
        "trainer.progress=off",
        "trainer.checkpoint=false",
        "trainer.threads=1",  # two threads on two busy cores spin more than they compute
    ]
    run_dir = tmp_path / "job"
    summary = train_point([*point, *tiny], run_dir)
    assert summary["status"] == "finished" and summary["config"]["experiment"] == experiment
    made = tables_for_runs(find_runs([run_dir]))
    assert {t.spec.name for t in made} == {t.name for t in published.tables_for_experiment(experiment)}
    for table in made:
        assert not table.unplaced, table.spec.name
        assert sum(bool(c.n or c.missing_metric) for c in table.cells.values()) >= 1, table.spec.name
        # each cell the run fits shows the run's own number, or counts it as lacking a metric that does not
        # exist yet on this branch (sharpness/*: the sharpness issue)
        for (_, _, col), cell in table.cells.items():
            if not (cell.n or cell.missing_metric):
                continue
            metric = table.spec.cell_metric(next(c for c in table.spec.columns if c.label == col))
            raw = summary.get(metric.key)
            if metric.best_epoch:
                raw = max(r["test/acc"] for r in Run(run_dir).history)
            if raw is None:
                assert metric.key.startswith("sharpness/") and cell.n == 0, metric.key
            else:
                assert cell.values == [pytest.approx(metric.show(raw))] and math.isfinite(raw)


def test_job_threads_and_gpu_of_a_local_job(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    cfg = _compose(["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=3"])
    with open_dict(cfg):
        cfg.hydra.job.num = 6
    HydraConfig.instance().set_config(cfg)
    assert launch.job_threads(None) == 3 and launch.job_threads(5) == 5
    assert launch.local_job_cuda_index() is None  # not inside a submitit job
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launch.local_job_cuda_index() == 2  # job 6 of a machine with 4 GPUs
    HydraConfig.instance().set_config(_compose([]))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "7")
    assert launch.job_threads(None) == 7


def test_slurm_launcher_writes_the_sbatch_script_we_configured(tmp_path, monkeypatch):
    """The plugin's real launch() with our config, stopped at the sbatch call: one GPU, CPUs, time limit,
    partition from $SLURM_PARTITION, the requeue signal, a job array over the sweep."""
    import submitit.slurm.slurm as slurm
    from hydra.utils import instantiate

    monkeypatch.setenv("SLURM_PARTITION", "gpu_test")
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    scripts = []

    class Submitted(Exception):
        pass

    def fake_submit(self, path):
        scripts.append(Path(path).read_text())
        raise Submitted

    monkeypatch.setattr(slurm.SlurmExecutor, "_make_submission_command", fake_submit)
    cfg = _compose(["hydra/launcher=submitit_slurm", f"hydra.sweep.dir={tmp_path}"])
    HydraConfig.instance().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(Submitted):
        launcher.launch([["optimizer=sgd"], ["optimizer=sam"]], initial_job_idx=0)
    (script,) = scripts
    for line in (
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--time=1440",
        "--mem=32GB",
        "--partition=gpu_test",
        "--signal=USR2@120",
        "--array=0-1%2",
    ):
        assert f"#SBATCH {line}" in script, (line, script)
    assert launcher.params["max_num_timeout"] >= 3


@pytest.mark.slow
def test_submitit_local_sweep_tables_and_plots(tmp_path):
    sweep = tmp_path / "sweep"
    res = cli(
        [
            "-m",
            "data=digits",
            "data.subset=96",
            "model.width=2",
            "epochs=1",
            "batch_size=48",
            "logger=none",
            "device=cpu",
            "trainer.progress=off",
            "trainer.checkpoint=false",
            "optimizer=sgd,sam",
            "rho=0.05,0.1",
            "hydra/launcher=submitit_local",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=10",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "validated against ConfigStore schema" not in res.stderr
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 4 and len(list((sweep / ".submitit").iterdir())) >= 4  # four separate processes
    names = {j.name.split("_", 1)[1] for j in jobs}
    for opt in ("sgd", "sam"):
        for rho in ("0.05", "0.1"):
            assert sum(f"optimizer={opt}" in n and f"rho={rho}," in n + "," for n in names) == 1, names
    for job in jobs:
        assert "CPU threads: 1" in (job / "train.log").read_text()  # cpus_per_task reached the job
    summaries = {
        (s["config"]["optimizer"], s["rho"]): s
        for s in (json.loads((j / "summary.json").read_text()) for j in jobs)
    }

    # an unfinished job next to them: listed, and counted in its cell
    broken = sweep / "9_optimizer=sam,rho=0.1,seed=1"
    (broken / ".hydra").mkdir(parents=True)
    for f in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (broken / ".hydra" / f).write_text((jobs[-1] / ".hydra" / f).read_text())
    text = make_tables_text([str(sweep), "--csv", str(tmp_path / "t.csv")])
    lines = text.splitlines()
    top = lines.index("**resnet18, digits**")
    assert lines[top + 2 : top + 4] == ["| method | no rho | rho=0.05 | rho=0.1 |", "|---|---:|---:|---:|"]
    body = lines[top + 4 : top + 6]
    acc = {k: f"{100 * s['best_val/test_acc']:.2f}" for k, s in summaries.items()}
    assert body == [
        f"| sgd (no rho) | {acc[('sgd', 0.05)]} |  |  |",  # sgd ignores rho: one value, not one per rho
        f"| sam |  | {acc[('sam', 0.05)]} | {acc[('sam', 0.1)]} [1 not finished] |",
    ]
    assert f"- {broken.resolve()}: no summary.json" in text
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 1 + 3

    out = tmp_path / "plots"
    assert run_script("plot_runs").main([str(sweep), "--out", str(out)]) == 0
    for name in ("curves.png", "ratio_gt1.png", "vs_rho.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def _pids_with(*parts: str) -> list[int]:
    """Processes whose command line contains every one of `parts` (from /proc; Linux)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and all(p in cmd for p in parts):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job process through /proc")
def test_preempted_local_job_is_requeued_and_resumes(tmp_path):
    """submitit's preemption signal mid-run: the job is requeued into the same directory and continues from
    its checkpoint (resume=auto, the default); every epoch is logged exactly once."""
    import signal
    import subprocess
    import sys
    import time

    sweep, epochs = tmp_path / "sweep", 12
    args = [
        "-m",
        "data=digits",
        "data.subset=32",
        "model.width=2",
        f"epochs={epochs}",
        "batch_size=32",
        "logger=none",
        "device=cpu",
        "trainer.progress=off",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    main = subprocess.Popen([sys.executable, "-m", "sam_lab.train", *args], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not _pids_with("submitit.core._submit", str(sweep)):
            time.sleep(0.1)
        (task,) = _pids_with("submitit.core._submit", str(sweep))
        while time.monotonic() < deadline and not list(sweep.glob("*/checkpoints/last.pt")):
            time.sleep(0.01)
        # after its first checkpoint: freeze the job, send submitit's signal (as SLURM or the local controller
        # do before a time limit), let it go on: the signal arrives mid-run however fast the epochs are
        os.kill(task, signal.SIGSTOP)
        os.kill(task, signal.SIGUSR2)
        os.kill(task, signal.SIGCONT)
        assert main.wait(timeout=300) == 0
    finally:
        if main.poll() is None:
            main.kill()
    (job,) = [p.parent for p in sweep.glob("*/summary.json")]
    assert json.loads((job / "summary.json").read_text())["status"] == "finished"
    history = Run(job).history
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    resumed = re.search(r"resumed from .* after epoch (\d+)", (job / "train.log").read_text())
    assert resumed and 1 <= int(resumed.group(1)) < epochs  # continued mid-run, not from scratch
    assert "Requeued job" in "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
