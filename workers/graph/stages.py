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
from embedlake.workers.graph import ingest_parallel as ip
from embedlake.workers.graph.ingest import EdgeSpec, stats_json_num_nodes
from embedlake.workers.graph.shards import CSRShard, gather_csr, shard_bounds, split_csr
from embedlake.workers.graph.store import graph_exists, graph_version, write_graph_meta, write_graph_shard
from embedlake.workers.run.checkpoints import StageHandle
from embedlake.workers.run.faults import fault_point


def section_fields(section) -> dict:
    """A flat config section's fields in declaration order (what the graph version hashes)."""
    return {k: getattr(section, k) for k in type(section).model_fields}


def edge_spec(input_cfg: InputConfig) -> EdgeSpec:
    """The reader's settings of an input (num_nodes from a stats.json beside int-id edges)."""
    fields = {k: getattr(input_cfg, k) for k in EdgeSpec.__dataclass_fields__ if k in InputConfig.model_fields}
    if fields.get("num_nodes") is None and fields.get("id_type", "int") == "int":
        fields["num_nodes"] = stats_json_num_nodes(input_cfg.edges)
    return EdgeSpec(**fields)


def synthetic_stage(lake: Lake | str, dataset: str, input_cfg: InputConfig, synthetic: SyntheticConfig,
                    shards: int) -> tuple:
    """The planted-community graph, split into `shards` shards (it is small), written to the lake.
    Returns (meta, labels, csr tuple of shard 0, node ids of shard 0, csr tuple of shard 1, ...)."""
    from embedlake.workers.graph.synthetic import planted_communities
    lake, t0 = Lake(lake), time.perf_counter()
    s, d, lab = planted_communities(nodes=synthetic.nodes, communities=synthetic.communities,
                                    avg_degree=synthetic.avg_degree, mixing=synthetic.mixing, seed=synthetic.seed)
    n = len(lab)
    csr = build_csr(s, d, n)
    labels = (np.arange(n, dtype=np.int32), lab.astype(np.int32), np.array([str(i) for i in range(lab.max() + 1)]))
    stats = {"nodes": n, "arcs": csr.num_arcs, "directed": False, "weighted": False}
    checksum = "synthetic:" + repr(sorted(section_fields(synthetic).items()))
    version = graph_version(checksum, input_spec_fields(input_cfg))
    bounds = shard_bounds(n, shards)
    parts = split_csr(csr, bounds)
    node_ids = np.arange(n, dtype=np.int64)
    with storage.using(lake.env):
        reused = graph_exists(lake, dataset, version)
        if not reused:
            files = [write_graph_shard(lake, dataset, version, shards, i, p, node_ids[p.lo:p.hi])
                     for i, p in enumerate(parts)]
            write_graph_meta(lake, dataset, version, graph_meta_fields(
                ["generated:planted_communities"], checksum, stats, "int", bounds), files, False, labels)
    meta = handle_meta(lake, dataset, version, reused, stats, "int", ["generated:planted_communities"], True, t0)
    out = [meta | {"shards": shards, "shard_arcs": [p.num_arcs for p in parts]}, labels]
    for p in parts:
        out += [p.as_tuple(), node_ids[p.lo:p.hi]]
    return tuple(out)


def input_spec_fields(input_cfg: InputConfig) -> dict:
    """The reader settings a graph version hashes (besides the input checksum)."""
    return {k: v for k, v in section_fields(input_cfg).items() if k not in ("edges", "labels", "chunk_rows")}


def graph_meta_fields(sources: list[str], checksum: str, stats: dict, id_type: str,
                      bounds: list[tuple[int, int]]) -> dict:
    """meta.json of a graph version (besides its files): S and the shard bounds when S > 1."""
    out = {"sources": sources, "checksum": checksum, "stats": stats, "id_type": id_type}
    if len(bounds) > 1:
        out |= {"shards": len(bounds), "shard_bounds": [list(b) for b in bounds]}
    return out


def handle_meta(lake: Lake, dataset: str, version: str, reused: bool, stats: dict, id_type: str,
                sources: list[str], labelled: bool, t0: float) -> dict:
    """What the driver keeps about an ingested graph (GraphHandle.meta; manifests carry it)."""
    return {"version": version, "path": lake.url(Lake.graph_dir(dataset, version)), "reused": reused,
            "nodes": stats["nodes"], "arcs": stats["arcs"], "id_type": id_type, "sources": sources,
            "labelled": labelled, "seconds": round(time.perf_counter() - t0, 3), "stats": stats}


# ---- parallel ingest (workers/graph/ingest_parallel.py): one Ray task per range, bucket, shard ----
def plan_stage(lake: Lake | str, input_cfg: InputConfig, range_bytes: int) -> tuple[EdgeSpec, list]:
    """(reader settings, parse ranges) of the configured edges."""
    with storage.using(Lake(lake).env):
        spec = edge_spec(input_cfg)
        return spec, ip.plan_ranges(input_cfg.edges, spec, range_bytes)


def parse_stage(lake: Lake | str, rng, spec: EdgeSpec) -> tuple:
    """(info, edges, local ids) of one range (ingest_parallel.parse_range)."""
    with storage.using(Lake(lake).env):
        return ip.parse_range(rng, spec)


def split_stage(local_ids, splitters) -> tuple:
    """A range's sorted ids cut into one piece per bucket."""
    return tuple(ip.split_ids(local_ids, splitters))


def bucket_stage(*pieces) -> tuple:
    """(bucket ids sorted, their count, positions of range 0's piece, of range 1's piece, ...)."""
    ids, positions = ip.bucket_ids(list(pieces))
    return (ids, len(ids), *positions)


def route_stage(edges: tuple, starts: np.ndarray, directed: bool, keep_loops: bool, offsets: list[int] | None,
                *dense_parts) -> tuple:
    """One range's arcs, one piece per shard (ingest_parallel.route_arcs). dense_parts: the
    range's positions in every bucket (with their offsets), or its ids themselves (ids are dense)."""
    if offsets is None:
        dense = np.asarray(dense_parts[0]).astype(np.int32)
    else:
        dense = ip.dense_map(list(dense_parts), offsets)
    pieces = ip.route_arcs(edges, dense, starts, directed, keep_loops)
    return tuple(pieces) if len(pieces) > 1 else pieces[0]


def shard_stage(lake: Lake | str, target: dict, lo: int, hi: int, spec: EdgeSpec, ranges: int,
                id_offsets: list[int], *args) -> tuple:
    """Build shard rows [lo, hi) from the `ranges` routed pieces (args, in range order), then the
    buckets that hold its node ids (rest of args); write its lake files unless target says the
    version exists. Returns (csr tuple, node ids, info)."""
    pieces, buckets = list(args[:ranges]), list(args[ranges:])
    shard = ip.build_shard(lo, hi, target["nodes"], spec.directed, spec.duplicates, spec.weighted, pieces)
    del pieces, args
    ids = ip.node_ids_of(lo, hi, buckets, id_offsets) if buckets else np.arange(lo, hi, dtype=np.int64)
    files = []
    if target["write"]:
        lake = Lake(lake)
        with storage.using(lake.env):
            files = write_graph_shard(lake, target["dataset"], target["version"], target["shards"], target["index"],
                                      shard, ids)
    info = {"arcs": shard.num_arcs, "isolated": int(np.count_nonzero(np.diff(shard.indptr) == 0)), "files": files}
    return shard.as_tuple(), ids, info


def graph_meta_stage(lake: Lake | str, dataset: str, version: str, meta: dict, directed: bool, labels,
                     *shard_infos) -> None:
    """Labels and meta.json, after every shard's files (the version is complete from here on)."""
    lake = Lake(lake)
    with storage.using(lake.env):
        write_graph_meta(lake, dataset, version, meta, [i["files"] for i in shard_infos], directed, labels)


def gather_graph_stage(bounds: list, *shards) -> tuple:
    """The whole CSR from its shards' tuples (for evaluation only, which needs the whole graph)."""
    parts = [CSRShard.from_tuple(t, lo, hi, bounds[-1][1]) for t, (lo, hi) in zip(shards, bounds)]
    csr = gather_csr(parts)
    return csr.indptr, csr.indices, csr.weights, csr.directed


def concat_rows_stage(*ids) -> np.ndarray:
    """The whole node-id map (or table) from its shards' row pieces, in order (for evaluation only)."""
    return np.concatenate(ids)


def labels_checksum(labels) -> str:
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

