"""Models and weights from users' files: format sniffing, factories, TorchScript, pickles.

Everything :func:`deepcloak.models.checkpoint.load_model` reads that is not a deepcloak
checkpoint: a ``package.module:factory`` spec with a weights file (a ``state_dict`` read with
``weights_only=True``, or safetensors), a TorchScript archive, and (only when asked to) a pickled
full model. Weights are checked against the model's shapes before they are loaded.
"""

from __future__ import annotations

import importlib
import logging
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

from deepcloak.errors import DataFormatError, DeepCloakError
from deepcloak.io import read_header

__all__ = [
    "FACTORY_SPEC", "PICKLE_HELP", "check_fits", "check_weights_given", "load_factory",
    "load_pickled_model", "load_state", "load_torchscript", "read_weights", "sniff",
]  # fmt: skip

log = logging.getLogger(__name__)

#: ``package.module:factory``.
FACTORY_SPEC = re.compile(
    r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_][\w.]*)$"
)
#: Why a pickle is refused, and what to do instead.
PICKLE_HELP = (
    "a pickle can run arbitrary code when loaded, so deepcloak refuses it by default. If you "
    "trust its source, pass allow_pickle=True (CLI: --allow-pickle); better, save its "
    "state_dict (torch.save(model.state_dict(), 'weights.pt')) and load it with a "
    "'package.module:factory' spec and weights='weights.pt'"
)


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
    if Path(spec_str).exists() or FACTORY_SPEC.match(spec_str) is None:
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


def sniff(path: Path) -> str:
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


def load_factory(
    spec: str,
    match: re.Match[str],
    weights: str | os.PathLike[str] | None,
    *,
    allow_pickle: bool,
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """Call a ``package.module:factory`` spec (seeded, the caller's RNG left alone) and load
    ``weights`` into its model, or keep its random initialisation (checked before:
    :func:`check_weights_given`).

    Returns:
        ``(model, metadata)``: ``source``, ``factory``, ``weights`` (and ``random_weights_seed``).
    """
    with torch.random.fork_rng(devices=[]):  # seed the factory, leave the caller's RNG
        torch.manual_seed(seed)
        model = _call_factory(spec, match["module"], match["attr"])
    meta: dict[str, Any] = {"source": "factory", "factory": spec, "weights": None}
    if weights is not None:
        state = read_weights(Path(weights), allow_pickle=allow_pickle)
        load_state(model, state, source=os.fspath(weights))
        meta["weights"] = os.fspath(weights)
    else:
        log.warning("factory %s: a random model (--random-weights, seed %d)", spec, seed)
        meta["random_weights_seed"] = seed
    return model, meta


def load_torchscript(path: Path, map_location: str | torch.device) -> nn.Module:
    """A TorchScript archive (``torch.jit.save``).

    Raises:
        DataFormatError: a corrupt archive.
    """
    # TorchScript is deprecated upstream, but users still have such files: load quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            model: nn.Module = torch.jit.load(str(path), map_location=map_location)  # type: ignore[no-untyped-call]
        except RuntimeError as e:
            raise DataFormatError(f"{path}: corrupt TorchScript archive: {e}") from None
    return model


def load_pickled_model(
    path: Path, *, allow_pickle: bool, map_location: str | torch.device
) -> nn.Module:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise DeepCloakError(
                f"{path}: is a pickled object, not only weights; " + PICKLE_HELP
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


def read_weights(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A state_dict from a safetensors or ``torch.save`` file (loaded to CPU)."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such weights file")
    kind = sniff(path)
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
                f"{path}: weights file holds pickled objects; " + PICKLE_HELP
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


def check_fits(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], *, source: str) -> None:
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


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    check_fits(model, shapes, source=f"{type(model).__name__} ({source})")
    model.load_state_dict(state, strict=True)
