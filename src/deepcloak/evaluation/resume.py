"""Resumable evaluations: finished stages and crafted sets saved as they finish, reused later.

A long evaluation saves, in a work folder next to its ``--out``:

- ``fingerprint.json``: what defines the evaluation (settings, a digest of the model's weights,
  of the test and validation samples, of the surrogate, where the cloak came from, the device);
- ``cloak.safetensors``: the fitted cloak (the mask file format);
- ``crafted/<digest>.safetensors``: each crafted adversarial set, with its key (attack spec,
  model, split) and the time it took in the file's metadata;
- ``stages/<stage>.json``: each finished stage's results (per-sample correctness) and seconds.

Only safetensors and JSON are written and read (never pickle), each file atomically, so a kill
at any moment leaves complete files. ``deepcloak evaluate --resume`` (``resume=True``) reuses
what matches and refuses, naming what differs, a folder of another evaluation. The work folder
is removed once ``--out`` is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from deepcloak._version import __version__
from deepcloak.cloak.fit import Cloak
from deepcloak.errors import DataFormatError, DeepCloakError
from deepcloak.evaluation.crafted import CraftedSets, CraftKey
from deepcloak.evaluation.results import AccuracyResult, SweepResult
from deepcloak.evaluation.sanity import SanityCheck
from deepcloak.evaluation.timings import AttackPass, StageTime, Timings, clock
from deepcloak.io import load_tensors, read_header, save_tensors, write_json_atomic

__all__ = [
    "CHECKS",
    "CURVE",
    "MAYBE_SWEEP",
    "RESULTS",
    "SWEEP",
    "Codec",
    "StageRunner",
    "WorkFolder",
    "WorkFolderError",
    "digest",
    "fingerprint",
    "work_folder_for",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_FINGERPRINT = "fingerprint.json"
_CLOAK = "cloak.safetensors"


def work_folder_for(out: str | os.PathLike[str]) -> Path:
    """The work folder of an evaluation writing to ``out``: a hidden sibling of it."""
    out = Path(out)
    return out.parent / f".{out.name}.deepcloak-resume"


def digest(*tensors: torch.Tensor | None) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes (``None`` counts as a marker)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's class, parameter and buffer names and values."""
    state = model.state_dict()
    names = ";".join([type(model).__qualname__, *state])
    return hashlib.sha256((names + digest(*state.values())).encode()).hexdigest()


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The fields that differ, one level into dicts (``config.eps``)."""
    out = []
    for key in sorted({*saved, *now}):
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted({*a, *b}) if a.get(k) != b.get(k)]
        else:
            out.append(key)
    return out


class WorkFolderError(DeepCloakError):
    """The work folder itself is the problem (not ours, another run's, unreadable): the CLI
    leaves it as it is."""


class WorkFolder:
    """The saved stages and crafted sets of one evaluation (see the module's docstring).

    Open it with :meth:`open`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._crafted = path / "crafted"
        self._stages = path / "stages"

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], fingerprint: Mapping[str, Any], *, resume: bool
    ) -> WorkFolder:
        """Open (or create) the work folder of the evaluation ``fingerprint`` describes.

        Args:
            path: the folder (:func:`work_folder_for`).
            fingerprint: JSON-able facts that define the evaluation.
            resume: reuse what an interrupted run saved there.

        Raises:
            DeepCloakError: the folder holds an interrupted run but ``resume`` is false, or it
                belongs to another evaluation (the message names the fields that differ).
        """
        folder = cls(Path(path))
        if folder.path.exists() and not folder._is_ours():
            raise WorkFolderError(
                f"{folder.path} exists but is not a deepcloak work folder; give a new path for "
                "the saved stages (deepcloak evaluate puts them beside --out)"
            )
        if folder.path.exists() and not folder.holds_work():
            folder.remove()  # stopped before any stage finished: nothing to keep
        if folder.path.exists():
            if not resume:
                raise WorkFolderError(
                    f"{folder.path} holds the finished stages of an interrupted evaluation; "
                    f"pass --resume to continue it, or delete {folder.path} to start afresh"
                )
            folder._check(fingerprint)
            log.info("resuming from %s", folder.path)
            return folder
        folder._crafted.mkdir(parents=True)
        folder._stages.mkdir()
        write_json_atomic(folder.path / _FINGERPRINT, dict(fingerprint))
        return folder

    def _is_ours(self) -> bool:
        """Whether the path is a folder that holds only what a work folder holds."""
        if not self.path.is_dir():
            return False
        ours = {_FINGERPRINT, _CLOAK, "stages", "crafted"}
        return all(
            e.name in ours or (e.name.startswith(".") and e.name.endswith(".tmp"))
            for e in self.path.iterdir()
        )

    def holds_work(self) -> bool:
        """Whether a stage or a crafted set was saved here (a killed write's temporary file
        is not a saved one)."""
        return any(
            f.is_file() and f.suffix in (".json", ".safetensors")
            for d in (self._stages, self._crafted)
            if d.is_dir()
            for f in d.iterdir()
        )

    def _check(self, fingerprint: Mapping[str, Any]) -> None:
        try:
            saved = json.loads((self.path / _FINGERPRINT).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise WorkFolderError(
                f"cannot resume from {self.path}: its {_FINGERPRINT} is unreadable ({e}); "
                f"delete {self.path} to start afresh"
            ) from None
        now = json.loads(json.dumps(dict(fingerprint)))  # as it reads back from JSON
        differ = _differences(saved, now)
        if differ:
            raise WorkFolderError(
                f"cannot resume from {self.path}: it holds another evaluation ({', '.join(differ)} "
                f"differ from this run's); rerun with the same model, data and settings, or "
                f"delete {self.path} to start afresh"
            )

    # ----------------------------------------------------------------------------- stages
    def _stage_file(self, name: str) -> Path:
        return self._stages / (name.replace(" ", "-") + ".json")

    def load_stage(self, name: str) -> dict[str, Any] | None:
        """The saved stage ``name`` (``seconds``, ``value``, ``passes``), or ``None``."""
        path = self._stage_file(name)
        if not path.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataFormatError(f"{path}: unreadable saved stage ({e}); delete it") from None
        return data

    def save_stage(self, name: str, data: Mapping[str, Any]) -> None:
        """Save a finished stage, atomically."""
        write_json_atomic(self._stage_file(name), dict(data))

    def save_cloak(self, cloak: Cloak) -> dict[str, Any]:
        """Save the fitted cloak; returns what the stage records (the file's name)."""
        cloak.save(self.path / _CLOAK, 0.0)
        return {"file": _CLOAK}

    def load_cloak(self, _value: Any) -> Cloak:
        """The cloak saved by :meth:`save_cloak`."""
        return Cloak.load(self.path / _CLOAK)[0]

    # ---------------------------------------------------------------------- crafted sets
    def _crafted_file(self, key: CraftKey) -> Path:
        text = json.dumps([key.attack, key.model, key.split])
        return self._crafted / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"

    def saved_passes(self) -> dict[CraftKey, AttackPass]:
        """Every saved set's key and pass, read from the files' headers (no tensor loaded)."""
        out = {}
        for path in sorted(self._crafted.glob("*.safetensors")):
            meta = read_header(path).metadata or {}
            try:
                key = CraftKey(**meta["key"])
                out[key] = AttackPass.from_json(meta["pass"])
            except (KeyError, TypeError) as e:
                raise DataFormatError(f"{path}: not a saved crafted set ({e}); delete it") from None
        return out

    def load_crafted(self, key: CraftKey) -> torch.Tensor | None:
        """The set saved under ``key``, or ``None``."""
        path = self._crafted_file(key)
        if not path.exists():
            return None
        return load_tensors(path)[0]["adversarial"]

    def save_crafted(self, key: CraftKey, x_adv: torch.Tensor, record: AttackPass) -> None:
        """Save a crafted set as soon as it is made, atomically."""
        meta = {"key": vars(key), "pass": record.to_json()}
        save_tensors(self._crafted_file(key), {"adversarial": x_adv}, meta)

    def remove(self) -> None:
        """Delete the folder (after the outputs were written), only if it is a work folder."""
        if self._is_ours():
            shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a stage's value is saved as JSON and read back."""

    dump: Callable[[T], Any]
    load: Callable[[Any], T]


class StageRunner:
    """Runs an evaluation's stages: times each, saves it when done, reuses a saved one.

    Args:
        timings: where the stages' times go.
        store: the crafted sets (told which stage is running, for its passes).
        work: the work folder, or ``None`` to save nothing.
    """

    def __init__(self, timings: Timings, store: CraftedSets, work: WorkFolder | None) -> None:
        self.timings, self.store, self.work = timings, store, work

    def run(self, name: str, compute: Callable[[], T], codec: Codec[T] | None = None) -> T:
        """``compute()``, timed as stage ``name``; saved with ``codec``, or read back if saved.

        A stage read back records the seconds it took then, and its passes outside the store
        (the fit's attack), marked ``resumed``.
        """
        saved = self.work.load_stage(name) if self.work is not None and codec else None
        if saved is not None and codec is not None:
            self.timings.stages.append(StageTime(name, saved["seconds"], resumed=True))
            for p in saved.get("passes", []):
                self.store.record(AttackPass.from_json({**p, "resumed": True}))
            return codec.load(saved["value"])
        self.store.stage = name
        before = len(self.store.outside)
        start = clock()
        value = compute()
        seconds = clock() - start
        self.timings.stages.append(StageTime(name, seconds))
        if self.work is not None and codec is not None:
            own = [p.to_json() for p in self.store.outside[before:]]
            self.work.save_stage(name, {"seconds": seconds, "value": codec.dump(value),
                                        "passes": own})  # fmt: skip
        return value


# ------------------------------------------------------------------------ stage codecs
def _sweep_dump(sweep: SweepResult | None) -> Any:
    return None if sweep is None else sweep.to_json(per_sample=True)


def _sweep_load(data: Any) -> SweepResult | None:
    return None if data is None else SweepResult.from_json(data)


def _test_sweep_load(data: Any) -> SweepResult:
    return SweepResult.from_json(data)


def _results_dump(results: list[AccuracyResult]) -> Any:
    return [r.to_json(per_sample=True) for r in results]


def _results_load(data: Any) -> list[AccuracyResult]:
    return [AccuracyResult.from_json(r) for r in data]


def _curve_dump(curve: tuple[list[AccuracyResult], SanityCheck]) -> Any:
    return {"points": _results_dump(curve[0]), "check": curve[1].to_json()}


def _curve_load(data: Any) -> tuple[list[AccuracyResult], SanityCheck]:
    return _results_load(data["points"]), SanityCheck.from_json(data["check"])


#: Codecs of the stages whose values are saved as JSON.
SWEEP: Codec[SweepResult] = Codec(_sweep_dump, _test_sweep_load)
MAYBE_SWEEP: Codec[SweepResult | None] = Codec(_sweep_dump, _sweep_load)
RESULTS: Codec[list[AccuracyResult]] = Codec(_results_dump, _results_load)
CURVE: Codec[tuple[list[AccuracyResult], SanityCheck]] = Codec(_curve_dump, _curve_load)
CHECKS: Codec[list[SanityCheck]] = Codec(
    lambda checks: [c.to_json() for c in checks],
    lambda data: [SanityCheck.from_json(c) for c in data],
)


def fingerprint(
    model: nn.Module,
    train: Any,
    tensors: Mapping[str, torch.Tensor],
    surrogate: nn.Module | None,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What defines an evaluation, JSON-able: two runs resume each other only if it is equal.

    The model, surrogate, test and validation samples by digest; the training data by where
    it came from (a given cloak by digest of its scores; a loader by its data set's name and
    size, as ``describe_train`` records it, since reading it all to hash it would cost a pass).

    Args:
        model: the model evaluated.
        train: a fitted cloak or the training loader.
        tensors: the collected splits, by name (``"test inputs"``, ...).
        surrogate: the transfer model, if any.
        config: the evaluation's settings as JSON.
        metadata: the caller's facts (``deepcloak evaluate``: model and data names, ...).
    """
    from deepcloak.evaluation.inputs import describe_train
    from deepcloak.models.runtime import model_device

    source = describe_train(train)
    if isinstance(train, Cloak):
        source = {**source, "layer": train.layer.to_json(), "scores": digest(train.scores)}
    return {
        "deepcloak": __version__,
        "config": dict(config),
        "model": model_digest(model),
        "surrogate": model_digest(surrogate) if surrogate is not None else None,
        **{name: digest(t) for name, t in tensors.items()},
        "training data": source,
        "metadata": dict(metadata or {}),
        "device": str(model_device(model)),
    }
