"""Mask files: the scores and the mask of a fit, in safetensors with JSON metadata, checked
field by field when read.

A mask file may come from a stranger. Reading one never unpickles (safetensors holds only
tensors, the metadata is JSON), and every field is checked before it is believed: a malformed
file raises :class:`~deepcloak.errors.DataFormatError` naming the file and the field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, NoReturn

import torch

from deepcloak.cloak.mask import keep_mask, rank_features, removal_count
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DataFormatError
from deepcloak.io import load_tensors, save_tensors

__all__ = ["FORMAT", "MaskFile", "read_mask_file", "write_mask_file"]

#: The ``format`` field of every mask file this version writes.
FORMAT = "deepcloak-mask/1"


@dataclass(frozen=True)
class MaskFile:
    """The checked content of a mask file."""

    layer: LayerRef
    scores: torch.Tensor  # (*feature_shape), float64
    score_name: str
    attack: dict[str, Any]
    n_samples: int
    seed: int
    ratio: float
    metadata: dict[str, Any]


def write_mask_file(
    path: str | os.PathLike[str], scores: torch.Tensor, keep: torch.Tensor, meta: dict[str, Any]
) -> None:
    """Write ``scores``, the boolean mask ``keep`` and ``meta`` to ``path`` atomically."""
    save_tensors(path, {"mask": keep.to(torch.uint8), "scores": scores}, meta)


class _Fields:
    """Reads the metadata fields of one file; each error names the file and the field."""

    def __init__(self, path: str | os.PathLike[str], meta: Any) -> None:
        self.path = os.fspath(path)
        if not isinstance(meta, dict):
            self.fail("metadata", f"expected a JSON object, got {type(meta).__name__}")
        self.meta: dict[str, Any] = meta

    def fail(self, field: str, problem: str) -> NoReturn:
        raise DataFormatError(f"{self.path}: not a valid deepcloak mask file: {field}: {problem}")

    def get(self, field: str, kind: type | tuple[type, ...], what: str) -> Any:
        if field not in self.meta:
            self.fail(field, "missing")
        value = self.meta[field]
        if isinstance(value, bool) or not isinstance(value, kind):
            self.fail(field, f"expected {what}, got {value!r:.80}")
        return value

    def integer(self, field: str, low: int) -> int:
        value: int = self.get(field, int, f"an integer >= {low}")
        if value < low:
            self.fail(field, f"expected an integer >= {low}, got {value}")
        return value


def _layer(fields: _Fields) -> LayerRef:
    layer = fields.get("layer", dict, 'an object {"name": ..., "side": ...}')
    name, side = layer.get("name"), layer.get("side")
    if not isinstance(name, str) or not name:
        fields.fail("layer.name", f"expected a module name, got {name!r:.80}")
    if side not in [s.value for s in Side]:
        fields.fail("layer.side", f"expected 'input' or 'output', got {side!r:.80}")
    return LayerRef(name, Side(side))


def _feature_shape(fields: _Fields) -> tuple[int, ...]:
    shape = fields.get("feature_shape", list, "a list of dimensions")
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
    ):
        fields.fail("feature_shape", f"expected a non-empty list of integers >= 1, got {shape}")
    return tuple(shape)


def _ratio(fields: _Fields) -> float:
    ratio = float(fields.get("ratio", (int, float), "a number in [0, 1)"))
    if not (math.isfinite(ratio) and 0.0 <= ratio < 1.0):
        fields.fail("ratio", f"expected a number in [0, 1), got {ratio}")
    return ratio


def _tensor(
    fields: _Fields, tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...]
) -> torch.Tensor:
    if name not in tensors:
        fields.fail(f"tensor {name!r}", "missing")
    t = tensors[name]
    if tuple(t.shape) != shape:
        fields.fail(
            f"tensor {name!r}", f"shape {tuple(t.shape)} differs from feature_shape {shape}"
        )
    return t


def _scores(fields: _Fields, tensors: dict[str, torch.Tensor], shape: tuple[int, ...]) -> Any:
    scores = _tensor(fields, tensors, "scores", shape)
    if not torch.is_floating_point(scores):
        fields.fail("tensor 'scores'", f"expected floating point, got {scores.dtype}")
    if not bool(torch.isfinite(scores).all()):
        fields.fail("tensor 'scores'", "holds NaN or inf")
    return scores.double()


def _check_mask(
    fields: _Fields, tensors: dict[str, torch.Tensor], scores: torch.Tensor, ratio: float
) -> None:
    """The saved mask must be 0/1 and be the one the scores and the ratio give."""
    shape = tuple(scores.shape)
    mask = _tensor(fields, tensors, "mask", shape)
    if mask.dtype not in (torch.uint8, torch.bool) or bool((mask.to(torch.int64) > 1).any()):
        fields.fail("tensor 'mask'", f"expected 0/1 values (uint8), got dtype {mask.dtype}")
    n_removed = fields.integer("n_removed", 0)
    if n_removed != removal_count(ratio, scores.numel()):
        fields.fail(
            "n_removed", f"{n_removed} disagrees with ratio {ratio} of {scores.numel()} features"
        )
    expected = keep_mask(rank_features(scores), ratio, shape)
    if not torch.equal(mask.bool(), expected):
        fields.fail("tensor 'mask'", "is not the mask the scores and the ratio give")


def read_mask_file(path: str | os.PathLike[str]) -> MaskFile:
    """Read and check a file written by :func:`write_mask_file`.

    Raises:
        DataFormatError: the file is missing, not safetensors, or any field is missing, of the
            wrong type or out of range (the message names the file and the field).
    """
    try:
        tensors, meta = load_tensors(path)
    except ValueError as e:  # the metadata is not JSON (DataFormatError is a ValueError too)
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{path}: not a valid deepcloak mask file: metadata: {e}") from None
    fields = _Fields(path, meta)
    if fields.get("format", str, f"{FORMAT!r}") != FORMAT:
        fields.fail("format", f"expected {FORMAT!r}, got {fields.meta['format']!r:.80}")
    layer, shape, ratio = _layer(fields), _feature_shape(fields), _ratio(fields)
    scores = _scores(fields, tensors, shape)
    _check_mask(fields, tensors, scores, ratio)
    return MaskFile(
        layer=layer,
        scores=scores,
        score_name=fields.get("score", str, "a scorer name"),
        attack=fields.get("attack", dict, "an object (the attack's spec)"),
        n_samples=fields.integer("n_samples", 1),
        seed=fields.get("seed", int, "an integer"),
        ratio=ratio,
        metadata=fields.meta,
    )
