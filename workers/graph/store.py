"""Graph versions in the lake: CSR arrays (.npy, no pickle) + node-id map + labels (Parquet).

One shard: indptr / indices / weights / nodes at the version folder (the layout before shards).
S > 1 shards: each shard's own files under `shards=S/part-NNNN/` (local indptr, global neighbour
ids), written by the task that built it; meta.json names S and the shard bounds. A version is the
graph, not its sharding: a re-run with another graph.shards reuses the files stored first (read_graph
gathers them either way).

A version is content-addressed (input checksum + ingest settings), so a re-run on unchanged input
finds the version already there and skips ingest. `meta.json` is written last: a version without it
is incomplete and ignored.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from embedlake.lake import FileEntry, Lake
from embedlake.workers.graph.csr import CSRGraph
from embedlake.workers.graph.shards import CSRShard, gather_csr


def graph_version(checksum: str, spec_fields: dict) -> str:
    h = hashlib.sha256((checksum + json.dumps(spec_fields, sort_keys=True)).encode()).hexdigest()
    return "v-" + h[:16]


def node_id_array(node_ids: np.ndarray) -> pa.Array:
    if node_ids.dtype == object or node_ids.dtype.kind in "US":
        return pa.array([str(x) for x in node_ids], type=pa.string())
    return pa.array(np.asarray(node_ids, dtype=np.int64))


def shard_dir(dataset: str, version: str, shards: int, index: int) -> str:
    """Where shard `index` of an S-shard version lives: the version folder itself for one shard
    (today's layout), else `<version>/shards=S/part-NNNN`."""
    base = Lake.graph_dir(dataset, version)
    return base if shards == 1 else f"{base}/shards={int(shards)}/part-{int(index):04d}"


def write_graph_shard(lake: Lake, dataset: str, version: str, shards: int, index: int, shard: CSRShard,
                      node_ids: np.ndarray) -> list[dict]:
    """One shard's files (local indptr, global neighbour ids, weights, node ids of its rows),
    written by the task that built it; meta.json (write_graph_meta) comes after all of them."""
    base = shard_dir(dataset, version, shards, index)
    files: list[FileEntry] = [lake.write_npy(f"{base}/indptr.npy", shard.indptr),
                              lake.write_npy(f"{base}/indices.npy", shard.indices)]
    if shard.weights is not None:
        files.append(lake.write_npy(f"{base}/weights.npy", shard.weights))
    files.append(lake.write_parquet(f"{base}/nodes.parquet", pa.table({"node": node_id_array(node_ids)})))
    return [f.to_dict() for f in files]


def write_graph_meta(lake: Lake, dataset: str, version: str, meta: dict, shard_files: list[list[dict]],
                     directed: bool, labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """Labels, then meta.json, last: a version without meta.json is incomplete and ignored."""
    base = Lake.graph_dir(dataset, version)
    entries = [e for files in shard_files for e in files]
    if labels is not None:
        ni, li, names = labels
        entries.append(lake.write_parquet(f"{base}/labels.parquet", pa.table(
            {"node_idx": pa.array(ni, pa.int32()), "label_idx": pa.array(li, pa.int32())})).to_dict())
        entries.append(lake.write_parquet(f"{base}/label_names.parquet",
                                          pa.table({"label": pa.array([str(x) for x in names])})).to_dict())
    lake.write_json(f"{base}/meta.json", {**meta, "directed": directed, "files": entries})
    return entries + [{"path": f"{base}/meta.json", "rows": 0, "bytes": 0, "sha256": ""}]


def write_graph(lake: Lake, dataset: str, version: str, csr: CSRGraph, node_ids: np.ndarray, meta: dict,
                labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """A one-shard version: the whole CSR and node-id map, then meta.json."""
    shard = CSRShard(0, csr.num_nodes, csr.num_nodes, csr.indptr, csr.indices, csr.weights, csr.directed)
    files = write_graph_shard(lake, dataset, version, 1, 0, shard, node_ids)
    return write_graph_meta(lake, dataset, version, meta, [files], csr.directed, labels)


def read_graph_shard(lake: Lake, dataset: str, version: str, shards: int, index: int, lo: int, hi: int,
                     directed: bool, weighted: bool) -> tuple[CSRShard, np.ndarray]:
    """(shard, node ids of its rows) from its files; hi = -1: up to the end of its indptr."""
    base = shard_dir(dataset, version, shards, index)
    indptr = lake.read_npy(f"{base}/indptr.npy")
    hi = lo + len(indptr) - 1 if hi < 0 else hi
    w = lake.read_npy(f"{base}/weights.npy") if weighted else None
    nodes = lake.read_parquet(f"{base}/nodes.parquet").column("node")
    node_ids = nodes.to_numpy(zero_copy_only=False)
    if pa.types.is_string(nodes.type) or pa.types.is_large_string(nodes.type):
        node_ids = node_ids.astype(object)
    return CSRShard(lo, hi, 0, indptr, lake.read_npy(f"{base}/indices.npy"), w, directed), node_ids


def graph_exists(lake: Lake, dataset: str, version: str) -> bool:
    return lake.exists(f"{Lake.graph_dir(dataset, version)}/meta.json")


def read_graph(lake: Lake, dataset: str, version: str):
    """(CSRGraph, node_ids, labels or None, meta)."""
    base = Lake.graph_dir(dataset, version)
    meta = lake.read_json(f"{base}/meta.json")
    names = {e["path"].rsplit("/", 1)[-1] for e in meta["files"]}
    shards = int(meta.get("shards", 1))
    bounds = [tuple(b) for b in meta["shard_bounds"]] if shards > 1 else [(0, -1)]
    parts = [read_graph_shard(lake, dataset, version, shards, i, lo, hi, bool(meta["directed"]), "weights.npy" in names)
             for i, (lo, hi) in enumerate(bounds)]
    csr = gather_csr([p[0] for p in parts])
    node_ids = np.concatenate([p[1] for p in parts]) if shards > 1 else parts[0][1]
    labels = None
    if "labels.parquet" in names:
        t = lake.read_parquet(f"{base}/labels.parquet")
        ln = lake.read_parquet(f"{base}/label_names.parquet").column("label").to_numpy(zero_copy_only=False)
        labels = (t.column("node_idx").to_numpy(), t.column("label_idx").to_numpy(), ln)
    return csr, node_ids, labels, meta
