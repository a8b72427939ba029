"""dll_ext.data.math's generator against DeepMind's released one (mathematics-dataset 1.0.1): facts
of a sample of the release's pairs, per module and split, are recorded in tests/data/math_facts.json
by scripts/record_math_facts.py; the same facts of as many of our pairs must match them.

A feature matches when the total variation distance between the two samples' distributions is
within what sampling alone explains (math_facts.distance) plus SLACK. Every feature is compared:
question templates, numbers per question and their kinds, digits and decimal places,
denominators, the answers' kinds, lengths and digits, the equations' shapes, the variables.
"""
import json
import random
from functools import lru_cache
from pathlib import Path

import pytest

import math_facts
from dll_ext.data.math import MAX_ANSWER_LENGTH, MAX_QUESTION_LENGTH, MODULES, generate

FACTS = json.loads((Path(__file__).parent / "data" / "math_facts.json").read_text())
CASES = [(module, split) for module, splits in sorted(FACTS["modules"].items()) for split in splits]
# What two samples may differ by beyond sampling noise: small enough that a missing template of
# 3% or a shift of one digit in a tenth of the numbers fails.
SLACK = 0.02
# A template at least this common in the release must be generated.
COMMON = 0.01


@lru_cache(maxsize=None)
def ours(module, split):
    """Facts of as many of our pairs as the release's sample has (its seed is ours too)."""
    return math_facts.summarize(generate(module, FACTS["modules"][module][split]["pairs"], FACTS["seed"], split))


@pytest.mark.parametrize("module, split", CASES)
def test_every_feature_matches_the_release(module, split):
    real = FACTS["modules"][module][split]
    mine = ours(module, split)
    assert mine["pairs"] == real["pairs"] and set(mine["features"]) == set(real["features"])
    far = {}
    for name, counts in real["features"].items():
        tv, noise = math_facts.distance(counts, mine["features"][name])
        if tv > noise + SLACK:
            far[name] = f"distance {tv:.3f}, chance alone up to {noise:.3f}"
    assert not far, far


@pytest.mark.parametrize("module, split", CASES)
def test_every_common_release_template_is_generated(module, split):
    real = FACTS["modules"][module][split]["features"]["template"]
    total = sum(real.values())
    mine = ours(module, split)["features"]["template"]
    missing = [t for t, count in real.items() if count >= COMMON * total and t not in mine]
    assert not missing


@pytest.mark.parametrize("module", sorted(FACTS["modules"]))
def test_characters_are_the_release_s(module):
    splits = FACTS["modules"][module]
    real = set("".join(facts["characters"] for facts in splits.values()))
    mine = set("".join(ours(module, split)["characters"] for split in splits))
    assert mine == real, f"ours only: {sorted(mine - real)}, the release's only: {sorted(real - mine)}"


def test_facts_cover_every_module_and_its_release_splits():
    assert sorted(FACTS["modules"]) == sorted(MODULES) == sorted(math_facts.MODULES)
    for module, splits in FACTS["modules"].items():
        released = splits["extrapolate"]["released_module"] if "extrapolate" in splits else None
        assert MODULES[module].extrapolate_module == released == math_facts.EXTRAPOLATE_MODULES.get(module)
        assert set(splits) == set(math_facts.SPLITS) - ({"extrapolate"} if released is None else set())


def test_the_comparison_fails_on_a_different_distribution():
    """The check itself: pairs of the easy split do not pass for the hard split's facts, nor does
    a template dropped from a third of the questions."""
    real = FACTS["modules"]["numbers__place_value"]["train-hard"]
    easy = ours("numbers__place_value", "train-easy")
    tv, noise = math_facts.distance(real["features"]["integer_digits"], easy["features"]["integer_digits"])
    assert tv > noise + SLACK
    pairs = generate("arithmetic__add_or_sub", 4000, 0, "interpolate")
    rng = random.Random(0)
    kept = [p for p in pairs if not (p[0].startswith("What is") and rng.random() < 0.5)]
    real = FACTS["modules"]["arithmetic__add_or_sub"]["interpolate"]["features"]["template"]
    tv, noise = math_facts.distance(real, math_facts.summarize(kept)["features"]["template"])
    assert tv > noise + SLACK


def test_facts_respect_the_release_s_length_limits():
    for module, split in CASES:
        lengths = FACTS["modules"][module][split]["features"]["answer_length"]
        assert max(map(int, lengths)) <= MAX_ANSWER_LENGTH
        assert max(map(int, FACTS["modules"][module][split]["features"]["question_length"])) <= MAX_QUESTION_LENGTH
