"""The ``qnnpack`` BackendConfig: the mobile operator set with XNNPACK's limits as constraints.

XNNPACK (the kernels behind torch's qnnpack engine on ARM and behind
ExecuTorch's XNNPACK delegate) rejects some quantization parameters at run
time. They are written here as ``DTypeWithConstraints`` so that ``prepare_fx``
honours them instead of producing a model the kernels refuse:

- weights: int8 with zero point 0 (a symmetric observer), in [-127, 127] for
  the int8-activation config (the ARM kernels' 16-bit accumulation rule);
- activations: int8 in [-128, 127] (or uint8 in [0, 255], torch.ao's qnnpack
  default) with scale >= 2**-12, so the requantization scale
  ``in_scale * w_scale / out_scale`` never drops below XNNPACK's 2**-32 floor;
  core's prepare enforces the floor by raising the observer's ``eps``.

The pattern sets come from core (``quantfx.backend_config.common``); only the
dtype configs are qnnpack's.
"""

from __future__ import annotations

import torch

from quantfx.backend_config import (
    BackendConfig,
    BackendPatternConfig,
    DTypeConfig,
    DTypeWithConstraints,
    ObservationType,
)
from quantfx.backend_config.common import (
    FIXED_QPARAMS_OP_TO_CONSTRAINTS,
    add_fixed_qparams_to_dtype_configs,
    binary_op_configs,
    bn_configs,
    cat_config,
    conv_configs,
    default_dynamic_float16_dtype_config,
    default_dynamic_int8_dtype_config,
    default_op_configs,
    linear_configs,
    share_qparams_op_configs,
    tensor_info_op_configs,
)

__all__ = [
    "XNNPACK_MIN_SCALE",
    "act_int8_constraints",
    "act_uint8_constraints",
    "weight_int8_constraints",
    "weight_int8_zp0_constraints",
    "weighted_op_qint8_symmetric_dtype_config",
    "weighted_op_quint8_dtype_config",
    "op_qint8_dtype_config",
    "op_quint8_dtype_config",
    "FIXED_QPARAMS_INT8_CONSTRAINTS",
    "get_qnnpack_backend_config",
]

XNNPACK_MIN_SCALE = 2.0**-12
"""Smallest activation / weight scale: keeps XNNPACK's requantization scale >= 2**-32."""

act_int8_constraints = DTypeWithConstraints(
    dtype=torch.int8, quant_min_lower_bound=-128, quant_max_upper_bound=127, scale_min_lower_bound=XNNPACK_MIN_SCALE
)
act_uint8_constraints = DTypeWithConstraints(
    dtype=torch.uint8, quant_min_lower_bound=0, quant_max_upper_bound=255, scale_min_lower_bound=XNNPACK_MIN_SCALE
)
weight_int8_constraints = DTypeWithConstraints(
    dtype=torch.int8,
    quant_min_lower_bound=-127,
    quant_max_upper_bound=127,
    scale_min_lower_bound=XNNPACK_MIN_SCALE,
    zero_point_exact_match=0,
)
"""int8 weights for int8 activations: symmetric (zero point 0), [-127, 127], scale >= 2**-12."""

weight_int8_zp0_constraints = DTypeWithConstraints(
    dtype=torch.int8, scale_min_lower_bound=XNNPACK_MIN_SCALE, zero_point_exact_match=0
)
"""int8 weights for uint8 activations (torch.ao's qnnpack default): symmetric, full int8 range."""

weighted_op_qint8_symmetric_dtype_config = DTypeConfig(
    input_dtype=act_int8_constraints,
    output_dtype=act_int8_constraints,
    weight_dtype=weight_int8_constraints,
    bias_dtype=torch.float,
)
"""conv / linear the way XNNPACK runs them natively (QS8 / QC8): int8 in and out, symmetric int8 weights."""

weighted_op_quint8_dtype_config = DTypeConfig(
    input_dtype=act_uint8_constraints,
    output_dtype=act_uint8_constraints,
    weight_dtype=weight_int8_zp0_constraints,
    bias_dtype=torch.float,
)
"""conv / linear with uint8 activations (torch.ao's qnnpack mapping); lowered by shifting to int8."""

op_qint8_dtype_config = DTypeConfig(input_dtype=act_int8_constraints, output_dtype=act_int8_constraints)
op_quint8_dtype_config = DTypeConfig(input_dtype=act_uint8_constraints, output_dtype=act_uint8_constraints)

_FIXED_INT8_OP = DTypeConfig(input_dtype=torch.int8, output_dtype=torch.int8)
_FIXED_UINT8_OP = DTypeConfig(input_dtype=torch.uint8, output_dtype=torch.uint8)

FIXED_QPARAMS_INT8_CONSTRAINTS: dict[float, DTypeWithConstraints] = {
    # (uint8 scale) -> the int8 version: same scale, zero point shifted by -128, as XNNPACK's
    # QS8 sigmoid (1/256, -128) and tanh (1/128, 0) require
    1.0 / 256.0: DTypeWithConstraints(
        dtype=torch.int8, quant_min_lower_bound=-128, quant_max_upper_bound=127, scale_exact_match=1.0 / 256.0, zero_point_exact_match=-128
    ),
    2.0 / 256.0: DTypeWithConstraints(
        dtype=torch.int8, quant_min_lower_bound=-128, quant_max_upper_bound=127, scale_exact_match=2.0 / 256.0, zero_point_exact_match=0
    ),
}


def _fixed_qparams_configs() -> list[BackendPatternConfig]:
    """sigmoid / hardsigmoid / softmax / tanh with exact qparams, in int8 (XNNPACK) and uint8 (torch.ao)."""
    configs = []
    for op, uint8_constraints in FIXED_QPARAMS_OP_TO_CONSTRAINTS.items():
        int8_constraints = FIXED_QPARAMS_INT8_CONSTRAINTS[float(uint8_constraints.scale_exact_match)]
        dtype_configs = add_fixed_qparams_to_dtype_configs([_FIXED_INT8_OP], int8_constraints)
        dtype_configs += add_fixed_qparams_to_dtype_configs([_FIXED_UINT8_OP], uint8_constraints)
        configs.append(
            BackendPatternConfig(op)
            .set_dtype_configs(dtype_configs)
            .set_observation_type(ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT)
        )
    return configs


def get_qnnpack_backend_config() -> BackendConfig:
    """The ``qnnpack`` backend's patterns: conv / linear and their fusions, add / mul / cat, pooling,
    hardswish and friends, fixed-qparams ops, share-qparams ops, dynamic Linear.

    A new object each call, so callers (and ``quantfx_extend_backend_config``
    plugins) may extend it freely.
    """
    weighted = [weighted_op_qint8_symmetric_dtype_config, weighted_op_quint8_dtype_config]
    linear = weighted + [default_dynamic_int8_dtype_config, default_dynamic_float16_dtype_config]
    op = [op_qint8_dtype_config, op_quint8_dtype_config]
    return (
        BackendConfig("qnnpack")
        .set_backend_pattern_configs(conv_configs(weighted))
        .set_backend_pattern_configs(linear_configs(linear))
        .set_backend_pattern_configs(binary_op_configs(op))
        .set_backend_pattern_config(cat_config(op))
        .set_backend_pattern_configs(default_op_configs(op))
        .set_backend_pattern_configs(_fixed_qparams_configs())
        .set_backend_pattern_configs(share_qparams_op_configs(op))
        .set_backend_pattern_configs(tensor_info_op_configs(op))
        .set_backend_pattern_configs(bn_configs(op))
    )
