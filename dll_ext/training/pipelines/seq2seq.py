"""Pipelines 4 and 5: mathematical problem solving as sequence to sequence (the course's chapter 4
and assignment 4), with a Transformer (`math-transformer`) or a bidirectional LSTM encoder and an
attention LSTM decoder (`math-lstm`).

Data: question/answer pairs of DeepMind Mathematics modules (--modules), generated with the
released distribution by dll_ext.data.math with --data-seed (training, interpolate and, for the
modules that have it, extrapolate), or read from a local copy of mathematics_dataset-v1.0
(--data-dir). A validation set is held out of the training pairs. Characters are tokens; the
vocabulary (<pad> <sos> <eos> <unk> and every printable ASCII character) is saved in the
checkpoints. Training is teacher forcing: the decoder reads `<sos> a b` and predicts `a b <eos>`.

Metrics: cross-entropy per answer token and exact match, the fraction of answers whose every
token (and <eos>) is the most likely one given the true prefix, which is exactly the answers
greedy decoding gets right. At the end, on the interpolate and extrapolate test pairs of each
module: exact match of greedy decoding and of beam search (--beam); on interpolate also an N-best
example list and attention heatmaps.
"""
import argparse
import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from dll_ext.data import MathDataset, Seq2SeqCollate, Seq2SeqVocabulary
from dll_ext.data.errors import DataError
from dll_ext.data.math import (MAX_ANSWER_LENGTH, MAX_QUESTION_LENGTH, MODULES, evaluation_splits, generate_splits,
                               list_modules, load_pairs)
from dll_ext.models import AttentionLSTM, Seq2SeqTransformer, beam_search
from dll_ext.models.attention_lstm import SCORINGS
from dll_ext.training.checkpoint import build_from_checkpoint, load_checkpoint, load_weights
from dll_ext.training.data import split_dataset
from dll_ext.training.errors import TrainingError
from dll_ext.training.options import nonnegative_float, positive_int
from dll_ext.training.pipeline import BatchLoss, Pipeline, Task
from dll_ext.training.plots import figure

Pair = Tuple[str, str]
# Source and target_input positions the models are built for: the dataset's longest question,
# and its longest answer plus <sos> (or <eos>).
MAX_LENGTH = max(MAX_QUESTION_LENGTH, MAX_ANSWER_LENGTH + 1)
# Test questions drawn as attention heatmaps.
HEATMAPS = 3
# Examples with their N-best lists in metrics.json, per module.
EXAMPLES = 3


def _module_list(text: str) -> List[str]:
    modules = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modules if m not in MODULES]
    if not modules or unknown:
        raise argparse.ArgumentTypeError(f"unknown module(s) {', '.join(unknown) or repr(text)}; known: "
                                         f"{', '.join(MODULES)}")
    return modules


def _pairs(args) -> Tuple[Dict[str, List[Pair]], Dict[str, Dict[str, List[Pair]]]]:
    """(training pairs per module, test pairs per split and module): interpolate, and extrapolate
    for the modules that have it (in --data-dir, where its file is there)."""
    train: Dict[str, List[Pair]] = {}
    test: Dict[str, Dict[str, List[Pair]]] = {"interpolate": {}, "extrapolate": {}}
    for module in args.modules:
        if args.data_dir is not None:
            train[module] = _mixed(load_pairs(args.data_dir, module, "train"), args.train_size, args.data_seed)
            splits = ["interpolate"]
            if MODULES[module].extrapolate_module in list_modules(args.data_dir, "extrapolate"):
                splits.append("extrapolate")
            for split in splits:
                test[split][module] = load_pairs(args.data_dir, module, split)[:args.test_size]
        else:
            generated = generate_splits(module, args.train_size, args.test_size, args.data_seed)
            train[module] = generated["train"]
            for split in evaluation_splits(module):
                test[split][module] = generated[split]
    return train, test


def _mixed(pairs: List[Pair], count: int, seed: int) -> List[Pair]:
    """`count` of the pairs drawn at random (all of them, shuffled, when there are fewer): the
    train-easy, -medium and -hard files follow one another, and their first pairs alone would
    all be easy ones. The paper trains on the three mixed."""
    return random.Random(seed).sample(pairs, min(count, len(pairs)))


def build_model(config: dict, vocabulary: Seq2SeqVocabulary, native: bool = False, dropout: float = 0.0):
    """The model a math pipeline's task config describes ({"architecture": ..., "model": sizes})."""
    ids = dict(vocab_size=len(vocabulary), pad_id=vocabulary.pad_id, sos_id=vocabulary.sos_id,
               eos_id=vocabulary.eos_id, max_length=MAX_LENGTH, dropout=dropout, native=native)
    model_class = {"transformer": Seq2SeqTransformer, "lstm": AttentionLSTM}[config["architecture"]]
    return model_class(**ids, **config["model"])


class MathTask(Task):
    monitor = "exact_match"
    higher_is_better = True

    def __init__(self, args, architecture: str, sizes: dict):
        train, test = _pairs(args)
        all_train = [pair for module in args.modules for pair in train[module]]
        # Fixed, not the training pairs' characters: a test split or a user's question may
        # hold characters the training pairs never did (no "millions" in train-easy).
        vocabulary = Seq2SeqVocabulary.printable_ascii()
        self.vocabulary = vocabulary
        self.test_pairs = test
        config = {"architecture": architecture, "model": sizes, "modules": args.modules,
                  "vocabulary": vocabulary.to_dict()}
        model = build_model(config, vocabulary, args.native, args.dropout)
        training = MathDataset(all_train, vocabulary, MAX_QUESTION_LENGTH, MAX_ANSWER_LENGTH)
        if args.val_size >= len(training):
            raise TrainingError(f"--val-size {args.val_size} leaves no training pairs out of {len(training)}")
        fraction = args.val_size / len(training)
        train_subset, val_subset = split_dataset(training, (1 - fraction, fraction), args.data_seed)
        test_set = MathDataset([pair for pairs in test["interpolate"].values() for pair in pairs], vocabulary,
                               MAX_QUESTION_LENGTH, MAX_ANSWER_LENGTH)
        super().__init__(model, train_subset, val_subset, test_set, config,
                         Seq2SeqCollate(vocabulary.pad_id, vocabulary.sos_id, vocabulary.eos_id))
        self.beam, self.length_penalty = args.beam, args.length_penalty

    def loss(self, model, batch) -> BatchLoss:
        logits = model(batch.source, batch.source_lengths, batch.target_input)
        targets = batch.target_output
        pad = self.vocabulary.pad_id
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad)
        # Right where every non-pad position is: the answers greedy decoding gets exactly.
        exact = ((logits.argmax(-1) == targets) | (targets == pad)).all(1).sum()
        # Batches are weighted by their answers, the unit of exact match.
        return BatchLoss(loss, len(targets), {"exact_match": exact})

    def artefacts(self, model, out_dir: Path) -> dict:
        """Greedy and beam-search exact match per module on the interpolate test pairs (test_...)
        and the extrapolate ones (extrapolate_...), N-best examples of interpolate, and
        attention.png (heatmaps of the first interpolate questions)."""
        model.eval()
        metrics, examples, heatmap_answers = {}, {}, None
        for split, prefix in (("interpolate", "test"), ("extrapolate", "extrapolate")):
            greedy, beam = {}, {}
            for module, pairs in self.test_pairs[split].items():
                answers = greedy_answers(model, self.vocabulary, [q for q, _ in pairs])
                greedy[module] = _exact_match(answers, pairs)
                nbest = [beam_answers(model, self.vocabulary, q, self.beam, self.length_penalty) for q, _ in pairs]
                beam[module] = _exact_match([hypotheses[0][0] for hypotheses in nbest], pairs)
                if split == "interpolate":
                    examples[module] = [{"question": q, "answer": a, "greedy": g,
                                         "beam": [{"answer": text, "score": score} for text, score in hypotheses]}
                                        for (q, a), g, hypotheses in list(zip(pairs, answers, nbest))[:EXAMPLES]]
                    if heatmap_answers is None:
                        heatmap_answers = answers[:HEATMAPS]
            if greedy:
                metrics[f"{prefix}_greedy_exact_match"] = greedy
                metrics[f"{prefix}_beam{self.beam}_exact_match"] = beam
        pairs = next(iter(self.test_pairs["interpolate"].values()))
        plot_attention(model, self.vocabulary, [q for q, _ in pairs[:HEATMAPS]], heatmap_answers,
                       out_dir / "attention.png")
        return {**metrics, "examples": examples}


def _exact_match(answers: Sequence[str], pairs: Sequence[Pair]) -> float:
    return sum(answer == expected for answer, (_, expected) in zip(answers, pairs)) / max(1, len(pairs))


def encode_question(vocabulary: Seq2SeqVocabulary, question: str) -> torch.Tensor:
    """The ids of a question, (1, S); DataError when it is empty, too long or has characters
    outside the vocabulary."""
    if not question:
        raise DataError("the question is empty")
    if len(question) > MAX_QUESTION_LENGTH:
        raise DataError(f"the question has {len(question)} characters; the models take at most "
                        f"{MAX_QUESTION_LENGTH}")
    return vocabulary.encode(question).unsqueeze(0)


def greedy_answers(model, vocabulary: Seq2SeqVocabulary, questions: Sequence[str],
                   batch_size: int = 256) -> List[str]:
    """The greedy answers to questions, decoded in batches (the encoder runs once per batch)."""
    device = next(model.parameters()).device
    collate = Seq2SeqCollate(vocabulary.pad_id, vocabulary.sos_id, vocabulary.eos_id)
    answers = []
    for start in range(0, len(questions), batch_size):
        chunk = [(encode_question(vocabulary, q)[0], torch.zeros(0, dtype=torch.int64))
                 for q in questions[start:start + batch_size]]
        batch = collate(chunk)
        ids = model.greedy(batch.source.to(device), batch.source_lengths.to(device), MAX_ANSWER_LENGTH + 1)
        answers += [vocabulary.decode(row) for row in ids.cpu()]
    return answers


def beam_answers(model, vocabulary: Seq2SeqVocabulary, question: str, beam: int,
                 length_penalty: float) -> List[Tuple[str, float]]:
    """The N-best list of beam search for one question: (answer, score), best first."""
    device = next(model.parameters()).device
    source = encode_question(vocabulary, question).to(device)
    lengths = torch.tensor([source.size(1)], device=device)
    hypotheses = beam_search(model, source, lengths, beam, MAX_ANSWER_LENGTH + 1, length_penalty)
    return [(vocabulary.decode(h.tokens), h.score) for h in hypotheses]


def plot_attention(model, vocabulary: Seq2SeqVocabulary, questions: Sequence[str], answers: Sequence[str],
                   path: Path) -> None:
    """One heatmap per question: the attention over its characters (columns) while the model
    writes each character of its (greedy) answer and <eos> (rows)."""
    device = next(model.parameters()).device
    fig, axes = figure(len(questions), width=7.0, height=3.0)
    for ax, question, answer in zip(axes, questions, answers):
        source = encode_question(vocabulary, question).to(device)
        target = torch.cat([torch.tensor([vocabulary.sos_id]), vocabulary.encode(answer, map_unknown=True)])
        with torch.no_grad():
            weights = model.attention_weights(source, torch.tensor([source.size(1)], device=device),
                                              target.unsqueeze(0).to(device))[0].cpu()
        ax.imshow(weights.numpy(), cmap="viridis", aspect="auto", vmin=0.0)
        ax.set_xticks(range(len(question)), list(question), fontsize=6)
        ax.set_yticks(range(len(answer) + 1), list(answer) + ["<eos>"], fontsize=7)
        ax.set_title(f"{question} -> {answer}", fontsize=8)
    fig.savefig(path, dpi=120)


class MathPipeline(Pipeline):
    """What the two math pipelines share: data options, the task, the final evaluation."""
    architecture = ""
    # No dropout: 200,000 pairs a module are plenty for these small models, and on CPU dropout's
    # random draws cost a fifth of a Transformer step. Two epochs: a Transformer epoch of
    # numbers__place_value took 8 to 11 minutes on the 2-core Intel Xeon class and reached
    # 99.4-100% on validation; four would take over 30 minutes.
    defaults = {"epochs": 2, "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "scheduler": "cosine",
                "clip_norm": 1.0, "dropout": 0.0}
    quick = {"epochs": 2, "train_size": 16000, "test_size": 200, "val_size": 200}

    def add_arguments(self, parser) -> None:
        parser.add_argument("--modules", type=_module_list, default=["numbers__place_value"],
                            help=f"comma-separated modules to train on together ({', '.join(MODULES)})")
        parser.add_argument("--data-dir", default=None,
                            help="a local mathematics_dataset-v1.0 (or its parent): train-easy/medium/hard "
                                 "files for training, interpolate and extrapolate for the test (default: "
                                 "generate the pairs)")
        parser.add_argument("--train-size", type=positive_int, default=200_000,
                            help="training pairs per module (generated, or drawn at random from all the "
                                 "training files of --data-dir, every difficulty mixed)")
        parser.add_argument("--test-size", type=positive_int, default=1000,
                            help="test pairs per module, in interpolate and in extrapolate each")
        parser.add_argument("--val-size", type=positive_int, default=1000,
                            help="training pairs held out for validation (of all modules together)")
        parser.add_argument("--data-seed", type=int, default=0,
                            help="seed of the generated pairs and the validation split (--seed is the training's)")
        parser.add_argument("--beam", type=positive_int, default=4, help="beam size of the final test evaluation")
        parser.add_argument("--length-penalty", type=nonnegative_float, default=0.0,
                            help="beam search: GNMT's alpha (0: raw log-probabilities)")

    def sizes(self, args) -> dict:
        raise NotImplementedError

    def build(self, args) -> MathTask:
        return MathTask(args, self.architecture, self.sizes(args))


class MathTransformerPipeline(MathPipeline):
    name = "math-transformer"
    architecture = "transformer"
    help = ("Mathematical problem solving (DeepMind Mathematics modules) with a Transformer "
            "encoder-decoder on dll_ext.nn.Transformer; answer questions with `dll-ext answer`.")

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--d-model", type=positive_int, default=128, help="model width")
        parser.add_argument("--heads", type=positive_int, default=4, help="attention heads")
        parser.add_argument("--encoder-layers", type=positive_int, default=2, help="encoder layers")
        parser.add_argument("--decoder-layers", type=positive_int, default=2, help="decoder layers")
        parser.add_argument("--feedforward", type=positive_int, default=512, help="feedforward width")

    def sizes(self, args) -> dict:
        if args.d_model % args.heads:
            raise TrainingError(f"--d-model {args.d_model} must be a multiple of --heads {args.heads}")
        return {"d_model": args.d_model, "nhead": args.heads, "num_encoder_layers": args.encoder_layers,
                "num_decoder_layers": args.decoder_layers, "dim_feedforward": args.feedforward}


class MathLSTMPipeline(MathPipeline):
    name = "math-lstm"
    architecture = "lstm"
    help = ("Mathematical problem solving (DeepMind Mathematics modules) with a bidirectional dll_ext "
            "LSTM encoder and an LSTM decoder attending over it; answer questions with `dll-ext answer`.")

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--embedding-dim", type=positive_int, default=64, help="character embedding size")
        parser.add_argument("--hidden-size", type=positive_int, default=256, help="LSTM hidden size")
        parser.add_argument("--encoder-layers", type=positive_int, default=1, help="encoder LSTM layers")
        parser.add_argument("--scoring", choices=SCORINGS, default="dot", help="attention score")

    def sizes(self, args) -> dict:
        return {"embedding_dim": args.embedding_dim, "hidden_size": args.hidden_size,
                "encoder_layers": args.encoder_layers, "scoring": args.scoring}


TRANSFORMER = MathTransformerPipeline()
LSTM = MathLSTMPipeline()


def load_math_model(path, device: torch.device = torch.device("cpu")):
    """(model, vocabulary) of a math-transformer or math-lstm checkpoint, read with weights_only;
    TrainingError when the file is missing, corrupt, of another pipeline or inconsistent."""
    saved = load_checkpoint(path)
    if saved.get("pipeline") not in (TRANSFORMER.name, LSTM.name):
        raise TrainingError(f"{path} is a checkpoint of the {saved.get('pipeline')!r} pipeline, not of "
                            f"{TRANSFORMER.name!r} or {LSTM.name!r}")
    config = saved.get("task_config")
    try:
        vocabulary = Seq2SeqVocabulary.from_dict(config["vocabulary"])
    except (DataError, KeyError, TypeError) as e:
        raise TrainingError(f"{path}: its configuration does not describe a math model ({e})") from e
    state = saved.get("model", {})
    model = build_from_checkpoint(lambda: build_model(config, vocabulary), state, path, "math model")
    load_weights(model, state, path)
    return model.to(device).eval(), vocabulary

