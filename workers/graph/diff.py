"""The difference between two versions of a graph: what an incremental run updates.

An incremental run (issue 18) starts from the previous committed run's table, whose rows follow the
previous graph version's dense ids. `graph_diff` matches the two versions by ORIGINAL node id and
reports, in the new version's dense ids, what changed: nodes added and removed, edges added, removed
and reweighted, where each new node's row sits in the previous table (`old_index`), and which nodes
touch a change (`changed`). `affected_nodes` grows the changed set by r hops: the nodes whose walks
an incremental walk run redraws.

Why it looks like this
- Pure numpy, vectorised: ids are matched by one sort + searchsorted, edges by sorting 64-bit keys
  (src * n_new + dst) and merging, so a diff of two BlogCatalog-sized graphs takes milliseconds and
  nothing loops in Python over nodes or edges.
- Ids may be ints or strings (ingest keeps either); a version with int ids diffed against one with
  string ids compares their string forms.
- Undirected graphs store each edge as two arcs; an edge is counted once (src <= dst). Directed
  graphs compare arcs. Multi-edges compare by multiplicity: a key whose count or summed weight
  differs between the versions is `reweighted` (its endpoints are changed, the edge counts as one
  change).
- Removed edges whose endpoint was removed cannot name that endpoint in new dense ids: it is -1 in
  `edges_removed` (second on an undirected graph; the surviving endpoint still counts as changed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedlake.workers.graph.csr import CSRGraph


@dataclass
class GraphDiff:
    """Version old -> version new, by original id. Edge arrays are int64 [k, 2] in NEW dense ids."""
    num_old_nodes: int
    num_new_nodes: int
    num_old_edges: int             # edges (undirected: counted once) of the old version
    num_new_edges: int
    nodes_added: np.ndarray        # original ids of nodes only in the new version
    nodes_removed: np.ndarray      # original ids of nodes only in the old version
    edges_added: np.ndarray        # int64 [k, 2]
    edges_removed: np.ndarray      # int64 [k, 2]; -1 for an endpoint that was removed
    edges_reweighted: np.ndarray   # int64 [k, 2]: in both versions, other weight or multiplicity
    old_index: np.ndarray          # int64 [n_new]: row in the old version, -1 for new nodes
    changed: np.ndarray            # bool [n_new]: new nodes + surviving endpoints of changed edges
    directed: bool = False

    @property
    def num_changed_edges(self) -> int:
        return int(len(self.edges_added) + len(self.edges_removed) + len(self.edges_reweighted))

    @property
    def change_fraction(self) -> float:
        """Changed edges over the old version's edges (1.0 when the old graph had none): the figure
        `train.incremental_max_change` is compared with."""
        return self.num_changed_edges / self.num_old_edges if self.num_old_edges else 1.0

    def counts(self) -> dict:
        """The diff's counts, for the run record and the summary."""
        return {"nodes_added": int(len(self.nodes_added)), "nodes_removed": int(len(self.nodes_removed)),
                "edges_added": int(len(self.edges_added)), "edges_removed": int(len(self.edges_removed)),
                "edges_reweighted": int(len(self.edges_reweighted)), "old_nodes": self.num_old_nodes,
                "new_nodes": self.num_new_nodes, "old_edges": self.num_old_edges, "new_edges": self.num_new_edges,
                "change_fraction": round(self.change_fraction, 6), "changed_nodes": int(self.changed.sum())}


def comparable_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both id arrays in one sortable dtype: int64 when both are integers, else unicode strings."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)
    return np.asarray(a).astype(str), np.asarray(b).astype(str)


def match_ids(old_ids: np.ndarray, new_ids: np.ndarray) -> np.ndarray:
    """int64 [n_new]: the old dense id of each new node with the same original id, else -1.
    Ids are unique within a version (ingest numbers distinct ids)."""
    old, new = comparable_ids(np.asarray(old_ids), np.asarray(new_ids))
    out = np.full(len(new), -1, dtype=np.int64)
    if len(old) == 0 or len(new) == 0:
        return out
    order = np.argsort(old, kind="stable")
    pos = np.searchsorted(old[order], new)
    pos_c = np.minimum(pos, len(old) - 1)
    hit = old[order][pos_c] == new
    out[hit] = order[pos_c[hit]]
    return out


def edge_arrays(csr: CSRGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, weight float64) of the graph's edges: every arc if directed, else the arcs with
    src <= dst (each undirected edge once)."""
    src = np.repeat(np.arange(csr.num_nodes, dtype=np.int64), np.diff(csr.indptr))
    dst = csr.indices.astype(np.int64)
    w = (np.ones(len(dst), dtype=np.float64) if csr.weights is None else csr.weights.astype(np.float64))
    if not csr.directed:
        keep = src <= dst
        src, dst, w = src[keep], dst[keep], w[keep]
    return src, dst, w


def edge_keys(src: np.ndarray, dst: np.ndarray, w: np.ndarray, n: int, directed: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys src * n + dst, multiplicity, summed weight), undirected keys with src <= dst."""
    if not directed:
        src, dst = np.minimum(src, dst), np.maximum(src, dst)
    keys, inv, cnt = np.unique(src * np.int64(n) + dst, return_inverse=True, return_counts=True)
    return keys, cnt, np.bincount(inv, weights=w, minlength=len(keys))


def key_pairs(keys: np.ndarray, n: int) -> np.ndarray:
    """int64 [k, 2] (src, dst) from keys src * n + dst."""
    return np.stack([keys // n, keys % n], axis=1) if len(keys) else np.zeros((0, 2), dtype=np.int64)


def graph_diff(old_ids: np.ndarray, old: CSRGraph, new_ids: np.ndarray, new: CSRGraph) -> GraphDiff:
    """The diff of two versions of one graph, matched by original node id (see the module doc)."""
    if old.directed != new.directed:
        raise ValueError(f"graph_diff: the old version is {'' if old.directed else 'un'}directed, "
                         f"the new one {'' if new.directed else 'un'}directed")
    n_new, directed = new.num_nodes, new.directed
    old_index = match_ids(old_ids, new_ids)
    new_of_old = np.full(old.num_nodes, -1, dtype=np.int64)
    new_of_old[old_index[old_index >= 0]] = np.flatnonzero(old_index >= 0)
    os_, od, ow = edge_arrays(old)
    ns, nd, nw = edge_arrays(new)
    ms, md = new_of_old[os_], new_of_old[od]
    both = (ms >= 0) & (md >= 0)
    ls_, ld = ms[~both], md[~both]                    # edges of a removed node
    lost = np.stack([ls_, ld] if directed else [np.maximum(ls_, ld), np.minimum(ls_, ld)], axis=1)
    ok, oc, ow_sum = edge_keys(ms[both], md[both], ow[both], n_new, directed)
    nk, nc, nw_sum = edge_keys(ns, nd, nw, n_new, directed)
    in_new = np.isin(ok, nk, assume_unique=True)
    in_old = np.isin(nk, ok, assume_unique=True)
    common = np.flatnonzero(in_old)                     # positions in nk of keys in both versions
    at_old = np.searchsorted(ok, nk[common])            # ... and their positions in ok
    differs = (oc[at_old] != nc[common]) | (ow_sum[at_old] != nw_sum[common])
    added, removed = key_pairs(nk[~in_old], n_new), np.concatenate([key_pairs(ok[~in_new], n_new), lost])
    reweighted = key_pairs(nk[common[differs]], n_new)
    changed = old_index < 0
    for arr in (added, removed, reweighted):
        ends = arr.ravel()
        changed[ends[ends >= 0]] = True
    old_ids_c, new_ids_c = np.asarray(old_ids), np.asarray(new_ids)
    return GraphDiff(old.num_nodes, n_new, len(os_), len(ns), new_ids_c[old_index < 0],
                     old_ids_c[new_of_old < 0], added, removed, reweighted, old_index, changed, directed)


def affected_nodes(csr: CSRGraph, changed: np.ndarray, radius: int) -> np.ndarray:
    """bool [n]: the changed nodes and every node within `radius` hops of one (following arcs both
    ways on a directed graph: a walk that reaches a changed node starts anywhere upstream of it)."""
    affected = np.asarray(changed, dtype=bool).copy()
    frontier = np.flatnonzero(affected)
    reverse = None
    if csr.directed and radius > 0:
        src = np.repeat(np.arange(csr.num_nodes, dtype=np.int64), np.diff(csr.indptr))
        order = np.argsort(csr.indices, kind="stable")
        rev_indptr = np.zeros(csr.num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(csr.indices, minlength=csr.num_nodes), out=rev_indptr[1:])
        reverse = (rev_indptr, src[order])
    for _ in range(int(radius)):
        if frontier.size == 0:
            break
        reached = [neighbours_of(csr.indptr, csr.indices, frontier)]
        if reverse is not None:
            reached.append(neighbours_of(reverse[0], reverse[1], frontier))
        nxt = np.unique(np.concatenate(reached))
        frontier = nxt[~affected[nxt]]
        affected[frontier] = True
    return affected


def neighbours_of(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated neighbour lists of `rows` (int64), vectorised: one gather over arange offsets."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    if lens.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return indices[np.arange(lens.sum(), dtype=np.int64) + offs].astype(np.int64)
