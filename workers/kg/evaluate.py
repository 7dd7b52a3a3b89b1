"""Filtered link-prediction evaluation, the field's protocol (Bordes et al. 2013, as LibKGE and PyKEEN).

Each test triple (h, r, t) is two queries: rank the true tail among all entities given (h, r), and
the true head given (r, t). Every other entity that makes a known true triple (train, valid or
test) with the query is filtered: it neither counts above nor below the truth. A tie counts half
(the "realistic" rank: the mean of the optimistic and the pessimistic rank). MRR and Hits@1/3/10
average over both directions.

It is batched and vectorised: a batch of queries is scored against the whole entity table at once
(a matrix product for the dot models, one dense distance block for TransE and RotatE), and the
known answers of each query come from a CSR keyed by (anchor, relation), built once with a sort.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numba as nb
import numpy as np

from embedlake.workers.kg.kernels import block_scores
from embedlake.workers.kg.models import HEAD, TAIL, KGModel, build_queries

HITS = (1, 3, 10)


@dataclass(frozen=True)
class KnownAnswers:
    """Every known answer of (anchor, relation) queries of one side, as a CSR over sorted keys
    anchor * num_relations + relation."""
    keys: np.ndarray        # sorted unique keys (int64)
    indptr: np.ndarray      # answers of keys[i] are answers[indptr[i]:indptr[i+1]]
    answers: np.ndarray     # int64 entity ids
    num_relations: int

    def rows(self, anchors: np.ndarray, rels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of each query's answers in `answers` (empty where the key is unknown)."""
        key = anchors.astype(np.int64) * self.num_relations + rels
        pos = np.searchsorted(self.keys, key)
        pos_c = np.minimum(pos, max(self.keys.shape[0] - 1, 0))
        found = (pos < self.keys.shape[0]) & (self.keys[pos_c] == key) if self.keys.shape[0] else np.zeros(
            key.shape, bool)
        start = np.where(found, self.indptr[pos_c], 0)
        end = np.where(found, self.indptr[np.minimum(pos_c + 1, self.indptr.shape[0] - 1)], 0)
        return start, end


def known_answers(triples: np.ndarray, num_relations: int, side: int) -> KnownAnswers:
    """The CSR of answers for predicting `side` (TAIL: keys (h, r) -> tails; HEAD: (t, r) -> heads)."""
    anchor, answer = (triples[:, 0], triples[:, 2]) if side == TAIL else (triples[:, 2], triples[:, 0])
    key = anchor.astype(np.int64) * num_relations + triples[:, 1]
    order = np.lexsort((answer, key))
    key, answer = key[order], answer[order].astype(np.int64)
    keys, first = np.unique(key, return_index=True)
    indptr = np.append(first, key.shape[0]).astype(np.int64)
    return KnownAnswers(keys, indptr, answer, num_relations)


@nb.njit(cache=True, nogil=True)
def filtered_ranks(scores, targets, start, end, answers):
    """Realistic filtered rank of targets[i] in scores[i]: 1 + (#higher + #tied / 2) over entities
    that are not a known answer of query i (the target itself is never counted)."""
    out = np.empty(scores.shape[0], np.float64)
    for i in range(scores.shape[0]):
        row = scores[i]
        true = row[targets[i]]
        higher = 0
        tied = 0
        for j in range(row.shape[0]):
            if row[j] > true:
                higher += 1
            elif row[j] == true:
                tied += 1
        tied -= 1                                       # the target itself
        for a in range(start[i], end[i]):               # known answers counted above are taken back
            e = answers[a]
            if e == targets[i]:
                continue
            if row[e] > true:
                higher -= 1
            elif row[e] == true:
                tied -= 1
        out[i] = 1.0 + higher + tied / 2.0
    return out


def side_ranks(model: KGModel, ent: np.ndarray, rel: np.ndarray, test: np.ndarray, known: KnownAnswers,
               side: int, batch: int) -> np.ndarray:
    """Filtered ranks of the test triples' tails (side TAIL) or heads (HEAD), `batch` queries at a time."""
    anchors_all, targets_all = (test[:, 0], test[:, 2]) if side == TAIL else (test[:, 2], test[:, 0])
    out = np.empty(test.shape[0], np.float64)
    for lo in range(0, test.shape[0], batch):
        anchors = np.ascontiguousarray(anchors_all[lo:lo + batch], np.int64)
        rels = np.ascontiguousarray(test[lo:lo + batch, 1], np.int64)
        targets = np.ascontiguousarray(targets_all[lo:lo + batch], np.int64)
        q = np.empty((anchors.shape[0], model.dim), np.float32)
        build_queries(model.code, ent, rel, anchors, rels, side, q)
        scores = block_scores(model, q, ent)
        start, end = known.rows(anchors, rels)
        out[lo:lo + batch] = filtered_ranks(scores, targets, start, end, known.answers)
    return out


def rank_metrics(ranks: np.ndarray) -> dict:
    """MRR, mean rank and Hits@1/3/10 of a set of ranks."""
    if ranks.shape[0] == 0:
        return {"mrr": float("nan"), "mean_rank": float("nan"), **{f"hits@{k}": float("nan") for k in HITS}}
    return {"mrr": round(float(np.mean(1.0 / ranks)), 6), "mean_rank": round(float(np.mean(ranks)), 3),
            **{f"hits@{k}": round(float(np.mean(ranks <= k)), 6) for k in HITS}}


def evaluate(model: KGModel, ent: np.ndarray, rel: np.ndarray, test: np.ndarray, known_triples: np.ndarray,
             batch: int = 1000) -> dict:
    """Filtered MRR and Hits@1/3/10 of `test` (both directions averaged; per direction too), with
    every triple of `known_triples` (train + valid + test) filtered. Adds the seconds taken."""
    t0 = time.perf_counter()
    num_relations = rel.shape[0]
    ranks = {}
    for side, name in ((TAIL, "tail"), (HEAD, "head")):
        known = known_answers(known_triples, num_relations, side)
        ranks[name] = side_ranks(model, ent, rel, test, known, side, batch)
    both = np.concatenate([ranks["tail"], ranks["head"]])
    out = rank_metrics(both)
    out["tail"] = rank_metrics(ranks["tail"])
    out["head"] = rank_metrics(ranks["head"])
    out["triples"] = int(test.shape[0])
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
