"""QConfigMapping: which QConfig each op of a model gets, and the precedence that decides it.

Mirrors ``torch/ao/quantization/qconfig_mapping`` (same setters, attributes and
dict keys) and adds :meth:`QConfigMapping.qconfig_for`, the one place the
precedence rules live, so the prepare pass never re-implements them.

Precedence, highest first (torch.ao's, exactly):

1. ``set_module_name_object_type_order(module_name, object_type, index, qc)``
2. ``set_module_name(name, qc)`` for the module path or its closest ancestor
   (so ``set_module_name("sub", None)`` keeps everything under ``sub`` float)
3. the first ``set_module_name_regex`` (insertion order, ``re.match``) matching the path
4. ``set_object_type(type_or_function_or_method_name, qc)``
5. ``set_global(qc)``
"""

from __future__ import annotations

import re
import types
from collections import OrderedDict
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F

from quantfx.dtypes import normalize_dtype
from quantfx.errors import ValidationError
from quantfx.fake_quantize import (
    FixedQParamsFakeQuantize,
    default_weight_fake_quant,
    fused_wt_fake_quant_range_neg_127_to_127,
)
from quantfx.observers import (
    NoopObserver,
    ReuseInputObserver,
    default_fixed_qparams_range_0to1_observer,
    default_fixed_qparams_range_neg1to1_observer,
    default_placeholder_observer,
    default_weight_observer,
    weight_observer_range_neg_127_to_127,
)
from quantfx.qconfig import (
    QConfig,
    QConfigAny,
    default_embedding_qat_qconfig,
    default_quint8_weight_qconfig,
    default_reuse_input_qconfig,
    float_qparams_weight_only_qconfig,
    qconfig_equals,
    qconfig_short,
    weight_is_per_channel,
)

__all__ = ["QConfigMapping", "build_default_qconfig_mapping"]

ObjectType = Union[Callable, str]

_GLOBAL_DICT_KEY = ""
_OBJECT_TYPE_DICT_KEY = "object_type"
_MODULE_NAME_REGEX_DICT_KEY = "module_name_regex"
_MODULE_NAME_DICT_KEY = "module_name"
_MODULE_NAME_OBJECT_TYPE_ORDER_DICT_KEY = "module_name_object_type_order"
_DICT_KEYS = (
    _GLOBAL_DICT_KEY,
    _OBJECT_TYPE_DICT_KEY,
    _MODULE_NAME_REGEX_DICT_KEY,
    _MODULE_NAME_DICT_KEY,
    _MODULE_NAME_OBJECT_TYPE_ORDER_DICT_KEY,
)

_QCONFIG_STYLE_ORDER = (
    "global_qconfig",
    "object_type_qconfigs",
    "module_name_regex_qconfigs",
    "module_name_qconfigs",
    "module_name_object_type_order_qconfigs",
)


def _check_qconfig(qconfig: Any, where: str) -> None:
    # Duck-typed so a torch.ao QConfig passed by a migrating user reaches prepare, which explains it there.
    if qconfig is not None and not (hasattr(qconfig, "activation") and hasattr(qconfig, "weight")):
        raise ValidationError(
            f"{where}: expected a QConfig or None, got {qconfig!r}; build one with "
            f"quantfx.qconfig.QConfig(activation=..., weight=...)"
        )


def _check_object_type(object_type: Any, where: str) -> None:
    if isinstance(object_type, str):
        return
    if not callable(object_type):
        raise ValidationError(
            f"{where}: object_type must be an nn.Module class, a function or a method name, got {object_type!r}"
        )
    try:
        hash(object_type)
    except TypeError:
        raise ValidationError(f"{where}: object_type {object_type!r} is not hashable") from None


def _parent_name(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _is_module_type(object_type: Any) -> bool:
    return isinstance(object_type, type) and issubclass(object_type, torch.nn.Module)


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return repr(t)
    mod = getattr(t, "__module__", None) or ""
    if isinstance(t, types.BuiltinFunctionType):  # torch.sigmoid: qualname is '_VariableFunctionsClass.sigmoid'
        name = t.__name__
        if mod == "torch._C._nn":
            mod = "torch.nn.functional"
        elif not mod or mod.startswith("torch"):
            mod = "torch"
    else:
        name = getattr(t, "__qualname__", None) or getattr(t, "__name__", None) or repr(t)
    if mod.startswith("torch.nn.modules."):
        mod = "torch.nn"
    return f"{mod}.{name}" if mod and mod != "builtins" else name


class QConfigMapping:
    """Mapping from model ops to QConfigs, by op type, module name, name regex and call order.

    Setters return ``self`` so a mapping reads as one chained expression::

        qmap = (QConfigMapping()
                .set_global(default_qconfig)
                .set_object_type(torch.nn.Linear, per_channel_qconfig)
                .set_module_name_regex(r"encoder\\.layer\\d+\\.attn", None)
                .set_module_name("head", None))

    Setting a key again replaces its qconfig but keeps its position (which
    matters for regexes: the first matching one wins).
    """

    def __init__(self) -> None:
        self.global_qconfig: QConfigAny = None
        self.object_type_qconfigs: OrderedDict[ObjectType, QConfigAny] = OrderedDict()
        self.module_name_regex_qconfigs: OrderedDict[str, QConfigAny] = OrderedDict()
        self.module_name_qconfigs: OrderedDict[str, QConfigAny] = OrderedDict()
        self.module_name_object_type_order_qconfigs: OrderedDict[tuple[str, ObjectType, int], QConfigAny] = (
            OrderedDict()
        )

    # ------------------------------------------------------------------ setters

    def set_global(self, global_qconfig: QConfigAny) -> QConfigMapping:
        """The qconfig for every op nothing more specific applies to (None: float by default)."""
        _check_qconfig(global_qconfig, "set_global")
        self.global_qconfig = global_qconfig
        return self

    def set_object_type(self, object_type: ObjectType, qconfig: QConfigAny) -> QConfigMapping:
        """The qconfig for a module class (nn.Linear), a function (F.linear, torch.add) or a method name ("reshape")."""
        _check_object_type(object_type, "set_object_type")
        _check_qconfig(qconfig, f"set_object_type({_type_name(object_type)})")
        self.object_type_qconfigs[object_type] = qconfig
        return self

    def set_module_name_regex(self, module_name_regex: str, qconfig: QConfigAny) -> QConfigMapping:
        """The qconfig for modules whose path matches the regex (``re.match``); first registered match wins."""
        if not isinstance(module_name_regex, str):
            raise ValidationError(f"set_module_name_regex: expected a str, got {module_name_regex!r}")
        try:
            re.compile(module_name_regex)
        except re.error as e:
            raise ValidationError(f"set_module_name_regex: {module_name_regex!r} is not a valid regex: {e}") from None
        _check_qconfig(qconfig, f"set_module_name_regex({module_name_regex!r})")
        self.module_name_regex_qconfigs[module_name_regex] = qconfig
        return self

    def set_module_name(self, module_name: str, qconfig: QConfigAny) -> QConfigMapping:
        """The qconfig for the module at this path and everything inside it."""
        if not isinstance(module_name, str):
            raise ValidationError(f"set_module_name: expected a module path str, got {module_name!r}")
        _check_qconfig(qconfig, f"set_module_name({module_name!r})")
        self.module_name_qconfigs[module_name] = qconfig
        return self

    def set_module_name_object_type_order(
        self, module_name: str, object_type: ObjectType, index: int, qconfig: QConfigAny
    ) -> QConfigMapping:
        """The qconfig for the ``index``-th call (from 0) of ``object_type`` directly inside module ``module_name``."""
        if not isinstance(module_name, str):
            raise ValidationError(f"set_module_name_object_type_order: expected a module path str, got {module_name!r}")
        _check_object_type(object_type, "set_module_name_object_type_order")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValidationError(f"set_module_name_object_type_order: index must be an int >= 0, got {index!r}")
        _check_qconfig(qconfig, f"set_module_name_object_type_order({module_name!r}, {_type_name(object_type)}, {index})")
        self.module_name_object_type_order_qconfigs[(module_name, object_type, index)] = qconfig
        return self

    # ------------------------------------------------------------------ resolution

    def _module_name_lookup(self, module_path: str) -> tuple[bool, QConfigAny]:
        # torch.ao walks up the parents and never consults "" (the root is the global qconfig's job)
        path = module_path
        while path != "":
            if path in self.module_name_qconfigs:
                return True, self.module_name_qconfigs[path]
            path = _parent_name(path)
        return False, None

    def qconfig_for(
        self,
        module_path: str,
        object_type: Any,
        order_index: int | None = None,
        fallback_object_types: Sequence[Any] = (),
        *,
        enclosing_module_type: type | None = None,
    ) -> QConfigAny:
        """Resolve the qconfig of one op, with torch.ao's precedence (see the module docstring).

        Args:
            module_path: for a module call, the module's own path (``"sub.conv"``);
                for a function / method call, the path of the module it runs in
                (``""`` for the root).
            object_type: the module class, function or method name of the op.
            order_index: which call of ``object_type`` this is (from 0), counted
                within ``module_path`` for functions / methods and within the
                *parent* of ``module_path`` for modules (what torch.ao counts);
                None skips the ``module_name_object_type_order`` entries.
            fallback_object_types: object types tried, in order, when no
                object_type entry exists for ``object_type``. Used for fused
                modules (a ``ConvReLU2d`` takes the ``nn.Conv2d`` entry) and QAT
                swaps (a QAT ``Linear`` takes the ``nn.Linear`` entry).
            enclosing_module_type: for a function / method call, the type of
                the module it runs in. torch.ao lets an object_type entry for
                that type override the function's own entry (so
                ``set_object_type(MyBlock, None)`` keeps the functional ops in
                every MyBlock float); leave it None for module calls, as
                torch.ao does.

        How prepare should call it, per FX node (torch.ao's rules):

        - ``call_module``: ``qconfig_for(node.target, type(module), idx,
          fallback_object_types=component types if fused)``, ``idx`` counting
          calls of that type within the parent module path;
        - ``call_function``: ``qconfig_for(scope_path, node.target, idx,
          enclosing_module_type=scope_type)``, ``idx`` counting calls of that
          function within ``scope_path``;
        - ``call_method``: ``qconfig_for(scope_path, node.target,
          enclosing_module_type=scope_type)`` (torch.ao has no order entries
          for methods);
        - ``get_attr``: ``qconfig_for(parent_path, type(parent_module))``.
        """
        if order_index is not None and self.module_name_object_type_order_qconfigs:
            scope = _parent_name(module_path) if _is_module_type(object_type) else module_path
            for (name, otype, index), qconfig in self.module_name_object_type_order_qconfigs.items():
                if name == scope and otype == object_type and index == order_index:
                    return qconfig
        found, qconfig = self._module_name_lookup(module_path)
        if found:
            return qconfig
        for regex, qconfig in self.module_name_regex_qconfigs.items():
            if re.match(regex, module_path):
                return qconfig
        candidates = (object_type, *fallback_object_types)
        if enclosing_module_type is not None:
            candidates = (enclosing_module_type, *candidates)
        for otype in candidates:
            try:
                if otype in self.object_type_qconfigs:
                    return self.object_type_qconfigs[otype]
            except TypeError:  # unhashable object type: cannot have been set
                continue
        return self.global_qconfig

    # ------------------------------------------------------------------ dict form, repr, copy

    def to_dict(self) -> dict[str, Any]:
        """torch.ao's qconfig_dict form: keys "", "object_type", "module_name_regex", "module_name",
        "module_name_object_type_order"; values are lists of tuples."""
        return {
            _GLOBAL_DICT_KEY: self.global_qconfig,
            _OBJECT_TYPE_DICT_KEY: list(self.object_type_qconfigs.items()),
            _MODULE_NAME_REGEX_DICT_KEY: list(self.module_name_regex_qconfigs.items()),
            _MODULE_NAME_DICT_KEY: list(self.module_name_qconfigs.items()),
            _MODULE_NAME_OBJECT_TYPE_ORDER_DICT_KEY: [
                (*k, v) for k, v in self.module_name_object_type_order_qconfigs.items()
            ],
        }

    @classmethod
    def from_dict(cls, qconfig_dict: dict[str, Any]) -> QConfigMapping:
        """Build from torch.ao's qconfig_dict form (all keys optional; unknown keys are an error)."""
        if not isinstance(qconfig_dict, dict):
            raise ValidationError(f"QConfigMapping.from_dict expects a dict, got {type(qconfig_dict).__name__}")
        unknown = [k for k in qconfig_dict if k not in _DICT_KEYS]
        if unknown:
            raise ValidationError(
                f"QConfigMapping.from_dict: unknown keys {unknown}; allowed: {list(_DICT_KEYS)} ('' is the global qconfig)"
            )
        conf = cls()
        if _GLOBAL_DICT_KEY in qconfig_dict:
            conf.set_global(qconfig_dict[_GLOBAL_DICT_KEY])
        for object_type, qconfig in qconfig_dict.get(_OBJECT_TYPE_DICT_KEY, []):
            conf.set_object_type(object_type, qconfig)
        for regex, qconfig in qconfig_dict.get(_MODULE_NAME_REGEX_DICT_KEY, []):
            conf.set_module_name_regex(regex, qconfig)
        for module_name, qconfig in qconfig_dict.get(_MODULE_NAME_DICT_KEY, []):
            conf.set_module_name(module_name, qconfig)
        for module_name, object_type, index, qconfig in qconfig_dict.get(_MODULE_NAME_OBJECT_TYPE_ORDER_DICT_KEY, []):
            conf.set_module_name_object_type_order(module_name, object_type, index, qconfig)
        return conf

    def copy(self) -> QConfigMapping:
        """A copy whose entries can be changed without touching this mapping (qconfigs are shared, they are immutable)."""
        new = QConfigMapping()
        new.global_qconfig = self.global_qconfig
        new.object_type_qconfigs = OrderedDict(self.object_type_qconfigs)
        new.module_name_regex_qconfigs = OrderedDict(self.module_name_regex_qconfigs)
        new.module_name_qconfigs = OrderedDict(self.module_name_qconfigs)
        new.module_name_object_type_order_qconfigs = OrderedDict(self.module_name_object_type_order_qconfigs)
        return new

    def __eq__(self, other: object) -> bool:
        """Same keys in the same order, with qconfigs equal by :func:`qconfig_equals`."""
        if not isinstance(other, QConfigMapping):
            return NotImplemented
        if not qconfig_equals(self.global_qconfig, other.global_qconfig):
            return False
        for style in _QCONFIG_STYLE_ORDER[1:]:
            a, b = getattr(self, style), getattr(other, style)
            if list(a) != list(b) or not all(qconfig_equals(a[k], b[k]) for k in a):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        lines.append(f"  global: {qconfig_short(self.global_qconfig)}")
        for label, style in (
            ("object_type", "object_type_qconfigs"),
            ("module_name_regex", "module_name_regex_qconfigs"),
            ("module_name", "module_name_qconfigs"),
            ("module_name_object_type_order", "module_name_object_type_order_qconfigs"),
        ):
            entries = getattr(self, style)
            if not entries:
                continue
            lines.append(f"  {label}:")
            for key, qconfig in entries.items():
                if isinstance(key, tuple):
                    key_s = f"({key[0]!r}, {_type_name(key[1])}, {key[2]})"
                elif isinstance(key, str) and style != "object_type_qconfigs":
                    key_s = repr(key)
                else:
                    key_s = _type_name(key)
                lines.append(f"    {key_s}: {qconfig_short(qconfig)}")
        lines.append(")")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- default mapping builder

# Ops whose output range is known in advance get fixed qparams (torch.ao's table).
_FIXED_QPARAMS_OP_TO_OBSERVER: dict[ObjectType, Any] = {
    torch.nn.Hardsigmoid: default_fixed_qparams_range_0to1_observer,
    F.hardsigmoid: default_fixed_qparams_range_0to1_observer,
    "hardsigmoid": default_fixed_qparams_range_0to1_observer,
    "hardsigmoid_": default_fixed_qparams_range_0to1_observer,
    torch.nn.Sigmoid: default_fixed_qparams_range_0to1_observer,
    torch.sigmoid: default_fixed_qparams_range_0to1_observer,
    "sigmoid": default_fixed_qparams_range_0to1_observer,
    "sigmoid_": default_fixed_qparams_range_0to1_observer,
    torch.nn.Softmax: default_fixed_qparams_range_0to1_observer,
    torch.nn.Tanh: default_fixed_qparams_range_neg1to1_observer,
    torch.tanh: default_fixed_qparams_range_neg1to1_observer,
    "tanh": default_fixed_qparams_range_neg1to1_observer,
    "tanh_": default_fixed_qparams_range_neg1to1_observer,
}

_CONV_TRANSPOSE_OPS: tuple[ObjectType, ...] = (
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
)


def _per_tensor_weight_qconfig(qconfig: QConfig, is_qat: bool) -> QConfig:
    """qconfig with its weight made per tensor, keeping a symmetric [-127, 127] range if it had one."""
    if not weight_is_per_channel(qconfig):
        return qconfig
    w = qconfig.weight()
    inner = getattr(w, "activation_post_process", w)
    narrow = (getattr(inner, "quant_min", None), getattr(inner, "quant_max", None)) == (-127, 127)
    if is_qat:
        weight = fused_wt_fake_quant_range_neg_127_to_127 if narrow else default_weight_fake_quant
    else:
        weight = weight_observer_range_neg_127_to_127 if narrow else default_weight_observer
    return QConfig(activation=qconfig.activation, weight=weight)


def _reuse_input_qconfig_like(qconfig: QConfig) -> QConfig:
    """``default_reuse_input_qconfig`` with the activation dtype of ``qconfig`` (int8 backends need int8 here)."""
    dtype = normalize_dtype(getattr(qconfig.activation(), "dtype", None))
    if dtype in (None, torch.uint8) or dtype.is_floating_point:
        return default_reuse_input_qconfig
    return QConfig(activation=ReuseInputObserver.with_args(dtype=dtype), weight=NoopObserver)


def build_default_qconfig_mapping(
    qconfig: QConfig,
    *,
    is_qat: bool = False,
    transpose_qconfig: QConfig | None = None,
    layernorm_qconfig: QConfig | None = None,
    prelu_qconfig: QConfig | None = None,
    embedding_qconfig: QConfig | None = None,
) -> QConfigMapping:
    """A backend's default mapping: ``qconfig`` globally plus the per-op exceptions every backend needs.

    Mirrors torch.ao's ``_get_default_qconfig_mapping`` with the backend switch
    replaced by arguments:

    - ``"reshape"`` reuses its input's observer (``default_reuse_input_qconfig``,
      with ``qconfig``'s activation dtype);
    - ConvTranspose modules / functions get ``transpose_qconfig`` (default:
      ``qconfig`` with a per-tensor weight; the kernels have no per-channel
      transpose);
    - LayerNorm / ``F.layer_norm`` get ``layernorm_qconfig`` (default: the
      activation of ``qconfig`` with a float weight: the kernels take float
      affine parameters);
    - ``nn.PReLU`` gets ``prelu_qconfig`` (default: torch.ao's uint8-weight
      ``default_quint8_weight_qconfig``, also in QAT, as torch.ao does);
    - sigmoid / hardsigmoid / softmax / tanh get fixed qparams for their known
      output range (as ``FixedQParamsFakeQuantize`` when ``is_qat``);
    - ``nn.Embedding`` / ``nn.EmbeddingBag`` get ``embedding_qconfig``
      (default: ``float_qparams_weight_only_qconfig``, or
      ``default_embedding_qat_qconfig`` when ``is_qat``) so embeddings are
      weight-quantized instead of left float as torch.ao's default does.

    ``None`` for any of the keyword qconfigs means "the default above"; to keep
    one of these ops float, call ``.set_object_type(op, None)`` on the result.
    """
    if qconfig is None:
        raise ValidationError("build_default_qconfig_mapping: qconfig must not be None")
    _check_qconfig(qconfig, "build_default_qconfig_mapping")
    default_weight = default_weight_fake_quant if is_qat else default_weight_observer
    if transpose_qconfig is None:
        transpose_qconfig = _per_tensor_weight_qconfig(qconfig, is_qat)
    if layernorm_qconfig is None:
        layernorm_qconfig = QConfig(activation=qconfig.activation, weight=default_placeholder_observer)
    if prelu_qconfig is None:
        prelu_qconfig = default_quint8_weight_qconfig
    if embedding_qconfig is None:
        embedding_qconfig = default_embedding_qat_qconfig if is_qat else float_qparams_weight_only_qconfig

    mapping = QConfigMapping().set_global(qconfig).set_object_type("reshape", _reuse_input_qconfig_like(qconfig))
    for op in _CONV_TRANSPOSE_OPS:
        mapping.set_object_type(op, transpose_qconfig)
    mapping.set_object_type(F.layer_norm, layernorm_qconfig)
    mapping.set_object_type(torch.nn.LayerNorm, layernorm_qconfig)
    mapping.set_object_type(torch.nn.PReLU, prelu_qconfig)

    by_observer: dict[int, QConfig] = {}  # one shared QConfig per fixed-qparams observer, as torch.ao does
    for op, observer in _FIXED_QPARAMS_OP_TO_OBSERVER.items():
        fixed = by_observer.get(id(observer))
        if fixed is None:
            activation = FixedQParamsFakeQuantize.with_args(observer=observer) if is_qat else observer
            fixed = by_observer[id(observer)] = QConfig(activation=activation, weight=default_weight)
        mapping.set_object_type(op, fixed)

    mapping.set_object_type(torch.nn.Embedding, embedding_qconfig)
    mapping.set_object_type(torch.nn.EmbeddingBag, embedding_qconfig)
    return mapping
