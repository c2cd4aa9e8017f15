"""Save zoo models as safetensors checkpoints, and load users' models of several kinds.

A checkpoint is a safetensors file: the model's ``state_dict`` (buffers included) plus JSON
metadata naming the architecture and its arguments, so that loading rebuilds the model with
:func:`deepcloak.models.zoo.create_model` and never unpickles anything.

:func:`load_model` also accepts a TorchScript archive, a ``package.module:factory`` spec with a
weights file, and (only when asked to) a pickled full model.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import load_file as st_load_file
from torch import nn

from deepcloak._version import __version__
from deepcloak.errors import DataFormatError, DeepCloakError
from deepcloak.io import METADATA_KEY, TensorSpec, load_tensors, read_header, save_tensors
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
_FACTORY_SPEC = re.compile(
    r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_][\w.]*)$"
)
_PICKLE_HELP = (
    "a pickle can run arbitrary code when loaded, so deepcloak refuses it by default. If you "
    "trust its source, pass allow_pickle=True (CLI: --allow-pickle); better, save its "
    "state_dict (torch.save(model.state_dict(), 'weights.pt')) and load it with a "
    "'package.module:factory' spec and weights='weights.pt'"
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
    # clone(): safetensors refuses tensors that share storage (tied weights, views); zoo
    # models are small, so the copy costs little.
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # Build the architecture on the meta device (no memory, no init cost) and check that the
    # weights fit it now, rather than writing a checkpoint that cannot be loaded.
    with torch.device("meta"):
        skeleton = create_model(arch, **dict(arch_kwargs))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    _check_fits(skeleton, shapes, source=f"model for arch {arch!r} with {dict(arch_kwargs)}")
    save_tensors(path, state, meta)


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
        DeepCloakError: a pickle without ``allow_pickle``, a factory that cannot be imported,
            called, or does not return an ``nn.Module``, or a factory without ``weights`` and
            without ``random_weights``.

    Example:
        >>> model, meta = load_model("fmnist_resnet8.safetensors")
        >>> model, meta = load_model("mypkg.nets:build_net", weights="weights.pt")
    """
    spec_str = os.fspath(spec)
    path = Path(spec_str)
    factory_match = _FACTORY_SPEC.match(spec_str) if not path.exists() else None
    check_weights_given(spec_str, weights, random_weights=random_weights)
    if factory_match is not None:
        with torch.random.fork_rng(devices=[]):  # seed the factory, leave the caller's RNG
            torch.manual_seed(seed)
            model = _call_factory(spec_str, factory_match["module"], factory_match["attr"])
        meta: dict[str, Any] = {"source": "factory", "factory": spec_str, "weights": None}
        if weights is not None:
            state = _read_weights(Path(weights), allow_pickle=allow_pickle)
            _load_state(model, state, source=os.fspath(weights))
            meta["weights"] = os.fspath(weights)
        else:
            log.warning("factory %s: a random model (--random-weights, seed %d)", spec_str, seed)
            meta["random_weights_seed"] = seed
        return model.to(map_location).eval(), meta
    if not path.is_file():
        hint = " (a factory spec looks like 'package.module:function')" if ":" in spec_str else ""
        raise DataFormatError(f"{path}: no such file{hint}")
    kind = _sniff(path)
    if kind == "safetensors":
        model, meta = _load_checkpoint(path)
    elif kind == "torchscript":
        # TorchScript is deprecated upstream, but users still have such files: load quietly.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                model = torch.jit.load(str(path), map_location=map_location)  # type: ignore[no-untyped-call]
            except RuntimeError as e:
                raise DataFormatError(f"{path}: corrupt TorchScript archive: {e}") from None
        meta = {"source": "torchscript"}
    elif kind == "pickle":
        model = _load_pickled_model(path, allow_pickle=allow_pickle, map_location=map_location)
        meta = {"source": "pickle"}
    else:
        raise DataFormatError(
            f"{path}: unknown model file format; expected a deepcloak checkpoint "
            "(.safetensors), a TorchScript archive, or a torch.save file"
        )
    meta["path"] = str(path)
    return model.to(map_location).eval(), meta


def check_weights_given(
    spec: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None,
    *,
    random_weights: bool = False,
) -> None:
    """Check, before any work, that a factory spec comes with weights or ``random_weights``.

    Raises:
        DeepCloakError: a factory without ``weights`` and without ``random_weights`` (its
            initialisation is random: every number would be noise), or with both; or either
            given with a model file.
    """
    spec_str = os.fspath(spec)
    if Path(spec_str).exists() or _FACTORY_SPEC.match(spec_str) is None:
        if weights is not None or random_weights:
            raise DeepCloakError(
                f"{'weights=' if weights is not None else 'random_weights'} is only used with a "
                f"'package.module:factory' spec, not with the file {spec_str!r}"
            )
        return
    if weights is None and not random_weights:
        raise DeepCloakError(
            f"factory {spec_str!r} without weights would build a random, unseeded model: every "
            "number would be noise and every run different; pass its trained weights "
            "(weights= / --weights FILE), or random_weights=True (--random-weights) to use its "
            "initialisation seeded with the seed, for trying things out"
        )
    if weights is not None and random_weights:
        raise DeepCloakError(f"factory {spec_str!r}: give weights or random_weights, not both")


def _sniff(path: Path) -> str:
    """``"safetensors"``, ``"torchscript"``, ``"pickle"`` (a torch.save file) or ``"unknown"``."""
    with path.open("rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise DataFormatError(f"{path}: corrupt zip archive ({e})") from None
        # torch.jit.save archives hold compiled code and constants; torch.save archives do not.
        is_script = any(n.endswith("/constants.pkl") for n in names) and any(
            "/code/" in n for n in names
        )
        return "torchscript" if is_script else "pickle"
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if path.suffix == ".safetensors" or (0 < header_len <= size - 8 and head[8:9] == b"{"):
        return "safetensors"
    # Pickle protocol 2+ starts with 0x80: torch.save's legacy (non-zip) format.
    return "pickle" if head[:1] == b"\x80" else "unknown"


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
    _check_fits(skeleton, shapes, source=f"model for arch {arch!r} with {kwargs} ({path})")
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


def _load_pickled_model(
    path: Path, *, allow_pickle: bool, map_location: str | torch.device
) -> nn.Module:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise DeepCloakError(
                f"{path}: is a pickled object, not only weights; " + _PICKLE_HELP
            ) from None
        obj = _unpickle(path, map_location)
    except Exception as e:  # torch's reader fails on malformed input in many ways
        raise DataFormatError(
            f"{path}: unreadable torch.save file ({type(e).__name__}: {e})"
        ) from None
    if isinstance(obj, Mapping):
        raise DataFormatError(
            f"{path}: holds a state_dict (weights only), not a model; load it with a "
            f"'package.module:factory' spec that builds the architecture, and weights={str(path)!r}"
        )
    if not isinstance(obj, nn.Module):
        raise DataFormatError(f"{path}: holds a {type(obj).__name__}, expected an nn.Module")
    return obj


def _unpickle(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load`` without ``weights_only`` (the user allowed it), errors as one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (AttributeError, ImportError) as e:
        raise DataFormatError(
            f"{path}: the pickled object refers to code that cannot be imported ({e}); "
            "import or install the package that defines its class"
        ) from None
    except Exception as e:  # garbage unpickles into any exception at all
        raise DataFormatError(
            f"{path}: unreadable torch.save file ({type(e).__name__}: {e})"
        ) from None


def _call_factory(spec: str, module_name: str, attr: str) -> nn.Module:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise DeepCloakError(
                f"factory {spec!r}: no module named {module_name!r} (missing {e.name!r}); is its "
                "package installed, or its folder on PYTHONPATH?"
            ) from None
        raise DeepCloakError(f"factory {spec!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:  # the user's module raised while importing
        raise DeepCloakError(f"factory {spec!r}: importing {module_name!r} failed: {e}") from e
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            public = [n for n in sorted(vars(module)) if not n.startswith("_")]
            public = [n for n in public if callable(getattr(module, n))][:10]
            raise DeepCloakError(
                f"factory {spec!r}: module {module_name!r} has no attribute {attr!r}; "
                f"its callables include: {', '.join(public) or 'none'}"
            )
        factory = getattr(factory, part)
    if not callable(factory):
        raise DeepCloakError(
            f"factory {spec!r}: {attr!r} is a {type(factory).__name__}, not callable"
        )
    try:
        model = factory()
    except Exception as e:
        raise DeepCloakError(
            f"factory {spec!r} raised {type(e).__name__}: {e}; it must build the model when "
            "called with no arguments"
        ) from e
    if not isinstance(model, nn.Module):
        raise DeepCloakError(
            f"factory {spec!r} returned a {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def _utf8_name(path: Path) -> bool:
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_weights(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A state_dict from a safetensors or ``torch.save`` file (loaded to CPU)."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such weights file")
    kind = _sniff(path)
    if kind == "safetensors":
        try:
            if _utf8_name(path):
                return st_load_file(path)
            # The safetensors library takes only UTF-8 file names: read the bytes through
            # Python's file instead, after the header check bounds what they may hold.
            read_header(path)
            return st_load_bytes(path.read_bytes())
        except (SafetensorError, OSError) as e:
            raise DataFormatError(f"{path}: not a readable safetensors file ({e})") from None
    if kind == "unknown":  # a text file, an image, random bytes: not worth unpickling
        raise DataFormatError(
            f"{path}: not a weights file; expected a safetensors file or a torch.save file "
            "(a zip archive or a pickle)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise DeepCloakError(
                f"{path}: weights file holds pickled objects; " + _PICKLE_HELP
            ) from None
        obj = _unpickle(path, "cpu")
    except Exception as e:  # torch's reader fails on malformed input in many ways
        raise DataFormatError(
            f"{path}: unreadable weights file ({type(e).__name__}: {e})"
        ) from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    # Common wrappers: {"state_dict": ...} (Lightning), {"model": ...}, {"model_state_dict": ...}.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataFormatError(f"{path}: expected a state_dict (names -> tensors)")
    state = dict(obj)
    # Models saved from nn.DataParallel / DistributedDataParallel prefix every key.
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _check_fits(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], *, source: str) -> None:
    """Raise DataFormatError naming a few missing, unexpected or mis-shaped keys, if any.

    ``shapes`` are the stored tensors' shapes by name (``model`` may live on the meta device).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [
        f"{k} {tuple(shapes[k])} vs {v}"
        for k, v in expected.items()
        if k in shapes and tuple(shapes[k]) != v
    ]
    problems = [
        f"{len(items)} {what} (e.g. {', '.join(items[:4])})"
        for what, items in (("missing", missing), ("unexpected", unexpected),
                            ("with another shape (file vs model)", mismatched))
        if items
    ]  # fmt: skip
    if problems:
        raise DataFormatError(f"weights do not fit the {source}: keys " + "; ".join(problems))


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    _check_fits(model, shapes, source=f"{type(model).__name__} ({source})")
    model.load_state_dict(state, strict=True)
