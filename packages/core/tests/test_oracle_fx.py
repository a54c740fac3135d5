"""quantfx's prepare against torch.ao's (the oracle, deprecated but present in torch 2.13).

Same model, same QConfigMapping (built from each library's own observer
classes), each library's native/reference BackendConfig: prepare must observe
the same nodes, and after the same calibration the observers must hold the
same qparams.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import quantfx
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
tq = pytest.importorskip("torch.ao.quantization")
from torch.ao.quantization import quantize_fx as tq_fx  # noqa: E402


class ConvBnReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = self.pool(x)
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        y = y + x
        y = F.relu(y)
        z = torch.cat([y, self.conv3(x)], dim=1)
        return z.mean(dim=(2, 3))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.l2 = nn.Linear(32, 8)

    def forward(self, x):
        return torch.sigmoid(self.l2(self.relu(self.l1(x))))


MODELS = {
    "conv_bn_relu": (ConvBnReLU, (1, 3, 8, 8)),
    "residual": (Residual, (1, 4, 8, 8)),
    "mlp": (MLP, (2, 16)),
}

OBSERVERS = ["minmax", "moving_average", "per_channel_weights", "histogram"]


def _qconfigs(kind: str):
    """The same qconfig built from each library's own classes."""
    if kind == "minmax":
        ours = quantfx.QConfig(
            activation=quantfx.MinMaxObserver.with_args(dtype=torch.uint8),
            weight=quantfx.MinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_tensor_symmetric),
        )
        theirs = tq.QConfig(
            activation=tq.MinMaxObserver.with_args(dtype=torch.quint8),
            weight=tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        )
    elif kind == "moving_average":
        ours = quantfx.QConfig(
            activation=quantfx.MovingAverageMinMaxObserver.with_args(dtype=torch.uint8, reduce_range=True),
            weight=quantfx.MinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_tensor_symmetric),
        )
        theirs = tq.QConfig(
            activation=tq.MovingAverageMinMaxObserver.with_args(dtype=torch.quint8, reduce_range=True),
            weight=tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        )
    elif kind == "histogram":
        ours = quantfx.QConfig(
            activation=quantfx.HistogramObserver.with_args(dtype=torch.uint8, reduce_range=True),
            weight=quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric),
        )
        theirs = tq.QConfig(
            activation=tq.HistogramObserver.with_args(dtype=torch.quint8, reduce_range=True),
            weight=tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
        )
    else:
        ours = quantfx.QConfig(
            activation=quantfx.MinMaxObserver.with_args(dtype=torch.uint8),
            weight=quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric),
        )
        theirs = tq.QConfig(
            activation=tq.MinMaxObserver.with_args(dtype=torch.quint8),
            weight=tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
        )
    return ours, theirs


def _observed_producers(gm: torch.fx.GraphModule, is_observer) -> dict[str, torch.nn.Module]:
    """{name of the node an observer watches: observer module}, following chained observers."""
    result = {}
    for node in gm.graph.nodes:
        # get_submodule, not named_modules(): torch.ao registers a shared observer under several names
        if node.op == "call_module" and is_observer(gm.get_submodule(node.target)):
            src = node.args[0]
            while src.op == "call_module" and is_observer(gm.get_submodule(src.target)):
                src = src.args[0]
            result.setdefault(src.name, gm.get_submodule(node.target))
    return result


def _calibration(shape, n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=g) * (1 + i) for i in range(n)]


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("kind", OBSERVERS)
def test_prepare_matches_torch_ao(model_name, kind):
    cls, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = cls().eval()
    example = (torch.randn(shape),)
    ours_q, theirs_q = _qconfigs(kind)

    ours_map = quantfx.QConfigMapping().set_global(ours_q)
    theirs_map = tq.QConfigMapping().set_global(theirs_q)
    ours = prepare_fx(model, ours_map, example, backend="reference")
    theirs = tq_fx.prepare_fx(model, theirs_map, example)

    from quantfx.observers import is_observer_or_fake_quant
    from torch.ao.quantization.observer import ObserverBase as TqObserverBase

    ours_obs = _observed_producers(ours, is_observer_or_fake_quant)
    theirs_obs = _observed_producers(theirs, lambda m: isinstance(m, TqObserverBase))
    assert set(ours_obs) == set(theirs_obs)

    with torch.no_grad():
        for x in _calibration(shape):
            ours(x)
            theirs(x)
    for name, obs in ours_obs.items():
        s1, z1 = obs.calculate_qparams()
        s2, z2 = theirs_obs[name].calculate_qparams()
        if kind == "histogram":
            # the seed contract: HistogramObserver qparams within one histogram bin
            bin_width = float(obs.max_val - obs.min_val) / obs.bins
            assert abs(float(s1) - float(s2)) * (obs.quant_max - obs.quant_min) <= bin_width + 1e-6, name
            assert abs(int(z1) - int(z2)) <= 1, name
            continue
        torch.testing.assert_close(s1.float(), s2.float(), atol=1e-6, rtol=0, msg=f"scale of {name}")
        assert torch.equal(z1.long(), z2.long()), f"zero point of {name}"


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_reference_model_matches_torch_ao_reference(model_name):
    """The reference IR computes what torch.ao's reference model computes."""
    cls, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = cls().eval()
    example = (torch.randn(shape),)
    ours_q, theirs_q = _qconfigs("per_channel_weights")
    ours = prepare_fx(model, quantfx.QConfigMapping().set_global(ours_q), example, backend="reference")
    theirs = tq_fx.prepare_fx(model, tq.QConfigMapping().set_global(theirs_q), example)
    with torch.no_grad():
        for x in _calibration(shape):
            ours(x)
            theirs(x)
    ours_ref = convert_to_reference_fx(ours)
    theirs_ref = tq_fx.convert_to_reference_fx(theirs)
    x = _calibration(shape, 1)[0]
    with torch.no_grad():
        ours_out, theirs_out = ours_ref(x), theirs_ref(x)
    # Bit-exact but for rounding ties: fbgemm's quantize uses a fused multiply-add,
    # so a value within one float ulp of .5 may round the other way. Allow at most
    # one output quantization step, on few elements.
    step = max(float(q.args[1]) for q in ours_ref.graph.nodes if q.target == torch.ops.quantfx.quantize_per_tensor.default)
    diff = (ours_out - theirs_out).abs()
    assert float(diff.max()) <= step + 1e-6
    assert float((diff > 1e-6).float().mean()) <= 0.15
