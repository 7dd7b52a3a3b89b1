"""Graph shards (workers/graph/shards.py): node-range bounds, owners, split / gather round trip,
and how graph.shards=auto sizes them."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.config import PipelineConfig
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.shards import (csr_bytes, gather_csr, owner_of, resolve_shards, shard_bounds,
                                            shard_starts, split_csr)


def _graph(n=50, m=300, weighted=True, directed=False, seed=3):
    rng = np.random.default_rng(seed)
    s, d = rng.integers(0, n, m), rng.integers(0, n, m)
    w = rng.random(m).astype(np.float32) + 0.1 if weighted else None
    return build_csr(s, d, n, w, directed=directed)


def test_bounds_cover_all_nodes_in_order():
    for n, S in [(10, 1), (10, 3), (10, 10), (3, 5), (1000, 7)]:
        b = shard_bounds(n, S)
        assert len(b) == S and b[0][0] == 0 and b[-1][1] == n
        assert all(x[1] == y[0] for x, y in zip(b, b[1:]))
        sizes = [hi - lo for lo, hi in b]
        assert max(sizes) - min(sizes) <= 1


def test_owner_of_every_node_including_empty_shards():
    for n, S in [(10, 3), (3, 5), (17, 4)]:
        b = shard_bounds(n, S)
        own = owner_of(shard_starts(b), np.arange(n))
        for v in range(n):
            lo, hi = b[own[v]]
            assert lo <= v < hi


@pytest.mark.parametrize("weighted,directed", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("S", [1, 2, 3, 7, 60])
def test_split_then_gather_is_the_csr_bit_for_bit(weighted, directed, S):
    csr = _graph(weighted=weighted, directed=directed)
    shards = split_csr(csr, shard_bounds(csr.num_nodes, S))
    assert sum(s.num_arcs for s in shards) == csr.num_arcs
    for sh in shards:               # each shard holds exactly its rows' arcs, local indptr from 0
        assert sh.indptr[0] == 0 and sh.indptr.shape[0] == sh.rows + 1
        np.testing.assert_array_equal(np.diff(sh.indptr), np.diff(csr.indptr)[sh.lo:sh.hi])
    back = gather_csr(shards)
    assert back.indptr.dtype == np.int64 and back.indices.dtype == np.int32
    np.testing.assert_array_equal(back.indptr, csr.indptr)
    np.testing.assert_array_equal(back.indices, csr.indices)
    if weighted:
        assert back.weights.tobytes() == csr.weights.tobytes()
    else:
        assert back.weights is None
    assert back.directed == directed


def test_gather_refuses_shards_out_of_order():
    shards = split_csr(_graph(), shard_bounds(50, 3))
    with pytest.raises(ValueError, match="not contiguous"):
        gather_csr([shards[0], shards[2], shards[1]])


def test_auto_is_one_shard_while_the_csr_fits_the_budget():
    n, m = 1_000_000, 20_000_000
    need_mb = csr_bytes(n, m, False) / 2**20           # 16 MB of nodes + 80 MB of arcs
    assert resolve_shards("auto", n, m, False, budget_mb=need_mb + 1) == 1
    assert resolve_shards("auto", n, m, False, budget_mb=need_mb / 4) == 4
    assert resolve_shards("auto", n, m, False, budget_mb=need_mb / 4.5) == 5
    assert resolve_shards("auto", n, m, True, budget_mb=need_mb) == 2     # weights double the arc bytes
    assert resolve_shards(3, n, m, False, budget_mb=1) == 3


def test_config_graph_shards():
    assert PipelineConfig().graph.shards == "auto"
    assert PipelineConfig.model_validate({"graph": {"shards": 8}}).graph.shards == 8
    for bad in (0, 5000, "many"):
        with pytest.raises(Exception, match="graph.shards"):
            PipelineConfig.model_validate({"graph": {"shards": bad}})
