"""Optimiser and learning-rate schedule from the options (the course's chapter 5)."""
from typing import Iterable, Optional

import torch


def make_optimizer(args, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    # Adam's weight decay is an L2 term added to the gradient; AdamW decays the weights directly.
    cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


class Schedule:
    """The learning-rate schedule: cosine annealing moves every step, ReduceLROnPlateau after each
    validation (on the task's monitored metric), none never."""

    def __init__(self, args, optimizer: torch.optim.Optimizer, total_steps: int, higher_is_better: bool):
        self.scheduler: Optional[object] = None
        self.per_step = args.scheduler == "cosine"
        if args.scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=total_steps, eta_min=args.min_lr)
        elif args.scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max" if higher_is_better else "min", factor=args.lr_factor,
                patience=args.lr_patience, min_lr=args.min_lr)
        self.optimizer = optimizer

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_validation(self, value: float) -> None:
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step(value)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> Optional[dict]:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)
