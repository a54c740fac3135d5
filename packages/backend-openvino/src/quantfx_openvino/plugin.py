"""Entry point of the ``openvino`` backend (``[project.entry-points."quantfx.backends"]``)."""

from __future__ import annotations

from typing import Any

from quantfx.plugins import hookimpl

from quantfx_openvino.backend import OpenVINOBackend

__all__ = ["quantfx_register_backends"]


@hookimpl
def quantfx_register_backends(register: Any) -> None:
    """Provide the ``openvino`` backend."""
    register(OpenVINOBackend())
