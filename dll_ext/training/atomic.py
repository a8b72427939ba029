"""Atomic file writes: a crash, a full disk or a second Ctrl-C in the middle of a write leaves the
previous version of the file intact, never a torn one."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from dll_ext.training.errors import TrainingError


def atomic_write(path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)`: into a temporary file in the same folder (so the final
    rename stays on one file system), flushed to disk, then renamed over `path` in one step."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        # The rename itself is durable only once the folder's entry is on disk.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise TrainingError(f"could not write {path}: {e}") from e


def save_torch(obj: Any, path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj: Any, path) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_text(text: str, path) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))
