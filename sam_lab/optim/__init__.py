"""Optimizers: one file per algorithm, all on `base.BaseSGD` / `twopass.TwoPass`; `precision` for autocast."""

from sam_lab.optim.base import BaseSGD
from sam_lab.optim.fsam import FSAM
from sam_lab.optim.ops import frozen_bn, global_norm
from sam_lab.optim.precision import MixedPrecision
from sam_lab.optim.sam import SAM
from sam_lab.optim.samdirection import SAMDirection
from sam_lab.optim.sammagnitude import SAMMagnitude
from sam_lab.optim.sgd import SGD
from sam_lab.optim.sgdhess import SGDHess
from sam_lab.optim.twopass import TwoPass

__all__ = [
    "BaseSGD",
    "TwoPass",
    "SGD",
    "SAM",
    "SAMDirection",
    "SAMMagnitude",
    "FSAM",
    "SGDHess",
    "MixedPrecision",
    "frozen_bn",
    "global_norm",
]
