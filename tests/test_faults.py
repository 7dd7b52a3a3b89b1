"""Faults: a Ray worker killed mid-walk and mid-training, a node removed mid-run, racing commits.

Worker kills are real SIGKILLs. The walk worker kills itself through the test hook
EMBEDLAKE_FAULT=kill-worker-once:after:walk_stage=<marker> (workers/run/faults.py: the first walk task
to finish its walks dies before returning them), so that kill happens on every run, however short
the task. Training
is caught from outside: Ray titles a worker process `ray::<function>` while it runs a task, so the
test finds the process running `train_stage` among the run's descendants (never another
session's Ray) and SIGKILLs it. Tasks carry `max_retries` (ray.max_retries) and their results are
reconstructable by lineage, so the run must finish with output bit-identical to a fault-free run
at the same seed (train.threads=1).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Small enough for 2 loaded cores, long enough that each stage can be caught while it runs.
FAULT_CFG = ["method=node2vec", "walk.p=0.5", "walk.q=2.0", "synthetic.nodes=3000", "walk.walks_per_node=20",
             "walk.length=40", "train.dim=16", "train.window=1", "train.epochs=2", "train.threads=1",
             "shard.partitions=1",
             "eval.repeats=1", "eval.reconstruction=false", "eval.align_to_previous=false", "eval.artifacts=false"]


# ---- finding and killing the worker that runs a stage -------------------------------------------
def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


class StageKiller(threading.Thread):
    """Watches this process's descendants; for each stage of `plan` ({stage: delay_s}) kills the
    worker titled `ray::<stage>` delay_s after it first appears (if it still runs that stage),
    then notes whether the stage ran again in another process (Ray's retry)."""

    def __init__(self, plan: dict[str, float], root: int | None = None, timeout_s: float = 240):
        super().__init__(daemon=True)
        self.plan, self.root, self.timeout_s = dict(plan), root or os.getpid(), timeout_s
        self.killed: dict[str, int] = {}
        self.retried: dict[str, int] = {}
        self.stop = threading.Event()

    def _pids(self) -> list[int]:
        import psutil
        try:
            return [p.pid for p in psutil.Process(self.root).children(recursive=True)]
        except psutil.Error:
            return []

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        seen: dict[str, tuple[int, float]] = {}
        pids, refreshed = self._pids(), time.monotonic()
        while time.monotonic() < deadline and not self.stop.is_set():
            now = time.monotonic()
            for pid in pids:
                title = _title(pid)
                if not title.startswith("ray::"):
                    continue
                stage = title[5:]
                if stage in self.killed:
                    if pid != self.killed[stage]:
                        self.retried[stage] = pid
                    continue
                if stage not in self.plan:
                    continue
                first = seen.setdefault(stage, (pid, now))
                if first[0] == pid and now - first[1] >= self.plan[stage]:
                    os.kill(pid, 9)
                    self.killed[stage] = pid
            if len(self.retried) == len(self.plan):
                return
            if now - refreshed > 0.02:
                pids, refreshed = self._pids(), time.monotonic()
            time.sleep(0.001)


def _flow(lake: str, run_id: str, extra=()):
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    return embed_graph(load_config(None, [f"lake.uri={lake}", f"lake.run_id={run_id}", *FAULT_CFG, *extra]))


def _matrix(lake: str, method: str = "node2vec"):
    import embedlake
    ids, X = embedlake.load_matrix(lake, "planted", method)
    order = np.argsort(ids)
    return ids[order], X[order]


def _checksums_match(lake, man) -> None:
    for entries in man.files.values():
        for e in entries:
            if not e["sha256"]:
                continue
            data = lake.read_bytes(e["path"])
            assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["bytes"], e["path"]


# The faulty run gets its own Ray (a subprocess): the hook is read from the environment of the Ray
# workers, which inherit it from the driver that starts Ray; the session's Ray started without it.
FAULTY_RUN_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from test_faults import _flow
s = _flow(sys.argv[1], "killed")
print("RESULT " + json.dumps({"run_id": s["run_id"]}), flush=True)
"""


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_worker_killed_mid_walk_and_mid_training_gives_identical_output(tmp_path):
    from prefect.settings import PREFECT_API_URL

    from embedlake.lake import Lake
    from embedlake.workers.run.faults import FAULT, kill_worker_once
    base = str(tmp_path / "base")
    _flow(base, "clean")
    faulty, marker = str(tmp_path / "faulty"), tmp_path / "walk-kill.marker"
    env = {**os.environ, FAULT: kill_worker_once("after:walk_stage", marker), "RAY_USAGE_STATS_ENABLED": "0"}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()     # the session's test API: no second server
    proc = subprocess.Popen([sys.executable, "-c", FAULTY_RUN_SCRIPT, faulty, str(REPO / "tests")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    # the kill must land inside the train stage: with its kernel cached it lasts ~0.5 s here (two
    # epochs of 2.4 M tokens at ~6 M tokens/s, plus loading), so 0.15 s after its worker takes it
    killer = StageKiller({"train_stage": 0.15}, root=proc.pid)
    killer.start()
    try:
        out, err = proc.communicate(timeout=420)
    finally:
        killer.stop.set()
        killer.join(5)
        if proc.poll() is None:
            proc.kill()
    print(json.dumps({"killed": killer.killed, "retried": killer.retried}))
    assert proc.returncode == 0 and "RESULT " in out, out[-3000:] + err[-3000:]
    # the walk hook fired exactly once, and the walk ran again in another worker (Ray's retry)
    events = [line.split() for line in marker.read_text().splitlines()]
    assert events[0][0] == "killed" and [e[0] for e in events[1:]] == ["ran"] * (len(events) - 1), events
    assert len(events) == 2 and events[1][1] != events[0][1], events      # shard.partitions=1: one walk task
    assert "train_stage" in killer.killed and "train_stage" in killer.retried, killer.__dict__
    ids0, X0 = _matrix(base)
    ids1, X1 = _matrix(faulty)
    assert np.array_equal(ids0, ids1) and np.array_equal(X0, X1), np.abs(X0 - X1).max()
    lk = Lake(faulty)
    man = lk.manifest("planted", "node2vec")
    assert man.run_id == json.loads(out.split("RESULT ", 1)[1].splitlines()[0])["run_id"] == "killed"
    assert man.config["ray"]["max_retries"] >= 1
    _checksums_match(lk, man)


_HOOK_SCRIPT = "from embedlake.workers.run.faults import fault_point as f; f('after:walk_stage'); print('alive')"


def _hook(fault: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDLAKE_FAULT")}
    return subprocess.run([sys.executable, "-c", _HOOK_SCRIPT], env={**env, "EMBEDLAKE_FAULT": fault},
                          capture_output=True, text=True, timeout=60, start_new_session=True)


def test_fault_hook_list_and_kill_worker_once(tmp_path):
    """EMBEDLAKE_FAULT takes several faults; kill-worker-once kills the first process only, writes
    `killed <pid>` then `ran <pid>` per later pass, and never touches another process."""
    from embedlake.workers.run.faults import kill_worker_once, parse_faults
    marker = tmp_path / "m=1.marker"                       # '=' in the path is kept
    once = kill_worker_once("after:walk_stage", marker)
    assert parse_faults(f"after:publish, {once}") == [("run", "after:publish", None),
                                                       ("worker-once", "after:walk_stage", str(marker))]
    with pytest.raises(ValueError):
        parse_faults("kill-worker-once:after:walk_stage")
    with pytest.raises(ValueError):
        kill_worker_once("after:walk_stage", tmp_path / "a,b")
    runs = [_hook(f"after:publish,{once}") for _ in range(3)]
    assert [r.returncode for r in runs] == [-9, 0, 0] and "alive" not in runs[0].stdout, runs
    events = [line.split() for line in marker.read_text().splitlines()]
    assert [e[0] for e in events] == ["killed", "ran", "ran"] and len({e[1] for e in events}) == 3, events
    # a whole-run point later in the list still fires once the once-only kill is spent
    r = _hook(f"{once},after:walk_stage")
    assert r.returncode == -9 and "alive" not in r.stdout and marker.read_text().count("\nran ") == 3


# ---- a node of a multi-node cluster removed mid-run ------------------------------------------------
def test_lost_shard_is_one_on_no_alive_node():
    """A retry of the sharded walks waits for exactly the shards Ray must rebuild (tasks/graph.py
    wait_shards_rebuilt): rows on no alive node. Rows small enough to live in their owner's memory
    (Ray lists no node for them) and spilled rows are not lost with a node."""
    from embedlake.tasks.graph import INLINE_BYTES, lost_shard
    big = INLINE_BYTES + 1
    alive = {"a", "b"}
    assert lost_shard({"node_ids": [], "object_size": big, "did_spill": False}, alive)
    assert lost_shard({"node_ids": ["gone"], "object_size": big, "did_spill": False}, alive)     # its one copy on a dead node
    assert not lost_shard({"node_ids": ["gone", "b"], "object_size": big, "did_spill": False}, alive)
    assert not lost_shard({"node_ids": [], "object_size": INLINE_BYTES, "did_spill": False}, alive)
    assert not lost_shard({"node_ids": [], "object_size": None, "did_spill": False}, alive)
    assert not lost_shard({"node_ids": [], "object_size": big, "did_spill": True}, alive)



NODE_LOSS_SCRIPT = r"""
import json, os, sys, threading, time, traceback
sys.path.insert(0, sys.argv[3])
from test_faults import FAULT_CFG, _title
from test_cluster_shards import FAST_NODE_DEATH
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                        "object_store_memory": 150 * 2**20,
                                                        "_system_config": FAST_NODE_DEATH})
out = {}
try:
    workers = [cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20) for _ in range(2)]
    cluster.wait_for_nodes()
    import psutil
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    def cfg(lake, run):
        return load_config(None, [f"ray.address={cluster.address}", f"lake.uri={lake}", f"lake.run_id={run}",
                                  *FAULT_CFG])
    embed_graph(cfg(sys.argv[1], "clean"))
    def remove_training_node():
        raylets = {n.all_processes["raylet"][0].process.pid: n for n in workers}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for pid in raylets:
                try:
                    kids = psutil.Process(pid).children(recursive=True)
                except psutil.Error:
                    continue
                if any(_title(k.pid) == "ray::train_stage" for k in kids):
                    time.sleep(0.5)
                    cluster.remove_node(raylets[pid], allow_graceful=False)
                    out["removed"] = True
                    return
            time.sleep(0.005)
    t = threading.Thread(target=remove_training_node, daemon=True)
    t.start()
    try:
        s = embed_graph(cfg(sys.argv[2], "noded"))
        out["status"] = "completed"
        out["run_id"] = s["run_id"]
    except Exception as e:
        out["status"] = "failed"
        out["error"] = f"{type(e).__name__}: {e}"[:2000]
    t.join(5)
    out["alive_nodes"] = sum(1 for n in __import__("ray").nodes() if n["Alive"])
finally:
    print("RESULT " + json.dumps(out), flush=True)
    import ray
    ray.shutdown()
    cluster.shutdown()
"""


def test_node_removed_mid_training_completes_or_fails_cleanly(tmp_path, prefect_session):
    """2 worker nodes (1 CPU each) + a 0-CPU head, in a subprocess (the session's Ray is untouched).
    The node running training is removed: its objects (walks, CSR) are rebuilt from lineage and
    training is retried on the other node. Either the run completes with the fault-free output,
    or it fails with an error and leaves no committed manifest and no run files."""
    from embedlake.lake import Lake
    a, b = tmp_path / "a", tmp_path / "b"
    from prefect.settings import PREFECT_API_URL
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "RAY_USAGE_STATS_ENABLED": "0",
           "PREFECT_API_URL": PREFECT_API_URL.value()}     # the session's server, not one started there
    out = subprocess.run([sys.executable, "-c", NODE_LOSS_SCRIPT, str(a), str(b), str(REPO / "tests")],
                         capture_output=True, text=True, env=env, timeout=420, cwd=str(tmp_path))
    assert "RESULT " in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    print(json.dumps(res))
    assert res.get("removed"), res
    assert res["alive_nodes"] == 2                       # head + the surviving worker
    lk = Lake(str(b))
    if res["status"] == "completed":
        ids0, X0 = _matrix(str(a))
        ids1, X1 = _matrix(str(b))
        assert np.array_equal(ids0, ids1) and np.array_equal(X0, X1)
        _checksums_match(lk, lk.manifest("planted", "node2vec"))
    else:
        assert res["error"].strip(), res
        assert not lk.is_committed("planted", "node2vec", "noded")
        for kind in ("embeddings", "walks", "metrics", "reports", "tables"):
            assert lk.list_files(f"{kind}/planted/node2vec/run_id=noded") == []


# ---- racing commits ---------------------------------------------------------------------------------
def _write_and_commit(lake_uri: str, run_id: str, seed: int, claim: bool) -> str:
    """One writer: (claim,) write 3 data files of its own content, commit. Returns the outcome."""
    from embedlake.errors import CommitConflict
    from embedlake.lake import Lake, Manifest, embeddings_table
    lake = Lake(lake_uri)
    token = None
    try:
        token = lake.claim_run("g", "deepwalk", run_id) if claim else None
        rng = np.random.default_rng(seed)
        files = []
        for k in range(3):
            t = embeddings_table(np.arange(k * 50, k * 50 + 50), rng.standard_normal((50, 8)).astype(np.float32))
            files.append(lake.write_parquet(Lake.part_path("embeddings", "g", "deepwalk", run_id, k), t).to_dict())
        lake.commit(Manifest(dataset="g", method="deepwalk", run_id=run_id, files={"embeddings": files},
                             extra={"writer": seed}))
        return f"committed:{seed}"
    except CommitConflict as e:
        if claim and token is None:
            return "conflict-at-claim"
        return f"conflict:{e}"


def _race(lake_uri: str, jobs: list[tuple[str, int, bool]], processes: bool) -> list[str]:
    if processes:
        with mp.get_context("spawn").Pool(len(jobs)) as pool:
            return pool.starmap(_write_and_commit, [(lake_uri, *j) for j in jobs])
    start = threading.Barrier(len(jobs))

    def one(j):
        start.wait()
        return _write_and_commit(lake_uri, *j)
    with ThreadPoolExecutor(len(jobs)) as ex:
        return list(ex.map(one, jobs))


def _lake_uri(kind: str, tmp_path, request) -> str:
    if kind == "local":
        return str(tmp_path / "lake")
    env = request.getfixturevalue("s3_env")
    return f"s3://{env['bucket']}/lake"


@pytest.mark.parametrize("kind, processes", [("local", False), ("local", True), ("s3", False)])
def test_concurrent_runs_each_commit_or_conflict_cleanly(tmp_path, request, kind, processes):
    from embedlake.lake import Lake
    uri = _lake_uri(kind, tmp_path, request)
    lake = Lake(uri)
    # different run ids, same dataset and method: every writer commits
    out = _race(uri, [(f"r{i}", i, True) for i in range(4)], processes)
    assert sorted(out) == [f"committed:{i}" for i in range(4)], out
    mans = lake.manifests("g", "deepwalk")
    assert sorted(m.run_id for m in mans) == ["r0", "r1", "r2", "r3"]
    for m in mans:
        _checksums_match(lake, m)
    # the same run id: exactly one wins; the others stop at the claim, before writing anything
    out = _race(uri, [("same", 10 + i, True) for i in range(4)], processes)
    winners = [o for o in out if o.startswith("committed:")]
    assert len(winners) == 1 and out.count("conflict-at-claim") == 3, out
    man = lake.manifest("g", "deepwalk", "same")
    assert f"committed:{man.extra['writer']}" == winners[0]
    _checksums_match(lake, man)
    assert not lake.exists(Lake.claim_path("g", "deepwalk", "same"))
    # a later writer of a committed run id is refused at once
    assert _write_and_commit(uri, "same", 99, True) == "conflict-at-claim"
    _checksums_match(lake, lake.manifest("g", "deepwalk", "same"))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_raw_commit_race_same_run_id_exactly_one_commit(tmp_path, request, kind):
    """Lake.commit alone (no claim), 8 writers of one run id: Delta's put-if-absent of the log
    version plus the run-id check let exactly one commit through; the others fail naming the table."""
    from embedlake.errors import CommitConflict
    from embedlake.lake import Lake, Manifest, embeddings_table
    uri = _lake_uri(kind, tmp_path, request)
    lake = Lake(uri)
    e = lake.write_parquet(Lake.part_path("embeddings", "g", "m", "x", 0),
                           embeddings_table(np.arange(2), np.ones((2, 2), np.float32))).to_dict()
    errors = []
    start = threading.Barrier(8)

    def one(i):
        start.wait()
        try:
            lake.commit(Manifest(dataset="g", method="m", run_id="x", files={"embeddings": [e]}, extra={"w": i}))
            return i
        except CommitConflict as err:
            errors.append(str(err))
            return None
    with ThreadPoolExecutor(8) as ex:
        res = list(ex.map(one, range(8)))
    won = [r for r in res if r is not None]
    assert len(won) == 1, res
    ms = lake.manifests("g", "m")
    assert len(ms) == 1 and ms[0].extra["w"] == won[0]
    assert all(lake.url("embeddings/g/m") in err and "\n" not in err for err in errors), errors
    log = [p for p in lake.list_files("embeddings/g/m/_delta_log") if p.endswith(".json")]
    assert log == ["embeddings/g/m/_delta_log/00000000000000000000.json"], log
