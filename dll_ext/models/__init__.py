"""Models of the course pipelines on dll_ext layers; each takes native=True to build the same
architecture, with the same parameter names and initialisation, from torch.nn layers."""
from dll_ext.models.char_lm import CharLM
from dll_ext.models.classifier import CLASSIFIERS, build_classifier
from dll_ext.models.convnet import ConvNet
from dll_ext.models.feedforward import FeedForward
from dll_ext.models.layers import NativeConv2dReLU, conv2d_relu, lstm
from dll_ext.models.nback import NBackLSTM
from dll_ext.models.resnet import ResidualBlock, ResNet

__all__ = ["CLASSIFIERS", "CharLM", "ConvNet", "FeedForward", "NBackLSTM", "NativeConv2dReLU", "ResNet",
           "ResidualBlock", "build_classifier", "conv2d_relu", "lstm"]
