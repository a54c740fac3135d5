"""Entry point of the ``qnnpack`` backend (``[project.entry-points."quantfx.backends"]``)."""

from __future__ import annotations

from typing import Any

from quantfx.plugins import hookimpl

from quantfx_qnnpack.backend import QnnpackBackend

__all__ = ["quantfx_register_backends"]


@hookimpl
def quantfx_register_backends(register: Any) -> None:
    """Provide the ``qnnpack`` backend."""
    register(QnnpackBackend())
