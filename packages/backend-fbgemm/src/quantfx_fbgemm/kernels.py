"""Thin layer over torch's int8 x86 CPU kernels, used by the fbgemm/x86 lowering.

Route
-----
Everything here runs on *plain* tensors: ``torch.uint8`` activations,
``torch.int8`` weights, float scales and integer zero points passed
explicitly. The kernels are oneDNN's, reached through

* ``torch.ops.onednn.qconv_prepack`` / ``qconv_pointwise`` /
  ``qconv2d_pointwise.binary`` (conv1d/2d/3d, grouped, depthwise), and
* ``torch.ops.onednn.qlinear_prepack`` / ``qlinear_pointwise`` /
  ``qlinear_pointwise.binary``,

the same ops torch's own x86 int8 compilation (inductor + X86InductorQuantizer)
emits. The older ``torch.ops.quantized.*`` route (fbgemm / x86 engines) needs
the quantized tensor dtypes (``torch.quint8`` ...) that torch 2.13 deprecates
for removal; it is *not* used for static ops. The one exception is dynamic
linear (:meth:`PackedLinear.forward_dynamic_fbgemm`): FBGEMM's
``quantized::linear_dynamic`` fuses the activation quantization into the GEMM
(1.2-2.7x faster than quantize + oneDNN), takes float in / out, and needs a
quantized dtype only to build its packed weight once (:func:`pack_fbgemm_linear`,
guarded by :func:`fbgemm_dynamic_available`; oneDNN is the fallback). See
``docs/backends/fbgemm-kernels.md`` for the measurements behind these choices.

Numerics (what the kernels compute)
-----------------------------------
For a conv / linear with uint8 input ``x`` (scale ``sx``, zero point ``zx``),
int8 weight ``w`` (per-output-channel scale ``sw[o]``, zero point 0), float
bias ``b``::

    acc[o]  = sum((x - zx) * w[o])              # exact int32 -- unless the
                                                 # CPU lacks VNNI, see below
    y[o]    = post_op(acc[o] * sx * sw[o] + b[o] [+ residual])
    out[o]  = clamp(round(y[o] / s_out) + z_out)  # or y itself for float out

Weights must be symmetric (zero point 0): oneDNN ignores weight zero points
silently, so this module rejects non-zero ones.

Overflow on CPUs without VNNI
-----------------------------
Without VNNI, the u8 x s8 multiply-add (``vpmaddubsw``) adds two adjacent
products into a *saturating int16*. 255 * 127 * 2 = 64770 > 32767, so
full-range activations times full-range weights saturate, in every route
(oneDNN and fbgemm alike). With 7-bit activations (``quant_max = 127``,
"reduce_range") the pair sum stays below 32767 and the result is exact.
:func:`needs_reduce_range` answers whether the ISA the kernels will use here
needs that.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ISA_LEVELS",
    "cpu_features",
    "hardware_isa",
    "cpu_isa",
    "has_vnni",
    "needs_reduce_range",
    "activation_quant_range",
    "onednn_int8_available",
    "fbgemm_dynamic_available",
    "pack_fbgemm_linear",
    "RECOMMENDED_ENV",
    "threading_advice",
    "quantize",
    "dequantize",
    "requantize",
    "add_requant",
    "PostOp",
    "PackedConv",
    "PackedLinear",
]

# ---------------------------------------------------------------------------
# Instruction-set detection
# ---------------------------------------------------------------------------

#: int8-relevant x86 ISA levels, weakest first.
#: ``avx2_vnni`` is AVX-VNNI (VEX-encoded vpdpbusd, e.g. Alder Lake clients);
#: ``avx512`` is AVX-512 without VNNI (Skylake-SP); ``amx_int8`` is Sapphire
#: Rapids and later.
ISA_LEVELS: tuple[str, ...] = ("default", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "amx_int8")
_VNNI_LEVELS = frozenset({"avx2_vnni", "avx512_vnni", "amx_int8"})

Route = Literal["onednn", "fbgemm"]

# ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA values -> our level (a cap on dispatch).
_ONEDNN_CAP = {
    "SSE41": "default",
    "AVX": "default",
    "AVX2": "avx2",
    "AVX2_VNNI": "avx2_vnni",
    "AVX2_VNNI_2": "avx2_vnni",
    "AVX512_CORE": "avx512",
    "AVX512_CORE_VNNI": "avx512_vnni",
    "AVX512_CORE_BF16": "avx512_vnni",
    "AVX512_CORE_FP16": "avx512_vnni",
    "AVX10_1_512": "avx512_vnni",
    "AVX512_CORE_AMX": "amx_int8",
    "AVX512_CORE_AMX_FP16": "amx_int8",
    "AVX10_1_512_AMX": "amx_int8",
    "AVX10_1_512_AMX_FP16": "amx_int8",
    "AVX10_2_512_AMX_2": "amx_int8",
}
# FBGEMM_ENABLE_INSTRUCTIONS values -> our level (FBGEMM has no AVX-VNNI and no AMX kernels).
_FBGEMM_CAP = {
    "AVX2": "avx2",
    "AVX512": "avx512",
    "AVX512_256": "avx512",
    "AVX512_E1": "avx512_vnni",
    "AVX512_E1_256": "avx512_vnni",
}


def _norm_flag(name: str) -> str:
    return name.strip().lower().replace("_", "")


@lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """CPU feature flags of this machine, normalised (lower case, no underscores).

    Union of ``torch.cpu.get_capabilities()`` (cpuinfo, torch >= 2.8) and the
    ``flags`` line of ``/proc/cpuinfo`` (Linux), so ``avx512_vnni`` /
    ``avx512vnni`` both appear as ``"avx512vnni"``.
    """
    feats: set[str] = set()
    get_caps = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get_caps is not None:
        try:
            for k, v in get_caps().items():
                if v is True:
                    feats.add(_norm_flag(k))
        except Exception:  # pragma: no cover - defensive: cpuinfo init failure
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    feats.update(_norm_flag(t) for t in line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if not feats:  # last resort: torch's dispatch level (no VNNI information)
        cap = torch.backends.cpu.get_cpu_capability().lower()
        if "avx2" in cap or "avx512" in cap:
            feats.add("avx2")
        if "avx512" in cap:
            feats.update({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
    return frozenset(feats)


def hardware_isa(features: frozenset[str] | None = None) -> str:
    """Highest int8 ISA level the CPU supports (ignores any dispatch caps)."""
    f = cpu_features() if features is None else features
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= f
    if avx512 and "avx512vnni" in f and {"amxint8", "amxtile"} <= f:
        return "amx_int8"
    if avx512 and "avx512vnni" in f:
        return "avx512_vnni"
    if avx512:
        # AVX-512 without VNNI; AVX-VNNI on such a part is still usable by oneDNN
        return "avx512"
    if "avx2" in f and "avxvnni" in f:
        return "avx2_vnni"
    if "avx2" in f:
        return "avx2"
    return "default"


def _min_level(a: str, b: str) -> str:
    return a if ISA_LEVELS.index(a) <= ISA_LEVELS.index(b) else b


def cpu_isa(route: Route = "onednn") -> str:
    """The int8 ISA level the chosen kernel route will dispatch to on this machine.

    * ``QUANTFX_CPU_ISA`` (one of :data:`ISA_LEVELS`), if set, wins: it names
      the *target* CPU, e.g. to build an artifact on a VNNI machine for an
      AVX2 fleet, or to test the non-VNNI path (for ``route="fbgemm"`` mapped
      to what FBGEMM uses on that CPU: AVX-VNNI counts as AVX2, AMX as AVX-512 VNNI).
    * Otherwise the hardware level (:func:`hardware_isa`), capped by the
      environment variables the kernel libraries honour:
      ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` for ``route="onednn"``,
      ``FBGEMM_ENABLE_INSTRUCTIONS`` for ``route="fbgemm"`` (torch.ops.quantized
      with the fbgemm / x86 engine; FBGEMM has no AVX-VNNI kernels, so an
      AVX-VNNI-only CPU counts as plain ``avx2`` there).
    """
    forced = os.environ.get("QUANTFX_CPU_ISA", "").strip().lower()
    if forced:
        if forced not in ISA_LEVELS:
            raise ValueError(f"QUANTFX_CPU_ISA={forced!r}: expected one of {', '.join(ISA_LEVELS)}")
        if route == "fbgemm":  # the target CPU as FBGEMM sees it (no AVX-VNNI, no AMX kernels)
            return {"avx2_vnni": "avx2", "amx_int8": "avx512_vnni"}.get(forced, forced)
        return forced
    level = hardware_isa()
    if route == "onednn":
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
        if cap and cap.strip().upper() in _ONEDNN_CAP:
            level = _min_level(level, _ONEDNN_CAP[cap.strip().upper()])
    elif route == "fbgemm":
        if level == "avx2_vnni":
            level = "avx2"
        if level == "amx_int8":
            level = "avx512_vnni"
        cap = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS")
        if cap and cap.strip().upper() in _FBGEMM_CAP:
            level = _min_level(level, _FBGEMM_CAP[cap.strip().upper()])
    else:
        raise ValueError(f"unknown route {route!r}; expected 'onednn' or 'fbgemm'")
    return level


def has_vnni(isa: str | None = None) -> bool:
    """Whether ``isa`` (default: :func:`cpu_isa`) accumulates u8 x s8 straight into int32."""
    return (cpu_isa() if isa is None else isa) in _VNNI_LEVELS


OpKind = Literal["gemm", "depthwise"]


def needs_reduce_range(isa: str | None = None, route: Route = "onednn", op: OpKind = "gemm") -> bool:
    """Whether activations feeding ``op`` must be limited to 7 bits (0..127) to avoid int16 saturation.

    Measured with ``bench/kernels_fbgemm.py`` (torch 2.13):

    * ``op="gemm"`` (conv with groups < channels, linear): the u8 x s8 kernels
      of oneDNN and FBGEMM saturate on ISAs without VNNI/AMX (AVX2, AVX-512
      without VNNI) for full-range activations; exact with 7-bit ones.
    * ``op="depthwise"``: oneDNN's depthwise kernels widen to int32 and never
      saturate, on any ISA; FBGEMM's depthwise kernels (torch.ops.quantized
      with the fbgemm engine) saturate on *every* ISA, VNNI included.

    ``isa`` defaults to ``cpu_isa(route)``. A tensor that feeds several ops
    needs 7 bits if any of them does.
    """
    if op == "depthwise":
        return route == "fbgemm"
    return not has_vnni(cpu_isa(route) if isa is None else isa)


def activation_quant_range(reduce_range: bool | None = None, dtype: torch.dtype = torch.uint8) -> tuple[int, int]:
    """(quant_min, quant_max) for activations; ``reduce_range=None`` asks :func:`needs_reduce_range`."""
    if reduce_range is None:
        reduce_range = needs_reduce_range()
    if dtype == torch.uint8:
        return (0, 127) if reduce_range else (0, 255)
    if dtype == torch.int8:
        return (-64, 63) if reduce_range else (-128, 127)
    raise ValueError(f"activation dtype must be torch.uint8 or torch.int8, got {dtype}")


@lru_cache(maxsize=1)
def onednn_int8_available() -> bool:
    """Whether this torch build has the oneDNN int8 ops this module calls."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.onednn
    try:
        for name in ("qconv_prepack", "qconv_pointwise", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise"):
            getattr(ops, name)
    except (AttributeError, RuntimeError):
        return False
    return True


# The one place this package touches torch's quantized dtypes: building FBGEMM's packed weight for
# quantized::linear_dynamic (see fbgemm_dynamic_available). Guarded, warning-free, and only at pack time.
_ENGINE_LOCK = threading.Lock()


def _fbgemm_engine() -> str | None:
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("fbgemm", "x86") if e in engines), None)


def pack_fbgemm_linear(weight: Tensor, weight_scale: Tensor, bias: Tensor | None) -> object:
    """FBGEMM packed weight (``quantized::linear_prepack``) of a plain int8 weight + per-channel scales.

    The quantized-dtype tensor exists only inside this call, built from the
    integers themselves (``_make_per_*_quantized_tensor``, no float round
    trip: the packed integers are exactly ``weight``). Per-tensor packing when
    all scales are equal (as torch.ao's default dynamic qconfig), per-channel
    otherwise (e.g. merged q / k / v). The engine is switched to fbgemm for the
    prepack only: the packed object carries its kernel, whatever the engine at
    call time. torch's deprecation warning for quantized dtypes is silenced here.
    """
    engine = _fbgemm_engine()
    if engine is None:
        raise RuntimeError("this torch build has no fbgemm / x86 quantized engine")
    scale = weight_scale.reshape(-1).to(torch.float64)
    with warnings.catch_warnings(), _ENGINE_LOCK:
        warnings.simplefilter("ignore")
        if bool((scale == scale[0]).all()):
            qw = torch._make_per_tensor_quantized_tensor(weight.contiguous(), float(scale[0]), 0)
        else:
            zps = torch.zeros(scale.numel(), dtype=torch.int64)
            qw = torch._make_per_channel_quantized_tensor(weight.contiguous(), scale, zps, 0)
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine
        try:
            return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float().contiguous())
        finally:
            torch.backends.quantized.engine = previous


@lru_cache(maxsize=1)
def fbgemm_dynamic_available() -> bool:
    """Whether torch's FBGEMM dynamic linear (``quantized::linear_dynamic``) runs in this process.

    It needs the quantized dtypes (deprecated for removal in torch 2.13), the
    ``quantized::linear_prepack`` / ``linear_dynamic`` / ``linear_relu_dynamic``
    ops and a CPU FBGEMM supports (AVX2+); probed with one tiny real call.
    When False, dynamic linears run on oneDNN (``qlinear_pointwise``) instead.
    """
    try:
        ops = torch.ops.quantized
        for name in ("linear_prepack", "linear_dynamic", "linear_relu_dynamic"):
            getattr(ops, name)
        if not hasattr(torch, "qint8") or _fbgemm_engine() is None:
            return False
        w = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
        packed = pack_fbgemm_linear(w, torch.tensor([0.5, 0.25]), None)
        y = ops.linear_dynamic(torch.tensor([[1.0, 2.0]]), packed, True)
        return tuple(y.shape) == (1, 2) and bool(torch.isfinite(y).all())
    except Exception:  # noqa: BLE001 - missing op / dtype / unsupported CPU: use the oneDNN route
        return False


# ---------------------------------------------------------------------------
# Threading
# ---------------------------------------------------------------------------

#: Environment for processes that run int8 models on shared / oversubscribed
#: CPUs. Must be in the environment *before* torch is imported: the OpenMP
#: runtime reads it once when it loads (setting os.environ later has no effect).
RECOMMENDED_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def threading_advice(num_threads: int | None = None) -> str | None:
    """A warning text if int8 kernels are likely to collapse under CPU contention here, else None.

    torch's Linux wheels use GNU OpenMP (libgomp). By default its threads
    spin-wait at every parallel-region barrier; when another process takes a
    core, a spinning thread burns its time slice while the thread it waits
    for is descheduled, so each region can stall for a scheduler tick. int8
    kernels are short (many regions per millisecond), so they collapse 10-100x
    (measured in ``bench/kernels_fbgemm.py``); ``OMP_WAIT_POLICY=PASSIVE`` (or
    a small ``GOMP_SPINCOUNT``) at process start fixes it. ``KMP_BLOCKTIME``
    is Intel OpenMP's knob and does nothing with libgomp.
    """
    n = torch.get_num_threads() if num_threads is None else num_threads
    if n <= 1:
        return None
    policy = os.environ.get("OMP_WAIT_POLICY", "").strip().upper()
    spin = os.environ.get("GOMP_SPINCOUNT", "").strip()
    if policy == "PASSIVE":
        return None
    if spin:  # an explicit GOMP_SPINCOUNT overrides the policy's default spin count
        mult = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(spin[-1:], 1.0)
        try:
            if float(spin[:-1] if mult != 1.0 else spin) * mult <= 10000:
                return None
        except ValueError:  # INFINITE / INFINITY / garbage
            pass
    return (
        f"int8 kernels run on {n} OpenMP threads with spin-waiting "
        f"(OMP_WAIT_POLICY={policy or 'unset'}); if other processes share these cores, latency can "
        "collapse 10-100x. Start the process with OMP_WAIT_POLICY=PASSIVE (set before torch is "
        "imported), or use torch.set_num_threads(1) per process."
    )


# ---------------------------------------------------------------------------
# Region entry / exit on plain tensors
# ---------------------------------------------------------------------------


def _dtype_bounds(dtype: torch.dtype) -> tuple[int, int]:
    info = torch.iinfo(dtype)
    return int(info.min), int(info.max)


def quantize(
    x: Tensor,
    scale: float,
    zero_point: int,
    dtype: torch.dtype = torch.uint8,
    quant_min: int | None = None,
    quant_max: int | None = None,
    memory_format: torch.memory_format | None = None,
) -> Tensor:
    """Float -> plain integer tensor: ``clamp(round(x * (1/scale)) + zero_point)``.

    Same arithmetic as ``quantfx.ops.quantize_per_tensor`` (round half to even).
    ``memory_format=torch.channels_last`` writes the result channels-last in the
    same pass (what the conv kernels want; saves a reorder per conv).
    """
    lo, hi = _dtype_bounds(dtype)
    qmin = lo if quant_min is None else quant_min
    qmax = hi if quant_max is None else quant_max
    q = torch.round(x.float() * (1.0 / scale))
    q = q.add_(zero_point).clamp_(qmin, qmax)
    if memory_format is None:
        return q.to(dtype)
    out = torch.empty(q.shape, dtype=dtype, memory_format=memory_format)
    return out.copy_(q)


def dequantize(q: Tensor, scale: float, zero_point: int) -> Tensor:
    """Plain integer tensor -> float32: ``(q - zero_point) * scale``."""
    return (q.to(torch.float32) - zero_point) * scale


def requantize(
    q: Tensor,
    in_scale: float,
    in_zero_point: int,
    out_scale: float,
    out_zero_point: int,
    dtype: torch.dtype = torch.uint8,
    quant_min: int | None = None,
    quant_max: int | None = None,
) -> Tensor:
    """Change the qparams of an integer tensor (e.g. before ``cat`` of different scales)."""
    if in_scale == out_scale and in_zero_point == out_zero_point and q.dtype == dtype:
        return q
    return quantize(dequantize(q, in_scale, in_zero_point), out_scale, out_zero_point, dtype, quant_min, quant_max)


def add_requant(
    a: Tensor,
    a_scale: float,
    a_zero_point: int,
    b: Tensor,
    b_scale: float,
    b_zero_point: int,
    out_scale: float,
    out_zero_point: int,
    relu: bool = False,
    dtype: torch.dtype = torch.uint8,
) -> Tensor:
    """Standalone quantized add (float arithmetic on the integer values).

    torch has no non-deprecated int8 elementwise add kernel; prefer fusing the
    add into the producing conv (``PackedConv(..., residual=...)``) or linear.
    """
    y = dequantize(a, a_scale, a_zero_point) + dequantize(b, b_scale, b_zero_point)
    if relu:
        y = F.relu_(y)
    return quantize(y, out_scale, out_zero_point, dtype)


# ---------------------------------------------------------------------------
# Post-ops
# ---------------------------------------------------------------------------

_CONV_UNARY = frozenset({"none", "relu", "hardtanh", "hardswish", "swish"})
_LINEAR_UNARY = frozenset({"none", "relu", "hardtanh", "hardswish", "swish", "gelu", "tanh", "leaky_relu"})


@dataclass(frozen=True)
class PostOp:
    """An activation fused into the conv / linear epilogue (applied in float, before requantization).

    ``name`` is the oneDNN attr string. Aliases accepted by :meth:`parse`:
    ``relu6`` (= hardtanh 0..6), ``silu`` (= swish), ``gelu_tanh``.
    Conv supports relu, hardtanh, hardswish, swish; linear additionally gelu,
    tanh, leaky_relu.
    """

    name: str = "none"
    args: tuple[float, ...] = ()
    algorithm: str = ""

    @staticmethod
    def parse(spec: PostOp | str | None, *args: float) -> PostOp:
        if spec is None:
            return PostOp()
        if isinstance(spec, PostOp):
            return spec
        s = spec.lower()
        if s in ("none", "identity", ""):
            return PostOp()
        if s == "relu":
            return PostOp("relu")
        if s == "relu6":
            return PostOp("hardtanh", (0.0, 6.0))
        if s == "hardtanh":
            lo, hi = (args[0], args[1]) if len(args) >= 2 else (-1.0, 1.0)
            return PostOp("hardtanh", (float(lo), float(hi)))
        if s == "hardswish":
            return PostOp("hardswish")
        if s in ("silu", "swish"):
            return PostOp("swish")
        if s == "gelu":
            return PostOp("gelu", (), "none")
        if s == "gelu_tanh":
            return PostOp("gelu", (), "tanh")
        if s == "tanh":
            return PostOp("tanh")
        if s == "leaky_relu":
            return PostOp("leaky_relu", (float(args[0]) if args else 0.01,))
        raise ValueError(f"unknown post-op {spec!r}")

    def apply_float(self, y: Tensor) -> Tensor:
        """The same activation in float (reference semantics, used by tests and fallbacks)."""
        n = self.name
        if n == "none":
            return y
        if n == "relu":
            return F.relu(y)
        if n == "hardtanh":
            return F.hardtanh(y, self.args[0], self.args[1])
        if n == "hardswish":
            return F.hardswish(y)
        if n == "swish":
            return F.silu(y)
        if n == "gelu":
            return F.gelu(y, approximate="tanh" if self.algorithm == "tanh" else "none")
        if n == "tanh":
            return torch.tanh(y)
        if n == "leaky_relu":
            return F.leaky_relu(y, self.args[0])
        raise ValueError(n)


# ---------------------------------------------------------------------------
# Packed conv / linear
# ---------------------------------------------------------------------------

_PadSpec = Union[int, Sequence[int], str]


def _tuple(v: int | Sequence[int], n: int, what: str) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = [int(i) for i in v]
    if len(v) == 1:
        return v * n
    if len(v) != n:
        raise ValueError(f"{what} needs {n} values, got {v}")
    return v


def _weight_scales(weight_scale: Tensor | float | Sequence[float], n_out: int) -> Tensor:
    s = torch.as_tensor(weight_scale, dtype=torch.float32).reshape(-1)
    if s.numel() == 1:
        s = s.expand(n_out)
    if s.numel() != n_out:
        raise ValueError(f"weight_scale has {s.numel()} entries, weight has {n_out} output channels")
    return s.contiguous().clone()


def _check_weight(weight: Tensor, weight_zero_point: Tensor | int | None) -> None:
    if weight.dtype != torch.int8:
        raise TypeError(f"weight must be a plain torch.int8 tensor, got {weight.dtype}")
    if weight_zero_point is not None and bool(torch.as_tensor(weight_zero_point).ne(0).any()):
        raise ValueError(
            "oneDNN int8 kernels need symmetric weights (zero point 0); "
            "quantize weights with a symmetric per-channel observer"
        )


def _check_out(output_dtype: torch.dtype, output_scale: float, output_zero_point: int) -> None:
    if output_dtype in (torch.float32, torch.bfloat16):
        return
    if output_dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"output_dtype must be uint8, int8, float32 or bfloat16, got {output_dtype}")
    if not (output_scale > 0 and math.isfinite(output_scale)):
        raise ValueError(f"output_scale must be positive, got {output_scale}")


@dataclass(frozen=True)
class _Residual:
    scale: float
    zero_point: int


class _PackedBase(nn.Module):
    """Common storage: int8 weight, scales and bias are buffers (saved in
    ``state_dict`` and by ``torch.save``); the oneDNN-packed weight is an
    opaque ``torch._mkldnn`` tensor that cannot be serialised, so it is built
    lazily on the first call (with that call's input shape as the layout
    hint) and dropped on pickling / ``load_state_dict``."""

    weight: Tensor
    weight_scale: Tensor
    weight_zero_point: Tensor
    bias: Tensor | None

    #: attributes holding opaque packed weights: dropped on copy / pickle / state-dict load, rebuilt lazily
    _TRANSIENT: tuple[str, ...] = ("_packed",)

    def __init__(self) -> None:
        super().__init__()
        self._packed: Tensor | None = None

    def invalidate(self) -> None:
        """Drop the packed weight (call after changing buffers in place)."""
        for k in self._TRANSIENT:
            setattr(self, k, None)

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[override]
        self.invalidate()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):  # .to(), .cpu(), ... replace the buffers
        self.invalidate()
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in self._TRANSIENT:
            state[k] = None
        return state

    def __deepcopy__(self, memo):
        import copy

        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, None if k in self._TRANSIENT else copy.deepcopy(v, memo))
        return new


class PackedConv(_PackedBase):
    """Quantized conv (1d/2d/3d, grouped, depthwise) on plain uint8 activations.

    Args:
        weight: ``torch.int8`` weight ``[out, in/groups, *kernel]``.
        weight_scale: per-output-channel scales (tensor ``[out]``) or one float.
        bias: float bias ``[out]`` or None (added in float, before the post-op).
        stride, dilation: int or per-spatial-dim sequence.
        padding: int, per-dim sequence (symmetric), a sequence of
            ``2 * spatial`` ints in ``F.pad`` order (last dim first: left,
            right, top, bottom, ...) for uneven padding, or ``"same"`` /
            ``"valid"``. Uneven padding is done in uint8 with the input zero
            point, so it never leaves the quantized region.
        groups: conv groups (``groups == in_channels`` is depthwise).
        input_scale, input_zero_point: qparams of the uint8 input.
        output_scale, output_zero_point, output_dtype: ``torch.uint8`` /
            ``torch.int8`` requantized output, or ``torch.float32`` /
            ``torch.bfloat16`` (region exit: scale 1 / zp 0 are ignored).
        post_op: :class:`PostOp` or name (``relu``, ``relu6``, ``hardtanh``,
            ``hardswish``, ``silu``). With a residual, only none / relu.
        residual: ``(scale, zero_point)`` of a residual tensor added in the
            epilogue (ResNet / MobileNet skip add): ``post_op(conv + residual)``.
            Its dtype must equal ``output_dtype`` (float residual for float out).
        weight_zero_point: must be None or all zeros.

    Call ``conv(x)`` or ``conv(x, residual_tensor)``. The output is
    channels-last (oneDNN's native layout); feed channels-last inputs to skip
    a reorder (see :func:`quantize` ``memory_format``). The residual path
    accumulates *in place* into a channels-last copy of the residual; pass
    ``residual_donated=True`` when the residual tensor is dead after this op
    and already channels-last contiguous to skip that copy.
    """

    def __init__(
        self,
        weight: Tensor,
        weight_scale: Tensor | float | Sequence[float],
        bias: Tensor | None,
        *,
        stride: int | Sequence[int] = 1,
        padding: _PadSpec = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        input_scale: float,
        input_zero_point: int,
        output_scale: float = 1.0,
        output_zero_point: int = 0,
        output_dtype: torch.dtype = torch.uint8,
        post_op: PostOp | str | None = None,
        residual: tuple[float, int] | None = None,
        weight_zero_point: Tensor | int | None = None,
    ) -> None:
        super().__init__()
        if not onednn_int8_available():
            raise RuntimeError("this torch build lacks the oneDNN int8 ops (torch.ops.onednn.qconv_pointwise)")
        _check_weight(weight, weight_zero_point)
        if weight.dim() not in (3, 4, 5):
            raise ValueError(f"conv weight must be 3-D, 4-D or 5-D, got shape {tuple(weight.shape)}")
        _check_out(output_dtype, output_scale, output_zero_point)
        nsp = weight.dim() - 2
        out_ch = weight.shape[0]
        self.spatial_dims = nsp
        self.groups = int(groups)
        self.stride = _tuple(stride, nsp, "stride")
        self.dilation = _tuple(dilation, nsp, "dilation")
        self.padding, self.pad_pre = self._resolve_padding(padding, weight.shape[2:], self.dilation, nsp)
        self.input_scale = float(input_scale)
        self.input_zero_point = int(input_zero_point)
        self.float_out = output_dtype in (torch.float32, torch.bfloat16)
        self.output_scale = 1.0 if self.float_out else float(output_scale)
        self.output_zero_point = 0 if self.float_out else int(output_zero_point)
        self.output_dtype = output_dtype
        self.post_op = PostOp.parse(post_op)
        self.residual = _Residual(float(residual[0]), int(residual[1])) if residual is not None else None
        if self.residual is None:
            if self.post_op.name not in _CONV_UNARY:
                raise ValueError(f"conv post-op {self.post_op.name!r} unsupported; use one of {sorted(_CONV_UNARY)}")
        else:
            if nsp != 2:
                raise ValueError("a fused residual add needs a 2-D conv (oneDNN qconv2d_pointwise.binary)")
            if self.post_op.name not in ("none", "relu"):
                raise ValueError("with a residual add, the post-op must be none or relu")
        self.register_buffer("weight", weight.detach().contiguous())
        self.register_buffer("weight_scale", _weight_scales(weight_scale, out_ch))
        self.register_buffer("weight_zero_point", torch.zeros(out_ch, dtype=torch.int64))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @staticmethod
    def _resolve_padding(
        padding: _PadSpec, ksize: Sequence[int], dilation: Sequence[int], nsp: int
    ) -> tuple[list[int], list[int] | None]:
        """-> (symmetric padding for the kernel, uneven F.pad spec applied beforehand or None)."""
        if isinstance(padding, str):
            if padding == "valid":
                return [0] * nsp, None
            if padding != "same":
                raise ValueError(f"padding string must be 'same' or 'valid', got {padding!r}")
            # torch's 'same': total = dilation * (k - 1), the odd pixel goes right/bottom
            per_dim = []
            for d in range(nsp):
                total = dilation[d] * (int(ksize[d]) - 1)
                per_dim.append((total // 2, total - total // 2))
            p = [v for lo, hi in reversed(per_dim) for v in (lo, hi)]
        elif isinstance(padding, int):
            return [padding] * nsp, None
        else:
            p = [int(v) for v in padding]
            if len(p) in (1, nsp):
                return _tuple(p, nsp, "padding"), None
            if len(p) != 2 * nsp:
                raise ValueError(f"padding {p}: expected {nsp} symmetric or {2 * nsp} per-side values")
        # F.pad order: (last_lo, last_hi, prev_lo, prev_hi, ...)
        sym = []
        for d in range(nsp):
            lo, hi = p[2 * (nsp - 1 - d)], p[2 * (nsp - 1 - d) + 1]
            if lo != hi:
                return [0] * nsp, p
            sym.append(lo)
        return sym, None

    def _pack(self, x_shape: Sequence[int] | None) -> Tensor:
        return torch.ops.onednn.qconv_prepack(
            self.weight,
            self.weight_scale,
            self.input_scale,
            self.input_zero_point,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            list(x_shape) if x_shape is not None else None,
        )

    def forward(self, x: Tensor, residual: Tensor | None = None, residual_donated: bool = False) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"PackedConv input must be torch.uint8, got {x.dtype}")
        if self.pad_pre is not None:
            # uneven padding, done in uint8 with the zero point (= float 0.0)
            x = F.pad(x, self.pad_pre, mode="constant", value=self.input_zero_point)
        if self._packed is None:
            self._packed = self._pack(x.shape)
        common = (self.stride, self.padding, self.dilation, self.groups)
        if self.residual is None:
            if residual is not None:
                raise ValueError("this PackedConv was built without residual=(scale, zp)")
            return torch.ops.onednn.qconv_pointwise.default(
                x, self.input_scale, self.input_zero_point, self._packed,
                self.weight_scale, self.weight_zero_point, self.bias, *common,
                self.output_scale, self.output_zero_point, self.output_dtype,
                self.post_op.name, list(self.post_op.args), self.post_op.algorithm,
            )  # fmt: skip
        if residual is None:
            raise ValueError("this PackedConv fuses a residual add: call conv(x, residual)")
        if residual.dtype != self.output_dtype:
            raise TypeError(f"residual dtype {residual.dtype} must equal output_dtype {self.output_dtype}")
        # oneDNN's 'sum' post-op accumulates into the residual buffer in place,
        # and wants it channels-last contiguous.
        if not (residual_donated and residual.is_contiguous(memory_format=torch.channels_last)):
            residual = residual.clone(memory_format=torch.channels_last)
        return torch.ops.onednn.qconv2d_pointwise.binary(
            x, self.input_scale, self.input_zero_point, self._packed,
            self.weight_scale, self.weight_zero_point, residual, self.bias, *common,
            self.output_scale, self.output_zero_point, self.output_dtype,
            self.residual.scale, self.residual.zero_point, "sum", 1.0,
            self.post_op.name, list(self.post_op.args), self.post_op.algorithm,
        )  # fmt: skip

    def extra_repr(self) -> str:
        w = self.weight
        return (
            f"{w.shape[1] * self.groups}, {w.shape[0]}, kernel_size={tuple(w.shape[2:])}, stride={self.stride}, "
            f"padding={self.padding if self.pad_pre is None else self.pad_pre}, dilation={self.dilation}, "
            f"groups={self.groups}, in=({self.input_scale:.4g}, {self.input_zero_point}), "
            f"out=({self.output_scale:.4g}, {self.output_zero_point}, {self.output_dtype}), post_op={self.post_op.name}"
            + (f", residual=({self.residual.scale:.4g}, {self.residual.zero_point})" if self.residual else "")
        )


class PackedLinear(_PackedBase):
    """Quantized linear on plain uint8 activations of any rank ``[..., in_features]``.

    Args mirror :class:`PackedConv`. ``post_op`` also accepts gelu,
    gelu_tanh, tanh, leaky_relu. ``residual=(scale, zp)`` fuses
    ``post_op(linear(x) + residual)`` (transformer skip add); the residual
    must have ``output_dtype``. With an integer output the kernel accumulates
    into the residual in place, so it is copied first unless
    ``residual_donated=True`` (residual dead after this op, contiguous).

    :meth:`forward_dynamic` runs dynamic quantization (per-tensor qparams of
    the float input chosen at run time, float output), the classic fbgemm
    recipe for BERT-style models, on oneDNN; :meth:`forward_dynamic_fbgemm`
    runs it on FBGEMM's ``quantized::linear_dynamic`` (activation quantization
    fused into the kernel; 1.2-2.7x faster, see docs/backends/fbgemm-kernels.md).
    """

    _TRANSIENT = ("_packed", "_packed_fbgemm")

    def __init__(
        self,
        weight: Tensor,
        weight_scale: Tensor | float | Sequence[float],
        bias: Tensor | None,
        *,
        input_scale: float = 1.0,
        input_zero_point: int = 0,
        output_scale: float = 1.0,
        output_zero_point: int = 0,
        output_dtype: torch.dtype = torch.uint8,
        post_op: PostOp | str | None = None,
        residual: tuple[float, int] | None = None,
        weight_zero_point: Tensor | int | None = None,
    ) -> None:
        super().__init__()
        if not onednn_int8_available():
            raise RuntimeError("this torch build lacks the oneDNN int8 ops (torch.ops.onednn.qlinear_pointwise)")
        _check_weight(weight, weight_zero_point)
        if weight.dim() != 2:
            raise ValueError(f"linear weight must be 2-D, got shape {tuple(weight.shape)}")
        _check_out(output_dtype, output_scale, output_zero_point)
        out_f = weight.shape[0]
        self.in_features = int(weight.shape[1])
        self.out_features = int(out_f)
        self.input_scale = float(input_scale)
        self.input_zero_point = int(input_zero_point)
        self.float_out = output_dtype in (torch.float32, torch.bfloat16)
        self.output_scale = 1.0 if self.float_out else float(output_scale)
        self.output_zero_point = 0 if self.float_out else int(output_zero_point)
        self.output_dtype = output_dtype
        self.post_op = PostOp.parse(post_op)
        if self.post_op.name not in _LINEAR_UNARY:
            raise ValueError(f"linear post-op {self.post_op.name!r} unsupported; use one of {sorted(_LINEAR_UNARY)}")
        self.residual = _Residual(float(residual[0]), int(residual[1])) if residual is not None else None
        self.register_buffer("weight", weight.detach().contiguous())
        self.register_buffer("weight_scale", _weight_scales(weight_scale, out_f))
        self.register_buffer("weight_zero_point", torch.zeros(out_f, dtype=torch.int64))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self._packed_fbgemm: object | None = None

    def _pack(self, x_shape: Sequence[int] | None) -> Tensor:
        shape = None
        if x_shape is not None and len(x_shape) >= 2:
            shape = [int(math.prod(x_shape[:-1])), int(x_shape[-1])]
        return torch.ops.onednn.qlinear_prepack(self.weight, shape)

    def forward(self, x: Tensor, residual: Tensor | None = None, residual_donated: bool = False) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"PackedLinear input must be torch.uint8, got {x.dtype}")
        if self._packed is None:
            self._packed = self._pack(x.shape)
        if self.residual is None:
            if residual is not None:
                raise ValueError("this PackedLinear was built without residual=(scale, zp)")
            return torch.ops.onednn.qlinear_pointwise.default(
                x, self.input_scale, self.input_zero_point, self._packed,
                self.weight_scale, self.weight_zero_point, self.bias,
                self.output_scale, self.output_zero_point, self.output_dtype,
                self.post_op.name, list(self.post_op.args), self.post_op.algorithm,
            )  # fmt: skip
        if residual is None:
            raise ValueError("this PackedLinear fuses a residual add: call linear(x, residual)")
        if residual.dtype != self.output_dtype:
            raise TypeError(f"residual dtype {residual.dtype} must equal output_dtype {self.output_dtype}")
        if self.float_out:
            # 'add' reads the float residual as is (it ignores scale / zero point)
            binary, residual = "add", residual.contiguous()
        else:
            # 'sum' dequantizes an integer residual with (scale, zp) but
            # accumulates into it in place
            binary = "sum"
            if not (residual_donated and residual.is_contiguous()):
                residual = residual.clone(memory_format=torch.contiguous_format)
        return torch.ops.onednn.qlinear_pointwise.binary(
            x, self.input_scale, self.input_zero_point, self._packed,
            self.weight_scale, self.weight_zero_point, residual, self.bias,
            self.output_scale, self.output_zero_point, self.output_dtype,
            self.residual.scale, self.residual.zero_point, binary, 1.0,
            self.post_op.name, list(self.post_op.args), self.post_op.algorithm,
        )  # fmt: skip

    def forward_dynamic(self, x: Tensor, reduce_range: bool | None = None) -> Tensor:
        """Dynamic quantization: uint8-quantize float ``x`` with its own min/max, return float32.

        ``reduce_range=None`` asks :func:`needs_reduce_range`. The instance must
        have been built with a float ``output_dtype`` and no residual.
        """
        if not self.float_out or self.residual is not None:
            raise ValueError("forward_dynamic needs output_dtype=float32/bfloat16 and no residual")
        qmin, qmax = activation_quant_range(reduce_range)
        lo = min(float(x.min()), 0.0)
        hi = max(float(x.max()), 0.0)
        scale = max((hi - lo) / (qmax - qmin), 1e-8)
        zp = int(min(max(qmin - round(lo / scale), qmin), qmax))
        return self.forward_prequantized(quantize(x, scale, zp, torch.uint8, qmin, qmax), scale, zp)

    def forward_prequantized(self, xq: Tensor, scale: float, zero_point: int) -> Tensor:
        """The dynamic route's GEMM on an input already quantized with its own ``(scale, zero_point)``; float out."""
        if self._packed is None:
            self._packed = self._pack(xq.shape)
        return torch.ops.onednn.qlinear_pointwise.default(
            xq, scale, zero_point, self._packed, self.weight_scale, self.weight_zero_point, self.bias,
            1.0, 0, self.output_dtype, self.post_op.name, list(self.post_op.args), self.post_op.algorithm,
        )  # fmt: skip

    def forward_dynamic_fbgemm(self, x: Tensor, reduce_range: bool) -> Tensor:
        """Dynamic quantization on FBGEMM: ``quantized::linear_dynamic`` (``linear_relu_dynamic`` for a ReLU post-op).

        The kernel picks the activation qparams itself (min/max of ``x``,
        0..127 with ``reduce_range`` else 0..255) and quantizes while packing,
        so no separate quantize pass exists. Needs :func:`fbgemm_dynamic_available`;
        the packed weight is built from the stored int8 weight on the first call.
        """
        if not self.float_out or self.residual is not None or self.post_op.name not in ("none", "relu"):
            raise ValueError("forward_dynamic_fbgemm needs float output, no residual and post_op none or relu")
        if getattr(self, "_packed_fbgemm", None) is None:  # (absent in artifacts written before this route)
            self._packed_fbgemm = pack_fbgemm_linear(self.weight, self.weight_scale, self.bias)
        op = torch.ops.quantized.linear_relu_dynamic if self.post_op.name == "relu" else torch.ops.quantized.linear_dynamic
        y = op(x if x.dtype == torch.float32 else x.float(), self._packed_fbgemm, bool(reduce_range))
        return y if self.output_dtype == torch.float32 else y.to(self.output_dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"in=({self.input_scale:.4g}, {self.input_zero_point}), "
            f"out=({self.output_scale:.4g}, {self.output_zero_point}, {self.output_dtype}), post_op={self.post_op.name}"
            + (f", residual=({self.residual.scale:.4g}, {self.residual.zero_point})" if self.residual else "")
        )
