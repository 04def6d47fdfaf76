"""Optimizers: one file per algorithm, all on `base.BaseSGD` / `base.TwoPass`."""

from sam_lab.optim.base import BaseSGD, TwoPass, frozen_bn, global_norm
from sam_lab.optim.fsam import FSAM
from sam_lab.optim.sam import SAM
from sam_lab.optim.samdirection import SAMDirection
from sam_lab.optim.sammagnitude import SAMMagnitude
from sam_lab.optim.sgd import SGD
from sam_lab.optim.sgdhess import SGDHess

__all__ = [
    "BaseSGD",
    "TwoPass",
    "SGD",
    "SAM",
    "SAMDirection",
    "SAMMagnitude",
    "FSAM",
    "SGDHess",
    "frozen_bn",
    "global_norm",
]
