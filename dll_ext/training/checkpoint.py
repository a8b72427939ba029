"""Reading checkpoints safely and averaging their weights.

A checkpoint is untrusted input: it is read with `torch.load(weights_only=True)`, which only
rebuilds tensors and plain containers (full unpickling could run any code), so everything saved
is kept in those types: state_dicts, numbers, strings, lists and dicts. Every file carries
FORMAT and its pipeline's name, so a file of another pipeline or program is refused by name.
"""
import pickle
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from dll_ext.training.errors import TrainingError

FORMAT = "dll_ext.training/1"
# The files of a run folder (the --out of dll-ext train).
CHECKPOINT = "checkpoint.pt"  # the last epoch's, with the optimizer's state
BEST = "best.pt"  # the weights of the best validation epoch
AVERAGED = "averaged.pt"  # with --average


def _reason(e: Exception) -> str:
    if isinstance(e, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain data, which are never unpickled"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def load_checkpoint(path, pipeline: Optional[str] = None) -> dict:
    """The dict saved at `path` (a checkpoint file, or a run folder for its best.pt), read safely
    onto the CPU; TrainingError if it is missing, corrupt, not a dll-ext training file, or (with
    `pipeline`) written by another pipeline."""
    path = Path(path)
    if path.is_dir():
        if not (path / BEST).is_file():
            raise TrainingError(f"no {BEST} in the folder {path}: pass a run folder (the --out of dll-ext train) "
                                f"or a checkpoint file ({BEST}, {CHECKPOINT}, {AVERAGED})")
        path = path / BEST
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"cannot read checkpoint {path} (corrupt, truncated or not a checkpoint): "
                            f"{_reason(e)}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TrainingError(f"{path} is not a dll-ext training checkpoint")
    if pipeline is not None and data.get("pipeline") != pipeline:
        raise TrainingError(f"{path} is a checkpoint of the {data.get('pipeline')!r} pipeline, "
                            f"not of {pipeline!r}")
    return data


class _MoreParametersThanSaved(Exception):
    pass


def build_from_checkpoint(build: Callable[[], torch.nn.Module], state: object, path, what: str) -> torch.nn.Module:
    """build() for the configuration a checkpoint describes, after checking it: built first on
    the meta device (no memory), its parameter shapes must be the saved weights' shapes, so
    that a configuration with a negative or enormous size is a TrainingError, not a crash or
    gigabytes allocated before the mismatch shows. The meta build stops once it has registered
    far more parameters than the saved tensors: num_layers = 5e17 would build layers for ever.
    (All three found by scripts/fuzz_targets.py.)"""
    saved = {name: tuple(t.shape) for name, t in state.items()} if isinstance(state, dict) else {}
    registered = 0

    def count(module, name, parameter):
        nonlocal registered
        registered += 1
        # A generous multiple: a model may register a parameter more than once while it is built.
        if registered > 4 * len(saved) + 64:
            raise _MoreParametersThanSaved

    hook = torch.nn.modules.module.register_module_parameter_registration_hook(count)
    try:
        with torch.device("meta"):
            shapes = {name: tuple(t.shape) for name, t in build().state_dict().items()}
    except _MoreParametersThanSaved:
        raise TrainingError(f"{path}: its configuration describes a {what} with far more parameters than the "
                            f"{len(saved)} tensors it holds") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise TrainingError(f"{path}: its configuration does not describe a {what} ({e})") from e
    finally:
        hook.remove()
    if saved != shapes:
        differ = sorted(name for name in shapes.keys() | saved.keys() if shapes.get(name) != saved.get(name))
        raise TrainingError(f"{path} holds the weights of another model than its configuration describes "
                            f"(they differ in {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''})")
    return build()


def load_weights(model: torch.nn.Module, state: Dict[str, torch.Tensor], path) -> None:
    """model.load_state_dict(state), with a mismatch (another model's weights) as a TrainingError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        details = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        if len(details) > 300:
            details = details[:300] + " ..."
        raise TrainingError(f"{path} holds the weights of another model ({details})") from e


def average_state_dicts(states: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The element-wise mean of floating-point entries (summed in float64, cast back); other
    entries (integer counters such as BatchNorm's num_batches_tracked) come from the last state."""
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            total = sum(state[key].double() for state in states)
            averaged[key] = (total / len(states)).to(last.dtype)
        else:
            averaged[key] = last.clone()
    return averaged
