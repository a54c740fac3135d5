"""The PT2E passes behind ``quantfx.quantize_pt2e``, each a function on an exported GraphModule.

- ``capture``: what counts as a ``torch.export`` graph; train / eval switching
- ``fuse_bn``: post-training conv / linear + BatchNorm folding
- ``qat``: QAT conv-bn simulated folding, and the real fold at convert
- ``prepare``: annotations -> sharing groups -> observers / fake-quants in the graph
- ``convert``: observers -> quantfx quantize / dequantize ops, weight constant folding
- ``normalize``: convert output -> the FX front door's reference IR form (what lowerings read)
- ``representation``: optional integer-arithmetic form of quantized ops
"""

from quantfx.pt2e.capture import (
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from quantfx.pt2e.normalize import normalize_pt2e_reference

__all__ = ["normalize_pt2e_reference", "move_exported_model_to_eval", "move_exported_model_to_train"]
