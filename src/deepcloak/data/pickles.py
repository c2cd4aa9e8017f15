"""Unpickling that neither runs code nor lets a small file claim a large amount of memory.

CIFAR-10's python version is a set of pickles. :func:`safe_unpickle` reads such a file in three
steps, each one a guarantee:

1. The whole pickle is scanned first with :mod:`pickletools` (pure Python, reading nothing it
   is not given), so that every length an opcode declares (``BINBYTES8`` can declare 2**64
   bytes, which CPython's unpickler would allocate before noticing the file is shorter) is
   checked against the bytes actually present, and the memory the objects will take is
   estimated and bounded by the file's size (:data:`MAX_EXPANSION`).
2. Only builtin values and numpy arrays can be rebuilt: every global goes through an allow
   list, so ``os.system`` and friends are refused before they are looked up.
3. The numpy callables on that list are wrapped so that they can only rebuild arrays from
   bytes held in the pickle: ``numpy.ndarray`` itself is never handed out (calling it with a
   shape allocates that much uninitialised memory), ``_reconstruct`` only makes the empty
   placeholder numpy pickles always start from, and dtypes are plain numeric ones.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from deepcloak.errors import DataFormatError

__all__ = ["MAX_EXPANSION", "safe_unpickle"]

#: The objects a pickle builds may take at most this many times its size, plus
#: :data:`EXPANSION_ALLOWANCE` bytes (for small files such as ``batches.meta``).
MAX_EXPANSION = 4
EXPANSION_ALLOWANCE = 1 << 20
# What an opcode that builds or stores an object (a dict, a list item, a memo entry) is
# counted as: about the size of a small Python object or container slot.
_OBJECT_COST = 64
# Dtypes a CIFAR batch (or any array of numbers) needs; no objects, strings, records or void.
_NUMERIC_KINDS = frozenset("biuf")


class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` in the pickle: it can be passed to ``_reconstruct``
    (which numpy pickles do) but not called (which would allocate any shape asked for)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt from its bytes")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, limited to the empty ``(0,)`` placeholder numpy writes; the
    array gets its real shape from ``__setstate__``, which checks it against the bytes given."""
    if subtype is not _NdarrayToken or tuple(shape) != (0,):
        raise pickle.UnpicklingError("numpy _reconstruct called with unexpected arguments")
    return np.empty((0,), dtype=np.uint8)


def _dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype[Any]:
    """``numpy.dtype(name)`` for plain numeric dtypes only, always a copy (the pickle then
    calls its ``__setstate__``, which must never touch numpy's shared builtin dtypes)."""
    text = name.decode("ascii") if isinstance(name, bytes) else name
    if not isinstance(text, str) or len(text) > 8:
        raise pickle.UnpicklingError(f"unexpected dtype {name!r}")
    dtype = np.dtype(text, copy=True)
    if dtype.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"dtype {text!r} is not a plain numeric dtype")
    return dtype


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 rebuilder: a view of bytes held in the pickle, reshaped (numpy
    refuses a shape whose size differs from the bytes')."""
    if not isinstance(buffer, bytes | bytearray) or not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("numpy _frombuffer called with unexpected arguments")
    if dtype.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"dtype {dtype} is not a plain numeric dtype")
    array: np.ndarray = np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)
    return array


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode``, which Python 3 writes to pickle ``bytes`` at protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode called with unexpected arguments")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``, which Python 3 writes to pickle an empty ``bytes`` at protocol 2."""
    if args:
        raise pickle.UnpicklingError("bytes called with arguments")
    return b""


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The globals a pickled numpy array may name, under numpy 1.x and 2.x module names."""
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): _NdarrayToken,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = _frombuffer
    return allowed


_ALLOWED = _allowed_globals()


_ENDIANS = frozenset(("<", ">", "|", "=", b"<", b">", b"|", b"="))


def _check_dtype_state(state: Any) -> None:
    """A plain dtype's pickled state: ``(3, endian, None, None, None, -1, -1, 0)``. Anything
    else (sub-arrays, fields, another item size) could make a dtype whose item size disagrees
    with its layout, so it is refused."""
    if not (
        isinstance(state, tuple)
        and len(state) == 8
        and state[1] in _ENDIANS
        and state[2:5] == (None, None, None)
        and state[5:7] == (-1, -1)
    ):
        raise pickle.UnpicklingError(f"unexpected dtype state {state!r}")


def _check_array_state(state: Any) -> None:
    """An array's pickled state: ``(1, shape, numeric dtype, is_fortran, bytes)``; numpy's own
    ``__setstate__`` then checks that the bytes fill the shape exactly."""
    if not (
        isinstance(state, tuple)
        and len(state) == 5
        and isinstance(state[1], tuple)
        and all(type(d) is int for d in state[1])
        and isinstance(state[2], np.dtype)
        and state[2].kind in _NUMERIC_KINDS
        and isinstance(state[4], bytes | bytearray)
    ):
        raise pickle.UnpicklingError("unexpected numpy array state")


class _NumpyOnlyUnpickler(pickle._Unpickler):
    """An unpickler that rebuilds builtin containers and numpy arrays, and refuses any other
    global, so that a crafted file cannot call ``os.system`` or any other function.

    It is the pure-Python unpickler, so that ``BUILD`` (``__setstate__``) can be checked too:
    only arrays and dtypes made by the allowed callables are given a state, and only a plain
    one. CIFAR batches hold few opcodes (one ``bytes`` for all pixels), so speed is no issue.
    """

    dispatch: ClassVar[dict[int, Callable[[pickle.Unpickler], None]]] = dict(
        pickle._Unpickler.dispatch
    )

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR's pickles come from Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataFormatError(
                f"{self._path}: the pickle holds an object that is not allowed "
                f"({module}.{name}); only numpy arrays, dicts, lists, bytes, str and numbers "
                "are loaded. The file is not a CIFAR-10 batch, or has been tampered with"
            ) from None

    def load_build(self) -> None:
        stack: list[Any] = self.stack  # type: ignore[attr-defined]
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, np.dtype):
            _check_dtype_state(state)
        elif type(inst) is np.ndarray:
            _check_array_state(state)
        else:
            raise pickle.UnpicklingError(f"cannot set the state of a {type(inst).__name__}")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build  # type: ignore[assignment]


def _estimated_cost(raw: bytes, path: Path) -> int:
    """Bytes the pickle's objects will take, roughly and from above; every declared length
    checked against the data (``pickletools`` raises on a length longer than what is left)."""
    cost = 0
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(raw)):
            if isinstance(arg, bytes | bytearray):
                cost += len(arg)
            elif isinstance(arg, str):
                cost += 4 * len(arg)  # up to 4 bytes a character once decoded
            cost += _OBJECT_COST
            if opcode.name == "STOP":
                break
    except Exception as e:  # pickletools raises ValueError and others on a malformed stream
        raise DataFormatError(f"{path}: not a readable pickle ({e})") from None
    return cost


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` allowing only builtin values and numpy arrays, in bounded memory.

    Args:
        path: the pickle file.

    Returns:
        The unpickled object (dicts, lists, bytes, str, numbers and numeric numpy arrays).

    Raises:
        DataFormatError: the file is unreadable, is not a valid pickle, would take more than
            :data:`MAX_EXPANSION` times its size in memory, or holds any other object.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from None
    limit = MAX_EXPANSION * len(raw) + EXPANSION_ALLOWANCE
    cost = _estimated_cost(raw, path)
    if cost > limit:
        raise DataFormatError(
            f"{path}: the pickle would build about {cost} bytes of objects from a "
            f"{len(raw)}-byte file (at most {limit} allowed); the file is not a CIFAR-10 "
            "batch, or has been tampered with"
        )
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(raw), path).load()
    except DataFormatError:
        raise
    except Exception as e:  # a corrupt pickle can fail in many ways; all mean "bad file"
        raise DataFormatError(f"{path}: not a readable pickle ({e!r})") from None
