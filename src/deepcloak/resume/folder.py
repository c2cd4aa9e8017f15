"""A work folder: where a long run keeps what it finished, to resume after a stop.

The folder is a hidden sibling of the run's output (:func:`work_folder_for`). It holds
``fingerprint.json`` (what defines the run: two runs resume each other only if theirs are
equal), a ``lock`` held while a process uses it, and the files a subclass names in
:attr:`WorkFolder.FILES` and :attr:`WorkFolder.FOLDERS` (the evaluation's:
:class:`deepcloak.evaluation.resume.EvaluationFolder`).

Its files are data from disk, never trusted: no symbolic link is followed anywhere in it,
every file is written atomically and read back checked (:mod:`deepcloak.resume.checked`), and
a folder that is not a work folder is never used nor removed (see ``docs/security.md``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, so a live run is not told apart
    fcntl = None  # type: ignore[assignment]

from deepcloak.errors import DeepCloakError
from deepcloak.io import write_json_atomic
from deepcloak.resume.checked import no_constant
from deepcloak.resume.digests import differences

__all__ = ["WorkFolder", "WorkFolderError", "work_folder_for"]

log = logging.getLogger(__name__)

_FINGERPRINT = "fingerprint.json"
_LOCK = "lock"
#: The locks this process holds, by the work folder's absolute path (an open file each:
#: ``flock`` is released when it is closed, or when the process ends however it ends).
_HELD: dict[str, int] = {}

_Folder = TypeVar("_Folder", bound="WorkFolder")


def work_folder_for(out: str | os.PathLike[str]) -> Path:
    """The work folder of a run writing to ``out``: a hidden sibling of it."""
    out = Path(out)
    return out.parent / f".{out.name}.deepcloak-resume"


class WorkFolderError(DeepCloakError):
    """The work folder itself is the problem (not ours, another run's, unreadable): the CLI
    leaves it as it is."""


class WorkFolder:
    """A run's work folder (see the module's docstring); open it with :meth:`open`.

    Any mismatch between a file and what deepcloak writes there is a :class:`WorkFolderError`
    naming the file.
    """

    #: Files a subclass keeps at the top of the folder (besides the fingerprint and the lock).
    FILES: ClassVar[frozenset[str]] = frozenset()
    #: Sub-folders created on open, where the saved work is.
    FOLDERS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(
        cls: type[_Folder],
        path: str | os.PathLike[str],
        fingerprint: Mapping[str, Any],
        *,
        resume: bool,
    ) -> _Folder:
        """Open (or create) the work folder of the run ``fingerprint`` describes.

        Args:
            path: the folder (:func:`work_folder_for`).
            fingerprint: JSON-able facts that define the run.
            resume: reuse what an interrupted run saved there.

        Raises:
            WorkFolderError: the folder or an entry of it is a symbolic link or not ours; a
                running evaluation uses it; it holds an interrupted run but ``resume`` is false,
                or another run's (the message names the fields that differ); or a file
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
        for sub in self.FOLDERS:
            (self.path / sub).mkdir()
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
        ours = {_FINGERPRINT, _LOCK, *self.FILES, *self.FOLDERS}
        for entry in os.scandir(self.path):
            if not (entry.name in ours or _is_temporary(entry.name)):
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
        """Whether a file was saved in one of :attr:`FOLDERS` (a killed write's temporary file
        is not a saved one; nothing behind a link counts)."""
        with contextlib.suppress(WorkFolderError, OSError):
            return self._kind(self.path) == "dir" and any(
                self._kind(d) == "dir"
                and any(
                    e.is_file(follow_symlinks=False) and e.name.endswith((".json", ".safetensors"))
                    for e in os.scandir(d)
                )
                for d in (self.path / sub for sub in self.FOLDERS)
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

    # ------------------------------------------------------------------ reading, writing
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
            return json.loads(raw.decode("utf-8"), parse_constant=no_constant)
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
        differ = [d if d.isprintable() else repr(d) for d in differences(saved, now)]
        if differ:
            names = ", ".join(differ[:8]) + (", ..." if len(differ) > 8 else "")
            raise WorkFolderError(
                f"cannot resume from {self.path}: it holds another evaluation ({names} "
                f"differ from this run's); rerun with the same model, data and settings, or "
                f"delete {self.path} to start afresh"
            )


def _is_temporary(name: str) -> bool:
    """A killed atomic write's temporary file (``io.atomic_write``)."""
    return name.startswith(".") and name.endswith(".tmp")
