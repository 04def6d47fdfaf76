"""`python -m sam_lab.bench`: step time, throughput, data share and peak memory of sam_lab's training step
against a conventional loop (DataLoader + per-sample torchvision transforms, fp32, two-pass SAM as usually
written), on the same model, device and batch, in the same process. See docs/performance.md.

Example (the CPU figures of docs/performance.md):
    python -m sam_lab.bench --models resnet18 --width 16 --optimizers sgd sam --batch-size 128 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable

import torch

from sam_lab.config import Precision
from sam_lab.perf import BenchConfig, format_table, run_bench
from sam_lab.perf.measure import our_overrides
from sam_lab.perf.runners import CONF, config_names

PROG = "python -m sam_lab.bench"


def at_least(lo: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= lo (argparse turns the ValueError into a usage error, exit 2)."""

    def parse_int(text: str) -> int:
        value = int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {value}")
        return value

    parse_int.__name__ = f"integer >= {lo}"
    return parse_int


def check_configs(p: argparse.ArgumentParser, cfg: BenchConfig) -> None:
    """Compose and validate every (model, optimizer) config now, so a bad override is a usage error."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sam_lab.config import ConfigError, register, validate

    register()
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            for model in cfg.models:
                for opt in cfg.optimizers:
                    validate(compose("train", overrides=our_overrides(cfg, model, opt)))
    except (HydraException, OmegaConfBaseException, ConfigError) as err:
        p.error(str(err).strip().splitlines()[0])


def parse(argv: list[str] | None = None) -> BenchConfig:
    """Parse and check the command line; on bad arguments print one usage error line and exit 2."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    models, optimizers = config_names("model"), config_names("optimizer")
    p.add_argument(
        "--models",
        nargs="+",
        default=["resnet18"],
        choices=models,
        metavar="MODEL",
        help=f"conf/model names: {', '.join(models)} (default resnet18)",
    )
    p.add_argument("--width", type=at_least(1), default=None, help="model.width override (default: config's)")
    p.add_argument(
        "--optimizers",
        nargs="+",
        default=["sgd", "sam"],
        choices=optimizers,
        metavar="OPT",
        help=f"conf/optimizer names: {', '.join(optimizers)} (default sgd sam)",
    )
    p.add_argument("--batch-size", type=at_least(1), default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=[m.value for m in Precision], help="ours only")
    p.add_argument("--compile", action="store_true", help="trainer.compile=true (ours; not for 2nd order)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="ours only")
    p.add_argument("--steps", type=at_least(1), default=10, help="timed steps per round")
    p.add_argument("--repeats", type=at_least(1), default=5, help="rounds; figures are medians over rounds")
    p.add_argument("--warmup", type=at_least(0), default=3, help="untimed steps per configuration")
    p.add_argument(
        "--images",
        type=at_least(1),
        default=None,
        help="synthetic training images (50000: CIFAR-sized; default batch x max(2, steps))",
    )
    p.add_argument(
        "--ref-workers", type=at_least(0), default=0, help="DataLoader workers of the reference loop"
    )
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--grad-stats-every", type=at_least(0), default=0, help="metrics.grad_stats_every (ours)")
    p.add_argument("--threads", type=at_least(1), default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for ours, e.g. rho=0.1")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = BenchConfig(
        models=a.models,
        optimizers=a.optimizers,
        width=a.width,
        batch_size=a.batch_size,
        device=a.device,
        precision=a.precision,
        compile=a.compile,
        channels_last=a.channels_last,
        steps=a.steps,
        repeats=a.repeats,
        warmup=a.warmup,
        ref_workers=a.ref_workers,
        reference=a.reference,
        grad_stats_every=a.grad_stats_every,
        images=a.images,
        extra=a.overrides,
    )
    cfg.json = a.json  # type: ignore[attr-defined]
    check_configs(p, cfg)
    return cfg


def machine() -> str:
    """One line naming the hardware and software the figures come from."""
    if torch.cuda.is_available():
        hw = torch.cuda.get_device_name()
    else:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        hw = f"{names[0] if names else platform.processor()}, {len(names)} logical CPUs"
    threads = torch.get_num_threads()
    return f"{hw}; torch {torch.__version__}; {threads} threads; python {platform.python_version()}"


def main(argv: list[str] | None = None) -> None:
    cfg = parse(argv)
    print(f"# {machine()}", flush=True)
    print(
        f"# {' '.join(['python -m sam_lab.bench', *(argv if argv is not None else sys.argv[1:])])}",
        flush=True,
    )
    from sam_lab.train import USER_ERRORS

    try:
        rows = run_bench(cfg, log=lambda s: print(f"# {s}", file=sys.stderr, flush=True))
    except USER_ERRORS as err:  # e.g. data or config checks of the trainer: one line, like argparse
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_table(rows))
    print(
        "# medians over rounds; +-%: half the range of the rounds; x SGD and speed-up: per-round ratios "
        "(speed-up = reference ms/step / ours); peak MB: resident model+optimizer + one step's transient "
        "peak (CUDA: max_memory_allocated; CPU: torch.profiler allocator events)"
    )
    if cfg.json:  # type: ignore[attr-defined]
        with open(cfg.json, "w") as f:  # type: ignore[attr-defined]
            json.dump({"machine": machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
