"""Generated graphs that need no download: planted communities (quality checks, the demo) and
R-MAT power-law graphs (scale benchmarks). Deterministic by seed."""
from __future__ import annotations

import numpy as np


def planted_communities(nodes: int, communities: int, avg_degree: float, mixing: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, label) of an undirected graph whose nodes belong to `communities` groups.

    Each node draws about avg_degree/2 edges; a share `mixing` of them go to a uniformly random
    node, the rest to a random node of its own community. Labels are the community of each node.
    """
    rng = np.random.default_rng(seed)
    label = rng.integers(0, communities, nodes)
    members = [np.flatnonzero(label == c) for c in range(communities)]
    per_node = max(1, int(round(avg_degree / 2)))
    src = np.repeat(np.arange(nodes, dtype=np.int64), per_node)
    out = rng.random(src.size) < mixing
    dst = np.empty_like(src)
    dst[out] = rng.integers(0, nodes, int(out.sum()))
    inside = np.flatnonzero(~out)
    lab_in = label[src[inside]]
    for c in range(communities):
        sel = inside[lab_in == c]
        if sel.size and members[c].size:
            dst[sel] = members[c][rng.integers(0, members[c].size, sel.size)]
    keep = src != dst
    return src[keep], dst[keep], label.astype(np.int64)


def rmat_edges(scale: int, edges: int, seed: int, a: float = 0.57, b: float = 0.19, c: float = 0.19,
               chunk: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """R-MAT (Chakrabarti et al. 2004) edges over 2**scale nodes; power-law degrees. int32 arrays."""
    rng = np.random.default_rng(seed)
    src = np.empty(edges, dtype=np.int32)
    dst = np.empty(edges, dtype=np.int32)
    for lo in range(0, edges, chunk):
        m = min(chunk, edges - lo)
        s = np.zeros(m, dtype=np.int64)
        d = np.zeros(m, dtype=np.int64)
        for bit in range(scale):
            r = rng.random(m)
            right = (r >= a) & (r < a + b) | (r >= a + b + c)
            down = r >= a + b
            s |= down.astype(np.int64) << bit
            d |= right.astype(np.int64) << bit
        src[lo:lo + m], dst[lo:lo + m] = s, d
    # permute ids so high-degree nodes are not all at small ids
    perm = rng.permutation(1 << scale).astype(np.int32)
    return perm[src], perm[dst]
