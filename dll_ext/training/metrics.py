"""Running sums of a task's batch losses and metrics, reduced over the ranks into means."""
from typing import Dict

import torch

from dll_ext.training.distributed import DistEnv
from dll_ext.training.pipeline import BatchLoss


class MetricSums:
    """Sums kept on the device in float64 (no host sync per step). Their plain-float state()
    round-trips exactly, so an epoch interrupted and resumed reports the same means."""

    def __init__(self, device: torch.device, state: Dict[str, float] = None):
        self.device = device
        self.totals = {k: torch.tensor(v, dtype=torch.float64, device=device)
                       for k, v in (state or {}).items()}

    def _add(self, key: str, value) -> None:
        value = torch.as_tensor(value, device=self.device).detach().double()
        self.totals[key] = self.totals[key] + value if key in self.totals else value

    def add(self, out: BatchLoss) -> None:
        self._add("count", out.count)
        self._add("loss", out.loss.detach().double() * out.count)
        for key, value in out.sums.items():
            self._add(key, value)

    def state(self) -> Dict[str, float]:
        return {k: v.item() for k, v in self.totals.items()}

    def means(self, env: DistEnv) -> Dict[str, float]:
        """Every metric's sum over all ranks divided by the total count (all ranks see the same).
        Each rank must have added at least one batch, so that all hold the same keys."""
        keys = list(self.totals)
        totals = env.sum(torch.stack([self.totals[k] for k in keys])).tolist()
        summed = dict(zip(keys, totals))
        count = summed.pop("count")
        return {k: v / count for k, v in summed.items()}
