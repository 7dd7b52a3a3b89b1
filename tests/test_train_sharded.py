"""Sharded skip-gram (issue 17): walk shards train PyTorch-BigGraph buckets without any task holding
all walks or the full table. Partitions from ids alone, the placement of walk shards in the
one-CSR stream, bit-identity with the block engine for one walk shard, the same pairs for S shards,
the Ray driver equal to the in-process schedule, per-shard publish equal to today's publish, block
checkpoints resumed, and corpus token shards on train.workers.
"""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.config import TrainConfig, WalkConfig
from embedlake.workers.graph.shards import shard_bounds
from embedlake.workers.train import blocks as sb
from embedlake.workers.train import sharded as sh

N, K, L = 600, 4, 20


@pytest.fixture(scope="module")
def planted():
    """(csr, labels, node-ids, full k-major walks) of a small planted-partition graph."""
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.synthetic import planted_communities
    from embedlake.workers.graph.walks import random_walks
    s, d, lab = planted_communities(N, 6, 8.0, 0.1, 3)
    g = build_csr(s, d, N)
    walks = random_walks(g.indptr, g.indices, None, np.arange(N), K, L, 1, threads=1, symmetric=True)
    return g, lab, walks


def walk_shards(walks: np.ndarray, S: int) -> list[np.ndarray]:
    """The per-shard walk matrices of the walk contract: rows k * (hi - lo) + i = walk k of node lo + i."""
    cube = walks.reshape(K, N, L)
    return [np.ascontiguousarray(cube[:, lo:hi].reshape(-1, L)) for lo, hi in shard_bounds(N, S)]


def settings(**kw) -> TrainConfig:
    return TrainConfig(**{"dim": 8, "window": 4, "negatives": 3, "seed": 3, "rounds": 2, "threads": 1, **kw})


# ---- partitions and placement (no kernel) -------------------------------------------------------
def test_range_partitions_nest_in_graph_shards_and_locate_round_trips():
    n, S = 1003, 4
    split = sh.VocabSplit("range", n, S * 3)
    starts = split.starts
    for s, (lo, hi) in enumerate(shard_bounds(n, S)):          # partitions 3s..3s+2 tile shard s
        assert starts[3 * s] == lo and starts[3 * s + 3] == hi
    ids = np.arange(n)
    for kind in ("range", "stride"):
        sp = sh.VocabSplit(kind, n, 12)
        part, local = sp.locate(ids)
        assert np.array_equal(np.bincount(part, minlength=12), sp.sizes())
        for p in range(12):
            rows = sp.rows_of(p)
            assert np.array_equal(part[rows], np.full(len(rows), p)) and np.array_equal(local[rows], np.arange(len(rows)))
    empty = sh.VocabSplit("range", 3, 5)                        # S > n: empty partitions own nothing
    assert empty.sizes().tolist() == [0, 1, 0, 1, 1] and empty.locate(np.arange(3))[0].tolist() == [1, 3, 4]


@pytest.mark.parametrize("kind, n, S, P", [("stride", 601, 3, 4), ("stride", 3, 5, 5), ("range", 601, 2, 4),
                                            ("stride", 601, 1, 2)])
def test_shard_tables_gather_each_shards_rows_from_a_piece_of_every_partition(kind, n, S, P):
    """shard_cut_stage cuts each trained partition by graph shard, shard_rows_stage puts a shard's
    pieces back in id order: each shard gets exactly its rows of the table (empty shards and empty
    partitions too), and the pieces a shard gathers hold its rows only."""
    split = sh.VocabSplit(kind, n, P)
    X = np.random.default_rng(1).random((n, 5), dtype=np.float32)
    bounds = shard_bounds(n, S)
    cut = [sh.shard_cut_stage(split, bounds, None, X[split.rows_of(p)], p) for p in range(P)]
    cut = [c if S > 1 else (c,) for c in cut]
    for s, (lo, hi) in enumerate(bounds):
        pieces = [cut[p][s] for p in range(P)]
        assert sum(pc.nbytes for pc in pieces) == X[lo:hi].nbytes
        assert np.array_equal(sh.shard_rows_stage(split, lo, hi, *pieces), X[lo:hi])


def test_locate_is_searchsorted_and_names_a_token_outside_the_vocabulary():
    """The one-pass locate equals the numpy definition (range: last start <= id; stride: mod / div)
    on random ids, empty partitions included, and refuses an id outside [0, vocab)."""
    rng = np.random.default_rng(5)
    for n, P in ((1003, 12), (7, 9), (70_000, 300)):
        ids = rng.integers(0, n, 5000).astype(np.int32)
        rs = sh.VocabSplit("range", n, P)
        want = np.searchsorted(rs.starts, ids, side="right") - 1
        part, local = rs.locate(ids)
        assert part.dtype == (np.uint8 if P <= 255 else np.uint16) and local.dtype == np.int32
        assert np.array_equal(part, want) and np.array_equal(local, ids - rs.starts[want])
        part, local = sh.VocabSplit("stride", n, P).locate(ids)
        assert np.array_equal(part, ids % P) and np.array_equal(local, ids // P)
    with pytest.raises(ValueError, match="token id 1003 lies outside the vocabulary"):
        sh.VocabSplit("range", 1003, 4).locate(np.array([5, 1003, 2]))


def reference_piece(stream: dict, place, i: int, j: int, centres: np.ndarray, window: int) -> dict:
    """Block (i, j)'s piece read straight from its definition, one centre at a time in Python."""
    off, tpart = stream["offsets"], stream["tpart"]
    kept, runs = [], []                                     # runs: [start, end, sentence]
    for p in centres.tolist():
        s = int(np.searchsorted(off, p, side="right")) - 1
        a, b = max(off[s], p - window), min(off[s + 1], p + window + 1)
        if not any(q != p and tpart[q] == i for q in range(a, b)):
            continue
        if runs and runs[-1][2] == s and a <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], b)
        else:
            runs.append([a, b, s])
        kept.append((p, len(runs) - 1))
    starts = np.array([r[0] for r in runs] or [0], np.int64)
    roff = np.concatenate([[0], np.cumsum([r[1] - r[0] for r in runs])]).astype(np.int64) if runs else np.zeros(2, np.int64)
    take = np.concatenate([np.arange(r[0], r[1]) for r in runs]).astype(np.int64) if runs else np.zeros(0, np.int64)
    cb = np.zeros(len(stream["cbounds"]), np.int64)
    cb[j + 1:] = len(kept)
    grp = np.searchsorted(place.gstart, starts, side="right") - 1
    return {"tloc": stream["tloc"][take], "tpart": tpart[take], "offsets": roff, "cbounds": cb,
            "centres": np.array([p - starts[r] + roff[r] for p, r in kept], np.int32),
            "gdelta": starts + place.gdelta[np.maximum(grp, 0)] - roff[:-1],
            "total": place.total, "per_epoch": place.per_epoch, "block": (i, j)}


@pytest.mark.parametrize("rounds", [1, 3])
def test_bucket_pieces_follow_their_definition(planted, rounds):
    """The generator's pieces (one counting pass, then one filling pass) equal the definition read
    centre by centre: the centres of bucket j in round r with a partition-i token within the window,
    the merged runs their windows cover, where each run sits in the whole stream; dtypes included.
    The P buckets' P pieces each are the round's P x P pieces in block order i * P + j."""
    _, _, walks = planted
    P, window = 5, 3
    split = sh.VocabSplit("range", N, P)
    preps = [sh.prep_stream_stage(split, K, 1, settings(), 0, s, w) for s, w in enumerate(walk_shards(walks, 2))]
    places = sh.place_streams([p[1] for p in preps])
    stream, place = preps[1][0], places[1]
    for r in range(rounds):
        cut = sh.cut_round(stream, place, window, rounds, r)
        for j in range(P):
            c0, c1 = sb.bucket_slice(stream, place, j, r, rounds)
            for i in range(P):
                got, want = cut[i * P + j], reference_piece(stream, place, i, j, stream["centres"][c0:c1], window)
                assert got.keys() == want.keys()
                for k, v in want.items():
                    if isinstance(v, np.ndarray):
                        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), (r, i, j, k)
                    else:
                        assert got[k] == v, (r, i, j, k)
    assert sum(len(p["centres"]) for p in cut) > len(stream["centres"]) // rounds    # most centres reach 2+ partitions


def test_counts_per_shard_sum_to_the_global_counts(planted):
    _, _, walks = planted
    for kind in ("range", "stride"):
        split = sh.VocabSplit(kind, N, 6)
        per_shard = [sh.count_stage(split, w) for w in walk_shards(walks, 3)]
        counts = np.empty(N, np.int64)
        for p in range(6):
            counts[split.rows_of(p)] = sh.noise_stage(0.75, *[c[p] for c in per_shard])[0]
        assert np.array_equal(counts, np.bincount(walks[walks >= 0], minlength=N))


def test_placement_reproduces_the_interleaved_one_csr_stream(planted):
    """Local position q of group g of shard s, shifted by its delta, holds the token the one-CSR
    k-major stream holds at that global position: windows, negatives and lr see the same stream."""
    from embedlake.workers.graph.walks import walks_to_sentences
    _, _, walks = planted
    tok, _ = walks_to_sentences(walks)
    split = sh.VocabSplit("range", N, 3)
    preps = [sh.prep_stream_stage(split, K, 1, settings(), 0, s, w) for s, w in enumerate(walk_shards(walks, 3))]
    places = sh.place_streams([p[1] for p in preps])
    seen = np.zeros(len(tok), bool)
    for (stream, _), place in zip(preps, places):
        local = np.arange(len(stream["tloc"]))
        grp = np.searchsorted(place.gstart, local, side="right") - 1
        glob = local + place.gdelta[grp]
        ids = split.starts[stream["tpart"].astype(np.int64)] + stream["tloc"]
        assert np.array_equal(tok[glob], ids)
        seen[glob] = True
    assert seen.all() and places[0].total == len(tok) == places[0].per_epoch


# ---- the in-process schedule against the block engine ------------------------------------------
@pytest.mark.parametrize("P", [1, 4])
def test_one_walk_shard_is_the_block_engine_bit_for_bit(planted, P):
    """S = 1: exactly blocks.train_blocks on the interleaved stream with the same partitions (P = 1:
    its default, balanced, partitioning is the one range too)."""
    from embedlake.workers.graph.walks import walks_to_sentences
    _, _, walks = planted
    tok, off = walks_to_sentences(walks)
    tr = settings(rounds=3)
    Win, Wout, st = sh.train_streams_local([(walks,)], K, sh.VocabSplit("range", N, P), tr)
    A, B, ref = sb.train_blocks(tok, off, N, partitions=P, rounds=3, dim=8, window=4, negatives=3, seed=3,
                                threads=1, scheme="range" if P > 1 else "balanced")
    assert np.array_equal(np.concatenate(Win), A) and np.array_equal(np.concatenate(Wout), B)
    assert st["pairs"] == ref["pairs"]


def test_walk_shards_train_the_same_pairs_in_another_order(planted):
    """S = 3: every pair is trained with the same window, negatives and lr as the one-stream block
    engine (same pair count), but a block visits shard 0's centres of a round before shard 1's
    instead of ascending global position. When every round lies inside one walk number k (here:
    4 rounds over 4 walks of equal length) both orders coincide and the tables are bit-identical;
    with 3 rounds they differ slightly and learn as well."""
    from embedlake.workers.evaluate.classify import node_classification
    from embedlake.workers.graph.walks import walks_to_sentences
    g, lab, walks = planted
    tok, off = walks_to_sentences(walks)
    shards = [(w,) for w in walk_shards(walks, 3)]
    for rounds, identical in ((4, True), (3, False)):
        tr = settings(dim=16, rounds=rounds, epochs=3)
        Win, _, st = sh.train_streams_local(shards, K, sh.VocabSplit("range", N, 6), tr)
        A, _, ref = sb.train_blocks(tok, off, N, partitions=6, rounds=rounds, dim=16, window=4, negatives=3, seed=3,
                                    threads=1, scheme="range", epochs=3)
        X = np.concatenate(Win)
        assert st["pairs"] == ref["pairs"] and np.array_equal(X, A) == identical
    fx = node_classification(X, np.arange(N), lab, ratios=(0.5,), repeats=2)["micro_f1"]["0.5"]
    fa = node_classification(A, np.arange(N), lab, ratios=(0.5,), repeats=2)["micro_f1"]["0.5"]
    assert fx > 0.5 and abs(fx - fa) < 0.05, (fx, fa)


# ---- through Ray ---------------------------------------------------------------------------------
def sharded_graph(ray, csr, S: int, node_ids: np.ndarray):
    """A GraphHandle of S shards built as the sharded ingest would leave it (one object per shard)."""
    from embedlake.tasks.graph import GraphHandle, ShardRef
    from embedlake.workers.graph.shards import split_csr
    shards = [ShardRef(sd.lo, sd.hi, sd.num_arcs, ray.put(sd.as_tuple()), ray.put(node_ids[sd.lo:sd.hi]))
              for sd in split_csr(csr, shard_bounds(csr.num_nodes, S))]
    return GraphHandle({"nodes": csr.num_nodes, "version": "test"}, None, ray.put(node_ids), None, shards)


@pytest.mark.usefixtures("ray_session")
def test_ray_driver_runs_the_in_process_schedule_and_returns_one_table_per_shard(planted):
    """train_sharded on 2 workers (S = 2 shards, P = 4: two partitions per shard) gives, one thread
    per link, exactly the in-process schedule's table, as one [hi - lo, dim] object per shard."""
    import ray

    from embedlake.tasks.train import sharded_partitions, train_sharded
    g, _, walks = planted
    graph = sharded_graph(ray, g, 2, np.arange(N, dtype=np.int64))
    tr = settings(workers=2, rounds=2)
    assert sharded_partitions(tr, 2) == 4 and sharded_partitions(tr, 3) == 6 and sharded_partitions(tr, 8) == 8
    walk_refs = [ray.put(w) for w in walk_shards(walks, 2)]
    out = train_sharded.fn(graph, walk_refs, WalkConfig(walks_per_node=K, length=L), tr, run=None)
    tables = ray.get(out.ref)
    assert [t.shape for t in tables] == [(hi - lo, 8) for lo, hi in graph.shard_bounds]
    split = sh.graph_split(N, 4)
    Win, _, st = sh.train_streams_local([(w,) for w in walk_shards(walks, 2)], K, split, tr)
    assert np.array_equal(np.concatenate(tables), sh.assemble_split_stage(split, None, *Win))
    info = out.info
    assert info["engine"] == "numba-sharded" and info["pairs"] == st["pairs"]
    assert info["links"] == (4 * 2) * 4 * 2               # episodes x blocks x walk shards
    assert info["partitions"] == 4 and info["shards"] == 2 and info["loss_last"] < info["loss_first"]


@pytest.mark.usefixtures("ray_session")
def test_publish_shards_writes_what_publish_writes(tmp_path):
    """Each shard's rows written from its own table and ids: the same files, rows and schema as
    today's publish of the full table with the shard ranges as partitions (string ids too)."""
    import pyarrow.parquet as pq
    import ray

    from embedlake.lake import Lake
    from embedlake.tasks.graph import publish, publish_shards
    from embedlake.workers.graph.csr import build_csr
    n = 50
    g = build_csr(np.arange(n - 1), np.arange(1, n), n)
    ids = np.array([f"v{i}" for i in range(n)], dtype=object)
    graph = sharded_graph(ray, g, 4, ids)
    X = np.random.default_rng(0).random((n, 6), dtype=np.float32)
    lake = Lake(str(tmp_path / "lake"))
    a = publish_shards.fn(lake, "g", "deepwalk", "ra", graph, [ray.put(X[lo:hi]) for lo, hi in graph.shard_bounds])
    b = publish.fn(lake, "g", "deepwalk", "rb", graph, ray.put(X), graph.shard_bounds)
    assert len(a) == len(b) == 4
    for fa, fb in zip(a, b):
        assert fa["path"].replace("run_id=ra", "run_id=rb") == fb["path"] and fa["rows"] == fb["rows"]
        assert pq.read_table(lake.url(fa["path"])).equals(pq.read_table(lake.url(fb["path"])))


@pytest.mark.usefixtures("ray_session")
def test_killed_sharded_training_resumes_from_its_block_checkpoint(tmp_path, planted):
    """A run checkpoints every round (the chain's last link writes W_in[i] / W_out[j]); a re-run
    with the same run id whose checkpoint stands at episode k continues there and ends with
    exactly the uninterrupted table. The killed state is the uninterrupted run's own state
    (same fingerprint and settings) moved back to episode k, with the in-process schedule's
    tables after k episodes."""
    import json

    import ray

    from embedlake.lake import Lake
    from embedlake.tasks.run import Run
    from embedlake.tasks.train import train_sharded
    g, _, walks = planted
    graph = sharded_graph(ray, g, 2, np.arange(N, dtype=np.int64))
    tr = settings(workers=1, partitions=2, rounds=2, checkpoint="round")
    wcfg = WalkConfig(walks_per_node=K, length=L)
    refs = [ray.put(w) for w in walk_shards(walks, 2)]
    lake = Lake(str(tmp_path / "lake"))
    run = Run(lake, "g", "deepwalk", "r1")
    full = train_sharded.fn(graph, refs, wcfg, tr, run=run)
    A = np.concatenate(ray.get(full.ref))
    state = json.loads(lake.read_bytes(f"{run.checkpoint_dir}/state.json"))
    assert state["step"] == state["total_steps"] == 2 * 2 and full.info["checkpoints"] == 2
    k = 2                                                      # after round 1 of 2
    Win, Wout, _ = sh.train_streams_local([(w,) for w in walk_shards(walks, 2)], K, sh.graph_split(N, 2), tr, stop=k)
    lake.delete(f"{run.checkpoint_dir}/step={state['step']:06d}", recursive=True)
    for p in range(2):
        lake.write_npy(sb.checkpoint_file(run.checkpoint_dir, k, "w_in", p), Win[p])
        lake.write_npy(sb.checkpoint_file(run.checkpoint_dir, k, "w_out", p), Wout[p])
    lake.write_json(f"{run.checkpoint_dir}/state.json", {**state, "step": k})
    again = train_sharded.fn(graph, refs, wcfg, tr, run=Run(lake, "g", "deepwalk", "r1"))
    assert again.info["resumed_at"] == k and again.info["episodes"] == 4 - k
    assert np.array_equal(np.concatenate(ray.get(again.ref)), A)


@pytest.mark.usefixtures("ray_session")
def test_corpus_token_shards_train_on_workers(planted):
    """Corpus training with train.workers = 2: the sharded engine on the token shards (word id mod P
    partitions, the vocabulary's counts as noise), assembled into the [V, dim] table; equal to the
    in-process schedule."""
    import ray

    from embedlake.tasks import corpus as ct
    _, _, walks = planted
    from embedlake.workers.graph.walks import walks_to_sentences
    tok, off = walks_to_sentences(walks)
    cuts = [0, 700, 1500, len(off) - 1]                        # 3 token shards of whole sentences
    shards = [(tok[off[a]:off[b]].copy(), off[a:b + 1] - off[a]) for a, b in zip(cuts, cuts[1:])]
    counts = np.bincount(tok, minlength=N).astype(np.int64)
    vocab = ct.Vocabulary({"vocab": N}, None, ray.put(counts), [], [], [])
    sentences = ct.Sentences([], [ray.put(t) for t, _ in shards], [ray.put(o) for _, o in shards])
    tr = settings(workers=2, rounds=2)
    emb_ref, info = ct.train.fn(vocab, sentences, tr)
    X = ray.get(emb_ref)
    split = sh.VocabSplit("stride", N, 4)
    Win, _, st = sh.train_streams_local(shards, 1, split, tr)
    assert X.shape == (N, 8) and info["pairs"] == st["pairs"] and info["shards"] == 3
    assert np.array_equal(X, sh.assemble_split_stage(split, None, *Win))


@pytest.mark.usefixtures("ray_session")
def test_subsampled_epochs_through_ray_equal_the_in_process_schedule(planted):
    """train.sample > 0: every epoch each walk shard draws its own subsample from the summed
    partition counts (prep gets the P count objects); Ray and the in-process schedule agree, and
    fewer pairs are trained than without subsampling."""
    import ray

    from embedlake.tasks.train import train_sharded
    g, _, walks = planted
    graph = sharded_graph(ray, g, 2, np.arange(N, dtype=np.int64))
    tr = settings(workers=2, rounds=1, epochs=2, sample=1e-4)
    out = train_sharded.fn(graph, [ray.put(w) for w in walk_shards(walks, 2)], WalkConfig(walks_per_node=K, length=L),
                           tr, run=None)
    shards = [(w,) for w in walk_shards(walks, 2)]
    split = sh.graph_split(N, 4)
    Win, _, st = sh.train_streams_local(shards, K, split, tr)
    _, _, full = sh.train_streams_local(shards, K, split, settings(workers=2, rounds=1, epochs=2))
    assert np.array_equal(np.concatenate(ray.get(out.ref)), sh.assemble_split_stage(split, None, *Win))
    assert out.info["pairs"] == st["pairs"] < 0.9 * full["pairs"]


def nbytes(x) -> int:
    """Array bytes inside a task argument or result (tuples, lists, dicts, StreamPlace)."""
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, (tuple, list)):
        return sum(nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(nbytes(v) for v in x.values())
    if isinstance(x, sb.StreamPlace):
        return x.gstart.nbytes + x.gdelta.nbytes
    return 0


@pytest.mark.parametrize("sample", [0.0, 1e-4])
def test_no_task_holds_more_than_one_shard(planted, monkeypatch, sample):
    """Every argument and result of every stage function of the sharded engine (what its Ray tasks
    run) is at most one shard's prepared stream (or its walks), far below all shards' streams; the
    tables a link carries are one partition each."""
    _, _, walks = planted
    S, P, dim = 4, 8, 16
    shards = [(w,) for w in walk_shards(walks, S)]
    split = sh.VocabSplit("range", N, P)
    tr = settings(dim=dim, rounds=2, sample=sample)
    preps = [sh.prep_stream_stage(split, K, 1, settings(dim=dim), 0, s, *src) for s, src in enumerate(shards)]
    one_shard = max(max(nbytes(p[0]) for p in preps), max(w[0].nbytes for w in shards))
    seen = []
    for name in ("count_stage", "noise_stage", "prep_stream_stage", "prep_count_stage", "bucket_stage", "link_stage"):
        fn = getattr(sh, name)

        def recorded(*args, _fn=fn, _name=name, **kw):
            out = _fn(*args, **kw)
            returns = out if isinstance(out, tuple) else (out,)       # each result is an object of its own
            seen.append((_name, max(nbytes(a) for a in (*args, *kw.values(), *returns))))
            return out
        monkeypatch.setattr(sh, name, recorded)
    sh.train_streams_local(shards, K, split, tr)
    ran = {n for n, _ in seen}          # prep_count_stage runs prep_stream_stage inside
    assert ran == {"count_stage" if sample else "prep_count_stage", "prep_stream_stage", "noise_stage", "bucket_stage",
                   "link_stage"}
    assert max(b for _, b in seen) <= one_shard < sum(nbytes(p[0]) for p in preps) / 2
    # a link takes one bucket piece: a fraction of its shard's stream (P = 8, 2 rounds, window 4)
    assert max(b for n, b in seen if n == "link_stage") < one_shard / 4
    assert max(split.sizes()) * dim * 4 * 2 < one_shard / 4         # a link's two tables: one partition each


def _yield_halves():
    """A generator worker function made here so that Ray pickles it by value."""
    def halves(a, parts):
        for k in range(parts):
            yield a[k::parts].copy()
    return halves


@pytest.mark.usefixtures("ray_session")
def test_recorder_keeps_a_generator_task_a_generator_and_sizes_each_yield(tmp_path):
    """bucket_stage is a Ray generator task (num_returns = P): recorded, it must still be one (Ray
    stores each yield before the next step), give every value intact, and record one call whose
    results are the yielded objects' sizes, with the memory of all its steps."""
    import ray

    from embedlake.tasks.object_sizes import read_calls, recording
    from embedlake.tasks.remote import remote
    x = np.arange(12_000, dtype=np.int64)
    with recording(tmp_path / "rec") as rec:
        fn = remote(_yield_halves(), "train", num_returns=3, num_cpus=1)
        refs = fn.remote(ray.put(x), 3)
        got = ray.get(refs)
    assert all(np.array_equal(g, x[k::3]) for k, g in enumerate(got))
    (call,) = read_calls(rec)
    assert call.fn == "halves" and call.stage == "train" and len(call.args) == 2 and call.args[0] == 96_000
    assert call.results == (32_000, 32_000, 32_000) and call.mem["own_peak"] > 0
