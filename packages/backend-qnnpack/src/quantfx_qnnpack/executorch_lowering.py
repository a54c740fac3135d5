"""Deployment lowering: reference IR -> Q/DQ -> torch.export -> XNNPACK delegate -> ExecuTorch ``.pte``.

    gm = to_qdq(reference)                                   # quantized_decomposed Q/DQ form
    ep = torch.export.export(gm, example_inputs)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    program = edge.to_executorch()                           # program.buffer is the .pte

Coverage is reported, not hidden: every op left outside the XNNPACK delegate
(it would run in ExecuTorch's portable kernels, in float or slow reference
int8) is listed in ``PteModule.partition_report`` with the reason XNNPACK's
partitioner logged for it, and a warning names those nodes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule
from torch.utils import _pytree as pytree

from quantfx.errors import LoweringError

from quantfx_qnnpack.qdq import to_qdq

__all__ = ["UnpartitionedNode", "PteModule", "PartitionWarning", "lower_to_executorch", "partition_report"]

_META_METHOD = "quantfx_output_spec"


class PartitionWarning(UserWarning):
    """Some nodes were not taken by the XNNPACK delegate and run in ExecuTorch's portable kernels."""


@dataclass(frozen=True)
class UnpartitionedNode:
    """One edge-program node outside the XNNPACK delegate."""

    name: str
    target: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.target}): {self.reason}"


class _WhyCollector(logging.Handler):
    """Collects executorch's ``WhyNoPartition`` debug records: node name -> first reason."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        node = getattr(msg, "node", None)
        reason = getattr(msg, "reason", None)
        if node is not None and reason:
            self.reasons.setdefault(str(getattr(node, "name", node)), str(reason))


@contextmanager
def _collect_why() -> Iterator[_WhyCollector]:
    handler = _WhyCollector()
    loggers = [logging.getLogger(n) for n in ("executorch.backends.xnnpack", "executorch.exir.backend")]
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False  # keep the partitioner's debug chatter off the user's root logger
    try:
        yield handler
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


_PLUMBING = {"getitem", "executorch_call_delegate"}


def partition_report(edge_graph_module: torch.fx.GraphModule, reasons: dict[str, str] | None = None) -> list[UnpartitionedNode]:
    """Every compute node of a lowered edge program that is outside a delegate, with why."""
    reasons = reasons or {}
    out = []
    for node in edge_graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        target = getattr(node.target, "__name__", str(node.target))
        if target.split(".")[0] in _PLUMBING or "executorch_call_delegate" in str(node.target):
            continue
        reason = reasons.get(node.name)
        if reason is None:
            name = str(node.target)
            if "quantize" in name:
                reason = "quantize / dequantize at the border of a float region (its neighbour was not delegated)"
            else:
                reason = "XNNPACK's partitioner has no config for this op (or it was rejected without a logged reason)"
        out.append(UnpartitionedNode(node.name, _op_name(node.target), reason))
    return out


def _op_name(target: Any) -> str:
    """``aten.mean.dim`` for an edge op (its str() carries the whole schema)."""
    op = getattr(target, "_op", None)
    name = getattr(op, "name", None)
    if callable(name):
        return str(name()).replace("::", ".")
    return str(getattr(target, "__name__", target))


class PteModule(torch.nn.Module):
    """An ExecuTorch program run through ``executorch.runtime``, called like the float model.

    Takes and returns torch tensors (outputs in the float model's structure).
    ``pte`` holds the program bytes (what ``save`` writes); ``partition_report``
    lists the nodes the XNNPACK delegate did not take (empty after ``load``
    unless it was saved alongside).
    """

    def __init__(self, pte: bytes, out_spec: pytree.TreeSpec | None = None, partition_report: list[UnpartitionedNode] | None = None) -> None:
        super().__init__()
        from executorch.runtime import Runtime

        self.pte = bytes(pte)
        self.out_spec = out_spec
        self.partition_report = list(partition_report or [])
        self._load()
        if self.out_spec is None and _META_METHOD in set(self._program.method_names):
            spec = self._program.load_method(_META_METHOD).execute([])[0]
            self.out_spec = pytree.treespec_loads(spec) if isinstance(spec, str) else None

    def forward(self, *args: Any) -> Any:
        flat = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in pytree.tree_leaves(args)]
        outputs = list(self._method.execute(flat))
        outputs = [o.clone() if isinstance(o, torch.Tensor) else o for o in outputs]  # runtime may reuse buffers
        if self.out_spec is not None:
            return pytree.tree_unflatten(outputs, self.out_spec)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_program", None)
        state.pop("_method", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load()

    def _load(self) -> None:
        from executorch.runtime import Runtime

        self._program = Runtime.get().load_program(self.pte)
        try:
            self._method = self._program.load_method("forward")
        except Exception as exc:
            outside = ", ".join(f"{r.name} ({r.target})" for r in self.partition_report) or "see the runtime log above"
            raise LoweringError(
                "qnnpack/executorch: the ExecuTorch runtime cannot load the program's forward method, usually "
                "because an op outside the XNNPACK delegate has no kernel in this ExecuTorch build. Nodes outside "
                f"XNNPACK: {outside}. Keep those ops out of the model or quantize them differently. ({exc})"
            ) from exc

    def extra_repr(self) -> str:
        return f"{len(self.pte)} bytes, {len(self.partition_report)} node(s) outside XNNPACK"


def lower_to_executorch(reference_model: GraphModule, example_inputs: tuple[Any, ...], *, warn_unpartitioned: bool = True) -> PteModule:
    """Reference IR -> ``PteModule`` over an ExecuTorch program with the XNNPACK delegate."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise LoweringError(
            f"qnnpack target='executorch' needs ExecuTorch: pip install executorch==1.5.1 'torchao==0.18.*' ({exc})"
        ) from exc
    if not example_inputs:
        raise LoweringError("qnnpack target='executorch' needs example_inputs to torch.export the model")
    gm, left_float = to_qdq(reference_model)
    try:
        ep = torch.export.export(gm, tuple(example_inputs), strict=False)
    except Exception as exc:
        raise LoweringError(f"qnnpack/executorch: torch.export of the Q/DQ model failed: {type(exc).__name__}: {exc}") from exc
    out_spec = ep.call_spec.out_spec
    with _collect_why() as why:
        edge = to_edge_transform_and_lower(
            ep,
            partitioner=[XnnpackPartitioner()],
            constant_methods={_META_METHOD: pytree.treespec_dumps(out_spec)} if out_spec is not None else None,
        )
    report = partition_report(edge.exported_program().graph_module, why.reasons)
    float_modules = {name: reason for name, reason in left_float}
    report = [UnpartitionedNode(r.name, r.target, float_modules.get(r.name, r.reason)) for r in report]
    try:
        program = edge.to_executorch()
    except Exception as exc:
        outside = "; ".join(f"{r.name} ({r.target}): {r.reason}" for r in report[:8]) or "none reported"
        dynamic = any("choose_qparams" in r.target for r in report)
        hint = (
            "Dynamic quantization (qparams chosen at run time) is not delegated to XNNPACK by this lowering: "
            "quantize those layers statically for the .pte route, or use target='inprocess'."
            if dynamic
            else "Keep those ops out of the model or quantize them differently."
        )
        raise LoweringError(
            f"qnnpack/executorch: ExecuTorch cannot build a program from the ops left outside XNNPACK "
            f"({type(exc).__name__}: {exc}). Nodes outside XNNPACK: {outside}. {hint}"
        ) from exc
    module = PteModule(program.buffer, out_spec, report)
    if report and warn_unpartitioned:
        names = ", ".join(r.name for r in report[:12]) + (f", ... ({len(report)} in all)" if len(report) > 12 else "")
        warnings.warn(
            f"qnnpack/executorch: {len(report)} node(s) are not delegated to XNNPACK and run in ExecuTorch's portable "
            f"kernels: {names}. See the lowered module's partition_report for the reasons.",
            PartitionWarning,
            stacklevel=3,
        )
    return module
