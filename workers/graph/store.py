"""Graph versions in the lake: CSR arrays (.npy, no pickle) + node-id map + labels (Parquet).

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


def graph_version(checksum: str, spec_fields: dict) -> str:
    h = hashlib.sha256((checksum + json.dumps(spec_fields, sort_keys=True)).encode()).hexdigest()
    return "v-" + h[:16]


def node_id_array(node_ids: np.ndarray) -> pa.Array:
    if node_ids.dtype == object or node_ids.dtype.kind in "US":
        return pa.array([str(x) for x in node_ids], type=pa.string())
    return pa.array(np.asarray(node_ids, dtype=np.int64))


def write_graph(lake: Lake, dataset: str, version: str, csr: CSRGraph, node_ids: np.ndarray, meta: dict,
                labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[dict]:
    base = Lake.graph_dir(dataset, version)
    files: list[FileEntry] = [lake.write_npy(f"{base}/indptr.npy", csr.indptr),
                              lake.write_npy(f"{base}/indices.npy", csr.indices)]
    if csr.weights is not None:
        files.append(lake.write_npy(f"{base}/weights.npy", csr.weights))
    files.append(lake.write_parquet(f"{base}/nodes.parquet", pa.table({"node": node_id_array(node_ids)})))
    if labels is not None:
        ni, li, names = labels
        files.append(lake.write_parquet(f"{base}/labels.parquet", pa.table(
            {"node_idx": pa.array(ni, pa.int32()), "label_idx": pa.array(li, pa.int32())})))
        files.append(lake.write_parquet(f"{base}/label_names.parquet",
                                        pa.table({"label": pa.array([str(x) for x in names])})))
    entries = [f.to_dict() for f in files]
    lake.write_json(f"{base}/meta.json", {**meta, "directed": csr.directed, "files": entries})
    return entries + [{"path": f"{base}/meta.json", "rows": 0, "bytes": 0, "sha256": ""}]


def graph_exists(lake: Lake, dataset: str, version: str) -> bool:
    return lake.exists(f"{Lake.graph_dir(dataset, version)}/meta.json")


def read_graph(lake: Lake, dataset: str, version: str):
    """(CSRGraph, node_ids, labels or None, meta)."""
    base = Lake.graph_dir(dataset, version)
    meta = lake.read_json(f"{base}/meta.json")
    names = {e["path"].rsplit("/", 1)[-1] for e in meta["files"]}
    w = lake.read_npy(f"{base}/weights.npy") if "weights.npy" in names else None
    csr = CSRGraph(lake.read_npy(f"{base}/indptr.npy"), lake.read_npy(f"{base}/indices.npy"), w, meta["directed"])
    nodes = lake.read_parquet(f"{base}/nodes.parquet").column("node")
    node_ids = nodes.to_numpy(zero_copy_only=False)
    if pa.types.is_string(nodes.type) or pa.types.is_large_string(nodes.type):
        node_ids = node_ids.astype(object)
    labels = None
    if "labels.parquet" in names:
        t = lake.read_parquet(f"{base}/labels.parquet")
        ln = lake.read_parquet(f"{base}/label_names.parquet").column("label").to_numpy(zero_copy_only=False)
        labels = (t.column("node_idx").to_numpy(), t.column("label_idx").to_numpy(), ln)
    return csr, node_ids, labels, meta
