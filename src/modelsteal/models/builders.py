"""Small image classifiers. Inputs are raw ``[0, 1]`` images; normalisation lives inside the model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from modelsteal._registry import Registry

Builder = Callable[..., tuple[nn.Module, nn.Linear]]
_BUILDERS: Registry[Any] = Registry("architecture", package="modelsteal.models.builders")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``, stored as buffers so checkpoints carry the preprocessing."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            return (x - self.mean) / self.std
        return (x - self.mean.flatten()[0]) / self.std.flatten()[0]


class Classifier(nn.Module):
    """``features`` (to the penultimate representation ``h``) followed by one linear ``head``."""

    def __init__(
        self,
        features: nn.Module,
        head: nn.Linear,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.features = features
        self.head = head
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)

    def penultimate(self, x: Tensor) -> Tensor:
        return self.features(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.penultimate(x))


M = TypeVar("M")


@contextmanager
def seeded(seed: int | None, *, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with the global RNG (CPU, and ``device``'s CUDA generator when it is a GPU) seeded with
    ``seed`` and restored afterwards, so building a model never disturbs the caller's random stream.
    ``seed=None`` forks without seeding (the block draws from the current state, which is then restored)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.random.default_generator.manual_seed(int(seed))
            for index in cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(int(seed))
        yield


def build_seeded(factory: Callable[[], M], *, seed: int | None) -> M:
    """``factory()`` called under :func:`seeded`: the one seeded model builder (initialisation reproducible
    from ``seed``, global RNG untouched)."""
    with seeded(seed):
        return factory()


def _flat_dim(features: nn.Module, input_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).flatten(1).shape[1])


@_BUILDERS.register("lenet")
def lenet(input_shape: Sequence[int], num_classes: int) -> tuple[nn.Module, nn.Linear]:
    """LeNet as used by Orekondy et al. (ICLR 2020): conv(20,5)-pool-conv(50,5)-pool-fc500-fc(K).

    On inputs smaller than 28×28 (the 8×8 digits) the convolutions are zero-padded so the shape fits.
    """
    c, h = input_shape[0], input_shape[-1]
    pad = 0 if h >= 28 else 2
    feats = nn.Sequential(
        nn.Conv2d(c, 20, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    feats = nn.Sequential(*feats, nn.Linear(_flat_dim(feats, input_shape), 500), nn.ReLU())
    return feats, nn.Linear(500, num_classes)


@_BUILDERS.register("cnn")
def cnn(input_shape: Sequence[int], num_classes: int) -> tuple[nn.Module, nn.Linear]:
    """A small CNN: two 3×3 conv blocks (32, 64 channels) with max-pooling, then fc128."""
    c = input_shape[0]
    feats = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    feats = nn.Sequential(*feats, nn.Linear(_flat_dim(feats, input_shape), 128), nn.ReLU())
    return feats, nn.Linear(128, num_classes)


@_BUILDERS.register("mlp")
def mlp(
    input_shape: Sequence[int], num_classes: int, *, hidden: Sequence[int] = (256, 128)
) -> tuple[nn.Module, nn.Linear]:
    """A multilayer perceptron on the flattened input."""
    d = 1
    for s in input_shape:
        d *= int(s)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers), nn.Linear(d, num_classes)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@_BUILDERS.register("resnet18")
def resnet18(input_shape: Sequence[int], num_classes: int) -> tuple[nn.Module, nn.Linear]:
    """CIFAR-style ResNet-18 (He et al. 2016): 3×3 stem, no max-pool, [2, 2, 2, 2] basic blocks."""
    c = input_shape[0]
    layers: list[nn.Module] = [nn.Conv2d(c, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        for j in range(2):
            layers.append(_BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(512, num_classes)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@_BUILDERS.register("vgg16")
def vgg16(input_shape: Sequence[int], num_classes: int) -> tuple[nn.Module, nn.Linear]:
    """VGG16 with batch norm (Simonyan & Zisserman 2015, configuration D), CIFAR-style: thirteen 3×3 conv-BN-ReLU
    layers in five max-pooled stages, global average pooling, one linear head — the Prediction Poisoning
    paper's CIFAR-10 victim architecture (Orekondy et al., ICLR 2020, Sec. 5.1). Inputs of at least 32×32."""
    if min(input_shape[-2:]) < 32:
        raise ValueError(f"vgg16 pools five times and needs inputs of at least 32x32, got {tuple(input_shape)}")
    layers: list[nn.Module] = []
    cin = input_shape[0]
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
            cin = int(v)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), nn.Linear(512, num_classes)


ARCHITECTURES: dict[str, Builder] = _BUILDERS.as_dict()  # name -> (input_shape, num_classes) -> (features, head)


def architecture_key(arch: Any) -> str:
    """The registered name ``arch`` means (``resnet-18``, ``ResNet_18``: ``resnet18``); a ``ValueError`` naming
    the known architectures otherwise (the one check, used by :func:`build_model` and sweep validation)."""
    key = arch.strip().lower().replace("_", "").replace("-", "") if isinstance(arch, str) else None
    if key not in _BUILDERS.names():
        raise _BUILDERS.unknown(arch)
    return key


def build_model(
    arch: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int | None = None,
) -> Classifier:
    """Build ``arch`` (``lenet``, ``cnn``, ``mlp``, ``resnet18``, ``vgg16``) for ``input_shape`` and ``num_classes``.

    ``mean``/``std`` add a :class:`Normalize` front so the model takes raw ``[0, 1]`` inputs. ``seed``
    makes the initialisation reproducible without touching the global RNG.
    """
    key = architecture_key(arch)
    builder = _BUILDERS.get(key)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    input_shape = tuple(int(s) for s in input_shape)
    if key in ("lenet", "cnn", "resnet18") and len(input_shape) != 3:
        raise ValueError(f"{arch} needs image inputs (C, H, W); got input_shape={input_shape}")

    def make() -> Classifier:
        feats, head = builder(input_shape, num_classes)
        norm = Normalize(mean, std) if mean is not None and std is not None else None
        return Classifier(feats, head, input_shape=input_shape, num_classes=num_classes, normalize=norm)

    model = build_seeded(make, seed=seed)
    model.arch = key
    return model


def cpu_fast_layout(model: nn.Module) -> nn.Module:
    """``model`` in channels-last memory layout when it sits on the CPU and has 2-d convolutions (oneDNN runs
    them, forward and backward, markedly faster so); otherwise unchanged. Only the layout of the weights
    changes, not the function (outputs can differ in the last bit: use it for private copies such as MAD's
    surrogate or AM's misinformation model, not for a victim whose answers are committed results)."""
    if model_device(model).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model.to(memory_format=torch.channels_last)
    return model


def is_channels_last(model: nn.Module) -> bool:
    """Whether some 4-d weight of ``model`` is stored strictly channels-last (then inputs are best given that
    layout too); a weight with one input channel is both layouts at once and does not count."""
    return any(t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
               for t in model.parameters())


def model_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (or buffer) of ``model``; the CPU for a module with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (its output layer for the usual classifiers)."""
    if isinstance(model, Classifier):
        return model.head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer; last-layer gradients need one")
    return linears[-1]
