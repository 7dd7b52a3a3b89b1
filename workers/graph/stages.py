"""Graph stage bodies that run inside Ray workers: ingest, walks, and writing embeddings / walks.

Plain functions over arrays and lake URIs; they import neither Prefect nor Ray, so each is
testable in-process. tasks/graph.py wraps them in `ray.remote` and passes ObjectRefs between them.
"""
from __future__ import annotations

import time

import numpy as np

from embedlake import storage
from embedlake.config import InputConfig, SyntheticConfig, WalkConfig
from embedlake.lake import Lake, embeddings_table
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph, read_labels, stats_json_num_nodes
from embedlake.workers.graph.store import graph_exists, graph_version, write_graph
from embedlake.workers.run.checkpoints import StageHandle
from embedlake.workers.run.faults import fault_point


def ingest_stage(lake: Lake | str, dataset: str, input_cfg: InputConfig, synthetic: SyntheticConfig):
    lake = Lake(lake)
    with storage.using(lake.env):
        return _ingest(lake, dataset, input_cfg, synthetic)


def _fields(section) -> dict:
    """A flat config section's fields in declaration order (what the graph version hashes)."""
    return {k: getattr(section, k) for k in type(section).model_fields}


def _read_input(input_cfg: InputConfig, synthetic: SyntheticConfig):
    """(csr, node_ids, id_type, checksum, sources, stats, labels) of the configured input graph."""
    if input_cfg.edges is None:
        from embedlake.workers.graph.synthetic import planted_communities
        s, d, lab = planted_communities(nodes=synthetic.nodes, communities=synthetic.communities,
                                        avg_degree=synthetic.avg_degree, mixing=synthetic.mixing, seed=synthetic.seed)
        n = len(lab)
        csr = build_csr(s, d, n)
        labels = (np.arange(n, dtype=np.int32), lab.astype(np.int32), np.array([str(i) for i in range(lab.max() + 1)]))
        stats = {"nodes": n, "arcs": csr.num_arcs, "directed": False, "weighted": False}
        checksum = "synthetic:" + repr(sorted(_fields(synthetic).items()))
        return csr, np.arange(n, dtype=np.int64), "int", checksum, ["generated:planted_communities"], stats, labels
    fields = {k: getattr(input_cfg, k) for k in EdgeSpec.__dataclass_fields__ if k in InputConfig.model_fields}
    if fields.get("num_nodes") is None and fields.get("id_type", "int") == "int":
        fields["num_nodes"] = stats_json_num_nodes(input_cfg.edges)
    g = ingest_graph(input_cfg.edges, EdgeSpec(**fields))
    labels = read_labels(input_cfg.labels, g.node_ids, g.id_type) if input_cfg.labels else None
    checksum = g.checksum + (":" + _labels_checksum(labels) if labels is not None else "")
    return g.csr, g.node_ids, g.id_type, checksum, g.sources, g.stats, labels


def _ingest(lake: Lake, dataset: str, input_cfg: InputConfig, synthetic: SyntheticConfig):
    """Read (or generate) the graph, validate labels, write the graph version to the lake.

    Returns (meta, (indptr, indices, weights), node_ids, labels-or-None). Everything is validated
    before anything is written.
    """
    t0 = time.perf_counter()
    csr, node_ids, id_type, checksum, sources, stats, labels = _read_input(input_cfg, synthetic)
    spec_fields = {k: v for k, v in _fields(input_cfg).items() if k not in ("edges", "labels", "chunk_rows")}
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


def walk_stage(csr: tuple, lo: int, hi: int, walk_cfg: WalkConfig, mode: str, *, walks_per_node: int | None = None,
               walk_offset: int = 0, alias=None, threads: int = 1) -> np.ndarray:
    """Walks from start nodes [lo, hi), k-major, -1 padded. `alias`: the graph's shared alias tables;
    walks_per_node (default walk.walks_per_node) walks from each node starting at walk number
    walk_offset (streamed rounds ask for walk k alone: walks_per_node=1, walk_offset=k)."""
    from embedlake.workers.graph.walks import random_walks
    indptr, indices, weights, directed = csr
    starts = np.arange(lo, hi, dtype=np.int64)
    count = walk_cfg.walks_per_node if walks_per_node is None else walks_per_node
    walks = random_walks(indptr, indices, weights, starts, count, walk_cfg.length, walk_cfg.seed, p=walk_cfg.p,
                         q=walk_cfg.q, mode=mode, threads=threads, alias=alias, symmetric=not directed,
                         walk_offset=walk_offset)
    fault_point("after:walk_stage")
    return walks


def walk_partition(*args, checkpoint: StageHandle | None = None, part: int = 0, **kwargs) -> tuple[np.ndarray, int]:
    """walk_stage plus its step count, so the driver can report steps/s without fetching the walks.
    checkpoint (the run's `walk` stage): the finished walks of partition `part` are also written
    there (.npy), so a killed run's re-run loads them (`load_walk_partition`) instead of walking again."""
    w = walk_stage(*args, **kwargs)
    if checkpoint is not None:
        Lake(checkpoint.lake).write_npy(checkpoint.part_path(part), w)
        fault_point(f"after:walk_partition:{part}")
    return w, int(np.count_nonzero(w >= 0))


def load_walk_partition(checkpoint: StageHandle, part: int, rows: int, length: int) -> tuple[np.ndarray, int]:
    """A checkpointed walk partition (what walk_partition returned), shape-checked against the run."""
    path = checkpoint.part_path(part)
    w = Lake(checkpoint.lake).read_npy(path)
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

