"""Fake-quantize modules: observe, then quantize-dequantize in float, so QAT trains against int8 rounding.

Same names and numerics as ``torch/ao/quantization/fake_quantize``. The
rounding itself is torch's core ops (``torch.fake_quantize_per_tensor_affine``,
``torch.fake_quantize_per_channel_affine``, ``torch.fused_moving_avg_obs_fake_quant``),
which carry the straight-through gradient.

A fake-quant mirrors its inner observer (``activation_post_process``):
``node_name`` set on it reaches the observer so errors name the node,
``is_calibrated`` and ``calculate_qparams()`` come from the observer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Union

import torch
from torch import Tensor, nn

from quantfx.dtypes import normalize_dtype
from quantfx.errors import ValidationError
from quantfx.observers import (
    FixedQParamsObserver,
    HistogramObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    ObserverBase,
    _all_finite,
    _nonfinite_error,
    _PartialWrapper,
    _with_args,
    _with_callable_args,
    default_fixed_qparams_range_0to1_observer,
    default_fixed_qparams_range_neg1to1_observer,
)

__all__ = [
    "FakeQuantizeBase",
    "FakeQuantize",
    "FixedQParamsFakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "ObserverOrFakeQuantize",
    "disable_fake_quant",
    "disable_observer",
    "enable_fake_quant",
    "enable_observer",
    "default_fake_quant",
    "default_weight_fake_quant",
    "default_dynamic_fake_quant",
    "default_fixed_qparams_range_neg1to1_fake_quant",
    "default_fixed_qparams_range_0to1_fake_quant",
    "default_symmetric_fixed_qparams_fake_quant",
    "default_affine_fixed_qparams_fake_quant",
    "default_per_channel_weight_fake_quant",
    "default_embedding_fake_quant",
    "default_histogram_fake_quant",
    "default_fused_act_fake_quant",
    "default_fused_wt_fake_quant",
    "default_fused_per_channel_wt_fake_quant",
    "fused_wt_fake_quant_range_neg_127_to_127",
    "fused_per_channel_wt_fake_quant_range_neg_127_to_127",
]

_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)


class FakeQuantizeBase(ABC, nn.Module):
    """Base of fake-quant modules.

    ``fake_quant_enabled`` / ``observer_enabled`` are uint8 buffers (not Python
    bools) so DDP broadcasts them and they survive ``state_dict``.
    """

    fake_quant_enabled: Tensor
    observer_enabled: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.uint8))
        self.__dict__["_node_name"] = None

    @abstractmethod
    def forward(self, x: Any) -> Any:
        pass

    @abstractmethod
    def calculate_qparams(self, **kwargs: Any) -> Any:
        pass

    def enable_fake_quant(self, enabled: bool = True) -> None:
        self.fake_quant_enabled[0] = 1 if enabled else 0

    def disable_fake_quant(self) -> None:
        self.enable_fake_quant(False)

    def enable_observer(self, enabled: bool = True) -> None:
        self.observer_enabled[0] = 1 if enabled else 0

    def disable_observer(self) -> None:
        self.enable_observer(False)

    with_args = classmethod(_with_args)
    with_callable_args = classmethod(_with_callable_args)

    @property
    def node_name(self) -> str | None:
        """Graph node this fake-quant sits on; setting it names the inner observer too."""
        obs = self._modules.get("activation_post_process")
        if obs is not None and getattr(obs, "node_name", None) is not None:
            return obs.node_name
        return self.__dict__.get("_node_name")

    @node_name.setter
    def node_name(self, value: str | None) -> None:
        self.__dict__["_node_name"] = value
        obs = self._modules.get("activation_post_process")
        if obs is not None:
            obs.node_name = value

    @property
    def is_calibrated(self) -> bool:
        """Whether the inner observer has seen data (True when there is nothing to observe)."""
        obs = self._modules.get("activation_post_process")
        return bool(getattr(obs, "is_calibrated", True)) if obs is not None else True


class FakeQuantize(FakeQuantizeBase):
    """Observe ``X`` with ``activation_post_process``, then output
    ``(clamp(round(X / scale + zero_point), quant_min, quant_max) - zero_point) * scale``.

    Args:
        observer: observer class or ``with_args`` factory.
        quant_min, quant_max: integer range (forwarded to the observer).
        is_dynamic: placeholder for a dynamically quantized node.
        observer_kwargs: more arguments for the observer.
    """

    scale: Tensor
    zero_point: Tensor

    def __init__(
        self,
        observer: Any = MovingAverageMinMaxObserver,
        quant_min: int | None = None,
        quant_max: int | None = None,
        is_dynamic: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        if quant_min is not None and quant_max is not None:
            if quant_min > quant_max:
                raise ValidationError(f"quant_min ({quant_min}) must not exceed quant_max ({quant_max})")
            dtype = observer_kwargs.get("dtype", torch.quint8)
            if isinstance(observer, _PartialWrapper):
                dtype = observer.p.keywords.get("dtype", dtype)
            dtype = normalize_dtype(dtype)
            if dtype.is_floating_point:
                raise ValidationError(f"{type(self).__name__} needs an integer dtype, got {dtype}")
            info = torch.iinfo(dtype)
            if quant_min < info.min or quant_max > info.max:
                raise ValidationError(
                    f"quant range [{quant_min}, {quant_max}] does not fit dtype {dtype} ([{info.min}, {info.max}])"
                )
            observer_kwargs.update({"quant_min": quant_min, "quant_max": quant_max})
        observer_kwargs["is_dynamic"] = is_dynamic
        self.activation_post_process = observer(**observer_kwargs)
        obs = self.activation_post_process
        if not isinstance(obs, ObserverBase):
            raise ValidationError(
                f"{type(self).__name__}'s observer must build a quantfx observer, got {type(obs).__name__}"
            )
        # kept for torch.ao compatibility; the observer's values are the source of truth
        self.quant_min = obs.quant_min
        self.quant_max = obs.quant_max
        self.is_dynamic = obs.is_dynamic
        zero_point_dtype = torch.float if obs.qscheme == torch.per_channel_affine_float_qparams else torch.int
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([0], dtype=zero_point_dtype))
        self.dtype = obs.dtype
        self.qscheme = obs.qscheme
        self.ch_axis = obs.ch_axis if hasattr(obs, "ch_axis") else -1
        if self.qscheme not in _PER_TENSOR + _PER_CHANNEL:
            raise ValidationError(
                f"{type(self).__name__} supports per-tensor and per-channel qschemes, got {self.qscheme}"
            )
        self.is_per_channel = self.qscheme in _PER_CHANNEL

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """The observer's current (scale, zero_point); raises if it saw no data."""
        return self.activation_post_process.calculate_qparams()

    def forward(self, X: Tensor) -> Tensor:
        if self.observer_enabled[0] == 1:
            self.activation_post_process(X.detach())
            # an empty first batch leaves the observer uncalibrated: keep the current qparams
            if X.numel() > 0 or self.activation_post_process.is_calibrated:
                _scale, _zero_point = self.calculate_qparams()
                _scale = _scale.to(self.scale.device)
                _zero_point = _zero_point.to(self.zero_point.device)
                if self.scale.shape != _scale.shape:
                    self.scale.resize_(_scale.shape)
                    self.zero_point.resize_(_zero_point.shape)
                self.scale.copy_(_scale)
                self.zero_point.copy_(_zero_point)
        if self.fake_quant_enabled[0] == 1:
            if self.is_per_channel:
                X = torch.fake_quantize_per_channel_affine(
                    X,
                    self.scale,
                    self.zero_point,
                    self.ch_axis,
                    self.activation_post_process.quant_min,
                    self.activation_post_process.quant_max,
                )
            else:
                X = torch.fake_quantize_per_tensor_affine(
                    X,
                    self.scale,
                    self.zero_point,
                    self.activation_post_process.quant_min,
                    self.activation_post_process.quant_max,
                )
        return X

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"quant_min={self.activation_post_process.quant_min}, "
            f"quant_max={self.activation_post_process.quant_max}, "
            f"dtype={self.dtype}, qscheme={self.qscheme}, ch_axis={self.ch_axis}, "
            f"scale={self.scale}, zero_point={self.zero_point}"
        )

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "scale"] = self.scale
        destination[prefix + "zero_point"] = self.zero_point

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
        # per-channel scale / zero_point start as [1]: resize to the saved shape before copying
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict:
                getattr(self, name).resize_(state_dict[key].shape)
            elif strict:
                missing_keys.append(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class FixedQParamsFakeQuantize(FakeQuantize):
    """Fake-quant with the fixed qparams of a :class:`~quantfx.observers.FixedQParamsObserver` (sigmoid, tanh)."""

    def __init__(self, observer: Any) -> None:
        super().__init__(observer=observer)
        if type(self.activation_post_process) is not FixedQParamsObserver:
            raise ValidationError(
                f"{type(self).__name__}'s observer must be a FixedQParamsObserver, got "
                f"{type(self.activation_post_process).__name__}"
            )
        self._observer_ctr = observer
        self.scale = self.activation_post_process.scale
        self.zero_point = self.activation_post_process.zero_point
        if self.qscheme not in _PER_TENSOR:
            raise ValidationError(f"{type(self).__name__} supports per-tensor qschemes only, got {self.qscheme}")

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.scale, self.zero_point

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"scale={self.scale}, zero_point={self.zero_point}, "
            f"dtype={self.dtype}, quant_min={self.activation_post_process.quant_min}, "
            f"quant_max={self.activation_post_process.quant_max}, qscheme={self.qscheme}"
        )


class FusedMovingAvgObsFakeQuantize(FakeQuantize):
    """Moving-average observation, qparams and fake-quant in one kernel (faster QAT).

    Runs ``torch.fused_moving_avg_obs_fake_quant`` exactly as torch.ao does, so
    its in-training qparams follow that kernel (symmetric ranges are nudged the
    way fbgemm's ``ChooseQuantizationParams`` does), while ``calculate_qparams()``
    - what convert uses - comes from the observer, as in torch.ao.
    """

    def __init__(
        self,
        observer: Any = MovingAverageMinMaxObserver,
        quant_min: int = 0,
        quant_max: int = 255,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)
        if not isinstance(
            self.activation_post_process, (MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver)
        ):
            raise ValidationError(
                f"{type(self).__name__} works with MovingAverageMinMaxObserver or "
                f"MovingAveragePerChannelMinMaxObserver, got {type(self.activation_post_process).__name__}"
            )
        ch_axis = getattr(self.activation_post_process, "ch_axis", 0)
        if isinstance(self.activation_post_process, MovingAveragePerChannelMinMaxObserver) and ch_axis != 0:
            # torch's fused kernel only handles axis 0; fail here, not later as a misleading Inf error
            raise ValidationError(
                f"{type(self).__name__} supports per-channel quantization along axis 0 only (torch's fused "
                f"kernel), got ch_axis={ch_axis}; use FakeQuantize with MovingAveragePerChannelMinMaxObserver "
                f"for other axes (e.g. transposed conv weights, axis 1)"
            )
        # the fused kernel reads the flags as int64
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.long))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.long))
        self.is_symmetric_quant = self.activation_post_process.qscheme in _SYMMETRIC

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.activation_post_process.calculate_qparams()

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"scale={self.scale}, zero_point={self.zero_point}, dtype={self.dtype}, "
            f"quant_min={self.activation_post_process.quant_min}, "
            f"quant_max={self.activation_post_process.quant_max}, "
            f"qscheme={self.qscheme}, reduce_range={self.activation_post_process.reduce_range}"
        )

    def forward(self, X: Tensor) -> Tensor:
        obs = self.activation_post_process
        if X.numel() == 0 or self.observer_enabled.item() != 1:
            return self._fused(X)
        # the kernel updates the statistics in place: keep a copy to roll back a non-finite batch
        buffers = (obs.min_val, obs.max_val, self.scale, self.zero_point)
        saved = [t.clone() for t in buffers]

        def rollback() -> None:
            for buf, old in zip(buffers, saved):
                buf.resize_(old.shape)
                buf.copy_(old)

        try:
            out = self._fused(X)
        except RuntimeError:
            # NaN statistics can make the kernel's own fake-quant step fail (zero point out of range)
            nonfinite = not _all_finite(obs.min_val, obs.max_val)
            rollback()
            if nonfinite:
                raise _nonfinite_error(obs, X) from None
            raise
        if not _all_finite(obs.min_val, obs.max_val):
            rollback()
            raise _nonfinite_error(obs, X)
        return out

    def _fused(self, X: Tensor) -> Tensor:
        obs = self.activation_post_process
        return torch.fused_moving_avg_obs_fake_quant(
            X,
            self.observer_enabled,
            self.fake_quant_enabled,
            obs.min_val,
            obs.max_val,
            self.scale,
            self.zero_point,
            obs.averaging_constant,
            obs.quant_min,
            obs.quant_max,
            self.ch_axis,
            self.is_per_channel,
            self.is_symmetric_quant,
        )


ObserverOrFakeQuantize = Union[ObserverBase, FakeQuantizeBase]
"""What the prepare pass inserts after a node."""


def disable_fake_quant(mod: nn.Module) -> None:
    """Turn off fake quantization (statistics may still update): ``model.apply(disable_fake_quant)``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.disable_fake_quant()


def enable_fake_quant(mod: nn.Module) -> None:
    """Turn fake quantization back on: ``model.apply(enable_fake_quant)``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.enable_fake_quant()


def disable_observer(mod: nn.Module) -> None:
    """Freeze qparams (e.g. late in QAT): ``model.apply(disable_observer)``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.disable_observer()


def enable_observer(mod: nn.Module) -> None:
    """Resume statistics collection: ``model.apply(enable_observer)``."""
    if isinstance(mod, FakeQuantizeBase):
        mod.enable_observer()


# --------------------------------------------------------------------------- defaults

default_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    dtype=torch.uint8,
    qscheme=torch.per_tensor_affine,
    reduce_range=True,
)
"""Activations: uint8 affine, reduced range."""

default_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=torch.int8,
    qscheme=torch.per_tensor_symmetric,
    reduce_range=False,
)
"""Weights: int8 per-tensor symmetric."""

default_dynamic_fake_quant = FakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    is_dynamic=True,
    dtype=torch.uint8,
    averaging_constant=1,
)
"""Dynamically quantized activations (memoryless: averaging_constant=1)."""

default_fixed_qparams_range_neg1to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_neg1to1_observer
)
default_fixed_qparams_range_0to1_fake_quant = FixedQParamsFakeQuantize.with_args(
    observer=default_fixed_qparams_range_0to1_observer
)
default_symmetric_fixed_qparams_fake_quant = default_fixed_qparams_range_neg1to1_fake_quant
default_affine_fixed_qparams_fake_quant = default_fixed_qparams_range_0to1_fake_quant

default_per_channel_weight_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=torch.int8,
    qscheme=torch.per_channel_symmetric,
    reduce_range=False,
    ch_axis=0,
)
"""Weights: int8 per-channel symmetric."""

default_embedding_fake_quant = FakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    qscheme=torch.per_channel_affine_float_qparams,
    dtype=torch.uint8,
    quant_min=0,
    quant_max=255,
    ch_axis=0,
    averaging_constant=1,
)
"""Embedding weights: uint8 per-row with float zero points."""

default_histogram_fake_quant = FakeQuantize.with_args(
    observer=HistogramObserver,
    quant_min=0,
    quant_max=255,
    dtype=torch.uint8,
    qscheme=torch.per_tensor_affine,
    reduce_range=True,
)
"""Activations with a histogram observer."""

default_fused_act_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=0,
    quant_max=255,
    dtype=torch.uint8,
)
"""Fused version of default_fake_quant (full range)."""

default_fused_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=torch.int8,
    qscheme=torch.per_tensor_symmetric,
)
"""Fused version of default_weight_fake_quant."""

default_fused_per_channel_wt_fake_quant = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    quant_min=-128,
    quant_max=127,
    dtype=torch.int8,
    qscheme=torch.per_channel_symmetric,
)
"""Fused version of default_per_channel_weight_fake_quant."""

fused_wt_fake_quant_range_neg_127_to_127 = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAverageMinMaxObserver,
    quant_min=-127,
    quant_max=127,
    dtype=torch.int8,
    qscheme=torch.per_tensor_symmetric,
    eps=2**-12,
)
"""Fused per-tensor int8 weights in [-127, 127]."""

fused_per_channel_wt_fake_quant_range_neg_127_to_127 = FusedMovingAvgObsFakeQuantize.with_args(
    observer=MovingAveragePerChannelMinMaxObserver,
    quant_min=-127,
    quant_max=127,
    dtype=torch.int8,
    qscheme=torch.per_channel_symmetric,
    eps=2**-12,
)
"""Fused per-channel int8 weights in [-127, 127]."""
