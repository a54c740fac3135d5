"""Reference quantized modules (integer weight + qparams, dequantize then float op) and ``WeightQParams``."""

from quantfx.nn.reference.modules import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    Embedding,
    EmbeddingBag,
    Linear,
    ReferenceQuantizedModule,
    dequantize_weight,
    quantize_weight,
)
from quantfx.nn.reference.qparams import WeightQParams

__all__ = [
    "WeightQParams",
    "ReferenceQuantizedModule",
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Embedding",
    "EmbeddingBag",
    "quantize_weight",
    "dequantize_weight",
]
