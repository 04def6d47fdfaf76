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

import torch

from sam_lab.perf import BenchConfig, format_table, run_bench


def parse(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m sam_lab.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18"], help="conf/model names (default resnet18)")
    p.add_argument("--width", type=int, default=None, help="model.width override (default: the config's)")
    p.add_argument("--optimizers", nargs="+", default=["sgd", "sam"], help="conf/optimizer names")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="ours only")
    p.add_argument("--compile", action="store_true", help="trainer.compile=true (ours; not for 2nd order)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="ours only")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds; figures are medians over rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="synthetic training images (50000: CIFAR-sized; default batch x max(2, steps))",
    )
    p.add_argument("--ref-workers", type=int, default=0, help="DataLoader workers of the reference loop")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--grad-stats-every", type=int, default=0, help="metrics.grad_stats_every (ours)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for ours, e.g. rho=0.1")
    a = p.parse_args(argv)
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
    rows = run_bench(cfg, log=lambda s: print(f"# {s}", file=sys.stderr, flush=True))
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
