"""CIFAR-10 from a local copy of its Python version (the cifar-10-batches-py folder: data_batch_1..5,
test_batch, batches.meta), read with an unpickler that can build nothing but plain values and
numpy arrays."""
import codecs
import importlib
import io
import os
import pickle
from typing import Any, Dict

import numpy as np
import torch

from dll_ext.data.errors import DataError
from dll_ext.data.files import read_bytes, require_folder
from dll_ext.data.images import ImageDataset

__all__ = ["load_cifar10", "safe_unpickle"]

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
_SIDE = 32
_CHANNELS = 3


def _numpy_helper(module: str, name: str):
    # numpy's pickling helpers moved from numpy.core to numpy._core in numpy 2.
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


# The only globals a batch file may name: what numpy arrays pickle to (with the module path
# of numpy 1, as in the distributed files, or of numpy 2), and the bytes encoder a protocol-2
# pickle written by Python 3 uses. Everything else, os.system included, is refused.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _package in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_package}.multiarray", "_reconstruct")] = _numpy_helper("multiarray", "_reconstruct")
    _ALLOWED_GLOBALS[(f"{_package}.numeric", "_frombuffer")] = _numpy_helper("numeric", "_frombuffer")


# The pure-Python unpickler: its memo is a dict, where the C one sizes an array by the largest
# memo index a file names (a 67-byte file asking for index 175,399,797 took 3 GiB, found by
# scripts/fuzz_targets.py). A batch file's few opcodes cost nothing in Python.
class _SafeUnpickler(pickle._Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not allowed in a data file") from None


def safe_unpickle(path: str) -> Any:
    """The object pickled in the file at path, which may hold only plain Python values and numpy
    arrays: a pickle is a program, and this one is untrusted input. Python 2 strings (the
    CIFAR-10 files were written by Python 2) come back as bytes."""
    try:
        return _SafeUnpickler(io.BytesIO(read_bytes(path)), encoding="bytes").load()
    except DataError:
        raise
    except Exception as error:  # a malformed pickle can fail in many ways; all mean the same here
        raise DataError(f"{path} is not a CIFAR-10 pickle file: {error}") from error


def _batch_field(batch: Dict, key: bytes, path: str) -> Any:
    if not isinstance(batch, dict) or key not in batch:
        raise DataError(f"{path}: expected a dict with the key {key!r} (CIFAR-10's Python format)")
    return batch[key]


def _read_batch(path: str, num_classes: int):
    batch = safe_unpickle(path)
    data = _batch_field(batch, b"data", path)
    labels = _batch_field(batch, b"labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _CHANNELS * _SIDE * _SIDE or data.shape[0] == 0:
        described = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' is a {described}, expected a uint8 array (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: b'labels' is not a list of integers") from error
    if labels.shape != (data.shape[0],) or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{path}: b'labels' must be {data.shape[0]} integers in [0, {num_classes}), "
                        f"got shape {labels.shape} with values in [{labels.min()}, {labels.max()}]")
    # Each row is the red, green and blue 32x32 planes in turn, row-major: (3, 32, 32) as it is.
    return data.reshape(-1, _CHANNELS, _SIDE, _SIDE), labels


def _class_names(folder: str):
    path = os.path.join(folder, "batches.meta")
    names = _batch_field(safe_unpickle(path), b"label_names", path)
    if not isinstance(names, list) or not names or not all(isinstance(n, bytes) for n in names):
        raise DataError(f"{path}: b'label_names' must be a list of byte strings")
    return [n.decode("ascii", "replace") for n in names]


def load_cifar10(root: str, train: bool = True) -> ImageDataset:
    """The CIFAR-10 training (data_batch_1..5, 50,000 images) or test split (test_batch, 10,000)
    as an ImageDataset: images (3, 32, 32) uint8 (yielded as float in [0, 1]), labels 0..9,
    class names from batches.meta.

    root: the cifar-10-batches-py folder, or the folder its archive was extracted in. Raises
    DataError naming the file when the folder or a file is missing or not in the format.
    """
    require_folder(root, "CIFAR-10 folder")
    nested = os.path.join(root, FOLDER_NAME)
    folder = nested if os.path.isdir(nested) else root
    names = TRAIN_BATCHES if train else TEST_BATCHES
    missing = [n for n in names + ["batches.meta"] if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise DataError(f"CIFAR-10: {folder} lacks {', '.join(missing)} (expected the {FOLDER_NAME} folder of "
                        "the Python version: data_batch_1..5, test_batch, batches.meta)")
    classes = _class_names(folder)
    batches = [_read_batch(os.path.join(folder, n), len(classes)) for n in names]
    images = torch.from_numpy(np.concatenate([images for images, _ in batches]))
    labels = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
    return ImageDataset(images, labels, classes)
