"""TensorRT engines: build one from the exported ONNX model, run it like the torch model.

Networks are built *strongly typed* (TensorRT 11 only has that mode; 10.x
has it behind a flag): precision comes from the ONNX graph itself, so the
int8 layers are exactly those between QuantizeLinear / DequantizeLinear and
the rest runs in the ONNX model's float type. An fp16 engine is built from
an fp16 ONNX model (see ``bench/bench_tensorrt.py``), not from a builder flag.

Device memory and streams go through NVIDIA's ``cuda-python`` bindings, so a
CPU build of torch is enough on the GPU machine. Nothing here runs without
the ``engine`` extra and an NVIDIA GPU; the errors say which is missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch
from torch.utils import _pytree as pytree

from quantfx.errors import BackendUnavailableError, LoweringError
from quantfx.onnx.export import OUT_SPEC_KEY
from quantfx_tensorrt.devices import ENGINE_EXTRA_HINT, probe_gpus

__all__ = ["build_engine", "TensorRTModule", "ShapeRange", "save_engine"]

ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""(min, opt, max) shape of one dynamic input, for the optimization profile."""


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"building or running a TensorRT engine needs the 'tensorrt' Python package ({ENGINE_EXTRA_HINT}); "
            f"import failed: {exc}"
        ) from exc
    return trt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise BackendUnavailableError(
                f"running a TensorRT engine needs NVIDIA's 'cuda-python' bindings ({ENGINE_EXTRA_HINT}); "
                f"import failed: {exc}"
            ) from exc
    return cudart


def _check_cuda(result: Any, what: str) -> Any:
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError(f"CUDA call {what} failed: {err}")
    if isinstance(result, tuple) and len(result) == 2:
        return result[1]
    return None


def _require_gpu() -> None:
    probe = probe_gpus()
    if not probe.found:
        raise BackendUnavailableError(f"TensorRT engines need an NVIDIA GPU: no NVIDIA GPU found ({probe.reason})")


def _trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def build_engine(
    onnx_model: onnx.ModelProto | bytes,
    *,
    shapes: Mapping[str, ShapeRange] | None = None,
    workspace_bytes: int | None = None,
    optimization_level: int | None = None,
) -> bytes:
    """Build a serialized TensorRT engine (a plan) from an ONNX model with Q/DQ nodes.

    Args:
        onnx_model: from :func:`quantfx_tensorrt.export_onnx` (or any ONNX model).
        shapes: (min, opt, max) shapes of inputs with dynamic dimensions
            (``export_onnx(..., dynamic_batch=True)``); static inputs need none.
        workspace_bytes: TensorRT workspace memory pool limit.
        optimization_level: builder optimization level (0-5; TensorRT's default 3).
    """
    trt = _tensorrt()
    _require_gpu()
    data = onnx_model if isinstance(onnx_model, bytes) else onnx_model.SerializeToString()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    strongly_typed = hasattr(creation, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(creation.STRONGLY_TYPED)
    if _trt_major(trt) < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "\n".join(f"  - {parser.get_error(i)}" for i in range(parser.num_errors))
        raise LoweringError(f"TensorRT's ONNX parser rejected the model:\n{errors}")
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    if not strongly_typed and hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)  # TensorRT 8.x: Q/DQ layers need the int8 flag
    shapes = dict(shapes or {})
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if all(d >= 0 for d in tensor.shape):
            continue
        if tensor.name not in shapes:
            raise LoweringError(
                f"TensorRT engine build: input '{tensor.name}' has dynamic shape {tuple(tensor.shape)}; pass "
                f"shapes={{'{tensor.name}': (min_shape, opt_shape, max_shape)}}, or export with dynamic_batch=False"
            )
        profile = profile or builder.create_optimization_profile()
        lo, opt, hi = shapes[tensor.name]
        profile.set_shape(tensor.name, tuple(lo), tuple(opt), tuple(hi))
    if profile is not None:
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LoweringError(
            "TensorRT could not build an engine from the ONNX model (see TensorRT's log above); check the "
            "model with `polygraphy inspect model` or `trtexec --onnx=model.onnx --verbose`"
        )
    return bytes(serialized)


class TensorRTModule(torch.nn.Module):
    """A serialized TensorRT engine, called with torch tensors like the model it came from.

    The engine is deserialized on the first call (so the module pickles,
    deep-copies and saves as its plan bytes). Inputs are copied to the GPU and
    outputs back to CPU tensors; :meth:`benchmark` times the engine alone.
    """

    def __init__(self, engine_bytes: bytes, *, onnx_bytes: bytes | None = None, out_spec: str | None = None) -> None:
        super().__init__()
        self.engine_bytes = bytes(engine_bytes)
        self.onnx_bytes = onnx_bytes
        if out_spec is None and onnx_bytes is not None:
            meta = {p.key: p.value for p in onnx.load_from_string(onnx_bytes).metadata_props}
            out_spec = meta.get(OUT_SPEC_KEY)
        self.out_spec = out_spec
        self._rt: dict[str, Any] | None = None

    # ------------------------------------------------------------------ runtime state

    def _runtime(self) -> dict[str, Any]:
        if self._rt is not None:
            return self._rt
        trt = _tensorrt()
        _require_gpu()
        cudart = _cudart()
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.engine_bytes)
        if engine is None:
            raise LoweringError("TensorRT could not deserialize the engine (built by another TensorRT version or GPU?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        stream = _check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._rt = {
            "trt": trt, "cudart": cudart, "runtime": runtime, "engine": engine,
            "context": engine.create_execution_context(), "inputs": inputs, "outputs": outputs,
            "stream": stream, "buffers": {},
        }
        return self._rt

    def _device_buffer(self, rt: dict[str, Any], name: str, nbytes: int) -> int:
        ptr, size = rt["buffers"].get(name, (None, 0))
        if ptr is None or size < nbytes:
            if ptr is not None:
                _check_cuda(rt["cudart"].cudaFree(ptr), "cudaFree")
            ptr = _check_cuda(rt["cudart"].cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            rt["buffers"][name] = (ptr, max(nbytes, 1))
        return int(ptr)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[np.ndarray]]:
        rt = self._runtime()
        trt, cudart, context, engine = rt["trt"], rt["cudart"], rt["context"], rt["engine"]
        leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, (torch.Tensor, np.ndarray))]
        if len(leaves) != len(rt["inputs"]):
            raise ValueError(
                f"TensorRTModule: the engine takes {len(rt['inputs'])} input(s) {rt['inputs']}, got {len(leaves)} tensors"
            )
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, x in zip(rt["inputs"], leaves):
            arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            arr = np.ascontiguousarray(arr.astype(trt.nptype(engine.get_tensor_dtype(name)), copy=False))
            if not context.set_input_shape(name, tuple(arr.shape)):
                raise ValueError(f"TensorRTModule: input '{name}' of shape {tuple(arr.shape)} is outside the engine's profile")
            ptr = self._device_buffer(rt, name, arr.nbytes)
            _check_cuda(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, rt["stream"]), "cudaMemcpyAsync")
            context.set_tensor_address(name, ptr)
            rt.setdefault("keepalive", {})[name] = arr  # host buffer must live until the copy completes
        hosts = []
        for name in rt["outputs"]:
            shape = tuple(context.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            context.set_tensor_address(name, self._device_buffer(rt, name, host.nbytes))
            hosts.append(host)
        return rt, hosts

    def _execute(self, rt: dict[str, Any]) -> None:
        if not rt["context"].execute_async_v3(int(rt["stream"])):
            raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT's log)")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        rt, hosts = self._bind(args, kwargs)
        cudart = rt["cudart"]
        self._execute(rt)
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, host in zip(rt["outputs"], hosts):
            ptr, _ = rt["buffers"][name]
            _check_cuda(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, rt["stream"]), "cudaMemcpyAsync")
        _check_cuda(cudart.cudaStreamSynchronize(rt["stream"]), "cudaStreamSynchronize")
        outputs = [torch.from_numpy(h) for h in hosts]
        if self.out_spec:
            spec = pytree.treespec_loads(self.out_spec)
            if spec.num_leaves == len(outputs):
                return pytree.tree_unflatten(outputs, spec)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def benchmark(self, *args: Any, iters: int = 100, warmup: int = 10) -> float:
        """Milliseconds per engine run on the GPU (inputs already on the device, no copies)."""
        rt, _ = self._bind(args, {})
        cudart = rt["cudart"]
        for _ in range(warmup):
            self._execute(rt)
        _check_cuda(cudart.cudaStreamSynchronize(rt["stream"]), "cudaStreamSynchronize")
        start = time.perf_counter()
        for _ in range(iters):
            self._execute(rt)
        _check_cuda(cudart.cudaStreamSynchronize(rt["stream"]), "cudaStreamSynchronize")
        return (time.perf_counter() - start) * 1000.0 / iters

    # ------------------------------------------------------------------ persistence

    def metadata(self) -> dict[str, Any]:
        """What :func:`quantfx_tensorrt.artifact.save` writes next to the plan."""
        return {"format": "tensorrt-engine", "out_spec": self.out_spec}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rt"] = None
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> TensorRTModule:
        new = TensorRTModule(self.engine_bytes, onnx_bytes=self.onnx_bytes, out_spec=self.out_spec)
        memo[id(self)] = new
        return new

    def __del__(self) -> None:
        rt = getattr(self, "_rt", None)
        if not rt:
            return
        try:
            for ptr, _ in rt["buffers"].values():
                rt["cudart"].cudaFree(ptr)
            rt["cudart"].cudaStreamDestroy(rt["stream"])
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def extra_repr(self) -> str:
        return f"engine={len(self.engine_bytes)} bytes"


def save_engine(module: TensorRTModule, path: str | os.PathLike[str]) -> None:
    """Write the plan to ``path``, the ONNX model to ``path.onnx`` and the metadata to ``path.json``."""
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(module.engine_bytes)
    meta = module.metadata()
    if module.onnx_bytes is not None:
        with open(path + ".onnx", "wb") as f:
            f.write(module.onnx_bytes)
        meta["onnx"] = os.path.basename(path) + ".onnx"
    with open(path + ".json", "w") as f:
        json.dump(meta, f)
