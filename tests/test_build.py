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
from dll_ext.info import format_info


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


def test_info_describes_the_cpu():
    cpu = dll_ext.info()["cpu"]
    assert cpu["model"] and cpu["isa"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["threads"] == torch.get_num_threads()
    for cache in cpu["caches"].values():  # empty where sysfs does not describe them
        assert cache["total_kib"] == cache["size_kib"] * cache["instances"] > 0
    text = format_info(dll_ext.info())
    assert f"  model                  {cpu['model']}" in text.splitlines()
    # The attention tiles this CPU's cache gives, as the kernels choose them.
    assert cpu["attention_tiles"]["float32/S512"] == torch.ops.dll_ext._attention_cpu_tiles(512, 4)
    assert "attention tiles" in text
    assert cpu["lstm_unit_blocks"]["B32/H256"] == torch.ops.dll_ext._lstm_cpu_unit_blocks(32, 256)
    assert "lstm unit blocks" in text


def test_info_command():
    result = subprocess.run(
        [sys.executable, "-m", "dll_ext.cli", "info", "--json"], capture_output=True, text=True, check=True
    )
    data = json.loads(result.stdout)
    assert data["torch_running"] == torch.__version__
    assert "conv2d_relu" in data["ops"]


def _call(op, dtype):
    """One small call of public op `op` in `dtype` on the CPU."""
    if op == "conv2d_relu":
        return torch.ops.dll_ext.conv2d_relu(torch.ones(1, 2, 4, 4, dtype=dtype), torch.ones(3, 2, 3, 3, dtype=dtype),
                                             None, [1, 1], [0, 0], [1, 1], 1)
    if op == "attention":
        q = torch.ones(1, 1, 3, 4, dtype=dtype)
        return torch.ops.dll_ext.attention(q, q, q)
    x, h, w_ih, w_hh = (torch.ones(*s, dtype=dtype) for s in ((2, 3), (2, 4), (16, 3), (16, 4)))
    if op == "lstm_cell":
        return torch.ops.dll_ext.lstm_cell(x, h, h, w_ih, w_hh, None, None)
    if op == "lstm_layer":
        return torch.ops.dll_ext.lstm_layer(x[None], h, h, w_ih, w_hh, None, None)
    return torch.ops.dll_ext.lstm_layer_packed(x, torch.tensor([2]), h, h, w_ih, w_hh, None, None)


@pytest.mark.parametrize("op", list(dll_ext.ops.OPS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_dtype_table_is_what_the_cpu_kernels_take(op, dtype):
    # The table dll-ext info and the tests read is the one the argument checks enforce.
    table = dll_ext.ops.supported_dtypes(op, "cpu")
    if dtype in table:
        assert _call(op, dtype)[0].dtype == dtype
        return
    names = ", ".join(str(t).removeprefix("torch.") for t in table)
    with pytest.raises(RuntimeError, match=rf"is not supported on cpu; supported: {names} \("):
        _call(op, dtype)


def test_info_lists_each_ops_dtypes_per_device():
    data = dll_ext.info()
    for op in dll_ext.ops.OPS:
        for device in ("cpu", "cuda"):
            assert data["dtypes"][op][device] == [str(t).removeprefix("torch.")
                                                  for t in dll_ext.ops.supported_dtypes(op, device)]
    assert "float16" in data["dtypes"]["conv2d_relu"]["cuda"]
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        dll_ext.ops.supported_dtypes("nope", "cpu")
