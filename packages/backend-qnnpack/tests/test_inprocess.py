"""The in-process route: zero padding stays in int8, the entry quantize matches core's, safetensors artifacts."""

from __future__ import annotations

import copy
import json

import pytest
import quantfx
import torch
import torch.nn.functional as F
from quantfx.graph_artifact import ArtifactError
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx_qnnpack.artifact import FORMAT
from quantfx_qnnpack.inprocess import (
    QnnpackModule,
    quantize_to_qtensor,
    zero_pad_qtensor,
)
from torch import nn


class StaticSamePad(nn.Module):
    """EfficientNet-Lite's stride-2 "same" convs: an uneven ZeroPad2d before the conv, then F.pad."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 5, stride=2, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn(self.conv(self.pad(x))))
        return self.dw(F.pad(y, (1, 2, 1, 2)))


def _lowered(model: nn.Module, example: tuple[torch.Tensor, ...]):
    prepared = prepare_fx(copy.deepcopy(model), quantfx.get_default_qconfig_mapping("qnnpack"), example, backend="qnnpack")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(example[0].shape, generator=gen))
    reference = convert_to_reference_fx(prepared)
    return reference, quantfx.api.lower(reference, "qnnpack", example)


@pytest.fixture(scope="module")
def padded():
    torch.manual_seed(0)
    model = StaticSamePad().eval()
    with torch.no_grad():  # BN statistics a trained model would have
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    example = (torch.randn(1, 3, 17, 17),)
    return (*_lowered(model, example), example)


def test_zero_padding_runs_in_int8_and_matches_the_reference(padded) -> None:
    reference, lowered, _ = padded
    assert lowered.float_ops == [], f"padding split the int8 region: {lowered.float_ops}"
    nodes = list(lowered.graph_module.graph.nodes)
    pads = [n for n in nodes if n.target is zero_pad_qtensor]
    assert [n.args[1] for n in pads] == [(0, 1, 0, 1), (1, 2, 1, 2)], lowered.code
    dequantizes = [n for n in nodes if n.op == "call_method" and n.target == "dequantize"]
    assert len(dequantizes) == 1 and next(iter(dequantizes[0].users)).op == "output", f"only the output dequantizes:\n{lowered.code}"
    x = torch.randn(2, 3, 17, 17)
    with torch.no_grad():
        assert torch.equal(lowered(x), reference(x))


def test_zero_pad_qtensor_pads_with_the_zero_point() -> None:
    x = torch.randn(1, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    q = torch.quantize_per_tensor(x, 0.05, 131, torch.quint8)
    y = zero_pad_qtensor(q, (0, 1, 2, 0))
    assert y.q_scale() == 0.05 and y.q_zero_point() == 131
    assert y.is_contiguous(memory_format=torch.channels_last), "the qnnpack convs' NHWC layout must survive"
    assert torch.equal(y.dequantize(), F.pad(q.dequantize(), (0, 1, 2, 0)))


@pytest.mark.parametrize("dtype,zero_point,qmin,qmax", [(torch.int8, -3, -128, 127), (torch.uint8, 7, 0, 255)])
def test_entry_quantize_is_core_quantize_bit_for_bit(dtype, zero_point, qmin, qmax) -> None:
    gen = torch.Generator().manual_seed(1)
    for scale in (0.0326410494, 1 / 256, 2**-12, 0.0071):
        x = torch.randn(1, 3, 32, 32, generator=gen) * 3
        x[0, 0, 0, :20] = torch.arange(20) * scale * 0.5  # exact ties: x / scale = k + 0.5
        got = quantize_to_qtensor(x, scale, zero_point, qmin, qmax, dtype).int_repr().to(torch.int16)
        want = torch.ops.quantfx.quantize_per_tensor(x, scale, zero_point, qmin, qmax, dtype).to(torch.int16)
        shift = 128 if dtype == torch.int8 else 0
        assert torch.equal(got - shift, want), f"scale {scale}: entry quantize differs from core's"


# ----------------------------------------------------------------------------- artifact


def test_inprocess_save_is_safetensors_and_reloads_bit_exact(padded, tmp_path) -> None:
    from safetensors import safe_open

    _, lowered, _ = padded
    backend = quantfx.get_backend("qnnpack")
    path = tmp_path / "model.safetensors"
    backend.save(lowered, path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == FORMAT
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    assert torch.int8 in dtypes and not dtypes & {torch.quint8, torch.qint8, torch.qint32}
    loaded = backend.load(path)
    assert isinstance(loaded, QnnpackModule) and loaded.float_ops == lowered.float_ops
    x = torch.randn(3, 3, 17, 17)
    with torch.no_grad():
        assert torch.equal(loaded(x), lowered(x))


def test_load_refuses_a_function_outside_the_allow_list(padded, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, lowered, _ = padded
    path = tmp_path / "model.safetensors"
    quantfx.get_backend("qnnpack").save(lowered, path)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    graph = json.loads(metadata["quantfx.graph"])
    node = next(n for n in graph["graph"] if n["op"] == "call_function")
    node["target"] = "os.system"
    metadata["quantfx.graph"] = json.dumps(graph)
    tampered = tmp_path / "tampered.safetensors"
    save_file(load_file(str(path)), str(tampered), metadata=metadata)
    with pytest.raises(ArtifactError, match="'os.system', outside the allow-list"):
        quantfx.get_backend("qnnpack").load(tampered)


def test_load_names_the_expected_format(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "quantfx-fbgemm/1"})
    with pytest.raises(ArtifactError, match=r"not a 'quantfx-qnnpack/1' artifact \(its format is 'quantfx-fbgemm/1'\)"):
        quantfx.get_backend("qnnpack").load(path)


# ----------------------------------------------------------------------------- dynamic Linear


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_dynamic_linear_runs_on_the_qnnpack_dynamic_kernel(per_channel: bool, tmp_path) -> None:
    import quantfx.qconfig as qc
    from quantfx.qconfig_mapping import QConfigMapping
    from quantfx_qnnpack.inprocess import QuantizedDynamicLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    qconfig = qc.per_channel_dynamic_qconfig if per_channel else qc.default_dynamic_qconfig
    example = (torch.randn(5, 16),)
    prepared = prepare_fx(copy.deepcopy(model), QConfigMapping().set_object_type(nn.Linear, qconfig), example, backend="qnnpack")
    reference = convert_to_reference_fx(prepared)
    lowered = quantfx.api.lower(reference, "qnnpack", example)
    kernels = [m for m in lowered.graph_module.modules() if isinstance(m, QuantizedDynamicLinear)]
    assert [k.relu for k in kernels] == [True, False], lowered.code
    leftover = [n.target for n in lowered.graph_module.graph.nodes if n.op == "call_function"]
    assert leftover == [], f"the dynamic quantize chain should be gone, found {leftover}"
    x = torch.randn(7, 16) * 2
    with torch.no_grad():
        want, got = reference(x), lowered(x)
    assert sqnr(want, got) >= 60.0, "the kernel's per-call uint8 qparams should match the reference's choose_qparams"
    path = tmp_path / "dynamic.safetensors"
    quantfx.get_backend("qnnpack").save(lowered, path)
    with torch.no_grad():
        assert torch.equal(quantfx.get_backend("qnnpack").load(path)(x), got)
