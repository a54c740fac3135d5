"""quantfx's ``qnnpack`` backend: ARM / mobile int8 with XNNPACK's constraints.

Two lowerings of the same reference IR: in process on torch's qnnpack kernels
(``target="inprocess"``, the default) and, for deployment, an ExecuTorch
``.pte`` with the XNNPACK delegate (``target="executorch"``).
"""

from quantfx_qnnpack.backend import QnnpackBackend
from quantfx_qnnpack.backend_config import get_qnnpack_backend_config
from quantfx_qnnpack.qconfig import get_default_qnnpack_qconfig, get_default_qnnpack_qconfig_mapping

__all__ = [
    "QnnpackBackend",
    "get_qnnpack_backend_config",
    "get_default_qnnpack_qconfig",
    "get_default_qnnpack_qconfig_mapping",
]
