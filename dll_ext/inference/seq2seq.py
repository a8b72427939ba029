"""The math models of `dll-ext train math-transformer|math-lstm`: greedy decoding inside the
scripted module, for `dll_infer answer`."""
from typing import Any, Dict, List

import torch
import torch.nn as nn
from torch import Tensor

from dll_ext.data import Seq2SeqVocabulary
from dll_ext.data.math import MAX_ANSWER_LENGTH, MAX_QUESTION_LENGTH
from dll_ext.training.pipelines.seq2seq import build_model

KIND = "seq2seq"
# A .pt2 holds one graph of fixed control flow; answering is a loop that stops when every row
# has written <eos>, which torch.export cannot capture, and the teacher-forced forward pass
# alone answers nothing.
AOTI_UNSUPPORTED = ("answering is a decoding loop that ends on the values it produces, which torch.export "
                    "does not capture; the TorchScript model.pt carries it")


def load_model(config: Dict[str, Any], options: Dict[str, Any]) -> nn.Module:
    return build_model(config, Seq2SeqVocabulary.from_dict(config["vocabulary"]), options.get("native", False))


class Seq2SeqInference(nn.Module):
    """greedy(source, source_lengths, max_length) -> answer ids, the model's own greedy decoding
    (the encoder once, then the loop), with the attributes dll_infer reads (see
    dll_ext.inference)."""

    kind: str
    vocabulary: List[str]
    pad: int
    sos: int
    eos: int
    max_length: int
    max_answer_length: int

    def __init__(self, model: nn.Module, config: Dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        vocabulary = Seq2SeqVocabulary.from_dict(config["vocabulary"])
        self.kind = KIND
        self.vocabulary = list(vocabulary.symbols)
        self.pad, self.sos, self.eos = vocabulary.pad_id, vocabulary.sos_id, vocabulary.eos_id
        self.max_length = MAX_QUESTION_LENGTH
        self.max_answer_length = MAX_ANSWER_LENGTH + 1  # and its <eos>

    def forward(self, source: Tensor, source_lengths: Tensor) -> Tensor:
        """The greedy answers, as greedy() with the longest answer the model was trained for."""
        return self.model.greedy(source, source_lengths, self.max_answer_length)

    @torch.jit.export
    def greedy(self, source: Tensor, source_lengths: Tensor, max_length: int) -> Tensor:
        return self.model.greedy(source, source_lengths, max_length)


def inference_module(model: nn.Module, config: Dict[str, Any]) -> nn.Module:
    return Seq2SeqInference(model, config)
