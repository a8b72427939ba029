"""Character-level corpora: reading UTF-8 text, a vocabulary of characters, train/validation/test
splits of the character stream and truncated back-propagation-through-time (TBPTT) batches."""
import math
import os
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple, Union

import torch
from torch import Tensor

from dll_ext.data.errors import DataError

__all__ = ["TBPTTBatches", "Vocabulary", "default_corpus", "read_text", "split_text"]

# Characters listed by name in an error, at most.
_SHOWN_UNKNOWN = 20


def read_text(path: str) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped, line endings are kept)."""
    if not os.path.isfile(path):
        raise DataError(f"text file {path} " + ("is not a file" if os.path.exists(path) else "does not exist"))
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"text file {path} is not UTF-8: byte 0x{data[error.start]:02x} at offset "
                        f"{error.start} ({error.reason})") from None
    if not text:
        raise DataError(f"text file {path} is empty")
    return text


def default_corpus() -> str:
    """The default corpus, which every Python installation ships: the help texts of pydoc's
    topics (the values of pydoc_data.topics.topics, joined by newlines; about 465 KB of English
    with code examples)."""
    from pydoc_data.topics import topics
    return "\n".join(topics.values())


def split_text(text: str, validation_fraction: float = 0.05,
               test_fraction: float = 0.05) -> Tuple[str, str, str]:
    """(train, validation, test): consecutive pieces of text, the last two of the given fractions
    of its length. The stream is cut, not shuffled, so each piece reads as continuous text."""
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError(f"split_text: fractions must be >= 0 and leave some training text, got "
                         f"{validation_fraction} and {test_fraction}")
    train_end = len(text) - int(len(text) * (validation_fraction + test_fraction))
    validation_end = train_end + int(len(text) * validation_fraction)
    return text[:train_end], text[train_end:validation_end], text[validation_end:]


def _describe(characters: Iterable[str]) -> str:
    shown = sorted(characters)
    listed = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in shown[:_SHOWN_UNKNOWN])
    more = len(shown) - _SHOWN_UNKNOWN
    return listed + (f" and {more} more" if more > 0 else "")


class Vocabulary:
    """Ids for single characters, after the special symbols SPECIALS: here <pad> (id 0) and <unk>
    (id 1, what characters outside the vocabulary map to when asked). A subclass may list more
    specials (with their ids as class attributes); the characters' ids follow them."""

    PAD = "<pad>"
    UNK = "<unk>"
    SPECIALS: Tuple[str, ...] = (PAD, UNK)
    pad_id = 0
    unk_id = 1

    def __init__(self, characters: Iterable[str]) -> None:
        characters = list(characters)
        if not all(isinstance(c, str) and len(c) == 1 for c in characters) or len(set(characters)) != len(characters):
            raise ValueError("Vocabulary: characters must be distinct one-character strings")
        self.symbols: List[str] = list(self.SPECIALS) + characters
        self._ids: Dict[str, int] = {c: i for i, c in enumerate(characters, start=len(self.SPECIALS))}

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        """Every character of text, in code point order."""
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.symbols == other.symbols

    def encode(self, text: str, map_unknown: bool = False) -> Tensor:
        """The ids of text's characters, int64 (len(text),). A character outside the vocabulary
        raises DataError naming every such character, unless map_unknown maps them to <unk>."""
        if not map_unknown:
            unknown = set(text).difference(self._ids)
            if unknown:
                raise DataError(f"characters not in the vocabulary: {_describe(unknown)}")
        return torch.tensor([self._ids.get(c, self.unk_id) for c in text], dtype=torch.int64)

    def decode(self, ids: Union[Tensor, Sequence[int]]) -> str:
        """The text of ids; the special symbols read as their names (<pad>, <unk>)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return "".join(self.symbols[i] for i in ids)

    def to_dict(self) -> Dict[str, List[str]]:
        """Plain types only, for a checkpoint that torch.load(weights_only=True) reads back."""
        return {"characters": self.symbols[len(self.SPECIALS):]}

    @classmethod
    def from_dict(cls, state: object) -> "Vocabulary":
        """The vocabulary to_dict described; DataError when state is not such a description."""
        characters = state.get("characters") if isinstance(state, dict) else None
        if not isinstance(characters, list):
            raise DataError("not a vocabulary: expected a dict with a list of characters under 'characters'")
        try:
            return cls(characters)
        except ValueError as error:
            raise DataError(f"not a vocabulary: {error}") from None


class TBPTTBatches:
    """Truncated-BPTT batches of a token stream: the stream is cut into batch_size contiguous
    rows, and iterating yields (inputs, targets) chunks, both int64 (batch_size, T) with
    T = bptt (the last chunk may be shorter), targets being the inputs shifted by one token.
    Row r of a chunk continues row r of the chunk before, so a model's state at the end of
    one chunk is the right initial state for the next (detach it between chunks).

    For data-parallel training, each of world_size processes passes its rank: the stream is
    cut into batch_size * world_size rows and this process gets its own batch_size of them,
    with as many chunks as every other process. Chunks are views of ids, on its device.
    """

    def __init__(self, ids: Tensor, batch_size: int, bptt: int, rank: int = 0, world_size: int = 1) -> None:
        if ids.dim() != 1 or batch_size < 1 or bptt < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TBPTTBatches: needs 1-D ids, batch_size >= 1, bptt >= 1 and 0 <= rank < world_size, "
                             f"got {tuple(ids.shape)}, {batch_size}, {bptt}, {rank}, {world_size}")
        rows = batch_size * world_size
        # Every target is the next token, so the rows share len(ids) - 1 (input, target) pairs.
        self.row_length = (len(ids) - 1) // rows
        if self.row_length < 1:
            raise DataError(f"a stream of {len(ids)} tokens is too short for {rows} rows of at least one "
                            "(input, target) pair")
        used = rows * self.row_length
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        self.inputs = ids[:used].view(rows, self.row_length)[mine]
        self.targets = ids[1:used + 1].view(rows, self.row_length)[mine]
        self.bptt = bptt

    def __len__(self) -> int:
        return math.ceil(self.row_length / self.bptt)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        for start in range(0, self.row_length, self.bptt):
            yield self.inputs[:, start:start + self.bptt], self.targets[:, start:start + self.bptt]
