"""Device-side running means: per-step scalars are summed on the device and read once (one host sync)."""

from __future__ import annotations

import torch
from torch import Tensor


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
