"""Save zoo models as safetensors checkpoints, and load users' models of several kinds.

A checkpoint is a safetensors file: the model's ``state_dict`` (buffers included) plus JSON
metadata naming the architecture and its arguments, so that loading rebuilds the model with
:func:`deepcloak.models.zoo.create_model` and never unpickles anything.

:func:`load_model` also accepts a TorchScript archive, a ``package.module:factory`` spec with a
weights file, and (only when asked to) a pickled full model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepcloak._version import __version__
from deepcloak.errors import DataFormatError, DeepCloakError
from deepcloak.io import METADATA_KEY, TensorSpec, load_tensors, read_header, save_tensors
from deepcloak.models.weights import (
    FACTORY_SPEC,
    check_fits,
    check_weights_given,
    load_factory,
    load_pickled_model,
    load_torchscript,
    sniff,
)
from deepcloak.models.zoo import MODELS, create_model
from deepcloak.validation import check_input_shape

__all__ = ["CHECKPOINT_FORMAT", "check_weights_given", "load_model", "save_checkpoint"]

log = logging.getLogger(__name__)

#: Value of the ``format`` metadata key that marks a deepcloak model checkpoint.
CHECKPOINT_FORMAT = "deepcloak.model"
#: The newest checkpoint layout this version reads (and the one it writes).
CHECKPOINT_VERSION = 1
# arch_kwargs that set how many layers a zoo model builds (each layer stores a tensor or more).
_LAYER_COUNTS = frozenset({"depth", "stages", "blocks", "convs_per_stage"})
_RESERVED = (
    "format",
    "format_version",
    "arch",
    "arch_kwargs",
    "deepcloak_version",
    "torch_version",
)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save ``model`` as a safetensors checkpoint that :func:`load_model` rebuilds by name.

    Args:
        path: file to write (atomically), conventionally ``*.safetensors``.
        model: the model; its full ``state_dict`` (parameters and buffers) is saved.
        arch: zoo name (:func:`deepcloak.models.zoo.list_models`); default ``model.arch``.
        arch_kwargs: arguments of ``create_model(arch, ...)``; default ``model.arch_config()``.
        metadata: anything else to record, JSON-able (data set, input shape, test accuracy,
            seed, ...). Must not use the keys ``format``, ``arch``, ``arch_kwargs``, ...

    Raises:
        DeepCloakError: no architecture known, metadata not JSON-able or using a reserved key,
            or the architecture rebuilt from ``arch`` and ``arch_kwargs`` does not match
            ``model``'s weights (so the checkpoint could not be loaded).
    """
    arch = arch if arch is not None else getattr(model, "arch", None)
    arch_config = getattr(model, "arch_config", None)
    if arch_kwargs is None and callable(arch_config):
        arch_kwargs = arch_config()
    if arch is None or arch_kwargs is None:
        raise DeepCloakError(
            f"cannot tell the architecture of a {type(model).__name__}; pass arch= and "
            "arch_kwargs= naming a deepcloak zoo model, or, for other models, save the state_dict "
            "and load it with a 'package.module:factory' spec"
        )
    if arch not in MODELS:
        raise DeepCloakError(f"unknown arch {arch!r}; expected one of: {', '.join(MODELS.names())}")
    meta = _checkpoint_metadata(arch, arch_kwargs, metadata)
    # clone(): safetensors refuses tensors that share storage (tied weights, views); zoo
    # models are small, so the copy costs little.
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # Build the architecture on the meta device (no memory, no init cost) and check that the
    # weights fit it now, rather than writing a checkpoint that cannot be loaded.
    with torch.device("meta"):
        skeleton = create_model(arch, **dict(arch_kwargs))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    check_fits(skeleton, shapes, source=f"model for arch {arch!r} with {dict(arch_kwargs)}")
    save_tensors(path, state, meta)


def _checkpoint_metadata(
    arch: str, arch_kwargs: Mapping[str, Any], metadata: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The checkpoint's metadata: the format's fields, then the caller's, checked JSON-able."""
    extra = dict(metadata or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise DeepCloakError(f"metadata keys {clash} are reserved for the checkpoint format")
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "deepcloak_version": __version__,
        "torch_version": torch.__version__,
        **extra,
    }
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise DeepCloakError(f"checkpoint metadata must be JSON-able: {e}") from None
    return meta


def load_model(
    spec: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    map_location: str | torch.device = "cpu",
    random_weights: bool = False,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model from a checkpoint, TorchScript file, factory, or (opt-in) pickle.

    ``spec`` is one of:

    * a deepcloak checkpoint (``.safetensors`` from :func:`save_checkpoint`): rebuilt with
      ``create_model`` and loaded strictly;
    * a TorchScript archive (``torch.jit.save``);
    * ``package.module:factory``: the factory is imported and called with no arguments; it must
      return an ``nn.Module``. ``weights`` is then a ``state_dict`` file (``torch.save``, loaded
      with ``weights_only=True``) or a safetensors file. Without ``weights`` the factory's own
      initialisation is random: refused unless ``random_weights`` (then seeded with ``seed``);
    * a pickled full model (``torch.save(model)``), only with ``allow_pickle=True``.

    Args:
        spec: file path or ``package.module:factory``.
        weights: weights for a factory spec; not used otherwise.
        allow_pickle: allow unpickling arbitrary objects, which can run code: trusted files only.
        map_location: device to load onto.
        random_weights: use a factory's initialisation when no ``weights`` are given (a random
            model: for trying things out, never for a result); it is seeded with ``seed`` and
            the metadata records ``random_weights_seed``.
        seed: seeds a factory's initialisation with ``random_weights``.

    Returns:
        ``(model, metadata)``: the model in eval mode, and what is known about it (``source``
        and, for checkpoints, the saved metadata: ``arch``, ``arch_kwargs``, data set, ...).

    Raises:
        DataFormatError: missing file, unknown format, corrupt file, or weights that do not fit
            the model (a few missing/unexpected keys are listed).
        DeepCloakError: a pickle without ``allow_pickle``; a factory that cannot be imported,
            called, or returns no ``nn.Module``, or comes without ``weights`` or ``random_weights``.

    Example:
        >>> model, meta = load_model("fmnist_resnet8.safetensors")
        >>> model, meta = load_model("mypkg.nets:build_net", weights="weights.pt")
    """
    spec_str = os.fspath(spec)
    path = Path(spec_str)
    factory_match = FACTORY_SPEC.match(spec_str) if not path.exists() else None
    check_weights_given(spec_str, weights, random_weights=random_weights)
    if factory_match is not None:
        model, meta = load_factory(
            spec_str, factory_match, weights, allow_pickle=allow_pickle, seed=seed
        )
        return model.to(map_location).eval(), meta
    if not path.is_file():
        hint = " (a factory spec looks like 'package.module:function')" if ":" in spec_str else ""
        raise DataFormatError(f"{path}: no such file{hint}")
    model, meta = _load_file(path, allow_pickle=allow_pickle, map_location=map_location)
    return model.to(map_location).eval(), {**meta, "path": str(path)}


def _load_file(
    path: Path, *, allow_pickle: bool, map_location: str | torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """A model file of the kind its bytes say (:func:`~deepcloak.models.weights.sniff`)."""
    kind = sniff(path)
    if kind == "safetensors":
        return _load_checkpoint(path)
    if kind == "torchscript":
        return load_torchscript(path, map_location), {"source": "torchscript"}
    if kind == "pickle":
        model = load_pickled_model(path, allow_pickle=allow_pickle, map_location=map_location)
        return model, {"source": "pickle"}
    raise DataFormatError(
        f"{path}: unknown model file format; expected a deepcloak checkpoint "
        "(.safetensors), a TorchScript archive, or a torch.save file"
    )


def _load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a zoo model from a checkpoint, checking the file before believing it.

    The header's metadata is checked field by field, the architecture is built on the meta
    device (no memory) and its parameter and buffer shapes compared with the tensors the file
    declares; only then is the model built for real and the tensors loaded. So a small file
    whose ``arch_kwargs`` ask for a huge model fails at no cost.
    """
    header = read_header(path)
    if header.metadata is None:
        raise DataFormatError(
            f"{path}: safetensors file has no {METADATA_KEY!r} metadata, so it holds only "
            "weights; load it with a 'package.module:factory' spec that builds the "
            f"architecture, and weights={str(path)!r}"
        )
    meta = header.metadata
    arch, kwargs = _checked_arch(meta, header.tensors, path)
    try:
        with torch.device("meta"):
            skeleton = create_model(arch, **kwargs)
    except Exception as e:  # DeepCloakError, or a constructor failing on odd values
        raise DataFormatError(
            f"{path}: cannot rebuild the model from 'arch' {arch!r} and 'arch_kwargs' {kwargs}: {e}"
        ) from None
    shapes = {name: spec.shape for name, spec in header.tensors.items()}
    check_fits(skeleton, shapes, source=f"model for arch {arch!r} with {kwargs} ({path})")
    del skeleton
    model = create_model(arch, **kwargs)  # the same shapes as the file's tensors: bounded
    state, _ = load_tensors(path)
    model.load_state_dict(state, strict=True)
    if meta.get("deepcloak_version") != __version__:
        log.info("%s was saved by deepcloak %s", path, meta.get("deepcloak_version"))
    return model, {"source": "checkpoint", **meta}


def _checked_arch(
    meta: Mapping[str, Any], tensors: Mapping[str, TensorSpec], path: Path
) -> tuple[str, dict[str, Any]]:
    """``(arch, arch_kwargs)`` from a checkpoint's metadata, each field checked.

    Counts that set how many layers a model has (``depth``, ``stages`` x ``convs_per_stage``,
    ...) may not exceed the number of tensors stored, since every layer stores at least one:
    otherwise even the meta-device build of a 6 KB file could take minutes.
    """
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise DataFormatError(
            f"{path}: a deepcloak file, but not a model checkpoint ('format' is "
            f"{meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    version = meta.get("format_version", 1)
    if type(version) is not int or version > CHECKPOINT_VERSION:
        raise DataFormatError(
            f"{path}: 'format_version' is {version!r}, expected an int <= {CHECKPOINT_VERSION}; "
            "the file was written by a newer deepcloak, upgrade to read it"
        )
    arch, kwargs = meta.get("arch"), meta.get("arch_kwargs")
    if not isinstance(arch, str) or arch not in MODELS:
        raise DataFormatError(
            f"{path}: 'arch' is {arch!r}, expected one of: {', '.join(MODELS.names())}"
        )
    if not isinstance(kwargs, dict):
        raise DataFormatError(
            f"{path}: 'arch_kwargs' is {kwargs!r}, expected an object of the model's options"
        )
    for key, value in kwargs.items():
        if not _plain_value(value):
            raise DataFormatError(
                f"{path}: 'arch_kwargs'.{key} is {value!r}, expected a number, string, bool, "
                "null or a short list of numbers"
            )
    if meta.get("input_shape") is not None:  # read by every command that checks the data
        try:
            check_input_shape(meta["input_shape"], "'input_shape'")
        except DeepCloakError as e:
            raise DataFormatError(f"{path}: {e}") from None
    counts = {k: v for k, v in kwargs.items() if k in _LAYER_COUNTS and type(v) is int}
    if math.prod(counts.values()) > len(tensors):
        raise DataFormatError(
            f"{path}: 'arch_kwargs' {counts} ask for more layers than the {len(tensors)} "
            "tensors the file stores; the file is corrupt or crafted"
        )
    return arch, dict(kwargs)


def _plain_value(value: Any) -> bool:
    """A JSON scalar, or a list of at most 64 numbers (such as normalisation means)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return (
        isinstance(value, list)
        and len(value) <= 64
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )
