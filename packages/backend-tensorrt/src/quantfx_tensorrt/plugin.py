"""Entry point of the ``tensorrt`` backend (``[project.entry-points."quantfx.backends"]``).

Imports nothing heavy: ``tensorrt`` and the GPU are only looked at when
``quantfx.backends()`` asks for availability or a model is lowered.
"""

from __future__ import annotations

from typing import Any

from quantfx.plugins import hookimpl

from quantfx_tensorrt.backend import TensorRTBackend

__all__ = ["quantfx_register_backends"]


@hookimpl
def quantfx_register_backends(register: Any) -> None:
    """Provide the ``tensorrt`` backend."""
    register(TensorRTBackend())
