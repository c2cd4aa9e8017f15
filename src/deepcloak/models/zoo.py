"""A small model zoo of the DeepCloak paper's four families: CNN, VGG, ResNet and Wide ResNet.

Every model takes float inputs in [0, 1] of shape ``(N, C, H, W)``; an optional per-channel
``mean``/``std`` normalisation is the model's first module, so callers never normalise. The layer
DeepCloak masks by default is the input of each model's last ``nn.Linear`` (``classifier[-1]``
for ``cnn`` and ``vgg``, ``fc`` for ``resnet`` and ``wrn``), always a 2-D ``(N, d)`` feature.

The families live in :mod:`deepcloak.models.plain` (CNN, VGG) and
:mod:`deepcloak.models.residual` (ResNet, WRN), their common base in
:mod:`deepcloak.models.base`; this module registers them by name. Each model records the
arguments that built it, JSON-able, so that a checkpoint can rebuild it with
``create_model(model.arch, **model.arch_config())``.

Example:
    >>> model = create_model("resnet", in_channels=1, num_classes=10, input_size=28, depth=8)
    >>> model(torch.rand(4, 1, 28, 28)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from torch import nn

from deepcloak.errors import DeepCloakError
from deepcloak.models.base import Normalize, ZooModel
from deepcloak.models.plain import CNN, VGG
from deepcloak.models.residual import ResNet, WideResNet
from deepcloak.registry import Registry

__all__ = [
    "CNN", "MODELS", "VGG", "Normalize", "ResNet", "WideResNet", "ZooModel",
    "check_model_options", "create_model", "list_models",
]  # fmt: skip

MODELS: Registry[nn.Module] = Registry("model")


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
