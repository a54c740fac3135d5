"""The backend conformance kit run against ``x86`` and ``fbgemm``: every suite model and every pattern
of their BackendConfig, lowered to the oneDNN kernels, must agree with the reference IR.

Bounds above the kit's defaults are not needed: most cases are bit-exact
(SQNR inf), the others differ from the reference by float accumulation order
and by the residual-add fusion (the kernel skips the reference's intermediate
rounding of the conv output before the add).
"""

from __future__ import annotations

from quantfx.testing.conformance import BackendConformanceTests


class TestX86Conformance(BackendConformanceTests):
    backend = "x86"


class TestFbgemmConformance(BackendConformanceTests):
    """Same lowering and artifact code as x86; what differs is the 7-bit activation range, which
    exercises the output clamps (fused hardtanh, or an integer clamp after conv1d / conv3d / residual
    adds). All models; the op cases that take those paths, instead of all ~230 again."""

    backend = "fbgemm"
    ops = (
        "Conv1d+ReLU", "Conv1d+ReLU6", "Conv2d+BatchNorm2d+ReLU6", "Conv2d+Hardtanh", "Conv3d+ReLU", "Conv3d",
        "Linear+ReLU", "F.linear", "operator.add+ReLU", "torch.mul", "torch.cat", "Hardswish", "Sigmoid", "Tanh",
        "MaxPool1d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "F.interpolate", "ConstantPad2d", ".view",
        "LayerNorm", "EmbeddingBag",
    )
    save_load_models = ("residual_block",)
    mutation_models = ("residual_block",)
