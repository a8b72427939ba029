"""The course pipelines `dll-ext train classify|nback|charlm` and `dll-ext generate`, end to end.

Runs are in-process through dll_ext.cli.main in quick mode with even smaller sizes; the MNIST
and CIFAR-10 folders are written here in their real formats (helpers of test_data.py). Bad
input must end in one `error:` line on stderr and exit code 2, never a traceback.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dll_ext.cli import main
from dll_ext.data import IGNORE_INDEX, NBackCollate, Vocabulary
from dll_ext.training import load_checkpoint
from dll_ext.training.command import parse_options
from dll_ext.training.pipelines import charlm, classify, nback
from test_data import write_cifar, write_mnist

PNG = b"\x89PNG\r\n\x1a\n"


def train(name, out, *options):
    return main(["train", name, "--out", str(out), "--quick", "--device", "cpu", *options])


def metrics(out):
    return json.loads((out / "metrics.json").read_text())


def build(pipeline, *options):
    """The task `dll-ext train <pipeline> --quick <options>` would train."""
    torch.manual_seed(0)
    return pipeline.build(parse_options(pipeline, ["--quick", *options]))


def assert_user_error(capsys, code, *fragments):
    """Exit code 2 and one `error:` line naming every fragment; no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and " error: " in err, err
    for fragment in fragments:
        assert fragment in err, err


# ----------------------------------------------------------------------------------------
# classify
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("digits")
    assert train("classify", out, "--epochs", "4") == 0
    return out


def test_classify_digits_quick_run(digits_run):
    m = metrics(digits_run)
    assert m["layers"] == "dll_ext" and m["epochs"] == 4 and m["step_time_ms"] > 0
    assert m["test"]["accuracy"] > 0.85  # ten classes: chance is 0.1
    # The confusion matrix counts the 15% test split (271 of 1,797), the weights tested being best.pt's.
    matrix = torch.tensor(m["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 271 and m["classes"] == [str(d) for d in range(10)]
    assert matrix.diag().sum() / 271 == pytest.approx(m["test"]["accuracy"])
    for name in ("confusion.png", "curves.png"):
        assert (digits_run / name).read_bytes()[:8] == PNG
    config = load_checkpoint(digits_run / "best.pt", "classify")["task_config"]
    assert config["model"] == "convnet" and config["image_shape"] == [1, 8, 8] and len(config["mean"]) == 1


def test_classify_digits_splits_are_seeded_and_disjoint():
    pytest.importorskip("sklearn")
    task = build(classify.PIPELINE)
    splits = [set(s.indices) for s in (task.train_set, task.val_set, task.test_set)]
    assert [len(s) for s in splits] == [1257, 269, 271] and set.union(*splits) == set(range(1797))
    assert build(classify.PIPELINE).train_set.indices == task.train_set.indices
    assert build(classify.PIPELINE, "--data-seed", "1").train_set.indices != task.train_set.indices
    # Normalised with the training split's statistics.
    train_images = torch.stack([task.train_set[i][0] for i in range(len(task.train_set))])
    assert abs(train_images.mean()) < 1e-4 and train_images.std() == pytest.approx(1, abs=1e-3)


def mnist_folder(folder, **sizes):
    folder.mkdir()
    write_mnist(folder, **sizes)


def test_classify_mnist_folder(tmp_path):
    mnist_folder(tmp_path / "mnist", counts=(40, 12))
    out = tmp_path / "run"
    assert train("classify", out, "--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"),
                 "--model", "feedforward", "--epochs", "1", "--val-fraction", "0.25", "--batch-size", "8") == 0
    m = metrics(out)
    assert m["steps"] == 4 and sum(map(sum, m["confusion_matrix"])) == 12  # 30 training images, the 12 test ones
    assert (out / "confusion.png").read_bytes()[:8] == PNG


def test_classify_cifar_folder_with_resnet(tmp_path):
    write_cifar(tmp_path / "cifar", sizes=(4, 4, 4, 4, 4), test_size=6)
    out = tmp_path / "run"
    assert train("classify", out, "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                 "--model", "resnet", "--epochs", "1", "--val-fraction", "0.2", "--batch-size", "8") == 0
    m = metrics(out)
    assert m["steps"] == 2 and m["classes"][0] == "airplane" and sum(map(sum, m["confusion_matrix"])) == 6


def test_cifar_augmentation_is_for_training_images_only(tmp_path):
    write_cifar(tmp_path, sizes=(4, 4, 4, 4, 4))
    task = build(classify.PIPELINE, "--dataset", "cifar10", "--data-dir", str(tmp_path), "--val-fraction", "0.2")
    images = task.train_set.dataset.images
    mean, std = (torch.tensor(task.config[k]).view(3, 1, 1) for k in ("mean", "std"))
    index = task.train_set.indices[0]
    plain = (images[index].float() / 255 - mean) / std
    draws = [task.train_set[0][0] for _ in range(8)]
    assert not all(torch.equal(draw, plain) for draw in draws)  # random crops and flips
    assert len({draw.sum().item() for draw in draws}) > 1
    val_index = task.val_set.indices[0]
    torch.testing.assert_close(task.val_set[0][0], (images[val_index].float() / 255 - mean) / std)
    no_augment = build(classify.PIPELINE, "--dataset", "cifar10", "--data-dir", str(tmp_path),
                       "--val-fraction", "0.2", "--augment", "none")
    torch.testing.assert_close(no_augment.train_set[0][0], plain)


def test_confusion_matrix_rows_are_true_classes():
    matrix = classify.confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def _break_cifar(folder):
    (folder / "data_batch_2").write_bytes(b"\x80\x02 truncated")


def _break_mnist(folder):
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01")


@pytest.mark.parametrize("dataset, damage, message", [
    ("mnist", None, "MNIST folder: {folder} does not exist"),
    ("cifar10", None, "CIFAR-10 folder: {folder} does not exist"),
    ("mnist", _break_mnist, "train-images-idx3-ubyte: 4 bytes, too short for an IDX header"),
    ("cifar10", _break_cifar, "data_batch_2 is not a CIFAR-10 pickle file"),
    ("cifar10", lambda folder: os.remove(folder / "batches.meta"), "lacks batches.meta"),
], ids=["mnist-missing", "cifar-missing", "mnist-malformed", "cifar-malformed", "cifar-incomplete"])
def test_classify_bad_data_folder(capsys, tmp_path, dataset, damage, message):
    folder = tmp_path / "data"
    if damage is not None:
        (mnist_folder if dataset == "mnist" else write_cifar)(folder)
        damage(folder)
    out = tmp_path / "run"
    code = train("classify", out, "--dataset", dataset, "--data-dir", str(folder))
    assert_user_error(capsys, code, message.format(folder=folder))
    assert not (out / "checkpoint.pt").exists()


def test_classify_without_data_dir_or_scikit_learn(capsys, tmp_path, monkeypatch):
    assert_user_error(capsys, train("classify", tmp_path, "--dataset", "cifar10"),
                      "--dataset cifar10 reads a local copy: pass --data-dir FOLDER")
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    assert_user_error(capsys, train("classify", tmp_path), "pip install scikit-learn")


# ----------------------------------------------------------------------------------------
# nback
# ----------------------------------------------------------------------------------------


def test_nback_quick_run_beats_chance(tmp_path):
    out = tmp_path / "run"
    assert train("nback", out, "--sequences", "256", "--eval-sequences", "100", "--batch-size", "16",
                 "--epochs", "20") == 0
    m = metrics(out)
    # "Never the same as n back" is right at ~79% of the valid positions (the first n, and 3/4 of
    # the others), where training first stalls; after 320 steps the model has learned the task.
    task = build(nback.PIPELINE, "--sequences", "256", "--eval-sequences", "100")
    targets = torch.cat([t for _, t in task.val_set.sequences])
    majority = (targets == 0).double().mean().item()
    assert 0.7 < majority < 0.85
    assert m["val"]["accuracy"] > 0.95 and m["test"]["accuracy"] > 0.95


def test_nback_sets_are_the_course_draws():
    task = build(nback.PIPELINE)
    # The course draws training, then validation sequences from one RandomState(0).
    random_state = np.random.RandomState(0)
    length = int(max(4, random_state.normal(loc=20, scale=5)))
    assert task.train_set.lengths[0] == length
    assert torch.equal(task.train_set[0][0], torch.from_numpy(random_state.randint(4, size=length)))
    assert [len(s) for s in (task.train_set, task.val_set, task.test_set)] == [1000, 1000, 1000]
    assert task.val_set.lengths != task.test_set.lengths


def test_nback_loss_and_accuracy_count_valid_positions_only():
    task = build(nback.PIPELINE, "--eval-sequences", "10")
    items = [task.val_set[i] for i in range(4)]
    inputs, lengths, targets = NBackCollate(4)(items)
    assert (lengths < lengths.max()).any()  # some padding
    out = task.loss(task.model, (inputs, lengths, targets))
    assert out.count == lengths.sum().item()
    logits = task.model(inputs, lengths)
    valid = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[valid], targets[valid])
    torch.testing.assert_close(out.loss, expected)
    assert out.sums["accuracy"] == (logits[valid].argmax(1) == targets[valid]).sum()


# ----------------------------------------------------------------------------------------
# charlm and generate
# ----------------------------------------------------------------------------------------

TEXT = "".join(f"the {animal} {verb} the {thing}.\n" for animal in ("cat", "dog", "fox", "owl")
               for verb in ("sees", "eats", "likes") for thing in ("fish", "bone", "hat", "moon")) * 8
SMALL_LM = ["--batch-size", "4", "--bptt", "32", "--hidden-size", "48", "--embedding-dim", "16"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("charlm")
    assert train("charlm", out, "--text", str(text_file), *SMALL_LM, "--epochs", "3", "--lr", "0.01") == 0
    return out


def test_charlm_quick_run(lm_run):
    m = metrics(lm_run)
    vocabulary = Vocabulary.from_text(TEXT)
    for split in ("train", "val", "test"):
        assert m[split]["perplexity"] == pytest.approx(math.exp(m[split]["loss"]))
        assert m[split]["bpc"] == pytest.approx(m[split]["loss"] / math.log(2))
    # Uniform guessing costs log2(21) = 4.4 bits per character; the text is very regular.
    assert m["val"]["bpc"] < 0.6 * math.log2(len(vocabulary) - 2)
    config = load_checkpoint(lm_run / "best.pt", "charlm")["task_config"]
    assert config["vocabulary"] == vocabulary.to_dict() and config["model"]["hidden_size"] == 48


def generate(capsys, checkpoint, prompt, *options):
    code = main(["generate", "--checkpoint", str(checkpoint), "--prompt", prompt, *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_generate_greedy_is_deterministic_and_sampling_seeded(capsys, lm_run):
    best = lm_run / "best.pt"
    greedy = generate(capsys, best, "the cat ", "--length", "60", "--greedy")
    assert greedy.startswith("the cat ") and len(greedy) == len("the cat ") + 60 + 1  # and a newline
    assert generate(capsys, best, "the cat ", "--length", "60", "--greedy") == greedy
    sampled = [generate(capsys, best, "the ", "--length", "80", "--temperature", "1.5", "--seed", seed)
               for seed in ("1", "1", "2")]
    assert sampled[0] == sampled[1] != sampled[2]
    # top-k 1 samples the most likely character: greedy search.
    assert generate(capsys, best, "the cat ", "--length", "60", "--top-k", "1", "--seed", "3") == greedy
    # The run folder stands for its best.pt.
    assert generate(capsys, lm_run, "the cat ", "--length", "60", "--greedy") == greedy


def test_charlm_state_is_carried_between_consecutive_chunks(text_file):
    task = build(charlm.PIPELINE, "--text", str(text_file), *SMALL_LM)
    task.model.eval()
    loader = DataLoader(task.train_set, batch_size=4)
    (x0, y0, c0), (x1, y1, c1) = next(iter(loader)), list(loader)[1]
    assert (c0 == 0).all() and (c1 == 1).all() and torch.equal(x1[:, 0], y0[:, -1])
    with torch.no_grad():
        task.loss(task.model, (x0, y0, c0))
        carried = task.loss(task.model, (x1, y1, c1)).loss
        logits, _ = task.model(torch.cat([x0, x1], 1))
        whole = torch.nn.functional.cross_entropy(logits[:, 32:].flatten(0, 1), y1.flatten())
        torch.testing.assert_close(carried, whole)
        # Chunk 0 (a new epoch or evaluation) starts from zeros, whatever came before.
        fresh = torch.nn.functional.cross_entropy(task.model(x0)[0].flatten(0, 1), y0.flatten())
        torch.testing.assert_close(task.loss(task.model, (x0, y0, c0)).loss, fresh)


@pytest.mark.parametrize("world_size", [1, 2])
def test_chunked_stream_gives_each_process_the_same_rows_chunk_after_chunk(world_size):
    """Read in order as the trainer reads it (every world_size-th item per process, batches of
    rows / world_size), row r of each batch continues row r of the batch before."""
    stream = charlm.ChunkedStream(torch.arange(1000), rows=4, bptt=10)
    for rank in range(world_size):
        sampler = DistributedSampler(stream, num_replicas=world_size, rank=rank, shuffle=False)
        batches = list(DataLoader(stream, batch_size=4 // world_size, sampler=sampler))
        assert len(batches) == len(stream.batches) == 25
        for (x, y, chunk), (next_x, _, next_chunk) in zip(batches, batches[1:]):
            assert torch.equal(next_x[:, 0], x[:, -1] + 1) and torch.equal(y, x + 1)
            assert (next_chunk == chunk + 1).all()
    assert len(stream) == 100


def test_charlm_resumed_within_an_epoch_equals_uninterrupted(tmp_path, text_file):
    """The carried state is saved with the checkpoint: stopped at step 5 of the first epoch and
    resumed, the run ends with the weights of one never stopped."""
    options = ["--text", str(text_file), *SMALL_LM, "--epochs", "2", "--dropout", "0.1"]
    assert train("charlm", tmp_path / "a", *options) == 0
    assert train("charlm", tmp_path / "b", *options, "--stop-after-steps", "5") == 130
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["ranks"][0]["task"]["next_chunk"] == 5
    assert train("charlm", tmp_path / "b", *options, "--resume") == 0
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt")["model"] for run in ("a", "b"))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_charlm_ddp_two_processes_match_one(tmp_path, text_file):
    """Under torchrun, 2 processes of 4 rows each read the rows 1 process of 8 reads (each its own
    state carried along them): the same steps, up to summation order."""
    options = ["--text", str(text_file), *SMALL_LM, "--epochs", "1", "--dropout", "0"]
    assert train("charlm", tmp_path / "single", *options, "--batch-size", "8") == 0
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "dll_ext.cli", "train", "charlm", "--out", str(tmp_path / "ddp"), "--quick", "--device", "cpu", *options],
        capture_output=True, text=True, timeout=120, env={**env, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    single, ddp = metrics(tmp_path / "single"), metrics(tmp_path / "ddp")
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"]
    assert ddp["val"]["loss"] == pytest.approx(single["val"]["loss"], rel=1e-4)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt")["model"] for run in ("single", "ddp"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_charlm_bad_text(capsys, tmp_path, lm_run):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    before = (lm_run / "checkpoint.pt").read_bytes()
    # A failed run leaves the run it was to replace alone.
    assert_user_error(capsys, train("charlm", lm_run, "--text", str(empty), "--overwrite"), f"{empty} is empty")
    assert (lm_run / "checkpoint.pt").read_bytes() == before
    short = tmp_path / "short.txt"
    short.write_text("a few words, not enough for 32 rows\n" * 3)
    assert_user_error(capsys, train("charlm", tmp_path / "run", "--text", str(short)),
                      "the validation piece of the text is too short")
    assert_user_error(capsys, train("charlm", tmp_path / "run", "--text", str(tmp_path / "nothing.txt")),
                      "does not exist")


def test_generate_bad_prompt(capsys, lm_run):
    code = main(["generate", "--checkpoint", str(lm_run / "best.pt"), "--prompt", "the Zebra €"])
    assert_user_error(capsys, code, "characters not in the vocabulary: 'Z' (U+005A), 'r' (U+0072), '€' (U+20AC)")
    assert_user_error(capsys, main(["generate", "--checkpoint", str(lm_run / "best.pt"), "--prompt", ""]),
                      "the prompt is empty")


def test_generate_from_another_pipelines_checkpoint(capsys, digits_run):
    code = main(["generate", "--checkpoint", str(digits_run / "best.pt"), "--prompt", "the"])
    assert_user_error(capsys, code, "is a checkpoint of the 'classify' pipeline, not of 'charlm'")


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:500]), "cannot read checkpoint"),
    (lambda path: torch.save({"weights": torch.zeros(3)}, path), "is not a dll-ext training checkpoint"),
    (lambda path: torch.save({**torch.load(path, weights_only=True), "model": {"output.bias": torch.zeros(3)}},
                             path), "holds the weights of another model"),
    (lambda path: torch.save({**torch.load(path, weights_only=True), "task_config": {"model": {}}}, path),
     "its configuration does not describe a character LM"),
], ids=["truncated", "foreign-file", "other-model", "no-vocabulary"])
def test_generate_bad_checkpoint(capsys, tmp_path, lm_run, damage, message):
    path = tmp_path / "model.pt"
    path.write_bytes((lm_run / "best.pt").read_bytes())
    damage(path)
    code = main(["generate", "--checkpoint", str(path), "--prompt", "the"])
    assert_user_error(capsys, code, message)


def test_generate_command_line(lm_run):
    """The installed entry point: the same one error line and exit code, and no traceback."""
    command = [sys.executable, "-m", "dll_ext.cli", "generate", "--checkpoint", str(lm_run / "best.pt")]
    result = subprocess.run([*command, "--prompt", "the Zoo"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "dll-ext generate: error: characters not in the vocabulary: 'Z' (U+005A)\n"
    result = subprocess.run([*command, "--prompt", "the", "--greedy", "--top-k", "2"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "--greedy takes no --temperature or --top-k" in result.stderr
