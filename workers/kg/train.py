"""Training of a knowledge-graph model on the CPU: chunks of positives, shared negatives, one update
per chunk (the primitives are in kernels.py, the models in models.py)."""
from __future__ import annotations

import math
import time
from typing import Callable

import numba as nb
import numpy as np

from embedlake.workers.kg.kernels import (LOSS_CODE, TrainSettings, TrainState, block_backward, block_scores,
                                          loss_grads, pair_backward, pair_scores)
from embedlake.workers.kg.models import HEAD, TAIL, KGModel, build_queries, query_backward


@nb.njit(cache=True, nogil=True)
def scatter_rows(grads, inverse, out):
    """out[inverse[i]] += grads[i]: sum the gradients of repeated rows."""
    for i in range(grads.shape[0]):
        o = out[inverse[i]]
        g = grads[i]
        for j in range(g.shape[0]):
            o[j] += g[j]


@nb.njit(cache=True, fastmath=True, nogil=True)
def reg_grads(rows, weight, n3, complex_rows):
    """Gradient of weight * N3 (sum of cubed moduli; complex rows by complex coordinate) or of
    weight * L2 (sum of squares) of each row."""
    out = np.empty_like(rows)
    d = rows.shape[1]
    k = d // 2
    for i in range(rows.shape[0]):
        x = rows[i]
        if not n3:
            for j in range(d):
                out[i, j] = 2.0 * weight * x[j]
        elif complex_rows:
            for j in range(k):
                m = math.sqrt(x[j] * x[j] + x[k + j] * x[k + j])
                out[i, j] = 3.0 * weight * m * x[j]
                out[i, k + j] = 3.0 * weight * m * x[k + j]
        else:
            for j in range(d):
                out[i, j] = 3.0 * weight * abs(x[j]) * x[j]
    return out


@nb.njit(cache=True, fastmath=True, nogil=True)
def adagrad_rows(table, acc, rows, grads, lr):
    """Adagrad on table[rows] (rows unique), one accumulator per element."""
    for i in range(rows.shape[0]):
        row = rows[i]
        for j in range(table.shape[1]):
            g = grads[i, j]
            acc[row, j] += g * g
            table[row, j] -= lr * g / (math.sqrt(acc[row, j]) + 1e-10)


@nb.njit(cache=True, fastmath=True, nogil=True)
def row_adagrad_rows(table, acc, rows, grads, lr):
    """PyTorch-BigGraph's row-wise Adagrad: one accumulator per row, acc[row] += mean(g^2)."""
    d = table.shape[1]
    for i in range(rows.shape[0]):
        row = rows[i]
        s = 0.0
        for j in range(d):
            s += grads[i, j] * grads[i, j]
        acc[row] += s / d
        step = lr / (math.sqrt(acc[row]) + 1e-10)
        for j in range(d):
            table[row, j] -= step * grads[i, j]


@nb.njit(cache=True, fastmath=True, nogil=True)
def sgd_rows(table, rows, grads, lr):
    for i in range(rows.shape[0]):
        for j in range(table.shape[1]):
            table[rows[i], j] -= lr * grads[i, j]


def side_grads(model: KGModel, st: TrainState, anchors, rels, targets, negs, side: int, s: TrainSettings):
    """One side (TAIL or HEAD prediction) of a chunk: (loss, [(entity ids, grads)], (relation ids, grads))."""
    q = np.empty((anchors.shape[0], model.dim), np.float32)
    build_queries(model.code, st.ent, st.rel, anchors, rels, side, q)
    cand = st.ent[negs]
    trow = st.ent[targets]
    pos = pair_scores(q, trow, model.kind, np.float32(model.gamma))
    neg = block_scores(model, q, cand)
    loss, gpos, gneg = loss_grads(pos, neg, targets, negs, LOSS_CODE[s.loss], s.margin)
    dq = np.zeros_like(q)
    dcand = np.zeros_like(cand)
    dt = np.zeros_like(trow)
    pair_backward(q, trow, gpos, model.kind, dq, dt)
    block_backward(model, q, cand, gneg, dq, dcand)
    da = np.empty_like(q)
    dr = np.empty((anchors.shape[0], model.rel_dim), np.float32)
    query_backward(model.code, st.ent, st.rel, anchors, rels, side, dq, da, dr)
    return loss, [(anchors, da), (targets, dt), (negs, dcand)], (rels, dr)


def apply_grads(table, acc, parts: list, lr: float, optimizer: str) -> None:
    """Sum the gradients of repeated rows, then update each touched row once."""
    ids = np.concatenate([p[0] for p in parts])
    grads = np.concatenate([p[1] for p in parts])
    rows, inverse = np.unique(ids, return_inverse=True)
    summed = np.zeros((rows.shape[0], table.shape[1]), np.float32)
    scatter_rows(grads, inverse.astype(np.int64), summed)
    rows = rows.astype(np.int64)
    if optimizer == "adagrad":
        adagrad_rows(table, acc, rows, summed, np.float32(lr))
    elif optimizer == "row_adagrad":
        row_adagrad_rows(table, acc, rows, summed, np.float32(lr))
    else:
        sgd_rows(table, rows, summed, np.float32(lr))


def train_chunk(model: KGModel, st: TrainState, h, r, t, negs_tail, negs_head, s: TrainSettings) -> float:
    """One update from a chunk of positives (h, r, t) and its two shared negative sets."""
    loss_t, ent_t, rel_t = side_grads(model, st, h, r, t, negs_tail, TAIL, s)
    loss_h, ent_h, rel_h = side_grads(model, st, t, r, h, negs_head, HEAD, s)
    ent_parts, rel_parts = ent_t + ent_h, [rel_t, rel_h]
    if s.reg_weight > 0 and s.regularizer != "none":
        n3 = s.regularizer == "n3"
        for ids in (h, t):
            ent_parts.append((ids, reg_grads(st.ent[ids], np.float32(s.reg_weight), n3, model.complex)))
        if model.name != "rotate":          # RotatE's relations are phases: nothing to shrink
            rel_parts.append((r, reg_grads(st.rel[r], np.float32(s.reg_weight), n3, model.name == "complex")))
    apply_grads(st.ent, st.ent_acc, ent_parts, s.lr, s.optimizer)
    # PBG keeps relation parameters on elementwise Adagrad beside row-wise entity tables
    apply_grads(st.rel, st.rel_acc, rel_parts, s.lr, "adagrad" if s.optimizer == "row_adagrad" else s.optimizer)
    return float(loss_t + loss_h)


def negative_sampler(num_entities: int, s: TrainSettings, degree: np.ndarray | None) -> Callable:
    """draw(rng) -> the shared negative entity ids of one chunk side (sorted ids of every entity
    when s.negatives == 0: 1-vs-all)."""
    if s.negatives == 0 or s.negatives >= num_entities:
        every = np.arange(num_entities, dtype=np.int64)
        return lambda rng: every
    if s.negative_sampling == "degree":
        if degree is None:
            raise ValueError("degree-weighted negatives need the entity degrees")
        w = np.asarray(degree, np.float64) ** s.degree_exponent
        cdf = np.cumsum(w / w.sum())
        cdf[-1] = 1.0
        return lambda rng: np.searchsorted(cdf, rng.random(s.negatives), side="right").astype(np.int64)
    return lambda rng: rng.integers(0, num_entities, s.negatives, dtype=np.int64)


def train_pass(model: KGModel, st: TrainState, triples: np.ndarray, s: TrainSettings, draw: Callable,
               rng: np.random.Generator) -> float:
    """One shuffled pass over `triples` (order and negatives from `rng`); returns the summed loss."""
    order = rng.permutation(triples.shape[0])
    total = 0.0
    for lo in range(0, order.shape[0], s.batch):
        chunk = triples[order[lo:lo + s.batch]]
        h, r, t = (np.ascontiguousarray(chunk[:, c], np.int64) for c in range(3))
        total += train_chunk(model, st, h, r, t, draw(rng), draw(rng), s)
    return total


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random stream of one epoch of the one-table engine."""
    return np.random.default_rng([seed, epoch])


def train_epoch(model: KGModel, st: TrainState, triples: np.ndarray, s: TrainSettings, draw: Callable) -> float:
    """One pass over the triples (shuffled by (seed, epoch)); returns the mean loss per query."""
    total = train_pass(model, st, triples, s, draw, epoch_rng(s.seed, st.epoch))
    st.epoch += 1
    return total / max(2 * triples.shape[0], 1)


def train(model: KGModel, st: TrainState, triples: np.ndarray, s: TrainSettings, degree: np.ndarray | None = None,
          on_epoch: Callable | None = None) -> TrainState:
    """Epochs st.epoch .. s.epochs-1 (a resumed state continues where it stopped). on_epoch(state,
    info) runs after each epoch (checkpoints, evaluation, progress); info has the loss and seconds."""
    draw = negative_sampler(st.ent.shape[0], s, degree)
    while st.epoch < s.epochs:
        t0 = time.perf_counter()
        loss = train_epoch(model, st, triples, s, draw)
        info = {"epoch": st.epoch, "loss": round(loss, 6), "seconds": round(time.perf_counter() - t0, 3),
                "triples_per_s": round(triples.shape[0] / max(time.perf_counter() - t0, 1e-9), 1)}
        st.history.append(info)
        if on_epoch is not None:
            on_epoch(st, info)
    return st
