"""Save and load lowered models as OpenVINO IR (``.xml`` + ``.bin``).

The IR is the deployment format every OpenVINO tool reads (``benchmark_app``,
OpenVINO Model Server, ``openvino.Core.read_model``). quantfx adds what
``OpenVINOModule`` needs to rebuild itself — the output structure, the device
and compile settings — under the model's ``rt_info["quantfx"]``, so one
``.xml`` / ``.bin`` pair is the whole artifact. Float constants are written
in f32 (``compress_to_fp16=False``): the reloaded model computes bit-exactly
what the saved one did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from quantfx.errors import ValidationError
from torch.utils import _pytree as pytree

from quantfx_openvino.runtime import OpenVINOModule

__all__ = ["ir_paths", "load_openvino", "save_openvino"]

_RT_KEY = "quantfx"
_FORMAT_VERSION = "1"


def ir_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(xml, bin) for ``path``: ``model.xml`` names the IR itself; any other path is a folder holding ``model.xml``."""
    p = Path(path)
    xml = p if p.suffix.lower() == ".xml" else p / "model.xml"
    return xml, xml.with_suffix(".bin")


def save_openvino(model: OpenVINOModule, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as OpenVINO IR; returns the ``.xml`` path."""
    import openvino as ov

    if not isinstance(model, OpenVINOModule):
        raise ValidationError(
            f"openvino save expects the OpenVINOModule returned by convert_fx / quantfx.quantize(backend='openvino'), "
            f"got {type(model).__name__}"
        )
    xml, _ = ir_paths(path)
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov_model = model.ov_model.clone()
    meta = {
        "format_version": _FORMAT_VERSION,
        "output_spec": pytree.treespec_dumps(model.output_spec) if model.output_spec is not None else "",
        "device": model.device,
        "config": json.dumps({k: str(v) for k, v in model.config.items()}),
    }
    for key, value in meta.items():
        ov_model.set_rt_info(value, [_RT_KEY, key])
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    return xml


def _rt(ov_model: Any, key: str) -> str | None:
    if not ov_model.has_rt_info([_RT_KEY, key]):
        return None
    return ov_model.get_rt_info([_RT_KEY, key]).astype(str)


def load_openvino(
    path: str | os.PathLike[str], device: str | None = None, config: dict[str, Any] | None = None
) -> OpenVINOModule:
    """Read an IR written by ``save_openvino`` (or any OpenVINO IR) and compile it.

    ``device`` / ``config`` default to what was saved (``CPU`` for a foreign IR).
    """
    from quantfx_openvino.devices import get_core

    xml, bin_ = ir_paths(path)
    if not xml.is_file() or not bin_.is_file():
        raise FileNotFoundError(
            f"openvino load: expected an OpenVINO IR at {xml} with its weights {bin_.name} beside it; "
            "pass the .xml path, or the folder Backend.save wrote"
        )
    ov_model = get_core().read_model(str(xml))
    spec_text = _rt(ov_model, "output_spec")
    spec = pytree.treespec_loads(spec_text) if spec_text else None
    saved_config = json.loads(_rt(ov_model, "config") or "{}")
    return OpenVINOModule(
        ov_model,
        spec,
        device=device or _rt(ov_model, "device") or "CPU",
        config=saved_config if config is None else config,
    )
