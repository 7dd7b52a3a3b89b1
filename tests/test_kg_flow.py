"""`embedlake embed-kg` end to end on a tiny knowledge graph: the run commits entity and relation
tables that round-trip (bit-identical to the worker trained directly, one thread), its manifest
carries the filtered metrics; bad input fails with one line naming file and line, nothing committed;
a run killed after a training epoch resumes to the uninterrupted tables (the one-table and the
partitioned trainer's killed runs go in parallel, then their re-runs)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_proc import start_cli, wait_cli
from embedlake.config import load_config
from embedlake.lake import Lake
from embedlake.workers.kg import stages as ks

SETTINGS = ["kg.dim=8", "kg.epochs=4", "kg.batch=16", "kg.negatives=0", "kg.lr=0.1", "kg.reg_weight=0.0",
            "kg.init_scale=0.1", "ray.num_cpus=2"]


def write_kg(folder, n=30):
    """Chains with string ids: e<i> next e<i+1>, e<i> skip e<i+2>; a few held out as valid and test."""
    rows = [(f"e{i}", "next", f"e{i + 1}") for i in range(n - 1)] + [(f"e{i}", "skip", f"e{i + 2}")
                                                                      for i in range(n - 2)]
    order = np.random.default_rng(0).permutation(len(rows))
    parts = {"valid": order[:4], "test": order[4:10], "train": order[10:]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, idx in parts.items():
        (folder / f"{name}.txt").write_text("".join("\t".join(rows[i]) + "\n" for i in sorted(idx)))
    return folder


def kg_cfg(data, lake, run_id="r1", extra=()):
    ov = [f"kg.train={data}/train.txt", f"kg.valid={data}/valid.txt", f"kg.test={data}/test.txt",
          f"lake.uri={lake}", f"lake.run_id={run_id}", *SETTINGS, *extra]
    return load_config(None, ov)


@pytest.fixture(scope="module")
def committed(tmp_path_factory, ray_session, prefect_session):
    from embedlake.flows.embed_kg import embed_kg
    tmp = tmp_path_factory.mktemp("kg_flow")
    data = write_kg(tmp / "chains")
    cfg = kg_cfg(data, tmp / "lake")
    return tmp, data, cfg, embed_kg(cfg)


def read_table(lake_dir, which, run_id="r1"):
    rel = Lake.part_path("embeddings", "chains", ks.table_method("kg-complex", which), run_id, 0)
    t = pq.read_table(Lake(str(lake_dir)).url(rel))
    return [str(x) for x in t.column(0).to_pylist()], np.array(t.column("vector").to_pylist(), np.float32)


def test_run_commits_tables_that_round_trip(committed):
    tmp, data, cfg, summary = committed
    ts, info = ks.load_stage(str(tmp / "lake"), cfg.kg)
    tables, _ = ks.train_stage(ts, cfg.kg)
    ents, ent_vec = read_table(tmp / "lake", "entities")
    rels, rel_vec = read_table(tmp / "lake", "relations")
    assert ents == sorted(ents) == [str(e) for e in ts.entities] and rels == ["next", "skip"]
    assert np.array_equal(ent_vec, tables[0]) and np.array_equal(rel_vec, tables[1])
    man = Lake(str(tmp / "lake")).manifest("chains", "kg-complex", "r1")
    want = ks.evaluate_stage(ts, cfg.kg, tables)
    assert man.metrics["mrr"] == want["mrr"] and man.metrics["hits@10"] == want["hits@10"]
    assert man.metrics["triples"] == 6 and man.metrics["mrr"] > 0.5
    assert man.extra["kg"]["entities"] == 30 and man.extra["train"]["epochs"] == 4
    assert set(man.files) == {"entities", "relations"}
    assert summary["metrics"]["mrr"] == man.metrics["mrr"]
    assert not Lake(str(tmp / "lake")).exists(Lake.run_dir("checkpoints", "chains", "kg-complex", "r1"))


def test_entity_and_relation_tables_read_as_delta_tables(committed):
    """Each table is its own Delta table (one schema each): plain polars reads the latest run."""
    import polars as pl
    tmp, data, cfg, summary = committed
    ents, ent_vec = read_table(tmp / "lake", "entities")
    for which, ids, vec in (("entities", ents, ent_vec), ("relations", *read_table(tmp / "lake", "relations"))):
        id_column = {"entities": "entity", "relations": "relation"}[which]
        df = pl.scan_delta(summary[which]).collect().sort(id_column)
        assert df.get_column("run_id").unique().to_list() == ["r1"]
        got = np.array(df.get_column("vector").to_list(), np.float32)
        assert df.get_column(id_column).cast(pl.String).to_list() == ids
        assert np.array_equal(got, vec)


def test_bad_triple_fails_in_one_line_and_commits_nothing(committed, capsys):
    from embedlake.flows.cli import main
    tmp = committed[0]
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "train.txt").write_text("a\tr\tb\nb\tr\n")
    code = main(["embed-kg", "--train", str(bad / "train.txt"), "--lake", str(tmp / "lake"), "--dataset", "bad",
                 *sum((["-p", s] for s in SETTINGS), [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].endswith("train.txt: line 2: expected 3 fields (head, relation, tail), found 2"), err
    assert Lake(str(tmp / "lake")).manifests("bad", "kg-complex") == []


# lake -> the extra settings of its run; both are killed once epoch 2's checkpoint is committed
KILLED = {"lake_resume": [],
          "lake_p4_resume": ["kg.partitions=4", "kg.workers=2", "kg.lent_rows=4", "kg.edge_chunks=2"]}


@pytest.fixture(scope="module")
def killed_runs(committed):
    """Each run of KILLED as `embedlake embed-kg` subprocesses: killed after epoch 2, then re-run with
    the same run id. The two lakes' attempts go in parallel, step by step (as tests/test_resume.py)."""
    tmp, data, _, _ = committed

    def args(lake, extra):
        return ["embed-kg", "--train", f"{data}/train.txt", "--valid", f"{data}/valid.txt", "--test",
                f"{data}/test.txt", "--lake", str(tmp / lake), "--run-id", "r1", "--json",
                *sum((["-p", s] for s in [*SETTINGS, *extra]), [])]
    out = {lake: {} for lake in KILLED}
    procs = {lake: start_cli(tmp, args(lake, extra), tmp / f"{lake}.kill.log", "after:train_epoch:2")
             for lake, extra in KILLED.items()}
    for lake, p in procs.items():
        out[lake]["killed_rc"] = wait_cli(p)
        out[lake]["committed_after_kill"] = Lake(str(tmp / lake)).is_committed("chains", "kg-complex", "r1")
    procs = {lake: start_cli(tmp, args(lake, extra), tmp / f"{lake}.rerun.log", None)
             for lake, extra in KILLED.items()}
    for lake, p in procs.items():
        out[lake]["rerun_rc"] = wait_cli(p)
        out[lake]["log"] = (tmp / f"{lake}.rerun.log").read_text()
    return out


def test_killed_run_resumes_after_its_last_epoch(committed, killed_runs):
    tmp, data, cfg, _ = committed
    lake, r = tmp / "lake_resume", killed_runs["lake_resume"]
    assert r["killed_rc"] == -9
    assert not r["committed_after_kill"]
    log = r["log"]
    assert r["rerun_rc"] == 0, log[-3000:]
    assert "resume: kg training continues at epoch 3/4" in log
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["train"]["resumed_at_epoch"] == 2
    for which in ("entities", "relations"):
        assert np.array_equal(read_table(lake, which)[1], read_table(tmp / "lake", which)[1])


def test_partitioned_run_on_ray_equals_the_in_process_schedule(committed):
    """kg.partitions=4 on 2 Ray workers: the committed tables are those of the in-process
    partitioned trainer (same rounds, same merges), and the run commits its metrics."""
    from embedlake.flows.embed_kg import embed_kg
    from embedlake.workers.kg.kernels import new_state
    from embedlake.workers.kg.models import init_tables
    from embedlake.workers.kg.partitioned import train_partitioned
    tmp, data, _, _ = committed
    cfg = kg_cfg(data, tmp / "lake_p4", extra=("kg.partitions=4", "kg.workers=2", "kg.edge_chunks=2",
                                               "compress.codecs=[int8]"))
    summary = embed_kg(cfg)
    ts, _ = ks.load_stage(str(tmp / "lake"), cfg.kg)
    model = ks.model_of(cfg.kg)
    ent, rel = init_tables(model, ts.num_entities, ts.num_relations, cfg.kg.seed, cfg.kg.init_scale)
    st = train_partitioned(model, new_state(ent, rel, cfg.kg.optimizer), ts.train, ks.settings_of(cfg.kg), 4, 2,
                           cfg.kg.seed, lent_rows=cfg.kg.lent_rows, edge_chunks=cfg.kg.edge_chunks)
    assert np.array_equal(read_table(tmp / "lake_p4", "entities")[1], st.ent)
    assert np.array_equal(read_table(tmp / "lake_p4", "relations")[1], st.rel)
    assert summary["train"]["partitions"] == 4 and summary["metrics"]["triples"] == 6
    assert set(summary["metrics"]["codecs"]) == {"int8"} and summary["metrics"]["codecs"]["int8"]["mrr"] > 0


def test_compressed_entity_table_reads_back_with_its_mrr(committed):
    """`compress` on a KG run: the entity table's int8 and fp16 codes are committed as tables of
    their own, read back to the source rows (int8: within one quantisation step), and each manifest
    holds the filtered MRR / Hits@10 of the decoded table beside the float32 run's."""
    from embedlake.flows.compress import compress
    from embedlake.workers.compress.store import read_compressed
    tmp, data, cfg, summary = committed
    ccfg = load_config(None, [f"lake.uri={tmp / 'lake'}", "ray.num_cpus=2", "compress.codecs=[int8,fp16]"])
    out = compress(ccfg, "chains/kg-complex/r1", run_id="c1")
    ents, ent_vec = read_table(tmp / "lake", "entities")
    for codec in ("int8", "fp16"):
        table = read_compressed(str(tmp / "lake"), "chains", "kg-complex", codec, "c1")
        assert [str(x) for x in table.ids] == ents
        step = np.abs(ent_vec).max(axis=1, keepdims=True) / 127 if codec == "int8" else 1e-3
        assert np.all(np.abs(table.decode() - ent_vec) <= step + 1e-6)
        man = Lake(str(tmp / "lake")).manifest("chains", f"kg-complex.{codec}", "c1")
        assert man.metrics["kg_mrr_before"] == summary["metrics"]["mrr"]
        assert abs(man.metrics["kg_mrr"] - summary["metrics"]["mrr"]) < 0.05
        assert out["tables"][codec]["kg_hits@10"] == man.metrics["kg_hits@10"]


def test_killed_partitioned_run_resumes_to_the_same_tables(committed, killed_runs):
    """kg.partitions=4 on 2 workers, killed once epoch 2's checkpoint is committed: the re-run
    continues at epoch 3 from the saved partitions and relations and ends with the tables of an
    uninterrupted run (the in-process schedule, which the Ray run equals)."""
    from embedlake.workers.kg.kernels import new_state
    from embedlake.workers.kg.models import init_tables
    from embedlake.workers.kg.partitioned import train_partitioned
    tmp, data, _, _ = committed
    lake, r = tmp / "lake_p4_resume", killed_runs["lake_p4_resume"]
    extra = KILLED["lake_p4_resume"]
    assert r["killed_rc"] == -9
    assert not r["committed_after_kill"]
    log = r["log"]
    assert r["rerun_rc"] == 0, log[-3000:]
    assert "resume: kg training continues at epoch 3/4" in log
    summary = json.loads(log.strip().splitlines()[-1])
    assert summary["train"]["resumed_at_epoch"] == 2 and summary["train"]["partitions"] == 4
    cfg = kg_cfg(data, lake, extra=extra)
    ts, _ = ks.load_stage(str(lake), cfg.kg)
    model = ks.model_of(cfg.kg)
    ent, rel = init_tables(model, ts.num_entities, ts.num_relations, cfg.kg.seed, cfg.kg.init_scale)
    st = train_partitioned(model, new_state(ent, rel, cfg.kg.optimizer), ts.train, ks.settings_of(cfg.kg), 4, 2,
                           cfg.kg.seed, lent_rows=4, edge_chunks=2)
    assert np.array_equal(read_table(lake, "entities")[1], st.ent)
    assert np.array_equal(read_table(lake, "relations")[1], st.rel)
