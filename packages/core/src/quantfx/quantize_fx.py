"""FX graph mode quantization: the seed API (``torch/ao/quantization/quantize_fx``), maintained.

Migrating from torch.ao means changing the import; names, signatures and
semantics are the seed's. Two additions: a ``backend=`` keyword picks an
installed backend plugin (default: the best one for this machine), and
``convert_fx`` lowers through that backend, while ``convert_to_reference_fx``
returns quantfx's reference IR.

No function here mutates the model it is given.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.fx import GraphModule

from .backend_config import BackendConfig
from .errors import ExampleInputsError, QuantfxError
from .fx.convert import convert_to_reference
from .fx.custom_config import ConvertCustomConfig, FuseCustomConfig, PrepareCustomConfig
from .fx.fuse import fuse
from .fx.prepare import prepare
from .fx.state import get_state
from .fx.tracer import check_example_inputs, trace_for_quantization
from .qconfig_mapping import QConfigMapping

__all__ = ["fuse_fx", "prepare_fx", "prepare_qat_fx", "convert_fx", "convert_to_reference_fx"]

_PRESERVED_KEY = "quantfx_preserved_attributes"


def _as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _check_module(model: Any, fn: str) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{fn} expects a torch.nn.Module, got {type(model).__name__}")


def _resolve_backend(backend: str | None, backend_config: BackendConfig | None) -> tuple[str, BackendConfig]:
    """Name the backend the model is prepared for and get its BackendConfig (after plugin extensions)."""
    from . import api

    if backend is None and backend_config is not None:
        from .plugins import get_plugin_manager

        installed = set(get_plugin_manager().backends())
        backend = backend_config.name if backend_config.name in installed else "reference"
        return backend, backend_config
    backend = backend or api.default_backend()
    if backend_config is None:
        backend_config = api.get_backend_config(backend)
    else:
        api.get_backend(backend)  # unknown names fail here, with the installed list
    return backend, backend_config


def _resolve_mapping(qconfig_mapping: Any, backend: str, is_qat: bool) -> QConfigMapping:
    from . import api

    if qconfig_mapping is None:
        return api.get_default_qat_qconfig_mapping(backend) if is_qat else api.get_default_qconfig_mapping(backend)
    if isinstance(qconfig_mapping, dict):
        return QConfigMapping.from_dict(qconfig_mapping)
    if not isinstance(qconfig_mapping, QConfigMapping):
        raise TypeError(
            f"qconfig_mapping must be a QConfigMapping (or a legacy qconfig dict), got {type(qconfig_mapping).__name__}"
        )
    return qconfig_mapping


def _attach_preserved_attrs(gm: GraphModule, model: torch.nn.Module, names: list[str]) -> None:
    preserved = {name: getattr(model, name) for name in names if hasattr(model, name)}
    gm.meta[_PRESERVED_KEY] = dict(preserved)
    for name, value in preserved.items():
        setattr(gm, name, value)


def _carry_preserved_attrs(src: GraphModule, dst: GraphModule, extra: list[str] | None = None) -> None:
    preserved = dict(src.meta.get(_PRESERVED_KEY, {}))
    for name in extra or []:
        if hasattr(src, name):
            preserved[name] = getattr(src, name)
    dst.meta[_PRESERVED_KEY] = preserved
    for name, value in preserved.items():
        setattr(dst, name, value)


def fuse_fx(
    model: torch.nn.Module,
    fuse_custom_config: FuseCustomConfig | dict | None = None,
    backend_config: BackendConfig | None = None,
    *,
    backend: str | None = None,
) -> GraphModule:
    """Fuse modules like conv+bn, conv+bn+relu (eval mode folds BN). Returns a new GraphModule."""
    _check_module(model, "fuse_fx")
    fuse_custom_config = FuseCustomConfig.coerce(fuse_custom_config)
    _, backend_config = _resolve_backend(backend, backend_config)
    model = copy.deepcopy(model)  # one copy: tracing and fusing work on it in place
    gm = trace_for_quantization(
        model, PrepareCustomConfig.coerce({"preserved_attributes": list(fuse_custom_config.preserved_attributes)}),
        copy_model=False,
    )
    fused = fuse(gm, is_qat=model.training, fuse_custom_config=fuse_custom_config, backend_config=backend_config,
                 copy_model=False)
    _attach_preserved_attrs(fused, model, list(fuse_custom_config.preserved_attributes))
    return fused


def _prepare_standalone_modules(gm: GraphModule, config: PrepareCustomConfig, backend: str, is_qat: bool) -> list[str]:
    targets = []
    entries = dict(getattr(config, "standalone_module_names", {}) or {})
    class_entries = dict(getattr(config, "standalone_module_classes", {}) or {})
    for name, module in list(gm.named_modules()):
        entry = entries.get(name) or class_entries.get(type(module))
        if entry is None or not name:
            continue
        sub_mapping = entry.qconfig_mapping or get_state(gm).qconfig_mapping
        prepared = _prepare(
            module, sub_mapping, is_qat, entry.example_inputs, entry.prepare_custom_config,
            entry.backend_config, backend,
        )
        parent, _, attr = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr, prepared)
        targets.append(name)
    return targets


def _prepare(
    model: torch.nn.Module,
    qconfig_mapping: Any,
    is_qat: bool,
    example_inputs: Any,
    prepare_custom_config: Any,
    backend_config: BackendConfig | None,
    backend: str | None,
) -> GraphModule:
    fn = "prepare_qat_fx" if is_qat else "prepare_fx"
    _check_module(model, fn)
    if example_inputs is None:
        raise QuantfxError(f"{fn} needs example_inputs: a tuple of positional arguments for forward()")
    example_inputs = _as_tuple(example_inputs)
    prepare_custom_config = PrepareCustomConfig.coerce(prepare_custom_config)
    backend, backend_config = _resolve_backend(backend, backend_config)
    qconfig_mapping = _resolve_mapping(qconfig_mapping, backend, is_qat)

    user_model, model = model, copy.deepcopy(model)  # the user's float model is never touched
    gm = trace_for_quantization(model, prepare_custom_config, copy_model=False)  # already a copy
    scope = dict(gm.meta.get("quantfx_node_name_to_scope", {}))
    gm = fuse(gm, is_qat=is_qat, fuse_custom_config=None, backend_config=backend_config, copy_model=False)
    scope.update(gm.meta.get("quantfx_node_name_to_scope", {}))
    try:
        # prepare runs the model once on example_inputs (shape propagation); that run is also the input check
        gm = prepare(
            gm, qconfig_mapping, is_qat, scope, example_inputs, prepare_custom_config, backend_config, backend,
            model_name=type(model).__name__,
        )
    except ExampleInputsError:
        # the traced model rejected the inputs: when the model itself does, say so in its own terms
        check_example_inputs(copy.deepcopy(user_model), example_inputs)
        raise
    state = get_state(gm)
    state.example_inputs = example_inputs
    state.standalone_modules = _prepare_standalone_modules(gm, prepare_custom_config, backend, is_qat)
    _attach_preserved_attrs(gm, model, list(prepare_custom_config.preserved_attributes))
    return gm


def prepare_fx(
    model: torch.nn.Module,
    qconfig_mapping: QConfigMapping | dict | None,
    example_inputs: tuple[Any, ...],
    prepare_custom_config: PrepareCustomConfig | dict | None = None,
    _equalization_config: Any = None,
    backend_config: BackendConfig | None = None,
    *,
    backend: str | None = None,
) -> GraphModule:
    """Prepare a model for post-training static quantization: a GraphModule with observers.

    Args:
        model: the float model, in eval mode. It is not modified.
        qconfig_mapping: how each part is quantized; ``None`` takes the backend's default.
        example_inputs: tuple of positional arguments of ``forward``.
        prepare_custom_config: standalone / non-traceable modules, preserved attributes, ...
        backend_config: how the backend runs ops (patterns, dtypes); defaults to the backend's.
        backend: installed backend to prepare for (``quantfx.backends()`` lists them).
    """
    if _equalization_config is not None:
        raise NotImplementedError("_equalization_config is not supported by quantfx yet")
    return _prepare(model, qconfig_mapping, False, example_inputs, prepare_custom_config, backend_config, backend)


def prepare_qat_fx(
    model: torch.nn.Module,
    qconfig_mapping: QConfigMapping | dict | None,
    example_inputs: tuple[Any, ...],
    prepare_custom_config: PrepareCustomConfig | dict | None = None,
    backend_config: BackendConfig | None = None,
    *,
    backend: str | None = None,
) -> GraphModule:
    """Prepare a model for quantization aware training.

    Weighted modules are swapped for QAT modules that fake-quantize their own
    weights (ConvBn modules also simulate BN folding), and fake-quants are
    inserted in the graph for activations: both are needed, see the docs.
    """
    return _prepare(model, qconfig_mapping, True, example_inputs, prepare_custom_config, backend_config, backend)


def convert_to_reference_fx(
    graph_module: GraphModule,
    convert_custom_config: ConvertCustomConfig | dict | None = None,
    _remove_qconfig: bool = True,
    qconfig_mapping: QConfigMapping | dict | None = None,
    backend_config: BackendConfig | None = None,
) -> GraphModule:
    """Convert a calibrated / trained model to quantfx's reference IR (quantize / dequantize around float ops)."""
    convert_custom_config = ConvertCustomConfig.coerce(convert_custom_config)
    if isinstance(qconfig_mapping, dict):
        qconfig_mapping = QConfigMapping.from_dict(qconfig_mapping)
    ref = convert_to_reference(graph_module, convert_custom_config, qconfig_mapping, backend_config)
    _carry_preserved_attrs(graph_module, ref, list(convert_custom_config.preserved_attributes))
    return ref


def convert_fx(
    graph_module: GraphModule,
    convert_custom_config: ConvertCustomConfig | dict | None = None,
    _remove_qconfig: bool = True,
    qconfig_mapping: QConfigMapping | dict | None = None,
    backend_config: BackendConfig | None = None,
    *,
    backend: str | None = None,
    **lower_options: Any,
) -> torch.nn.Module:
    """Convert and lower to the backend the model was prepared for (or ``backend=``)."""
    from . import api

    ref = convert_to_reference_fx(graph_module, convert_custom_config, _remove_qconfig, qconfig_mapping, backend_config)
    state = get_state(ref)
    backend = backend or state.backend
    example_inputs = getattr(state, "example_inputs", None)
    return api.lower(ref, backend, example_inputs, **lower_options)
