"""Inputs found by scripts/fuzz_targets.py that once crashed a reader or blew up its memory,
kept as regression tests: each must now give the reader's own error, with a message, cheaply."""
import struct
import tracemalloc

import pytest
import torch

from dll_ext.data.cifar10 import _read_batch
from dll_ext.data.errors import DataError
from dll_ext.data.mnist import read_idx
from dll_ext.data.text import Vocabulary
from dll_ext.models.char_lm import CharLM
from dll_ext.training.checkpoint import FORMAT
from dll_ext.training.errors import TrainingError
from dll_ext.training.pipelines.charlm import load_char_lm


def test_idx_header_with_a_zero_size_and_huge_others(tmp_path):
    # Shape (0, 4261379954, 4278255377): no values, so the length matched, and numpy refused
    # the shape with a bare ValueError.
    path = tmp_path / "images"
    path.write_bytes(bytes.fromhex("00000803" "00000000" "fdff7f72" "ff00ff11"))
    with pytest.raises(DataError, match=r"shape \(0, 4261379954, 4278255377\) is too large"):
        read_idx(str(path), 3)


def test_pickle_naming_a_huge_memo_index_costs_no_memory(tmp_path):
    # 27 bytes whose LONG_BINPUT 175399797 made the C unpickler allocate 2.6 GiB of memo.
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x02}q\x00X\x04\x00\x00\x00datar" + struct.pack("<I", 175399797) + b".")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="expected a dict"):
            _read_batch(str(path), 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def charlm_checkpoint(path, **sizes):
    characters = list("ab c")
    good = {"embedding_dim": 4, "hidden_size": 6, "num_layers": 1, "dropout": 0.0}
    state = CharLM(len(Vocabulary(characters)), **good).state_dict()
    torch.save({"format": FORMAT, "pipeline": "charlm", "model": state,
                "task_config": {"vocabulary": {"characters": characters}, "model": {**good, **sizes}}}, path)
    return path


@pytest.mark.parametrize("sizes,match", [
    ({"hidden_size": -4}, r"does not describe a character LM \(hidden_size must be greater than zero"),
    ({"embedding_dim": -4}, r"does not describe a character LM \(.*negative dimension"),
    ({"hidden_size": 10**6}, r"holds the weights of another model than its configuration describes"),
    ({"embedding_dim": 5}, r"differ in embedding.weight"),
    ({"num_layers": "two"}, r"does not describe a character LM"),
    # Built layer by layer for ever, before the parameter count stopped it.
    ({"num_layers": 499906198758652929},
     r"describes a character LM with far more parameters than the 7 tensors it holds"),
])
def test_checkpoint_whose_configuration_contradicts_its_weights(tmp_path, sizes, match):
    # A negative size crashed the model's constructor; a huge one would allocate (H=10^6: 16 TB)
    # before the weights' mismatch showed. Both are now found on the meta device.
    with pytest.raises(TrainingError, match=match):
        load_char_lm(charlm_checkpoint(tmp_path / "best.pt", **sizes))


def test_consistent_checkpoint_still_loads(tmp_path):
    model, vocabulary = load_char_lm(charlm_checkpoint(tmp_path / "best.pt"))
    assert len(vocabulary) == model.embedding.num_embeddings
