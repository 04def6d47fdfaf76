"""The training loop: steps, epochs, evaluation. Reads top to bottom like the algorithm.

No host synchronisation inside the step loop: per-step quantities are summed into device tensors and read
(`.item()`) once per epoch, or every few steps when a progress bar is shown (sam_lab/run/progress.py). Where
the files go (checkpoint, summary, metrics.jsonl) is `sam_lab.run`'s business; what a step does is the
optimizer's.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from sam_lab.config import channels_last, precision, progress, value_of
from sam_lab.data import Batches, DataBundle
from sam_lab.ema import ema_of
from sam_lab.metrics.density import plot_density
from sam_lab.metrics.grad_stats import grad_stats
from sam_lab.metrics.protocol import sharpness_of
from sam_lab.metrics.running import Sums
from sam_lab.models.layout import to_layout
from sam_lab.optim.closure import batch_closure
from sam_lab.optim.precision import MixedPrecision
from sam_lab.run import checkpoint, faults, summary
from sam_lab.run.faults import NonfiniteGuard, Preemption
from sam_lab.run.files import append_jsonl
from sam_lab.run.loggers import NoLogger
from sam_lab.run.progress import hvp_bar, progress_bar, show_running

LOGGED = ("train", "val", "test")  # metric prefixes shown in the log line of each epoch
log = logging.getLogger(__name__)


class Trainer:
    """Trains `model` with `optimizer` as `cfg` (the run's config, typed by `sam_lab.config.TrainConfig`)
    says, on `device`; writes into `run_dir` through `sam_lab.run`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer,
        scheduler,
        data: DataBundle,
        device: torch.device,
        run_dir: Path,
        cfg: DictConfig,
        logger=None,
        extra_summary: dict | None = None,
    ) -> None:
        self.cfg, self.device, self.run_dir = cfg, device, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger, self.extra_summary = logger or NoLogger(), extra_summary or {}
        self.precision, self.progress = precision(cfg, device), progress(cfg)
        self.amp = MixedPrecision(self.precision, device.type)  # autocast; bf16/fp16 keep SAM's perturbation
        self.channels_last = channels_last(cfg, device)
        self.model = to_layout(model, device, self.channels_last)
        compile_ = cfg.trainer.compile and not optimizer.second_order  # no double backward through compile
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.optimizer, self.scheduler, self.data = optimizer, scheduler, data
        optimizer.watch(self.model, self.amp)
        optimizer.clip_norm, self.ema = cfg.trainer.grad_clip, ema_of(self.model, cfg.trainer.ema_decay)
        kw = dict(
            mean=data.mean, std=data.std, device=device, channels_last=self.channels_last, seed=cfg.seed
        )
        self.train_batches = Batches(data.train, cfg.batch_size, augment=data.augment, shuffle=True, **kw)
        splits = {"val": data.val, "test": data.test}
        self.eval_batches = {k: Batches(v, cfg.trainer.eval_batch_size, **kw) for k, v in splits.items() if v}
        self.loss_fn = functools.partial(F.cross_entropy, label_smoothing=cfg.trainer.label_smoothing)
        self.epoch, self.elapsed = 0, 0.0  # epochs completed, seconds spent in them
        self.best: dict[str, Any] = {"val/acc": -1.0, "epoch": 0, "state": None}
        self.ckpt_path, self.metrics_path = self.run_dir / checkpoint.PATH, self.run_dir / "metrics.jsonl"
        self.guard = NonfiniteGuard(value_of(cfg.trainer.on_nonfinite), len(self.train_batches), device)
        self.preemption = Preemption()  # handlers are installed by `with trainer.preemption:` (train.run)
        self.position: dict | None = None  # where a preempted epoch stopped, from its checkpoint
        self.last_sharpness: tuple[int, dict] = (-1, {})  # (epoch, metrics) of the last computation

    def autocast(self):
        return self.amp.autocast()

    def train_step(self, x: Tensor, y: Tensor, step: int, sums: Sums, global_step: int = 0) -> Tensor:
        opt, metrics = self.optimizer, self.cfg.metrics
        every, probe = metrics.grad_stats_every, metrics.probe_sam_every
        # SAM probe (single-pass optimizers): g_s at w + rho g/||g|| for the statistics, trajectory unchanged
        opt.probe_rho = self.cfg.rho if probe and step % probe == 0 and not opt.two_pass else None
        opt.capture = (bool(every) and step % every == 0) or opt.probe_rho is not None

        def record(loss: Tensor, logits: Tensor, ys: Tensor) -> None:  # loss and accuracy at clean weights
            sums.add("train/loss", loss * len(ys), len(ys))
            sums.add("train/acc", (logits.argmax(1) == ys).sum(), len(ys))

        self.guard.before_step(self.model, opt, sums)
        loss = opt.step(batch_closure(self.forward, opt, x, y, self.loss_fn, self.autocast, record))
        if opt.captured is not None:
            for k, v in grad_stats(**opt.captured).items():
                sums.add(k, v)
            opt.captured, opt.capture = None, False
        self.guard.after_step(loss, global_step, self.model, opt, sums)
        if self.ema is not None:  # after the guard: a skipped step's weights never enter the average
            self.ema.update(self.model)
        self.scheduler.step()
        return loss

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        sums, start, lr = Sums(self.device), 0, self.optimizer.param_groups[0]["lr"]
        if self.position is not None and self.position["epoch"] == epoch:  # continue a preempted epoch
            start, lr = self.position["step"], self.position["lr"]
            sums.load_state_dict(self.position["sums"])
        self.position, spe = None, len(self.train_batches)
        batches = self.train_batches.epoch(epoch, start)  # the same batches as an uninterrupted epoch
        pbar = progress_bar(batches, spe, f"epoch {epoch}", self.progress, initial=start)
        n_images, t0 = 0, time.perf_counter()
        for step, (x, y) in enumerate(pbar, start):
            g = (epoch - 1) * spe + step + 1
            self.train_step(x, y, step, sums, global_step=g)
            n_images += len(y)
            faults.inject("step", g)
            if self.preemption.requested:  # a step boundary: checkpoint the position and hand off
                self.guard.check(self._last_checkpoint())  # never checkpoint diverged weights
                position = {"epoch": epoch, "step": step + 1, "lr": lr, "sums": sums.state_dict()}
                self.save_checkpoint(position, seconds=time.perf_counter() - t0)
                self.preemption.handoff(f"at epoch {epoch}, step {step + 1}/{spe}")
            if show_running(pbar, sums, step, "train"):  # a host sync: check for a NaN loss there too
                self.guard.check(self._last_checkpoint())
        means, seconds = sums.means(), time.perf_counter() - t0
        self.guard.check(self._last_checkpoint())
        means["lr"] = lr  # the rate at the start of the epoch, also when the epoch was resumed midway
        means.update({"perf/img_per_s": n_images / seconds, "perf/epoch_s": seconds})
        return means

    @torch.no_grad()
    def evaluate(self, which: str, model: nn.Module | None = None, prefix: str = "") -> dict[str, float]:
        model = model or self.forward
        was_training, sums = model.training, Sums(self.device)
        model.eval()
        batches = self.eval_batches[which]
        pbar = progress_bar(batches.epoch(0), len(batches), which, self.progress)
        for i, (x, y) in enumerate(pbar):
            with self.autocast():
                logits = model(x)
            sums.add(f"{prefix}{which}/loss", F.cross_entropy(logits.float(), y, reduction="sum"), len(y))
            sums.add(f"{prefix}{which}/acc", (logits.argmax(1) == y).sum(), len(y))
            show_running(pbar, sums, i, f"{prefix}{which}", every=1)
        model.train(was_training)
        return sums.means()

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train the remaining epochs (up to `until`, default all), evaluate every epoch, checkpoint, and
        return the summary (written only when the run has trained all its epochs)."""
        if self.epoch == 0 and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh run never appends to an old file
        every = self.cfg.metrics.sharpness.every
        for epoch in range(self.epoch + 1, min(until or self.cfg.epochs, self.cfg.epochs) + 1):
            t0 = time.perf_counter()
            record = {"epoch": epoch, **self.train_epoch(epoch)}
            for which in self.eval_batches:
                record.update(self.evaluate(which))
                record.update(self.evaluate(which, self.ema.module, "ema/") if self.ema else {})
                faults.inject("eval", epoch)
            summary.track_best(self, record, epoch)
            if self.cfg.metrics.sharpness.enabled and every and epoch % every == 0:
                record.update(self.sharpness(self.model, f"epoch{epoch}", epoch))
            self.elapsed += time.perf_counter() - t0
            self.epoch = epoch
            append_jsonl(self.metrics_path, record, "metrics", epoch)
            self.logger.log(record, step=epoch)
            shown = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k.split("/")[0] in LOGGED)
            log.info("epoch %d/%d  %s", epoch, self.cfg.epochs, shown)
            if self.cfg.trainer.checkpoint or self.preemption.requested:
                self.save_checkpoint()
            if self.preemption.requested:
                self.preemption.handoff(f"after epoch {epoch}")
        if self.epoch < self.cfg.epochs:
            return {"status": "unfinished", "epoch": self.epoch}
        return summary.finished(self)

    def sharpness(self, model: nn.Module, tag: str, step: int) -> dict[str, Any]:
        """`sharpness/*` of `model`; a density PNG goes under <run dir>/sharpness/ and to the logger."""
        cfg = self.cfg.metrics.sharpness
        with hvp_bar(f"sharpness {tag}", self.progress) as on_hvp:
            res = sharpness_of(model, self.loss_fn, self.data, self.device, cfg, self.channels_last, on_hvp)
        if res.density is not None:
            path = plot_density(res.density, self.run_dir / "sharpness" / f"density_{tag}.png", tag)
            self.logger.log_image("sharpness/density", path, step=step)
        self.last_sharpness = (step, res.metrics)
        return res.metrics

    def save_checkpoint(self, position: dict | None = None, seconds: float = 0.0) -> None:
        checkpoint.save(self.ckpt_path, checkpoint.state_of(self, position, seconds), self.epoch)

    def _last_checkpoint(self) -> str | None:
        return str(self.ckpt_path) if self.ckpt_path.exists() else None
