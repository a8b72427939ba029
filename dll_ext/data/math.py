"""DeepMind's Mathematics dataset (Saxton et al., "Analysing Mathematical Reasoning Abilities of
Neural Models", 2019) for sequence-to-sequence models.

- A seeded generator of (question, answer) pairs for some of the dataset's modules, in its text
  style: numbers__place_value, comparison__sort and algebra__linear_1d, and also
  numbers__round_number, arithmetic__add_or_sub and comparison__pair. It is written here from
  the modules' descriptions and the released questions (DeepMind's generator no longer runs
  with current sympy); like the original, it discards pairs over the dataset's length limits
  (questions of at most 160 characters, answers of at most 30).
- The released layout, written and read: a folder mathematics_dataset-v1.0 with subfolders
  train-easy, train-medium, train-hard, interpolate and extrapolate, each holding <module>.txt
  files of alternating lines, a question then its answer.
- A character vocabulary with <sos> and <eos>, a dataset of encoded pairs and the collate
  function that pads them into batches (batch first).
"""
import math
import os
import random
from fractions import Fraction
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from dll_ext.data.errors import DataError
from dll_ext.data.files import require_folder
from dll_ext.data.text import Vocabulary, read_text

__all__ = ["DATASET_FOLDER", "MAX_ANSWER_LENGTH", "MAX_QUESTION_LENGTH", "MODULES", "PRINTABLE_ASCII", "SPLITS",
           "TRAIN_DIFFICULTIES", "MathDataset", "Seq2SeqBatch", "Seq2SeqCollate", "Seq2SeqVocabulary", "dataset_root",
           "generate", "generate_splits", "list_modules", "load_pairs", "read_pairs", "write_dataset", "write_pairs"]

# The released dataset's limits; its generator drops longer pairs, and so does this one.
MAX_QUESTION_LENGTH = 160
MAX_ANSWER_LENGTH = 30

DATASET_FOLDER = "mathematics_dataset-v1.0"
TRAIN_DIFFICULTIES = ("easy", "medium", "hard")
SPLITS = ("train", "interpolate", "extrapolate")
_SPLIT_FOLDERS = tuple(f"train-{d}" for d in TRAIN_DIFFICULTIES) + SPLITS[1:]

Pair = Tuple[str, str]
# A term of a linear equation: (coefficient, variable), the variable '' for a constant.
Term = Tuple[int, str]

# ----------------------------------------------------------------------------------------
# Numbers and their text
# ----------------------------------------------------------------------------------------

# A number together with the text a question writes it as ("0.3", "-2/7"): answers repeat the
# question's spelling, and exact Fractions order decimals and fractions without rounding.
Number = Tuple[Fraction, str]


def _decimal_text(units: int, places: int) -> str:
    """units / 10**places written out without trailing zeros: (-25, 2) -> '-0.25', (300, 2) -> '3'."""
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10 ** places)
    if fraction == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{places}d}".rstrip("0")


def _fraction_text(value: Fraction, places: int) -> str:
    """A value with at most `places` decimal places, written out as a decimal."""
    units = value * 10 ** places
    assert units.denominator == 1, f"{value} has more than {places} decimal places"
    return _decimal_text(units.numerator, places)


def _signed(rng: random.Random, max_digits: int) -> int:
    """A non-zero integer of 1 to max_digits digits, either sign; the digit count is drawn
    uniformly, then the value, so that small numbers are as common as in the released data."""
    digits = rng.randint(1, max_digits)
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1) * rng.choice((1, -1))


def _signed_or_zero(rng: random.Random, max_digits: int) -> int:
    """Like _signed, but zero one time in ten (zero is common in the released questions)."""
    return 0 if rng.random() < 0.1 else _signed(rng, max_digits)


def _integer(rng: random.Random) -> Number:
    value = _signed_or_zero(rng, 3)
    return Fraction(value), str(value)


def _decimal(rng: random.Random) -> Number:
    places = rng.randint(1, 3)
    units = _signed(rng, places + 1)
    return Fraction(units, 10 ** places), _decimal_text(units, places)


def _ratio(rng: random.Random) -> Number:
    """A fraction p/q in lowest terms that is not an integer, |p/q| < 5."""
    denominator = rng.randint(2, 12)
    numerator = rng.choice([p for p in range(1, 5 * denominator) if math.gcd(p, denominator) == 1])
    numerator *= rng.choice((1, -1))
    return Fraction(numerator, denominator), f"{numerator}/{denominator}"


# The kinds of numbers a comparison question mixes: integers only, or with decimals or fractions.
_NUMBER_MIXES = ((_integer,), (_integer, _decimal), (_integer, _ratio), (_integer, _decimal, _ratio), (_decimal,))


def _distinct_numbers(rng: random.Random, count: int) -> List[Number]:
    """count numbers of one mix, no two equal in value (so their order is unique)."""
    mix = rng.choice(_NUMBER_MIXES)
    numbers: Dict[Fraction, str] = {}
    while len(numbers) < count:
        value, text = rng.choice(mix)(rng)
        numbers.setdefault(value, text)
    return list(numbers.items())


# ----------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------

_PLACE_NAMES = ["units", "tens", "hundreds"] + [prefix + period for period in ("thousands", "millions", "billions")
                                                for prefix in ("", "ten ", "hundred ")]


def _place_value(rng: random.Random) -> Pair:
    """'What is the ten thousands digit of 94576916?' -> '7'."""
    digits = rng.randint(1, len(_PLACE_NAMES))
    number = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    place = rng.randrange(digits)
    return f"What is the {_PLACE_NAMES[place]} digit of {number}?", number[-1 - place]


def _sort(rng: random.Random) -> Pair:
    """'Sort -2, 5, 0.3, -11 in decreasing order.' -> '5, 0.3, -2, -11'."""
    numbers = _distinct_numbers(rng, rng.randint(3, 6))
    ascending = rng.random() < 0.5
    direction = rng.choice(("ascending", "increasing") if ascending else ("descending", "decreasing"))
    templates = ["Sort {values} in {direction} order.", "Put {values} in {direction} order."]
    if ascending:
        templates.append("Sort {values}.")
    question = rng.choice(templates).format(values=", ".join(text for _, text in numbers), direction=direction)
    ordered = sorted(numbers, key=lambda number: number[0], reverse=not ascending)
    return question, ", ".join(text for _, text in ordered)


# Which comparison each phrasing asks; the answer is True or False.
_RELATION_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "<": ("Is {x} less than {y}?", "Is {x} smaller than {y}?", "Is {x} < {y}?"),
    "<=": ("Is {x} less than or equal to {y}?", "Is {x} smaller than or equal to {y}?", "Is {x} at most {y}?",
           "Is {x} <= {y}?"),
    ">": ("Is {x} greater than {y}?", "Is {x} bigger than {y}?", "Is {x} > {y}?"),
    ">=": ("Is {x} greater than or equal to {y}?", "Is {x} bigger than or equal to {y}?", "Is {x} at least {y}?",
           "Is {x} >= {y}?"),
    "=": ("Is {x} equal to {y}?", "Are {x} and {y} equal?", "Do {x} and {y} have the same value?"),
    "!=": ("Is {x} not equal to {y}?", "Are {x} and {y} unequal?", "Are {x} and {y} nonequal?",
           "Are {x} and {y} non-equal?", "Do {x} and {y} have different values?"),
}
_RELATIONS: Dict[str, Callable[[Fraction, Fraction], bool]] = {
    "<": lambda x, y: x < y, "<=": lambda x, y: x <= y, ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y, "=": lambda x, y: x == y, "!=": lambda x, y: x != y,
}
_CHOICE_TEMPLATES = {"bigger": "Which is bigger: {x} or {y}?", "greater": "Which is greater: {x} or {y}?",
                     "smaller": "Which is smaller: {x} or {y}?"}


def _pair(rng: random.Random) -> Pair:
    """'Is -2/7 at least 0.3?' -> 'False'; 'Which is smaller: 4 or -0.5?' -> '-0.5'."""
    x, y = _distinct_numbers(rng, 2)
    if rng.random() < 0.5:
        word = rng.choice(sorted(_CHOICE_TEMPLATES))
        answer = (min if word == "smaller" else max)(x, y, key=lambda number: number[0])[1]
        return _CHOICE_TEMPLATES[word].format(x=x[1], y=y[1]), answer
    relation = rng.choice(sorted(_RELATIONS))
    if rng.random() < 0.25:  # equal values, without which "=" would always be False
        y = x
    question = rng.choice(_RELATION_TEMPLATES[relation]).format(x=x[1], y=y[1])
    return question, str(_RELATIONS[relation](x[0], y[0]))


_ADD_TEMPLATES = ("{p} + {q}", "Add {p} and {q}.", "Put together {p} and {q}.", "Sum {p} and {q}.",
                  "Total of {p} and {q}.", "Add together {p} and {q}.", "What is {p} plus {q}?",
                  "Calculate {p} + {q}.", "What is {p} + {q}?")
_SUBTRACT_TEMPLATES = ("{p} - {q}", "Work out {p} - {q}.", "What is {p} minus {q}?", "What is {p} take away {q}?",
                       "What is {q} less than {p}?", "Subtract {q} from {p}.", "Calculate {p} - {q}.",
                       "What is {p} - {q}?")


def _add_or_sub(rng: random.Random) -> Pair:
    """'What is -1 - -2?' -> '1'; 'Total of 0.3 and -12.' -> '-11.7'."""
    places = rng.choice((0, 0, 1, 2, 3))
    p, q = (Fraction(_signed(rng, 6), 10 ** places) for _ in range(2))
    add = rng.random() < 0.5
    template = rng.choice(_ADD_TEMPLATES if add else _SUBTRACT_TEMPLATES)
    question = template.format(p=_fraction_text(p, places), q=_fraction_text(q, places))
    return question, _fraction_text(p + q if add else p - q, places)


_POWER_NAMES = ("ten", "one hundred", "one thousand", "ten thousand", "one hundred thousand", "one million")


def _round_number(rng: random.Random) -> Pair:
    """'Round 0.0004916 to 5 decimal places.' -> '0.00049'; 'What is 3424000 rounded to the nearest
    one hundred thousand?' -> '3400000'. Values exactly halfway are never drawn."""
    # Rounding to 10**-digits: digits in 1..5 decimal places, 0 the nearest integer, -1..-6 a power of ten.
    digits = rng.randint(-len(_POWER_NAMES), 5)
    places = max(digits, 0) + rng.randint(1, 3)
    # The value has `places` decimals (a last digit that is not 0) and is at least one rounding
    # step (10**-digits), so the rounded value is not 0.
    length = places - digits + rng.randint(1, 4)
    magnitude = rng.randint(10 ** (length - 1), 10 ** length - 1)
    magnitude += 0 if magnitude % 10 else rng.randint(1, 9)
    step = 10 ** (places - digits)  # units of 10**-places per rounding step
    if 2 * (magnitude % step) == step:  # exactly halfway (possible for step 10 only: ...5)
        magnitude += 1
    units = magnitude * rng.choice((1, -1))
    value = Fraction(units, 10 ** places)
    rounded = round(value, digits)
    value_text = _decimal_text(units, places)
    if digits > 0:
        where = f"{digits} " + rng.choice(("decimal place", "dp")) + "s" * (digits > 1)
    else:
        where = "the nearest integer" if digits == 0 else f"the nearest {_POWER_NAMES[-digits - 1]}"
    template = rng.choice(("Round {value} to {where}.", "What is {value} rounded to {where}?"))
    return template.format(value=value_text, where=where), _fraction_text(rounded, max(digits, 0))


# Letters for unknowns; e, i and o are left out because they read as Euler's number, the imaginary unit and zero.
_VARIABLES = "abcdfghjklmnpqrstuvwxyz"


def _term_text(coefficient: int, variable: str) -> str:
    """One term: '7', '-x', 'x', '-8*x' (variable '' for a constant)."""
    if not variable:
        return str(coefficient)
    return {1: variable, -1: "-" + variable}.get(coefficient, f"{coefficient}*{variable}")


def _side_text(terms: List[Term]) -> str:
    """A sum of terms as the dataset writes it ('-8*a + 39', '4*b - 12'), '0' for no terms."""
    if not terms:
        return "0"
    text = _term_text(*terms[0])
    for coefficient, variable in terms[1:]:
        text += (" - " if coefficient < 0 else " + ") + _term_text(abs(coefficient), variable)
    return text


def _variable_terms(rng: random.Random, variable: str, side_of: Callable[[], int]) -> Tuple[List[Term], List[Term]]:
    """One to three terms in the variable on the sides side_of picks, drawn again until the
    variable's coefficients do not cancel (the equation then has exactly one solution)."""
    while True:
        sides: Tuple[List[Term], List[Term]] = ([], [])
        for _ in range(rng.randint(1, 3)):
            sides[side_of()].append((_signed(rng, 2), variable))
        if sum(c for c, _ in sides[0]) != sum(c for c, _ in sides[1]):
            return sides


def _linear_1d(rng: random.Random) -> Pair:
    """'Solve -8*a + 39 = -5*a + 18 for a.' -> '7'; 'Solve 0 = 4*b - 12 for b.' -> '3'."""
    variable = rng.choice(_VARIABLES)
    solution = _signed_or_zero(rng, 2)
    # The shape: every term on one side (the other reads 0), or terms on both sides.
    shape = rng.choice(("left", "right", "both"))
    side_of = {"left": lambda: 0, "right": lambda: 1, "both": lambda: rng.randrange(2)}[shape]
    sides = _variable_terms(rng, variable, side_of)
    for _ in range(rng.randint(0, 2)):
        sides[side_of()].append((_signed(rng, 2), ""))
    # One more constant balances the equation at the solution (none when it is already balanced).
    balance_side = side_of()
    left, right = (sum(c * (solution if v else 1) for c, v in side) for side in sides)
    balance = (right - left) if balance_side == 0 else (left - right)
    if balance:
        sides[balance_side].append((balance, ""))
    for side in sides:
        rng.shuffle(side)
    return f"Solve {_side_text(sides[0])} = {_side_text(sides[1])} for {variable}.", str(solution)


MODULES: Dict[str, Callable[[random.Random], Pair]] = {
    "algebra__linear_1d": _linear_1d,
    "arithmetic__add_or_sub": _add_or_sub,
    "comparison__pair": _pair,
    "comparison__sort": _sort,
    "numbers__place_value": _place_value,
    "numbers__round_number": _round_number,
}


def _module(name: str) -> Callable[[random.Random], Pair]:
    if name not in MODULES:
        raise ValueError(f"unknown Mathematics module {name!r}; known: {', '.join(MODULES)}")
    return MODULES[name]


def _draw(make: Callable[[random.Random], Pair], rng: random.Random) -> Pair:
    """One pair within the length limits (drawn again otherwise, as the original generator does)."""
    while True:
        question, answer = make(rng)
        if len(question) <= MAX_QUESTION_LENGTH and len(answer) <= MAX_ANSWER_LENGTH:
            return question, answer


def _random(module: str, seed: int, stream: str) -> random.Random:
    # A string seed is hashed with SHA-512, the same on every run and platform (unlike hash()),
    # so each module, seed and stream gets its own reproducible sequence, independent of the others.
    return random.Random(f"{module}/{seed}/{stream}")


def generate(module: str, count: int, seed: int) -> List[Pair]:
    """count (question, answer) pairs of a module (a key of MODULES), the same for the same seed.
    Questions may repeat, as in the released training data."""
    make = _module(module)
    rng = _random(module, seed, "train")
    return [_draw(make, rng) for _ in range(count)]


def generate_splits(module: str, train_count: int, test_count: int, seed: int) -> Tuple[List[Pair], List[Pair]]:
    """(train, interpolate): train is generate(module, train_count, seed); interpolate holds
    test_count pairs of the same distribution, each question distinct and absent from train."""
    make = _module(module)
    train = generate(module, train_count, seed)
    seen = {question for question, _ in train}
    rng = _random(module, seed, "interpolate")
    interpolate: List[Pair] = []
    # A generous bound on the draws, so that a module with too few distinct questions for the
    # counts fails instead of looping for ever.
    for _ in range(100 * test_count + 1000):
        if len(interpolate) == test_count:
            break
        question, answer = _draw(make, rng)
        if question not in seen:
            seen.add(question)
            interpolate.append((question, answer))
    else:
        raise ValueError(f"{module}: fewer than {test_count} new questions besides {train_count} training pairs")
    return train, interpolate


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


def load_pairs(folder: str, module: str, split: str = "train",
               difficulties: Sequence[str] = TRAIN_DIFFICULTIES) -> List[Pair]:
    """A module's (question, answer) pairs in a split: "train" (the files of train-easy,
    train-medium and train-hard that exist, in that order, or of the given difficulties),
    "interpolate" or "extrapolate". folder is mathematics_dataset-v1.0 or the folder holding it."""
    names = _split_folders(split, difficulties)
    root = dataset_root(folder)
    paths = [os.path.join(root, name, module + ".txt") for name in names]
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
    mathematics_dataset-v1.0 to match the release): train-easy/<module>.txt and
    interpolate/<module>.txt from generate_splits. Returns folder."""
    for name in ("train-easy", "interpolate"):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
    for module in modules:
        train, interpolate = generate_splits(module, train_count, test_count, seed)
        write_pairs(os.path.join(folder, "train-easy", module + ".txt"), train)
        write_pairs(os.path.join(folder, "interpolate", module + ".txt"), interpolate)
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
