"""dll_ext: fused C++/CUDA kernels for PyTorch with drop-in torch.nn replacements."""
from dll_ext._loader import BuildMismatchError, load_extension

_C = load_extension()

from dll_ext import functional, nn, ops  # noqa: E402  (ops need _C loaded)
from dll_ext.info import info  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BuildMismatchError", "functional", "info", "nn", "ops"]
