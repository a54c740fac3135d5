"""``OnnxRuntimeModule``: an exported ONNX model run by ONNX Runtime, called like the torch model.

It takes and returns torch tensors, rebuilds tuple / dict outputs from the
model's metadata, and pickles / deep-copies as its ONNX bytes (the
``InferenceSession`` is rebuilt lazily), so it fits wherever a lowered
quantfx model goes: the conformance kit, ``Backend.save`` / ``load``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
from torch.utils import _pytree as pytree

from quantfx.onnx.export import OUT_SPEC_KEY

__all__ = ["OnnxRuntimeModule", "load_onnx"]


class OnnxRuntimeModule(torch.nn.Module):
    """Run an ONNX model with ONNX Runtime (CPU by default) from torch tensors.

    Args:
        model: an ``onnx.ModelProto``, its serialized bytes, or a path to an ``.onnx`` file.
        providers: ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
        session_options: an ``onnxruntime.SessionOptions`` (threads, optimization level ...);
            not kept by pickling / deep copies, which use ONNX Runtime's defaults.
    """

    def __init__(
        self,
        model: onnx.ModelProto | bytes | str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        session_options: Any = None,
    ) -> None:
        super().__init__()
        if isinstance(model, (str, os.PathLike)):
            model = onnx.load(os.fspath(model))
        self._bytes: bytes = model if isinstance(model, bytes) else model.SerializeToString()
        self.providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self.session_options = session_options
        self._session: Any = None
        proto = self.onnx_model
        meta = {p.key: p.value for p in proto.metadata_props}
        self.out_spec: str | None = meta.get(OUT_SPEC_KEY)  # serialized pytree spec of the outputs
        self._spec: Any = None
        initializers = {t.name for t in proto.graph.initializer}
        self.input_names = [i.name for i in proto.graph.input if i.name not in initializers]
        self.output_names = [o.name for o in proto.graph.output]

    # ------------------------------------------------------------------ model access

    @property
    def onnx_model(self) -> onnx.ModelProto:
        """The ONNX model (a fresh ``ModelProto`` parsed from the stored bytes)."""
        return onnx.load_from_string(self._bytes)

    @property
    def onnx_bytes(self) -> bytes:
        return self._bytes

    @property
    def session(self) -> Any:
        """The ``onnxruntime.InferenceSession``, created on first use."""
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self._bytes, sess_options=self.session_options, providers=self.providers)
        return self._session

    # ------------------------------------------------------------------ running

    def _feeds(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
        leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, (torch.Tensor, np.ndarray))]
        if len(leaves) != len(self.input_names):
            raise ValueError(
                f"OnnxRuntimeModule: the ONNX model takes {len(self.input_names)} tensor input(s) "
                f"{self.input_names}, got {len(leaves)}; pass the same positional inputs as the exported model's forward"
            )
        feeds = {}
        for name, x in zip(self.input_names, leaves):
            feeds[name] = x.detach().cpu().contiguous().numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)
        return feeds

    def run_numpy(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run with numpy inputs keyed by input name; flat list of numpy outputs."""
        return self.session.run(None, feeds)

    def _output_spec(self) -> Any:
        if self._spec is None and self.out_spec:
            try:
                self._spec = pytree.treespec_loads(self.out_spec)
            except Exception:  # noqa: BLE001 - an unreadable spec only loses output nesting
                self.out_spec = None
        return self._spec

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, self._feeds(args, kwargs))]
        spec = self._output_spec()
        if spec is not None and spec.num_leaves == len(outputs):
            return pytree.tree_unflatten(outputs, spec)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ONNX model to ``path`` (a plain ``.onnx`` file any runtime reads)."""
        with open(os.fspath(path), "wb") as f:
            f.write(self._bytes)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> OnnxRuntimeModule:
        """Read an ``.onnx`` file written by :meth:`save` or ``export_onnx``."""
        with open(os.fspath(path), "rb") as f:
            return cls(f.read(), **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # sessions do not pickle; rebuilt on first call
        state["_spec"] = None
        state["session_options"] = None  # onnxruntime.SessionOptions do not pickle either: defaults after a copy
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxRuntimeModule:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        import copy

        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__getstate__().items()})
        return new

    def extra_repr(self) -> str:
        return f"inputs={self.input_names}, outputs={self.output_names}, providers={self.providers}"


def load_onnx(path: str | os.PathLike[str], **kwargs: Any) -> OnnxRuntimeModule:
    """An ``OnnxRuntimeModule`` for an ``.onnx`` file (``providers=`` / ``session_options=`` pass through)."""
    return OnnxRuntimeModule.load(path, **kwargs)
