"""QConfigMapping: setters, dict form, precedence (checked against torch.ao), default-mapping builder."""

from __future__ import annotations

import operator
import random
from collections import OrderedDict, defaultdict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import quantfx.qconfig as qc
from quantfx.dtypes import normalize_dtype
from quantfx.errors import ValidationError
from quantfx.fake_quantize import FixedQParamsFakeQuantize
from quantfx.observers import HistogramObserver, MinMaxObserver, default_per_channel_weight_observer
from quantfx.qconfig import QConfig
from quantfx.qconfig_mapping import QConfigMapping, build_default_qconfig_mapping

# torch.ao is only the oracle here: silence its own deprecation chatter, nothing of quantfx's
pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
]


def _tag(name):
    """A distinct, recognizable observer constructor (never called by these tests)."""

    def ctor():
        raise AssertionError(f"tag {name} instantiated")

    ctor.__name__ = ctor.__qualname__ = f"tag_{name}"
    return ctor


TAGS = {n: _tag(n) for n in "ABCDEFG"}
Q = {n: QConfig(activation=t, weight=None) for n, t in TAGS.items()}


def _name(qconfig):
    return None if qconfig is None else qconfig.activation.__name__


# ----------------------------------------------------------------------------- setters & validation


def test_setters_chain_and_fill_ordered_dicts():
    m = (
        QConfigMapping()
        .set_global(Q["A"])
        .set_object_type(nn.Linear, Q["B"])
        .set_object_type("reshape", None)
        .set_module_name_regex(r"foo.*", Q["C"])
        .set_module_name("bar", Q["D"])
        .set_module_name_object_type_order("bar", F.linear, 0, Q["E"])
    )
    assert m.global_qconfig is Q["A"]
    for attr in (
        "object_type_qconfigs",
        "module_name_regex_qconfigs",
        "module_name_qconfigs",
        "module_name_object_type_order_qconfigs",
    ):
        assert isinstance(getattr(m, attr), OrderedDict)
    assert m.object_type_qconfigs == OrderedDict([(nn.Linear, Q["B"]), ("reshape", None)])
    assert m.module_name_object_type_order_qconfigs == {("bar", F.linear, 0): Q["E"]}


def test_setting_a_key_again_replaces_but_keeps_position():
    m = QConfigMapping().set_module_name_regex("a.*", Q["A"]).set_module_name_regex("b.*", Q["B"])
    m.set_module_name_regex("a.*", Q["C"])
    assert list(m.module_name_regex_qconfigs.items()) == [("a.*", Q["C"]), ("b.*", Q["B"])]
    # so "ab" (matching both) still resolves through the first-registered regex
    m2 = QConfigMapping().set_module_name_regex("a", Q["A"]).set_module_name_regex("ab", Q["B"])
    assert _name(m2.qconfig_for("ab", nn.Linear)) == "tag_A"


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda m: m.set_global(MinMaxObserver), "expected a QConfig or None"),
        (lambda m: m.set_object_type(nn.Linear, {"activation": 1}), "expected a QConfig or None"),
        (lambda m: m.set_object_type(3, None), "object_type must be"),
        (lambda m: m.set_module_name_regex("foo(", None), "not a valid regex"),
        (lambda m: m.set_module_name(nn.Linear, None), "expected a module path str"),
        (lambda m: m.set_module_name_object_type_order("a", F.linear, -1, None), "index must be an int >= 0"),
        (lambda m: m.set_module_name_object_type_order("a", F.linear, True, None), "index must be an int >= 0"),
    ],
)
def test_setter_validation(call, msg):
    with pytest.raises(ValidationError, match=msg):
        call(QConfigMapping())


def test_repr_is_readable():
    m = (
        QConfigMapping()
        .set_global(qc.default_qconfig)
        .set_object_type(torch.sigmoid, None)
        .set_object_type(nn.Linear, qc.default_per_channel_qconfig)
        .set_module_name("head", None)
        .set_module_name_object_type_order("blk", F.linear, 1, qc.default_qconfig)
    )
    r = repr(m)
    assert r.startswith("QConfigMapping(")
    assert "global: act=MinMaxObserver(quant_min=0, quant_max=127), weight=MinMaxObserver(dtype=int8" in r
    assert "torch.sigmoid: None (float)" in r
    assert "torch.nn.Linear: act=MinMaxObserver" in r and "PerChannelMinMaxObserver" in r
    assert "'head': None (float)" in r
    assert "('blk', torch.nn.functional.linear, 1)" in r
    assert "module_name_regex" not in r  # empty sections are left out


def test_copy_and_equality():
    m = QConfigMapping().set_global(qc.default_qconfig).set_object_type(nn.Linear, qc.default_per_channel_qconfig)
    c = m.copy()
    assert c == m and c is not m
    c.set_object_type(nn.Conv2d, None)
    assert nn.Conv2d not in m.object_type_qconfigs and c != m
    # equality is by value of the qconfigs (rebuilt .with_args partials compare equal)
    rebuilt = QConfigMapping().set_global(
        QConfig(activation=MinMaxObserver.with_args(quant_min=0, quant_max=127), weight=qc.default_weight_observer)
    )
    rebuilt.set_object_type(nn.Linear, qc.default_per_channel_qconfig)
    assert rebuilt == m
    rebuilt.set_global(qc.default_per_channel_qconfig)
    assert rebuilt != m


# ----------------------------------------------------------------------------- dict form


def test_dict_round_trip_and_keys():
    m = (
        QConfigMapping()
        .set_global(Q["A"])
        .set_object_type(nn.Linear, Q["B"])
        .set_module_name_regex("foo.*", Q["C"])
        .set_module_name("bar", None)
        .set_module_name_object_type_order("bar", F.linear, 2, Q["E"])
    )
    d = m.to_dict()
    assert d == {
        "": Q["A"],
        "object_type": [(nn.Linear, Q["B"])],
        "module_name_regex": [("foo.*", Q["C"])],
        "module_name": [("bar", None)],
        "module_name_object_type_order": [("bar", F.linear, 2, Q["E"])],
    }
    assert QConfigMapping.from_dict(d).to_dict() == d
    assert QConfigMapping.from_dict({}).global_qconfig is None
    with pytest.raises(ValidationError, match="unknown keys \\['module_names'\\]"):
        QConfigMapping.from_dict({"module_names": []})


def test_dict_form_interoperates_with_torch_ao():
    from torch.ao.quantization import QConfigMapping as TorchMapping

    m = (
        QConfigMapping()
        .set_global(Q["A"])
        .set_object_type(nn.Conv2d, Q["B"])
        .set_object_type("reshape", None)
        .set_module_name_regex("x.*", Q["C"])
        .set_module_name("y", Q["D"])
        .set_module_name_object_type_order("y", torch.add, 0, Q["E"])
    )
    theirs = TorchMapping.from_dict(m.to_dict())
    assert theirs.to_dict() == m.to_dict()
    assert QConfigMapping.from_dict(theirs.to_dict()).to_dict() == m.to_dict()


# ----------------------------------------------------------------------------- precedence, by hand


def _mapping_with_conflicts():
    return (
        QConfigMapping()
        .set_global(Q["A"])
        .set_object_type(nn.Conv2d, Q["B"])
        .set_object_type(F.relu, Q["B"])
        .set_module_name_regex(r"sub\.c.*", Q["C"])
        .set_module_name_regex(r"sub.*", Q["D"])
        .set_module_name("sub", None)
        .set_module_name("sub.conv", Q["E"])
        .set_module_name_object_type_order("sub", nn.Conv2d, 1, Q["F"])
        .set_module_name_object_type_order("sub", F.relu, 0, Q["G"])
    )


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        # module_name_object_type_order beats everything (for modules it counts within the parent)
        (("sub.conv", nn.Conv2d, 1), {}, "tag_F"),
        (("sub.conv", nn.Conv2d, 0), {}, "tag_E"),  # index 0 not set: exact module_name
        (("sub", F.relu, 0), {}, "tag_G"),  # functions count within their own scope
        (("sub", F.relu, 1), {}, None),  # module_name "sub" -> None
        # module_name: closest ancestor wins over regex and object type
        (("sub.other.conv", nn.Conv2d), {}, None),
        (("sub.conv.inner", nn.Conv2d), {}, "tag_E"),
        # regex: first registered match
        (("subx.cat", nn.Conv2d), {}, "tag_D"),
        # object_type, then fallbacks, then global
        (("top", nn.Conv2d), {}, "tag_B"),
        (("top", nn.Linear), {}, "tag_A"),
        (("top", nn.Sequential), {"fallback_object_types": (nn.Linear, nn.Conv2d)}, "tag_B"),
        (("", torch.sigmoid), {"enclosing_module_type": nn.Conv2d}, "tag_B"),
        (("", F.relu), {"enclosing_module_type": nn.Module}, "tag_B"),
        (("", F.relu, 0), {"enclosing_module_type": nn.Module}, "tag_B"),  # order entry is for "sub", not ""
    ],
)
def test_precedence_hand_written(args, kwargs, expected):
    assert _name(_mapping_with_conflicts().qconfig_for(*args, **kwargs)) == expected


def test_regex_is_anchored_at_the_start_like_re_match():
    m = QConfigMapping().set_module_name_regex("conv", Q["B"]).set_module_name_regex(r"sub\.\d$", Q["C"])
    assert m.qconfig_for("sub.conv", nn.Conv2d) is None
    assert _name(m.qconfig_for("conv2", nn.Conv2d)) == "tag_B"
    assert _name(m.qconfig_for("sub.1", nn.Conv2d)) == "tag_C"
    assert m.qconfig_for("sub.12", nn.Conv2d) is None


def test_root_module_name_is_ignored_like_torch():
    # torch.ao never consults module_name "" (the global qconfig covers the root)
    m = QConfigMapping().set_global(Q["A"]).set_module_name("", Q["B"])
    assert _name(m.qconfig_for("", F.relu)) == "tag_A"
    assert _name(m.qconfig_for("conv", nn.Conv2d)) == "tag_A"


def test_explicit_type_beats_fallback_types():
    m = QConfigMapping().set_object_type(nn.Conv2d, Q["B"]).set_object_type(nn.Sequential, Q["C"])
    assert _name(m.qconfig_for("x", nn.Sequential, fallback_object_types=(nn.Conv2d,))) == "tag_C"
    assert m.qconfig_for("x", nn.Linear, fallback_object_types=(nn.ReLU,)) is None


# ----------------------------------------------------------------------------- precedence vs torch.ao


class _Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        x = torch.add(x, 1.0)
        x = torch.add(x, x)
        return F.relu(x)


class _Block(nn.Module):
    def __init__(self, inner: bool):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.relu = nn.ReLU()
        self.scale = nn.Parameter(torch.ones(1))
        self.inner = _Inner() if inner else None

    def forward(self, x):
        x = self.conv(x)
        x = self.relu(x)
        x = F.relu(x)
        x = torch.sigmoid(x) * self.scale
        x = x + x
        x = operator.add(x, 1.0)
        x = self.conv(x)  # the same module called twice
        x = x.reshape(1, 4, 4, 4)
        if self.inner is not None:
            x = self.inner(x)
        return x


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.sub = _Block(inner=True)
        self.other = _Block(inner=False)
        self.head = nn.Linear(4, 4)

    def forward(self, x):
        x = self.conv(x)
        x = F.relu(x)
        x = self.sub(x)
        x = self.other(x)
        x = torch.sigmoid(x)
        return self.head(x).reshape(1, -1)


_NAMES = ["sub", "sub.conv", "sub.inner", "sub.inner.conv", "sub.relu", "other", "other.relu", "conv", "head", ""]
_REGEXES = [r"sub.*", r"sub\.inner.*", r".*conv", r"other", r".*relu", r"", r"head", r"s", r"conv", r"inner"]
_TYPES = [nn.Conv2d, nn.ReLU, nn.Linear, F.relu, torch.sigmoid, operator.add, operator.mul, torch.add, "reshape",
          _Block, _Inner, _Net]
_ORDERS = [
    ("sub", F.relu, 0), ("sub", operator.add, 0), ("sub", operator.add, 1), ("sub", nn.Conv2d, 0),
    ("sub", nn.Conv2d, 1), ("", nn.Conv2d, 0), ("sub.inner", torch.add, 1), ("other", nn.ReLU, 0),
    ("", _Block, 1), ("", F.relu, 0), ("", torch.sigmoid, 0), ("other", torch.sigmoid, 0), ("", nn.Linear, 0),
]


def _random_mappings(n, seed=0):
    """Equal mappings in both libraries, with random conflicting settings."""
    from torch.ao.quantization import QConfig as TQConfig
    from torch.ao.quantization import QConfigMapping as TorchMapping

    rng = random.Random(seed)
    tq = {k: TQConfig(activation=t, weight=None) for k, t in TAGS.items()}

    def pick():
        k = rng.choice(list(TAGS) + [None])
        return k

    for _ in range(n):
        ours, theirs = QConfigMapping(), TorchMapping()
        k = pick()
        ours.set_global(Q.get(k)), theirs.set_global(tq.get(k))
        for pool, setter in (
            (_TYPES, "set_object_type"),
            (_REGEXES, "set_module_name_regex"),
            (_NAMES, "set_module_name"),
        ):
            for key in rng.sample(pool, rng.randint(0, 4)):
                k = pick()
                getattr(ours, setter)(key, Q.get(k))
                getattr(theirs, setter)(key, tq.get(k))
        for key in rng.sample(_ORDERS, rng.randint(0, 4)):
            k = pick()
            ours.set_module_name_object_type_order(*key, Q.get(k))
            theirs.set_module_name_object_type_order(*key, tq.get(k))
        yield ours, theirs


def _parent(path):
    return path.rsplit(".", 1)[0] if "." in path else ""


def _resolve_with_ours(gm, mapping, scope):
    """How the prepare pass is meant to call qconfig_for (see its docstring)."""
    modules = dict(gm.named_modules())
    counters = defaultdict(lambda: defaultdict(int))
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            t = type(modules[node.target])
            parent = _parent(node.target)
            idx = counters[parent][t]
            counters[parent][t] += 1
            out[node.name] = mapping.qconfig_for(node.target, t, idx)
        elif node.op == "call_function":
            path, mtype = scope[node.name]
            idx = counters[path][node.target]
            counters[path][node.target] += 1
            out[node.name] = mapping.qconfig_for(path, node.target, idx, enclosing_module_type=mtype)
        elif node.op == "call_method":
            path, mtype = scope[node.name]
            out[node.name] = mapping.qconfig_for(path, node.target, enclosing_module_type=mtype)
        elif node.op == "get_attr":
            parent = _parent(node.target)
            out[node.name] = mapping.qconfig_for(parent, type(modules[parent]))
    return out


def test_precedence_matches_torch_ao_on_random_conflicting_mappings():
    from torch.ao.quantization.fx.qconfig_mapping_utils import _generate_node_name_to_qconfig
    from torch.ao.quantization.fx.tracer import QuantizationTracer
    from torch.fx import GraphModule

    model = _Net().eval()
    tracer = QuantizationTracer(skipped_module_names=[], skipped_module_classes=[])
    gm = GraphModule(model, tracer.trace(model))
    scope = {name: (s[0], s[1]) for name, s in tracer.node_name_to_scope.items()}
    ops = {n.op for n in gm.graph.nodes}
    assert {"call_module", "call_function", "call_method", "get_attr"} <= ops
    modules = dict(gm.named_modules())

    compared = differing_from_global = 0
    for ours, theirs in _random_mappings(300):
        expected = _generate_node_name_to_qconfig(gm, modules, gm.graph, theirs, tracer.node_name_to_scope)
        got = _resolve_with_ours(gm, ours, scope)
        for name, q_theirs in expected.items():
            if name not in got:  # placeholders / output
                assert q_theirs is None
                continue
            assert _name(got[name]) == _name(q_theirs), (name, ours)
            compared += 1
            differing_from_global += _name(q_theirs) != _name(theirs.global_qconfig)
    assert compared >= 300 * 25
    assert differing_from_global > compared // 4  # the mappings really exercise the precedence


def test_prepare_fx_module_qconfigs_match_torch_ao_including_fusion():
    """End to end: torch.ao's prepare_fx (which fuses conv+relu) attaches the qconfig we resolve."""
    import torch.ao.quantization as tao
    from torch.ao.quantization.quantize_fx import prepare_fx

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
            self.sub = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Linear(4, 4))
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.sub(self.features(x)))

    def tq(qmax):
        return tao.QConfig(activation=tao.MinMaxObserver.with_args(quant_min=0, quant_max=qmax),
                           weight=tao.default_weight_observer)

    theirs = (
        tao.QConfigMapping()
        .set_global(tq(255))
        .set_object_type(nn.Conv2d, tq(127))
        .set_object_type(nn.ReLU, tq(127))
        .set_object_type(nn.Linear, tq(63))
        .set_module_name_regex(r"features\.2", tq(31))
        .set_module_name("sub.2", None)
    )
    ours = (
        QConfigMapping()
        .set_global(Q["A"])
        .set_object_type(nn.Conv2d, Q["B"])
        .set_object_type(nn.ReLU, Q["B"])
        .set_object_type(nn.Linear, Q["C"])
        .set_module_name_regex(r"features\.2", Q["D"])
        .set_module_name("sub.2", None)
    )
    tag_of = {255: "tag_A", 127: "tag_B", 63: "tag_C", 31: "tag_D"}
    prepared = prepare_fx(M().eval(), theirs, example_inputs=(torch.randn(1, 3, 4, 4),))
    modules = dict(prepared.named_modules())
    seen = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or node.target.startswith("activation_post_process"):
            continue
        mod = modules[node.target]
        q_theirs = getattr(mod, "qconfig", None)
        want = None if q_theirs is None else tag_of[q_theirs.activation().quant_max]
        fallback = tuple(type(m) for m in mod) if isinstance(mod, nn.Sequential) else ()
        got = ours.qconfig_for(node.target, type(mod), fallback_object_types=fallback)
        seen[node.target] = (type(mod).__name__, want)
        assert _name(got) == want, node.target
    assert seen["features.0"] == ("ConvReLU2d", "tag_B")  # fused: takes the components' object_type entry
    assert seen["features.2"] == ("Conv2d", "tag_D")
    assert seen["sub.2"] == ("Linear", None)
    assert seen["fc"] == ("Linear", "tag_C")


# ----------------------------------------------------------------------------- default mapping builder


def _describe(ctor):
    """Observer / fake-quant built by ctor, as comparable data (works for quantfx and torch.ao)."""
    if ctor is None:
        return None
    obj = ctor()
    d = {"type": type(obj).__name__}
    for a in ("dtype", "qscheme", "quant_min", "quant_max", "eps", "is_dynamic", "ch_axis", "scale", "zero_point"):
        if hasattr(obj, a):
            v = getattr(obj, a)
            if isinstance(v, torch.dtype):
                v = normalize_dtype(v)
            if isinstance(v, torch.Tensor):
                v = v.flatten().tolist()
            d[a] = v
    inner = getattr(obj, "activation_post_process", None)
    if inner is not None:
        d["inner"] = _describe(lambda: inner)
    return d


def _describe_qconfig(q):
    return None if q is None else (_describe(q.activation), _describe(q.weight))


FBGEMM_LIKE = QConfig(activation=HistogramObserver.with_args(reduce_range=True), weight=default_per_channel_weight_observer)


@pytest.mark.parametrize("is_qat", [False, True])
def test_default_mapping_matches_torch_ao_fbgemm(is_qat):
    import torch.ao.quantization as tao

    if is_qat:
        theirs = tao.get_default_qat_qconfig_mapping("fbgemm")
        from quantfx.fake_quantize import FusedMovingAvgObsFakeQuantize, default_fused_per_channel_wt_fake_quant
        from quantfx.observers import MovingAverageMinMaxObserver

        base = QConfig(
            activation=FusedMovingAvgObsFakeQuantize.with_args(
                observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, reduce_range=True
            ),
            weight=default_fused_per_channel_wt_fake_quant,
        )
    else:
        theirs = tao.get_default_qconfig_mapping("fbgemm")
        base = FBGEMM_LIKE
    assert _describe_qconfig(base) == _describe_qconfig(theirs.global_qconfig)

    ours = build_default_qconfig_mapping(base, is_qat=is_qat)
    our_keys = list(ours.object_type_qconfigs)
    # same keys in the same order, plus embeddings (weight-only) which torch.ao leaves float
    assert our_keys[:-2] == list(theirs.object_type_qconfigs)
    assert our_keys[-2:] == [nn.Embedding, nn.EmbeddingBag]
    for key, their_q in theirs.object_type_qconfigs.items():
        assert _describe_qconfig(ours.object_type_qconfigs[key]) == _describe_qconfig(their_q), key
    emb = ours.object_type_qconfigs[nn.Embedding]
    expected_emb = qc.default_embedding_qat_qconfig if is_qat else qc.float_qparams_weight_only_qconfig
    assert emb is expected_emb
    if is_qat:
        assert isinstance(ours.object_type_qconfigs[torch.sigmoid].activation(), FixedQParamsFakeQuantize)
    assert not ours.module_name_qconfigs and not ours.module_name_regex_qconfigs
    # ops with the same fixed range share one QConfig object, as in torch.ao
    assert ours.object_type_qconfigs[torch.sigmoid] is ours.object_type_qconfigs[nn.Softmax]
    assert ours.object_type_qconfigs[torch.tanh] is not ours.object_type_qconfigs[torch.sigmoid]


def test_default_mapping_transpose_and_overrides():
    # per-tensor qconfig: transpose keeps it as is (torch.ao's qnnpack behaviour)
    m = build_default_qconfig_mapping(qc.default_qconfig)
    assert m.object_type_qconfigs[nn.ConvTranspose2d] is qc.default_qconfig
    # per-channel symmetric [-127, 127]: transpose becomes per-tensor, keeping the narrow range
    m = build_default_qconfig_mapping(qc.default_per_channel_symmetric_qnnpack_qconfig)
    t = m.object_type_qconfigs[F.conv_transpose2d]
    assert not qc.weight_is_per_channel(t)
    w = t.weight()
    assert (w.quant_min, w.quant_max, w.qscheme) == (-127, 127, torch.per_tensor_symmetric)
    assert t.activation is qc.default_per_channel_symmetric_qnnpack_qconfig.activation
    # explicit overrides are used as given
    m = build_default_qconfig_mapping(
        qc.default_qconfig, transpose_qconfig=Q["B"], layernorm_qconfig=Q["C"], prelu_qconfig=Q["D"],
        embedding_qconfig=Q["E"],
    )
    assert _name(m.object_type_qconfigs[nn.ConvTranspose1d]) == "tag_B"
    assert _name(m.object_type_qconfigs[F.layer_norm]) == "tag_C"
    assert _name(m.object_type_qconfigs[nn.PReLU]) == "tag_D"
    assert _name(m.object_type_qconfigs[nn.EmbeddingBag]) == "tag_E"
    # layernorm default keeps the activation observer and a float weight
    ln = build_default_qconfig_mapping(qc.default_qconfig).object_type_qconfigs[nn.LayerNorm]
    assert ln.activation is qc.default_qconfig.activation and not qc.qconfig_has_weight(ln)
    with pytest.raises(ValidationError, match="must not be None"):
        build_default_qconfig_mapping(None)  # type: ignore[arg-type]


def test_default_mapping_resolves_ops_inside_a_model():
    m = build_default_qconfig_mapping(FBGEMM_LIKE)
    assert m.qconfig_for("blk.act", nn.Sigmoid) is m.object_type_qconfigs[torch.sigmoid]
    assert qc.is_reuse_input_qconfig(m.qconfig_for("blk", "reshape", enclosing_module_type=nn.Module))
    assert qc.qconfig_equals(m.qconfig_for("blk.conv", nn.Conv2d), FBGEMM_LIKE)
    sig = m.qconfig_for("blk", torch.sigmoid, 0, enclosing_module_type=nn.Module)
    obs = sig.activation()
    assert (float(obs.scale), int(obs.zero_point)) == (1.0 / 256.0, 0)


def test_reshape_reuses_input_with_the_activation_dtype_of_the_global_qconfig():
    """int8-activation backends (TensorRT, XNNPACK) must see an int8 reuse-input qconfig, or reshape stays float."""
    int8 = QConfig(
        activation=HistogramObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        weight=default_per_channel_weight_observer,
    )
    reshape = build_default_qconfig_mapping(int8).object_type_qconfigs["reshape"]
    assert qc.is_reuse_input_qconfig(reshape) and reshape.activation().dtype == torch.int8
    uint8 = build_default_qconfig_mapping(FBGEMM_LIKE).object_type_qconfigs["reshape"]
    assert uint8 is qc.default_reuse_input_qconfig and normalize_dtype(uint8.activation().dtype) == torch.uint8


def test_int8_reshape_is_quantized_by_an_int8_backend():
    from quantfx.backend_config import BackendConfig, DTypeConfig
    from quantfx.backend_config.common import linear_configs, share_qparams_op_configs
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    int8_acts = DTypeConfig(input_dtype=torch.int8, output_dtype=torch.int8, weight_dtype=torch.int8, bias_dtype=torch.float)
    backend = BackendConfig("int8_only").set_backend_pattern_configs(
        linear_configs([int8_acts]) + share_qparams_op_configs([int8_acts])
    )
    int8 = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        weight=default_per_channel_weight_observer,
    )

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(self.a(x).reshape(4, 8))

    x = torch.randn(4, 8)
    prepared = prepare_fx(M().eval(), build_default_qconfig_mapping(int8), (x,), backend_config=backend)
    prepared(x)
    ref = convert_to_reference_fx(prepared)
    reshape = next(n for n in ref.graph.nodes if n.target == "reshape")
    q_after = [u for u in reshape.users if "quantize" in str(u.target)]
    assert reshape.args[0].op != "call_module" and "dequantize" in str(reshape.args[0].target)
    assert q_after, ref.code  # the reshape sits inside the int8 region, not in float
