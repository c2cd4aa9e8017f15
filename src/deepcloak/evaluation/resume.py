"""Resumable evaluations: finished stages and crafted sets saved as they finish, reused later.

A long evaluation saves, in its work folder next to its ``--out``
(:class:`deepcloak.resume.WorkFolder`, which holds ``fingerprint.json`` and the lock):

- ``cloak.safetensors``: the fitted cloak (the mask file format);
- ``crafted/<digest>.safetensors``: each crafted adversarial set, with its key (attack spec,
  model, split) and the time it took in the file's metadata;
- ``stages/<stage>.json``: each finished stage's results (per-sample correctness) and seconds.

Only safetensors and JSON are written and read (never pickle), each file atomically, so a kill
at any moment leaves complete files. ``deepcloak evaluate --resume`` (``resume=True``) reuses
what matches and refuses, naming what differs, a folder of another evaluation
(:func:`fingerprint`). The work folder is removed once ``--out`` is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from deepcloak import resume as _resume
from deepcloak._moved import moved_names
from deepcloak._version import __version__
from deepcloak.cloak.fit import Cloak
from deepcloak.errors import DataFormatError, DeepCloakError
from deepcloak.evaluation.crafted import CraftedSets, CraftKey
from deepcloak.evaluation.inputs import describe_train
from deepcloak.evaluation.results import AccuracyResult, SweepResult
from deepcloak.evaluation.sanity import SanityCheck
from deepcloak.evaluation.timings import AttackPass, StageTime, Timings, clock
from deepcloak.io import load_tensors, read_header, save_tensors, write_json_atomic
from deepcloak.models.runtime import model_device
from deepcloak.resume import digests as _digests
from deepcloak.resume import folder as _folder
from deepcloak.resume.checked import READ_ERRORS, describe_error, round_trip

__all__ = [
    "CHECKS",
    "CURVE",
    "MAYBE_SWEEP",
    "RESULTS",
    "SWEEP",
    "Codec",
    "EvaluationFolder",
    "SavedStage",
    "StageRunner",
    "fingerprint",
]

T = TypeVar("T")

_CLOAK = "cloak.safetensors"

# Moved after 0.1.0 to deepcloak.resume, the work folder every resumable run shares; the
# evaluation's own folder is EvaluationFolder (still importable here as WorkFolder).
__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(["WorkFolderError", "work_folder_for", "digest", "model_digest"], _resume),
        "WorkFolder": (sys.modules[__name__], "EvaluationFolder"),
    },
)


class EvaluationFolder(_folder.WorkFolder):
    """The work folder of one evaluation: its stages, crafted sets and cloak (see the module's
    docstring). Open it with :meth:`~deepcloak.resume.WorkFolder.open`."""

    FILES: ClassVar[frozenset[str]] = frozenset({_CLOAK})
    FOLDERS: ClassVar[tuple[str, ...]] = ("stages", "crafted")

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._crafted = path / "crafted"
        self._stages = path / "stages"

    # ----------------------------------------------------------------------------- stages
    def _stage_file(self, name: str) -> Path:
        return self._stages / (name.replace(" ", "-") + ".json")

    def load_stage(self, name: str, codec: Codec[T]) -> SavedStage[T] | None:
        """The saved stage ``name``, checked and read back with ``codec``, or ``None``.

        Raises:
            WorkFolderError: the file is not what :meth:`save_stage` writes with ``codec``:
                another structure, a field of another type, or values that disagree.
        """
        path = self._stage_file(name)
        if self._kind(self._entry("stages", path.name)) is None:
            return None
        data = self._read_json(path)
        if not isinstance(data, dict) or set(data) != {"seconds", "value", "passes"}:
            raise self._bad_file(path, "expected an object of seconds, value and passes")
        seconds, passes = data["seconds"], data["passes"]
        if type(seconds) not in (int, float) or not 0 <= seconds < math.inf:
            raise self._bad_file(path, f"'seconds' is {seconds!r}, expected a duration >= 0")
        if not isinstance(passes, list):
            raise self._bad_file(path, f"'passes' is {passes!r}, expected a list")
        try:
            records = [_attack_pass(p) for p in passes]
            value = codec.load(data["value"])
        except _folder.WorkFolderError:
            raise
        except READ_ERRORS as e:
            raise self._bad_file(path, describe_error(e)) from None
        return SavedStage(float(seconds), value, records)

    def save_stage(self, name: str, data: Mapping[str, Any]) -> None:
        """Save a finished stage, atomically."""
        path = self._entry("stages", self._stage_file(name).name)
        self._write(lambda: write_json_atomic(path, dict(data)))

    def save_cloak(self, cloak: Cloak) -> dict[str, Any]:
        """Save the fitted cloak; returns what the stage records (the file's name)."""
        path = self._entry(_CLOAK)
        self._write(lambda: cloak.save(path, 0.0))
        return {"file": _CLOAK}

    def load_cloak(self, value: Any) -> Cloak:
        """The cloak saved by :meth:`save_cloak` (``value`` is what it returned)."""
        if value != {"file": _CLOAK} or type(value["file"]) is not str:
            raise DeepCloakError(f"'value' is {value!r}, expected {{'file': {_CLOAK!r}}}")
        path = self._entry(_CLOAK)
        if self._kind(path) != "file":
            raise self._bad_file(path, "missing or not a regular file")
        try:
            return Cloak.load(path)[0]
        except DataFormatError as e:
            raise self._bad_file(path, str(e)) from None

    # ---------------------------------------------------------------------- crafted sets
    def _crafted_file(self, key: CraftKey) -> Path:
        text = json.dumps([key.attack, key.model, key.split])
        return self._crafted / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"

    def saved_passes(self) -> dict[CraftKey, AttackPass]:
        """Every saved set's key and pass, read from the files' headers (no tensor loaded).

        Raises:
            WorkFolderError: a file is a link, or not a set :meth:`save_crafted` wrote.
        """
        out: dict[CraftKey, AttackPass] = {}
        if self._kind(self._entry("crafted")) != "dir":
            return out
        for name in sorted(os.listdir(self._crafted)):
            path = self._entry("crafted", name)
            if not name.endswith(".safetensors"):
                continue
            try:
                header = read_header(path, follow_symlinks=False)
                key, record = _crafted_meta(header.metadata)
            except READ_ERRORS as e:
                raise self._bad_file(path, describe_error(e)) from None
            if set(header.tensors) != {"adversarial"}:
                raise self._bad_file(path, "expected one tensor, 'adversarial'")
            if self._crafted_file(key) != path:
                raise self._bad_file(path, "its name is not that of the key it holds")
            out[key] = record
        return out

    def load_crafted(self, key: CraftKey) -> torch.Tensor | None:
        """The set saved under ``key``, or ``None``."""
        path = self._entry("crafted", self._crafted_file(key).name)
        if self._kind(path) is None:
            return None
        try:
            tensors, _ = load_tensors(path, follow_symlinks=False)
        except DataFormatError as e:
            raise self._bad_file(path, str(e)) from None
        if set(tensors) != {"adversarial"}:
            raise self._bad_file(path, "expected one tensor, 'adversarial'")
        return tensors["adversarial"]

    def save_crafted(self, key: CraftKey, x_adv: torch.Tensor, record: AttackPass) -> None:
        """Save a crafted set as soon as it is made, atomically."""
        meta = {"key": vars(key), "pass": record.to_json()}
        path = self._entry("crafted", self._crafted_file(key).name)
        self._write(lambda: save_tensors(path, {"adversarial": x_adv}, meta))


@dataclass(frozen=True)
class SavedStage(Generic[T]):
    """A stage read back: the seconds it took, its value, and its passes outside the store."""

    seconds: float
    value: T
    passes: list[AttackPass]


def _attack_pass(data: Any) -> AttackPass:
    """A pass record, with every field checked (as :meth:`AttackPass.to_json` writes it)."""
    return round_trip(AttackPass.from_json, AttackPass.to_json, data, "pass")


def _crafted_meta(meta: Any) -> tuple[CraftKey, AttackPass]:
    """The key and pass of a crafted set's metadata, checked."""
    if not isinstance(meta, dict) or set(meta) != {"key", "pass"}:
        raise DeepCloakError("its metadata is not an object of key and pass")
    key = round_trip(lambda d: CraftKey(**d), vars, meta["key"], "key")
    record = _attack_pass(meta["pass"])
    if (key.attack, key.model, key.split) != (
        json.dumps(record.attack, sort_keys=True),
        record.model,
        record.split,
    ):
        raise DeepCloakError("its key and pass name another attack, model or split")
    return key, record


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a stage's value is saved as JSON and read back (``load`` checks what it reads)."""

    dump: Callable[[T], Any]
    load: Callable[[Any], T]


class StageRunner:
    """Runs an evaluation's stages: times each, saves it when done, reuses a saved one.

    Args:
        timings: where the stages' times go.
        store: the crafted sets (told which stage is running, for its passes).
        work: the work folder, or ``None`` to save nothing.
    """

    def __init__(self, timings: Timings, store: CraftedSets, work: EvaluationFolder | None) -> None:
        self.timings, self.store, self.work = timings, store, work

    def run(self, name: str, compute: Callable[[], T], codec: Codec[T] | None = None) -> T:
        """``compute()``, timed as stage ``name``; saved with ``codec``, or read back if saved.

        A stage read back records the seconds it took then, and its passes outside the store
        (the fit's attack), marked ``resumed``.
        """
        saved = self.work.load_stage(name, codec) if self.work is not None and codec else None
        if saved is not None:
            self.timings.stages.append(StageTime(name, saved.seconds, resumed=True))
            for p in saved.passes:
                p.resumed = True
                self.store.record(p)
            return saved.value
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
    return None if data is None else _test_sweep_load(data)


def _test_sweep_load(data: Any) -> SweepResult:
    return round_trip(SweepResult.from_json, _sweep_dump, data, "value")


def _each(load: Callable[[Any], T]) -> Callable[[list[Any]], list[T]]:
    return lambda items: [load(item) for item in items]


def _results_dump(results: list[AccuracyResult]) -> Any:
    return [r.to_json(per_sample=True) for r in results]


def _results_load(data: Any, where: str = "value") -> list[AccuracyResult]:
    if not isinstance(data, list):
        raise DeepCloakError(f"{where} is {data!r:.60}, expected a list of results")
    return round_trip(_each(AccuracyResult.from_json), _results_dump, data, where,
                       list[AccuracyResult])  # fmt: skip


def _curve_dump(curve: tuple[list[AccuracyResult], SanityCheck]) -> Any:
    return {"points": _results_dump(curve[0]), "check": curve[1].to_json()}


def _curve_load(data: Any) -> tuple[list[AccuracyResult], SanityCheck]:
    if not isinstance(data, dict) or set(data) != {"points", "check"}:
        raise DeepCloakError("value is not an object of points and check")
    check = round_trip(SanityCheck.from_json, SanityCheck.to_json, data["check"], "value.check")
    return _results_load(data["points"], "value.points"), check


def _checks_dump(checks: list[SanityCheck]) -> Any:
    return [c.to_json() for c in checks]


def _checks_load(data: Any) -> list[SanityCheck]:
    if not isinstance(data, list):
        raise DeepCloakError(f"value is {data!r:.60}, expected a list of checks")
    return round_trip(_each(SanityCheck.from_json), _checks_dump, data, "value",
                       list[SanityCheck])  # fmt: skip


#: Codecs of the stages whose values are saved as JSON.
SWEEP: Codec[SweepResult] = Codec(_sweep_dump, _test_sweep_load)
MAYBE_SWEEP: Codec[SweepResult | None] = Codec(_sweep_dump, _sweep_load)
RESULTS: Codec[list[AccuracyResult]] = Codec(_results_dump, _results_load)
CURVE: Codec[tuple[list[AccuracyResult], SanityCheck]] = Codec(_curve_dump, _curve_load)
CHECKS: Codec[list[SanityCheck]] = Codec(_checks_dump, _checks_load)


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
    source = describe_train(train)
    if isinstance(train, Cloak):
        source = {**source, "layer": train.layer.to_json(), "scores": _digests.digest(train.scores)}
    return {
        "deepcloak": __version__,
        "config": dict(config),
        "model": _digests.model_digest(model),
        "surrogate": _digests.model_digest(surrogate) if surrogate is not None else None,
        **{name: _digests.digest(t) for name, t in tensors.items()},
        "training data": source,
        "metadata": dict(metadata or {}),
        "device": str(model_device(model)),
    }
