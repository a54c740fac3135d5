"""quantfx's module zoo: fused float modules (``intrinsic``), QAT modules (``qat``,
``intrinsic.qat``) and reference quantized modules (``reference``)."""

from quantfx.nn import intrinsic, qat, reference
from quantfx.nn.intrinsic import qat as _intrinsic_qat  # noqa: F401  (binds quantfx.nn.intrinsic.qat)

__all__ = ["intrinsic", "qat", "reference"]
