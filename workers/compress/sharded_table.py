"""Learned K-row tables trained over the walk shards of a sharded graph (issue 17).

With train.table = hash | qr | unified and graph.shards = S > 1, no task holds all walks or the
whole graph. The K-row table is small (K << n), so it may travel; the walks do not. The table
goes round the shards, as the model does in a ring of data-parallel workers that take turns:

    prepare_shard   per graph shard, once: its walks as sentences, rewritten in the ids its task
                    trains (hash: bucket ids; qr / unified: a LOCAL vocabulary, the distinct
                    nodes its walks visit, each with its codes), and their counts (noise and
                    subsampling, from this shard's walks);
    start_tables    the table the first step starts from (the one-task path's initial rows);
    train_step      round r (walk number r mod walks_per_node of every start node of the
                    shard), one shard: the table trained on those walks and handed on, the
                    learning rate decaying linearly over all (round, shard) steps, as the
                    one-task path decays it over all walks.

Averaging copies trained in parallel (distributed word2vec's model averaging) was measured and
dropped: on BlogCatalog at S = 4 a hash table of n / 2 rows lost .05 Micro-F1 with the mean of
the copies and .085 with their summed updates (docs/compression.md); one table passed on keeps
the one-task path's sequence of updates, shard after shard.

Codes depend only on the node id (hash: splitmix64 of it; qr: quotient and remainder; unified:
one hash per feature and level), so each shard computes those of its vocabulary and its own rows
(`shard_code_columns`) and writes its rows itself. compose is not here: its codes are k-means
levels of a FastRP sketch of the whole graph, built in one task (embedlake/config.py refuses it
at S > 1, docs/compression.md).
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from embedlake.config import TrainConfig
from embedlake.lake import Lake
from embedlake.workers.compress.compose import composed_kwargs, encode_codes, hash_codes_of, qr_codes, table_rows_of
from embedlake.workers.compress.hashing import encode_hash, hash_buckets
from embedlake.workers.compress.store import codes_table, table_method
from embedlake.workers.graph.store import node_id_array
from embedlake.workers.train.compose import init_table

SHARDED_CODECS = ("hash", "qr", "unified")


def codes_of(codec: str, lp: dict, ids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Level-local codes [len(ids), R] of the node ids `ids` and the output side's table rows (unified)
    or None: the same codes the one-task path gives those ids (compose.assign_codes)."""
    ids = np.asarray(ids, np.int64)
    if codec == "qr":
        m = lp["level_rows"][1]
        return np.stack([ids // m, ids % m], 1).astype(np.int32), None
    if codec == "unified":
        return (hash_codes_of(ids, lp, seed, feature=0),
                table_rows_of(hash_codes_of(ids, lp, seed, feature=1), lp))
    raise ValueError(f"{codec!r}: codes of a node id exist for {', '.join(SHARDED_CODECS[1:])} only")


def prepare_shard(walks: np.ndarray, codec: str, params: dict) -> dict:
    """One graph shard's walks [walks_per_node * rows, length] (k-major) as the sentences its task
    trains: {"tokens" (in vocabulary ids, -1 padding), "offsets" (one sentence per walk), "vocab"
    (how many ids: hash's K buckets, else the distinct nodes visited), "code_in" (level-local codes
    per vocabulary id; None for hash), "code_out" (unified's output-side table rows, else None),
    "counts" (per vocabulary id)}."""
    from embedlake.workers.graph.walks import walks_to_sentences
    tokens, offsets = walks_to_sentences(walks)
    seed = params.get("seed", 0)
    valid = tokens >= 0
    if codec == "hash":
        K = params["buckets"]
        tok = np.where(valid, hash_buckets(np.maximum(tokens, 0), K, seed), -1).astype(np.int32)
        vocab, code_in, code_out = K, None, None
    else:
        ids, local = np.unique(tokens[valid], return_inverse=True)
        tok = np.full(tokens.shape, -1, np.int32)
        tok[valid] = local
        codes, code_out = codes_of(codec, params, ids, seed)
        vocab, code_in = len(ids), codes
    counts = np.bincount(tok[tok >= 0], minlength=vocab).astype(np.int64)
    return {"tokens": tok, "offsets": offsets, "vocab": vocab, "code_in": code_in, "code_out": code_out,
            "counts": counts}


def start_tables(codec: str, params: dict, train: TrainConfig) -> dict:
    """{"T_in", "T_out"}: the rows the first step starts from, drawn as the one-task
    path draws them (skip-gram's for hash; compose.init_table for qr / unified). QR's quotient rows
    (every one is some node's first factor) start near 1."""
    if codec == "hash":
        from embedlake.workers.train.skipgram import prepare
        K = params["buckets"]
        _, _, _, W_in, W_out = prepare(np.zeros(0, np.int32), np.zeros(1, np.int64), K, np.zeros(K, np.int64),
                                       train.dim, None, train.seed)
        return {"T_in": W_in, "T_out": W_out}
    combine, K = params["combine"], params["table_rows"]
    first = np.arange(params["level_rows"][0]) if combine == "product" else None
    T_in = init_table(K, train.dim, combine, train.seed, "in", first)
    T_out = T_in if codec == "unified" else init_table(K, train.dim, combine, train.seed, "out", first)
    return {"T_in": T_in, "T_out": T_out}


def step_schedule(step: int, steps: int, lr: float, min_lr: float) -> tuple[float, float]:
    """The learning rate of step `step` of `steps`, from its first to its last token: the linear
    decay of one run over all steps, cut into equal pieces."""
    return lr - (lr - min_lr) * step / steps, lr - (lr - min_lr) * (step + 1) / steps


def round_sentences(prep: dict, r: int, rows: int, walks_per_node: int) -> tuple[np.ndarray, np.ndarray]:
    """Round r's sentences of a shard of `rows` start nodes: walk number r mod walks_per_node of
    each of them (tokens, offsets from 0)."""
    walk = r % walks_per_node
    off = prep["offsets"][walk * rows:(walk + 1) * rows + 1]
    return prep["tokens"][off[0]:off[-1]], off - off[0]


def train_step(prep: dict, tables: dict, r: int, step: int, steps: int, rows: int, walks_per_node: int, codec: str,
               params: dict, train: TrainConfig, shard: int, threads: int = 1) -> tuple[dict, dict]:
    """The table after one shard's walks of round r: ({"T_in", "T_out"}, stats). `step` of `steps`
    places it in the learning-rate decay (round-major, shard after shard). Seeds differ per
    (round, shard); with threads=1 the result is bit-reproducible."""
    t0 = time.perf_counter()
    tokens, offsets = round_sentences(prep, r, rows, walks_per_node)
    seed = train.seed + 7919 * r + 104_729 * shard
    if codec == "hash":
        from embedlake.workers.train.skipgram import train_sgns
        hi, lo = step_schedule(step, steps, train.lr, train.min_lr)
        W_in, W_out, stats = train_sgns(tokens, offsets, prep["vocab"], counts=prep["counts"], dim=train.dim,
                                        window=train.window, negatives=train.negatives,
                                        ns_exponent=train.ns_exponent, epochs=1, lr=hi, min_lr=lo,
                                        sample=train.sample, seed=seed, threads=threads,
                                        init=(tables["T_in"], tables["T_out"]))
        out = {"T_in": W_in, "T_out": W_out}
    else:
        from embedlake.workers.train.compose import train_composed
        kw, lr, min_lr = composed_kwargs(codec, params, prep["code_in"], prep["code_out"], train, threads)
        hi, lo = step_schedule(step, steps, lr, min_lr)
        got = train_composed(tokens, offsets, prep["vocab"], epochs=1, lr=hi, min_lr=lo, seed=seed,
                             counts=prep["counts"], init=tables, **kw)
        out, stats = {"T_in": got["T_in"], "T_out": got["T_out"]}, got["stats"]
    stats = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    stats.update(round=r, shard=shard, wall_s=round(time.perf_counter() - t0, 4))
    return out, stats


def final_state(tables: dict) -> dict:
    """The state a learned table is stored from: {"table": the input side} (its codebook file)."""
    return {"table": np.ascontiguousarray(tables["T_in"], dtype=np.float32)}


def shard_code_columns(codec: str, params: dict, lo: int, hi: int) -> dict[str, np.ndarray]:
    """The `code` column of rows lo..hi-1 (what compress's encode writes for them at S = 1)."""
    if codec == "hash":
        return encode_hash(lo, hi - lo, params)
    if codec == "qr":
        return encode_codes(qr_codes(hi - lo, params, first=lo), params)
    codes, _ = codes_of(codec, params, np.arange(lo, hi), params.get("seed", 0))
    return encode_codes(codes, params)


def write_shard_codes(lake, *, dataset: str, method: str, run_id: str, codec: str, params: dict, partition: int,
                      lo: int, hi: int, node_ids) -> dict:
    """Ray worker body: the codes part of one graph shard's rows lo..hi-1 (`node_ids`: that shard's
    ids only), written by the shard's own task: the file encode_partition writes for those rows.
    Returns the file entry plus `encode_s`."""
    t0 = time.perf_counter()
    cols = shard_code_columns(codec, params, lo, hi)
    enc = time.perf_counter() - t0
    ids = node_ids if isinstance(node_ids, pa.Array) else node_id_array(np.asarray(node_ids))
    rel = Lake.part_path("tables", dataset, table_method(method, codec), run_id, partition)
    entry = Lake(lake).write_parquet(rel, codes_table(ids, cols)).to_dict()
    return {**entry, "encode_s": round(enc, 4)}
