"""The ExecuTorch route: .pte file, runtime module, save / load, and the partition report."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quantfx
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx_qnnpack.artifact import is_pte
from quantfx_qnnpack.executorch_lowering import PartitionWarning, PteModule


class ConvMeanHead(nn.Module):
    """conv-relu (XNNPACK takes it) then mean without keepdim (XNNPACK refuses it) and a two-output tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.relu(self.conv(x))
        pooled = y.mean(dim=(2, 3))
        return self.fc(pooled), y


def _reference(model: nn.Module, example: tuple[torch.Tensor, ...]):
    prepared = prepare_fx(copy.deepcopy(model), quantfx.get_default_qconfig_mapping("qnnpack"), example, backend="qnnpack")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(example[0].shape, generator=gen))
    return convert_to_reference_fx(prepared)


@pytest.fixture(scope="module")
def lowered():
    torch.manual_seed(0)
    model = ConvMeanHead().eval()
    example = (torch.randn(1, 3, 8, 8),)
    ref = _reference(model, example)
    with pytest.warns(PartitionWarning) as record:
        pte = quantfx.api.lower(ref, "qnnpack", example, target="executorch")
    return ref, example, pte, record


def test_pte_runs_and_matches_reference(lowered) -> None:
    ref, example, pte, _ = lowered
    assert isinstance(pte, PteModule) and is_pte(pte.pte)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = ref(x)
        got = pte(x)
    assert isinstance(got, tuple) and len(got) == 2  # the model's output structure, not a flat list
    for w, g in zip(want, got):
        assert g.shape == w.shape and sqnr(w, g) >= 35.0


def test_partition_report_names_the_refused_node(lowered) -> None:
    _, _, pte, record = lowered
    means = [r for r in pte.partition_report if "mean" in r.target]
    assert means, f"mean without keepdim is not delegated by XNNPACK; report: {pte.partition_report}"
    assert "keepdim" in means[0].reason
    assert any(means[0].name in str(w.message) for w in record), "the warning must name the node"
    # conv and linear did go to XNNPACK
    assert not any("convolution" in r.target or "linear" in r.target or "addmm" in r.target for r in pte.partition_report)
    assert b"XnnpackBackend" in pte.pte


def test_save_load_pte(lowered, tmp_path) -> None:
    _, example, pte, _ = lowered
    backend = quantfx.get_backend("qnnpack")
    path = tmp_path / "model.pte"
    backend.save(pte, path)
    assert path.read_bytes() == pte.pte
    loaded = backend.load(path)
    assert isinstance(loaded, PteModule)
    x = torch.randn(1, 3, 8, 8)
    for a, b in zip(pte(x), loaded(x)):
        assert torch.equal(a, b)


def test_fully_delegated_model_has_empty_report() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1)).eval()
    example = (torch.randn(1, 3, 8, 8),)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PartitionWarning)
        pte = quantfx.api.lower(_reference(model, example), "qnnpack", example, target="executorch")
    assert pte.partition_report == []


def test_unknown_target_is_a_clear_error() -> None:
    ref = _reference(nn.Sequential(nn.Linear(4, 4)).eval(), (torch.randn(2, 4),))
    with pytest.raises(Exception, match="unknown target 'tflite'; choose one of inprocess, executorch"):
        quantfx.api.lower(ref, "qnnpack", (torch.randn(2, 4),), target="tflite")


def test_dynamic_linear_on_pte_is_a_clear_error() -> None:
    import quantfx.qconfig as qc
    from quantfx.errors import LoweringError
    from quantfx.qconfig_mapping import QConfigMapping

    model = nn.Sequential(nn.Linear(16, 8)).eval()
    example = (torch.randn(5, 16),)
    prepared = prepare_fx(model, QConfigMapping().set_object_type(nn.Linear, qc.default_dynamic_qconfig), example, backend="qnnpack")
    reference = convert_to_reference_fx(prepared)
    with pytest.raises(LoweringError, match="Dynamic quantization .* not delegated to XNNPACK.*target='inprocess'"):
        quantfx.api.lower(reference, "qnnpack", example, target="executorch", warn_unpartitioned=False)
