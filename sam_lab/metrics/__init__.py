"""Metrics as pure functions on tensors."""

from sam_lab.metrics.grad_stats import grad_stats

__all__ = ["grad_stats"]
