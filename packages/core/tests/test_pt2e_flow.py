"""prepare_pt2e / prepare_qat_pt2e / convert_pt2e: graph structure, numerics, errors, lowering through a backend.

Parity with torchao lives in test_pt2e_oracle.py; PT2E vs prepare_fx for every
suite model runs in the conformance kit (test_pt2e_matches_fx).
"""

from __future__ import annotations

import pytest
import quantfx
import quantfx.nn.reference as nnref
import torch
import torch.nn.functional as F
from quantfx.errors import (
    AnnotationConflictError,
    CaptureError,
    UncalibratedObserverError,
    ValidationError,
)
from quantfx.fake_quantize import FusedMovingAvgObsFakeQuantize
from quantfx.observers import (
    FixedQParamsObserver,
    HistogramObserver,
)
from quantfx.pt2e import normalize_pt2e_reference
from quantfx.pt2e.representation import quantized_add, quantized_conv, quantized_linear
from quantfx.quantize_pt2e import (
    convert_pt2e,
    move_exported_model_to_eval,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from quantfx.quantizer import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
    SymmetricQuantizer,
    annotate_input_qspec_map,
    get_symmetric_quantization_config,
)
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, ShapeDependent, calibration_data

aten = torch.ops.aten
q = torch.ops.quantfx
QUANTIZE = {q.quantize_per_tensor.default, q.quantize_per_channel.default, q.quantize_per_tensor_tensor.default}
DEQUANTIZE = {q.dequantize_per_tensor.default, q.dequantize_per_channel.default, q.dequantize_per_tensor_tensor.default}


def _quantizer(**kwargs) -> SymmetricQuantizer:
    return SymmetricQuantizer(get_symmetric_quantization_config(is_per_channel=True, **kwargs))


def _export(name: str, train: bool = False):
    model, example_inputs = MODEL_SUITE[name]()
    if train:
        model.train()
    return model, example_inputs, torch.export.export(model, example_inputs).module()


def _calibrated(name: str, quantizer=None):
    model, example_inputs, exported = _export(name)
    prepared = prepare_pt2e(exported, quantizer or _quantizer())
    with torch.no_grad():
        for batch in [example_inputs, *calibration_data(example_inputs, n=4)]:
            prepared(*batch)
    return model, example_inputs, prepared


def _calls(gm, targets) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]


def _observer_modules(gm) -> dict[str, torch.nn.Module]:
    return {n.target: gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module" and not n.target.startswith("_guards")}


# --------------------------------------------------------------------------- prepare


def test_prepare_folds_bn_and_inserts_observers_per_annotation() -> None:
    _, _, prepared = _calibrated("conv_bn_relu")
    assert not _calls(prepared, {aten.batch_norm.default}), "PTQ folds BatchNorm into the conv"
    observers = _observer_modules(prepared)
    kinds = sorted(type(m).__name__ for m in set(observers.values()))
    # input, relu, relu_1 (shared by pool / flatten), linear out: histogram; 3 weights: per channel
    assert kinds.count("HistogramObserver") == 4 and kinds.count("PerChannelMinMaxObserver") == 3
    pool = _calls(prepared, {aten.adaptive_avg_pool2d.default})[0]
    flatten = _calls(prepared, {aten.flatten.using_ints})[0]
    relu_out = pool.args[0]
    pool_out, flatten_out = next(iter(pool.users)), next(iter(flatten.users))
    shared = {relu_out.target, pool_out.target, flatten_out.target}
    assert len({id(prepared.get_submodule(t)) for t in shared}) == 1, "pool / flatten share relu's observer"


def test_prepare_does_not_modify_the_exported_model() -> None:
    _, example_inputs, exported = _export("conv_bn_relu")
    code, state = exported.code, {k: v.clone() for k, v in exported.state_dict().items()}
    prepared = prepare_pt2e(exported, _quantizer())
    prepared(*example_inputs)
    assert exported.code == code
    assert all(torch.equal(v, state[k]) for k, v in exported.state_dict().items())
    assert not any(Q_ANNOTATION_KEY in n.meta for n in exported.graph.nodes)


def test_prepare_accepts_a_backend_name() -> None:
    _, _, exported = _export("linear_relu_mlp")
    prepared = prepare_pt2e(exported, "reference")
    assert any(isinstance(m, HistogramObserver) for m in _observer_modules(prepared).values())


# --------------------------------------------------------------------------- convert


def test_convert_emits_quantfx_ops_one_dequantize_per_user_and_int8_weight_constants() -> None:
    model, example_inputs, prepared = _calibrated("residual_block")
    converted = convert_pt2e(prepared)
    assert not _observer_modules(converted), "no observer survives convert"
    for dq in _calls(converted, DEQUANTIZE):
        assert len(dq.users) == 1, f"{dq.name} feeds {len(dq.users)} nodes; each user needs its own dequantize"
    stem_out = [qn for qn in _calls(converted, QUANTIZE) if len(qn.users) > 1]
    assert stem_out, "the stem conv output feeds conv1 and the add: one quantize, several dequantizes"
    for conv in _calls(converted, {aten.conv2d.default}):
        weight_dq = conv.args[1]
        assert weight_dq.target is q.dequantize_per_channel.default
        const = weight_dq.args[0]
        assert const.op == "get_attr" and converted.get_submodule("").get_buffer(const.target).dtype is torch.int8
    with torch.no_grad():
        assert sqnr(model(*example_inputs), converted(*example_inputs)) > 30


def test_fold_quantize_false_keeps_weight_quantize_ops_with_identical_numerics() -> None:
    _, example_inputs, prepared = _calibrated("conv_bn_relu")
    folded, unfolded = convert_pt2e(prepared), convert_pt2e(prepared, fold_quantize=False)
    weight_q = [n for n in _calls(unfolded, {q.quantize_per_channel.default}) if n.args[0].op == "get_attr"]
    assert len(weight_q) == 3
    assert not _calls(folded, {q.quantize_per_channel.default})
    with torch.no_grad():
        assert torch.equal(folded(*example_inputs), unfolded(*example_inputs))


def test_convert_does_not_modify_the_prepared_model() -> None:
    _, _, prepared = _calibrated("functional_ops")
    code = prepared.code
    convert_pt2e(prepared)
    assert prepared.code == code and _observer_modules(prepared)


def test_convert_argument_checks() -> None:
    _, _, prepared = _calibrated("linear_relu_mlp")
    with pytest.raises(ValidationError, match="use_reference_representation must be a bool"):
        convert_pt2e(prepared, "yes")  # type: ignore[arg-type]
    converted = convert_pt2e(prepared)
    with pytest.raises(quantfx.QuantfxError, match="already converted"):
        convert_pt2e(converted)


def test_convert_before_calibration_names_the_observer() -> None:
    _, _, exported = _export("linear_relu_mlp")
    prepared = prepare_pt2e(exported, SymmetricQuantizer(get_symmetric_quantization_config()))
    with pytest.raises(UncalibratedObserverError, match="has seen no data"):
        convert_pt2e(prepared)


# --------------------------------------------------------------------------- the two errors


def test_graph_not_captured_by_torch_export_is_told_how_to_capture() -> None:
    model, example_inputs = MODEL_SUITE["conv_bn_relu"]()
    with pytest.raises(CaptureError) as info:
        prepare_pt2e(model, _quantizer())
    assert "torch.export.export(model.eval(), example_inputs).module()" in str(info.value)
    traced = torch.fx.symbolic_trace(model)
    with pytest.raises(CaptureError, match=r"node 'conv1' calls the submodule 'conv1'.*symbolic_trace") as info:
        prepare_pt2e(traced, _quantizer())
    assert "torch.export.export(" in str(info.value)
    program = torch.export.export(model, example_inputs)
    with pytest.raises(CaptureError, match=r"exported_program.module\(\)"):
        prepare_qat_pt2e(program, _quantizer(is_qat=True))
    with pytest.raises(CaptureError, match="prepare_pt2e / prepare_qat_pt2e"):
        convert_pt2e(torch.export.export(model, example_inputs).module())


class _TwoSpecsOnOneEdge(Quantizer):
    """A buggy quantizer: two annotators give the conv's input edge different specs."""

    def annotate(self, model):
        conv = next(n for n in model.graph.nodes if n.target == aten.conv2d.default)
        int8 = get_symmetric_quantization_config().input_activation
        uint8 = QuantizationSpec(torch.uint8, HistogramObserver, 0, 255, torch.per_tensor_affine)
        annotate_input_qspec_map(conv, conv.args[0], int8)
        annotate_input_qspec_map(conv, conv.args[0], uint8)
        return model

    def validate(self, model) -> None:
        pass


def test_conflicting_annotation_names_both_nodes() -> None:
    _, _, exported = _export("conv_bn_relu")
    with pytest.raises(AnnotationConflictError) as info:
        prepare_pt2e(exported, _TwoSpecsOnOneEdge())
    message = str(info.value)
    assert "edge 'x' -> 'conv2d'" in message
    assert "int8 [-128, 127]" in message and "uint8 [0, 255]" in message


class _SharesWithUnannotated(Quantizer):
    def annotate(self, model):
        relu = next(n for n in model.graph.nodes if n.target == aten.relu.default)
        conv = relu.args[0]
        relu.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=SharedQuantizationSpec(conv))
        return model

    def validate(self, model) -> None:
        pass


def test_shared_spec_pointing_at_an_unannotated_node_is_reported() -> None:
    _, _, exported = _export("conv_bn_relu")
    with pytest.raises(ValidationError, match=r"output of node 'relu'.*output of node 'conv2d'.*has no quantization spec"):
        prepare_pt2e(exported, _SharesWithUnannotated())


def test_foreign_quantizer_is_rejected_with_a_hint() -> None:
    _, _, exported = _export("conv_bn_relu")
    with pytest.raises(ValidationError, match="expects a quantfx.quantizer.Quantizer"):
        prepare_pt2e(exported, object())  # type: ignore[arg-type]


def test_preparing_twice_is_an_error() -> None:
    _, _, prepared = _calibrated("linear_relu_mlp")
    with pytest.raises(CaptureError, match="already prepared"):
        prepare_pt2e(prepared, _quantizer())


# --------------------------------------------------------------------------- spec kinds


class _SigmoidBiasQuantizer(SymmetricQuantizer):
    """Symmetric quantizer plus: int32 bias derived from input x weight scales; fixed qparams on sigmoid."""

    def annotate(self, model):
        super().annotate(model)
        for node in model.graph.nodes:
            if node.target == aten.linear.default and len(node.args) > 2:
                x, w, b = node.args[:3]

                def derive(obs):
                    act, weight = obs
                    s_act, _ = act.calculate_qparams()
                    s_w, _ = weight.calculate_qparams()
                    scale = (s_act * s_w).float().reshape(-1)
                    return scale, torch.zeros_like(scale, dtype=torch.int64)

                node.meta[Q_ANNOTATION_KEY].input_qspec_map[b] = DerivedQuantizationSpec(
                    [(x, node), (w, node)], derive, torch.int32, -(2**31), 2**31 - 1,
                    torch.per_channel_symmetric, ch_axis=0,
                )
            if node.target == aten.sigmoid.default:
                node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: SharedQuantizationSpec(node.args[0])},
                    output_qspec=FixedQParamsQuantizationSpec(torch.uint8, 1.0 / 256, 0, 0, 255),
                    _annotated=True,
                )
        return model


def test_derived_and_fixed_qparams_specs() -> None:
    model, example_inputs, prepared = _calibrated("activation_heads", _SigmoidBiasQuantizer(get_symmetric_quantization_config(is_per_channel=True)))
    assert any(isinstance(m, FixedQParamsObserver) for m in _observer_modules(prepared).values())
    converted = convert_pt2e(prepared)
    sigmoid = _calls(converted, {aten.sigmoid.default})[0]
    (q_sig,) = sigmoid.users
    assert q_sig.target is q.quantize_per_tensor.default and q_sig.args[1:] == (1.0 / 256, 0, 0, 255, torch.uint8)
    linear = _calls(converted, {aten.linear.default})[0]
    bias_dq = linear.args[2]
    assert bias_dq.target is q.dequantize_per_channel.default and bias_dq.args[-1] is torch.int32
    x_scale = linear.args[0].args[1]
    w_scales = converted.get_buffer(linear.args[1].args[1].target)
    torch.testing.assert_close(converted.get_buffer(bias_dq.args[1].target), x_scale * w_scales)
    with torch.no_grad():
        assert sqnr(model(*example_inputs), converted(*example_inputs)) > 30


def test_dynamic_quantization_chooses_qparams_at_run_time() -> None:
    model, example_inputs, prepared = _calibrated(
        "linear_relu_mlp", SymmetricQuantizer(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    )
    converted = convert_pt2e(prepared)
    assert len(_calls(converted, {q.choose_qparams_per_tensor.default})) == len(_calls(converted, {aten.linear.default}))
    assert not _calls(converted, {q.quantize_per_tensor.default})
    with torch.no_grad():
        assert sqnr(model(*example_inputs), converted(*example_inputs)) > 30


# --------------------------------------------------------------------------- QAT


def test_qat_trains_with_simulated_bn_folding_and_folds_it_at_convert() -> None:
    _, example_inputs, exported = _export("conv_bn_relu", train=True)
    prepared = prepare_qat_pt2e(exported, _quantizer(is_qat=True))
    bns = _calls(prepared, {aten.batch_norm.default})
    assert len(bns) == 2 and all(bn.args[5] is True for bn in bns), "BN keeps training on batch statistics"
    fqs = _observer_modules(prepared).values()
    assert all(isinstance(m, FusedMovingAvgObsFakeQuantize) for m in fqs)
    convs = _calls(prepared, {aten.conv2d.default})
    assert all(c.args[2] is None and c.args[1].op == "call_module" for c in convs), "weight fake-quant on the scaled weight"
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    before = prepared.get_parameter("conv1.weight").detach().clone()
    for batch in calibration_data(example_inputs, n=4):
        loss = prepared(*batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(before, prepared.get_parameter("conv1.weight")), "gradients reach the float weights"
    move_exported_model_to_eval(prepared)
    assert all(bn.args[5] is False for bn in _calls(prepared, {aten.batch_norm.default}))
    with torch.no_grad():
        simulated = prepared(*example_inputs)
    converted = convert_pt2e(prepared)
    assert not _calls(converted, {aten.batch_norm.default, aten.div.Tensor}), "BN folded into the conv"
    assert all(c.args[1].target is q.dequantize_per_channel.default for c in _calls(converted, {aten.conv2d.default}))
    with torch.no_grad():
        assert sqnr(simulated, converted(*example_inputs)) > 25


def test_qat_transposed_conv_weight_is_fake_quantized_per_output_channel() -> None:
    from quantfx.fake_quantize import FakeQuantize

    _, example_inputs, exported = _export("conv_transpose_net", train=True)
    prepared = prepare_qat_pt2e(exported, _quantizer(is_qat=True))
    (deconv,) = _calls(prepared, {aten.conv_transpose2d.input})
    weight_fq = prepared.get_submodule(deconv.args[1].target)
    # torch's fused fake-quant kernel handles axis 0 only: axis 1 uses the unfused FakeQuantize
    assert type(weight_fq) is FakeQuantize and weight_fq.ch_axis == 1
    for batch in calibration_data(example_inputs, n=3):
        prepared(*batch).sum().backward()
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        simulated = prepared(*example_inputs)
    converted = convert_pt2e(prepared)
    (deconv,) = _calls(converted, {aten.conv_transpose2d.input})
    assert deconv.args[1].target is q.dequantize_per_channel.default and deconv.args[1].args[3] == 1
    with torch.no_grad():
        assert sqnr(simulated, converted(*example_inputs)) > 30


# --------------------------------------------------------------------------- beyond symbolic_trace


def test_model_symbolic_trace_cannot_trace_goes_through_pt2e_and_a_backend() -> None:
    model, x = ShapeDependent().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), "reference")
    for batch in [(x,), *calibration_data((x,), n=4)]:
        prepared(*batch)
    lowered = quantfx.lower(convert_pt2e(prepared), "reference", (x,))
    with torch.no_grad():
        assert sqnr(model(x), lowered(x)) > 30


# --------------------------------------------------------------------------- normalization to the FX reference form


def test_normalize_turns_aten_weighted_ops_into_reference_modules_bit_exactly() -> None:
    _, example_inputs, prepared = _calibrated("shared_module")
    converted = convert_pt2e(prepared)
    normalized = normalize_pt2e_reference(converted)
    modules = {n.target: type(normalized.get_submodule(n.target)) for n in normalized.graph.nodes if n.op == "call_module"}
    assert modules == {"stem": nnref.Conv2d, "conv": nnref.Conv2d, "fc": nnref.Linear, "out": nnref.Linear}
    calls = [n.target for n in normalized.graph.nodes if n.op == "call_module"]
    assert calls.count("conv") == 2 and calls.count("fc") == 2, "a module called twice stays one module"
    assert not [n for n in normalized.graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
                and n.target.namespace == "aten"], "every aten op of this model has a torch-function form"
    assert F.relu in {n.target for n in normalized.graph.nodes}
    conv_ref = normalized.get_submodule("conv")
    int_weights = [converted.get_buffer(n.args[1].args[0].target) for n in _calls(converted, {aten.conv2d.default})]
    assert any(torch.equal(conv_ref.weight_int, w) for w in int_weights)
    with torch.no_grad():
        for batch in [example_inputs, *calibration_data(example_inputs, n=2, seed=5)]:
            assert torch.equal(converted(*batch), normalized(*batch))


def test_lower_normalizes_pt2e_output_automatically() -> None:
    _, example_inputs, prepared = _calibrated("conv_transpose_net")
    converted = convert_pt2e(prepared)
    lowered = quantfx.lower(converted, "reference", example_inputs)
    kinds = {type(m) for m in lowered.modules()}
    assert {nnref.Conv2d, nnref.ConvTranspose2d} <= kinds
    (up,) = [m for m in lowered.modules() if isinstance(m, nnref.ConvTranspose2d)]
    assert up.weight_axis == 1, "a transposed conv's output channels are weight dim 1"
    with torch.no_grad():
        assert torch.equal(lowered(*example_inputs), converted(*example_inputs))


# --------------------------------------------------------------------------- reference representation


def test_reference_representation_uses_integer_arithmetic() -> None:
    _, example_inputs, prepared = _calibrated("residual_block")
    qdq = convert_pt2e(prepared)
    integer = convert_pt2e(prepared, use_reference_representation=True)
    targets = [n.target for n in integer.graph.nodes if n.op == "call_function"]
    assert targets.count(quantized_conv) == 3 and targets.count(quantized_add) == 1
    assert aten.conv2d.default not in targets
    with torch.no_grad():
        assert sqnr(qdq(*example_inputs), integer(*example_inputs)) > 30


def test_quantized_linear_reference_matches_float_math_within_one_step() -> None:
    torch.manual_seed(0)
    x_q = torch.randint(-128, 128, (4, 8), dtype=torch.int8)
    w_q = torch.randint(-127, 128, (3, 8), dtype=torch.int8)
    w_scale = torch.rand(3) * 0.01 + 0.001
    bias = torch.randn(3)
    out = quantized_linear(x_q, 0.02, 3, w_q, w_scale, torch.zeros(3, dtype=torch.int64), 0, bias, 0.05, -2, -128, 127, torch.int8)
    x = (x_q.float() - 3) * 0.02
    w = w_q.float() * w_scale[:, None]
    expected = torch.clamp(torch.round((x @ w.T + bias) / 0.05) - 2, -128, 127)
    assert out.dtype is torch.int8
    assert (out.float() - expected).abs().max() <= 1


# --------------------------------------------------------------------------- helpers


def test_move_exported_model_to_eval_and_train_flip_batch_norm() -> None:
    _, example_inputs, exported = _export("conv_bn_relu", train=True)
    bn = _calls(exported, {aten.batch_norm.default})
    assert all(n.args[5] is True for n in bn)
    move_exported_model_to_eval(exported)
    assert all(n.args[5] is False for n in bn)
    mean = exported.get_buffer("bn1.running_mean").clone()
    exported(*example_inputs)
    assert torch.equal(mean, exported.get_buffer("bn1.running_mean")), "eval BN does not update its statistics"
    from quantfx.quantize_pt2e import move_exported_model_to_train

    move_exported_model_to_train(exported)
    assert all(n.args[5] is True for n in bn)


def test_tuple_outputs_keep_their_structure() -> None:
    model, example_inputs, prepared = _calibrated("activation_heads")
    out = convert_pt2e(prepared)(*example_inputs)
    assert isinstance(out, tuple) and len(out) == 3
    with torch.no_grad():
        assert sqnr(model(*example_inputs), out) > 30
