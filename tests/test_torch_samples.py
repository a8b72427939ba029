"""PyTorch's own sample and error inputs (torch.testing._internal's module and op databases)
run against dll_ext's drop-ins: every sample PyTorch accepts, ours accepts and matches, forward
and every gradient, float32 and float64, train and eval, with identical initial weights for
the same seed; every bad input raises the exception class PyTorch raises. A new torch release
that adds samples shows here what changed. Skipped when a torch release moves the databases.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

import dll_ext.nn as dn
from dll_ext.functional import conv2d_relu, scaled_dot_product_attention

try:
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
except Exception as error:  # noqa: BLE001 (an import of torch internals may fail in any way)
    pytest.skip(f"torch.testing._internal's databases are not importable here: {error}", allow_module_level=True)
finally:
    # Importing torch's test utilities freezes the torch.backends flags for the whole process
    # (torch.backends.disable_global_flags); the other test modules set them.
    # (torch.backends is a wrapper module: the flag lives in the functions' globals).
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True

# float32: summation orders differ (our tiles against PyTorch's); float64 shows the math is the same.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-12)}
DTYPES = [torch.float32, torch.float64]


def ours_like_layer(layer):
    """A dll_ext Transformer layer with the configuration and weights of a torch.nn one (the
    samples of nn.TransformerEncoder pass one to the constructor)."""
    encoder = isinstance(layer, nn.TransformerEncoderLayer)
    ours_cls = dn.TransformerEncoderLayer if encoder else dn.TransformerDecoderLayer
    ours = ours_cls(layer.self_attn.embed_dim, layer.self_attn.num_heads, layer.linear1.out_features,
                    layer.dropout.p, layer.activation, layer.norm1.eps, layer.self_attn.batch_first, layer.norm_first,
                    bias=layer.linear1.bias is not None, dtype=layer.linear1.weight.dtype)
    ours.load_state_dict(layer.state_dict())
    return ours


class ConvReLU(nn.Module):
    """torch.nn's Conv2d then ReLU: what dll_ext.nn.Conv2dReLU replaces."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(*args, **kwargs)

    def forward(self, x):
        return F.relu(self.conv(x))


# torch.nn module -> (the native module to compare with, the constructor of ours).
MODULES = {
    nn.LSTM: (nn.LSTM, dn.LSTM),
    nn.LSTMCell: (nn.LSTMCell, dn.LSTMCell),
    nn.MultiheadAttention: (nn.MultiheadAttention, dn.MultiheadAttention),
    nn.TransformerEncoderLayer: (nn.TransformerEncoderLayer, dn.TransformerEncoderLayer),
    nn.TransformerDecoderLayer: (nn.TransformerDecoderLayer, dn.TransformerDecoderLayer),
    nn.TransformerEncoder: (nn.TransformerEncoder, dn.TransformerEncoder),
    nn.Transformer: (nn.Transformer, dn.Transformer),
    nn.Conv2d: (ConvReLU, dn.Conv2dReLU),
}
INFOS = [info for info in module_db if info.module_cls in MODULES]


def documented_refusal(module_cls, kwargs):
    """Samples ours refuses on purpose (README, drop-in notes)."""
    return module_cls is nn.LSTM and kwargs.get("proj_size", 0) > 0


def build(cls, args, kwargs, dtype):
    args = [ours_like_layer(a) if cls is dn.TransformerEncoder and isinstance(a, nn.Module) else a for a in args]
    torch.manual_seed(0)
    return cls(*args, **kwargs).to(dtype)


def tensors(tree):
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def state_of(module):
    # Conv2dReLU's parameters are named as nn.Conv2d's; ConvReLU's carry the prefix conv.
    return {k.removeprefix("conv."): v for k, v in module.state_dict().items()}


def run_sample(info, sample, dtype, training):
    """'passed', 'refused' (documented), or 'skipped' (PyTorch refuses it too); raises on a
    mismatch or an undocumented refusal."""
    native_cls, ours_cls = MODULES[info.module_cls]
    c, f = sample.constructor_input, sample.forward_input
    try:
        native = build(native_cls, c.args, c.kwargs, dtype).train(training)
        expected = native(*copy.copy(f.args), **f.kwargs)
    except Exception:  # noqa: BLE001 (PyTorch refuses the sample: nothing to match)
        return "skipped"
    try:
        ours = build(ours_cls, c.args, c.kwargs, dtype).train(training)
    except Exception:
        if documented_refusal(info.module_cls, c.kwargs):
            return "refused"
        raise
    assert state_of(ours).keys() == state_of(native).keys()
    for name, value in state_of(native).items():
        torch.testing.assert_close(state_of(ours)[name], value, rtol=0, atol=0, msg=f"initial {name}")
    got = ours(*copy.copy(f.args), **f.kwargs)
    got_t, expected_t = tensors(got), tensors(expected)
    assert len(got_t) == len(expected_t)
    for a, e in zip(got_t, expected_t):
        torch.testing.assert_close(a, e, **TOL[dtype])
    # Every gradient: of the parameters and of the inputs that require grad.
    outputs = [(a, e) for a, e in zip(got_t, expected_t) if e.requires_grad]
    if not outputs:
        return "passed"
    generator = torch.Generator().manual_seed(1)
    seeds = [torch.randn(e.shape, generator=generator, dtype=e.dtype) for _, e in outputs]
    inputs = [t for t in tensors((f.args, f.kwargs)) if t.requires_grad]

    def grads(module, side):
        params = [p for _, p in sorted(state_params(module).items())]
        return torch.autograd.grad([o[side] for o in outputs], params + inputs, seeds, allow_unused=True)

    for a, e in zip(grads(ours, 0), grads(native, 1)):
        if e is None:
            assert a is None or not a.any()
            continue
        torch.testing.assert_close(a, e, **TOL[dtype])
    return "passed"


def state_params(module):
    return {k.removeprefix("conv."): p for k, p in module.named_parameters()}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("info", INFOS, ids=[i.module_cls.__name__ for i in INFOS])
def test_module_samples_match_torch_nn(info, dtype, training):
    samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)
    results = [run_sample(info, sample, dtype, training) for sample in samples]
    assert results.count("passed") > 0, f"no sample of {info.module_cls.__name__} ran"


@pytest.mark.parametrize("info", [i for i in INFOS if i.module_error_inputs_func], ids=lambda i: i.module_cls.__name__)
def test_module_error_inputs_raise_what_torch_nn_raises(info):
    _, ours_cls = MODULES[info.module_cls]
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                           training=True)
    for error in errors:
        c, f = error.module_error_input.constructor_input, error.module_error_input.forward_input
        with pytest.raises(error.error_type) as raised:
            module = ours_cls(*c.args, **c.kwargs)
            assert error.error_on == ModuleErrorEnum.FORWARD_ERROR, "construction should have failed"
            module(*f.args, **f.kwargs)
        assert str(raised.value), f"an empty message for {error.error_regex!r}"


def op_info(name):
    return next(o for o in op_db if o.name == name)


def relu_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.relu(F.conv2d(input, weight, bias, stride, padding, dilation, groups))


# op name -> (ours, the composition ours replaces)
OPS = {
    "nn.functional.scaled_dot_product_attention": (scaled_dot_product_attention, F.scaled_dot_product_attention),
    "nn.functional.conv2d": (conv2d_relu, relu_conv2d),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_op_samples_match_torch(name, dtype):
    ours, native = OPS[name]
    samples = list(op_info(name).sample_inputs("cpu", dtype, requires_grad=True))
    assert samples
    for sample in samples:
        args, kwargs = [sample.input, *sample.args], dict(sample.kwargs)
        dropout = kwargs.get("dropout_p", 0.0) > 0
        got = ours(*args, **kwargs)
        expected = native(*args, **kwargs)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        if dropout:  # each side draws its own dropout mask: only the shape can match
            continue
        # A query row with every key masked: PyTorch gives NaN, ours zeros (documented).
        expected = expected.nan_to_num(0.0)
        torch.testing.assert_close(got, expected, **TOL[dtype])
        inputs = [t for t in tensors((args, kwargs)) if t.requires_grad]
        seed = torch.randn(got.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
        for a, e in zip(torch.autograd.grad(got, inputs, seed), torch.autograd.grad(expected, inputs, seed)):
            torch.testing.assert_close(a, e.nan_to_num(0.0), **TOL[dtype])


@pytest.mark.parametrize("name", [n for n in OPS if op_info(n).error_inputs_func])
def test_op_error_inputs_raise_what_torch_raises(name):
    ours, _ = OPS[name]
    for error in op_info(name).error_inputs(torch.device("cpu")):
        sample = error.sample_input
        with pytest.raises(error.error_type) as raised:
            ours(sample.input, *sample.args, **sample.kwargs)
        assert str(raised.value)
