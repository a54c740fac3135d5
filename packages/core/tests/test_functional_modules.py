"""Functional convs / linears on nn.Conv*d / nn.Linear subclasses become module calls after tracing.

EfficientNet-Lite's ``Conv2dStaticSamePadding`` is the motivating case: it
subclasses nn.Conv2d, pads with ``nn.ZeroPad2d`` and calls ``F.conv2d`` on its
own parameters, so without this pass its BatchNorm is never folded.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import quantfx
import quantfx.nn.intrinsic as nni
import quantfx.nn.reference as nnqr
from quantfx.fx.tracer import NODE_NAME_TO_SCOPE_KEY, trace_for_quantization
from quantfx.quantize_fx import convert_to_reference_fx, fuse_fx, prepare_fx
from quantfx.testing import sqnr


class SamePaddingConv(nn.Conv2d):
    """A copy of efficientnet_lite_pytorch's Conv2dStaticSamePadding (TF 'SAME' padding)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, image_size: int = 16):
        super().__init__(cin, cout, k, stride, groups=groups, bias=False)
        oh = math.ceil(image_size / stride)
        pad = max((oh - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PlainFunctionalConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StandardizedConv(nn.Conv2d):
    """Weight standardisation: the weight is computed, so the call must stay functional."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = SamePaddingConv(3, 8, 3, stride=2)  # asymmetric pad (0, 1): stays a pad module
        self.bn0 = nn.BatchNorm2d(8)
        self.act0 = nn.ReLU6()
        self.dw = SamePaddingConv(8, 8, 3, groups=8, image_size=8)  # symmetric pad: folded into the conv
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU6()
        self.proj = PlainFunctionalConv(8, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = ScaledLinear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.stem(x)))
        x = self.act1(self.bn1(self.dw(x)))
        x = self.bn2(self.proj(x))
        return self.head(torch.flatten(x, 1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = Block().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def _call_targets(gm: torch.fx.GraphModule) -> dict[str, type]:
    return {n.target: type(gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"}


def test_subclass_convs_and_linears_become_plain_module_calls():
    model = _model()
    gm = trace_for_quantization(model)
    targets = _call_targets(gm)
    assert not [n for n in gm.graph.nodes if n.target in (F.conv2d, F.linear)]
    # the owner held a pad module the graph still uses: the conv goes to a child path
    assert targets["stem.conv"] is nn.Conv2d and targets["stem.static_padding"] is nn.ZeroPad2d
    # the symmetric pad was folded into the conv, so the conv takes the owner's own path
    assert targets["dw"] is nn.Conv2d and gm.get_submodule("dw").padding == (1, 1) and "dw.static_padding" not in targets
    assert targets["proj"] is nn.Conv2d and targets["head"] is nn.Linear
    assert gm.get_submodule("dw").groups == 8 and gm.get_submodule("stem.conv").stride == (2, 2)
    scopes = gm.meta[NODE_NAME_TO_SCOPE_KEY]
    assert ("dw", nn.Conv2d) in scopes.values()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_parameters_are_shared_not_duplicated():
    gm = trace_for_quantization(_model())
    names = [name for name, _ in gm.named_parameters()]
    assert "dw.weight" in names and "stem.conv.weight" in names
    assert "stem.weight" not in names  # dropped from the traced container, not kept as a second copy


def test_batchnorm_folds_and_relu6_fuses_into_subclass_convs():
    model = _model()
    fused = fuse_fx(model)
    kinds = _call_targets(fused)
    assert kinds["stem.conv"] is nni.ConvReLU6_2d and kinds["dw"] is nni.ConvReLU6_2d
    assert not any(issubclass(k, nn.BatchNorm2d) for k in kinds.values())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)


def test_quantized_subclass_model_is_as_good_as_the_plain_one():
    """With BN folded the int8 model tracks float closely (unfolded BN after an int8 conv loses ~5 dB)."""
    model = _model()
    x = torch.randn(8, 3, 16, 16)
    prepared = prepare_fx(model, quantfx.get_default_qconfig_mapping("reference"), (x,), backend="reference")
    for _ in range(4):
        prepared(torch.randn(8, 3, 16, 16))
    prepared(x)
    ref = convert_to_reference_fx(prepared)
    assert sqnr(model(x), ref(x)) > 25.0
    assert not [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]


def test_module_name_qconfig_on_the_owner_still_applies():
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    mapping = quantfx.get_default_qconfig_mapping("reference").set_module_name("stem", None)
    prepared = prepare_fx(model, mapping, (x,), backend="reference")
    prepared(x)
    ref = convert_to_reference_fx(prepared)
    assert type(ref.get_submodule("stem.conv")) is nni.ConvReLU6_2d  # fused, but left in float as asked
    assert type(ref.get_submodule("dw")) is nnqr.Conv2d
    assert type(ref.get_submodule("head")) is nnqr.Linear


def test_computed_weight_and_shared_weight_stay_functional():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = PlainFunctionalConv(4, 4, 3, padding=1)
            self.std = StandardizedConv(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x)) + self.std(x)  # self.conv's weight feeds two calls

    model = Shared().eval()
    gm = trace_for_quantization(model)
    convs = [n for n in gm.graph.nodes if n.target is F.conv2d or n.target is torch.conv2d]
    assert len(convs) == 3
    assert not [n for n in gm.graph.nodes if n.op == "call_module"]
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(gm(x), model(x))


def test_weight_of_a_module_that_is_not_a_conv_is_left_alone():
    class NotAConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight)

    gm = trace_for_quantization(NotAConv())
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [F.conv2d]


def test_input_model_is_not_mutated():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    modules_before = [(n, type(m)) for n, m in model.named_modules()]
    fuse_fx(model)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules_before
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_asymmetric_and_nonzero_padding_are_not_folded():
    class ReflectThenConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pad = nn.ConstantPad2d(1, 0.5)
            self.conv = PlainFunctionalConv(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.pad(x))

    model = ReflectThenConv().eval()
    gm = trace_for_quantization(model)
    targets = _call_targets(gm)
    assert targets["pad"] is nn.ConstantPad2d and gm.get_submodule("conv").padding == (0, 0)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(gm(x), model(x))


@pytest.mark.parametrize("training", [False, True])
def test_new_module_keeps_the_owners_training_flag(training):
    model = _model().train(training)
    gm = trace_for_quantization(model)
    assert gm.get_submodule("dw").training is training
