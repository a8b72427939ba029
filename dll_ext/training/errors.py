"""The one exception a user can cause (bad data, bad checkpoint, bad options): the CLI turns it
into a single `dll-ext train: error: ...` line and exit code 2, never a traceback."""
import importlib


class TrainingError(Exception):
    """A problem with the user's input, files or environment, worded for the user."""


def require(module: str, purpose: str):
    """Import an optional dependency of the training toolkit, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrainingError(
            f"{purpose} needs the Python package {module.split('.')[0]!r} ({e}); "
            "install the training extras: pip install 'dll_ext[train]'") from e
