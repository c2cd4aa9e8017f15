"""Marks for tests that read real data, so that they skip, and say why, where it is absent.

The data root comes from ``$DEEPCLOAK_DATA_ROOT`` (see :func:`deepcloak.data.sets.data_root`);
``.ci/run`` points it at an empty folder once to prove that these tests skip there.
"""

from __future__ import annotations

import pytest

from deepcloak.data.sets import DATA_ROOT_ENV, fashion_mnist_root

HAVE_FASHION_MNIST = fashion_mnist_root().is_dir()

#: Skip unless Fashion-MNIST is installed; use with ``pytest.mark.realdata``.
skip_without_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST,
    reason=f"Fashion-MNIST is not installed at {fashion_mnist_root()} "
    f"(install dataset-fashion-mnist or set {DATA_ROOT_ENV})",
)
#: The marks of a test (or a parameter) that reads Fashion-MNIST.
FASHION_MNIST_MARKS = (pytest.mark.realdata, skip_without_fashion_mnist)
