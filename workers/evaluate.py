"""Embedding evaluation: the public entry points the tasks/flows call.

Pure numpy/scipy compute (no scikit-learn at runtime; it is only used by the tests to check
agreement). Each job lives in its own module; this one re-exports the API:

- node classification (DeepWalk protocol): ``eval_classify``
"""
from __future__ import annotations

from .eval_classify import fit_logreg_ovr, label_matrix, node_classification, split_permutation

__all__ = ["node_classification", "fit_logreg_ovr", "label_matrix", "split_permutation"]
