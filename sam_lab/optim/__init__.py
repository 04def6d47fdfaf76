"""Optimizers: one file per algorithm, all on `base.BaseSGD` / `base.TwoPass`."""

from sam_lab.optim.base import BaseSGD, TwoPass, frozen_bn, global_norm
from sam_lab.optim.sam import SAM
from sam_lab.optim.sgd import SGD

__all__ = ["BaseSGD", "TwoPass", "SGD", "SAM", "frozen_bn", "global_norm"]
