"""DeepMind's Mathematics dataset (Saxton et al., "Analysing Mathematical Reasoning Abilities of
Neural Models", 2019) for sequence-to-sequence models.

- A seeded generator of (question, answer) pairs for six of the dataset's modules
  (numbers__place_value, comparison__sort, algebra__linear_1d, numbers__round_number,
  arithmetic__add_or_sub and comparison__pair) with the released distribution, in every released
  split (dll_ext.data.math_modules has the modules); like the original, it discards pairs over
  the dataset's length limits (questions of at most 160 characters, answers of at most 30).
- The released layout, written and read: a folder mathematics_dataset-v1.0 with subfolders
  train-easy, train-medium, train-hard, interpolate and extrapolate, each holding <module>.txt
  files of alternating lines, a question then its answer (extrapolate's files are named after
  the release's extrapolation modules, such as numbers__place_value_big).
- A character vocabulary with <sos> and <eos>, a dataset of encoded pairs and the collate
  function that pads them into batches (batch first).
"""
import os
import random
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from dll_ext.data.errors import DataError
from dll_ext.data.files import require_folder
from dll_ext.data.math_modules import MODULES, Module
from dll_ext.data.text import Vocabulary, read_text

__all__ = ["DATASET_FOLDER", "MAX_ANSWER_LENGTH", "MAX_QUESTION_LENGTH", "MODULES", "PRINTABLE_ASCII", "SPLITS",
           "TRAIN_DIFFICULTIES", "MathDataset", "Seq2SeqBatch", "Seq2SeqCollate", "Seq2SeqVocabulary", "dataset_root",
           "evaluation_splits", "generate", "generate_splits", "list_modules", "load_pairs", "read_pairs",
           "write_dataset", "write_pairs"]

# The released dataset's limits; its generator drops longer pairs, and so does this one.
MAX_QUESTION_LENGTH = 160
MAX_ANSWER_LENGTH = 30

DATASET_FOLDER = "mathematics_dataset-v1.0"
TRAIN_DIFFICULTIES = ("easy", "medium", "hard")
SPLITS = ("train", "interpolate", "extrapolate")
_SPLIT_FOLDERS = tuple(f"train-{d}" for d in TRAIN_DIFFICULTIES) + SPLITS[1:]

Pair = Tuple[str, str]

# ----------------------------------------------------------------------------------------
# Generation (the modules are in dll_ext.data.math_modules)
# ----------------------------------------------------------------------------------------


def _module(name: str) -> Module:
    if name not in MODULES:
        raise ValueError(f"unknown Mathematics module {name!r}; known: {', '.join(MODULES)}")
    return MODULES[name]


def _draw(module: Module, split: str, rng: random.Random) -> Pair:
    """One pair within the length limits (drawn again otherwise, as the released generator does)."""
    while True:
        question, answer = module.draw(rng, split)
        if len(question) <= MAX_QUESTION_LENGTH and len(answer) <= MAX_ANSWER_LENGTH:
            return question, answer


def _random(module: str, seed: int, stream: str) -> random.Random:
    # A string seed is hashed with SHA-512, the same on every run and platform (unlike hash()),
    # so each module, seed and stream gets its own reproducible sequence, independent of the others.
    return random.Random(f"{module}/{seed}/{stream}")


def generate(module: str, count: int, seed: int, split: str = "train") -> List[Pair]:
    """count (question, answer) pairs of a module (a key of MODULES) in a split of the released
    distribution: "train" (the three training difficulties evenly), "train-easy", "train-medium",
    "train-hard", "interpolate" or "extrapolate"; the same for the same seed. Questions may
    repeat, as in the released training data."""
    source = _module(module)
    source.entropy_range(split)  # an unknown split or a missing extrapolate split fails here
    rng = _random(module, seed, split)
    return [_draw(source, split, rng) for _ in range(count)]


def evaluation_splits(module: str) -> Tuple[str, ...]:
    """The splits a module is tested on: interpolate, and extrapolate where the release has it."""
    return ("interpolate", "extrapolate") if _module(module).has_extrapolate else ("interpolate",)


def generate_splits(module: str, train_count: int, test_count: int, seed: int) -> Dict[str, List[Pair]]:
    """{"train": generate(module, train_count, seed), then each of evaluation_splits(module): test_count
    pairs}; every test question is distinct and absent from train."""
    source = _module(module)
    splits = {"train": generate(module, train_count, seed)}
    seen = {question for question, _ in splits["train"]}
    for split in evaluation_splits(module):
        rng = _random(module, seed, split)
        pairs: List[Pair] = []
        # A generous bound on the draws, so that a module with too few distinct questions for the
        # counts fails instead of looping for ever.
        for _ in range(100 * test_count + 1000):
            if len(pairs) == test_count:
                break
            question, answer = _draw(source, split, rng)
            if question not in seen:
                seen.add(question)
                pairs.append((question, answer))
        else:
            raise ValueError(f"{module}: fewer than {test_count} new {split} questions besides {train_count} "
                             f"training pairs")
        splits[split] = pairs
    return splits


# ----------------------------------------------------------------------------------------
# The released layout
# ----------------------------------------------------------------------------------------


def _split_folders(split: str, difficulties: Sequence[str]) -> List[str]:
    """The subfolders a split reads, in order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split != "train":
        return [split]
    unknown = [d for d in difficulties if d not in TRAIN_DIFFICULTIES]
    if unknown or not difficulties:
        raise ValueError(f"difficulties must be some of {', '.join(TRAIN_DIFFICULTIES)}, got {list(difficulties)}")
    return [f"train-{d}" for d in difficulties]


def dataset_root(folder: str) -> str:
    """The dataset's folder: folder itself, or its subfolder mathematics_dataset-v1.0."""
    nested = os.path.join(folder, DATASET_FOLDER)
    if os.path.isdir(nested):
        return nested
    require_folder(folder, "Mathematics dataset folder")
    if not any(os.path.isdir(os.path.join(folder, name)) for name in _SPLIT_FOLDERS):
        raise DataError(f"Mathematics dataset: {folder} has neither a {DATASET_FOLDER} folder nor any of the "
                        f"folders {', '.join(_SPLIT_FOLDERS)}")
    return folder


def list_modules(folder: str, split: str = "train", difficulties: Sequence[str] = TRAIN_DIFFICULTIES) -> List[str]:
    """The modules with a file in the split's folders, sorted."""
    root = dataset_root(folder)
    modules = set()
    for name in _split_folders(split, difficulties):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            modules.update(entry[:-len(".txt")] for entry in os.listdir(path) if entry.endswith(".txt"))
    return sorted(modules)


def read_pairs(path: str) -> List[Pair]:
    """The (question, answer) pairs of one module file: UTF-8, a question line then its answer
    line, the last line ended by a newline or not (CRLF line ends are read as well)."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"Mathematics dataset: {path} is empty (blank lines only)")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # what follows the final newline
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if len(lines) % 2:
        raise DataError(f"Mathematics dataset: {path} has an odd number of lines ({len(lines)}): the question on "
                        f"line {len(lines)} has no answer")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            what = "question" if number % 2 else "answer"
            raise DataError(f"Mathematics dataset: {path} line {number}: empty {what}")
    return list(zip(lines[0::2], lines[1::2]))


def _file_module(module: str, split: str) -> str:
    """The module's file name in a split: the release names extrapolate files after its
    extrapolation modules (numbers__place_value_big); modules it lacks keep their name."""
    if split == "extrapolate" and module in MODULES and MODULES[module].has_extrapolate:
        return MODULES[module].extrapolate_module
    return module


def load_pairs(folder: str, module: str, split: str = "train",
               difficulties: Sequence[str] = TRAIN_DIFFICULTIES) -> List[Pair]:
    """A module's (question, answer) pairs in a split: "train" (the files of train-easy,
    train-medium and train-hard that exist, in that order, or of the given difficulties),
    "interpolate" or "extrapolate". folder is mathematics_dataset-v1.0 or the folder holding it."""
    names = _split_folders(split, difficulties)
    root = dataset_root(folder)
    paths = [os.path.join(root, name, _file_module(module, split) + ".txt") for name in names]
    existing = [path for path in paths if os.path.isfile(path)]
    if not existing:
        present = ", ".join(list_modules(root, split, difficulties)) or "none"
        raise DataError(f"Mathematics dataset: no {split} file of module {module!r}: expected "
                        f"{' or '.join(paths)}; modules present: {present}")
    return [pair for path in existing for pair in read_pairs(path)]


def write_pairs(path: str, pairs: Iterable[Pair]) -> None:
    """A module file in the released format: each question's line, then its answer's."""
    lines = []
    for question, answer in pairs:
        for text in (question, answer):
            if not text.strip() or "\n" in text or "\r" in text:
                raise ValueError(f"write_pairs: questions and answers must be one non-empty line, got {text!r}")
            lines.append(text + "\n")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)


def write_dataset(folder: str, modules: Iterable[str], train_count: int, test_count: int, seed: int) -> str:
    """Generated data in the released layout, in folder (created if needed; name it
    mathematics_dataset-v1.0 to match the release): train_count pairs of each module in each of
    train-easy, train-medium and train-hard, and generate_splits' test pairs in interpolate and
    (for modules that have it) extrapolate. Returns folder."""
    for module in modules:
        splits = generate_splits(module, 0, test_count, seed)
        for difficulty in TRAIN_DIFFICULTIES:
            splits[f"train-{difficulty}"] = generate(module, train_count, seed, f"train-{difficulty}")
        del splits["train"]
        for split, pairs in splits.items():
            os.makedirs(os.path.join(folder, split), exist_ok=True)
            write_pairs(os.path.join(folder, split, _file_module(module, split) + ".txt"), pairs)
    return folder


# ----------------------------------------------------------------------------------------
# Vocabulary, dataset and batches
# ----------------------------------------------------------------------------------------


PRINTABLE_ASCII = "".join(map(chr, range(0x20, 0x7F)))


class Seq2SeqVocabulary(Vocabulary):
    """A character Vocabulary with the specials <pad> (id 0), <sos> (1), <eos> (2) and <unk> (3)
    before the characters: a decoder reads <sos> first and writes <eos> last."""

    SOS = "<sos>"
    EOS = "<eos>"
    SPECIALS = (Vocabulary.PAD, SOS, EOS, Vocabulary.UNK)
    sos_id = 1
    eos_id = 2
    unk_id = 3

    @classmethod
    def from_pairs(cls, pairs: Iterable[Pair]) -> "Seq2SeqVocabulary":
        """Every character of the questions and answers, in code point order."""
        return cls.from_text("".join(question + answer for question, answer in pairs))

    @classmethod
    def printable_ascii(cls) -> "Seq2SeqVocabulary":
        """Every printable ASCII character, space to '~': all that DeepMind's mathematics
        dataset writes, so a model with it can encode any question of any module or split,
        whichever characters its training pairs happened to hold."""
        return cls(PRINTABLE_ASCII)

    def decode(self, ids: Union[Tensor, Sequence[int]], strip_specials: bool = True) -> str:
        """The text of ids. With strip_specials, the text up to the first <eos>, without <sos>
        and <pad> (what a decoder's output means); otherwise every id reads as its symbol."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        if not strip_specials:
            return super().decode(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return super().decode([i for i in ids if i not in (self.sos_id, self.pad_id)])

    def to_dict(self) -> Dict[str, List[str]]:
        """Plain types only; the specials are listed so that a character LM's vocabulary (other
        ids) is not taken for this one."""
        return {"specials": list(self.SPECIALS), **super().to_dict()}

    @classmethod
    def from_dict(cls, state: object) -> "Seq2SeqVocabulary":
        """The vocabulary to_dict described; DataError when state is not such a description."""
        specials = state.get("specials") if isinstance(state, dict) else None
        if specials != list(cls.SPECIALS):
            raise DataError(f"not a sequence-to-sequence vocabulary: expected the specials {list(cls.SPECIALS)} "
                            f"under 'specials', got {specials!r}")
        return super().from_dict(state)


def _encode(vocabulary: Vocabulary, text: str, what: str, limit: Optional[int]) -> Tensor:
    if limit is not None and len(text) > limit:
        raise DataError(f"{what} has {len(text)} characters, more than the limit {limit}: {text!r}")
    try:
        return vocabulary.encode(text)
    except DataError as error:
        raise DataError(f"{what} {text!r}: {error}") from None


class MathDataset(Dataset):
    """Encoded (question, answer) pairs; item i is (source ids (S_i,), target ids (T_i,)), int64,
    the answer without <sos> or <eos> (Seq2SeqCollate adds them). A question or answer longer
    than its limit, or with characters outside the vocabulary, raises DataError naming it."""

    def __init__(self, pairs: Iterable[Pair], vocabulary: Vocabulary, max_question_length: Optional[int] = None,
                 max_answer_length: Optional[int] = None) -> None:
        self.items: List[Tuple[Tensor, Tensor]] = [
            (_encode(vocabulary, question, f"question {index}", max_question_length),
             _encode(vocabulary, answer, f"answer {index}", max_answer_length))
            for index, (question, answer) in enumerate(pairs)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        return self.items[index]


class Seq2SeqBatch(NamedTuple):
    """A padded batch, batch first, all int64. source (B, S) and its lengths (B,); target_input
    (B, T) is <sos> then the answer, target_output (B, T) the answer then <eos>, both padded
    after target_lengths (B,) positions (the answer's length + 1)."""
    source: Tensor
    source_lengths: Tensor
    target_input: Tensor
    target_output: Tensor
    target_lengths: Tensor


class Seq2SeqCollate:
    """Collates a list of (source ids, target ids) into a Seq2SeqBatch (a DataLoader's collate_fn),
    padding every sequence with pad_id on the right."""

    def __init__(self, pad_id: int, sos_id: int, eos_id: int) -> None:
        self.pad_id = pad_id
        self.sos = torch.tensor([sos_id], dtype=torch.int64)
        self.eos = torch.tensor([eos_id], dtype=torch.int64)

    def _pad(self, sequences: List[Tensor]) -> Tensor:
        return pad_sequence(sequences, batch_first=True, padding_value=self.pad_id)

    def __call__(self, batch: Sequence[Tuple[Tensor, Tensor]]) -> Seq2SeqBatch:
        sources = [source for source, _ in batch]
        targets = [target for _, target in batch]
        return Seq2SeqBatch(
            source=self._pad(sources),
            source_lengths=torch.tensor([len(source) for source in sources], dtype=torch.int64),
            target_input=self._pad([torch.cat([self.sos, target]) for target in targets]),
            target_output=self._pad([torch.cat([target, self.eos]) for target in targets]),
            target_lengths=torch.tensor([len(target) + 1 for target in targets], dtype=torch.int64))
