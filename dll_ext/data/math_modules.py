"""Six modules of DeepMind's Mathematics dataset, generated with the released distribution.

The released generator (mathematics-dataset 1.0.1) sets a question's difficulty by its entropy:
about the number of decimal digits of randomness in it. Each module draws an entropy uniformly
from a range, splits it between the numbers it samples (an integer of entropy e is uniform on a
range of about 10**e values), and the splits take parts of that range: train-easy, train-medium
and train-hard its thirds, interpolate a fixed value inside it and extrapolate one beyond it (or
longer lists). This file follows those rules, the modules' templates and the release's length
limits; tests/test_math_fidelity.py holds its output to facts recorded from the released package.
It is written from the released package's behaviour and does not need it (nor sympy).
"""
import math
import random
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Sequence, Tuple

Pair = Tuple[str, str]
# A number with the text a question writes it as ("0.3", "-2/7", "12"); answers repeat it.
Number = Tuple[Fraction, str]

TRAIN_LEVELS = ("train-easy", "train-medium", "train-hard")
# "train" is the whole training range: the three levels in equal parts.
SPLITS = ("train",) + TRAIN_LEVELS + ("interpolate", "extrapolate")

# ----------------------------------------------------------------------------------------
# Numbers of a given entropy
# ----------------------------------------------------------------------------------------


def _dirichlet(rng: random.Random, alphas: Sequence[float]) -> List[float]:
    """A point of the simplex, Dirichlet(alphas); a zero alpha gets exactly 0."""
    draws = [rng.gammavariate(a, 1.0) if a > 0 else 0.0 for a in alphas]
    total = sum(draws)
    return [d / total for d in draws]


def _split(rng: random.Random, entropy: float, count: int, least: float = 1.0) -> List[float]:
    """entropy shared at random between count numbers, each given at least `least`."""
    return [max(least, entropy * share) for share in _dirichlet(rng, [1.0] * count)]


def _integer(rng: random.Random, entropy: float, signed: bool, min_abs: int = 0, coprime_to: int = 1) -> int:
    """Uniform on about 10**entropy integers: [-m, m] when signed, else [min_abs, m], with
    |value| >= min_abs and coprime to coprime_to (the range widened to keep the entropy)."""
    coprime_to = abs(coprime_to)
    top = 10.0 ** entropy + min_abs
    if coprime_to >= 2:
        density = math.prod(1 - 1 / p for p in _prime_factors(coprime_to))
        top = top / density + 1
    low, high = (-math.ceil(top / 2), math.ceil(top / 2)) if signed else (min_abs, math.ceil(top))
    while True:
        value = rng.randint(low, high)
        if abs(value) >= min_abs and math.gcd(value, coprime_to) == 1:
            return value


def _prime_factors(n: int) -> List[int]:
    factors, p = [], 2
    while p * p <= n:
        if n % p == 0:
            factors.append(p)
            while n % p == 0:
                n //= p
        p += 1
    return factors + ([n] if n > 1 else [])


def _integer_number(value: int) -> Number:
    return Fraction(value), str(value)


def _decimal_number(value: Fraction) -> Number:
    """A value whose denominator divides a power of ten, written as a decimal ('-0.25', '3')."""
    places = 0
    while (value * 10 ** places).denominator != 1:
        places += 1
    units = int(value * 10 ** places)
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10 ** places)
    return value, f"{sign}{whole}" + (f".{fraction:0{places}d}" if places else "")


def _fraction_number(value: Fraction) -> Number:
    return value, str(value)


def _rational(rng: random.Random, entropy: float, signed: bool) -> Number:
    """A fraction that is not an integer, the entropy split at random between its terms."""
    numerator_entropy = rng.uniform(0, entropy)
    numerator = _integer(rng, numerator_entropy, signed, min_abs=1)
    denominator = _integer(rng, entropy - numerator_entropy, False, min_abs=2, coprime_to=numerator)
    return _fraction_number(Fraction(numerator, denominator))


def _decimal(rng: random.Random, entropy: float, signed: bool) -> Number:
    """An integer of the entropy moved 1 to ceil(entropy) places right, with digits after the point."""
    while True:
        base = _integer(rng, entropy, signed)
        divisor = 10 ** rng.randint(1, math.ceil(entropy))
        if base % divisor:
            return _decimal_number(Fraction(base, divisor))


def _integer_or_decimal(rng: random.Random, entropy: float) -> Number:
    if rng.random() < 0.5:
        return _integer_number(_integer(rng, entropy, True))
    return _decimal(rng, entropy, True)


def _integer_or_rational(rng: random.Random, entropy: float) -> Number:
    if rng.random() < 0.5:
        return _integer_number(_integer(rng, entropy, True))
    return _rational(rng, entropy, True)


def _any_number(rng: random.Random, entropy: float) -> Number:
    """An integer, decimal or fraction: integers half the time, the rest split evenly."""
    return (_integer_or_decimal if rng.random() < 0.5 else _integer_or_rational)(rng, entropy)


# ----------------------------------------------------------------------------------------
# The modules: each draws one pair of the given entropy
# ----------------------------------------------------------------------------------------

_PLACE_NAMES = ["units", "tens", "hundreds"] + [
    prefix + period for period in ("thousands", "millions", "billions", "trillions", "quadrillions")
    for prefix in ("", "ten ", "hundred ")]


def place_value(rng: random.Random, entropy: float) -> Pair:
    """'What is the ten thousands digit of 94576916?' -> '7'."""
    digits = str(_integer(rng, entropy, False, min_abs=1))
    place = rng.randrange(len(digits))
    return f"What is the {_PLACE_NAMES[place]} digit of {digits}?", digits[-1 - place]


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
_POWER_WORDS = ("ten", "one hundred", "one thousand", "ten thousand", "one hundred thousand", "one million")


def round_number(rng: random.Random, entropy: float) -> Pair:
    """'Round -0.0004916 to five dps.' -> '-0.00049'; 'What is 3424000 rounded to the nearest
    one hundred thousand?' -> '3400000'."""
    power = rng.randint(-7, 6)  # round to 10**power
    answer_entropy = 1 + rng.uniform(0, entropy / 2)
    rounded = _integer(rng, answer_entropy, True)
    # The digits below the rounding place: within half a step of `rounded`, ties away from 0.
    step = 10 ** math.ceil(max(1, entropy - answer_entropy))
    low, high = -step // 2 + (rounded <= 0), step // 2 - (rounded >= 0)
    scale = Fraction(10) ** power
    value = (rounded + Fraction(rng.randint(low, high), step)) * scale
    answer = rounded * scale
    if power > 0:
        where = "the nearest " + (str(10 ** power) if rng.random() < 0.5 else _POWER_WORDS[power - 1])
    elif power == 0 and rng.random() < 0.5:
        where = "the nearest integer"
    else:
        unit = rng.choice(("decimal place", "dp")) + ("s" if power != -1 else "")
        places = -power
        where = f"{_NUMBER_WORDS[places] if rng.random() < 0.5 else places} {unit}"
    template = rng.choice(("Round {value} to {where}.", "What is {value} rounded to {where}?"))
    return template.format(value=_decimal_number(value)[1], where=where), _decimal_number(answer)[1]


_ADD_TEMPLATES = ("{p} + {q}", "{p}+{q}", "Work out {p} + {q}.", "Add {p} and {q}.", "Put together {p} and {q}.",
                  "Sum {p} and {q}.", "Total of {p} and {q}.", "Add together {p} and {q}.", "What is {p} plus {q}?",
                  "Calculate {p} + {q}.", "What is {p} + {q}?")
_SUBTRACT_TEMPLATES = ("{p} - {q}", "Work out {p} - {q}.", "What is {p} minus {q}?", "What is {p} take away {q}?",
                       "What is {q} less than {p}?", "Subtract {q} from {p}.", "Calculate {p} - {q}.",
                       "What is {p} - {q}?")
# Asked only when p >= q, so that p - q is the (non-negative) answer.
_DIFFERENCE_TEMPLATES = tuple(f"What is the {noun} between {pair}?" for noun in ("distance", "difference")
                              for pair in ("{p} and {q}", "{q} and {p}"))


def add_or_sub(rng: random.Random, entropy: float) -> Pair:
    """'What is -1 - -2?' -> '1'; 'Total of 0.3 and -12.' -> '-11.7'."""
    add = rng.random() < 0.5
    p_entropy = max(1.0, rng.uniform(0, entropy))
    q_entropy = max(1.0, entropy - p_entropy)
    (p, p_text), (q, q_text) = _integer_or_decimal(rng, p_entropy), _integer_or_decimal(rng, q_entropy)
    if add:
        template = rng.choice(_ADD_TEMPLATES)
    else:
        template = rng.choice(_SUBTRACT_TEMPLATES + (_DIFFERENCE_TEMPLATES if p >= q else ()))
    return template.format(p=p_text, q=q_text), _decimal_number(p + q if add else p - q)[1]


_RELATION_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "<": ("Is {x} < {y}?", "Is {x} less than {y}?", "Is {x} smaller than {y}?"),
    "<=": ("Is {x} <= {y}?", "Is {x} less than or equal to {y}?", "Is {x} at most {y}?",
           "Is {x} at most as big as {y}?"),
    ">": ("Is {x} > {y}?", "Is {x} greater than {y}?", "Is {x} bigger than {y}?"),
    ">=": ("Is {x} >= {y}?", "Is {x} greater than or equal to {y}?", "Is {x} at least {y}?",
           "Is {x} at least as big as {y}?"),
    "=": ("Does {x} = {y}?", "Are {x} and {y} equal?", "Is {x} equal to {y}?", "Do {x} and {y} have the same value?"),
    "!=": ("Is {x} != {y}?", "Is {x} not equal to {y}?", "Are {x} and {y} unequal?", "Are {x} and {y} nonequal?",
           "Are {x} and {y} non-equal?", "Do {x} and {y} have different values?"),
}
_RELATIONS: Dict[str, Callable[[Fraction, Fraction], bool]] = {
    "<": lambda x, y: x < y, "<=": lambda x, y: x <= y, ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y, "=": lambda x, y: x == y, "!=": lambda x, y: x != y,
}


def _close_integers(rng: random.Random, entropy: float) -> Tuple[Number, Number]:
    difference_share, _ = _dirichlet(rng, (1.0, 3.0))
    left = _integer(rng, entropy * (1 - difference_share), True)
    return _integer_number(left), _integer_number(left + _integer(rng, entropy * difference_share, True))


def _fraction_and_near_integer(rng: random.Random, entropy: float) -> Tuple[Number, Number]:
    fraction = _rational(rng, entropy, True)
    return fraction, _integer_number(round(fraction[0]) + rng.randint(-1, 1))


def _independent_numbers(rng: random.Random, entropy: float) -> Tuple[Number, Number]:
    left_entropy, right_entropy = (entropy * share for share in _dirichlet(rng, (1.0, 1.0)))
    return _any_number(rng, left_entropy), _any_number(rng, right_entropy)


def pair(rng: random.Random, entropy: float) -> Pair:
    """'Is -2/7 at least 0.3?' -> 'False'; 'Which is smaller: 4 or -0.5?' -> '-0.5'."""
    draw = rng.choice((_close_integers, _fraction_and_near_integer, _independent_numbers))
    x, y = draw(rng, entropy)
    if rng.random() < 0.5:
        x, y = y, x
    if rng.random() < 0.5 and x[0] != y[0]:
        if rng.random() < 0.5:
            template, answer = rng.choice(("Which is bigger: {x} or {y}?", "Which is greater: {x} or {y}?")), max(x, y)
        else:
            template, answer = "Which is smaller: {x} or {y}?", min(x, y)
        return template.format(x=x[1], y=y[1]), answer[1]
    relation = rng.choice(list(_RELATIONS))
    question = rng.choice(_RELATION_TEMPLATES[relation]).format(x=x[1], y=y[1])
    return question, str(_RELATIONS[relation](x[0], y[0]))


def _distinct_values(rng: random.Random, entropy: float, count: int, integers_only: bool) -> List[Number]:
    """count numbers, no two equal in value, the entropy split between them (at least 1 each)."""
    draw = (lambda e: _integer_number(_integer(rng, e, True))) if integers_only else (lambda e: _any_number(rng, e))
    while True:
        values = [draw(e) for e in _split(rng, entropy, count)]
        if len({value for value, _ in values}) == count:
            return values


def sort(rng: random.Random, entropy: float, count: Optional[int] = None) -> Pair:
    """'Sort -2, 5, 0.3, -11 in decreasing order.' -> '5, 0.3, -2, -11'. Lists of 3 to
    3 + entropy/2 numbers, integers only half the time."""
    integers_only = rng.random() < 0.5
    numbers = _distinct_values(rng, entropy, count or rng.randint(3, 3 + int(entropy / 2)), integers_only)
    listed = ", ".join(text for _, text in numbers)
    ascending = rng.random() < 0.5
    templates = ["Sort {values} in {direction} order.", "Put {values} in {direction} order."]
    if ascending:
        templates.append("Sort {values}.")
    direction = rng.choice(("ascending", "increasing") if ascending else ("descending", "decreasing"))
    ordered = sorted(numbers, reverse=not ascending)
    return rng.choice(templates).format(values=listed, direction=direction), ", ".join(text for _, text in ordered)


# Unknowns: every lower-case letter but e, which reads as Euler's number.
_VARIABLES = "abcdfghijklmnopqrstuvwxyz"


def _expanded_counts(rng: random.Random, length: int, is_zero: Sequence[bool]) -> List[int]:
    """How many terms each coefficient is written as, `length` in all: at least one for a
    non-zero coefficient, and never exactly one for a zero (a lone '0' term says nothing)."""
    counts = [0 if zero else 1 for zero in is_zero]
    # The spare terms spread uniformly: cut spare + n into n positive parts, less one each.
    end = length - sum(counts) + len(counts)
    cuts = sorted(rng.sample(range(1, end), len(counts) - 1))
    extra = [b - a - 1 for a, b in zip([0] + cuts, cuts + [end])]
    counts = [c + e for c, e in zip(counts, extra)]
    while True:
        bad = [i for i, zero in enumerate(is_zero) if zero and counts[i] == 1]
        if not bad:
            return counts
        source = rng.choice(bad)
        target = rng.choice([i for i, c in enumerate(counts) if c >= 1 and i != source])
        counts[source] -= 1
        counts[target] += 1


def _integers_with_sum(rng: random.Random, total: int, count: int, entropy: float) -> List[int]:
    """count integers that add up to total, of about the given entropy in all."""
    if count <= 1:
        return [total] * count
    entropy *= count / (count - 1)
    least = max(1.0, math.log10(5 * abs(math.ceil(total / count)) + 1))
    terms = [_integer(rng, e, True) for e in _split(rng, entropy, count, least)]
    missing = total - sum(terms)
    terms = [t + (missing + i) // count for i, t in enumerate(terms)]
    rng.shuffle(terms)
    return terms


def _term(coefficient: int, variable: str) -> Tuple[bool, str]:
    """(positive, text) of one term: (False, '3*x'), (True, 'x'), (True, '0*x'), (False, '7')."""
    magnitude = abs(coefficient)
    if not variable:
        text = str(magnitude)
    else:
        text = variable if magnitude == 1 else f"{magnitude}*{variable}"
    return coefficient >= 0, text


def _side(terms: List[Tuple[bool, str]]) -> str:
    """A sum as the release writes it: '-3*x + 2 - x', and '0' for no terms."""
    if not terms:
        return "0"
    text = ""
    for i, (positive, term) in enumerate(terms):
        sign = ("" if positive else "-") if i == 0 else (" + " if positive else " - ")
        text += sign + term
    return text


def linear_1d(rng: random.Random, entropy: float) -> Pair:
    """'Solve -8*a + 39 = -5*a + 18 for a.' -> '7'; 'Solve 0 = 4*b - 12 for b.' -> '3'.
    The equation a*x = a*solution, each side of it written as a sum of several terms that are
    then scattered over both sides."""
    solution_entropy = max(1.0, entropy / 4)
    solution = _integer(rng, solution_entropy, True)
    entropy = max(1.0, entropy - solution_entropy)
    variable = rng.choice(_VARIABLES)
    matrix_share = rng.uniform(1 / 3, 2 / 3)
    coefficient = 0
    while coefficient == 0:
        coefficient = _integer(rng, max(1.0, entropy * matrix_share), True)
    constant = coefficient * solution
    is_zero = (False, constant == 0)
    shortest = 2 + (constant != 0)
    length = rng.randint(shortest, max(shortest, 1 + int(1 + entropy / 2)))
    counts = _expanded_counts(rng, length, is_zero)
    shares = _dirichlet(rng, [c - 1 for c in counts])
    entropies = [(1 - matrix_share) * entropy * share for share in shares]
    coefficients = _integers_with_sum(rng, coefficient, counts[0], entropies[0])
    constants = _integers_with_sum(rng, constant, counts[1], entropies[1])
    # Every term is on the left of `... = 0` (constants negated); each moves right with even odds.
    sides: Tuple[List[Tuple[bool, str]], List[Tuple[bool, str]]] = ([], [])
    for value, name in [(c, variable) for c in coefficients] + [(-c, "") for c in constants]:
        positive, text = _term(value, name)
        if rng.random() < 0.5:
            sides[0].append((positive, text))
        else:
            sides[1].append((not positive, text))
    return f"Solve {_side(sides[0])} = {_side(sides[1])} for {variable}.", str(solution)


# ----------------------------------------------------------------------------------------
# Entropy ranges per split
# ----------------------------------------------------------------------------------------

Make = Callable[[random.Random, float], Pair]


class Module:
    """A module's draw and its entropy: `train` the training range, `interpolate` a value inside
    it, `extrapolate` a range beyond it, for the release's extrapolation module of that name
    (None when the release has none for this module); `longer` draws the extrapolate questions
    instead of `make` (sort_more's longer lists)."""

    def __init__(self, make: Make, train: Tuple[float, float], interpolate: float,
                 extrapolate: Optional[Tuple[float, float]] = None, extrapolate_module: Optional[str] = None,
                 longer: Optional[Make] = None):
        self.make, self.train, self.interpolate = make, train, interpolate
        self.extrapolate, self.extrapolate_module, self.longer = extrapolate, extrapolate_module, longer

    @property
    def has_extrapolate(self) -> bool:
        return self.extrapolate is not None

    def entropy_range(self, split: str) -> Tuple[float, float]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split == "interpolate":
            return self.interpolate, self.interpolate
        if split == "extrapolate":
            if self.extrapolate is None:
                raise ValueError("this module has no extrapolate split")
            return self.extrapolate
        low, high = self.train
        if split == "train":
            return low, high
        level = TRAIN_LEVELS.index(split)
        third = (high - low) / 3
        return low + level * third, low + (level + 1) * third

    def draw(self, rng: random.Random, split: str) -> Pair:
        entropy = rng.uniform(*self.entropy_range(split))
        make = self.longer if split == "extrapolate" and self.longer is not None else self.make
        return make(rng, entropy)


def _sort_more(rng: random.Random, entropy: float) -> Pair:
    """Two or three more numbers than the longest training list (3 + 10/2 = 8)."""
    return sort(rng, entropy, count=rng.randint(9, 10))


MODULES: Dict[str, Module] = {
    "algebra__linear_1d": Module(linear_1d, (3, 10), 8),
    "arithmetic__add_or_sub": Module(add_or_sub, (4, 16), 12, (16, 20), "arithmetic__add_or_sub_big"),
    "comparison__pair": Module(pair, (3, 10), 8),
    "comparison__sort": Module(sort, (3, 10), 8, (12, 12), "comparison__sort_more", longer=_sort_more),
    "numbers__place_value": Module(place_value, (3, 10), 8, (12, 12), "numbers__place_value_big"),
    "numbers__round_number": Module(round_number, (3, 10), 8, (12, 12), "numbers__round_number_big"),
}
