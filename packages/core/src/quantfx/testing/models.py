"""Small real models covering what quantization backends must handle.

Each factory returns ``(model.eval(), example_inputs)``, built with a fixed seed
(without disturbing the global RNG), symbolically traceable with torch.fx.
BatchNorm layers get non-trivial running statistics so BN folding is really
tested. ``MODEL_SUITE`` maps a name to its factory; ``calibration_data``
produces varying batches shaped like a model's example inputs.
"""

import math
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODEL_SUITE",
    "ResNet18",
    "ShapeDependent",
    "ModelFactory",
    "calibration_data",
    "conv_bn_relu",
    "residual_block",
    "linear_relu_mlp",
    "depthwise_separable",
    "cat_pool_flatten",
    "transformer_block",
    "embedding_bag_linear",
    "conv1d_net",
    "conv_transpose_net",
    "nested_custom_modules",
    "shared_module",
    "activation_heads",
    "functional_ops",
]

ModelFactory = Callable[[], "tuple[nn.Module, tuple[Any, ...]]"]


def _init_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    """Give BN non-identity statistics and affine params, as a trained network has."""
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
        if bn.affine:
            bn.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            bn.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def _seeded(seed: int, build: Callable[[torch.Generator], tuple[nn.Module, tuple[Any, ...]]]) -> tuple[nn.Module, tuple[Any, ...]]:
    """Build under a fixed seed in a forked RNG; init every BN; return the model in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model, inputs = build(gen)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                _init_bn(m, gen)
    return model.eval(), inputs


def _image(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


# --------------------------------------------------------------------------- models


class ConvBnReLUStack(nn.Module):
    """Two conv-bn-relu stages, global pool, linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def conv_bn_relu() -> tuple[nn.Module, tuple[Any, ...]]:
    """Conv-BN-ReLU stack with a linear head (the most common CNN pattern)."""
    return _seeded(1, lambda g: (ConvBnReLUStack(), (_image(g, 2, 3, 16, 16),)))


class ResidualBlock(nn.Module):
    """ResNet basic block: conv-bn-relu, conv-bn, add the identity, relu after the add."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu_out(y + x)


def residual_block() -> tuple[nn.Module, tuple[Any, ...]]:
    """Residual block with add + relu."""
    return _seeded(2, lambda g: (ResidualBlock(), (_image(g, 2, 3, 12, 12),)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def linear_relu_mlp() -> tuple[nn.Module, tuple[Any, ...]]:
    """Linear-ReLU MLP."""
    return _seeded(3, lambda g: (MLP(), (torch.randn(4, 32, generator=g),)))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3-style block: expand 1x1, depthwise 3x3, project 1x1, residual add."""

    def __init__(self, c: int, expand: int, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = c * expand
        self.expand = nn.Conv2d(c, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act1 = act()
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = act()
        self.project = nn.Conv2d(hidden, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.expand(x)))
        y = self.act2(self.bn2(self.dw(y)))
        return x + self.bn3(self.project(y))


class DepthwiseSeparable(nn.Module):
    """Stem conv-bn-relu6, a ReLU6 block and a hardswish block, pooled classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu6 = nn.ReLU6()
        self.block1 = InvertedResidual(8, 2, nn.ReLU6)
        self.block2 = InvertedResidual(8, 3, nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu6(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.head(torch.flatten(self.pool(x), 1))


def depthwise_separable() -> tuple[nn.Module, tuple[Any, ...]]:
    """MobileNet-style depthwise-separable convs with ReLU6 and hardswish."""
    return _seeded(4, lambda g: (DepthwiseSeparable(), (_image(g, 2, 3, 16, 16),)))


class CatPool(nn.Module):
    """Two conv branches concatenated, then max pool, avg pool, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_a = nn.Conv2d(3, 4, 3, padding=1)
        self.branch_b = nn.Conv2d(3, 4, 1)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.avgpool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        y = self.avgpool(self.maxpool(self.relu(y)))
        return self.fc(torch.flatten(y, 1))


def cat_pool_flatten() -> tuple[nn.Module, tuple[Any, ...]]:
    """cat + maxpool + avgpool + flatten."""
    return _seeded(5, lambda g: (CatPool(), (_image(g, 2, 3, 16, 16),)))


class EncoderBlock(nn.Module):
    """Post-norm transformer encoder block written with Linear / matmul / softmax / LayerNorm."""

    def __init__(self, d: int = 32, heads: int = 4, ff: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = d // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ff)
        self.act = nn.ReLU()
        self.ff2 = nn.Linear(ff, d)
        self.norm2 = nn.LayerNorm(d)

    def _split(self, t: torch.Tensor, b: Any, s: Any) -> torch.Tensor:
        return t.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[0], x.shape[1]
        q = self._split(self.q(x), b, s)
        k = self._split(self.k(x), b, s)
        v = self._split(self.v(x), b, s)
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = F.softmax(attn, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        x = self.norm1(x + self.out(ctx))
        return self.norm2(x + self.ff2(self.act(self.ff1(x))))


def transformer_block() -> tuple[nn.Module, tuple[Any, ...]]:
    """Hand-written transformer encoder block (symbolically traceable)."""
    return _seeded(6, lambda g: (EncoderBlock(), (torch.randn(2, 8, 32, generator=g),)))


class EmbeddingBagLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(50, 16, mode="sum")
        self.fc = nn.Linear(16, 4)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(indices))


def embedding_bag_linear() -> tuple[nn.Module, tuple[Any, ...]]:
    """EmbeddingBag (2-D indices: one bag per row) followed by Linear."""
    return _seeded(7, lambda g: (EmbeddingBagLinear(), (torch.randint(0, 50, (4, 6), generator=g),)))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(8, 8, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def conv1d_net() -> tuple[nn.Module, tuple[Any, ...]]:
    """Conv1d-BN-ReLU, strided Conv1d, pooled linear head (audio / sequence models)."""
    return _seeded(8, lambda g: (Conv1dNet(), (torch.randn(2, 4, 32, generator=g),)))


class ConvTransposeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.relu_up = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.down(x))
        x = self.relu_up(self.bn(self.up(x)))
        return self.head(x)


def conv_transpose_net() -> tuple[nn.Module, tuple[Any, ...]]:
    """Encoder-decoder with ConvTranspose2d + BN (segmentation-style upsampling)."""
    return _seeded(9, lambda g: (ConvTransposeNet(), (_image(g, 2, 3, 16, 16),)))


class ConvBlock(nn.Module):
    """A user-defined block holding conv + bn + relu (BN folding must see through it)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.first = ConvBlock(cin, cout)
        self.second = ConvBlock(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class NestedCustom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage1 = Stage(3, 8)
        self.stage2 = nn.Sequential(ConvBlock(8, 8), nn.MaxPool2d(2))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(x))
        return self.head(x.mean(dim=(2, 3)))


def nested_custom_modules() -> tuple[nn.Module, tuple[Any, ...]]:
    """Convs and BNs inside custom submodules and a Sequential."""
    return _seeded(10, lambda g: (NestedCustom(), (_image(g, 2, 3, 12, 12),)))


class SharedModule(nn.Module):
    """The same conv and linear modules are called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        x = self.relu(self.conv(x))
        x = self.relu(self.conv(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        x = self.fc(self.fc(x))
        return self.out(x)


def shared_module() -> tuple[nn.Module, tuple[Any, ...]]:
    """One module called twice (conv, relu and linear reuse)."""
    return _seeded(11, lambda g: (SharedModule(), (_image(g, 2, 3, 10, 10),)))


class ActivationHeads(nn.Module):
    """A shared trunk with sigmoid, tanh and hardsigmoid heads: three outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.head_a = nn.Linear(32, 4)
        self.sigmoid = nn.Sigmoid()
        self.head_b = nn.Linear(32, 4)
        self.head_c = nn.Linear(32, 4)
        self.hardsigmoid = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.relu(self.trunk(x))
        return self.sigmoid(self.head_a(h)), torch.tanh(self.head_b(h)), self.hardsigmoid(self.head_c(h))


def activation_heads() -> tuple[nn.Module, tuple[Any, ...]]:
    """Sigmoid / tanh / hardsigmoid heads (fixed-qparams ops), tuple output."""
    return _seeded(12, lambda g: (ActivationHeads(), (torch.randn(4, 16, generator=g),)))


class FunctionalOps(nn.Module):
    """Ops called as functions rather than modules: F.relu, torch.add, torch.cat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv_a(x))
        b = self.conv_b(x)
        s = F.relu(torch.add(a, b))
        y = torch.cat([s, a], dim=1)
        return self.conv_out(y)


def functional_ops() -> tuple[nn.Module, tuple[Any, ...]]:
    """F.relu, torch.add and torch.cat between convs."""
    return _seeded(13, lambda g: (FunctionalOps(), (_image(g, 2, 3, 10, 10),)))


MODEL_SUITE: dict[str, ModelFactory] = {
    "conv_bn_relu": conv_bn_relu,
    "residual_block": residual_block,
    "linear_relu_mlp": linear_relu_mlp,
    "depthwise_separable": depthwise_separable,
    "cat_pool_flatten": cat_pool_flatten,
    "transformer_block": transformer_block,
    "embedding_bag_linear": embedding_bag_linear,
    "conv1d_net": conv1d_net,
    "conv_transpose_net": conv_transpose_net,
    "nested_custom_modules": nested_custom_modules,
    "shared_module": shared_module,
    "activation_heads": activation_heads,
    "functional_ops": functional_ops,
}


# --------------------------------------------------------------------------- calibration data


def _like(x: Any, gen: torch.Generator) -> Any:
    """A fresh value shaped like ``x``: floats with x's mean / spread, ints within x's range."""
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bool:
            return torch.rand(x.shape, generator=gen) < 0.5
        if x.is_floating_point():
            xf = x.detach().to(torch.float32)
            mean = xf.mean().item() if x.numel() else 0.0
            std = xf.std().item() if x.numel() > 1 else 1.0
            std = std if math.isfinite(std) and std > 0 else 1.0
            spread = 0.75 + 0.5 * torch.rand((), generator=gen).item()  # ranges vary batch to batch
            y = torch.randn(x.shape, generator=gen) * (std * spread) + mean
            return y.to(x.dtype)
        if x.numel() == 0:
            return x.clone()
        lo, hi = int(x.min()), int(x.max())
        return torch.randint(lo, hi + 1, x.shape, generator=gen, dtype=x.dtype)
    if isinstance(x, tuple):
        return tuple(_like(v, gen) for v in x)
    if isinstance(x, list):
        return [_like(v, gen) for v in x]
    if isinstance(x, dict):
        return {k: _like(v, gen) for k, v in x.items()}
    return x


def calibration_data(example_inputs: tuple[Any, ...], n: int = 8, seed: int = 0) -> Iterator[tuple[Any, ...]]:
    """Yield ``n`` input tuples shaped like ``example_inputs`` whose values and ranges vary.

    Float tensors follow the example's mean and spread (scaled by 0.75-1.25x per
    batch, so observers see ranges move); integer tensors (indices) are drawn
    within the example's [min, max]; non-tensors are passed through.
    Deterministic for a given ``seed``.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield tuple(_like(x, gen) for x in example_inputs)


# ResNet-18 for benchmarks (not in MODEL_SUITE: too slow for unit tests)


class ResNetBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu_out(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (BasicBlock x [2, 2, 2, 2]), without torchvision."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [ResNetBasicBlock(cin, cout, stride), ResNetBasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


class ShapeDependent(nn.Module):
    """Python control flow on a tensor shape: torch.fx.symbolic_trace fails, torch.export specializes it.

    The PT2E tests' model for "a model symbolic_trace cannot trace but torch.export can".
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        if y.shape[-1] % 2 == 0:
            y = F.max_pool2d(y, 2)
        y = y.flatten(2).mean(-1)
        pos = torch.arange(y.shape[-1], dtype=y.dtype) / y.shape[-1]
        return self.fc(y + pos)
