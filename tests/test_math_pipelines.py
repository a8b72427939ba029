"""The math pipelines `dll-ext train math-transformer|math-lstm` and `dll-ext answer`, end to end.

Runs are in-process through dll_ext.cli.main. The --quick runs are the real ones (they must show
learning: exact match well above chance); the others are smaller still. Bad input must end in
one `error:` line on stderr and exit code 2, never a traceback.
"""
import json
import os
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from dll_ext.cli import main
from dll_ext.data.math import load_pairs, read_pairs, write_dataset, write_pairs
from dll_ext.training import load_checkpoint
from dll_ext.training.pipelines import seq2seq
from dll_ext.training.pipelines.seq2seq import load_math_model
from conftest import run_command
from test_pipelines import PNG, assert_user_error, metrics

pytestmark = pytest.mark.slow

PIPELINES = ("math-transformer", "math-lstm")
PLACE_VALUE = "numbers__place_value"


def train(name, out, *options):
    return main(["train", name, "--out", str(out), "--device", "cpu", *options])


@pytest.fixture(scope="module", params=PIPELINES)
def quick_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    assert train(request.param, out, "--quick") == 0
    return request.param, out


def test_quick_run_learns(quick_run):
    name, out = quick_run
    m = metrics(out)
    assert m["pipeline"] == name and m["layers"] == "dll_ext" and m["step_time_ms"] > 0
    # A digit of the question is the answer: chance is about 0.1.
    assert m["test"]["exact_match"] > 0.25, m["test"]


def test_teacher_forced_exact_match_is_greedy_decoding(quick_run):
    """The validation metric (every token right given the true prefix) counts exactly the answers
    greedy decoding gets right: on the test split both are measured, and they agree."""
    _, out = quick_run
    m = metrics(out)
    assert m["test_greedy_exact_match"][PLACE_VALUE] == pytest.approx(m["test"]["exact_match"])


def test_final_evaluation_reports_beam_search_and_heatmaps(quick_run):
    _, out = quick_run
    m = metrics(out)
    assert 0 <= m["test_beam4_exact_match"][PLACE_VALUE] <= 1
    # place_value has an extrapolate split (numbers of 12 digits' entropy): measured, not learnt.
    assert 0 <= m["extrapolate_greedy_exact_match"][PLACE_VALUE] <= 1
    assert 0 <= m["extrapolate_beam4_exact_match"][PLACE_VALUE] <= 1
    for example in m["examples"][PLACE_VALUE]:
        scores = [h["score"] for h in example["beam"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
        # Single-token answers: the best beam is the greedy answer.
        assert example["beam"][0]["answer"] == example["greedy"]
    assert (out / "attention.png").read_bytes()[:8] == PNG


def test_checkpoint_rebuilds_the_model(quick_run):
    name, out = quick_run
    model, vocabulary = load_math_model(out / "best.pt")
    config = load_checkpoint(out / "best.pt", name)["task_config"]
    assert config["modules"] == [PLACE_VALUE] and config["architecture"] in ("transformer", "lstm")
    assert vocabulary.sos_id == model.sos_id and vocabulary.eos_id == model.eos_id
    question = metrics(out)["examples"][PLACE_VALUE][0]["question"]
    source = vocabulary.encode(question).unsqueeze(0)
    ids = model.greedy(source, torch.tensor([source.size(1)]), 4)
    assert vocabulary.decode(ids[0]) == metrics(out)["examples"][PLACE_VALUE][0]["greedy"]


@pytest.mark.parametrize("name", PIPELINES)
def test_several_modules_from_a_data_dir(name, tmp_path):
    """Training pairs of two modules read from a folder in the official layout; the test is
    reported per module, on interpolate and on extrapolate (where only one module has a file)."""
    modules = ["numbers__place_value", "comparison__sort"]
    root = tmp_path / "mathematics_dataset-v1.0"
    write_dataset(str(root), modules, 100, 20, seed=5)
    (root / "extrapolate" / "comparison__sort_more.txt").unlink()
    out = tmp_path / "run"
    assert train(name, out, "--data-dir", str(tmp_path), "--modules", ",".join(modules), "--epochs", "1",
                 "--val-size", "50", "--beam", "2", "--d-model" if name == "math-transformer" else "--hidden-size",
                 "32") == 0
    m = metrics(out)
    assert sorted(m["test_greedy_exact_match"]) == sorted(modules)
    assert sorted(m["test_beam2_exact_match"]) == sorted(modules)
    assert list(m["extrapolate_greedy_exact_match"]) == list(m["extrapolate_beam2_exact_match"]) == [PLACE_VALUE]
    # 2 x 3 x 100 training pairs, 50 of them held out: 9 batches of 64.
    assert m["steps"] == 9


def test_data_dir_training_pairs_mix_every_difficulty(tmp_path):
    root = tmp_path / "mathematics_dataset-v1.0"
    for difficulty in ("easy", "medium", "hard"):
        (root / f"train-{difficulty}").mkdir(parents=True)
        write_pairs(str(root / f"train-{difficulty}" / f"{PLACE_VALUE}.txt"),
                    [(f"{difficulty} {i}?", str(i)) for i in range(100)])
    (root / "interpolate").mkdir()
    write_pairs(str(root / "interpolate" / f"{PLACE_VALUE}.txt"), [("q?", "1")])
    args = SimpleNamespace(modules=[PLACE_VALUE], data_dir=str(tmp_path), train_size=60, test_size=5, data_seed=0)
    train_pairs = seq2seq._pairs(args)[0][PLACE_VALUE]
    assert len(set(train_pairs)) == 60
    counts = Counter(question.split()[0] for question, _ in train_pairs)
    assert set(counts) == {"easy", "medium", "hard"} and min(counts.values()) >= 8, counts
    assert seq2seq._pairs(args)[0][PLACE_VALUE] == train_pairs
    args.train_size = 1000
    assert sorted(seq2seq._pairs(args)[0][PLACE_VALUE]) == sorted(load_pairs(str(tmp_path), PLACE_VALUE))


def test_test_split_characters_the_training_pairs_lack(tmp_path):
    """Like the released train-easy place_value files, which never say "millions": training
    pairs without 'l' or 'm', test questions with them. Every test question is answered."""
    root = tmp_path / "mathematics_dataset-v1.0"
    write_dataset(str(root), [PLACE_VALUE], 150, 20, seed=2)
    for difficulty in ("easy", "medium", "hard"):
        train_file = root / f"train-{difficulty}" / f"{PLACE_VALUE}.txt"
        kept = [(q, a) for q, a in read_pairs(str(train_file)) if not {"l", "m"} & set(q + a)]
        assert len(kept) >= 30
        write_pairs(str(train_file), kept)
    test_pairs = read_pairs(str(root / "interpolate" / f"{PLACE_VALUE}.txt"))
    write_pairs(str(root / "interpolate" / f"{PLACE_VALUE}.txt"),
                test_pairs + [("What is the ten millions digit of 123456789?", "2")])
    out = tmp_path / "run"
    assert train("math-transformer", out, "--data-dir", str(tmp_path), "--epochs", "1", "--val-size", "20",
                 "--d-model", "32", "--beam", "2") == 0
    assert 0 <= metrics(out)["test_greedy_exact_match"][PLACE_VALUE] <= 1
    model, vocabulary = load_math_model(out / "best.pt")
    assert vocabulary.encode("millions!").min() > vocabulary.unk_id


def test_bad_options_and_data_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train("math-lstm", out, "--modules", "numbers__nonsense")
    assert exit_info.value.code == 2 and "unknown module(s) numbers__nonsense" in capsys.readouterr().err
    assert_user_error(capsys, train("math-lstm", out, "--data-dir", str(tmp_path / "none")), "does not exist")
    write_dataset(str(tmp_path / "data"), ["comparison__sort"], 10, 5, seed=0)
    assert_user_error(capsys, train("math-lstm", out, "--data-dir", str(tmp_path / "data")),
                      "numbers__place_value", "comparison__sort")
    assert_user_error(capsys, train("math-transformer", out, "--d-model", "30", "--heads", "4"),
                      "--d-model 30 must be a multiple of --heads 4")
    assert_user_error(capsys, train("math-lstm", out, "--train-size", "100", "--val-size", "100"),
                      "--val-size 100 leaves no training pairs")
    assert not out.exists() or not (out / "checkpoint.pt").exists()



def answer(out, question, *options):
    return main(["answer", "--checkpoint", str(out / "best.pt"), question, *options])


def test_answer_prints_greedy_and_nbest(quick_run, capsys):
    _, out = quick_run
    example = metrics(out)["examples"][PLACE_VALUE][0]
    capsys.readouterr()
    assert answer(out, example["question"]) == 0
    assert capsys.readouterr().out == example["greedy"] + "\n"
    # The run folder stands for its best.pt.
    assert main(["answer", "--checkpoint", str(out), example["question"]]) == 0
    assert capsys.readouterr().out == example["greedy"] + "\n"
    assert answer(out, example["question"], "--beam", "4", "--nbest", "3") == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [text for _, text in lines] == [h["answer"] for h in example["beam"][:3]]
    assert [float(score) for score, _ in lines] == pytest.approx([h["score"] for h in example["beam"][:3]], abs=1e-4)


def test_answer_bad_input(quick_run, tmp_path, capsys):
    _, out = quick_run
    for question, fragment in (("What is the tens digit of 12€4?", "'€' (U+20AC)"), ("", "the question is empty"),
                               ("1" * 161, "at most 160")):
        assert_user_error(capsys, answer(out, question), fragment)
    # Printable ASCII the training questions never held is answered, not refused.
    assert answer(out, "Which digit of 7 is the units digit?!") == 0 and capsys.readouterr().out.count("\n") == 1
    assert_user_error(capsys, main(["answer", "--checkpoint", str(tmp_path / "none.pt"), "1+1"]), "no checkpoint")
    assert_user_error(capsys, main(["answer", "--checkpoint", str(tmp_path), "1+1"]),
                      f"no best.pt in the folder {tmp_path}: pass a run folder")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert_user_error(capsys, main(["answer", "--checkpoint", str(tmp_path / "bad.pt"), "1+1"]), "cannot read")


def test_answer_refuses_other_pipelines_checkpoints(tmp_path, capsys):
    out = tmp_path / "nback"
    assert main(["train", "nback", "--out", str(out), "--quick", "--epochs", "1", "--sequences", "64"]) == 0
    assert_user_error(capsys, answer(out, "1+1"), "'nback' pipeline", "math-transformer")


def test_exported_model_answers_in_cpp_as_in_python(quick_run, dll_infer, capsys):
    """dll-ext export writes the TorchScript model with the decoding loop inside; dll_infer answers
    every example question as Python's greedy decoding does, and refuses bad questions."""
    _, out = quick_run
    assert main(["export", str(out)]) == 0
    info = json.loads((out / "export" / "export.json").read_text())
    assert info["kind"] == "seq2seq" and info["aoti"] is None and "decoding loop" in info["aoti_error"]
    model = out / "export" / "model.pt"
    for example in metrics(out)["examples"][PLACE_VALUE]:
        result = run_command([str(dll_infer), "answer", str(model), example["question"]], 120)
        assert result.returncode == 0 and result.stdout == example["greedy"] + "\n", result.stderr
    for question, fragment in (("12€4?", "U+20AC"), ("", "empty"), ("1" * 161, "160")):
        result = run_command([str(dll_infer), "answer", str(model), question], 120)
        assert result.returncode == 1 and fragment in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_ddp_two_processes(tmp_path):
    """Under torchrun, 2 processes of 16 answers each take the steps 1 process of 32 takes. The
    losses are close, not equal: each process averages over its own answers' tokens."""
    options = ["--train-size", "640", "--val-size", "64", "--test-size", "16", "--hidden-size", "32", "--epochs", "1",
               "--dropout", "0", "--beam", "2"]
    assert train("math-lstm", tmp_path / "single", *options, "--batch-size", "32") == 0
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dll_ext.cli",
         "train", "math-lstm", "--out", str(tmp_path / "ddp"), "--device", "cpu", *options, "--batch-size", "16"],
        capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    single, ddp = metrics(tmp_path / "single"), metrics(tmp_path / "ddp")
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"] == 18
    assert ddp["val"]["loss"] == pytest.approx(single["val"]["loss"], rel=0.05)
    assert sorted(ddp["test_greedy_exact_match"]) == [PLACE_VALUE]
