"""Stage bodies that run inside Ray workers: plain functions over arrays and lake URIs.

Imports neither Prefect nor Ray, so each is testable in-process; tasks/ wraps them in
`ray.remote` and passes ObjectRefs between them.
"""
from __future__ import annotations

import os
import time

import numpy as np

from embedlake import storage
from embedlake.errors import InputError
from embedlake.lake import Lake, embeddings_table
from embedlake.workers.faults import fault_point
from embedlake.workers.graph import CSRGraph, build_csr
from embedlake.workers.graph_store import graph_exists, graph_version, read_graph, write_graph
from embedlake.workers.ingest import EdgeSpec, ingest_graph, read_labels, stats_json_num_nodes


def ingest_stage(lake: Lake | str, dataset: str, input_cfg: dict, synthetic_cfg: dict):
    lake = Lake(lake)
    with storage.using(lake.env):
        return _ingest(lake, dataset, input_cfg, synthetic_cfg)


def _ingest(lake: Lake, dataset: str, input_cfg: dict, synthetic_cfg: dict):
    """Read (or generate) the graph, validate labels, write the graph version to the lake.

    Returns (meta, (indptr, indices, weights), node_ids, labels-or-None). Everything is validated
    before anything is written.
    """
    t0 = time.perf_counter()
    if input_cfg.get("edges") is None:
        from embedlake.workers.synthetic import planted_communities
        s, d, lab = planted_communities(**synthetic_cfg)
        n = len(lab)
        csr = build_csr(s, d, n)
        node_ids = np.arange(n, dtype=np.int64)
        labels = (np.arange(n, dtype=np.int32), lab.astype(np.int32), np.array([str(i) for i in range(lab.max() + 1)]))
        checksum = "synthetic:" + repr(sorted(synthetic_cfg.items()))
        sources = ["generated:planted_communities"]
        stats = {"nodes": n, "arcs": csr.num_arcs, "directed": False, "weighted": False}
        id_type = "int"
    else:
        fields = {k: input_cfg[k] for k in EdgeSpec.__dataclass_fields__ if k in input_cfg}
        if fields.get("num_nodes") is None and fields.get("id_type", "int") == "int":
            fields["num_nodes"] = stats_json_num_nodes(input_cfg["edges"])
        spec = EdgeSpec(**fields)
        g = ingest_graph(input_cfg["edges"], spec)
        csr, node_ids, id_type, checksum, sources, stats = g.csr, g.node_ids, g.id_type, g.checksum, g.sources, g.stats
        labels = read_labels(input_cfg["labels"], node_ids, id_type) if input_cfg.get("labels") else None
        if labels is not None:
            checksum += ":" + _labels_checksum(labels)
    spec_fields = {k: v for k, v in input_cfg.items() if k not in ("edges", "labels", "chunk_rows")}
    version = graph_version(checksum, spec_fields)
    reused = graph_exists(lake, dataset, version)
    if not reused:
        write_graph(lake, dataset, version, csr, node_ids,
                    {"sources": sources, "checksum": checksum, "stats": stats, "id_type": id_type}, labels)
    meta = {"version": version, "path": lake.url(Lake.graph_dir(dataset, version)), "reused": reused,
            "nodes": csr.num_nodes, "arcs": csr.num_arcs, "id_type": id_type, "sources": sources,
            "labelled": labels is not None, "seconds": round(time.perf_counter() - t0, 3), **{"stats": stats}}
    return meta, (csr.indptr, csr.indices, csr.weights, csr.directed), node_ids, labels


def _labels_checksum(labels) -> str:
    import hashlib
    h = hashlib.sha256()
    for a in labels[:2]:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def partition_bounds(n: int, partitions: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal ranges of node ids (empty ranges dropped); partitions >= 1."""
    edges = np.linspace(0, n, min(partitions, n) + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def walk_stage(csr: tuple, lo: int, hi: int, walks_per_node: int, length: int, seed: int, p: float, q: float,
               mode: str, threads: int = 1, alias=None, walk_offset: int = 0) -> np.ndarray:
    """Walks from start nodes [lo, hi), k-major, -1 padded. `alias`: the graph's shared alias tables;
    walk_offset: index of the first walk (streamed rounds ask for walk k alone)."""
    from embedlake.workers.walks import random_walks
    indptr, indices, weights, directed = csr
    starts = np.arange(lo, hi, dtype=np.int64)
    walks = random_walks(indptr, indices, weights, starts, walks_per_node, length, seed, p=p, q=q, mode=mode,
                         threads=threads, alias=alias, symmetric=not directed, walk_offset=walk_offset)
    fault_point("after:walk_stage")
    return walks


def walk_partition(*args, checkpoint: dict | None = None, **kwargs) -> tuple[np.ndarray, int]:
    """walk_stage plus its step count, so the driver can report steps/s without fetching the walks.
    checkpoint {"lake", "path", "index"}: the finished walks are also written there (.npy), so a
    killed run's re-run loads them (`load_walk_partition`) instead of walking again."""
    w = walk_stage(*args, **kwargs)
    if checkpoint is not None:
        Lake(checkpoint["lake"]).write_npy(checkpoint["path"], w)
        fault_point(f"after:walk_partition:{checkpoint['index']}")
    return w, int(np.count_nonzero(w >= 0))


def load_walk_partition(lake: Lake | str, path: str, rows: int, length: int) -> tuple[np.ndarray, int]:
    """A checkpointed walk partition (what walk_partition returned), shape-checked against the run."""
    w = Lake(lake).read_npy(path)
    if w.shape != (rows, length) or w.dtype.kind != "i":
        raise ValueError(f"{path}: walks of shape {w.shape} ({w.dtype}), expected ({rows}, {length}) ints")
    return w, int(np.count_nonzero(w >= 0))


def load_checkpoint_array(lake: Lake | str, state: dict, name: str) -> np.ndarray:
    """One array of a checkpointed step (e.g. the finished table of a killed run)."""
    from embedlake.workers.checkpoints import load
    return load(Lake(lake), state, name)


def alias_stage(csr: tuple):
    """Alias tables of a weighted graph, built once and shared by every walk partition."""
    from embedlake.workers.walks import build_alias
    indptr, indices, weights, _ = csr
    return build_alias(indptr, indices, weights)


def interleave_walks(parts: list[np.ndarray], walks_per_node: int) -> np.ndarray:
    """Partition walk blocks (k-major each) -> one k-major block over all nodes, whatever the partitioning."""
    length = parts[0].shape[1]
    cube = [p.reshape(walks_per_node, -1, length) for p in parts]
    return np.concatenate(cube, axis=1).reshape(-1, length)


def train_stage(num_nodes: int, walks_per_node: int, train: dict, *parts: np.ndarray) -> tuple[np.ndarray, dict]:
    """One-table skip-gram on all walks. train["_checkpoint"] = {"lake", "run_dir", "base", "resume"}
    (optional): the tables are checkpointed after every epoch (the last one as the final table)
    and, with a resume state of epoch k, training continues at epoch k (docs/reliability.md)."""
    from embedlake.workers.skipgram import train_sgns
    from embedlake.workers.walks import walks_to_sentences
    ck = train.get("_checkpoint")
    walks = interleave_walks(list(parts), walks_per_node)
    tokens, offsets = walks_to_sentences(walks)
    del walks
    threads = train.get("threads") or int(os.environ.get("EMBEDLAKE_TRAIN_THREADS", "0")) or 0
    engine = train.get("engine", "numba")
    kw = dict(dim=train["dim"], window=train["window"], negatives=train["negatives"],
              ns_exponent=train["ns_exponent"], epochs=train["epochs"], lr=train["lr"], min_lr=train["min_lr"],
              sample=train["sample"], seed=train["seed"])
    if engine == "torch":
        from embedlake.workers.skipgram_torch import train_sgns_torch
        W, _, stats = train_sgns_torch(tokens, offsets, num_nodes, device=train.get("device", "auto"), threads=threads,
                                       **kw)
        if ck is not None:       # the torch engine has no epoch hook: the finished table only
            _checkpoint_epoch(ck, train["epochs"], train["epochs"], W, None, stats)
    else:
        report = train.get("progress")
        cb = (lambda done, total, loss: report(done, total, loss=loss)) if report else None
        init, start = None, 0
        if ck is not None and ck.get("resume") is not None:
            from embedlake.workers.checkpoints import load
            lake = Lake(ck["lake"])
            start = int(ck["resume"]["epoch"])
            init = (load(lake, ck["resume"], "w_in"), load(lake, ck["resume"], "w_out"))
        on_epoch = None
        if ck is not None:
            on_epoch = lambda k, W_in, W_out: _checkpoint_epoch(ck, k, train["epochs"], W_in, W_out, None)
        W, _, stats = train_sgns(tokens, offsets, num_nodes, threads=threads, progress=cb, init=init,
                                 start_epoch=start, on_epoch=on_epoch, **kw)
        if ck is not None:       # the final state also carries the training figures
            _checkpoint_info(ck, stats)
    return W, stats


def _checkpoint_epoch(ck: dict, k: int, epochs: int, W_in: np.ndarray, W_out: np.ndarray | None, stats) -> None:
    """After epoch k: W_in/W_out (the last epoch: W_in alone, the finished table), then the state."""
    from embedlake.workers.checkpoints import advance
    final = k >= epochs
    files = {"w_in": W_in} if final or W_out is None else {"w_in": W_in, "w_out": W_out}
    prev = ck.get("_prev", (ck.get("resume") or {}).get("epoch"))
    advance(Lake(ck["lake"]), ck["run_dir"], "train", ck["base"], "epoch", k, files, final=final,
            info=_plain(stats), prev=prev)
    ck["_prev"] = k
    fault_point(f"after:train_epoch:{k}")


def _checkpoint_info(ck: dict, stats: dict) -> None:
    from embedlake.workers.checkpoints import read_state, write_state
    lake = Lake(ck["lake"])
    state = read_state(lake, ck["run_dir"], "train")
    if state is not None and state.get("final"):
        state["info"] = _plain(stats)
        write_state(lake, ck["run_dir"], "train", state)


def _plain(stats) -> dict:
    return {k: v for k, v in (stats or {}).items() if isinstance(v, (int, float, str, bool))}


def write_embedding_part(lake: Lake | str, dataset: str, method: str, run_id: str, partition: int, lo: int, hi: int,
                         node_ids: np.ndarray, X: np.ndarray) -> dict:
    from embedlake.workers.graph_store import node_id_array
    lake = Lake(lake)
    ids = node_id_array(node_ids[lo:hi])
    table = embeddings_table(ids, X[lo:hi])
    rel = Lake.part_path("embeddings", dataset, method, run_id, partition)
    return lake.write_parquet(rel, table).to_dict()


def walks_table(walks: np.ndarray, node_ids: np.ndarray, lo: int, hi: int, walks_per_node: int):
    """Rows (start, k, walk) with original node ids; padding (-1) dropped, so lists vary in length."""
    import pyarrow as pa

    from embedlake.workers.graph_store import node_id_array
    mask = walks >= 0
    lens = mask.sum(axis=1)
    offsets = np.zeros(len(walks) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = walks[mask].astype(np.int64)
    values = node_id_array(np.asarray(node_ids)[flat])
    starts = np.tile(np.arange(lo, hi, dtype=np.int64), walks_per_node)
    k = np.repeat(np.arange(walks_per_node, dtype=np.int32), hi - lo)
    return pa.table({"start": node_id_array(np.asarray(node_ids)[starts]), "k": pa.array(k),
                     "walk": pa.LargeListArray.from_arrays(pa.array(offsets), values)})


def write_walks_part(lake: Lake | str, dataset: str, method: str, run_id: str, partition: int, lo: int, hi: int,
                     walks_per_node: int, node_ids: np.ndarray, walks: np.ndarray) -> dict:
    lake = Lake(lake)
    rel = Lake.part_path("walks", dataset, method, run_id, partition)
    return lake.write_parquet(rel, walks_table(walks, node_ids, lo, hi, walks_per_node)).to_dict()


def train_round(num_nodes: int, train: dict, round_index: int, rounds: int, state, *parts: np.ndarray,
                checkpoint: dict | None = None):
    """One round of streamed training: the walks of round r (one walk per node) continue the model.

    The learning rate decays linearly across all rounds exactly as in one call over every walk
    (each round trains the segment [r/R, (r+1)/R] of the schedule), so only one round of walks is
    ever held. Returns ((W_in, W_out, counts), stats). state: the previous round's result, or
    {"lake", "state"} of a checkpointed round to continue from (a resumed run).
    checkpoint {"lake", "run_dir", "base", "prev"}: after this round the state is written to the lake
    (`stream/round=<r+1>/`; the last round: the finished table only).
    """
    if isinstance(state, dict):             # resumed: the round checkpoint written by a killed run
        from embedlake.workers.checkpoints import load
        lk = Lake(state["lake"])
        state = (load(lk, state["state"], "w_in"), load(lk, state["state"], "w_out"), load(lk, state["state"], "counts"))
    from embedlake.workers.skipgram import train_sgns
    from embedlake.workers.walks import walks_to_sentences
    tokens, offsets = walks_to_sentences(interleave_walks(list(parts), 1))
    lr, min_lr = float(train["lr"]), float(train["min_lr"])
    seg_hi = lr - (lr - min_lr) * round_index / rounds
    seg_lo = lr - (lr - min_lr) * (round_index + 1) / rounds
    counts = None if state is None else state[2]
    if counts is None:      # noise distribution from the first round's visits (stationary ~ degree)
        counts = np.bincount(tokens[tokens >= 0], minlength=num_nodes).astype(np.int64)
    report = train.get("progress")
    done0 = round_index * len(tokens)
    cb = (lambda done, total, loss: report(done0 + done, total * rounds, loss=loss)) if report else None
    W_in, W_out, stats = train_sgns(tokens, offsets, num_nodes, counts=counts, dim=train["dim"],
                                    window=train["window"], negatives=train["negatives"],
                                    ns_exponent=train["ns_exponent"], epochs=1, lr=seg_hi, min_lr=seg_lo,
                                    sample=train["sample"], seed=train["seed"] + 7919 * round_index,
                                    threads=train.get("threads") or 0,
                                    init=None if state is None else (state[0].copy(), state[1].copy()),
                                    progress=cb)
    if checkpoint is not None:
        from embedlake.workers.checkpoints import advance
        final = round_index + 1 == rounds
        files = {"w_in": W_in} if final else {"w_in": W_in, "w_out": W_out, "counts": counts}
        advance(Lake(checkpoint["lake"]), checkpoint["run_dir"], "stream", checkpoint["base"], "round",
                round_index + 1, files, final=final, info=checkpoint.get("info"), prev=checkpoint.get("prev"))
        fault_point(f"after:stream_round:{round_index + 1}")
    return (W_in, W_out, counts), stats


def first_table(state) -> np.ndarray:
    return state[0]
