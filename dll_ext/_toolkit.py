"""Locate the CUDA toolkit and the CUDA headers shipped in torch's nvidia-* wheels.

Plain module with no package imports: setup.py loads it before dll_ext is built.
"""
import glob
import os
import shutil


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and (
        glob.glob(os.path.join(path, "lib64", "libcudart*"))
        or glob.glob(os.path.join(path, "targets", "*", "lib", "libcudart*"))
    )


def find_cuda_home():
    """The CUDA toolkit root, or None.

    The nvcc first on PATH can be a wrapper script in an unrelated bin folder, so its
    parent is only trusted when that folder really holds a toolkit (nvcc and libcudart).
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for path in candidates:
        if _is_toolkit(path):
            return os.path.realpath(path)
    return None


def wheel_cuda_include_dirs():
    """Include folders of the nvidia-* wheels (cuBLAS, cuDNN, ...) that ATen's CUDA headers need."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for root in nvidia.__path__:
        for inc in sorted(glob.glob(os.path.join(root, "*", "include"))):
            if glob.glob(os.path.join(inc, "cublas*.h")) or glob.glob(os.path.join(inc, "cudnn*.h")):
                found.append(inc)
    return found
