"""Load dll_ext._C, refusing a torch other than the one it was compiled against.

A C++ extension is tied to the exact torch build it was compiled with; loading it into
another gives undefined-symbol errors or worse, so the versions are compared first.
"""
import importlib

import torch


class BuildMismatchError(ImportError):
    pass


def build_config():
    try:
        return importlib.import_module("dll_ext._build_config")
    except ImportError as exc:
        raise ImportError(
            "dll_ext has not been built: install it with "
            "`pip install --no-build-isolation .` from the source folder"
        ) from exc


def load_extension():
    config = build_config()
    if config.TORCH_VERSION != torch.__version__:
        raise BuildMismatchError(
            f"dll_ext was built against torch {config.TORCH_VERSION} but torch "
            f"{torch.__version__} is running; rebuild dll_ext with this torch "
            "(`pip install --no-build-isolation --force-reinstall --no-deps .`)"
        )
    try:
        return importlib.import_module("dll_ext._C")
    except ImportError as exc:
        raise ImportError(
            f"dll_ext._C failed to load ({exc}); it was built against torch "
            f"{config.TORCH_VERSION}, torch {torch.__version__} is running"
        ) from exc
