"""Tests for quantfx_fbgemm.kernels.

Every kernel is checked against an independent reference: integer inputs and
weights are dequantized with explicit float64 math, the float op runs
(F.conv*d / F.linear + post-op), and the result is requantized. Kernels must
match within one quantization step. Where torch.ao's quantized ops exist they
serve as a second oracle (tests only: package code never imports them).

Random activations use :func:`activation_quant_range`, so on a CPU without
VNNI they are 7-bit and the kernels stay exact; the saturation behaviour itself
is tested in a subprocess with oneDNN capped to AVX2.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

from quantfx_fbgemm import kernels as K
from quantfx_fbgemm.kernels import PackedConv, PackedLinear, PostOp

pytestmark = pytest.mark.skipif(not K.onednn_int8_available(), reason="torch built without oneDNN int8 ops")

QMIN, QMAX = K.activation_quant_range()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand_u8(shape, g, lo=QMIN, hi=QMAX) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64).to(torch.uint8)


def _rand_w(shape, g) -> torch.Tensor:
    return torch.randint(-127, 128, shape, generator=g, dtype=torch.int64).to(torch.int8)


def _requant(y: torch.Tensor, scale: float, zp: int, dtype=torch.uint8) -> torch.Tensor:
    info = torch.iinfo(dtype)
    return torch.clamp(torch.round(y / scale) + zp, info.min, info.max)


def _assert_within_one_step(got: torch.Tensor, ref_q: torch.Tensor, max_off_frac: float = 0.02) -> None:
    diff = (got.to(torch.float64) - ref_q.to(torch.float64)).abs()
    assert diff.max().item() <= 1, f"max diff {diff.max().item()} steps"
    frac = (diff > 0).double().mean().item()
    assert frac <= max_off_frac, f"{frac:.2%} of outputs off by one step"


def _conv_ref(x, sx, zx, w, sw, b, stride, padding, dilation, groups, post=PostOp(), residual=None):
    nsp = w.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nsp]
    xf = (x.to(torch.float64) - zx) * sx
    wf = w.to(torch.float64) * sw.to(torch.float64).reshape(-1, *([1] * (w.dim() - 1)))
    if isinstance(padding, (list, tuple)) and len(padding) == 2 * nsp:
        xf = F.pad(xf, list(padding))
        padding = 0
    y = conv(xf, wf, None if b is None else b.to(torch.float64), stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual
    return post.apply_float(y)


# --------------------------------------------------------------------------- ISA


def test_hardware_isa_from_feature_sets():
    f = frozenset
    assert K.hardware_isa(f({"avx2"})) == "avx2"
    assert K.hardware_isa(f({"avx2", "avxvnni"})) == "avx2_vnni"
    avx512 = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert K.hardware_isa(f(avx512)) == "avx512"
    assert K.hardware_isa(f(avx512 | {"avx512vnni"})) == "avx512_vnni"
    assert K.hardware_isa(f(avx512 | {"avx512vnni", "amxint8", "amxtile"})) == "amx_int8"
    assert K.hardware_isa(f({"sse4_2"})) == "default"


def test_cpu_isa_matches_this_machine():
    feats = K.cpu_features()
    isa = K.cpu_isa()
    assert isa in K.ISA_LEVELS
    if "avx512vnni" in feats or "avxvnni" in feats or "amxint8" in feats:
        assert K.hardware_isa() in ("avx2_vnni", "avx512_vnni", "amx_int8")
    if "avx2" in feats:
        assert K.hardware_isa() != "default"


def test_isa_env_caps(monkeypatch):
    for v in ("QUANTFX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(v, raising=False)
    hw = K.hardware_isa()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert K.cpu_isa("onednn") == ("avx2" if hw != "default" else "default")
    assert K.needs_reduce_range(route="onednn")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    assert K.cpu_isa("fbgemm") in ("avx2", "default")
    assert K.cpu_isa("onednn") == hw
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx512_vnni")
    assert K.cpu_isa("fbgemm") == "avx512_vnni"
    assert not K.needs_reduce_range()
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx2")
    assert K.needs_reduce_range()
    assert K.activation_quant_range() == (0, 127)
    monkeypatch.setenv("QUANTFX_CPU_ISA", "bogus")
    with pytest.raises(ValueError):
        K.cpu_isa()


def test_needs_reduce_range_table():
    for isa, want in [("default", True), ("avx2", True), ("avx512", True),
                      ("avx2_vnni", False), ("avx512_vnni", False), ("amx_int8", False)]:  # fmt: skip
        assert K.needs_reduce_range(isa) is want
    assert not K.needs_reduce_range("avx2", op="depthwise")  # oneDNN depthwise widens to int32
    assert K.needs_reduce_range("avx512_vnni", route="fbgemm", op="depthwise")  # FBGEMM depthwise always saturates
    assert K.activation_quant_range(False) == (0, 255)
    assert K.activation_quant_range(True) == (0, 127)
    assert K.activation_quant_range(False, torch.int8) == (-128, 127)


_SATURATION_SCRIPT = textwrap.dedent(
    """
    import json, torch, torch.nn.functional as F
    from quantfx_fbgemm import kernels as K
    g = torch.Generator().manual_seed(0)
    out = {"needs_reduce_range": K.needs_reduce_range(), "isa": K.cpu_isa()}
    w = torch.randint(-127, 128, (32, 32, 3, 3), generator=g).to(torch.int8)
    w[torch.rand(w.shape, generator=g) < 0.5] = 127
    sw = torch.full((32,), 1e-3)
    for name, hi in (("full", 255), ("reduced", 127)):
        x = torch.randint(0, hi + 1, (1, 32, 12, 12), generator=g).to(torch.uint8)
        conv = K.PackedConv(w, sw, None, padding=1, input_scale=0.01, input_zero_point=0,
                            output_dtype=torch.float32)
        y = conv(x).double()
        acc = F.conv2d(x.double(), w.double(), None, 1, 1)          # exact integer math
        ref = acc * 0.01 * 1e-3
        out[name] = float(((y - ref).abs() / (0.01 * 1e-3)).max())  # error in accumulator units
    wd = torch.full((32, 1, 3, 3), 127, dtype=torch.int8)
    x = torch.full((1, 32, 12, 12), 255, dtype=torch.uint8)
    dw = K.PackedConv(wd, sw, None, padding=1, groups=32, input_scale=0.01, input_zero_point=0,
                      output_dtype=torch.float32)
    ref = F.conv2d(x.double(), wd.double(), None, 1, 1, 1, 32) * 0.01 * 1e-3
    out["depthwise_full"] = float(((dw(x).double() - ref).abs() / (0.01 * 1e-3)).max())
    out["depthwise_needs_rr"] = K.needs_reduce_range(op="depthwise")
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("cap", [None, "AVX2"])
def test_saturation_matches_needs_reduce_range(cap):
    """7-bit activations are always exact; full range is exact whenever
    needs_reduce_range() says False. With oneDNN capped to AVX2 (no VNNI), the
    detector must say True (and the kernels do saturate on full-range data)."""
    import json

    env = dict(os.environ)
    for v in ("QUANTFX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        env.pop(v, None)
    if cap:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _SATURATION_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["reduced"] < 1.0, out
    assert out["depthwise_full"] < 1.0 and not out["depthwise_needs_rr"], out
    if not out["needs_reduce_range"]:
        assert out["full"] < 1.0, out
    if cap == "AVX2":
        assert out["needs_reduce_range"], out
        assert out["full"] > 1000, out  # saturated: documents the non-VNNI hazard


def test_threading_advice(monkeypatch):
    for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(v, raising=False)
    assert K.threading_advice(1) is None
    assert "OMP_WAIT_POLICY=PASSIVE" in K.threading_advice(2)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert K.threading_advice(2) is None
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert K.threading_advice(2) is not None
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    assert K.threading_advice(2) is None
    monkeypatch.setenv("GOMP_SPINCOUNT", "300k")
    assert K.threading_advice(2) is not None
    monkeypatch.setenv("GOMP_SPINCOUNT", "1M")
    assert K.threading_advice(2) is not None
    monkeypatch.setenv("GOMP_SPINCOUNT", "INFINITE")
    assert K.threading_advice(2) is not None
    monkeypatch.setenv("GOMP_SPINCOUNT", "5k")
    assert K.threading_advice(2) is None
    assert K.RECOMMENDED_ENV == {"OMP_WAIT_POLICY": "PASSIVE"}


# --------------------------------------------------------------------------- quantize helpers


def test_quantize_dequantize_match_torch_quantize_per_tensor():
    g = _gen(1)
    x = torch.randn(2, 3, 8, 8, generator=g) * 3
    for scale, zp, dtype in [(0.05, 128, torch.uint8), (0.031, 3, torch.uint8), (0.02, 0, torch.int8)]:
        q = K.quantize(x, scale, zp, dtype)
        assert q.dtype == dtype
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qt = {torch.uint8: torch.quint8, torch.int8: torch.qint8}[dtype]
            oracle = torch.quantize_per_tensor(x, scale, zp, qt)
        assert torch.equal(q, oracle.int_repr())
        assert torch.allclose(K.dequantize(q, scale, zp), oracle.dequantize())
    q7 = K.quantize(x, 0.01, 64, torch.uint8, 0, 127)
    assert int(q7.max()) <= 127
    qcl = K.quantize(x, 0.05, 128, memory_format=torch.channels_last)
    assert qcl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(qcl, K.quantize(x, 0.05, 128))


def test_requantize_and_add():
    g = _gen(2)
    a, b = _rand_u8((2, 4, 5, 5), g), _rand_u8((2, 4, 5, 5), g)
    r = K.requantize(a, 0.1, 10, 0.05, 20)
    ref = _requant((a.double() - 10) * 0.1, 0.05, 20)
    _assert_within_one_step(r, ref, 0.0)
    assert K.requantize(a, 0.1, 10, 0.1, 10) is a
    s = K.add_requant(a, 0.1, 10, b, 0.07, 3, 0.2, 50, relu=True)
    ref = _requant(F.relu((a.double() - 10) * 0.1 + (b.double() - 3) * 0.07), 0.2, 50)
    _assert_within_one_step(s, ref, 0.1)  # many exact .5 ties with these scales


# --------------------------------------------------------------------------- conv

CONV_CASES = {
    # name: (N, C, O, spatial, kernel, stride, padding, dilation, groups)
    "3x3": (2, 16, 24, (14, 14), (3, 3), 1, 1, 1, 1),
    "1x1": (1, 32, 64, (9, 9), (1, 1), 1, 0, 1, 1),
    "3x3_s2": (1, 16, 16, (15, 15), (3, 3), 2, 1, 1, 1),
    "7x7_s2_stem": (1, 3, 16, (32, 32), (7, 7), 2, 3, 1, 1),
    "depthwise3x3": (2, 32, 32, (14, 14), (3, 3), 1, 1, 1, 32),
    "depthwise5x5_s2": (1, 24, 24, (17, 17), (5, 5), 2, 2, 1, 24),
    "depthwise_mult2": (1, 8, 16, (10, 10), (3, 3), 1, 1, 1, 8),
    "grouped": (1, 32, 48, (10, 10), (3, 3), 1, 1, 1, 4),
    "dilated": (1, 16, 16, (16, 16), (3, 3), 1, 2, 2, 1),
    "rect": (1, 8, 8, (9, 13), (1, 3), (1, 2), (0, 1), 1, 1),
    "uneven_pad": (1, 8, 12, (11, 11), (3, 3), 2, (0, 1, 0, 1), 1, 1),  # TF-style 'same', stride 2
    "same_even_k": (1, 8, 8, (10, 10), (4, 4), 1, "same", 1, 1),
    "conv1d": (2, 16, 24, (30,), (3,), 1, 1, 1, 1),
    "conv1d_depthwise": (2, 16, 16, (30,), (5,), 1, 2, 1, 16),
    "conv3d": (1, 8, 8, (5, 6, 6), (3, 3, 3), 1, 1, 1, 1),
}


def _build_conv_case(name, seed=0, bias=True, per_tensor=False, zx=None, hi=QMAX):
    N, C, O, sp, k, stride, padding, dilation, groups = CONV_CASES[name]
    g = _gen(seed)
    x = _rand_u8((N, C, *sp), g, QMIN, hi)
    w = _rand_w((O, C // groups, *k), g)
    sw = torch.tensor(0.003) if per_tensor else torch.rand(O, generator=g) * 0.004 + 0.001
    b = torch.randn(O, generator=g) * 0.5 if bias else None
    sx = 0.02
    zx = (hi + 1) // 2 if zx is None else zx
    return x, w, sw, b, sx, zx, stride, padding, dilation, groups


def _ref_padding(padding, w):
    if padding == "same":
        nsp = w.dim() - 2
        pads = []
        for d in reversed(range(nsp)):
            total = w.shape[2 + d] - 1
            pads += [total // 2, total - total // 2]
        return pads
    return padding


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_matches_float_reference(name):
    x, w, sw, b, sx, zx, stride, padding, dilation, groups = _build_conv_case(name)
    ref = _conv_ref(x, sx, zx, w, sw, b, stride, _ref_padding(padding, w), dilation, groups)
    ys, yz = float(ref.abs().max()) / 100, 120
    conv = PackedConv(w, sw, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      input_scale=sx, input_zero_point=zx, output_scale=ys, output_zero_point=yz)  # fmt: skip
    y = conv(x)
    assert y.dtype == torch.uint8 and y.shape == ref.shape
    _assert_within_one_step(y, _requant(ref, ys, yz))


@pytest.mark.parametrize("post", ["relu", "relu6", "hardswish", "silu", ("hardtanh", -1.0, 2.0)])
@pytest.mark.parametrize("name", ["3x3", "depthwise3x3", "1x1"])
def test_conv_post_ops(name, post):
    post_op = PostOp.parse(*post) if isinstance(post, tuple) else PostOp.parse(post)
    x, w, sw, b, sx, zx, stride, padding, dilation, groups = _build_conv_case(name, seed=3)
    ref = _conv_ref(x, sx, zx, w, sw, b, stride, padding, dilation, groups, post_op)
    ys, yz = max(float(ref.abs().max()), 1e-3) / 120, 30
    conv = PackedConv(w, sw, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      input_scale=sx, input_zero_point=zx, output_scale=ys, output_zero_point=yz, post_op=post_op)  # fmt: skip
    _assert_within_one_step(conv(x), _requant(ref, ys, yz))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.int8])
def test_conv_output_dtypes(out_dtype):
    x, w, sw, b, sx, zx, stride, padding, dilation, groups = _build_conv_case("3x3", seed=4, per_tensor=True)
    ref = _conv_ref(x, sx, zx, w, sw, b, stride, padding, dilation, groups)
    if out_dtype == torch.float32:
        conv = PackedConv(w, sw, b, padding=1, input_scale=sx, input_zero_point=zx, output_dtype=torch.float32)
        y = conv(x)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    else:
        ys = float(ref.abs().max()) / 120
        conv = PackedConv(w, sw, b, padding=1, input_scale=sx, input_zero_point=zx,
                          output_scale=ys, output_zero_point=-3, output_dtype=torch.int8)  # fmt: skip
        y = conv(x)
        assert y.dtype == torch.int8
        _assert_within_one_step(y, _requant(ref, ys, -3, torch.int8))


@pytest.mark.parametrize("post", ["none", "relu"])
@pytest.mark.parametrize("name", ["3x3", "1x1", "depthwise3x3"])
def test_conv_residual_add(name, post):
    x, w, sw, b, sx, zx, stride, padding, dilation, groups = _build_conv_case(name, seed=5)
    N, C, O, sp, *_ = CONV_CASES[name]
    g = _gen(6)
    r = _rand_u8((N, O, *sp), g)
    rs, rz = 0.03, 60
    ref = _conv_ref(x, sx, zx, w, sw, b, stride, padding, dilation, groups, PostOp.parse(post),
                    residual=(r.double() - rz) * rs)  # fmt: skip
    ys, yz = float(ref.abs().max()) / 120, 10
    conv = PackedConv(w, sw, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      input_scale=sx, input_zero_point=zx, output_scale=ys, output_zero_point=yz,
                      post_op=post, residual=(rs, rz))  # fmt: skip
    r_before = r.clone()
    y = conv(x, r)
    assert torch.equal(r, r_before), "residual must not be clobbered unless donated"
    _assert_within_one_step(y, _requant(ref, ys, yz))
    # donated, channels-last residual: same numbers
    rd = r.contiguous(memory_format=torch.channels_last)
    y2 = conv(x, rd, residual_donated=True)
    assert torch.equal(y, y2)


def test_conv_residual_float_exit():
    x, w, sw, b, sx, zx, *_ = _build_conv_case("3x3", seed=7)
    r = torch.randn(2, 24, 14, 14)
    ref = _conv_ref(x, sx, zx, w, sw, b, 1, 1, 1, 1, PostOp("relu"), residual=r.double())
    conv = PackedConv(w, sw, b, padding=1, input_scale=sx, input_zero_point=zx,
                      output_dtype=torch.float32, post_op="relu", residual=(1.0, 0))  # fmt: skip
    y = conv(x, r)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(TypeError):
        conv(x, K.quantize(r, 0.1, 0))


def test_conv_channels_last_input_and_shape_change():
    x, w, sw, b, sx, zx, stride, padding, dilation, groups = _build_conv_case("3x3", seed=8)
    conv = PackedConv(w, sw, b, padding=1, input_scale=sx, input_zero_point=zx, output_scale=0.05, output_zero_point=0)
    y_nchw = conv(x)
    y_cl = conv(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(y_nchw, y_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    # packed with the first call's shape as a hint; other shapes still correct
    g = _gen(9)
    x2 = _rand_u8((3, 16, 7, 11), g)
    ref = _conv_ref(x2, sx, zx, w, sw, b, 1, 1, 1, 1)
    _assert_within_one_step(conv(x2), _requant(ref, 0.05, 0))


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize("shape", [(4, 64), (2, 5, 64), (64,), (2, 3, 4, 64), (33, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_float_reference(shape, bias):
    g = _gen(10)
    x = _rand_u8(shape, g)
    w = _rand_w((48, 64), g)
    sw = torch.rand(48, generator=g) * 0.004 + 0.001
    b = torch.randn(48, generator=g) if bias else None
    sx, zx = 0.03, 100
    ref = F.linear((x.double() - zx) * sx, w.double() * sw.double()[:, None], None if b is None else b.double())
    ys, yz = float(ref.abs().max()) / 120, 128
    lin = PackedLinear(w, sw, b, input_scale=sx, input_zero_point=zx, output_scale=ys, output_zero_point=yz)
    y = lin(x)
    assert y.shape == (*shape[:-1], 48) and y.dtype == torch.uint8
    _assert_within_one_step(y, _requant(ref, ys, yz))
    yf = PackedLinear(w, sw, b, input_scale=sx, input_zero_point=zx, output_dtype=torch.float32)(x)
    torch.testing.assert_close(yf.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("post", ["relu", "relu6", "gelu", "gelu_tanh", "silu", "hardswish", "tanh", ("leaky_relu", 0.1)])
def test_linear_post_ops(post):
    post_op = PostOp.parse(*post) if isinstance(post, tuple) else PostOp.parse(post)
    g = _gen(11)
    x = _rand_u8((3, 7, 32), g)
    w = _rand_w((40, 32), g)
    sw = torch.rand(40, generator=g) * 0.004 + 0.001
    b = torch.randn(40, generator=g)
    sx, zx = 0.02, 64
    ref = post_op.apply_float(F.linear((x.double() - zx) * sx, w.double() * sw.double()[:, None], b.double()))
    ys, yz = float(ref.abs().max()) / 120, 100
    lin = PackedLinear(w, sw, b, input_scale=sx, input_zero_point=zx, output_scale=ys, output_zero_point=yz, post_op=post_op)
    _assert_within_one_step(lin(x), _requant(ref, ys, yz), 0.03)


@pytest.mark.parametrize("post", ["none", "relu"])
@pytest.mark.parametrize("float_out", [False, True])
def test_linear_residual_add(post, float_out):
    g = _gen(12)
    x = _rand_u8((2, 9, 32), g)
    w = _rand_w((32, 32), g)
    sw = torch.rand(32, generator=g) * 0.004 + 0.001
    b = torch.randn(32, generator=g)
    sx, zx = 0.02, 64
    lin_ref = F.linear((x.double() - zx) * sx, w.double() * sw.double()[:, None], b.double())
    if float_out:
        r = torch.randn(2, 9, 32, generator=g)
        ref = PostOp.parse(post).apply_float(lin_ref + r.double())
        lin = PackedLinear(w, sw, b, input_scale=sx, input_zero_point=zx, output_dtype=torch.float32,
                           post_op=post, residual=(1.0, 0))  # fmt: skip
        r0 = r.clone()
        torch.testing.assert_close(lin(x, r).double(), ref, rtol=1e-5, atol=1e-4)
        assert torch.equal(r, r0)
    else:
        r = _rand_u8((2, 9, 32), g)
        rs, rz = 0.05, 70
        ref = PostOp.parse(post).apply_float(lin_ref + (r.double() - rz) * rs)
        ys, yz = float(ref.abs().max()) / 120, 128
        lin = PackedLinear(w, sw, b, input_scale=sx, input_zero_point=zx, output_scale=ys, output_zero_point=yz,
                           post_op=post, residual=(rs, rz))  # fmt: skip
        r0 = r.clone()
        y = lin(x, r)
        _assert_within_one_step(y, _requant(ref, ys, yz))
        assert torch.equal(r, r0), "linear residual must not be modified unless donated"
        assert torch.equal(lin(x, r.clone(), residual_donated=True), y)


def test_linear_dynamic():
    g = _gen(13)
    x = torch.randn(2, 16, 64, generator=g)
    wf = torch.randn(32, 64, generator=g) * 0.1
    sw = wf.abs().amax(1) / 127
    w = torch.round(wf / sw[:, None]).clamp(-127, 127).to(torch.int8)
    b = torch.randn(32, generator=g)
    lin = PackedLinear(w, sw, b, output_dtype=torch.float32)
    y = lin.forward_dynamic(x)
    ref = F.linear(x, w.float() * sw[:, None], b)
    # dynamic activation quantization error only: a few activation steps
    err = (y - ref).abs().max().item()
    assert err < 0.1 * ref.abs().max().item(), err
    with pytest.raises(ValueError):
        PackedLinear(w, sw, b, input_scale=0.1, input_zero_point=0).forward_dynamic(x)


# --------------------------------------------------------------------------- torch.ao oracle

_AO_ENGINES = [e for e in ("fbgemm", "x86") if e in torch.backends.quantized.supported_engines]
# The oracle gets 7-bit activations: FBGEMM's depthwise kernels saturate int16
# pair sums on full-range uint8 even on VNNI CPUs (see docs/backends/fbgemm-kernels.md).
_AO_HI = 127


@pytest.fixture
def ao_engine(request):
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = request.param
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield request.param
    torch.backends.quantized.engine = prev


def _q(x_int, scale, zp):
    return torch._make_per_tensor_quantized_tensor(x_int, scale, zp)


@pytest.mark.skipif(not _AO_ENGINES, reason="no fbgemm/x86 quantized engine")
@pytest.mark.parametrize("ao_engine", _AO_ENGINES, indirect=True)
@pytest.mark.parametrize("name", ["3x3", "1x1", "depthwise3x3", "grouped", "3x3_s2", "conv1d"])
@pytest.mark.parametrize("relu", [False, True])
def test_conv_matches_torch_ao_quantized(ao_engine, name, relu):
    x, w, sw, b, sx, zx, stride, padding, dilation, groups = _build_conv_case(name, seed=20, hi=_AO_HI)
    nsp = w.dim() - 2
    ys, yz = 0.05, 90
    qw = torch._make_per_channel_quantized_tensor(w, sw.double(), torch.zeros(w.shape[0], dtype=torch.long), 0)
    st, pd, dl = (K._tuple(v, nsp, "") for v in (stride, padding, dilation))
    if nsp == 1:
        packed = torch.ops.quantized.conv1d_prepack(qw, b, st, pd, dl, groups)
        op = torch.ops.quantized.conv1d_relu if relu else torch.ops.quantized.conv1d
    else:
        packed = torch.ops.quantized.conv2d_prepack(qw, b, st, pd, dl, groups)
        op = torch.ops.quantized.conv2d_relu.new if relu else torch.ops.quantized.conv2d.new
    oracle = op(_q(x, sx, zx), packed, ys, yz).int_repr()
    conv = PackedConv(w, sw, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      input_scale=sx, input_zero_point=zx, output_scale=ys, output_zero_point=yz,
                      post_op="relu" if relu else None)  # fmt: skip
    _assert_within_one_step(conv(x), oracle)


@pytest.mark.skipif(not _AO_ENGINES, reason="no fbgemm/x86 quantized engine")
@pytest.mark.parametrize("ao_engine", _AO_ENGINES, indirect=True)
def test_conv_add_relu_matches_torch_ao(ao_engine):
    x, w, sw, b, sx, zx, *_ = _build_conv_case("3x3", seed=21, hi=_AO_HI)
    g = _gen(22)
    r = _rand_u8((2, 24, 14, 14), g)
    rs, rz = 0.04, 30
    ref = _conv_ref(x, sx, zx, w, sw, b, 1, 1, 1, 1)
    cs = float(ref.abs().max()) / 120
    ys, yz = float(F.relu(ref + (r.double() - rz) * rs).max()) / 250, 5
    qw = torch._make_per_channel_quantized_tensor(w, sw.double(), torch.zeros(24, dtype=torch.long), 0)
    packed = torch.ops.quantized.conv2d_prepack(qw, b, [1, 1], [1, 1], [1, 1], 1)
    conv_out = torch.ops.quantized.conv2d.new(_q(x, sx, zx), packed, cs, 128)  # torch.ao: separate conv, then add
    oracle = torch.ops.quantized.add_relu(conv_out, _q(r, rs, rz), ys, yz).int_repr()
    conv = PackedConv(w, sw, b, padding=1, input_scale=sx, input_zero_point=zx, output_scale=ys,
                      output_zero_point=yz, post_op="relu", residual=(rs, rz))  # fmt: skip
    # torch.ao requantizes the conv output before the add (one extra rounding), so allow 1 step
    _assert_within_one_step(conv(x, r), oracle, 0.3)


@pytest.mark.skipif(not _AO_ENGINES, reason="no fbgemm/x86 quantized engine")
@pytest.mark.parametrize("ao_engine", _AO_ENGINES, indirect=True)
@pytest.mark.parametrize("relu", [False, True])
def test_linear_matches_torch_ao_quantized(ao_engine, relu):
    g = _gen(23)
    x = _rand_u8((2, 10, 64), g, 0, _AO_HI)
    w = _rand_w((96, 64), g)
    sw = torch.rand(96, generator=g) * 0.004 + 0.001
    b = torch.randn(96, generator=g)
    sx, zx, ys, yz = 0.02, 60, 0.07, 110
    qw = torch._make_per_channel_quantized_tensor(w, sw.double(), torch.zeros(96, dtype=torch.long), 0)
    packed = torch.ops.quantized.linear_prepack(qw, b)
    op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    oracle = op(_q(x, sx, zx), packed, ys, yz).int_repr()
    lin = PackedLinear(w, sw, b, input_scale=sx, input_zero_point=zx, output_scale=ys, output_zero_point=yz,
                       post_op="relu" if relu else None)  # fmt: skip
    _assert_within_one_step(lin(x), oracle)


# --------------------------------------------------------------------------- module behaviour / errors


def test_serialization_drops_packed_weight():
    x, w, sw, b, sx, zx, *_ = _build_conv_case("3x3", seed=30)
    conv = PackedConv(w, sw, b, padding=1, input_scale=sx, input_zero_point=zx, output_scale=0.05, output_zero_point=3)
    y = conv(x)
    assert conv._packed is not None
    assert set(conv.state_dict()) == {"weight", "weight_scale", "weight_zero_point", "bias"}
    buf = io.BytesIO()
    torch.save(conv, buf)
    buf.seek(0)
    conv2 = torch.load(buf, weights_only=False)
    assert conv2._packed is None
    assert torch.equal(conv2(x), y)
    conv3 = copy.deepcopy(conv)
    assert torch.equal(conv3(x), y)
    # load_state_dict repacks
    conv4 = PackedConv(torch.zeros_like(w), sw, b, padding=1, input_scale=sx, input_zero_point=zx,
                       output_scale=0.05, output_zero_point=3)  # fmt: skip
    conv4(x)
    conv4.load_state_dict(conv.state_dict())
    assert torch.equal(conv4(x), y)

    lin = PackedLinear(_rand_w((8, 16), _gen(1)), 0.01, None, input_scale=0.1, input_zero_point=0, output_scale=0.1)
    xl = _rand_u8((3, 16), _gen(2))
    yl = lin(xl)
    assert torch.equal(copy.deepcopy(lin)(xl), yl)


def test_fx_graph_module_embedding():
    x, w, sw, b, sx, zx, *_ = _build_conv_case("1x1", seed=31)
    root = torch.nn.Module()
    root.conv = PackedConv(w, sw, b, input_scale=sx, input_zero_point=zx, output_dtype=torch.float32)
    graph = torch.fx.Graph()
    inp = graph.placeholder("x")
    q = graph.call_function(K.quantize, (inp, sx, zx), {"memory_format": torch.channels_last})
    out = graph.call_module("conv", (q,))
    graph.output(out)
    gm = torch.fx.GraphModule(root, graph)
    xf = K.dequantize(x, sx, zx)
    torch.testing.assert_close(gm(xf), root.conv(x))
    assert "PackedConv" in str(gm)


def test_errors():
    w = _rand_w((8, 8, 3, 3), _gen(0))
    with pytest.raises(ValueError, match="symmetric"):
        PackedConv(w, 0.01, None, input_scale=0.1, input_zero_point=0, weight_zero_point=torch.ones(8, dtype=torch.long))
    with pytest.raises(TypeError):
        PackedConv(w.to(torch.uint8), 0.01, None, input_scale=0.1, input_zero_point=0)
    with pytest.raises(ValueError):
        PackedConv(w, torch.ones(3), None, input_scale=0.1, input_zero_point=0)
    with pytest.raises(ValueError, match="unsupported"):
        PackedConv(w, 0.01, None, input_scale=0.1, input_zero_point=0, post_op="gelu")
    with pytest.raises(ValueError):
        PackedConv(w, 0.01, None, input_scale=0.1, input_zero_point=0, post_op="hardswish", residual=(0.1, 0))
    conv = PackedConv(w, 0.01, None, padding=1, input_scale=0.1, input_zero_point=0, output_scale=0.1)
    with pytest.raises(TypeError):
        conv(torch.zeros(1, 8, 5, 5, dtype=torch.int8))
    with pytest.raises(ValueError):
        conv(torch.zeros(1, 8, 5, 5, dtype=torch.uint8), torch.zeros(1, 8, 5, 5, dtype=torch.uint8))
    with pytest.raises(ValueError):
        PostOp.parse("mish")
    with pytest.raises(ValueError, match="unknown"):
        PackedLinear(_rand_w((4, 4), _gen(0)), 0.1, None, post_op="hardsigmoid")
