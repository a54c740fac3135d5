"""quantfx.backend_config.common: the standard pattern sets and the reference backend's config.

Checked three ways: against torch.ao's native backend config (every pattern it
has, with the same observation type and module swaps), by running every fusion
config through the fuse pass, and by building every QAT / reference module the
configs name from the float module they are meant for.
"""

from __future__ import annotations

import operator
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import quantfx.nn.intrinsic as nni
import quantfx.nn.intrinsic.qat as nniqat
import quantfx.nn.qat as nnqat
import quantfx.nn.reference as nnqr
from quantfx import qconfig as qqc
from quantfx.backend_config import BackendConfig, DTypeConfig, DTypeWithConstraints, ObservationType
from quantfx.backend_config import common
from quantfx.errors import ValidationError
from quantfx.fx.fuse import FUSED_KEY, FUSION_SKIPPED_KEY, fuse
from quantfx.fx.tracer import trace_for_quantization
from quantfx.nn.reference import WeightQParams

warnings.filterwarnings("ignore", category=DeprecationWarning)
tq = pytest.importorskip("torch.ao.quantization")
import torch.ao.quantization.backend_config.utils  # noqa: E402,F401  (torch.ao's to_dict / configs need it loaded)
from torch.ao.quantization.backend_config import get_native_backend_config  # noqa: E402

REF = common.get_reference_backend_config()
OURS = REF.pattern_configs()

# ----------------------------------------------------------------------------- torch.ao parity

_TORCH_TO_QUANTFX_MODULES = (
    ("torch.ao.nn.intrinsic.qat", nniqat),
    ("torch.ao.nn.intrinsic", nni),
    ("torch.ao.nn.qat", nnqat),
    ("torch.ao.nn.quantized.reference", nnqr),
)
# torch.ao's native config has these; the reference backend leaves them out on purpose
_NOT_IN_REFERENCE = {nn.GRUCell, nn.LSTMCell, nn.RNNCell, nn.LSTM, nn.GRU}  # no reference RNN modules (rnn_op_configs)
# ops quantfx treats differently on purpose: dropout is the identity at inference, so its output shares the input's qparams
_OBSERVATION_DIFFERS = {nn.Dropout, F.dropout}


def _to_quantfx(op):
    if isinstance(op, type):
        for prefix, pkg in _TORCH_TO_QUANTFX_MODULES:
            if op.__module__.startswith(prefix):
                return getattr(pkg, op.__name__)
    return op


def _torch_configs():
    for c in get_native_backend_config().configs:
        if c.pattern is None:  # complex-format patterns (ConvAdd for onednn) have no chain form
            continue
        pattern = tuple(_to_quantfx(op) for op in (c.pattern if isinstance(c.pattern, tuple) else (c.pattern,)))
        yield pattern, c


def test_every_torch_native_pattern_is_in_the_reference_config_with_the_same_swaps():
    checked = 0
    for pattern, theirs in _torch_configs():
        if pattern[0] in _NOT_IN_REFERENCE:
            assert common.rnn_op_configs([common.default_dynamic_int8_dtype_config])  # available to backends
            continue
        ours = OURS.get(pattern)
        assert ours is not None, f"torch.ao pattern {pattern} missing"
        if pattern[0] not in _OBSERVATION_DIFFERS:
            assert ours.observation_type.name == theirs.observation_type.name, pattern
        # module swaps (torch.ao also sets root_module on (conv, bn, F.relu), where nothing reads it)
        for field in () if theirs.fuser_method is not None else ("root_module", "qat_module", "reference_quantized_module"):
            expected = _to_quantfx(getattr(theirs, field))
            if expected is not None:
                assert getattr(ours, field) is expected, f"{pattern}: {field}"
        if theirs.fused_module is not None:
            assert ours.fused_module is _to_quantfx(theirs.fused_module), pattern
        assert (ours.fuser_method is None) == (theirs.fuser_method is None), pattern
        t_map = {k: v.name for k, v in theirs._num_tensor_args_to_observation_type.items()}
        assert {k: v.name for k, v in ours._num_tensor_args_to_observation_type.items()} == t_map, pattern
        assert ours._input_type_to_index == theirs._input_type_to_index, pattern
        checked += 1
    assert checked >= 180  # torch.ao 2.13 native config: 189 chain patterns besides RNNs


def test_dtype_constants_are_plain_and_match_torch_native():
    from torch.ao.quantization.backend_config import native

    for name in ("weighted_op_quint8_dtype_config", "default_op_quint8_dtype_config", "default_dynamic_int8_dtype_config",
                 "default_dynamic_float16_dtype_config", "input_output_only_quint8_dtype_config",
                 "weight_only_quint8_dtype_config", "default_op_fp16_dtype_config"):
        ours, theirs = getattr(common, name), getattr(native, name)
        for f in ("input_dtype", "output_dtype", "weight_dtype"):
            got = getattr(ours, f)
            assert got not in (torch.quint8, torch.qint8, torch.qint32)
            assert got == {torch.quint8: torch.uint8, torch.qint8: torch.int8}.get(getattr(theirs, f), getattr(theirs, f))
        assert bool(ours.is_dynamic) == bool(theirs.is_dynamic)
    assert common.default_static_int8_dtype_config.weight_dtype == torch.int8
    conv = OURS[(nn.Conv2d,)]
    assert conv.dtype_configs == [common.weighted_op_quint8_dtype_config]
    linear_dynamic = [dc.is_dynamic for dc in OURS[(nn.Linear,)].dtype_configs]
    assert linear_dynamic == [None, True, True]
    assert OURS[(nn.Embedding,)].dtype_configs == [common.weight_only_quint8_dtype_config]


# ----------------------------------------------------------------------------- fusion configs, end to end

_CH = 4


def _step(op):
    """A Chain step for a pattern op: a module instance or a function of the tensor."""
    if isinstance(op, type):
        if op in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
            return op(_CH, _CH, 3, padding=1)
        if op is nn.Linear:
            return nn.Linear(_CH, _CH)
        if issubclass(op, nn.modules.batchnorm._BatchNorm):
            bn = op(_CH)
            with torch.no_grad():
                bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.5, 4.0), bn.bias.uniform_(-1.0, 1.0)
            return bn
        if op is nn.Hardtanh:
            return nn.Hardtanh(0.0, 6.0)
        return op()
    if op == "relu":
        return lambda t: t.relu()
    if op is F.hardtanh:
        return lambda t: F.hardtanh(t, 0.0, 6.0)
    return op


def _input_for(first) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    dim = {nn.Conv1d: 1, nn.ConvTranspose1d: 1, nn.Conv2d: 2, nn.ConvTranspose2d: 2, nn.BatchNorm2d: 2,
           nn.Conv3d: 3, nn.ConvTranspose3d: 3, nn.BatchNorm3d: 3, nn.Linear: 0}[first]
    return torch.randn((3, _CH) + (5,) * dim, generator=g) * 3


class Chain(nn.Module):
    def __init__(self, steps) -> None:
        super().__init__()
        self.fns = []
        for i, s in enumerate(steps):
            if isinstance(s, nn.Module):
                self.add_module(f"m{i}", s)
                self.fns.append(None)
            else:
                self.fns.append(s)

    def forward(self, x):
        for i, fn in enumerate(self.fns):
            x = getattr(self, f"m{i}")(x) if fn is None else fn(x)
        return x


FUSION_CONFIGS = {c.pattern_tuple: c for c in REF.fusion_configs()}


def _name(pattern) -> str:
    return "-".join(getattr(op, "__name__", str(op)) for op in pattern)


@pytest.mark.parametrize("pattern", list(FUSION_CONFIGS), ids=_name)
def test_every_fusion_config_fuses_its_pattern(pattern):
    config = FUSION_CONFIGS[pattern]
    only = BackendConfig("one").set_backend_pattern_config(config)
    torch.manual_seed(0)
    model = Chain([_step(op) for op in pattern])
    x = _input_for(pattern[0])
    # eval: one module, same numerics (BN folded)
    model.eval()
    fused = fuse(trace_for_quantization(model), False, backend_config=only)
    assert list(fused.meta[FUSED_KEY]) == ["m0"] and len(fused.meta[FUSED_KEY]["m0"]) == len(pattern)
    assert [n.op for n in fused.graph.nodes] == ["placeholder", "call_module", "output"]
    torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    # QAT: the module the config names (ConvTranspose + BN has none and stays unfused)
    model.train()
    qat = fuse(trace_for_quantization(model), True, backend_config=only)
    if config.fused_module is None:
        assert "m0" in qat.meta[FUSION_SKIPPED_KEY]
    else:
        assert type(qat.m0) is config.fused_module


# ----------------------------------------------------------------------------- QAT and reference swaps


def _float_instance(cls):
    """A float module of a pattern type (fused containers built from their parts)."""
    if cls in (nn.Embedding, nn.EmbeddingBag):
        return cls(10, _CH)
    if issubclass(cls, nni._FusedModule):
        return cls(*[_step(t) for t in cls._EXPECTED])
    return _step(cls)


def _example(mod) -> tuple:
    if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
        idx = torch.tensor([[1, 2, 3], [4, 5, 9]])
        return (idx,)
    first = mod[0] if isinstance(mod, nni._FusedModule) else mod
    return (_input_for(type(first)),)


QAT_CONFIGS = [c for c in REF.configs if c.qat_module is not None]


@pytest.mark.parametrize("config", QAT_CONFIGS, ids=lambda c: _name(c.pattern_tuple))
def test_qat_module_swap_and_back_to_reference(config):
    """prepare_qat swaps pattern -> qat_module; convert maps the QAT module to root_module / reference module."""
    (float_cls,) = config.pattern_tuple
    torch.manual_seed(0)
    float_mod = _float_instance(float_cls)
    is_emb = float_cls in (nn.Embedding, nn.EmbeddingBag)
    qc = qqc.default_embedding_qat_qconfig if is_emb else qqc.default_qat_qconfig
    qat = config.qat_module.from_float(float_mod, qc)
    assert type(qat) is config.qat_module
    x = _example(float_mod)
    assert qat(*x).shape == float_mod(*x).shape
    qat_config = OURS[(config.qat_module,)]  # the QAT module is itself a pattern, for convert
    back = qat.to_float()
    root = back[0] if isinstance(back, nni._FusedModule) else back
    assert type(root) is qat_config.root_module
    obs = qc.weight()
    obs(root.weight.detach())
    ref = qat_config.reference_quantized_module.from_float(root, WeightQParams.from_observer(obs))
    assert ref(*x).shape == root(*x).shape


REF_CONFIGS = [c for c in REF.configs if c.reference_quantized_module is not None and len(c.pattern_tuple) == 1
               and c.pattern_tuple[0] is c.root_module]


@pytest.mark.parametrize("config", REF_CONFIGS, ids=lambda c: _name(c.pattern_tuple))
def test_reference_module_swap_is_close_to_float(config):
    torch.manual_seed(0)
    root = _float_instance(config.root_module)
    if isinstance(root, (nn.Embedding, nn.EmbeddingBag)):
        obs = qqc.float_qparams_weight_only_qconfig.weight()
    else:
        obs = qqc.default_per_channel_qconfig.weight()
        if isinstance(root, nn.modules.conv._ConvTransposeNd):
            obs = qqc.default_qconfig.weight()
    obs(root.weight.detach())
    ref = config.reference_quantized_module.from_float(root, WeightQParams.from_observer(obs))
    x = _example(root)
    y, y_ref = root(*x), ref(*x)
    assert y_ref.shape == y.shape
    err = (y_ref - y).abs().max() / y.abs().max()
    assert 0 < err < 0.02, f"{config.reference_quantized_module.__name__}: relative error {err}"


# ----------------------------------------------------------------------------- op families


def test_observation_types_of_op_families():
    share = ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT
    for op in (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, F.pad, nn.ZeroPad2d, "view", "reshape",
               torch.flatten, F.interpolate, nn.ReLU6, nn.Identity, torch.cat):
        assert OURS[(op,)].observation_type is share, op
    for op in (nn.Hardswish, nn.LayerNorm, nn.GroupNorm, nn.Sigmoid, operator.add, nn.BatchNorm2d):
        assert OURS[(op,)].observation_type is ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT, op
    for op in ("shape", "size"):
        assert OURS[(op,)].observation_type is ObservationType.INPUT_OUTPUT_NOT_OBSERVED
    add_relu = OURS[(operator.add, nn.ReLU)]
    assert add_relu._num_tensor_args_to_observation_type[1] is share
    assert OURS[(F.layer_norm,)]._input_type_to_index == {"weight": 2, "bias": 3}


def test_fixed_qparams_ops_carry_exact_scale_and_zero_point():
    sig = OURS[(torch.sigmoid,)].dtype_configs[0].output_dtype_with_constraints
    assert (sig.dtype, sig.scale_exact_match, sig.zero_point_exact_match) == (torch.uint8, 1 / 256, 0)
    tanh = OURS[(nn.Tanh,)].dtype_configs[0].input_dtype_with_constraints
    assert (tanh.scale_exact_match, tanh.zero_point_exact_match) == (2 / 256, 128)
    assert OURS[(F.softmax,)].dtype_configs[0].output_dtype_with_constraints.scale_exact_match == 1 / 256
    # configs of other dtypes pass through unchanged; scale bounds make no sense with a fixed scale
    fp16 = common.add_fixed_qparams_to_dtype_configs([common.default_op_fp16_dtype_config], common.FIXED_QPARAMS_OP_0TO1_CONSTRAINTS)
    assert fp16 == [common.default_op_fp16_dtype_config]
    bounded = DTypeConfig(input_dtype=DTypeWithConstraints(torch.uint8, scale_min_lower_bound=2**-12), output_dtype=torch.uint8)
    with pytest.raises(ValidationError, match="fixed-qparams"):
        common.fixed_qparams_op_configs([bounded])


def test_reference_config_is_fresh_and_named():
    a, b = common.get_reference_backend_config(), common.get_reference_backend_config()
    assert a.name == "reference" and a is not b
    a.set_backend_pattern_config(a.get_pattern_config(nn.Conv2d).copy().set_qat_module(None))
    assert b.get_pattern_config(nn.Conv2d).qat_module is nnqat.Conv2d
    # every pattern is defined once: no config silently replaced another
    families = [common.conv_configs, common.linear_configs, common.binary_op_configs, common.share_qparams_op_configs,
                common.fixed_qparams_op_configs, common.bn_configs, common.default_op_configs, common.ln_configs,
                common.embedding_op_configs, common.tensor_info_op_configs]
    patterns = [c.pattern_tuple for f in families for c in f([common.default_op_quint8_dtype_config])]
    patterns.append(common.cat_config([common.default_op_quint8_dtype_config]).pattern_tuple)
    assert len(patterns) == len(set(patterns)) == len(a.configs)
