"""Resumable runs: a work folder that keeps what a run finished, safely, to continue after a stop.

- :mod:`.folder`: :class:`WorkFolder` (locked while used, follows no link, removed as a whole)
  and :func:`work_folder_for`;
- :mod:`.checked`: reading saved JSON back only if it is exactly what deepcloak writes;
- :mod:`.digests`: digests of tensors and models, for the fingerprint that tells runs apart.

What an evaluation saves there (its stages, crafted sets, cloak) is
:mod:`deepcloak.evaluation.resume`.
"""

from __future__ import annotations

from deepcloak.resume.checked import READ_ERRORS, describe_error, round_trip
from deepcloak.resume.digests import differences, digest, model_digest
from deepcloak.resume.folder import WorkFolder, WorkFolderError, work_folder_for

__all__ = [
    "READ_ERRORS",
    "WorkFolder",
    "WorkFolderError",
    "describe_error",
    "differences",
    "digest",
    "model_digest",
    "round_trip",
    "work_folder_for",
]
