"""Drop-in replacements for torch.nn modules, backed by dll_ext's fused ops."""
from dll_ext.nn.attention import MultiheadAttention
from dll_ext.nn.conv_relu import Conv2dReLU, fuse_conv_relu
from dll_ext.nn.lstm import LSTM, LSTMCell
from dll_ext.nn.transformer import (Transformer, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                                    TransformerEncoderLayer)

__all__ = ["Conv2dReLU", "LSTM", "LSTMCell", "MultiheadAttention", "Transformer", "TransformerDecoder",
           "TransformerDecoderLayer", "TransformerEncoder", "TransformerEncoderLayer", "fuse_conv_relu"]
