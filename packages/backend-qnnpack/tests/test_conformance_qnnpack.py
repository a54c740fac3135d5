"""The backend conformance kit against both qnnpack lowerings.

In process (torch's qnnpack kernels): every suite model and every pattern of
the BackendConfig. ExecuTorch (.pte + XNNPACK): a subset of models, since each
export + partition + serialize takes seconds.
"""

from __future__ import annotations

from typing import Any

import quantfx.api
from quantfx.testing.conformance import BackendConformanceTests


class TestQnnpackConformance(BackendConformanceTests):
    backend = "qnnpack"


class TestQnnpackExecutorchConformance(BackendConformanceTests):
    backend = "qnnpack"
    models = ("conv_bn_relu", "residual_block", "depthwise_separable", "activation_heads", "embedding_bag_linear")
    ops = ()  # per-pattern numerics are covered in process; the .pte route is checked on whole models
    save_load_models = ("conv_bn_relu",)
    pt2e_models = ()  # the PT2E front door is checked on the in-process route
    mutation_models = ("conv_bn_relu",)
    xfail = {
        "test_model_sqnr[embedding_bag_linear]": "ExecuTorch 1.5.1's Python runtime has no portable kernel for aten::_embedding_bag.out; "
        "the lowering raises a LoweringError naming the nodes outside XNNPACK",
    }

    def lower(self, reference: Any, example_inputs: tuple[Any, ...]) -> Any:
        return quantfx.api.lower(reference, self.backend, example_inputs, target="executorch", warn_unpartitioned=False)
