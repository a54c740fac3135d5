"""BackendConfig & co: validation, dict round trips, replacement semantics, parity with torch.ao."""

from __future__ import annotations

import dataclasses
import enum
import operator

import pytest
import torch
import torch.nn as nn

from quantfx.backend_config import (
    BackendConfig,
    BackendPatternConfig,
    DTypeConfig,
    DTypeWithConstraints,
    ObservationType,
)
from quantfx.dtypes import normalize_dtype
from quantfx.errors import ValidationError
from quantfx.fx.match import normalize_pattern

W8A8 = DTypeConfig(
    input_dtype=torch.quint8, output_dtype=torch.quint8, weight_dtype=torch.qint8, bias_dtype=torch.float
)


def _fuse_conv_relu(is_qat, conv, relu):
    return nn.Sequential(conv, relu)


def _fuse_conv_bn_relu(is_qat, conv, bn, relu):
    return nn.Sequential(conv, bn, relu)


# ----------------------------------------------------------------------------- DTypeWithConstraints


def test_dtype_with_constraints_normalizes_and_is_frozen():
    c = DTypeWithConstraints(dtype=torch.qint8, quant_min_lower_bound=-127, quant_max_upper_bound=127)
    assert c.dtype is torch.int8
    assert c.has_constraints
    assert not DTypeWithConstraints(torch.uint8).has_constraints
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.dtype = torch.uint8  # type: ignore[misc]
    # hashable and value-equal, so configs can be shared and deduplicated
    assert c == DTypeWithConstraints(dtype=torch.int8, quant_min_lower_bound=-127, quant_max_upper_bound=127)
    assert len({c, DTypeWithConstraints(torch.qint8, -127, 127)}) == 1


def test_dtype_with_constraints_rejects_inverted_quant_range():
    with pytest.raises(ValidationError, match="quant_min_lower_bound 10 must be <= quant_max_upper_bound 5"):
        DTypeWithConstraints(dtype=torch.uint8, quant_min_lower_bound=10, quant_max_upper_bound=5)
    # equal bounds are allowed
    DTypeWithConstraints(dtype=torch.uint8, quant_min_lower_bound=5, quant_max_upper_bound=5)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"scale_min_lower_bound": 0.0}, "scale_min_lower_bound must be > 0"),
        ({"scale_max_upper_bound": -1.0}, "scale_max_upper_bound must be > 0"),
        ({"scale_exact_match": 0}, "scale_exact_match must be > 0"),
        ({"scale_min_lower_bound": 2.0, "scale_max_upper_bound": 1.0}, "scale_min_lower_bound 2.0 must be <="),
        ({"zero_point_exact_match": 1.5}, "zero_point_exact_match must be an int"),
        ({"quant_min_lower_bound": "0"}, "quant_min_lower_bound must be a number"),
        ({"dtype": "uint8"}, "must be a torch.dtype"),
    ],
)
def test_dtype_with_constraints_validation(kwargs, msg):
    kwargs.setdefault("dtype", torch.uint8)
    with pytest.raises(ValidationError, match=msg):
        DTypeWithConstraints(**kwargs)


def test_fixed_qparams_constraints_accept_sigmoid_values():
    c = DTypeWithConstraints(dtype=torch.quint8, scale_exact_match=1.0 / 256.0, zero_point_exact_match=0)
    assert c.dtype is torch.uint8 and c.scale_exact_match == 1.0 / 256.0


# ----------------------------------------------------------------------------- DTypeConfig


def test_dtype_config_properties_and_normalization():
    wc = DTypeWithConstraints(dtype=torch.qint8, quant_min_lower_bound=-127, quant_max_upper_bound=127)
    dc = DTypeConfig(input_dtype=torch.quint8, output_dtype=torch.quint8, weight_dtype=wc, bias_dtype=torch.float)
    assert dc.input_dtype is torch.uint8
    assert dc.output_dtype is torch.uint8
    assert dc.weight_dtype is torch.int8
    assert dc.weight_dtype_with_constraints == wc
    assert dc.input_dtype_with_constraints == DTypeWithConstraints(dtype=torch.uint8)
    assert dc.bias_dtype is torch.float32
    assert dc.is_dynamic is None
    assert dc == DTypeConfig(torch.uint8, torch.uint8, wc, torch.float32)
    assert dc != DTypeConfig(torch.uint8, torch.uint8, torch.int8, torch.float32)
    assert "weight_dtype=int8[quant_min_lower_bound=-127" in repr(dc)


def test_dtype_config_validation():
    with pytest.raises(ValidationError, match="is_dynamic must be a bool"):
        DTypeConfig(torch.uint8, torch.float, torch.int8, is_dynamic=1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="input_dtype must be a torch.dtype"):
        DTypeConfig(input_dtype="quint8")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="bias_dtype must be a torch.dtype"):
        DTypeConfig(bias_dtype=3)  # type: ignore[arg-type]


def test_dtype_config_dict_round_trip():
    wc = DTypeWithConstraints(dtype=torch.int8, quant_min_lower_bound=-127, quant_max_upper_bound=127)
    dc = DTypeConfig(torch.uint8, torch.float, wc, torch.float, is_dynamic=True)
    d = dc.to_dict()
    assert d == {
        "input_dtype": DTypeWithConstraints(torch.uint8),
        "output_dtype": DTypeWithConstraints(torch.float32),
        "weight_dtype": wc,
        "bias_dtype": torch.float32,
        "is_dynamic": True,
    }
    assert DTypeConfig.from_dict(d) == dc
    # unset fields are left out, as torch.ao does
    assert DTypeConfig(input_dtype=torch.uint8).to_dict() == {"input_dtype": DTypeWithConstraints(torch.uint8)}
    assert DTypeConfig.from_dict({"input_dtype": torch.quint8}).input_dtype is torch.uint8
    with pytest.raises(ValidationError, match="unknown keys \\['bias_type'\\]"):
        DTypeConfig.from_dict({"bias_type": torch.float})


# ----------------------------------------------------------------------------- BackendPatternConfig


def test_pattern_config_setters_chain_and_store():
    c = (
        BackendPatternConfig((nn.Conv2d, nn.ReLU))
        .set_observation_type(ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT)
        .add_dtype_config(W8A8)
        .set_root_module(nn.Conv2d)
        .set_qat_module(nn.Conv2d)
        .set_reference_quantized_module(nn.Conv2d)
        .set_fused_module(nn.Sequential)
        .set_fuser_method(_fuse_conv_relu)
        ._set_input_type_to_index({"weight": 1, "bias": 2})
        ._set_num_tensor_args_to_observation_type({2: ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT})
    )
    assert isinstance(c, BackendPatternConfig)
    assert c.pattern == (nn.Conv2d, nn.ReLU)
    assert c.pattern_tuple == (nn.Conv2d, nn.ReLU)
    assert c.dtype_configs == [W8A8]
    assert c.fused_module is nn.Sequential and c.fuser_method is _fuse_conv_relu
    assert c._input_type_to_index == {"weight": 1, "bias": 2}
    c.set_dtype_configs([W8A8, W8A8])
    assert len(c.dtype_configs) == 2
    assert BackendPatternConfig(torch.relu).pattern_tuple == (torch.relu,)
    assert BackendPatternConfig(["relu"]).pattern == ("relu",)


def test_pattern_config_default_observation_type_matches_torch():
    assert BackendPatternConfig(nn.Linear).observation_type is ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT
    assert [(m.name, m.value) for m in ObservationType] == [
        ("OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT", 0),
        ("OUTPUT_SHARE_OBSERVER_WITH_INPUT", 1),
        ("INPUT_OUTPUT_NOT_OBSERVED", 2),
    ]


def test_observation_type_accepts_int_and_foreign_enum_by_name():
    class Foreign(enum.Enum):
        OUTPUT_SHARE_OBSERVER_WITH_INPUT = 7

    c = BackendPatternConfig(torch.cat).set_observation_type(2)  # type: ignore[arg-type]
    assert c.observation_type is ObservationType.INPUT_OUTPUT_NOT_OBSERVED
    c.set_observation_type(Foreign.OUTPUT_SHARE_OBSERVER_WITH_INPUT)  # type: ignore[arg-type]
    assert c.observation_type is ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT
    with pytest.raises(ValidationError, match="observation_type must be"):
        c.set_observation_type("share")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="observation_type must be"):
        c.set_observation_type(5)  # type: ignore[arg-type]


def test_pattern_config_validation_errors():
    with pytest.raises(ValidationError, match="nn.Module subclass"):
        BackendPatternConfig(nn.Linear).set_root_module(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="fuser_method must be callable"):
        BackendPatternConfig(nn.Linear).set_fuser_method("fuse")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="expected a DTypeConfig"):
        BackendPatternConfig(nn.Linear).add_dtype_config(torch.uint8)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not an op"):
        BackendPatternConfig((nn.Conv2d, 3))
    with pytest.raises(ValidationError, match="at least one op"):
        BackendPatternConfig(())


def test_nested_pattern_rejected_with_execution_order_suggestion():
    nested = (nn.ReLU, (nn.BatchNorm2d, nn.Conv2d))
    with pytest.raises(ValidationError, match="execution order") as ei:
        BackendPatternConfig(nested)
    assert "(torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU)" in str(ei.value)
    with pytest.raises(ValidationError, match="pattern_complex_format") as ei:
        BackendPatternConfig()._set_pattern_complex_format(nested)
    assert "BackendPatternConfig((torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU))" in str(
        ei.value
    )
    # multi-input complex patterns have no flat equivalent: generic advice
    with pytest.raises(ValidationError, match="flat tuple of ops in execution order"):
        BackendPatternConfig()._set_pattern_complex_format((operator.add, (nn.BatchNorm2d, nn.Conv2d), object))
    with pytest.raises(ValidationError, match="pattern_complex_format"):
        BackendPatternConfig.from_dict({"pattern_complex_format": nested})


def test_pattern_config_dict_round_trip():
    wc = DTypeWithConstraints(dtype=torch.int8, quant_min_lower_bound=-127, quant_max_upper_bound=127)
    c = (
        BackendPatternConfig((nn.Conv2d, nn.BatchNorm2d, nn.ReLU))
        .set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
        .add_dtype_config(W8A8)
        .add_dtype_config(DTypeConfig(torch.int8, torch.int8, wc, torch.float))
        .set_fused_module(nn.Sequential)
        .set_fuser_method(_fuse_conv_bn_relu)
        .set_root_module(nn.Conv2d)
        .set_qat_module(nn.Conv2d)
        .set_reference_quantized_module(nn.Conv2d)
        ._set_input_type_to_index({"weight": 1})
        ._set_num_tensor_args_to_observation_type({1: ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT})
    )
    d = c.to_dict()
    assert set(d) == {
        "pattern",
        "observation_type",
        "dtype_configs",
        "root_module",
        "qat_module",
        "reference_quantized_module_for_root",
        "fused_module",
        "fuser_method",
        "input_type_to_index",
        "num_tensor_args_to_observation_type",
    }
    c2 = BackendPatternConfig.from_dict(d)
    assert c2.to_dict() == d
    assert c2.dtype_configs[1].weight_dtype_with_constraints == wc
    # minimal config: only the always-present keys
    assert set(BackendPatternConfig().to_dict()) == {"observation_type", "dtype_configs"}
    with pytest.raises(ValidationError, match="unknown keys \\['patern'\\]"):
        BackendPatternConfig.from_dict({"patern": nn.Linear})


def test_pattern_config_copy_is_independent():
    c = BackendPatternConfig(nn.Linear).add_dtype_config(W8A8)._set_input_type_to_index({"weight": 1})
    c2 = c.copy()
    c2.add_dtype_config(W8A8)
    c2._input_type_to_index["bias"] = 2
    c2.set_root_module(nn.Linear)
    assert len(c.dtype_configs) == 1
    assert c._input_type_to_index == {"weight": 1}
    assert c.root_module is None


# ----------------------------------------------------------------------------- BackendConfig


def _small_backend_config(name="mine") -> BackendConfig:
    return BackendConfig(name).set_backend_pattern_configs(
        [
            BackendPatternConfig(nn.Linear).add_dtype_config(W8A8),
            BackendPatternConfig((nn.Conv2d, nn.ReLU))
            .add_dtype_config(W8A8)
            .set_fused_module(nn.Sequential)
            .set_fuser_method(_fuse_conv_relu),
            BackendPatternConfig((nn.Conv2d, nn.BatchNorm2d, nn.ReLU))
            .add_dtype_config(W8A8)
            .set_fused_module(nn.Sequential)
            .set_fuser_method(_fuse_conv_bn_relu),
            BackendPatternConfig(torch.cat)
            .set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
            .add_dtype_config(DTypeConfig(torch.quint8, torch.quint8)),
        ]
    )


def test_backend_config_set_name_and_configs_property_is_a_copy():
    bc = BackendConfig().set_name("b")
    assert bc.name == "b" and bc.configs == []
    bc = _small_backend_config()
    lst = bc.configs
    lst.clear()
    assert len(bc.configs) == 4


def test_same_pattern_replaces_in_place():
    bc = _small_backend_config()
    order_before = [c.pattern_tuple for c in bc.configs]
    new_linear = BackendPatternConfig((nn.Linear,)).add_dtype_config(DTypeConfig(torch.uint8, torch.float, torch.int8, is_dynamic=True))
    bc.set_backend_pattern_config(new_linear)  # (nn.Linear,) is the same pattern as nn.Linear
    assert [c.pattern_tuple for c in bc.configs] == order_before
    assert bc.get_pattern_config(nn.Linear) is new_linear
    assert bc.get_pattern_config([nn.Linear]) is new_linear
    # a list pattern is the same key as a tuple pattern
    bc.set_backend_pattern_config(BackendPatternConfig([nn.Conv2d, nn.ReLU]))
    assert len(bc.configs) == 4
    assert bc.get_pattern_config((nn.Conv2d, nn.ReLU)).fuser_method is None
    assert bc.get_pattern_config((nn.ReLU, nn.Conv2d)) is None  # order matters
    assert bc.get_pattern_config(nn.Conv1d) is None


def test_config_without_pattern_rejected():
    with pytest.raises(ValidationError, match="has no pattern"):
        BackendConfig().set_backend_pattern_config(BackendPatternConfig())
    with pytest.raises(ValidationError, match="expected a BackendPatternConfig"):
        BackendConfig().set_backend_pattern_config({"pattern": nn.Linear})  # type: ignore[arg-type]


def test_fusion_configs_longest_first_and_pattern_configs():
    bc = _small_backend_config()
    fusion = bc.fusion_configs()
    assert [c.pattern_tuple for c in fusion] == [(nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.ReLU)]
    pc = bc.pattern_configs()
    assert set(pc) == {(nn.Linear,), (nn.Conv2d, nn.ReLU), (nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (torch.cat,)}
    pc.clear()
    assert len(bc.pattern_configs()) == 4


def test_copy_extends_without_touching_original():
    bc = _small_backend_config()
    before = bc.to_dict()
    cp = bc.copy()
    cp.set_name("other")
    cp.set_backend_pattern_config(BackendPatternConfig(nn.Conv1d).add_dtype_config(W8A8))
    cp.get_pattern_config(nn.Linear).add_dtype_config(DTypeConfig(torch.uint8, torch.uint8, torch.uint8))
    cp.get_pattern_config(torch.cat).set_observation_type(ObservationType.INPUT_OUTPUT_NOT_OBSERVED)
    assert bc.to_dict() == before
    assert bc.name == "mine" and len(bc.configs) == 4 and len(cp.configs) == 5


def test_summary_and_repr_list_patterns_and_dtypes():
    bc = _small_backend_config()
    s = bc.summary()
    assert "'mine'" in s and "4 patterns" in s
    assert "torch.nn.Conv2d -> torch.nn.BatchNorm2d -> torch.nn.ReLU" in s
    assert "uint8 x int8 -> uint8 (bias float32)" in s
    assert "OUTPUT_SHARE_OBSERVER_WITH_INPUT" in s
    assert "fuser_method: _fuse_conv_bn_relu" in s
    r = repr(bc)
    assert r.startswith("BackendConfig(name='mine', 4 patterns)") and "cat  [OUTPUT_SHARE_OBSERVER_WITH_INPUT]" in r


def test_backend_config_dict_round_trip():
    bc = _small_backend_config()
    d = bc.to_dict()
    assert set(d) == {"name", "configs"} and d["name"] == "mine" and len(d["configs"]) == 4
    bc2 = BackendConfig.from_dict(d)
    assert bc2.to_dict() == d
    # entries may also be BackendPatternConfig objects
    bc3 = BackendConfig.from_dict({"configs": bc.configs})
    assert bc3.name == "" and len(bc3.configs) == 4
    with pytest.raises(ValidationError, match="must be a dict or a BackendPatternConfig"):
        BackendConfig.from_dict({"configs": [nn.Linear]})
    with pytest.raises(ValidationError, match="unknown keys"):
        BackendConfig.from_dict({"nmae": "x"})


# ----------------------------------------------------------------------------- parity with torch.ao


def _structure(obj):
    """Compare configs as data: normalize dtypes, constraint objects, enums and patterns."""
    if isinstance(obj, dict):
        return {k: (normalize_pattern(v) if k == "pattern" else _structure(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_structure(v) for v in obj)
    if isinstance(obj, torch.dtype):
        return normalize_dtype(obj)
    if isinstance(obj, enum.Enum):
        return ("enum", obj.name)
    if hasattr(obj, "quant_min_lower_bound"):  # either library's DTypeWithConstraints
        return (
            "dtc",
            normalize_dtype(obj.dtype),
            obj.quant_min_lower_bound,
            obj.quant_max_upper_bound,
            obj.scale_min_lower_bound,
            obj.scale_max_upper_bound,
            obj.scale_exact_match,
            obj.zero_point_exact_match,
        )
    return obj


def _build(lib_config, lib_pattern, lib_dtype_config, lib_dtc, lib_ot):
    act = lib_dtc(dtype=torch.quint8, quant_min_lower_bound=0, quant_max_upper_bound=255, scale_min_lower_bound=2**-12)
    wt = lib_dtc(dtype=torch.qint8, quant_min_lower_bound=-127, quant_max_upper_bound=127)
    w8a8 = lib_dtype_config(input_dtype=act, output_dtype=act, weight_dtype=wt, bias_dtype=torch.float)
    dyn = lib_dtype_config(input_dtype=torch.quint8, output_dtype=torch.float, weight_dtype=torch.qint8, is_dynamic=True)
    sig = lib_dtype_config(
        input_dtype=torch.quint8,
        output_dtype=lib_dtc(dtype=torch.quint8, scale_exact_match=1 / 256, zero_point_exact_match=0),
    )
    return lib_config("similar").set_backend_pattern_configs(
        [
            lib_pattern(nn.Linear)
            .add_dtype_config(w8a8)
            .add_dtype_config(dyn)
            .set_root_module(nn.Linear)
            .set_reference_quantized_module(nn.Linear),
            lib_pattern((nn.Conv2d, nn.BatchNorm2d, nn.ReLU))
            .set_dtype_configs([w8a8])
            .set_fused_module(nn.Sequential)
            .set_fuser_method(_fuse_conv_bn_relu),
            lib_pattern(torch.nn.functional.linear)
            .add_dtype_config(w8a8)
            ._set_input_type_to_index({"weight": 1, "bias": 2}),
            lib_pattern(operator.add)
            .add_dtype_config(w8a8)
            ._set_num_tensor_args_to_observation_type(
                {
                    0: lib_ot.OUTPUT_SHARE_OBSERVER_WITH_INPUT,
                    1: lib_ot.OUTPUT_SHARE_OBSERVER_WITH_INPUT,
                    2: lib_ot.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT,
                }
            ),
            lib_pattern(torch.sigmoid).add_dtype_config(sig),
            lib_pattern("reshape")
            .set_observation_type(lib_ot.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
            .add_dtype_config(w8a8),
            lib_pattern(nn.Linear).add_dtype_config(dyn),  # replaces the first one in both libraries
        ]
    )


@pytest.fixture(scope="module")
def tao():
    import torch.ao.quantization  # noqa: F401  (torch.ao needs its package imported first)
    import torch.ao.quantization.backend_config as tbc
    import torch.ao.quantization.backend_config.utils  # noqa: F401

    return tbc


def test_structure_matches_torch_ao_for_a_similar_config(tao):
    ours = _build(BackendConfig, BackendPatternConfig, DTypeConfig, DTypeWithConstraints, ObservationType)
    theirs = _build(
        tao.BackendConfig, tao.BackendPatternConfig, tao.DTypeConfig, tao.DTypeWithConstraints, tao.ObservationType
    )
    ours_d, theirs_d = ours.to_dict(), theirs.to_dict()
    assert _structure(ours_d) == _structure(theirs_d)
    assert len(ours.configs) == len(theirs.configs) == 6
    # and each library's dict round trip preserves it
    assert _structure(BackendConfig.from_dict(ours_d).to_dict()) == _structure(theirs_d)
    assert _structure(tao.BackendConfig.from_dict(theirs_d).to_dict()) == _structure(ours_d)
    # our from_dict reads torch.ao's dict directly (migration path for custom backend configs)
    ported = BackendConfig.from_dict(theirs_d)
    assert _structure(ported.to_dict()) == _structure(ours_d)
    assert ported.get_pattern_config(nn.Linear).dtype_configs[0].input_dtype is torch.uint8
    assert isinstance(ported.get_pattern_config("reshape").observation_type, ObservationType)


def test_torch_native_backend_config_ports_as_data(tao):
    native = tao.get_native_backend_config()
    theirs_d = native.to_dict()
    ported = BackendConfig.from_dict(theirs_d)
    assert len(ported.configs) == len(native.configs)
    assert _structure(ported.to_dict()) == _structure(theirs_d)
    # fused patterns keep their fuser methods, and execution order is kept
    cbr = ported.get_pattern_config((nn.Conv2d, nn.BatchNorm2d, nn.ReLU))
    assert cbr is not None and cbr.fuser_method is not None
    assert all(len(a.pattern_tuple) >= len(b.pattern_tuple) for a, b in zip(ported.fusion_configs(), ported.fusion_configs()[1:]))
