"""Hypothesis settings and mutation strategies shared by the fuzz tests.

The fuzz tests run a small, derandomized budget by default, so that the suite stays fast and
gives the same result every run. ``HYPOTHESIS_PROFILE=thorough`` (2000 examples a test; the
project's opt-in profile, also registered in ``tests/conftest.py``) or any other registered
profile runs them with that profile instead::

    HYPOTHESIS_PROFILE=thorough python -m pytest tests/data/test_fuzz_formats.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

# The tests check their own time bound (quickly()), looser than Hypothesis' on a loaded machine.
_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile(
    "fuzz-small",
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=_HEALTH,
)
try:  # tests/conftest.py registers it too; keep its definition when it is there
    settings.get_profile("thorough")
except InvalidArgument:
    settings.register_profile(
        "thorough", max_examples=2000, deadline=None, suppress_health_check=_HEALTH
    )


def fuzz_settings() -> settings:
    """The profile named by ``$HYPOTHESIS_PROFILE`` when it is registered, else ``fuzz-small``."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "")
    try:
        chosen = settings.get_profile(name) if name else None
    except InvalidArgument:
        chosen = None
    if chosen is None or name == "default":
        return settings.get_profile("fuzz-small")
    return settings(chosen, deadline=None, suppress_health_check=_HEALTH)


#: Seconds one example may take: reading a few KB must never take long.
SECONDS_PER_EXAMPLE = 5.0


@contextmanager
def quickly(limit: float = SECONDS_PER_EXAMPLE) -> Iterator[None]:
    """Fail when the block takes longer than ``limit`` seconds of this process's CPU time
    (CPU time, not wall time: other jobs on a shared machine must not fail the test)."""
    start = time.process_time()
    yield
    took = time.process_time() - start
    assert took < limit, f"took {took:.2f} s, more than {limit} s"


@st.composite
def mutated(draw: st.DrawFn, valid: bytes, *, header: int = 64) -> bytes:
    """``valid`` with 1 to 4 random edits: a byte flipped or set, a range deleted, duplicated
    or inserted, or the tail cut off. Half of the edits land in the first ``header`` bytes,
    where formats declare the sizes a reader must not believe blindly."""
    data = bytearray(valid)
    edits = draw(st.integers(1, 4))
    for _ in range(edits):
        if not data:
            break
        end = len(data) - 1
        near = st.integers(0, min(header, end))
        pos = draw(st.one_of(near, st.integers(0, end)))
        kind = draw(st.sampled_from(["flip", "set", "cut", "delete", "duplicate", "insert"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "cut":
            del data[pos:]
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)
