"""Killed runs resume (issue 10): a run SIGKILLed after its walks, after training epoch 1 of 3, or
after publishing (before evaluate / commit) is re-run with the same run id; the re-run takes over
the dead claim, reuses what was checkpointed (asserted through its log and manifest, not timings)
and publishes exactly the table of an uninterrupted run (one training thread: bit-reproducible).

The runs are `embedlake embed-graph` subprocesses in their own sessions (the EMBEDLAKE_FAULT hook
kills the whole session: driver, local Ray, all at once), each with its own lake; the killed runs
and the reference run go in parallel, then the re-runs. In-process tests cover the pieces: epoch
and streamed-round resume of the kernel drivers, stage fingerprints, and `gc` keeping a young
checkpoint of an uncommitted run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_proc import start_cli, wait_cli
from embedlake.lake import Lake

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KARATE = SHARED / "datasets" / "karate"

KILLS = {"walk": "after:walk", "epoch": "after:train_epoch:1", "publish": "after:publish"}
ARGS = ["-p", "train.threads=1", "-p", "train.epochs=3", "-p", "train.dim=16", "-p", "walk.walks_per_node=10",
        "-p", "walk.length=20", "-p", "shard.partitions=2", "-p", "ray.num_cpus=1", "-p", "eval.repeats=1",
        "-p", "eval.artifacts=false", "-p", "eval.reconstruction=false", "-p", "eval.align_to_previous=false"]


def _cli(tmp: Path, lake: Path, run_id: str, log: Path, fault: str | None) -> subprocess.Popen:
    return start_cli(tmp, ["embed-graph", "--edges", str(KARATE / "edges.tsv"), "--labels", str(KARATE / "labels.tsv"),
                           "--lake", str(lake), "--run-id", run_id, "--json", *ARGS], log, fault)


def _wait(p: subprocess.Popen, timeout: float = 240) -> int:
    return wait_cli(p, timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_session):
    if not KARATE.exists():
        pytest.skip(f"{KARATE} is absent: the shared datasets folder (../shared) is needed for this test")
    tmp = tmp_path_factory.mktemp("resume")
    out: dict = {"tmp": tmp}
    procs = {"ref": _cli(tmp, tmp / "ref", "r", tmp / "ref.log", None)}
    for name, fault in KILLS.items():
        procs[name] = _cli(tmp, tmp / name, "r", tmp / f"{name}.killed.log", fault)
    rcs = {name: _wait(p) for name, p in procs.items()}
    assert rcs["ref"] == 0, (tmp / "ref.log").read_text(errors="replace")[-3000:]
    for name in KILLS:
        lk = Lake(str(tmp / name))
        text = (tmp / f"{name}.killed.log").read_text(errors="replace")
        assert rcs[name] == -9, (name, rcs[name], text[-3000:])      # SIGKILL: no clean-up ran
        out[name] = {"committed_after_kill": lk.is_committed("karate", "deepwalk", "r"),
                     "claim_after_kill": lk.exists(Lake.claim_path("karate", "deepwalk", "r")),
                     "checkpoints_after_kill": lk.list_files(Lake.run_dir("checkpoints", "karate", "deepwalk", "r"))}
    # one walk partition lost (as if the kill came while it was being walked): only it is walked again
    ck = Lake.run_dir("checkpoints", "karate", "deepwalk", "r")
    (tmp / "walk" / ck / "walk" / "part-00001.npy").unlink()
    procs = {name: _cli(tmp, tmp / name, "r", tmp / f"{name}.rerun.log", None) for name in KILLS}
    for name, p in procs.items():
        rc = _wait(p)
        text = (tmp / f"{name}.rerun.log").read_text(errors="replace")
        assert rc == 0, (name, text[-3000:])
        out[name]["log"] = text
        out[name]["summary"] = json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])
    return out


def _table(lake: Path):
    import embedlake
    return embedlake.load_matrix(str(lake), "karate", "deepwalk", run="r")


@pytest.mark.parametrize("kill", list(KILLS))
def test_killed_run_resumes_to_the_uninterrupted_table(runs, kill):
    r = runs[kill]
    # after the kill: nothing visible to readers, the dead writer's claim and the checkpoints remain
    assert not r["committed_after_kill"] and r["claim_after_kill"]
    assert any("/walk/part-" in f for f in r["checkpoints_after_kill"])
    log = r["log"]
    assert "no longer running): its claim is taken over" in log
    # bit-identical to the uninterrupted run with the same seed
    ids_ref, X_ref = _table(runs["tmp"] / "ref")
    ids, X = _table(runs["tmp"] / kill)
    assert np.array_equal(ids_ref, ids) and np.array_equal(X_ref, X)
    lk = Lake(str(runs["tmp"] / kill))
    man = lk.manifest("karate", "deepwalk", "r")
    resumed = man.extra["train"]["resumed"]
    # committed: checkpoints and claim gone
    assert not lk.exists(Lake.run_dir("checkpoints", "karate", "deepwalk", "r"))
    assert not lk.exists(Lake.claim_path("karate", "deepwalk", "r"))
    if kill == "walk":       # walks of partition 0 reused, partition 1 (deleted) walked; training from scratch
        assert "resume: reusing 1/2 walk partitions" in log
        assert resumed["walk_partitions_reused"] == 1 and resumed["start_epoch"] == 0
        assert man.extra["train"]["tokens"] == 3 * 34 * 10 * 20
    elif kill == "epoch":    # both partitions reused, epoch 1 not trained again
        assert "resume: reusing 2/2 walk partitions" in log
        assert "resume: training continues at epoch 2/3" in log
        assert resumed["walk_partitions_reused"] == 2 and resumed["start_epoch"] == 1
        assert man.extra["train"]["tokens"] == 2 * 34 * 10 * 20        # two epochs trained in the re-run
    else:                    # the finished table is reused: no walks, no training
        assert "resume: the trained table of run r is reused" in log
        assert resumed["table_reused"] is True
        assert "walks (partitions)" not in log and "train" not in r["summary"]["stages"]
    assert man.metrics["node_classification"]["micro_f1"]["0.5"] > 0.6


def test_reference_run_left_no_checkpoints(runs):
    lk = Lake(str(runs["tmp"] / "ref"))
    assert lk.is_committed("karate", "deepwalk", "r")
    assert lk.list_files("checkpoints") == []


# ---- pieces, in process ------------------------------------------------------------------------------
def _stream(seed: int = 0, n: int = 60, sentences: int = 300, length: int = 12):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, n, sentences * length).astype(np.int32)
    off = np.arange(0, sentences * length + 1, length, dtype=np.int64)
    return n, tok, off


def test_train_sgns_resumed_at_an_epoch_is_bit_exact():
    from embedlake.workers.train.skipgram import train_sgns
    n, tok, off = _stream()
    kw = dict(dim=8, window=3, negatives=3, epochs=3, lr=0.05, min_lr=0.001, seed=5, threads=1, sample=1e-2)
    saved = {}
    W_full, _, _ = train_sgns(tok, off, n, on_epoch=lambda k, a, b: saved.setdefault(k, (a.copy(), b.copy())), **kw)
    assert sorted(saved) == [1, 2, 3] and np.array_equal(saved[3][0], W_full)
    for k in (1, 2):
        W, _, st = train_sgns(tok, off, n, init=saved[k], start_epoch=k, **kw)
        assert np.array_equal(W, W_full), k
        assert st["tokens"] == (3 - k) * len(tok) and st["start_epoch"] == k
    with pytest.raises(ValueError):
        train_sgns(tok, off, n, start_epoch=1, **kw)             # resuming needs the tables


def test_streamed_rounds_resume_from_a_round_checkpoint(tmp_path):
    import dataclasses

    from embedlake.config import TrainConfig
    from embedlake.workers.run import checkpoints as cp
    from embedlake.workers.train.stages import train_round
    lake = Lake(str(tmp_path / "lake"))
    run_dir = Lake.run_dir("checkpoints", "g", "deepwalk", "r")
    base, state, _ = cp.open_stage(lake, run_dir, "stream", {"x": 1}, True)
    assert state is None
    handle = cp.StageHandle(lake, run_dir, "stream", base)
    rng = np.random.default_rng(3)
    n, R = 40, 4
    rounds = [rng.integers(0, n, (n, 10)).astype(np.int32) for _ in range(R)]
    train = TrainConfig(dim=8, window=3, negatives=2, ns_exponent=0.75, lr=0.05, min_lr=0.001, sample=0.0, seed=1)
    st, prev = None, None
    for r in range(R):
        st, _ = train_round(n, train, r, R, st, rounds[r], threads=1,
                            checkpoint=dataclasses.replace(handle, prev=prev))
        prev = r + 1
        if r == 1:
            mid = cp.read_state(lake, run_dir, "stream")
    assert mid["round"] == 2 and not mid["final"]
    final = cp.read_state(lake, run_dir, "stream")
    assert final["final"] and final["round"] == R
    assert [f.rsplit("/", 2)[-2] for f in lake.list_files(cp.stage_dir(run_dir, "stream")) if f.endswith(".npy")] \
        == ["round=000004"]                       # one step kept: the finished table
    assert np.array_equal(cp.load(lake, final, "w_in"), st[0])
    # a killed run resumed after round 2 (its checkpoint rewritten as it was) ends with the same table
    lake.delete(cp.stage_dir(run_dir, "stream"), recursive=True)
    st2, prev = None, None
    for r in range(2):
        st2, _ = train_round(n, train, r, R, st2, rounds[r], threads=1,
                             checkpoint=dataclasses.replace(handle, prev=prev))
        prev = r + 1
    st3 = dataclasses.replace(handle, resume_state=cp.read_state(lake, run_dir, "stream"))
    for r in range(2, R):
        st3, _ = train_round(n, train, r, R, st3, rounds[r], threads=1)
    assert np.array_equal(st3[0], st[0])


def test_stage_fingerprint_mismatch_starts_over(tmp_path):
    from embedlake.workers.run import checkpoints as cp
    lake = Lake(str(tmp_path / "lake"))
    run_dir = Lake.run_dir("checkpoints", "g", "deepwalk", "r")
    base, state, discarded = cp.open_stage(lake, run_dir, "walk", {"length": 20}, True)
    assert state is None and not discarded
    lake.write_npy(cp.part_path(run_dir, "walk", 0), np.zeros((2, 3), np.int32))
    _, state, _ = cp.open_stage(lake, run_dir, "walk", {"length": 20}, True)          # same settings: reused
    assert state["fingerprint"] == base["fingerprint"] and cp.finished_parts(lake, run_dir, "walk") == {0}
    _, state, discarded = cp.open_stage(lake, run_dir, "walk", {"length": 40}, True)  # other settings
    assert state is None and discarded and cp.finished_parts(lake, run_dir, "walk") == set()
    lake.write_npy(cp.part_path(run_dir, "walk", 0), np.zeros((2, 3), np.int32))
    _, state, discarded = cp.open_stage(lake, run_dir, "walk", {"length": 40}, False)  # resume off
    assert state is None and discarded and cp.finished_parts(lake, run_dir, "walk") == set()


def test_fault_point_is_inert_unless_named(monkeypatch):
    from embedlake.workers.run.faults import fault_point
    monkeypatch.delenv("EMBEDLAKE_FAULT", raising=False)
    fault_point("after:walk")
    monkeypatch.setenv("EMBEDLAKE_FAULT", "after:publish")
    fault_point("after:walk")                    # another point: nothing happens
    p = subprocess.run([sys.executable, "-c", "from embedlake.workers.run.faults import fault_point as f; "
                        "f('after:walk'); print('alive')"], env={**os.environ, "EMBEDLAKE_FAULT": "after:walk"},
                       capture_output=True, text=True, timeout=60, start_new_session=True)
    assert p.returncode == -9 and "alive" not in p.stdout


def test_gc_keeps_resumable_and_live_runs(tmp_path, capsys):
    """A killed run's checkpoints are what its re-run resumes from: gc keeps them (as a whole) until
    they are older than --checkpoint-age; a run whose writer is alive keeps every file."""
    from embedlake.flows.cli import main as cli
    lk = Lake(str(tmp_path / "lake"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ck = Lake.run_dir("checkpoints", "g", "deepwalk", "killed")
    lk.write_npy(f"{ck}/walk/part-00000.npy", np.zeros((2, 2), np.int32))
    lk.write_bytes(Lake.claim_path("g", "deepwalk", "killed"), json.dumps(
        {"token": "t", "pid": dead.pid, "host": os.uname().nodename, "claimed_at": "x"}).encode())
    live = f"{Lake.run_dir('reports', 'g', 'deepwalk', 'running')}/report.md"    # an internal file
    lk.write_bytes(live, b"being written")
    table_part = Lake.part_path("embeddings", "g", "deepwalk", "running", 0)      # kept by the vacuum retention
    lk.write_bytes(table_part, b"being written")
    lk.write_bytes(Lake.claim_path("g", "deepwalk", "running"), json.dumps(
        {"token": "t", "pid": os.getppid(), "host": os.uname().nodename, "claimed_at": "x"}).encode())
    assert cli(["gc", "--lake", lk.uri, "--min-age", "0", "--delete"]) == 0
    out = capsys.readouterr().out
    assert "checkpoints of 1 uncommitted run(s) kept" in out and "g/deepwalk/killed" in out
    assert "1 uncommitted run(s) kept: their writer still holds the run id (g/deepwalk/running)" in out
    assert lk.exists(f"{ck}/walk/part-00000.npy") and lk.exists(live)
    assert cli(["gc", "--lake", lk.uri, "--min-age", "0", "--checkpoint-age", "0", "--delete"]) == 0
    assert not lk.exists(f"{ck}/walk/part-00000.npy") and lk.exists(live) and lk.exists(table_part)
