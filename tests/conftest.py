import os
import subprocess
import sys
from pathlib import Path

# oneDNN's AVX2 kernels on every x86 machine, this process and every subprocess: CI may land on an AVX2-only
# CPU, where torch 2.13.0's oneDNN once crashed the suite (tests/test_platform.py). Set before torch loads.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

torch.set_num_threads(1)  # one thread per test process: on a busy 2-core machine two are 5-30x slower


def compose_cfg(overrides: list[str]):
    """The config `python -m sam_lab.train <overrides>` would run with, for in-process tests."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def cli(
    args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run `python -m sam_lab.train ARGS` exactly as a user would."""
    # PYTHONPATH: run this checkout's sam_lab even from another working directory
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    full_env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "PYTHONPATH": pythonpath,
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    for key in unset:
        full_env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "sam_lab.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


TINY = [
    "data=synthetic",
    "model.width=4",
    "epochs=1",
    "batch_size=64",
    "logger=none",
    "device=cpu",
    "trainer.progress=off",
    # a ResNet Hessian-vector product costs ~6-8 gradients on CPU: tests that want sharpness turn it on
    "metrics.sharpness.enabled=false",
]


@pytest.fixture
def tiny():
    return list(TINY)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster, and far faster on a busy machine (no OpenMP spin-waiting); restored
    afterwards for modules whose runs set their own thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
