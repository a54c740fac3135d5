"""Parity with torchao's PT2E flow (test-only oracle: ``pip install torchao``; skipped without it).

The same float model, calibration batches and symmetric XNNPACK-style
quantizer go through torchao's ``prepare_pt2e`` / ``convert_pt2e`` with the
XNNPACK quantizer (executorch's, the maintained successor, when installed;
else the copy torchao keeps for its tests) and through quantfx with
``SymmetricQuantizer``:

- default ``SymmetricQuantizer``: SQNR(torchao, quantfx) >= 35 dB on every
  suite model and on a model ``symbolic_trace`` cannot trace;
- with quantfx's one deliberate annotation difference switched off (ReLU6 /
  Hardtanh fused into the conv / linear before it, ``*_hardtanh`` annotators),
  the outputs are bit-identical, PTQ and QAT (needs executorch's quantizer:
  torchao's test copy misses ``cat`` / ``adaptive_avg_pool2d`` under torch 2.13
  because export no longer records ``source_fn_stack``). Known difference:
  executorch skips the second call of a module called twice (its weight is
  already marked annotated); quantfx quantizes both, so ``shared_module`` with
  per-channel weights is compared by SQNR only.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from quantfx.quantize_pt2e import (
    convert_pt2e,
    move_exported_model_to_eval,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from quantfx.quantizer import SymmetricQuantizer, get_symmetric_quantization_config
from quantfx.testing.metrics import flatten_outputs, sqnr
from quantfx.testing.models import MODEL_SUITE, ShapeDependent, calibration_data
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torchao_pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    torchao_eval = pytest.importorskip("torchao.quantization.pt2e").move_exported_model_to_eval
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (  # type: ignore[import-not-found]
            XNNPACKQuantizer,
        )
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (  # type: ignore[import-not-found]
            get_symmetric_quantization_config as torchao_config,
        )

        SUCCESSOR = True
    except ImportError:
        _xnn = pytest.importorskip("torchao.testing.pt2e._xnnpack_quantizer")
        XNNPACKQuantizer, torchao_config = _xnn.XNNPACKQuantizer, _xnn.get_symmetric_quantization_config
        SUCCESSOR = False

PARITY_DB = 35.0
needs_successor = pytest.mark.skipif(
    not SUCCESSOR, reason="bit-exact comparison needs executorch's XNNPACKQuantizer (pip install executorch)"
)


class _XnnpackEquivalent(SymmetricQuantizer):
    """SymmetricQuantizer without its ReLU6 / Hardtanh fusions: annotates exactly what XNNPACKQuantizer does."""

    STATIC_OPS = [op for op in SymmetricQuantizer.STATIC_OPS if not op.endswith("_hardtanh")]


def _shape_dependent() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return ShapeDependent().eval(), (torch.randn(2, 3, 8, 8),)


def _ptq(prepare, convert, quantizer, model, example_inputs):
    prepared = prepare(torch.export.export(copy.deepcopy(model), example_inputs).module(), quantizer)
    with torch.no_grad():
        for batch in [example_inputs, *calibration_data(example_inputs, n=4)]:
            prepared(*batch)
    return convert(prepared)


def _outputs(model, example_inputs):
    with torch.no_grad():
        return flatten_outputs([model(*b) for b in calibration_data(example_inputs, n=2, seed=123)])


def _torchao(model, example_inputs, per_channel: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer = XNNPACKQuantizer().set_global(torchao_config(is_per_channel=per_channel))
        converted = _ptq(torchao_pt2e.prepare_pt2e, torchao_pt2e.convert_pt2e, quantizer, model, example_inputs)
    return _outputs(converted, example_inputs)


def _quantfx(model, example_inputs, quantizer_cls, per_channel: bool):
    quantizer = quantizer_cls(get_symmetric_quantization_config(is_per_channel=per_channel))
    return _outputs(_ptq(prepare_pt2e, convert_pt2e, quantizer, model, example_inputs), example_inputs)


@pytest.mark.parametrize("name", [*MODEL_SUITE, "shape_dependent"])
def test_matches_torchao(name: str) -> None:
    """Default SymmetricQuantizer >= 35 dB; without its ReLU6 fusion, bit-identical (with executorch's quantizer)."""
    model, example_inputs = _shape_dependent() if name == "shape_dependent" else MODEL_SUITE[name]()
    if name == "shape_dependent":
        with pytest.raises(torch.fx.proxy.TraceError):
            torch.fx.symbolic_trace(model)
    theirs = _torchao(model, example_inputs, per_channel=True)
    ours = _quantfx(model, example_inputs, SymmetricQuantizer, per_channel=True)
    value = sqnr(theirs, ours)
    assert value >= PARITY_DB, f"{name}: SQNR(torchao, quantfx) = {value:.1f} dB < {PARITY_DB} dB"
    if SUCCESSOR and name != "shared_module":
        equivalent = _quantfx(model, example_inputs, _XnnpackEquivalent, per_channel=True)
        assert torch.equal(theirs, equivalent), (
            f"{name}: same annotations, different outputs (max abs diff {(theirs - equivalent).abs().max().item():.3g})"
        )


@needs_successor
@pytest.mark.parametrize("name", ["depthwise_separable", "shared_module"])
def test_per_tensor_weights_bit_exact_with_torchao(name: str) -> None:
    model, example_inputs = MODEL_SUITE[name]()
    theirs = _torchao(model, example_inputs, per_channel=False)
    assert torch.equal(theirs, _quantfx(model, example_inputs, _XnnpackEquivalent, per_channel=False))


def _qat(prepare, convert, to_eval, quantizer, model, example_inputs):
    model = copy.deepcopy(model).train()
    prepared = prepare(torch.export.export(model, example_inputs).module(), quantizer)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    for batch in calibration_data(example_inputs, n=4):
        loss = prepared(*batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    to_eval(prepared)
    return convert(prepared)


# (transposed conv + BN QAT differs by design: quantfx fake-quantizes its weight per output channel, axis 1;
# executorch's QAT pattern keeps axis 0 because torch's fused fake-quant kernel only supports axis 0)
@needs_successor
@pytest.mark.parametrize("name", ["conv_bn_relu"])  # torchao's QAT fusion alone takes ~20 s per model here
def test_qat_conv_bn_is_bit_exact_with_torchao(name: str) -> None:
    model, example_inputs = MODEL_SUITE[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = _qat(torchao_pt2e.prepare_qat_pt2e, torchao_pt2e.convert_pt2e, torchao_eval,
                 XNNPACKQuantizer().set_global(torchao_config(is_per_channel=True, is_qat=True)), model, example_inputs)
    q = _qat(prepare_qat_pt2e, convert_pt2e, move_exported_model_to_eval,
             _XnnpackEquivalent(get_symmetric_quantization_config(is_per_channel=True, is_qat=True)), model, example_inputs)
    assert not [n for n in q.graph.nodes if n.target == torch.ops.aten.batch_norm.default]
    x, y = _outputs(a, example_inputs), _outputs(q, example_inputs)
    assert torch.equal(x, y), f"{name}: max abs diff {(x - y).abs().max().item():.3g}"
