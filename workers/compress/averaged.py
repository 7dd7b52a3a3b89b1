"""Learned K-row tables trained data-parallel over the walk shards of a sharded graph (issue 17).

With train.table = hash | qr | unified and graph.shards = S > 1, no task holds all walks or the
whole graph. The K-row table is small (K << n), so every task may hold it; the walks are not. The
training is model averaging, as in distributed word2vec:

    prepare_shard   per graph shard, once: its walks as sentences, rewritten in the ids its task
                    trains (hash: bucket ids; qr / unified: a LOCAL vocabulary, the distinct
                    nodes its walks visit, each with its codes), and their counts (noise and
                    subsampling, from this shard's walks);
    start_tables    the table every shard starts from (the one-task path's initial rows);
    train_round     round r (walk number r mod walks_per_node of every start node of the shard):
                    one copy of the table trained on the shard's walks of that round, the
                    learning rate continued piecewise across rounds (the streamed one-task
                    schedule, workers/compress/compose.train_compositional);
    average_tables  the copies' mean: the table of the next round.

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
    trains: {"tokens", "offsets" (one sentence per walk), "rows" (start nodes), "vocab" (ids of
    the table's input side), "code_in", "code_out" (table rows per vocabulary id), "counts"}."""
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
    """{"T_in", "T_out"}: the rows every shard's first round starts from, drawn as the one-task
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


def round_schedule(r: int, rounds: int, lr: float, min_lr: float) -> tuple[float, float]:
    """Round r's learning rate, from its first to its last token: the linear decay of one run
    over all rounds, cut into equal pieces."""
    return lr - (lr - min_lr) * r / rounds, lr - (lr - min_lr) * (r + 1) / rounds


def round_sentences(prep: dict, walk: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Walk number `walk` of each of the shard's `rows` start nodes: (tokens, offsets from 0)."""
    off = prep["offsets"][walk * rows:(walk + 1) * rows + 1]
    return prep["tokens"][off[0]:off[-1]], off - off[0]


def train_round(prep: dict, tables: dict, r: int, rounds: int, rows: int, walks_per_node: int, codec: str,
                params: dict, train: TrainConfig, shard: int, threads: int = 1) -> tuple[dict, dict]:
    """One shard's copy of the table after round r on its walks of that round: ({"T_in", "T_out"},
    stats). Seeds differ per (round, shard); with threads=1 the copy is bit-reproducible."""
    t0 = time.perf_counter()
    tokens, offsets = round_sentences(prep, r % walks_per_node, rows)
    seed = train.seed + 7919 * r + 104_729 * shard
    if codec == "hash":
        from embedlake.workers.train.skipgram import train_sgns
        hi, lo = round_schedule(r, rounds, train.lr, train.min_lr)
        W_in, W_out, stats = train_sgns(tokens, offsets, prep["vocab"], counts=prep["counts"], dim=train.dim,
                                        window=train.window, negatives=train.negatives,
                                        ns_exponent=train.ns_exponent, epochs=1, lr=hi, min_lr=lo,
                                        sample=train.sample, seed=seed, threads=threads,
                                        init=(tables["T_in"], tables["T_out"]))
        out = {"T_in": W_in, "T_out": W_out}
    else:
        from embedlake.workers.train.compose import train_composed
        kw, lr, min_lr = composed_kwargs(codec, params, prep["code_in"], prep["code_out"], train, threads)
        hi, lo = round_schedule(r, rounds, lr, min_lr)
        got = train_composed(tokens, offsets, prep["vocab"], epochs=1, lr=hi, min_lr=lo, seed=seed,
                             counts=prep["counts"], init=tables, **kw)
        out, stats = {"T_in": got["T_in"], "T_out": got["T_out"]}, got["stats"]
    stats = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    stats.update(round=r, shard=shard, wall_s=round(time.perf_counter() - t0, 4))
    return out, stats


def average_tables(codec: str, *copies: dict) -> dict:
    """The mean of the shards' trained copies (in shard order, float64 sums: reproducible); the
    shared table of unified (T_in is T_out) stays one array."""
    shared = codec == "unified"
    out = {}
    for side in ("T_in",) if shared else ("T_in", "T_out"):
        acc = np.zeros(copies[0][side].shape, np.float64)
        for c in copies:
            acc += c[side]
        out[side] = (acc / len(copies)).astype(np.float32)
    if shared:
        out["T_out"] = out["T_in"]
    return out


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
