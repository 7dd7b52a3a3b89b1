"""Block-partitioned skip-gram (issue 4): the schedule, the partitions, quality against the one-table
kernel, bit-exact resume, and through the flow: 2 Ray workers on a 2-node `ray.cluster_utils.Cluster`,
and a run SIGKILLed after its first checkpoint that a re-run with the same run id resumes.

The flow runs happen in subprocesses (own Ray; they report to the session's Prefect server), so the
session's ray_session is untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from embedlake.workers.train import blocks as sb

REPO = Path(__file__).resolve().parents[1]


# ---- schedule and partitions --------------------------------------------------------------------
@pytest.mark.parametrize("P", [1, 2, 3, 4, 7, 8])
def test_schedule_covers_every_block_once_and_episodes_share_no_shard(P):
    for rounds in (1, 3):
        per_epoch = P * rounds
        for epoch in range(2):
            seen: dict[int, list] = {}
            for step in range(epoch * per_epoch, (epoch + 1) * per_epoch):
                ep, e, blocks = sb.step_blocks(step, P, rounds)
                assert ep == epoch and len(blocks) == P
                # inside an episode: every W_in shard once and every W_out shard once
                assert sorted(i for i, _ in blocks) == list(range(P))
                assert sorted(j for _, j in blocks) == list(range(P))
                seen.setdefault(e // P, []).extend(blocks)
            assert len(seen) == rounds
            for blocks in seen.values():         # every (i, j) exactly once per pass over the stream
                assert sorted(blocks) == [(i, j) for i in range(P) for j in range(P)]


def test_partitions_are_balanced_and_local_rows_a_bijection():
    rng = np.random.default_rng(0)
    counts = (rng.pareto(1.5, 10_001) * 20).astype(np.int64)       # heavy-tailed, like node degrees
    P = 4
    part, local, sizes = sb.assign_partitions(counts, P, 0.75)
    assert sizes.sum() == len(counts) and sizes.max() - sizes.min() <= 1
    for p in range(P):
        rows = np.sort(local[part == p])
        assert np.array_equal(rows, np.arange(sizes[p]))
    mass = np.bincount(part, weights=counts ** 0.75, minlength=P)
    tok = np.bincount(part, weights=counts, minlength=P)
    assert mass.max() / mass.min() < 1.05 and tok.max() / tok.min() < 1.15, (mass, tok)
    thr, idx, off = sb.partition_noise(counts, part, local, sizes, 0.75)
    assert np.array_equal(np.diff(off), sizes) and idx.max() < sizes.max()


def test_partition_noise_draws_follow_the_partition_distribution():
    counts = np.array([100, 0, 50, 10, 400, 30, 0, 80], np.int64)
    part, local, sizes = sb.assign_partitions(counts, 2, 0.75)
    thr, idx, off = sb.partition_noise(counts, part, local, sizes, 0.75)
    rng = np.random.default_rng(1)
    for p in range(2):
        t, a = thr[off[p]:off[p + 1]], idx[off[p]:off[p + 1]]
        n = len(t)
        r = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64)
        u = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64)
        j = (r * np.uint64(n)) >> np.uint64(32)
        draw = np.where(u < t[j], j.astype(np.int64), a[j].astype(np.int64))
        members = np.flatnonzero(part == p)
        w = np.zeros(n)
        w[local[members]] = counts[members] ** 0.75
        freq = np.bincount(draw, minlength=n) / len(draw)
        assert np.allclose(freq, w / w.sum(), atol=0.006), (freq, w / w.sum())
        assert freq[w == 0].sum() == 0                  # zero-count nodes are never negatives


# ---- quality and determinism (in-process driver) -------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.synthetic import planted_communities
    from embedlake.workers.graph.walks import random_walks, walks_to_sentences
    n = 2000
    s, d, lab = planted_communities(n, 8, 10.0, 0.5, 3)
    g = build_csr(s, d, n)
    W = random_walks(g.indptr, g.indices, None, np.arange(n), 10, 40, 1, threads=1, symmetric=True)
    tok, off = walks_to_sentences(W)
    return n, lab, tok, off


def _f1(X, lab):
    from embedlake.workers.evaluate.classify import node_classification
    r = node_classification(X, np.arange(len(lab)), lab, ratios=(0.1, 0.5), repeats=3)
    return r["micro_f1"]


def test_partitioned_quality_matches_one_table_training(planted):
    from embedlake.workers.train.skipgram import train_sgns
    n, lab, tok, off = planted
    kw = dict(dim=32, window=5, negatives=5, seed=0, threads=1)
    X1, _, _ = train_sgns(tok, off, n, **kw)
    base = _f1(X1, lab)
    for P in (2, 4):
        Xp, _, st = sb.train_blocks(tok, off, n, partitions=P, rounds=8, **kw)
        f = _f1(Xp, lab)
        assert st["episodes"] == P * 8 and st["loss_last"] < st["loss_first"]
        # measured (seeds 0, 1): P=2 and P=4 within 0.008 of the one-table kernel, mostly above
        for r in ("0.1", "0.5"):
            assert f[r] >= base[r] - 0.02, (P, f, base)
        assert f["0.5"] > 0.5                       # 8 communities: chance is 0.125


def test_one_partition_is_the_one_table_model(planted):
    """P = 1 is plain HogBatch SGNS on the whole table: same quality as train_sgns (other draws)."""
    from embedlake.workers.train.skipgram import train_sgns
    n, lab, tok, off = planted
    kw = dict(dim=32, window=5, negatives=5, seed=0, threads=1)
    X1, _, s1 = train_sgns(tok, off, n, **kw)
    Xb, _, sb1 = sb.train_blocks(tok, off, n, partitions=1, rounds=1, **kw)
    a, b = _f1(X1, lab), _f1(Xb, lab)
    assert abs(a["0.5"] - b["0.5"]) < 0.03, (a, b)
    assert abs(s1["pairs"] - sb1["pairs"]) / s1["pairs"] < 0.01     # same windows in distribution


def test_resume_from_a_checkpoint_is_bit_exact(planted):
    """One thread: a run resumed from the shards after episode k equals the uninterrupted run."""
    n, lab, tok, off = planted
    kw = dict(partitions=3, rounds=2, dim=16, window=5, negatives=3, seed=5, threads=1)
    saved = {}

    def hook(ep, e, Win, Wout):
        if e == 2:
            saved["shards"] = ([w.copy() for w in Win], [w.copy() for w in Wout])

    A_in, A_out, _ = sb.train_blocks(tok[:40_000], off[:1001], n, on_episode=hook, **kw)
    B_in, B_out, st = sb.train_blocks(tok[:40_000], off[:1001], n, start=(3, *saved["shards"]), **kw)
    assert st["episodes"] == 6 - 3
    assert np.array_equal(A_in, B_in) and np.array_equal(A_out, B_out)
    C_in, _, _ = sb.train_blocks(tok[:40_000], off[:1001], n, **{**kw, "seed": 6})
    assert not np.array_equal(A_in, C_in)


def test_padding_is_dropped_before_windowing():
    tok = np.array([0, 1, -1, 2, 3, -1, -1, 4], np.int32)
    off = np.array([0, 3, 8], np.int64)
    t, o = sb.compact_stream(tok, off)
    assert t.tolist() == [0, 1, 2, 3, 4] and o.tolist() == [0, 2, 5]


# ---- through the flow: 2-node cluster, kill and resume ------------------------------------------
FLOW_SCRIPT = r"""
import json, sys
from embedlake.config import load_config
lake, run_id, mode = sys.argv[1], sys.argv[2], sys.argv[3]
ov = [f"lake.uri={lake}", f"lake.run_id={run_id}", "train.workers=2", "train.dim=32", "train.window=5",
      "train.rounds=6", "train.checkpoint=round", "synthetic.nodes=3000", "walk.walks_per_node=10",
      "walk.length=40", "eval.repeats=1", "eval.reconstruction=false", "eval.align_to_previous=false",
      "eval.artifacts=false"]
cluster = None
if mode == "cluster":
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": 200 * 2**20})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
    cluster.wait_for_nodes()
    ov.append(f"ray.address={cluster.address}")
else:
    ov.append("ray.num_cpus=2")
try:
    from embedlake.flows.embed_graph import embed_graph
    import ray
    s = embed_graph(load_config(None, ov))
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps({"run_id": s["run_id"], "nodes": len(nodes), "train": s["stages"]["train"],
                                  "micro": s["metrics"]["node_classification"]["micro_f1"]}))
finally:
    import ray
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
"""


_RAY_TMP: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _drop_ray_tmp():
    yield
    for d in _RAY_TMP:
        shutil.rmtree(d, ignore_errors=True)


def _env(tmp: Path) -> dict:
    # a short private Ray temp dir (unix socket paths are limited): never attach to another Ray here
    from prefect.settings import PREFECT_API_URL
    _RAY_TMP.append(tempfile.mkdtemp(prefix="elr", dir="/tmp"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_HOME": str(tmp / "prefect"), "RAY_TMPDIR": _RAY_TMP[-1]}
    env.pop("RAY_ADDRESS", None)
    if PREFECT_API_URL.value():       # the session's Prefect server: no temporary server per run (~12 s each)
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


def _spawn(tmp: Path, lake: Path, run_id: str, mode: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", FLOW_SCRIPT, str(lake), run_id, mode], cwd=str(tmp),
                            env=_env(tmp), stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _result(p: subprocess.Popen, log: Path, timeout: float) -> dict:
    rc = p.wait(timeout=timeout)
    text = log.read_text(errors="replace")
    assert rc == 0, text[-4000:]
    return json.loads(text.split("RESULT ", 1)[1].splitlines()[0])


def test_cluster_run_and_killed_run_resumed_give_the_same_table(tmp_path, prefect_session):
    """Run A: 2 workers on a 2-node Cluster (head without CPUs), uninterrupted. Run B: local Ray,
    SIGKILLed (whole process group) once its first checkpoint exists, then re-run with the same run
    id: it takes over the dead claim, resumes at the checkpointed episode, and - one thread per
    block, so every block is deterministic - ends with exactly A's table."""
    from embedlake.lake import Lake
    from embedlake.reader import load_matrix
    from embedlake.tasks.run import Run
    lake = tmp_path / "lake"
    checkpoint_dir = lambda dataset, method, run_id: Run(Lake(str(lake)), dataset, method, run_id).checkpoint_dir  # noqa: E731
    a = _spawn(tmp_path, lake, "runA", "cluster", tmp_path / "a.log")
    try:
        b = _spawn(tmp_path, lake, "runB", "local", tmp_path / "b.log")
        state = lake / checkpoint_dir("planted", "deepwalk", "runB") / "state.json"
        deadline = time.monotonic() + 240
        while not state.exists() and b.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state.exists(), (tmp_path / "b.log").read_text(errors="replace")[-4000:]
        os.killpg(b.pid, signal.SIGKILL)            # the driver, its Ray and Prefect: no clean-up runs
        b.wait()
        for _ in range(100):                        # Ray's processes die with their group
            try:
                os.killpg(b.pid, 0)
                time.sleep(0.1)
            except ProcessLookupError:
                break
        killed_at = json.loads(state.read_text())["step"]
        lk = Lake(str(lake))
        assert killed_at < json.loads(state.read_text())["total_steps"]
        assert not lk.is_committed("planted", "deepwalk", "runB")
        assert lk.exists(Lake.claim_path("planted", "deepwalk", "runB"))     # the dead writer's claim
        c = _spawn(tmp_path, lake, "runB", "local", tmp_path / "c.log")
        res_c = _result(c, tmp_path / "c.log", 300)
        res_a = _result(a, tmp_path / "a.log", 300)
    finally:
        for p in (a,):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert res_a["nodes"] == 3
    man_b = Lake(str(lake)).manifest("planted", "deepwalk", "runB")
    info = man_b.extra["train"]
    assert info["resumed_at"] == killed_at and info["episodes"] == info["partitions"] * 6 - killed_at
    assert info["workers"] == 2 and info["partitions"] == 4
    assert "resuming run runB at episode" in (tmp_path / "c.log").read_text(errors="replace")
    ids_a, XA = load_matrix(str(lake), "planted", "deepwalk", run="runA")
    ids_b, XB = load_matrix(str(lake), "planted", "deepwalk", run="runB")
    assert np.array_equal(ids_a, ids_b) and np.array_equal(XA, XB)
    assert res_a["micro"]["0.5"] > 0.6
    # the committed run's checkpoints are gone; the claim is dropped by the commit
    assert not (lake / checkpoint_dir("planted", "deepwalk", "runB")).exists()
    assert not Lake(str(lake)).exists(Lake.claim_path("planted", "deepwalk", "runB"))


# ---- claims and checkpoint pieces (no Ray) ---------------------------------------------------------
def _claim(lake, pid: int, host: str | None = None):
    from embedlake.lake import Lake
    lake.write_bytes(Lake.claim_path("g", "deepwalk", "r1"), json.dumps(
        {"token": "t", "pid": pid, "host": host or os.uname().nodename, "claimed_at": "x"}).encode())


def test_dead_claim_is_taken_over_only_from_a_dead_local_pid(tmp_path):
    """A killed run's claim is taken over by its re-run whether or not it left a checkpoint (it may
    have died before the first one); a live writer and another host's claim are still refused."""
    from embedlake.errors import CommitConflict
    from embedlake.lake import Lake
    from embedlake.tasks.run import Run
    lake = Lake(str(tmp_path / "lake"))
    claim_run = lambda lake, dataset, method, run_id, resume: Run(lake, dataset, method, run_id,  # noqa: E731
                                                                  resume=resume).claim()
    checkpoint_dir = lambda dataset, method, run_id: Run(lake, dataset, method, run_id).checkpoint_dir  # noqa: E731
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()                                             # exited and reaped: its pid is free
    _claim(lake, p.pid)
    assert not lake.exists(checkpoint_dir("g", "deepwalk", "r1"))        # no checkpoint: taken over all the same
    assert lake.take_over_dead_claim("g", "deepwalk", "r1")["pid"] == p.pid
    assert lake.claim_run("g", "deepwalk", "r1")                          # the re-run claims the id
    _claim(lake, os.getppid())                                            # a live writer
    assert lake.take_over_dead_claim("g", "deepwalk", "r1") is None
    with pytest.raises(CommitConflict, match="in use by another writer"):
        claim_run(lake, "g", "deepwalk", "r1", resume=True)
    _claim(lake, p.pid, host="another-host")                              # cannot check its pid
    assert lake.take_over_dead_claim("g", "deepwalk", "r1") is None
    with pytest.raises(CommitConflict, match="another-host"):
        claim_run(lake, "g", "deepwalk", "r1", resume=True)
    _claim(lake, p.pid)
    with pytest.raises(CommitConflict):                                   # resume off: refused as before
        claim_run(lake, "g", "deepwalk", "r1", resume=False)
    token = claim_run(lake, "g", "deepwalk", "r1", resume=True)
    assert json.loads(lake.read_bytes(Lake.claim_path("g", "deepwalk", "r1")))["token"] == token


def test_assemble_reads_checkpointed_shards(tmp_path, planted):
    """A run resumed after its training had finished (a later stage failed) assembles from the lake."""
    from embedlake.lake import Lake
    n, lab, tok, off = planted
    prep = sb.prepare_blocks(tok[:8000], off[:201], n, 3)
    shards = [sb.init_shards(prep["sizes"], 4, 0, p)[0] for p in range(3)]
    lake = Lake(str(tmp_path / "lake"))
    paths = []
    for p, S in enumerate(shards):
        paths.append(sb.checkpoint_file("checkpoints/g/deepwalk/run=r", 5, "w_in", p))
        lake.write_npy(paths[-1], S)
    X = sb.assemble_stage(prep, lake, *paths)
    assert np.array_equal(X, sb.assemble(prep["part"], prep["local"], shards))
    assert X.shape == (n, 4)
