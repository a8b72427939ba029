"""dll_ext.data: the digits, MNIST and CIFAR-10 loaders (on small files in the real formats that the
tests write), augmentation and normalisation, the N-back generator, and the character corpus
(reading, vocabulary, splits, TBPTT batches)."""
import gzip
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import torch

from dll_ext.data import (IGNORE_INDEX, DataError, NBackCollate, NBackDataset, Normalize, RandomCropFlip,
                          TBPTTBatches, Vocabulary, default_corpus, load_cifar10, load_digits, load_mnist,
                          read_text, split_text)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------------------------
# Digits (scikit-learn)
# ----------------------------------------------------------------------------------------


def test_digits_shapes_and_labels():
    pytest.importorskip("sklearn")
    digits = load_digits()
    assert len(digits) == 1797 and digits.image_shape == (1, 8, 8) and digits.classes == [str(d) for d in range(10)]
    image, label = digits[5]
    assert image.dtype == torch.float32 and label.dtype == torch.int64 and label.dim() == 0
    assert digits.images.min() == 0 and digits.images.max() == 1
    counts = digits.labels.bincount()
    assert len(counts) == 10 and (counts > 170).all()  # labels 0..9, about 180 of each
    from sklearn.datasets import load_digits as sklearn_digits
    torch.testing.assert_close(digits.images[5, 0], torch.from_numpy(sklearn_digits().images[5]).float() / 16)


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()


# ----------------------------------------------------------------------------------------
# CIFAR-10: cifar-10-batches-py folders written here
# ----------------------------------------------------------------------------------------


def write_pickle(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar(folder, sizes=(3, 2, 4, 1, 2), test_size=2, protocol=2, seed=0):
    """A cifar-10-batches-py folder with batches of the given sizes; returns {name: (data, labels)}."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    batches = {}
    for name, size in [(f"data_batch_{i + 1}", s) for i, s in enumerate(sizes)] + [("test_batch", test_size)]:
        data = rng.randint(0, 256, size=(size, 3072)).astype(np.uint8)
        labels = rng.randint(0, 10, size=size).tolist()
        write_pickle(os.path.join(folder, name), {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                                  b"filenames": [b"x.png"] * size}, protocol)
        batches[name] = (data, labels)
    write_pickle(os.path.join(folder, "batches.meta"), {b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                                        b"label_names": [c.encode() for c in CIFAR_CLASSES]}, protocol)
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reads_the_python_format(tmp_path, protocol):
    batches = write_cifar(tmp_path, protocol=protocol)
    train = load_cifar10(str(tmp_path), train=True)
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.images.dtype == torch.uint8 and train.images.shape == (12, 3, 32, 32)
    assert train.labels.tolist() == labels and train.classes == CIFAR_CLASSES
    # A row is the red, green and blue planes in turn, each 32 rows of 32 pixels.
    i, c, y, x = 7, 2, 5, 30
    assert train.images[i, c, y, x] == data[i, c * 1024 + y * 32 + x]
    image, label = train[i]
    assert image.dtype == torch.float32 and label == labels[i]
    torch.testing.assert_close(image, torch.from_numpy(data[i].reshape(3, 32, 32)).float() / 255)
    test = load_cifar10(str(tmp_path), train=False)
    assert test.images.shape == (2, 3, 32, 32) and test.labels.tolist() == batches["test_batch"][1]


def test_cifar10_reads_numpy_1_pickles_and_the_extracted_archive_folder(tmp_path):
    """The distributed files name numpy.core.multiarray (numpy 1's path); root may also be the
    folder the archive was extracted in."""
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar(folder)
    for name in os.listdir(folder):
        path = folder / name
        path.write_bytes(path.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    assert b"numpy.core.multiarray" in (folder / "test_batch").read_bytes()
    test = load_cifar10(str(tmp_path), train=False)
    assert torch.equal(test.images.flatten(1), torch.from_numpy(batches["test_batch"][0]))


class _Exploit:
    """Unpickling this would create a folder: what a malicious data file could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    write_cifar(tmp_path)
    target = tmp_path / "created-by-the-pickle"
    write_pickle(tmp_path / "data_batch_2", {b"data": _Exploit(str(target)), b"labels": []})
    with pytest.raises(DataError, match=r"data_batch_2.*(posix|os)\.mkdir"):
        load_cifar10(str(tmp_path))
    assert not target.exists()


@pytest.mark.parametrize("damage, message", [
    ("missing folder", "does not exist"),
    ("missing batch", "lacks data_batch_3"),
    ("missing meta", "lacks batches.meta"),
    ("truncated", "data_batch_1 is not a CIFAR-10 pickle file"),
    ("not a dict", r"data_batch_1: expected a dict with the key b'data'"),
    ("wrong shape", r"b'data' is a uint8 array \(2, 100\)"),
    ("float data", r"b'data' is a float64 array"),
    ("label out of range", r"b'labels' must be 2 integers in \[0, 10\)"),
    ("label count", r"b'labels' must be 2 integers"),
    ("bad class names", "label_names' must be a list of byte strings"),
])
def test_cifar10_bad_folders_raise_data_error_naming_the_path(tmp_path, damage, message):
    folder = tmp_path / "cifar"
    write_cifar(folder, sizes=(2, 2, 2, 2, 2))
    batch = folder / "data_batch_1"
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    if damage == "missing folder":
        folder = tmp_path / "nowhere"
    elif damage == "missing batch":
        os.remove(folder / "data_batch_3")
    elif damage == "missing meta":
        os.remove(folder / "batches.meta")
    elif damage == "truncated":
        batch.write_bytes(batch.read_bytes()[:100])
    elif damage == "not a dict":
        write_pickle(batch, [1, 2, 3])
    elif damage == "wrong shape":
        write_pickle(batch, {**good, b"data": np.zeros((2, 100), np.uint8)})
    elif damage == "float data":
        write_pickle(batch, {**good, b"data": np.zeros((2, 3072))})
    elif damage == "label out of range":
        write_pickle(batch, {**good, b"labels": [0, 10]})
    elif damage == "label count":
        write_pickle(batch, {**good, b"labels": [0, 1, 2]})
    elif damage == "bad class names":
        write_pickle(folder / "batches.meta", {b"label_names": ["airplane"]})
    with pytest.raises(DataError, match=message) as error:
        load_cifar10(str(folder))
    assert str(folder) in str(error.value)


# ----------------------------------------------------------------------------------------
# MNIST: IDX files written here
# ----------------------------------------------------------------------------------------


def idx_bytes(array, magic=None):
    """array (uint8) in the IDX format: magic 0x0000080<ndim>, big-endian uint32 sizes, values."""
    magic = 0x0800 | array.ndim if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path, array, gz=False, magic=None):
    data = idx_bytes(array, magic)
    if gz:
        path, data = f"{path}.gz", gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


def write_mnist(folder, gz=False, counts=(5, 3), seed=0):
    rng = np.random.RandomState(seed)
    arrays = {}
    for prefix, count in zip(["train", "t10k"], counts):
        images = rng.randint(0, 256, size=(count, 28, 28)).astype(np.uint8)
        labels = rng.randint(0, 10, size=count).astype(np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), images, gz)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), labels, gz)
        arrays[prefix] = images, labels
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_reads_idx_files(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz)
    for train, prefix in [(True, "train"), (False, "t10k")]:
        dataset = load_mnist(str(tmp_path), train=train)
        images, labels = arrays[prefix]
        assert dataset.images.dtype == torch.uint8 and dataset.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(dataset.images[:, 0], torch.from_numpy(images))
        assert dataset.labels.dtype == torch.int64 and dataset.labels.tolist() == labels.tolist()
        image, label = dataset[1]
        torch.testing.assert_close(image, torch.from_numpy(images[1]).float().unsqueeze(0) / 255)


@pytest.mark.parametrize("damage, message", [
    ("missing folder", "MNIST folder: .* does not exist"),
    ("missing file", "none of the files train-labels-idx1-ubyte, train-labels-idx1-ubyte.gz"),
    ("images as labels", "train-labels-idx1-ubyte: magic number 0x00000803, expected 0x00000801"),
    ("signed bytes", "train-images-idx3-ubyte: magic number 0x00000903"),
    ("truncated", r"train-images-idx3-ubyte: 3000 bytes, but its header's shape \(5, 28, 28\) needs 3936"),
    ("short header", "too short for an IDX header"),
    ("count mismatch", "holds 5 images but .* 4 labels"),
    ("no images", "holds no images"),
    ("label 10", "label 10, not a digit"),
    ("corrupt gz", "cannot read .*train-images-idx3-ubyte.gz"),
])
def test_mnist_bad_files_raise_data_error_naming_the_file(tmp_path, damage, message):
    write_mnist(tmp_path)
    folder = tmp_path
    images_path = tmp_path / "train-images-idx3-ubyte"
    labels_path = tmp_path / "train-labels-idx1-ubyte"
    if damage == "missing folder":
        folder = tmp_path / "nowhere"
    elif damage == "missing file":
        os.remove(labels_path)
    elif damage == "images as labels":
        write_idx(labels_path, np.zeros((5, 28, 28), np.uint8))
    elif damage == "signed bytes":
        write_idx(images_path, np.zeros((5, 28, 28), np.uint8), magic=0x0903)
    elif damage == "truncated":
        images_path.write_bytes(images_path.read_bytes()[:3000])
    elif damage == "short header":
        images_path.write_bytes(b"\x00\x00\x08")
    elif damage == "count mismatch":
        write_idx(labels_path, np.zeros(4, np.uint8))
    elif damage == "no images":
        write_idx(images_path, np.zeros((0, 28, 28), np.uint8))
        write_idx(labels_path, np.zeros(0, np.uint8))
    elif damage == "label 10":
        write_idx(labels_path, np.array([1, 2, 10, 3, 4], np.uint8))
    elif damage == "corrupt gz":
        os.remove(images_path)
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip data")
    with pytest.raises(DataError, match=message):
        load_mnist(str(folder))


# ----------------------------------------------------------------------------------------
# Augmentation and normalisation
# ----------------------------------------------------------------------------------------


def crop_offsets(image, out, padding):
    """Every (top, left, mirrored) for which out is image zero-padded, cropped there (and mirrored)."""
    padded = torch.nn.functional.pad(image, [padding] * 4)
    height, width = image.shape[1:]
    return [(top, left, mirrored)
            for top in range(2 * padding + 1) for left in range(2 * padding + 1) for mirrored in (False, True)
            if torch.equal(padded[:, top:top + height, left:left + width].flip(2) if mirrored
                           else padded[:, top:top + height, left:left + width], out)]


def test_random_crop_flip_crops_and_mirrors_each_image_on_its_own():
    images = torch.rand(48, 3, 8, 8)
    out = RandomCropFlip(padding=2, generator=torch.Generator().manual_seed(1))(images)
    assert out.shape == images.shape
    draws = [crop_offsets(image, result, 2) for image, result in zip(images, out)]
    assert all(len(found) == 1 for found in draws)  # random pixels: exactly one crop fits
    tops, lefts, mirrors = zip(*(found[0] for found in draws))
    assert set(tops) == set(lefts) == set(range(5)) and set(mirrors) == {False, True}


def test_random_crop_flip_is_deterministic_under_a_seed():
    images = torch.rand(16, 3, 32, 32)
    augment = RandomCropFlip()
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    assert torch.equal(augment(images), first)
    assert not torch.equal(augment(images), first)  # the generator moved on
    seeded = [RandomCropFlip(generator=torch.Generator().manual_seed(5))(images) for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])
    one = RandomCropFlip(generator=torch.Generator().manual_seed(5))(images[0])
    assert one.shape == (3, 32, 32) and len(crop_offsets(images[0], one, 4)) == 1


def test_random_crop_flip_without_padding_or_flip_is_the_identity():
    images = torch.rand(4, 1, 8, 8)
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(images), images)


def test_normalize_from_images_gives_zero_mean_unit_std_channels():
    images = torch.randint(0, 256, (50, 3, 6, 6), dtype=torch.uint8)
    images[:, 1] //= 4  # channels of different statistics
    normalize = Normalize.from_images(images)
    as_float = images.double() / 255
    torch.testing.assert_close(normalize.mean.flatten().double(), as_float.mean((0, 2, 3)), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(normalize.std.flatten().double(), as_float.std((0, 2, 3), correction=0),
                               rtol=1e-6, atol=1e-7)
    out = normalize(images.float() / 255)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalize(images[0].float() / 255), out[0])


# ----------------------------------------------------------------------------------------
# N-back
# ----------------------------------------------------------------------------------------


def nback_targets_slow(symbols, n):
    """The definition, position by position: 1 where the symbol equals the one n back, else 0
    (also at the first n positions, which have nothing n back)."""
    return [int(t >= n and symbols[t] == symbols[t - n]) for t in range(len(symbols))]


@pytest.mark.parametrize("n, k", [(3, 4), (1, 2), (5, 3)])
def test_nback_targets_follow_the_definition(n, k):
    dataset = NBackDataset(200, n=n, k=k, seed=7)
    assert dataset.n == n and dataset.k == k and len(dataset) == 200
    positives = 0
    for (symbols, targets), length in zip(dataset, dataset.lengths):
        assert len(symbols) == len(targets) == length >= n + 1
        assert symbols.dtype == targets.dtype == torch.int64 and 0 <= symbols.min() and symbols.max() < k
        assert targets.tolist() == nback_targets_slow(symbols.tolist(), n)
        positives += int(targets.sum())
    # A symbol repeats n back with probability 1/k.
    valid = sum(length - n for length in dataset.lengths)
    assert abs(positives / valid - 1 / k) < 0.05


def test_nback_lengths_are_drawn_around_20_plus_minus_5():
    lengths = np.array(NBackDataset(2000, seed=0).lengths)
    assert lengths.min() >= 4 and abs(lengths.mean() - 19.5) < 0.5 and abs(lengths.std() - 5) < 0.5


def test_nback_draws_the_course_data_for_a_seed():
    """The course's create_dataset_nback (chapter 3.2) with RandomState(0): the same sequences,
    and the validation set drawn from the state the training set left."""
    random_state = np.random.RandomState(0)

    def course_sequences(count):
        sequences = []
        for _ in range(count):
            length = int(max(3 + 1, random_state.normal(loc=20, scale=5)))
            symbols = random_state.randint(4, size=length)
            targets = np.zeros(length, dtype=int)
            for t in range(3, length):
                targets[t] = symbols[t - 3] == symbols[t]
            sequences.append((symbols.tolist(), targets.tolist()))
        return sequences

    expected_train, expected_validation = course_sequences(50), course_sequences(50)
    state = np.random.RandomState(0)
    for dataset, expected in [(NBackDataset(50, seed=state), expected_train),
                              (NBackDataset(50, seed=state), expected_validation)]:
        assert [(s.tolist(), t.tolist()) for s, t in dataset] == expected
    assert [s.tolist() for s, _ in NBackDataset(50, seed=0)] == [s for s, _ in expected_train]
    assert [s.tolist() for s, _ in NBackDataset(50, seed=1)] != [s for s, _ in expected_train]


@pytest.mark.parametrize("batch_first", [True, False])
def test_nback_collate_pads_one_hot_inputs_and_targets(batch_first):
    dataset = NBackDataset(6, seed=2)
    batch = [dataset[i] for i in range(6)]
    inputs, lengths, targets = NBackCollate(k=4, batch_first=batch_first)(batch)
    steps = max(dataset.lengths)
    assert lengths.dtype == torch.int64 and lengths.device.type == "cpu" and lengths.tolist() == dataset.lengths
    if not batch_first:
        assert inputs.shape == (steps, 6, 4) and targets.shape == (steps, 6)
        inputs, targets = inputs.transpose(0, 1), targets.transpose(0, 1)
    assert inputs.shape == (6, steps, 4) and inputs.dtype == torch.float32 and targets.dtype == torch.int64
    for row, (symbols, sequence_targets) in enumerate(batch):
        length = len(symbols)
        assert torch.equal(inputs[row, :length], torch.nn.functional.one_hot(symbols, 4).float())
        assert not inputs[row, length:].any()
        assert torch.equal(targets[row, :length], sequence_targets)
        assert (targets[row, length:] == IGNORE_INDEX).all()
    _, _, other = NBackCollate(k=4, ignore_index=-100)(batch)
    assert (other == -100).sum() == (targets == IGNORE_INDEX).sum() > 0


# ----------------------------------------------------------------------------------------
# Character-level text
# ----------------------------------------------------------------------------------------


def test_read_text_reads_utf8_and_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffgrüße\r\nzwei".encode("utf-8"))
    assert read_text(str(path)) == "grüße\r\nzwei"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    ("abc é".encode("latin-1"), "is not UTF-8: byte 0xe9 at offset 4"),
])
def test_read_text_bad_files_raise_data_error(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        read_text(str(path))
    assert str(path) in str(error.value)
    with pytest.raises(DataError, match="is not a file"):
        read_text(str(tmp_path))


def test_default_corpus_is_pydoc_topics_text():
    from pydoc_data.topics import topics
    text = default_corpus()
    assert len(text) > 400_000 and topics["assert"] in text and "\n" in text


def test_vocabulary_round_trip_and_checkpoint_form(tmp_path):
    text = "Hello, wörld!\n"
    vocabulary = Vocabulary.from_text(text)
    assert len(vocabulary) == 2 + len(set(text))
    assert vocabulary.symbols[:2] == ["<pad>", "<unk>"] and Vocabulary.pad_id == 0 and Vocabulary.unk_id == 1
    ids = vocabulary.encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),) and ids.min() >= 2
    assert vocabulary.decode(ids) == vocabulary.decode(ids.tolist()) == text
    torch.save({"vocabulary": vocabulary.to_dict()}, tmp_path / "v.pt")
    restored = Vocabulary.from_dict(torch.load(tmp_path / "v.pt", weights_only=True)["vocabulary"])
    assert restored == vocabulary and torch.equal(restored.encode(text), ids)


def test_vocabulary_names_unknown_characters_or_maps_them_to_unk():
    vocabulary = Vocabulary.from_text("abc ")
    with pytest.raises(DataError, match=r"'z' \(U\+007A\), 'é' \(U\+00E9\)"):
        vocabulary.encode("a zé b")
    ids = vocabulary.encode("a zé", map_unknown=True)
    assert ids.tolist()[2:] == [Vocabulary.unk_id, Vocabulary.unk_id]
    assert vocabulary.decode(ids) == "a <unk><unk>"
    with pytest.raises(DataError, match="and 5 more"):
        Vocabulary.from_text("a").encode("".join(chr(0x100 + i) for i in range(25)))


@pytest.mark.parametrize("state", [None, [], {"chars": ["a"]}, {"characters": "ab"}, {"characters": ["a", "a"]},
                                   {"characters": ["ab"]}])
def test_vocabulary_from_a_bad_description_raises_data_error(state):
    with pytest.raises(DataError, match="not a vocabulary"):
        Vocabulary.from_dict(state)


def test_split_text_cuts_consecutive_pieces():
    text = "".join(chr(65 + i % 26) for i in range(1000))
    train, validation, test = split_text(text, 0.1, 0.05)
    assert (len(train), len(validation), len(test)) == (850, 100, 50) and train + validation + test == text
    with pytest.raises(ValueError):
        split_text(text, 0.6, 0.5)


def test_tbptt_batches_carry_each_row_across_chunks():
    ids = torch.arange(1000)
    batches = TBPTTBatches(ids, batch_size=4, bptt=30)
    chunks = list(batches)
    row_length = 999 // 4
    assert len(batches) == len(chunks) == -(-row_length // 30)
    assert all(x.shape == y.shape == (4, 30) for x, y in chunks[:-1]) and chunks[-1][0].shape == (4, row_length % 30)
    for (x, y), (next_x, _) in zip(chunks, chunks[1:]):
        assert torch.equal(next_x[:, 0], x[:, -1] + 1)  # row r of chunk t+1 continues row r of chunk t
        assert torch.equal(y[:, -1], next_x[:, 0])
    inputs = torch.cat([x for x, _ in chunks], 1)
    targets = torch.cat([y for _, y in chunks], 1)
    assert torch.equal(inputs, ids[:4 * row_length].view(4, row_length))
    assert torch.equal(targets, inputs + 1)


def test_tbptt_batches_share_rows_between_ranks():
    ids = torch.randint(0, 50, (503,))
    whole = torch.cat([x for x, _ in TBPTTBatches(ids, batch_size=6, bptt=7)], 1)
    ranks = [TBPTTBatches(ids, batch_size=2, bptt=7, rank=r, world_size=3) for r in range(3)]
    assert len({len(batches) for batches in ranks}) == 1
    assert torch.equal(torch.cat([torch.cat([x for x, _ in batches], 1) for batches in ranks]), whole)


def test_tbptt_batches_of_a_too_short_stream_raise_data_error():
    with pytest.raises(DataError, match="stream of 8 tokens is too short for 8 rows"):
        TBPTTBatches(torch.arange(8), batch_size=8, bptt=5)
