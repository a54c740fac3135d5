"""quantfx's main job: quantize a real model on the default backend and report what happened.

Trains a small CNN on scikit-learn's bundled handwritten digits (real data that
ships offline), quantizes it to int8 with ``quantfx.quantize`` on the default
installed backend, and prints accuracy, top-1 agreement and SQNR of int8
against fp32, the model size and latency of both.

    nox -s main                      # or: python examples/main.py [--backend NAME]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import torch
import torch.nn as nn
from sklearn.datasets import load_digits

import quantfx
from quantfx.testing.metrics import sqnr


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 8) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            loss.backward()
            opt.step()
    model.eval()


def model_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def latency_ms(model: nn.Module, x: torch.Tensor, repeats: int = 30) -> float:
    with torch.no_grad():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=None, help="installed backend (default: best for this machine)")
    args = parser.parse_args()
    torch.manual_seed(0)

    backend = args.backend or quantfx.default_backend()
    print("installed backends:")
    for info in quantfx.backends():
        status = "available" if info.available else f"unavailable ({info.reason})"
        print(f"  {info.name:<10} {status}")
    print(f"using backend: {backend}\n")

    x_train, y_train, x_test, y_test = load_data()
    model = DigitsNet()
    train(model, x_train, y_train)

    calibration = [x_train[i : i + 32] for i in range(0, 320, 32)]
    t0 = time.perf_counter()
    int8_model = quantfx.quantize(
        model, backend=backend, calibration_data=calibration, example_inputs=(x_train[:1],)
    )
    quantize_s = time.perf_counter() - t0

    with torch.no_grad():
        fp32_out = model(x_test)
        int8_out = int8_model(x_test)
    fp32_acc = (fp32_out.argmax(1) == y_test).float().mean().item()
    int8_acc = (int8_out.argmax(1) == y_test).float().mean().item()
    agree = (fp32_out.argmax(1) == int8_out.argmax(1)).float().mean().item()

    print(f"model: DigitsNet (3 conv-bn-relu, 2 linear) on {len(x_test)} held-out scikit-learn digits")
    print(f"prepare + calibrate + convert: {quantize_s:.2f} s")
    print(f"accuracy        fp32 {fp32_acc:.3f}   int8 {int8_acc:.3f}")
    print(f"top-1 agreement {agree:.3f}")
    print(f"SQNR int8 vs fp32: {sqnr(fp32_out, int8_out):.1f} dB")
    print(f"size            fp32 {model_bytes(model) / 1024:.1f} KiB   int8 {model_bytes(int8_model) / 1024:.1f} KiB")
    one = x_test[:1]
    print(f"latency (batch 1, {torch.get_num_threads()} threads) fp32 {latency_ms(model, one):.3f} ms   "
          f"int8 {latency_ms(int8_model, one):.3f} ms")


if __name__ == "__main__":
    main()
