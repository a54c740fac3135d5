"""PrepareCustomConfig / ConvertCustomConfig / FuseCustomConfig: torch.ao's API and dict keys, plus validation."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import quantfx.fx.custom_config as qcc
from quantfx.errors import ValidationError
from quantfx.fx.custom_config import (
    ConvertCustomConfig,
    FuseCustomConfig,
    PrepareCustomConfig,
    StandaloneModuleConfigEntry,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
ao_cc = pytest.importorskip("torch.ao.quantization.fx.custom_config")


class FloatCustom(nn.Module):
    def forward(self, x):
        return x


class ObservedCustom(nn.Module):
    @classmethod
    def from_float(cls, m):
        return cls()

    def forward(self, x):
        return x


class QuantizedCustom(nn.Module):
    @classmethod
    def from_observed(cls, m):
        return cls()


class NonTraceable(nn.Module):
    pass


class StandaloneSub(nn.Module):
    pass


EXAMPLE = (torch.zeros(1, 3),)


def _filled_prepare(mod) -> object:
    return (
        mod.PrepareCustomConfig()
        .set_standalone_module_name("sub1", None, EXAMPLE, None, None)
        .set_standalone_module_class(StandaloneSub, None, EXAMPLE, None, None)
        .set_float_to_observed_mapping(FloatCustom, ObservedCustom)
        .set_non_traceable_module_names(["a", "b.c"])
        .set_non_traceable_module_classes([NonTraceable])
        .set_input_quantized_indexes([0])
        .set_output_quantized_indexes([0, 1])
        .set_preserved_attributes(["attr1", "attr2"])
    )


def test_prepare_builder_sets_every_field_and_chains():
    c = _filled_prepare(qcc)
    assert isinstance(c, PrepareCustomConfig)
    assert c.standalone_module_names["sub1"] == StandaloneModuleConfigEntry(None, EXAMPLE, None, None)
    assert c.standalone_module_classes[StandaloneSub].example_inputs == EXAMPLE
    assert c.float_to_observed_mapping == {"static": {FloatCustom: ObservedCustom}}
    assert c.non_traceable_module_names == ["a", "b.c"]
    assert c.non_traceable_module_classes == [NonTraceable]
    assert c.input_quantized_indexes == [0]
    assert c.output_quantized_indexes == [0, 1]
    assert c.preserved_attributes == ["attr1", "attr2"]


def test_prepare_to_dict_matches_torch_ao():
    ours = _filled_prepare(qcc).to_dict()
    theirs = _filled_prepare(ao_cc).to_dict()
    assert ours == theirs
    assert set(ours) == {
        "standalone_module_name", "standalone_module_class", "float_to_observed_custom_module_class",
        "non_traceable_module_name", "non_traceable_module_class", "input_quantized_idxs",
        "output_quantized_idxs", "preserved_attributes",
    }


def test_prepare_from_torch_ao_dict_and_round_trip():
    theirs = _filled_prepare(ao_cc)
    ours = PrepareCustomConfig.from_dict(theirs.to_dict())
    assert ours == _filled_prepare(qcc)
    assert PrepareCustomConfig.from_dict(ours.to_dict()) == ours
    # and torch.ao reads our dict back
    assert ao_cc.PrepareCustomConfig.from_dict(ours.to_dict()).to_dict() == theirs.to_dict()


def test_empty_configs_to_dict_are_empty_like_torch_ao():
    assert PrepareCustomConfig().to_dict() == ao_cc.PrepareCustomConfig().to_dict() == {}
    assert ConvertCustomConfig().to_dict() == {}
    assert FuseCustomConfig().to_dict() == {}


def test_convert_and_fuse_configs_match_torch_ao():
    ours = ConvertCustomConfig().set_observed_to_quantized_mapping(ObservedCustom, QuantizedCustom).set_preserved_attributes(["x"])
    theirs = ao_cc.ConvertCustomConfig().set_observed_to_quantized_mapping(ObservedCustom, QuantizedCustom).set_preserved_attributes(["x"])
    assert ours.to_dict() == theirs.to_dict()
    assert ConvertCustomConfig.from_dict(theirs.to_dict()) == ours
    assert ours.observed_to_quantized_mapping == {"static": {ObservedCustom: QuantizedCustom}}
    fuse = FuseCustomConfig().set_preserved_attributes(["y"])
    assert fuse.to_dict() == ao_cc.FuseCustomConfig().set_preserved_attributes(["y"]).to_dict() == {"preserved_attributes": ["y"]}
    assert FuseCustomConfig.from_dict({"preserved_attributes": ["y"]}) == fuse


def test_convert_mapping_accepts_dynamic_and_torch_ao_quant_type():
    from torch.ao.quantization.quant_type import QuantType

    c = ConvertCustomConfig().set_observed_to_quantized_mapping(ObservedCustom, QuantizedCustom, QuantType.DYNAMIC)
    c.set_observed_to_quantized_mapping(FloatCustom, QuantizedCustom, "weight_only")
    assert set(c.observed_to_quantized_mapping) == {"dynamic", "weight_only"}
    with pytest.raises(ValidationError, match="Unknown quantization type"):
        ConvertCustomConfig().set_observed_to_quantized_mapping(ObservedCustom, QuantizedCustom, "int4")


@pytest.mark.parametrize("cls", [PrepareCustomConfig, ConvertCustomConfig, FuseCustomConfig])
def test_coerce(cls):
    empty = cls.coerce(None)
    assert type(empty) is cls and empty.to_dict() == {}
    inst = cls().set_preserved_attributes(["a"])
    assert cls.coerce(inst) is inst
    from_dict = cls.coerce({"preserved_attributes": ["a"]})
    assert type(from_dict) is cls and from_dict.preserved_attributes == ["a"]
    ao_inst = getattr(ao_cc, cls.__name__)().set_preserved_attributes(["b"])
    converted = cls.coerce(ao_inst)
    assert type(converted) is cls and converted.preserved_attributes == ["b"]
    with pytest.raises(ValidationError, match=cls.__name__):
        cls.coerce(42)
    with pytest.raises(ValidationError):
        cls.coerce(["preserved_attributes"])


def test_lone_string_instead_of_list_is_rejected_with_the_fix():
    with pytest.raises(ValidationError, match=r"set_non_traceable_module_names\(\['sub.block'\]\)"):
        PrepareCustomConfig().set_non_traceable_module_names("sub")
    with pytest.raises(ValidationError, match="Wrap it in a list"):
        PrepareCustomConfig().set_preserved_attributes("attr")
    with pytest.raises(ValidationError, match="classes"):
        PrepareCustomConfig().set_non_traceable_module_classes(["NonTraceable"])
    with pytest.raises(ValidationError, match="ints"):
        PrepareCustomConfig().set_input_quantized_indexes([True])
    with pytest.raises(ValidationError):
        PrepareCustomConfig().set_output_quantized_indexes(0)


def test_unknown_dict_key_names_the_closest_key():
    with pytest.raises(ValidationError, match="Did you mean 'non_traceable_module_name'"):
        PrepareCustomConfig.from_dict({"non_traceable_module_names": ["a"]})
    with pytest.raises(ValidationError, match="preserved_attributes"):
        ConvertCustomConfig.from_dict({"preserved_attribute": ["a"]})
    with pytest.raises(ValidationError):
        FuseCustomConfig.from_dict({"bogus": 1})


def test_float_to_observed_validation():
    with pytest.raises(ValidationError, match="only static"):
        PrepareCustomConfig().set_float_to_observed_mapping(FloatCustom, ObservedCustom, "dynamic")
    with pytest.raises(ValidationError, match="from_float"):
        PrepareCustomConfig().set_float_to_observed_mapping(FloatCustom, FloatCustom)
    with pytest.raises(ValidationError, match="from_observed"):
        ConvertCustomConfig().set_observed_to_quantized_mapping(ObservedCustom, FloatCustom)
    with pytest.raises(ValidationError, match="only static"):
        PrepareCustomConfig.from_dict({"float_to_observed_custom_module_class": {"dynamic": {FloatCustom: ObservedCustom}}})


def test_standalone_entries():
    child = {"non_traceable_module_name": ["x"]}
    c = PrepareCustomConfig().set_standalone_module_name("sub", None, torch.zeros(2), child, None)
    entry = c.standalone_module_names["sub"]
    assert isinstance(entry.prepare_custom_config, PrepareCustomConfig)
    assert entry.prepare_custom_config.non_traceable_module_names == ["x"]
    assert isinstance(entry.example_inputs, tuple) and len(entry.example_inputs) == 1
    with pytest.raises(ValidationError):
        PrepareCustomConfig().set_standalone_module_class("StandaloneSub", None, EXAMPLE, None, None)
    with pytest.raises(ValidationError, match="tuples"):
        PrepareCustomConfig.from_dict({"standalone_module_name": [("sub", None)]})
    d = c.to_dict()
    assert d["standalone_module_name"][0][3] == {"non_traceable_module_name": ["x"]}
    assert PrepareCustomConfig.from_dict(d) == c


def test_standalone_qconfig_mapping_dict_is_coerced():
    qconfig_mapping = pytest.importorskip("quantfx.qconfig_mapping")
    mapping = qconfig_mapping.QConfigMapping()
    d = {"standalone_module_name": [("sub", mapping.to_dict(), EXAMPLE, None, None)]}
    c = PrepareCustomConfig.from_dict(d)
    assert isinstance(c.standalone_module_names["sub"].qconfig_mapping, qconfig_mapping.QConfigMapping)
    with pytest.raises(ValidationError, match="QConfigMapping"):
        PrepareCustomConfig.from_dict({"standalone_module_name": [("sub", 3, EXAMPLE, None, None)]})


def test_setters_copy_the_callers_list():
    names = ["a"]
    c = PrepareCustomConfig().set_non_traceable_module_names(names)
    names.append("b")
    assert c.non_traceable_module_names == ["a"]
    d = c.to_dict()
    d["non_traceable_module_name"].append("z")
    assert c.non_traceable_module_names == ["a"]


def test_skipped_module_names_and_classes():
    c = _filled_prepare(qcc)
    names, classes = c.skipped_module_names_and_classes()
    assert names == ["a", "b.c", "sub1"]
    assert classes == [NonTraceable, StandaloneSub, FloatCustom]
    names, classes = c.skipped_module_names_and_classes(is_standalone_module=True)
    assert names == ["a", "b.c"] and classes == [NonTraceable]


def test_repr_and_equality():
    c = PrepareCustomConfig().set_preserved_attributes(["a"])
    assert repr(c) == "PrepareCustomConfig({'preserved_attributes': ['a']})"
    assert c == PrepareCustomConfig().set_preserved_attributes(["a"])
    assert c != PrepareCustomConfig()
    assert c != FuseCustomConfig().set_preserved_attributes(["a"])
