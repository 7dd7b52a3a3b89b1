"""Learned compositional tables: K << n shared rows, each id composed of R of them (issue 8).

Three codecs, all trained directly by the compositional skip-gram kernel (skipgram_compose.py)
on walks of the source graph, never fitted on the full table:

    compose  structure codes. A FastRP sketch of the graph (training-free, O(edges), `sketch_dim`
             columns) is residual-quantised into R levels of K/R centroids (Faiss k-means on a
             sample; level l quantises what levels < l left over), so an id's code is a
             coarse-to-fine description of where it sits in the graph: nodes of one community
             share their first rows and differ in the later ones. v(i) = sum_l T[code_l(i)] / sqrt(R).
             This is the position-based hash embedding idea (Kalantzi et al. 2021, PosHashEmb) with
             residual-quantisation codes instead of a multilevel METIS partition.
    qr       quotient-remainder compositional embedding (Shi et al. 2020): v(i) = Q[i // m] * R[i % m]
             (elementwise), m chosen so both tables together have at most K rows.
    unified  one shared multiplexed table (Unified Embedding, Coleman et al. 2023): several
             features -- here skip-gram's input side, its output side and, when given, node types --
             look up R rows each in ONE K-row table through their own hash functions.

    The hashing trick itself (one hash, one row) is the `hash` codec (codec_hash.py).

Stored per row: the R level-local row indices as little-endian uint8 / uint16 / uint32 (the
smallest that fits a level) in the fixed_size_binary `code` column; the K x d table goes to the
codebook sibling table. `params["offsets"]` turns level-local indices into table rows.
Parameters: K x d floats instead of n x d (codes are integers, R bytes per id for 256-row levels).
"""
from __future__ import annotations

import math

import numpy as np

from embedlake.config import TrainConfig, WalkConfig
from embedlake.workers.compress.hashing import hash_buckets
from embedlake.workers.compress.sample import sample_rows

CODES = {"compose": "structure", "qr": "qr", "unified": "hash"}
DEFAULT_LEVELS = {"compose": 5, "qr": 2, "unified": 2}


def plan(codec: str, n: int, dim: int, ratio: float, levels: int = 0) -> dict:
    """Table layout for n ids at `ratio` x fewer parameters than the full n x dim table.

    Returns {"levels", "level_rows" [R], "offsets" [R], "table_rows" K, "combine"}."""
    K = max(2, int(n // ratio))
    if codec == "qr":
        m = K - 1
        while m > 1 and m + math.ceil(n / m) > K:
            m -= 1
        m = max(m, math.ceil(math.sqrt(n)))   # K below 2 sqrt(n): the smallest QR table there is
        q = math.ceil(n / m)
        # lr_scale: at word2vec's lr 0.025 the product diverges on BlogCatalog (each quotient row is
        # a factor of n/q ids' vectors); 0.2 x is stable there (docs/compression.md)
        return {"levels": 2, "level_rows": [q, m], "offsets": [0, q], "table_rows": q + m, "combine": "product",
                "lr_scale": 0.2}
    R = int(levels or DEFAULT_LEVELS[codec])
    if codec == "compose":
        R = max(1, min(R, K // 2))          # tiny tables: at least 2 rows per level
        per = max(2, K // R)
        if 256 < per <= 320:        # one byte per level code instead of two, for <= 20 % of the rows
            per = 256
        return {"levels": R, "level_rows": [per] * R, "offsets": [l * per for l in range(R)],
                "table_rows": per * R, "combine": "sum"}
    if codec == "unified":
        return {"levels": R, "level_rows": [K] * R, "offsets": [0] * R, "table_rows": K, "combine": "sum"}
    raise ValueError(f"not a compositional codec: {codec!r}")


def code_width(level_rows) -> int:
    """Bytes per level-local index (1, 2 or 4)."""
    top = max(level_rows)
    return 1 if top <= 1 << 8 else 2 if top <= 1 << 16 else 4


# ----------------------------------------------------------------------------- code assignment

def qr_codes(n: int, lp: dict, first: int = 0) -> np.ndarray:
    """Level-local (quotient, remainder) of ids first..first+n-1."""
    i = np.arange(first, first + n, dtype=np.int64)
    m = lp["level_rows"][1]
    return np.stack([i // m, i % m], 1).astype(np.int32)


def hash_codes(n: int, lp: dict, seed: int, feature: int = 0, types: np.ndarray | None = None,
               first: int = 0) -> np.ndarray:
    """Level-local rows of ids first..: probe l of feature f (and node type t) has its own hash."""
    ids = np.arange(first, first + n, dtype=np.int64)
    return hash_codes_of(ids, lp, seed, feature, None if types is None else np.asarray(types)[first:first + n])


def hash_codes_of(ids: np.ndarray, lp: dict, seed: int, feature: int = 0, types: np.ndarray | None = None
                  ) -> np.ndarray:
    """Level-local rows of any node ids (`types`: theirs, or None): a function of the id alone, so
    a graph shard computes the codes of the nodes it sees (workers/compress/sharded_table.py)."""
    ids = np.asarray(ids, np.int64)
    out = np.empty((len(ids), lp["levels"]), np.int32)
    for l in range(lp["levels"]):
        base = seed * 1_000_003 + feature * 7919 + l * 104_729
        if types is None:
            out[:, l] = hash_buckets(ids, lp["level_rows"][l], base)
        else:
            t = np.asarray(types)
            for tv in np.unique(t):
                sel = t == tv
                out[sel, l] = hash_buckets(ids[sel], lp["level_rows"][l], base + int(tv) * 15_485_863)
    return out


def structure_codes(indptr, indices, weights, lp: dict, *, sketch_dim: int = 256, seed: int = 0,
                    train_sample: int = 100_000, threads: int = 0, niter: int = 20,
                    iteration_weights=(0.0, 0.0, 1.0, 6.67)) -> tuple[np.ndarray, dict]:
    """Level-local residual-quantisation codes of the graph's FastRP sketch. Returns (codes, info)."""
    import faiss

    from embedlake.workers.fastrp.kernels import fastrp
    n = len(indptr) - 1
    X = np.ascontiguousarray(fastrp(indptr, indices, weights, dim=sketch_dim, seed=seed, threads=threads,
                                    iteration_weights=iteration_weights), dtype=np.float32)
    nrm = np.linalg.norm(X, axis=1, keepdims=True)
    X /= np.where(nrm > 0, nrm, 1.0)
    if threads > 0:
        faiss.omp_set_num_threads(int(threads))
    codes = np.empty((n, lp["levels"]), np.int32)
    err = []
    rows = sample_rows(n, train_sample, seed)
    for l, k in enumerate(lp["level_rows"]):
        k_eff = min(k, len(rows))
        km = faiss.Kmeans(X.shape[1], k_eff, niter=niter, seed=seed + l, spherical=False)
        km.train(np.ascontiguousarray(X[rows]))
        _, a = km.index.search(X, 1)
        a = a[:, 0].astype(np.int32)
        codes[:, l] = a
        X -= km.centroids[a]
        err.append(float(np.mean(np.einsum("ij,ij->i", X, X))))
    return codes, {"sketch_dim": sketch_dim, "residual_mse": [round(e, 5) for e in err]}


def table_rows_of(codes: np.ndarray, lp: dict) -> np.ndarray:
    """Level-local indices -> rows of the one K-row table."""
    return (np.asarray(codes, np.int64) + np.asarray(lp["offsets"], np.int64)).astype(np.int32)


# ----------------------------------------------------------------------------- training

def assign_codes(codec: str, lp: dict, n: int, *, csr: tuple | None = None, seed: int = 0, sketch_dim: int = 256,
                 train_sample: int = 100_000, types=None, threads: int = 0) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Codes of ids 0..n-1 before training: (level-local codes [n, R], output-side table rows or
    None (= the input side's), info). compose: structure codes of `csr` = (indptr, indices,
    weights, ...) -- a graph's CSR or a vocabulary's co-occurrence graph (workers/corpus/cooccur.py)."""
    info: dict = {"codes": CODES[codec]}
    code_out = None
    if codec == "compose":
        indptr, indices, weights = csr[0], csr[1], csr[2]
        codes, extra = structure_codes(indptr, indices, weights, lp, sketch_dim=sketch_dim, seed=seed,
                                       train_sample=train_sample, threads=threads)
        info.update(extra)
    elif codec == "qr":
        codes = qr_codes(n, lp)
    else:
        codes = hash_codes(n, lp, seed, feature=0, types=types)
        code_out = table_rows_of(hash_codes(n, lp, seed, feature=1, types=types), lp)
    return codes, code_out, info


def composed_kwargs(codec: str, lp: dict, codes: np.ndarray, code_out, train: TrainConfig, threads: int = 0
                    ) -> tuple[dict, float, float]:
    """train_composed's keyword arguments for a table layout + train settings, and the (lr, min_lr)
    scaled by the layout's lr_scale (QR's product needs a smaller step)."""
    kw = dict(code_in=table_rows_of(codes, lp), rows_in=lp["table_rows"], code_out=code_out,
              shared_table=(codec == "unified"), combine=lp["combine"], dim=train.dim, window=train.window,
              negatives=train.negatives, ns_exponent=train.ns_exponent, sample=train.sample,
              threads=threads)
    scale = lp.get("lr_scale", 1.0)
    return kw, train.lr * scale, train.min_lr * scale


def train_compositional_tokens(tokens, offsets, n: int, codec: str, lp: dict, train: TrainConfig,
                               codes: np.ndarray, code_out=None, *, counts=None, threads: int = 0, progress=None
                               ) -> tuple[dict, dict]:
    """The compositional table trained on given sentences of ids (a tokenised corpus) instead of
    walks: (state {"table": K x d, "codes": n x R level-local}, training stats). counts: the ids'
    frequencies (noise distribution and subsampling; None = counted from `tokens`)."""
    from embedlake.workers.train.compose import train_composed
    kw, lr, min_lr = composed_kwargs(codec, lp, codes, code_out, train, threads)
    out = train_composed(tokens, offsets, n, epochs=train.epochs, lr=lr, min_lr=min_lr, seed=train.seed,
                         counts=counts, progress=progress, **kw)
    return {"table": out["T_in"], "codes": codes}, out["stats"]


def train_compositional(csr: tuple, codec: str, lp: dict, walk: WalkConfig, train: TrainConfig,
                        method: str = "deepwalk",
                        *, seed: int = 0, sketch_dim: int = 256, train_sample: int = 100_000, types=None,
                        threads: int = 0, progress=None) -> tuple[dict, dict]:
    """Walk the graph like the source run did and train the compositional table.

    csr = (indptr, indices, weights, directed). Returns (state {"table": K x d, "codes": n x R
    level-local int32}, info {codes: ..., stats}). progress: train_composed's (done, total, loss) callback.
    """
    from embedlake.workers.train.compose import train_composed
    from embedlake.workers.graph.walks import random_walks, should_stream, walks_to_sentences
    indptr, indices, weights, _ = csr
    n = len(indptr) - 1
    codes, code_out, info = assign_codes(codec, lp, n, csr=csr, seed=seed, sketch_dim=sketch_dim,
                                         train_sample=train_sample, types=types, threads=threads)
    kw, lr, min_lr = composed_kwargs(codec, lp, codes, code_out, train, threads)
    mode = "node2vec" if method == "node2vec" else "deepwalk"
    starts = np.arange(n, dtype=np.int64)

    def walk_tokens(count: int, offset: int = 0):
        w = random_walks(indptr, indices, weights, starts, count, walk.length, walk.seed, p=walk.p,
                         q=walk.q, mode=mode, threads=threads, walk_offset=offset)
        return walks_to_sentences(w)
    if not should_stream(n, walk):
        tokens, offsets = walk_tokens(walk.walks_per_node)
        out = train_composed(tokens, offsets, n, epochs=train.epochs, lr=lr, min_lr=min_lr, seed=train.seed,
                             progress=progress, **kw)
    else:
        # walk.stream (auto above walk.stream_threshold_mb): one walk per node at a time, the
        # learning rate continued piecewise across rounds -- the schedule of the streamed full-table
        # path (workers/train/stages.train_round), so only one round of walks is ever held
        rpe = walk.walks_per_node
        rounds = rpe * train.epochs
        out, counts, stats = None, None, []
        for r in range(rounds):
            tokens, offsets = walk_tokens(1, r % rpe)
            if counts is None:      # noise from the first round's visits (stationary ~ degree)
                counts = np.bincount(tokens[tokens >= 0], minlength=n).astype(np.int64)
            hi = lr - (lr - min_lr) * r / rounds
            lo = lr - (lr - min_lr) * (r + 1) / rounds
            done0 = r * len(tokens)
            cb = (lambda d, t, loss, done0=done0: progress(done0 + d, t * rounds, loss)) if progress else None
            out = train_composed(tokens, offsets, n, epochs=1, lr=hi, min_lr=lo, seed=train.seed + 7919 * r,
                                 counts=counts, progress=cb,
                                 init=None if out is None else {"T_in": out["T_in"], "T_out": out["T_out"]}, **kw)
            stats.append(out["stats"])
        out["stats"] = {**stats[-1], "rounds": rounds, "tokens": sum(s["tokens"] for s in stats),
                        "pairs": sum(s["pairs"] for s in stats), "seconds": sum(s["seconds"] for s in stats),
                        "loss_first": stats[0]["loss_first"], "streamed": True}
        out["stats"]["tokens_per_s"] = out["stats"]["tokens"] / max(out["stats"]["seconds"], 1e-9)
    info["stats"] = out["stats"]
    return {"table": out["T_in"], "codes": codes}, info


# ----------------------------------------------------------------------------- rows <-> columns

def encode_codes(codes: np.ndarray, lp: dict) -> dict[str, np.ndarray]:
    """Level-local indices -> the `code` column bytes (little-endian, code_width bytes each)."""
    w = code_width(lp["level_rows"])
    dt = {1: "<u1", 2: "<u2", 4: "<u4"}[w]
    c = np.ascontiguousarray(np.asarray(codes).astype(dt))
    return {"code": c.view(np.uint8).reshape(c.shape[0], -1)}


def decode_codes(cols: dict, lp: dict) -> np.ndarray:
    w = code_width(lp["level_rows"])
    dt = {1: "<u1", 2: "<u2", 4: "<u4"}[w]
    raw = np.ascontiguousarray(cols["code"])
    return raw.view(dt).reshape(raw.shape[0], lp["levels"]).astype(np.int32)


def decode_compositional(cols: dict, state: dict, lp: dict) -> np.ndarray:
    """float32 [n, d]: the composed vectors of the rows in `cols`."""
    from embedlake.workers.train.compose import materialise
    rows = table_rows_of(decode_codes(cols, lp), lp)
    return materialise(state["table"], rows, None, lp["combine"])


def bytes_per_vector(lp: dict, rows: int, dim: int) -> int:
    """Code bytes + this row's share of the K x d float32 table."""
    share = -(-lp["table_rows"] * dim * 4 // rows) if rows else 0
    return lp["levels"] * code_width(lp["level_rows"]) + share
