"""embed_graph with train.table != full (issue 8): a learned K-row table trained directly on the
graph's walks and committed alone, as `<method>.<codec>`; no full table is trained or stored."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from embedlake.flows.cli import main as cli
from embedlake.flows.cli import print_summary
from embedlake.lake import Lake
from embedlake.workers.compress import store as cs

FAST = ["-p", "train.dim=16", "-p", "walk.length=20", "-p", "eval.repeats=1", "-p", "compress.compose_sketch_dim=16"]


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _karate(shared, uri: str, table: str, *extra: str) -> list[str]:
    k = shared("datasets", "karate")
    return ["embed-graph", "--edges", str(k / "edges.tsv"), "--labels", str(k / "labels.tsv"), "--lake", uri,
            "-p", f"train.table={table}", *FAST, *extra]


@pytest.mark.parametrize("table", ["compose", "hash"])
def test_cli_commits_only_the_learned_table(tmp_path, capsys, shared, table):
    uri = str(tmp_path / "lake")
    assert cli(_karate(shared, uri, table, "-p", "compress.compose_ratio=4", "-p", "compress.hash_buckets=8",
                       "--json")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    buf = io.StringIO()
    print_summary(summary, out=buf)            # what the CLI prints without --json
    out = buf.getvalue()
    lake = Lake(uri)
    assert lake.methods("karate") == [f"deepwalk.{table}"]             # no `deepwalk` manifest
    assert not (tmp_path / "lake" / "embeddings").exists()              # no full table, anywhere
    man = lake.manifest("karate", f"deepwalk.{table}")
    ex = man.extra
    assert ex["kind"] == "tables" and ex["codec"] == table and ex["rows"] == 34 and ex["dim"] == 16
    assert ex["source"]["full_table"] is False and ex["path"].endswith(f"deepwalk.{table}/run_id={man.run_id}")
    K = ex["params"]["table_rows"] if table == "compose" else ex["params"]["buckets"]
    assert K <= 34 // 4 and ex["bytes_per_vector"] < 4 * 16 and ex["ratio"] > 1
    assert set(man.files) == {"tables", "codebooks"}
    assert all(f["path"].startswith(f"{kind}/karate/deepwalk.{table}/run_id={man.run_id}/")
               for kind, fs in man.files.items() for f in fs)
    nc = man.metrics["node_classification"]
    assert set(nc["micro_f1"]) == {"0.1", "0.5", "0.9"} and all(0 <= v <= 1 for v in nc["micro_f1"].values())
    t = cs.read_compressed(uri, "karate", "deepwalk", table)      # materialised on request
    assert t.state["table"].shape == (K, 16) and "codes" not in t.state
    X = t.decode()
    assert X.shape == (34, 16) and np.isfinite(X).all() and np.abs(X).sum() > 0
    np.testing.assert_allclose(t.decode(np.array([3, 7])), X[[3, 7]], rtol=1e-6)
    assert ex["path"] in out and "Micro-F1" in out and f"{nc['micro_f1']['0.5']:.3f}" in out


def test_compose_table_learns_planted_communities(tmp_path, ray_session):
    """1000 nodes, 10 planted communities (chance Micro-F1 ~ .1), 8x fewer parameters than the full
    table: the compose table classifies well (.81 at 50 % here); the hashing trick at the same size
    (8 random nodes per row) stays near chance (.15)."""
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    got = {}
    for table in ("compose", "hash"):
        s = embed_graph(load_config(None, [f"lake.uri={tmp_path / 'lake'}", f"train.table={table}",
                                           "synthetic.nodes=1000", "train.dim=32", "walk.length=40",
                                           "eval.repeats=2"]))
        assert s["method"] == f"deepwalk.{table}" and s["embeddings"] is None
        got[table] = s["metrics"]["node_classification"]["micro_f1"]["0.5"]
    assert got["compose"] > 0.65 and got["compose"] > got["hash"] + 0.4, got


def test_fastrp_refused_with_the_field_named(tmp_path, capsys, shared):
    uri = str(tmp_path / "lake")
    assert cli(_karate(shared, uri, "compose", "--method", "fastrp")) == 2
    assert "train.table" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists() or not Lake(uri).datasets()


def test_failure_midway_leaves_nothing(tmp_path, shared, monkeypatch, capsys):
    """The codes and codebook are written, then measuring fails: no manifest, no data file, no
    claim; the same run id then commits cleanly. (The CLI reports the unexpected error as one
    line and exit status 1 instead of raising it.)"""
    from embedlake.tasks import learned as lt
    uri = str(tmp_path / "lake")

    def boom(*a, **k):
        raise RuntimeError("measure failed")
    with monkeypatch.context() as m:
        m.setattr(lt, "measure_table", boom)
        assert cli(_karate(shared, uri, "compose", "--run-id", "r1", "-p", "compress.compose_ratio=4")) == 1
        assert "error: RuntimeError: measure failed" in capsys.readouterr().err
    lake = Lake(uri)
    assert not lake.methods("karate")
    assert [f for f in _files(tmp_path / "lake") if not f.startswith("graphs/")] == []
    assert cli(_karate(shared, uri, "compose", "--run-id", "r1", "-p", "compress.compose_ratio=4")) == 0
    assert lake.manifest("karate", "deepwalk.compose").run_id == "r1"


def test_eval_rows_materialises_only_what_is_evaluated(tmp_path):
    """eval_rows decodes the labelled rows and link-prediction endpoints only, and the evaluations
    on them equal those on the fully materialised table (same nodes, same order, same splits)."""
    from embedlake.lake import Lake
    from embedlake.workers.compress import codecs as cz
    from embedlake.workers.evaluate.links import link_prediction
    from embedlake.workers.evaluate.classify import node_classification
    n, d, rng = 200, 8, np.random.default_rng(0)
    params = {**cz.codec_params("hash"), "buckets": 40, "rows": n}
    state = {"table": rng.standard_normal((40, d)).astype(np.float32)}
    lake = Lake(str(tmp_path / "lake"))
    files = [cs.encode_partition(lake, dataset="toy", method="deepwalk", run_id="r1", codec="hash", params=params,
                                 partition=i, lo=lo, hi=hi, node_ids=np.arange(n), X=None, state=state)
             for i, (lo, hi) in enumerate([(0, 120), (120, n)])]
    files = [{k: f[k] for k in ("path", "rows", "bytes", "sha256")} for f in files]
    book = cs.write_codebooks(lake, "toy", "deepwalk", "r1", "hash", state, files)
    fields = dict(dataset="toy", method="deepwalk.hash", run_id="r1", files={"tables": files, "codebooks": [book]},
                  extra={"codec": "hash", "params": params, "dim": d})
    ni = rng.choice(n, 90, replace=False)                     # 90 labelled nodes, 3 classes
    labels = (ni, rng.integers(0, 3, 90))
    split = {k: rng.integers(0, n, 30) for k in ("test_src", "test_dst", "neg_src", "neg_dst")}
    X, lab, spl, info = cs.eval_rows(lake.uri, fields, labels, {**split, "info": {"test_share": 0.1}})
    used = np.unique(np.concatenate([ni, *split.values()]))
    assert info == {"rows": len(used), "of": n, "decode_s": info["decode_s"]} and X.shape == (len(used), d)
    full = cz.decode("hash", cz.concat_columns([cs.table_columns(lake.read_parquet(f["path"])) for f in files]),
                     state, params, d)
    assert node_classification(X, *lab, ratios=(0.5,), repeats=2) == \
        node_classification(full, *labels, ratios=(0.5,), repeats=2)
    ks = ("test_src", "test_dst", "neg_src", "neg_dst")
    assert link_prediction(X, *(spl[k] for k in ks)) == link_prediction(full, *(split[k] for k in ks))
    assert spl["info"] == {"test_share": 0.1}
