"""Files: atomic writes, and tensors saved as safetensors with JSON metadata.

Nothing here unpickles: safetensors holds only tensors, and metadata is JSON, so a file from an
untrusted source cannot run code when loaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save_bytes

from deepcloak.errors import DataFormatError, DeepCloakError

__all__ = [
    "SafetensorsHeader",
    "TensorSpec",
    "atomic_write",
    "current_umask",
    "load_tensors",
    "read_header",
    "save_tensors",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

# safetensors metadata is a flat str -> str map; ours is one JSON document under this key.
METADATA_KEY = "deepcloak"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success move it over ``path`` in one step.

    If the block raises, the temporary file is removed and ``path`` is left as it was, so a
    crash or a bad input never leaves a half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name lets the next run remove what a killed one left (report/files.py).
    prefix = f".{path.name}.{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp made it 0600
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            # A failed write() names no file, and the temporary one is gone: name the file.
            e.filename = os.fspath(path)
        raise


def current_umask() -> int:
    """The process's file-creation mask, read without changing it where the OS allows."""
    with (
        contextlib.suppress(OSError, ValueError, StopIteration),
        open("/proc/self/status", encoding="ascii") as status,  # Linux: thread-safe
    ):
        return int(next(ln for ln in status if ln.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (a brief race with other threads)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Raises:
        DeepCloakError: ``obj`` holds a NaN or an infinity (strict JSON has none); the message
            names where. Nothing is written.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        where = _non_finite(obj, "")
        if where is None:
            raise
        raise DeepCloakError(
            f"cannot write {path}: {where[0] or 'the value'} is {where[1]}, which JSON cannot "
            "hold; a setting or the model gave a non-finite number (check the inputs, such as "
            "the model's outputs on the data)"
        ) from None
    write_text_atomic(path, text + "\n")


def _non_finite(obj: Any, where: str) -> tuple[str, float] | None:
    """Where in ``obj`` the first NaN or infinity is (``results[3].accuracy``), and it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where, obj
    items: Any = ()
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    for at, value in items:
        found = _non_finite(value, at)
        if found is not None:
            return found
    return None


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
) -> None:
    """Save ``tensors`` to a safetensors file with ``metadata`` stored as JSON, atomically."""
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = st_save_bytes(contiguous, metadata={METADATA_KEY: json.dumps(dict(metadata))})
    write_bytes_atomic(path, data)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as a safetensors header declares it: dtype name (``"F32"``, ...) and shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file declares, read and checked without loading any tensor.

    Attributes:
        tensors: each tensor's dtype and shape, by name.
        metadata: deepcloak's JSON metadata (a dict), or ``None`` when the file has none.
    """

    tensors: dict[str, TensorSpec]
    metadata: dict[str, Any] | None


#: Bytes an element of each safetensors dtype takes (the dtypes torch can load).
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1,
    "F8_E5M2FNUZ": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
#: The largest header read (the safetensors library's own limit).
MAX_HEADER_BYTES = 100_000_000


def read_header(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> SafetensorsHeader:
    """Read and check a safetensors file's header, without loading any tensor.

    Every declared tensor must have a known dtype, a shape of non-negative ints, and a byte
    range inside the file whose length is exactly its shape's (computed with Python ints), so
    that loading the file can never allocate more than the file holds.

    Args:
        path: the file.
        follow_symlinks: ``False`` refuses a ``path`` that is a symbolic link (``O_NOFOLLOW``).

    Returns:
        The :class:`SafetensorsHeader`.

    Raises:
        DataFormatError: the file is missing or unreadable, or a field of its header is
            malformed; the message names the file and the field.
    """
    path = Path(path)
    with _open_file(path, follow_symlinks) as f:
        return _read_header(f, path)


@contextlib.contextmanager
def _open_file(path: Path, follow_symlinks: bool) -> Iterator[IO[bytes]]:
    """``path`` opened for reading as a regular file (a link refused unless followed)."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except OSError as e:
        if not follow_symlinks and os.path.islink(path):  # O_NOFOLLOW's ELOOP
            raise DataFormatError(
                f"{path} is a symbolic link, and deepcloak follows none here; remove it"
            ) from None
        raise DataFormatError(f"{path}: cannot read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise DataFormatError(f"{path}: no such file (not a regular file)")
        yield f


def _read_header(f: IO[bytes], path: Path) -> SafetensorsHeader:
    """The checked header of the open safetensors file ``f`` (see :func:`read_header`)."""
    try:
        size = os.fstat(f.fileno()).st_size
        length = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        if not 0 < length <= min(size - 8, MAX_HEADER_BYTES):
            raise DataFormatError(
                f"{path}: not a readable safetensors file (its first 8 bytes declare a "
                f"{length}-byte header in a {size}-byte file); expected a file written by "
                "deepcloak"
            )
        raw = f.read(length)
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise DataFormatError(
            f"{path}: not a readable safetensors file (its header is not JSON: {e})"
        ) from None
    if not isinstance(header, dict):
        raise DataFormatError(
            f"{path}: not a readable safetensors file (its header is not a JSON object)"
        )
    data_size = size - 8 - length
    tensors = {
        name: _tensor_spec(entry, name, data_size, path)
        for name, entry in header.items()
        if name != "__metadata__"
    }
    return SafetensorsHeader(tensors, _deepcloak_metadata(header.get("__metadata__"), path))


def _tensor_spec(entry: Any, name: str, data_size: int, path: Path) -> TensorSpec:
    """One header entry, checked: known dtype, shape, and a byte range that fits it exactly."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise DataFormatError(f"{where}: expected an object with dtype, shape, data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        known = ", ".join(sorted(_DTYPE_BYTES))
        raise DataFormatError(f"{where}: 'dtype' is {dtype!r}, expected one of {known}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise DataFormatError(f"{where}: 'shape' is {shape!r}, expected a list of sizes >= 0")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise DataFormatError(
            f"{where}: 'data_offsets' is {offsets!r}, expected [begin, end] within the "
            f"{data_size} bytes of data"
        )
    nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise DataFormatError(
            f"{where}: 'shape' {shape} of {dtype} needs {nbytes} bytes, 'data_offsets' give "
            f"{offsets[1] - offsets[0]}"
        )
    return TensorSpec(dtype, tuple(shape))


def _deepcloak_metadata(metadata: Any, path: Path) -> dict[str, Any] | None:
    """deepcloak's JSON document from the header's ``__metadata__`` (``None`` if absent)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DataFormatError(f"{path}: '__metadata__' is not a map of strings to strings")
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise DataFormatError(f"{path}: metadata {METADATA_KEY!r} is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataFormatError(
            f"{path}: metadata {METADATA_KEY!r} is a JSON {type(meta).__name__}, expected an object"
        )
    return meta


def load_tensors(
    path: str | os.PathLike[str], *, follow_symlinks: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors`.

    The header is checked first (:func:`read_header`), so the tensors loaded never take more
    memory than the file's size.

    Args:
        path: the file.
        follow_symlinks: ``False`` refuses a ``path`` that is a symbolic link, and reads the
            header and the tensors from one open file (nothing can swap the file between).

    Returns:
        ``(tensors, metadata)``; ``metadata`` is always a dict.

    Raises:
        DataFormatError: the file is missing, not a safetensors file, malformed, or has no
            deepcloak metadata.
    """
    path = Path(path)
    name = os.fspath(path)
    try:
        name.encode("utf-8")  # the safetensors library takes only UTF-8 file names
    except UnicodeEncodeError:
        follow_symlinks = False  # read through Python's file instead, which takes any name
    if not follow_symlinks:
        with _open_file(path, follow_symlinks=False) as f:
            header = _read_header(f, path)
            _check_metadata(header, path)
            f.seek(0)
            return _loaded(lambda: st_load_bytes(f.read()), path), header.metadata or {}
    header = read_header(path)
    _check_metadata(header, path)
    return _loaded(lambda: st_load_file(name), path), header.metadata or {}


def _check_metadata(header: SafetensorsHeader, path: Path) -> None:
    if header.metadata is None:
        raise DataFormatError(
            f"{path}: safetensors file has no {METADATA_KEY!r} metadata; "
            "expected a file written by deepcloak"
        )


def _loaded(load: Callable[[], dict[str, torch.Tensor]], path: Path) -> dict[str, torch.Tensor]:
    try:
        return load()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DataFormatError(
            f"{path}: not a readable safetensors file ({e}); expected a file written by deepcloak"
        ) from None
