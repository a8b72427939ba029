"""The Python-free deployment path: CMakeLists.txt builds libdll_ext_ops.so and dll_infer, and
dll_infer runs a scripted model of dll_ext layers exactly as Python does.

The CMake project is built once per test session into a temporary folder (the dll_infer
fixture of conftest.py).
"""
import pytest
import torch
import torch.nn as nn

import dll_ext  # noqa: F401  (registers torch.ops.dll_ext for scripting and the reference run)
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import run_command
from dll_ext.nn import LSTM, Conv2dReLU, LSTMCell

pytestmark = pytest.mark.slow


class ConvNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = Conv2dReLU(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = Conv2dReLU(8, 16, 3, padding="same")
        self.fc = nn.Linear(16 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv2(self.pool(self.conv1(x))), 1))


class TwoInputs(nn.Module):
    """forward with two tensor arguments, fed from a saved tuple."""

    def __init__(self):
        super().__init__()
        self.conv = Conv2dReLU(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x) - self.conv(y)


class Tagger(nn.Module):
    """Every LSTM op: a bidirectional 2-layer LSTM over packed and padded input, and a cell."""

    def __init__(self):
        super().__init__()
        self.lstm = LSTM(5, 6, 2, bidirectional=True, batch_first=True)
        self.cell = LSTMCell(5, 6)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed, (h, c) = self.lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        states, _ = pad_packed_sequence(packed, batch_first=True, total_length=x.size(1))
        padded, _ = self.lstm(x)
        h1, c1 = self.cell(x[:, 0], (h[-1], c[-1]))
        return self.fc(states + padded) + (h1 + c1).sum(-1, keepdim=True).unsqueeze(1)


def _infer(exe, *args):
    return run_command([str(exe), *map(str, args)], 120)


def _script(module, path):
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def test_convnet_matches_python(dll_infer, tmp_path):
    torch.manual_seed(0)
    model = _script(ConvNet(), tmp_path / "convnet.pt")
    x = torch.randn(4, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    with torch.inference_mode():
        expected = torch.jit.load(str(model))(x)

    result = _infer(dll_infer, model, "--input", tmp_path / "x.pt", "--output", tmp_path / "y.pt",
                    "--device", "cpu")

    assert result.returncode == 0, result.stderr
    out = torch.load(tmp_path / "y.pt")
    assert isinstance(out, torch.Tensor) and out.shape == (4, 10)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_lstm_tagger_matches_python(dll_infer, tmp_path):
    torch.manual_seed(2)
    model = _script(Tagger(), tmp_path / "tagger.pt")
    x, lengths = torch.randn(3, 7, 5), torch.tensor([4, 7, 2])
    torch.save((x, lengths), tmp_path / "in.pt")
    with torch.inference_mode():
        expected = torch.jit.load(str(model))(x, lengths)

    result = _infer(dll_infer, model, "--input", tmp_path / "in.pt", "--output", tmp_path / "out.pt")

    assert result.returncode == 0, result.stderr
    out = torch.load(tmp_path / "out.pt")
    assert out.shape == (3, 7, 3)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_tuple_input_gives_positional_arguments(dll_infer, tmp_path):
    torch.manual_seed(1)
    model = _script(TwoInputs(), tmp_path / "two.pt")
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    torch.save((x, y), tmp_path / "xy.pt")
    with torch.inference_mode():
        expected = torch.jit.load(str(model))(x, y)

    result = _infer(dll_infer, model, "--input", tmp_path / "xy.pt", "--output", tmp_path / "out.pt")

    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["model.pt"],
        ["model.pt", "--input", "x.pt"],
        ["model.pt", "--input", "x.pt", "--output"],
        ["model.pt", "--input", "x.pt", "--output", "y.pt", "--device", "tpu"],
        ["model.pt", "--input", "x.pt", "--output", "y.pt", "--bogus"],
    ],
    ids=["nothing", "no-input", "no-output", "missing-value", "bad-device", "unknown-option"],
)
def test_bad_usage_exits_2(dll_infer, tmp_path, args):
    result = _infer(dll_infer, *args)
    assert result.returncode == 2
    assert "usage: dll_infer" in result.stderr


def test_missing_model_exits_1(dll_infer, tmp_path):
    torch.save(torch.randn(1, 3, 16, 16), tmp_path / "x.pt")
    missing = tmp_path / "no-such-model.pt"

    result = _infer(dll_infer, missing, "--input", tmp_path / "x.pt", "--output", tmp_path / "y.pt")

    assert result.returncode == 1
    assert "loading model" in result.stderr and str(missing) in result.stderr
    assert "frame #" not in result.stderr  # no C++ stack trace
    assert not (tmp_path / "y.pt").exists()


def test_op_error_exits_1_with_the_ops_message(dll_infer, tmp_path):
    model = _script(ConvNet(), tmp_path / "convnet.pt")
    torch.save(torch.randn(2, 5, 16, 16), tmp_path / "x.pt")  # 5 channels, conv1 wants 3

    result = _infer(dll_infer, model, "--input", tmp_path / "x.pt", "--output", tmp_path / "y.pt")

    assert result.returncode == 1
    assert "conv2d_relu: weight.size(1) must be" in result.stderr


def test_input_of_wrong_kind_exits_1(dll_infer, tmp_path):
    model = _script(ConvNet(), tmp_path / "convnet.pt")
    torch.save({"x": torch.randn(1, 3, 16, 16)}, tmp_path / "x.pt")

    result = _infer(dll_infer, model, "--input", tmp_path / "x.pt", "--output", tmp_path / "y.pt")

    assert result.returncode == 1
    assert "tensor or a tuple/list of tensors" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_gpu_exits_1(dll_infer, tmp_path):
    model = _script(ConvNet(), tmp_path / "convnet.pt")
    torch.save(torch.randn(1, 3, 16, 16), tmp_path / "x.pt")

    result = _infer(dll_infer, model, "--input", tmp_path / "x.pt", "--output", tmp_path / "y.pt",
                    "--device", "cuda")

    assert result.returncode == 1
    assert "CUDA is not available" in result.stderr


def test_help_exits_0(dll_infer):
    result = _infer(dll_infer, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: dll_infer")

