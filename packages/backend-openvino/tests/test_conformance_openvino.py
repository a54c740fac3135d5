"""The backend conformance kit against ``openvino``: every suite model and every pattern of its BackendConfig.

SQNR(reference IR, OpenVINO int8) >= 30 dB per model / 35 dB per op, reference
close to float, lowering leaves the reference untouched, IR save / load
reloads to bit-identical outputs.
"""

from __future__ import annotations

from quantfx.testing.conformance import BackendConformanceTests


class TestOpenVINOConformance(BackendConformanceTests):
    backend = "openvino"
