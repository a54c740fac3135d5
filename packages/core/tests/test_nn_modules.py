"""quantfx.nn: fused float modules, BN folding, fuser methods, QAT modules, reference modules.

QAT and reference modules are checked against torch.ao's (the oracle, deprecated
but present in torch 2.13) given the same weights and equivalent qconfigs /
qparams; BN folding against ``torch.nn.utils.fusion`` and against the float
modules it replaces.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import quantfx.nn.intrinsic as nni
import quantfx.nn.intrinsic.qat as nniqat
import quantfx.nn.qat as nnqat
import quantfx.nn.reference as nnqr
from quantfx import fake_quantize as qfq
from quantfx import observers as qobs
from quantfx import qconfig as qqc
from quantfx.errors import ValidationError
from quantfx.fuser_method_mappings import (
    FusionSkipped,
    fuse_conv_bn,
    fuse_conv_bn_relu,
    fuse_conv_relu,
    fuse_convtranspose_bn,
    fuse_linear_bn,
    fuse_linear_relu,
    get_fuser_method,
)
from quantfx.nn.intrinsic.folding import fold_conv_bn_eval, fold_linear_bn_eval
from quantfx.nn.reference import WeightQParams

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)
tq = pytest.importorskip("torch.ao.quantization")
import torch.ao.nn.intrinsic as t_nni  # noqa: E402
import torch.ao.nn.intrinsic.qat as t_nniqat  # noqa: E402
import torch.ao.nn.qat as t_nnqat  # noqa: E402
import torch.ao.nn.quantized.reference as t_nnqr  # noqa: E402

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 4, 4)}


def _randomize_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int = 0) -> nn.modules.batchnorm._BatchNorm:
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return bn


def _x(dim: int, c: int, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, c) + SPATIAL[dim], generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- fused float modules


def test_fused_modules_check_types_and_run_the_float_chain():
    conv, relu = nn.Conv2d(3, 4, 3), nn.ReLU()
    fused = nni.ConvReLU2d(conv, relu)
    x = _x(2, 3)
    assert torch.equal(fused(x), relu(conv(x)))
    assert isinstance(fused, nni._FusedModule) and isinstance(fused, nn.Sequential)
    with pytest.raises(ValidationError, match="ConvReLU2d fuses Conv2d -> ReLU"):
        nni.ConvReLU2d(nn.Conv1d(3, 4, 3), relu)
    with pytest.raises(ValidationError):
        nni.ConvReLU6_2d(conv, nn.ReLU())
    with pytest.raises(ValidationError):
        nni.ConvBnReLU2d(conv, nn.BatchNorm2d(4))  # missing the ReLU
    # nn.Sequential slicing rebuilds the container from an OrderedDict
    assert isinstance(fused[:1], nni.ConvReLU2d)


# ----------------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_fold_conv_bn_matches_torch_fusion_and_float(dim, bias):
    torch.manual_seed(dim)
    conv = CONV[dim](4, 6, 3, padding=1, bias=bias).eval()
    bn = _randomize_bn(BN[dim](6), dim).eval()
    ours = fold_conv_bn_eval(conv, bn)
    theirs = fuse_conv_bn_eval(conv, bn)
    assert type(ours) is CONV[dim]
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=0, atol=1e-6)
    x = _x(dim, 4)
    torch.testing.assert_close(ours(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    # the input modules are untouched
    assert conv.bias is None if not bias else conv.bias is not ours.bias


def test_fold_linear_bn_matches_torch_fusion():
    lin = nn.Linear(5, 7).eval()
    bn = _randomize_bn(nn.BatchNorm1d(7)).eval()
    ours, theirs = fold_linear_bn_eval(lin, bn), fuse_linear_bn_eval(lin, bn)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=0, atol=1e-6)
    x = torch.randn(8, 5)
    torch.testing.assert_close(ours(x), bn(lin(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_fold_grouped_conv_transpose_bn_matches_float(groups):
    # torch.nn.utils.fusion reshapes the BN scale as [1, -1, ...], wrong for grouped transposed convs
    convt = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=groups).eval()
    bn = _randomize_bn(nn.BatchNorm2d(6)).eval()
    x = _x(2, 4)
    folded = fold_conv_bn_eval(convt, bn)
    torch.testing.assert_close(folded(x), bn(convt(x)), rtol=1e-5, atol=1e-5)
    if groups > 1:
        with pytest.raises(RuntimeError):
            fuse_conv_bn_eval(convt, bn, transpose=True)(x)


def test_fold_refuses_training_mode_and_bn_without_stats():
    conv, bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
    with pytest.raises(ValidationError, match="model.eval"):
        fold_conv_bn_eval(conv, bn)
    with pytest.raises(ValidationError, match="track_running_stats=False"):
        fold_conv_bn_eval(conv.eval(), nn.BatchNorm2d(4, track_running_stats=False).eval())
    with pytest.raises(ValidationError, match="does not match"):
        fold_conv_bn_eval(conv.eval(), nn.BatchNorm2d(5).eval())


# ----------------------------------------------------------------------------- fuser methods


def test_fuser_methods_eval_fold_and_qat_containers():
    conv = nn.Conv2d(3, 4, 3).eval()
    bn = _randomize_bn(nn.BatchNorm2d(4)).eval()
    x = _x(2, 3)
    expected = F.relu(bn(conv(x)))

    folded = fuse_conv_bn(False, conv, bn)
    assert type(folded) is nn.Conv2d
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)

    fused = fuse_conv_bn_relu(False, conv, bn, nn.ReLU())
    assert type(fused) is nni.ConvReLU2d and type(fused[0]) is nn.Conv2d
    torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)

    conv_t, bn_t = copy.deepcopy(conv).train(), copy.deepcopy(bn).train()
    assert type(fuse_conv_bn(True, conv_t, bn_t)) is nni.ConvBn2d
    qat = fuse_conv_bn_relu(True, conv_t, bn_t, nn.ReLU())
    assert type(qat) is nni.ConvBnReLU2d and qat[0] is conv_t and qat[1] is bn_t

    # ReLU6 and Hardtanh(0, 6) fuse as ReLU6; other Hardtanh ranges are declined
    relu6 = fuse_conv_bn_relu(False, conv, bn, nn.Hardtanh(0.0, 6.0))
    assert type(relu6) is nni.ConvReLU6_2d and type(relu6[1]) is nn.ReLU6
    torch.testing.assert_close(relu6(x), F.relu6(bn(conv(x))), rtol=1e-5, atol=1e-5)
    assert type(fuse_conv_bn_relu(True, conv_t, bn_t, nn.ReLU6())) is nni.ConvBnReLU6_2d
    with pytest.raises(FusionSkipped, match="not ReLU6"):
        fuse_conv_relu(False, conv, nn.Hardtanh(-1.0, 1.0))
    assert type(fuse_conv_relu(False, nn.Conv1d(2, 2, 1), nn.ReLU6())) is nni.ConvReLU6_1d
    assert type(fuse_linear_relu(False, nn.Linear(2, 2), nn.ReLU())) is nni.LinearReLU

    with pytest.raises(ValidationError, match="same mode"):
        fuse_conv_bn(True, conv_t, bn)
    with pytest.raises(ValidationError, match="expected BatchNorm2d"):
        fuse_conv_bn(False, conv, nn.BatchNorm1d(4).eval())


def test_linear_bn_and_conv_transpose_bn_fusers():
    lin, bn = nn.Linear(4, 3), _randomize_bn(nn.BatchNorm1d(3))
    assert type(fuse_linear_bn(True, lin, bn)) is nni.LinearBn1d
    folded = fuse_linear_bn(False, lin.eval(), bn.eval())
    x = torch.randn(5, 4)
    torch.testing.assert_close(folded(x), bn(lin(x)), rtol=1e-5, atol=1e-5)
    convt, bnt = nn.ConvTranspose2d(3, 4, 2), nn.BatchNorm2d(4)
    with pytest.raises(FusionSkipped, match="no QAT fused module"):
        fuse_convtranspose_bn(True, convt, bnt)
    assert get_fuser_method((nn.Conv2d, nn.BatchNorm2d, nn.ReLU)) is fuse_conv_bn_relu
    with pytest.raises(ValidationError, match="no fuser method"):
        get_fuser_method((nn.Linear, nn.Tanh))


# ----------------------------------------------------------------------------- QAT modules vs torch.ao


def _qconfigs(per_channel: bool = False):
    if per_channel:
        return (
            qqc.QConfig(activation=qfq.default_fake_quant, weight=qfq.default_per_channel_weight_fake_quant),
            tq.QConfig(activation=tq.default_fake_quant, weight=tq.default_per_channel_weight_fake_quant),
        )
    return qqc.default_qat_qconfig, tq.default_qat_qconfig


def _train_in_lockstep(ours: nn.Module, theirs: nn.Module, make_x, steps: int = 3, lr: float = 0.05):
    """Same inputs, same SGD steps; after each step every output, parameter and buffer must agree."""
    opt_a = torch.optim.SGD(ours.parameters(), lr=lr)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=lr)
    for step in range(steps):
        x = make_x(step)
        ya, yb = ours(x), theirs(x)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        (ya * ya).mean().backward()
        (yb * yb).mean().backward()
        opt_a.step(), opt_b.step(), opt_a.zero_grad(), opt_b.zero_grad()
    a, b = ours.state_dict(), theirs.state_dict()
    for k, v in b.items():
        if k.endswith(("fake_quant_enabled", "observer_enabled")):
            continue
        assert k in a, f"missing state {k}"
        torch.testing.assert_close(a[k].float(), v.float(), rtol=1e-5, atol=1e-5, msg=f"state {k} differs")


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qat_conv_matches_torch_ao(dim, per_channel):
    torch.manual_seed(0)
    ours_qc, theirs_qc = _qconfigs(per_channel)
    float_conv = CONV[dim](3, 5, 3, padding=1, groups=1)
    ours = nnqat.__dict__[f"Conv{dim}d"].from_float(float_conv, ours_qc)
    t_float = copy.deepcopy(float_conv)
    t_float.qconfig = theirs_qc
    theirs = t_nnqat.__dict__[f"Conv{dim}d"].from_float(t_float)
    assert ours.weight is float_conv.weight  # parameters are shared, like torch.ao
    _train_in_lockstep(ours, theirs, lambda s: _x(dim, 3, seed=s))
    back = ours.to_float()
    assert type(back) is CONV[dim]
    torch.testing.assert_close(back.weight, ours.weight.detach())


@pytest.mark.parametrize("per_channel", [False, True])
def test_qat_linear_and_linear_relu_match_torch_ao(per_channel):
    torch.manual_seed(0)
    ours_qc, theirs_qc = _qconfigs(per_channel)
    lin = nn.Linear(6, 4)
    t_lin = copy.deepcopy(lin)
    t_lin.qconfig = theirs_qc
    _train_in_lockstep(nnqat.Linear.from_float(lin, ours_qc), t_nnqat.Linear.from_float(t_lin), lambda s: torch.randn(8, 6))

    lin = nn.Linear(6, 4)
    fused = nni.LinearReLU(lin, nn.ReLU())
    t_fused = t_nni.LinearReLU(copy.deepcopy(lin), nn.ReLU())
    t_fused.qconfig = t_fused[0].qconfig = theirs_qc  # torch.ao reads it from the inner Linear
    ours = nniqat.LinearReLU.from_float(fused, ours_qc)
    _train_in_lockstep(ours, t_nniqat.LinearReLU.from_float(t_fused), lambda s: torch.randn(8, 6))
    back = ours.to_float()
    assert type(back) is nni.LinearReLU and type(back[0]) is nn.Linear


def test_qat_conv_relu_matches_torch_ao_and_to_float_is_fused():
    torch.manual_seed(0)
    ours_qc, theirs_qc = _qconfigs()
    conv = nn.Conv2d(3, 4, 3)
    t_fused = t_nni.ConvReLU2d(copy.deepcopy(conv), nn.ReLU())
    t_fused.qconfig = t_fused[0].qconfig = theirs_qc  # torch.ao reads it from the inner Conv2d
    ours = nniqat.ConvReLU2d.from_float(nni.ConvReLU2d(conv, nn.ReLU()), ours_qc)
    _train_in_lockstep(ours, t_nniqat.ConvReLU2d.from_float(t_fused), lambda s: _x(2, 3, seed=s))
    back = ours.to_float()
    assert type(back) is nni.ConvReLU2d
    x = _x(2, 3)
    torch.testing.assert_close(back(x), F.relu(F.conv2d(x, ours.weight, ours.bias)))


def _conv_bn_pair(dim: int, relu: bool, bias: bool):
    torch.manual_seed(dim)
    conv = CONV[dim](3, 6, 3, padding=1, bias=bias)
    bn = _randomize_bn(BN[dim](6), dim)
    ours_qc, theirs_qc = _qconfigs(per_channel=True)
    if relu:
        f_ours = nni.__dict__[f"ConvBnReLU{dim}d"](conv, bn, nn.ReLU())
        f_theirs = t_nni.__dict__[f"ConvBnReLU{dim}d"](copy.deepcopy(conv), copy.deepcopy(bn), nn.ReLU())
        cls_o, cls_t = nniqat.__dict__[f"ConvBnReLU{dim}d"], t_nniqat.__dict__[f"ConvBnReLU{dim}d"]
    else:
        f_ours = nni.__dict__[f"ConvBn{dim}d"](conv, bn)
        f_theirs = t_nni.__dict__[f"ConvBn{dim}d"](copy.deepcopy(conv), copy.deepcopy(bn))
        cls_o, cls_t = nniqat.__dict__[f"ConvBn{dim}d"], t_nniqat.__dict__[f"ConvBn{dim}d"]
    f_theirs.qconfig = theirs_qc
    return cls_o.from_float(f_ours, ours_qc), cls_t.from_float(f_theirs)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("relu", [False, True])
def test_qat_conv_bn_simulated_folding_matches_torch_ao(dim, relu):
    ours, theirs = _conv_bn_pair(dim, relu, bias=(dim == 2))
    make_x = lambda s: _x(dim, 3, seed=s) * (1 + s)  # noqa: E731
    # training: batch statistics, running stats updated identically
    rm0 = ours.bn.running_mean.clone()
    _train_in_lockstep(ours, theirs, make_x)
    assert not torch.equal(ours.bn.running_mean, rm0)
    # freeze BN statistics: running stats stop moving, outputs still agree
    ours.apply(nniqat.freeze_bn_stats)
    theirs.apply(t_nniqat.freeze_bn_stats)
    assert ours.freeze_bn and not ours.bn.training
    frozen = ours.bn.running_mean.clone()
    _train_in_lockstep(ours, theirs, make_x, steps=2)
    assert torch.equal(ours.bn.running_mean, frozen)
    ours.train()  # a frozen BN stays in eval mode under model.train()
    assert not ours.bn.training
    ours.apply(nniqat.update_bn_stats)
    assert ours.bn.training and not ours.freeze_bn
    # eval mode
    ours.eval(), theirs.eval()
    x = make_x(7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    # to_float folds BN with the running statistics, like torch.ao's
    f_ours, f_theirs = ours.to_float(), theirs.to_float()
    if relu:
        assert type(f_ours) is nni.__dict__[f"ConvReLU{dim}d"]
        conv_o, conv_t = f_ours[0], f_theirs[0]
    else:
        assert type(f_ours) is CONV[dim]
        conv_o, conv_t = f_ours, f_theirs
    torch.testing.assert_close(conv_o.weight, conv_t.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv_o.bias, conv_t.bias, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f_ours(x), f_theirs(x), rtol=1e-5, atol=1e-5)


def test_qat_conv_bn_slow_path_matches_torch_ao():
    ours, theirs = _conv_bn_pair(2, relu=False, bias=True)
    ours._enable_slow_path_for_better_numerical_stability = True
    theirs._enable_slow_path_for_better_numerical_stability = True
    _train_in_lockstep(ours, theirs, lambda s: _x(2, 3, seed=s))
    ours.eval(), theirs.eval()
    x = _x(2, 3, seed=9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_qat_conv_bn_relu6_is_relu6_of_conv_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), _randomize_bn(nn.BatchNorm2d(4))
    with torch.no_grad():
        bn.weight.mul_(8.0)  # batch-normalized outputs reach well past 6
    qc = qqc.default_qat_qconfig
    a = nniqat.ConvBnReLU6_2d.from_float(nni.ConvBnReLU6_2d(copy.deepcopy(conv), copy.deepcopy(bn), nn.ReLU6()), qc)
    b = nniqat.ConvBn2d.from_float(nni.ConvBn2d(copy.deepcopy(conv), copy.deepcopy(bn)), qc)
    x = _x(2, 3)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, F.relu6(yb))
    assert float(ya.detach().max()) == 6.0 and float(yb.detach().max()) > 6.0
    back = a.to_float()
    assert type(back) is nni.ConvReLU6_2d
    a.eval()
    a.apply(qfq.disable_fake_quant)
    torch.testing.assert_close(back.eval()(x), a(x), rtol=1e-5, atol=1e-5)


def test_qat_linear_bn_matches_torch_ao():
    torch.manual_seed(0)
    lin, bn = nn.Linear(6, 5), _randomize_bn(nn.BatchNorm1d(5))
    ours_qc, theirs_qc = _qconfigs()
    t_f = t_nni.LinearBn1d(copy.deepcopy(lin), copy.deepcopy(bn))
    t_f.qconfig = theirs_qc
    ours = nniqat.LinearBn1d.from_float(nni.LinearBn1d(lin, bn), ours_qc)
    theirs = t_nniqat.LinearBn1d.from_float(t_f)
    _train_in_lockstep(ours, theirs, lambda s: torch.randn(16, 6))
    f_o, f_t = ours.to_float(), theirs.to_float()
    torch.testing.assert_close(f_o.weight, f_t.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f_o.bias, f_t.bias, rtol=1e-5, atol=1e-6)


def test_qat_embeddings_match_torch_ao():
    torch.manual_seed(0)
    ours_qc, theirs_qc = qqc.default_embedding_qat_qconfig, tq.default_embedding_qat_qconfig
    emb = nn.Embedding(12, 6)
    t_emb = copy.deepcopy(emb)
    t_emb.qconfig = theirs_qc
    idx = torch.randint(0, 12, (5, 3))
    _train_in_lockstep(nnqat.Embedding.from_float(emb, ours_qc), t_nnqat.Embedding.from_float(t_emb), lambda s: idx)
    bag = nn.EmbeddingBag(12, 6, mode="sum")
    t_bag = copy.deepcopy(bag)
    t_bag.qconfig = theirs_qc
    ours, theirs = nnqat.EmbeddingBag.from_float(bag, ours_qc), t_nnqat.EmbeddingBag.from_float(t_bag)
    offsets = torch.tensor([0, 4, 9])
    i = torch.randint(0, 12, (12,))
    torch.testing.assert_close(ours(i, offsets), theirs(i, offsets), rtol=1e-5, atol=1e-5)
    assert type(ours.to_float()) is nn.EmbeddingBag
    with pytest.raises(ValidationError, match="per_channel_affine_float_qparams"):
        nnqat.Embedding.from_float(nn.Embedding(3, 2), qqc.default_qat_qconfig)


def test_qat_from_float_qconfig_resolution():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValidationError, match="needs a qconfig"):
        nnqat.Linear.from_float(lin)
    lin.qconfig = qqc.default_qat_qconfig  # torch.ao style: qconfig on the module
    assert isinstance(nnqat.Linear.from_float(lin).weight_fake_quant, qfq.FakeQuantize)
    with pytest.raises(ValidationError, match="converts Linear"):
        nnqat.Linear.from_float(nn.Conv2d(1, 1, 1), qqc.default_qat_qconfig)
    with pytest.raises(ValidationError, match="ConvBn2d"):
        nniqat.ConvBn2d.from_float(nn.Conv2d(1, 1, 1), qqc.default_qat_qconfig)


# ----------------------------------------------------------------------------- reference modules vs torch.ao


def _weight_qparams(weight: torch.Tensor, scheme: str, axis: int = 0) -> dict:
    """torch.ao-style weight_qparams from torch.ao's own observers (quantized dtypes)."""
    if scheme == "per_tensor_affine":
        obs = tq.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    elif scheme == "per_tensor_symmetric":
        obs = tq.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    elif scheme == "per_channel_symmetric":
        obs = tq.PerChannelMinMaxObserver(ch_axis=axis, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    elif scheme == "per_channel_affine":
        obs = tq.PerChannelMinMaxObserver(ch_axis=axis, dtype=torch.qint8, qscheme=torch.per_channel_affine)
    else:
        obs = tq.PerChannelMinMaxObserver(ch_axis=axis, dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams)
    obs(weight.detach())
    scale, zp = obs.calculate_qparams()
    qscheme = {"per_channel_symmetric": torch.per_channel_affine, "per_tensor_symmetric": torch.per_tensor_affine}.get(
        scheme, obs.qscheme
    )
    return {"qscheme": qscheme, "dtype": obs.dtype, "scale": scale, "zero_point": zp, "axis": axis,
            "quant_min": obs.quant_min, "quant_max": obs.quant_max}


REF_CASES = {
    "Linear": (lambda: nn.Linear(16, 8), lambda: torch.randn(4, 16), 0),
    "Conv1d": (lambda: nn.Conv1d(3, 6, 3, stride=2, padding=1), lambda: _x(1, 3), 0),
    "Conv2d": (lambda: nn.Conv2d(4, 6, 3, padding=1, dilation=1, groups=2), lambda: _x(2, 4), 0),
    "Conv3d": (lambda: nn.Conv3d(2, 4, 3, padding=1), lambda: _x(3, 2), 0),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3, stride=2), lambda: _x(1, 3), 1),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1), lambda: _x(2, 4), 1),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 4, 2, stride=2), lambda: _x(3, 2), 1),
}


@pytest.mark.parametrize("name", sorted(REF_CASES))
@pytest.mark.parametrize("scheme", ["per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric"])
def test_reference_modules_match_torch_ao(name, scheme):
    torch.manual_seed(0)
    make, make_x, axis = REF_CASES[name]
    float_mod = make()
    qd = _weight_qparams(float_mod.weight, scheme, axis)
    ours = getattr(nnqr, name).from_float(float_mod, qd)
    theirs = getattr(t_nnqr, name).from_float(float_mod, qd)
    x = make_x()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
    t_int = theirs.get_quantized_weight().int_repr()
    assert ours.get_quantized_weight().dtype == t_int.dtype
    assert torch.equal(ours.get_quantized_weight(), t_int)
    torch.testing.assert_close(ours.get_weight(), theirs.get_weight(), rtol=0, atol=1e-7)
    assert not hasattr(ours, "weight") or not isinstance(getattr(type(ours), "weight", None), nn.Parameter)
    assert "weight" not in dict(ours.named_parameters())
    # quantization error is real but bounded: the reference op is close to the float op
    assert (ours(x) - float_mod(x)).abs().max() < 0.1


def test_per_channel_symmetric_weight_ties_round_like_torch_ao():
    # symmetric scales put each channel's extreme weight on an exact .5 tie in float32 (x * (1 / scale));
    # torch.ao and the int8 kernels round it half-to-even in float32, so must quantfx's ops
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    qd = _weight_qparams(conv.weight, "per_channel_symmetric", 0)
    ours, theirs = nnqr.Conv2d.from_float(conv, qd), t_nnqr.Conv2d.from_float(conv, qd)
    assert torch.equal(ours.get_quantized_weight(), theirs.get_quantized_weight().int_repr())


@pytest.mark.parametrize("cls", ["Embedding", "EmbeddingBag"])
def test_reference_embeddings_match_torch_ao(cls):
    torch.manual_seed(0)
    float_mod = nn.Embedding(20, 8, padding_idx=0) if cls == "Embedding" else nn.EmbeddingBag(20, 8, mode="sum")
    qd = _weight_qparams(float_mod.weight, "float_qparams", 0)
    ours, theirs = getattr(nnqr, cls).from_float(float_mod, qd), getattr(t_nnqr, cls).from_float(float_mod, qd)
    assert ours.weight_zero_point.dtype == torch.float32 and ours.weight_int.dtype == torch.uint8
    idx = torch.randint(0, 20, (12,))
    args = (idx,) if cls == "Embedding" else (idx, torch.tensor([0, 5, 7]))
    torch.testing.assert_close(ours(*args), theirs(*args), rtol=0, atol=1e-5)
    assert torch.equal(ours.get_quantized_weight(), theirs.get_quantized_weight().int_repr())


def test_weight_qparams_from_quantfx_observers_agree_with_torch_ao():
    w = torch.randn(6, 5)
    ours = qobs.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.int8, qscheme=torch.per_channel_symmetric)
    theirs = tq.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    ours(w), theirs(w)
    qp = WeightQParams.from_observer(ours)
    t_scale, t_zp = theirs.calculate_qparams()
    assert qp.qscheme == torch.per_channel_symmetric and qp.dtype == torch.int8 and qp.axis == 0
    assert (qp.quant_min, qp.quant_max) == (-128, 127)
    torch.testing.assert_close(qp.scale, t_scale.float())
    assert torch.equal(qp.zero_point, t_zp.long())
    # per-tensor fake-quant (ch_axis=-1 is ignored), reduce_range respected
    fq = qfq.default_weight_fake_quant()
    fq(w)
    qp = WeightQParams.from_observer(fq)
    assert qp.axis is None and qp.scale.dim() == 0 and qp.qscheme == torch.per_tensor_symmetric
    act = qobs.MinMaxObserver(dtype=torch.uint8, reduce_range=True)
    act(w)
    assert WeightQParams.from_observer(act).quant_max == 127
    # fp16 weight-only: no calculate_qparams needed
    qp = WeightQParams.from_observer(qobs.PlaceholderObserver(dtype=torch.float16))
    assert qp.is_float and qp.qscheme is None


def test_weight_qparams_validation():
    with pytest.raises(ValidationError, match="needs axis"):
        WeightQParams(torch.per_channel_affine, torch.qint8, torch.ones(3), torch.zeros(3))
    with pytest.raises(ValidationError, match="one scale"):
        WeightQParams(torch.per_tensor_affine, torch.int8, torch.ones(3), torch.zeros(3))
    with pytest.raises(ValidationError, match="> 0"):
        WeightQParams(torch.per_tensor_affine, torch.int8, 0.0, 0)
    with pytest.raises(ValidationError, match="does not fit"):
        WeightQParams(torch.per_tensor_affine, torch.int8, 0.1, 0, quant_min=0, quant_max=255)
    qp = WeightQParams(torch.per_tensor_affine, torch.quint8, 0.1, 3)
    assert qp.dtype == torch.uint8 and (qp.quant_min, qp.quant_max) == (0, 255)
    assert WeightQParams.from_dict(qp.to_dict()) == qp
    with pytest.raises(ValidationError, match="4 per-channel scales"):
        nnqr.Linear.from_float(nn.Linear(2, 3), WeightQParams(torch.per_channel_affine, torch.int8, torch.ones(4), torch.zeros(4), axis=0))
    with pytest.raises(ValidationError, match="converts"):
        nnqr.Linear.from_float(nni.LinearReLU(nn.Linear(2, 3), nn.ReLU()), qp)


def test_reference_fp16_weight_only_linear():
    lin = nn.Linear(8, 4)
    ref = nnqr.Linear.from_float(lin, WeightQParams(None, torch.float16, 1.0, 0))
    assert ref.get_quantized_weight().dtype == torch.float16
    x = torch.randn(3, 8)
    torch.testing.assert_close(ref(x), F.linear(x, lin.weight.detach().half().float(), lin.bias.detach()))


def test_reference_conv_honours_padding_mode():
    # torch.ao's reference conv ignores padding_mode (zero-pads); ours runs nn.Conv2d's own padding logic
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    qp = WeightQParams(torch.per_tensor_affine, torch.int8, float(conv.weight.detach().abs().max()) / 127, 0)
    ref = nnqr.Conv2d.from_float(conv, qp)
    x = _x(2, 3)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), ref.get_weight(), conv.bias)
    torch.testing.assert_close(ref(x), expected)


def test_reference_state_dict_roundtrip_and_save_load(tmp_path):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    qd = _weight_qparams(conv.weight, "per_channel_symmetric")
    ref = nnqr.Conv2d.from_float(conv, qd)
    x = _x(2, 4)
    y = ref(x)
    # a module built with *different* (per-tensor) qparams adopts the saved per-channel ones
    other = nnqr.Conv2d(4, 6, 3, weight_qparams=WeightQParams(torch.per_tensor_affine, torch.uint8, 0.5, 7))
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)  # weights_only=True by default: the state dict holds only tensors and plain values
    other.load_state_dict(sd)
    assert other.weight_qscheme == torch.per_channel_affine and other.weight_dtype == torch.int8 and other.weight_axis == 0
    torch.testing.assert_close(other(x), y, rtol=0, atol=0)
    # whole-module pickling
    path = tmp_path / "ref.pt"
    torch.save(ref, path)
    loaded = torch.load(path, weights_only=False)
    torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
    # per-tensor scalars are refreshed on load as well
    pt = nnqr.Linear.from_float(nn.Linear(3, 2), WeightQParams(torch.per_tensor_affine, torch.int8, 0.01, 0))
    pt2 = nnqr.Linear(3, 2, weight_qparams=WeightQParams(torch.per_tensor_affine, torch.int8, 1.0, 0))
    pt2.load_state_dict(pt.state_dict())
    xx = torch.randn(2, 3)
    torch.testing.assert_close(pt2(xx), pt(xx), rtol=0, atol=0)


def test_reference_repr_shows_qparams():
    ref = nnqr.Linear.from_float(nn.Linear(3, 2), WeightQParams(torch.per_tensor_affine, torch.int8, 0.25, 0))
    r = repr(ref)
    assert "QuantizedLinear(Reference)" in r and "weight_dtype=torch.int8" in r and "weight_scale=0.25" in r
    conv = nnqr.Conv2d.from_float(nn.Conv2d(2, 3, 1), WeightQParams(torch.per_channel_affine, torch.int8, torch.ones(3), torch.zeros(3), axis=0))
    assert "per_channel_affine" in repr(conv) and "weight_axis=0" in repr(conv)


def test_reference_module_per_tensor_qparams_are_graph_constants():
    """Exported graphs carry the per-tensor scale / zero point as numbers (the reference IR's form)."""
    ref = nnqr.Linear.from_float(nn.Linear(4, 3), WeightQParams(torch.per_tensor_affine, torch.int8, 0.05, 0))
    ep = torch.export.export(ref, (torch.randn(2, 4),))
    deq = [n for n in ep.graph.nodes if n.op == "call_function" and "dequantize_per_tensor" in str(n.target)]
    assert len(deq) == 1
    assert deq[0].args[1] == pytest.approx(0.05) and deq[0].args[2] == 0


def test_trained_qat_conv_bn_relu6_converts_to_identical_reference_numerics():
    """End to end: fused QAT ConvBn(ReLU6) -> to_float (BN folded) -> reference module gives the QAT model's output."""
    from quantfx import disable_observer, freeze_bn_stats
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_qat_fx

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()
            self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)

        def forward(self, x):
            return self.bn2(self.dw(self.act(self.bn(self.conv(x)))))

    torch.manual_seed(0)
    model = Block()
    _randomize_bn(model.bn), _randomize_bn(model.bn2, 1)
    x = _x(2, 3) * 2
    qat = prepare_qat_fx(model.train(), None, (x,), backend="reference")
    assert type(qat.conv) is nniqat.ConvBnReLU6_2d and type(qat.dw) is nniqat.ConvBn2d
    opt = torch.optim.SGD(qat.parameters(), lr=0.01)
    for _ in range(3):
        qat(x).pow(2).mean().backward()
        opt.step(), opt.zero_grad()
    qat.apply(freeze_bn_stats)
    qat(x)  # observers see the final weights
    qat.apply(disable_observer)
    qat.eval()
    ref = convert_to_reference_fx(qat)
    assert type(ref.conv) is nnqr.Conv2d and type(ref.dw) is nnqr.Conv2d
    torch.testing.assert_close(ref(x), qat(x), rtol=0, atol=1e-5)
