"""The Run object (tasks/run.py): one run from claim to commit, on a real local lake.

Claims (a second writer is refused and leaves the first's files alone; a dead writer's claim is
taken over on resume), abandon (data files removed, claim released, checkpoints of real progress
kept), commit (one Delta commit with the run record, checkpoints dropped), and the one stage-checkpoint API round trip
(open by spec -> advance -> reopen -> resume state / finished parts / final).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from embedlake.errors import CommitConflict
from embedlake.lake import Lake, embeddings_table
from embedlake.tasks.run import Run

DS, METHOD, RID = "g", "deepwalk", "r1"


def _rows(lake: Lake, rel: str) -> dict:
    """A real embeddings part (the commit reads its Parquet footer)."""
    return lake.write_parquet(rel, embeddings_table(np.arange(3), np.ones((3, 2), np.float32))).to_dict()


def _run(lake: Lake, **kw) -> Run:
    return Run(lake, DS, METHOD, RID, **kw)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def test_second_writer_is_refused_and_leaves_the_first_alone(lake):
    first = _run(lake).__enter__()
    part = Lake.part_path("embeddings", DS, METHOD, RID, 0)
    lake.write_bytes(part, b"first writer's rows")
    with pytest.raises(CommitConflict, match="in use by another writer"):
        with _run(lake):
            pytest.fail("the second writer must not get past its claim")
    assert lake.read_bytes(part) == b"first writer's rows"          # its refusal removed nothing
    claim = json.loads(lake.read_bytes(Lake.claim_path(DS, METHOD, RID)))
    assert claim["token"] == first.claim_token


def test_dead_writer_claim_is_taken_over_only_when_resuming(lake):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                          # exited and reaped: its pid is free
    lake.write_bytes(Lake.claim_path(DS, METHOD, RID), json.dumps(
        {"token": "t", "pid": dead.pid, "host": os.uname().nodename, "claimed_at": "x"}).encode())
    with pytest.raises(CommitConflict):
        _run(lake, resume=False).claim()
    token = _run(lake, resume=True).claim()
    assert json.loads(lake.read_bytes(Lake.claim_path(DS, METHOD, RID)))["token"] == token


def test_abandon_removes_data_files_releases_the_claim_keeps_progress(lake):
    codec_dir = f"tables/{DS}/{METHOD}.int8/run_id={RID}"
    run = _run(lake)
    run.owns(codec_dir)
    with pytest.raises(RuntimeError, match="stage failed"):
        with run:
            for rel in (Lake.part_path("embeddings", DS, METHOD, RID, 0), Lake.part_path("walks", DS, METHOD, RID, 0),
                        f"{Lake.run_dir('reports', DS, METHOD, RID)}/report.md", f"{codec_dir}/part-0.parquet"):
                lake.write_bytes(rel, b"x")
            walk = run.stage("walk", {"length": 5})
            lake.write_npy(walk.handle().part_path(0), np.zeros((2, 5), np.int32))   # progress: kept
            run.stage("tokens", {"input": 1}).finish(files=[], stats={}, info={})   # names run files: goes
            raise RuntimeError("stage failed")
    left = lake.list_files("")
    assert all(f.startswith(f"checkpoints/{DS}/{METHOD}/run_id={RID}/walk/") for f in left), left
    assert run.stage("walk", {"length": 5}).finished_parts(1) == {0}            # a re-run reuses it
    assert not lake.exists(Lake.claim_path(DS, METHOD, RID))                    # claim released
    assert _run(lake).claim()                                                   # the id is free again


def test_abandon_without_progress_leaves_no_checkpoint_folder(lake):
    with pytest.raises(KeyboardInterrupt):
        with _run(lake) as run:
            run.stage("train", {"epochs": 3})                 # a state with no step yet
            raise KeyboardInterrupt
    assert lake.list_files("") == []


def test_abandon_never_removes_a_committed_runs_files(lake, prefect_session):
    with _run(lake) as run:
        part = Lake.part_path("embeddings", DS, METHOD, RID, 0)
        entry = _rows(lake, part)
        run.commit(run.manifest({"embeddings": [entry]}))
    run.abandon()                                             # e.g. a later stage of the flow failed
    assert lake.exists(part) and lake.manifest(DS, METHOD).run_id == RID


def test_commit_writes_the_run_record_and_drops_checkpoints(lake, prefect_session):
    from embedlake.config import PipelineConfig
    cfg = PipelineConfig()
    with Run(lake, DS, METHOD, RID, config=cfg) as run:
        entry = _rows(lake, Lake.part_path("embeddings", DS, METHOD, RID, 0))
        stage = run.stage("train", {"epochs": 1})
        stage.handle().advance("epoch", 1, {"w_in": np.ones((3, 2), np.float32)}, final=True)
        run.time("publish", lambda: None)
        url = run.commit(run.manifest({"embeddings": [entry]}, {"quality": {"x": 1.0}}, extra={"dim": 2}))
    assert url == lake.url(f"embeddings/{DS}/{METHOD}")                      # the run's Delta table
    man = lake.manifest(DS, METHOD, RID)
    assert man.table_version == 0 and man.table == f"embeddings/{DS}/{METHOD}"
    assert (man.dataset, man.method, man.run_id) == (DS, METHOD, RID)
    assert man.files == {"embeddings": [entry]} and man.metrics == {"quality": {"x": 1.0}}
    assert man.extra == {"dim": 2} and man.config == cfg.model_dump(mode="json")
    assert set(man.stages) == {"publish"} and "commit" in run.stages           # the clock's stages
    assert not lake.exists(run.checkpoint_dir)
    assert not lake.exists(Lake.claim_path(DS, METHOD, RID))


def test_stage_checkpoint_round_trip(lake):
    spec = {"graph": {"version": "v-1"}, "epochs": 3}
    first = _run(lake).stage("train", spec)
    assert first.enabled and first.state is None and first.progress("epoch") == 0
    handle = first.handle()
    W_in, W_out = np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((3, 2), np.float32)
    handle.advance("epoch", 1, {"w_in": W_in, "w_out": W_out})
    handle.advance("epoch", 2, {"w_in": W_in + 1, "w_out": W_out})
    # a killed attempt's re-run: same spec -> resumes after epoch 2 from that epoch's tables
    again = _run(lake).stage("train", spec)
    assert again.progress("epoch") == 2 and not again.final and not again.discarded
    resumed = again.handle()
    assert resumed.resume_step("epoch") == 2
    assert np.array_equal(resumed.load("w_in"), W_in + 1) and np.array_equal(resumed.load("w_out"), W_out)
    resumed.prev = 2
    resumed.advance("epoch", 3, {"w_in": W_in + 2}, final=True)
    resumed.set_final_info({"tokens": 7})
    folders = {f.rsplit("/", 2)[-2] for f in lake.list_files(f"{again.run.checkpoint_dir}/train") if f.endswith(".npy")}
    assert folders == {"epoch=000003"}                                  # one step kept: the finished table
    done = _run(lake).stage("train", spec)
    assert done.final and done.progress("epoch") == 0 and done.state["info"] == {"tokens": 7}
    assert np.array_equal(done.handle().load("w_in"), W_in + 2)
    # other settings: the old checkpoint is discarded and the stage starts over
    other = _run(lake).stage("train", {**spec, "epochs": 4})
    assert other.discarded and other.state is None
    assert not any(f.endswith(".npy") for f in lake.list_files(f"{other.run.checkpoint_dir}/train"))


def test_partitioned_stage_parts_and_resume_off(lake):
    spec = {"length": 5}
    walk = _run(lake).stage("walk", spec)
    for i in (0, 2):
        lake.write_npy(walk.handle().part_path(i), np.zeros((2, 5), np.int32))
    assert _run(lake).stage("walk", spec).finished_parts(3) == {0, 2}
    assert _run(lake).stage("walk", spec).finished_parts(2) == {0}
    fresh = _run(lake, resume=False).stage("walk", spec)           # train.resume=false: start over
    assert fresh.discarded and fresh.finished_parts(3) == set()


def test_checkpoints_off_write_nothing(lake):
    stage = _run(lake, checkpoints=False).stage("train", {"epochs": 1})
    assert not stage.enabled and stage.handle() is None and stage.progress("epoch") == 0
    assert stage.finished_table() is None
    stage.finish(files=[])
    assert lake.list_files("") == []
