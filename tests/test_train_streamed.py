"""Walks streamed into sharded training (issue 17): the sharded walk engine walks a round of walk
numbers at a time, each round is prepared, cut into bucket pieces and trained, then the next. The
rounds and their placement in the epoch, the walk-number hook of the sharded walk engine, the Ray
driver equal to the in-process streamed schedule, that no walk or train task takes or returns more
than one round of one shard (object-size recorder), and that a killed streamed run resumes from
its block checkpoint to the uninterrupted table.
"""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.config import TrainConfig, WalkConfig
from embedlake.workers.graph.shards import shard_bounds
from embedlake.workers.train import sharded as sh

N, K, L, S = 600, 4, 20, 3


@pytest.fixture(scope="module")
def planted():
    """(csr, labels, all k-major walks) of a small planted-partition graph without dead ends."""
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.synthetic import planted_communities
    from embedlake.workers.graph.walks import random_walks
    s, d, lab = planted_communities(N, 6, 8.0, 0.1, 3)
    g = build_csr(s, d, N)
    walks = random_walks(g.indptr, g.indices, None, np.arange(N), K, L, 5, threads=1, symmetric=True)
    assert (walks >= 0).all()
    return g, lab, walks


def round_shards(walks: np.ndarray, k0: int, k1: int, shards: int = S) -> list[tuple]:
    """Walk numbers [k0, k1) of every node, per graph shard, in the walk contract's row layout."""
    cube = walks.reshape(K, N, L)
    return [(np.ascontiguousarray(cube[k0:k1, lo:hi].reshape(-1, L)),) for lo, hi in shard_bounds(N, shards)]


def settings(**kw) -> TrainConfig:
    return TrainConfig(**{"dim": 8, "window": 4, "negatives": 3, "seed": 3, "threads": 1, **kw})


def stream_cfg(per_round: int) -> WalkConfig:
    """walk.stream=always with a threshold that fits `per_round` walk numbers of N nodes."""
    mb = per_round * N * L * 4 / 2**20
    return WalkConfig(walks_per_node=K, length=L, seed=5, stream="always", stream_threshold_mb=mb * 1.01)


# ---- rounds and placement (no Ray) ----------------------------------------------------------------
def test_rounds_hold_what_the_threshold_allows():
    assert [sh.walks_per_round(N, stream_cfg(g)) for g in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert sh.walks_per_round(N, WalkConfig(walks_per_node=K, length=L, stream_threshold_mb=1e-6)) == 1
    assert sh.walks_per_round(N, WalkConfig(walks_per_node=K, length=L, stream_threshold_mb=1e6)) == K
    assert sh.walk_rounds(4, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)] and sh.walk_rounds(5, 2) == [(0, 2), (2, 4), (4, 5)]


def test_round_places_are_the_unstreamed_positions_without_padding(planted):
    """A round's tokens, placed by round_places, land where the k-major stream of all walks holds
    them: windows, negatives and learning rates are those of the unstreamed engine."""
    from embedlake.workers.graph.walks import walks_to_sentences
    _, _, walks = planted
    tok, _ = walks_to_sentences(walks)
    split = sh.VocabSplit("range", N, 3)
    seen = np.zeros(len(tok), bool)
    for k0, k1 in sh.walk_rounds(K, 2):
        preps = [sh.prep_stream_stage(split, k1 - k0, 1, settings(), 0, s, *src)
                 for s, src in enumerate(round_shards(walks, k0, k1))]
        for (stream, _), place in zip(preps, sh.round_places([p[1] for p in preps], k0, K, N, L)):
            glob = sh.global_positions(place, np.arange(len(stream["tloc"])))
            assert np.array_equal(tok[glob], split.starts[stream["tpart"].astype(np.int64)] + stream["tloc"])
            assert place.total == place.per_epoch == len(tok)
            seen[glob] = True
    assert seen.all()


def test_streamed_schedule_trains_the_same_pairs_and_learns(planted):
    """One walk number per round: the same pairs as the unstreamed engine with as many rounds
    (train.rounds = walks_per_node); only the noise differs (round 0's counts), and both learn
    the communities."""
    from embedlake.workers.evaluate.classify import node_classification
    _, lab, walks = planted
    split, tr = sh.VocabSplit("range", N, 6), settings(dim=16, rounds=K, epochs=2)
    rounds = sh.walk_rounds(K, 1)
    A, _, ref = sh.train_streams_local(round_shards(walks, 0, K), K, split, tr)
    B, _, st = sh.train_rounds_local(lambda w: round_shards(walks, *rounds[w]), rounds, L, split, tr)
    assert st["pairs"] == ref["pairs"]
    f = [node_classification(np.concatenate(X), np.arange(N), lab, ratios=(0.5,), repeats=2)["micro_f1"]["0.5"]
         for X in (A, B)]
    assert min(f) > 0.5 and abs(f[0] - f[1]) < 0.05, f


def test_sharded_walk_engine_walks_a_range_of_walk_numbers(planted):
    """The hook streaming needs: walk_offset k0 gives exactly rows k0..k1-1 of the full walks."""
    from embedlake.workers.graph.shards import split_csr
    from embedlake.workers.graph.sharded_walks import sharded_random_walks
    g, _, walks = planted
    got, _ = sharded_random_walks(split_csr(g, shard_bounds(N, S)), 2, L, 5, walk_offset=1)
    assert all(np.array_equal(a, b[0]) for a, b in zip(got, round_shards(walks, 1, 3)))


# ---- through Ray -----------------------------------------------------------------------------------
def sharded_graph(ray, csr, shards: int):
    from embedlake.tasks.graph import GraphHandle, ShardRef
    from embedlake.workers.graph.shards import split_csr
    ids = np.arange(csr.num_nodes, dtype=np.int64)
    parts = [ShardRef(sd.lo, sd.hi, sd.num_arcs, ray.put(sd.as_tuple()), ray.put(ids[sd.lo:sd.hi]))
             for sd in split_csr(csr, shard_bounds(csr.num_nodes, shards))]
    return GraphHandle({"nodes": csr.num_nodes, "version": "test", "stats": {"weighted": False}}, None, None, None,
                       parts)


@pytest.mark.usefixtures("ray_session")
def test_ray_driver_streams_rounds_and_no_task_holds_more_than_one_round_of_one_shard(planted, tmp_path):
    """train_sharded_streamed (2 walk numbers per round) equals the in-process streamed schedule,
    one table per shard; with the recorder on, every argument and result of every walk and train
    task is at most one round of one shard (its walks, its prepared stream), far below one
    shard's walks of all rounds, and a link takes only its bucket piece."""
    import ray

    from embedlake.tasks.object_sizes import read_calls, recording
    from embedlake.tasks.train import train_sharded_streamed
    g, _, walks = planted
    graph = sharded_graph(ray, g, S)
    tr = settings(workers=2)
    with recording(tmp_path / "rec"):
        out = train_sharded_streamed.fn(graph, stream_cfg(2), tr, "deepwalk", run=None)
        tables = ray.get(out.ref)
    rounds = sh.walk_rounds(K, 2)
    split = sh.graph_split(N, 6)
    Win, _, st = sh.train_rounds_local(lambda w: round_shards(walks, *rounds[w]), rounds, L, split, tr)
    assert [t.shape for t in tables] == [(hi - lo, 8) for lo, hi in graph.shard_bounds]
    assert np.array_equal(np.concatenate(tables), sh.assemble_split_stage(split, None, *Win))
    assert out.info["streamed"] and out.info["walk_rounds"] == 2 and out.info["pairs"] == st["pairs"]
    rows = max(hi - lo for lo, hi in graph.shard_bounds)
    round_walks = 2 * rows * L * 4
    preps = [sh.prep_stream_stage(split, 2, 1, tr, 0, s, *src) for s, src in enumerate(round_shards(walks, 0, 2))]
    round_stream = max(sum(a.nbytes for a in p[0].values()) for p in preps)
    # every call but a shard owner's start (it takes its shard's CSR rows, checked by test_cluster_shards.py)
    calls = [c for c in read_calls(tmp_path / "rec") if c.stage in ("walk", "train") and c.fn != "ShardWalker.__init__"]
    fns = {c.fn for c in calls}
    assert {"ShardWalker.begin", "ShardWalker.deliver", "ShardWalker.collect", "prep_count_stage", "prep_stream_stage", "bucket_stage",
            "link_stage"} <= fns, fns
    limit = max(round_walks, round_stream) * 1.05
    assert max(c.largest for c in calls) <= limit < 0.6 * (K * rows * L * 4) * 13.8 / 4
    assert max(c.largest_result for c in calls if c.fn == "ShardWalker.collect") == round_walks
    links = [c for c in calls if c.fn == "link_stage"]
    assert max(c.args[0] for c in links) < round_stream / 2        # a bucket piece, not the round's stream


@pytest.mark.usefixtures("ray_session")
def test_killed_streamed_run_resumes_to_the_uninterrupted_table(planted, tmp_path):
    """Checkpoints every round (the chain's last link writes W_in[i] / W_out[j]); a re-run with the
    same run id whose state stands at the end of round 0 (of 2) walks round 0 again for the noise,
    then round 1, and ends with exactly the uninterrupted table."""
    import json

    import ray

    from embedlake.lake import Lake
    from embedlake.tasks.run import Run
    from embedlake.tasks.train import train_sharded_streamed
    from embedlake.workers.train import blocks as sb
    g, _, walks = planted
    graph = sharded_graph(ray, g, 2)
    tr = settings(workers=1, partitions=2, checkpoint="round")
    lake = Lake(str(tmp_path / "lake"))
    run = Run(lake, "g", "deepwalk", "r1")
    full = train_sharded_streamed.fn(graph, stream_cfg(2), tr, "deepwalk", run=run)
    A = np.concatenate(ray.get(full.ref))
    state = json.loads(lake.read_bytes(f"{run.checkpoint_dir}/state.json"))
    assert state["step"] == state["total_steps"] == 2 * 2 and full.info["checkpoints"] == 2
    k, rounds = 2, sh.walk_rounds(K, 2)                          # after round 0 of 2
    Win, Wout, _ = sh.train_rounds_local(lambda w: round_shards(walks, *rounds[w], shards=2), rounds, L,
                                         sh.graph_split(N, 2), tr, stop=k)
    lake.delete(f"{run.checkpoint_dir}/step={state['step']:06d}", recursive=True)
    for p in range(2):
        lake.write_npy(sb.checkpoint_file(run.checkpoint_dir, k, "w_in", p), Win[p])
        lake.write_npy(sb.checkpoint_file(run.checkpoint_dir, k, "w_out", p), Wout[p])
    lake.write_json(f"{run.checkpoint_dir}/state.json", {**state, "step": k})
    again = train_sharded_streamed.fn(graph, stream_cfg(2), tr, "deepwalk", run=Run(lake, "g", "deepwalk", "r1"))
    assert again.info["resumed_at"] == k and again.info["episodes"] == 4 - k
    assert np.array_equal(np.concatenate(ray.get(again.ref)), A)


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_graph_flow_streams_walks_on_a_sharded_graph(tmp_path, shared):
    """embed_graph on karate with graph.shards=2 and walk.stream=always (2 rounds of 4 walk
    numbers): the streamed sharded engine trains, publishes every node once, and separates the clubs."""
    import embedlake
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    from embedlake.lake import Lake
    ds = shared("datasets", "karate")
    s = embed_graph(load_config(None, [f"lake.uri={tmp_path / 'lake'}", f"input.edges={ds / 'edges.tsv'}",
                                       f"input.labels={ds / 'labels.tsv'}", "graph.shards=2", "walk.walks_per_node=8",
                                       "walk.length=20", "walk.stream=always", "walk.stream_threshold_mb=0.011",
                                       "train.dim=16", "train.window=5", "train.workers=2", "eval.repeats=2"]))
    train = Lake(str(tmp_path / "lake")).manifest("karate", "deepwalk").extra["train"]
    assert train["streamed"] and train["walk_rounds"] == 2 and train["shards"] == 2 and "walk" not in s["stages"]
    ids, X = embedlake.load_matrix(str(tmp_path / "lake"), "karate", "deepwalk")
    assert sorted(ids.tolist()) == list(range(34)) and X.shape == (34, 16) and np.isfinite(X).all()
    assert s["metrics"]["node_classification"]["micro_f1"]["0.5"] > 0.7, (s["metrics"], train)
