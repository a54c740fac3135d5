"""QAT modules: Linear, Conv1d/2d/3d, Embedding, EmbeddingBag with ``weight_fake_quant``."""

from quantfx.nn.qat.modules import Conv1d, Conv2d, Conv3d, Embedding, EmbeddingBag, Linear

__all__ = ["Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "EmbeddingBag"]
