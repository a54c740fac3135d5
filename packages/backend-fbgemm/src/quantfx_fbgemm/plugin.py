"""Entry point of the ``x86`` and ``fbgemm`` backends (``[project.entry-points."quantfx.backends"]``)."""

from __future__ import annotations

from typing import Any

from quantfx.plugins import hookimpl

from quantfx_fbgemm.backend import FbgemmBackend, X86Backend

__all__ = ["quantfx_register_backends"]


@hookimpl
def quantfx_register_backends(register: Any) -> None:
    """Provide ``x86`` (the default on x86 machines) and ``fbgemm`` (torch.ao's fbgemm defaults)."""
    register(X86Backend())
    register(FbgemmBackend())
