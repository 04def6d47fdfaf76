"""`summary.json`: what a run ended with, for a finished and for a diverged run (also sent to the logger)."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from typing import TYPE_CHECKING, Any

from torch import nn

from sam_lab.config import value_of
from sam_lab.run.faults import Preempted
from sam_lab.run.files import read_jsonl, write_json_atomic

if TYPE_CHECKING:
    from sam_lab.engine import Trainer
    from sam_lab.run.faults import Diverged


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _write(trainer: Trainer, summary: dict[str, Any]) -> dict[str, Any]:
    summary.update(trainer.extra_summary)
    path, kept = trainer.run_dir / "summary.json", {}
    # what `python -m sam_lab.evaluate` recorded for the interrupted run stays (not its stale eval/* keys)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        kept = {"evaluations": json.loads(path.read_text())["evaluations"]}
    write_json_atomic(path, {**summary, **kept}, "summary")
    trainer.logger.summary(summary)
    return summary


def track_best(trainer: Trainer, record: dict, epoch: int) -> None:
    """Keep a copy of the weights at the best val/acc so far (the best-val checkpoint)."""
    if "val/acc" in record and record["val/acc"] > trainer.best["val/acc"]:
        state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        trainer.best = {"val/acc": record["val/acc"], "epoch": epoch, "state": state}


def best_model(trainer: Trainer) -> nn.Module | None:
    """The model at its best validation accuracy (None without a validation split)."""
    if trainer.best["state"] is None:
        return None
    model = copy.deepcopy(trainer.model)
    model.load_state_dict(trainer.best["state"])
    return model


def final_metrics(trainer: Trainer) -> dict[str, Any]:
    """The best-val checkpoint's test metrics, the end-of-training sharpness of the weights that
    `metrics.sharpness.weights` names (reusing a value computed after the last epoch for the same weights),
    and `perf/sharpness_s`, the seconds of every sharpness computation of the run."""
    out, best = {}, best_model(trainer)
    spent = [r.get("sharpness/seconds", 0.0) for r in read_jsonl(trainer.metrics_path)]  # after epochs
    if best is not None:
        test = trainer.evaluate("test", best)
        out = {"best_val/epoch": trainer.best["epoch"], "best_val/val_acc": trainer.best["val/acc"]}
        out.update({"best_val/test_acc": test["test/acc"], "best_val/test_loss": test["test/loss"]})
    cfg = trainer.cfg.metrics.sharpness
    if cfg.enabled:
        if value_of(cfg.weights) == "best_val" and best is not None:
            out.update(trainer.sharpness(best, "best_val", trainer.epoch))
            out["sharpness/weights_epoch"] = trainer.best["epoch"]
            spent.append(out["sharpness/seconds"])
        elif trainer.last_sharpness[0] == trainer.epoch:  # computed after the last epoch: in `spent`
            out.update(trainer.last_sharpness[1])
            out["sharpness/weights_epoch"] = trainer.epoch
        else:
            out.update(trainer.sharpness(trainer.model, "final", trainer.epoch))
            out["sharpness/weights_epoch"] = trainer.epoch
            spent.append(out["sharpness/seconds"])
    out["perf/sharpness_s"] = sum(spent)
    return out


def finished(trainer: Trainer) -> dict[str, Any]:
    """The last epoch's metrics under their own names (as W&B's summary has them), the best-val checkpoint's
    test metrics (the last epoch's where there is no validation split), sharpness, timing. A preemption
    signal stops the final metrics at the next forward pass; the resume computes them again."""
    t0 = time.perf_counter()
    try:
        with trainer.preemption.interruptible(type(trainer.model)):
            final = final_metrics(trainer)
    except Preempted:
        if not trainer.cfg.trainer.checkpoint:  # the resume then starts from the trained weights
            trainer.save_checkpoint()
        trainer.preemption.handoff("during the final evaluation")
    wall_time = trainer.elapsed + time.perf_counter() - t0  # the end-of-training evaluation and sharpness too
    history = read_jsonl(trainer.metrics_path)
    last = history[-1] if history else {}
    summary: dict[str, Any] = {"status": "finished", "wall_time_s": wall_time, **last}
    if "best_val/test_acc" not in final:  # no validation split: the reported checkpoint is the last one
        summary.update({"best_val/epoch": trainer.epoch, "best_val/test_acc": last.get("test/acc"),
                        "best_val/test_loss": last.get("test/loss")})  # fmt: skip
    summary.update(final)
    summary["perf/img_per_s"] = _mean([r["perf/img_per_s"] for r in history if "perf/img_per_s" in r])
    return _write(trainer, summary)


def diverged(trainer: Trainer, err: Diverged) -> dict[str, Any]:
    """Status, where the run diverged, and the last good epoch's metrics."""
    history = read_jsonl(trainer.metrics_path)
    summary: dict[str, Any] = {"status": "diverged", "error": str(err), "wall_time_s": trainer.elapsed}
    summary.update(history[-1] if history else {})
    summary.update({
        "diverged/epoch": err.epoch, "diverged/step": err.step, "diverged/global_step": err.global_step,
        "diverged/loss": str(err.value),  # "nan" or "inf" (JSON has neither)
        "last_good_epoch": trainer.epoch, "checkpoint": err.checkpoint,
    })  # fmt: skip
    return _write(trainer, summary)
