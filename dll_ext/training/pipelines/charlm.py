"""Pipeline 3: a character-level LSTM language model (the course's assignment 3), and sampling from it.

The text (--text, any UTF-8 file; by default the pydoc topics every Python ships) is cut into
consecutive training, validation and test pieces. The vocabulary holds the training piece's
characters plus <pad> and <unk> (characters first seen later read as <unk>); it is saved in the
checkpoints as a plain list, which `dll-ext generate` reads back.

Training is truncated back-propagation through time: each piece is cut into --batch-size
rows per process, read --bptt characters at a time in order, and the LSTM's state at the end
of one chunk, detached, starts the next chunk of the same rows (zeros at each epoch's start).
The state is part of the checkpoint, so a run resumed within an epoch continues exactly.
Metrics: cross-entropy per character, perplexity and bits per character (loss / ln 2).
"""
import math
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Dataset

from dll_ext.data import DataError, TBPTTBatches, Vocabulary, default_corpus, read_text, split_text
from dll_ext.models import CharLM
from dll_ext.training.checkpoint import build_from_checkpoint, load_checkpoint, load_weights
from dll_ext.training.errors import TrainingError
from dll_ext.training.options import positive_int, probability
from dll_ext.training.pipeline import BatchLoss, Pipeline, Task

SPLITS = ("training", "validation", "test")
MAX_EXP = math.log(torch.finfo(torch.float64).max)


class ChunkedStream(Dataset):
    """A token stream as TBPTT items: the stream is cut into `rows` rows, and item i is row
    i % rows of chunk i // rows: (inputs (T,), targets (T,), chunk index), T = bptt (less in the
    last chunk). Read in index order by batches of rows / world_size items, with every process
    taking every world_size-th item, each process sees the same rows chunk after chunk."""

    def __init__(self, ids: torch.Tensor, rows: int, bptt: int):
        self.batches = TBPTTBatches(ids, rows, bptt)
        self.rows, self.bptt = rows, bptt

    def __len__(self) -> int:
        return len(self.batches) * self.rows

    def __getitem__(self, index: int):
        chunk, row = divmod(index, self.rows)
        columns = slice(chunk * self.bptt, (chunk + 1) * self.bptt)
        return self.batches.inputs[row, columns], self.batches.targets[row, columns], chunk


def _chunked(split: str, ids: torch.Tensor, rows: int, bptt: int) -> ChunkedStream:
    try:
        return ChunkedStream(ids, rows, bptt)
    except DataError as e:
        larger = {"validation": ", a larger --val-fraction", "test": ", a larger --test-fraction"}.get(split, "")
        raise TrainingError(f"the {split} piece of the text is too short: {e}; use a longer text{larger} "
                            "or a smaller --batch-size") from e


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


class CharLMTask(Task):
    shuffle = False  # chunks in order, so that each continues the one before

    def __init__(self, args):
        text = default_corpus() if args.text is None else read_text(args.text)
        pieces = split_text(text, args.val_fraction, args.test_fraction)
        vocabulary = Vocabulary.from_text(pieces[0])
        rows = args.batch_size * _world_size()
        train, val, test = (_chunked(name, vocabulary.encode(piece, map_unknown=True), rows, args.bptt)
                            for name, piece in zip(SPLITS, pieces))
        sizes = {"embedding_dim": args.embedding_dim, "hidden_size": args.hidden_size, "num_layers": args.layers}
        model = CharLM(len(vocabulary), **sizes, dropout=args.dropout, native=args.native)
        super().__init__(model, train, val, test, config={"vocabulary": vocabulary.to_dict(), "model": sizes})
        self.state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.next_chunk = 0

    def loss(self, model, batch) -> BatchLoss:
        inputs, targets, chunks = batch
        chunk = int(chunks[0])
        # Carry the state only into the chunk that continues the last one: each epoch and each
        # evaluation starts from chunk 0, with zeros.
        state = None
        if chunk == self.next_chunk and self.state is not None:
            state = tuple(s.to(inputs.device) for s in self.state)
        logits, state = model(inputs, state)
        self.state, self.next_chunk = tuple(s.detach() for s in state), chunk + 1
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return BatchLoss(loss, targets.numel())

    def state_dict(self) -> dict:
        if self.state is None:
            return {}
        return {"state": [s.cpu() for s in self.state], "next_chunk": self.next_chunk}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.state, self.next_chunk = tuple(state["state"]), state["next_chunk"]

    def summarize(self, metrics):
        loss = metrics["loss"]
        # A diverged run's loss may be past what exp() can take.
        perplexity = math.exp(loss) if loss < MAX_EXP else math.inf
        return {**metrics, "perplexity": perplexity, "bpc": loss / math.log(2)}


class CharLMPipeline(Pipeline):
    name = "charlm"
    help = ("A character-level LSTM language model (dll_ext's fused LSTM) on a UTF-8 text, trained "
            "with truncated back-propagation through time (--batch-size: the text's rows read side by "
            "side per process); sample from it with `dll-ext generate`.")
    # On the default corpus (131 steps per epoch) validation stops improving after about 10 epochs
    # at 1.78 bits per character (dropout 0.1); the whole run takes 6-7 minutes on 2 CPU cores.
    defaults = {"epochs": 15, "batch_size": 32, "lr": 2e-3, "optimizer": "adam", "scheduler": "cosine",
                "clip_norm": 1.0, "dropout": 0.2}
    quick = {"epochs": 3, "hidden_size": 256}  # about 35 s, to 2.7 bits per character

    def add_arguments(self, parser) -> None:
        parser.add_argument("--text", default=None,
                            help="a UTF-8 text file (default: the pydoc topics shipped with Python)")
        parser.add_argument("--bptt", type=positive_int, default=100,
                            help="characters per chunk: how far back gradients flow")
        parser.add_argument("--embedding-dim", type=positive_int, default=64, help="character embedding size")
        parser.add_argument("--hidden-size", type=positive_int, default=512, help="LSTM hidden size")
        parser.add_argument("--layers", type=positive_int, default=1, help="LSTM layers")
        parser.add_argument("--val-fraction", type=probability, default=0.05,
                            help="the fraction of the text (after the training piece) for validation")
        parser.add_argument("--test-fraction", type=probability, default=0.05,
                            help="the fraction of the text (at its end) for the test")

    def build(self, args) -> CharLMTask:
        if args.val_fraction + args.test_fraction >= 1:
            raise TrainingError(f"--val-fraction {args.val_fraction} and --test-fraction {args.test_fraction} "
                                "leave no text for training")
        return CharLMTask(args)


PIPELINE = CharLMPipeline()


def load_char_lm(path, device: torch.device = torch.device("cpu")) -> Tuple[CharLM, Vocabulary]:
    """The model and vocabulary saved in a charlm checkpoint (checkpoint.pt, best.pt or
    averaged.pt), read with weights_only; TrainingError when the file is missing, corrupt, of
    another pipeline or not loadable into the model its configuration describes."""
    saved = load_checkpoint(path, PIPELINE.name)
    config = saved.get("task_config")
    try:
        vocabulary = Vocabulary.from_dict(config["vocabulary"])
    except (DataError, KeyError, TypeError) as e:
        raise TrainingError(f"{path}: its configuration does not describe a character LM ({e})") from e
    state = saved.get("model", {})
    model = build_from_checkpoint(lambda: CharLM(len(vocabulary), **config["model"]), state, path, "character LM")
    load_weights(model, state, path)
    return model.to(device).eval(), vocabulary


def generate_text(model: CharLM, vocabulary: Vocabulary, prompt: str, length: int, greedy: bool = False,
                  temperature: float = 1.0, top_k: Optional[int] = None, seed: int = 0) -> str:
    """The `length` characters the model writes after `prompt`: greedy search, or sampling at
    `temperature` from the top_k most likely, drawn from a generator seeded with `seed`.
    DataError names the prompt's characters outside the vocabulary."""
    if not prompt:
        raise TrainingError("the prompt is empty: the model needs at least one character to start from")
    ids = vocabulary.encode(prompt)
    generator = torch.Generator().manual_seed(seed)
    return vocabulary.decode(model.generate(ids, length, greedy, temperature, top_k, generator))
