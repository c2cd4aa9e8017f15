"""A small model zoo of the DeepCloak paper's four families: CNN, VGG, ResNet and Wide ResNet.

Every model takes float inputs in [0, 1] of shape ``(N, C, H, W)``; an optional per-channel
``mean``/``std`` normalisation is the model's first module, so callers never normalise. The layer
DeepCloak masks by default is the input of each model's last ``nn.Linear`` (``classifier[-1]``
for ``cnn`` and ``vgg``, ``fc`` for ``resnet`` and ``wrn``), always a 2-D ``(N, d)`` feature.

Each model records the arguments that built it, JSON-able, so that a checkpoint can rebuild it
with ``create_model(model.arch, **model.arch_config())``.

Example:
    >>> model = create_model("resnet", in_channels=1, num_classes=10, input_size=28, depth=8)
    >>> model(torch.rand(4, 1, 28, 28)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, cast

import torch
from torch import nn

from deepcloak.errors import DeepCloakError
from deepcloak.registry import Registry

__all__ = [
    "CNN", "MODELS", "VGG", "Normalize", "ResNet", "WideResNet", "ZooModel",
    "check_model_options", "create_model", "list_models",
]  # fmt: skip

MODELS: Registry[nn.Module] = Registry("model")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` (one value per channel, or one for all channels)."""

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor  # (1, C, 1, 1)

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # Buffers, not parameters: saved in the state_dict, never trained.
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        return (x - self.mean) / self.std


class ZooModel(nn.Module):
    """Base of the zoo models: ``forward_features``, then ``forward_head`` ending in a Linear.

    Mirrors timm's seam: ``forward_head(x, pre_logits=True)`` gives the vector fed to the final
    linear layer (the feature DeepCloak masks by default), ``get_classifier()`` that layer.
    Subclasses set ``pool``, either ``classifier`` (a Sequential ending in ``nn.Linear``) or
    ``fc``, and ``features`` or their own ``forward_features``.

    Every family takes ``in_channels``, ``num_classes`` and ``input_size`` (inputs are
    ``(N, in_channels, input_size, input_size)``), and optional per-channel ``mean`` and ``std``
    (one value, or one per channel) for normalisation inside the model.
    """

    arch: ClassVar[str]
    pool: nn.Module
    features: nn.Module  # CNN, VGG
    fc: nn.Linear  # ResNet, WRN

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__()
        config = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        # mean/std as lists of floats: tuples and tensors would not round-trip through JSON.
        for key in ("mean", "std"):
            if config.get(key) is not None:
                config[key] = [float(v) for v in config[key]]
        c, k, s = config["in_channels"], config["num_classes"], config["input_size"]
        if c < 1 or k < 2 or s < 1:
            raise DeepCloakError(
                "expected in_channels >= 1, num_classes >= 2 and input_size >= 1; "
                f"got in_channels={c}, num_classes={k}, input_size={s}"
            )
        mean, std = config.get("mean"), config.get("std")
        self._arch_config = config
        self.normalize: nn.Module = nn.Identity()
        if mean is not None and std is not None:
            if len(mean) != len(std) or len(mean) not in (1, c) or min(std) <= 0:
                raise DeepCloakError(
                    f"mean and std need 1 or in_channels={c} values each, std > 0; "
                    f"got mean={mean}, std={std}"
                )
            self.normalize = Normalize(mean, std)
        elif mean is not None or std is not None:
            raise DeepCloakError("give both mean and std for normalisation, or neither")

    def arch_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model with ``create_model(self.arch, ...)``."""
        return dict(self._arch_config)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, ``(N, C, h, w)``."""
        out: torch.Tensor = self.features(self.normalize(x))
        return out

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Logits from ``forward_features`` output, or the final linear layer's input."""
        x = self.pool(x).flatten(1)  # (N, d)
        classifier = getattr(self, "classifier", None)
        if classifier is None:
            return x if pre_logits else self.fc(x)
        # The whole Sequential is called for logits, so hooks on it fire as users expect.
        out: torch.Tensor = (
            classifier[:-1](x) if pre_logits else classifier(x)
        )  # (N, hidden) or (N, K)
        return out

    def get_classifier(self) -> nn.Linear:
        """The final ``nn.Linear`` (``classifier[-1]`` or ``fc``)."""
        classifier = getattr(self, "classifier", None)
        head = classifier[-1] if classifier is not None else self.fc
        return cast(nn.Linear, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, num_classes)
        return self.forward_head(self.forward_features(x))

    def _init_weights(self) -> None:
        # He initialisation for convolutions (He et al. 2015), as in the ResNet and WRN papers.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _conv_bn(c_in: int, c_out: int, *, stride: int = 1) -> list[nn.Module]:
    # bias=False: the batch norm that follows has its own shift. ReLUs are never in-place, so
    # that forward hooks (taps, masks) see the tensors they were given.
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def _plain_stages(
    c: int, size: int, widths: Sequence[int], convs: int
) -> tuple[nn.Sequential, int, int]:
    """Stages of ``convs`` conv-BN-ReLU layers, each then a 2x2 max-pool while the map is larger
    than 1x1 (so 8x8 inputs work at any depth). Returns the stages, channels and map side."""
    layers: list[nn.Module] = []
    for width in widths:
        for _ in range(convs):
            layers += _conv_bn(c, width)
            c = width
        if size > 1:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    return nn.Sequential(*layers), c, size


class CNN(ZooModel):
    """Small CNN: ``blocks`` x (conv-BN-ReLU, 2x2 max-pool), flatten, ``Linear-ReLU-Linear``.

    Takes the common arguments of :class:`ZooModel`, and:

    Args:
        width: channels of the first block; each later block doubles them.
        blocks: number of conv blocks; pooling stops once the map is 1x1.
        hidden: units of the hidden fully connected layer (the default masked feature).
    """

    arch = "cnn"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: int,
        width: int = 32,
        blocks: int = 2,
        hidden: int = 128,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(locals())
        if min(width, blocks, hidden) < 1:
            raise DeepCloakError(
                f"cnn needs width, blocks, hidden >= 1; got {width}, {blocks}, {hidden}"
            )
        widths = [width * 2**i for i in range(blocks)]
        self.features, c, size = _plain_stages(in_channels, input_size, widths, 1)
        self.pool = nn.Identity()
        self.classifier = nn.Sequential(
            nn.Linear(c * size * size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
        self._init_weights()


class VGG(ZooModel):
    """VGG-style network with batch norm (Simonyan & Zisserman 2015, arXiv 1409.1556).

    Stage ``i`` is ``convs_per_stage`` conv-BN-ReLU layers of ``min(width * 2**i, max_width)``
    channels, then a 2x2 max-pool while the map is larger than 1x1.

    Args:
        width: channels of the first stage.
        stages: number of stages (the depth).
        convs_per_stage: conv layers per stage.
        max_width: cap on the channel count.
        hidden: units of the classifier's hidden layer; ``0`` leaves a single ``nn.Linear``.
        pool: ``"avg"`` (global average pool) or ``"flatten"`` before the classifier.
        dropout: dropout before each classifier linear layer.
    """

    arch = "vgg"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: int,
        width: int = 16,
        stages: int = 3,
        convs_per_stage: int = 2,
        max_width: int = 512,
        hidden: int = 128,
        pool: str = "avg",
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(locals())
        if pool not in ("avg", "flatten"):
            raise DeepCloakError(f"vgg pool must be 'avg' or 'flatten'; got {pool!r}")
        if min(width, stages, convs_per_stage, max_width) < 1 or hidden < 0:
            raise DeepCloakError("vgg needs width, stages, convs_per_stage, max_width >= 1")
        widths = [min(width * 2**i, max_width) for i in range(stages)]
        self.features, c, size = _plain_stages(in_channels, input_size, widths, convs_per_stage)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.Identity()
        d = c if pool == "avg" else c * size * size
        head: list[nn.Module] = []
        if hidden > 0:
            head += [nn.Dropout(dropout), nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        self.classifier = nn.Sequential(*head, nn.Dropout(dropout), nn.Linear(d, num_classes))
        self._init_weights()


class BasicBlock(nn.Module):
    """Residual block of He et al. 2016: conv-BN-ReLU-conv-BN, add the shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            # Option B of the ResNet paper: a 1x1 projection where the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, c_out, H/s, W/s)
        h = self.relu(self.bn1(self.conv1(x)))
        out: torch.Tensor = self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))
        return out


def _residual_stages(
    block: Callable[..., nn.Module], c: int, widths: Sequence[int], n: int
) -> tuple[list[nn.Sequential], int]:
    """Three stages of ``n`` blocks with strides 1, 2, 2; returns them and the output width."""
    stages = []
    for width, stride in zip(widths, (1, 2, 2), strict=True):
        stages.append(
            nn.Sequential(
                *(
                    block(c if j == 0 else width, width, stride=stride if j == 0 else 1)
                    for j in range(n)
                )
            )
        )
        c = width
    return stages, c


class ResNet(ZooModel):
    """CIFAR-style ResNet (He et al. 2016, arXiv 1512.03385): 3 stages of basic blocks.

    ``depth = 6n + 2`` (8, 14, 20, ...); stage widths ``width, 2 width, 4 width`` with strides
    1, 2, 2; global average pooling, flatten, then ``self.fc``.

    Args:
        depth: ``6n + 2``.
        width: channels of the stem and first stage (16 in the paper).
        stem_stride: stride of the stem conv; 2 quarters the cost on 28x28 and larger inputs.
    """

    arch = "resnet"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: int,
        depth: int = 8,
        width: int = 16,
        stem_stride: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(locals())
        if depth < 8 or (depth - 2) % 6 != 0 or width < 1 or stem_stride not in (1, 2):
            raise DeepCloakError(
                "resnet needs depth = 6n + 2 >= 8 (8, 14, 20, ...), width >= 1 and stem_stride "
                f"1 or 2; got depth={depth}, width={width}, stem_stride={stem_stride}"
            )
        self.stem = nn.Sequential(*_conv_bn(in_channels, width, stride=stem_stride))
        widths = [width, 2 * width, 4 * width]
        stages, c = _residual_stages(BasicBlock, width, widths, (depth - 2) // 6)
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))  # (N, w, S, S)
        out: torch.Tensor = self.layer3(self.layer2(self.layer1(x)))  # (N, 4w, S/4, S/4)
        return out


class PreActBlock(nn.Module):
    """Wide-ResNet block (pre-activation): BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 + skip."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, c_out, H/s, W/s)
        o = self.relu(self.bn1(x))
        # As in the reference WRN code, a projection shortcut takes the pre-activated input.
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.dropout(self.relu(self.bn2(self.conv1(o))))
        out: torch.Tensor = self.conv2(o) + skip
        return out


class WideResNet(ZooModel):
    """Wide ResNet WRN-depth-k (Zagoruyko & Komodakis 2016, arXiv 1605.07146).

    ``depth = 6n + 4`` (10, 16, 22, 28, ...); stage widths ``16k, 32k, 64k`` (for ``width=16``),
    pre-activation blocks, a final BN-ReLU, global average pooling, flatten, then ``self.fc``.

    Args:
        depth: ``6n + 4``.
        widen_factor: ``k``.
        width: channels of the stem (16 in the paper); stage ``i`` has ``width * 2**i * k``.
        dropout: dropout between the two convs of a block.
    """

    arch = "wrn"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: int,
        depth: int = 10,
        widen_factor: int = 2,
        width: int = 16,
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(locals())
        if depth < 10 or (depth - 4) % 6 != 0 or widen_factor < 1 or width < 1:
            raise DeepCloakError(
                "wrn needs depth = 6n + 4 >= 10 (10, 16, 22, 28, ...), widen_factor >= 1 and "
                f"width >= 1; got depth={depth}, widen_factor={widen_factor}, width={width}"
            )
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        widths = [width * widen_factor * 2**i for i in range(3)]
        block = partial(PreActBlock, dropout=dropout)
        stages, c = _residual_stages(block, width, widths, (depth - 4) // 6)
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))  # (N, w, S, S)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 4wk, S/4, S/4)
        out: torch.Tensor = self.relu(self.bn(x))
        return out


for _cls in (CNN, VGG, ResNet, WideResNet):
    MODELS.register(_cls.arch)(_cls)


def create_model(
    name: str, *, in_channels: int, num_classes: int, input_size: int, **kwargs: Any
) -> nn.Module:
    """Build a zoo model by name.

    Args:
        name: one of :func:`list_models` (``cnn``, ``resnet``, ``vgg``, ``wrn``).
        in_channels: input channels (1 for grey, 3 for colour).
        num_classes: number of output logits.
        input_size: side of the square input (8 to 32 in the zoo's tests).
        **kwargs: family options (``width``, ``depth``, ``widen_factor``, ``mean``, ``std``, ...).

    Returns:
        The model, in training mode; ``model.arch_config()`` records all its arguments.

    Raises:
        DeepCloakError: unknown name (the message lists the known ones), or bad options.
    """
    check_model_options(
        name, in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs
    )
    return MODELS.get(name)(
        in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs
    )


def check_model_options(name: str, **options: Any) -> None:
    """Check a zoo model's option names and value types, without building it.

    Raises:
        DeepCloakError: an unknown model or option, or an option value of the wrong type.
    """
    factory = MODELS.get(name)
    # Check option names up front: a TypeError from inside a constructor would say less.
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            known = sorted(set(params) - {"in_channels", "num_classes", "input_size"})
            raise DeepCloakError(
                f"model {name!r} has no option {', '.join(unknown)}; "
                f"expected some of: {', '.join(known)}"
            )
    for key, value in options.items():
        if key in params:
            _check_option(name, key, value, params[key].annotation)


def _check_option(model: str, key: str, value: Any, annotation: Any) -> None:
    """Refuse an option whose value is not of its declared type (``hidden="abc"``).

    The zoo's constructors declare ``int``, ``float``, ``str`` or ``Sequence[float] | None``
    (as text, under ``from __future__ import annotations``); a value of another type would end
    in a ``TypeError`` from deep inside torch.
    """
    kind = str(annotation)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        ok, what = number and isinstance(value, int), "an integer"
    elif kind == "float":
        ok, what = number and math.isfinite(value), "a finite number"
    elif kind == "str":
        ok, what = isinstance(value, str), "text"
    elif kind.startswith("Sequence[float]"):
        items = value if isinstance(value, (list, tuple)) else None
        ok = value is None or (
            items is not None
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in items
            )
        )
        what = "a list of finite numbers"
    else:
        return  # a type the zoo does not use: its constructor checks it
    if not ok:
        raise DeepCloakError(f"model {model!r} option {key} must be {what}, got {value!r}")


def list_models() -> list[str]:
    """The names :func:`create_model` accepts, sorted."""
    return MODELS.names()
