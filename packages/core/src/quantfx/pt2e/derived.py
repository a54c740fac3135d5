"""The observer a ``DerivedQuantizationSpec`` becomes: qparams computed from other observers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from quantfx.observers import ObserverBase

__all__ = ["DerivedObserverOrFakeQuantize"]


class DerivedObserverOrFakeQuantize(ObserverBase):
    """Observes nothing; ``calculate_qparams`` calls ``derive_qparams_fn(obs_or_fqs)``.

    Typical use: an int32 bias whose scale is input scale * weight scale. The
    source observers are referenced, not owned (they live elsewhere in the model).
    """

    def __init__(
        self,
        dtype: torch.dtype,
        obs_or_fqs: Sequence[Any],
        derive_qparams_fn: Callable[[list[Any]], tuple[Tensor, Tensor]],
        quant_min: int | None = None,
        quant_max: int | None = None,
        qscheme: torch.qscheme | None = None,
        ch_axis: int | None = None,
        is_dynamic: bool = False,
    ) -> None:
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        # a plain list (not ModuleList): the sources are registered where they are inserted
        object.__setattr__(self, "obs_or_fqs", list(obs_or_fqs))
        self.derive_qparams_fn = derive_qparams_fn
        if quant_min is None or quant_max is None:
            info = torch.iinfo(self.dtype)
            quant_min, quant_max = int(info.min), int(info.max)
        self.quant_min, self.quant_max = quant_min, quant_max
        self.qscheme = qscheme if qscheme is not None else torch.per_tensor_affine
        self.ch_axis = ch_axis

    def forward(self, x: Tensor) -> Tensor:
        return x

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return self.derive_qparams_fn(self.obs_or_fqs)

    @property
    def is_calibrated(self) -> bool:
        return all(getattr(o, "is_calibrated", True) for o in self.obs_or_fqs)
