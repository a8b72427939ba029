"""MNIST from its four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte), each as distributed (.gz) or decompressed."""
import math
import struct

import numpy as np
import torch

from dll_ext.data.errors import DataError
from dll_ext.data.files import find_file, read_bytes, require_folder
from dll_ext.data.images import ImageDataset

__all__ = ["load_mnist", "read_idx"]

# An IDX file starts with two zero bytes, a type code (0x08: unsigned bytes) and the number of
# dimensions, then each dimension as a big-endian uint32, then the values in row-major order.
_UBYTE = 0x08
_MAX_VALUES = 1 << 40


def read_idx(path: str, ndim: int) -> np.ndarray:
    """The uint8 array in the IDX file at path (.gz too), which must have `ndim` dimensions."""
    data = read_bytes(path)
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zeros, type_code, file_ndim = struct.unpack(">HBB", data[:4])
    if zeros != 0 or type_code != _UBYTE or file_ndim != ndim:
        raise DataError(f"{path}: magic number 0x{data[:4].hex()}, expected 0x{_UBYTE << 8 | ndim:08x} "
                        f"(unsigned bytes, {ndim} dimensions); not the IDX file expected")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    # numpy refuses a shape whose non-zero sizes multiply past its index range, even when
    # another size is 0 and the file rightly holds no values.
    if math.prod(max(size, 1) for size in shape) > _MAX_VALUES:
        raise DataError(f"{path}: its header's shape {shape} is too large for an IDX file")
    expected = header_size + math.prod(shape)  # Python ints: numpy's product of uint32s can wrap
    if len(data) != expected:
        raise DataError(f"{path}: {len(data)} bytes, but its header's shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _idx_file(folder: str, stem: str) -> str:
    return find_file(folder, [stem, stem + ".gz"], "MNIST")


def load_mnist(root: str, train: bool = True) -> ImageDataset:
    """The MNIST training (60,000) or test (10,000) split in folder `root` as an ImageDataset:
    images (1, 28, 28) uint8 (yielded as float in [0, 1]), labels 0..9.

    Raises DataError naming the file when the folder or a file is missing, a magic number or
    a size is wrong, the image and label counts differ or a label is not a digit.
    """
    require_folder(root, "MNIST folder")
    prefix = "train" if train else "t10k"
    images_path = _idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) == 0:
        raise DataError(f"MNIST: {images_path} holds no images")
    if len(images) != len(labels):
        raise DataError(f"MNIST: {images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"MNIST: {labels_path} has label {labels.max()}, not a digit")
    # frombuffer arrays are read-only; torch wants writable memory.
    return ImageDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        [str(d) for d in range(10)])
