"""Compressed embedding tables: one API over every codec, decoding and search.

    state = fit("pq", sample, params)              # codebooks etc. (empty for untrained codecs)
    cols = encode("pq", X_part, state, params)     # per-row columns: code (uint8 [n, B]), scale, bias
    table = CompressedTable("pq", params, dim, cols, state, ids)
    X_hat = table.decode(); idx, score = table.search(Q, k=10)

Codecs (parameters come from `CompressConfig` through `codec_params`):
    fp16     2 bytes / element
    int8     row-wise, 1 byte / element + per-row scale and bias (FBGEMM layout)
    int4     row-wise, 1/2 byte / element + per-row scale and bias
    binary   1 bit / element (sign) + a per-row scale; a coarse search tier, re-scored against int8
    pq, opq  M sub-codes of nbits (Faiss k-means; OPQ adds a rotation: parametric eigenvalue
             allocation by default, or Faiss's iterative OPQMatrix); codebooks trained on
             a sample; rows are L2-normalised first when `normalize` (the default: embeddings are
             compared by cosine, and the norm would otherwise cost codebook capacity)
    lowrank  PCA to `rank` coordinates (float32 or float16)
    hash     hashing trick: a K-row table trained by skip-gram on hashed walk tokens (K << n);
             rows keep a 4-byte bucket index (codec_hash.py)
    compose  learned compositional table: R levels of shared rows, codes from residual-quantised
             graph structure (FastRP sketch), trained by skip-gram (codec_compose.py)
    qr       quotient-remainder compositional table (Q[i // m] * R[i % m]), trained by skip-gram
    unified  one multiplexed K-row table shared by skip-gram's input and output sides (and node
             types), R hashed rows per id (Unified Embedding), trained by skip-gram

Encoding is row-local given the trained state, so row partitions encode independently (one Ray
task each, see tasks/compress.py) and the concatenation equals encoding the whole table.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from embedlake.config import CompressConfig, EvalConfig
from embedlake.workers.compress import compose as cc
from embedlake.workers.compress import hashing as hs
from embedlake.workers.compress import lowrank as lr
from embedlake.workers.compress import pq as pq
from embedlake.workers.compress import scalar as sc
from embedlake.workers.compress.sample import sample_rows

CODECS = ("fp16", "int8", "int4", "binary", "pq", "opq", "lowrank", "hash", "compose", "qr", "unified")
TRAINED = ("pq", "opq", "lowrank")         # state fitted on a sample of the source table
COMPOSED = ("compose", "qr", "unified")    # compositional tables (codec_compose.py)
GRAPH_TRAINED = ("hash",) + COMPOSED       # state trained from the source run's graph (skip-gram)


def check_codec(name: str) -> str:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}: choose from {', '.join(CODECS)}")
    return name


def codec_params(name: str, compress: CompressConfig | None = None) -> dict:
    """The parameters of one codec, picked from the `compress` config section (defaults when None).

    The result is a plain dict on purpose: it is data, not config. It is stored in the table's
    manifest (extra["params"]) and read back by whoever decodes the table, and callers complete it
    with what the data decides (hash `rows` / `buckets`, a compositional codec's layout)."""
    c = compress if compress is not None else CompressConfig()
    check_codec(name)
    if name in ("int8", "int4"):
        return {"bits": 8 if name == "int8" else 4, "scale_dtype": c.scale_dtype}
    if name == "binary":
        return {"scale_dtype": c.scale_dtype}
    if name in ("pq", "opq"):
        p = {"m": c.pq_m, "nbits": c.pq_bits, "normalize": c.normalize, "train_sample": c.train_sample,
             "seed": c.seed}
        if name == "opq":
            p["method"] = c.opq_method
            if p["method"] == "faiss":
                p["niter"] = c.opq_iter
        return p
    if name == "lowrank":
        return {"rank": c.lowrank_dim, "dtype": c.lowrank_dtype, "train_sample": c.train_sample}
    if name == "hash":      # `rows` (the table's row count) is filled in by whoever knows it
        return {"buckets": c.hash_buckets, "seed": c.seed, "rows": 0}
    if name in COMPOSED:    # the layout (`plan`) is filled in by whoever knows rows and dim
        p = {"ratio": c.compose_ratio, "levels": c.compose_levels, "seed": c.seed, "rows": 0}
        if name == "compose":
            p.update(sketch_dim=c.compose_sketch_dim, train_sample=c.train_sample)
        return p
    return {}


def plan_composed(name: str, params: dict, rows: int, dim: int) -> dict:
    """`params` of a compositional codec completed with its table layout for `rows` x `dim`."""
    lp = cc.plan(name, rows, dim, params["ratio"], params.get("levels", 0))
    return {**params, **lp, "rows": rows}


def bytes_per_vector(name: str, params: dict, dim: int) -> int:
    """Stored bytes per row: code bytes + per-row scale / bias (codebooks are per table, not counted)."""
    sb = np.dtype(params.get("scale_dtype", "float16")).itemsize
    if name == "fp16":
        return 2 * dim
    if name == "int8":
        return dim + 2 * sb
    if name == "int4":
        return (dim + 1) // 2 + 2 * sb
    if name == "binary":
        return (dim + 7) // 8 + sb
    if name in ("pq", "opq"):
        return (params["m"] * params["nbits"] + 7) // 8
    if name == "lowrank":
        return params["rank"] * np.dtype(params["dtype"]).itemsize
    if name == "hash":      # the bucket index + this row's share of the K x d table
        return 4 + (-(-params["buckets"] * dim * 4 // params["rows"]) if params.get("rows") else 0)
    if name in COMPOSED:    # level codes + this row's share of the K x d table
        return cc.bytes_per_vector(params, params["rows"], dim)
    raise ValueError(name)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    nrm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(nrm > 0, nrm, 1.0)


def fit(name: str, X_sample: np.ndarray, params: dict, threads: int = 0) -> dict[str, np.ndarray]:
    """Train the codec's state on a sample (codebooks, rotation, PCA basis); {} for untrained codecs."""
    check_codec(name)
    if name in ("pq", "opq"):
        Xs = _unit(X_sample) if params.get("normalize", True) else np.asarray(X_sample, np.float32)
        if name == "pq":
            return pq.fit_pq(Xs, params["m"], params["nbits"], params.get("seed", 0), threads)
        return pq.fit_opq(Xs, params["m"], params["nbits"], params.get("seed", 0), threads, params.get("niter", 20),
                         params.get("method", "faiss"))
    if name == "lowrank":
        return lr.fit_lowrank(X_sample, params["rank"])
    if name in GRAPH_TRAINED:
        raise ValueError(f"{name}: the table is trained from the graph by skip-gram, not fitted on rows")
    return {}


def encode(name: str, X: np.ndarray, state: dict, params: dict, threads: int = 0, row_offset: int = 0
           ) -> dict[str, np.ndarray]:
    """Per-row columns for rows X: always `code` (uint8 [n, B]), plus `scale` / `bias` by codec.

    `row_offset`: position of X's first row in the table (hash: the bucket; compositional codecs:
    the trained codes state["codes"] of those rows; X's values are not used by either)."""
    check_codec(name)
    if name == "hash":
        return hs.encode_hash(row_offset, X.shape[0], params)
    if name in COMPOSED:
        return cc.encode_codes(np.asarray(state["codes"])[row_offset:row_offset + X.shape[0]], params)
    if name == "fp16":
        return sc.encode_fp16(X)
    if name in ("int8", "int4"):
        return sc.encode_rowwise(X, params["bits"], params["scale_dtype"])
    if name == "binary":
        return sc.encode_binary(X, params["scale_dtype"])
    if name in ("pq", "opq"):
        return pq.encode_pq(_unit(X) if params.get("normalize", True) else X, state, threads)
    return lr.encode_lowrank(X, state, params["dtype"])


def decode(name: str, cols: dict, state: dict, params: dict, dim: int) -> np.ndarray:
    """float32 [n, dim] reconstruction (unit rows for pq/opq with `normalize`)."""
    if name == "fp16":
        return sc.decode_fp16(cols, dim)
    if name in ("int8", "int4"):
        return sc.decode_rowwise(cols, params["bits"], dim)
    if name == "binary":
        return sc.decode_binary(cols, dim)
    if name in ("pq", "opq"):
        return pq.decode_pq(cols, state)
    if name == "hash":
        return hs.decode_hash(cols, state)
    if name in COMPOSED:
        return cc.decode_compositional(cols, state, params)
    return lr.decode_lowrank(cols, state, params["dtype"])


def concat_columns(parts: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


@dataclass
class CompressedTable:
    """A compressed table in memory: decode rows, score and search queries against it."""
    codec: str
    params: dict
    dim: int
    cols: dict
    state: dict = field(default_factory=dict)
    ids: np.ndarray | None = None
    _decoded: np.ndarray | None = field(default=None, repr=False)
    _pq_idx: np.ndarray | None = field(default=None, repr=False)
    _pq_norm: np.ndarray | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return int(self.cols["code"].shape[0])

    @property
    def bytes_per_vector(self) -> int:
        return bytes_per_vector(self.codec, self.params, self.dim)

    @property
    def ratio(self) -> float:
        return 4.0 * self.dim / self.bytes_per_vector

    def decode(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Reconstructed float32 vectors of all rows, or of the given row indices."""
        if rows is None:
            if self._decoded is None:
                self._decoded = decode(self.codec, self.cols, self.state, self.params, self.dim)
            return self._decoded
        rows = np.asarray(rows)
        sub = {k: v[rows] for k, v in self.cols.items()}
        return decode(self.codec, sub, self.state, self.params, self.dim)

    def scores(self, Q: np.ndarray, similarity: str = "cosine") -> np.ndarray:
        """(nq, n) float32 scores of exact queries against every row, higher = closer.

        pq/opq: asymmetric distance (query exact, rows as codes; for cosine divided by the norm
        of each row's reconstruction, computed from its codes); binary: minus the Hamming
        distance between sign bits (the coarse tier); others: against the decoded rows.
        """
        Q = np.atleast_2d(np.asarray(Q, dtype=np.float32))
        if similarity == "cosine":
            Q = _unit(Q)
        elif similarity != "dot":
            raise ValueError(f"unknown similarity {similarity!r} (cosine, dot)")
        if self.codec == "binary":
            qb = np.packbits(Q > 0, axis=1, bitorder="little")
            return -sc.hamming_distances(qb, self.cols["code"]).astype(np.float32)
        if self.codec in ("pq", "opq"):
            C = self.state["centroids"]
            if self._pq_idx is None:
                self._pq_idx = pq.sub_codes(self.cols["code"], C.shape[0], C.shape[1].bit_length() - 1)
            S = pq.adc_scores(pq.lookup_tables(Q, self.state), self._pq_idx)
            if similarity == "cosine":
                # cosine to the reconstruction: its norm follows from the codes (no extra bytes);
                # on BlogCatalog DeepWalk this lifts PQ16x8 recall@10 from .43 (inner product) to .52
                if self._pq_norm is None:
                    self._pq_norm = pq.reconstruction_norms(self._pq_idx, self.state)
                S /= np.where(self._pq_norm > 0, self._pq_norm, 1.0)
            return S
        D = self.decode()
        if similarity == "cosine":
            if self._pq_norm is None:           # reused as the decoded rows' norms
                self._pq_norm = np.linalg.norm(D, axis=1)
            return (Q @ D.T) / np.where(self._pq_norm > 0, self._pq_norm, 1.0)
        return Q @ D.T

    def rerank_scores(self, Q: np.ndarray, rerank: "CompressedTable", candidates: int,
                      similarity: str = "cosine") -> np.ndarray:
        """Coarse scores from this table, then the best `candidates` per query re-scored against
        `rerank` (e.g. binary -> int8); every other row gets -inf. (nq, n)."""
        S = self.scores(Q, similarity)
        c = min(candidates, S.shape[1])
        cand = np.argpartition(-S, c - 1, axis=1)[:, :c]
        out = np.full_like(S, -np.inf)
        Qn = _unit(Q) if similarity == "cosine" else np.asarray(Q, np.float32)
        for a in range(S.shape[0]):
            V = rerank.decode(cand[a])
            s = V @ Qn[a]
            if similarity == "cosine":
                s = s / np.maximum(np.linalg.norm(V, axis=1), 1e-30)
            out[a, cand[a]] = s
        return out

    def search(self, Q: np.ndarray, k: int = 10, *, similarity: str = "cosine", rerank: "CompressedTable | None" = None,
               candidates: int = 100, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query, best first: (row indices int64 [nq, k], scores [nq, k]).

        With `rerank`, the `candidates` best rows of this table are re-scored against `rerank`
        (the binary tier's intended use: Hamming candidates, int8 re-scoring).
        """
        Q = np.atleast_2d(np.asarray(Q, dtype=np.float32))
        idx_out, sc_out = [], []
        for i in range(0, Q.shape[0], block):
            q = Q[i:i + block]
            S = self.rerank_scores(q, rerank, candidates, similarity) if rerank is not None else self.scores(q, similarity)
            kk = min(k, S.shape[1])
            part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
            ps = np.take_along_axis(S, part, 1)
            order = np.argsort(-ps, axis=1, kind="stable")
            idx_out.append(np.take_along_axis(part, order, 1))
            sc_out.append(np.take_along_axis(ps, order, 1))
        return np.concatenate(idx_out).astype(np.int64), np.concatenate(sc_out)

    def score_fn(self, X_queries: np.ndarray, rerank: "CompressedTable | None" = None, candidates: int = 100):
        """ids -> scores of exact query rows X_queries[ids] (what evaluate.knn_recall takes)."""
        if rerank is None:
            return lambda ids: self.scores(X_queries[ids])
        return lambda ids: self.rerank_scores(X_queries[ids], rerank, candidates)


def build(name: str, X: np.ndarray, params: dict | None = None, ids: np.ndarray | None = None,
          threads: int = 0) -> tuple[CompressedTable, dict]:
    """In-memory build of one codec (fit on a sample + encode all rows); returns (table, timings)."""
    params = params if params is not None else codec_params(name)
    t0 = time.perf_counter()
    sample = sample_rows(X.shape[0], params.get("train_sample", 0), params.get("seed", 0))
    state = fit(name, X[sample] if name in TRAINED else X[:0], params, threads)
    t1 = time.perf_counter()
    cols = encode(name, X, state, params, threads)
    t2 = time.perf_counter()
    return CompressedTable(name, params, X.shape[1], cols, state, ids), {"fit_s": t1 - t0, "encode_s": t2 - t1}


def quality(table: CompressedTable, X: np.ndarray, *, k: int = 10, queries: int = 1000, seed: int = 0,
            labels=None, eval_cfg: EvalConfig | None = None, baseline: dict | None = None,
            rerank: CompressedTable | None = None, candidates: int = 100) -> dict:
    """Measured quality of a compressed table against the full one.

    recall@k: exact cosine top-k of X vs top-k searched in the table (exact queries, the query
    itself excluded), as Faiss measures IndexPQ. Node classification (when `labels` =
    (node_idx, label_idx)) runs on the decoded rows with the same protocol and splits as the
    `baseline` result it is compared to, with eval_cfg's ratios, repeats and seed (its defaults
    when None).
    """
    from embedlake.workers.evaluate.geometry import knn_recall
    from embedlake.workers.evaluate.classify import node_classification
    out: dict = {"bytes_per_vector": table.bytes_per_vector, "ratio": round(table.ratio, 4)}
    t0 = time.perf_counter()
    D = table._decoded = decode(table.codec, table.cols, table.state, table.params, table.dim)
    out["decode_s"] = round(time.perf_counter() - t0, 4)
    out["rmse"] = float(np.sqrt(np.mean((D - X) ** 2))) if table.codec not in ("pq", "opq") or \
        not table.params.get("normalize", True) else float(np.sqrt(np.mean((D - _unit(X)) ** 2)))
    out[f"recall_at_{k}"] = round(knn_recall(X, table.score_fn(X), k=k, queries=queries, seed=seed), 4)
    if rerank is not None:
        out[f"recall_at_{k}_rerank"] = round(knn_recall(X, table.score_fn(X, rerank, candidates), k=k,
                                                        queries=queries, seed=seed), 4)
        out["rerank"] = {"codec": rerank.codec, "candidates": candidates}
    if labels is not None:
        ec = eval_cfg if eval_cfg is not None else EvalConfig()
        nc = node_classification(D, labels[0], labels[1], ratios=tuple(ec.train_ratios), repeats=ec.repeats,
                                 seed=ec.seed)
        out["node_classification"] = nc
        if baseline:
            out["micro_f1_change"] = {r: round(nc["micro_f1"][r] - baseline["micro_f1"][r], 5) for r in nc["micro_f1"]}
            out["macro_f1_change"] = {r: round(nc["macro_f1"][r] - baseline["macro_f1"][r], 5) for r in nc["macro_f1"]}
    return out
