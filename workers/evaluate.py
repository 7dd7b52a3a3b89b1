"""Embedding evaluation: the public entry points the tasks/flows call.

Pure numpy/scipy (+ one small numba kernel) compute; scikit-learn is never imported at runtime
(the tests use it only to check that our figures agree with it). Each job lives in its own
module; this one re-exports the API:

- ``node_classification`` (DeepWalk protocol, one-vs-rest L2 logistic regression): eval_classify
- ``split_edges``, ``sample_non_edges``, ``link_prediction``: eval_links
- ``reconstruction_map``, ``knn_recall``, ``procrustes_align``, ``neighbourhood_overlap``:
  eval_geometry
"""
from __future__ import annotations

from .eval_classify import fit_logreg_ovr, label_matrix, node_classification, split_permutation
from .eval_geometry import (average_precision_rows, knn_recall, neighbourhood_overlap, procrustes_align,
                            reconstruction_map, top_k_neighbours)
from .eval_links import (edge_features, link_prediction, ranking_metrics, roc_auc, sample_non_edges,
                         split_edges)

__all__ = [
    "node_classification", "fit_logreg_ovr", "label_matrix", "split_permutation",
    "split_edges", "sample_non_edges", "link_prediction", "edge_features", "roc_auc", "ranking_metrics",
    "reconstruction_map", "knn_recall", "procrustes_align", "neighbourhood_overlap", "top_k_neighbours",
    "average_precision_rows",
]
