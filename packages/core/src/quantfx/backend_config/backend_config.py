"""What a backend can run quantized: patterns, their dtypes, and how to fuse / swap them.

Mirrors ``torch/ao/quantization/backend_config.backend_config`` (same class,
method and dict-key names) so existing backend configs port by changing the
import. Two differences, both deliberate:

- patterns are one op or a flat tuple of ops in *execution order*
  (``(nn.Conv2d, nn.BatchNorm2d, nn.ReLU)``), see :mod:`quantfx.fx.match`;
  torch's reversed nested "complex format" is rejected with the equivalent
  execution-order tuple in the message;
- dtypes are plain (``torch.uint8`` / ``torch.int8`` / ``torch.int32``);
  torch's ``quint8`` / ``qint8`` / ``qint32`` are accepted and normalized.

``from_dict`` also accepts dicts produced by torch.ao's ``to_dict`` (its
``DTypeWithConstraints`` and ``ObservationType`` are converted by field name),
so a user's custom torch.ao backend config can be ported as data.
"""

from __future__ import annotations

import copy as _copy
import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Callable

import torch

from quantfx.dtypes import normalize_dtype
from quantfx.errors import ValidationError
from quantfx.fx.match import Pattern, normalize_pattern, pattern_to_str

__all__ = [
    "BackendConfig",
    "BackendPatternConfig",
    "DTypeConfig",
    "DTypeWithConstraints",
    "ObservationType",
]

# DTypeConfig dict keys (same strings as torch.ao)
INPUT_DTYPE_DICT_KEY = "input_dtype"
OUTPUT_DTYPE_DICT_KEY = "output_dtype"
WEIGHT_DTYPE_DICT_KEY = "weight_dtype"
BIAS_DTYPE_DICT_KEY = "bias_dtype"
IS_DYNAMIC_DICT_KEY = "is_dynamic"

# BackendConfig dict keys
NAME_DICT_KEY = "name"
CONFIGS_DICT_KEY = "configs"

# BackendPatternConfig dict keys
PATTERN_DICT_KEY = "pattern"
PATTERN_COMPLEX_FORMAT_DICT_KEY = "pattern_complex_format"
OBSERVATION_TYPE_DICT_KEY = "observation_type"
DTYPE_CONFIGS_DICT_KEY = "dtype_configs"
ROOT_MODULE_DICT_KEY = "root_module"
QAT_MODULE_DICT_KEY = "qat_module"
REFERENCE_QUANTIZED_MODULE_DICT_KEY = "reference_quantized_module_for_root"
FUSED_MODULE_DICT_KEY = "fused_module"
FUSER_METHOD_DICT_KEY = "fuser_method"
ROOT_NODE_GETTER_DICT_KEY = "root_node_getter"
EXTRA_INPUTS_GETTER_DICT_KEY = "extra_inputs_getter"
NUM_TENSOR_ARGS_TO_OBSERVATION_TYPE_DICT_KEY = "num_tensor_args_to_observation_type"
INPUT_TYPE_TO_INDEX_DICT_KEY = "input_type_to_index"

_DTYPE_CONFIG_KEYS = {
    INPUT_DTYPE_DICT_KEY,
    OUTPUT_DTYPE_DICT_KEY,
    WEIGHT_DTYPE_DICT_KEY,
    BIAS_DTYPE_DICT_KEY,
    IS_DYNAMIC_DICT_KEY,
}
_PATTERN_CONFIG_KEYS = {
    PATTERN_DICT_KEY,
    PATTERN_COMPLEX_FORMAT_DICT_KEY,
    OBSERVATION_TYPE_DICT_KEY,
    DTYPE_CONFIGS_DICT_KEY,
    ROOT_MODULE_DICT_KEY,
    QAT_MODULE_DICT_KEY,
    REFERENCE_QUANTIZED_MODULE_DICT_KEY,
    FUSED_MODULE_DICT_KEY,
    FUSER_METHOD_DICT_KEY,
    ROOT_NODE_GETTER_DICT_KEY,
    EXTRA_INPUTS_GETTER_DICT_KEY,
    NUM_TENSOR_ARGS_TO_OBSERVATION_TYPE_DICT_KEY,
    INPUT_TYPE_TO_INDEX_DICT_KEY,
}


class ObservationType(enum.Enum):
    """How observers (later quantize / dequantize pairs) are placed around a pattern."""

    OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT = 0
    """Input and output get their own observers (conv, linear, add)."""

    OUTPUT_SHARE_OBSERVER_WITH_INPUT = 1
    """The output reuses the input's observer: the op cannot change the range (cat, maxpool, flatten)."""

    INPUT_OUTPUT_NOT_OBSERVED = 2
    """Neither input nor output is observed (x.shape, x.size)."""


def _to_observation_type(value: Any) -> ObservationType:
    """Accept our enum, torch.ao's enum (same member names) or its integer value."""
    if isinstance(value, ObservationType):
        return value
    if isinstance(value, enum.Enum) and value.name in ObservationType.__members__:
        return ObservationType[value.name]
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return ObservationType(value)
        except ValueError:
            pass
    raise ValidationError(
        f"observation_type must be a quantfx.backend_config.ObservationType, got {value!r}; "
        f"choose one of {', '.join(ObservationType.__members__)}"
    )


def _check_dtype(value: Any, what: str) -> torch.dtype | None:
    if value is not None and not isinstance(value, torch.dtype):
        raise ValidationError(f"{what} must be a torch.dtype or None, got {value!r}")
    return normalize_dtype(value)


def _dtype_str(dtype: torch.dtype | None) -> str:
    return "-" if dtype is None else str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class DTypeWithConstraints:
    """A dtype plus the limits a backend's kernels put on its quantization parameters.

    A QConfig whose observer falls outside these limits is skipped for the
    pattern (the pattern stays float, with an ``UnsupportedQConfigWarning``):

    * ``quant_min_lower_bound`` / ``quant_max_upper_bound``: the observer's
      ``quant_min`` / ``quant_max`` must lie inside them;
    * ``scale_min_lower_bound`` / ``scale_max_upper_bound``: the observer's
      smallest scale (its ``eps``) must not go below the lower bound;
    * ``scale_exact_match`` / ``zero_point_exact_match``: fixed qparams ops
      (sigmoid, tanh) need exactly these, from a ``FixedQParamsObserver``.

    Frozen, so a dtype config can be shared between patterns safely.
    """

    dtype: torch.dtype | None = None
    quant_min_lower_bound: int | float | None = None
    quant_max_upper_bound: int | float | None = None
    scale_min_lower_bound: int | float | None = None
    scale_max_upper_bound: int | float | None = None
    scale_exact_match: float | None = None
    zero_point_exact_match: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype, "DTypeWithConstraints.dtype"))
        for name in (
            "quant_min_lower_bound",
            "quant_max_upper_bound",
            "scale_min_lower_bound",
            "scale_max_upper_bound",
            "scale_exact_match",
        ):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValidationError(f"DTypeWithConstraints.{name} must be a number or None, got {v!r}")
        zp = self.zero_point_exact_match
        if zp is not None and (isinstance(zp, bool) or not isinstance(zp, int)):
            raise ValidationError(f"DTypeWithConstraints.zero_point_exact_match must be an int or None, got {zp!r}")
        lo, hi = self.quant_min_lower_bound, self.quant_max_upper_bound
        if lo is not None and hi is not None and lo > hi:
            raise ValidationError(
                f"DTypeWithConstraints: quant_min_lower_bound {lo} must be <= quant_max_upper_bound {hi}"
            )
        for name in ("scale_min_lower_bound", "scale_max_upper_bound", "scale_exact_match"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValidationError(f"DTypeWithConstraints: {name} must be > 0, got {v}")
        smin, smax = self.scale_min_lower_bound, self.scale_max_upper_bound
        if smin is not None and smax is not None and smin > smax:
            raise ValidationError(
                f"DTypeWithConstraints: scale_min_lower_bound {smin} must be <= scale_max_upper_bound {smax}"
            )

    @property
    def has_constraints(self) -> bool:
        """True when anything beyond the dtype is constrained."""
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self) if f.name != "dtype")

    def _short(self) -> str:
        s = _dtype_str(self.dtype)
        extra = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name != "dtype" and getattr(self, f.name) is not None
        ]
        return f"{s}[{', '.join(extra)}]" if extra else s


def _to_dtype_with_constraints(value: Any, what: str) -> DTypeWithConstraints:
    if isinstance(value, DTypeWithConstraints):
        return value
    if value is None or isinstance(value, torch.dtype):
        return DTypeWithConstraints(dtype=value)
    # torch.ao's DTypeWithConstraints (or any look-alike): convert field by field.
    if hasattr(value, "dtype") and hasattr(value, "quant_min_lower_bound"):
        return DTypeWithConstraints(
            **{f.name: getattr(value, f.name, None) for f in dataclasses.fields(DTypeWithConstraints)}
        )
    raise ValidationError(f"{what} must be a torch.dtype, a DTypeWithConstraints or None, got {value!r}")


@dataclass(frozen=True, init=False)
class DTypeConfig:
    """The dtypes a backend supports for one pattern, as quantize-op arguments in the reference model.

    ``input_dtype`` / ``output_dtype`` are the dtypes of the quantize ops in
    front of / behind the pattern, ``weight_dtype`` the weight's. For dynamic
    quantization (``is_dynamic=True``) the input dtype is still the integer
    dtype the activation is quantized to at run time, and the output is float.
    Each of the three may carry constraints (:class:`DTypeWithConstraints`).
    """

    input_dtype_with_constraints: DTypeWithConstraints
    output_dtype_with_constraints: DTypeWithConstraints
    weight_dtype_with_constraints: DTypeWithConstraints
    bias_dtype: torch.dtype | None
    is_dynamic: bool | None

    def __init__(
        self,
        input_dtype: torch.dtype | DTypeWithConstraints | None = None,
        output_dtype: torch.dtype | DTypeWithConstraints | None = None,
        weight_dtype: torch.dtype | DTypeWithConstraints | None = None,
        bias_dtype: torch.dtype | None = None,
        is_dynamic: bool | None = None,
    ) -> None:
        if is_dynamic is not None and not isinstance(is_dynamic, bool):
            raise ValidationError(f"DTypeConfig.is_dynamic must be a bool or None, got {is_dynamic!r}")
        object.__setattr__(self, "input_dtype_with_constraints", _to_dtype_with_constraints(input_dtype, "input_dtype"))
        object.__setattr__(
            self, "output_dtype_with_constraints", _to_dtype_with_constraints(output_dtype, "output_dtype")
        )
        object.__setattr__(
            self, "weight_dtype_with_constraints", _to_dtype_with_constraints(weight_dtype, "weight_dtype")
        )
        object.__setattr__(self, "bias_dtype", _check_dtype(bias_dtype, "DTypeConfig.bias_dtype"))
        object.__setattr__(self, "is_dynamic", is_dynamic)

    @property
    def input_dtype(self) -> torch.dtype | None:
        return self.input_dtype_with_constraints.dtype

    @property
    def output_dtype(self) -> torch.dtype | None:
        return self.output_dtype_with_constraints.dtype

    @property
    def weight_dtype(self) -> torch.dtype | None:
        return self.weight_dtype_with_constraints.dtype

    def __repr__(self) -> str:
        parts = []
        for name in ("input", "output", "weight"):
            c = getattr(self, f"{name}_dtype_with_constraints")
            if c.dtype is not None or c.has_constraints:
                parts.append(f"{name}_dtype={c._short()}")
        if self.bias_dtype is not None:
            parts.append(f"bias_dtype={_dtype_str(self.bias_dtype)}")
        if self.is_dynamic is not None:
            parts.append(f"is_dynamic={self.is_dynamic}")
        return f"DTypeConfig({', '.join(parts)})"

    def _short(self) -> str:
        """One line: 'uint8 x int8 -> uint8 (bias float32)'."""
        s = self.input_dtype_with_constraints._short()
        if self.weight_dtype is not None or self.weight_dtype_with_constraints.has_constraints:
            s += f" x {self.weight_dtype_with_constraints._short()}"
        s += f" -> {self.output_dtype_with_constraints._short()}"
        extra = []
        if self.bias_dtype is not None:
            extra.append(f"bias {_dtype_str(self.bias_dtype)}")
        if self.is_dynamic:
            extra.append("dynamic")
        return s + (f" ({', '.join(extra)})" if extra else "")

    @classmethod
    def from_dict(cls, dtype_config_dict: dict[str, Any]) -> DTypeConfig:
        """Build from a dict with the (all optional) keys "input_dtype", "output_dtype",
        "weight_dtype", "bias_dtype", "is_dynamic"."""
        if not isinstance(dtype_config_dict, dict):
            raise ValidationError(f"DTypeConfig.from_dict expects a dict, got {type(dtype_config_dict).__name__}")
        unknown = set(dtype_config_dict) - _DTYPE_CONFIG_KEYS
        if unknown:
            raise ValidationError(
                f"DTypeConfig.from_dict: unknown keys {sorted(unknown)}; allowed: {sorted(_DTYPE_CONFIG_KEYS)}"
            )
        return cls(
            dtype_config_dict.get(INPUT_DTYPE_DICT_KEY),
            dtype_config_dict.get(OUTPUT_DTYPE_DICT_KEY),
            dtype_config_dict.get(WEIGHT_DTYPE_DICT_KEY),
            dtype_config_dict.get(BIAS_DTYPE_DICT_KEY),
            dtype_config_dict.get(IS_DYNAMIC_DICT_KEY),
        )

    def to_dict(self) -> dict[str, Any]:
        """The dict :meth:`from_dict` reads; unset fields are left out (as torch.ao does)."""
        d: dict[str, Any] = {}
        if self.input_dtype is not None:
            d[INPUT_DTYPE_DICT_KEY] = self.input_dtype_with_constraints
        if self.output_dtype is not None:
            d[OUTPUT_DTYPE_DICT_KEY] = self.output_dtype_with_constraints
        if self.weight_dtype is not None:
            d[WEIGHT_DTYPE_DICT_KEY] = self.weight_dtype_with_constraints
        if self.bias_dtype is not None:
            d[BIAS_DTYPE_DICT_KEY] = self.bias_dtype
        if self.is_dynamic is not None:
            d[IS_DYNAMIC_DICT_KEY] = self.is_dynamic
        return d


def _complex_to_execution_order(pattern: Any) -> tuple | None:
    """torch.ao's reversed nested format -> execution-order tuple, when it is a plain chain."""
    if not isinstance(pattern, tuple):
        return (pattern,)
    if len(pattern) != 2:
        return None  # extra inputs (MatchAllNode ...) have no chain equivalent
    inner = _complex_to_execution_order(pattern[1])
    return None if inner is None else inner + (pattern[0],)


def _validate_op(op: Any, pattern: Any) -> None:
    if isinstance(op, (tuple, list)):
        suggestion = _complex_to_execution_order(tuple(pattern)) if isinstance(pattern, (tuple, list)) else None
        hint = (
            f" (for this one: {_tuple_src(suggestion)})"
            if suggestion is not None and all(not isinstance(o, (tuple, list)) for o in suggestion)
            else ""
        )
        raise ValidationError(
            f"pattern {pattern!r} is nested; quantfx patterns are one op or a flat tuple of ops in "
            f"execution order, e.g. (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU){hint}"
        )
    if not (isinstance(op, str) or callable(op)):
        raise ValidationError(
            f"pattern element {op!r} is not an op: use an nn.Module class, a function "
            f"(torch.relu, operator.add) or a method name ('relu')"
        )


def _tuple_src(ops: tuple) -> str:
    names = [pattern_to_str(op) for op in ops]
    return "(" + ", ".join(names) + ("," if len(names) == 1 else "") + ")"


def _check_module_class(value: Any, what: str) -> None:
    if value is not None and not (isinstance(value, type) and issubclass(value, torch.nn.Module)):
        raise ValidationError(f"{what} must be an nn.Module subclass or None, got {value!r}")


class BackendPatternConfig:
    """How one pattern is quantized on a backend: dtypes, observer placement, fusion and module swaps.

    ``pattern`` is one op or a tuple of ops in execution order. Setters return
    ``self`` so configs read as one chained expression.
    """

    def __init__(self, pattern: Pattern | None = None) -> None:
        self.pattern: Pattern | None = None
        self.observation_type: ObservationType = ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT
        self.dtype_configs: list[DTypeConfig] = []
        self.root_module: type[torch.nn.Module] | None = None
        self.qat_module: type[torch.nn.Module] | None = None
        self.reference_quantized_module: type[torch.nn.Module] | None = None
        self.fused_module: type[torch.nn.Module] | None = None
        self.fuser_method: Callable | None = None
        self._num_tensor_args_to_observation_type: dict[int, ObservationType] = {}
        self._input_type_to_index: dict[str, int] = {}
        if pattern is not None:
            self.set_pattern(pattern)

    @property
    def pattern_tuple(self) -> tuple:
        """The pattern as a tuple of ops in execution order (the key BackendConfig stores it under)."""
        if self.pattern is None:
            raise ValidationError("BackendPatternConfig has no pattern; call set_pattern(...) first")
        return normalize_pattern(self.pattern)

    def __repr__(self) -> str:
        fields = {
            k: v
            for k, v in self.__dict__.items()
            if (not isinstance(v, (list, dict)) and v is not None) or (isinstance(v, (list, dict)) and len(v) > 0)
        }
        return f"BackendPatternConfig({fields})"

    def set_pattern(self, pattern: Pattern) -> BackendPatternConfig:
        """Set the pattern: one op, or a tuple of ops in execution order (conv, bn, relu)."""
        if pattern is None:
            raise ValidationError("pattern must not be None")
        if isinstance(pattern, list):
            pattern = tuple(pattern)
        ops = normalize_pattern(pattern)
        if len(ops) == 0:
            raise ValidationError("pattern must contain at least one op")
        for op in ops:
            _validate_op(op, pattern)
        self.pattern = pattern
        return self

    def set_observation_type(self, observation_type: ObservationType) -> BackendPatternConfig:
        """Set whether the output gets its own observer, shares the input's, or nothing is observed."""
        self.observation_type = _to_observation_type(observation_type)
        return self

    def add_dtype_config(self, dtype_config: DTypeConfig) -> BackendPatternConfig:
        """Add one supported dtype combination; a QConfig is used if it matches any of them."""
        self.dtype_configs.append(_to_dtype_config(dtype_config))
        return self

    def set_dtype_configs(self, dtype_configs: list[DTypeConfig]) -> BackendPatternConfig:
        """Replace all supported dtype combinations."""
        self.dtype_configs = [_to_dtype_config(c) for c in dtype_configs]
        return self

    def set_root_module(self, root_module: type[torch.nn.Module] | None) -> BackendPatternConfig:
        """The float module that convert swaps for ``reference_quantized_module`` (nn.Conv2d for ConvReLU2d)."""
        _check_module_class(root_module, "root_module")
        self.root_module = root_module
        return self

    def set_qat_module(self, qat_module: type[torch.nn.Module] | None) -> BackendPatternConfig:
        """The QAT module prepare_qat swaps the pattern's module for."""
        _check_module_class(qat_module, "qat_module")
        self.qat_module = qat_module
        return self

    def set_reference_quantized_module(
        self, reference_quantized_module: type[torch.nn.Module] | None
    ) -> BackendPatternConfig:
        """The reference quantized module convert swaps ``root_module`` for."""
        _check_module_class(reference_quantized_module, "reference_quantized_module")
        self.reference_quantized_module = reference_quantized_module
        return self

    def set_fused_module(self, fused_module: type[torch.nn.Module] | None) -> BackendPatternConfig:
        """The module type the fuser method produces for this pattern."""
        _check_module_class(fused_module, "fused_module")
        self.fused_module = fused_module
        return self

    def set_fuser_method(self, fuser_method: Callable | None) -> BackendPatternConfig:
        """``fuser_method(is_qat, *modules_in_execution_order) -> fused module``."""
        if fuser_method is not None and not callable(fuser_method):
            raise ValidationError(f"fuser_method must be callable, got {fuser_method!r}")
        self.fuser_method = fuser_method
        return self

    def _set_num_tensor_args_to_observation_type(
        self, num_tensor_args_to_observation_type: dict[int, ObservationType]
    ) -> BackendPatternConfig:
        """Observation type by number of tensor args (add with a scalar shares the input's observer)."""
        self._num_tensor_args_to_observation_type = {
            int(k): _to_observation_type(v) for k, v in dict(num_tensor_args_to_observation_type).items()
        }
        return self

    def _set_input_type_to_index(self, input_type_to_index: dict[str, int]) -> BackendPatternConfig:
        """Which positional arg is 'weight' / 'bias' / 'input' for functional ops (F.linear)."""
        self._input_type_to_index = dict(input_type_to_index)
        return self

    def _set_pattern_complex_format(self, pattern: Pattern) -> BackendPatternConfig:
        """Rejected: quantfx has no reversed nested format; the message gives the flat tuple to use."""
        order = _complex_to_execution_order(pattern)
        if order is not None and all(not isinstance(o, tuple) for o in order):
            hint = f"BackendPatternConfig({_tuple_src(order)})"
        else:
            hint = "a flat tuple of ops in execution order, e.g. BackendPatternConfig((nn.Conv2d, nn.BatchNorm2d, nn.ReLU))"
        raise ValidationError(
            f"pattern_complex_format {pattern!r} is not supported: quantfx patterns are written in "
            f"execution order; write {hint}. Patterns with extra inputs (MatchAllNode) cannot be expressed."
        )

    def copy(self) -> BackendPatternConfig:
        """A copy whose lists and dicts can be changed without touching this one."""
        new = _copy.copy(self)
        new.dtype_configs = list(self.dtype_configs)
        new._num_tensor_args_to_observation_type = dict(self._num_tensor_args_to_observation_type)
        new._input_type_to_index = dict(self._input_type_to_index)
        return new

    @classmethod
    def from_dict(cls, backend_pattern_config_dict: dict[str, Any]) -> BackendPatternConfig:
        """Build from a dict with torch.ao's keys ("pattern", "observation_type", "dtype_configs",
        "root_module", "qat_module", "reference_quantized_module_for_root", "fused_module",
        "fuser_method", "num_tensor_args_to_observation_type", "input_type_to_index")."""
        d = backend_pattern_config_dict
        if not isinstance(d, dict):
            raise ValidationError(f"BackendPatternConfig.from_dict expects a dict, got {type(d).__name__}")
        unknown = set(d) - _PATTERN_CONFIG_KEYS
        if unknown:
            raise ValidationError(
                f"BackendPatternConfig.from_dict: unknown keys {sorted(unknown)}; allowed: {sorted(_PATTERN_CONFIG_KEYS)}"
            )
        conf = cls()
        if PATTERN_COMPLEX_FORMAT_DICT_KEY in d:
            conf._set_pattern_complex_format(d[PATTERN_COMPLEX_FORMAT_DICT_KEY])
        for key in (ROOT_NODE_GETTER_DICT_KEY, EXTRA_INPUTS_GETTER_DICT_KEY):
            if d.get(key) is not None:
                raise ValidationError(
                    f"BackendPatternConfig.from_dict: '{key}' belongs to torch.ao's complex pattern format, "
                    "which quantfx does not support; use an execution-order pattern tuple"
                )
        if PATTERN_DICT_KEY in d:
            conf.set_pattern(d[PATTERN_DICT_KEY])
        if OBSERVATION_TYPE_DICT_KEY in d:
            conf.set_observation_type(d[OBSERVATION_TYPE_DICT_KEY])
        conf.set_dtype_configs(list(d.get(DTYPE_CONFIGS_DICT_KEY, [])))
        conf.set_root_module(d.get(ROOT_MODULE_DICT_KEY))
        conf.set_qat_module(d.get(QAT_MODULE_DICT_KEY))
        conf.set_reference_quantized_module(d.get(REFERENCE_QUANTIZED_MODULE_DICT_KEY))
        conf.set_fused_module(d.get(FUSED_MODULE_DICT_KEY))
        conf.set_fuser_method(d.get(FUSER_METHOD_DICT_KEY))
        conf._set_num_tensor_args_to_observation_type(d.get(NUM_TENSOR_ARGS_TO_OBSERVATION_TYPE_DICT_KEY) or {})
        conf._set_input_type_to_index(d.get(INPUT_TYPE_TO_INDEX_DICT_KEY) or {})
        return conf

    def to_dict(self) -> dict[str, Any]:
        """The dict :meth:`from_dict` reads; unset fields are left out (as torch.ao does)."""
        d: dict[str, Any] = {
            OBSERVATION_TYPE_DICT_KEY: self.observation_type,
            DTYPE_CONFIGS_DICT_KEY: [c.to_dict() for c in self.dtype_configs],
        }
        if self.pattern is not None:
            d[PATTERN_DICT_KEY] = self.pattern
        if self.root_module is not None:
            d[ROOT_MODULE_DICT_KEY] = self.root_module
        if self.qat_module is not None:
            d[QAT_MODULE_DICT_KEY] = self.qat_module
        if self.reference_quantized_module is not None:
            d[REFERENCE_QUANTIZED_MODULE_DICT_KEY] = self.reference_quantized_module
        if self.fused_module is not None:
            d[FUSED_MODULE_DICT_KEY] = self.fused_module
        if self.fuser_method is not None:
            d[FUSER_METHOD_DICT_KEY] = self.fuser_method
        if self._num_tensor_args_to_observation_type:
            d[NUM_TENSOR_ARGS_TO_OBSERVATION_TYPE_DICT_KEY] = dict(self._num_tensor_args_to_observation_type)
        if self._input_type_to_index:
            d[INPUT_TYPE_TO_INDEX_DICT_KEY] = dict(self._input_type_to_index)
        return d

    def _summary_lines(self) -> list[str]:
        head = f"{pattern_to_str(self.pattern) if self.pattern is not None else '<no pattern>'}"
        head += f"  [{self.observation_type.name}]"
        lines = [head]
        for c in self.dtype_configs:
            lines.append(f"    dtype: {c._short()}")
        for label, mod in (
            ("fused_module", self.fused_module),
            ("root_module", self.root_module),
            ("qat_module", self.qat_module),
            ("reference_quantized_module", self.reference_quantized_module),
        ):
            if mod is not None:
                lines.append(f"    {label}: {pattern_to_str(mod)}")
        if self.fuser_method is not None:
            lines.append(f"    fuser_method: {getattr(self.fuser_method, '__name__', repr(self.fuser_method))}")
        if self._num_tensor_args_to_observation_type:
            nt = ", ".join(f"{k}: {v.name}" for k, v in self._num_tensor_args_to_observation_type.items())
            lines.append(f"    num_tensor_args_to_observation_type: {{{nt}}}")
        return lines


def _to_dtype_config(value: Any) -> DTypeConfig:
    if isinstance(value, DTypeConfig):
        return value
    if isinstance(value, dict):
        return DTypeConfig.from_dict(value)
    # torch.ao's DTypeConfig (or a look-alike): convert through its fields.
    if hasattr(value, "input_dtype_with_constraints") and hasattr(value, "is_dynamic"):
        return DTypeConfig(
            value.input_dtype_with_constraints,
            value.output_dtype_with_constraints,
            value.weight_dtype_with_constraints,
            value.bias_dtype,
            value.is_dynamic,
        )
    raise ValidationError(f"expected a DTypeConfig (or its dict form), got {value!r}")


class BackendConfig:
    """The set of patterns a backend can quantize, each with a :class:`BackendPatternConfig`.

    Configs are keyed by their execution-order pattern tuple: setting a
    config for a pattern that is already present replaces it (keeping its
    position), which is how a plugin overrides one pattern of a backend.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._pattern_to_config: dict[tuple, BackendPatternConfig] = {}

    def __repr__(self) -> str:
        return f"BackendConfig(name={self.name!r}, {len(self._pattern_to_config)} patterns)\n" + self.summary(
            indent="  "
        )

    def summary(self, indent: str = "") -> str:
        """Readable listing: one pattern per line with its observation type, dtypes and modules."""
        lines = [] if indent else [f"BackendConfig {self.name!r}: {len(self._pattern_to_config)} patterns"]
        for conf in self._pattern_to_config.values():
            lines.extend(indent + line for line in conf._summary_lines())
        return "\n".join(lines)

    def set_name(self, name: str) -> BackendConfig:
        """Set the backend's name."""
        self.name = name
        return self

    def set_backend_pattern_config(self, config: BackendPatternConfig) -> BackendConfig:
        """Add the config for its pattern, replacing any config already set for that pattern."""
        if not isinstance(config, BackendPatternConfig):
            raise ValidationError(f"expected a BackendPatternConfig, got {config!r}")
        self._pattern_to_config[config.pattern_tuple] = config
        return self

    def set_backend_pattern_configs(self, configs: list[BackendPatternConfig]) -> BackendConfig:
        """Add several configs; each replaces any config already set for its pattern."""
        for conf in configs:
            self.set_backend_pattern_config(conf)
        return self

    @property
    def configs(self) -> list[BackendPatternConfig]:
        """A new list of the configs, in insertion order."""
        return list(self._pattern_to_config.values())

    def get_pattern_config(self, pattern: Pattern) -> BackendPatternConfig | None:
        """The config for ``pattern`` (one op or an execution-order tuple), or None."""
        return self._pattern_to_config.get(normalize_pattern(pattern))

    def pattern_configs(self) -> dict[tuple, BackendPatternConfig]:
        """A new dict: execution-order pattern tuple -> config."""
        return dict(self._pattern_to_config)

    def fusion_configs(self) -> list[BackendPatternConfig]:
        """Configs that fuse (have a fuser_method), longest patterns first so fusion is greedy."""
        fusing = [c for c in self._pattern_to_config.values() if c.fuser_method is not None]
        return sorted(fusing, key=lambda c: -len(c.pattern_tuple))

    def copy(self) -> BackendConfig:
        """A copy to extend: adding, replacing or editing its pattern configs leaves this one alone."""
        new = BackendConfig(self.name)
        new._pattern_to_config = {k: c.copy() for k, c in self._pattern_to_config.items()}
        return new

    @classmethod
    def from_dict(cls, backend_config_dict: dict[str, Any]) -> BackendConfig:
        """Build from ``{"name": str, "configs": [BackendPatternConfig or its dict, ...]}``."""
        if not isinstance(backend_config_dict, dict):
            raise ValidationError(f"BackendConfig.from_dict expects a dict, got {type(backend_config_dict).__name__}")
        unknown = set(backend_config_dict) - {NAME_DICT_KEY, CONFIGS_DICT_KEY}
        if unknown:
            raise ValidationError(
                f"BackendConfig.from_dict: unknown keys {sorted(unknown)}; allowed: ['configs', 'name']"
            )
        conf = cls(backend_config_dict.get(NAME_DICT_KEY, ""))
        for d in backend_config_dict.get(CONFIGS_DICT_KEY, []):
            if isinstance(d, BackendPatternConfig):
                conf.set_backend_pattern_config(d)
            elif isinstance(d, dict):
                conf.set_backend_pattern_config(BackendPatternConfig.from_dict(d))
            else:
                raise ValidationError(
                    f"BackendConfig.from_dict: each entry of '{CONFIGS_DICT_KEY}' must be a dict or a "
                    f"BackendPatternConfig, got {type(d).__name__}"
                )
        return conf

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "configs": [config.to_dict(), ...]}``, as torch.ao writes it."""
        return {NAME_DICT_KEY: self.name, CONFIGS_DICT_KEY: [c.to_dict() for c in self.configs]}
