"""Knowledge-graph scoring models: TransE (L1/L2), DistMult, ComplEx and RotatE.

Every model scores a triple (h, r, t) as a function of a *query* built from one known side and
the relation, against the other side's entity row. Tail prediction builds q from (h, r) and
scores every candidate tail; head prediction builds q from (t, r) and scores every candidate head.
That makes one query reusable against a whole block of candidates, which is what the chunked
shared negatives (kernels.py) and the filtered evaluation (evaluate.py) both need:

- dot family (DistMult, ComplEx): score = q . e, so a block of scores is one matrix product.
  DistMult: q = h*r (tail) or t*r (head). ComplEx stores each row as [re | im]; the score
  Re(<h, r, conj t>) is q . t with q = h*r (complex), and q . h with q = t*conj(r) for heads.
- distance family (TransE, RotatE): score = gamma - dist(q, e). TransE: q = h + r (tail) or
  t - r (head), dist = L1 or L2. RotatE: r = exp(i theta) (one phase per complex coordinate),
  q = h*r (tail) or t*conj(r) (head), dist = sum of complex moduli |q_k - e_k|; since |r_k| = 1,
  |h r - t| = |h - t conj r|, so both sides are the same distance.

The query maps and their gradients are numba kernels over rows; models never import Prefect or Ray.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

MODELS = ("transe", "distmult", "complex", "rotate")
MODEL_CODE = {name: i for i, name in enumerate(MODELS)}
# distance kinds of the distance family (kernels.dist_scores); DOT marks the dot family
DOT, L1, L2, CMOD = -1, 0, 1, 2
TAIL, HEAD = 0, 1


@dataclass(frozen=True)
class KGModel:
    """A scoring model and its sizes. `dim` is the entity row width; ComplEx and RotatE store
    dim/2 complex coordinates as [re | im], so their dim must be even."""
    name: str
    dim: int
    norm: int = 1            # TransE's distance: 1 (L1) or 2 (L2)
    gamma: float = 0.0       # distance models score gamma - dist (matters to logistic / margin losses)

    @property
    def code(self) -> int:
        return MODEL_CODE[self.name]

    @property
    def complex(self) -> bool:
        return self.name in ("complex", "rotate")

    @property
    def rel_dim(self) -> int:
        """Width of a relation row: RotatE has one phase per complex coordinate."""
        return self.dim // 2 if self.name == "rotate" else self.dim

    @property
    def kind(self) -> int:
        """How a query meets a candidate row: DOT, or the distance L1 / L2 / CMOD."""
        if self.name in ("distmult", "complex"):
            return DOT
        if self.name == "rotate":
            return CMOD
        return L1 if self.norm == 1 else L2


def check_model(name: str, dim: int, norm: int = 1) -> None:
    """ValueError with one line when the model, its dim or norm cannot be built."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    if name in ("complex", "rotate") and dim % 2:
        raise ValueError(f"{name} stores [re | im] halves: dim must be even, got {dim}")
    if norm not in (1, 2):
        raise ValueError(f"TransE norm must be 1 or 2, got {norm}")


def init_tables(model: KGModel, num_entities: int, num_relations: int, seed: int,
                init_scale: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Entity and relation tables (float32, C order), deterministic by seed.

    Dot models start near zero (N(0, init_scale), as ComplEx-N3 does: Adagrad grows them); distance
    models start at N(0, 1/sqrt(dim)) rows so distances are O(1); RotatE phases are U(-pi, pi)."""
    rng = np.random.default_rng(seed)
    if model.kind == DOT:
        ent = rng.normal(0.0, init_scale, (num_entities, model.dim))
        rel = rng.normal(0.0, init_scale, (num_relations, model.rel_dim))
    else:
        ent = rng.normal(0.0, 1.0 / np.sqrt(model.dim), (num_entities, model.dim))
        rel = (rng.uniform(-np.pi, np.pi, (num_relations, model.rel_dim)) if model.name == "rotate"
               else rng.normal(0.0, 1.0 / np.sqrt(model.dim), (num_relations, model.rel_dim)))
    return np.ascontiguousarray(ent, np.float32), np.ascontiguousarray(rel, np.float32)


# ---- queries ---------------------------------------------------------------------------------------
@nb.njit(cache=True, fastmath=True, nogil=True)
def _complex_factor(code, rrow, side, c_re, c_im):
    """The complex factor c that multiplies the anchor: r (tail) or conj(r) (head); RotatE's
    r = exp(i theta)."""
    k = c_re.shape[0]
    sign = 1.0 if side == TAIL else -1.0
    for j in range(k):
        if code == 3:
            c_re[j] = np.cos(rrow[j])
            c_im[j] = sign * np.sin(rrow[j])
        else:
            c_re[j] = rrow[j]
            c_im[j] = sign * rrow[k + j]


@nb.njit(cache=True, fastmath=True, nogil=True)
def build_queries(code, ent, rel, anchors, rels, side, out):
    """out[i] = the query of (anchors[i], rels[i]) for predicting the `side` (TAIL / HEAD) entity."""
    d = ent.shape[1]
    k = d // 2
    c_re = np.empty(max(k, 1), np.float32)
    c_im = np.empty(max(k, 1), np.float32)
    for i in range(anchors.shape[0]):
        a = ent[anchors[i]]
        r = rel[rels[i]]
        q = out[i]
        if code == 0:                       # TransE
            s = 1.0 if side == TAIL else -1.0
            for j in range(d):
                q[j] = a[j] + s * r[j]
        elif code == 1:                     # DistMult
            for j in range(d):
                q[j] = a[j] * r[j]
        else:                               # ComplEx / RotatE: q = a * c
            _complex_factor(code, r, side, c_re, c_im)
            for j in range(k):
                q[j] = a[j] * c_re[j] - a[k + j] * c_im[j]
                q[k + j] = a[j] * c_im[j] + a[k + j] * c_re[j]


@nb.njit(cache=True, fastmath=True, nogil=True)
def query_backward(code, ent, rel, anchors, rels, side, dq, d_anchor, d_rel):
    """Gradients of the queries' loss (dq, one row per query) on the anchor rows (d_anchor[i]) and
    the relation rows (d_rel[i]), by the chain rule through build_queries."""
    d = ent.shape[1]
    k = d // 2
    c_re = np.empty(max(k, 1), np.float32)
    c_im = np.empty(max(k, 1), np.float32)
    for i in range(anchors.shape[0]):
        a = ent[anchors[i]]
        r = rel[rels[i]]
        g = dq[i]
        if code == 0:
            s = 1.0 if side == TAIL else -1.0
            for j in range(d):
                d_anchor[i, j] = g[j]
                d_rel[i, j] = s * g[j]
        elif code == 1:
            for j in range(d):
                d_anchor[i, j] = g[j] * r[j]
                d_rel[i, j] = g[j] * a[j]
        else:
            _complex_factor(code, r, side, c_re, c_im)
            sign = 1.0 if side == TAIL else -1.0
            for j in range(k):
                g_re, g_im = g[j], g[k + j]
                d_anchor[i, j] = g_re * c_re[j] + g_im * c_im[j]
                d_anchor[i, k + j] = -g_re * c_im[j] + g_im * c_re[j]
                dc_re = g_re * a[j] + g_im * a[k + j]
                dc_im = -g_re * a[k + j] + g_im * a[j]
                if code == 2:               # c = (r_re, sign * r_im)
                    d_rel[i, j] = dc_re
                    d_rel[i, k + j] = sign * dc_im
                else:                       # c = (cos t, sign * sin t)
                    d_rel[i, j] = -dc_re * np.sin(r[j]) + sign * dc_im * np.cos(r[j])
