"""`dll-ext export` and dll_infer's subcommands: tiny runs of each pipeline are trained,
exported, and run from Python and from the C++ program, whose answers must equal Python's
(token for token for generation). Only the classifier gets an AOTInductor .pt2 (a compile
takes tens of seconds here); the other exports use --no-aoti or have no .pt2.
"""
import json
import subprocess
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typing import List

from conftest import run_command
from dll_ext.cli import main
from dll_ext.data import NBackCollate, NBackDataset, Seq2SeqVocabulary, load_digits
from dll_ext.export import load_inference_module
from dll_ext.inference.seq2seq import Seq2SeqInference
from dll_ext.training.checkpoint import FORMAT
from dll_ext.training.pipelines.seq2seq import beam_answers, build_model, greedy_answers

pytestmark = pytest.mark.slow

# A small text with a character beyond ASCII, so prompts go through UTF-8 both ways.
TEXT = ("Café au lait, the cat sat on the mat. " * 20 + "A cat is a cat; a mat is a mat.\n") * 4


def _train(pipeline, out, *options):
    assert main(["train", pipeline, "--out", str(out), *options]) == 0


def _export(run, *options):
    assert main(["export", str(run), *options]) == 0
    return json.loads((run / "export" / "export.json").read_text())


def _jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        return torch.jit.load(str(path))


def _infer(exe, *args):
    return run_command([str(exe), *map(str, args)], 120)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits")
    _train("classify", run, "--epochs", "2")
    return run, _export(run)  # with the .pt2: the one AOTInductor compile of this module


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    run = tmp_path_factory.mktemp("lm")
    text = run / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    _train("charlm", run / "run", "--text", str(text), "--epochs", "1", "--hidden-size", "32",
           "--embedding-dim", "8", "--batch-size", "4", "--bptt", "20")
    return run / "run", _export(run / "run", "--no-aoti")


@pytest.fixture(scope="module")
def nback(tmp_path_factory):
    run = tmp_path_factory.mktemp("nback")
    _train("nback", run, "--epochs", "2", "--sequences", "64", "--eval-sequences", "32", "--hidden-size", "16")
    return run, _export(run)


# ---- what export writes, and the scripted modules against the eager ones ---------------------

def test_export_json_records_files_and_why_there_is_no_pt2(digits, char_lm, nback):
    assert digits[1]["kind"] == "classifier" and digits[1]["aoti"] == "model.pt2"
    assert (digits[0] / "export" / "model.pt2").is_file()
    assert char_lm[1]["kind"] == "char_lm" and char_lm[1]["methods"] == ["forward", "generate"]
    assert char_lm[1]["aoti_error"] == "skipped (--no-aoti)"
    assert nback[1]["kind"] == "nback" and nback[1]["aoti"] is None
    assert "data-dependent" in nback[1]["aoti_error"]
    for run, _ in (digits, char_lm, nback):
        assert (run / "export" / "model.pt").is_file()


def test_scripted_classifier_equals_eager(digits):
    _, _, eager, config = load_inference_module(digits[0])
    scripted = _jit_load(digits[0] / "export" / "model.pt")
    images = torch.rand(5, *config["image_shape"])
    pixels = torch.randint(0, 256, (3, *config["image_shape"]), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), eager(images), rtol=0, atol=0)
        torch.testing.assert_close(scripted.classify(pixels), eager.classify(pixels), rtol=0, atol=0)
    assert scripted.classes == [str(d) for d in range(10)] and (scripted.height, scripted.width) == (8, 8)


def test_scripted_generation_equals_char_lm_generate(char_lm):
    _, _, eager, _ = load_inference_module(char_lm[0])
    scripted = _jit_load(char_lm[0] / "export" / "model.pt")
    assert scripted.vocabulary[:2] == ["<pad>", "<unk>"]
    ids = {c: i for i, c in enumerate(scripted.vocabulary)}
    for prompt in ("the cat", "Café", "a"):
        prompt_ids = torch.tensor([ids[c] for c in prompt])
        expected = eager.model.generate(prompt_ids, 60, greedy=True)
        assert torch.equal(scripted.generate(prompt_ids, 60), expected)
    assert scripted.generate(prompt_ids, 0).shape == (0,)


def _nback_batch(config, count=6):
    dataset = NBackDataset(count, n=config["n"], k=config["k"], mean_length=config["mean_length"],
                           std_length=config["std_length"], seed=3)
    one_hot, lengths, _ = NBackCollate(config["k"])([dataset[i] for i in range(count)])
    symbols = one_hot.argmax(2)
    return symbols, lengths, one_hot


def test_scripted_nback_equals_eager_model(nback):
    _, _, eager, config = load_inference_module(nback[0])
    scripted = _jit_load(nback[0] / "export" / "model.pt")
    symbols, lengths, one_hot = _nback_batch(config)
    with torch.no_grad():
        logits = eager.model(one_hot, lengths)
    valid = torch.arange(symbols.size(1)) < lengths[:, None]
    expected = logits.argmax(2).masked_fill(~valid, -1)
    assert torch.equal(scripted(symbols, lengths), expected)


# ---- dll_infer on the exported files ------------------------------------------------------

def _write_pnm(path, pixels: torch.Tensor, maxval: int, comment=b"# written by a test\n"):
    """pixels uint8 (C, H, W) as a binary PGM (C = 1) or PPM (C = 3)."""
    channels, height, width = pixels.shape
    magic = b"P5" if channels == 1 else b"P6"
    header = magic + b"\n" + comment + f"{width} {height}\n{maxval}\n".encode()
    path.write_bytes(header + bytes(pixels.permute(1, 2, 0).flatten().tolist()))
    return path


def _expected_lines(probabilities: torch.Tensor, classes: List[str], top: int = 1) -> str:
    values, indices = probabilities.topk(top, 1)
    return "".join(f"class {classes[i]}, probability {v:.6f}\n"
                   for row_v, row_i in zip(values.tolist(), indices.tolist()) for v, i in zip(row_v, row_i))


@pytest.mark.parametrize("maxval", [16, 255])
def test_classify_pgm_equals_python(dll_infer, digits, tmp_path, maxval):
    model = digits[0] / "export" / "model.pt"
    scripted = _jit_load(model)
    # A digit of the bundled set (0..16 per pixel), or its rescaling to 0..255.
    pixels = (load_digits().images[7] * 16).round().to(torch.uint8)
    pixels = pixels if maxval == 16 else (pixels.int() * 255 // 16).to(torch.uint8)
    image = _write_pnm(tmp_path / "digit.pgm", pixels, maxval)
    with torch.no_grad():
        probabilities = F.softmax(scripted(pixels.float().unsqueeze(0) / maxval), 1)

    result = _infer(dll_infer, "classify", model, image, "--top", "3")

    assert result.returncode == 0, result.stderr
    assert result.stdout == _expected_lines(probabilities, scripted.classes, 3)


def test_classify_tensor_file_of_several_images(dll_infer, digits, tmp_path):
    model = digits[0] / "export" / "model.pt"
    scripted = _jit_load(model)
    images = torch.rand(3, 1, 8, 8)
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        probabilities = F.softmax(scripted(images), 1)

    result = _infer(dll_infer, "classify", model, tmp_path / "images.pt")

    assert result.returncode == 0, result.stderr
    assert result.stdout == _expected_lines(probabilities, scripted.classes)


def test_pt2_gives_the_same_logits_in_python_and_cpp(dll_infer, digits, tmp_path):
    export = digits[0] / "export"
    package = torch._inductor.aoti_load_package(str(export / "model.pt2"))
    scripted = _jit_load(export / "model.pt")
    images = torch.rand(4, 1, 8, 8)
    torch.save(images, tmp_path / "x.pt")
    with torch.no_grad():
        logits = package(images)
        torch.testing.assert_close(logits, scripted(images), rtol=1e-5, atol=1e-5)

    raw = _infer(dll_infer, export / "model.pt2", "--input", tmp_path / "x.pt", "--output", tmp_path / "y.pt")
    classify = _infer(dll_infer, "classify", export / "model.pt2", tmp_path / "x.pt")

    assert raw.returncode == 0, raw.stderr
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), logits, rtol=0, atol=0)
    assert classify.returncode == 0, classify.stderr
    assert classify.stdout == _expected_lines(F.softmax(logits, 1), scripted.classes)


@pytest.mark.parametrize("prompt", ["the cat", "Café", "\n"])
def test_generate_equals_python_token_for_token(dll_infer, char_lm, prompt):
    _, _, eager, _ = load_inference_module(char_lm[0])
    vocabulary = eager.vocabulary
    ids = torch.tensor([vocabulary.index(c) for c in prompt])
    expected = prompt + "".join(vocabulary[i] for i in eager.model.generate(ids, 80, greedy=True).tolist())

    result = _infer(dll_infer, "generate", char_lm[0] / "export" / "model.pt", "--prompt", prompt, "--length", "80")

    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


@pytest.mark.parametrize("options", [["--seed", "3"], ["--temperature", "0.7", "--top-k", "5", "--seed", "11"],
                                     ["--temperature", "2.5"], ["--top-k", "1"]])
def test_generate_sampling_equals_python_token_for_token(capsys, dll_infer, char_lm, options):
    """dll_infer's sampling draws what `dll-ext generate` draws with the same options."""
    run = char_lm[0]
    prompt = "Café au "
    assert main(["generate", "--checkpoint", str(run), "--prompt", prompt, "--length", "120", *options]) == 0
    expected = capsys.readouterr().out
    result = _infer(dll_infer, "generate", run / "export" / "model.pt", "--prompt", prompt, "--length", "120", *options)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


@pytest.mark.parametrize("options, message", [
    (["--temperature", "0"], "--temperature must be a number > 0, got '0'"),
    (["--top-k", "0"], "--top-k must be an integer >= 1, got '0'"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got '-1'"),
])
def test_generate_bad_sampling_options_exit_2(dll_infer, char_lm, options, message):
    result = _infer(dll_infer, "generate", char_lm[0] / "export" / "model.pt", "--prompt", "a", *options)
    assert result.returncode == 2 and result.stderr.startswith(f"dll_infer: {message}\n"), result.stderr


def test_nback_equals_python(dll_infer, nback, tmp_path):
    model = nback[0] / "export" / "model.pt"
    scripted = _jit_load(model)
    symbols, lengths, _ = _nback_batch(load_inference_module(nback[0])[3])
    expected = scripted(symbols, lengths)
    torch.save((symbols, lengths), tmp_path / "in.pt")

    raw = _infer(dll_infer, model, "--input", tmp_path / "in.pt", "--output", tmp_path / "out.pt")
    one = _infer(dll_infer, "nback", model, *symbols[0, :lengths[0]].tolist())

    assert raw.returncode == 0, raw.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    assert one.returncode == 0, one.stderr
    assert one.stdout.split() == [str(p) for p in expected[0, :lengths[0]].tolist()]


# ---- answer: a stand-in seq2seq module with the interface the seq2seq exports follow ----------

class StandInSeq2Seq(nn.Module):
    """The seq2seq interface dll_infer answer relies on: attributes kind, vocabulary, pad, sos,
    eos, max_length (longest question), max_answer_length, and greedy(source (B, S), lengths (B,),
    max_length) -> answer ids (B, L) ending at eos. This one answers with the question's digits
    reversed."""

    kind: str
    vocabulary: List[str]
    pad: int
    sos: int
    eos: int
    max_length: int
    max_answer_length: int

    def __init__(self):
        super().__init__()
        self.kind = "seq2seq"
        self.vocabulary = ["<pad>", "<sos>", "<eos>"] + list("0123456789+?")
        self.pad, self.sos, self.eos = 0, 1, 2
        self.max_length, self.max_answer_length = 12, 16

    def forward(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.greedy(source, lengths, self.max_answer_length)

    @torch.jit.export
    def greedy(self, source: torch.Tensor, lengths: torch.Tensor, max_length: int) -> torch.Tensor:
        answer = torch.full((source.size(0), max_length), self.pad, dtype=torch.int64)
        for b in range(source.size(0)):
            n = min(int(lengths[b]), max_length - 1)
            answer[b, :n] = source[b, :n].flip(0)
            answer[b, n] = self.eos
        return answer


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    path = tmp_path_factory.mktemp("seq2seq") / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(StandInSeq2Seq()), str(path))
    return path


def test_answer_decodes_the_greedy_answer(dll_infer, seq2seq):
    result = _infer(dll_infer, "answer", seq2seq, "12+34?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "?43+21\n"


@pytest.mark.parametrize("question, message", [
    ("", "the question is empty"),
    ("1234567890123", "the question has 13 characters, more than the model's maximum of 12"),
    ("2*3=é", "characters not in the vocabulary: '*' (U+002A), '=' (U+003D), 'é' (U+00E9)"),
    ("<eos>", "characters not in the vocabulary: '<' (U+003C), '>' (U+003E), 'e' (U+0065), 'o' (U+006F), "
              "'s' (U+0073)"),
])
def test_answer_bad_question_exits_1(dll_infer, seq2seq, question, message):
    result = _infer(dll_infer, "answer", seq2seq, question)
    assert result.returncode == 1
    assert result.stderr == f"dll_infer: error: {message}\n"


# ---- answer --beam: dll_infer's beam search against Python's, on untrained math models --------

@pytest.fixture(scope="module", params=["transformer", "lstm"])
def random_math_model(request, tmp_path_factory):
    """An untrained math model of the pipelines (random weights: long, varied answers) as
    dll-ext export writes it, and the eager model."""
    sizes = {"transformer": dict(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1,
                                 dim_feedforward=64),
             "lstm": dict(embedding_dim=16, hidden_size=32, scoring="general")}[request.param]
    vocabulary = Seq2SeqVocabulary.printable_ascii()
    config = {"architecture": request.param, "model": sizes, "vocabulary": vocabulary.to_dict()}
    torch.manual_seed(4)
    model = build_model(config, vocabulary).eval()
    path = tmp_path_factory.mktemp("math") / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Seq2SeqInference(model, config)), str(path))
    return path, model, vocabulary


@pytest.mark.parametrize("beam, alpha", [(1, 0.0), (4, 0.0), (5, 0.6), (3, 2.0)])
def test_answer_beam_equals_python(dll_infer, random_math_model, beam, alpha):
    path, model, vocabulary = random_math_model
    for question in ("What is 12 + 7?", "Sort -3, 1/2, 0.4.", "x"):
        expected = beam_answers(model, vocabulary, question, beam, alpha)
        assert any(len(text) > 3 for text, _ in expected)
        result = _infer(dll_infer, "answer", path, question, "--beam", str(beam), "--nbest", str(beam + 1),
                        "--length-penalty", str(alpha))
        assert result.returncode == 0, result.stderr
        lines = [line.split("\t", 1) for line in result.stdout.splitlines()]
        assert [text for _, text in lines] == [text for text, _ in expected]
        assert [float(score) for score, _ in lines] == pytest.approx([score for _, score in expected], abs=1e-5)
        best = _infer(dll_infer, "answer", path, question, "--beam", str(beam), "--length-penalty", str(alpha))
        assert best.stdout == expected[0][0] + "\n"
        greedy = _infer(dll_infer, "answer", path, question)
        assert greedy.stdout == greedy_answers(model, vocabulary, [question])[0] + "\n"


@pytest.mark.parametrize("options, message", [
    (["--beam", "0"], "--beam must be an integer >= 1, got '0'"),
    (["--beam", "2", "--nbest", "x"], "--nbest must be an integer >= 1, got 'x'"),
    (["--beam", "2", "--length-penalty", "-1"], "--length-penalty must be a number >= 0, got '-1'"),
    (["--length-penalty", "nan"], "--length-penalty must be a number >= 0, got 'nan'"),
])
def test_answer_bad_beam_options_exit_2(dll_infer, seq2seq, options, message):
    result = _infer(dll_infer, "answer", seq2seq, "1+2?", *options)
    assert result.returncode == 2 and result.stderr.startswith(f"dll_infer: {message}\n"), result.stderr


# ---- bad input: one line and a non-zero exit --------------------------------------------------

def _error(result):
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("dll_infer: error: ") and "frame #" not in result.stderr
    return result.stderr


def test_model_of_another_kind(dll_infer, digits, char_lm, tmp_path):
    lm = char_lm[0] / "export" / "model.pt"
    classifier = digits[0] / "export" / "model.pt"
    assert "is a char_lm model; `dll_infer classify` needs a classifier model" in _error(
        _infer(dll_infer, "classify", lm, tmp_path / "x.pgm"))
    assert "is a classifier model; `dll_infer generate` needs a char_lm model" in _error(
        _infer(dll_infer, "generate", classifier, "--prompt", "1"))
    assert "is a char_lm model; `dll_infer answer` needs a seq2seq model" in _error(
        _infer(dll_infer, "answer", lm, "1+1"))
    # A package's kind is in its metadata.
    assert "model.pt2' is a classifier model; `dll_infer generate` needs a char_lm model" in _error(
        _infer(dll_infer, "generate", digits[0] / "export" / "model.pt2", "--prompt", "1"))


def test_missing_model_file(dll_infer, tmp_path):
    missing = tmp_path / "none" / "model.pt"
    assert f"loading model '{missing}': no such file" in _error(_infer(dll_infer, "generate", missing, "--prompt", "a"))


def test_model_needing_ops_that_are_not_loaded(dll_infer, tmp_path):
    library = torch.library.Library("dll_export_test", "DEF")  # an op only this process has
    library.define("twice(Tensor x) -> Tensor")
    library.impl("twice", lambda x: 2 * x, "CompositeExplicitAutograd")

    class UsesTheOp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.dll_export_test.twice(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(UsesTheOp()), str(tmp_path / "model.pt"))
    torch.save(torch.ones(2), tmp_path / "x.pt")

    stderr = _error(_infer(dll_infer, tmp_path / "model.pt", "--input", tmp_path / "x.pt", "--output", tmp_path / "y"))
    assert "dll_export_test::twice" in stderr and "needs ops from another library" in stderr


@pytest.mark.parametrize("prompt, message", [
    ("", "the prompt is empty"),
    ("Café ☕", "characters not in the vocabulary: '☕' (U+2615)"),
    (b"caf\xc3", "reading the prompt: invalid UTF-8: truncated sequence at byte 3"),
    (b"\xc0\xafx", "reading the prompt: invalid UTF-8: overlong sequence at byte 0"),
])
def test_generate_bad_prompt(dll_infer, char_lm, prompt, message):
    # Arguments as bytes: a command line may hold bytes that are not UTF-8.
    args = [bytes(dll_infer), b"generate", bytes(char_lm[0] / "export" / "model.pt"), b"--prompt",
            prompt if isinstance(prompt, bytes) else prompt.encode()]
    result = subprocess.run(args, capture_output=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.decode() == f"dll_infer: error: {message}\n"


@pytest.mark.parametrize("content, message", [
    (b"P2\n8 8\n255\n" + b"0 " * 64, "P2 Netpbm files are not supported: only binary PGM (P5) and PPM (P6)"),
    (b"P5\n8 8\n65535\n" + bytes(128), "PNM maxval 65535: only 8-bit samples (maxval 1..255) are supported"),
    (b"P5\n8 8\n255\n" + bytes(60), "truncated PNM file: 8x8 needs 64 bytes of pixels, found 60"),
    (b"P5\n8 x\n255\n" + bytes(64), "PNM header: height is not a number"),
    (b"P5\n# only a comment", "PNM header: width is missing (file too short)"),
    (b"P5\n8 8\n16\n" + bytes([17]) * 64, "PNM sample 17 exceeds maxval 16"),
    (b"P6\n8 8\n255\n" + bytes(192), "the image is 3x8x8 (channels x height x width) but the model takes 1x8x8 "
                                     "images (dll_infer does not resize)"),
    (b"P5\n16 16\n255\n" + bytes(256), "the image is 1x16x16 (channels x height x width) but the model takes "
                                       "1x8x8 images (dll_infer does not resize)"),
    (b"not an image", "is neither a PGM/PPM image nor a tensor file"),
])
def test_classify_bad_image(dll_infer, digits, tmp_path, content, message):
    (tmp_path / "image.pgm").write_bytes(content)
    stderr = _error(_infer(dll_infer, "classify", digits[0] / "export" / "model.pt", tmp_path / "image.pgm"))
    assert message in stderr and stderr.count("\n") == 1


@pytest.mark.parametrize("args", [
    ["classify"],
    ["classify", "model.pt"],
    ["classify", "model.pt", "image.pgm", "--top", "0"],
    ["classify", "model.pt", "image.pgm", "extra"],
    ["generate", "model.pt"],
    ["generate", "model.pt", "--prompt", "a", "--length", "-1"],
    ["generate", "model.pt", "--prompt"],
    ["answer", "model.pt", "1+1", "--top", "3"],
    ["nback", "model.pt", "1", "x"],
    ["classify", "model.pt", "image.pgm", "--device", "cuda"],
])
def test_subcommand_bad_usage_exits_2(dll_infer, args):
    result = _infer(dll_infer, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("dll_infer: ") and "usage: dll_infer" in result.stderr


# ---- dll-ext export on runs it cannot export ---------------------------------------------------

def _export_error(capsys, *argv):
    assert main(["export", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dll-ext export: error: ") and err.count("\n") == 1
    return err


def test_export_takes_a_checkpoint_file_for_its_run(capsys, nback):
    run = nback[0]
    assert main(["export", str(run / "best.pt"), "--no-aoti"]) == 0
    info = json.loads((run / "export" / "export.json").read_text())
    assert info["checkpoint"] == str(run / "best.pt") and info["torchscript"] == "model.pt"
    assert "is the 'best' checkpoint, but --checkpoint asks for 'checkpoint'" in _export_error(
        capsys, run / "best.pt", "--checkpoint", "checkpoint")
    assert "is neither a run folder nor one of its checkpoints" in _export_error(capsys, run / "metrics.json")


def test_export_bad_run_folders(capsys, tmp_path, nback):
    assert "is not a run folder" in _export_error(capsys, tmp_path / "missing")
    assert f"no checkpoint at {tmp_path / 'best.pt'}" in _export_error(capsys, tmp_path)
    assert "averaged.pt is written by runs trained with --average" in _export_error(
        capsys, nback[0], "--checkpoint", "averaged")
    torch.save({"weights": torch.ones(2)}, tmp_path / "best.pt")
    assert "is not a dll-ext training checkpoint" in _export_error(capsys, tmp_path)
    (tmp_path / "best.pt").write_bytes(b"garbage")
    assert "cannot read checkpoint" in _export_error(capsys, tmp_path)
    torch.save({"format": FORMAT, "pipeline": "regression", "task_config": {}, "options": {}, "model": {}},
               tmp_path / "best.pt")
    assert "models of the 'regression' pipeline cannot be exported" in _export_error(capsys, tmp_path)
    torch.save({"format": FORMAT, "pipeline": "nback", "task_config": {"k": 4}, "options": {}, "model": {}},
               tmp_path / "best.pt")
    assert "its configuration does not describe a nback model" in _export_error(capsys, tmp_path)
