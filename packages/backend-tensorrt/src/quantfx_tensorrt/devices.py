"""What this machine lacks for TensorRT engines: the Python packages, the NVIDIA driver, a GPU.

The GPU probe talks to the CUDA driver library directly (``cuInit`` /
``cuDeviceGetCount`` through ctypes), so it needs neither a CUDA build of
torch nor the CUDA toolkit, and it can tell "no driver" from "driver but no
GPU".
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from dataclasses import dataclass, field

__all__ = ["GpuProbe", "probe_gpus", "missing_packages", "ENGINE_EXTRA_HINT"]

ENGINE_EXTRA_HINT = "pip install 'quantfx-backend-tensorrt[engine]'"

#: import name -> distribution to install
_ENGINE_PACKAGES = {"tensorrt": "tensorrt", "cuda": "cuda-python"}


@dataclass(frozen=True)
class GpuProbe:
    """The CUDA devices the driver reports, or why there are none."""

    names: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.names)


def _driver_library() -> ctypes.CDLL:
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    return ctypes.CDLL(name)


def probe_gpus() -> GpuProbe:
    """List NVIDIA GPUs through the CUDA driver API; ``reason`` says why none were found."""
    try:
        cuda = _driver_library()
    except OSError:
        return GpuProbe(reason="the NVIDIA driver library (libcuda.so.1) is not installed")
    rc = cuda.cuInit(0)
    if rc != 0:
        why = "no CUDA-capable device" if rc == 100 else f"CUDA driver error {rc}"
        return GpuProbe(reason=f"the NVIDIA driver is installed but cuInit failed ({why})")
    count = ctypes.c_int(0)
    rc = cuda.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value == 0:
        return GpuProbe(reason="the NVIDIA driver reports no CUDA device")
    names = []
    for i in range(count.value):
        dev = ctypes.c_int(0)
        buf = ctypes.create_string_buffer(256)
        if cuda.cuDeviceGet(ctypes.byref(dev), i) == 0 and cuda.cuDeviceGetName(buf, 256, dev) == 0:
            names.append(buf.value.decode(errors="replace"))
        else:
            names.append(f"CUDA device {i}")
    return GpuProbe(names=names)


def missing_packages() -> list[str]:
    """Distributions of the ``engine`` extra that are not installed (by pip name)."""
    return [dist for mod, dist in _ENGINE_PACKAGES.items() if importlib.util.find_spec(mod) is None]
