"""The one-call API: pick a backend by name, quantize a model for it.

Everything backend-specific is resolved through the plugin manager, so the
same call works for any installed backend package::

    int8_model = quantfx.quantize(model, backend="fbgemm",
                                  calibration_data=loader, example_inputs=(x,))
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from quantfx.errors import BackendUnavailableError, CalibrationError, LoweringError, QuantfxError
from quantfx.plugins import get_plugin_manager
from quantfx.plugins.backend import Availability, Backend

if TYPE_CHECKING:
    from torch.fx import GraphModule

    from quantfx.backend_config import BackendConfig
    from quantfx.qconfig_mapping import QConfigMapping

__all__ = [
    "BackendInfo",
    "backends",
    "calibrate",
    "default_backend",
    "get_backend",
    "get_backend_config",
    "get_default_qat_qconfig_mapping",
    "get_default_qconfig_mapping",
    "lower",
    "quantize",
]

_X86_MACHINES = {"x86_64", "amd64", "x64", "i386", "i686", "x86"}
_ARM_MACHINES = {"arm64", "aarch64", "armv7l", "armv8l", "armv8", "arm"}


@dataclass(frozen=True)
class BackendInfo:
    """One row of `backends()`: an installed backend, or a plugin that failed to load."""

    name: str
    plugin: str | None
    distribution: str | None
    version: str | None
    available: bool
    reason: str | None
    description: str = ""
    load_error: bool = False
    #: what the availability probe found (ISA, devices, runtime versions ...), from ``Availability.details``
    details: dict[str, Any] = field(default_factory=dict)


def _availability(backend: Backend) -> Availability:
    """`backend.availability()`, where a crashing probe means 'unavailable', never a crash here."""
    try:
        result = backend.availability()
    except Exception as exc:
        return Availability.unavailable(
            f"availability check failed: {type(exc).__name__}: {exc}"
        )
    if not isinstance(result, Availability):
        return Availability.unavailable(
            f"availability() returned {result!r}, not a quantfx.plugins.Availability"
        )
    return result


def _require_available(backend: Backend, lower_options: Mapping[str, Any] | None = None) -> None:
    availability = _availability(backend)
    if not availability.available and lower_options:
        availability = backend.availability_for_lowering(lower_options)
    if not availability.available:
        raise BackendUnavailableError(
            f"Backend '{backend.name}' is installed but cannot run here: {availability.reason}"
        )


def get_backend(name: str) -> Backend:
    """The installed backend `name`; `UnknownBackendError` lists what is installed and what to pip install."""
    return get_plugin_manager().get_backend(name)


def backends() -> list[BackendInfo]:
    """Every installed backend with its availability here, then every plugin that failed to load."""
    pm = get_plugin_manager()
    rows: list[BackendInfo] = []
    for name, backend in sorted(pm.backends().items()):
        plugin = pm.backend_plugin(name)
        info = pm.plugin_info(plugin)
        availability = _availability(backend)
        rows.append(
            BackendInfo(
                name=name,
                plugin=plugin,
                distribution=info.distribution if info else None,
                version=info.version if info else None,
                available=availability.available,
                reason=availability.reason,
                description=backend.description,
                details=dict(availability.details),
            )
        )
    for failure in pm.load_errors():
        kind = "missing dependency" if failure.missing_dependency else "plugin failed to load"
        rows.append(
            BackendInfo(
                name=failure.name,
                plugin=failure.name,
                distribution=failure.distribution,
                version=failure.version,
                available=False,
                reason=f"{kind}: {failure.cause}",
                load_error=True,
            )
        )
    return rows


def default_backend() -> str:
    """The backend to use when none is named: the native one for this CPU if installed and usable.

    x86 prefers ``x86`` then ``fbgemm``; ARM prefers ``qnnpack``; otherwise,
    or when those are missing or unavailable, ``reference``.
    """
    machine = platform.machine().lower()
    if machine in _X86_MACHINES:
        candidates: tuple[str, ...] = ("x86", "fbgemm")
    elif machine in _ARM_MACHINES or machine.startswith("arm"):
        candidates = ("qnnpack",)
    else:
        candidates = ()
    installed = get_plugin_manager().backends()
    for name in candidates:
        if name in installed and _availability(installed[name]).available:
            return name
    return "reference"


def get_backend_config(backend: str | None = None) -> BackendConfig:
    """The backend's BackendConfig, including every plugin's extensions (a fresh copy)."""
    return get_plugin_manager().backend_config(backend if backend is not None else default_backend())


def get_default_qconfig_mapping(backend: str | None = None) -> QConfigMapping:
    """The backend's default post-training QConfigMapping (plugins may override it)."""
    name = backend if backend is not None else default_backend()
    return get_plugin_manager().default_qconfig_mapping(name, is_qat=False)


def get_default_qat_qconfig_mapping(backend: str | None = None) -> QConfigMapping:
    """The backend's default quantization-aware-training QConfigMapping."""
    name = backend if backend is not None else default_backend()
    return get_plugin_manager().default_qconfig_mapping(name, is_qat=True)


def _as_example_inputs(example_inputs: Any) -> tuple[Any, ...]:
    if example_inputs is None:
        return ()
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _lower(backend: Backend, reference_model: GraphModule, example_inputs: tuple[Any, ...],
           options: Mapping[str, Any]) -> torch.nn.Module:
    rules = get_plugin_manager().lowering_rules(backend.name)
    from quantfx.pt2e.normalize import as_fx_reference

    reference_model = as_fx_reference(reference_model, example_inputs)  # convert_pt2e output -> FX reference form
    try:
        return backend.lower(reference_model, example_inputs, lowering_rules=rules, **options)
    except QuantfxError:
        raise
    except NotImplementedError:
        raise
    except Exception as exc:
        raise LoweringError(
            f"Backend '{backend.name}' failed to lower the reference model: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def lower(reference_model: GraphModule, backend: str, example_inputs: Any, **options: Any) -> torch.nn.Module:
    """Lower a reference quantized model (from `convert_to_reference_fx` or `convert_pt2e`) with `backend`.

    Checks the backend can run here first, and hands it every plugin's
    lowering rules; `options` go to the backend's `lower`.
    """
    be = get_backend(backend)
    _require_available(be, options)
    return _lower(be, reference_model, _as_example_inputs(example_inputs), options)


def _call_args(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    return (batch,), {}


def calibrate(prepared: torch.nn.Module, data: Iterable[Any], progress: bool = True) -> int:
    """Run `prepared` over `data` without gradients so its observers record ranges; returns the batch count.

    Each item is one call's inputs: a tensor, a tuple/list of positional
    arguments, or a dict of keyword arguments. Shows a tqdm bar unless
    `progress` is False.
    """
    from tqdm import tqdm

    try:
        total: int | None = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    count = 0
    with torch.no_grad():
        for batch in tqdm(data, total=total, disable=not progress, desc="Calibrating", unit="batch"):
            args, kwargs = _call_args(batch)
            try:
                prepared(*args, **kwargs)
            except QuantfxError as exc:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"while calibrating on batch {count}")
                raise
            except Exception as exc:
                raise CalibrationError(
                    f"Calibration batch {count} failed: the model called with {len(args)} positional "
                    f"and {len(kwargs)} keyword argument(s) raised {type(exc).__name__}: {exc}. "
                    f"Each calibration item must be the model's inputs (a tensor, a tuple of "
                    f"positional args or a dict of kwargs); drop labels, e.g. (x for x, _ in loader)"
                ) from exc
            count += 1
    if count == 0:
        raise CalibrationError(
            "calibration_data yielded no batches, so observers saw no data and convert would "
            "have no scales; pass a non-empty iterable of model inputs"
        )
    return count


def quantize(
    model: torch.nn.Module,
    backend: str | None = None,
    *,
    calibration_data: Iterable[Any],
    example_inputs: Any,
    qconfig_mapping: QConfigMapping | None = None,
    backend_config: BackendConfig | None = None,
    progress: bool = True,
    bias_correction: bool | None = None,
    float_outputs: bool | None = None,
    **lower_options: Any,
) -> torch.nn.Module:
    """Post-training quantize `model` for `backend` in one call; `model` is left untouched.

    prepare (observers in) -> calibrate over `calibration_data` -> [bias
    correction] -> convert to the reference IR -> lower with the backend.
    Defaults (qconfig mapping, backend config, `bias_correction`) come from the
    backend plugin and every extension plugin; `lower_options` go to the
    backend's `lower`. `bias_correction` runs `calibration_data` a second time
    (quantfx.fx.bias_correction); a one-shot iterator is kept in a list for it.
    `float_outputs` leaves the model's outputs unrounded: the last op still
    runs in int8 but its result is not quantized (quantfx.fx.float_outputs).
    """
    pm = get_plugin_manager()
    name = backend if backend is not None else default_backend()
    be = pm.get_backend(name)
    _require_available(be, lower_options)

    from quantfx.fx.convert import convert_to_reference
    from quantfx.quantize_fx import _carry_preserved_attrs, prepare_fx

    example_inputs = _as_example_inputs(example_inputs)
    if qconfig_mapping is None:
        qconfig_mapping = pm.default_qconfig_mapping(name, is_qat=False)
    if backend_config is None:
        backend_config = pm.backend_config(name)
    if model.training:
        # Post-training quantization folds BatchNorm with its running stats,
        # which needs eval mode; switch a copy, never the user's model.
        model = copy.deepcopy(model).eval()
    prepared = prepare_fx(model, qconfig_mapping, example_inputs, backend_config=backend_config, backend=name)
    if bias_correction is None:
        bias_correction = bool(getattr(be, "bias_correction", False))
    recorder = None
    if bias_correction:
        from quantfx.fx.bias_correction import BiasCorrectionRecorder

        # keeps the corrected layers' inputs while calibrating, so correction needs no second pass
        recorder = BiasCorrectionRecorder(prepared)
        # a one-shot iterator (not iter() on it: that would start a DataLoader's workers): keep the batches,
        # in case the recorder has to run them again
        if recorder.eligible and isinstance(calibration_data, Iterator):
            calibration_data = list(calibration_data)
    try:
        calibrate(prepared, calibration_data, progress=progress)
    finally:
        if recorder is not None:
            recorder.remove_hooks()
    if recorder is not None:
        prepared = recorder.apply(calibration_data, progress=progress)  # in place: prepared is ours
    # prepared is ours: convert it in place rather than a copy (convert_to_reference_fx copies)
    reference = convert_to_reference(prepared, backend_config=backend_config, copy_model=False)
    _carry_preserved_attrs(prepared, reference)
    if float_outputs is None:
        float_outputs = bool(getattr(be, "float_outputs", False))
    if float_outputs:
        from quantfx.fx.float_outputs import keep_outputs_float

        keep_outputs_float(reference)
    return _lower(be, reference, example_inputs, lower_options)
