"""Pipeline 1: image classification (the course's MNIST full example, its ConvNet, a small ResNet).

Datasets: the 8x8 digits bundled with scikit-learn (default: nothing to download), split
70/15/15 with a seeded permutation; MNIST (IDX files) and CIFAR-10 (Python pickles) from
--data-dir, with their own test split and a validation set carved out of the training one.
Images are normalised with the training split's channel statistics; CIFAR-10 training images are
also randomly cropped and flipped (validation and test images never are). At the end: the test
accuracy of the best validation weights and a confusion-matrix PNG.
"""
import argparse
from pathlib import Path
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from dll_ext.data import ImageDataset, Normalize, RandomCropFlip, load_cifar10, load_digits, load_mnist
from dll_ext.models import CLASSIFIERS, ConvNet, build_classifier
from dll_ext.training.data import split_dataset
from dll_ext.training.errors import TrainingError
from dll_ext.training.options import probability
from dll_ext.training.pipeline import BatchLoss, Pipeline, Task
from dll_ext.training.plots import figure

DATASETS = ("digits", "mnist", "cifar10")
# digits has no test split of its own: (train, validation, test) fractions of its 1,797 images.
DIGITS_FRACTIONS = (0.7, 0.15, 0.15)
# Training-image augmentations: random shifts (a crop of the zero-padded image, by up to an
# eighth of its side: 4 pixels for CIFAR-10's 32, as in He et al., 2016), with random
# left-right flips too where a mirrored image is still of its class (not for digits). The
# centred, size-normalised digits gain nothing from shifts (on the 8x8 ones, a pixel is too much).
AUGMENTATIONS = ("none", "shift", "crop-flip")
DEFAULT_AUGMENTATION = {"digits": "none", "mnist": "none", "cifar10": "crop-flip"}


def _channel_pair(text: str):
    """'16,32' -> [16, 32]."""
    try:
        channels = [int(c) for c in text.split(",")]
    except ValueError:
        channels = []
    if len(channels) != 2 or min(channels) < 1:
        raise argparse.ArgumentTypeError(f"expected two positive integers C1,C2, got {text!r}")
    return channels


def _augmentation(name: str, image_side: int):
    if name == "none":
        return None
    return RandomCropFlip(padding=max(1, image_side // 8), flip=name == "crop-flip")


def _load(args) -> Tuple[ImageDataset, Subset, Subset, Subset]:
    """(all training images, the train and validation subsets of them, the test images), the
    subsets of ImageDatasets without transforms."""
    if args.dataset == "digits":
        try:
            images = load_digits()
        except ImportError as e:
            raise TrainingError(str(e)) from e
        return (images, *split_dataset(images, DIGITS_FRACTIONS, args.data_seed))
    if args.data_dir is None:
        raise TrainingError(f"--dataset {args.dataset} reads a local copy: pass --data-dir FOLDER")
    load = load_mnist if args.dataset == "mnist" else load_cifar10
    images, test = load(args.data_dir, train=True), load(args.data_dir, train=False)
    train, val = split_dataset(images, (1 - args.val_fraction, args.val_fraction), args.data_seed)
    return images, train, val, Subset(test, range(len(test)))


def _with_transform(subset: Subset, transform: nn.Module) -> Subset:
    """The same images as `subset` (of an ImageDataset), yielded through `transform`."""
    base = subset.dataset
    return Subset(ImageDataset(base.images, base.labels, base.classes, transform), subset.indices)


def _classifier(args, image_shape, num_classes: int) -> nn.Module:
    if args.model == "convnet":  # build_classifier has the course's widths only
        return ConvNet(image_shape[0], image_shape[1], num_classes, channels=args.conv_channels,
                       dropout=args.dropout, native=args.native)
    return build_classifier(args.model, image_shape, num_classes, args.dropout, args.native)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).view(num_classes, -1)


def plot_confusion(matrix: torch.Tensor, classes, path: Path) -> None:
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, (ax,) = figure(width=size, height=size)
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    # Counts written in the cells, white where the cell is dark.
    threshold = matrix.max().item() / 2
    for true in ticks:
        for predicted in ticks:
            count = matrix[true, predicted].item()
            if count:
                ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                        color="white" if count > threshold else "black")
    accuracy = matrix.diag().sum().item() / max(1, matrix.sum().item())
    ax.set_title(f"test set: {accuracy:.2%} correct")
    fig.savefig(path, dpi=120)


class ClassifyTask(Task):
    monitor = "accuracy"
    higher_is_better = True

    def __init__(self, args):
        images, train, val, test = _load(args)
        normalize = Normalize.from_images(images.images[train.indices])
        augment = _augmentation(args.augment or DEFAULT_AUGMENTATION[args.dataset], images.image_shape[-1])
        train_transform = normalize if augment is None else nn.Sequential(augment, normalize)
        model = _classifier(args, images.image_shape, images.num_classes)
        # What the weights need to be used again: the model, the classes and the input normalisation.
        config = {"dataset": args.dataset, "model": args.model, "conv_channels": args.conv_channels,
                  "classes": images.classes, "image_shape": list(images.image_shape),
                  "mean": normalize.mean.flatten().tolist(), "std": normalize.std.flatten().tolist()}
        super().__init__(model, _with_transform(train, train_transform), _with_transform(val, normalize),
                         _with_transform(test, normalize), config)
        self.classes = images.classes

    def loss(self, model, batch) -> BatchLoss:
        images, labels = batch
        logits = model(images)
        correct = (logits.argmax(1) == labels).sum()
        return BatchLoss(F.cross_entropy(logits, labels), len(labels), {"accuracy": correct})

    def artefacts(self, model, out_dir: Path) -> dict:
        """confusion.png, and the confusion matrix and per-class accuracy in metrics.json."""
        device = next(model.parameters()).device
        model.eval()
        labels, predictions = [], []
        with torch.no_grad():
            for images, batch_labels in DataLoader(self.test_set, batch_size=256):
                predictions.append(model(images.to(device)).argmax(1).cpu())
                labels.append(batch_labels)
        matrix = confusion_matrix(torch.cat(labels), torch.cat(predictions), len(self.classes))
        plot_confusion(matrix, self.classes, out_dir / "confusion.png")
        per_class = matrix.diag().double() / matrix.sum(1).clamp_min(1).double()
        return {"classes": self.classes, "confusion_matrix": matrix.tolist(),
                "per_class_accuracy": dict(zip(self.classes, per_class.tolist()))}


class ClassifyPipeline(Pipeline):
    name = "classify"
    help = ("Image classification: the course's feed-forward network, its ConvNet or a small ResNet "
            "(fused dll_ext Conv2dReLU layers) on scikit-learn's 8x8 digits, MNIST or CIFAR-10.")
    defaults = {"epochs": 30, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "dropout": 0.3}
    quick = {"epochs": 8}

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dataset", choices=DATASETS, default="digits",
                            help="digits: scikit-learn's 1,797 8x8 digits (no download); mnist, cifar10: "
                                 "a local copy in --data-dir")
        parser.add_argument("--data-dir", default=None,
                            help="mnist: the folder of its four IDX files (.gz or not); cifar10: the "
                                 "cifar-10-batches-py folder or the one it was extracted in")
        parser.add_argument("--model", choices=CLASSIFIERS, default="convnet", help="the classifier")
        # The course's CIFAR-10 ConvNet has 6 and 16 channels; on the 8x8 digits that leaves it at
        # about 97% test accuracy, twice as many reach about 98%.
        parser.add_argument("--conv-channels", type=_channel_pair, default=[16, 32], metavar="C1,C2",
                            help="convnet: the channels of its two convolutions")
        parser.add_argument("--val-fraction", type=probability, default=0.1,
                            help="mnist, cifar10: the fraction of the training images held out for validation")
        parser.add_argument("--augment", choices=AUGMENTATIONS, default=None,
                            help="training-image augmentation: random shifts by up to 1/8 of the side, "
                                 "also random left-right flips, or none (default: crop-flip for cifar10, "
                                 "none for the digits and MNIST)")
        parser.add_argument("--data-seed", type=int, default=0,
                            help="seed of the train/validation(/test) split (--seed is the training's)")

    def build(self, args) -> ClassifyTask:
        return ClassifyTask(args)


PIPELINE = ClassifyPipeline()
