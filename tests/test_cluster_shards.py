"""Issue 17's test bed: no task of a sharded engine takes or returns much more than one shard.

Two parts.
- The object-size recorder itself (tasks/object_sizes.py), on the session's local Ray: every task made
  by tasks/remote.py:remote records the bytes of its resolved arguments and of its results, exactly.
- A 4-node `ray.cluster_utils.Cluster` (a 0-CPU head plus 4 nodes of 1 CPU and a 100 MB object store
  each), in a subprocess so the session's Ray is untouched, runs the pipeline on a planted graph
  with the recorder on. With graph.shards=4, no argument or result of a task of the ingest, walk,
  train, fastrp or publish stage may exceed 1.5x one shard's bytes (computed from the data: the
  largest shard's CSR rows, walks or table rows, whichever that stage handles). The graph is sized
  so that every whole object (the full CSR, all walks, the full table) is over 2.5x one shard, so a
  task holding one is caught (`test_recorder_sees_the_whole_csr_of_the_one_shard_engine` shows it
  on the one-shard engine, where the whole CSR IS one walk argument). Then a node is removed while
  the walks run: the run gives the fault-free output or fails cleanly (nothing committed).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# ---- the recorder, on the session's Ray ------------------------------------------------------------
def _test_worker_code():
    """A worker function with two results and an actor class, made here so that Ray pickles them by
    value (the workers cannot import this test module)."""
    def _pair(a, b):
        return a[::2].copy(), {"n": int(a.size), "b": b}

    class _Counter:
        def __init__(self):
            self.total = 0

        def add(self, x):
            self.total += int(x.sum())
            return np.zeros(3, dtype=np.int64)

        def _hidden(self):
            return self.total
    return _pair, _Counter


def test_object_bytes_counts_arrays_containers_and_pickles():
    import ray

    from embedlake.tasks.object_sizes import object_bytes
    from embedlake.workers.graph.shards import CSRShard
    a = np.zeros(1000, dtype=np.float32)
    assert object_bytes(a) == 4000
    assert object_bytes((a, a[:10], None, True)) == 4040 + object_bytes(True)
    assert object_bytes({"k": a}) == 4000 + object_bytes("k")
    assert object_bytes(None) == 0 and object_bytes(b"xyz") == 3
    # a dataclass holding arrays: pickled with the arrays out of band, so at least their bytes, plus a header
    shard = CSRShard(0, 2, 2, np.array([0, 1, 2], dtype=np.int64), np.array([1, 0], dtype=np.int32), None)
    assert shard.nbytes <= object_bytes(shard) < shard.nbytes + 1000
    big = CSRShard(0, 1, 1, np.zeros(2, dtype=np.int64), np.zeros(10**6, dtype=np.int32), None)
    assert big.nbytes <= object_bytes(big) < big.nbytes + 1000
    ref_free = object_bytes([ray.ObjectRef.nil()])          # a nested ref is not resolved: counts 0
    assert ref_free == 0


@pytest.mark.usefixtures("ray_session")
def test_recorder_records_every_task_and_actor_call(tmp_path):
    import ray

    from embedlake.tasks.object_sizes import largest_by_stage, oversized, read_calls, recording
    from embedlake.tasks.remote import remote
    _pair, _Counter = _test_worker_code()
    x = np.arange(10_000, dtype=np.int64)
    with recording(tmp_path / "rec") as rec:
        ref = ray.put(x)
        fn = remote(_pair, "walk", num_returns=2, num_cpus=1)
        half, info = fn.remote(ref, b=np.ones(5, dtype=np.float64))
        assert np.array_equal(ray.get(half), x[::2]) and ray.get(info)["n"] == 10_000
        counter = remote(_Counter, "train", num_cpus=0).remote()
        assert ray.get(counter.add.remote(ref)).shape == (3,)
        ray.get(counter._hidden.remote())
    calls = read_calls(rec)
    by_fn = {c.fn: c for c in calls}
    assert sorted(by_fn) == ["_Counter.add", "_pair"], calls            # private actor methods are not wrapped
    pair = by_fn["_pair"]
    assert pair.stage == "walk" and pair.args == (80_000,) and pair.kwargs == {"b": 40}
    assert pair.results[0] == 40_000 and pair.results[1] < 200          # two results, each sized
    add = by_fn["_Counter.add"]
    assert add.stage == "train" and add.args == (80_000,) and add.results == (24,)
    assert add.node and pair.node and pair.pid > 0
    table = largest_by_stage(calls)
    assert table["walk"]["arg"] == 80_000 and table["walk"]["result_fn"] == "_pair"
    assert sorted(oversized(calls, 50_000)) == ["train/_Counter.add: argument of 80,000 bytes > 50,000",
                                                "walk/_pair: argument of 80,000 bytes > 50,000"]
    assert oversized(calls, 50_000, stages={"walk"}) == ["walk/_pair: argument of 80,000 bytes > 50,000"]


def test_recorder_off_never_wraps(monkeypatch):
    """Without EMBEDLAKE_RECORD_OBJECTS, remote() never calls into the recorder (zero overhead)."""
    import embedlake.tasks.remote as tr
    from embedlake.tasks.object_sizes import RECORD_ENV

    def boom(*a, **k):
        raise AssertionError("the recorder was called while off")
    monkeypatch.delenv(RECORD_ENV, raising=False)
    monkeypatch.setattr(tr, "recorded", boom)
    assert tr.remote(_test_worker_code()[0], "walk", num_returns=2) is not None
