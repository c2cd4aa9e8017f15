"""Find the layer L to cloak and capture its features with forward hooks.

A :class:`LayerRef` names a module and a side: its *input* or its *output*. The default L is the
input of the model's classification layer (timm's ``get_classifier()``, else the ``nn.Linear``
that produces the logits, found on a batch: the last one to run whose output the logits depend
on), i.e. the pooled features the paper masks. An auxiliary head that runs after the main one
but does not reach the output is never chosen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from deepcloak.enums import parse_enum
from deepcloak.errors import LayerError
from deepcloak.models.outputs import select_logits
from deepcloak.models.runtime import eval_mode, model_inputs

__all__ = [
    "FeatureTap",
    "FirstForward",
    "LayerRef",
    "Side",
    "first_forward",
    "module_names",
    "parse_side",
    "reaches_logits",
    "resolve_layer",
    "tap",
]


class Side(str, Enum):
    """Which tensor of a module holds the features: what goes in, or what comes out."""

    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True)
class LayerRef:
    """The features of layer L: the ``side`` (input or output) of the module called ``name``."""

    name: str
    side: Side

    def __str__(self) -> str:
        return f"{self.side.value} of {self.name!r}"

    def to_json(self) -> dict[str, str]:
        """A JSON-able form, the inverse of :meth:`from_json`."""
        return {"name": self.name, "side": self.side.value}

    @classmethod
    def from_json(cls, obj: dict[str, str]) -> LayerRef:
        """Rebuild a reference saved by :meth:`to_json`."""
        return cls(obj["name"], Side(obj["side"]))


def module_names(model: nn.Module) -> list[str]:
    """Names of all submodules of ``model`` (the candidates for ``layer=``)."""
    return [name for name, _ in model.named_modules() if name]


def _candidates_hint(model: nn.Module, limit: int = 40) -> str:
    names = module_names(model)
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"candidates: {shown}{more}" if names else "the model has no submodules"


def _connected(
    model: nn.Module, example: torch.Tensor, hooks: dict[nn.Module, str]
) -> tuple[list[str], list[str]]:
    """Run ``model`` on ``example``: the names of the hooked modules in the order they ran, and
    of those whose output the logits depend on (autograd reaches it from the logits). When the
    logits are not differentiable (e.g. computed under ``no_grad``), every module that ran
    counts as connected: the dependence cannot be told."""
    seen: list[tuple[str, torch.Tensor]] = []

    def record(module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            seen.append((hooks[module], out))

    handles = [m.register_forward_hook(record) for m in hooks]
    try:
        # The input requires grad, so every tensor computed from it is in the autograd graph.
        x = model_inputs(model, example.detach()).clone().requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            logits = select_logits(model(x))
            ran = [name for name, _ in seen]
            if not logits.requires_grad:
                return ran, ran
            tracked = [(name, t) for name, t in seen if t.requires_grad]
            grads = (
                torch.autograd.grad(logits.sum(), [t for _, t in tracked], allow_unused=True)
                if tracked
                else ()
            )
    finally:
        for h in handles:
            h.remove()
    return ran, [name for (name, _), g in zip(tracked, grads, strict=True) if g is not None]


def reaches_logits(model: nn.Module, ref: LayerRef, example: torch.Tensor) -> bool:
    """Whether a mask at ``ref`` can change the model's logits (checked on ``example``).

    A mask on either side of a module changes only what that module outputs, so this asks
    whether the logits depend on the module's output. (The input of an auxiliary head is often
    the main head's input too, yet a mask in front of the auxiliary head changes nothing.)
    """
    ran, connected = _connected(model, example, {model.get_submodule(ref.name): ref.name})
    return bool(connected) or not ran  # a module that did not run: the tap will say so


def _logits_linear(model: nn.Module, example: torch.Tensor) -> str | None:
    """The last ``nn.Linear`` to run on ``example`` whose output the logits depend on."""
    hooks: dict[nn.Module, str] = {
        m: n for n, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    if not hooks:
        return None
    ran, producers = _connected(model, example, hooks)
    if not ran:
        return None  # none ran on the example: fall back to the last registered nn.Linear
    if not producers:
        raise LayerError(
            "no nn.Linear of this model produces its logits (none is connected to the output), "
            f"so the default layer cannot be found; name the layer to cloak (layer=... / "
            f"--layer ...); {_candidates_hint(model)}"
        )
    return producers[-1]


def resolve_layer(
    model: nn.Module,
    layer: str | None = None,
    side: Side | str | None = None,
    *,
    example: torch.Tensor | None = None,
) -> LayerRef:
    """Decide which features to cloak.

    Args:
        model: the classifier.
        layer: a module name from ``model.named_modules()``, or ``None`` for the default: the
            input of the classification layer (timm's ``get_classifier()`` when the model has
            it, else the ``nn.Linear`` that produces the logits on ``example`` if one is given,
            else the last registered ``nn.Linear``).
        side: ``"input"`` or ``"output"`` of that module. Default: ``"input"`` for an
            ``nn.Linear`` (the features it classifies), ``"output"`` for any other module.
        example: an input batch used to find the ``nn.Linear`` that produces the logits (run
            once, forward and backward, in eval mode).

    Returns:
        The resolved :class:`LayerRef`.

    Raises:
        LayerError: ``layer`` is not a module of ``model`` (the message lists the candidates), or
            no layer was named and no ``nn.Linear`` produces the logits.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise LayerError(
            "this is a TorchScript model: it runs compiled code, so its layers cannot be tapped "
            "or masked. Wrap it with "
            "deepcloak.cloak.torchscript.cloakable(model, example_batch) (the CLI does "
            "this), or load the eager model (package.module:factory plus a state_dict)"
        )
    side = parse_side(side)  # a bad side is one clear error, with or without a layer
    modules = dict(model.named_modules())
    if layer is None:
        name = _default_layer_name(model, modules, example)
        return LayerRef(name, side if side is not None else Side.INPUT)
    if layer not in modules or layer == "":
        raise LayerError(f"model has no layer named {layer!r}; {_candidates_hint(model)}")
    if side is None:
        side = Side.INPUT if isinstance(modules[layer], nn.Linear) else Side.OUTPUT
    return LayerRef(layer, side)


def parse_side(side: Side | str | None) -> Side | None:
    """``"input"`` or ``"output"`` as a :class:`Side` (``None`` stays ``None``: the default).

    Raises:
        LayerError: any other value.
    """
    return None if side is None else parse_enum(Side, side, what="side", error=LayerError)


def _default_layer_name(
    model: nn.Module, modules: dict[str, nn.Module], example: torch.Tensor | None
) -> str:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):  # timm's seam for the pre-logits features
        head = get_classifier()
        for head_name, m in modules.items():
            if m is head and head_name:
                return head_name
    name = _logits_linear(model, example) if example is not None else None
    if name is None:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        name = linears[-1] if linears else None
    if name is None:
        raise LayerError(
            "model has no nn.Linear classification layer, so the default layer cannot be found; "
            f"name the layer to cloak (layer=... / --layer ...); {_candidates_hint(model)}"
        )
    return name


class FeatureTap:
    """Captures the features at a :class:`LayerRef` on every forward pass (see :func:`tap`)."""

    def __init__(self) -> None:
        self.features: torch.Tensor | None = None

    def take(self) -> torch.Tensor:
        """The features of the last forward pass; raises if the layer did not run."""
        if self.features is None:
            raise LayerError("the tapped layer did not run in the forward pass")
        out, self.features = self.features, None
        return out


@contextlib.contextmanager
def tap(model: nn.Module, ref: LayerRef, *, detach: bool = True) -> Iterator[FeatureTap]:
    """Context manager that records the features at ``ref`` during forward passes.

    Example:
        >>> with tap(model, ref) as t:
        ...     model(x)
        ...     feats = t.take()  # (N, *feature_shape)
    """
    module = model.get_submodule(ref.name)
    recorder = FeatureTap()

    def keep(t: Any) -> None:
        if not isinstance(t, torch.Tensor):
            raise LayerError(f"the {ref} is not a single tensor (got {type(t).__name__})")
        recorder.features = t.detach() if detach else t

    if ref.side is Side.INPUT:
        handle = module.register_forward_pre_hook(lambda _m, args: keep(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: keep(out))
    try:
        yield recorder
    finally:
        handle.remove()


class FirstForward:
    """What the model's first forward pass saw and produced (see :func:`first_forward`)."""

    def __init__(self) -> None:
        self.inputs: torch.Tensor | None = None
        self.features: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.running = False

    def reuse_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The features and logits of the first pass if its input was exactly ``x``, else None.

        The model is deterministic in eval mode, so a pass on the same values gives the same
        features (up to the float rounding of a different batch composition).
        """
        seen, feats, logits = self.inputs, self.features, self.logits
        if seen is None or feats is None or logits is None:
            return None
        if seen.shape != x.shape or seen.dtype != x.dtype or seen.device != x.device:
            return None
        return (feats, logits) if torch.equal(seen, x) else None


@contextlib.contextmanager
def first_forward(model: nn.Module, ref: LayerRef) -> Iterator[FirstForward]:
    """Record the input, the features at ``ref`` and the logits of ``model``'s first forward pass.

    Used by the fit to take the clean features from the attack's own clean forward (FGSM's
    gradient pass, ART's label check) instead of running the model on the clean batch again.
    Later passes are ignored; everything kept is detached, so no autograd graph is held.

    Example:
        >>> with first_forward(model, ref) as first:
        ...     x_adv = attack(model, x, y)
        >>> first.reuse_for(x)  # (features, logits), or None if the first pass saw other inputs
    """
    module = model.get_submodule(ref.name)
    record = FirstForward()

    def before(_m: nn.Module, args: Any) -> None:
        if record.inputs is None and args and isinstance(args[0], torch.Tensor):
            record.inputs, record.running = args[0].detach(), True

    def after(_m: nn.Module, _args: Any, out: Any) -> None:
        if record.running:
            record.running = False
            # Anything but one tensor of logits: not reused; the fit's own pass says what is wrong.
            record.logits = out.detach() if isinstance(out, torch.Tensor) else None

    def keep(t: Any) -> None:
        if record.running and isinstance(t, torch.Tensor):
            record.features = t.detach()

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    if ref.side is Side.INPUT:
        handles.append(module.register_forward_pre_hook(lambda _m, args: keep(args[0])))
    else:
        handles.append(module.register_forward_hook(lambda _m, _args, out: keep(out)))
    try:
        yield record
    finally:
        for h in handles:
            h.remove()
