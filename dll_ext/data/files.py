"""Reading data files with every failure reported as a DataError naming the path."""
import gzip
import os
from typing import Sequence

from dll_ext.data.errors import DataError

__all__ = ["find_file", "read_bytes", "require_folder"]


def require_folder(path: str, what: str) -> str:
    """path, after checking that it is an existing folder."""
    if not os.path.isdir(path):
        problem = "is not a folder" if os.path.exists(path) else "does not exist"
        raise DataError(f"{what}: {path} {problem}")
    return path


def find_file(folder: str, names: Sequence[str], what: str) -> str:
    """The first of `names` that is a file in `folder`."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{what}: {folder} has none of the files " + ", ".join(names))


def read_bytes(path: str) -> bytes:
    """The contents of path, decompressed when its name ends in .gz."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError; a cut stream an EOFError
        raise DataError(f"cannot read {path}: {error}") from error
