"""Datasets of the course pipelines: image classification (scikit-learn's digits, MNIST, CIFAR-10),
the N-back toy task, character-level text and DeepMind's Mathematics question/answer pairs. Every
loader reports missing or malformed data with a DataError. The Mathematics generator, writer and
loader (generate, generate_splits, write_dataset, load_pairs) are in dll_ext.data.math, the
modules it draws from (with the released generator's distribution) in dll_ext.data.math_modules."""
from dll_ext.data.cifar10 import load_cifar10
from dll_ext.data.digits import load_digits
from dll_ext.data.errors import DataError
from dll_ext.data.images import ImageDataset
from dll_ext.data.math import MathDataset, Seq2SeqBatch, Seq2SeqCollate, Seq2SeqVocabulary
from dll_ext.data.mnist import load_mnist
from dll_ext.data.nback import IGNORE_INDEX, NBackCollate, NBackDataset, nback_sequence
from dll_ext.data.text import TBPTTBatches, Vocabulary, default_corpus, read_text, split_text
from dll_ext.data.transforms import Normalize, RandomCropFlip

__all__ = ["DataError", "IGNORE_INDEX", "ImageDataset", "MathDataset", "NBackCollate", "NBackDataset", "Normalize",
           "RandomCropFlip", "Seq2SeqBatch", "Seq2SeqCollate", "Seq2SeqVocabulary", "TBPTTBatches", "Vocabulary",
           "default_corpus", "load_cifar10", "load_digits", "load_mnist", "nback_sequence", "read_text", "split_text"]
