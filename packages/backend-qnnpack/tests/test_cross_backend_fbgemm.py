"""Cross-check: the same reference IR lowered through qnnpack (both routes) and through fbgemm.

The scheme is torch.ao's qnnpack default (uint8 histogram activations, full
range; symmetric int8 weights), prepared with backend='qnnpack' so XNNPACK's
constraints hold. It is the scheme both backends run in int8: fbgemm has no
kernels for int8 activations, so with qnnpack's own default (int8
activations) it would leave every op in float and the check would prove
nothing. The test therefore also asserts that each backend really lowered.

fbgemm is reached through the plugin registry (a backend package never
imports another); in a venv without quantfx-backend-fbgemm (``nox -s
"tests(qnnpack)"`` installs core + qnnpack only) the test skips and says so.
"""

from __future__ import annotations

import copy

import pytest
import quantfx.api
import torch
from quantfx.errors import UnknownBackendError
from quantfx.observers import HistogramObserver, default_weight_observer
from quantfx.qconfig import QConfig
from quantfx.qconfig_mapping import build_default_qconfig_mapping
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data

MODELS = ["conv_bn_relu", "residual_block", "linear_relu_mlp", "depthwise_separable", "cat_pool_flatten", "functional_ops"]
MIN_DB = 35.0


def _fbgemm_available() -> str | None:
    """None when the 'fbgemm' backend is installed and usable here, else why not."""
    try:
        backend = quantfx.api.get_backend("fbgemm")
    except UnknownBackendError:
        return "quantfx-backend-fbgemm is not installed in this environment (nox's tests(qnnpack) venv holds core + qnnpack only)"
    availability = backend.availability()
    if not availability.available:
        return f"backend 'fbgemm' is installed but unavailable here: {availability.reason}"
    return None


pytestmark = pytest.mark.skipif(_fbgemm_available() is not None, reason=str(_fbgemm_available()))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch_ao_qnnpack_mapping():
    """torch.ao's get_default_qconfig_mapping('qnnpack') in quantfx's observers."""
    return build_default_qconfig_mapping(
        QConfig(activation=HistogramObserver.with_args(reduce_range=False), weight=default_weight_observer)
    )


@pytest.mark.parametrize("name", MODELS)
def test_qnnpack_and_fbgemm_both_match_the_reference_ir(name: str) -> None:
    model, example = MODEL_SUITE[name]()
    prepared = prepare_fx(copy.deepcopy(model), _torch_ao_qnnpack_mapping(), example, backend="qnnpack")
    with torch.no_grad():
        for batch in [example, *calibration_data(example, n=4, seed=0)]:
            prepared(*batch)
    reference = convert_to_reference_fx(prepared)
    inputs = list(calibration_data(example, n=2, seed=99))

    inprocess = quantfx.api.lower(reference, "qnnpack", example)
    pte = quantfx.api.lower(reference, "qnnpack", example, target="executorch", warn_unpartitioned=False)
    fbgemm = quantfx.api.lower(reference, "fbgemm", example)

    # each backend ran the model in int8, not in the reference's float fallback
    assert inprocess.float_ops == [], f"{name}: qnnpack in-process left ops in float: {inprocess.float_ops}"
    assert pte.partition_report == [], f"{name}: XNNPACK did not take {pte.partition_report}"
    report = fbgemm.quantfx_lowering_report
    assert report.int8 and not report.float_ops, f"{name}: fbgemm lowered {report.int8}, left in float {report.float_ops}"

    with torch.no_grad():
        want = [reference(*x) for x in inputs]
        got = {
            "qnnpack in-process": [inprocess(*x) for x in inputs],
            "qnnpack .pte": [pte(*x) for x in inputs],
            "fbgemm": [fbgemm(*x) for x in inputs],
        }
    for route, outputs in got.items():
        value = sqnr(want, outputs)
        assert value >= MIN_DB, f"{name}: SQNR(reference IR, {route}) = {value:.1f} dB < {MIN_DB} dB"
    between = sqnr(got["fbgemm"], got["qnnpack in-process"])
    assert between >= MIN_DB, f"{name}: SQNR(fbgemm, qnnpack in-process) = {between:.1f} dB < {MIN_DB} dB"
