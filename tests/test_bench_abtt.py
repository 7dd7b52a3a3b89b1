"""bench/abtt.py (all-but-the-top, evaluation only) and bench/sgns_quality.py's paired summary of it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from abtt import abtt_variants, all_but_the_top  # noqa: E402
from sgns_quality import abtt_minus_plain  # noqa: E402


def _table(seed=0, n=500, d=20):
    """Rows with a large common mean and two dominant directions over a small isotropic rest."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    X = rng.normal(size=(n, d)) * 0.1 + 3.0 * q[0]
    X += rng.normal(size=(n, 1)) * 5.0 * q[1] + rng.normal(size=(n, 1)) * 2.0 * q[2]
    return X.astype(np.float32), q


def test_d0_only_subtracts_the_mean():
    X, _ = _table()
    Y = all_but_the_top(X, 0)
    assert Y.dtype == np.float32
    np.testing.assert_allclose(Y, X - X.astype(np.float64).mean(0), atol=1e-5)


def test_removes_the_top_directions_and_keeps_the_rest():
    X, q = _table()
    C = X.astype(np.float64) - X.astype(np.float64).mean(0)
    vals, vecs = np.linalg.eigh(C.T @ C)            # an independent route to the principal directions
    top = vecs[:, np.argsort(vals)[::-1]]
    for D in (1, 2, 3):
        Y = all_but_the_top(X, D).astype(np.float64)
        assert np.abs(Y.mean(0)).max() < 1e-5
        assert np.abs(Y @ top[:, :D]).max() < 1e-4                   # the top D are gone
        np.testing.assert_allclose(Y @ top[:, D:], C @ top[:, D:], atol=1e-4)   # nothing else moved
    # the planted directions are the top two: after D = 2 the rows hold only the small rest
    Y2 = all_but_the_top(X, 2)
    assert np.abs(Y2 @ q[1]).max() < 0.5 and np.abs(Y2 @ q[2]).max() < 0.5
    assert np.abs(all_but_the_top(X, 1) @ q[2]).max() > 3.0         # D = 1 leaves the second one


def test_variants_and_bad_d():
    X, _ = _table()
    v = abtt_variants(X, [0, 2])
    assert list(v) == ["abtt0", "abtt2"]
    np.testing.assert_array_equal(v["abtt2"], all_but_the_top(X, 2))
    for D in (-1, 20):
        with pytest.raises(ValueError, match="D="):
            all_but_the_top(X, D)


def test_paired_summary():
    rows = [{"ws353": .25, "simlex": .15, "analogy": .03, "ws353_abtt1": .26, "simlex_abtt1": .15,
             "analogy_abtt1": .02},
            {"ws353": .27, "simlex": .16, "analogy": .03, "ws353_abtt1": .30, "simlex_abtt1": .17,
             "analogy_abtt1": .03}]
    s = abtt_minus_plain(rows, [1], gensim=False)["abtt1"]
    assert s["ws353"] == [0.02, 0.01, 2]          # differences .01 and .03: mean .02, s.e. .02 / sqrt(2) / sqrt(2)
    assert s["simlex"] == [0.005, 0.005, 1]
    assert s["analogy"] == [-0.005, 0.005, 0]
    g = [{f"{k}_our_index": r[k] for k in ("ws353", "simlex", "analogy")} | r for r in rows]
    for r in g:
        r["ws353"] = 0.0                            # gensim's own index is not the pairing base
    assert abtt_minus_plain(g, [1], gensim=True)["abtt1"]["ws353"] == [0.02, 0.01, 2]


def test_blogcatalog_names_and_paired_summary():
    import bench_skipgram
    X, _ = _table()
    embs = bench_skipgram.with_abtt({"gensim": X, "numba": X, "numba_s1": X + 1}, [1], ["numba"])
    assert sorted(embs) == ["abtt1_numba", "abtt1_numba_s1", "gensim", "numba", "numba_s1"]
    np.testing.assert_array_equal(embs["abtt1_numba_s1"], all_but_the_top(X + 1, 1))
    f1 = {"numba": {"0.1": [.30, .10]}, "numba_s1": {"0.1": [.32, .14]}, "numba_mean": {"0.1": [.31, .12]},
          "abtt1_numba": {"0.1": [.31, .12]}, "abtt1_numba_s1": {"0.1": [.35, .14]}, "gensim": {"0.1": [0, 0]}}
    s = bench_skipgram.abtt_minus_plain(f1, [1], ["numba", "gensim"])
    assert s == {"abtt1": {"numba": {"0.1": [0.02, 0.01, 0.01, 0.01]}}}   # gensim: not scored both ways
