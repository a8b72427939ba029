"""The training toolkit (dll_ext.training) through its first pipeline, `dll-ext train regression`.

Runs are in-process through dll_ext.cli.main, except where a real signal or torchrun is needed.
Sizes are small (120 training points, batches of 16: 8 steps per epoch) so the file stays fast.
"""
import argparse
import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from dll_ext.cli import main
from dll_ext.data.errors import DataError
from dll_ext.training import (PIPELINES, Pipeline, TrainingError, average_state_dicts, load_checkpoint,
                              save_torch)
from dll_ext.training.command import parse_options
from dll_ext.training.data import train_loader
from dll_ext.training.distributed import DistEnv
from dll_ext.training.pipelines.regression import PIPELINE as REGRESSION
from dll_ext.training.seeding import seed_everything

SMALL = ["--quick", "--points", "200", "--batch-size", "16", "--device", "cpu"]
STEPS_PER_EPOCH = 8


def train(out, *options):
    return main(["train", "regression", "--out", str(out), *SMALL, *options])


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def history(out):
    """history.csv without the wall-clock column."""
    with open(out / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def metrics(out):
    return json.loads((out / "metrics.json").read_text())


def test_quick_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "regression", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    m = metrics(out)
    # 300 training points, 20 epochs: the test loss nears the noise variance (0.25), the exact
    # least-squares fit's own test loss.
    assert m["epochs"] == 20 and m["steps"] == 20 * 10
    assert m["test"]["loss"] < 1.3 * m["fit"]["noise_variance"]
    assert m["fit"]["least_squares"]["test_loss"] < 1.3 * m["fit"]["noise_variance"]
    for learned, true in zip(m["fit"]["coefficients"], m["fit"]["true_coefficients"]):
        assert abs(learned - true) < 0.5
    assert m["step_time_ms"] > 0 and m["timed_steps"] == 199
    assert f"mean training step: {m['step_time_ms']:.3g} ms" in printed
    assert printed.count("epoch ") >= 20 and "test: loss" in printed
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 21))
    assert {"lr", "train_loss", "val_loss"} <= set(rows[0])
    assert float(rows[-1]["val_loss"]) == pytest.approx(m["val"]["loss"])
    for png in ("curves.png", "fit.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "epoch/val_loss", "epoch/train_loss"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("epoch/val_loss")) == 20
    checkpoint = load_checkpoint(out / "checkpoint.pt", "regression")
    assert checkpoint["progress"]["epoch"] == 20 and checkpoint["options"]["quick"] is True
    assert load_checkpoint(out / "best.pt", "regression")["epoch"] == m["best_epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with the options the resume tests interrupt."""
    out = tmp_path_factory.mktemp("reference")
    assert train(out, *RESUMED) == 0
    return out


# Dropout draws from torch's generator and --average keeps epoch weights: a resumed run must
# restore both to match.
RESUMED = ["--epochs", "3", "--dropout", "0.1", "--average", "2"]


# (steps done, epochs completed, batches of the current epoch done): stopped within an epoch, at
# its last step (before its validation), and within the next.
@pytest.mark.parametrize("stop, epoch, batch", [(3, 0, 3), (8, 0, 8), (13, 1, 5)])
def test_resume_equals_uninterrupted(tmp_path, capsys, reference, stop, epoch, batch):
    out = tmp_path / "run"
    assert train(out, *RESUMED, "--stop-after-steps", str(stop)) == 130
    assert "stopped by SIGINT" in capsys.readouterr().out
    progress = load_checkpoint(out / "checkpoint.pt")["progress"]
    assert (progress["step"], progress["epoch"], progress["batch"]) == (stop, epoch, batch)
    assert not (out / "metrics.json").exists()
    # Options given again differently are ignored (with a note): the run continues as it began.
    assert train(out, *RESUMED, "--resume", "--lr", "0.5") == 0
    assert "ignoring lr=0.5 (the run's: 0.01)" in capsys.readouterr().out
    assert_same_weights(weights(out / "checkpoint.pt"), weights(reference / "checkpoint.pt"))
    assert_same_weights(weights(out / "averaged.pt"), weights(reference / "averaged.pt"))
    assert history(out) == history(reference)
    assert metrics(out)["test"] == metrics(reference)["test"]


def _run_until_signalled(out, sig, *options):
    """Start a training subprocess and send `sig` to its process group (DataLoader workers included,
    as Ctrl-C in a terminal or Slurm's SIGTERM do) while it trains; return (exit code, stdout)."""
    command = [sys.executable, "-m", "dll_ext.cli", "train", "regression", "--out", str(out), *SMALL,
               *options]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("regression:"), first + proc.stderr.read()
        time.sleep(0.5)  # into the epochs, where the workers are busy
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "Traceback" not in stderr, stderr
    return proc.returncode, first + stdout


SIGNALLED = ["--epochs", "40", "--points", "400"]


@pytest.fixture(scope="module")
def signalled_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("signalled-reference")
    assert train(out, *SIGNALLED) == 0
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_checkpoint_and_resume_matches(tmp_path, signalled_reference, sig):
    out = tmp_path / "run"
    # With DataLoader workers (the data are the same without): they must leave the signal to the
    # main process, or it fails on a dead worker.
    code, stdout = _run_until_signalled(out, sig, *SIGNALLED, "--workers", "2")
    assert code == 128 + sig, stdout
    assert f"stopped by {sig.name} after step" in stdout
    progress = load_checkpoint(out / "checkpoint.pt", "regression")["progress"]
    assert 0 < progress["step"] < 40 * 15
    assert train(out, *SIGNALLED, "--resume") == 0
    assert_same_weights(weights(out / "checkpoint.pt"), weights(signalled_reference / "checkpoint.pt"))


def test_crash_resumes_from_the_last_saved_step(tmp_path, signalled_reference):
    """SIGKILL (no chance to save) after --save-every checkpoints within epochs: --resume redoes
    the steps since the last one and still ends with the uninterrupted run's weights."""
    out = tmp_path / "run"
    code, _ = _run_until_signalled(out, signal.SIGKILL, *SIGNALLED, "--save-every", "2")
    assert code == -signal.SIGKILL
    progress = load_checkpoint(out / "checkpoint.pt", "regression")["progress"]
    assert 0 < progress["step"] < 40 * 15
    assert train(out, *SIGNALLED, "--resume") == 0
    assert_same_weights(weights(out / "checkpoint.pt"), weights(signalled_reference / "checkpoint.pt"))


class _WorkerProbe(Dataset):
    """Each item: its index, a draw from NumPy's and Python's global generators, and whether the
    process that loads it ignores SIGINT and SIGTERM."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        ignored = [signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)]
        return torch.tensor([i, np.random.randint(1 << 30), random.randint(0, 1 << 30), *ignored])


def test_loader_order_and_workers_depend_on_seed_and_epoch_only():
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    def items(epoch, skip=0, seed=0):
        return torch.cat(list(train_loader(_WorkerProbe(), 4, env, seed, epoch, skip, workers=2)))

    first = items(0)
    np.random.seed(123)  # the main process's generators do not matter
    random.seed(123)
    assert torch.equal(first, items(0))
    # The two workers (batches 0 and 1) draw different NumPy and Python streams.
    assert first[0, 1] != first[4, 1] and first[0, 2] != first[4, 2]
    assert sorted(first[:, 0].tolist()) == list(range(12))
    assert not torch.equal(first[:, 0], items(1)[:, 0])
    assert not torch.equal(first[:, 0], items(0, seed=1)[:, 0])
    assert torch.equal(items(0, skip=1)[:, 0], first[4:, 0])  # a resumed epoch skips whole batches
    assert first[:, 3:].all(), "workers must leave SIGINT and SIGTERM to the main process"


def test_atomic_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_torch({"step": 1, "w": torch.ones(3)}, path)

    def torn_save(obj, f):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(TrainingError, match="could not write .*No space left"):
        save_torch({"step": 2, "w": torch.zeros(3)}, path)

    def interrupted_save(obj, f):
        f.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_torch({"step": 3}, path)
    monkeypatch.undo()
    old = torch.load(path, weights_only=True)
    assert old["step"] == 1 and torch.equal(old["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def _torchrun(out, *options):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "dll_ext.cli", "train", "regression", "--out", str(out), *SMALL, *options],
        capture_output=True, text=True, timeout=120, env={**env, "OMP_NUM_THREADS": "1"})


def test_ddp_two_processes_interrupted_and_resumed_match_one(tmp_path):
    """2 gloo processes with batches of 8 take the same steps as 1 process with batches of 16
    (DistributedSampler splits each batch of the same permutation), up to summation order; a
    stop within an epoch saves every rank's state, and torchrun ... --resume continues."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    options = ["--epochs", "2"]
    assert train(single, *options, "--batch-size", "16") == 0
    stopped = _torchrun(ddp, *options, "--batch-size", "8", "--stop-after-steps", "5")
    # The ranks exit with 130, which torchrun calls a failure (it then stops the ranks still exiting).
    assert stopped.returncode != 0 and "exitcode  : 130" in stopped.stderr, stopped.stderr
    assert stopped.stdout.count("stopped by SIGINT after step 5") == 1
    checkpoint = load_checkpoint(ddp / "checkpoint.pt", "regression")
    assert checkpoint["world_size"] == 2 and len(checkpoint["ranks"]) == 2
    # Each rank's own generators (they differ: dropout masks must not repeat across ranks).
    assert not torch.equal(checkpoint["ranks"][0]["rng"]["torch"], checkpoint["ranks"][1]["rng"]["torch"])
    result = _torchrun(ddp, *options, "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    # Only rank 0 prints and writes.
    assert result.stdout.count("epoch 2/2") == 1 and "2 processes" in result.stdout
    assert len(os.listdir(ddp / "tensorboard")) == 2  # one event file per process that trained
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    m_ddp, m_single = metrics(ddp), metrics(single)
    assert m_ddp["world_size"] == 2 and m_ddp["steps"] == m_single["steps"] == 2 * STEPS_PER_EPOCH
    a, b = weights(ddp / "checkpoint.pt"), weights(single / "checkpoint.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    # Validation and test metrics are sums over both ranks' shards: the whole sets.
    assert m_ddp["test"]["loss"] == pytest.approx(m_single["test"]["loss"], rel=1e-4)
    assert m_ddp["val"]["loss"] == pytest.approx(m_single["val"]["loss"], rel=1e-4)


def test_early_stopping_tests_the_best_weights(tmp_path, capsys):
    out = tmp_path / "run"
    # A constant, high learning rate leaves SGD bouncing: validation stops improving.
    assert train(out, "--epochs", "30", "--scheduler", "none", "--lr", "0.015", "--patience", "2") == 0
    assert "early stop: no validation progress in 2 epochs" in capsys.readouterr().out
    m = metrics(out)
    val = [float(r["val_loss"]) for r in history(out)]
    assert m["early_stopped"] and m["epochs"] == len(val) < 30
    assert m["best_epoch"] == val.index(min(val)) + 1 == m["epochs"] - 2
    assert all(v >= min(val) for v in val[m["best_epoch"]:])
    # The test metric comes from the best epoch's weights, not the last.
    best = weights(out / "best.pt")
    assert not torch.equal(best["linear.weight"], weights(out / "checkpoint.pt")["linear.weight"])
    assert m["test"]["loss"] == pytest.approx(_test_loss(best, out), rel=1e-5)


def _test_loss(state, out):
    """MSE of the regression model with weights `state` on the test split of run `out`."""
    args = parse_options(REGRESSION, [*SMALL, "--out", str(out)])
    task = REGRESSION.build(args)
    task.model.load_state_dict(state)
    task.model.eval()
    x, y = task.test_set.dataset[task.test_set.indices]
    with torch.no_grad():
        return torch.nn.functional.mse_loss(task.model(x), y).item()


def test_checkpoint_averaging(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--epochs", "4", "--average", "3") == 0
    assert sorted(p.name for p in (out / "epochs").iterdir()) == [f"epoch-000{e}.pt" for e in (2, 3, 4)]
    stacked = torch.stack([weights(out / "epochs" / f"epoch-000{e}.pt")["linear.weight"].double()
                           for e in (2, 3, 4)])
    averaged = weights(out / "averaged.pt")
    torch.testing.assert_close(averaged["linear.weight"], stacked.mean(0).float())
    m = metrics(out)
    assert m["averaged"]["epochs"] == [2, 3, 4]
    assert m["averaged"]["test"]["loss"] == pytest.approx(_test_loss(averaged, out), rel=1e-5)
    assert m["averaged"]["test"]["loss"] != m["test"]["loss"]


def test_average_state_dicts_keeps_integer_buffers():
    states = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
              {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}]
    averaged = average_state_dicts(states)
    assert torch.equal(averaged["w"], torch.tensor([2.0, 4.0])) and averaged["n"].item() == 5


@pytest.mark.parametrize("options", [
    ["--optimizer", "adam", "--lr", "0.05", "--scheduler", "cosine", "--min-lr", "0.001", "--native"],
    ["--optimizer", "adamw", "--lr", "0.05", "--weight-decay", "0.01", "--scheduler", "none",
     "--dropout", "0.2"],
    ["--optimizer", "sgd", "--scheduler", "plateau", "--lr-patience", "0", "--lr-factor", "0.5",
     "--lr", "0.015", "--weight-decay", "1e-4", "--clip-norm", "50"],
], ids=["adam-cosine-native", "adamw-decay-dropout", "sgd-plateau-clip"])
def test_optimizer_and_schedule_options(tmp_path, options):
    out = tmp_path / "run"
    assert train(out, "--epochs", "6", *options) == 0
    m = metrics(out)
    assert math.isfinite(m["test"]["loss"]) and m["test"]["loss"] < float(history(out)[0]["val_loss"])
    assert m["layers"] == ("torch.nn" if "--native" in options else "dll_ext")
    lrs = [float(r["lr"]) for r in history(out)]
    if "cosine" in options:
        assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(0.001)
    if "plateau" in options:
        # Halved after every epoch without validation progress (patience 0), never raised.
        assert lrs[0] == 0.015 and lrs[-1] < 0.015
        assert all(lr == pytest.approx(0.015 * 0.5 ** round(math.log2(0.015 / lr))) for lr in lrs)
        assert lrs == sorted(lrs, reverse=True)


def test_gradient_clipping_bounds_each_step(tmp_path):
    """Plain SGD with gradients clipped to norm c moves the weights by at most lr * c per step."""
    out, lr, clip = tmp_path / "run", 0.01, 1e-3
    assert train(out, "--epochs", "1", "--optimizer", "sgd", "--momentum", "0", "--scheduler", "none",
                 "--lr", str(lr), "--clip-norm", str(clip)) == 0
    seed_everything(0)  # as the trainer does before building the model
    initial = REGRESSION.build(parse_options(REGRESSION, SMALL)).model.linear.weight
    moved = (weights(out / "checkpoint.pt")["linear.weight"] - initial).norm().item()
    assert 0.5 * lr * clip < moved <= STEPS_PER_EPOCH * lr * clip * 1.0001


# --- bad input ------------------------------------------------------------------------------


def _fails(capsys, out, *options, match):
    """The CLI exits 2 with one `dll-ext train: error:` line matching `match`, no traceback."""
    assert train(out, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith("dll-ext train: error: ") and err.count("\n") == 1, err
    assert match in err, err
    return err


@pytest.fixture
def finished(tmp_path):
    out = tmp_path / "finished"
    assert train(out, "--epochs", "1") == 0
    return out


def _tampered(finished, change):
    state = torch.load(finished / "checkpoint.pt", weights_only=True)
    change(state)
    torch.save(state, finished / "checkpoint.pt")


@pytest.mark.parametrize("damage, match", [
    (lambda path: path.write_bytes(b"not a checkpoint at all"), "cannot read checkpoint"),
    (lambda path: path.write_bytes(path.read_bytes()[:400]), "cannot read checkpoint"),
    (lambda path: torch.save({"format": "dll_ext.training/1", "options": argparse.Namespace(lr=1)}, path),
     "holds objects other than tensors and plain data"),
    (lambda path: torch.save([1, 2, 3], path), "is not a dll-ext training checkpoint"),
], ids=["garbage", "truncated", "unsafe-pickle", "other-file"])
def test_unreadable_checkpoint(capsys, finished, damage, match):
    damage(finished / "checkpoint.pt")
    before = (finished / "checkpoint.pt").read_bytes()
    _fails(capsys, finished, "--resume", match=match)
    assert (finished / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("change, match", [
    (lambda s: s.update(pipeline="classify"),
     "is a checkpoint of the 'classify' pipeline, not of 'regression'"),
    (lambda s: s["model"].update({"linear.weight": torch.zeros(1, 7)}), "holds the weights of another model"),
    (lambda s: s.update(task_config={"coefficients": [1.0], "degree": 0}), "was trained on other data"),
    (lambda s: s.pop("optimizer"), "is damaged or incomplete"),
], ids=["other-pipeline", "other-model", "other-data", "incomplete"])
def test_mismatched_checkpoint(capsys, finished, change, match):
    _tampered(finished, change)
    before = (finished / "checkpoint.pt").read_bytes()
    _fails(capsys, finished, "--resume", match=match)
    assert (finished / "checkpoint.pt").read_bytes() == before


def test_existing_run_needs_resume_or_overwrite(capsys, finished):
    before = (finished / "checkpoint.pt").read_bytes()
    _fails(capsys, finished, match="already holds a run")
    assert (finished / "checkpoint.pt").read_bytes() == before
    assert train(finished, "--overwrite", "--epochs", "2") == 0
    assert load_checkpoint(finished / "checkpoint.pt")["progress"]["epoch"] == 2


def test_bad_run_requests(capsys, tmp_path):
    _fails(capsys, tmp_path / "empty", "--resume", match="no checkpoint to resume")
    (tmp_path / "file").write_text("x")
    _fails(capsys, tmp_path / "file", match="is a file, not a folder")
    _fails(capsys, tmp_path / "r", "--x-range", "2,-2", match="--x-range must be LOW,HIGH with LOW < HIGH")
    _fails(capsys, tmp_path / "r", "--points", "3", match="too few to split")
    _fails(capsys, tmp_path / "r", "--average", "5", "--epochs", "2",
           match="needs at least that many --epochs")
    if not torch.cuda.is_available():
        _fails(capsys, tmp_path / "r", "--device", "cuda", match="needs a CUDA GPU")
    assert not (tmp_path / "r").exists() or not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("options, match", [
    (["--lr", "-1"], "argument --lr: expected a number > 0, got '-1'"),
    (["--epochs", "0"], "argument --epochs: expected an integer > 0"),
    (["--dropout", "1.5"], "argument --dropout: expected a probability in [0, 1)"),
    (["--coefficients", "1,x"], "argument --coefficients: expected comma-separated numbers"),
    (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice"),
    (["--resume", "--overwrite"], "not allowed with argument"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_bad_options(capsys, tmp_path, options, match):
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path, *options)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "dll-ext train regression: error:" in err and match in err, err


class _MissingDataPipeline(Pipeline):
    name = "missing-data"

    def build(self, args):
        raise DataError("/nowhere/data_batch_1 does not exist")


PIPELINE = _MissingDataPipeline()  # found by get_pipeline through PIPELINES below


def test_data_errors_of_a_pipeline_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(PIPELINES, "missing-data", __name__)
    assert main(["train", "missing-data", "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "dll-ext train: error: /nowhere/data_batch_1 does not exist\n"


def test_unknown_pipeline(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "no-such-pipeline"])
    assert exit_info.value.code == 2 and "invalid choice: 'no-such-pipeline'" in capsys.readouterr().err
