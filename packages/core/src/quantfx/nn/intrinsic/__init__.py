"""Fused float modules (``ConvReLU2d``, ``ConvBn2d``, ``LinearReLU`` ...) that ``fuse`` installs.

``quantfx.nn.intrinsic.qat`` holds their QAT counterparts; the fuser methods
that build them live in ``quantfx.fuser_method_mappings``.
"""

from quantfx.nn.intrinsic.fused import (
    BNReLU2d,
    BNReLU3d,
    ConvBn1d,
    ConvBn2d,
    ConvBn3d,
    ConvBnReLU1d,
    ConvBnReLU2d,
    ConvBnReLU3d,
    ConvBnReLU6_1d,
    ConvBnReLU6_2d,
    ConvBnReLU6_3d,
    ConvReLU1d,
    ConvReLU2d,
    ConvReLU3d,
    ConvReLU6_1d,
    ConvReLU6_2d,
    ConvReLU6_3d,
    LinearBn1d,
    LinearReLU,
    LinearReLU6,
    _FusedModule,
)

__all__ = [
    "BNReLU2d",
    "BNReLU3d",
    "ConvBn1d",
    "ConvBn2d",
    "ConvBn3d",
    "ConvBnReLU1d",
    "ConvBnReLU2d",
    "ConvBnReLU3d",
    "ConvBnReLU6_1d",
    "ConvBnReLU6_2d",
    "ConvBnReLU6_3d",
    "ConvReLU1d",
    "ConvReLU2d",
    "ConvReLU3d",
    "ConvReLU6_1d",
    "ConvReLU6_2d",
    "ConvReLU6_3d",
    "LinearBn1d",
    "LinearReLU",
    "LinearReLU6",
]
