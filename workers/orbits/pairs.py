"""The 28 orbit-adjacency matrices of the 2-4 node graphlets (GRADCO, Windels, Malod-Dognin and
Przulj): what each one counts, its name, and how its row sums relate to per-node orbit counts.

Orbits 0-14 are Przulj's automorphism orbits of the nine graphlets G0-G8 on 2-4 nodes:

    G0 edge              orbit 0
    G1 path a-b-c        ends 1, middle 2
    G2 triangle          3
    G3 path a-b-c-d      ends 4, inner 5
    G4 claw (star)       leaves 6, centre 7
    G5 4-cycle           8
    G6 paw (triangle x-y-z + tail t-x)   tail 9, y and z 10, x 11
    G7 diamond (K4 minus edge a-c)       a and c 12, the others 13
    G8 K4                14

An orbit adjacency is an ORDERED pair of distinct nodes (u, v) of one graphlet, up to the
graphlet's automorphisms: matrix entry M[u, v] counts the induced graphlets of the graph in which
u and v sit at that pair of positions. Every graphlet contributes one matrix per class of ordered
node pairs: 1 + 3 + 1 + 6 + 3 + 2 + 7 + 4 + 1 = 28. Most classes are named by the orbits of u and
v alone; two orbit pairs occur at two distances in one graphlet and are split by adjacency:
(4, 5) and (5, 4) in the path a-b-c-d (a-b adjacent, a-c not) and (8, 8) in the 4-cycle (adjacent,
or opposite). The 8 pairs of different orbits are transposes of each other ((1,2) is (2,1)^T, ...);
the 12 same-orbit ones are symmetric.

Identity with per-node orbit counts (tests/test_orbits.py): in a graphlet where u sits at orbit
a, the number of other nodes at pair class (a, b, relation) is a constant k, so
    sum_v M_(a, b, rel)[u, v] = k * orbit_count_a(u)            (ROW_SUM_FACTOR below).
All matrices that start from orbit a then yield the same orbit count of u: a check the counter
also runs on its own output (`orbit_counts`).
"""
from __future__ import annotations

import numpy as np

# (orbit of u, orbit of v, u and v adjacent in the graphlet, graphlet, k = other nodes in that class)
PAIR_CLASSES: tuple[tuple[int, int, bool, int, int], ...] = (
    (0, 0, True, 0, 1),
    (1, 1, False, 1, 1), (1, 2, True, 1, 1), (2, 1, True, 1, 2),
    (3, 3, True, 2, 2),
    (4, 4, False, 3, 1), (4, 5, True, 3, 1), (4, 5, False, 3, 1), (5, 4, True, 3, 1), (5, 4, False, 3, 1),
    (5, 5, True, 3, 1),
    (6, 6, False, 4, 2), (6, 7, True, 4, 1), (7, 6, True, 4, 3),
    (8, 8, True, 5, 2), (8, 8, False, 5, 1),
    (9, 10, False, 6, 2), (9, 11, True, 6, 1), (10, 9, False, 6, 1), (10, 10, True, 6, 1), (10, 11, True, 6, 1),
    (11, 9, True, 6, 1), (11, 10, True, 6, 2),
    (12, 12, False, 7, 1), (12, 13, True, 7, 2), (13, 12, True, 7, 2), (13, 13, True, 7, 1),
    (14, 14, True, 8, 3),
)
NUM_PAIRS = len(PAIR_CLASSES)
NUM_ORBITS = 15
SPLIT = {(4, 5), (5, 4), (8, 8)}        # orbit pairs that occur both adjacent and not in one graphlet


def pair_name(a: int, b: int, adjacent: bool) -> str:
    """`4-5` for most classes; `4-5-adj` / `4-5-non` where the orbit pair alone is ambiguous."""
    base = f"{a}-{b}"
    if (a, b) not in SPLIT:
        return base
    return f"{base}-adj" if adjacent else f"{base}-non"


PAIR_NAMES: tuple[str, ...] = tuple(pair_name(a, b, adj) for a, b, adj, _, _ in PAIR_CLASSES)
PAIR_INDEX = {(a, b, adj): i for i, (a, b, adj, _, _) in enumerate(PAIR_CLASSES)}
ROW_ORBIT = np.array([c[0] for c in PAIR_CLASSES], dtype=np.int64)
ROW_SUM_FACTOR = np.array([c[4] for c in PAIR_CLASSES], dtype=np.int64)
GRAPHLET = np.array([c[3] for c in PAIR_CLASSES], dtype=np.int64)
GRAPHLET_SIZE = np.array([2, 3, 3, 4, 4, 4, 4, 4, 4], dtype=np.int64)
TRANSPOSE = np.array([PAIR_INDEX[(b, a, adj)] for a, b, adj, _, _ in PAIR_CLASSES], dtype=np.int64)


def orbit_counts(row_sums: np.ndarray) -> np.ndarray:
    """Per-node orbit counts [n, 15] from the row sums [n, 28] of the 28 matrices, checking that
    every matrix starting from one orbit implies the same count (raises ValueError otherwise:
    the counts are then not exact)."""
    n = row_sums.shape[0]
    out = np.full((n, NUM_ORBITS), -1, dtype=np.int64)
    for t in range(NUM_PAIRS):
        a, k = ROW_ORBIT[t], ROW_SUM_FACTOR[t]
        if np.any(row_sums[:, t] % k):
            raise ValueError(f"orbit adjacency {PAIR_NAMES[t]}: a row sum is not a multiple of {k}")
        implied = row_sums[:, t] // k
        if np.all(out[:, a] < 0):
            out[:, a] = implied
        elif not np.array_equal(out[:, a], implied):
            raise ValueError(f"orbit adjacency {PAIR_NAMES[t]}: row sums disagree with orbit {a}'s other matrices")
    return out
