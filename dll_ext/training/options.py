"""The options every pipeline takes, and argparse types that reject bad values with a message."""
import argparse
from typing import Callable

# Options that describe how this process runs rather than what is trained: --resume takes them
# from the command line; all others come from the checkpoint, so a run continues as it began.
RUNTIME_OPTIONS = frozenset({"out", "resume", "overwrite", "device", "workers", "stop_after_steps"})


def _checked(convert: Callable, ok: Callable, what: str) -> Callable:
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _checked(int, lambda v: v > 0, "an integer > 0")
nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a number > 0")
nonnegative_float = _checked(float, lambda v: v >= 0, "a number >= 0")
probability = _checked(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")


def float_list(text: str):
    """'0,-5,2' -> [0.0, -5.0, 2.0]."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_common_arguments(parser: argparse.ArgumentParser, pipeline_name: str) -> None:
    """The shared options; a pipeline changes their defaults with parser.set_defaults."""
    run = parser.add_argument_group("run")
    run.add_argument("--out", default=f"runs/{pipeline_name}",
                     help="folder for the checkpoint, logs, plots and metrics.json")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out, with the options it was started with")
    again.add_argument("--overwrite", action="store_true",
                       help="start a new run in an --out that holds one (its checkpoint is replaced "
                            "when the new run saves its first)")
    run.add_argument("--seed", type=int, default=0, help="seed of the weights, order and dropout")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                     help="auto: a GPU if there is one; with torchrun, each process takes its LOCAL_RANK's")
    run.add_argument("--native", action="store_true",
                     help="build the model from torch.nn layers instead of dll_ext's, to compare")
    run.add_argument("--quick", action="store_true", help="a small run (under 2 minutes on 2 CPU cores)")
    run.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader worker processes")
    run.add_argument("--log-every", type=positive_int, default=10, help="steps between TensorBoard points")
    run.add_argument("--save-every", type=nonnegative_int, default=0,
                     help="steps between checkpoints within an epoch (0: at the end of each epoch only)")
    # Tests interrupt a run at an exact step through this; it then behaves as SIGINT.
    run.add_argument("--stop-after-steps", type=positive_int, default=None, help=argparse.SUPPRESS)

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=positive_int, default=10, help="passes over the training set")
    opt.add_argument("--batch-size", type=positive_int, default=32, help="examples per step and process")
    opt.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate")
    opt.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adam",
                     help="SGD with momentum, Adam, or Adam with decoupled weight decay")
    opt.add_argument("--momentum", type=nonnegative_float, default=0.9, help="SGD momentum")
    opt.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="L2 penalty (AdamW: decay)")
    opt.add_argument("--scheduler", choices=["none", "plateau", "cosine"], default="none",
                     help="plateau: multiply the lr by --lr-factor after --lr-patience epochs without "
                          "validation progress; cosine: anneal it to --min-lr over the run, step by step")
    opt.add_argument("--lr-factor", type=probability, default=0.5, help="plateau: the lr's multiplier")
    opt.add_argument("--lr-patience", type=nonnegative_int, default=2,
                     help="plateau: epochs without progress before the lr drops")
    opt.add_argument("--min-lr", type=nonnegative_float, default=0.0, help="the lowest lr of either schedule")
    opt.add_argument("--clip-norm", type=nonnegative_float, default=0.0,
                     help="clip the global gradient norm to this (0: no clipping)")
    opt.add_argument("--dropout", type=probability, default=0.0, help="dropout rate of the model")
    opt.add_argument("--patience", type=nonnegative_int, default=0,
                     help="early stopping: stop after this many epochs without validation progress "
                          "(0: never)")
    opt.add_argument("--average", type=nonnegative_int, default=0,
                     help="at the end, also evaluate the average of the last K epochs' weights (0: off)")
