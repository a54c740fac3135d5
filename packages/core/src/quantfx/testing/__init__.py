"""quantfx's backend conformance kit.

- ``quantfx.testing.models``: ``MODEL_SUITE`` of small real models and ``calibration_data``;
- ``quantfx.testing.cases``: ``op_cases(backend_config)``, one smallest model per pattern;
- ``quantfx.testing.metrics``: ``sqnr``, ``top1_agreement``;
- ``quantfx.testing.conformance``: ``BackendConformanceTests``, the pytest template a
  backend subclasses to prove itself.
"""

from __future__ import annotations

from quantfx.testing.cases import OpCase, build_op_case, op_cases
from quantfx.testing.conformance import BackendConformanceTests
from quantfx.testing.metrics import flatten_outputs, sqnr, top1_agreement
from quantfx.testing.models import MODEL_SUITE, calibration_data

__all__ = [
    "MODEL_SUITE",
    "calibration_data",
    "OpCase",
    "op_cases",
    "build_op_case",
    "sqnr",
    "top1_agreement",
    "flatten_outputs",
    "BackendConformanceTests",
]
