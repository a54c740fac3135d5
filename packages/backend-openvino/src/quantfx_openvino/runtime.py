"""``OpenVINOModule``: a compiled OpenVINO model that takes and returns torch tensors.

It is what ``convert_fx`` / ``quantfx.quantize(..., backend="openvino")``
return, so a lowered model drops into code that called the float model:
``out = int8_model(x)``, same positional inputs, same (nested) output
structure, torch tensors out. The OpenVINO objects stay reachable
(``ov_model``, ``compiled_model``) for users who deploy with OpenVINO itself.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from quantfx.errors import ValidationError
from torch.utils import _pytree as pytree

__all__ = ["DEFAULT_CPU_CONFIG", "OpenVINOModule", "compile_for_device", "runtime_layers"]

#: CPU plugin settings applied unless the user overrides them: float parts of the model in f32
#: (the plugin's default is bf16 on CPUs with AVX512-BF16 / AMX, which the reference IR does not compute).
DEFAULT_CPU_CONFIG: dict[str, str] = {"INFERENCE_PRECISION_HINT": "f32"}


def compile_for_device(ov_model: Any, device: str = "CPU", config: Mapping[str, Any] | None = None) -> Any:
    """Compile ``ov_model`` for ``device``; a device OpenVINO does not have gets an error listing those it has."""
    from quantfx_openvino.devices import VIRTUAL_DEVICES, available_devices, get_core

    if not isinstance(device, str) or not device:
        raise ValidationError(f"openvino: device must be a device name such as 'CPU', got {device!r}")
    devices = available_devices()
    base = device.split(":", 1)[0].split(".", 1)[0].upper()
    if base not in VIRTUAL_DEVICES and not any(d.split(".", 1)[0] == base for d in devices):
        raise ValidationError(
            f"openvino: device {device!r} is not available here; OpenVINO sees {devices}. "
            "Use one of those, or 'AUTO' to let OpenVINO choose (GPU / NPU need their drivers installed)."
        )
    settings: dict[str, Any] = {}
    if base == "CPU":
        settings.update(DEFAULT_CPU_CONFIG)
    settings.update(dict(config or {}))
    return get_core().compile_model(ov_model, device, settings)


def runtime_layers(compiled_model: Any) -> list[dict[str, str]]:
    """The execution graph OpenVINO actually runs: one row per layer with its type and precisions.

    Each row: ``name``, ``type`` (``Convolution``, ``FullyConnected``, ``MatMul`` ...),
    ``runtime_precision`` (the precision the kernel computes in: ``u8`` / ``i8`` for
    int8 kernels) and ``output_precisions``. This is the proof that int8 runs.
    """
    rows = []
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        rows.append({
            "name": op.get_friendly_name(),
            "type": _rt_str(rt, "layerType"),
            "runtime_precision": _rt_str(rt, "runtimePrecision"),
            "output_precisions": _rt_str(rt, "outputPrecisions"),
        })
    return rows


def _rt_str(rt: Any, key: str) -> str:
    return rt[key].astype(str) if key in rt else ""


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.contiguous().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise ValidationError(
        f"openvino model input {name} must be a torch.Tensor (or numpy array), got {type(x).__name__}; "
        "pass the same positional tensors the float model takes"
    )


class OpenVINOModule(torch.nn.Module):
    """A quantized model compiled by OpenVINO, called like the torch model it came from.

    Args:
        ov_model: the ``openvino.Model`` (FakeQuantize nodes for quantization).
        output_spec: pytree spec of the original model's output (tuples, dicts ...).
        device: OpenVINO device (``CPU``, ``GPU``, ``NPU``, ``AUTO``).
        config: OpenVINO properties for ``compile_model`` (e.g. ``{"INFERENCE_NUM_THREADS": 2}``).
    """

    def __init__(
        self,
        ov_model: Any,
        output_spec: pytree.TreeSpec | None = None,
        device: str = "CPU",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.ov_model = ov_model
        self.device = device
        self.config = dict(config or {})
        self.output_spec = output_spec
        self.compiled_model = compile_for_device(ov_model, device, self.config)
        self._request = self.compiled_model.create_infer_request()
        self._lock = threading.Lock()
        self._num_inputs = len(ov_model.inputs)
        n_out = len(ov_model.outputs)
        if output_spec is not None and output_spec.num_leaves != n_out:
            raise ValidationError(
                f"openvino: output_spec has {output_spec.num_leaves} tensors but the OpenVINO model has {n_out} outputs"
            )

    def forward(self, *args: Any) -> Any:
        """Run on torch tensors (the float model's positional inputs); returns torch tensors."""
        if len(args) != self._num_inputs:
            raise ValidationError(
                f"openvino model takes {self._num_inputs} positional tensor input(s) "
                f"({', '.join(i.get_any_name() for i in self.ov_model.inputs)}), got {len(args)}"
            )
        inputs = [_to_numpy(a, f"#{i}") for i, a in enumerate(args)]
        with self._lock:
            self._request.infer(inputs, share_inputs=True)
            outs = [torch.from_numpy(np.array(self._request.get_output_tensor(i).data, copy=True))
                    for i in range(len(self.compiled_model.outputs))]
        if self.output_spec is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return pytree.tree_unflatten(outs, self.output_spec)

    def runtime_layers(self) -> list[dict[str, str]]:
        """The layers OpenVINO executes and their precisions (see ``runtime_layers``)."""
        return runtime_layers(self.compiled_model)

    def int8_layers(self, types: tuple[str, ...] = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")) -> list[dict[str, str]]:
        """Runtime layers of ``types`` that compute in u8 / i8."""
        return [r for r in self.runtime_layers() if r["type"] in types and r["runtime_precision"] in ("u8", "i8")]

    def extra_repr(self) -> str:
        return f"device={self.device!r}, inputs={self._num_inputs}, outputs={len(self.ov_model.outputs)}"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "OpenVINOModule holds a compiled OpenVINO model and cannot be pickled or deep-copied; "
            "save it with quantfx.api.get_backend('openvino').save(model, 'model.xml') and load() it back"
        )
