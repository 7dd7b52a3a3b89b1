"""Compressed tables: codec round-trip properties, lake round-trip, recall on clustered data,
and `embedlake compress` on a committed run."""
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from embedlake.config import CompressConfig, TrainConfig, WalkConfig
from embedlake.lake import Lake, Manifest, embeddings_table
from embedlake.workers.compress import compose as codec_compose
from embedlake.workers.compress import hashing as codec_hash
from embedlake.workers.compress import pq as codec_pq
from embedlake.workers.compress import scalar as codec_scalar
from embedlake.workers.compress import codecs as cz
from embedlake.workers.compress import store as cs
from embedlake.workers.evaluate.geometry import knn_recall


def _clustered(n=4000, d=64, k=40, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((k, d)).astype(np.float32)
    lab = rng.integers(0, k, n)
    return (C[lab] + noise * rng.standard_normal((n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def X():
    return _clustered()


def _awkward(seed=1):
    """Rows of very different ranges, a constant row, a zero row, exact ties, big and tiny values."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 37)).astype(np.float32)
    X *= np.logspace(-4, 3, 300, dtype=np.float32)[:, None]
    X[0] = 1.25
    X[1] = 0.0
    X[2, ::2] = -7.0
    X[3] += 500.0
    return X


# ----------------------------------------------------------------------------- exact properties

def test_fp16_error_bound_and_exact_layout():
    X = _awkward()
    cols = codec_scalar.encode_fp16(X)
    assert cols["code"].shape == (300, 74) and cols["code"].dtype == np.uint8
    D = codec_scalar.decode_fp16(cols, 37)
    np.testing.assert_array_equal(D, X.astype(np.float16).astype(np.float32))
    # round to nearest: relative error <= 2^-11 for normal values, absolute <= 2^-25 below 2^-14
    assert np.all(np.abs(D - X) <= np.maximum(np.abs(X) * 2.0 ** -11, 2.0 ** -25))
    with pytest.raises(ValueError, match="overflow"):
        codec_scalar.encode_fp16(np.array([[1e5]], np.float32))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_rowwise_error_at_most_half_scale(bits, scale_dtype):
    X = _awkward()
    cols = codec_scalar.encode_rowwise(X, bits, scale_dtype)
    assert cols["scale"].dtype == np.dtype(scale_dtype) and cols["bias"].dtype == np.dtype(scale_dtype)
    assert cols["code"].shape == (300, 37 if bits == 8 else 19)
    D = codec_scalar.decode_rowwise(cols, bits, 37)
    s = cols["scale"].astype(np.float64)[:, None]
    err = np.abs(D.astype(np.float64) - X)
    slack = 4 * np.finfo(np.float32).eps * np.abs(X).max(1, keepdims=True)    # float32 rounding of q*s+b
    assert np.all(err <= s / 2 + slack)
    q = codec_scalar.unpack_codes(cols["code"], bits, 37)
    assert q.max() <= (1 << bits) - 1
    # the bias is at most the row minimum, and each row's extremes use the code range's ends
    assert np.all(cols["bias"].astype(np.float64) <= X.min(1))
    assert np.all(q.min(1)[4:] == 0)
    assert np.all(err[1] == 0) and np.all(err[0] == 0)         # zero row and fp16-exact constant row
    if bits == 4:   # FBGEMM nibble order: element 2j in the low nibble of byte j
        np.testing.assert_array_equal(cols["code"][:, 0] & 0x0F, q[:, 0])
        np.testing.assert_array_equal(cols["code"][:, 0] >> 4, q[:, 1])


def test_binary_bits_match_signs():
    X = _awkward()
    cols = codec_scalar.encode_binary(X)
    assert cols["code"].shape == (300, 5)
    bits = np.unpackbits(cols["code"], axis=1, bitorder="little")
    np.testing.assert_array_equal(bits[:, :37].astype(bool), X > 0)
    assert not bits[:, 37:].any()
    D = codec_scalar.decode_binary(cols, 37)
    np.testing.assert_array_equal(D > 0, X > 0)
    np.testing.assert_allclose(np.abs(D).mean(1), np.abs(X).mean(1), rtol=2e-3)
    # Hamming distances agree with counting differing signs
    H = codec_scalar.hamming_distances(cols["code"][:7], cols["code"])
    np.testing.assert_array_equal(H, ((X[:7, None, :] > 0) != (X[None, :, :] > 0)).sum(-1))


def test_pq_state_rebuild_decode_and_adc_match_faiss(X):
    import faiss
    p = cz.codec_params("pq", CompressConfig(pq_m=8, pq_bits=8, normalize=False))
    state = cz.fit("pq", X, p, threads=1)
    assert state["centroids"].shape == (8, 256, 8)
    ref = faiss.ProductQuantizer(64, 8, 8)
    faiss.copy_array_to_vector(state["centroids"].ravel(), ref.centroids)
    cols = cz.encode("pq", X, state, p)
    np.testing.assert_array_equal(cols["code"], ref.compute_codes(X))
    D = cz.decode("pq", cols, state, p, 64)
    np.testing.assert_allclose(D, ref.decode(cols["code"]), atol=1e-6)
    # row partitions encode independently: concatenation equals encoding the whole table
    parts = [cz.encode("pq", X[a:b], state, p) for a, b in ((0, 1000), (1000, 2500), (2500, 4000))]
    np.testing.assert_array_equal(cz.concat_columns(parts)["code"], cols["code"])
    # asymmetric distance = query . reconstruction
    t = cz.CompressedTable("pq", p, 64, cols, state)
    np.testing.assert_allclose(t.scores(X[:5], "dot"), X[:5] @ D.T, rtol=1e-4, atol=1e-3)
    # non-byte codes (6 bits) unpack to the same centroids Faiss decodes
    p6 = {**p, "nbits": 6}
    s6 = cz.fit("pq", X[:1500], p6, threads=1)
    c6 = cz.encode("pq", X[:50], s6, p6)
    r6 = faiss.ProductQuantizer(64, 8, 6)
    faiss.copy_array_to_vector(s6["centroids"].ravel(), r6.centroids)
    assert c6["code"].shape == (50, 6)
    np.testing.assert_allclose(cz.decode("pq", c6, s6, p6, 64), r6.decode(c6["code"]), atol=1e-6)


@pytest.mark.parametrize("method", ["eigen", "faiss"])
def test_opq_rotation_is_orthogonal_and_decodes(method):
    Xs = _clustered(1500, 32, seed=3)
    p = cz.codec_params("opq", CompressConfig(pq_m=4, pq_bits=6, opq_iter=4, normalize=False, opq_method=method))
    st = cz.fit("opq", Xs, p, threads=1)
    R = st["rotation"]
    np.testing.assert_allclose(R @ R.T, np.eye(32), atol=1e-4)
    cols = cz.encode("opq", Xs, st, p)
    D = cz.decode("opq", cols, st, p, 32)
    idx = codec_pq.sub_codes(cols["code"], 4, 6)
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), codec_pq.reconstruction_norms(idx, st), rtol=1e-4)
    assert np.mean((D - Xs) ** 2) < 0.5 * np.mean((Xs - Xs.mean(0)) ** 2)


def test_lowrank_full_rank_is_lossless_and_ordered(X):
    p = cz.codec_params("lowrank", CompressConfig(lowrank_dim=64))
    st = cz.fit("lowrank", X, p)
    D = cz.decode("lowrank", cz.encode("lowrank", X, st, p), st, p, 64)
    np.testing.assert_allclose(D, X, atol=1e-4)
    p8 = cz.codec_params("lowrank", CompressConfig(lowrank_dim=8))
    st8 = cz.fit("lowrank", X, p8)
    np.testing.assert_allclose(st8["components"], st["components"][:8], atol=1e-4)
    var = (cz.encode("lowrank", X, st8, p8)["code"].view(np.float32)).var(0)
    assert np.all(np.diff(var) <= 1e-4)


def test_bytes_per_vector():
    assert cz.bytes_per_vector("int8", cz.codec_params("int8"), 128) == 132          # 128 + fp16 scale + bias
    assert cz.bytes_per_vector("int8", cz.codec_params("int8", CompressConfig(scale_dtype="float32")), 128) == 136
    assert cz.bytes_per_vector("int4", cz.codec_params("int4"), 128) == 68
    assert cz.bytes_per_vector("binary", cz.codec_params("binary"), 128) == 18
    assert cz.bytes_per_vector("pq", cz.codec_params("pq"), 128) == 16
    assert cz.bytes_per_vector("fp16", {}, 128) == 256


# ----------------------------------------------------------------------------- recall on clustered data

def test_recall_thresholds_on_clustered_data(X):
    """Recall@10 of cosine search in each table against exact search on the full table."""
    want = {"fp16": 0.99, "int8": 0.95, "int4": 0.75, "lowrank": 0.25, "pq": 0.3, "opq": 0.3, "binary": 0.2}
    got = {}
    tables = {}
    for name, lo in want.items():
        p = cz.codec_params(name, CompressConfig(pq_m=8, lowrank_dim=16, train_sample=2500))
        t, _ = cz.build(name, X, p, threads=1)
        tables[name] = t
        got[name] = knn_recall(X, t.score_fn(X), k=10, queries=300, seed=0)
    rer = knn_recall(X, tables["binary"].score_fn(X, tables["int8"], 100), k=10, queries=300, seed=0)
    print(json.dumps({**got, "binary+int8": rer}))
    for name, lo in want.items():
        assert got[name] >= lo, (name, got[name])
    assert got["fp16"] >= got["int8"] >= got["int4"] and rer >= 0.9 and rer > got["binary"] + 0.3
    # search() agrees with the scores it is built on
    idx, sc = tables["int8"].search(X[:3], k=5)
    S = tables["int8"].scores(X[:3])
    np.testing.assert_allclose(sc, -np.sort(-S, axis=1)[:, :5], rtol=1e-6)


# ----------------------------------------------------------------------------- lake round-trip

@pytest.mark.parametrize("codec", list(cz.CODECS))
def test_lake_round_trip(tmp_path, codec):
    Xs = _clustered(600, 32, seed=5)
    ids = np.array([f"n{i}" for i in range(600)], dtype=object)
    p = cz.codec_params(codec, CompressConfig(pq_m=4, pq_bits=6, opq_iter=3, lowrank_dim=8))
    lake = Lake(str(tmp_path / "lake"))
    if codec == "hash":
        p.update(buckets=50, rows=600)
        state = {"table": np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32)}
    elif codec in cz.COMPOSED:      # trained state: K x d table + every row's level codes
        p = cz.plan_composed(codec, p, 600, 32)
        rng = np.random.default_rng(0)
        state = {"table": rng.standard_normal((p["table_rows"], 32)).astype(np.float32),
                 "codes": np.stack([rng.integers(0, k, 600) for k in p["level_rows"]], 1).astype(np.int32)}
    else:
        state, _ = cs.fit_codec(Xs, codec, p)
    bounds = [(0, 250), (250, 600)]
    files = [cs.encode_partition(lake, dataset="toy", method="deepwalk", run_id="r1", codec=codec, params=p,
                                 partition=i, lo=lo, hi=hi, node_ids=ids, X=Xs, state=state)
             for i, (lo, hi) in enumerate(bounds)]
    files = [{k: f[k] for k in ("path", "rows", "bytes", "sha256")} for f in files]
    book = cs.write_codebooks(lake, "toy", "deepwalk", "r1", codec, state, files)
    assert (book is None) == (codec not in cz.TRAINED + cz.GRAPH_TRAINED)
    lake.commit(Manifest("toy", cs.table_method("deepwalk", codec), "r1",
                         files={"tables": files, "codebooks": [book] if book else []},
                         extra={"codec": codec, "params": p, "dim": 32}))
    assert files[0]["path"] == f"tables/toy/deepwalk.{codec}/run_id=r1/partition=0/part-00000.parquet"
    if book:
        assert book["path"] == f"codebooks/toy/deepwalk.{codec}/run_id=r1/codebooks.parquet"
    t = cs.read_compressed(str(tmp_path / "lake"), "toy", "deepwalk", codec)
    mem = cz.encode(codec, Xs, state, p)
    if codec == "hash":     # partitions encoded with their row offsets = the whole table at once
        np.testing.assert_array_equal(t.decode(), state["table"][codec_hash.hash_buckets(np.arange(600), 50)])
    for k, v in mem.items():
        np.testing.assert_array_equal(t.cols[k], v)
    for k, v in state.items():
        if k not in cs.PER_ROW_STATE:
            np.testing.assert_array_equal(t.state[k], v)
    if codec in cz.COMPOSED:        # the codes come back from the code column
        np.testing.assert_array_equal(codec_compose.decode_codes(t.cols, p), state["codes"])
    np.testing.assert_array_equal(t.decode(), cz.decode(codec, mem, state, p, 32))
    assert t.ids.tolist() == ids.tolist()
    raw = lake.read_parquet(files[0]["path"])
    assert raw.schema.field("code").type == pa.binary()                       # Delta: binary, width in metadata
    assert raw.schema.field("code").metadata[b"embedlake.code_bytes"] == str(mem["code"].shape[1]).encode()
    codes = pl.scan_delta(lake.url(f"tables/toy/deepwalk.{codec}")).collect()     # a plain Delta reader
    assert codes.height == 600 and codes["code"].to_list()[0] == mem["code"][0].tobytes()
    if codec not in cz.GRAPH_TRAINED:     # stored bytes per row = code + per-row scale / bias
        extra = sum(np.dtype(p["scale_dtype"]).itemsize for c in ("scale", "bias") if c in mem)
        assert mem["code"].shape[1] + extra == cz.bytes_per_vector(codec, p, 32)


# ----------------------------------------------------------------------------- flow + CLI

@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_cli_compress_committed_run(tmp_path, capsys, shared):
    from embedlake.config import load_config
    from embedlake.flows.cli import main as cli
    from embedlake.flows.embed_graph import embed_graph
    ds = shared("datasets", "karate")
    uri = str(tmp_path / "lake")
    s = embed_graph(load_config(None, [f"lake.uri={uri}", f"input.edges={ds / 'edges.tsv'}",
                                       f"input.labels={ds / 'labels.tsv'}", "train.dim=16", "walk.length=20",
                                       "eval.repeats=1"]))
    capsys.readouterr()
    rc = cli(["compress", "--from", "karate/deepwalk", "--codec", "int8,binary", "--codec", "pq", "--lake", uri,
              "-p", "compress.pq_m=4", "-p", "compress.pq_bits=4", "-p", "eval.repeats=1", "--run-id", "c1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["source"]["run_id"] == s["run_id"] and set(out["tables"]) == {"int8", "binary", "pq"}
    lake = Lake(uri)
    man = lake.manifest("karate", "deepwalk.int8")
    assert man.run_id == "c1" and man.extra["source"]["run_id"] == s["run_id"]
    assert man.extra["bytes_per_vector"] == 20 and man.extra["ratio"] == pytest.approx(3.2)
    assert man.metrics["recall_at_10"] >= 0.9
    assert abs(man.metrics["micro_f1_change"]["0.5"]) <= 0.1
    assert lake.manifest("karate", "deepwalk.pq").files["codebooks"]
    assert "recall_at_10_rerank" in lake.manifest("karate", "deepwalk.binary").metrics
    # the source's "latest" is still the embeddings run
    assert lake.manifest("karate", "deepwalk").run_id == s["run_id"]
    ids, Xf = __import__("embedlake").load_matrix(uri, "karate", "deepwalk")
    t = cs.read_compressed(uri, "karate", "deepwalk", "int8")
    assert t.ids.tolist() == ids.tolist()
    assert np.all(np.abs(t.decode() - Xf) <= t.cols["scale"].astype(np.float32)[:, None] / 2 + 1e-5)
    # bad requests: exit status 2, nothing new committed
    assert cli(["compress", "--from", "karate/deepwalk", "--codec", "zip", "--lake", uri]) == 2
    assert cli(["compress", "--from", "karate/deepwalk", "--codec", "pq", "-p", "compress.pq_m=5", "-p", "compress.pq_bits=4",
                "--lake", uri, "--run-id", "c2"]) == 2
    assert cli(["compress", "--from", "karate/nope", "--lake", uri]) == 2
    # a second writer of a committed table run stops before writing; the committed table is intact
    assert cli(["compress", "--from", "karate/deepwalk", "--codec", "int8", "--lake", uri, "--run-id", "c1"]) == 2
    np.testing.assert_array_equal(cs.read_compressed(uri, "karate", "deepwalk", "int8").cols["code"], t.cols["code"])
    err = capsys.readouterr().err
    assert "unknown codec 'zip'" in err and "pq_m=5 does not divide" in err and "no committed run" in err
    assert "already committed" in err
    assert not lake.list_files("tables/karate/deepwalk.pq/run_id=c2")


def test_hashed_table_trained_by_skipgram():
    """Hashing trick: K = n/4 rows trained directly; colliding nodes share a row; communities survive."""
    from embedlake.workers.evaluate.classify import node_classification
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.synthetic import planted_communities
    b = codec_hash.hash_buckets(np.arange(100_000), 1000, seed=3)
    counts = np.bincount(b, minlength=1000)
    assert b.min() >= 0 and b.max() < 1000 and counts.std() < 3 * np.sqrt(100)        # ~ Poisson(100)
    assert not np.array_equal(b, codec_hash.hash_buckets(np.arange(100_000), 1000, seed=4))
    src, dst, lab = planted_communities(800, 4, 12.0, 0.2, 1)
    csr = build_csr(src, dst, 800)
    walk = WalkConfig(walks_per_node=6, length=30, seed=0)
    train = TrainConfig(dim=16, window=5, negatives=5, ns_exponent=0.75, epochs=1, lr=0.025, min_lr=1e-4, sample=0.0,
                        seed=0)
    W, _ = codec_hash.train_hashed((csr.indptr, csr.indices, csr.weights, csr.directed), 200, walk, train,
                                   threads=1)
    assert W.shape == (200, 16) and np.isfinite(W).all()
    p = {"buckets": 200, "seed": 0, "rows": 800}
    t = cz.CompressedTable("hash", p, 16, cz.encode("hash", np.zeros((800, 16)), {"table": W}, p), {"table": W})
    assert t.bytes_per_vector == 4 + 16 and t.ratio == pytest.approx(64 / 20)
    D = t.decode()
    rows = codec_hash.hash_buckets(np.arange(800), 200)
    same = np.flatnonzero(rows == rows[0])
    assert len(same) > 1 and np.all(D[same] == D[0])
    nc = node_classification(D, np.arange(800), lab, ratios=(0.5,), repeats=1)
    # 4 balanced communities (chance 0.25); ~4 random nodes share each row, which caps what any
    # table of 200 rows can reach near 0.5
    assert nc["micro_f1"]["0.5"] > 0.35
