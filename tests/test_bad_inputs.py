"""Every row of the bad-input table (tests/bad_inputs.py, shown in docs/reliability.md) through the real CLI:
exit status, the exact message, no traceback, and every existing run directory byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sam_lab.run.loggers import PROXY_VARS, WandbLogger, wandb_unreachable
from tests.bad_inputs import BASE, ROWS, SYNTHETIC, Row, call_main, call_script, render, row_id
from tests.cifar_fakes import patch_cifar_md5, write_fake_cifar
from tests.conftest import CONF, ROOT, cli


def snapshot(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under a run directory."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (conftest)


@pytest.fixture(scope="module")
def victims(tmp_path_factory, one_thread):
    """A finished run ("victim") and a copy of it whose checkpoint is cut in half ("broken")."""
    root = tmp_path_factory.mktemp("victims")
    victim = root / "victim"
    code, err, _ = call_main([*BASE, *SYNTHETIC, f"hydra.run.dir={victim}"])
    assert code == 0, err
    broken = root / "broken"
    shutil.copytree(victim, broken)
    ckpt = broken / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return {"victim": victim, "broken": broken}


# ---- per-row set-ups ----------------------------------------------------------------------------------


class FakeRun:
    """Stands in for a wandb Run; `fail` names the call that raises."""

    def __init__(self, fail: str | None) -> None:
        self.id, self.fail = "fake0001", fail
        self.summary = SimpleNamespace(update=lambda values: None)

    def log(self, metrics: dict, step: int) -> None:
        if self.fail == "fail_log":
            raise ConnectionResetError("connection reset by peer")

    def finish(self, exit_code: int = 0) -> None:
        if self.fail == "fail_finish":
            raise TimeoutError("upload timed out")


def fake_wandb(behaviour: str | None) -> SimpleNamespace:
    def init(mode: str, **kwargs):
        if behaviour == "reject_online" and mode == "online":
            err = type("AuthenticationError", (Exception,), {})
            raise err(f"API key rejected by {os.environ['WANDB_BASE_URL']}")
        if behaviour == "fail_init":
            raise OSError(28, "No space left on device")
        return FakeRun(behaviour)

    return SimpleNamespace(init=init, Settings=lambda **kw: kw, Image=lambda path: path)


# A process that holds a run directory's lock as a running sam_lab run does, and names itself in the claim.
HOLDER = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
os.write(fd, json.dumps(info).encode())
print(json.dumps(info), flush=True)
time.sleep(600)
"""


def hold_lock(run: Path, request) -> dict[str, str]:
    """Start a lock holder on `run`; returns its {pid}, {host}, {started}."""
    run.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run / ".claim")], stdout=subprocess.PIPE)
    request.addfinalizer(lambda: (holder.kill(), holder.wait(), holder.stdout.close()))
    info = json.loads(holder.stdout.readline())
    return {"{pid}": str(info["pid"]), "{host}": info["host"], "{started}": info["started"]}


PREPARED = ("locked", "no_checkpoint_run", "damaged_summary")  # someone else's run directory: untouched


def setup_row(row: Row, tmp: Path, run: Path, monkeypatch, request) -> dict[str, str]:
    """Prepare what the row needs; returns extra template values."""
    name, _, arg = (row.setup or "").partition(":")
    subs: dict[str, str] = {}
    if name == "no_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if name == "locked":
        subs.update(hold_lock(run, request))
    if name == "chdir":  # `hydra.run.dir=.`: were it accepted, it would write here, not into the repository
        monkeypatch.chdir(tmp)
    if name == "damaged_summary":
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text('{"epoch": 1, "test/acc": 0.5}\n')
        (run / "summary.json").write_text('{"status": "fin')
    if name == "no_checkpoint_run":
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text('{"epoch": 1, "test/acc": 0.5}\n')
        (run / "summary.json").write_text('{"status": "finished", "test/acc": 0.5}\n')
    if name == "cifar_truncated":
        write_fake_cifar(tmp / "cifar", "cifar10", n_per_batch=2)
        patch_cifar_md5(monkeypatch, tmp / "cifar", "cifar10")
        bad = tmp / "cifar" / "cifar-10-batches-py" / "data_batch_3"
        subs["{md5_expected}"] = hashlib.md5(bad.read_bytes(), usedforsecurity=False).hexdigest()
        bad.write_bytes(bad.read_bytes()[:1000])
        subs["{md5}"] = hashlib.md5(bad.read_bytes(), usedforsecurity=False).hexdigest()
    if name == "afile":
        (tmp / "afile").write_text("a file, not a directory")
    if name == "fake_wandb":
        monkeypatch.setitem(sys.modules, "wandb", fake_wandb(arg or None))
        for var in PROXY_VARS:
            monkeypatch.delenv(var, raising=False)
        if arg == "reject_online":  # a server that accepts connections (so the start is attempted)
            server = socket.create_server(("127.0.0.1", 0))
            request.addfinalizer(server.close)
            subs["{port}"] = str(server.getsockname()[1])
    if name == "no_wandb":
        monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    return subs


def fill(text: str, subs: dict[str, str]) -> str:
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_bad_input(row: Row, victims, tmp_path, monkeypatch, request):
    run = victims.get(row.target, tmp_path / "run")
    subs = {"{run}": str(run), "{tmp}": str(tmp_path), "{conf}": str(CONF)}
    subs.update(setup_row(row, tmp_path, run, monkeypatch, request))
    for key, value in row.env:
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, fill(value, subs))
    before = {name: snapshot(d) for name, d in victims.items()}
    prepared = snapshot(run) if run.exists() else {}

    argv = row.argv(str(run), lambda text: fill(text, subs))
    if row.script:
        code, err = call_script(row.script, argv)
        warned: list[str] = []
    else:
        code, err, warned = call_main(argv)

    expect = fill(row.expect, subs)
    assert code == row.code, err
    assert "Traceback" not in err
    if row.code:
        assert err.strip() == expect, f"ACTUAL:\n{err.strip()}"
    else:  # W&B: one warning, and the run finished with its local files
        assert warned == [expect], f"ACTUAL: {warned}"
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    for name, d in victims.items():
        assert snapshot(d) == before[name], f"{name} run directory changed"
    if row.setup in PREPARED:
        assert snapshot(run) == prepared
    elif row.code and row.target == "fresh":  # a refused start writes nothing (at most an empty directory)
        assert not run.exists() or snapshot(run) == {}, snapshot(run)


def test_table_has_every_kind_of_bad_input_and_the_doc_shows_exactly_it():
    assert len(ROWS) >= 80 and len({row_id(r) for r in ROWS}) == len(ROWS)
    doc = (ROOT / "docs" / "reliability.md").read_text()
    assert render() in doc, "docs/reliability.md is out of date: paste `python -m tests.bad_inputs` into it"


# ---- the same contract in a real process ---------------------------------------------------------------


def test_cli_resume_mismatch_exits_1_with_one_line(victims, tmp_path):
    """Exit status, stderr and the untouched run directory as the shell sees them."""
    victim = victims["victim"]
    before = snapshot(victim)
    res = cli(
        [*BASE, *SYNTHETIC, f"hydra.run.dir={victim}", "model.width=8"],
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"error: cannot resume {victim}/checkpoints/last.pt: it was written with model.width=4 (this run: "
        "8); resume with the same settings, or choose a new hydra.run.dir for a new run"
    ]
    assert snapshot(victim) == before


def test_wandb_unreachable_server_costs_at_most_the_connect_timeout(monkeypatch):
    """wandb alone spends ~30 s on an unreachable server (measured: 41 s for a 1-epoch run instead of ~10 s);
    the reachability probe decides within `connect_timeout`, also when DNS or connect never return."""
    t0 = time.perf_counter()
    refused = wandb_unreachable("http://127.0.0.1:9", timeout=3.0)
    assert refused is not None and "Connection refused" in refused and time.perf_counter() - t0 < 1.0
    listening = socket.create_server(("127.0.0.1", 0))
    try:
        assert wandb_unreachable(f"http://127.0.0.1:{listening.getsockname()[1]}", timeout=3.0) is None
    finally:
        listening.close()
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))  # a resolver that hangs
    t0 = time.perf_counter()
    hung = wandb_unreachable("https://api.wandb.ai", timeout=0.5)
    assert hung == "no connection within 0.5 s" and time.perf_counter() - t0 < 1.5


def test_wandb_unreachable_with_real_wandb_starts_offline_within_seconds(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    logger = WandbLogger(project="sam_lab_test", init_timeout=20)
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="is unreachable"):
        logger.start(config={}, run_dir=tmp_path, name="unreachable")
    seconds = time.perf_counter() - t0
    try:
        assert logger.run is not None and logger.run.settings.mode == "offline"
    finally:
        logger.finish()
        wandb.teardown()
    assert seconds < 15, f"W&B start took {seconds:.1f} s"  # offline start; before the probe: ~30 s
