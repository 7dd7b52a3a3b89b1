"""Evaluation wired into embed_graph (issue 7): link-prediction hold-out before embedding, metrics in
the manifest and the lake, Prefect artifacts, `embedlake report`, alignment to the previous run."""
import xml.etree.ElementTree as ET

import numpy as np
import polars as pl
import pytest

from embedlake.config import load_config
from embedlake.lake import Lake
from embedlake.workers.evaluate import stages as es
from embedlake.workers.evaluate import report as rp
from walk_steps import csr_arcs, walk_steps


def _run(lake_uri, ds, overrides=(), labels=True):
    from embedlake.flows.embed_graph import embed_graph
    ov = [f"lake.uri={lake_uri}", f"input.edges={ds / 'edges.tsv'}", *overrides]
    if labels:
        ov.append(f"input.labels={ds / 'labels.tsv'}")
    return embed_graph(load_config(None, ov))


# ---------------------------------------------------------------------------------- pure functions

def test_metrics_rows_round_trip_and_stability_recovers_a_rotation():
    m = {"node_classification": {"micro_f1": {"0.1": 0.25, "0.5": 0.5}, "repeats": 3, "multilabel": True,
                                 "ratios": [0.1, 0.5]},
         "stability": {"reference_run": "r0", "distance_after": 0.125}}
    t = es.metrics_table("d", "m", "r1", m)
    assert t.schema == es.METRICS_SCHEMA and t.num_rows == 6
    back = es.metrics_from_rows(t)
    assert back == {"node_classification": {"micro_f1": {"0.1": 0.25, "0.5": 0.5}, "repeats": 3.0,
                                            "multilabel": 1.0},
                    "stability": {"reference_run": "r0", "distance_after": 0.125}}
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    Q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    ids = np.arange(300)
    # the reference holds the same nodes rotated, in another order and with 20 extra nodes
    perm = rng.permutation(320)
    ref_ids = np.concatenate([ids, np.arange(1000, 1020)])[perm]
    ref = np.concatenate([X @ Q, rng.normal(size=(20, 8))]).astype(np.float32)[perm]
    fig, aligned, R = es.stability(X, ids, ref, ref_ids, sample=100)
    assert fig["shared_nodes"] == 300 and fig["distance_before"] > 0.5
    assert fig["distance_after"] < 1e-5 and np.allclose(R, Q, atol=1e-5)
    assert fig["neighbourhood_overlap@10"] == 1.0           # rotations keep cosine neighbourhoods
    assert np.allclose(aligned, X @ Q, atol=1e-5)
    fig, aligned, _ = es.stability(X[:, :4], ids, ref, ref_ids)
    assert aligned is None and "dimension" in fig["skipped"]


def test_metrics_table_from_buffers_equals_pyarrows_own():
    """``metrics_table`` builds its columns from buffers (``pa.array`` imports pandas): the same
    table as ``pa.Table.from_pylist``, nulls, unicode and empty metrics included."""
    import pyarrow as pa
    metrics = {"node_classification": {"micro_f1": {"0.1": 0.5, "0.9": 1e-300}, "sampled": True, "solver": "newton-é",
                                       "skipped": None}, "reconstruction": {"map": {"1": 0.25}}, "rows": 3}
    rows = es.metrics_rows(metrics)
    for r in rows:
        r.update(dataset="d", method="m", run_id="r")
    built = es.metrics_table("d", "m", "r", metrics)
    assert built.equals(pa.Table.from_pylist(rows, schema=es.METRICS_SCHEMA)) and built.num_rows == 6
    assert es.metrics_table("d", "m", "r", {}).equals(es.METRICS_SCHEMA.empty_table())


def test_quality_svg_draws_every_figure_of_every_run():
    """The hand-written SVG plot: well-formed, one bar per (run, figure) of the left panel, its
    height the figure's share of the axis, names and labels escaped; a compressed row adds the
    recall panel with one point per codec (graph-trained codecs left out, as in the PNG)."""
    nc = {"micro_f1": {"0.1": 0.5, "0.9": 0.75}, "macro_f1": {"0.1": 0.25, "0.9": 0.5}}
    runs = [{"dataset": "d", "method": "fastrp", "run_id": "r1",
             "metrics": {"node_classification": nc, "reconstruction": {"map": {"1": 0.4}}}},
            {"dataset": "d", "method": "a<b&c", "run_id": "r2", "metrics": {"node_classification": nc}},
            {"dataset": "d", "method": "none", "run_id": "r3", "metrics": {}}]
    ns = {"s": "http://www.w3.org/2000/svg"}
    svg = ET.fromstring(rp.quality_svg(runs, title="d: quality"))
    bars = [r for r in svg.iterfind(".//s:rect", ns) if r.find("s:title", ns) is not None]
    assert [b.find("s:title", ns).text for b in bars] == [
        "Micro-F1 10%: 0.500", "Micro-F1 90%: 0.750", "Macro-F1 10%: 0.250", "Macro-F1 90%: 0.500",
        "mAP 1-hop: 0.400"] + ["Micro-F1 10%: 0.500", "Micro-F1 90%: 0.750", "Macro-F1 10%: 0.250",
                               "Macro-F1 90%: 0.500"]
    ymax = 1.05 + 0.07                                  # one legend row above the bars
    assert float(bars[1].get("height")) == pytest.approx(0.75 / ymax * (rp.BOTTOM - rp.TOP), abs=0.06)
    texts = [t.text for t in svg.iterfind(".//s:text", ns)]
    assert "d: quality" in texts and "a<b&c" in texts and "none" not in texts      # no figures: not drawn
    assert svg.get("width") == str(rp.PANEL_W)
    rows = [{"dataset": "d", "method": "fastrp", "codec": c, "bytes_per_vector": b, "recall_at_10": r, "dim": 64,
             "recall_at_10_rerank": None} for c, b, r in (("pq8", 8, 0.3), ("sq8", 64, 0.9), ("hash", 32, 0.01))]
    svg = ET.fromstring(rp.quality_svg(runs[:1], rows))
    assert svg.get("width") == str(2 * rp.PANEL_W)
    line = svg.find(".//s:polyline", ns).get("points").split()
    assert len(line) == 2 and len(svg.findall(".//s:circle", ns)) == 2
    assert {"pq8", "sq8"} <= {t.text for t in svg.iterfind(".//s:text", ns)}
    assert "hash" not in {t.text for t in svg.iterfind(".//s:text", ns)}
    assert ET.fromstring(rp.quality_svg([], title="empty")) is not None


def test_holdout_stage_keeps_weights_and_removes_test_edges():
    from embedlake.workers.graph.csr import build_csr
    rng = np.random.default_rng(1)
    s, d = rng.integers(0, 200, 2000), rng.integers(0, 200, 2000)
    s, d = np.unique(np.stack([np.minimum(s, d), np.maximum(s, d)]), axis=1)     # each edge once
    w = rng.random(s.size).astype(np.float32)
    g = build_csr(s, d, 200, weights=w)
    csr, split, info = es.holdout_stage((g.indptr, g.indices, g.weights, False), 0.2, 3)
    train = build_csr(np.repeat(np.arange(200), np.diff(csr[0])), csr[1], 200, weights=csr[2], directed=True)
    full = {(u, v): x for u, v, x in zip(np.repeat(np.arange(200), np.diff(g.indptr)), g.indices, g.weights)}
    kept = set(zip(np.repeat(np.arange(200), np.diff(train.indptr)).tolist(), train.indices.tolist()))
    test = set(zip(split["test_src"].tolist(), split["test_dst"].tolist()))
    assert info["test_edges"] == len(test) == round(0.2 * len(full) / 2)
    assert not any((u, v) in kept or (v, u) in kept for u, v in test)
    assert len(kept) == len(full) - 2 * len(test)                          # symmetric, nothing else lost
    assert all(full[(int(u), int(v))] == x for u, v, x in zip(np.repeat(np.arange(200), np.diff(train.indptr)),
                                                               train.indices, train.weights))
    neg = set(zip(split["neg_src"].tolist(), split["neg_dst"].tolist()))
    assert len(neg) == len(test) and not any(p in full for p in neg)      # non-edges of the FULL graph


# ---------------------------------------------------------------------------------- through the flow

@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_link_prediction_flow_directed_gnutella(tmp_path, shared):
    """Directed p2p-Gnutella08, FastRP: the published table is FastRP of the train graph (held-out
    arcs removed before embedding), AUC well above chance, every figure in the manifest, the
    metrics table and a Prefect artifact; `embedlake report` renders the committed run."""
    from embedlake.flows.cli import main as cli
    from embedlake.reader import load_matrix, read_table
    from embedlake.workers.evaluate.links import split_edges
    from embedlake.workers.fastrp.kernels import fastrp
    from embedlake.workers.graph.csr import build_csr
    ds = shared("datasets", "p2p-gnutella08")
    lake = str(tmp_path / "lake")
    s = _run(lake, ds, ["input.directed=true", "eval.link_prediction=true", "method=fastrp", "fastrp.dim=64",
                        "shard.partitions=2", "eval.reconstruction_sample=200"], labels=False)
    assert "holdout" in s["stages"] and s["rows"] == 6301
    lp = s["metrics"]["link_prediction"]
    assert lp["num_pos"] == lp["num_neg"] == lp["holdout"]["test_edges"] == 2078
    assert lp["holdout"]["train_arcs"] == 20777 - 2078
    assert max(lp["roc_auc"].values()) > 0.65, lp["roc_auc"]
    assert set(lp["roc_auc"]) == {"hadamard", "average", "l1", "l2", "dot"} and "hits@10" in lp and "mrr" in lp
    assert s["metrics"]["reconstruction"]["queries"] == 200
    # the split is a function of (graph, share, seed): recompute it on the full graph in the lake
    lk = Lake(lake)
    man = lk.manifest("p2p-gnutella08", "fastrp")
    gdir = Lake.graph_dir("p2p-gnutella08", man.extra["graph"]["version"])
    indptr, indices = lk.read_npy(f"{gdir}/indptr.npy"), lk.read_npy(f"{gdir}/indices.npy")
    assert man.extra["graph"]["arcs"] == indices.size == 20777            # the lake keeps the full graph
    tr_s, tr_d, te_s, te_d = split_edges(indptr, indices, 0.1, 0, directed=True)
    train = build_csr(tr_s, tr_d, 6301, directed=True)
    kept = set(zip(np.repeat(np.arange(6301), np.diff(train.indptr)).tolist(), train.indices.tolist()))
    assert not kept & set(zip(te_s.tolist(), te_d.tolist()))
    _, X = load_matrix(lake, "p2p-gnutella08", "fastrp")
    kw = dict(dim=64, seed=0)
    assert np.allclose(X, fastrp(train.indptr, train.indices, None, **kw), atol=1e-4)    # trained without them
    assert not np.allclose(X, fastrp(indptr, indices, None, **kw), atol=1e-2)
    # metrics table round-trips to the manifest's figures
    assert [e["path"] for e in man.files["metrics"]] == [es.metrics_path("p2p-gnutella08", "fastrp", s["run_id"])]
    tbl = read_table(lake, "p2p-gnutella08", "fastrp", kind="metrics")[0]
    assert set(tbl.column("run_id").to_pylist()) == {s["run_id"]}
    assert es.metrics_from_rows(tbl) == es.numeric_view(man.metrics)
    import polars as pl                                       # ... and it is a Delta table any engine reads
    from embedlake.reader import table_uri
    delta_rows = pl.scan_delta(table_uri(lake, "p2p-gnutella08", "fastrp", kind="metrics")).collect()
    assert delta_rows.get_column("run_id").unique().to_list() == [s["run_id"]]
    assert es.metrics_from_rows(delta_rows.select(es.METRICS_SCHEMA.names).to_arrow()) == es.numeric_view(man.metrics)
    assert {p["path"].rsplit("/", 1)[1] for p in man.files["report"]} == {"report.md", "quality.svg"}
    assert b"![quality](quality.svg)" in lk.read_bytes(man.files["report"][0]["path"])
    svg = ET.fromstring(lk.read_bytes(man.files["report"][1]["path"]))            # well-formed SVG
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    # the Prefect artifact carries the same table, with the plot inline
    from prefect.artifacts import Artifact
    art = Artifact.get("eval-p2p-gnutella08-fastrp")
    assert art is not None and "**Link prediction**" in art.data and "data:image/svg+xml;base64," in art.data
    # `embedlake report` renders the same tables for the committed run
    # (stdout redirected for these calls only: capsys would leave Prefect's log handler, created
    # in the first flow run of the session, writing to a closed stream in later tests)
    import contextlib
    import io
    png, buf = tmp_path / "q.png", io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert cli(["report", "--lake", lake, "p2p-gnutella08", "fastrp", s["run_id"], "--png", str(png)]) == 0
        assert cli(["report", "--lake", lake, "nope"]) == 2
    out = buf.getvalue()
    assert "**Link prediction**" in out and "**Graph reconstruction**" in out and s["run_id"] in out
    assert f"{max(lp['roc_auc'].values()):.3f}" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_link_prediction_deepwalk_never_walks_a_held_out_edge(tmp_path, shared):
    """DeepWalk on Gnutella read as undirected (as DeepWalk's own example does): the walks, written
    to the lake, never step along a held-out edge in either direction; AUC well above chance."""
    from embedlake.workers.evaluate.links import split_edges
    ds = shared("datasets", "p2p-gnutella08")
    lake = str(tmp_path / "lake")
    s = _run(lake, ds, ["eval.link_prediction=true", "walk.write_walks=true", "walk.walks_per_node=6",
                        "walk.length=20", "train.dim=32", "train.window=5", "shard.partitions=2",
                        "eval.reconstruction=false", "eval.lp_operators=[hadamard, dot]"], labels=False)
    lp = s["metrics"]["link_prediction"]
    assert max(lp["roc_auc"].values()) > 0.65, lp["roc_auc"]
    lk = Lake(lake)
    man = lk.manifest("p2p-gnutella08", "deepwalk")
    gdir = Lake.graph_dir("p2p-gnutella08", man.extra["graph"]["version"])
    indptr, indices = lk.read_npy(f"{gdir}/indptr.npy"), lk.read_npy(f"{gdir}/indices.npy")
    _, _, te_s, te_d = split_edges(indptr, indices, 0.1, 0, directed=False)
    assert te_s.size == lp["num_pos"] and (te_s < te_d).all()
    held = set(zip(te_s.tolist(), te_d.tolist()))
    held |= {(v, u) for u, v in held}
    steps = walk_steps(lake, "p2p-gnutella08", "deepwalk")
    assert steps <= csr_arcs(indptr, indices) and len(steps) > 20_000
    assert not steps & held


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_second_run_is_aligned_to_the_previous_one(tmp_path, shared):
    """Two FastRP runs of Cora with different seeds: the second is rotated onto the first; the
    rotation shrinks the row distance, keeps neighbourhoods, and is published as files 'aligned'."""
    from embedlake.reader import load_matrix, read_table
    ds = shared("datasets", "cora")
    lake = str(tmp_path / "lake")
    common = ["method=fastrp", "fastrp.dim=64", "eval.repeats=1", "eval.train_ratios=[0.5]"]
    s1 = _run(lake, ds, [*common, "fastrp.seed=1", "lake.run_id=r1"])
    assert "stability" not in s1["metrics"]                            # nothing to align to yet
    assert s1["metrics"]["node_classification"]["micro_f1"]["0.5"] > 0.6      # 7 classes: chance ~0.3
    s2 = _run(lake, ds, [*common, "fastrp.seed=2", "lake.run_id=r2"])
    st = s2["metrics"]["stability"]
    assert st["reference_run"] == "r1" and st["reference_kind"] == "embeddings" and st["shared_nodes"] == 2708
    assert st["distance_after"] < 0.8 * st["distance_before"], st
    assert 0.1 < st["neighbourhood_overlap@10"] < 1.0
    ids1, X1 = load_matrix(lake, "cora", "fastrp", run="r1")
    ids2, X2 = load_matrix(lake, "cora", "fastrp", run="r2")
    t, man = read_table(lake, "cora", "fastrp", run="r2", kind="aligned")
    assert all("/fastrp.aligned/run_id=r2/" in e["path"] for e in man.files["aligned"])
    aligned = pl.scan_delta(Lake(lake).url("embeddings/cora/fastrp.aligned")).collect()     # its own Delta table
    assert aligned.height == 2708 and aligned["run_id"].unique().to_list() == ["r2"]
    A = t.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 64)
    assert t.column("node").to_pylist() == ids2.tolist()
    R = Lake(lake).read_npy(man.files["rotation"][0]["path"])
    assert np.allclose(R @ R.T, np.eye(64), atol=1e-6) and np.allclose(X2 @ R, A, atol=1e-4)
    assert es.relative_distance(A, X1) == pytest.approx(st["distance_after"], rel=1e-4)
    # the documented glob over the run's embeddings still sees each node once
    files = Lake(lake).list_files(Lake.run_dir("embeddings", "cora", "fastrp", "r2"))
    assert sum(pl.read_parquet(Lake(lake).url(f)).height for f in files) == 2708
    # the report shows both methods' quality side by side
    runs, _ = rp.collect(lake, "cora")
    assert [r["run_id"] for r in runs] == ["r2"]
    md = rp.report_markdown(runs + [dict(runs[0], run_id="r1", metrics=s1["metrics"])])
    assert "**Stability vs the previous run**" in md and "`r1` (embeddings)" in md


def test_per_operator_link_tasks_merge_to_the_single_call():
    from embedlake.workers.evaluate.links import link_prediction
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    split = {"test_src": rng.integers(0, 300, 200), "test_dst": rng.integers(0, 300, 200),
             "neg_src": rng.integers(0, 300, 200), "neg_dst": rng.integers(0, 300, 200), "info": {"test_share": 0.1}}
    from embedlake.config import EvalConfig
    cfg = EvalConfig(seed=0, hits_k=[10])
    merged = es.merge_link_results([es.link_stage(X, split, cfg, [op]) for op in ("l1", "dot")])
    whole = link_prediction(X, split["test_src"], split["test_dst"], split["neg_src"], split["neg_dst"],
                            operators=("l1", "dot"), hits_k=(10,))
    assert {k: v for k, v in merged.items() if k not in ("seconds", "test_share")} == whole
