"""ImageDataset: images and labels held as tensors, shared by the digits, MNIST and CIFAR-10 loaders."""
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "as_float_images"]


def as_float_images(images: Tensor) -> Tensor:
    """float32 images in [0, 1]: uint8 pixels divided by 255, floating-point images as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


class ImageDataset(Dataset):
    """Item i is (transform(image i as float32 in [0, 1], (C, H, W)), label i as an int64 scalar).

    images: (N, C, H, W), uint8 (kept as uint8, a quarter of the memory of float32, and
    converted item by item) or floating point already in [0, 1]. labels: (N,) int64 in
    [0, len(classes)). classes: the class names, label i naming classes[i]. transform: a
    callable on one (C, H, W) float image (e.g. dll_ext.data.RandomCropFlip, Normalize, or an
    nn.Sequential of them), or None.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str],
                 transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        if images.dim() != 4 or labels.shape != (images.size(0),) or labels.dtype != torch.int64:
            raise ValueError(f"ImageDataset: images must be (N, C, H, W) and labels (N,) int64, got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)} {labels.dtype}")
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return self.images.size(0)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image = as_float_images(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)
