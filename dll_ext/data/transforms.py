"""Tensor transforms for image classification: random crop and flip augmentation, normalisation.

Both are nn.Modules taking one image (C, H, W) or a batch (N, C, H, W), so they compose with
nn.Sequential and can run per item in DataLoader workers or per batch on the training device.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dll_ext.data.images import as_float_images

__all__ = ["Normalize", "RandomCropFlip"]

# Images per chunk when computing channel statistics, so a uint8 dataset is never converted
# to float all at once (CIFAR-10's training set would take 600 MB).
_STATS_CHUNK = 4096


class RandomCropFlip(nn.Module):
    """Each image zero-padded by `padding` pixels on every side, cropped back to its size at a
    uniformly random offset and, with `flip`, mirrored left-right with probability 1/2: the
    CIFAR-10 augmentation of He et al. (2016).

    The offsets and flips are drawn on the CPU from `generator` when one is given, else from
    torch's default generator, which torch.manual_seed seeds and a DataLoader seeds in each of
    its workers; either way a seeded run draws the same augmentations.
    """

    def __init__(self, padding: int = 4, flip: bool = True, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"RandomCropFlip: padding must be >= 0, got {padding}")
        self.padding = padding
        self.flip = flip
        self.generator = generator

    def forward(self, images: Tensor) -> Tensor:
        batch = images if images.dim() == 4 else images.unsqueeze(0)
        n, _, height, width = batch.shape
        p = self.padding
        top = torch.randint(0, 2 * p + 1, (n, 1), generator=self.generator).to(images.device)
        left = torch.randint(0, 2 * p + 1, (n, 1), generator=self.generator).to(images.device)
        columns = torch.arange(width, device=images.device).expand(n, width)
        if self.flip:
            mirrored = torch.rand(n, 1, generator=self.generator).to(images.device) < 0.5
            columns = torch.where(mirrored, columns.flip(1), columns)
        rows = top + torch.arange(height, device=images.device)
        columns = left + columns
        # One gather does every image's crop and flip: indexing (image, row, column) around the
        # channel slice gives (N, H, W, C).
        padded = F.pad(batch, (p, p, p, p))
        out = padded[torch.arange(n, device=images.device)[:, None, None], :, rows[:, :, None], columns[:, None, :]]
        out = out.permute(0, 3, 1, 2).contiguous()
        return out if images.dim() == 4 else out.squeeze(0)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip}"


class Normalize(nn.Module):
    """(x - mean) / std per channel, for float images (C, H, W) or batches (N, C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"Normalize: mean and std need one value per channel and std > 0, got {mean}, {std}")
        # Not persistent: the statistics belong to the data, not to a model's state_dict.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_images(cls, images: Tensor) -> "Normalize":
        """The per-channel mean and standard deviation of images (N, C, H, W) (uint8 scaled to
        [0, 1], as ImageDataset yields them), computed in float64."""
        total = torch.zeros(images.size(1), dtype=torch.float64)
        total_squares = torch.zeros_like(total)
        for chunk in images.split(_STATS_CHUNK):
            values = as_float_images(chunk).double()
            total += values.sum((0, 2, 3)).cpu()
            total_squares += values.square().sum((0, 2, 3)).cpu()
        count = images.numel() // images.size(1)
        mean = total / count
        std = (total_squares / count - mean.square()).clamp_min(0).sqrt()
        return cls(mean.tolist(), std.tolist())

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
