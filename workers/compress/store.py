"""Compressed tables in the lake: layout, row-partition writers (run in Ray workers) and readers.

One compress invocation has one run id; each codec becomes its own committed run, with manifest
method ``<source method>.<codec>`` (e.g. ``deepwalk.int8``) so it never shadows the source
method's "latest" embeddings; each is a Delta table (the codes) plus a codebook Delta table:

    <lake>/tables/<dataset>/<method>.<codec>/run_id=<run_id>/partition=<k>/part-<k>.parquet
        node   original id (original type)
        code   binary, B bytes per row  (Delta has no fixed-size binary; B is the
               `embedlake.code_bytes` metadata of the code field)
        scale, bias                     (float32 on disk: Delta has no float16; the codec's dtype,
                                        float16 or float32, is the field's `embedlake.dtype`;
                                        int8, int4: both; binary: scale)
    <lake>/codebooks/<dataset>/<method>.<codec>/run_id=<run_id>/codebooks.parquet
        array (string), row (int32), values (list<float32>): PQ codebooks, the OPQ rotation, the
        PCA mean / components. Array shapes, the run id and the sha256 of every code file are in
        the file's key-value metadata; the run record lists it under files["codebooks"], so a
        codebook is pinned to the codes it decodes (same run, committed with them).

The manifest records the codec, its parameters, bytes per vector, compression ratio, the measured
quality and the source run (extra["source"]).
"""
from __future__ import annotations

import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedlake.config import TrainConfig, WalkConfig
from embedlake.lake import Lake, check_name
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress.sample import sample_rows

CODE_KIND = "tables"
CODEBOOK_KIND = "codebooks"


def table_method(method: str, codec: str) -> str:
    """Manifest method name of a compressed table: `deepwalk.int8`."""
    return check_name(f"{method}.{cz.check_codec(codec)}", "method")


def split_table_method(name: str) -> tuple[str, str]:
    method, _, codec = name.rpartition(".")
    if not method or codec not in cz.CODECS:
        raise ValueError(f"{name!r} is not a compressed-table method (<method>.<codec>)")
    return method, codec


def codec_dir(dataset: str, method: str, run_id: str, codec: str) -> str:
    """The run's folder in its codes table (`method`: the source method)."""
    return Lake.run_dir("tables", dataset, table_method(method, codec), run_id)


def codebook_path(dataset: str, method: str, run_id: str, codec: str) -> str:
    return f"{Lake.run_dir(CODEBOOK_KIND, dataset, table_method(method, codec), run_id)}/codebooks.parquet"


def codes_table(ids: pa.Array | np.ndarray, cols: dict[str, np.ndarray]) -> pa.Table:
    code = np.ascontiguousarray(cols["code"], dtype=np.uint8)
    n, B = code.shape
    ids = ids if isinstance(ids, pa.Array) else pa.array(ids)
    offsets = pa.py_buffer(np.arange(0, (n + 1) * B, B, dtype=np.int32).tobytes())
    fields = [pa.field("node", ids.type), pa.field("code", pa.binary(), metadata={"embedlake.code_bytes": str(B)})]
    arrays = [ids, pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(code.tobytes())])]
    for k in ("scale", "bias"):
        if k in cols:
            v = np.asarray(cols[k])
            # Delta has no float16: stored as float32 (exact), the codec's dtype in the field metadata
            arrays.append(pa.array(v.astype(np.float32) if v.dtype == np.float16 else v))
            fields.append(pa.field(k, arrays[-1].type, metadata={"embedlake.dtype": str(v.dtype)}))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def table_columns(t: pa.Table) -> dict[str, np.ndarray]:
    """Per-row numpy columns (code uint8 [n, B], scale, bias) from a codes table."""
    code = t.column("code").combine_chunks()
    if pa.types.is_fixed_size_binary(code.type):
        code = code.cast(pa.binary())
    offsets = np.frombuffer(code.buffers()[1], dtype=np.int32, count=code.offset + len(code) + 1)[code.offset:]
    B = int(offsets[1] - offsets[0]) if len(code) else 0
    if len(code) and int(offsets[-1] - offsets[0]) != B * len(code):
        raise ValueError("the code column holds codes of different widths")
    raw = np.frombuffer(code.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]] if len(code) else \
        np.zeros(0, np.uint8)
    cols = {"code": raw.reshape(len(code), B).copy()}
    for k in ("scale", "bias"):
        if k in t.column_names:
            dtype = (t.schema.field(k).metadata or {}).get(b"embedlake.dtype")
            v = t.column(k).to_numpy()
            cols[k] = v.astype(dtype.decode()) if dtype else v
    return cols


def encode_partition(lake: Lake | str, *, dataset: str, method: str, run_id: str, codec: str, params: dict,
                     partition: int, lo: int, hi: int, node_ids, X: np.ndarray | None, state: dict,
                     threads: int = 1) -> dict:
    """Ray worker body: encode rows lo:hi and write their Parquet part (data file only).

    X: the full table, or None for the graph-trained codecs (hash, compose, qr, unified), whose
    codes come from the row position and `state`, never from row values (embed_graph's
    train.table path has no full table to pass). Returns the file entry plus `encode_s`.
    """
    from embedlake.workers.graph.store import node_id_array
    lake = Lake(lake)
    t0 = time.perf_counter()
    if X is None and codec not in cz.GRAPH_TRAINED:
        raise ValueError(f"{codec} codec: encoding needs the rows' values (X)")
    rows = X[lo:hi] if X is not None else np.empty((hi - lo, 0), np.float32)   # codes use the shape only
    cols = cz.encode(codec, rows, state, params, threads, row_offset=lo)
    enc = time.perf_counter() - t0
    ids = node_ids[lo:hi]
    ids = ids if isinstance(ids, pa.Array) else node_id_array(np.asarray(ids))
    rel = Lake.part_path("tables", dataset, table_method(method, codec), run_id, partition)
    entry = lake.write_parquet(rel, codes_table(ids, cols)).to_dict()
    return {**entry, "encode_s": round(enc, 4)}


def fit_codec(X: np.ndarray, codec: str, params: dict, threads: int = 1) -> tuple[dict, float]:
    """Ray worker body: train the codec's state on its sample of X; returns (state, seconds)."""
    t0 = time.perf_counter()
    rows = sample_rows(X.shape[0], params.get("train_sample", 0), params.get("seed", 0))
    state = cz.fit(codec, X[rows], params, threads) if codec in cz.TRAINED else {}
    return state, round(time.perf_counter() - t0, 4)


def fit_graph_table(csr: tuple, codec: str, params: dict, walk: WalkConfig, train: TrainConfig,
                    method: str = "deepwalk", threads: int = 0, progress=None) -> tuple[dict, dict]:
    """Ray worker body of the graph-trained codecs (hash, compose, qr, unified): walk the graph
    `csr` = (indptr, indices, weights, directed) with `walk` / `train` settings and train the
    K-row table by skip-gram; the full n x d table never exists. Takes the CSR itself (an
    ObjectRef argument resolves to it), so embed_graph's train.table path trains straight from
    its ingested graph and the compress flow from the source run's graph read back from the lake.

    Returns (state, info): state {"table": K x d} (+ "codes" n x R level-local for the
    compositional codecs: they become the rows' `code` column, the table the codebook file);
    info {"fit_s", "stats" (tokens, loss...), ...}. threads: kernel threads (the run's, never
    train.threads' 0 = all); progress: reporter(done, total, loss=...) of tasks/progress.py
    (tokens trained), or None."""
    from embedlake.workers.compress.compose import train_compositional
    from embedlake.workers.compress.hashing import train_hashed
    t0 = time.perf_counter()
    if method not in ("deepwalk", "node2vec"):
        raise ValueError(f"{codec} codec: the method must be deepwalk or node2vec, not {method!r}")
    cb = (lambda done, total, loss: progress(done, total, loss=loss)) if progress is not None else None
    if codec == "hash":
        W, stats = train_hashed(csr, params["buckets"], walk, train, method, params.get("seed", 0), threads,
                                progress=cb)
        state, info = {"table": W}, {"stats": stats}
    elif codec in cz.COMPOSED:
        state, info = train_compositional(csr, codec, params, walk, train, method, seed=params.get("seed", 0),
                                          sketch_dim=params.get("sketch_dim", 256),
                                          train_sample=params.get("train_sample", 100_000), threads=threads,
                                          progress=cb)
    else:
        raise ValueError(f"{codec!r} is not trained from the graph (hash, {', '.join(cz.COMPOSED)})")
    info["fit_s"] = round(time.perf_counter() - t0, 4)
    return state, info


def _source_graph(lake: Lake | str, dataset: str, graph_meta: dict, codec: str, rows: int) -> tuple:
    from embedlake.workers.graph.store import read_graph
    csr, _, _, _ = read_graph(Lake(lake), dataset, graph_meta["version"])
    if csr.num_nodes != rows:
        raise ValueError(f"{codec} codec: graph has {csr.num_nodes} nodes but the source table {rows} rows")
    return csr.indptr, csr.indices, csr.weights, csr.directed


def fit_source_graph_table(lake: Lake | str, *, dataset: str, graph_meta: dict, walk: WalkConfig,
                           train: TrainConfig, method: str, codec: str, params: dict, rows: int,
                           threads: int = 0) -> tuple[dict, float]:
    """Ray worker body of the graph-trained codecs (hash, compose, qr, unified) of a committed run:
    the source run's graph, re-walked with the source run's `walk` / `train` sections
    (fit_graph_table). Returns (state, seconds)."""
    if method not in ("deepwalk", "node2vec"):
        raise ValueError(f"{codec} codec: the source method must be deepwalk or node2vec, not {method!r}")
    csr = _source_graph(lake, dataset, graph_meta, codec, rows)
    state, info = fit_graph_table(csr, codec, params, walk, train, method, threads)
    return state, info["fit_s"]


PER_ROW_STATE = ("codes",)      # trained per-row state: stored in the rows' code column, not the codebook


def write_codebooks(lake: Lake | str, dataset: str, method: str, run_id: str, codec: str, state: dict,
                    code_files: list[dict]) -> dict | None:
    """The sibling codebook table, pinned to its code files by run id and their checksums."""
    state = {k: v for k, v in state.items() if k not in PER_ROW_STATE}
    if not state:
        return None
    lake = Lake(lake)
    names, rows, values, shapes = [], [], [], {}
    for name in sorted(state):
        a = np.asarray(state[name], dtype=np.float32)
        shapes[name] = list(a.shape)
        a2 = a.reshape(1, -1) if a.ndim < 2 else a.reshape(-1, a.shape[-1])
        for i, r in enumerate(a2):
            names.append(name)
            rows.append(i)
            values.append(r)
    t = pa.table({"array": pa.array(names, pa.string()), "row": pa.array(rows, pa.int32()),
                  "values": pa.array(values, pa.list_(pa.float32()))})
    meta = {"embedlake.shapes": json.dumps(shapes), "embedlake.run_id": run_id, "embedlake.codec": codec,
            "embedlake.codes_sha256": json.dumps([f["sha256"] for f in code_files])}
    t = t.replace_schema_metadata(meta)
    return lake.write_parquet(codebook_path(dataset, method, run_id, codec), t).to_dict()


def read_codebooks(lake: Lake | str, rel: str) -> dict[str, np.ndarray]:
    lake = Lake(lake)
    t = pq.read_table(io.BytesIO(lake.read_bytes(rel)))
    shapes = json.loads(t.schema.metadata[b"embedlake.shapes"])
    names = t.column("array").to_numpy(zero_copy_only=False)
    vals = t.column("values").to_pylist()
    out = {}
    for name, shape in shapes.items():
        sel = [v for nm, v in zip(names, vals) if nm == name]
        out[name] = np.asarray(sel, dtype=np.float32).reshape(shape)
    return out


def read_compressed(lake: Lake | str, dataset: str, method: str, codec: str, run: str = "latest"
                    ) -> cz.CompressedTable:
    """A committed compressed table (latest by default) as a `CompressedTable` (decode / search).

    `method` is the source method (deepwalk); `run` the compressed table's run id.
    """
    lake = Lake(lake)
    man = lake.manifest(dataset, table_method(method, codec), run)
    return table_from_manifest(lake, man)


def table_from_manifest(lake: Lake, man) -> cz.CompressedTable:
    ex = man.extra
    tables = [lake.read_parquet(e["path"]) for e in man.files.get(CODE_KIND, [])]
    t = pa.concat_tables(tables)
    cols = table_columns(t)
    books = man.files.get(CODEBOOK_KIND, [])
    state = read_codebooks(lake, books[0]["path"]) if books else {}
    ids = t.column("node").to_numpy(zero_copy_only=False)
    return cz.CompressedTable(ex["codec"], ex["params"], int(ex["dim"]), cols, state, ids)


def eval_rows(lake: Lake | str, manifest_fields: dict, labels, split: dict | None):
    """Ray worker body: read a written (not yet committed) table back from the lake and
    materialise only the rows the evaluations touch -- labelled nodes (node classification) and
    the endpoints of held-out edges and sampled non-edges (link prediction) -- never n x d.

    Returns (X_sub float32 [u, d], labels (node_idx, label_idx) re-indexed into X_sub or None,
    split re-indexed into X_sub or None, info {"rows", "decode_s"}). Re-indexing is monotone
    (searchsorted on the sorted row set), so node classification sees its nodes in the same
    order and draws the same splits as on the full matrix: the figures equal those of the
    materialised table."""
    from embedlake.lake import Manifest
    t = table_from_manifest(Lake(lake), Manifest(**manifest_fields))
    parts = []
    if labels is not None:
        parts.append(np.asarray(labels[0], np.int64))
    keys = ("test_src", "test_dst", "neg_src", "neg_dst")
    if split is not None:
        parts += [np.asarray(split[k], np.int64) for k in keys]
    rows = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    t0 = time.perf_counter()
    X = np.ascontiguousarray(t.decode(rows), dtype=np.float32) if len(rows) else np.zeros((0, t.dim), np.float32)
    dec = round(time.perf_counter() - t0, 4)
    at = lambda a: np.searchsorted(rows, np.asarray(a, np.int64))
    lab = (at(labels[0]), np.asarray(labels[1])) if labels is not None else None
    spl = {**split, **{k: at(split[k]) for k in keys}} if split is not None else None
    return X, lab, spl, {"rows": int(len(rows)), "of": t.rows, "decode_s": dec}


# ---------------------------------------------------------------- source runs

def parse_source(text: str) -> tuple[str, str, str]:
    """'dataset/method[/run]' -> (dataset, method, run or 'latest')."""
    parts = [p for p in str(text).strip("/").split("/") if p]
    if len(parts) not in (2, 3):
        raise ValueError(f"--from {text!r}: expected <dataset>/<method>[/<run_id>]")
    ds, m = check_name(parts[0], "dataset"), check_name(parts[1], "method")
    run = parts[2] if len(parts) == 3 else "latest"
    if run.startswith("run="):
        run = run[4:]
    return ds, m, run if run == "latest" else check_name(run, "run")


def load_source(lake: Lake | str, dataset: str, method: str, run: str):
    """Ray worker body: (node ids, float32 matrix) of a committed embeddings run."""
    from embedlake.reader import load_matrix
    return load_matrix(Lake(lake), dataset, method, run)


def load_labels(lake: Lake | str, dataset: str, graph_meta: dict | None, row_ids: np.ndarray):
    """(node_idx, label_idx) with node_idx as ROW positions of the source table, or None.

    The graph version comes from the source manifest (extra["graph"]); labels are stored against
    the graph's dense ids, mapped here through the node-id map to the table's rows.
    """
    from embedlake.workers.graph.store import graph_exists, read_graph
    lake = Lake(lake)
    if not graph_meta or not graph_meta.get("labelled") or not graph_meta.get("version"):
        return None
    if not graph_exists(lake, dataset, graph_meta["version"]):
        return None
    _, node_ids, labels, _ = read_graph(lake, dataset, graph_meta["version"])
    if labels is None:
        return None
    ni, li, _ = labels
    row_ids = np.asarray(row_ids)
    if len(node_ids) == len(row_ids) and np.array_equal(np.asarray(node_ids, dtype=row_ids.dtype), row_ids):
        return ni, li
    pos = {v: i for i, v in enumerate(row_ids.tolist())}
    orig = np.asarray(node_ids)[ni]
    rows = np.array([pos.get(v, -1) for v in orig.tolist()], dtype=np.int64)
    keep = rows >= 0
    return rows[keep], li[keep]
