"""The CPU training kernel of knowledge-graph models: chunked shared negatives, three losses, Adagrad.

PyTorch-BigGraph's trick (Lerer et al. 2019, "chunked negatives"): instead of drawing negatives
per positive triple, a chunk of B positives shares one draw of N negative entities per side. Each
positive's query (models.build_queries) is scored against all N shared negatives at once, so the
B x N score block is one matrix product (dot models) or one dense distance block (TransE, RotatE)
on contiguous float32 rows, and its gradients are two more products. That is the same idea as the
skip-gram engine's HogBatch: more arithmetic per random row read. `negatives=0` uses every entity
as the negative set (1-vs-all), which is what makes ComplEx strong with the softmax loss.

Losses per query (tail and head prediction both train, one query each per triple):
- softmax: cross-entropy of the positive against the chunk's negatives (a negative equal to the
  true entity is masked out), i.e. sampled 1-vs-all;
- logistic: softplus(-s_pos) + mean_j softplus(s_neg_j);
- margin: sum_j max(0, margin - s_pos + s_neg_j) (margin ranking, as TransE and PBG).
Regularisation (N3, or L2) applies to the positives' h, r, t rows. The optimiser is Adagrad
(elementwise), PBG's row-wise Adagrad (one accumulator per entity row; relations stay elementwise),
or plain SGD. One update per chunk, from the summed gradients of both sides.

With one numba/BLAS thread and a fixed seed a run is bit-for-bit reproducible: every draw comes
from numpy's Generator seeded by (seed, epoch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from embedlake.workers.kg.models import DOT, KGModel

LOSSES = ("softmax", "logistic", "margin")
OPTIMIZERS = ("adagrad", "row_adagrad", "sgd")
REGULARIZERS = ("none", "n3", "l2")


@dataclass(frozen=True)
class TrainSettings:
    """What one training run does besides the model (see kg config for the user-facing fields)."""
    epochs: int = 10
    batch: int = 1000               # positives per chunk
    negatives: int = 1000           # shared negatives per chunk and side; 0 = every entity (1-vs-all)
    negative_sampling: str = "uniform"   # or "degree": p(e) ~ degree(e) ** degree_exponent
    degree_exponent: float = 0.75
    loss: str = "softmax"
    margin: float = 1.0
    optimizer: str = "adagrad"
    lr: float = 0.1
    regularizer: str = "n3"
    reg_weight: float = 0.0
    seed: int = 0


@dataclass
class TrainState:
    """The tables and optimiser state that training mutates in place (a checkpoint saves these)."""
    ent: np.ndarray
    rel: np.ndarray
    ent_acc: np.ndarray
    rel_acc: np.ndarray
    epoch: int = 0
    history: list = field(default_factory=list)


def new_state(ent: np.ndarray, rel: np.ndarray, optimizer: str) -> TrainState:
    """Training state over initial tables: Adagrad accumulators start at zero."""
    ent_acc = np.zeros(ent.shape[0] if optimizer == "row_adagrad" else ent.shape, np.float32)
    return TrainState(ent, rel, ent_acc, np.zeros(rel.shape, np.float32))


# ---- scores --------------------------------------------------------------------------------------
@nb.njit(cache=True, fastmath=True, nogil=True)
def _dist(q, c, kind):
    d = q.shape[0]
    s = 0.0
    if kind == 0:
        for j in range(d):
            s += abs(q[j] - c[j])
    elif kind == 1:
        for j in range(d):
            s += (q[j] - c[j]) ** 2
        s = math.sqrt(s + 1e-9)
    else:
        k = d // 2
        for j in range(k):
            s += math.sqrt((q[j] - c[j]) ** 2 + (q[k + j] - c[k + j]) ** 2 + 1e-9)
    return s


@nb.njit(cache=True, fastmath=True, nogil=True)
def _dist_grad(q, c, kind, w, gq, gc):
    """Add w * d(-dist(q, c))/dq to gq and its negative (the gradient on c) to gc."""
    d = q.shape[0]
    if kind == 0:
        for j in range(d):
            diff = q[j] - c[j]
            g = -w if diff > 0 else (w if diff < 0 else 0.0)
            gq[j] += g
            gc[j] -= g
    elif kind == 1:
        n = _dist(q, c, 1)
        for j in range(d):
            g = -w * (q[j] - c[j]) / n
            gq[j] += g
            gc[j] -= g
    else:
        k = d // 2
        for j in range(k):
            dr, di = q[j] - c[j], q[k + j] - c[k + j]
            m = math.sqrt(dr * dr + di * di + 1e-9)
            gr, gi = -w * dr / m, -w * di / m
            gq[j] += gr
            gq[k + j] += gi
            gc[j] -= gr
            gc[k + j] -= gi


@nb.njit(cache=True, fastmath=True, nogil=True)
def dist_scores(q, cand, kind, gamma):
    """gamma - dist(q_i, cand_j) for every pair: the B x N block of a distance model."""
    out = np.empty((q.shape[0], cand.shape[0]), np.float32)
    for i in range(q.shape[0]):
        for j in range(cand.shape[0]):
            out[i, j] = gamma - _dist(q[i], cand[j], kind)
    return out


@nb.njit(cache=True, fastmath=True, nogil=True)
def dist_backward(q, cand, g, kind, dq, dcand):
    """Accumulate the gradients of sum_ij g_ij * score_ij on the queries and the candidates."""
    for i in range(q.shape[0]):
        for j in range(cand.shape[0]):
            if g[i, j] != 0.0:
                _dist_grad(q[i], cand[j], kind, g[i, j], dq[i], dcand[j])


@nb.njit(cache=True, fastmath=True, nogil=True)
def pair_scores(q, rows, kind, gamma):
    """Score of each query against its own row (the positives)."""
    out = np.empty(q.shape[0], np.float32)
    for i in range(q.shape[0]):
        if kind < 0:
            s = 0.0
            for j in range(q.shape[1]):
                s += q[i, j] * rows[i, j]
            out[i] = s
        else:
            out[i] = gamma - _dist(q[i], rows[i], kind)
    return out


@nb.njit(cache=True, fastmath=True, nogil=True)
def pair_backward(q, rows, g, kind, dq, drows):
    for i in range(q.shape[0]):
        if kind < 0:
            for j in range(q.shape[1]):
                dq[i, j] += g[i] * rows[i, j]
                drows[i, j] += g[i] * q[i, j]
        else:
            _dist_grad(q[i], rows[i], kind, g[i], dq[i], drows[i])


def block_scores(model: KGModel, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Scores of B queries against N candidate rows (B x N): a matrix product or a distance block."""
    if model.kind == DOT:
        return q @ cand.T
    return dist_scores(q, cand, model.kind, np.float32(model.gamma))


def block_backward(model: KGModel, q, cand, g, dq, dcand) -> None:
    """Add the gradients of sum(g * block_scores(q, cand)) to dq and dcand."""
    if model.kind == DOT:
        dq += g @ cand
        dcand += g.T @ q
    else:
        dist_backward(q, cand, g, model.kind, dq, dcand)


# ---- losses --------------------------------------------------------------------------------------
@nb.njit(cache=True, fastmath=True, nogil=True)
def loss_grads(pos, neg, targets, negs, loss, margin):
    """(summed loss, dL/dpos, dL/dneg) of B queries; loss 0 softmax, 1 logistic, 2 margin. A
    negative that is the query's true entity is left out (its gradient is zero)."""
    b, n = neg.shape
    gpos = np.zeros(b, np.float32)
    gneg = np.zeros((b, n), np.float32)
    total = 0.0
    for i in range(b):
        if loss == 0:
            m = pos[i]
            for j in range(n):
                if negs[j] != targets[i] and neg[i, j] > m:
                    m = neg[i, j]
            z = math.exp(pos[i] - m)
            for j in range(n):
                if negs[j] != targets[i]:
                    z += math.exp(neg[i, j] - m)
            for j in range(n):
                if negs[j] != targets[i]:
                    gneg[i, j] = math.exp(neg[i, j] - m) / z
            gpos[i] = math.exp(pos[i] - m) / z - 1.0
            total += m + math.log(z) - pos[i]
        elif loss == 1:
            gpos[i] = -1.0 / (1.0 + math.exp(pos[i]))           # d softplus(-x) = -sigmoid(-x)
            total += math.log1p(math.exp(-abs(pos[i]))) + max(-pos[i], 0.0)
            for j in range(n):
                if negs[j] != targets[i]:
                    x = neg[i, j]
                    gneg[i, j] = 1.0 / (1.0 + math.exp(-x)) / n
                    total += (math.log1p(math.exp(-abs(x))) + max(x, 0.0)) / n
        else:
            for j in range(n):
                if negs[j] != targets[i]:
                    v = margin - pos[i] + neg[i, j]
                    if v > 0:
                        total += v
                        gneg[i, j] = 1.0
                        gpos[i] -= 1.0
    return total, gpos, gneg


LOSS_CODE = {name: i for i, name in enumerate(LOSSES)}
