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

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import stat
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, so a live run is not told apart
    fcntl = None  # type: ignore[assignment]

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

__all__ = [
    "CHECKS",
    "CURVE",
    "MAYBE_SWEEP",
    "RESULTS",
    "SWEEP",
    "Codec",
    "SavedStage",
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


_LOCK = "lock"
_OURS = frozenset({_FINGERPRINT, _CLOAK, _LOCK, "stages", "crafted"})
#: The locks this process holds, by the work folder's absolute path (an open file each:
#: ``flock`` is released when it is closed, or when the process ends however it ends).
_HELD: dict[str, int] = {}


class WorkFolder:
    """The saved stages and crafted sets of one evaluation (see the module's docstring).

    Open it with :meth:`open`. Its files are data from disk, never trusted: no symbolic link is
    followed anywhere in it, and every file read back is checked against what wrote it; any
    mismatch is a :class:`WorkFolderError` naming the file (see ``docs/security.md``).
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
            WorkFolderError: the folder or an entry of it is a symbolic link or not ours; a
                running evaluation uses it; it holds an interrupted run but ``resume`` is false,
                or another evaluation's (the message names the fields that differ); or a file
                in it is not what deepcloak writes there.
        """
        folder = cls(Path(path))
        try:
            folder._open(fingerprint, resume)
        except OSError as e:
            folder.release()
            raise folder._os_error(e) from None
        except BaseException:
            folder.release()
            raise
        return folder

    def _open(self, fingerprint: Mapping[str, Any], resume: bool) -> None:
        if not self._is_ours():
            raise WorkFolderError(
                f"{self.path} exists but is not a deepcloak work folder; give a new path for "
                "the saved stages (deepcloak evaluate puts them beside --out)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.path.mkdir()
        self._lock()
        if not self.holds_work():
            self._clear()  # stopped before any stage finished: nothing to keep
        else:
            if not resume:
                raise WorkFolderError(
                    f"{self.path} holds the finished stages of an interrupted evaluation; "
                    f"pass --resume to continue it, or delete {self.path} to start afresh"
                )
            self._check(fingerprint)
            log.info("resuming from %s", self.path)
            return
        for sub in (self._crafted, self._stages):
            sub.mkdir()
        write_json_atomic(self.path / _FINGERPRINT, dict(fingerprint))

    # ------------------------------------------------------------- links, locks, removal
    def _kind(self, path: Path) -> str | None:
        """``"dir"``, ``"file"``, ``None`` (missing) or ``"other"``, never following a link.

        Raises:
            WorkFolderError: ``path`` is a symbolic link.
        """
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            raise WorkFolderError(
                f"{path} is a symbolic link; deepcloak follows no link in its work folder (a "
                f"planted link would redirect its writes): delete {self.path} to start afresh"
            )
        return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"

    def _entry(self, *parts: str) -> Path:
        """``self.path / parts``, after checking that none of the folders on the way is a link."""
        at = self.path
        for part in parts:
            if self._kind(at) not in (None, "dir"):
                raise WorkFolderError(f"{at} is not a folder; delete {self.path} to start afresh")
            at = at / part
        self._kind(at)
        return at

    def _is_ours(self) -> bool:
        """Whether the path is missing, or a folder (not a link) that holds only what a work
        folder holds.

        Raises:
            WorkFolderError: the folder, or an entry in it or in its sub-folders, is a link.
        """
        kind = self._kind(self.path)
        if kind != "dir":
            return kind is None
        for entry in os.scandir(self.path):
            if not (entry.name in _OURS or _is_temporary(entry.name)):
                return False
            if self._kind(self.path / entry.name) == "dir":
                for inner in os.scandir(self.path / entry.name):
                    self._kind(Path(inner.path))
        return True

    def _lock(self) -> None:
        """Hold the folder's lock (``flock``) while this process uses it.

        Raises:
            WorkFolderError: a live process holds it: an evaluation is running there now.
        """
        key = os.path.abspath(self.path)
        if key in _HELD:
            return
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self._entry(_LOCK), flags, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise WorkFolderError(
                f"{self.path} is in use by an evaluation running now ({who}); wait for it to "
                "finish, or give another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        _HELD[key] = fd

    def release(self) -> None:
        """Let other processes use the folder (done by :meth:`remove`, and at exit)."""
        fd = _HELD.pop(os.path.abspath(self.path), None)
        if fd is not None:
            os.close(fd)

    def held_here(self) -> bool:
        """Whether this process opened the folder (and holds its lock)."""
        return os.path.abspath(self.path) in _HELD

    def _clear(self) -> None:
        """Delete everything in the folder but its lock (never following a link)."""
        for entry in os.scandir(self.path):
            if entry.name == _LOCK:
                continue
            if self._kind(Path(entry.path)) == "dir":
                shutil.rmtree(entry.path)  # removes links inside, never what they point to
            else:
                os.unlink(entry.path)

    def holds_work(self) -> bool:
        """Whether a stage or a crafted set was saved here (a killed write's temporary file
        is not a saved one; nothing behind a link counts)."""
        with contextlib.suppress(WorkFolderError, OSError):
            return self._kind(self.path) == "dir" and any(
                self._kind(d) == "dir"
                and any(
                    e.is_file(follow_symlinks=False) and e.name.endswith((".json", ".safetensors"))
                    for e in os.scandir(d)
                )
                for d in (self._stages, self._crafted)
            )
        return False

    def remove(self) -> None:
        """Delete the folder (after the outputs were written): only if it is a work folder
        that no other live process uses; a link is never followed nor removed."""
        try:
            if not self._is_ours() or self._kind(self.path) is None:
                return
            self._lock()
        except (WorkFolderError, OSError):
            return
        try:
            shutil.rmtree(self.path, ignore_errors=True)  # fd-based: follows no link inside
        finally:
            self.release()

    def _os_error(self, e: OSError) -> WorkFolderError:
        where = e.filename if e.filename is not None else self.path
        return WorkFolderError(
            f"cannot use the work folder {self.path}: {where}: {e.strerror or e}; free space "
            f"or fix its permissions, or delete {self.path} to start afresh"
        )

    def _bad_file(self, path: Path, problem: str) -> WorkFolderError:
        return WorkFolderError(
            f"cannot resume from {path}: {problem}; deepcloak did not save this (delete "
            f"{self.path} and rerun without --resume, to start afresh)"
        )

    def _read_json(self, path: Path) -> Any:
        """A JSON file of the folder, read with no link followed (``O_NOFOLLOW``)."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self._entry(*path.relative_to(self.path).parts), flags)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise self._bad_file(path, "not a regular file")
                raw = f.read()
            return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError: a ValueError
            if isinstance(e, WorkFolderError):
                raise
            if isinstance(e, OSError):
                self._kind(path)  # O_NOFOLLOW's ELOOP: say it is a link
            reason = e.strerror if isinstance(e, OSError) else f"not JSON: {e}"
            raise self._bad_file(path, f"unreadable ({reason})") from None

    def _write(self, write: Callable[[], None]) -> None:
        try:
            write()
        except OSError as e:
            raise self._os_error(e) from None

    def _check(self, fingerprint: Mapping[str, Any]) -> None:
        path = self.path / _FINGERPRINT
        saved = self._read_json(path)
        if not isinstance(saved, dict):
            raise self._bad_file(path, f"a JSON {type(saved).__name__}, expected an object")
        now = json.loads(json.dumps(dict(fingerprint)))  # as it reads back from JSON
        differ = [d if d.isprintable() else repr(d) for d in _differences(saved, now)]
        if differ:
            names = ", ".join(differ[:8]) + (", ..." if len(differ) > 8 else "")
            raise WorkFolderError(
                f"cannot resume from {self.path}: it holds another evaluation ({names} "
                f"differ from this run's); rerun with the same model, data and settings, or "
                f"delete {self.path} to start afresh"
            )

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
        except WorkFolderError:
            raise
        except _READ_ERRORS as e:
            raise self._bad_file(path, _describe(e)) from None
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
            except _READ_ERRORS as e:
                raise self._bad_file(path, _describe(e)) from None
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


def _is_temporary(name: str) -> bool:
    """A killed atomic write's temporary file (``io.atomic_write``)."""
    return name.startswith(".") and name.endswith(".tmp")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (deepcloak writes no NaN or infinity)")


#: What reading malformed data can raise: a missing key, a wrong type, a bad value, a bad
#: tensor shape (torch's RuntimeError), an overflow. Any of them means the file is not what
#: deepcloak wrote.
_READ_ERRORS = (LookupError, TypeError, ValueError, AttributeError, RuntimeError, ArithmeticError)


def _describe(e: BaseException) -> str:
    if isinstance(e, DeepCloakError):
        return str(e)
    if isinstance(e, KeyError):
        return f"no field {e}"
    return f"{type(e).__name__}: {e}".splitlines()[0]


@dataclass(frozen=True)
class SavedStage(Generic[T]):
    """A stage read back: the seconds it took, its value, and its passes outside the store."""

    seconds: float
    value: T
    passes: list[AttackPass]


def _attack_pass(data: Any) -> AttackPass:
    """A pass record, with every field checked (as :meth:`AttackPass.to_json` writes it)."""
    return _round_trip(AttackPass.from_json, AttackPass.to_json, data, "pass")


def _crafted_meta(meta: Any) -> tuple[CraftKey, AttackPass]:
    """The key and pass of a crafted set's metadata, checked."""
    if not isinstance(meta, dict) or set(meta) != {"key", "pass"}:
        raise DeepCloakError("its metadata is not an object of key and pass")
    key = _round_trip(lambda d: CraftKey(**d), vars, meta["key"], "key")
    record = _attack_pass(meta["pass"])
    if (key.attack, key.model, key.split) != (
        json.dumps(record.attack, sort_keys=True),
        record.model,
        record.split,
    ):
        raise DeepCloakError("its key and pass name another attack, model or split")
    return key, record


def _round_trip(
    load: Callable[[Any], T], dump: Callable[[T], Any], data: Any, what: str, hint: Any = None
) -> T:
    """``load(data)``, accepted only if it is exactly what a writer would save.

    The value read back must have the declared type in every field (dataclasses, checked
    recursively), and ``dump`` of it must give ``data`` again with the same JSON types: what is
    derived (an accuracy from the per-sample results) must agree with what it derives from.

    Raises:
        DeepCloakError: it is not; the message names the first field that differs.
    """
    value = load(data)
    _check_types(value, type(value) if hint is None else hint, what)
    again = json.loads(json.dumps(dump(value)))
    where = _first_difference(data, again, what)
    if where is not None:
        raise DeepCloakError(
            f"{where} differs from what deepcloak writes for the rest of the file (its type, "
            "or its agreement with the other fields)"
        )
    return value


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    """The path of the first place ``a`` and ``b`` differ in value or JSON type, or ``None``."""
    if type(a) is not type(b):
        return where
    if isinstance(a, dict):
        if list(a) != list(b):
            return where
        for k in a:
            found = _first_difference(a[k], b[k], f"{where}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else where


def _check_types(value: Any, hint: Any, where: str) -> None:
    """Raise a ``DeepCloakError`` naming the field if ``value`` is not of type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    ok: bool
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            with contextlib.suppress(DeepCloakError):
                _check_types(value, arm, where)
                return
        ok = False
    elif hint is type(None):
        ok = value is None
    elif hint is bool:
        ok = type(value) is bool
    elif hint is int:
        ok = type(value) is int
    elif hint is float:
        ok = type(value) in (int, float) and math.isfinite(value)
    elif origin in (list, tuple) and isinstance(value, origin):
        for i, item in enumerate(value):
            _check_types(item, args[0], f"{where}[{i}]")
        return
    elif origin is dict and isinstance(value, dict):
        ok = all(type(k) is str for k in value)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, hint):
        for name, field_hint in typing.get_type_hints(hint).items():
            _check_types(getattr(value, name), field_hint, f"{where}.{name}")
        return
    else:
        ok = isinstance(value, origin or hint)
    if not ok:
        raise DeepCloakError(f"{where} is {value!r:.60}, expected {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


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

    def __init__(self, timings: Timings, store: CraftedSets, work: WorkFolder | None) -> None:
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
    return _round_trip(SweepResult.from_json, _sweep_dump, data, "value")


def _each(load: Callable[[Any], T]) -> Callable[[list[Any]], list[T]]:
    return lambda items: [load(item) for item in items]


def _results_dump(results: list[AccuracyResult]) -> Any:
    return [r.to_json(per_sample=True) for r in results]


def _results_load(data: Any, where: str = "value") -> list[AccuracyResult]:
    if not isinstance(data, list):
        raise DeepCloakError(f"{where} is {data!r:.60}, expected a list of results")
    return _round_trip(_each(AccuracyResult.from_json), _results_dump, data, where,
                       list[AccuracyResult])  # fmt: skip


def _curve_dump(curve: tuple[list[AccuracyResult], SanityCheck]) -> Any:
    return {"points": _results_dump(curve[0]), "check": curve[1].to_json()}


def _curve_load(data: Any) -> tuple[list[AccuracyResult], SanityCheck]:
    if not isinstance(data, dict) or set(data) != {"points", "check"}:
        raise DeepCloakError("value is not an object of points and check")
    check = _round_trip(SanityCheck.from_json, SanityCheck.to_json, data["check"], "value.check")
    return _results_load(data["points"], "value.points"), check


def _checks_dump(checks: list[SanityCheck]) -> Any:
    return [c.to_json() for c in checks]


def _checks_load(data: Any) -> list[SanityCheck]:
    if not isinstance(data, list):
        raise DeepCloakError(f"value is {data!r:.60}, expected a list of checks")
    return _round_trip(_each(SanityCheck.from_json), _checks_dump, data, "value",
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
