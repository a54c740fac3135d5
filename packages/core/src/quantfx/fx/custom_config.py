"""Custom configs for ``fuse_fx`` / ``prepare_fx`` / ``convert_fx``.

Same builder API and the same ``to_dict`` / ``from_dict`` keys as
``torch/ao/quantization/fx.custom_config``, so code migrating from torch.ao
keeps working. Differences that help users:

- setters validate their arguments (a lone string passed where a list of
  names is expected raises instead of being read as a list of characters);
- ``from_dict`` rejects unknown keys (a typo in a key used to be ignored);
- ``coerce`` turns ``None`` / a dict / a config into a config, so every API
  accepts all three.

Quantization types of the custom-module mappings are plain strings:
``"static"``, ``"dynamic"``, ``"weight_only"`` (torch.ao's ``QuantType``
members are accepted too).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, TypeVar

from quantfx.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover - import cycles avoided at runtime
    from quantfx.backend_config import BackendConfig
    from quantfx.qconfig_mapping import QConfigMapping

__all__ = [
    "PrepareCustomConfig",
    "ConvertCustomConfig",
    "FuseCustomConfig",
    "StandaloneModuleConfigEntry",
    "QUANT_TYPES",
    "STANDALONE_MODULE_NAME_DICT_KEY",
    "STANDALONE_MODULE_CLASS_DICT_KEY",
    "FLOAT_TO_OBSERVED_DICT_KEY",
    "OBSERVED_TO_QUANTIZED_DICT_KEY",
    "NON_TRACEABLE_MODULE_NAME_DICT_KEY",
    "NON_TRACEABLE_MODULE_CLASS_DICT_KEY",
    "INPUT_QUANTIZED_INDEXES_DICT_KEY",
    "OUTPUT_QUANTIZED_INDEXES_DICT_KEY",
    "PRESERVED_ATTRIBUTES_DICT_KEY",
]

# torch.ao's dict keys, unchanged so old config dicts load as they are.
STANDALONE_MODULE_NAME_DICT_KEY = "standalone_module_name"
STANDALONE_MODULE_CLASS_DICT_KEY = "standalone_module_class"
FLOAT_TO_OBSERVED_DICT_KEY = "float_to_observed_custom_module_class"
OBSERVED_TO_QUANTIZED_DICT_KEY = "observed_to_quantized_custom_module_class"
NON_TRACEABLE_MODULE_NAME_DICT_KEY = "non_traceable_module_name"
NON_TRACEABLE_MODULE_CLASS_DICT_KEY = "non_traceable_module_class"
INPUT_QUANTIZED_INDEXES_DICT_KEY = "input_quantized_idxs"
OUTPUT_QUANTIZED_INDEXES_DICT_KEY = "output_quantized_idxs"
PRESERVED_ATTRIBUTES_DICT_KEY = "preserved_attributes"

QUANT_TYPES: tuple[str, ...] = ("static", "dynamic", "weight_only")

_C = TypeVar("_C", bound="_CustomConfigBase")


def _normalize_quant_type(quant_type: Any) -> str:
    """'static' / 'STATIC' / torch.ao's QuantType.STATIC -> 'static'."""
    name = quant_type if isinstance(quant_type, str) else getattr(quant_type, "name", None)
    if isinstance(name, str) and name.lower() in QUANT_TYPES:
        return name.lower()
    raise ValidationError(
        f"Unknown quantization type {quant_type!r}; expected one of {', '.join(QUANT_TYPES)}."
    )


def _check_list(value: Any, what: str, item_ok: Any, item_desc: str, setter: str, example: str) -> list:
    """Validate a list argument, catching the 'one string instead of a list' mistake."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValidationError(
            f"{setter} expects a list of {item_desc}, got {type(value).__name__} {value!r}. "
            f"Wrap it in a list: {setter}([{example}])."
        )
    items = list(value)
    for item in items:
        if not item_ok(item):
            raise ValidationError(
                f"{setter}: every {what} must be {item_desc}, got {type(item).__name__} {item!r}."
            )
    return items


def _is_class(x: Any) -> bool:
    return isinstance(x, type)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_keys(d: dict[str, Any], allowed: tuple[str, ...], cls_name: str) -> None:
    if not isinstance(d, dict):
        raise ValidationError(f"{cls_name}.from_dict expects a dict, got {type(d).__name__}.")
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValidationError(
                f"Unknown key {key!r} in a {cls_name} dict.{hint} Known keys: {', '.join(allowed)}."
            )


class _CustomConfigBase:
    """Shared repr / equality / coerce for the three config classes."""

    _DICT_KEYS: tuple[str, ...] = ()

    def __repr__(self) -> str:
        nonempty = {k: v for k, v in self.__dict__.items() if len(v) > 0}
        return f"{type(self).__name__}({nonempty})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable builder

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def coerce(cls: type[_C], config: Any) -> _C:
        """Turn what a user may pass (None, a dict, a config) into a config.

        ``None`` gives an empty config, a dict goes through ``from_dict``, an
        instance is returned as is. torch.ao's config of the same name is
        converted through its ``to_dict`` so migrating code keeps working.
        """
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        if type(config).__name__ == cls.__name__ and callable(getattr(config, "to_dict", None)):
            return cls.from_dict(config.to_dict())
        raise ValidationError(
            f"Expected a {cls.__name__}, a dict or None, got {type(config).__module__}."
            f"{type(config).__qualname__}. Build one with quantfx.fx.custom_config.{cls.__name__}()."
        )

    def _set_preserved_attributes(self, attributes: list[str], setter: str) -> None:
        self.preserved_attributes = _check_list(
            attributes, "attribute name", lambda a: isinstance(a, str), "strings", setter, "'attr1'"
        )


@dataclass
class StandaloneModuleConfigEntry:
    """How one standalone module is prepared: quantized on its own, not inlined in the parent graph.

    ``None`` for ``qconfig_mapping`` / ``backend_config`` means "use the parent's";
    ``None`` for ``prepare_custom_config`` means an empty one.
    """

    qconfig_mapping: QConfigMapping | None
    example_inputs: tuple[Any, ...]
    prepare_custom_config: PrepareCustomConfig | None
    backend_config: BackendConfig | None


def _coerce_qconfig_mapping(obj: Any, key: str) -> Any:
    """A standalone entry's qconfig mapping: None, a QConfigMapping, or its dict form."""
    if isinstance(obj, dict):
        from quantfx.qconfig_mapping import QConfigMapping

        return QConfigMapping.from_dict(obj)
    if obj is None or hasattr(obj, "to_dict"):
        return obj
    raise ValidationError(
        f"Expected a QConfigMapping, a dict or None in prepare_custom_config[{key!r}], got {type(obj).__name__}."
    )


def _coerce_backend_config(obj: Any, key: str) -> Any:
    """A standalone entry's backend config: None, a BackendConfig, or its dict form."""
    if isinstance(obj, dict):
        from quantfx.backend_config import BackendConfig

        return BackendConfig.from_dict(obj)
    if obj is None or hasattr(obj, "configs") or hasattr(obj, "to_dict"):
        return obj
    raise ValidationError(
        f"Expected a BackendConfig, a dict or None in prepare_custom_config[{key!r}], got {type(obj).__name__}."
    )


class PrepareCustomConfig(_CustomConfigBase):
    """Customizes ``prepare_fx`` / ``prepare_qat_fx`` beyond the QConfigMapping.

    Example::

        PrepareCustomConfig() \\
            .set_standalone_module_name("module1", qconfig_mapping, example_inputs, None, None) \\
            .set_float_to_observed_mapping(FloatCustomModule, ObservedCustomModule) \\
            .set_non_traceable_module_names(["module2"]) \\
            .set_non_traceable_module_classes([NonTraceableModule]) \\
            .set_input_quantized_indexes([0]) \\
            .set_output_quantized_indexes([0]) \\
            .set_preserved_attributes(["attr1"])
    """

    _DICT_KEYS = (
        STANDALONE_MODULE_NAME_DICT_KEY,
        STANDALONE_MODULE_CLASS_DICT_KEY,
        FLOAT_TO_OBSERVED_DICT_KEY,
        NON_TRACEABLE_MODULE_NAME_DICT_KEY,
        NON_TRACEABLE_MODULE_CLASS_DICT_KEY,
        INPUT_QUANTIZED_INDEXES_DICT_KEY,
        OUTPUT_QUANTIZED_INDEXES_DICT_KEY,
        PRESERVED_ATTRIBUTES_DICT_KEY,
    )

    def __init__(self) -> None:
        self.standalone_module_names: dict[str, StandaloneModuleConfigEntry] = {}
        self.standalone_module_classes: dict[type, StandaloneModuleConfigEntry] = {}
        self.float_to_observed_mapping: dict[str, dict[type, type]] = {}
        self.non_traceable_module_names: list[str] = []
        self.non_traceable_module_classes: list[type] = []
        self.input_quantized_indexes: list[int] = []
        self.output_quantized_indexes: list[int] = []
        self.preserved_attributes: list[str] = []

    def set_standalone_module_name(
        self,
        module_name: str,
        qconfig_mapping: QConfigMapping | None,
        example_inputs: tuple[Any, ...],
        prepare_custom_config: PrepareCustomConfig | dict[str, Any] | None,
        backend_config: BackendConfig | None,
    ) -> PrepareCustomConfig:
        """Quantize the submodule at ``module_name`` as its own unit (a leaf of the parent graph)."""
        if not isinstance(module_name, str):
            raise ValidationError(
                f"set_standalone_module_name expects a module path string, got {type(module_name).__name__}."
            )
        self.standalone_module_names[module_name] = StandaloneModuleConfigEntry(
            qconfig_mapping, _as_tuple(example_inputs), _child_config(prepare_custom_config), backend_config
        )
        return self

    def set_standalone_module_class(
        self,
        module_class: type,
        qconfig_mapping: QConfigMapping | None,
        example_inputs: tuple[Any, ...],
        prepare_custom_config: PrepareCustomConfig | dict[str, Any] | None,
        backend_config: BackendConfig | None,
    ) -> PrepareCustomConfig:
        """Quantize every submodule of ``module_class`` as its own unit."""
        if not _is_class(module_class):
            raise ValidationError(
                f"set_standalone_module_class expects a class, got {type(module_class).__name__} {module_class!r}."
            )
        self.standalone_module_classes[module_class] = StandaloneModuleConfigEntry(
            qconfig_mapping, _as_tuple(example_inputs), _child_config(prepare_custom_config), backend_config
        )
        return self

    def set_float_to_observed_mapping(
        self, float_class: type, observed_class: type, quant_type: Any = "static"
    ) -> PrepareCustomConfig:
        """Swap ``float_class`` modules for ``observed_class.from_float(m)`` at prepare (custom modules).

        Only static quantization is supported, as in torch.ao.
        """
        qt = _normalize_quant_type(quant_type)
        if qt != "static":
            raise ValidationError(
                f"set_float_to_observed_mapping supports only static quantization, got {qt!r}."
            )
        if not (_is_class(float_class) and _is_class(observed_class)):
            raise ValidationError("set_float_to_observed_mapping expects two classes (float, observed).")
        if not callable(getattr(observed_class, "from_float", None)):
            raise ValidationError(
                f"{observed_class.__qualname__} needs a from_float(float_module) classmethod to be used "
                "as an observed custom module."
            )
        self.float_to_observed_mapping.setdefault(qt, {})[float_class] = observed_class
        return self

    def set_non_traceable_module_names(self, module_names: list[str]) -> PrepareCustomConfig:
        """Keep these submodules (and everything under them) as leaves: their forward is not traced."""
        self.non_traceable_module_names = _check_list(
            module_names, "module name", lambda n: isinstance(n, str), "module path strings",
            "set_non_traceable_module_names", "'sub.block'",
        )
        return self

    def set_non_traceable_module_classes(self, module_classes: list[type]) -> PrepareCustomConfig:
        """Keep every submodule of these classes as a leaf: its forward is not traced."""
        self.non_traceable_module_classes = _check_list(
            module_classes, "module class", _is_class, "classes",
            "set_non_traceable_module_classes", "MyModule",
        )
        return self

    def set_input_quantized_indexes(self, indexes: list[int]) -> PrepareCustomConfig:
        """Graph inputs at these positions arrive already quantized (others are float)."""
        self.input_quantized_indexes = _check_list(
            indexes, "index", _is_int, "ints", "set_input_quantized_indexes", "0"
        )
        return self

    def set_output_quantized_indexes(self, indexes: list[int]) -> PrepareCustomConfig:
        """Graph outputs at these positions stay quantized (others are dequantized to float)."""
        self.output_quantized_indexes = _check_list(
            indexes, "index", _is_int, "ints", "set_output_quantized_indexes", "0"
        )
        return self

    def set_preserved_attributes(self, attributes: list[str]) -> PrepareCustomConfig:
        """Model attributes to carry over to the GraphModule although ``forward`` does not use them."""
        self._set_preserved_attributes(attributes, "set_preserved_attributes")
        return self

    @classmethod
    def from_dict(cls, prepare_custom_config_dict: dict[str, Any]) -> PrepareCustomConfig:
        """Build from torch.ao's dict form (keys: see the module constants)."""
        d = prepare_custom_config_dict
        _check_keys(d, cls._DICT_KEYS, cls.__name__)
        conf = cls()
        for key, setter in (
            (STANDALONE_MODULE_NAME_DICT_KEY, conf.set_standalone_module_name),
            (STANDALONE_MODULE_CLASS_DICT_KEY, conf.set_standalone_module_class),
        ):
            for entry in d.get(key, []):
                if not isinstance(entry, (tuple, list)) or len(entry) != 5:
                    raise ValidationError(
                        f"prepare_custom_config[{key!r}] entries are (name_or_class, qconfig_mapping, "
                        f"example_inputs, prepare_custom_config, backend_config) tuples, got {entry!r}."
                    )
                target, qmap, example_inputs, child, bconf = entry
                setter(
                    target,
                    _coerce_qconfig_mapping(qmap, key),
                    example_inputs,
                    child,
                    _coerce_backend_config(bconf, key),
                )
        for quant_type, mapping in d.get(FLOAT_TO_OBSERVED_DICT_KEY, {}).items():
            for float_class, observed_class in mapping.items():
                conf.set_float_to_observed_mapping(float_class, observed_class, quant_type)
        conf.set_non_traceable_module_names(d.get(NON_TRACEABLE_MODULE_NAME_DICT_KEY, []))
        conf.set_non_traceable_module_classes(d.get(NON_TRACEABLE_MODULE_CLASS_DICT_KEY, []))
        conf.set_input_quantized_indexes(d.get(INPUT_QUANTIZED_INDEXES_DICT_KEY, []))
        conf.set_output_quantized_indexes(d.get(OUTPUT_QUANTIZED_INDEXES_DICT_KEY, []))
        conf.set_preserved_attributes(d.get(PRESERVED_ATTRIBUTES_DICT_KEY, []))
        return conf

    def to_dict(self) -> dict[str, Any]:
        """torch.ao's dict form; empty fields are left out."""

        def entry(key: Any, e: StandaloneModuleConfigEntry) -> tuple:
            return (
                key,
                e.qconfig_mapping.to_dict() if e.qconfig_mapping is not None else None,
                e.example_inputs,
                e.prepare_custom_config.to_dict() if e.prepare_custom_config is not None else None,
                e.backend_config,
            )

        d: dict[str, Any] = {}
        if self.standalone_module_names:
            d[STANDALONE_MODULE_NAME_DICT_KEY] = [entry(k, e) for k, e in self.standalone_module_names.items()]
        if self.standalone_module_classes:
            d[STANDALONE_MODULE_CLASS_DICT_KEY] = [entry(k, e) for k, e in self.standalone_module_classes.items()]
        if self.float_to_observed_mapping:
            d[FLOAT_TO_OBSERVED_DICT_KEY] = {qt: dict(m) for qt, m in self.float_to_observed_mapping.items()}
        if self.non_traceable_module_names:
            d[NON_TRACEABLE_MODULE_NAME_DICT_KEY] = list(self.non_traceable_module_names)
        if self.non_traceable_module_classes:
            d[NON_TRACEABLE_MODULE_CLASS_DICT_KEY] = list(self.non_traceable_module_classes)
        if self.input_quantized_indexes:
            d[INPUT_QUANTIZED_INDEXES_DICT_KEY] = list(self.input_quantized_indexes)
        if self.output_quantized_indexes:
            d[OUTPUT_QUANTIZED_INDEXES_DICT_KEY] = list(self.output_quantized_indexes)
        if self.preserved_attributes:
            d[PRESERVED_ATTRIBUTES_DICT_KEY] = list(self.preserved_attributes)
        return d

    # helpers the passes use -------------------------------------------------

    def skipped_module_names_and_classes(self, is_standalone_module: bool = False) -> tuple[list[str], list[type]]:
        """Module names / classes the tracer must keep as leaves.

        Non-traceable modules always; standalone and custom (float -> observed)
        modules only at the top level, where they are swapped or prepared
        separately.
        """
        names = list(self.non_traceable_module_names)
        classes = list(self.non_traceable_module_classes)
        if not is_standalone_module:
            names += list(self.standalone_module_names)
            classes += list(self.standalone_module_classes)
            for mapping in self.float_to_observed_mapping.values():
                classes += list(mapping)
        return names, classes


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _child_config(config: Any) -> PrepareCustomConfig | None:
    return None if config is None else PrepareCustomConfig.coerce(config)


class ConvertCustomConfig(_CustomConfigBase):
    """Customizes ``convert_fx``: custom observed -> quantized module swaps, preserved attributes."""

    _DICT_KEYS = (OBSERVED_TO_QUANTIZED_DICT_KEY, PRESERVED_ATTRIBUTES_DICT_KEY)

    def __init__(self) -> None:
        self.observed_to_quantized_mapping: dict[str, dict[type, type]] = {}
        self.preserved_attributes: list[str] = []

    def set_observed_to_quantized_mapping(
        self, observed_class: type, quantized_class: type, quant_type: Any = "static"
    ) -> ConvertCustomConfig:
        """Swap ``observed_class`` modules for ``quantized_class.from_observed(m)`` at convert."""
        qt = _normalize_quant_type(quant_type)
        if not (_is_class(observed_class) and _is_class(quantized_class)):
            raise ValidationError("set_observed_to_quantized_mapping expects two classes (observed, quantized).")
        if not callable(getattr(quantized_class, "from_observed", None)):
            raise ValidationError(
                f"{quantized_class.__qualname__} needs a from_observed(observed_module) classmethod to be "
                "used as a quantized custom module."
            )
        self.observed_to_quantized_mapping.setdefault(qt, {})[observed_class] = quantized_class
        return self

    def set_preserved_attributes(self, attributes: list[str]) -> ConvertCustomConfig:
        """Model attributes to carry over to the converted model."""
        self._set_preserved_attributes(attributes, "set_preserved_attributes")
        return self

    @classmethod
    def from_dict(cls, convert_custom_config_dict: dict[str, Any]) -> ConvertCustomConfig:
        """Build from torch.ao's dict form."""
        d = convert_custom_config_dict
        _check_keys(d, cls._DICT_KEYS, cls.__name__)
        conf = cls()
        for quant_type, mapping in d.get(OBSERVED_TO_QUANTIZED_DICT_KEY, {}).items():
            for observed_class, quantized_class in mapping.items():
                conf.set_observed_to_quantized_mapping(observed_class, quantized_class, quant_type)
        conf.set_preserved_attributes(d.get(PRESERVED_ATTRIBUTES_DICT_KEY, []))
        return conf

    def to_dict(self) -> dict[str, Any]:
        """torch.ao's dict form; empty fields are left out."""
        d: dict[str, Any] = {}
        if self.observed_to_quantized_mapping:
            d[OBSERVED_TO_QUANTIZED_DICT_KEY] = {qt: dict(m) for qt, m in self.observed_to_quantized_mapping.items()}
        if self.preserved_attributes:
            d[PRESERVED_ATTRIBUTES_DICT_KEY] = list(self.preserved_attributes)
        return d


class FuseCustomConfig(_CustomConfigBase):
    """Customizes ``fuse_fx``: preserved attributes."""

    _DICT_KEYS = (PRESERVED_ATTRIBUTES_DICT_KEY,)

    def __init__(self) -> None:
        self.preserved_attributes: list[str] = []

    def set_preserved_attributes(self, attributes: list[str]) -> FuseCustomConfig:
        """Model attributes to carry over to the fused GraphModule."""
        self._set_preserved_attributes(attributes, "set_preserved_attributes")
        return self

    @classmethod
    def from_dict(cls, fuse_custom_config_dict: dict[str, Any]) -> FuseCustomConfig:
        """Build from torch.ao's dict form."""
        _check_keys(fuse_custom_config_dict, cls._DICT_KEYS, cls.__name__)
        return cls().set_preserved_attributes(fuse_custom_config_dict.get(PRESERVED_ATTRIBUTES_DICT_KEY, []))

    def to_dict(self) -> dict[str, Any]:
        """torch.ao's dict form; empty fields are left out."""
        return {PRESERVED_ATTRIBUTES_DICT_KEY: list(self.preserved_attributes)} if self.preserved_attributes else {}
