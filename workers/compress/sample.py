"""The training sample of a codec: which rows a fitted codec (PQ codebooks, a low-rank basis, the
structure codes of a compositional table) learns from. One function, shared by the codec API
(codecs.py), the lake writer (store.py) and the compositional codes (compose.py)."""
from __future__ import annotations

import numpy as np


def sample_rows(n: int, count: int, seed: int) -> np.ndarray:
    """Sorted row indices of the training sample (all rows when n <= count)."""
    if count <= 0 or n <= count:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
