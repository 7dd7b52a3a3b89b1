"""Parallel, sharded ingest on Ray (the steps are workers/graph/ingest_parallel.py's): one task per
input range parses it, tasks per value bucket number the distinct ids, one task per range routes its
arcs to the shards, and one task per shard builds and writes its CSR rows. No task receives all
edges, and the driver only sees small dicts (counts, digests, samples of ids).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from embedlake.config import GraphConfig, InputConfig
from embedlake.errors import InputError
from embedlake.lake import Lake
from embedlake.tasks.remote import remote
from embedlake.workers.graph import ingest_parallel as ip
from embedlake.workers.graph import stages as gs
from embedlake.workers.graph.ingest import EdgeSpec
from embedlake.workers.graph.shards import resolve_shards, shard_bounds, shard_starts
from embedlake.workers.graph.store import graph_exists, graph_version

MAX_BUCKETS = 1024


@dataclass
class IngestedShards:
    """What the parallel ingest made: the graph's meta, its S shards' bounds, arcs and ObjectRefs."""
    meta: dict
    bounds: list[tuple[int, int]]
    arcs: list[int]
    csr_refs: list
    ids_refs: list
    labels_ref: object


@dataclass
class DenseIds:
    """The dense numbering: n, and for each range the refs that map its local ids to dense ids
    (its bucket positions with `offsets`, or, offsets None, its ids themselves: ids are dense)."""
    n: int
    offsets: list[int] | None
    bucket_refs: list
    counts: list[int]
    parts: list[list]
    splitters: object = None     # the ids that cut the value buckets (ingest_parallel.split_ids), None: dense


def opts(max_retries: int, **more) -> dict:
    return {"num_cpus": 1, "max_retries": max_retries, **more}


def parallel_ingest(lake, dataset: str, input_cfg: InputConfig, graph_cfg: GraphConfig, max_retries: int = 3,
                    range_bytes: int = ip.RANGE_BYTES) -> IngestedShards:
    """Edge files -> S shards (S = graph.shards, or `auto` from the node count and an upper bound of
    the arcs), each built and written by its own task; meta.json is written last."""
    import ray
    t0 = time.perf_counter()
    spec, ranges = ray.get(remote(gs.plan_stage, "ingest", **opts(max_retries)).remote(lake, input_cfg, range_bytes))
    parsed = [remote(gs.parse_stage, "ingest", **opts(max_retries, num_returns=3)).remote(lake, r, spec)
              for r in ranges]
    infos = [ray.get(p[0]) for p in parsed]        # in input order: the first bad line is the one reported
    check_edges(input_cfg.edges, spec, infos)
    ids = dense_ids(spec, infos, parsed, max_retries)
    rows, loops = sum(i["rows"] for i in infos), sum(i["loops"] for i in infos)
    keep_loops = spec.self_loops == "keep"
    arcs_bound = (rows - loops) * (1 if spec.directed else 2) + (loops if keep_loops else 0)
    S = resolve_shards(graph_cfg.shards, ids.n, arcs_bound, spec.weighted, graph_cfg.shard_budget_mb)
    bounds = shard_bounds(ids.n, S)
    labels_ref, checksum = labels(lake, input_cfg, spec, ids, ip.combined_checksum(infos), max_retries)
    version = graph_version(checksum, gs.input_spec_fields(input_cfg))
    reused = graph_exists(Lake(lake), dataset, version)
    routed = route(parsed, ids, bounds, spec, max_retries)
    del parsed
    built = build_shards(lake, dataset, version, reused, ids, bounds, spec, routed, max_retries)
    del routed
    shard_infos = ray.get([b[2] for b in built])
    sources = list(dict.fromkeys(r.path for r in ranges))
    stats = {"nodes": ids.n, "input_rows": rows, "arcs": sum(i["arcs"] for i in shard_infos),
             "directed": spec.directed, "weighted": spec.weighted,
             "isolated_nodes": sum(i["isolated"] for i in shard_infos)}
    if not reused:
        ray.get(remote(gs.graph_meta_stage, "ingest", **opts(max_retries)).remote(
            lake, dataset, version, gs.graph_meta_fields(sources, checksum, stats, spec.id_type, bounds),
            spec.directed, labels_ref, *[b[2] for b in built]))
    meta = gs.handle_meta(Lake(lake), dataset, version, reused, stats, spec.id_type, sources,
                          bool(input_cfg.labels), t0) | {"shards": S, "ranges": len(ranges)}
    return IngestedShards(meta, bounds, [i["arcs"] for i in shard_infos], [b[0] for b in built],
                          [b[1] for b in built], labels_ref)


def check_edges(uri: str, spec: EdgeSpec, infos: list[dict]) -> None:
    """The one-task reader's whole-input checks, from the ranges' counts (same messages, same order)."""
    rows = sum(i["rows"] for i in infos)
    if rows == 0:
        raise InputError("the graph is empty: no edges found", path=uri)
    if spec.id_type == "int" and spec.num_nodes is not None:
        hi = max(i["max"] for i in infos if "max" in i)
        if hi >= spec.num_nodes:
            raise InputError(f"node id {hi} is outside 0..{spec.num_nodes - 1} declared by num_nodes", path=uri)
    if spec.self_loops == "drop" and rows == sum(i["loops"] for i in infos):
        raise InputError("the graph is empty after dropping self-loops", path=uri)


def dense_ids(spec: EdgeSpec, infos: list[dict], parsed: list, max_retries: int) -> DenseIds:
    """Dense ids: int ids 0..num_nodes-1 are dense already; otherwise a distributed sort of the
    ranges' distinct ids (splitters from their samples, one task per value bucket)."""
    import ray
    if spec.id_type == "int" and spec.num_nodes is not None and min(i["min"] for i in infos if "min" in i) >= 0:
        return DenseIds(spec.num_nodes, None, [], [], [[p[2]] for p in parsed])
    splitters = ip.choose_splitters([i["sample"] for i in infos], min(len(infos), MAX_BUCKETS))
    B, R = len(splitters) + 1, len(parsed)
    if B == 1:
        pieces = [[p[2]] for p in parsed]
    else:
        split = remote(gs.split_stage, "ingest", **opts(max_retries, num_returns=B))
        pieces = [split.remote(p[2], splitters) for p in parsed]
    bucket = remote(gs.bucket_stage, "ingest", **opts(max_retries, num_returns=R + 2))
    buckets = [bucket.remote(*[pieces[r][b] for r in range(R)]) for b in range(B)]
    counts = [int(c) for c in ray.get([b[1] for b in buckets])]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
    parts = [[buckets[b][2 + r] for b in range(B)] for r in range(R)]
    return DenseIds(int(offsets[-1]), offsets[:-1], [b[0] for b in buckets], counts, parts, splitters)


def labels(lake, input_cfg: InputConfig, spec: EdgeSpec, ids: DenseIds, checksum: str, max_retries: int):
    """(labels ref, the version's checksum): labels are checked against the node ids before
    anything is written, and their checksum joins the input's, as in the one-task ingest.

    No task holds the whole node-id map: one task parses the label files and cuts their rows by
    id bucket, one task per bucket numbers its rows from that bucket's ids (int ids that are dense
    already need none), and one task merges them into read_labels' (node_idx, label_idx, names)."""
    import ray
    if not input_cfg.labels:
        return ray.put(None), checksum
    if ids.offsets is None:
        rows, numbered = remote(ip.dense_label_rows, "ingest", **opts(max_retries, num_returns=2)).remote(
            lake, input_cfg.labels, ids.n)
        numbered = [numbered]
    else:
        B = len(ids.bucket_refs)
        cut = remote(ip.label_bucket_pieces, "ingest", **opts(max_retries, num_returns=1 + B)).remote(
            lake, input_cfg.labels, spec.id_type, ids.splitters)
        rows, number = cut[0], remote(ip.label_bucket_ids, "ingest", **opts(max_retries))
        numbered = [number.remote(cut[1 + b], ids.bucket_refs[b], ids.offsets[b]) for b in range(B)]
    labels_ref = remote(ip.merged_labels, "ingest", **opts(max_retries)).remote(rows, *numbered)
    return labels_ref, checksum + ":" + ray.get(remote(gs.labels_checksum, "ingest", **opts(max_retries)).remote(
        labels_ref))


def route(parsed: list, ids: DenseIds, bounds: list[tuple[int, int]], spec: EdgeSpec, max_retries: int) -> list:
    """For each range, one ref per shard: the range's arcs whose source row the shard owns."""
    S = len(bounds)
    fn = remote(gs.route_stage, "ingest", **opts(max_retries, num_returns=S))
    starts = shard_starts(bounds)
    out = []
    for p, part in zip(parsed, ids.parts):
        refs = fn.remote(p[1], starts, spec.directed, spec.self_loops == "keep", ids.offsets, *part)
        out.append(refs if S > 1 else [refs])
    return out


def build_shards(lake, dataset: str, version: str, reused: bool, ids: DenseIds, bounds: list[tuple[int, int]],
                 spec: EdgeSpec, routed: list, max_retries: int) -> list:
    """One task per shard: (csr ref, node ids ref, info ref); each writes its own lake files."""
    fn = remote(gs.shard_stage, "ingest", **opts(max_retries, num_returns=3))
    out = []
    for s, (lo, hi) in enumerate(bounds):
        target = {"dataset": dataset, "version": version, "shards": len(bounds), "index": s,
                  "write": not reused, "nodes": ids.n}
        if ids.offsets is None:
            sel = []
        else:
            sel = [b for b, (off, c) in enumerate(zip(ids.offsets, ids.counts)) if off < hi and off + c > lo]
        out.append(fn.remote(lake, target, lo, hi, spec, len(routed), [ids.offsets[b] for b in sel],
                             *[r[s] for r in routed], *[ids.bucket_refs[b] for b in sel]))
    return out
