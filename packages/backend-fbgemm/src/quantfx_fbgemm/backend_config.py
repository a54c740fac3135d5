"""The ``fbgemm`` / ``x86`` BackendConfigs: torch's native x86 coverage, built from core's pattern sets.

The patterns are core's (``quantfx.backend_config.common``), composed the way
torch.ao's ``get_native_backend_config`` / ``get_x86_backend_config`` compose
theirs; only the dtype configs are x86's:

* static conv / linear: uint8 activations, int8 weights (per-channel
  symmetric by default), float bias -- the oneDNN int8 kernels' contract;
* dynamic int8 and fp16 for Linear (and LSTM / GRU, see ``rnn_op_configs``);
* weight-only uint8 embeddings (per-row float qparams);
* uint8 in / out for ops without weights (add, mul, cat, pooling, norms,
  fixed-qparams ops, shape ops that share qparams).

``fbgemm`` and ``x86`` share the patterns: both lower to the same oneDNN
kernels (see ``quantfx_fbgemm.backend`` for how they differ).
"""

from __future__ import annotations

from quantfx.backend_config import BackendConfig
from quantfx.backend_config.common import (
    binary_op_configs,
    bn_configs,
    cat_config,
    conv_configs,
    default_dynamic_float16_dtype_config,
    default_dynamic_int8_dtype_config,
    default_op_configs,
    default_op_quint8_dtype_config,
    embedding_op_configs,
    fixed_qparams_op_configs,
    input_output_only_quint8_dtype_config,
    linear_configs,
    ln_configs,
    share_qparams_op_configs,
    tensor_info_op_configs,
    weight_only_quint8_dtype_config,
    weighted_op_quint8_dtype_config,
)

__all__ = ["get_fbgemm_backend_config", "get_x86_backend_config", "BACKEND_NAMES"]

BACKEND_NAMES = ("fbgemm", "x86")


def _native_x86_config(name: str) -> BackendConfig:
    weighted = [weighted_op_quint8_dtype_config]
    linear = [weighted_op_quint8_dtype_config, default_dynamic_int8_dtype_config, default_dynamic_float16_dtype_config]
    op = [default_op_quint8_dtype_config]
    return (
        BackendConfig(name)
        .set_backend_pattern_configs(conv_configs(weighted))
        .set_backend_pattern_configs(linear_configs(linear))
        .set_backend_pattern_configs(binary_op_configs(op))
        .set_backend_pattern_config(cat_config(op))
        .set_backend_pattern_configs(default_op_configs(op))
        .set_backend_pattern_configs(fixed_qparams_op_configs(op))
        .set_backend_pattern_configs(share_qparams_op_configs(op))
        .set_backend_pattern_configs(tensor_info_op_configs(op))
        .set_backend_pattern_configs(bn_configs(op))
        .set_backend_pattern_configs(ln_configs([input_output_only_quint8_dtype_config]))
        .set_backend_pattern_configs(embedding_op_configs([weight_only_quint8_dtype_config]))
    )


def get_fbgemm_backend_config() -> BackendConfig:
    """torch.ao's fbgemm coverage (a new object each call, so plugins may extend it)."""
    return _native_x86_config("fbgemm")


def get_x86_backend_config() -> BackendConfig:
    """torch.ao's x86 coverage: the same patterns as fbgemm (a new object each call)."""
    return _native_x86_config("x86")
