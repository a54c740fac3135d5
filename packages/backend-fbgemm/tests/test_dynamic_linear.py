"""Dynamic int8 Linear on its two routes: FBGEMM's fused ``quantized::linear_dynamic`` and the oneDNN fallback.

The ``route`` fixture runs a test once per route; "onednn" simulates a torch
without the quantized ops / dtypes by monkeypatching the availability probe
(``kernels.fbgemm_dynamic_available``), which both the lowering and
``DynamicLinear`` consult.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings

import pytest
import quantfx.api
import torch
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data
from quantfx_fbgemm import artifact, int_ops, kernels
from quantfx_fbgemm.lowering import lower_to_onednn
from quantfx_fbgemm.qconfig import get_dynamic_qconfig_mapping
from torch import nn

FBGEMM = kernels.fbgemm_dynamic_available()


@pytest.fixture(params=["fbgemm", "onednn"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fbgemm" and not FBGEMM:
        pytest.skip("this torch has no FBGEMM dynamic linear (quantized ops / dtypes removed): oneDNN route only")
    if request.param == "onednn":
        monkeypatch.setattr(kernels, "fbgemm_dynamic_available", lambda: False)
    return request.param


def _transformer(backend: str = "x86"):
    model, example_inputs = MODEL_SUITE["transformer_block"]()
    prepared = prepare_fx(model, get_dynamic_qconfig_mapping(backend), example_inputs, backend=backend)
    return model, example_inputs, convert_to_reference_fx(prepared)


def _lower(ref, example_inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layer_norm / softmax / matmul stay float: reported elsewhere
        return lower_to_onednn(ref, example_inputs)


def _dynamic_nodes(low):
    modules = dict(low.named_modules())
    return modules, [n for n in low.graph.nodes if isinstance(modules.get(n.target), int_ops.DynamicLinear)]


def test_probe_finds_fbgemm_when_torch_has_it() -> None:
    has_ops = all(hasattr(torch.ops.quantized, op) for op in ("linear_prepack", "linear_dynamic"))
    engines = torch.backends.quantized.supported_engines
    if not (has_ops and hasattr(torch, "qint8") and ("fbgemm" in engines or "x86" in engines)):
        pytest.skip("torch without the quantized ops: the probe must say False, checked by every onednn-route test")
    assert kernels.fbgemm_dynamic_available()


def test_graph_structure_per_route(route: str) -> None:
    """q / k / v: one GEMM on the concatenated weights; ff1's ReLU in the kernel; the report names the kernel."""
    _, example_inputs, ref = _transformer("fbgemm")  # 7-bit: FBGEMM computes it exactly on every x86 CPU
    low = _lower(ref, example_inputs)
    modules, dyn = _dynamic_nodes(low)
    quants = [n for n in low.graph.nodes if n.target is int_ops.dynamic_quantize]
    assert len(dyn) == 4  # q_k_v (merged), out, ff1 (+relu), ff2
    merged = [n for n in dyn if modules[n.target].linear.out_features == 3 * 32]
    assert len(merged) == 1
    assert [u.target for u in merged[0].users] == [torch.narrow] * 3
    assert [modules[n.target].linear.post_op.name for n in dyn].count("relu") == 1
    assert not any(isinstance(m, nn.ReLU) for m in low.modules())
    kernels_used = {what for name, what in low.quantfx_lowering_report.int8 if what.startswith("DynamicLinear")}
    if route == "fbgemm":
        # FBGEMM quantizes inside the kernel: the linears read the float tensors, no separate quantize
        assert quants == []
        assert all(isinstance(n.args[0], torch.fx.Node) and n.args[0].target is not int_ops.dynamic_quantize
                   for n in dyn)
        assert kernels_used == {"DynamicLinear (fbgemm quantized.linear_dynamic)",
                                "DynamicLinear (fbgemm quantized.linear_relu_dynamic)"}
    else:
        assert len(quants) == 4  # x (q, k, v), ctx (out), norm1 (ff1), relu(ff1) (ff2): one each
        assert all(n.args[0].target is int_ops.dynamic_quantize for n in dyn)
        assert kernels_used == {"DynamicLinear (onednn.qlinear_pointwise)",
                                "DynamicLinear (onednn.qlinear_pointwise, relu fused)"}


# Measured on transformer_block (3 batches): ~140 dB on both routes, i.e. equal up to float rounding of the
# epilogue: FBGEMM's own activation qparams / rounding agree with quantfx.ops.choose_qparams_per_tensor +
# quantize_per_tensor on these inputs. The bound leaves room for a rare rounding tie resolved differently
# (one activation step on one element), far above the 35 dB bar against torch.ao.
ROUTE_VS_REFERENCE_DB = {"fbgemm": 60.0, "onednn": 60.0}


@pytest.mark.parametrize("backend", ["x86", "fbgemm"])
def test_both_routes_match_the_reference_ir(route: str, backend: str) -> None:
    model, example_inputs, ref = _transformer(backend)
    low = _lower(ref, example_inputs)
    xs = [example_inputs, *calibration_data(example_inputs, n=2, seed=11)]
    with torch.no_grad():
        r, got, fp = [ref(*x) for x in xs], [low(*x) for x in xs], [model(*x) for x in xs]
    assert sqnr(r, got) >= ROUTE_VS_REFERENCE_DB[route]
    assert sqnr(fp, got) >= sqnr(fp, r) - 0.5  # no accuracy lost against the reference IR


@pytest.mark.parametrize("reduce_range", [False, True])
def test_fbgemm_kernel_against_the_reference_chain(reduce_range: bool) -> None:
    """``quantized::linear_dynamic`` == dequantize(quantize(x, choose_qparams(x))) @ w.T + b (the reference chain).

    FBGEMM chooses and applies the activation qparams itself (ChooseQuantizationParams
    + a fused quantize while packing); measured here: max |diff| ~1e-5 on outputs
    of ~50, i.e. the same integers. Allowed: one activation step on one element.
    Full 0..255 range with large weights also checks nothing saturates (needs VNNI).
    """
    if not FBGEMM:
        pytest.skip("no FBGEMM dynamic linear in this torch")
    if not reduce_range and kernels.needs_reduce_range(route="fbgemm"):
        pytest.skip("this CPU's FBGEMM saturates 8-bit activations (no VNNI): 7-bit only")
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (48, 64), dtype=torch.int8, generator=g)
    sw = torch.rand(48, generator=g) * 0.01 + 0.001
    b = torch.randn(48, generator=g)
    x = torch.randn(3, 5, 64, generator=g) * 3 + 1
    qmin, qmax = (0, 127) if reduce_range else (0, 255)
    xq, s, zp = int_ops.dynamic_quantize(x, qmin, qmax, torch.finfo(torch.float32).eps)
    expected = ((xq.float() - zp) * s) @ (w.float() * sw[:, None]).T + b
    one_step = s * float((w.float().abs() * sw[:, None]).max())
    for relu in (False, True):
        lin = kernels.PackedLinear(w, sw, b, output_dtype=torch.float32, post_op="relu" if relu else None)
        got = lin.forward_dynamic_fbgemm(x, reduce_range)
        want = expected.relu() if relu else expected
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= one_step
        assert sqnr(want, got) >= 80.0


def test_merged_qkv_is_bit_identical_to_separate_linears(route: str) -> None:
    """The merged GEMM (weights concatenated, packed per channel) gives exactly each linear's own output."""
    _, example_inputs, ref = _transformer("fbgemm")
    low = _lower(ref, example_inputs)
    modules, dyn = _dynamic_nodes(low)
    merged = modules[next(n for n in dyn if modules[n.target].linear.out_features == 96).target]
    ref_mods = dict(ref.named_modules())
    x = torch.randn(2, 8, 32) * 2
    feed = x if route == "fbgemm" else int_ops.dynamic_quantize(x, 0, 127, 1e-7)
    got = merged(feed)
    for i, name in enumerate(["q", "k", "v"]):
        r = next(m for n, m in ref_mods.items() if n.endswith(f".{name}") or n == name)
        alone = int_ops.DynamicLinear(
            kernels.PackedLinear(r.weight_int, r.weight_scale, r.bias, output_dtype=torch.float32),
            merged.reduce_range,
        )
        assert torch.equal(got[..., 32 * i: 32 * (i + 1)], alone(feed))


def test_fbgemm_lowered_artifact_falls_back_to_onednn_on_a_torch_without_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A model lowered and saved where FBGEMM exists still loads and runs on a torch without it."""
    if not FBGEMM:
        pytest.skip("no FBGEMM dynamic linear in this torch")
    _, example_inputs, ref = _transformer("fbgemm")
    low = _lower(ref, example_inputs)
    xs = [example_inputs, *calibration_data(example_inputs, n=2, seed=5)]
    with torch.no_grad():
        fb = [low(*x) for x in xs]
    artifact.save(low, tmp_path / "m.safetensors")
    monkeypatch.setattr(kernels, "fbgemm_dynamic_available", lambda: False)
    monkeypatch.setattr(kernels, "pack_fbgemm_linear", _no_quantized_dtypes)
    loaded = artifact.load(tmp_path / "m.safetensors")
    with torch.no_grad():
        dn = [loaded(*x) for x in xs]
        r = [ref(*x) for x in xs]
    assert all(getattr(m, "_packed_fbgemm", None) is None for m in loaded.modules())
    assert sqnr(r, dn) >= ROUTE_VS_REFERENCE_DB["onednn"]
    assert sqnr(fb, dn) >= ROUTE_VS_REFERENCE_DB["onednn"]


def _no_quantized_dtypes(*args, **kwargs):
    raise AssertionError("the fallback route must not build FBGEMM packed weights")


def _safetensors_dtypes(path) -> set[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_save_load_is_bit_exact_and_stores_plain_integers(route: str, tmp_path) -> None:
    _, example_inputs, ref = _transformer()
    low = _lower(ref, example_inputs)
    x = next(iter(calibration_data(example_inputs, n=1, seed=3)))
    with torch.no_grad():
        before = low(*x)  # packs the weights first: the packed state must not be saved
    path = tmp_path / "dyn.safetensors"
    artifact.save(low, path)
    # only plain tensors (int8 weights, float scales / biases): no quantized dtypes, no packed params
    assert _safetensors_dtypes(path) <= {"I8", "U8", "F32", "I64", "I32", "F64", "BOOL"}
    loaded = artifact.load(path)
    assert all(getattr(m, "_packed_fbgemm", None) is None and getattr(m, "_packed", None) is None
               for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded(*x), before)


_NO_WARNING_SCRIPT = """
import warnings
warnings.simplefilter("error")  # any warning (torch's quantized-dtype deprecation included) fails the run
import torch
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.models import MODEL_SUITE
from quantfx_fbgemm.lowering import lower_to_onednn
from quantfx_fbgemm.qconfig import get_dynamic_qconfig_mapping
model, x = MODEL_SUITE["linear_relu_mlp"]()
ref = convert_to_reference_fx(prepare_fx(model, get_dynamic_qconfig_mapping("fbgemm"), x, backend="fbgemm"))
low = lower_to_onednn(ref, x, warn=False)
with torch.no_grad():
    low(*x)  # first call: builds the FBGEMM packed weights
print(sorted({w for _, w in low.quantfx_lowering_report.int8}))
"""


def test_fbgemm_route_warns_nothing() -> None:
    """Packing goes through torch's deprecated quantized dtypes; the user must not see that warning.

    A fresh process: torch emits that deprecation once per process, so only the
    first pack (the availability probe) can show it.
    """
    if not FBGEMM:
        pytest.skip("no FBGEMM dynamic linear in this torch")
    proc = subprocess.run([sys.executable, "-c", _NO_WARNING_SCRIPT], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fbgemm quantized.linear" in proc.stdout  # the probe did not fail on a warning-turned-error


@pytest.mark.parametrize("isa,expected", [("avx512_vnni", "fbgemm"), ("avx2_vnni", "onednn"), ("avx2", "fbgemm")])
def test_route_per_target_isa_for_the_x86_range(monkeypatch: pytest.MonkeyPatch, isa: str, expected: str) -> None:
    """x86's range follows oneDNN (8-bit with any VNNI); FBGEMM has no AVX-VNNI kernels, so there it would
    saturate 8-bit activations: those linears stay on the (exact) oneDNN route. AVX2: both 7-bit, FBGEMM."""
    if not FBGEMM:
        pytest.skip("no FBGEMM dynamic linear in this torch")
    monkeypatch.setenv("QUANTFX_CPU_ISA", isa)
    model, x = nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval(), (torch.randn(4, 16),)
    ref = convert_to_reference_fx(prepare_fx(model, get_dynamic_qconfig_mapping("x86"), x, backend="x86"))
    low = _lower(ref, x)
    (what,) = [w for _, w in low.quantfx_lowering_report.int8]
    assert what.startswith("DynamicLinear (fbgemm" if expected == "fbgemm" else "DynamicLinear (onednn")
    (dyn,) = [m for m in low.modules() if isinstance(m, int_ops.DynamicLinear)]
    assert dyn.reduce_range == (isa == "avx2")


def test_fbgemm_route_rejects_post_ops_it_has_no_kernel_for() -> None:
    lin = kernels.PackedLinear(torch.ones(4, 8, dtype=torch.int8), 0.1, None, output_dtype=torch.float32,
                               post_op="gelu")
    with pytest.raises(ValueError, match="post_op none or relu"):
        lin.forward_dynamic_fbgemm(torch.randn(2, 8), True)


def test_odd_activation_range_keeps_the_onednn_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """FBGEMM computes only 0..255 / 0..127 itself; another range stays bit-exact on dynamic_quantize + oneDNN."""
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx512_vnni")  # a VNNI target: the lowering keeps the qconfig's range
    from quantfx.observers import PlaceholderObserver, default_weight_observer
    from quantfx.qconfig import QConfig
    from quantfx.qconfig_mapping import QConfigMapping

    qconfig = QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.uint8, quant_min=0, quant_max=200, is_dynamic=True),
        weight=default_weight_observer,
    )
    model, x = nn.Sequential(nn.Linear(16, 8)).eval(), (torch.randn(4, 16),)
    ref = convert_to_reference_fx(prepare_fx(model, QConfigMapping().set_object_type(nn.Linear, qconfig), x,
                                             backend="x86"))
    low = _lower(ref, x)
    quants = [n for n in low.graph.nodes if n.target is int_ops.dynamic_quantize]
    assert len(quants) == 1 and quants[0].args[1:3] == (0, 200)
    assert [w for _, w in low.quantfx_lowering_report.int8] == ["DynamicLinear (onednn.qlinear_pointwise)"]
    with torch.no_grad():
        assert sqnr(ref(*x), low(*x)) >= 40.0


def test_fbgemm_backend_lowers_every_dynamic_linear_to_the_fbgemm_kernel() -> None:
    if not FBGEMM:
        pytest.skip("no FBGEMM dynamic linear in this torch")
    model, example_inputs = MODEL_SUITE["linear_relu_mlp"]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low = quantfx.api.lower(_ref_for(model, example_inputs), "fbgemm", example_inputs)
    whats = [w for _, w in low.quantfx_lowering_report.int8]
    assert whats and all(w.startswith("DynamicLinear (fbgemm quantized.linear") for w in whats)
    with torch.no_grad():
        assert sqnr(model(*example_inputs), low(*example_inputs)) > 30.0


def _ref_for(model: nn.Module, example_inputs):
    prepared = prepare_fx(model, get_dynamic_qconfig_mapping("fbgemm"), example_inputs, backend="fbgemm")
    return convert_to_reference_fx(prepared)
