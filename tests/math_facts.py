"""Facts of a sample of Mathematics (question, answer) pairs, comparable between DeepMind's released
generator and dll_ext.data.math: the question templates with their frequencies, the sizes of the
numbers, the answers' kinds and lengths.

Pure Python on purpose: scripts/record_math_facts.py loads this file by path inside a separate
virtual environment that holds the released generator (mathematics-dataset 1.0.1 and sympy 1.5.1,
which conflict with torch), and tests/test_math_fidelity.py uses it on our generator's pairs. The
two must describe pairs the same way, so the description lives here once.
"""
import math
import re
from collections import Counter
from typing import Dict, Iterable, List, Tuple

# Each module, and the released module its extrapolate split is made of (none for pair and linear_1d).
EXTRAPOLATE_MODULES = {
    "arithmetic__add_or_sub": "arithmetic__add_or_sub_big",
    "comparison__sort": "comparison__sort_more",
    "numbers__place_value": "numbers__place_value_big",
    "numbers__round_number": "numbers__round_number_big",
}
MODULES = ("algebra__linear_1d", "arithmetic__add_or_sub", "comparison__pair", "comparison__sort",
           "numbers__place_value", "numbers__round_number")
SPLITS = ("train-easy", "train-medium", "train-hard", "interpolate", "extrapolate")

# A number as questions and answers write it: an integer, a decimal or a fraction, with its sign
# when it is unary (binary minus has spaces around it, except in "p+q").
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:/\d+)?")
_LIST = re.compile(r"N(?:, N)+")
_VARIABLE = re.compile(r"(?<!\w)[a-z](?!\w)")
# Categories rarer than this share of both samples are pooled, so that sampling noise in the
# tail does not dominate the distance between two samples.
RARE = 0.005


def numbers(text: str) -> List[str]:
    return _NUMBER.findall(text)


def template(question: str) -> str:
    """The question with every number written N, lists of numbers L and single-letter variables x:
    'Sort 2, -1/3, 0.5 in increasing order.' -> 'Sort L in increasing order.'."""
    return _VARIABLE.sub("x", _LIST.sub("L", _NUMBER.sub("N", question)))


def _kind(number: str) -> str:
    return "fraction" if "/" in number else "decimal" if "." in number else "integer"


def _digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def _sides(question: str) -> str:
    """For equations: how many terms each side has, '2|1' ('0' counts as a term)."""
    if "=" not in question or not question.startswith("Solve "):
        return "-"
    equation = question[len("Solve "):question.rindex(" for ")]
    return "|".join(str(len(re.split(r" [-+] ", side.strip()))) for side in equation.split(" = "))


def features(question: str, answer: str) -> Dict[str, List[str]]:
    """Every feature's values in one pair (number features have one value per number)."""
    numbers_ = numbers(question)
    answer_numbers = numbers(answer)
    kind = ("boolean" if answer in ("True", "False") else "list" if ", " in answer
            else _kind(answer) if answer_numbers == [answer] else "other")
    return {
        "template": [template(question)],
        "variables": sorted(set(_VARIABLE.findall(_NUMBER.sub("N", question)))),
        "equation_sides": [_sides(question)],
        "question_length": [str(len(question) // 10 * 10)],
        "numbers_in_question": [str(len(numbers_))],
        "number_kind": [_kind(n) for n in numbers_],
        "integer_digits": [str(_digits(n.split("/")[0].split(".")[0])) for n in numbers_],
        # 0 for the numbers without: a split that has no decimals still compares with one that has a few.
        "decimal_places": [str(len(n.split(".")[1]) if "." in n else 0) for n in numbers_],
        "denominator_digits": [str(_digits(n.split("/")[1]) if "/" in n else 0) for n in numbers_],
        "answer_kind": [kind],
        "answer_length": [str(len(answer))],
        "answer_digits": [str(_digits(n)) for n in answer_numbers],
    }


def summarize(pairs: Iterable[Tuple[str, str]]) -> dict:
    """Counts of every feature value, the number of pairs, and the characters used."""
    counts: Dict[str, Counter] = {}
    characters = set()
    total = 0
    for question, answer in pairs:
        total += 1
        characters.update(question, answer)
        for name, values in features(question, answer).items():
            counts.setdefault(name, Counter()).update(values)
    return {"pairs": total, "characters": "".join(sorted(characters)),
            "features": {name: dict(sorted(c.items())) for name, c in counts.items()}}


def distance(real: Dict[str, int], ours: Dict[str, int]) -> Tuple[float, float]:
    """(total variation distance, a bound on what two samples of these sizes from one
    distribution show by chance). Categories under RARE in both are pooled into one."""
    n, m = sum(real.values()), sum(ours.values())
    if n == 0 or m == 0:
        return (0.0 if n == m else 1.0), 0.0
    pooled: Dict[str, Tuple[float, float]] = {}
    for key in set(real) | set(ours):
        p, q = real.get(key, 0) / n, ours.get(key, 0) / m
        name = key if max(p, q) >= RARE else "<rare>"
        a, b = pooled.get(name, (0.0, 0.0))
        pooled[name] = (a + p, b + q)
    tv = sum(abs(p - q) for p, q in pooled.values()) / 2
    # |p - q| of one category has a standard error of sqrt(r(1 - r)(1/n + 1/m)), r the common
    # share; the sum of those is about 2.5 times the distance expected by chance alone.
    noise = sum(math.sqrt(max(r, 1 / n) * (1 - r) * (1 / n + 1 / m)) for r in ((p + q) / 2 for p, q in pooled.values()))
    return tv, noise
