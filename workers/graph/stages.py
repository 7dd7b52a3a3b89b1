"""Graph stage bodies that run inside Ray workers: ingest, walks, and writing embeddings / walks.

Plain functions over arrays and lake URIs; they import neither Prefect nor Ray, so each is
testable in-process. tasks/graph.py wraps them in `ray.remote` and passes ObjectRefs between them.
"""
from __future__ import annotations

import time

import numpy as np

from embedlake import storage
from embedlake.lake import Lake, embeddings_table
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph, read_labels, stats_json_num_nodes
from embedlake.workers.graph.store import graph_exists, graph_version, write_graph
from embedlake.workers.run.faults import fault_point


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
        from embedlake.workers.graph.synthetic import planted_communities
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
    from embedlake.workers.graph.walks import random_walks
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


def alias_stage(csr: tuple):
    """Alias tables of a weighted graph, built once and shared by every walk partition."""
    from embedlake.workers.graph.walks import build_alias
    indptr, indices, weights, _ = csr
    return build_alias(indptr, indices, weights)


def write_embedding_part(lake: Lake | str, dataset: str, method: str, run_id: str, partition: int, lo: int, hi: int,
                         node_ids: np.ndarray, X: np.ndarray) -> dict:
    from embedlake.workers.graph.store import node_id_array
    lake = Lake(lake)
    ids = node_id_array(node_ids[lo:hi])
    table = embeddings_table(ids, X[lo:hi])
    rel = Lake.part_path("embeddings", dataset, method, run_id, partition)
    return lake.write_parquet(rel, table).to_dict()


def walks_table(walks: np.ndarray, node_ids: np.ndarray, lo: int, hi: int, walks_per_node: int):
    """Rows (start, k, walk) with original node ids; padding (-1) dropped, so lists vary in length."""
    import pyarrow as pa

    from embedlake.workers.graph.store import node_id_array
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

