"""QuantizationTracer, trace_for_quantization and check_example_inputs.

torch.ao's QuantizationTracer is the oracle for scopes and leaves.
"""

from __future__ import annotations

import ast
import copy
import inspect
import re
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantfx.errors import ExampleInputsError, TracingError, ValidationError
from quantfx.fx.custom_config import PrepareCustomConfig
from quantfx.fx.tracer import QuantizationTracer, check_example_inputs, trace_for_quantization

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
ao_tracer = pytest.importorskip("torch.ao.quantization.fx.tracer")


# --------------------------------------------------------------------------- models


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return F.relu(y).transpose(2, 3) + 1.0


class Middle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.seq = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.inner(x), self.seq(x)], dim=1).sigmoid()


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.middle = Middle()
        self.shared = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.shared(self.stem(x))
        x = self.shared(self.middle(x))
        return self.head(x.mean(dim=(2, 3)))


def _ao_trace(model, names=(), classes=()):
    tracer = ao_tracer.QuantizationTracer(list(names), list(classes))
    graph = tracer.trace(model)
    return tracer, graph


def _graph_signature(graph):
    return [(n.name, n.op, str(n.target)) for n in graph.nodes]


# --------------------------------------------------------------------------- scopes / leaves


def test_node_name_to_scope_matches_torch_ao_on_nested_model():
    model = Nested().eval()
    ours = QuantizationTracer([], [])
    graph = ours.trace(model)
    theirs, their_graph = _ao_trace(model)
    assert _graph_signature(graph) == _graph_signature(their_graph)
    assert ours.node_name_to_scope == theirs.node_name_to_scope
    # spot checks of what the scopes mean
    scope = ours.node_name_to_scope
    assert scope["middle_inner_conv"] == ("middle.inner.conv", nn.Conv2d)
    assert scope["relu"] == ("middle.inner", Inner)  # F.relu called inside Inner.forward
    assert scope["transpose"] == ("middle.inner", Inner)
    assert scope["cat"] == ("middle", Middle)
    assert scope["middle_seq_0"] == ("middle.seq.0", nn.Conv2d)
    assert scope["mean"] == ("", None)
    assert scope["shared_1"] == ("shared", nn.ReLU)  # a module called twice: two nodes, same scope


@pytest.mark.parametrize(
    "names, classes",
    [(["middle.inner"], []), ([], [Inner]), (["middle"], []), (["middle.seq"], [])],
    ids=["name", "class", "name-with-subtree", "sequential-by-name"],
)
def test_skipped_modules_match_torch_ao(names, classes):
    model = Nested().eval()
    ours = QuantizationTracer(names, classes)
    graph = ours.trace(model)
    theirs, their_graph = _ao_trace(model, names, classes)
    assert _graph_signature(graph) == _graph_signature(their_graph)
    assert ours.node_name_to_scope == theirs.node_name_to_scope
    call_modules = {n.target for n in graph.nodes if n.op == "call_module"}
    for name in names:
        assert name in call_modules
    if classes:
        assert "middle.inner" in call_modules


def test_skipped_name_skips_its_whole_subtree():
    class Reach(nn.Module):
        """Calls a grandchild directly, bypassing its parent."""

        def __init__(self) -> None:
            super().__init__()
            self.middle = Middle()

        def forward(self, x):
            return self.middle.inner(x)

    graph = QuantizationTracer(["middle"], []).trace(Reach())
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    assert targets == ["middle.inner"]  # kept whole, not traced into conv / bn
    graph = QuantizationTracer([], []).trace(Reach())
    assert "middle.inner.conv" in [n.target for n in graph.nodes if n.op == "call_module"]


def test_quantfx_nn_modules_are_leaves_user_modules_are_not():
    fused_mod = types.ModuleType("quantfx.nn.intrinsic.fake_for_test")

    class FakeFused(nn.Sequential):
        pass

    FakeFused.__module__ = fused_mod.__name__

    class UserSeq(nn.Sequential):
        pass

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fused = FakeFused(nn.Conv2d(3, 3, 1), nn.ReLU())
            self.user = UserSeq(nn.Conv2d(3, 3, 1), nn.ReLU())

        def forward(self, x):
            return self.user(self.fused(x))

    tracer = QuantizationTracer([], [])
    graph = tracer.trace(M())
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    assert targets == ["fused", "user.0", "user.1"]
    assert tracer.is_leaf_module(nn.Linear(2, 2), "x")
    assert not tracer.is_leaf_module(nn.Sequential(), "x")


def test_record_stack_traces_point_at_user_code():
    tracer = QuantizationTracer([], [])
    graph = tracer.trace(Nested())
    assert tracer.record_stack_traces is True
    relu = next(n for n in graph.nodes if n.name == "relu")
    assert relu.stack_trace and __file__ in relu.stack_trace


# --------------------------------------------------------------------------- trace_for_quantization


def test_trace_for_quantization_meta_and_leaves_from_config():
    model = Nested().eval()
    model.labels = ["cat", "dog"]
    config = (
        PrepareCustomConfig()
        .set_non_traceable_module_names(["middle.seq"])
        .set_standalone_module_name("middle.inner", None, (torch.zeros(1, 4, 4, 4),), None, None)
        .set_preserved_attributes(["labels", "missing"])
    )
    gm = trace_for_quantization(model, config)
    assert type(gm).__name__ == "Nested"
    targets = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert {"middle.seq", "middle.inner"} <= targets
    scope = gm.meta["quantfx_node_name_to_scope"]
    assert scope["middle_inner"] == ("middle.inner", Inner)
    assert gm.labels == ["cat", "dog"] and not hasattr(gm, "missing")
    assert copy.deepcopy(gm).labels == ["cat", "dog"]
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(gm(x), model(x))


def test_trace_for_quantization_does_not_alias_the_users_modules():
    model = Nested().eval()
    gm = trace_for_quantization(model, None)
    assert gm.stem is not model.stem
    with torch.no_grad():
        gm.stem.weight.zero_()
    assert model.stem.weight.abs().sum() > 0
    shared = trace_for_quantization(model, None, copy_model=False)
    assert shared.stem is model.stem


def test_trace_for_quantization_accepts_dicts_and_rejects_garbage():
    gm = trace_for_quantization(Nested(), {"non_traceable_module_class": [Middle]})
    assert "middle" in {n.target for n in gm.graph.nodes if n.op == "call_module"}
    with pytest.raises(ValidationError):
        trace_for_quantization(Nested(), "middle")
    with pytest.raises(TracingError, match="torch.nn.Module"):
        trace_for_quantization(lambda x: x, None)


def test_custom_module_classes_are_leaves():
    class Observed(nn.Module):
        @classmethod
        def from_float(cls, m):
            return cls()

    config = PrepareCustomConfig().set_float_to_observed_mapping(Inner, Observed)
    gm = trace_for_quantization(Nested(), config)
    assert "middle.inner" in {n.target for n in gm.graph.nodes if n.op == "call_module"}


# --------------------------------------------------------------------------- tracing errors


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.proj(x)
        return -x


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.fc(x))


class WithGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.relu(self.block(x)))


_GATE_IF_LINE = inspect.getsourcelines(Gate.forward)[1] + 1


def test_tracing_error_names_module_line_error_and_fix():
    with pytest.raises(TracingError) as info:
        trace_for_quantization(WithGate(), None)
    msg = str(info.value)
    assert "'block.gate'" in msg and "Gate" in msg
    assert f"{__file__}:{_GATE_IF_LINE}" in msg
    assert "if x.sum() > 0:" in msg
    assert "symbolically traced variables cannot be used as inputs to control flow" in msg
    assert "set_non_traceable_module_names(['block.gate'])" in msg
    assert "prepare_custom_config=" in msg
    assert f"set_non_traceable_module_classes([{Gate.__module__}.Gate])" in msg
    assert isinstance(info.value.__cause__, torch.fx.proxy.TraceError)


def _suggested(msg: str, setter: str):
    m = re.search(setter + r"\((\[.*?\])\)", msg)
    assert m, f"no {setter} suggestion in:\n{msg}"
    return m.group(1)


def test_suggested_fixes_make_tracing_succeed():
    model = WithGate().eval()
    with pytest.raises(TracingError) as info:
        trace_for_quantization(model, None)
    msg = str(info.value)
    names = ast.literal_eval(_suggested(msg, "set_non_traceable_module_names"))
    gm = trace_for_quantization(model, PrepareCustomConfig().set_non_traceable_module_names(names))
    assert "block.gate" in {n.target for n in gm.graph.nodes if n.op == "call_module"}
    x = torch.randn(3, 8)
    torch.testing.assert_close(gm(x), model(x))
    class_expr = _suggested(msg, "set_non_traceable_module_classes")
    top = Gate.__module__.split(".")[0]
    classes = eval(class_expr, {top: __import__(Gate.__module__)})  # the suggestion is a valid expression
    assert classes == [Gate]
    gm = trace_for_quantization(model, PrepareCustomConfig().set_non_traceable_module_classes(classes))
    torch.testing.assert_close(gm(x), model(x))


def test_tracing_error_in_top_level_forward():
    class Top(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            for _ in range(int(x.shape[0] > 1)):  # bool(Proxy) at the top level
                x = self.fc(x)
            return x

    with pytest.raises(TracingError) as info:
        trace_for_quantization(Top(), None)
    msg = str(info.value)
    assert "in its own forward" in msg and "Top" in msg
    assert "for _ in range(int(x.shape[0] > 1)):" in msg
    assert "Move the data-dependent part into a submodule" in msg
    assert "set_non_traceable_module_names(['<that submodule>'])" in msg


def test_tracing_error_inside_leaf_sibling_order():
    """The innermost module is reported even when outer modules ran nodes first."""

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Linear(8, 8)
            self.wrapped = nn.Sequential(Block())

        def forward(self, x):
            return self.wrapped(self.pre(x))

    with pytest.raises(TracingError, match=r"'wrapped\.0\.gate'"):
        trace_for_quantization(Outer(), None)


# --------------------------------------------------------------------------- example inputs


def test_check_example_inputs_wraps_and_returns_tuple():
    model = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    assert check_example_inputs(model, x)[0] is x
    assert isinstance(check_example_inputs(model, [x]), tuple)
    assert check_example_inputs(model, (x,)) == (x,)


def test_check_example_inputs_error_message():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 8)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ExampleInputsError) as info:
        check_example_inputs(Net(), (torch.randn(2, 10),))
    msg = str(info.value)
    assert msg.startswith("Net(*example_inputs) failed")
    assert "mat1 and mat2 shapes cannot be multiplied" in msg
    assert "Tensor(shape=[2, 10], dtype=torch.float32)" in msg
    assert "tuple of positional args" in msg
    assert "forward(x)" in msg
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ExampleInputsError, match="must be a tuple of positional args"):
        check_example_inputs(Net(), {"x": torch.randn(2, 16)})


def test_check_example_inputs_leaves_training_model_untouched():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    model[2].eval()  # a mixed state must come back exactly
    before = copy.deepcopy(model.state_dict())
    check_example_inputs(model, (torch.randn(8, 4) * 5 + 3,))
    assert [m.training for m in model.modules()] == [True, True, True, False]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    grad_free = torch.randn(2, 4, requires_grad=True)
    check_example_inputs(model, (grad_free,))
    assert grad_free.grad is None


def test_string_annotations_do_not_break_pickling(tmp_path):
    class Annotated(nn.Module):  # annotations are strings here: this file has `from __future__ import annotations`
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), x

    assert isinstance(Annotated.forward.__annotations__["x"], str)
    gm = trace_for_quantization(Annotated(), None)
    path = tmp_path / "gm.pt"
    torch.save(gm, path)
    loaded = torch.load(path, weights_only=False)
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x)[0], gm(x)[0])


def test_stack_traces_are_user_frames_only():
    tracer = QuantizationTracer([], [])
    graph = tracer.trace(Nested())
    traces = [n.stack_trace for n in graph.nodes if n.op not in ("placeholder", "output")]
    assert all(traces)
    assert not any("site-packages/torch" in t or "/quantfx/fx/" in t for t in traces)
    cat = next(n for n in graph.nodes if n.name == "cat")
    assert "in forward" in cat.stack_trace and "torch.cat([self.inner(x), self.seq(x)], dim=1)" in cat.stack_trace


def test_suggested_fix_works_through_prepare_fx():
    quantize_fx = pytest.importorskip("quantfx.quantize_fx")
    model = WithGate().eval()
    example = (torch.randn(3, 8),)
    with pytest.raises(TracingError) as info:
        quantize_fx.prepare_fx(model, None, example, backend="reference")
    names = ast.literal_eval(_suggested(str(info.value), "set_non_traceable_module_names"))
    prepared = quantize_fx.prepare_fx(
        model, None, example, prepare_custom_config=PrepareCustomConfig().set_non_traceable_module_names(names),
        backend="reference",
    )
    assert isinstance(prepared.get_submodule("block.gate"), Gate)
    prepared(*example)
