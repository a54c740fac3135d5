"""Observers: modules that watch tensors during calibration and turn what they saw into scale / zero point.

The public names, constructor signatures and numerics follow
``torch/ao/quantization/observer`` (deprecated upstream), so a qconfig written
for torch.ao ports by changing its imports and produces the same qparams.

What quantfx adds, so a failed calibration is explained instead of silently
producing a bad model:

- ``node_name``: the graph node an observer watches (set by the prepare pass);
  every error an observer raises names it.
- ``is_calibrated``: whether the observer has seen data yet.
- NaN / Inf in an observed tensor raises :class:`~quantfx.errors.CalibrationError`
  (torch.ao silently propagates NaN, or drops Inf values in the histogram observer).
- ``calculate_qparams()`` before any data raises
  :class:`~quantfx.errors.UncalibratedObserverError` (torch.ao returns scale 1.0).

Dtypes are plain (``torch.uint8`` / ``torch.int8`` / ``torch.int32`` ...);
torch's quantized dtypes are accepted and normalized.
"""

from __future__ import annotations

import math
import struct
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from quantfx.dtypes import normalize_dtype
from quantfx.errors import CalibrationError, UncalibratedObserverError, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from quantfx.fake_quantize import FakeQuantizeBase

__all__ = [
    "ObserverBase",
    "UniformQuantizationObserverBase",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "FixedQParamsObserver",
    "PlaceholderObserver",
    "RecordingObserver",
    "NoopObserver",
    "ReuseInputObserver",
    "ObserverOrFakeQuantize",
    "is_observer_or_fake_quant",
    "get_observer_state_dict",
    "load_observer_state_dict",
    "default_observer",
    "default_placeholder_observer",
    "default_debug_observer",
    "default_weight_observer",
    "weight_observer_range_neg_127_to_127",
    "default_histogram_observer",
    "default_per_channel_weight_observer",
    "per_channel_weight_observer_range_neg_127_to_127",
    "default_dynamic_quant_observer",
    "default_float_qparams_observer",
    "default_float_qparams_observer_4bit",
    "default_fixed_qparams_range_neg1to1_observer",
    "default_fixed_qparams_range_0to1_observer",
    "default_symmetric_fixed_qparams_observer",
    "default_affine_fixed_qparams_observer",
    "default_reuse_input_observer",
]

_PER_TENSOR_QSCHEMES = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_PER_CHANNEL_QSCHEMES = (
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)
_SYMMETRIC_QSCHEMES = (torch.per_tensor_symmetric, torch.per_channel_symmetric)
_ALLOWED_DTYPES = tuple(
    d for d in (torch.uint8, torch.int8, torch.int16, getattr(torch, "uint16", None), torch.int32) if d is not None
)
_QUINT4X2 = getattr(torch, "quint4x2", None)
_FLOAT32_EPS: float = torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------- with_args


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - exotic __eq__: fall back to identity
        return a is b


class _PartialWrapper:
    """A picklable observer / fake-quant *constructor* with bound keyword arguments.

    ``MinMaxObserver.with_args(...)`` returns one. It is deliberately not an
    ``nn.Module`` so configs can tell a factory (one fresh observer per node)
    from a shared instance. Chained ``with_args`` calls are flattened, so
    ``factory.p.func`` is always the class and ``factory.p.keywords`` holds every
    bound argument (later calls win). Factories compare equal when they build the
    same thing, which makes ``QConfig`` equality meaningful.
    """

    def __init__(self, p: partial) -> None:
        self.p = p
        self.callable_args: dict[str, Callable[[], Any]] = {}

    def __call__(self, *args: Any, **keywords: Any) -> Any:
        for name, fn in self.callable_args.items():
            if name not in keywords:
                keywords[name] = fn()
        return self.p(*args, **keywords)

    def __repr__(self) -> str:
        return self.p.__repr__() + self.callable_args.__repr__()

    def with_args(self, **kwargs: Any) -> _PartialWrapper:
        """Bind more keyword arguments; a later value for a name replaces an earlier one."""
        result = _PartialWrapper(partial(self.p.func, *self.p.args, **{**self.p.keywords, **kwargs}))
        result.callable_args = {k: v for k, v in self.callable_args.items() if k not in kwargs}
        return result

    def with_callable_args(self, **kwargs: Callable[[], Any]) -> _PartialWrapper:
        """Bind arguments computed at construction time (each call builds a fresh value)."""
        keywords = {k: v for k, v in self.p.keywords.items() if k not in kwargs}
        result = _PartialWrapper(partial(self.p.func, *self.p.args, **keywords))
        result.callable_args = {**self.callable_args, **kwargs}
        return result

    @property
    def keywords(self) -> dict[str, Any]:
        """The bound (non-callable) keyword arguments."""
        return dict(self.p.keywords)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _PartialWrapper):
            return NotImplemented
        return (
            self.p.func is other.p.func
            and _values_equal(self.p.args, other.p.args)
            and _values_equal(self.p.keywords, other.p.keywords)
            and self.callable_args == other.callable_args
        )

    def __hash__(self) -> int:
        return hash((self.p.func, tuple(sorted(self.p.keywords)), tuple(sorted(self.callable_args))))


def _with_args(cls_or_self: Any, **kwargs: Any) -> _PartialWrapper:
    """Factory with bound constructor arguments: ``Obs.with_args(a=1).with_args(b=2)()``."""
    if isinstance(cls_or_self, _PartialWrapper):
        return cls_or_self.with_args(**kwargs)
    return _PartialWrapper(partial(cls_or_self, **kwargs))


def _with_callable_args(cls_or_self: Any, **kwargs: Callable[[], Any]) -> _PartialWrapper:
    """Factory whose given arguments are produced by calling the given functions at construction."""
    if isinstance(cls_or_self, _PartialWrapper):
        return cls_or_self.with_callable_args(**kwargs)
    return _PartialWrapper(partial(cls_or_self)).with_callable_args(**kwargs)


# --------------------------------------------------------------------------- error helpers


def _subject(obs: nn.Module) -> str:
    name = getattr(obs, "node_name", None)
    return f"node '{name}'" if name else "an unnamed observer"


def _plural(n: int, what: str) -> str:
    return f"{n} {what} value" + ("" if n == 1 else "s")


def _nonfinite_error(obs: nn.Module, x: Tensor) -> CalibrationError:
    """Build the CalibrationError for a tensor holding NaN / Inf (slow path, only on failure)."""
    x = x.detach()
    if not x.is_floating_point():
        x = x.float()
    n_nan = int(torch.isnan(x).sum())
    n_pos = int(torch.isposinf(x).sum())
    n_neg = int(torch.isneginf(x).sum())
    seen = [_plural(n, what) for n, what in ((n_nan, "NaN"), (n_pos, "+Inf"), (n_neg, "-Inf")) if n]
    if not seen:  # values overflowed float32 when converted for observation
        seen = ["values too large for float32 (they become Inf)"]
    return CalibrationError(
        f"Calibration failed at {_subject(obs)} ({type(obs).__name__}): the observed tensor "
        f"(shape {list(x.shape)}, {x.numel()} elements) contains {' and '.join(seen)}, so no finite "
        "quantization range exists. Check the calibration data and the model's outputs that feed this node "
        "(e.g. assert torch.isfinite(batch).all(); look for overflow, log/sqrt of non-positive values, "
        "division by zero, or uninitialised weights), then run calibration again. The observer's "
        "statistics were left as they were before this batch."
    )


def _uncalibrated_error(obs: nn.Module) -> UncalibratedObserverError:
    return UncalibratedObserverError(
        f"{type(obs).__name__} at {_subject(obs)} has not observed any data, so it has no scale / zero point "
        "to give. Run calibration data through the prepared model (call prepared_model(batch) on a few "
        "representative batches) before convert. If you did, the calibration inputs never reach this node "
        "(a branch not taken, a module not called): feed inputs that exercise it, or leave it in float by "
        "setting its qconfig to None in the QConfigMapping."
    )


def _all_finite(lo: Tensor, hi: Tensor) -> bool:
    """One cheap check on the reduced statistics (never on the full tensor): NaN and Inf both reach min / max."""
    if lo.device.type == "cpu" and lo.numel() <= 4096:
        # Python floats beat several tiny tensor ops by ~10x on CPU
        if lo.numel() == 1 and hi.numel() == 1:
            return math.isfinite(lo.item()) and math.isfinite(hi.item())
        return all(map(math.isfinite, lo.reshape(-1).tolist())) and all(map(math.isfinite, hi.reshape(-1).tolist()))
    return bool(torch.isfinite(lo).all() & torch.isfinite(hi).all())


def _minmax_seen(min_val: Tensor, max_val: Tensor) -> bool:
    if min_val.numel() == 0 or max_val.numel() == 0:
        return False
    return not bool(torch.all(min_val == float("inf")) & torch.all(max_val == float("-inf")))


def _round_to_dtype(value: float, dtype: torch.dtype) -> float:
    # torch compares a float32 element with a Python float in float32; do the same in pure Python
    if dtype == torch.float32:
        return struct.unpack("f", struct.pack("f", value))[0]
    return value


# --------------------------------------------------------------------------- base classes


class ObserverBase(ABC, nn.Module):
    """Base of all observers: ``forward`` records statistics and returns its input unchanged,
    ``calculate_qparams`` turns them into quantization parameters.

    Args:
        dtype: dtype of the ``quantize`` node in the reference model (plain or torch quantized dtype).
        is_dynamic: the node is quantized dynamically (qparams chosen at run time).
    """

    #: graph node this observer watches; the prepare pass sets it, errors name it
    node_name: str | None = None

    def __init__(self, dtype: torch.dtype, is_dynamic: bool = False) -> None:
        super().__init__()
        self.dtype = normalize_dtype(dtype)
        self.is_dynamic = is_dynamic
        self.node_name = None

    @abstractmethod
    def forward(self, x: Any) -> Any:
        pass

    @abstractmethod
    def calculate_qparams(self, **kwargs: Any) -> Any:
        pass

    @property
    def is_calibrated(self) -> bool:
        """True once the observer has statistics to compute qparams from (always for stateless ones)."""
        return True

    with_args = classmethod(_with_args)
    with_callable_args = classmethod(_with_callable_args)


def _calculate_qmin_qmax(
    quant_min: int | None,
    quant_max: int | None,
    has_customized_qrange: bool,
    dtype: torch.dtype,
    reduce_range: bool,
) -> tuple[int, int]:
    if has_customized_qrange:
        assert quant_min is not None and quant_max is not None
        qrange_len = quant_max - quant_min + 1
        if dtype == torch.int32:
            if not 0 < qrange_len <= 2**32:
                raise ValidationError(
                    f"quant range [{quant_min}, {quant_max}] exceeds 32 bits; use a range of at most 2**32 values"
                )
        else:
            lo, hi = int(torch.iinfo(dtype).min), int(torch.iinfo(dtype).max)
            if quant_min < lo or quant_max > hi:
                raise ValidationError(
                    f"quant range [{quant_min}, {quant_max}] does not fit dtype {dtype} ([{lo}, {hi}]); "
                    "pick quant_min / quant_max inside the dtype's range or a wider dtype"
                )
        if reduce_range:
            quant_min, quant_max = quant_min // 2, quant_max // 2
        return quant_min, quant_max
    if dtype == torch.int8:
        return (-64, 63) if reduce_range else (-128, 127)
    if dtype == torch.uint8:
        return (0, 127) if reduce_range else (0, 255)
    if dtype == torch.int32:
        return -(2**31), 2**31 - 1
    if dtype == getattr(torch, "uint16", None):
        return 0, 2**16 - 1
    if dtype == torch.int16:
        return -(2**15), 2**15 - 1
    return 0, 15


class UniformQuantizationObserverBase(ObserverBase):
    """Common base of observers that compute affine / symmetric (scale, zero point) from a min / max.

    ``_calculate_qparams`` is numerically identical to torch.ao's: symmetric
    uint8 uses zero point 128 (the midpoint of a custom range), ``reduce_range``
    drops one bit (x86 kernels without VNNI saturate otherwise), scales are
    clamped below by ``eps``, ``per_channel_affine_float_qparams`` yields float
    zero points.
    """

    # version 3 matches torch.ao so observer state_dicts load across the two
    _version = 3

    eps: Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = _FLOAT32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        factory_kwargs = torch.nn.factory_kwargs(factory_kwargs)
        four_bit = _QUINT4X2 is not None and dtype == _QUINT4X2
        super().__init__(dtype=dtype, is_dynamic=is_dynamic, **kwargs)
        self.qscheme = qscheme
        self.reduce_range = reduce_range
        self.register_buffer("eps", torch.tensor([eps], **factory_kwargs))
        if qscheme not in _PER_TENSOR_QSCHEMES + _PER_CHANNEL_QSCHEMES:
            raise ValidationError(
                f"{type(self).__name__} got qscheme {qscheme}; supported: per_tensor_affine, "
                "per_tensor_symmetric, per_channel_affine, per_channel_symmetric, per_channel_affine_float_qparams"
            )
        if self.dtype not in _ALLOWED_DTYPES:
            raise ValidationError(
                f"{type(self).__name__} got dtype {dtype}; supported: "
                + ", ".join(str(d) for d in _ALLOWED_DTYPES)
                + " (or torch.quint8 / qint8 / qint32, which map to them)"
            )
        if (quant_min is None) != (quant_max is None):
            raise ValidationError(
                f"{type(self).__name__} got quant_min={quant_min}, quant_max={quant_max}; give both or neither"
            )
        if four_bit and quant_min is None:
            quant_min, quant_max = 0, 15
        self.has_customized_qrange = quant_min is not None and quant_max is not None
        if self.has_customized_qrange:
            assert quant_min is not None and quant_max is not None
            if not quant_min <= 0 <= quant_max:
                raise ValidationError(
                    f"quant range [{quant_min}, {quant_max}] must include 0 so that 0.0 is exactly representable"
                )
            if quant_min >= quant_max:
                raise ValidationError(f"quant_min ({quant_min}) must be smaller than quant_max ({quant_max})")
        self.quant_min, self.quant_max = _calculate_qmin_qmax(
            quant_min, quant_max, self.has_customized_qrange, self.dtype, self.reduce_range
        )

    def _check_no_symmetric_unsigned_reduce_range(self) -> None:
        if self.qscheme in _SYMMETRIC_QSCHEMES and self.reduce_range and self.dtype == torch.uint8:
            raise ValidationError(
                f"{type(self).__name__}: reduce_range with symmetric uint8 quantization would put the zero "
                "point (128) outside the reduced range [0, 127]; use int8 for symmetric quantization, or "
                "an affine qscheme"
            )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version", None)
        if (version is None or version == 1) and prefix + "eps" not in state_dict:
            # eps became a buffer in version 2
            state_dict[prefix + "eps"] = torch.tensor([_FLOAT32_EPS])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_min_max(self, min_val: Tensor, max_val: Tensor) -> None:
        if min_val.numel() == 0 or max_val.numel() == 0:
            raise _uncalibrated_error(self)
        if min_val.dim() == 0 or max_val.dim() == 0:
            if bool(min_val == float("inf")) and bool(max_val == float("-inf")):
                raise _uncalibrated_error(self)
        if not _all_finite(min_val, max_val):
            raise CalibrationError(
                f"{type(self).__name__} at {_subject(self)} holds non-finite statistics "
                f"(min_val={min_val.tolist()}, max_val={max_val.tolist()}); reset the observer "
                "(reset_min_max_vals) or reload a valid state_dict, then calibrate with finite data"
            )
        if bool(torch.any(min_val > max_val)):
            raise CalibrationError(
                f"{type(self).__name__} at {_subject(self)} holds min_val > max_val "
                f"(min_val={min_val.tolist()}, max_val={max_val.tolist()}); its state is corrupted: reset it "
                "or reload a valid state_dict"
            )

    def _calculate_qparams(self, min_val: Tensor, max_val: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) for per-tensor (shape [1]) or per-channel (shape [C]) min / max."""
        self._check_min_max(min_val, max_val)
        quant_min, quant_max = self.quant_min, self.quant_max
        min_val_neg = torch.min(min_val, torch.zeros_like(min_val))
        max_val_pos = torch.max(max_val, torch.zeros_like(max_val))

        device = min_val_neg.device
        scale = torch.ones(min_val_neg.size(), dtype=torch.float32, device=device)
        zero_point = torch.zeros(min_val_neg.size(), dtype=torch.int64, device=device)

        if self.qscheme in _SYMMETRIC_QSCHEMES:
            max_val_pos = torch.max(-min_val_neg, max_val_pos)
            scale = max_val_pos / (float(quant_max - quant_min) / 2)
            scale = torch.max(scale, self.eps)
            if self.dtype == torch.uint8:
                if self.has_customized_qrange:
                    # custom range: the rounded-down midpoint
                    zero_point = zero_point.new_full(zero_point.size(), (quant_min + quant_max) // 2)
                else:
                    zero_point = zero_point.new_full(zero_point.size(), 128)
            elif self.dtype == getattr(torch, "uint16", None):
                zero_point = zero_point.new_full(zero_point.size(), 2**15)
        elif self.qscheme == torch.per_channel_affine_float_qparams:
            scale = (max_val - min_val) / float(quant_max - quant_min)
            scale = torch.where(scale > self.eps, scale, torch.ones_like(scale))
            # Xq = round((Xf - min) / scale): the zero point is -min / scale, kept in float
            zero_point = -1 * min_val / scale
        else:
            scale = (max_val_pos - min_val_neg) / float(quant_max - quant_min)
            scale = torch.max(scale, self.eps)
            zero_point = quant_min - torch.round(min_val_neg / scale).to(torch.int)
            zero_point = torch.clamp(zero_point, quant_min, quant_max)

        # per-tensor results are shape [1], like FakeQuantize's buffers
        if len(scale.shape) == 0:
            scale = torch.tensor([float(scale)], dtype=scale.dtype, device=device)
        if len(zero_point.shape) == 0:
            if self.qscheme == torch.per_channel_affine_float_qparams:
                zero_point = torch.tensor([float(zero_point)], dtype=zero_point.dtype, device=device)
            else:
                zero_point = torch.tensor([int(zero_point)], dtype=zero_point.dtype, device=device)
        return scale, zero_point

    def reset_min_max_vals(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot reset its min / max values")


# --------------------------------------------------------------------------- min / max observers


class MinMaxObserver(UniformQuantizationObserverBase):
    """Per-tensor qparams from the running min and max of everything observed.

    The default for weights (their range is known exactly) and a robust,
    cheap default for activations.
    """

    min_val: Tensor
    max_val: Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = _FLOAT32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if qscheme not in _PER_TENSOR_QSCHEMES:
            raise ValidationError(
                f"{type(self).__name__} supports per_tensor_affine and per_tensor_symmetric, got {qscheme}; "
                "use PerChannelMinMaxObserver for per-channel qschemes"
            )
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            factory_kwargs=factory_kwargs,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        factory_kwargs = torch.nn.factory_kwargs(factory_kwargs)
        self.register_buffer("min_val", torch.tensor(float("inf"), **factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **factory_kwargs))
        self._check_no_symmetric_unsigned_reduce_range()

    def forward(self, x_orig: Tensor) -> Tensor:
        """Record the running min / max of ``x_orig``; return it unchanged."""
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype)
        min_val_cur, max_val_cur = torch.aminmax(x)
        if not _all_finite(min_val_cur, max_val_cur):
            raise _nonfinite_error(self, x)
        self.min_val.copy_(torch.min(min_val_cur, self.min_val))
        self.max_val.copy_(torch.max(max_val_cur, self.max_val))
        return x_orig

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(scale, zero_point), each of shape [1]."""
        return self._calculate_qparams(self.min_val, self.max_val)

    @property
    def is_calibrated(self) -> bool:
        return _minmax_seen(self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def reset_min_max_vals(self) -> None:
        """Forget everything observed."""
        self.min_val.copy_(torch.tensor(float("inf")))
        self.max_val.copy_(torch.tensor(float("-inf")))


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Per-tensor qparams from an exponential moving average of per-batch min / max.

    Used in QAT: activations drift while training, so old extremes should fade.
    ``min = min + c * (batch_min - min)`` with ``c = averaging_constant``.
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float = _FLOAT32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if qscheme not in _PER_TENSOR_QSCHEMES:
            raise ValidationError(
                f"{type(self).__name__} supports per_tensor_affine and per_tensor_symmetric, got {qscheme}; "
                "use MovingAveragePerChannelMinMaxObserver for per-channel qschemes"
            )
        self.averaging_constant = averaging_constant
        if is_dynamic and averaging_constant != 1:
            raise ValidationError(
                f"{type(self).__name__} can only be dynamic with averaging_constant=1 (qparams of the "
                f"current batch only), got {averaging_constant}"
            )
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype)
        min_val_cur, max_val_cur = torch.aminmax(x)
        if not _all_finite(min_val_cur, max_val_cur):
            raise _nonfinite_error(self, x)
        min_val, max_val = self.min_val, self.max_val
        if min_val.item() == float("inf") and max_val.item() == float("-inf"):
            min_val, max_val = min_val_cur, max_val_cur
        else:
            min_val = min_val + self.averaging_constant * (min_val_cur - min_val)
            max_val = max_val + self.averaging_constant * (max_val_cur - max_val)
        self.min_val.copy_(min_val)
        self.max_val.copy_(max_val)
        return x_orig


class PerChannelMinMaxObserver(UniformQuantizationObserverBase):
    """Per-channel qparams (along ``ch_axis``) from running per-channel min / max.

    Weights of conv / linear layers vary a lot between output channels; one
    scale per channel keeps small channels from being crushed.
    """

    min_val: Tensor
    max_val: Tensor

    def __init__(
        self,
        ch_axis: int = 0,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_channel_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = _FLOAT32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if qscheme not in _PER_CHANNEL_QSCHEMES:
            raise ValidationError(
                f"{type(self).__name__} supports per_channel_affine, per_channel_symmetric and "
                f"per_channel_affine_float_qparams, got {qscheme}"
            )
        if is_dynamic:
            raise ValidationError(f"{type(self).__name__} does not support dynamic quantization")
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            factory_kwargs=factory_kwargs,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        factory_kwargs = torch.nn.factory_kwargs(factory_kwargs)
        self.ch_axis = ch_axis
        self.register_buffer("min_val", torch.tensor([], **factory_kwargs))
        self.register_buffer("max_val", torch.tensor([], **factory_kwargs))
        self._check_no_symmetric_unsigned_reduce_range()

    def _per_channel_view(self, x: Tensor) -> Tensor:
        """``x`` as [channels, everything else]."""
        if x.dim() == 0 or not -x.dim() <= self.ch_axis < x.dim():
            raise ValidationError(
                f"{type(self).__name__} at {_subject(self)} has ch_axis={self.ch_axis} but observed a "
                f"tensor of shape {list(x.shape)}; set ch_axis to the channel dimension of this tensor"
            )
        axes = list(range(x.dim()))
        axes[self.ch_axis] = 0
        axes[0] = self.ch_axis
        return torch.flatten(x.permute(axes).to(self.min_val.dtype), start_dim=1)

    def _check_channels(self, n: int) -> None:
        if self.min_val.numel() not in (0, n):
            raise ValidationError(
                f"{type(self).__name__} at {_subject(self)} observed {n} channels along axis "
                f"{self.ch_axis} after earlier batches with {self.min_val.numel()}; per-channel observers need a "
                "fixed channel count (reset_min_max_vals() to start over)"
            )

    def forward(self, x_orig: Tensor) -> Tensor:
        return self._forward(x_orig)

    def _forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        y = self._per_channel_view(x_orig.detach())
        min_val_cur, max_val_cur = torch.aminmax(y, dim=1)
        if not _all_finite(min_val_cur, max_val_cur):
            raise _nonfinite_error(self, x_orig)
        self._check_channels(min_val_cur.numel())
        min_val, max_val = self.min_val, self.max_val
        if min_val.numel() == 0 or max_val.numel() == 0:
            min_val, max_val = min_val_cur, max_val_cur
        else:
            min_val = torch.min(min_val_cur, min_val)
            max_val = torch.max(max_val_cur, max_val)
        self.min_val.resize_(min_val.shape)
        self.max_val.resize_(max_val.shape)
        self.min_val.copy_(min_val)
        self.max_val.copy_(max_val)
        return x_orig

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(scales, zero_points), each of shape [channels]."""
        return self._calculate_qparams(self.min_val, self.max_val)

    @property
    def is_calibrated(self) -> bool:
        return _minmax_seen(self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # the buffers start empty: resize them to the saved shape before the default copy
        version = local_metadata.get("version")
        if version is not None and version < 3:
            for old, new in (("min_vals", "min_val"), ("max_vals", "max_val")):
                if prefix + old in state_dict:
                    state_dict[prefix + new] = state_dict.pop(prefix + old)
        for name in ("min_val", "max_val"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
            elif strict:
                missing_keys.append(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, False, missing_keys, unexpected_keys, error_msgs
        )

    def reset_min_max_vals(self) -> None:
        """Forget everything observed (and the channel count)."""
        self.min_val.resize_(0)
        self.max_val.resize_(0)


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel qparams from a moving average of per-channel min / max (QAT weights)."""

    def __init__(
        self,
        averaging_constant: float = 0.01,
        ch_axis: int = 0,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_channel_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        eps: float = _FLOAT32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if qscheme not in _PER_CHANNEL_QSCHEMES:
            raise ValidationError(
                f"{type(self).__name__} supports per_channel_affine, per_channel_symmetric and "
                f"per_channel_affine_float_qparams, got {qscheme}"
            )
        if is_dynamic:
            raise ValidationError(f"{type(self).__name__} does not support dynamic quantization")
        super().__init__(
            ch_axis=ch_axis,
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        self.averaging_constant = averaging_constant

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        y = self._per_channel_view(x_orig.detach())
        min_val_cur, max_val_cur = torch.aminmax(y, dim=1)
        if not _all_finite(min_val_cur, max_val_cur):
            raise _nonfinite_error(self, x_orig)
        self._check_channels(min_val_cur.numel())
        min_val, max_val = self.min_val, self.max_val
        if min_val.numel() == 0 or max_val.numel() == 0:
            min_val, max_val = min_val_cur, max_val_cur
        else:
            min_val = min_val + self.averaging_constant * (min_val_cur - min_val)
            max_val = max_val + self.averaging_constant * (max_val_cur - max_val)
        self.min_val.resize_(min_val.shape)
        self.max_val.resize_(max_val.shape)
        self.min_val.copy_(min_val)
        self.max_val.copy_(max_val)
        return x_orig


# --------------------------------------------------------------------------- histogram


class HistogramObserver(UniformQuantizationObserverBase):
    """Per-tensor qparams that minimise the L2 quantization error over a running histogram.

    Clips outliers that would waste the integer range, which min / max cannot.
    The algorithm (histogram combine with 16x upsampling, then the non-linear
    search of caffe2's NormMinimization) is torch.ao's, step for step.
    """

    histogram: Tensor
    min_val: Tensor
    max_val: Tensor

    def __init__(
        self,
        bins: int = 2048,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        factory_kwargs: dict[str, Any] | None = None,
        eps: float = _FLOAT32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if qscheme not in _PER_TENSOR_QSCHEMES:
            raise ValidationError(
                f"{type(self).__name__} supports per_tensor_affine and per_tensor_symmetric, got {qscheme}"
            )
        if is_dynamic:
            raise ValidationError(f"{type(self).__name__} does not support dynamic quantization")
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            factory_kwargs=factory_kwargs,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        factory_kwargs = torch.nn.factory_kwargs(factory_kwargs)
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(self.bins, **factory_kwargs))
        self.register_buffer("min_val", torch.tensor(float("inf"), **factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **factory_kwargs))
        self.dst_nbins = 2 ** torch.iinfo(self.dtype).bits
        self.upsample_rate = 16  # finer bins when re-binning an old histogram into a wider range

    # -- L2 search ------------------------------------------------------------

    def _get_norm(self, delta_begin: Tensor, delta_end: Tensor, density: Tensor) -> Tensor:
        """density * integral of x^2 over [delta_begin, delta_end] (values uniform within a bin)."""
        norm = (delta_end * delta_end * delta_end - delta_begin * delta_begin * delta_begin) / 3
        return density * norm

    def _compute_quantization_error(self, next_start_bin: int, next_end_bin: int) -> float:
        """L2 error of quantizing the histogram with range [start_bin, end_bin]."""
        bin_width = (self.max_val.item() - self.min_val.item()) / self.bins
        dst_bin_width = bin_width * (next_end_bin - next_start_bin + 1) / self.dst_nbins
        if dst_bin_width == 0.0:
            return 0.0
        device = self.histogram.device
        src_bin = torch.arange(self.bins, device=device)
        src_bin_begin = (src_bin - next_start_bin) * bin_width
        src_bin_end = src_bin_begin + bin_width

        dst_bin_of_begin = torch.clamp(
            torch.div(src_bin_begin, dst_bin_width, rounding_mode="floor"), 0, self.dst_nbins - 1
        )
        dst_bin_of_begin_center = (dst_bin_of_begin + 0.5) * dst_bin_width
        dst_bin_of_end = torch.clamp(
            torch.div(src_bin_end, dst_bin_width, rounding_mode="floor"), 0, self.dst_nbins - 1
        )
        density = self.histogram / bin_width

        norm = torch.zeros(self.bins, device=device)
        delta_begin = src_bin_begin - dst_bin_of_begin_center
        delta_end = dst_bin_width / 2
        norm += self._get_norm(delta_begin, torch.ones(self.bins, device=device) * delta_end, density)
        norm += (dst_bin_of_end - dst_bin_of_begin - 1) * self._get_norm(
            torch.tensor(-dst_bin_width / 2), torch.tensor(dst_bin_width / 2), density
        )
        dst_bin_of_end_center = dst_bin_of_end * dst_bin_width + dst_bin_width / 2
        delta_begin_end = -dst_bin_width / 2
        delta_end_t = src_bin_end - dst_bin_of_end_center
        norm += self._get_norm(torch.tensor(delta_begin_end), delta_end_t, density)
        return norm.sum().item()

    def _non_linear_param_search(self) -> tuple[Tensor, Tensor]:
        """Shrink [min, max] from whichever side holds less mass while the L2 error keeps falling."""
        if self.histogram.size()[0] != self.bins:
            raise ValidationError(
                f"{type(self).__name__} at {_subject(self)} has a histogram of {self.histogram.size()[0]} bins "
                f"but was built with bins={self.bins}; load a state_dict saved with the same bins"
            )
        bin_width = (self.max_val - self.min_val) / self.bins
        total = torch.sum(self.histogram).item()
        # a Python list (not tensor indexing) keeps this loop fast; thresholds are
        # rounded to the histogram's dtype so comparisons match torch.ao's exactly
        csum = torch.cumsum(self.histogram, dim=0).tolist()
        hist_dtype = self.histogram.dtype

        stepsize = 1e-5
        alpha = 0.0
        beta = 1.0
        start_bin = 0
        end_bin = self.bins - 1
        norm_min = float("inf")

        while alpha < beta:
            next_alpha = alpha + stepsize
            next_beta = beta - stepsize
            lo_thr = _round_to_dtype(next_alpha * total, hist_dtype)
            hi_thr = _round_to_dtype(next_beta * total, hist_dtype)

            l = start_bin  # noqa: E741
            r = end_bin
            while l < end_bin and csum[l] < lo_thr:
                l += 1  # noqa: E741
            while r > start_bin and csum[r] > hi_thr:
                r -= 1

            next_start_bin = start_bin
            next_end_bin = end_bin
            if (l - start_bin) > (end_bin - r):
                next_start_bin = l
                alpha = next_alpha
            else:
                next_end_bin = r
                beta = next_beta

            if next_start_bin == start_bin and next_end_bin == end_bin:
                continue

            norm = self._compute_quantization_error(next_start_bin, next_end_bin)
            if norm > norm_min:
                break
            norm_min = norm
            start_bin = next_start_bin
            end_bin = next_end_bin

        new_min = self.min_val + bin_width * start_bin
        new_max = self.min_val + bin_width * (end_bin + 1)
        return new_min, new_max

    # -- histogram maintenance --------------------------------------------------

    def _upscale_histogram(
        self, histogram: Tensor, orig_min: Tensor, orig_max: Tensor, update_min: Tensor, update_max: Tensor
    ) -> Tensor:
        """Re-bin ``histogram`` from [orig_min, orig_max] into [update_min, update_max]."""
        histogram = histogram.repeat_interleave(self.upsample_rate) / self.upsample_rate
        bin_size = (orig_max - orig_min) / (self.bins * self.upsample_rate)
        mid_points_histogram = (
            torch.linspace(orig_min, orig_max, self.bins * self.upsample_rate + 1, device=orig_min.device)[:-1].to(
                histogram.device
            )
            + 0.5 * bin_size
        )
        boundaries_new_histogram = torch.linspace(update_min, update_max, self.bins + 1, device=update_min.device).to(
            histogram.device
        )
        bucket_assignments = torch.bucketize(mid_points_histogram, boundaries_new_histogram, right=True) - 1
        bucket_assignments[bucket_assignments >= self.bins] = self.bins - 1
        bucket_assignments[bucket_assignments < 0] = 0
        return torch.bincount(bucket_assignments, weights=histogram, minlength=self.bins)

    def _combine_histograms(
        self,
        orig_hist: Tensor,
        orig_min: Tensor,
        orig_max: Tensor,
        update_hist: Tensor,
        update_min: Tensor,
        update_max: Tensor,
    ) -> Tensor:
        if bool(update_min == orig_min) and bool(update_max == orig_max):
            return orig_hist + update_hist
        if bool(orig_min == orig_max):
            # the old histogram is a single value: drop it into the new range as a spike
            bin_value = torch.sum(orig_hist)
            transformed_orig_hist = (
                torch.histc(orig_min, bins=self.bins, min=update_min, max=update_max)  # type: ignore[arg-type]
                * bin_value
            )
            return transformed_orig_hist + update_hist
        transformed_orig_hist = self._upscale_histogram(orig_hist, orig_min, orig_max, update_min, update_max)
        return update_hist + transformed_orig_hist

    def reset_histogram(self, x: Tensor, min_val: Tensor, max_val: Tensor) -> None:
        """Start the histogram over from ``x`` with range [min_val, max_val]."""
        self.min_val.resize_(min_val.shape)
        self.min_val.copy_(min_val)
        self.max_val.resize_(max_val.shape)
        self.max_val.copy_(max_val)
        new_histogram = torch.histc(x, self.bins, min=min_val, max=max_val)  # type: ignore[arg-type]
        self.histogram.detach_().resize_(new_histogram.shape)
        self.histogram.copy_(new_histogram)

    def forward(self, x_orig: Tensor) -> Tensor:
        """Add ``x_orig`` to the running histogram (widening its range if needed); return it unchanged."""
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        if x.dtype != self.min_val.dtype:
            x = x.to(self.min_val.dtype)
        x_min, x_max = torch.aminmax(x)
        if not _all_finite(x_min, x_max):
            raise _nonfinite_error(self, x)

        current_min = self.min_val
        current_max = self.max_val
        if self.min_val.item() == float("inf") or self.max_val.item() == float("-inf"):
            self.reset_histogram(x, x_min, x_max)
            return x_orig

        new_min = torch.min(current_min, x_min).detach()
        new_max = torch.max(current_max, x_max).detach()
        update_histogram = torch.histc(x, self.bins, min=new_min, max=new_max).to(  # type: ignore[arg-type]
            self.histogram.device
        )
        if bool(new_min == current_min) and bool(new_max == current_max):
            combined_histogram = self.histogram + update_histogram
            self.histogram.detach_().resize_(combined_histogram.shape)
            self.histogram.copy_(combined_histogram)
        else:
            combined_histogram = self._combine_histograms(
                self.histogram, current_min, current_max, update_histogram, new_min, new_max
            )
            self.histogram.detach_().resize_(combined_histogram.shape)
            self.histogram.copy_(combined_histogram)
            self.min_val.detach_().resize_(new_min.shape)
            self.min_val.copy_(new_min)
            self.max_val.detach_().resize_(new_max.shape)
            self.max_val.copy_(new_max)
        return x_orig

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(scale, zero_point), each of shape [1], from the L2-optimal clipping range.

        The search costs milliseconds and bias correction and convert both ask for it, so the result is kept
        until the histogram, its range or a setting changes.
        """
        if not self.is_calibrated:
            raise _uncalibrated_error(self)
        key = self._qparams_key()
        cached = _HISTOGRAM_QPARAMS.get(self)
        if key is not None and cached is not None and _same_key(cached[0], key):
            return cached[1].clone(), cached[2].clone()
        new_min, new_max = self._non_linear_param_search()
        scale, zero_point = self._calculate_qparams(new_min, new_max)
        if key is not None:
            _HISTOGRAM_QPARAMS[self] = (key, scale.clone(), zero_point.clone())
        return scale, zero_point

    def _qparams_key(self) -> tuple | None:
        """What calculate_qparams depends on: the buffers (identity and in-place version) and the settings."""
        try:
            tensors = tuple(
                (weakref.ref(t), t._version)
                for t in (self.histogram, self.min_val, self.max_val, getattr(self, "eps", None))
                if isinstance(t, Tensor)
            )
        except RuntimeError:  # inference tensors have no version counter: do not cache
            return None
        settings = tuple(
            getattr(self, name, None)
            for name in ("bins", "dst_nbins", "upsample_rate", "dtype", "qscheme", "quant_min", "quant_max",
                         "reduce_range", "has_customized_qrange", "is_dynamic")
        )
        return tensors + settings

    @property
    def is_calibrated(self) -> bool:
        return _minmax_seen(self.min_val, self.max_val)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version", None)
        if version is None or version < 3:
            # version < 3 stored uninitialised min / max as shape [0]
            for key, fill in ((prefix + "min_val", float("inf")), (prefix + "max_val", float("-inf"))):
                if key in state_dict and state_dict[key].shape == torch.Size([0]):
                    state_dict[key] = torch.tensor(fill)
        for name in ("min_val", "max_val"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"


# --------------------------------------------------------------------------- stateless observers


class FixedQParamsObserver(ObserverBase):
    """Returns fixed qparams: for ops whose output range is known (sigmoid, tanh, hardsigmoid)."""

    scale: Tensor
    zero_point: Tensor

    def __init__(
        self,
        scale: float,
        zero_point: int,
        dtype: torch.dtype = torch.quint8,
        qscheme: torch.qscheme = torch.per_tensor_affine,
        quant_min: int = 0,
        quant_max: int = 255,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if is_dynamic:
            raise ValidationError("FixedQParamsObserver does not support dynamic quantization")
        super().__init__(dtype=dtype, is_dynamic=is_dynamic, **kwargs)
        if quant_min > quant_max:
            raise ValidationError(f"quant_min ({quant_min}) must not exceed quant_max ({quant_max})")
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int))
        self.qscheme = qscheme

    def forward(self, X: Tensor) -> Tensor:
        return X

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.scale, self.zero_point


def _no_qparams(obs: nn.Module) -> ValidationError:
    return ValidationError(
        f"{type(obs).__name__} at {_subject(obs)} only marks a dtype and has no scale / zero point; "
        "calculate_qparams is meant for observers that collect statistics (MinMaxObserver ...)"
    )


class PlaceholderObserver(ObserverBase):
    """Carries a dtype (and, for dynamic quantization, the quant range) without observing anything.

    Used for float16 and for dynamic quantization, whose qparams are chosen at run time.
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.float32,
        custom_op_name: str = "",
        compute_dtype: torch.dtype | None = None,
        quant_min: int | None = None,
        quant_max: int | None = None,
        qscheme: torch.qscheme | None = None,
        eps: float | None = None,
        is_dynamic: bool = False,
    ) -> None:
        if compute_dtype:
            # deprecated spelling of is_dynamic=True (torch.ao ignores it by mistake; quantfx honours it)
            is_dynamic = True
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.qscheme = torch.per_tensor_affine if qscheme is None else qscheme
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.eps = _FLOAT32_EPS if eps is None else eps
        self.custom_op = custom_op_name

    def forward(self, x: Any) -> Any:
        return x

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, is_dynamic={self.is_dynamic}"

    def calculate_qparams(self) -> Any:  # type: ignore[override]
        raise _no_qparams(self)


class RecordingObserver(ObserverBase):
    """Debug observer: keeps every observed tensor (memory grows with each batch)."""

    def __init__(self, dtype: torch.dtype = torch.quint8) -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        self.tensor_val: list[Tensor | None] = []

    def forward(self, x: Tensor) -> Tensor:
        self.tensor_val.append(x.clone())
        return x

    def calculate_qparams(self) -> Any:  # type: ignore[override]
        raise _no_qparams(self)

    def get_tensor_value(self) -> list[Tensor | None]:
        return self.tensor_val

    @property
    def is_calibrated(self) -> bool:
        return len(self.tensor_val) > 0


class NoopObserver(ObserverBase):
    """Carries a dtype (float16 by default) for ops that need no range."""

    def __init__(self, dtype: torch.dtype = torch.float16, custom_op_name: str = "") -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        self.custom_op = custom_op_name

    def forward(self, x: Any) -> Any:
        return x

    def calculate_qparams(self) -> Any:  # type: ignore[override]
        raise _no_qparams(self)


class ReuseInputObserver(ObserverBase):
    """Marks an op (reshape, view ...) whose output shares the observer of its input (FX graph mode only).

    ``dtype`` only states what the shared qparams will be, so that a backend
    whose activations are int8 (TensorRT, XNNPACK) accepts the pattern.
    """

    def __init__(self, dtype: torch.dtype = torch.quint8) -> None:
        super().__init__(dtype, is_dynamic=False)

    def forward(self, x: Any) -> Any:
        return x

    def calculate_qparams(self) -> Any:  # type: ignore[override]
        raise _no_qparams(self)


# --------------------------------------------------------------------------- helpers for the passes


# HistogramObserver -> (calculate_qparams key, scale, zero_point); outside the module so that neither
# deepcopy nor pickling carries it to another observer
_HISTOGRAM_QPARAMS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _same_key(a: tuple, b: tuple) -> bool:
    """Equal calculate_qparams keys: the same buffer objects at the same in-place versions, equal settings."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, tuple) and x and isinstance(x[0], weakref.ref):
            if not (isinstance(y, tuple) and y and x[0]() is not None and x[0]() is y[0]() and x[1] == y[1]):
                return False
        elif x != y:
            return False
    return True


def is_observer_or_fake_quant(module: object) -> bool:
    """True for quantfx observers and fake-quant modules (what the prepare pass inserts)."""
    from quantfx.fake_quantize import FakeQuantizeBase  # local: fake_quantize imports this module

    return isinstance(module, (ObserverBase, FakeQuantizeBase))


def __getattr__(name: str) -> Any:
    # ObserverOrFakeQuantize needs FakeQuantizeBase, which is defined in a module that imports this one
    if name == "ObserverOrFakeQuantize":
        from quantfx.fake_quantize import ObserverOrFakeQuantize

        return ObserverOrFakeQuantize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from typing import Union

    ObserverOrFakeQuantize = Union[ObserverBase, FakeQuantizeBase]


def _observer_prefixes(mod: nn.Module) -> list[str]:
    """Module paths of the outermost observers / fake-quants inside ``mod``."""
    prefixes: list[str] = []
    for name, m in mod.named_modules():
        if is_observer_or_fake_quant(m) and not any(name.startswith(p) for p in prefixes):
            prefixes.append(name + "." if name else "")
    return prefixes


def get_observer_state_dict(mod: nn.Module) -> OrderedDict[str, Tensor]:
    """The statistics of every observer / fake-quant in ``mod``: save calibration, load it elsewhere."""
    prefixes = _observer_prefixes(mod)
    full = mod.state_dict()
    od: OrderedDict[str, Tensor] = OrderedDict(
        (k, v) for k, v in full.items() if any(k.startswith(p) for p in prefixes)
    )
    od._metadata = getattr(full, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    return od


def load_observer_state_dict(mod: nn.Module, obs_dict: dict[str, Tensor]) -> None:
    """Load statistics saved by :func:`get_observer_state_dict` into the observers of ``mod``."""
    metadata = getattr(obs_dict, "_metadata", {})
    obs_dict = OrderedDict(obs_dict)
    missing: list[str] = []
    unexpected: list[str] = []
    errors: list[str] = []
    for name, module in mod.named_modules():
        if is_observer_or_fake_quant(module):
            prefix = name + "." if name else ""
            module._load_from_state_dict(
                obs_dict, prefix, metadata.get(name, {}), True, missing, unexpected, errors
            )
    if missing or errors:
        raise ValidationError(
            "observer state_dict does not match the model's observers: "
            + "; ".join([f"missing {k}" for k in missing] + errors)
            + ". Save it with get_observer_state_dict from a model prepared with the same qconfig"
        )


# --------------------------------------------------------------------------- defaults

default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
"""Static-quantization activation observer restricted to [0, 127] (safe on x86 without VNNI)."""

default_placeholder_observer = PlaceholderObserver
"""Placeholder, e.g. for float16."""

default_debug_observer = RecordingObserver
"""Debug-only observer that records tensors."""

default_weight_observer = MinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_tensor_symmetric)
"""Per-tensor symmetric int8 weights."""

weight_observer_range_neg_127_to_127 = MinMaxObserver.with_args(
    dtype=torch.int8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127, eps=2**-12
)
"""Symmetric int8 weights in [-127, 127] (excluding -128)."""

default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
"""Histogram (L2) activation observer restricted to [0, 127]."""

default_per_channel_weight_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.int8, qscheme=torch.per_channel_symmetric
)
"""Per-channel symmetric int8 weights."""

per_channel_weight_observer_range_neg_127_to_127 = PerChannelMinMaxObserver.with_args(
    dtype=torch.int8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127, eps=2**-12
)
"""Per-channel symmetric int8 weights in [-127, 127]."""

default_dynamic_quant_observer = PlaceholderObserver.with_args(
    dtype=torch.uint8, quant_min=0, quant_max=255, is_dynamic=True
)
"""Dynamic quantization of activations to uint8."""

default_float_qparams_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.uint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
)
"""Per-row float zero point (embeddings)."""

default_float_qparams_observer_4bit = PerChannelMinMaxObserver.with_args(
    dtype=torch.uint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0, quant_min=0, quant_max=15
)
"""Per-row float zero point with a 4-bit range [0, 15], stored in uint8."""

default_fixed_qparams_range_neg1to1_observer = FixedQParamsObserver.with_args(
    scale=2.0 / 256.0, zero_point=128, dtype=torch.uint8, quant_min=0, quant_max=255
)
"""Fixed qparams for outputs in [-1, 1] (tanh)."""

default_fixed_qparams_range_0to1_observer = FixedQParamsObserver.with_args(
    scale=1.0 / 256.0, zero_point=0, dtype=torch.uint8, quant_min=0, quant_max=255
)
"""Fixed qparams for outputs in [0, 1] (sigmoid, hardsigmoid, softmax)."""

default_symmetric_fixed_qparams_observer = default_fixed_qparams_range_neg1to1_observer
default_affine_fixed_qparams_observer = default_fixed_qparams_range_0to1_observer

default_reuse_input_observer = ReuseInputObserver
"""For ops like reshape that reuse their input's observer."""
