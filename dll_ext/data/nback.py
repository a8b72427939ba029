"""The course's N-back toy task: for a sequence of symbols in [0, k), say at each position whether the
symbol equals the one n positions back.

The definition followed is the course's (chapter 3.2, "N-back, data generation"), exactly:
- a sequence's length is int(max(n + 1, L)) with L drawn from a normal distribution
  N(mean_length, std_length**2); its symbols are drawn uniformly from [0, k);
- the target at position t is 1 if x[t] == x[t - n] and 0 otherwise, for t >= n, and 0 at the
  first n positions (which have no symbol n back; they are targets of class 0, not padding);
- the draws come from a numpy RandomState in the course's order (the length, then the
  symbols, sequence after sequence), so seed 0 and 1,000 sequences give the course's training set.
Batches differ from the course's in one respect: padded positions of the one-hot input are
zero vectors (the course one-hot encodes its padding symbol 0); the model never reads them.
"""
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IGNORE_INDEX", "NBackCollate", "NBackDataset", "nback_sequence"]

# The target of padded positions, as in the course (nn.CrossEntropyLoss(ignore_index=-1)).
IGNORE_INDEX = -1


def nback_sequence(n: int, k: int, length: int, random_state: np.random.RandomState) -> Tuple[np.ndarray, np.ndarray]:
    """One sequence: symbols (length,) uniform in [0, k) and its targets (length,), both int64."""
    symbols = random_state.randint(k, size=length).astype(np.int64)
    targets = np.zeros(length, dtype=np.int64)
    targets[n:] = symbols[n:] == symbols[:-n]
    return symbols, targets


class NBackDataset(Dataset):
    """num_sequences N-back sequences; item i is (symbols (L_i,), targets (L_i,)), int64.

    seed: an int, or a numpy RandomState to draw from (the course draws its validation set from
    the state its training set left). Attributes n, k, and lengths (a list of the L_i).
    """

    def __init__(self, num_sequences: int, n: int = 3, k: int = 4, mean_length: float = 20.0,
                 std_length: float = 5.0, seed: Union[int, np.random.RandomState] = 0) -> None:
        if n < 1 or k < 2 or num_sequences < 1:
            raise ValueError(f"NBackDataset: needs n >= 1, k >= 2 and num_sequences >= 1, got n={n}, k={k}, "
                             f"num_sequences={num_sequences}")
        random_state = seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)
        self.n, self.k = n, k
        self.sequences: List[Tuple[Tensor, Tensor]] = []
        for _ in range(num_sequences):
            length = int(max(n + 1, random_state.normal(loc=mean_length, scale=std_length)))
            symbols, targets = nback_sequence(n, k, length, random_state)
            self.sequences.append((torch.from_numpy(symbols), torch.from_numpy(targets)))
        self.lengths = [len(symbols) for symbols, _ in self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        return self.sequences[index]


class NBackCollate:
    """Collates a list of (symbols, targets) into a padded batch (a DataLoader's collate_fn):
    (inputs, lengths, targets), with inputs float32 one-hot (B, T, k) (batch_first) or (T, B, k),
    zero at padded positions; lengths int64 (B,) on the CPU, as pack_padded_sequence wants them;
    targets int64 (B, T) or (T, B), ignore_index at padded positions. T is the batch's longest
    sequence."""

    def __init__(self, k: int, batch_first: bool = True, ignore_index: int = IGNORE_INDEX) -> None:
        self.k = k
        self.batch_first = batch_first
        self.ignore_index = ignore_index

    def __call__(self, batch: Sequence[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor, Tensor]:
        lengths = torch.tensor([len(symbols) for symbols, _ in batch], dtype=torch.int64)
        steps = int(lengths.max())
        inputs = torch.zeros(len(batch), steps, self.k)
        targets = torch.full((len(batch), steps), self.ignore_index, dtype=torch.int64)
        for row, (symbols, sequence_targets) in enumerate(batch):
            inputs[row, torch.arange(len(symbols)), symbols] = 1.0
            targets[row, :len(symbols)] = sequence_targets
        if not self.batch_first:
            inputs, targets = inputs.transpose(0, 1).contiguous(), targets.transpose(0, 1).contiguous()
        return inputs, lengths, targets
