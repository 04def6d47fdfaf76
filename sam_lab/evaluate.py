"""Re-evaluate a run without training: `python -m sam_lab.evaluate RUN_DIR [key=value ...] [--weights ...]`.

Reads RUN_DIR/checkpoints/last.pt (tensors only, never code) and evaluates the weights it holds: `last` (the
weights when the checkpoint was written, also mid-epoch for an interrupted run), `best_val` (the best
validation accuracy so far) and `ema` (the weight average, with `trainer.ema_decay`): loss and accuracy on
val and test, and sharpness as `metrics.sharpness.*` says. The config is the run's own
(RUN_DIR/.hydra/config.yaml) with the overrides applied, e.g. `metrics.sharpness.top_k=3
metrics.sharpness.trace=10`, `device=cpu`, `logger=none`. The results go to RUN_DIR/summary.json, as
`eval/<weights>/<metric>` (the latest evaluation) and as an entry of `evaluations` (every evaluation, with its
overrides, time and checkpoint epoch), and to the summary of the run's W&B run (resumed by the id in the
checkpoint; offline works). The checkpoint and metrics.jsonl are not touched.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from sam_lab.config import ConfigError, TrainConfig, register, validate
from sam_lab.config_groups import TARGET_GROUPS
from sam_lab.run import checkpoint
from sam_lab.run.claim import Claim
from sam_lab.run.files import write_json_atomic
from sam_lab.train import CONF_DIR, build, user_facing

WEIGHTS = ("last", "best_val", "ema")


class EvaluateError(ConfigError):
    """A run directory that cannot be evaluated, or an override that does not apply: one line, exit 1."""


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def run_config(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """The run's config (its .hydra/config.yaml on the typed schema) with `overrides`, and its group choices.

    `key=value` sets a key of the run's config, `+key=value` adds one, `group=option` (e.g. `logger=none`)
    replaces a group with that option of conf/<group>/."""
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    hydra_cfg = OmegaConf.load(hydra_file) if hydra_file.is_file() else OmegaConf.create({"hydra": {}})
    # `${hydra:runtime.cwd}` in the run's config means the run's working directory, not this one's
    HydraConfig.instance().cfg = hydra_cfg  # type: ignore[assignment]
    choices = dict(OmegaConf.select(hydra_cfg, "hydra.runtime.choices", default={}) or {})
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
        parsed = OverridesParser.create().parse_overrides(overrides)
    except (OmegaConfBaseException, HydraException) as err:
        raise EvaluateError(f"{run_dir}: {_first_line(err)}") from None
    for o in parsed:
        key, line = o.key_or_group, o.input_line
        if o.is_sweep_override() or o.is_delete():
            raise EvaluateError(f"{line}: evaluate takes key=value overrides (no sweeps, no deletions)")
        value = o.value()
        try:
            if key in TARGET_GROUPS and isinstance(value, str):  # a group option, e.g. logger=none
                with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                    node = compose("train", overrides=[f"{key}={value}"])[key]
                OmegaConf.update(cfg, key, OmegaConf.to_container(node), merge=False)
                choices[key] = value
            elif o.is_add() or o.is_force_add():
                with open_dict(cfg):
                    OmegaConf.update(cfg, key, value, merge=True)
            elif OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
                raise EvaluateError(f"{line}: the run's config has no key {key} (use +{line} to add one)")
            else:
                OmegaConf.update(cfg, key, value, merge=True)
        except (OmegaConfBaseException, HydraException) as err:
            raise EvaluateError(f"{line}: {_first_line(err)}") from None
    validate(cfg)
    return cfg, choices


def check_run_dir(run_dir: Path) -> Path:
    """The checkpoint of `run_dir`, or an EvaluateError saying what is missing."""
    if not run_dir.is_dir():
        raise EvaluateError(f"run dir {run_dir} does not exist")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise EvaluateError(f"{run_dir} is not a sam_lab run dir: it has no .hydra/config.yaml")
    ckpt = run_dir / checkpoint.PATH
    if not ckpt.is_file():
        raise EvaluateError(
            f"{run_dir} has no checkpoint ({checkpoint.PATH}): nothing to evaluate (the run stopped before "
            f"its first epoch ended, or ran with trainer.checkpoint=false)"
        )
    return ckpt


def evaluate_run(run_dir: Path, overrides: list[str], weights: tuple[str, ...] = WEIGHTS) -> dict[str, Any]:
    """Evaluate the checkpoint of `run_dir`; add the results to its summary.json and W&B run; the entry."""
    run_dir = Path(run_dir).resolve()
    ckpt = check_run_dir(run_dir)
    cfg, choices = run_config(run_dir, overrides)
    with Claim(run_dir) as claim:  # not while a training process runs in the directory
        claim.commit()
        return _evaluate(run_dir, ckpt, cfg, choices, overrides, weights)


def _evaluate(
    run_dir: Path, ckpt: Path, cfg: DictConfig, choices: dict, overrides: list[str], weights: tuple[str, ...]
) -> dict[str, Any]:
    state = checkpoint.read(ckpt, advice=f"evaluate needs the {checkpoint.PATH} that sam_lab wrote")
    trainer = build(cfg, run_dir, choices)
    checkpoint.load_weights(ckpt, trainer.model, state)
    models = {"last": trainer.model}
    if state["best"]["state"] is not None:
        models["best_val"] = copy.deepcopy(trainer.model)
        models["best_val"].load_state_dict(state["best"]["state"])
    if trainer.ema is not None and state.get("ema") is not None:
        trainer.ema.load_state_dict(state["ema"])
        models["ema"] = trainer.ema.module
    flat: dict[str, Any] = {}
    for name in (w for w in weights if w in models):
        metrics = {}
        for which in trainer.eval_batches:
            metrics.update(trainer.evaluate(which, models[name]))
        if cfg.metrics.sharpness.enabled:
            metrics.update(trainer.sharpness(models[name], f"eval_{name}", state["epoch"]))
        flat.update({f"eval/{name}/{k}": v for k, v in metrics.items()})
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{name} (checkpoint epoch {state['epoch']}): {shown}", flush=True)
    position = state.get("position")
    entry = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "overrides": list(overrides),
        "checkpoint_epoch": state["epoch"],
        "checkpoint_step": position["step"] if position else None,  # set when it was written mid-epoch
        "metrics": flat,
    }
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {"status": "unfinished"}
    summary.update(flat)
    summary["evaluations"] = [*summary.get("evaluations", []), entry]
    write_json_atomic(path, summary)
    trainer.logger.start(
        config=OmegaConf.to_container(cfg, resolve=True), run_dir=run_dir, run_id=state.get("logger_run_id"),
        quiet=True,
    )  # fmt: skip
    trainer.logger.summary(flat)
    trainer.logger.finish()
    print(f"{path}: {len(flat)} eval/* keys and evaluation {len(summary['evaluations'])}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sam_lab.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run directory (with .hydra/ and checkpoints/last.pt)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the run's config")
    p.add_argument(
        "--weights", default=",".join(WEIGHTS), help="comma-separated subset of: last,best_val,ema"
    )
    args = p.parse_intermixed_args(argv)  # overrides before and after --weights
    weights = tuple(w for w in args.weights.split(",") if w)
    if not weights or set(weights) - set(WEIGHTS):
        p.error(f"--weights={args.weights}: choose from {','.join(WEIGHTS)}")
    register()
    try:
        evaluate_run(args.run_dir, args.overrides, weights)
    except Exception as err:
        known = user_facing(err, args.run_dir)
        if known is None:
            raise  # a bug: full traceback
        print(f"error: {known[0]}", file=sys.stderr)
        return known[1]
    return 0


if __name__ == "__main__":
    sys.exit(main())
