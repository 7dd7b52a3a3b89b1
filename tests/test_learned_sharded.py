"""Learned K-row tables (train.table = hash | qr | unified) on a graph of S > 1 shards (issue 17):
codes from the node id per shard, the K-row table passed from shard to shard, each training it on
its walks of the round (workers/compress/sharded_table.py, tasks/learned.py), each shard's rows
written by its own task."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.config import CompressConfig, TrainConfig, WalkConfig
from embedlake.tasks.learned import table_params
from embedlake.workers.compress import sharded_table as st
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress.compose import assign_codes
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.shards import shard_bounds, split_csr
from embedlake.workers.graph.walks import random_walks

COMPRESS = CompressConfig(compose_ratio=4, hash_buckets=16)


def _graph(n: int = 300, seed: int = 2):
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, 5 * n), rng.integers(0, n, 5 * n)
    return build_csr(src, dst, n, weights=None, directed=False)


def _shard_walks(csr, S: int, walk: WalkConfig) -> list[np.ndarray]:
    """Each shard's walks as the sharded walk engine lays them out (DeepWalk: bit-identical)."""
    return [random_walks(csr.indptr, csr.indices, None, np.arange(lo, hi), walk.walks_per_node, walk.length,
                         walk.seed) for lo, hi in shard_bounds(csr.num_nodes, S)]


def _in_process(walks: list[np.ndarray], bounds, codec: str, params: dict, walk: WalkConfig,
                train: TrainConfig) -> np.ndarray:
    """The shard steps written out in one process: what the Ray tasks must give exactly."""
    preps = [st.prepare_shard(w, codec, params) for w in walks]
    tables = st.start_tables(codec, params, train)
    rounds, L = walk.walks_per_node * train.epochs, len(bounds)
    for r in range(rounds):
        for s, (p, (lo, hi)) in enumerate(zip(preps, bounds)):
            tables, _ = st.train_step(p, tables, r, r * L + s, rounds * L, hi - lo, walk.walks_per_node, codec,
                                      params, train, s)
    return st.final_state(tables)["table"]


@pytest.mark.parametrize("codec", ["hash", "qr", "unified"])
def test_shard_codes_are_the_one_task_codes(codec):
    """Codes are functions of the node id: each shard's code column (and the codes of any ids a
    shard's walks visit) equal what the one-task path gives those rows."""
    n = 257
    params = table_params(codec, COMPRESS, n, 16)
    whole = cz.encode(codec, np.empty((n, 0), np.float32), {}, params) if codec == "hash" else None
    if codec != "hash":
        codes, code_out, _ = assign_codes(codec, params, n, seed=params.get("seed", 0))
        whole = cz.encode(codec, np.empty((n, 0), np.float32), {"codes": codes}, params)
        ids = np.array([5, 0, 256, 17, 17])
        got, got_out = st.codes_of(codec, params, ids, params.get("seed", 0))
        np.testing.assert_array_equal(got, codes[ids])
        if code_out is not None:
            np.testing.assert_array_equal(got_out, code_out[ids])
    for S in (1, 3, 4, 300):                          # 300 > n: empty shards (they write no part)
        parts = [st.shard_code_columns(codec, params, lo, hi)["code"] for lo, hi in shard_bounds(n, S) if hi > lo]
        np.testing.assert_array_equal(np.concatenate(parts), whole["code"])


@pytest.mark.parametrize("codec", ["hash", "unified"])
def test_prepared_shard_is_its_walks_in_table_ids(codec):
    csr, walk = _graph(), WalkConfig(walks_per_node=3, length=12)
    params = table_params(codec, COMPRESS, csr.num_nodes, 16)
    walks = _shard_walks(csr, 2, walk)[1]
    prep = st.prepare_shard(walks, codec, params)
    valid = walks[walks >= 0]
    assert prep["offsets"].size == walks.shape[0] + 1 and prep["tokens"].size == valid.size
    assert prep["counts"].sum() == valid.size and prep["counts"].size == prep["vocab"]
    if codec == "hash":
        np.testing.assert_array_equal(prep["tokens"], st.hash_buckets(valid, params["buckets"], params["seed"]))
    else:       # the local vocabulary: the distinct visited nodes, each with its codes
        ids = np.unique(valid)
        assert prep["vocab"] == ids.size
        codes, _ = st.codes_of(codec, params, ids[prep["tokens"]], params["seed"])
        want, _ = st.codes_of(codec, params, valid, params["seed"])
        np.testing.assert_array_equal(codes, want)
        np.testing.assert_array_equal(st.codes_of(codec, params, ids, params["seed"])[0], prep["code_in"])


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("codec, S", [("qr", 2), ("unified", 4)])
def test_sharded_training_is_reproducible_and_takes_one_shard(tmp_path, codec, S):
    """The Ray tasks give exactly the in-process table, the same on a second run (one thread per
    step), and no learned-table task takes or returns more than about one shard's walks
    plus the K-row tables (object sizes recorded)."""
    import ray

    from embedlake.tasks.graph import GraphHandle, ShardRef
    from embedlake.tasks.learned import train_table_sharded
    from embedlake.tasks.object_sizes import read_calls, recording
    csr, walk, train = _graph(), WalkConfig(walks_per_node=3, length=12), TrainConfig(dim=16, threads=1, window=3)
    params = table_params(codec, COMPRESS, csr.num_nodes, 16)
    bounds = shard_bounds(csr.num_nodes, S)
    walks = _shard_walks(csr, S, walk)
    shards = [ShardRef(s.lo, s.hi, s.num_arcs, ray.put(s.as_tuple()), ray.put(np.arange(s.lo, s.hi)))
              for s in split_csr(csr, bounds)]
    handle = GraphHandle({"nodes": csr.num_nodes, "arcs": csr.num_arcs, "version": "ltab"}, None, None, None, shards)
    refs = [ray.put(w) for w in walks]
    with recording(tmp_path / "objects") as folder:
        first = train_table_sharded.fn(handle, refs, codec, params, walk, train, max_retries=0)
        again = train_table_sharded.fn(handle, refs, codec, params, walk, train, max_retries=0)
    table = ray.get(first.ref)["table"]
    assert table.shape == (params["table_rows"], 16) and np.abs(table).sum() > 0
    np.testing.assert_array_equal(table, ray.get(again.ref)["table"])
    np.testing.assert_array_equal(table, _in_process(walks, bounds, codec, params, walk, train))
    assert first.info["stats"]["rounds"] == 3 and first.info["stats"]["shard_steps"] == S
    assert first.info["stats"]["tokens"] == sum(int((w >= 0).sum()) for w in walks)
    calls = [c for c in read_calls(folder) if c.stage == "train"]
    assert {"prepare_shard", "start_tables", "train_step", "final_state"} <= {c.fn for c in calls}
    one_shard = max(w.nbytes for w in walks) + 2 * params["table_rows"] * 16 * 4
    assert max(c.largest for c in calls) <= 1.5 * one_shard, [(c.fn, c.largest) for c in calls]
    assert max(c.largest for c in calls) < sum(w.nbytes for w in walks)     # no task sees all walks


@pytest.mark.usefixtures("ray_session", "prefect_session")
@pytest.mark.parametrize("codec, S", [("hash", 2), ("unified", 4)])
def test_flow_commits_a_learned_table_of_a_sharded_graph(tmp_path, codec, S):
    """embed_graph with graph.shards = S and a learned table: walks by the shard owners, the table
    trained on the shards, one code part per shard (its rows, in row order), the codebook and the
    measured figures; every row decodes from its codes and the table."""
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.lake import Lake
    from embedlake.workers.compress import store as cs
    lake = str(tmp_path / "lake")
    s = embed_graph(load_config(None, [f"lake.uri={lake}", f"train.table={codec}", f"graph.shards={S}",
                                       "synthetic.nodes=400", "train.dim=16", "walk.length=20",
                                       "walk.walks_per_node=4", "eval.repeats=1", "compress.compose_ratio=4",
                                       "eval.link_prediction=true", "eval.lp_operators=[dot]"]))
    assert s["method"] == f"deepwalk.{codec}" and s["embeddings"] is None
    man = Lake(lake).manifest("planted", f"deepwalk.{codec}")
    assert man.extra["train"]["shards"] == S and man.extra["train"]["stats"]["engine"] == "shard-steps"
    assert [f["rows"] for f in man.files["tables"]] == [hi - lo for lo, hi in shard_bounds(400, S)]
    nc = man.metrics["node_classification"]["micro_f1"]
    assert set(nc) == {"0.1", "0.5", "0.9"} and all(0 <= v <= 1 for v in nc.values())
    assert man.metrics["link_prediction"]["num_pos"] > 0 and "dot" in man.metrics["link_prediction"]["roc_auc"]
    t = cs.read_compressed(lake, "planted", "deepwalk", codec)
    X = t.decode()
    assert X.shape == (400, 16) and np.isfinite(X).all() and np.abs(X).sum() > 0
    assert len(np.unique(t.ids)) == 400


def test_compose_on_shards_from_auto_is_refused_with_the_reason(tmp_path, capsys, shared):
    """graph.shards=auto can give S > 1 at run time (here a tiny shard_budget_mb): compose, whose
    codes need the whole graph's sketch, then exits 2 with one line naming the fields, and commits
    nothing."""
    from embedlake.flows.cli import main as cli
    from embedlake.lake import Lake
    k, uri = shared("datasets", "karate"), str(tmp_path / "lake")
    assert cli(["embed-graph", "--edges", str(k / "edges.tsv"), "--lake", uri, "-p", "train.table=compose",
                "-p", "graph.shard_budget_mb=0.0002", "-p", "train.dim=16", "-p", "compress.compose_ratio=4"]) == 2
    err = capsys.readouterr().err
    assert "train.table=compose" in err and "graph.shards=1" in err and "graph.shards=auto gave" in err, err
    assert not Lake(uri).methods("karate")
