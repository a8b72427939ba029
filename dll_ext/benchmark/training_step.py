"""training_step cases: one optimiser step of each course pipeline's default model, built on
dll_ext layers against the same pipeline with --native (torch.nn layers), in one process.

Each case builds the pipeline's task from its default options (as `dll-ext train NAME` does,
seed 0, same weights both ways), takes the first batches of its training set and times what
the trainer's step does: zero the gradients, the task's loss, backward, gradient clipping if
the pipeline clips, the optimiser step. The batches are reused in turn, so data loading is
not timed (the trainer's printed step time does not include it either). --quick runs the
N-back case alone; classify needs scikit-learn (its digits), installed with dll_ext[train]. The
math pipelines' tasks generate their default 200,000 pairs first (a few seconds).
"""
import importlib.util
import itertools
from typing import Callable, List

import torch

from dll_ext.benchmark.harness import Case, Impls

OP = "training_step"
# Batches cycled through: enough for a realistic mix of lengths (N-back), few enough to build fast.
BATCHES = 8
PIPELINES = ("classify", "nback", "charlm", "math-transformer", "math-lstm")


def _step_of(name: str, native: bool) -> Callable[[], torch.Tensor]:
    """A callable running one training step of pipeline `name`'s default task; it returns the loss."""
    from dll_ext.training.command import parse_options
    from dll_ext.training.optim import make_optimizer
    from dll_ext.training.pipeline import get_pipeline

    pipeline = get_pipeline(name)
    args = parse_options(pipeline, ["--native"] if native else [])
    torch.manual_seed(args.seed)
    task = pipeline.build(args)
    loader = torch.utils.data.DataLoader(task.train_set, batch_size=args.batch_size, shuffle=False,
                                         collate_fn=task.collate_fn)
    batches = itertools.cycle(list(itertools.islice(loader, BATCHES)))
    model = task.model.train()
    optimizer = make_optimizer(args, model.parameters())

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model, next(batches)).loss
        loss.backward()
        if args.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
        optimizer.step()
        return loss.detach()

    return step


def cases(device: str = "cpu", quick: bool = False) -> List[Case]:
    if device != "cpu":  # the pipelines' default runs, and these cases, are the CPU ones
        return []
    names = ["nback"] if quick else [name for name in PIPELINES
                                     if name != "classify" or importlib.util.find_spec("sklearn")]
    return [Case(name=f"{name}/step", op=OP, shape=f"`dll-ext train {name}` defaults",
                 setup=lambda name=name: Impls(ours=_step_of(name, False), native=_step_of(name, True)),
                 target=1.0)
            for name in names]
