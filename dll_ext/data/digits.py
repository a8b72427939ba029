"""The 1,797 8x8 handwritten digits that ship inside scikit-learn: a classification set with no download."""
import torch

from dll_ext.data.images import ImageDataset

__all__ = ["load_digits"]

# The bundled images hold 4x4-block pixel counts, integers 0..16.
_MAX_PIXEL = 16.0


def load_digits() -> ImageDataset:
    """All 1,797 digits as an ImageDataset: images (1, 8, 8) float32 in [0, 1], labels 0..9.

    They come in one set, with no train/test split of their own. Needs scikit-learn
    (imported here, so the rest of dll_ext does not).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise ImportError("the digits dataset is the one bundled with scikit-learn, which is not installed: "
                          "pip install scikit-learn") from error
    bunch = sklearn_load_digits()
    images = torch.from_numpy(bunch.images).float().div_(_MAX_PIXEL).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    return ImageDataset(images, labels, [str(d) for d in range(10)])
