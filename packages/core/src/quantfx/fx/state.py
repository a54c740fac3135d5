"""What prepare records on a GraphModule for convert (and for reports).

Stored in ``gm.meta["quantfx"]`` so it survives ``copy.deepcopy`` and
``torch.save`` / ``torch.load`` (a GraphModule pickles its ``__dict__``, but
node-level ``meta`` is rebuilt by re-tracing and lost). Everything is keyed by
stable names: module targets and node names.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["PreparedState", "STATE_KEY", "get_state", "set_state"]

STATE_KEY = "quantfx"


@dataclass
class PreparedState:
    backend: str
    is_qat: bool
    qconfig_mapping: Any
    prepare_custom_config: Any
    backend_config: Any
    node_name_to_scope: dict[str, tuple[str, type]] = field(default_factory=dict)
    # weighted call_module target -> qconfig it was quantized with (convert makes a reference module)
    weighted_module_qconfigs: dict[str, Any] = field(default_factory=dict)
    # weighted call_module target -> "static" / "dynamic" / "weight_only"
    weighted_module_modes: dict[str, str] = field(default_factory=dict)
    # node name -> qconfig of every node (None: float); used by a convert-time qconfig_mapping
    node_qconfigs: dict[str, Any] = field(default_factory=dict)
    # node name -> why it stays in float (no backend pattern, qconfig None, unsupported dtype ...)
    float_reasons: dict[str, str] = field(default_factory=dict)
    # node name -> pattern string it was quantized as
    quantized_patterns: dict[str, str] = field(default_factory=dict)
    # standalone module target -> its own PreparedState lives on the submodule
    standalone_modules: list[str] = field(default_factory=list)
    input_quantized_idxs: list[int] = field(default_factory=list)
    output_quantized_idxs: list[int] = field(default_factory=list)
    # what prepare ran the model with; lowerings that export (ONNX, OpenVINO) reuse it
    example_inputs: tuple = ()

    def __deepcopy__(self, memo: dict) -> "PreparedState":
        # copy.deepcopy would go through __getstate__ and its pickling probe (slow)
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        # BackendConfigs hold functions that do not pickle (F.max_pool2d is a
        # boolean_dispatch closure); convert re-resolves those from the backend name.
        state = dict(self.__dict__)
        for key in ("backend_config", "qconfig_mapping", "prepare_custom_config"):
            try:
                pickle.dumps(state[key])
            except Exception:
                state[key] = None
        return state


_ATTR = "_quantfx_state"


def get_state(gm: torch.nn.Module) -> PreparedState | None:
    meta = getattr(gm, "meta", None)
    if isinstance(meta, dict) and STATE_KEY in meta:
        return meta[STATE_KEY]
    state = getattr(gm, _ATTR, None)
    if state is not None and isinstance(meta, dict):
        meta[STATE_KEY] = state
    return state


def set_state(gm: torch.fx.GraphModule, state: PreparedState) -> None:
    # meta for tools that read it; the attribute because torch.load rebuilds a
    # GraphModule with an empty meta but restores unknown attributes
    gm.meta[STATE_KEY] = state
    setattr(gm, _ATTR, state)
