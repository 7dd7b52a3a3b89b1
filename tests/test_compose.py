"""Learned compositional tables (issue 8): the compositional skip-gram kernel, code assignment,
table layouts, lake round-trip through the CLI, and quality on a real graph."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.config import TrainConfig, WalkConfig
from embedlake.workers.compress import compose as cc
from embedlake.workers.compress import codecs as cz
from embedlake.workers.train.skipgram import train_sgns
from embedlake.workers.train.compose import materialise, train_composed


def _sentences(n=60, S=40, L=12, seed=0):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, n, size=S * L).astype(np.int32)
    return tok, np.arange(0, S * L + 1, L, dtype=np.int64)


def test_identity_codes_are_plain_skipgram():
    """One row per id (R = 1, weight 1) is the plain SGNS kernel: same tables from the same start."""
    n, d = 60, 8
    tok, off = _sentences(n)
    rng = np.random.default_rng(1)
    W0 = ((rng.random((n, d), dtype=np.float32) - 0.5) / d).astype(np.float32)
    O0 = np.zeros((n, d), np.float32)
    Wi, Wo, _ = train_sgns(tok, off, n, dim=d, window=3, negatives=4, epochs=2, threads=1, seed=3, init=(W0, O0))
    ident = np.arange(n, dtype=np.int32)[:, None]
    out = train_composed(tok, off, n, code_in=ident, rows_in=n, w_in=np.ones((n, 1), np.float32), dim=d, window=3,
                         negatives=4, epochs=2, threads=1, seed=3, init={"T_in": W0, "T_out": O0})
    np.testing.assert_allclose(out["T_in"], Wi, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["T_out"], Wo, rtol=1e-5, atol=1e-6)
    assert not np.allclose(Wi, W0)


def test_sum_of_duplicated_rows_equals_one_row():
    """v = 0.5 T[i] + 0.5 T[i] moves T[i] by the full gradient: the same training as R = 1."""
    n, d = 50, 8
    tok, off = _sentences(n, seed=2)
    one = np.arange(n, dtype=np.int32)[:, None]
    two = np.repeat(one, 2, axis=1)
    a = train_composed(tok, off, n, code_in=one, rows_in=n, w_in=np.ones((n, 1), np.float32), dim=d, window=3,
                       threads=1, seed=5)
    b = train_composed(tok, off, n, code_in=two, rows_in=n, w_in=np.full((n, 2), 0.5, np.float32), dim=d, window=3,
                       threads=1, seed=5)
    np.testing.assert_allclose(b["T_in"], a["T_in"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_reproducible_at_one_thread_and_materialise(combine):
    n, d = 80, 8
    tok, off = _sentences(n, seed=4)
    codes = np.stack([np.arange(n) // 10, 8 + np.arange(n) % 10], 1).astype(np.int32)   # QR layout, 18 rows
    kw = dict(code_in=codes, rows_in=18, combine=combine, dim=d, window=3, threads=1, seed=1, lr=0.01, epochs=2)
    a, b = train_composed(tok, off, n, **kw), train_composed(tok, off, n, **kw)
    np.testing.assert_array_equal(a["T_in"], b["T_in"])
    assert a["T_in"].shape == (18, d) and np.isfinite(a["T_in"]).all()
    X = materialise(a["T_in"], codes, a["w_in"], combine)
    T = a["T_in"]
    ref = T[codes[:, 0]] * T[codes[:, 1]] if combine == "product" else (T[codes[:, 0]] + T[codes[:, 1]]) / np.sqrt(2)
    np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-7)
    assert a["stats"]["loss_last"] < a["stats"]["loss_first"]


def test_learned_weights_and_shared_table():
    n, d = 60, 8
    tok, off = _sentences(n, seed=6)
    codes = np.stack([np.arange(n) % 7, 7 + np.arange(n) % 11], 1).astype(np.int32)
    out = train_composed(tok, off, n, code_in=codes, rows_in=18, learn_weights=True, shared_table=True, dim=d,
                         window=3, threads=1)
    assert out["T_out"] is out["T_in"]
    assert not np.allclose(out["w_in"], 1 / np.sqrt(2))      # the importance weights moved
    with pytest.raises(ValueError, match="codes must index rows 0..17"):
        train_composed(tok, off, n, code_in=codes + 1, rows_in=18, dim=d)
    with pytest.raises(ValueError, match="combine must be one of"):
        train_composed(tok, off, n, code_in=codes, rows_in=18, combine="concat")


def test_layouts_have_ratio_x_fewer_parameters():
    n, d = 10_312, 128
    for codec in cz.COMPOSED:
        lp = cc.plan(codec, n, d, 8.0)
        assert 0.8 * n / 8 <= lp["table_rows"] <= n / 8
        assert len(lp["level_rows"]) == len(lp["offsets"]) == lp["levels"]
    qr = cc.plan("qr", n, d, 8.0)
    q, m = qr["level_rows"]
    assert q * m >= n and q + m <= n // 8          # every id has its own (quotient, remainder) pair
    codes = cc.qr_codes(n, qr)
    assert len(np.unique(codes, axis=0)) == n
    comp = cc.plan("compose", n, d, 8.0)
    assert comp["levels"] == 5 and cc.code_width(comp["level_rows"]) == 1
    # bytes per vector = one byte per level + the row's share of the K x d float32 table
    assert cc.bytes_per_vector(comp, n, d) == 5 + -(-comp["table_rows"] * d * 4 // n)
    # unified: each feature (side) and each node type hashes with its own functions into one table
    uni = cc.plan("unified", 1000, 16, 8.0)
    a, b = cc.hash_codes(1000, uni, 0, feature=0), cc.hash_codes(1000, uni, 0, feature=1)
    assert a.max() < uni["table_rows"] and (a != b).mean() > 0.9
    types = np.repeat([0, 1], 500)
    t = cc.hash_codes(1000, uni, 0, types=types)
    assert np.array_equal(t[:500], a[:500]) and (t[500:] != a[500:]).mean() > 0.9
    # codes round-trip through the stored bytes
    c = np.stack([np.arange(300) % 257, np.arange(300) % 5], 1)
    lp = {"levels": 2, "level_rows": [300, 5], "offsets": [0, 300]}
    assert cz_bytes(lp) == 4 and np.array_equal(cc.decode_codes(cc.encode_codes(c, lp), lp), c)


def cz_bytes(lp):
    return lp["levels"] * cc.code_width(lp["level_rows"])


def test_structure_codes_follow_communities():
    """Level-0 codes of the FastRP sketch group a planted community together."""
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.synthetic import planted_communities
    src, dst, lab = planted_communities(1200, 6, 12.0, 0.1, 3)
    csr = build_csr(src, dst, 1200)
    lp = cc.plan("compose", 1200, 32, 8.0, levels=3)
    codes, info = cc.structure_codes(csr.indptr, csr.indices, None, lp, sketch_dim=64, threads=1)
    assert codes.shape == (1200, 3) and codes.min() >= 0 and max(codes[:, l].max() < lp["level_rows"][l]
                                                                      for l in range(3))
    assert info["residual_mse"] == sorted(info["residual_mse"], reverse=True)       # each level refines
    purity = sum(np.bincount(lab[codes[:, 0] == k]).max() for k in np.unique(codes[:, 0])) / 1200
    assert purity > 0.9


def _cora(shared):
    d = shared("datasets", "cora")
    e = np.loadtxt(d / "edges.tsv", skiprows=1, dtype=np.int64)
    lab = np.loadtxt(d / "labels.tsv", skiprows=1, dtype=np.int64)
    return e, lab


def test_compose_beats_hashing_on_cora(shared):
    """Cora, 8x fewer parameters: structure codes keep most of the full table's accuracy, random
    collisions (qr, unified) lose most of it. Full ~.78, compose ~.73, qr ~.31, unified ~.28 here."""
    from embedlake.workers.evaluate.classify import node_classification
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.walks import random_walks, walks_to_sentences
    e, lab = _cora(shared)
    n = 2708
    g = build_csr(e[:, 0], e[:, 1], n)
    walk = WalkConfig(walks_per_node=10, length=40, seed=0)
    train = TrainConfig(dim=64, window=5, negatives=5, ns_exponent=0.75, epochs=1, lr=0.025, min_lr=1e-4, sample=0.0,
                        seed=0)
    W = random_walks(g.indptr, g.indices, None, np.arange(n, dtype=np.int64), 10, 40, 0)
    tok, off = walks_to_sentences(W)
    full, _, _ = train_sgns(tok, off, n, dim=64, window=5, threads=2)

    def f1(X):
        return node_classification(X, lab[:, 0], lab[:, 1], ratios=(0.5,), repeats=3)["micro_f1"]["0.5"]
    got = {"full": f1(full)}
    for codec in ("compose", "qr"):
        lp = cc.plan(codec, n, 64, 8.0)
        st, _ = cc.train_compositional((g.indptr, g.indices, None, False), codec, lp, walk, train, sketch_dim=128,
                                       threads=2)
        got[codec] = f1(cc.decode_compositional(cc.encode_codes(st["codes"], lp), st, lp))
    assert got["full"] > 0.75
    assert got["compose"] > got["full"] - 0.09 and got["compose"] > got["qr"] + 0.25, got


def test_cli_compose_from_committed_run(tmp_path, capsys, shared):
    """embed-graph on karate, then `compress --codec compose --codec qr --codec unified`: committed
    tables whose stored codes and codebook decode to what the manifest says."""
    import pyarrow as pa

    from embedlake.flows.cli import main as cli
    from embedlake.lake import Lake
    from embedlake.workers.compress import store as cs
    from embedlake.config import load_config
    from embedlake.flows.embed_graph import embed_graph
    karate = shared("datasets", "karate")
    uri = str(tmp_path / "lake")
    embed_graph(load_config(None, [f"lake.uri={uri}", f"input.edges={karate / 'edges.tsv'}",
                                   f"input.labels={karate / 'labels.tsv'}", "train.dim=16", "walk.length=20",
                                   "eval.repeats=1"]))
    capsys.readouterr()
    assert cli(["compress", "--from", "karate/deepwalk", "--codec", "compose", "--codec", "qr", "--codec", "unified",
                "--lake", uri, "-p", "compress.compose_ratio=4", "-p", "compress.compose_sketch_dim=16"]) == 0
    out = capsys.readouterr().out
    assert "compose" in out and "unified" in out
    lake = Lake(uri)
    for codec in ("compose", "qr", "unified"):
        man = lake.manifest("karate", f"deepwalk.{codec}")
        p = man.extra["params"]
        t = cs.read_compressed(uri, "karate", "deepwalk", codec)
        # qr cannot go below 2 ceil(sqrt(n)) = 12 rows (quotient and remainder tables of 6)
        assert t.state["table"].shape == (p["table_rows"], 16) and p["table_rows"] <= (12 if codec == "qr" else 34 // 4)
        assert "codes" not in t.state                       # per-row codes live in the code column
        raw = lake.read_parquet(man.files["tables"][0]["path"])
        assert raw.schema.field("code").type == pa.binary()           # Delta: binary, the width in metadata
        width = raw.schema.field("code").metadata[b"embedlake.code_bytes"]
        assert int(width) == p["levels"] * cc.code_width(p["level_rows"])
        X = t.decode()
        assert X.shape == (34, 16) and np.isfinite(X).all()
        rows = cc.table_rows_of(cc.decode_codes(t.cols, p), p)
        np.testing.assert_allclose(X, materialise(t.state["table"], rows, None, p["combine"]), rtol=1e-6)
        assert man.extra["bytes_per_vector"] == cz.bytes_per_vector(codec, p, 16)
        assert "micro_f1_change" in man.metrics


def test_streamed_training_holds_one_round_and_matches_quality():
    """walk.stream=always: one walk per node at a time, lr continued across rounds; the table is as
    good as the one-shot one (planted communities, chance 0.25)."""
    from embedlake.workers.evaluate.classify import node_classification
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.synthetic import planted_communities
    src, dst, lab = planted_communities(1000, 4, 10.0, 0.25, 2)
    csr = build_csr(src, dst, 1000)
    train = TrainConfig(dim=16, window=5, negatives=5, ns_exponent=0.75, epochs=2, lr=0.025, min_lr=1e-4, sample=0.0,
                        seed=0)
    got, stats = {}, {}
    for mode in ("never", "always"):
        walk = WalkConfig(walks_per_node=4, length=30, seed=0, stream=mode)
        lp = cc.plan("compose", 1000, 16, 8.0, levels=3)
        st, info = cc.train_compositional((csr.indptr, csr.indices, None, False), "compose", lp, walk, train,
                                          sketch_dim=32, threads=1)
        X = cc.decode_compositional(cc.encode_codes(st["codes"], lp), st, lp)
        got[mode] = node_classification(X, np.arange(1000), lab, ratios=(0.5,), repeats=2)["micro_f1"]["0.5"]
        stats[mode] = info["stats"]
    assert stats["always"]["streamed"] and stats["always"]["rounds"] == 8      # 4 walks x 2 epochs
    assert stats["always"]["tokens"] == stats["never"]["tokens"]               # the same walks, all trained
    assert got["never"] > 0.6 and got["always"] > got["never"] - 0.05, got
