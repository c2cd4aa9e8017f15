"""Output locations: checked before any work, and output folders replaced as a whole.

A command's outputs (report, plots, mask, cloaked model) belong together: a model beside the
``report.json`` of another run is worse than no output. :func:`replace_folder` therefore writes
the whole set into a temporary folder beside the destination (same parent, so renames are
atomic), flushes it to disk, and swaps it in. A failure, Ctrl-C or ``kill -9`` at any moment
leaves either the complete old set or the complete new set, and the leftovers of a killed run
are removed (or, if it died inside the swap, put back) by the next run.

:func:`check_output_folder` and :func:`check_output_file` say in well under a second whether a
``--out`` can be written, so a bad path fails before minutes of work, not after.

Example:
    >>> check_output_folder("runs/harden")  # before any work
    >>> with replace_folder("runs/harden") as tmp:
    ...     write_json_atomic(tmp / "report.json", report)
    ...     cloak.save(tmp / "mask.safetensors", 0.01)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from deepcloak.errors import DeepCloakError

__all__ = [
    "MARKER",
    "check_output_file",
    "check_output_folder",
    "clean_stale",
    "replace_folder",
    "write_folder",
]

log = logging.getLogger(__name__)

#: File that marks a folder as deepcloak's output set, so a later run may replace it whole.
MARKER = ".deepcloak-output"
_MARKER_TEXT = "Written by deepcloak: the next run with this --out replaces this folder whole.\n"

# Folders written before the marker existed hold only these files; they may be replaced too.
_KNOWN_OUTPUTS = frozenset(
    {
        "report.json", "sweep.png", "mask.safetensors", "cloaked_model.safetensors",
        "cloaked_model.pt", "cloaked_state_dict.safetensors", "evaluation.json",
        "accuracy_vs_ratio.png", "accuracy_vs_eps.png",
    }
)  # fmt: skip

# Sibling work folders: ".<name>.deepcloak-<new|old>-<pid>-<random>".
_WORK = re.compile(r"^\.(?P<name>.+)\.deepcloak-(?P<kind>new|old)-(?P<pid>\d+)-[0-9a-f]+$")


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` can be (re)written as an output folder, before any work.

    What killed runs left beside ``path`` is cleaned up first (see :func:`clean_stale`).

    Args:
        path: the ``--out`` folder; it may not exist yet.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DeepCloakError: ``path`` is a file, holds the working directory or files deepcloak did
            not write (it would be replaced whole), or neither it nor its parent can be written.
    """
    path = _checked_name(path)
    try:
        _check_folder(path)
    except OSError as e:
        raise _os_error(path, e) from None
    return path


def _check_folder(path: Path) -> None:
    clean_stale(path)
    if path.exists() and not path.is_dir():
        raise DeepCloakError(
            f"--out {path} is a file, but this command writes a folder of outputs; "
            "give a folder path (it is created if missing)"
        )
    if path.is_dir():
        if Path.cwd().resolve().is_relative_to(path.resolve()):
            raise DeepCloakError(
                f"--out {path} holds the working directory, and would be replaced as a whole; "
                "give a folder of its own, such as runs/harden"
            )
        foreign = _foreign_entries(path)
        if foreign:
            raise DeepCloakError(
                f"--out {path} already holds files deepcloak did not write "
                f"({', '.join(sorted(foreign)[:3])}{', ...' if len(foreign) > 3 else ''}); "
                "it would be replaced as a whole: give a new or empty folder"
            )
        if not os.access(path, os.W_OK | os.X_OK):  # its old files are deleted after the swap
            raise DeepCloakError(
                f"cannot replace --out {path}: it is not writable; "
                "choose another folder or fix its permissions"
            )
    _check_writable(path, _existing_ancestor(path.parent))


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` can be (re)written as one output file, before any work.

    Temporary files that killed runs left beside ``path`` (from
    :func:`~deepcloak.io.atomic_write`) are removed first.

    Raises:
        DeepCloakError: ``path`` is a folder, its name is too long, or the folder it goes into
            cannot be written.
    """
    path = _checked_name(path)
    try:
        _clean_stale_files(path)
        if path.is_dir():
            raise DeepCloakError(
                f"--out {path} is a folder, but this command writes one file; "
                f"give a file path such as {path / 'model.safetensors'}"
            )
        _check_writable(path, _existing_ancestor(path.parent))
    except OSError as e:
        raise _os_error(path, e) from None
    return path


#: Bytes the names of the hidden siblings add to ``--out``'s: ``.<name>.deepcloak-new-<pid>-
#: <8 hex>`` (a pid has at most 7 digits on Linux); temporary files and the resume folder add less.
_SIBLING_EXTRA = len("..deepcloak-new--") + 7 + 8


def _checked_name(path: str | os.PathLike[str]) -> Path:
    """``path``, if each of its names fits the file system with the siblings named after it.

    Raises:
        DeepCloakError: a name is too long (the message says the limit).
    """
    path = Path(path)
    try:
        limit = os.pathconf(_existing_ancestor(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255  # the usual NAME_MAX
    for part in path.parts[:-1]:
        if len(os.fsencode(part)) > limit:
            raise DeepCloakError(
                f"cannot use --out {path}: its folder name {part[:40]!r}... is "
                f"{len(os.fsencode(part))} bytes, more than the {limit} this file system allows"
            )
    size = len(os.fsencode(path.name))
    if size + _SIBLING_EXTRA > limit:
        raise DeepCloakError(
            f"--out name {path.name[:40]!r}... is {size} bytes: with the hidden work files "
            f"deepcloak writes beside it, named after it, it exceeds the {limit} bytes a name "
            f"may have here; give a name of at most {limit - _SIBLING_EXTRA} bytes"
        )
    return path


def _os_error(out: Path, e: OSError) -> DeepCloakError:
    """One line for an OS refusal about ``--out``: which path, and why."""
    where = f" ({e.filename})" if e.filename and os.fspath(e.filename) != os.fspath(out) else ""
    return DeepCloakError(f"cannot write --out {out}: {e.strerror or e}{where}")


def _existing_ancestor(folder: Path) -> Path:
    """The nearest existing ancestor of ``folder`` (itself included), which must be a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise DeepCloakError(
                    f"cannot create an output under {folder}: {candidate} is a file, not a folder"
                )
            return candidate
    return Path.cwd()  # pragma: no cover - a relative path's parents end at "."


def _check_writable(path: Path, folder: Path) -> None:
    """Create and remove a work folder in ``folder``: the honest test (root, ACLs, ro mounts).

    It is named as :func:`replace_folder`'s work folders, so a kill here leaves nothing that
    :func:`clean_stale` would not remove.
    """
    try:
        os.rmdir(_work_folder(folder / path.name, "new"))
    except OSError as e:
        raise DeepCloakError(
            f"cannot write --out {path}: {folder} is not writable ({e.strerror}); "
            "choose another location or fix its permissions"
        ) from None


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of an existing ``folder`` that show it is not a deepcloak output set."""
    names = [entry.name for entry in os.scandir(folder)]
    if MARKER in names:
        return []
    return [name for name in names if name not in _KNOWN_OUTPUTS or not (folder / name).is_file()]


@contextlib.contextmanager
def replace_folder(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a set of outputs into a fresh folder, then swap it in for ``out`` as a whole.

    The block writes every file into the yielded temporary folder (a sibling of ``out``).
    When it returns, the files are flushed to disk and the folder replaces ``out`` atomically
    where the OS allows (Linux ``renameat2``), otherwise by two renames that the next run
    repairs if a kill lands between them. If the block raises (or Ctrl-C arrives), the
    temporary folder is removed and ``out`` is left exactly as it was.

    Args:
        out: the output folder; created if missing, replaced whole if it exists.

    Yields:
        The temporary folder to write into.

    Raises:
        DeepCloakError: ``out`` is not a valid output folder (see :func:`check_output_folder`).
    """
    out = Path(os.path.realpath(out))
    check_output_folder(out)  # also cleans up after killed runs
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _work_folder(out, "new")
    try:
        (tmp / MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap it holds the old set


def write_folder(
    out: str | os.PathLike[str], write: Callable[[Path], Mapping[str, Path]]
) -> dict[str, Path]:
    """Run ``write(folder)`` inside :func:`replace_folder` and return its paths under ``out``.

    Example:
        >>> paths = write_folder(out, lambda d: write_harden(result, d, model_info=m, data_info=i))
    """
    out = Path(out)
    try:
        with replace_folder(out) as tmp:
            written = write(tmp)
    except OSError as e:  # disk full, read-only: the temporary folder is gone, out as it was
        name = Path(e.filename).name if e.filename else None
        raise DeepCloakError(
            f"cannot write --out {out}: {e.strerror or e}"
            + (f" (writing {name})" if name else "")
            + f"; {out} is left as it was"
        ) from None
    return {kind: out / Path(p).relative_to(tmp) for kind, p in written.items()}


def clean_stale(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the work folders that killed runs left beside ``out``; repair a cut-off swap.

    A folder belongs to a run by its process id; folders of live processes are left alone,
    so two runs may write side by side. If a run died between the two renames of a swap
    (``out`` missing, its old set aside), the old set is put back.

    Returns:
        The folders removed or restored.
    """
    out = Path(os.path.realpath(out))
    if not out.parent.is_dir():
        return []
    stale = []
    for entry in sorted(out.parent.iterdir()):
        match = _WORK.match(entry.name)
        if match and match["name"] == out.name and not _alive(int(match["pid"])):
            stale.append((match["kind"], entry))
    for kind, entry in stale:
        if kind == "old" and not out.exists():
            os.rename(entry, out)
            log.warning("restored %s: a previous run was killed while replacing it", out)
        else:
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by a killed run", entry)
    return [entry for _, entry in stale]


def _clean_stale_files(path: Path) -> None:
    """Remove the temporary files of dead processes beside ``path`` (``.<name>.<pid>-*.tmp``)."""
    if not path.parent.is_dir():
        return
    stale = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[^/]*\.tmp$")
    for entry in path.parent.iterdir():
        match = stale.match(entry.name)
        if match and entry.is_file() and not _alive(int(match[1])):
            entry.unlink(missing_ok=True)
            log.info("removed %s, left by a killed run", entry)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _work_folder(out: Path, kind: str) -> Path:
    """A new, empty sibling folder of ``out`` with the usual permissions (not ``0700``)."""
    tmp = out.parent / f".{out.name}.deepcloak-{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o777)  # the umask applies, as for any folder
    return tmp


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folders themselves to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name, os.O_RDONLY)
        _fsync(Path(root), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``; afterwards ``new`` holds the old set (or nothing)."""
    if not out.exists():
        os.rename(new, out)
    elif not _exchange(new, out):
        old = out.parent / new.name.replace("deepcloak-new-", "deepcloak-old-")
        os.rename(out, old)  # a kill from here to the next rename is repaired by clean_stale
        os.rename(new, out)
        os.rename(old, new)
    _fsync(out.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # the OS or file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))
