"""A character-level LSTM language model with state carried across TBPTT chunks, and text generation."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dll_ext.models.layers import lstm

__all__ = ["CharLM"]

State = Tuple[Tensor, Tensor]


def _next_token(logits: Tensor, greedy: bool, temperature: float, top_k: Optional[int],
                generator: Optional[torch.Generator]) -> Tensor:
    """The next token id (a 0-d int64 tensor on logits' device) from one position's logits (V,)."""
    if greedy:
        return logits.argmax()
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        kth_largest = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probabilities = F.softmax(logits, dim=-1)
    # Drawn where the generator lives, so a CPU generator also samples for a model on a GPU.
    if generator is not None:
        probabilities = probabilities.to(generator.device)
    return torch.multinomial(probabilities, 1, generator=generator)[0].to(logits.device)


class CharLM(nn.Module):
    """output(dropout(LSTM(dropout(embedding(tokens))))): an embedding of the vocab_size
    characters, a dll_ext.nn.LSTM (native: nn.LSTM) of num_layers layers, batch-first, and a
    linear layer to next-character logits. dropout applies to the embeddings, the LSTM's
    output and, with num_layers > 1, between its layers.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 64, hidden_size: int = 512, num_layers: int = 2,
                 dropout: float = 0.0, native: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = lstm(embedding_dim, hidden_size, num_layers, batch_first=True,
                         dropout=dropout if num_layers > 1 else 0.0, native=native)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        """tokens int64 (B, T), state (h, c) each (num_layers, B, hidden_size) or None (zeros)
        -> (logits (B, T, vocab_size), the state after the last step). Pass the state on,
        detached, to the next chunk of the same rows."""
        output, state = self.lstm(self.dropout(self.embedding(tokens)), state)
        return self.output(self.dropout(output)), state

    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, length: int, greedy: bool = False, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """The `length` token ids that follow prompt_ids (1-D int64, not empty), int64 (length,).

        Each step feeds the previous choice back in: greedy takes the most likely token (greedy
        search); otherwise a token is sampled from softmax(logits / temperature), restricted to
        the top_k most likely when top_k is given, with `generator` (on any device) for
        reproducible samples. Runs in evaluation mode (no dropout) and restores the mode after.
        """
        if prompt_ids.dim() != 1 or prompt_ids.numel() == 0:
            raise ValueError(f"generate: prompt_ids must be a non-empty 1-D tensor, got {tuple(prompt_ids.shape)}")
        if length < 0 or temperature <= 0 or (top_k is not None and top_k < 1):
            raise ValueError(f"generate: needs length >= 0, temperature > 0 and top_k >= 1, got {length}, "
                             f"{temperature}, {top_k}")
        device = self.embedding.weight.device
        was_training = self.training
        self.eval()
        try:
            inputs = prompt_ids.to(device).unsqueeze(0)
            state = None
            generated = []
            for _ in range(length):
                logits, state = self(inputs, state)
                token = _next_token(logits[0, -1], greedy, temperature, top_k, generator)
                generated.append(token)
                inputs = token.view(1, 1)
        finally:
            self.train(was_training)
        return torch.stack(generated) if generated else torch.empty(0, dtype=torch.int64, device=device)
