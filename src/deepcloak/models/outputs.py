"""What a model returns: the logits, picked out of a tuple or dict when needed, and checked.

deepcloak needs one ``(N, K)`` tensor of logits. A model that returns several outputs (a tuple
such as ``(logits, aux_logits)``, or a dict such as ``{"logits": ..., "features": ...}``,
TorchScript included) is wrapped in :class:`SelectOutput` with the index or key of its logits;
without one, every stage stops with an error that says which selector to pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from deepcloak.errors import DeepCloakError
from deepcloak.models.runtime import eval_mode

__all__ = ["OutputKey", "SelectOutput", "check_finite_logits", "correct", "select_logits"]

#: Which of a model's outputs holds the logits: an index into a tuple/list or a key of a dict.
OutputKey = int | str


def _describe(output: Any) -> str:
    """A short description of a model's output for error messages."""
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"a dict with keys {', '.join(repr(k) for k in output)}"
    if isinstance(output, Sequence) and not isinstance(output, str):
        return f"a {type(output).__name__} of {len(output)}"
    return f"a {type(output).__name__}"


def _suggest(output: Any) -> str:
    """The selector most likely to pick the logits, as ``output=... (--output ...)``."""
    if isinstance(output, Mapping):
        keys = list(output)
        key = "logits" if "logits" in keys else keys[0] if keys else "logits"
        return f"output={key!r} (--output {key})"
    return "output=0 (--output 0)"


def select_logits(output: Any, selector: OutputKey | None = None) -> torch.Tensor:
    """The logits among a model's ``output``.

    Args:
        output: what the model's forward returned.
        selector: index (tuple or list) or key (dict) of the logits; ``None`` when the model
            returns one tensor.

    Returns:
        The logits tensor.

    Raises:
        DeepCloakError: the output is not a tensor and no selector was given, the selector does
            not fit the output, or it picks something that is not a tensor.
    """
    if selector is None:
        if isinstance(output, torch.Tensor):
            return output
        raise DeepCloakError(
            f"the model returned {_describe(output)}, not one tensor of logits; pass "
            f"{_suggest(output)} to pick the logits"
        )
    if isinstance(output, torch.Tensor):
        raise DeepCloakError(
            f"output={selector!r} was given, but the model returned one tensor "
            f"(shape {tuple(output.shape)}); drop the output selector"
        )
    try:
        picked = output[selector]
    except (IndexError, KeyError, TypeError):
        raise DeepCloakError(
            f"output={selector!r} does not fit what the model returned ({_describe(output)}); "
            f"pass {_suggest(output)}"
        ) from None
    if not isinstance(picked, torch.Tensor):
        raise DeepCloakError(
            f"output={selector!r} picks {_describe(picked)}, not a tensor of logits"
        )
    return picked


class SelectOutput(nn.Module):
    """``model`` with its forward returning only the logits among its outputs.

    The wrapper shares the model's parameters, buffers and submodules (the same objects, under
    the same names) rather than holding the model as a child: layer names, ``state_dict`` keys
    and saved masks are the model's own (``"fc"``, not ``"model.fc"``), so a mask fit through
    the wrapper applies to the bare model too, and masking the wrapper masks the model. Its
    train/eval mode is the model's.

    Args:
        model: an eager classifier whose forward returns a tuple, list or dict.
        output: index or key of the logits.

    Raises:
        DeepCloakError: ``model`` is TorchScript; use
            :func:`deepcloak.cloak.torchscript.cloakable` with ``output=`` instead.

    Example:
        >>> model = SelectOutput(inception, 0)  # forward returns (logits, aux_logits)
        >>> cloak = deepcloak.fit(model, loader)
    """

    _wrapped: nn.Module

    def __init__(self, model: nn.Module, output: OutputKey) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise DeepCloakError(
                "SelectOutput takes an eager model; for TorchScript use "
                "deepcloak.cloak.torchscript.cloakable(model, example, output=...)"
            )
        if isinstance(output, bool) or not isinstance(output, (int, str)):
            raise DeepCloakError(f"output must be an index or a key, got {output!r}")
        # Set before Module.__init__, whose `self.training = True` goes to the model (below).
        object.__setattr__(self, "_wrapped", model)
        was_training = model.training
        super().__init__()
        model.training = was_training  # Module.__init__ must not change the caller's mode
        for attr in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"):
            object.__setattr__(self, attr, getattr(model, attr))
        self.output = output

    @property
    def training(self) -> bool:
        """The wrapped model's own mode (the wrapper has none of its own)."""
        return bool(self._wrapped.training)

    @training.setter
    def training(self, mode: bool) -> None:
        self._wrapped.training = mode

    @property
    def wrapped(self) -> nn.Module:
        """The model this wrapper selects the output of."""
        return self._wrapped

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return select_logits(self._wrapped(*args, **kwargs), self.output)

    def extra_repr(self) -> str:
        return f"output={self.output!r}, model={type(self._wrapped).__name__}"


def check_finite_logits(logits: torch.Tensor, what: str = "the model's logits") -> None:
    """Raise unless every logit is finite (a NaN or inf logit would silently score nothing).

    Raises:
        DeepCloakError: ``logits`` hold NaN or inf; the message counts the samples affected.
    """
    finite = torch.isfinite(logits)
    if bool(finite.all()):
        return
    bad = int((~finite).flatten(1).any(1).sum()) if logits.ndim > 1 else int((~finite).sum())
    raise DeepCloakError(
        f"{what} hold NaN or inf for {bad} of {logits.shape[0]} samples; expected finite "
        "logits. Check the model's weights (is it trained? did it overflow in float16?) and "
        "that its output is logits, not log-probabilities of a saturated softmax"
    )


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness of ``model`` on ``(x, y)``, computed in eval mode.

    Args:
        model: a classifier returning logits ``(N, K)``.
        x: inputs ``(N, ...)`` on the model's device.
        y: class indices ``(N,)`` on the same device.

    Returns:
        Boolean tensor ``(N,)``: ``argmax(logits) == y``.

    Raises:
        DeepCloakError: the model returns no single tensor, or NaN/inf logits.
    """
    with eval_mode(model):
        logits = select_logits(model(x))  # (N, K)
    check_finite_logits(logits)
    return logits.argmax(-1) == y
