"""The training toolkit shared by the course pipelines (`dll-ext train <pipeline>`).

A pipeline subclasses `Pipeline` (options, defaults, `build(args) -> Task`) and `Task` (model,
datasets, `loss(model, batch) -> BatchLoss`); `train` runs it: seeded loaders, optimiser and
schedule, atomic checkpoints, --resume, SIGINT/SIGTERM, tqdm/TensorBoard/CSV monitoring, plots,
early stopping, checkpoint averaging and DDP under torchrun.
"""
from dll_ext.training.atomic import atomic_write, save_json, save_torch
from dll_ext.training.checkpoint import average_state_dicts, load_checkpoint, load_weights
from dll_ext.training.data import eval_loader, split_dataset, train_loader
from dll_ext.training.distributed import DistEnv
from dll_ext.training.errors import TrainingError, require
from dll_ext.training.pipeline import PIPELINES, BatchLoss, Pipeline, Task, get_pipeline
from dll_ext.training.plots import figure, plot_curves
from dll_ext.training.seeding import derive_seed, rng_state, seed_everything, set_rng_state
from dll_ext.training.trainer import train

__all__ = [
    "PIPELINES", "BatchLoss", "DistEnv", "Pipeline", "Task", "TrainingError", "atomic_write",
    "average_state_dicts", "derive_seed", "eval_loader", "figure", "get_pipeline", "load_checkpoint",
    "load_weights", "plot_curves", "require", "rng_state", "save_json", "save_torch", "seed_everything",
    "set_rng_state", "split_dataset", "train", "train_loader",
]
