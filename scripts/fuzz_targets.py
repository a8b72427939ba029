"""Coverage-guided fuzz targets (atheris) for every input dll_ext reads from a file: MNIST IDX
files, CIFAR-10 pickles, Mathematics-dataset and text files, checkpoints (their bytes, and
the configuration inside a well-formed one). A target passes an input when the reader returns
or raises the project's own error (DataError, TrainingError) with a message; any other
exception, a crash, a hang or a blow-up of memory is a finding.

    python scripts/fuzz_targets.py TARGET [libFuzzer flags] [CORPUS_DIR ...]
    python scripts/fuzz_targets.py --seeds TARGET DIR   # writes valid seed files into DIR

scripts/fuzz.sh runs every target for a bounded time with these seeds.
"""
import io
import os
import pickle
import struct
import sys
import tempfile

import atheris
import numpy as np
import torch

# Only dll_ext's own code is instrumented (torch's thousands of modules would take minutes).
with atheris.instrument_imports(include=["dll_ext"]):
    from dll_ext.data.cifar10 import _read_batch
    from dll_ext.data.errors import DataError
    from dll_ext.data.math import read_pairs
    from dll_ext.data.mnist import read_idx
    from dll_ext.data.text import Vocabulary, read_text
    from dll_ext.models.char_lm import CharLM
    from dll_ext.training.checkpoint import FORMAT
    from dll_ext.training.errors import TrainingError
    from dll_ext.training.pipelines.charlm import load_char_lm

CLEAN = (DataError, TrainingError)
_SCRATCH = tempfile.mkdtemp(prefix="dll_ext_fuzz_")


def _as_file(data: bytes, suffix: str = "") -> str:
    path = os.path.join(_SCRATCH, "input" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    return path


def idx(data: bytes) -> None:
    path = _as_file(data)
    for ndim in (1, 3):
        try:
            read_idx(path, ndim)
        except CLEAN:
            pass


def cifar(data: bytes) -> None:
    path = _as_file(data)
    try:
        _read_batch(path, 10)
    except CLEAN:
        pass


def math_pairs(data: bytes) -> None:
    try:
        read_pairs(_as_file(data, ".txt"))
    except CLEAN:
        pass


def text(data: bytes) -> None:
    try:
        read_text(_as_file(data, ".txt"))
    except CLEAN:
        pass


def checkpoint_bytes(data: bytes) -> None:
    path = _as_file(data, ".pt")
    try:
        load_char_lm(path)
    except CLEAN:
        pass


# The pieces of a charlm checkpoint's configuration the structured target varies.
_SIZES = ("embedding_dim", "hidden_size", "num_layers", "dropout")


def _fuzzed_value(fdp: "atheris.FuzzedDataProvider"):
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 0:
        return fdp.ConsumeIntInRange(-4, 12)
    if kind == 1:
        return fdp.ConsumeInt(8)
    if kind == 2:
        return fdp.ConsumeRegularFloat()
    if kind == 3:
        return fdp.ConsumeUnicodeNoSurrogates(4)
    if kind == 4:
        return None
    if kind == 5:
        return [fdp.ConsumeUnicodeNoSurrogates(2) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return bool(fdp.ConsumeBool())


def charlm_checkpoint(sizes=None, characters=None, state=None) -> dict:
    sizes = sizes or {"embedding_dim": 4, "hidden_size": 6, "num_layers": 1, "dropout": 0.0}
    characters = characters if characters is not None else list("ab c")
    if state is None:
        state = CharLM(len(Vocabulary(characters)), **sizes).state_dict()
    return {"format": FORMAT, "pipeline": "charlm", "task_config": {"vocabulary": {"characters": characters},
                                                                    "model": sizes}, "model": state}


def checkpoint_config(data: bytes) -> None:
    """A well-formed checkpoint whose configuration or weights the fuzzer changes."""
    fdp = atheris.FuzzedDataProvider(data)
    saved = charlm_checkpoint()
    config = saved["task_config"]
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        what = fdp.ConsumeIntInRange(0, 4)
        if what == 0:
            config["model"][_SIZES[fdp.ConsumeIntInRange(0, len(_SIZES) - 1)]] = _fuzzed_value(fdp)
        elif what == 1:
            config["vocabulary"] = {"characters": _fuzzed_value(fdp)}
        elif what == 2:
            config["model"][fdp.ConsumeUnicodeNoSurrogates(6)] = _fuzzed_value(fdp)
        elif what == 3 and saved["model"]:
            key = sorted(saved["model"])[fdp.ConsumeIntInRange(0, len(saved["model"]) - 1)]
            shape = [fdp.ConsumeIntInRange(0, 8) for _ in range(fdp.ConsumeIntInRange(0, 3))]
            saved["model"][key] = torch.zeros(shape)
        else:
            saved["task_config"] = _fuzzed_value(fdp)
            config = {"model": {}, "vocabulary": {}}
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    checkpoint_bytes(buffer.getvalue())


TARGETS = {"idx": idx, "cifar": cifar, "math_pairs": math_pairs, "text": text, "checkpoint_bytes": checkpoint_bytes,
           "checkpoint_config": checkpoint_config}


def write_seeds(target: str, folder: str) -> None:
    """Valid inputs for `target`, which the fuzzer mutates from."""
    os.makedirs(folder, exist_ok=True)
    seeds = {}
    if target == "idx":
        seeds["images"] = struct.pack(">HBB3I", 0, 8, 3, 2, 3, 3) + bytes(range(18))
        seeds["labels"] = struct.pack(">HBBI", 0, 8, 1, 4) + bytes([1, 2, 3, 9])
    elif target == "cifar":
        batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 7]}
        seeds["batch"] = pickle.dumps(batch, protocol=2)
    elif target == "math_pairs":
        seeds["pairs"] = "What is 2 + 3?\n5\nSort 3, 1, 2.\n1, 2, 3\n".encode()
    elif target == "text":
        seeds["text"] = "To be, or not to be: that is the question.\n".encode()
    elif target == "checkpoint_bytes":
        buffer = io.BytesIO()
        torch.save(charlm_checkpoint(), buffer)
        seeds["checkpoint"] = buffer.getvalue()
    elif target == "checkpoint_config":
        seeds["config"] = bytes(range(64))
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def main(argv) -> None:
    if len(argv) >= 4 and argv[1] == "--seeds":
        write_seeds(argv[2], argv[3])
        return
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} TARGET [libFuzzer flags] [CORPUS ...]; targets: {', '.join(TARGETS)}")
    torch.set_num_threads(1)
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
