"""FastRP through Prefect + Ray: identical output for 1 or many partitions, and equal to the
single-process reference driver in workers/fastrp/kernels.py."""
import numpy as np
import pytest

import embedlake
from embedlake.config import load_config
from embedlake.workers.graph.store import read_graph
from embedlake.lake import Lake

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_session")


def test_fastrp_partitions_identical_and_match_reference(tmp_path, shared):
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.workers.fastrp.kernels import fastrp
    ds = shared("datasets", "ppi")
    lake = str(tmp_path / "lake")
    mats = []
    for parts in (1, 5):
        s = embed_graph(load_config(None, [f"lake.uri={lake}", f"input.edges={ds / 'edges.tsv'}", "method=fastrp",
                                           "fastrp.dim=64", f"shard.partitions={parts}", f"lake.run_id=p{parts}"]))
        assert s["stages"]["fastrp"]["wall_s"] > 0
        mats.append(embedlake.load_matrix(lake, "ppi", "fastrp", run=f"p{parts}")[1])
    assert np.array_equal(mats[0], mats[1])
    man = Lake(lake).manifest("ppi", "fastrp", "p1")
    csr, _, _, _ = read_graph(Lake(lake), "ppi", man.extra["graph"]["version"])
    ref = fastrp(csr.indptr, csr.indices, csr.weights, dim=64, iteration_weights=(0, 0, 1, 6.67), beta=-0.64,
                 seed=0, threads=1)
    assert np.array_equal(mats[0], ref)
