"""The fuse pass: graph structure per pattern, numerics, parity with torch.ao's fuse_fx, and the
cases torch.ao gets wrong (a module called twice, convs inside custom submodules, ReLU6)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule

import quantfx.nn.intrinsic as nni
from quantfx.backend_config import BackendConfig, BackendPatternConfig
from quantfx.backend_config.common import default_op_quint8_dtype_config, get_reference_backend_config
from quantfx.errors import ValidationError
from quantfx.fx.custom_config import FuseCustomConfig
from quantfx.fx.fuse import FUSED_KEY, FUSION_SKIPPED_KEY, fuse
from quantfx.fx.tracer import trace_for_quantization

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
tq = pytest.importorskip("torch.ao.quantization")
from torch.ao.quantization.quantize_fx import fuse_fx as torch_fuse_fx  # noqa: E402

BACKEND = get_reference_backend_config()
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SPATIAL = {1: (10,), 2: (8, 8), 3: (5, 6, 6)}


def _init_bns(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


class Chain(nn.Module):
    """Applies ``steps`` in order; modules are registered as ``m0, m1, ...``, functions are called inline."""

    def __init__(self, *steps) -> None:
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


def _trace(model: nn.Module) -> GraphModule:
    return trace_for_quantization(model)


def _ops(gm: GraphModule) -> list[str]:
    mods = dict(gm.named_modules())
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_module":
            out.append(type(mods[n.target]).__name__)
        elif n.op in ("call_function", "call_method"):
            out.append(getattr(n.target, "__name__", str(n.target)))
    return out


def _x(dim: int, c: int) -> torch.Tensor:
    return torch.randn((2, c) + SPATIAL[dim], generator=torch.Generator().manual_seed(3))


# (name, build steps, input, eval fused type, QAT fused type)
def _cases():
    cases = []
    for d in (1, 2, 3):
        cases += [
            (f"conv{d}_bn", lambda d=d: [CONV[d](3, 4, 3), BN[d](4)], d, CONV[d].__name__, f"ConvBn{d}d"),
            (f"conv{d}_bn_relu", lambda d=d: [CONV[d](3, 4, 3), BN[d](4), nn.ReLU()], d, f"ConvReLU{d}d", f"ConvBnReLU{d}d"),
            (f"conv{d}_relu", lambda d=d: [CONV[d](3, 4, 3), nn.ReLU()], d, f"ConvReLU{d}d", f"ConvReLU{d}d"),
            (f"conv{d}_bn_relu6", lambda d=d: [CONV[d](3, 4, 3), BN[d](4), nn.ReLU6()], d, f"ConvReLU6_{d}d", f"ConvBnReLU6_{d}d"),
            (f"convT{d}_bn", lambda d=d: [CONVT[d](3, 4, 2, stride=2), BN[d](4)], d, CONVT[d].__name__, None),
        ]
    cases += [
        ("conv2d_F.relu", lambda: [nn.Conv2d(3, 4, 3), F.relu], 2, "ConvReLU2d", "ConvReLU2d"),
        ("conv2d_torch.relu", lambda: [nn.Conv2d(3, 4, 3), torch.relu], 2, "ConvReLU2d", "ConvReLU2d"),
        ("conv2d_.relu()", lambda: [nn.Conv2d(3, 4, 3), lambda t: t.relu()], 2, "ConvReLU2d", "ConvReLU2d"),
        ("conv2d_bn_F.relu", lambda: [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), F.relu], 2, "ConvReLU2d", "ConvBnReLU2d"),
        ("conv2d_relu6", lambda: [nn.Conv2d(3, 4, 3), nn.ReLU6()], 2, "ConvReLU6_2d", "ConvReLU6_2d"),
        ("conv2d_F.relu6", lambda: [nn.Conv2d(3, 4, 3), F.relu6], 2, "ConvReLU6_2d", "ConvReLU6_2d"),
        ("conv2d_hardtanh06", lambda: [nn.Conv2d(3, 4, 3), nn.Hardtanh(0.0, 6.0)], 2, "ConvReLU6_2d", "ConvReLU6_2d"),
        ("conv2d_bn_F.hardtanh06", lambda: [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), lambda t: F.hardtanh(t, 0.0, 6.0)], 2,
         "ConvReLU6_2d", "ConvBnReLU6_2d"),
        ("linear_relu", lambda: [nn.Linear(3, 4), nn.ReLU()], 0, "LinearReLU", "LinearReLU"),
        ("linear_F.relu", lambda: [nn.Linear(3, 4), F.relu], 0, "LinearReLU", "LinearReLU"),
        ("linear_relu6", lambda: [nn.Linear(3, 4), nn.ReLU6()], 0, "LinearReLU6", "LinearReLU6"),
        ("linear_bn1d", lambda: [nn.Linear(3, 4), nn.BatchNorm1d(4)], 0, "Linear", "LinearBn1d"),
        ("bn2d_relu", lambda: [nn.BatchNorm2d(3), nn.ReLU()], 2, "BNReLU2d", "BNReLU2d"),
        ("bn3d_F.relu", lambda: [nn.BatchNorm3d(3), F.relu], 3, "BNReLU3d", "BNReLU3d"),
    ]
    return cases


CASES = {c[0]: c[1:] for c in _cases()}


def _input(dim: int) -> torch.Tensor:
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(3)) * 3 if dim == 0 else _x(dim, 3) * 3


@pytest.mark.parametrize("name", sorted(CASES))
def test_pattern_fuses_in_eval_and_keeps_numerics(name):
    build, dim, eval_type, _ = CASES[name]
    torch.manual_seed(0)
    model = _init_bns(Chain(*build())).eval()
    gm = _trace(model)
    fused = fuse(gm, is_qat=False, backend_config=BACKEND)
    assert type(fused.get_submodule("m0")).__name__ == eval_type
    assert _ops(fused) == [eval_type], f"graph after fusion: {_ops(fused)}"
    assert len(fused.meta[FUSED_KEY]["m0"]) == len(build())
    x = _input(dim)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    # the BN and activation modules that were folded away are gone
    assert [n for n, _ in fused.named_children()] == ["m0"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_pattern_fuses_for_qat(name):
    build, dim, _, qat_type = CASES[name]
    torch.manual_seed(0)
    model = _init_bns(Chain(*build())).train()
    fused = fuse(_trace(model), is_qat=True, backend_config=BACKEND)
    x = _input(dim)
    if qat_type is None:  # ConvTranspose + BN has no QAT module: left alone, and said so
        assert _ops(fused) == [type(m).__name__ for m in model.children()]
        assert "no QAT fused module" in fused.meta[FUSION_SKIPPED_KEY]["m0"]
        return
    assert _ops(fused) == [qat_type]
    # the QAT containers are plain float chains: same training-mode output (BN uses batch stats)
    torch.testing.assert_close(fused(x), copy.deepcopy(model)(x), rtol=1e-5, atol=1e-5)


def test_model_in_training_mode_cannot_be_folded():
    model = _init_bns(Chain(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).train()
    with pytest.raises(ValidationError, match="model.eval"):
        fuse(_trace(model), is_qat=False, backend_config=BACKEND)


# ----------------------------------------------------------------------------- parity with torch.ao


class BasicBlock(nn.Module):
    """torchvision's ResNet block: one ReLU module used twice, residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer = nn.Sequential(BasicBlock(8), BasicBlock(8))
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.up_bn = nn.BatchNorm2d(8)
        self.bn_relu = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())
        self.conv1d = nn.Conv1d(8, 4, 1)
        self.fc = nn.Linear(4, 6)
        self.fc_bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.layer(self.stem(x))
        x = self.bn_relu(self.up_bn(self.up(x)))
        x = F.relu(self.conv1d(x.flatten(2)))
        x = self.fc_bn(self.fc(x.mean(2)))
        return F.relu(self.head(x))


def _module_summary(gm: nn.Module) -> list[tuple[str, str]]:
    # get_submodule, not named_modules(): torch.ao aliases one shared ReLU under two paths
    return [(n.target, type(gm.get_submodule(n.target)).__name__) for n in gm.graph.nodes if n.op == "call_module"]


def _torch_fuse(model: nn.Module, is_qat: bool) -> GraphModule:
    """torch.ao's fuse pass (its public fuse_fx always fuses for eval)."""
    from torch.ao.quantization.fx.fuse import fuse as t_fuse
    from torch.ao.quantization.fx.tracer import QuantizationTracer as TQTracer

    model = copy.deepcopy(model)
    return t_fuse(GraphModule(model, TQTracer([], []).trace(model)), is_qat)


@pytest.mark.parametrize("qat", [False, True])
def test_same_fusions_as_torch_ao_fuse_fx(qat):
    torch.manual_seed(0)
    model = _init_bns(ResNetish())
    model.train(qat)
    if qat:  # torch.ao cannot fuse ConvTranspose + BN for QAT (it raises); quantfx leaves them unfused
        model.up_bn = nn.Identity()
    theirs = _torch_fuse(model, qat)
    ours = fuse(_trace(model), is_qat=qat, backend_config=BACKEND)
    assert _module_summary(ours) == _module_summary(theirs)
    assert [n.op for n in ours.graph.nodes] == [n.op for n in theirs.graph.nodes]
    x = torch.randn(2, 3, 8, 8)
    m = copy.deepcopy(model).eval() if not qat else copy.deepcopy(model)
    torch.testing.assert_close(ours(x), theirs(x) if not qat else m(x), rtol=1e-5, atol=1e-5)
    if not qat:
        torch.testing.assert_close(ours(x), model(x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- what torch.ao gets wrong


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 4, 1)
        self.head_bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = self.conv(y)  # the same conv again, without BN
        return self.head_bn(self.head(y))


def test_module_called_twice_is_not_fused_and_reason_is_recorded():
    model = _init_bns(CalledTwice()).eval()
    x = torch.randn(2, 4, 8, 8)
    ours = fuse(_trace(model), is_qat=False, backend_config=BACKEND)
    skipped = ours.meta[FUSION_SKIPPED_KEY]
    assert set(skipped) == {"conv"}
    assert "called 2 times" in skipped["conv"] and "conv, conv_1" in skipped["conv"]
    assert type(ours.conv) is nn.Conv2d and type(ours.bn) is nn.BatchNorm2d
    assert ours.meta[FUSED_KEY] == {"head": ["head", "head_bn"]}  # the unshared pair still fuses
    torch.testing.assert_close(ours(x), model(x), rtol=1e-5, atol=1e-5)
    # torch.ao folds the BN into the shared conv, which silently changes the second call
    theirs = torch_fuse_fx(copy.deepcopy(model))
    assert not torch.allclose(theirs(x), model(x), atol=1e-3)


def test_shared_stateless_relu_still_fuses_each_chain():
    relu = nn.ReLU()

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.relu = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), relu

        def forward(self, x):
            return self.relu(self.c2(self.relu(self.c1(x))))

    model = M().eval()
    ours = fuse(_trace(model), is_qat=False, backend_config=BACKEND)
    assert _ops(ours) == ["ConvReLU2d", "ConvReLU2d"]
    assert ours.c1[1] is not ours.c2[1]  # each fused module owns its activation
    assert not hasattr(ours, "relu")
    x = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(ours(x), model(x))


class MBConv(nn.Module):
    """EfficientNet-Lite style block: expand / depthwise / project, each conv + BN (+ ReLU6), in a custom module."""

    def __init__(self, c: int, e: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, e, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(e)
        self.act = nn.ReLU6()
        self.dw = nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False)
        self.bn1 = nn.BatchNorm2d(e)
        self.project = nn.Conv2d(e, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.act(self.bn0(self.expand(x)))
        y = F.relu6(self.bn1(self.dw(y)))
        return x + self.bn2(self.project(y))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(MBConv(4, 8), MBConv(4, 12))

    def forward(self, x):
        return self.blocks(x)


def test_convs_inside_custom_submodules_fold_in_place():
    model = _init_bns(Net()).eval()
    ours = fuse(_trace(model), is_qat=False, backend_config=BACKEND)
    for i in range(2):
        block = ours.get_submodule(f"blocks.{i}")
        assert type(block.expand) is nni.ConvReLU6_2d and type(block.dw) is nni.ConvReLU6_2d
        assert type(block.project) is nn.Conv2d
        assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert ours.meta[FUSED_KEY]["blocks.1.dw"] == ["blocks_1_dw", "blocks_1_bn1", "relu6_1"]
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(ours(x), model(x), rtol=1e-5, atol=1e-5)
    qat = fuse(_trace(_init_bns(Net()).train()), is_qat=True, backend_config=BACKEND)
    assert [type(qat.get_submodule(f"blocks.0.{n}")).__name__ for n in ("expand", "dw", "project")] == [
        "ConvBnReLU6_2d", "ConvBnReLU6_2d", "ConvBn2d"]


# ----------------------------------------------------------------------------- contract


def test_fuse_does_not_mutate_its_input_and_keeps_preserved_attributes():
    model = _init_bns(ResNetish()).eval()
    gm = _trace(model)
    gm.custom_flag = "keep me"
    code, state = gm.code, {k: v.clone() for k, v in gm.state_dict().items()}
    types = [type(m) for m in gm.modules()]
    fused = fuse(gm, False, FuseCustomConfig().set_preserved_attributes(["custom_flag"]), BACKEND)
    assert gm.code == code and [type(m) for m in gm.modules()] == types
    assert all(torch.equal(state[k], v) for k, v in gm.state_dict().items())
    assert FUSED_KEY not in gm.meta
    assert fused.custom_flag == "keep me"
    with pytest.raises(ValidationError, match="GraphModule"):
        fuse(model, False, backend_config=BACKEND)


def test_intermediate_with_other_users_blocks_fusion():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y), y  # the un-normalized conv output is needed too

    model = _init_bns(M()).eval()
    fused = fuse(_trace(model), False, backend_config=BACKEND)
    assert _ops(fused) == ["Conv2d", "BatchNorm2d"]
    x = torch.randn(1, 3, 4, 4)
    for a, b in zip(fused(x), model(x)):
        torch.testing.assert_close(a, b)


def test_hardtanh_that_is_not_relu6_is_left_unfused():
    model = Chain(nn.Conv2d(3, 4, 3), nn.Hardtanh(-1.0, 1.0)).eval()
    fused = fuse(_trace(model), False, backend_config=BACKEND)
    assert _ops(fused) == ["Conv2d", "Hardtanh"]
    assert "not ReLU6" in fused.meta[FUSION_SKIPPED_KEY]["m0"]


def test_custom_backend_config_fusion_and_declining_fuser():
    class LinearTanh(nn.Sequential):
        pass

    calls = []

    def fuse_linear_tanh(is_qat, linear, tanh):
        calls.append(is_qat)
        return LinearTanh(linear, tanh) if linear.out_features > 2 else None

    bc = BackendConfig("custom").set_backend_pattern_config(
        BackendPatternConfig((nn.Linear, nn.Tanh)).set_dtype_configs([default_op_quint8_dtype_config])
        .set_fuser_method(fuse_linear_tanh).set_fused_module(LinearTanh)
    )

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.ta, self.b, self.tb = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh()

        def forward(self, x):
            return self.tb(self.b(self.ta(self.a(x))))

    fused = fuse(_trace(M().eval()), False, backend_config=bc)
    assert calls == [False, False]
    assert _ops(fused) == ["LinearTanh", "Linear", "Tanh"]
    assert "declined" in fused.meta[FUSION_SKIPPED_KEY]["b"]


def test_longest_pattern_wins():
    model = _init_bns(Chain(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())).train()
    fused = fuse(_trace(model), True, backend_config=BACKEND)
    assert _ops(fused) == ["ConvBnReLU2d"]  # not ConvBn2d followed by ReLU, nor Conv2d + BNReLU2d


def test_fuse_fx_front_door_uses_this_pass():
    from quantfx.quantize_fx import fuse_fx

    model = _init_bns(Net()).eval()
    fused = fuse_fx(model, backend_config=BACKEND)
    assert type(fused.get_submodule("blocks.0.expand")) is nni.ConvReLU6_2d
    assert type(model.blocks[0].expand) is nn.Conv2d  # the user's model is untouched
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- pattern index (match.py)


def test_pattern_index_offers_only_patterns_ending_at_the_node_in_config_order():
    from quantfx.fx.match import PatternIndex, match_chain

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x):
            return x

    odd = Unhashable()
    patterns = [(nn.Conv2d, nn.ReLU), nn.ReLU, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU), "relu", torch.relu, odd, nn.Conv2d]
    index = PatternIndex(patterns, lambda p: p)
    gm = trace_for_quantization(Chain(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU()).eval())
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        got = index.candidates(node, modules)
        assert got == [p for p in patterns if p in got]  # original order
        assert odd in got  # cannot be looked up: always tried
        # nothing that could match is left out
        assert [p for p in patterns if match_chain(node, p, modules) is not None] == [
            p for p in got if match_chain(node, p, modules) is not None]
    relu = next(n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], nn.ReLU))
    assert index.candidates(relu, modules) == [(nn.Conv2d, nn.ReLU), nn.ReLU, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU), odd]


@pytest.mark.parametrize("name", ["residual_block", "transformer_block", "activation_heads", "functional_ops"])
def test_indexed_matching_finds_what_trying_every_pattern_finds(name, monkeypatch):
    from quantfx.fx import prepare as prepare_mod
    from quantfx.testing.models import MODEL_SUITE

    model, _ = MODEL_SUITE[name]()
    config = get_reference_backend_config()
    gm = fuse(trace_for_quantization(model.eval()), is_qat=False, backend_config=config)
    indexed = prepare_mod._find_matches(gm, config)

    class TryAll:
        def __init__(self, items, pattern_of):
            self.items = list(items)

        def candidates(self, node, modules):
            return self.items

    monkeypatch.setattr(prepare_mod, "PatternIndex", TryAll)
    brute = prepare_mod._find_matches(gm, config)
    assert {n.name: ([m.name for m in match.nodes], match.config.pattern) for n, match in indexed.items()} == {
        n.name: ([m.name for m in match.nodes], match.config.pattern) for n, match in brute.items()}
    assert indexed


class _AddOrders(torch.nn.Module):
    """conv(y) + x, x + conv(y), and x - conv(y) (not commutative) side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = (torch.nn.Conv2d(3, 3, 1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.c1(x) + x, x + self.c2(x), x - self.c3(x)


def test_match_chain_goes_through_either_operand_of_an_add_only() -> None:
    import operator

    from quantfx.fx.match import match_chain

    gm = torch.fx.symbolic_trace(_AddOrders())
    modules = dict(gm.named_modules())
    by_name = {n.name: n for n in gm.graph.nodes}
    pattern = (torch.nn.Conv2d, operator.add)
    first, second = match_chain(by_name["add"], pattern, modules), match_chain(by_name["add_1"], pattern, modules)
    assert [n.name for n in first] == ["c1", "add"] and [n.name for n in second] == ["c2", "add_1"]
    assert match_chain(by_name["sub"], (torch.nn.Conv2d, operator.sub), modules) is None
