"""quantfx.graph_artifact: GraphModules to safetensors + JSON and back, no pickle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("safetensors", reason="quantfx.graph_artifact needs safetensors (a backend dependency, not core's)")

from quantfx.graph_artifact import ArtifactError, load_graph_module, save_graph_module


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("offset", torch.arange(3, dtype=torch.int8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) + self.offset  # an int8 buffer read by get_attr


def test_roundtrip_is_bit_exact_and_keeps_extra(tmp_path) -> None:
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(_Net().eval())
    gm.fc.cache = object()  # an opaque per-module cache (like packed weights) must not be saved
    path = tmp_path / "m.safetensors"
    save_graph_module(gm, path, format="test/1", transient_attrs=("cache",), extra={"note": [1, 2]})
    loaded, extra = load_graph_module(path, format="test/1")
    assert extra == {"note": [1, 2]}
    assert loaded.fc.cache is None
    assert loaded.offset.dtype == torch.int8
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), gm(x))


def test_wrong_format_and_quantized_tensors_are_refused(tmp_path) -> None:
    gm = torch.fx.symbolic_trace(_Net().eval())
    path = tmp_path / "m.safetensors"
    save_graph_module(gm, path, format="test/1")
    with pytest.raises(ArtifactError, match=r"not a 'other/1' artifact \(its format is 'test/1'\)"):
        load_graph_module(path, format="other/1")
    gm.register_buffer("q", torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8))
    with pytest.raises(Exception, match="quantized dtype torch.quint8 cannot be saved"):
        save_graph_module(gm, tmp_path / "q.safetensors", format="test/1")
