"""Pipeline 2: the course's N-back toy task (chapter 3.2) on dll_ext's fused LSTM.

At each position of a sequence of symbols in [0, k), say whether the symbol equals the one n
positions back. Sequences have lengths around 20 +- 5, so a batch is padded to its longest;
inputs are one-hot, the LSTM reads each sequence up to its length (a PackedSequence), the loss
is cross-entropy with ignore_index on the padded positions, and accuracy is counted over the
valid positions only. The training, validation and test sequences are drawn in turn from one
seeded RandomState, as the course draws its training and validation sets.
"""
import numpy as np
import torch.nn.functional as F

from dll_ext.data import IGNORE_INDEX, NBackCollate, NBackDataset
from dll_ext.models import NBackLSTM
from dll_ext.training.errors import TrainingError
from dll_ext.training.options import positive_float, positive_int
from dll_ext.training.pipeline import BatchLoss, Pipeline, Task


class NBackTask(Task):
    monitor = "accuracy"
    higher_is_better = True

    def __init__(self, args):
        random_state = np.random.RandomState(args.data_seed)
        shape = dict(n=args.n, k=args.k, mean_length=args.mean_length, std_length=args.std_length)
        # Drawn in this order from one state: with the defaults, the first two are the course's sets.
        splits = [NBackDataset(count, **shape, seed=random_state)
                  for count in (args.sequences, args.eval_sequences, args.eval_sequences)]
        model = NBackLSTM(args.k, args.hidden_size, args.layers, dropout=args.dropout, native=args.native)
        config = {**shape, "sequences": args.sequences, "eval_sequences": args.eval_sequences,
                  "data_seed": args.data_seed, "hidden_size": args.hidden_size, "layers": args.layers}
        super().__init__(model, *splits, config=config, collate_fn=NBackCollate(args.k))

    def to_device(self, batch, device):
        inputs, lengths, targets = batch
        # pack_padded_sequence takes the lengths on the CPU.
        return inputs.to(device, non_blocking=True), lengths, targets.to(device, non_blocking=True)

    def loss(self, model, batch) -> BatchLoss:
        inputs, lengths, targets = batch
        logits = model(inputs, lengths).flatten(0, 1)
        targets = targets.flatten()
        valid = targets != IGNORE_INDEX
        correct = ((logits.argmax(1) == targets) & valid).sum()
        # The mean over valid positions, so count is theirs: epoch means weight batches by it.
        loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        return BatchLoss(loss, int(valid.sum()), {"accuracy": correct})


class NBackPipeline(Pipeline):
    name = "nback"
    help = ("The course's N-back toy task: an LSTM (dll_ext's fused one) says at each position of a "
            "padded sequence whether its symbol equals the one n positions back.")
    # The course's Adam at lr 0.01, on mini-batches rather than the whole set: validation accuracy
    # reaches 100% within 10 epochs (320 steps).
    defaults = {"epochs": 20, "batch_size": 32, "lr": 0.01, "optimizer": "adam"}
    quick = {"epochs": 10}

    def add_arguments(self, parser) -> None:
        parser.add_argument("--n", type=positive_int, default=3, help="how many positions back to compare")
        parser.add_argument("--k", type=positive_int, default=4, help="number of distinct symbols")
        parser.add_argument("--mean-length", type=positive_float, default=20.0, help="mean sequence length")
        parser.add_argument("--std-length", type=positive_float, default=5.0,
                            help="standard deviation of the sequence length")
        parser.add_argument("--sequences", type=positive_int, default=1000, help="training sequences")
        parser.add_argument("--eval-sequences", type=positive_int, default=1000,
                            help="validation sequences, and as many test sequences")
        parser.add_argument("--hidden-size", type=positive_int, default=64, help="LSTM hidden size")
        parser.add_argument("--layers", type=positive_int, default=1, help="LSTM layers")
        parser.add_argument("--data-seed", type=int, default=0,
                            help="seed of the sequences (--seed is the training's)")

    def build(self, args) -> NBackTask:
        if args.k < 2:
            raise TrainingError(f"--k must be at least 2 (symbols to tell apart), got {args.k}")
        return NBackTask(args)


PIPELINE = NBackPipeline()
