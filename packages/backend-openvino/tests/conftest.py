"""Shared fixtures: small models quantized once per session for the openvino backend."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from quantfx.testing.models import calibration_data, conv_bn_relu, transformer_block


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "slow: pretrained-model checks that take more than a minute")


def reference_and_inputs(factory: Any, mapping: Any = None) -> tuple[torch.nn.Module, Any, tuple[Any, ...]]:
    """(float model, reference IR, example inputs) for a suite model, prepared for openvino."""
    from quantfx import api
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    model, example_inputs = factory()
    mapping = mapping if mapping is not None else api.get_default_qconfig_mapping("openvino")
    prepared = prepare_fx(model, mapping, example_inputs, backend="openvino")
    with torch.no_grad():
        prepared(*example_inputs)
        for batch in calibration_data(example_inputs, n=4, seed=0):
            prepared(*batch)
    return model, convert_to_reference_fx(prepared), example_inputs


@pytest.fixture(scope="session")
def conv_reference() -> tuple[torch.nn.Module, Any, tuple[Any, ...]]:
    return reference_and_inputs(conv_bn_relu)


@pytest.fixture(scope="session")
def transformer_reference() -> tuple[torch.nn.Module, Any, tuple[Any, ...]]:
    return reference_and_inputs(transformer_block)


@pytest.fixture(scope="session")
def conv_lowered(conv_reference: Any) -> Any:
    from quantfx import api

    _, ref, example_inputs = conv_reference
    return api.lower(ref, "openvino", example_inputs)
