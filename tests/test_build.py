"""The build's contract: version check at import, toolkit discovery, `dll-ext info`."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

import dll_ext
from dll_ext import _loader, _toolkit


def test_mismatched_torch_is_refused_naming_both_versions(monkeypatch):
    fake_config = types.SimpleNamespace(TORCH_VERSION="2.6.0+cu124")
    monkeypatch.setattr(_loader, "build_config", lambda: fake_config)
    with pytest.raises(dll_ext.BuildMismatchError) as info:
        _loader.load_extension()
    message = str(info.value)
    assert "2.6.0+cu124" in message and torch.__version__ in message
    assert "rebuild" in message


def test_matching_torch_loads():
    assert _loader.load_extension() is dll_ext._C


def test_wrapper_nvcc_folder_is_not_taken_for_a_toolkit(tmp_path, monkeypatch):
    # An nvcc that is a wrapper script in a folder with no CUDA libraries beside it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "nvcc"
    wrapper.write_text("#!/bin/sh\nexec /nowhere/nvcc \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    found = _toolkit.find_cuda_home()
    assert found != str(tmp_path)
    if found is not None:
        assert os.path.isfile(os.path.join(found, "bin", "nvcc"))


def test_toolkit_from_cuda_home(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "libcudart.so").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert _toolkit.find_cuda_home() == os.path.realpath(tmp_path)


def test_info_lists_versions_and_op_backends():
    data = dll_ext.info()
    assert data["torch_running"] == torch.__version__
    assert data["dll_ext_torch_built"] == torch.__version__
    assert data["ops"]["conv2d_relu"][:1] == ["CPU"]
    assert {"Meta", "Autograd"} <= set(data["ops"]["conv2d_relu"])
    assert "Meta" in data["ops"]["conv2d_relu_backward"]
    assert ("CUDA" in data["ops"]["conv2d_relu"]) == data["cuda_built"]
    assert "CompositeExplicitAutograd" in data["ops"]["attention"]


def test_info_command():
    result = subprocess.run(
        [sys.executable, "-m", "dll_ext.cli", "info", "--json"], capture_output=True, text=True, check=True
    )
    data = json.loads(result.stdout)
    assert data["torch_running"] == torch.__version__
    assert "conv2d_relu" in data["ops"]
