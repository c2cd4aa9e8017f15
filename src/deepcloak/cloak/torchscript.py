"""Cloak TorchScript classifiers: an eager view that exposes the features of their final layer.

TorchScript runs compiled code, so forward hooks never fire and submodules cannot be swapped:
the usual taps and mask insertion do not work. Its parameters can still be changed in place,
and that is enough when the model's output is its final linear layer's output (checked): with
that layer's weights replaced by rows of the identity and its bias by zeros, the model outputs
K of the d features that layer reads, exactly. ``ceil(d / K)`` passes give all of them, with
gradients. :class:`ScriptedClassifier` wraps the scripted model as ``head(features(x))`` with
an eager copy of the head under the head's own name, so fitting, sweeps, white-box attacks and
folding all work unchanged, and masks name the model's real layer. The price:
each forward costs ``ceil(d / K)`` passes of the scripted model (7 for 64 features and 10
classes), so prefer the eager model where you have it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO, Any

import torch
from torch import nn

from deepcloak.errors import LayerError
from deepcloak.models.outputs import OutputKey, SelectOutput, select_logits
from deepcloak.models.runtime import eval_mode

__all__ = ["ScriptedClassifier", "cloakable"]


def _scripted_linear(scripted: nn.Module, name: str) -> Any:
    """The scripted submodule ``name`` (typed ``Any``: its attributes are known at run time)."""
    return dict(scripted.named_modules())[name]


def _attach(parent: nn.Module, name: str, module: nn.Module) -> None:
    """Register ``module`` under the dotted ``name`` below ``parent``, creating empty
    containers for the intermediate names (``"classifier.2"``: ``classifier``, then ``2``)."""
    *path, last = name.split(".")
    for part in path:
        if part not in parent._modules:
            parent.add_module(part, nn.Module())
        parent = parent.get_submodule(part)
    parent.add_module(last, module)


class ScriptedClassifier(nn.Module):
    """An eager, cloakable view of a TorchScript classifier that ends in a linear layer.

    Build it with :func:`cloakable`. An eager copy of the scripted final layer sits under that
    layer's own name (e.g. ``classifier.2``), so the default layer L, reports and saved masks
    name the model's real layer and a mask fit here applies to the eager model too; a mask
    there can be folded as usual. The scripted model itself is held as ``scripted``.

    Args:
        scripted: the TorchScript model.
        head_name: name of its final ``nn.Linear`` (with or without a bias).
        output: index or key of the logits when the model returns a tuple or dict.
    """

    def __init__(
        self, scripted: torch.jit.ScriptModule, head_name: str, output: OutputKey | None = None
    ) -> None:
        super().__init__()
        if head_name.split(".")[0] in ("scripted", "head", "output", "head_name", "features"):
            raise LayerError(f"cannot view a TorchScript model whose head is named {head_name!r}")
        self.scripted = scripted
        self.head_name = head_name
        self.output = output
        head = _scripted_linear(scripted, head_name)
        weight: torch.Tensor = head.weight
        bias: torch.Tensor | None = head.bias
        # Kept apart from the eager head, which a mask may wrap.
        self.n_classes, self.n_features = weight.shape
        fc = nn.Linear(
            self.n_features, self.n_classes, bias=bias is not None,
            device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            fc.weight.copy_(weight)
            if bias is not None:
                fc.bias.copy_(bias)
        _attach(self, head_name, fc)

    @property
    def head(self) -> nn.Module:
        """The eager final layer (an ``nn.Linear``, or the mask layer wrapping it)."""
        return self.get_submodule(self.head_name)

    @contextlib.contextmanager
    def _selecting(self, rows: torch.Tensor) -> Iterator[None]:
        """Temporarily make the scripted head output ``features[:, rows]``.

        New parameter objects are swapped in (never written in place), so the autograd graph of
        an earlier pass keeps the weights it saw.
        """
        head = _scripted_linear(self.scripted, self.head_name)
        weight, bias = head.weight, head.bias
        selector = torch.zeros_like(weight.detach())  # (K, d): row i picks feature rows[i]
        selector[torch.arange(rows.numel()), rows] = 1.0
        head.weight = nn.Parameter(selector, requires_grad=False)
        if bias is not None:
            head.bias = nn.Parameter(torch.zeros_like(bias.detach()), requires_grad=False)
        try:
            yield
        finally:
            head.weight, head.bias = weight, bias

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the scripted final layer reads, ``(N, d)``, differentiable in ``x``."""
        k, d = self.n_classes, self.n_features
        parts = []
        for start in range(0, d, k):
            rows = torch.arange(start, min(start + k, d), device=x.device)
            with self._selecting(rows):
                out = select_logits(self.scripted(x), self.output)  # (N, K)
                parts.append(out[:, : rows.numel()])  # (N, len(rows))
        return torch.cat(parts, dim=1)  # (N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K)
        logits: torch.Tensor = self.head(self.features(x))
        return logits

    def save_scripted(self, path: str | os.PathLike[str] | IO[bytes]) -> None:
        """Save the scripted model with the head's weights (e.g. a folded mask) written into it."""
        eager = self.head
        if not isinstance(eager, nn.Linear):
            raise LayerError("fold the mask (apply(..., fold=True)) before saving TorchScript")
        head = _scripted_linear(self.scripted, self.head_name)
        with torch.no_grad():
            head.weight.copy_(eager.weight)
            if eager.bias is not None:
                head.bias.copy_(eager.bias)
        torch.jit.save(self.scripted, path if hasattr(path, "write") else os.fspath(path))


def _linear_heads(model: nn.Module, n_classes: int) -> list[str]:
    """Names of the scripted ``nn.Linear`` modules with ``n_classes`` outputs, in order."""
    return [
        name
        for name, m in model.named_modules()
        if getattr(m, "original_name", None) == "Linear"
        and isinstance(getattr(m, "weight", None), torch.Tensor)
        and m.weight.ndim == 2
        and m.weight.shape[0] == n_classes
    ]


def cloakable(
    model: nn.Module, example: torch.Tensor, *, output: OutputKey | None = None
) -> nn.Module:
    """A view of ``model`` that deepcloak can fit, mask and fold.

    An eager model comes back as it is (wrapped in :class:`SelectOutput` when ``output`` is
    given); a TorchScript model as a :class:`ScriptedClassifier`.

    Args:
        model: any classifier.
        example: a batch of inputs, used to check that the view reproduces the model's logits.
        output: index or key of the logits when the model returns a tuple or dict.

    Raises:
        LayerError: a TorchScript model whose logits are not the output of a final
            ``nn.Linear`` (something runs after it: a temperature, a softmax...).
        DeepCloakError: the model returns a tuple or dict and ``output`` does not pick a tensor.
    """
    if not isinstance(model, torch.jit.ScriptModule):
        return model if output is None else SelectOutput(model, output)
    with torch.no_grad(), eval_mode(model):
        expected = select_logits(model(example), output)  # (N, K)
        if expected.ndim != 2:
            raise LayerError(
                f"expected the TorchScript model to return logits (N, classes), got shape "
                f"{tuple(expected.shape)}"
            )
        heads = _linear_heads(model, expected.shape[1])
        for name in reversed(heads):
            view = ScriptedClassifier(model, name, output)
            got = view(example)
            if torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                return view
    found = f"its last one with {expected.shape[1]} outputs is {heads[-1]!r}" if heads else (
        f"it has no nn.Linear with {expected.shape[1]} outputs"
    )  # fmt: skip
    raise LayerError(
        "this TorchScript model cannot be cloaked: its logits are not the output of its final "
        f"nn.Linear ({found}); something may run after that layer (a temperature, a softmax, "
        "a bias added by hand), and compiled code cannot be tapped. Load the eager model "
        "instead (package.module:factory plus a state_dict), or script it without that step"
    )
