"""Models of the course pipelines on dll_ext layers; each takes native=True to build the same
architecture, with the same parameter names and initialisation, from torch.nn layers."""
from dll_ext.models.attention_lstm import AttentionLSTM
from dll_ext.models.char_lm import CharLM
from dll_ext.models.classifier import CLASSIFIERS, build_classifier
from dll_ext.models.convnet import ConvNet
from dll_ext.models.decoding import Hypothesis, beam_search, length_penalty_term
from dll_ext.models.feedforward import FeedForward
from dll_ext.models.layers import NativeConv2dReLU, conv2d_relu, lstm
from dll_ext.models.nback import NBackLSTM
from dll_ext.models.resnet import ResidualBlock, ResNet
from dll_ext.models.seq2seq import Seq2SeqModel
from dll_ext.models.seq2seq_transformer import Seq2SeqTransformer

__all__ = ["AttentionLSTM", "CLASSIFIERS", "CharLM", "ConvNet", "FeedForward", "Hypothesis", "NBackLSTM",
           "NativeConv2dReLU", "ResNet", "ResidualBlock", "Seq2SeqModel", "Seq2SeqTransformer", "beam_search",
           "build_classifier", "conv2d_relu", "length_penalty_term", "lstm"]
