"""quantfx.quantize(..., backend="openvino") leaves model outputs float, as NNCF does.

OpenVINO's int8 FullyConnected returns float; a FakeQuantize on a model output
only rounds the logits. Checked on the compiled model's graph (no FakeQuantize
feeds a Result, the last FullyConnected still runs in int8) and numerically
(the unrounded output is closer to fp32 than the rounded one).
"""

from __future__ import annotations

from typing import Any

import quantfx
import torch
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import calibration_data, linear_relu_mlp


def _result_producers(lowered: Any) -> list[str]:
    return [r.input(0).get_source_output().get_node().get_type_name() for r in lowered.ov_model.get_results()]


def test_outputs_are_float_by_default_and_fq_on_request() -> None:
    model, example_inputs = linear_relu_mlp()
    calib = list(calibration_data(example_inputs, n=8))
    kwargs: dict[str, Any] = dict(backend="openvino", calibration_data=calib, example_inputs=example_inputs,
                                  progress=False, config={"INFERENCE_NUM_THREADS": 1})
    default = quantfx.quantize(model, **kwargs)
    rounded = quantfx.quantize(model, float_outputs=False, **kwargs)

    assert "FakeQuantize" not in _result_producers(default)
    assert _result_producers(rounded) == ["FakeQuantize"]
    # every linear, the last one included, still runs int8
    assert len(default.int8_layers()) == len(rounded.int8_layers()) == 3
    x = torch.cat([b[0] for b in calibration_data(example_inputs, n=16)])
    with torch.no_grad():
        want = model(x)
    assert sqnr(want, default(x)) > sqnr(want, rounded(x)) + 0.5
