"""Conv2dReLU: nn.Conv2d followed by ReLU as one fused op, and a pass that fuses models."""
import copy
from typing import List

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from dll_ext.ops.conv_relu import conv2d_relu, same_padding

__all__ = ["Conv2dReLU", "fuse_conv_relu"]


class Conv2dReLU(nn.Conv2d):
    """relu(conv2d(x)) through dll_ext.ops.conv_relu.conv2d_relu.

    The constructor, parameters, initialisation and state_dict are nn.Conv2d's (it is a
    subclass), so an nn.Conv2d state_dict loads into it and back. All padding modes work:
    'reflect', 'replicate' and 'circular' pad the input first, as nn.Conv2d does.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Static per module, so forward stays scriptable: the symmetric padding the op gets and
        # what must be padded onto the input first (F.pad order: left, right, top, bottom).
        self._op_padding: List[int] = [0, 0]
        self._input_padding: List[int] = [0, 0, 0, 0]
        if self.padding_mode != "zeros":
            self._input_padding = list(self._reversed_padding_repeated_twice)
        elif self.padding == "same":
            self._op_padding, self._input_padding = same_padding(list(self.kernel_size), list(self.dilation))
        elif self.padding != "valid":
            self._op_padding = [int(p) for p in self.padding]

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "Conv2dReLU":
        """A Conv2dReLU with conv's configuration and a copy of its parameters."""
        fused = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        fused.load_state_dict(conv.state_dict())
        for name, param in fused.named_parameters():
            param.requires_grad_(getattr(conv, name).requires_grad)  # a frozen conv stays frozen
        fused.train(conv.training)
        return fused

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._input_padding != [0, 0, 0, 0]:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            input = F.pad(input, self._input_padding, mode=mode)
        return conv2d_relu(input, self.weight, self.bias, list(self.stride), self._op_padding, list(self.dilation),
                           self.groups)


def _is_relu_module(module: nn.Module) -> bool:
    return type(module) is nn.ReLU


def _fused(conv: nn.Conv2d) -> Conv2dReLU:
    """The Conv2dReLU that replaces conv in a model: it holds conv's own Parameter objects,
    so weight tying, requires_grad and optimizers built over the model keep working."""
    fused = Conv2dReLU.from_conv(conv)
    fused.weight = conv.weight
    fused.bias = conv.bias
    return fused


def _fuse_sequentials(model: nn.Module) -> int:
    """Fuse (Conv2d, ReLU) neighbours inside every nn.Sequential, in place.

    The ReLU's slot becomes nn.Identity so later indices, and so state_dict keys, stay put.
    Only containers that run nn.Sequential's own forward are rewritten: a subclass with its
    own forward may use its entries in any other way.
    """
    fused = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, relu = module._modules[first], module._modules[second]
            if type(conv) is nn.Conv2d and _is_relu_module(relu):
                module._modules[first] = _fused(conv)
                module._modules[second] = nn.Identity()
                fused += 1
    return fused


_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


def _is_relu_node(node: torch.fx.Node, modules) -> bool:
    if node.op == "call_module":
        return _is_relu_module(modules[node.target])
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


class _Tracer(torch.fx.Tracer):
    """Keeps Conv2dReLU a leaf, as torch.nn modules are, rather than tracing into it."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, Conv2dReLU) or super().is_leaf_module(module, qualified_name)


def _graph_module(model: nn.Module, graph: torch.fx.Graph) -> torch.fx.GraphModule:
    """A GraphModule running `graph` that keeps model's whole module tree and state.

    GraphModule alone copies only what the graph uses, with plain nn.Module stand-ins for
    the containers on the way; parameters, buffers and modules that forward does not use
    would drop out of the state_dict and, say, model.features[0] would stop working.
    """
    graph_module = torch.fx.GraphModule(model, graph, model.__class__.__name__)
    for name, child in model.named_children():
        setattr(graph_module, name, child)
    for name, param in model.named_parameters(recurse=False):
        graph_module.register_parameter(name, param)
    for name, buffer in model.named_buffers(recurse=False):
        graph_module.register_buffer(name, buffer, persistent=name not in model._non_persistent_buffers_set)
    # Tensors that were plain attributes of the model come back as buffers; keep them out of
    # the state_dict, as they were.
    for name in graph_module._buffers:
        if name not in model._buffers:
            graph_module._non_persistent_buffers_set.add(name)
    return graph_module


def _fuse_graph(model: nn.Module) -> nn.Module:
    """Fuse every nn.Conv2d call whose only user is a ReLU (module, function or method)."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # untraceable: data-dependent control flow, len() of a proxy, ...
        return model
    graph_module = _graph_module(model, graph)
    modules = dict(graph_module.named_modules())
    calls = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or type(modules[node.target]) is not nn.Conv2d:
            continue
        users = list(node.users)
        # A conv module called from several places, or whose output is also used before
        # the ReLU, must stay as it is.
        if calls[node.target] != 1 or len(users) != 1 or not _is_relu_node(users[0], modules):
            continue
        relu = users[0]
        parent_name, _, name = node.target.rpartition(".")
        parent = graph_module.get_submodule(parent_name) if parent_name else graph_module
        setattr(parent, name, _fused(modules[node.target]))
        relu.replace_all_uses_with(node)
        graph_module.graph.erase_node(relu)
        fused += 1
    if not fused:
        return model
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module


def fuse_conv_relu(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Rewrite every nn.Conv2d directly followed by a ReLU into a Conv2dReLU.

    nn.Sequential containers are rewritten in place of their modules (the ReLU becomes
    nn.Identity); any other ReLU after a conv is found by tracing the model with torch.fx,
    which then returns a GraphModule. An untraceable model keeps the Sequential fusions only.
    The returned model computes the same outputs; state_dict keys are unchanged.
    """
    if not inplace:
        model = copy.deepcopy(model)
    _fuse_sequentials(model)
    return _fuse_graph(model)
