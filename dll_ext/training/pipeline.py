"""What a pipeline provides to the shared training loop, and the registry of pipelines.

A pipeline (one per course task) is a `Pipeline` subclass whose module holds an instance named
PIPELINE and is listed in PIPELINES. From the parsed options, `build` returns a `Task`: the model,
the three datasets, and how a batch turns into a loss and metric sums. The trainer does the rest
(loaders, optimiser, schedule, checkpoints, signals, logs, plots, DDP, metrics.json).
"""
import argparse
import importlib
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional

import torch
from torch.utils.data import Dataset

# pipeline name -> "module" defining PIPELINE, or "module:NAME" for a module defining several;
# a new pipeline adds its module and one line here.
PIPELINES: Dict[str, str] = {
    "regression": "dll_ext.training.pipelines.regression",
    "classify": "dll_ext.training.pipelines.classify",
    "nback": "dll_ext.training.pipelines.nback",
    "charlm": "dll_ext.training.pipelines.charlm",
    "math-transformer": "dll_ext.training.pipelines.seq2seq:TRANSFORMER",
    "math-lstm": "dll_ext.training.pipelines.seq2seq:LSTM",
}


class BatchLoss(NamedTuple):
    """What a task computes from one batch.

    loss: the mean loss over the batch's `count` items (examples, or tokens), to back-propagate.
    count: how many items the mean is over; epoch metrics weight batches by it.
    sums: other metrics as sums over those items (e.g. {"accuracy": number correct}); the trainer
    reports sums / count, summed over batches and ranks.
    """
    loss: torch.Tensor
    count: int
    sums: Dict[str, torch.Tensor] = {}


class Task:
    """A model, its train/validation/test data, and its loss.

    `config` (plain types only: numbers, strings, lists, dicts) is saved in each checkpoint, e.g.
    a vocabulary; a resumed run must rebuild the same one. Validation progress (early stopping,
    ReduceLROnPlateau, the best weights) is judged on metric `monitor`. With `shuffle` False the
    training set is read in index order every epoch, each process taking every world_size-th
    item (as evaluation does), e.g. for consecutive chunks of a stream.
    """
    monitor = "loss"
    higher_is_better = False
    shuffle = True

    def __init__(self, model: torch.nn.Module, train_set: Dataset, val_set: Dataset, test_set: Dataset,
                 config: Optional[Dict[str, Any]] = None, collate_fn: Optional[Callable] = None):
        self.model = model
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.config = config or {}
        self.collate_fn = collate_fn

    def loss(self, model: torch.nn.Module, batch) -> BatchLoss:
        """The loss of one batch (already on the device). Call `model(...)` only: in a
        distributed run it is the DistributedDataParallel wrapper."""
        raise NotImplementedError

    def to_device(self, batch, device: torch.device):
        """Move a batch to the device; override to keep some tensors on the CPU (e.g. lengths)."""
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple takes its fields apart
            return type(batch)(*(self.to_device(b, device) for b in batch))
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(b, device) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v, device) for k, v in batch.items()}
        return batch

    def state_dict(self) -> Dict[str, Any]:
        """What the task carries from batch to batch (e.g. a recurrent state), in tensors and plain
        types; saved with each process's checkpoint entry, so a resumed run continues with it."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Take back what state_dict returned."""

    def summarize(self, metrics: Dict[str, float]) -> Dict[str, float]:
        """Add metrics derived from the means (e.g. perplexity from the loss)."""
        return metrics

    def artefacts(self, model: torch.nn.Module, out_dir: Path) -> Dict[str, Any]:
        """At the end, on rank 0, with the weights the test metrics come from: write extra files
        (plots) into out_dir and return extra entries for metrics.json."""
        return {}


class Pipeline:
    """A course task as a `dll-ext train <name>` command.

    defaults: option values this pipeline uses instead of the toolkit's (shared options such as
    epochs, lr, optimizer, and its own); quick: the values --quick uses instead (explicit options
    still win over both).
    """
    name = ""
    help = ""
    defaults: Dict[str, Any] = {}
    quick: Dict[str, Any] = {}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this pipeline's own options."""

    def build(self, args: argparse.Namespace) -> Task:
        """The task for these options: called after seeding, so weights are initialised the same
        way for the same --seed. args.native asks for torch.nn layers instead of dll_ext's;
        args.dropout is the dropout rate for the model."""
        raise NotImplementedError


def get_pipeline(name: str) -> Pipeline:
    module, _, attribute = PIPELINES[name].partition(":")
    return getattr(importlib.import_module(module), attribute or "PIPELINE")
