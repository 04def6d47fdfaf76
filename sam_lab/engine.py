"""The training loop: steps, epochs, evaluation, checkpoints. Reads top to bottom like the algorithm.

No host synchronisation inside the step loop: per-step quantities are summed into device tensors and read
(`.item()`) once per epoch, or every `PROGRESS_EVERY` steps when a progress bar is shown.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from sam_lab import faults
from sam_lab.data import Batches, DataBundle
from sam_lab.faults import Diverged, NonfiniteGuard, Preemption  # noqa: F401 (Diverged: re-exported)
from sam_lab.logging import NoLogger, append_jsonl, read_jsonl, write_json_atomic
from sam_lab.metrics.grad_stats import grad_stats
from sam_lab.optim.sgdhess import sampled_label_losses

PROGRESS_EVERY = 25
log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    """Resuming from a checkpoint of a different model or optimizer."""


@dataclass
class Options:
    epochs: int
    batch_size: int
    seed: int = 0
    precision: str = "fp32"  # "bf16" autocast or "fp32"
    channels_last: bool = False
    compile: bool = False
    eval_batch_size: int = 1024
    label_smoothing: float = 0.0
    progress: bool = False
    checkpoint: bool = True
    grad_stats_every: int = 10
    probe_sam_every: int = 0
    on_nonfinite: str = "stop"  # "stop" | "skip" (sam_lab.faults.NonfiniteGuard)
    config: dict = field(default_factory=dict)  # the resolved run config, stored in checkpoints
    probe_rho: float = 0.05  # rho of the SAM probe (the run's top-level rho)
    extra_summary: dict = field(default_factory=dict)


class Sums:
    """Device-side running sums of named scalars; read once with `means()`."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.sums, self.counts = device, {}, {}

    def add(self, key: str, value: Tensor, count: Tensor | float = 1.0) -> None:
        value = value.detach().float()
        if key not in self.sums:
            self.sums[key] = torch.zeros((), device=self.device)
            self.counts[key] = torch.zeros((), device=self.device)
        self.sums[key] += value
        self.counts[key] += count

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]) / torch.stack([self.counts[k] for k in keys])
        return dict(zip(keys, values.tolist()))  # one host sync for all of them

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.counts = {k: v.to(self.device) for k, v in state["counts"].items()}


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        data: DataBundle,
        device: torch.device,
        run_dir: Path,
        opts: Options,
        logger=None,
        sharpness=None,
    ) -> None:
        self.device, self.run_dir, self.opts = device, Path(run_dir), opts
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger or NoLogger()
        self.sharpness = sharpness  # callable(trainer, epoch, final) -> dict of metrics, or None
        self.model = model.to(device)
        if opts.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = (
            torch.compile(self.model) if opts.compile and not optimizer.second_order else self.model
        )
        self.optimizer, self.scheduler, self.data = optimizer, scheduler, data
        optimizer.watch_bn(self.model)
        kw = dict(mean=data.mean, std=data.std, device=device, channels_last=opts.channels_last)
        self.train_batches = Batches(
            data.train, opts.batch_size, augment=data.augment, shuffle=True, seed=opts.seed, **kw
        )
        self.eval_sets = {"val": data.val, "test": data.test}
        self.eval_batches = {
            k: Batches(v, opts.eval_batch_size, **kw) for k, v in self.eval_sets.items() if v
        }
        self.epoch = 0  # epochs completed
        self.best = {"val/acc": -1.0, "epoch": 0, "state": None}
        self.elapsed = 0.0
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.guard = NonfiniteGuard(opts.on_nonfinite, len(self.train_batches), device)
        self.preemption = Preemption()  # handlers are installed by `with trainer.preemption:` (train.run)
        self.position: dict | None = None  # where a preempted epoch stopped, from its checkpoint

    # ---- one step -----------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.opts.precision == "bf16")

    def make_closure(self, x: Tensor, y: Tensor, sums: Sums):
        """The closure protocol: clear grads, loss on (a part of) the batch, backward, return the loss.
        Loss and accuracy are recorded at the clean weights only (never at w + e). `sample_labels`: see
        sam_lab.optim.base (GNB Hessian estimates)."""
        model, opt = self.forward, self.optimizer

        def closure(
            create_graph: bool = False, part: tuple[float, float] | None = None, sample_labels: bool = False
        ) -> Tensor:
            xs, ys = x, y
            if part is not None:
                lo, hi = round(part[0] * len(x)), max(round(part[1] * len(x)), round(part[0] * len(x)) + 1)
                xs, ys = x[lo:hi], y[lo:hi]
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                logits = model(xs)
            if sample_labels:  # GNB Hessian estimate: labels drawn from the model's own softmax
                losses = sampled_label_losses(logits)
                losses.mean().backward()
                return losses
            loss = F.cross_entropy(logits.float(), ys, label_smoothing=self.opts.label_smoothing)
            loss.backward(create_graph=create_graph)
            if not opt.perturbed:
                n = float(len(ys))
                sums.add("train/loss", loss * n, n)
                sums.add("train/acc", (logits.argmax(1) == ys).sum(), n)
            return loss

        return closure

    def train_step(self, x: Tensor, y: Tensor, step: int, sums: Sums, global_step: int = 0) -> Tensor:
        opt, every, probe = self.optimizer, self.opts.grad_stats_every, self.opts.probe_sam_every
        # SAM probe (single-pass optimizers): g_s at w + rho g/||g|| for the statistics, trajectory unchanged
        opt.probe_rho = self.opts.probe_rho if probe and step % probe == 0 and not opt.two_pass else None
        opt.capture = (bool(every) and step % every == 0) or opt.probe_rho is not None
        self.guard.before_step(self.model, opt, sums)
        loss = opt.step(self.make_closure(x, y, sums))
        if opt.captured is not None:
            for k, v in grad_stats(**opt.captured).items():
                sums.add(k, v)
            opt.captured, opt.capture = None, False
        self.guard.after_step(loss, global_step, self.model, opt, sums)
        self.scheduler.step()
        return loss

    # ---- epochs ---------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        sums, start, lr = Sums(self.device), 0, self.optimizer.param_groups[0]["lr"]
        if self.position is not None and self.position["epoch"] == epoch:  # continue a preempted epoch
            start, lr = self.position["step"], self.position["lr"]
            sums.load_state_dict(self.position["sums"])
        self.position = None
        batches = self.train_batches.epoch(epoch, start)  # the same batches as an uninterrupted epoch
        bar = tqdm(
            batches,
            total=len(self.train_batches),
            initial=start,
            desc=f"epoch {epoch}",
            leave=False,
            disable=not self.opts.progress,
            dynamic_ncols=True,
        )
        n_images, t0, spe = 0, time.perf_counter(), len(self.train_batches)
        for step, (x, y) in enumerate(bar, start):
            g = (epoch - 1) * spe + step + 1
            self.train_step(x, y, step, sums, global_step=g)
            n_images += len(y)
            faults.inject("step", g)
            if self.preemption.requested:  # a step boundary: checkpoint the position and hand off
                self.guard.check(self._last_checkpoint())  # never checkpoint diverged weights
                position = {"epoch": epoch, "step": step + 1, "lr": lr, "sums": sums.state_dict()}
                self.save_checkpoint(position, seconds=time.perf_counter() - t0)
                self.preemption.handoff(f"at epoch {epoch}, step {step + 1}/{spe}")
            if self.opts.progress and step % PROGRESS_EVERY == 0:
                m = sums.means()
                bar.set_postfix(loss=f"{m['train/loss']:.3f}", acc=f"{m['train/acc']:.3f}")
                self.guard.check(self._last_checkpoint())
        means = sums.means()
        seconds = time.perf_counter() - t0
        self.guard.check(self._last_checkpoint())
        means["lr"] = lr  # the rate at the start of the epoch, also when the epoch was resumed midway
        means["perf/img_per_s"] = n_images / seconds
        means["perf/epoch_s"] = seconds
        return means

    @torch.no_grad()
    def evaluate(self, which: str, model: nn.Module | None = None) -> dict[str, float]:
        model = model or self.forward
        was_training = model.training
        model.eval()
        sums = Sums(self.device)
        for x, y in self.eval_batches[which].epoch(0):
            with self.autocast():
                logits = model(x)
            n = float(len(y))
            sums.add(f"{which}/loss", F.cross_entropy(logits.float(), y, reduction="sum"), n)
            sums.add(f"{which}/acc", (logits.argmax(1) == y).sum(), n)
        model.train(was_training)
        return sums.means()

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, evaluate every epoch, checkpoint, and return the summary."""
        if self.epoch == 0 and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh run never appends to an old file
        for epoch in range(self.epoch + 1, self.opts.epochs + 1):
            t0 = time.perf_counter()
            record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            record.update(self.train_epoch(epoch))
            for which in self.eval_batches:
                record.update(self.evaluate(which))
                faults.inject("eval", epoch)
            self._track_best(record, epoch)
            if self.sharpness is not None:
                record.update(self.sharpness(self, epoch, final=False))
            self.elapsed += time.perf_counter() - t0
            self.epoch = epoch
            append_jsonl(self.metrics_path, record)
            self.logger.log(record, step=epoch)
            log.info(
                "epoch %d/%d  %s",
                epoch,
                self.opts.epochs,
                "  ".join(
                    f"{k} {v:.4g}" for k, v in record.items() if k.split("/")[0] in ("train", "val", "test")
                ),
            )
            if self.opts.checkpoint or self.preemption.requested:
                self.save_checkpoint()
            if self.preemption.requested:
                self.preemption.handoff(f"after epoch {epoch}")
        return self.finish()

    def _track_best(self, record: dict, epoch: int) -> None:
        score = record.get("val/acc", record.get("test/acc"))
        if "val/acc" in record and score > self.best["val/acc"]:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"val/acc": score, "epoch": epoch, "state": state}

    def finish(self) -> dict[str, Any]:
        history = read_jsonl(self.metrics_path)
        last = history[-1] if history else {}
        summary: dict[str, Any] = {"status": "finished", "wall_time_s": self.elapsed}
        summary.update(last)  # the last epoch's metrics under their own names, as W&B's summary has them
        if self.best["state"] is not None:
            best_model = copy.deepcopy(self.model)
            best_model.load_state_dict(self.best["state"])
            best = self.evaluate("test", best_model)
            summary.update(
                {
                    "best_val/epoch": self.best["epoch"],
                    "best_val/val_acc": self.best["val/acc"],
                    "best_val/test_acc": best["test/acc"],
                    "best_val/test_loss": best["test/loss"],
                }
            )
        else:  # no validation split: the reported checkpoint is the last one
            summary.update(
                {
                    "best_val/epoch": self.epoch,
                    "best_val/test_acc": last.get("test/acc"),
                    "best_val/test_loss": last.get("test/loss"),
                }
            )
        summary["perf/img_per_s"] = _mean([r["perf/img_per_s"] for r in history])
        if self.sharpness is not None:
            summary.update(self.sharpness(self, self.epoch, final=True))
        summary.update(self.opts.extra_summary)
        write_json_atomic(self.run_dir / "summary.json", summary)
        self.logger.summary(summary)
        return summary

    # ---- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": self.best,
            "elapsed": self.elapsed,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "logger_run_id": getattr(self.logger, "run_id", None),
            "position": None,  # set by a mid-epoch (preemption) checkpoint
            "config": self.opts.config,
            "model_class": type(self.model).__name__,
            "optimizer_class": type(self.optimizer).__name__,
        }

    def save_checkpoint(self, position: dict | None = None, seconds: float = 0.0) -> None:
        """Atomic: a crash leaves either the old or the new file, never half of one.

        `position` (epoch, step, lr at the epoch start, the epoch's metric sums) marks a checkpoint taken
        inside an epoch; `seconds` is the time already spent in that epoch."""
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ckpt_path.with_name(self.ckpt_path.name + ".tmp")
        state = self.state_dict()
        state["position"], state["elapsed"] = position, self.elapsed + seconds
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            faults.inject("checkpoint", self.epoch)
            os.fsync(f.fileno())
        os.replace(tmp, self.ckpt_path)

    def _last_checkpoint(self) -> str | None:
        return str(self.ckpt_path) if self.ckpt_path.exists() else None

    def load_checkpoint(self, path: Path | None = None) -> None:
        ckpt = torch.load(path or self.ckpt_path, map_location=self.device, weights_only=False)
        mine = (type(self.model).__name__, type(self.optimizer).__name__)
        if (ckpt["model_class"], ckpt["optimizer_class"]) != mine:
            raise CheckpointMismatch(
                f"checkpoint {path or self.ckpt_path} was written by model {ckpt['model_class']} with "
                f"optimizer "
                f"{ckpt['optimizer_class']}; this run has model {mine[0]} with optimizer {mine[1]}"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:  # same classes, other shapes (e.g. model.width)
            raise CheckpointMismatch(
                f"checkpoint {path or self.ckpt_path} does not fit this run's {mine[0]} / {mine[1]}: "
                + str(err).strip().splitlines()[0]
            ) from err
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.best, self.elapsed = ckpt["epoch"], ckpt["best"], ckpt["elapsed"]
        self.position = ckpt.get("position")
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if ckpt["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng_cuda"]])
        # metrics.jsonl keeps each epoch exactly once: drop records written after this checkpoint
        kept = [r for r in read_jsonl(self.metrics_path, partial_ok=True) if r.get("epoch", 0) <= self.epoch]
        tmp = self.metrics_path.with_name("metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.metrics_path)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def progress_enabled(setting: str) -> bool:
    return setting == "on" or (setting == "auto" and sys.stderr.isatty())
