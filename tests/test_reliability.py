"""Faults: SIGKILL at any point, preemption (SIGTERM/SIGUSR1, submitit requeue), Ctrl-C, a full disk,
divergence, two processes in one run directory, damaged bookkeeping, failed and preempted sweeps, long
directory names, determinism. A resumed run must end bit-identical to an uninterrupted one (CPU)."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sam_lab.engine import Sums, Trainer
from sam_lab.optim import SAM, SGD
from sam_lab.run.faults import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PREEMPTED, FAULT_ENV, NonfiniteGuard
from sam_lab.run.files import EXIT_OUTPUT, read_jsonl
from sam_lab.train import run
from tests.bad_inputs import call_main
from tests.conftest import ROOT, cli, compose_cfg
from tests.fault_scenarios import MESSAGES, SCENARIOS, render

# 64 training images in batches of 16: 4 steps per epoch, 3 epochs, SAM with gradient statistics every 2 steps
COMMON = [
    "data=synthetic",
    "data.num_train=80",
    "data.val_size=16",
    "data.num_test=32",
    "batch_size=16",
    "model.width=4",
    "optimizer=sam",
    "epochs=3",
    "logger=none",
    "device=cpu",
    "trainer.progress=off",
    "metrics.grad_stats_every=2",
]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the reference runs in this process with one thread: same kernels


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run(compose_cfg(COMMON), out)
    return out


def ckpt(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def epochs(run_dir) -> list[int]:
    return [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def without_timing(record: dict) -> dict:
    """A record's results: no timings, and not the config choices (the CLI records them, `run` does not)."""
    return {
        k: v
        for k, v in record.items()
        if not k.startswith("perf/") and k not in ("wall_time_s", "config", "sharpness/seconds")
    }


def assert_same_run(a, b) -> None:
    """Same final weights, optimizer state, metrics.jsonl (each epoch once) and summary (timings aside)."""
    ca, cb = ckpt(a), ckpt(b)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert epochs(b) == [1, 2, 3]
    assert [without_timing(r) for r in read_jsonl(a / "metrics.jsonl")] == [
        without_timing(r) for r in read_jsonl(b / "metrics.jsonl")
    ]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert without_timing(sa) == without_timing(sb)


# ---- crash and resume ---------------------------------------------------------------------------------


def snapshot(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def leftovers(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp"))


def test_sigkill_mid_epoch_in_evaluation_and_in_checkpoint_write_then_resume_exactly(tmp_path, reference):
    out = tmp_path / "run"
    args = [*COMMON, f"hydra.run.dir={out}"]

    killed = cli(args, cwd=tmp_path, env={**ONE_THREAD, FAULT_ENV: "checkpoint:1"})  # the very first one
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert epochs(out) == [1] and leftovers(out) == ["checkpoints/last.pt.tmp"]
    assert not (out / "checkpoints" / "last.pt").exists() and (out / ".claim").exists()

    # the same command starts over by itself (nothing was lost), then dies mid-epoch
    killed = cli(args, cwd=tmp_path, env={**ONE_THREAD, FAULT_ENV: "step:6"})  # epoch 2, step 2 of 4
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert epochs(out) == [1] and ckpt(out)["epoch"] == 1 and ckpt(out)["position"] is None

    killed = cli(args, cwd=tmp_path, env={**ONE_THREAD, FAULT_ENV: "eval:2"})  # resumes, dies in evaluation
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert epochs(out) == [1] and ckpt(out)["epoch"] == 1

    killed = cli(args, cwd=tmp_path, env={**ONE_THREAD, FAULT_ENV: "checkpoint:2"})  # dies writing epoch 2's
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert epochs(out) == [1, 2]  # the record was appended, the checkpoint was not renamed into place
    assert (out / "checkpoints" / "last.pt.tmp").exists() and ckpt(out)["epoch"] == 1

    run(compose_cfg(COMMON), out)  # resume=auto: from epoch 1, metrics.jsonl cut back to epoch 1 first
    assert_same_run(reference, out)
    assert leftovers(out) == []


def test_torn_last_line_of_metrics_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "train/lo')
    assert read_jsonl(path, partial_ok=True) == [{"epoch": 1}]
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)


# ---- preemption ---------------------------------------------------------------------------------------


def test_sigterm_and_sigusr1_checkpoint_mid_epoch_exit_75_and_resume_exactly(
    tmp_path, reference, monkeypatch
):
    out = tmp_path / "run"
    res = cli([*COMMON, f"hydra.run.dir={out}"], cwd=tmp_path, env={**ONE_THREAD, FAULT_ENV: "step:5:TERM"})
    assert res.returncode == EXIT_PREEMPTED, res.stderr[-2000:]
    assert res.stderr.splitlines()[-1] == MESSAGES["sigterm"].format(run=out)
    state = ckpt(out)
    assert state["epoch"] == 1 and (state["position"]["epoch"], state["position"]["step"]) == (2, 1)
    assert epochs(out) == [1]

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    monkeypatch.setenv(FAULT_ENV, "step:10:USR1")  # resumes at epoch 2 step 2; preempted in epoch 3
    with pytest.raises(SystemExit) as stop:
        run(compose_cfg(COMMON), out)
    assert stop.value.code == EXIT_PREEMPTED
    assert (ckpt(out)["position"]["epoch"], ckpt(out)["position"]["step"]) == (3, 2) and epochs(out) == [1, 2]

    monkeypatch.setenv(
        FAULT_ENV, "eval:3:TERM"
    )  # a signal during evaluation: stop after that epoch's checkpoint
    with pytest.raises(SystemExit):
        run(compose_cfg(COMMON), out)
    assert ckpt(out)["epoch"] == 3 and ckpt(out)["position"] is None and not (out / "summary.json").exists()
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # our handlers are gone again

    monkeypatch.delenv(FAULT_ENV)
    run(compose_cfg(COMMON), out)
    assert_same_run(reference, out)


def test_submitit_requeues_a_preempted_sweep_job_which_resumes_in_the_same_dir(tmp_path, reference):
    """The real launcher: SIGTERM mid-epoch -> checkpoint -> submitit's handler requeues (exit 144) -> the
    local controller restarts the job -> resume=auto finds the checkpoint in the (unchanged) job dir."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    res = cli(
        # one thread, as the in-process reference: another thread count changes the float summation order
        [
            "-m",
            *COMMON,
            "hydra/launcher=submitit_local",
            "hydra.launcher.cpus_per_task=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env={**ONE_THREAD, FAULT_ENV: "step:5:TERM"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (job,) = [p.parent for p in sweep.glob("*/summary.json")]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "preempted by SIGTERM at epoch 2, step 1/4: checkpoint written; submitit requeues the job" in logs
    assert "Requeued job" in logs and f"resumed from {job}/checkpoints/last.pt after epoch 1, step 1" in logs
    assert_same_run(reference, job)


# ---- divergence ---------------------------------------------------------------------------------------


@pytest.fixture
def nan_at(monkeypatch):
    """nan_at({g, ...}): the batches of those global steps become NaN (loss and gradients non-finite)."""

    def install(steps: set[int]) -> None:
        original = Trainer.train_step

        def train_step(self, x, y, step, sums, global_step=0):
            if global_step in steps:
                x = torch.full_like(x, float("nan"))
            return original(self, x, y, step, sums, global_step)

        monkeypatch.setattr(Trainer, "train_step", train_step)

    return install


def test_nan_stops_with_epoch_and_step_keeps_last_good_checkpoint_then_skip_mode_finishes(tmp_path, nan_at):
    out = tmp_path / "run"
    nan_at({6})
    code, err, _ = call_main([*COMMON, f"hydra.run.dir={out}"])
    assert code == EXIT_DIVERGED
    assert err == MESSAGES["diverged"].format(run=out) + "\n"
    state = ckpt(out)
    assert state["epoch"] == 1 and all(torch.isfinite(v.float()).all() for v in state["model"].values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and (summary["diverged/epoch"], summary["diverged/step"]) == (2, 2)
    assert summary["diverged/loss"] == "nan" and summary["last_good_epoch"] == 1 and epochs(out) == [1]

    # the same run continued from its last good checkpoint with skip: the bad step is skipped and counted
    code, err, _ = call_main([*COMMON, f"hydra.run.dir={out}", "trainer.on_nonfinite=skip"])
    assert code == 0, err
    assert [r["train/skipped_steps"] for r in read_jsonl(out / "metrics.jsonl")[1:]] == [1.0, 0.0]
    assert all(torch.isfinite(v.float()).all() for v in ckpt(out)["model"].values())
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))


def _state(model: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    bufs = [s["momentum_buffer"].clone() for s in opt.state.values() if "momentum_buffer" in s]
    return [t.detach().clone() for t in model.state_dict().values()] + bufs


@pytest.mark.parametrize("make_opt", [SGD, functools.partial(SAM, rho=0.05)], ids=["sgd", "sam"])
def test_skip_mode_leaves_weights_buffers_optimizer_state_and_sums_as_before_the_bad_step(make_opt):
    """Hand-checkable: a skipped step is no step at all (incl. BatchNorm running stats and momentum); a bad
    FIRST step leaves zero momentum, after which the next step equals a fresh optimizer's first step."""
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    model = _bn_net()
    model(x)  # materialise the lazy layer
    twin = copy.deepcopy(model)
    opt = make_opt(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    guard, sums = (
        NonfiniteGuard("skip", steps_per_epoch=4, device=torch.device("cpu")),
        Sums(torch.device("cpu")),
    )

    def step(inputs: torch.Tensor, g: int, poison_perturbed: bool = False) -> None:
        def closure(**kw):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), y)
            if poison_perturbed and opt.perturbed:  # only SAM's second pass goes bad: loss at w stays finite
                loss = loss * float("nan")
            loss.backward()
            sums.add("train/loss", loss.detach())
            return loss

        guard.before_step(model, opt, sums)
        loss = opt.step(closure)
        guard.after_step(loss, g, model, opt, sums)

    before = _state(model, opt)
    step(torch.full_like(x, float("nan")), 1)  # a bad first step
    after = _state(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, after[: len(before)]))
    assert all(not b.any() for b in after[len(before) :])  # momentum created by the bad step: zero
    step(x, 2)
    twin_opt = make_opt(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def twin_closure(**kw):
        twin_opt.zero_grad()
        loss = nn.functional.cross_entropy(twin(x), y)
        loss.backward()
        return loss

    twin_opt.step(twin_closure)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))

    good = _state(model, opt)
    step(torch.full_like(x, float("nan")), 3)
    step(x, 4, poison_perturbed=True)  # SGD: a good step; SAM: only the perturbed pass is NaN -> skipped
    if make_opt is not SGD:
        assert all(torch.equal(a, b) for a, b in zip(good, _state(model, opt)))
    # train/skipped_steps is a count per epoch (here: 4 steps)
    assert sums.means()["train/skipped_steps"] == (3 if make_opt is not SGD else 2)
    assert torch.isfinite(sums.sums["train/loss"]) and all(
        torch.isfinite(t.float()).all() for t in _state(model, opt)
    )


# ---- collisions and sweeps ----------------------------------------------------------------------------

TINY_SGD = [*COMMON[:6], "optimizer=sgd", "epochs=1", *COMMON[8:]]


def test_two_runs_started_together_get_their_own_directories(tmp_path):
    env = {
        **os.environ,
        **ONE_THREAD,
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-m", "sam_lab.train", *TINY_SGD]  # the default run directory pattern
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in "ab"
    ]  # noqa: E501
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    dirs = sorted(p.parent for p in (tmp_path / "outputs" / "runs").glob("*/*/summary.json"))
    assert len(dirs) == 2
    assert {d.name.split("_")[0].split("-")[-1] for d in dirs} == {str(p.pid) for p in procs}  # ...-<pid>_...
    assert all(json.loads((d / ".claim").read_text())["pid"] in {p.pid for p in procs} for d in dirs)


@pytest.mark.parametrize("claim", ["ended", "other_host", "empty"])
def test_a_claim_nobody_holds_is_taken_over(tmp_path, claim):
    """A claim file without a live lock: a start that died before its first checkpoint (here, or on another
    node before a requeue), or one killed while writing its claim. The same command uses the directory."""
    out = tmp_path / "run"
    out.mkdir()
    ended = subprocess.Popen(["true"])
    ended.wait()
    host = socket.gethostname() if claim == "ended" else "node7"
    text = "" if claim == "empty" else json.dumps({"host": host, "pid": ended.pid, "started": "-"})
    (out / ".claim").write_text(text)
    run(compose_cfg([*TINY_SGD, "metrics.sharpness.enabled=false"]), out)
    assert json.loads((out / ".claim").read_text())["pid"] == os.getpid() and epochs(out) == [1]


def test_a_second_start_in_a_running_run_directory_is_refused_and_changes_nothing(tmp_path, reference):
    """Two terminals, or a requeue while the old job still runs: one process trains, the other is refused
    at once naming it, and the first ends exactly as if it had been alone."""
    out = tmp_path / "run"
    args = [*COMMON, f"hydra.run.dir={out}"]
    env = {**os.environ, **ONE_THREAD, FAULT_ENV: "step:2:STOP", "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    first = subprocess.Popen(
        [sys.executable, "-m", "sam_lab.train", *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE
    )
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # stopped (SIGSTOP) after step 2, holding the lock
        assert os.WIFSTOPPED(status)
        before = snapshot(out)
        code, err, _ = call_main(args)
        started = json.loads((out / ".claim").read_text())["started"]
        owner = {"pid": first.pid, "host": socket.gethostname(), "started": started}
        assert code == 1 and err.splitlines() == [MESSAGES["in_use"].format(run=out, **owner)]
        assert snapshot(out) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert_same_run(reference, out)


def test_disk_full_anywhere_leaves_no_tmp_names_the_path_and_the_same_command_continues(
    tmp_path, reference, monkeypatch
):
    """ENOSPC injected into each kind of write: at the start (.hydra/), a checkpoint, a metrics line, the
    summary. Each exits 74 with one line naming the path; nothing half-written stays; the run then ends
    identical to an uninterrupted one."""
    out = tmp_path / "run"
    args = [*COMMON, f"hydra.run.dir={out}"]
    for fault, path, ckpt_epoch, done in [
        ("start:1:ENOSPC", ".hydra/config.yaml", None, []),
        ("checkpoint:2:ENOSPC", "checkpoints/last.pt", 1, [1, 2]),
        ("metrics:3:ENOSPC", "metrics.jsonl", 2, [1, 2]),
        ("summary:1:ENOSPC", "summary.json", 3, [1, 2, 3]),
    ]:
        monkeypatch.setenv(FAULT_ENV, fault)
        code, err, _ = call_main(args)
        assert code == EXIT_OUTPUT and err.splitlines() == [MESSAGES["disk_full"].format(run=out, path=path)]
        assert leftovers(out) == [] and epochs(out) == done, fault
        assert ckpt_epoch is None or ckpt(out)["epoch"] == ckpt_epoch, fault
        assert not (out / "summary.json").exists()
    monkeypatch.delenv(FAULT_ENV)
    code, err, _ = call_main(args)
    assert code == 0, err
    assert_same_run(reference, out)


def test_ctrl_c_checkpoints_a_second_stops_at_once_sigterm_in_the_final_sharpness_hands_off(
    tmp_path, reference
):
    out = tmp_path / "run"
    args = [*COMMON, f"hydra.run.dir={out}"]

    res = cli(args, cwd=tmp_path, env={**ONE_THREAD, FAULT_ENV: "step:5:INT"})  # Ctrl-C in epoch 2
    assert res.returncode == EXIT_INTERRUPTED and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.splitlines()[-1] == MESSAGES["ctrl_c"].format(run=out)
    assert (ckpt(out)["position"]["epoch"], ckpt(out)["position"]["step"]) == (2, 1) and epochs(out) == [1]

    before = snapshot(out)["checkpoints/last.pt"]
    res = cli(args, cwd=tmp_path, env={**ONE_THREAD, FAULT_ENV: "step:7:INT,step:7:INT"})  # Ctrl-C twice
    assert res.returncode == EXIT_INTERRUPTED and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.splitlines()[-1] == MESSAGES["ctrl_c_twice"].format(run=out)
    assert snapshot(out)["checkpoints/last.pt"] == before and leftovers(out) == []

    # SIGTERM at the 3rd forward pass of the final metrics (the best-val test set, then Hessian-vector
    # products): without the check the run would finish the sharpness, write the summary and exit 0
    res = cli(args, cwd=tmp_path, env={**ONE_THREAD, FAULT_ENV: "final:3:TERM"})
    assert res.returncode == EXIT_PREEMPTED, res.stderr[-2000:]
    assert res.stderr.splitlines()[-1] == MESSAGES["final"].format(run=out)
    assert ckpt(out)["epoch"] == 3 and not (out / "summary.json").exists()

    run(compose_cfg(COMMON), out)
    assert_same_run(reference, out)


@pytest.mark.parametrize("damage", ["metrics_missing", "metrics_torn_in_the_middle", "summary_truncated"])
def test_damaged_bookkeeping_of_a_finished_run_is_rebuilt_from_the_checkpoint(tmp_path, reference, damage):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    metrics, summary = out / "metrics.jsonl", out / "summary.json"
    if damage == "metrics_missing":
        metrics.unlink()
    elif damage == "metrics_torn_in_the_middle":
        lines = metrics.read_text().splitlines(keepends=True)
        metrics.write_text(lines[0] + lines[1][: len(lines[1]) // 2] + "\n" + lines[2])
    else:
        summary.write_text(summary.read_text()[:40])
    code, err, _ = call_main([*COMMON, f"hydra.run.dir={out}"])
    assert code == 0 and "Traceback" not in err, err
    assert_same_run(reference, out)
    logged = (out / "train.log").read_text()
    if damage == "summary_truncated":  # the final metrics are computed again from the final checkpoint
        assert "summary.json cannot be read (JSONDecodeError" in logged
    else:  # the summary was fine: it is left as it was
        assert summary.read_bytes() == (reference / "summary.json").read_bytes()
        why = "was missing" if damage == "metrics_missing" else "had 1 damaged line"
        assert MESSAGES["rebuilt"].format(why=why) in logged


# the defaults, spelled out: 16 overrides whose names reach ~500 bytes, far beyond a file name's 255
LONG = [
    "optimizer.momentum=0.9",
    "optimizer.nesterov=false",
    "weight_decay=0.0005",
    "scheduler.warmup_epochs=0.0",
    "scheduler.final_lr_frac=0.0",
    "trainer.label_smoothing=0.0",
    "trainer.eval_batch_size=1024",
    "trainer.channels_last=true",
    "data.augment.crop=4",
    "data.augment.cutout=0",
    "data.augment.flip=true",
    "metrics.probe_sam_every=0",
    "metrics.sharpness.num_samples=5120",
    "metrics.sharpness.per_batch_count=40",
    "metrics.sharpness.per_batch_size=128",
    "metrics.sharpness.density_steps=64",
]


def test_default_run_directory_names_fit_the_file_name_limit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err, _ = call_main([*TINY_SGD, "metrics.sharpness.enabled=false", *LONG])
    assert code == 0, err
    (out,) = [p.parent for p in (tmp_path / "outputs" / "runs").glob("*/*/summary.json")]
    assert len(out.name.encode()) <= 120 and out.name.startswith(tuple("0123456789"))  # limit: 255
    assert out.name.split("_", 1)[1].startswith("batch_size=16,data.augment.crop=4,data.augment.cutout=0")
    assert len(out.name.rsplit("-", 1)[1]) == 8  # the hash of the whole override string
    overrides = (out / ".hydra" / "overrides.yaml").read_text()
    assert all(o in overrides for o in LONG)  # the full overrides stay in the run's config


def test_a_preempted_sweep_is_continued_by_the_same_command(tmp_path, monkeypatch):
    """Plain `-m` sweep (basic launcher) of 2 jobs with long overrides; job 1 is preempted, the sweep exits
    75; the same command, run again, finds the same sweep directory, leaves job 0 as it is (no retraining)
    and continues job 1 from its checkpoint."""
    monkeypatch.chdir(tmp_path)
    args = ["-m", *TINY_SGD, "epochs=2", "metrics.sharpness.enabled=false", *LONG, "seed=0,1"]
    monkeypatch.setenv(FAULT_ENV, "1@step:5:TERM")  # sweep job 1, epoch 2, step 1
    code, err, _ = call_main(args)
    assert code == EXIT_PREEMPTED, err
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    assert len(sweep.name.encode()) <= 100 and "seed=0,1" in (sweep / "multirun.yaml").read_text()
    job0, job1 = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert (job0.name, job1.name) == ("0_seed=0", "1_seed=1")  # named by what the sweep varies
    assert err.splitlines()[-1] == MESSAGES["sweep"].format(sweep=sweep)
    finished = snapshot(job0)
    assert json.loads((job0 / "summary.json").read_text())["status"] == "finished"
    assert ckpt(job1)["position"]["epoch"] == 2 and not (job1 / "summary.json").exists()

    monkeypatch.delenv(FAULT_ENV)
    code, err, _ = call_main(args)
    assert code == 0, err
    assert list((tmp_path / "outputs" / "sweeps").iterdir()) == [sweep]
    assert snapshot(job0) == finished  # not trained again
    assert epochs(job1) == [1, 2] and json.loads((job1 / "summary.json").read_text())["status"] == "finished"


def test_failed_sweep_job_is_named_and_leaves_the_other_jobs_intact(tmp_path):
    sweep = tmp_path / "sweep"
    res = cli(["-m", *TINY_SGD, "lr=-1,0.05", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=ONE_THREAD)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "error: lr=-1.0 is out of range: must be >= 0.0" in res.stderr
    assert "Error executing job with overrides: [" in res.stderr and "'lr=-1'" in res.stderr
    assert f"sweep job 0 failed ({sweep}/0_" in res.stderr  # the callback names each failed job as it fails
    (good,) = [p.parent for p in sweep.glob("*/summary.json")]
    assert "lr=0.05" in good.name and json.loads((good / "summary.json").read_text())["status"] == "finished"
    assert ckpt(good)["epoch"] == 1
    (bad,) = [p for p in sweep.iterdir() if p.is_dir() and "lr=-1" in p.name]
    assert not (bad / "checkpoints").exists() and not (bad / "summary.json").exists()


# ---- determinism ---------------------------------------------------------------------------------------


def test_deterministic_runs_with_the_same_seed_give_identical_summaries(tmp_path):
    cfg = [*COMMON[:6], "optimizer=sam", "epochs=1", *COMMON[8:], "deterministic=true"]
    try:
        a = run(compose_cfg(cfg), tmp_path / "a")
        b = run(compose_cfg(cfg), tmp_path / "b")
        c = run(compose_cfg([*cfg, "seed=1"]), tmp_path / "c")
    finally:
        torch.use_deterministic_algorithms(False)
    assert without_timing(a) == without_timing(b)
    assert without_timing(a)["train/loss"] != without_timing(c)["train/loss"]  # the seed does matter


def test_every_fault_scenario_is_driven_by_a_test_and_the_doc_shows_exactly_them():
    assert len(SCENARIOS) >= 25 and all(callable(globals().get(s.test)) for s in SCENARIOS)
    doc = (ROOT / "docs" / "reliability.md").read_text()
    assert render() in doc, (
        "docs/reliability.md is out of date: paste `python -m tests.fault_scenarios` into it"
    )
