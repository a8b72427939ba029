"""dll_ext.data.math: the Mathematics generator (every answer recomputed here from the parsed
question with exact Fractions), the released file layout written and read (small files in that
format written here), the sequence-to-sequence vocabulary, dataset and padded batches."""
import math
import os
import random
import re
import tempfile
from fractions import Fraction

import pytest
import torch
from hypothesis import given, strategies as st
from torch.utils.data import DataLoader

from dll_ext.data import DataError, MathDataset, Seq2SeqBatch, Seq2SeqCollate, Seq2SeqVocabulary, Vocabulary
from dll_ext.data.math import (DATASET_FOLDER, MODULES, evaluation_splits, generate, generate_splits, list_modules,
                               load_pairs, read_pairs, write_dataset, write_pairs)
from dll_ext.data.math_modules import Module

REQUIRED_MODULES = ["numbers__place_value", "comparison__sort", "algebra__linear_1d"]
EXAMPLES = 400

# A number as questions write it: an integer, a decimal or a fraction p/q.
NUMBER = r"-?\d+(?:\.\d+|/\d+)?"
# An answer that is a number, written without trailing zeros, a leading zero or "-0".
CANONICAL_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d*[1-9])?")


@pytest.fixture(params=["train", "train-easy", "train-hard", "test"])
def examples(request):
    """examples(module, count): pairs of generate in a training split, or of the test splits:
    count of interpolate, and a quarter as many of extrapolate where the module has it
    (sort_more keeps one draw in about a thousand, its other answers being over 30 characters)."""
    def pairs(module, count=EXAMPLES, seed=11):
        if request.param != "test":
            return generate(module, count, seed, request.param)
        pairs = generate(module, count, seed, "interpolate")
        if "extrapolate" in evaluation_splits(module):
            pairs += generate(module, count // 4, seed, "extrapolate")
        return pairs
    return pairs


# ----------------------------------------------------------------------------------------
# Answers recomputed from the questions
# ----------------------------------------------------------------------------------------

PLACES = ["units", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands", "millions",
          "ten millions", "hundred millions", "billions", "ten billions", "hundred billions", "trillions"]


def test_place_value_answers_are_the_named_digit(examples):
    places_seen, lengths_seen = set(), set()
    for question, answer in examples("numbers__place_value"):
        match = re.fullmatch(r"What is the ([a-z ]+) digit of (\d+)\?", question)
        assert match, question
        place, number = PLACES.index(match.group(1)), int(match.group(2))
        assert number >= 10 ** place, f"{question}: the number has no such digit"
        assert answer == str(number // 10 ** place % 10), question
        places_seen.add(place)
        lengths_seen.add(len(match.group(2)))
    assert len(places_seen) >= 6 and len(lengths_seen) >= 3


SORT_QUESTION = re.compile(r"(Sort|Put) (.+?)(?: in (ascending|increasing|descending|decreasing) order)?\.")


def test_sort_answers_are_the_numbers_in_the_asked_order(examples):
    kinds, phrasings, counts = set(), set(), set()
    for question, answer in examples("comparison__sort"):
        match = SORT_QUESTION.fullmatch(question)
        assert match and (match.group(1) == "Sort" or match.group(3)), question
        texts = match.group(2).split(", ")
        assert all(re.fullmatch(NUMBER, text) for text in texts), question
        values = [Fraction(text) for text in texts]
        assert len(set(values)) == len(values), f"{question}: equal values have no unique order"
        descending = match.group(3) in ("descending", "decreasing")
        expected = [text for _, text in sorted(zip(values, texts), reverse=descending)]
        assert answer == ", ".join(expected), question
        counts.add(len(texts))
        phrasings.add((match.group(1), match.group(3)))
        kinds.update("/" if "/" in text else "." if "." in text else "integer" for text in texts)
    assert counts <= set(range(3, 11)) and len(counts) >= 3 and kinds == {"/", ".", "integer"}
    assert phrasings >= {("Sort", None), ("Put", "ascending"), ("Sort", "decreasing"), ("Put", "descending"),
                         ("Sort", "increasing")}


def parse_linear_side(side, variable):
    """(coefficient of variable, constant) of a sum like '-8*a + 39 - a', checking the way each
    term is written."""
    parts = re.split(r" ([+-]) ", side)
    coefficient, constant = 0, 0
    for index in range(0, len(parts), 2):
        sign = -1 if index and parts[index - 1] == "-" else 1
        term = parts[index]
        assert index == 0 or not term.startswith("-"), f"{side}: '+ -' or '- -' inside a sum"
        if match := re.fullmatch(rf"(-?\d+)\*{variable}", term):
            assert abs(int(match.group(1))) != 1, f"{side}: 1*{variable} is written {variable}"
            coefficient += sign * int(match.group(1))
        elif match := re.fullmatch(rf"(-?){variable}", term):
            coefficient += sign * (-1 if match.group(1) else 1)
        else:
            assert re.fullmatch(r"-?\d+", term), f"{side}: term {term!r}"
            constant += sign * int(term)
    return coefficient, constant


def test_linear_1d_answers_solve_the_equation(examples):
    variables, zero_sides = set(), 0
    for question, answer in examples("algebra__linear_1d"):
        match = re.fullmatch(r"Solve (.+) = (.+) for ([a-z])\.", question)
        assert match, question
        variable = match.group(3)
        left, right = (parse_linear_side(side, variable) for side in match.group(1, 2))
        coefficient, constant = left[0] - right[0], left[1] - right[1]
        assert coefficient != 0, f"{question}: no unique solution"
        solution = Fraction(-constant, coefficient)
        assert solution.denominator == 1 and answer == str(solution.numerator), question
        variables.add(variable)
        zero_sides += "0" in match.group(1, 2)
    assert len(variables) >= 15 and "e" not in variables
    assert 0 < zero_sides < EXAMPLES // 2  # both 'Solve 0 = 4*b - 12' and two-sided shapes


def phrasing(template):
    """A question template with {x} and {y} (or {p} and {q}) as a regex capturing the numbers."""
    return re.compile(re.sub(r"\\\{(\w)\\\}", r"(?P<\1>\\S+)", re.escape(template)))


# The phrasings of the released comparison__pair questions, each with the comparison it asks.
RELATIONS = [
    (["Is {x} less than {y}?", "Is {x} smaller than {y}?", "Is {x} < {y}?"], lambda x, y: x < y),
    (["Is {x} less than or equal to {y}?", "Is {x} at most {y}?", "Is {x} at most as big as {y}?",
      "Is {x} <= {y}?"], lambda x, y: x <= y),
    (["Is {x} greater than {y}?", "Is {x} bigger than {y}?", "Is {x} > {y}?"], lambda x, y: x > y),
    (["Is {x} greater than or equal to {y}?", "Is {x} at least {y}?", "Is {x} at least as big as {y}?",
      "Is {x} >= {y}?"], lambda x, y: x >= y),
    (["Is {x} equal to {y}?", "Are {x} and {y} equal?", "Do {x} and {y} have the same value?", "Does {x} = {y}?"],
     lambda x, y: x == y),
    (["Is {x} not equal to {y}?", "Are {x} and {y} unequal?", "Are {x} and {y} nonequal?", "Are {x} and {y} non-equal?",
      "Do {x} and {y} have different values?", "Is {x} != {y}?"], lambda x, y: x != y),
    (["Which is bigger: {x} or {y}?", "Which is greater: {x} or {y}?"], max),
    (["Which is smaller: {x} or {y}?"], min),
]


def test_pair_answers_compare_the_two_numbers(examples):
    templates_asked, truths_asked = set(), set()
    for question, answer in examples("comparison__pair"):
        found = [(index, template) for index, (templates, _) in enumerate(RELATIONS) for template in templates
                 if phrasing(template).fullmatch(question)]
        assert len(found) == 1, f"unexpected phrasing: {question}"
        index, template = found[0]
        relation = RELATIONS[index][1]
        x_text, y_text = phrasing(template).fullmatch(question).group("x", "y")
        assert re.fullmatch(NUMBER, x_text) and re.fullmatch(NUMBER, y_text), question
        x, y = Fraction(x_text), Fraction(y_text)
        if relation in (max, min):
            assert x != y and answer == (x_text if relation(x, y) == x else y_text), question
        else:
            assert answer == str(relation(x, y)), question
            truths_asked.add((index, answer))
        templates_asked.add(template)
    assert templates_asked == {template for templates, _ in RELATIONS for template in templates}
    # Equal values come from close integers alone, and rarely at high entropy: "=" is mostly False.
    assert len(truths_asked) >= 10


# The phrasings of the released arithmetic__add_or_sub questions: p + q, p - q, and |p - q|.
ADDITIONS = ["{p} + {q}", "{p}+{q}", "Work out {p} + {q}.", "Add {p} and {q}.", "Put together {p} and {q}.",
             "Sum {p} and {q}.", "Total of {p} and {q}.", "Add together {p} and {q}.", "What is {p} plus {q}?",
             "Calculate {p} + {q}.", "What is {p} + {q}?"]
SUBTRACTIONS = ["{p} - {q}", "Work out {p} - {q}.", "What is {p} minus {q}?", "What is {p} take away {q}?",
                "What is {q} less than {p}?", "Subtract {q} from {p}.", "Calculate {p} - {q}.", "What is {p} - {q}?"]
DIFFERENCES = ["What is the distance between {p} and {q}?", "What is the difference between {p} and {q}?"]
OPERATIONS = {1: lambda p, q: p + q, -1: lambda p, q: p - q, 0: lambda p, q: abs(p - q)}


def test_add_or_sub_answers_are_exact(examples):
    asked = set()
    for question, answer in examples("arithmetic__add_or_sub", count=2 * EXAMPLES):
        found = [(template, sign) for templates, sign in ((ADDITIONS, 1), (SUBTRACTIONS, -1), (DIFFERENCES, 0))
                 for template in templates if phrasing(template).fullmatch(question)]
        assert len(found) == 1, f"unexpected phrasing: {question}"
        template, sign = found[0]
        p, q = phrasing(template).fullmatch(question).group("p", "q")
        assert re.fullmatch(NUMBER, p) and re.fullmatch(NUMBER, q) and "/" not in question, question
        assert CANONICAL_NUMBER.fullmatch(answer) and answer != "-0", question
        assert Fraction(answer) == OPERATIONS[sign](Fraction(p), Fraction(q)), question
        asked.add(template)
    assert asked == set(ADDITIONS + SUBTRACTIONS + DIFFERENCES)


POWERS = {"ten": 10, "one hundred": 100, "one thousand": 1000, "ten thousand": 10 ** 4,
          "one hundred thousand": 10 ** 5, "one million": 10 ** 6}


DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven"]


def test_round_number_answers_are_rounded_to_the_nearest(examples):
    """Halfway values round away from zero, as the release's do."""
    steps = set()
    for question, answer in examples("numbers__round_number"):
        match = re.fullmatch(r"(?:Round (\S+) to (.+)\.|What is (\S+) rounded to (.+)\?)", question)
        assert match, question
        value_text, where = [group for group in match.groups() if group is not None]
        places = re.fullmatch(rf"(\d|{'|'.join(DIGIT_WORDS)}) (?:decimal places?|dps?)", where)
        if places:
            digits = int(places.group(1)) if places.group(1).isdigit() else DIGIT_WORDS.index(places.group(1))
            assert (digits == 1) == (not where.endswith("s")), f"{question}: singular or plural"
            step = Fraction(1, 10 ** digits)
        elif where == "the nearest integer":
            step = Fraction(1)
        else:
            power = where.removeprefix("the nearest ")  # words or digits: "one thousand", "1000"
            step = Fraction(POWERS[power] if power in POWERS else int(power))
        value = Fraction(value_text)
        steps_away = math.floor(abs(value / step) + Fraction(1, 2))
        nearest = (steps_away if value >= 0 else -steps_away) * step
        assert CANONICAL_NUMBER.fullmatch(answer) and Fraction(answer) == nearest, question
        steps.add(step)
    assert len(steps) >= 12


@pytest.mark.parametrize("module", sorted(MODULES))
def test_pairs_fit_the_released_length_limits(module, examples):
    for question, answer in examples(module, count=800, seed=3):
        assert 0 < len(question) <= 160 and 0 < len(answer) <= 30, (question, answer)
        assert "\n" not in question + answer and question == question.strip() and answer == answer.strip()


def test_over_long_pairs_are_drawn_again(monkeypatch):
    monkeypatch.setitem(MODULES, "long", Module(lambda rng, entropy: ("x" * rng.choice([160, 161]),
                                                                      "y" * rng.choice([30, 31])), (1, 2), 1))
    pairs = generate("long", 200, 0)
    assert {len(question) for question, _ in pairs} == {160} and {len(answer) for _, answer in pairs} == {30}


# ----------------------------------------------------------------------------------------
# Seeds and splits
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(MODULES))
def test_generation_is_determined_by_the_seed_alone(module):
    state = random.getstate()
    first = generate(module, 100, 5)
    random.seed(12345)  # the global generator plays no part
    assert generate(module, 100, 5) == first
    assert generate(module, 50, 5) == first[:50]
    assert generate(module, 100, 6) != first
    assert len(set(first)) > 90  # not one pair repeated
    random.setstate(state)


def test_modules_draw_from_their_own_streams(monkeypatch):
    """A module's pairs do not depend on which other modules exist or were generated."""
    before = generate("comparison__sort", 30, 1)
    monkeypatch.setitem(MODULES, "aaa_first", Module(lambda rng, entropy: ("q", "a"), (1, 2), 1))
    generate("numbers__place_value", 30, 1)
    assert generate("comparison__sort", 30, 1) == before


@pytest.mark.parametrize("module", sorted(MODULES))
def test_test_splits_are_new_questions(module):
    splits = generate_splits(module, 600, 50, seed=2)
    train = splits.pop("train")
    assert train == generate(module, 600, 2) and tuple(splits) == evaluation_splits(module)
    assert ("extrapolate" in splits) == (module in EXTRAPOLATED)
    questions = [question for pairs in splits.values() for question, _ in pairs]
    assert len(set(questions)) == 50 * len(splits) and not set(questions) & {question for question, _ in train}
    assert generate_splits(module, 600, 50, seed=2) == {"train": train, **splits}
    assert generate_splits(module, 600, 50, seed=3)["interpolate"] != splits["interpolate"]


# The modules the release has an extrapolation module of: larger numbers, or longer lists.
EXTRAPOLATED = {"arithmetic__add_or_sub", "comparison__sort", "numbers__place_value", "numbers__round_number"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_splits_are_the_release_s_difficulties(module):
    """Each split draws from its entropy range: easy below medium below hard, and interpolate
    inside the training range; a split that does not exist fails, naming the known ones."""
    size = {split: sum(len(question) for question, _ in generate(module, 300, 1, split))
            for split in ("train-easy", "train-medium", "train-hard")}
    assert size["train-easy"] < size["train-medium"] < size["train-hard"], size
    with pytest.raises(ValueError, match="split must be one of train, train-easy, .*extrapolate"):
        generate(module, 1, 0, "train-extreme")
    if module not in EXTRAPOLATED:
        with pytest.raises(ValueError, match="no extrapolate split"):
            generate(module, 1, 0, "extrapolate")


def test_splits_of_a_module_with_too_few_questions_raise(monkeypatch):
    monkeypatch.setitem(MODULES, "tiny", Module(lambda rng, entropy: (f"What is {rng.randint(1, 3)}?", "1"), (1, 2), 1))
    splits = generate_splits("tiny", 1, 2, 0)
    assert len(splits["interpolate"]) == 2 and splits["train"][0] not in splits["interpolate"]
    with pytest.raises(ValueError, match="fewer than 3 new interpolate questions"):
        generate_splits("tiny", 1, 3, 0)


def test_unknown_module_raises_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown Mathematics module 'algebra__linear_2d'; known: .*comparison__sort"):
        generate("algebra__linear_2d", 1, 0)


# ----------------------------------------------------------------------------------------
# The released layout
# ----------------------------------------------------------------------------------------


def write_lines(path, text, encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(text.encode(encoding) if isinstance(text, str) else text)


def test_written_dataset_has_the_released_format_and_loads_back(tmp_path):
    root = tmp_path / DATASET_FOLDER
    modules = ["algebra__linear_1d", "numbers__place_value"]
    assert write_dataset(str(root), modules, 30, 10, seed=4) == str(root)
    assert sorted(os.listdir(root)) == ["extrapolate", "interpolate", "train-easy", "train-hard", "train-medium"]
    # The release names extrapolate files after its extrapolation modules; linear_1d has none.
    assert os.listdir(root / "extrapolate") == ["numbers__place_value_big.txt"]
    for module in modules:
        train = [pair for level in ("easy", "medium", "hard") for pair in generate(module, 30, 4, f"train-{level}")]
        text = (root / "train-easy" / f"{module}.txt").read_bytes().decode("utf-8")
        assert text == "".join(f"{question}\n{answer}\n" for question, answer in train[:30])
        # Both the dataset folder and the folder holding it.
        assert load_pairs(str(tmp_path), module) == load_pairs(str(root), module, "train") == train
        for split, pairs in generate_splits(module, 0, 10, seed=4).items():
            if split != "train":
                assert load_pairs(str(tmp_path), module, split) == pairs
    assert list_modules(str(tmp_path)) == list_modules(str(root), "interpolate") == modules
    assert list_modules(str(root), "extrapolate") == ["numbers__place_value_big"]


def test_train_split_concatenates_the_difficulties_in_order(tmp_path):
    root = tmp_path / DATASET_FOLDER
    for difficulty in ("hard", "easy"):  # no train-medium file
        write_lines(str(root / f"train-{difficulty}" / "m.txt"), f"Q {difficulty}?\nA {difficulty}\n")
    write_lines(str(root / "extrapolate" / "m.txt"), "What is 1 + 1?\r\n2")  # CRLF, no final newline
    assert load_pairs(str(tmp_path), "m") == [("Q easy?", "A easy"), ("Q hard?", "A hard")]
    assert load_pairs(str(tmp_path), "m", difficulties=("hard",)) == [("Q hard?", "A hard")]
    assert load_pairs(str(tmp_path), "m", difficulties=("hard", "medium", "easy"))[0] == ("Q hard?", "A hard")
    assert load_pairs(str(root), "m", "extrapolate") == [("What is 1 + 1?", "2")]
    with pytest.raises(ValueError, match="split must be one of"):
        load_pairs(str(root), "m", "test")
    with pytest.raises(ValueError, match="difficulties must be some of"):
        load_pairs(str(root), "m", difficulties=("easy", "very hard"))


@pytest.mark.parametrize("content, message", [
    ("Q1?\nA1\nQ2?\n", r"has an odd number of lines \(3\): the question on line 3 has no answer"),
    ("", r"is empty"),
    ("\n \r\n", r"is empty \(blank lines only\)"),
    ("Q1?\nA1\n\nA2\n", r"line 3: empty question"),
    ("Q1?\n  \nQ2?\nA2\n", r"line 2: empty answer"),
    ("What is 1 \u2212 2?\n-3\n".encode("cp1252", errors="replace") + b"\xff\n", r"is not UTF-8: byte 0xff"),
])
def test_malformed_module_files_raise_data_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / DATASET_FOLDER / "interpolate" / "algebra__linear_1d.txt"
    write_lines(str(path), content)
    with pytest.raises(DataError, match=message) as error:
        load_pairs(str(tmp_path), "algebra__linear_1d", "interpolate")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_missing_module_file_names_the_expected_path_and_the_modules_present(tmp_path):
    root = tmp_path / DATASET_FOLDER
    write_lines(str(root / "train-easy" / "numbers__place_value.txt"), "Q?\nA\n")
    write_lines(str(root / "train-medium" / "comparison__sort.txt"), "Q?\nA\n")
    expected = re.escape(str(root / "train-easy" / "algebra__linear_1d.txt"))
    with pytest.raises(DataError, match=rf"no train file of module 'algebra__linear_1d': expected {expected} or .*"
                                        r"; modules present: comparison__sort, numbers__place_value$"):
        load_pairs(str(tmp_path), "algebra__linear_1d")
    with pytest.raises(DataError, match=r"no interpolate file of module 'comparison__sort': expected "
                                        rf"{re.escape(str(root / 'interpolate' / 'comparison__sort.txt'))}; "
                                        "modules present: none$"):
        load_pairs(str(root), "comparison__sort", "interpolate")


def test_missing_or_unrelated_folders_raise_data_error(tmp_path):
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'nowhere'))} does not exist"):
        load_pairs(str(tmp_path / "nowhere"), "comparison__sort")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=f"has neither a {DATASET_FOLDER} folder nor any of the folders train-easy"):
        load_pairs(str(tmp_path), "comparison__sort")


def test_write_pairs_refuses_what_the_format_cannot_hold(tmp_path):
    for pair in [("What is\n1?", "1"), ("What is 1?", ""), ("What is 1?", "1\r")]:
        with pytest.raises(ValueError, match="one non-empty line"):
            write_pairs(str(tmp_path / "m.txt"), [pair])


single_lines = st.text(st.characters(blacklist_characters="\n\r\ufeff", blacklist_categories=("Cs",)), min_size=1)


@given(st.lists(st.tuples(single_lines, single_lines), min_size=1, max_size=5))
def test_write_then_read_pairs_is_the_identity(pairs):
    pairs = [(q, a) for q, a in pairs if q.strip() and a.strip()]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.txt")
        if not pairs:
            write_pairs(path, pairs)
            with pytest.raises(DataError, match="is empty"):
                read_pairs(path)
            return
        write_pairs(path, pairs)
        assert read_pairs(path) == pairs


# ----------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------


def test_vocabulary_specials_come_first_with_their_ids():
    vocabulary = Seq2SeqVocabulary.from_pairs([("Sort 3, 1.", "1, 3")])
    assert vocabulary.symbols[:4] == ["<pad>", "<sos>", "<eos>", "<unk>"]
    assert (vocabulary.pad_id, vocabulary.sos_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2, 3)
    assert vocabulary.symbols[4:] == sorted(set("Sort 3, 1.1, 3"))
    assert vocabulary.encode("3,").min() >= 4
    # The character LM's vocabulary keeps its ids.
    lm = Vocabulary.from_text("ab")
    assert lm.symbols == ["<pad>", "<unk>", "a", "b"] and (lm.pad_id, lm.unk_id) == (0, 1)
    assert lm.to_dict() == {"characters": ["a", "b"]}


def test_vocabulary_decode_reads_up_to_eos_without_sos_and_pad():
    vocabulary = Seq2SeqVocabulary.from_text("-0123456789")
    ids = [vocabulary.sos_id, *vocabulary.encode("-42").tolist(), vocabulary.eos_id, *vocabulary.encode("7").tolist(),
           vocabulary.pad_id, vocabulary.pad_id]
    assert vocabulary.decode(ids) == vocabulary.decode(torch.tensor(ids)) == "-42"
    assert vocabulary.decode(ids, strip_specials=False) == "<sos>-42<eos>7<pad><pad>"
    assert vocabulary.decode([vocabulary.sos_id, vocabulary.pad_id] + vocabulary.encode("12").tolist()) == "12"
    assert vocabulary.decode([vocabulary.unk_id, vocabulary.eos_id]) == "<unk>"


def test_vocabulary_names_unknown_characters():
    vocabulary = Seq2SeqVocabulary.from_text("0123456789 ")
    with pytest.raises(DataError, match=r"characters not in the vocabulary: '\*' \(U\+002A\), 'x' \(U\+0078\)$"):
        vocabulary.encode("2*x 1")
    assert vocabulary.encode("2x", map_unknown=True).tolist()[1] == vocabulary.unk_id


@pytest.mark.parametrize("module", sorted(MODULES))
def test_printable_ascii_vocabulary_encodes_every_generated_pair(module):
    vocabulary = Seq2SeqVocabulary.printable_ascii()
    assert vocabulary.symbols[:4] == SPECIALS and len(vocabulary) == 4 + 95
    assert vocabulary.encode(" ~").tolist() == [4, 98]
    for question, answer in [pair for pairs in generate_splits(module, 300, 100, seed=3).values() for pair in pairs]:
        assert vocabulary.decode(vocabulary.encode(question + answer)) == question + answer
    with pytest.raises(DataError, match=r"characters not in the vocabulary: '\\t' \(U\+0009\), 'é' \(U\+00E9\)$"):
        vocabulary.encode("é\t")


def test_vocabulary_checkpoint_form_is_plain_and_loads_back(tmp_path):
    vocabulary = Seq2SeqVocabulary.from_pairs(generate("comparison__sort", 50, 0))
    state = vocabulary.to_dict()
    assert state == {"specials": ["<pad>", "<sos>", "<eos>", "<unk>"], "characters": vocabulary.symbols[4:]}
    torch.save({"vocabulary": state}, tmp_path / "v.pt")
    restored = Seq2SeqVocabulary.from_dict(torch.load(tmp_path / "v.pt", weights_only=True)["vocabulary"])
    assert isinstance(restored, Seq2SeqVocabulary) and restored == vocabulary


SPECIALS = ["<pad>", "<sos>", "<eos>", "<unk>"]


@pytest.mark.parametrize("state, message", [
    (None, "not a sequence-to-sequence vocabulary"),
    ([], "not a sequence-to-sequence vocabulary"),
    ({"characters": ["a", "b"]}, "not a sequence-to-sequence vocabulary: expected the specials"),  # a char LM's
    ({"specials": ["<pad>", "<unk>"], "characters": ["a"]}, "not a sequence-to-sequence vocabulary"),
    ({"specials": SPECIALS}, "not a vocabulary: expected a dict with a list of characters"),
    ({"specials": SPECIALS, "characters": "ab"}, "not a vocabulary: expected a dict with a list of characters"),
    ({"specials": SPECIALS, "characters": ["a", "a"]}, "not a vocabulary: .*distinct one-character strings"),
    ({"specials": SPECIALS, "characters": ["ab"]}, "not a vocabulary: .*distinct one-character strings"),
])
def test_vocabulary_from_a_bad_description_raises_data_error(state, message):
    with pytest.raises(DataError, match=message):
        Seq2SeqVocabulary.from_dict(state)


@given(st.text(min_size=1))
def test_vocabulary_encode_decode_round_trip(text):
    vocabulary = Seq2SeqVocabulary.from_text(text)
    ids = vocabulary.encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),) and int(ids.min()) >= len(SPECIALS)
    assert vocabulary.decode(ids) == text
    with_specials = [vocabulary.sos_id] + ids.tolist() + [vocabulary.eos_id, vocabulary.pad_id]
    assert vocabulary.decode(with_specials) == text


# ----------------------------------------------------------------------------------------
# Dataset and batches
# ----------------------------------------------------------------------------------------


def test_math_dataset_encodes_each_pair():
    pairs = generate("algebra__linear_1d", 20, 0)
    vocabulary = Seq2SeqVocabulary.from_pairs(pairs)
    dataset = MathDataset(pairs, vocabulary, max_question_length=160, max_answer_length=30)
    assert len(dataset) == 20
    for (question, answer), (source, target) in zip(pairs, dataset):
        assert source.dtype == target.dtype == torch.int64
        assert vocabulary.decode(source) == question and vocabulary.decode(target) == answer


def test_math_dataset_rejects_unknown_characters_and_over_long_pairs():
    vocabulary = Seq2SeqVocabulary.from_text("What is 1+2?3")
    with pytest.raises(DataError, match=r"question 1 'What is 1\*2\?': characters not in the vocabulary: '\*'"):
        MathDataset([("What is 1+2?", "3"), ("What is 1*2?", "2")], vocabulary)
    with pytest.raises(DataError, match=r"answer 0 '-3': characters not in the vocabulary: '-'"):
        MathDataset([("What is 1+2?", "-3")], vocabulary)
    with pytest.raises(DataError, match=r"question 0 has 12 characters, more than the limit 11"):
        MathDataset([("What is 1+2?", "3")], vocabulary, max_question_length=11)
    with pytest.raises(DataError, match=r"answer 0 has 2 characters, more than the limit 1"):
        MathDataset([("What is 1+2?", "33")], vocabulary, max_answer_length=1)


def check_batch(batch, items, pad_id, sos_id, eos_id):
    """The batch's fields against the (source, target) items it was made of."""
    assert isinstance(batch, Seq2SeqBatch)
    assert all(t.dtype == torch.int64 for t in batch)
    sizes = len(items), max(len(s) for s, _ in items), max(len(t) for _, t in items) + 1
    assert batch.source.shape == sizes[:2]
    assert batch.target_input.shape == batch.target_output.shape == (sizes[0], sizes[2])
    for row, (source, target) in enumerate(items):
        length = len(target) + 1
        assert batch.source_lengths[row] == len(source) and batch.target_lengths[row] == length
        assert torch.equal(batch.source[row, :len(source)], source)
        assert (batch.source[row, len(source):] == pad_id).all()
        assert batch.target_input[row, 0] == sos_id and torch.equal(batch.target_input[row, 1:length], target)
        assert torch.equal(batch.target_output[row, :length - 1], target)
        assert batch.target_output[row, length - 1] == eos_id
        assert (batch.target_input[row, length:] == pad_id).all()
        assert (batch.target_output[row, length:] == pad_id).all()
        # Teacher forcing: the decoder's input is its expected output shifted right by one.
        assert torch.equal(batch.target_input[row, 1:length], batch.target_output[row, :length - 1])


def test_collate_pads_sources_and_shifted_targets_through_a_data_loader():
    pairs = [("Sort 3, 1.", "1, 3"), ("Solve 0 = 4*b - 12 for b.", "3"), ("What is 2?", "-0.25")]
    vocabulary = Seq2SeqVocabulary.from_pairs(pairs)
    dataset = MathDataset(pairs, vocabulary)
    collate = Seq2SeqCollate(vocabulary.pad_id, vocabulary.sos_id, vocabulary.eos_id)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate)))
    check_batch(batch, [dataset[i] for i in range(3)], vocabulary.pad_id, vocabulary.sos_id, vocabulary.eos_id)
    assert batch.source_lengths.tolist() == [10, 25, 10] and batch.target_lengths.tolist() == [5, 2, 6]
    assert [vocabulary.decode(row) for row in batch.target_output] == ["1, 3", "3", "-0.25"]
    assert vocabulary.decode(batch.target_input[1], strip_specials=False) == "<sos>3<pad><pad><pad><pad>"


sequences = st.lists(st.integers(4, 30), min_size=1, max_size=12)


@given(st.lists(st.tuples(sequences, st.lists(st.integers(4, 30), max_size=8)), min_size=1, max_size=6),
       st.sampled_from([(0, 1, 2), (5, 6, 7)]))
def test_collate_batches_any_lengths(items, specials):
    items = [(torch.tensor(s, dtype=torch.int64), torch.tensor(t, dtype=torch.int64)) for s, t in items]
    check_batch(Seq2SeqCollate(*specials)(items), items, *specials)
