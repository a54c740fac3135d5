"""The conformance kit run against the built-in ``reference`` backend.

Its lowering is the identity, so SQNR(reference, lowered) is inf: this checks
the kit's plumbing end to end (prepare -> calibrate -> convert_to_reference_fx
-> lower) and, through ``test_reference_close_to_float``, that the reference
quantization of every suite model is sane.
"""

from __future__ import annotations

from quantfx.testing.conformance import BackendConformanceTests


class TestReferenceConformance(BackendConformanceTests):
    backend = "reference"
