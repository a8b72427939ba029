"""The character LM of `dll-ext train charlm`: greedy generation inside the scripted module."""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.export import Dim

from dll_ext.data import Vocabulary
from dll_ext.models import CharLM

KIND = "char_lm"


def load_model(config: Dict[str, Any], options: Dict[str, Any]) -> nn.Module:
    vocabulary = Vocabulary.from_dict(config["vocabulary"])
    return CharLM(len(vocabulary), **config["model"], native=options.get("native", False))


class CharLMInference(nn.Module):
    """forward(tokens int64 (B, T), h, c each (layers, B, hidden)) -> (logits (B, T, vocabulary),
    h, c): one call of the LM with its state explicit (zeros: a fresh start);
    generate(prompt_ids int64 (P,), length) -> the `length` ids greedy search writes after the
    prompt, the same as CharLM.generate(greedy=True).

    vocabulary: the symbols in id order, <pad> (id `pad`) and <unk> (id `unk`) included."""

    kind: str
    vocabulary: List[str]
    pad: int
    unk: int
    num_layers: int
    hidden_size: int

    def __init__(self, model: CharLM, config: Dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        vocabulary = Vocabulary.from_dict(config["vocabulary"])
        self.kind = KIND
        self.vocabulary = list(vocabulary.symbols)
        self.pad, self.unk = vocabulary.pad_id, vocabulary.unk_id
        self.num_layers = model.lstm.num_layers
        self.hidden_size = model.lstm.hidden_size

    def forward(self, tokens: Tensor, h: Tensor, c: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        logits, (h, c) = self.model(tokens, (h, c))
        return logits, h, c

    @torch.jit.export
    def generate(self, prompt_ids: Tensor, length: int) -> Tensor:
        if prompt_ids.dim() != 1 or prompt_ids.numel() == 0:
            raise ValueError("generate: prompt_ids must be a non-empty 1-D tensor")
        if length < 0:
            raise ValueError("generate: length must be >= 0")
        if int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= len(self.vocabulary):
            raise ValueError("generate: prompt ids outside the vocabulary")
        generated = torch.empty(length, dtype=torch.int64)
        # The prompt goes in once, then each chosen id, the LSTM state carried between calls:
        # the same calls, in the same order, as CharLM.generate.
        inputs = prompt_ids.unsqueeze(0)
        state: Optional[Tuple[Tensor, Tensor]] = None
        for step in range(length):
            logits, state = self.model(inputs, state)
            token = logits[0, -1].argmax()
            generated[step] = token
            inputs = token.view(1, 1)
        return generated


def inference_module(model: nn.Module, config: Dict[str, Any]) -> nn.Module:
    return CharLMInference(model, config)


def export_inputs(config: Dict[str, Any]) -> Tuple[Tuple[Tensor, ...], Any]:
    sizes = config["model"]
    batch, steps = Dim("batch", min=1, max=65536), Dim("steps", min=1, max=65536)
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    h = torch.zeros(sizes["num_layers"], 2, sizes["hidden_size"])
    return (tokens, h, h.clone()), ({0: batch, 1: steps}, {1: batch}, {1: batch})
