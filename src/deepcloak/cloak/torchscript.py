"""Cloak TorchScript classifiers: an eager view that exposes the features of their final layer.

TorchScript runs compiled code, so forward hooks never fire and submodules cannot be swapped:
the usual taps and mask insertion do not work. Its parameters can still be changed in place,
and that is enough when the model's output is its final linear layer's output (checked): with
that layer's weights replaced by rows of the identity and its bias by zeros, the model outputs
K of the d features that layer reads, exactly. ``ceil(d / K)`` passes give all of them, with
gradients. :class:`ScriptedClassifier` wraps the scripted model as ``fc(features(x))`` with an
eager ``fc``, so fitting, sweeps, white-box attacks and folding all work unchanged. The price:
each forward costs ``ceil(d / K)`` passes of the scripted model (7 for 64 features and 10
classes), so prefer the eager model where you have it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO

import torch
from torch import nn

from deepcloak.errors import LayerError

__all__ = ["ScriptedClassifier", "cloakable"]


class ScriptedClassifier(nn.Module):
    """An eager, cloakable view of a TorchScript classifier that ends in a linear layer.

    Build it with :func:`cloakable`. ``fc`` is an eager copy of the scripted final layer; the
    default layer L (the input of the last ``nn.Linear``) is therefore the scripted model's
    pre-logit features, and a mask there can be folded into ``fc`` as usual.
    """

    def __init__(self, scripted: torch.jit.ScriptModule, head_name: str) -> None:
        super().__init__()
        self.scripted = scripted
        self.head_name = head_name
        head = dict(scripted.named_modules())[head_name]
        out_features, in_features = head.weight.shape
        # Kept apart from fc, which a mask may wrap.
        self.n_classes, self.n_features = out_features, in_features
        self.fc = nn.Linear(in_features, out_features, device=head.weight.device)
        with torch.no_grad():
            self.fc.weight.copy_(head.weight)
            self.fc.bias.copy_(head.bias)

    def _head(self) -> nn.Module:
        return dict(self.scripted.named_modules())[self.head_name]

    @contextlib.contextmanager
    def _selecting(self, rows: torch.Tensor) -> Iterator[None]:
        """Temporarily make the scripted head output ``features[:, rows]``.

        New parameter objects are swapped in (never written in place), so the autograd graph of
        an earlier pass keeps the weights it saw.
        """
        head = self._head()
        weight, bias = head.weight, head.bias
        selector = torch.zeros_like(weight.detach())  # (K, d): row i picks feature rows[i]
        selector[torch.arange(rows.numel()), rows] = 1.0
        head.weight = nn.Parameter(selector, requires_grad=False)
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
                parts.append(self.scripted(x)[:, : rows.numel()])  # (N, len(rows))
        return torch.cat(parts, dim=1)  # (N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K)
        return self.fc(self.features(x))

    def save_scripted(self, path: str | os.PathLike[str] | IO[bytes]) -> None:
        """Save the scripted model with ``fc``'s weights (e.g. a folded mask) written into it."""
        if not isinstance(self.fc, nn.Linear):
            raise LayerError("fold the mask (apply(..., fold=True)) before saving TorchScript")
        head = self._head()
        with torch.no_grad():
            head.weight.copy_(self.fc.weight)
            head.bias.copy_(self.fc.bias)
        torch.jit.save(self.scripted, path if hasattr(path, "write") else os.fspath(path))


def cloakable(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` itself, or for a TorchScript model a :class:`ScriptedClassifier` view of it.

    Args:
        model: any classifier.
        example: a batch of inputs, used to check that the view reproduces the model's logits.

    Raises:
        LayerError: a TorchScript model whose output is not its final linear layer's output.
    """
    if not isinstance(model, torch.jit.ScriptModule):
        return model
    linears = [
        name
        for name, m in model.named_modules()
        if getattr(m, "original_name", None) == "Linear"
        and hasattr(m, "bias")
        and m.bias is not None
    ]
    with torch.no_grad():
        expected = model(example)
        for name in reversed(linears):
            view = ScriptedClassifier(model, name)
            got = view(example)
            if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                return view
    raise LayerError(
        "this TorchScript model cannot be cloaked: its output is not the output of a final "
        "nn.Linear with a bias, and compiled code cannot be tapped. Load the eager model "
        "instead (package.module:factory plus a state_dict)"
    )
