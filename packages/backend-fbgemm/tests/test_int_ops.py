"""The integer-domain helpers of lowered graphs: bit-exact with the reference arithmetic they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfx.ops  # noqa: F401  (registers torch.ops.quantfx)

from quantfx_fbgemm import int_ops


@pytest.mark.parametrize("shape", [(1, 3, 17, 19), (2, 5, 8, 8), (3, 40000), (7,)])
@pytest.mark.parametrize("qp", [(0.031, 128, 0, 255), (0.02, 3, 0, 127), (0.5, 0, 0, 255)])
def test_quantize_in_matches_quantfx_quantize_per_tensor(shape, qp):
    # large enough to take the int32 cast route (> 16k values) and small enough not to; odd zero points
    torch.manual_seed(0)
    scale, zp, lo, hi = qp
    x = torch.randn(*shape) * 4
    x.view(-1)[:5] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5]) * scale  # rounding ties
    ref = torch.ops.quantfx.quantize_per_tensor(x, scale, zp, lo, hi, torch.uint8)
    got = int_ops.quantize_in(x, scale, zp, lo, hi, torch.uint8)
    assert torch.equal(got, ref)
    if x.dim() == 4:
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((3, 2, 1, 1, False), {}),  # nn.MaxPool2d(3, 2, 1) as the lowering passes it
        ((2,), {}),  # F.max_pool2d(x, 2): stride defaults to the kernel size
        ((3,), {"stride": 2, "padding": 1, "ceil_mode": True}),
        (((2, 3), (1, 2), (1, 1), (2, 1), False), {}),
    ],
)
@pytest.mark.parametrize("channels_last", [True, False])
def test_max_int_matches_float_max_pool(args, kwargs, channels_last):
    torch.manual_seed(0)
    q = torch.randint(0, 256, (2, 6, 13, 11), dtype=torch.uint8)
    if channels_last:
        q = q.contiguous(memory_format=torch.channels_last)
    ref = F.max_pool2d(q.float(), *args, **kwargs).to(torch.uint8)
    got = int_ops.max_int(q, "max_pool2d", args, kwargs)
    assert got.dtype == torch.uint8
    assert torch.equal(got, ref)


def test_max_int_other_ranks_use_the_float_route():
    q = torch.randint(0, 256, (2, 6, 13), dtype=torch.uint8)
    assert torch.equal(int_ops.max_int(q, "max_pool1d", (3, 2), {}), F.max_pool1d(q.float(), 3, 2).to(torch.uint8))


@pytest.mark.parametrize("qrange", [(0, 255), (0, 127)])
@pytest.mark.parametrize("shift", [0.0, 3.0, -3.0])  # mixed signs, all positive, all negative
def test_dynamic_quantize_matches_the_reference_chain(qrange, shift):
    """choose_qparams_per_tensor -> quantize_per_tensor_tensor, the reference IR's dynamic chain."""
    torch.manual_seed(0)
    lo, hi = qrange
    eps = float(torch.finfo(torch.float32).eps)
    for _ in range(20):
        x = torch.randn(4, 33, 50) * float(torch.rand(()) * 10) + shift
        scale_t, zp_t = torch.ops.quantfx.choose_qparams_per_tensor(x, lo, hi, eps, torch.uint8)
        ref = torch.ops.quantfx.quantize_per_tensor_tensor(x, scale_t, zp_t, lo, hi, torch.uint8)
        q, scale, zp = int_ops.dynamic_quantize(x, lo, hi, eps)
        assert scale == float(scale_t) and zp == int(zp_t)
        assert torch.equal(q, ref)


def test_quantize_handles_huge_values_and_ties():
    s, zp = 0.1, 7  # odd zero point: round(v) + zp differs from round(v + zp) on ties
    x = torch.tensor([1e30, -1e30, 0.05, 0.15, 0.25, -0.25, 12.75, float("inf"), -float("inf")])
    ref = torch.ops.quantfx.quantize_per_tensor(x, s, zp, 0, 255, torch.uint8)
    assert torch.equal(int_ops.quantize_in(x, s, zp, 0, 255, torch.uint8), ref)
