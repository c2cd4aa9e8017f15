"""Files: atomic writes, and tensors saved as safetensors with JSON metadata.

Nothing here unpickles: safetensors holds only tensors, and metadata is JSON, so a file from an
untrusted source cannot run code when loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from deepcloak.errors import DataFormatError

__all__ = [
    "atomic_write",
    "current_umask",
    "load_tensors",
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
) -> None:
    """Save ``tensors`` to a safetensors file with ``metadata`` stored as JSON, atomically."""
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = st_save_bytes(contiguous, metadata={METADATA_KEY: json.dumps(dict(metadata))})
    write_bytes_atomic(path, data)


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors`.

    Returns:
        ``(tensors, metadata)``.

    Raises:
        DataFormatError: the file is missing, not a safetensors file, or has no deepcloak metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        tensors = st_load_bytes(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise DataFormatError(
            f"{path}: not a readable safetensors file ({e}); expected a file written by deepcloak"
        ) from None
    meta_json = header.get("__metadata__", {}).get(METADATA_KEY)
    if meta_json is None:
        raise DataFormatError(
            f"{path}: safetensors file has no {METADATA_KEY!r} metadata; "
            "expected a file written by deepcloak"
        )
    return tensors, json.loads(meta_json)
