"""Which OpenVINO devices exist here, and whether this CPU's int8 instructions can overflow.

Two facts decide how a model is quantized and run: the devices OpenVINO sees
(``CPU``, ``GPU``, ``NPU``; ``AUTO`` picks among them) and, for the CPU,
whether it has a VNNI / AMX int8 dot product. Without one, oneDNN multiplies
u8 activations by i8 weights with ``vpmaddubsw``, which saturates at int16:
full-range 8-bit weights then overflow inside the kernel, so the default
qconfig quantizes weights to 7 bits there (NNCF's ``overflow_fix``), without
the user having to know the flag.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess

__all__ = [
    "VIRTUAL_DEVICES",
    "available_devices",
    "cpu_has_int8_dot_product",
    "cpu_needs_overflow_fix",
    "device_names",
    "get_core",
]

#: Devices OpenVINO accepts that are not hardware but pick or combine hardware.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")

# CPU flags (as Linux /proc/cpuinfo and macOS sysctl spell them) of an int8 dot product
# that accumulates u8 x s8 in 32 bits without an int16 intermediate.
_INT8_DOT_FLAGS = ("avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni", "amx_int8", "amx-int8")


@functools.lru_cache(maxsize=1)
def get_core():
    """One shared ``openvino.Core`` (creating one per call costs plugin loading)."""
    import openvino as ov

    return ov.Core()


def available_devices() -> list[str]:
    """Hardware devices OpenVINO can use here (``["CPU"]``, ``["CPU", "GPU.0", "NPU"]`` ...)."""
    return list(get_core().available_devices)


def device_names() -> dict[str, str]:
    """``{device: full name}`` for every available device, for availability reports."""
    core = get_core()
    names = {}
    for dev in core.available_devices:
        try:
            names[dev] = str(core.get_property(dev, "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001 - a device that cannot name itself is still listed
            names[dev] = dev
    return names


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags, or None when this OS does not tell us."""
    override = os.environ.get("QUANTFX_OPENVINO_CPU_FLAGS")
    if override is not None:  # tests and unusual platforms
        return {f.strip().lower() for f in override.replace(",", " ").split() if f.strip()}
    system = platform.system()
    if system == "Linux":
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        return set(line.split(":", 1)[1].split())
        except OSError:
            return None
        return None
    if system == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return {f.lower() for f in out.split()} or None
    return None


def cpu_has_int8_dot_product() -> bool:
    """Whether the CPU has VNNI / AMX int8 (no u8 x s8 saturation); False when the OS does not say."""
    flags = _cpu_flags()
    if not flags:
        return False
    return any(f in flags for f in _INT8_DOT_FLAGS)


_X86_MACHINES = {"x86_64", "amd64", "x64", "i386", "i686", "x86"}


def cpu_needs_overflow_fix() -> bool:
    """Whether full-range int8 weights can saturate in this CPU's int8 kernels (x86 without VNNI / AMX).

    Unknown x86 CPUs count as needing it: 7-bit weights cost a little
    precision, an int16 overflow costs the model. Non-x86 CPUs (ARM) do not
    use ``vpmaddubsw`` and never need it.
    """
    if os.environ.get("QUANTFX_OPENVINO_CPU_FLAGS") is None and platform.machine().lower() not in _X86_MACHINES:
        return False
    return not cpu_has_int8_dot_product()
