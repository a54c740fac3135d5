"""Numerics against torch.ao's FX flow with its qnnpack defaults (the oracle, while it exists).

- Same scheme (torch.ao's qnnpack mapping: uint8 histogram activations, per-tensor
  symmetric int8 weights) through quantfx's in-process qnnpack lowering and through
  torch.ao's ``convert_fx`` on the qnnpack engine: SQNR between them >= 35 dB.
- quantfx's own default (int8 activations, per-channel weights) is no worse against
  fp32 than torch.ao's default: at most 0.5 dB below.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import quantfx
from quantfx.observers import HistogramObserver, default_weight_observer
from quantfx.qconfig import QConfig
from quantfx.qconfig_mapping import build_default_qconfig_mapping
from quantfx.quantize_fx import convert_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data

MODELS = ["conv_bn_relu", "residual_block", "linear_relu_mlp", "depthwise_separable", "cat_pool_flatten", "functional_ops"]


def _batches(example_inputs):
    return [example_inputs, *calibration_data(example_inputs, n=6, seed=0)]


def _eval_inputs(example_inputs):
    return [example_inputs, *calibration_data(example_inputs, n=2, seed=10_000)]


def _run(model, inputs):
    with torch.no_grad():
        return [model(*x) for x in inputs]


def _torch_ao(model, example_inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.backend_config import get_qnnpack_backend_config
        from torch.ao.quantization.quantize_fx import convert_fx as ao_convert, prepare_fx as ao_prepare

        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = "qnnpack"
        try:
            cfg = get_qnnpack_backend_config()
            prepared = ao_prepare(copy.deepcopy(model), get_default_qconfig_mapping("qnnpack"), example_inputs, backend_config=cfg)
            _run(prepared, _batches(example_inputs))
            converted = ao_convert(prepared, backend_config=cfg)
            return _run(converted, _eval_inputs(example_inputs))
        finally:
            torch.backends.quantized.engine = previous


def _quantfx(model, example_inputs, qmap):
    prepared = prepare_fx(copy.deepcopy(model), qmap, example_inputs, backend="qnnpack")
    _run(prepared, _batches(example_inputs))
    lowered = convert_fx(prepared)
    return _run(lowered, _eval_inputs(example_inputs))


def _torch_ao_mapping():
    """torch.ao's get_default_qconfig_mapping('qnnpack'), written with quantfx's observers."""
    return build_default_qconfig_mapping(
        QConfig(activation=HistogramObserver.with_args(reduce_range=False), weight=default_weight_observer)
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_ORACLE_WRONG = pytest.mark.xfail(
    strict=True,
    reason="torch.ao's own qnnpack convert_fx is off on this MobileNet-style model (16.1 dB vs fp32, while "
    "quantfx's lowered model equals its reference IR bit for bit at 38.6 dB vs fp32); the oracle, not quantfx, "
    "is wrong here, test_default_not_worse_than_torch_ao still covers the model",
)
SAME_SCHEME = [pytest.param(n, marks=_ORACLE_WRONG) if n == "depthwise_separable" else n for n in MODELS]


@pytest.mark.parametrize("name", SAME_SCHEME)
def test_same_scheme_matches_torch_ao(name: str) -> None:
    model, example_inputs = MODEL_SUITE[name]()
    ours = _quantfx(model, example_inputs, _torch_ao_mapping())
    theirs = _torch_ao(model, example_inputs)
    value = sqnr(theirs, ours)
    assert value >= 35.0, f"{name}: SQNR(torch.ao qnnpack, quantfx qnnpack) = {value:.1f} dB < 35 dB with the same qconfig mapping"


@pytest.mark.parametrize("name", MODELS)
def test_default_not_worse_than_torch_ao(name: str) -> None:
    model, example_inputs = MODEL_SUITE[name]()
    fp32 = _run(model, _eval_inputs(example_inputs))
    ours = sqnr(fp32, _quantfx(model, example_inputs, quantfx.get_default_qconfig_mapping("qnnpack")))
    theirs = sqnr(fp32, _torch_ao(model, example_inputs))
    assert ours >= theirs - 0.5, f"{name}: quantfx qnnpack default {ours:.2f} dB vs fp32, torch.ao qnnpack default {theirs:.2f} dB"
