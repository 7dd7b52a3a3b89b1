"""SGNS kernels (numba CPU, torch): reproducibility, the sampling maths, and embedding quality on a
planted-community graph whose walks are generated here with plain numpy."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.workers.train.sgns_parts import (ABL_PAIR_NEGATIVES, ABL_SEQUENTIAL_WINDOW, keep_thresholds,
                                                noise_alias)
from embedlake.workers.train.skipgram import train_sgns


def planted_graph(n=400, k=4, deg=12.0, mixing=0.1, seed=0):
    """Stochastic block model as CSR (indptr, indices) plus the community of each node."""
    rng = np.random.default_rng(seed)
    comm = np.arange(n) % k
    m = int(n * deg / 2)
    src = rng.integers(0, n, m)
    same = rng.random(m) >= mixing
    # partner in the same community (same residue mod k) or anywhere
    dst_same = (rng.integers(0, n // k, m) * k + comm[src]) % n
    dst = np.where(same, dst_same, rng.integers(0, n, m))
    keep = src != dst
    src, dst = src[keep], dst[keep]
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    indptr = np.zeros(n + 1, np.int64)
    np.add.at(indptr, a + 1, 1)
    return np.cumsum(indptr), b.astype(np.int32), comm


def uniform_walks(indptr, indices, walks_per_node=10, length=40, seed=0):
    """DeepWalk walks as flat tokens + offsets (all walks advance together, vectorised)."""
    rng = np.random.default_rng(seed)
    n = len(indptr) - 1
    cur = np.tile(np.arange(n), walks_per_node)
    out = np.empty((len(cur), length), np.int32)
    out[:, 0] = cur
    deg = np.diff(indptr)
    for t in range(1, length):
        d = deg[cur]
        step = (rng.random(len(cur)) * np.maximum(d, 1)).astype(np.int64)
        nxt = indices[np.minimum(indptr[cur] + step, len(indices) - 1)]
        cur = np.where(d > 0, nxt, cur)
        out[:, t] = cur
    return out.ravel(), np.arange(0, out.size + 1, length, dtype=np.int64)


def centroid_accuracy(X, y, seed=0):
    """Nearest-centroid (cosine) accuracy, centroids from a random half, scored on the other half."""
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    tr, te = idx[: len(X) // 2], idx[len(X) // 2:]
    C = np.stack([X[tr][y[tr] == c].mean(0) for c in np.unique(y)])
    return float(np.mean(np.argmax(X[te] @ C.T, axis=1) == y[te]))


@pytest.fixture(scope="module")
def graph_walks():
    indptr, indices, comm = planted_graph()
    tokens, offsets = uniform_walks(indptr, indices)
    return tokens, offsets, comm


def expected_pairs(L, window):
    """E[#contexts] of a sentence of L tokens when the window b ~ U{1..window} per centre."""
    i = np.arange(L)[:, None]
    b = np.arange(1, window + 1)[None, :]
    return float((np.minimum(b, i) + np.minimum(b, L - 1 - i)).mean(axis=1).sum())


# ----------------------------------------------------------------------------- numba kernel

def test_reproducible_single_thread(graph_walks):
    tokens, offsets, _ = graph_walks
    kw = dict(dim=16, window=5, negatives=3, seed=11, threads=1, sample=1e-3)
    a = train_sgns(tokens, offsets, 400, **kw)
    b = train_sgns(tokens, offsets, 400, **kw)
    assert a[0].dtype == np.float32 and a[0].shape == (400, 16) and a[1].shape == (400, 16)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[2]["pairs"] == b[2]["pairs"] and a[2]["loss_last"] == b[2]["loss_last"]
    c = train_sgns(tokens, offsets, 400, **{**kw, "seed": 12})
    assert not np.array_equal(a[0], c[0])


def test_init_matches_word2vec():
    tok = np.zeros(0, np.int32)
    W_in, W_out, st = train_sgns(tok, np.zeros(1, np.int64), 50, dim=8, seed=3)
    assert np.all(np.abs(W_in) <= 0.5 / 8) and W_in.std() > 0.1 / 8 and not W_out.any()
    assert st["pairs"] == 0


def test_quality_and_loss_decrease(graph_walks):
    tokens, offsets, comm = graph_walks
    W, _, st = train_sgns(tokens, offsets, 400, dim=32, window=5, negatives=5, seed=0, threads=0)
    assert st["loss_last"] < st["loss_first"] - 0.3, st
    assert centroid_accuracy(W, comm) > 0.9
    assert st["tokens"] == len(tokens) and st["tokens_per_s"] > 0
    # word2vec's pair-by-pair order with per-pair negatives (the gensim-parity mode) learns too
    W2, _, st2 = train_sgns(tokens, offsets, 400, dim=32, window=5, seed=0, shared_negatives=False)
    assert centroid_accuracy(W2, comm) > 0.9 and st2["loss_last"] < st2["loss_first"] - 0.3


def test_dynamic_window_pair_count():
    rng = np.random.default_rng(1)
    L, S, window = 30, 3000, 7
    tokens = rng.integers(0, 100, L * S).astype(np.int32)
    offsets = np.arange(0, L * S + 1, L, dtype=np.int64)
    _, _, st = train_sgns(tokens, offsets, 100, dim=4, window=window, negatives=1, threads=1)
    exp = S * expected_pairs(L, window)
    # each centre's context count has sd <= ~window; 90k centres -> relative error ~1e-3
    assert abs(st["pairs"] - exp) / exp < 0.01, (st["pairs"], exp)
    # a full window (b = window always) would give more pairs: the draw really is dynamic
    assert st["pairs"] < 0.75 * S * (2 * window * L - window * (window + 1))


def test_padding_is_skipped():
    rng = np.random.default_rng(2)
    L, S, window = 20, 2000, 5
    tok = rng.integers(0, 50, (S, L)).astype(np.int32)
    tok[:, 12:] = -1                      # only 12 real tokens per sentence
    offsets = np.arange(0, L * S + 1, L, dtype=np.int64)
    _, _, st = train_sgns(tok.ravel(), offsets, 50, dim=4, window=window, negatives=1, threads=1)
    exp = S * expected_pairs(12, window)
    assert abs(st["pairs"] - exp) / exp < 0.015 and st["tokens"] == 12 * S


def test_subsampling_keeps_expected_share():
    rng = np.random.default_rng(3)
    V = 200
    p = 1.0 / np.arange(1, V + 1) ** 1.1         # Zipf-like: a few very frequent tokens
    p /= p.sum()
    tokens = rng.choice(V, 200_000, p=p).astype(np.int32)
    offsets = np.arange(0, len(tokens) + 1, 50, dtype=np.int64)
    counts = np.bincount(tokens, minlength=V)
    sample = 1e-3
    thr = sample * counts.sum()
    keep = np.minimum(1.0, (np.sqrt(counts / thr) + 1) * thr / np.maximum(counts, 1))
    np.testing.assert_allclose(keep_thresholds(counts, sample) / 2.0 ** 32, keep, atol=1e-9)
    _, _, st = train_sgns(tokens, offsets, V, dim=4, window=2, negatives=1, sample=sample, threads=1)
    exp = float((keep * counts).sum())
    assert exp < 0.7 * len(tokens)               # the test is meaningful: much is dropped
    assert abs(st["tokens_trained"] - exp) < 5 * np.sqrt(exp), (st["tokens_trained"], exp)
    _, _, st0 = train_sgns(tokens, offsets, V, dim=4, window=2, negatives=1, sample=0.0, threads=1)
    assert st0["tokens_trained"] == len(tokens)


def test_noise_alias_is_exact():
    counts = np.array([0, 1, 5, 100, 3, 0, 42, 7], np.int64)
    thr, alias = noise_alias(counts, 0.75)
    n = len(counts)
    keep = thr.astype(np.float64) / 2.0 ** 32
    implied = keep / n
    np.add.at(implied, alias, (1.0 - keep) / n)
    w = np.where(counts > 0, counts ** 0.75, 0.0)
    np.testing.assert_allclose(implied, w / w.sum(), atol=1e-9)


def test_packed_noise_table_picks_the_same_rows():
    """pack_alias + noise_pick (one word a draw, issue 20 seventh pass) pick exactly the row that the
    two tables pick for the same 64 random bits (the alias when the low 32 bits reach the
    threshold), with thresholds 0 and 2^32 in the table."""
    import numba as nb

    from embedlake.workers.train.sgns_parts import noise_pick, pack_alias

    @nb.njit
    def picks(bits, noise):
        out = np.empty(bits.shape[0], np.int64)
        for i in range(bits.shape[0]):
            out[i] = noise_pick(bits[i], noise)
        return out

    counts = np.array([0, 1, 5, 100, 3, 0, 42, 7, 900, 2], np.int64)
    thr, alias = noise_alias(counts, 0.75)
    assert thr.min() == 0 and thr.max() == 1 << 32
    bits = np.random.default_rng(2).integers(0, 2 ** 63, 20000, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    jj = ((bits >> np.uint64(32)) * np.uint64(len(thr))) >> np.uint64(32)
    expected = np.where((bits & np.uint64(0xFFFFFFFF)) < thr[jj], jj.astype(np.int64), alias[jj])
    np.testing.assert_array_equal(picks(bits, pack_alias(thr, alias)), expected)


def test_negatives_follow_counts(graph_walks):
    """Tokens with zero count in `counts` are never drawn as negatives: their output rows stay 0
    when they never appear as a centre either."""
    tokens, offsets, _ = graph_walks
    counts = np.bincount(tokens, minlength=410)
    _, W_out, _ = train_sgns(tokens, offsets, 410, counts=counts, dim=8, window=2, threads=1)
    assert not W_out[400:].any() and W_out[:400].any()


def test_resume_and_progress(graph_walks):
    tokens, offsets, comm = graph_walks
    calls = []
    Wi, Wo, st1 = train_sgns(tokens, offsets, 400, dim=16, window=4, seed=1, threads=1, chunk_tokens=2000,
                             progress=lambda d, t, l: calls.append((d, t, l)))
    assert len(calls) == st1["chunks"] > 5
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and calls[-1][0] == calls[-1][1] == len(tokens)
    Wi0, Wo0 = Wi.copy(), Wo.copy()
    Wi2, Wo2, st2 = train_sgns(tokens, offsets, 400, dim=16, window=4, seed=2, threads=1, lr=0.01,
                               init=(Wi, Wo))
    assert np.array_equal(Wi, Wi0) and np.array_equal(Wo, Wo0)    # inputs untouched
    assert not np.array_equal(Wi2, Wi) and st2["loss_first"] < st1["loss_first"]


@pytest.mark.parametrize("block_tokens, chunk_tokens", [(10 ** 9, None), (333, 5000), (40, 1000)])
def test_threads_take_every_block_once(graph_walks, block_tokens, chunk_tokens):
    """The threads take the text's blocks from one queue (issue 20, sixth pass): whatever the block
    and segment sizes (one block for the whole text, odd sizes, one 40-token sentence a block),
    two threads train every sentence exactly once: the pair and kept-token counts, which each
    sentence's own random stream fixes, equal one thread's, and progress runs once through every
    segment in order. One thread's tables do not depend on the block size at all."""
    import numba as nb
    tokens, offsets, _ = graph_walks
    kw = dict(dim=8, window=4, negatives=2, seed=4, sample=1e-3, epochs=2, chunk_tokens=chunk_tokens)
    Wi1, Wo1, one = train_sgns(tokens, offsets, 400, threads=1, block_tokens=block_tokens, **kw)
    Wi0, Wo0, _ = train_sgns(tokens, offsets, 400, threads=1, block_tokens=1000, **kw)
    assert np.array_equal(Wi1, Wi0) and np.array_equal(Wo1, Wo0)
    calls = []
    for shared in (True, False):
        calls.clear()
        _, _, two = train_sgns(tokens, offsets, 400, threads=2, block_tokens=block_tokens, shared_negatives=shared,
                               progress=lambda d, t, l: calls.append(d), **kw)
        _, _, ref = train_sgns(tokens, offsets, 400, threads=1, block_tokens=block_tokens, shared_negatives=shared,
                               **kw) if not shared else (None, None, one)
        assert two["threads"] == min(2, nb.config.NUMBA_NUM_THREADS)
        assert two["pairs"] == ref["pairs"] and two["tokens_trained"] == ref["tokens_trained"]
        assert len(calls) == two["chunks"] and calls == sorted(calls) and calls[-1] == 2 * len(tokens)


def _draw_probabilities(packed):
    """The exact draw probability of every row of one packed noise table (pack_alias)."""
    n = len(packed)
    thr = (packed & np.uint64((1 << 33) - 1)).astype(np.float64) / 2 ** 32
    alias = (packed >> np.uint64(33)).astype(np.int64)
    return (thr + np.bincount(alias, weights=1.0 - thr, minlength=n)) / n


def test_thread_noise_splits_the_vocabulary():
    """Split negatives (issue 20, ninth and tenth passes): two tables sharing the most frequent runs
    of NOISE_GROUP rows (the head, at least `shared` of the noise mass, drawn with the same
    probability from both) and dealing the other runs between them (disjoint, each covering half of
    the rest's mass), covering every counted word, so that the blocks drawing from either in turn
    draw every word with its unigram ** 0.75 probability; shared=0 splits every run; one thread
    (or split off) keeps the one table of noise_alias; more threads still make two parts."""
    from embedlake.workers.train.sgns_parts import noise_alias, pack_alias
    from embedlake.workers.train.skipgram import NOISE_GROUP, NOISE_SHARED, thread_noise
    counts = (20000 // (1 + np.arange(1000))).astype(np.int64)
    counts[[7, 500]] = 0
    one = pack_alias(*noise_alias(counts, 0.75))
    full = counts ** 0.75 / (counts ** 0.75).sum()
    assert np.array_equal(thread_noise(counts, 0.75, 1, True), one[None])
    assert np.array_equal(thread_noise(counts, 0.75, 2, False), one[None])
    assert np.array_equal(thread_noise(counts, 0.75, 8, True), thread_noise(counts, 0.75, 2, True))  # NOISE_PARTS
    for shared in (0.0, NOISE_SHARED, 0.3):
        tabs = thread_noise(counts, 0.75, 2, True, shared)
        assert tabs.shape == (2, 1000)
        p = [_draw_probabilities(t) for t in tabs]
        both = (p[0] > 0) & (p[1] > 0)
        owner = np.where(both, -1, np.where(p[0] > 0, 0, np.where(p[1] > 0, 1, -2)))
        assert np.array_equal(owner == -2, counts == 0)
        runs = np.split(owner, np.arange(NOISE_GROUP, len(owner), NOISE_GROUP))
        assert all(len(set(r[r != -2])) <= 1 for r in runs)
        head = full[both].sum()                       # the shared runs: the most frequent, just past `shared`
        assert head >= shared and (shared == 0) == (head == 0)
        assert shared == 0 or head - full[np.nonzero(both)[0][-NOISE_GROUP:]].sum() < shared   # no run past it
        assert np.allclose(p[0][both], p[1][both], rtol=0.02) and np.allclose(p[0][both], full[both], rtol=0.02)
        assert np.allclose((p[0] + p[1]) / 2, full, rtol=0.02, atol=1e-9)


def test_two_threads_split_negatives_learn(graph_walks):
    """Two threads with split negatives (the per-pair default) learn the communities as well as one
    thread does; switching the split off gives the same pair counts."""
    tokens, offsets, comm = graph_walks
    kw = dict(dim=32, window=5, negatives=5, seed=0, epochs=2, shared_negatives=False)
    W1, _, one = train_sgns(tokens, offsets, 400, threads=1, **kw)
    W2, _, two = train_sgns(tokens, offsets, 400, threads=2, **kw)
    _, _, off = train_sgns(tokens, offsets, 400, threads=2, split_negatives=False, **kw)
    assert centroid_accuracy(W1, comm) > 0.9 and centroid_accuracy(W2, comm) > 0.9
    assert two["pairs"] == one["pairs"] == off["pairs"]
    assert two["loss_last"] < two["loss_first"] and abs(two["loss_last"] - one["loss_last"]) < 0.05


def test_epochs_and_lr_decay(graph_walks):
    tokens, offsets, comm = graph_walks
    _, _, st = train_sgns(tokens, offsets, 400, dim=16, window=4, epochs=3, threads=0)
    assert st["tokens"] == 3 * len(tokens) and st["loss_last"] < st["loss_first"]
    with pytest.raises(ValueError):
        train_sgns(np.array([0, 5], np.int32), np.array([0, 2], np.int64), 3)


# ----------------------------------------------------------------------------- torch kernel

def test_torch_cpu_matches_numba_quality(graph_walks):
    from embedlake.workers.train.torch_engine import resolve_device, train_sgns_torch
    tokens, offsets, comm = graph_walks
    kw = dict(dim=32, window=5, negatives=5, seed=0, threads=1)
    Wn, _, sn = train_sgns(tokens, offsets, 400, **kw)
    Wt, Ot, st = train_sgns_torch(tokens, offsets, 400, device="cpu", batch_size=512, **kw)
    assert Wt.dtype == np.float32 and Wt.shape == (400, 32) and Ot.shape == (400, 32)
    assert st["device"] == "cpu" and st["engine"] == "torch"
    assert centroid_accuracy(Wt, comm) > 0.9 and centroid_accuracy(Wn, comm) > 0.9
    assert st["loss_last"] < st["loss_first"]
    assert abs(st["loss_last"] - sn["loss_last"]) < 0.1, (st["loss_last"], sn["loss_last"])
    # same sampling maths: pair counts agree within sampling noise (~0.3% here)
    assert abs(st["pairs"] - sn["pairs"]) / sn["pairs"] < 0.01
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_torch_reproducible_and_subsampling(graph_walks):
    from embedlake.workers.train.torch_engine import train_sgns_torch
    tokens, offsets, _ = graph_walks
    kw = dict(dim=8, window=3, seed=5, threads=1, device="cpu", batch_size=256, sample=1e-4)
    n = int(offsets[400])
    a = train_sgns_torch(tokens[:n], offsets[:401], 400, **kw)
    b = train_sgns_torch(tokens[:n], offsets[:401], 400, **kw)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    counts = np.bincount(tokens[:n], minlength=400)
    thr = 1e-4 * counts.sum()
    keep = np.minimum(1.0, (np.sqrt(counts / thr) + 1) * thr / np.maximum(counts, 1))
    exp = float((keep * counts).sum())
    assert exp < 0.5 * n and abs(a[2]["tokens_trained"] - exp) < 5 * np.sqrt(exp), (a[2]["tokens_trained"], exp, n)


def test_ablation_pair_negatives_is_the_parity_mode(graph_walks):
    """ABL_PAIR_NEGATIVES (issue 20's experiment: own negatives per pair on the window step's L1
    buffers) computes word2vec's pair-by-pair update with the same random draws as the parity mode
    shared_negatives=False: equal up to float summation order, and far from the shared kernel."""
    tokens, offsets, _ = graph_walks
    kw = dict(dim=32, window=5, seed=0, threads=1)
    parity, _, st_p = train_sgns(tokens, offsets, 400, shared_negatives=False, **kw)
    pairs, _, st_a = train_sgns(tokens, offsets, 400, ablation=ABL_PAIR_NEGATIVES, **kw)
    shared, _, _ = train_sgns(tokens, offsets, 400, **kw)
    assert st_p["pairs"] == st_a["pairs"]
    assert np.abs(parity - pairs).max() < 1e-3
    assert np.abs(parity - shared).max() > 1e-2


def test_ablation_sequential_window_updates_between_contexts():
    """ABL_SEQUENTIAL_WINDOW steps context after context: without negatives (and with few repeated
    words in a window: random tokens) it is the pair-by-pair order, each context seeing the
    centre's output row as the previous one left it, which the batched window step (all contexts
    against the row as read) is not."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 400, 20000).astype(np.int32)
    offsets = np.arange(0, 20001, 50, dtype=np.int64)
    kw = dict(dim=16, window=5, negatives=0, seed=0, threads=1)
    seq, _, _ = train_sgns(tokens, offsets, 400, ablation=ABL_SEQUENTIAL_WINDOW, **kw)
    pairs, _, _ = train_sgns(tokens, offsets, 400, ablation=ABL_PAIR_NEGATIVES, **kw)
    batch, _, _ = train_sgns(tokens, offsets, 400, **kw)
    assert np.abs(seq - pairs).max() < 1e-5
    assert np.abs(seq - batch).max() > 1e-4


def test_negatives_scheme_defaults_per_pipeline():
    """issue 20: embed-corpus defaults to word2vec's per-pair negatives, graphs to the shared window;
    a corpus run on a kernel without per-pair negatives falls back to the window scheme unless the
    user asked for pair (then the config refuses it)."""
    from embedlake.config import CorpusPipelineConfig, PipelineConfig, load_config
    assert PipelineConfig().train.negatives_per == "window"
    assert CorpusPipelineConfig().train.negatives_per == "pair"
    assert load_config(None, ["train.dim=8"], model=CorpusPipelineConfig).train.negatives_per == "pair"
    torch = load_config(None, ["train.engine=torch"], model=CorpusPipelineConfig)
    assert torch.train.negatives_per == "window" and torch.train.dim == 100
    assert load_config(None, ["train.negatives_per=window"], model=CorpusPipelineConfig).train.negatives_per == "window"
    with pytest.raises(Exception, match="negatives_per=pair"):
        load_config(None, ["train.engine=torch", "train.negatives_per=pair"], model=CorpusPipelineConfig)


def _splitmix64(state: int) -> tuple[int, int]:
    """sgns_parts.splitmix64 on Python ints (mod 2^64), for the reference below."""
    mask = (1 << 64) - 1
    state = (state + 0x9E3779B97F4A7C15) & mask
    z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return state, z ^ (z >> 31)


def _thirty_word_corpus(seed, length, dim):
    """(tokens, offsets, counts, W_in, W_out): a seeded corpus of 30 words in five sentences (one of
    a single word) and small initial tables, for the kernels' reference-order tests."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 30, length).astype(np.int32)
    offsets = np.array([0, 17, 60, 61, 130, length], np.int64)
    counts = np.bincount(tokens, minlength=30).astype(np.int64)
    W0 = ((rng.random((30, dim)) - 0.5) / 8).astype(np.float32)
    O0 = ((rng.random((30, dim)) - 0.5) / 8).astype(np.float32)
    return tokens, offsets, counts, W0, O0


def _reference_noise_draw(state, thr, alias):
    """(next state, row): one noise draw as the kernels make it (the high 32 bits pick a column of
    the alias table, the low 32 choose between it and its alias)."""
    state, r = _splitmix64(state)
    jj = ((r >> 32) * len(thr)) >> 32
    return state, (jj if (r & 0xFFFFFFFF) < thr[jj] else alias[jj])


def _pair_order_reference(tokens, offsets, W_in, W_out, window, negatives, lr0, min_lr, seed, counts):
    """word2vec's pair-by-pair skip-gram (one epoch, no subsampling) written out in numpy with the
    kernel's random streams: centre after centre, context after context, each pair with its own
    negatives; a pair's scores are taken before its steps; the centre's output row steps after
    every pair."""
    from embedlake.workers.train.sgns_parts import sigmoid_tables
    sig, _ = sigmoid_tables()
    thr, alias = noise_alias(counts)
    total = float(offsets[-1] - offsets[0])

    def grad(f, label, lr):
        sg = sig[0] if f <= -6 else sig[1024] if f >= 6 else sig[int((f + 6.0) * (1024 / 12.0) + 0.5)]
        return np.float32((np.float32(label) - sg) * lr)

    for s in range(len(offsets) - 1):
        mask = (1 << 64) - 1
        state = (seed * 0xBF58476D1CE4E5B9 + s * 0x9E3779B97F4A7C15) & mask   # epoch 0
        _, state = _splitmix64(state)
        sent = tokens[offsets[s]:offsets[s + 1]]
        for i, center in enumerate(sent):
            state, r = _splitmix64(state)
            b = 1 + (((r >> 32) * window) >> 32)
            ctx = [sent[j] for j in range(max(0, i - b), min(len(sent), i + b + 1)) if j != i]
            lr = max(min_lr, lr0 - (lr0 - min_lr) * (offsets[s] + i) / total)
            for crow in ctx:
                outs = []
                for _ in range(negatives):
                    state, neg = _reference_noise_draw(state, thr, alias)
                    if neg != center:
                        outs.append(neg)
                C = W_in[crow].copy()
                gs = [grad(float(C @ W_out[center]), 1, lr)] + [grad(float(C @ W_out[o]), 0, lr) for o in outs]
                dIn = gs[0] * W_out[center]
                W_out[center] += gs[0] * C
                for o, g in zip(outs, gs[1:]):
                    dIn += g * W_out[o]
                    W_out[o] += g * C
                W_in[crow] += dIn
    return W_in, W_out


@pytest.mark.parametrize("negatives", [4, 5])
def test_pair_scheme_is_word2vec_order(negatives):
    """shared_negatives=False (sgns_parts.pair_window, the embed-corpus default) computes exactly
    word2vec's pair-by-pair update with the kernel's random draws: checked against a plain numpy
    reference on a small corpus (equal up to float32 summation order). negatives=5 runs the
    one-pass path (five_pair), and on 30 words many of its pairs repeat a draw (the fallback in
    word2vec's order); 4 runs the general path."""
    tokens, offsets, counts, W0, O0 = _thirty_word_corpus(seed=5, length=240, dim=8)
    kw = dict(window=3, negatives=negatives, lr0=0.05, min_lr=1e-4, seed=7)
    W_ref, O_ref = _pair_order_reference(tokens, offsets, W0.copy(), O0.copy(), counts=counts, **kw)
    W, O, st = train_sgns(tokens, offsets, 30, counts=counts, dim=8, window=3, negatives=negatives, lr=0.05,
                          min_lr=1e-4, seed=7, threads=1, init=(W0, O0), shared_negatives=False)
    assert np.abs(W - W_ref).max() < 1e-5 and np.abs(O - O_ref).max() < 1e-5
    assert np.abs(W - W0).max() > 1e-2          # it moved


def _window_order_reference(tokens, offsets, W_in, W_out, window, negatives, lr0, min_lr, seed, counts):
    """The shared-negative window (HogBatch, the graph default) written out in numpy with the
    kernel's random streams: centre after centre, one set of negatives per window (a draw equal to
    the centre skipped), every score taken from the rows as the window found them, then the output
    rows' steps and the contexts' steps added in order (one epoch, no subsampling)."""
    from embedlake.workers.train.sgns_parts import sigmoid_tables
    sig, _ = sigmoid_tables()
    thr, alias = noise_alias(counts)
    total = float(offsets[-1] - offsets[0])
    mask = (1 << 64) - 1

    def grad(f, label, lr):
        sg = sig[0] if f <= -6 else sig[1024] if f >= 6 else sig[int((f + 6.0) * (1024 / 12.0) + 0.5)]
        return np.float32((np.float32(label) - sg) * lr)

    for s in range(len(offsets) - 1):
        _, state = _splitmix64((seed * 0xBF58476D1CE4E5B9 + s * 0x9E3779B97F4A7C15) & mask)   # epoch 0
        sent = tokens[offsets[s]:offsets[s + 1]]
        for i, center in enumerate(sent):
            state, r = _splitmix64(state)
            b = 1 + (((r >> 32) * window) >> 32)
            ctx = [sent[j] for j in range(max(0, i - b), min(len(sent), i + b + 1)) if j != i]
            if not ctx:
                continue
            outs = [center]
            for _ in range(negatives):
                state, neg = _reference_noise_draw(state, thr, alias)
                if neg != center:
                    outs.append(neg)
            lr = max(min_lr, lr0 - (lr0 - min_lr) * (offsets[s] + i) / total)
            C, O = W_in[ctx].copy(), W_out[outs].copy()
            S = C.astype(np.float64) @ O.T.astype(np.float64)
            G = np.array([[grad(S[c, o], o == 0, lr) for o in range(len(outs))] for c in range(len(ctx))], np.float32)
            for o, row in enumerate(outs):
                W_out[row] += G[:, o] @ C
            for c, row in enumerate(ctx):
                W_in[row] += G[c] @ O
    return W_in, W_out


@pytest.mark.parametrize("negatives", [3, 5])
def test_window_scheme_is_hogbatch_order(negatives):
    """The graph default (shared negatives per window) computes exactly the HogBatch window update
    with the kernel's random draws, checked against a plain numpy reference (equal up to float32
    summation order). negatives=5 runs the fused six-output step (sgns_parts.six_window, eighth
    pass) wherever no draw equals the centre; on 30 words many windows do draw the centre (hogbatch,
    the general step), as negatives=3 always does. d=37: a vector body and a remainder."""
    tokens, offsets, counts, W0, O0 = _thirty_word_corpus(seed=6, length=300, dim=37)
    kw = dict(window=4, negatives=negatives, lr0=0.05, min_lr=1e-4, seed=9)
    W_ref, O_ref = _window_order_reference(tokens, offsets, W0.copy(), O0.copy(), counts=counts, **kw)
    W, O, st = train_sgns(tokens, offsets, 30, counts=counts, dim=37, window=4, negatives=negatives, lr=0.05,
                          min_lr=1e-4, seed=9, threads=1, init=(W0, O0))
    assert np.abs(W - W_ref).max() < 1e-5 and np.abs(O - O_ref).max() < 1e-5
    assert np.abs(W - W0).max() > 1e-2 and np.abs(O - O0).max() > 1e-2          # it moved


def test_pair_grad_is_word2vec_table_lookup():
    """The branch-free pair_grad (issue 20, third pass) returns exactly the table values of
    word2vec's clamped form: sigmoid from the nearest of the 1025 points on [-6, 6], the end points
    beyond; loss -log sigmoid from the table, -x below -6 and 0 above 6 (x = f, or -f for a
    negative). Checked on random scores, the clamp edges and the cells' rounding boundaries."""
    import numba as nb

    from embedlake.workers.train.sgns_parts import MAX_EXP, TABLE_SIZE, pair_grad, sigmoid_tables

    @nb.njit
    def grads(fs, positive, lr, sig, logsig):
        loss = np.empty(fs.shape[0], np.float64)
        g = np.empty(fs.shape[0], np.float32)
        for i in range(fs.shape[0]):
            loss[i], g[i] = pair_grad(fs[i], positive, lr, sig, logsig)
        return loss, g

    sig, logsig = sigmoid_tables()
    half = TABLE_SIZE / (2.0 * MAX_EXP)
    edges = (np.arange(TABLE_SIZE + 1) - 0.5) / half - MAX_EXP          # where the nearest point changes
    fs = np.concatenate([np.random.default_rng(3).normal(0, 4, 3000), edges, np.nextafter(edges, 9),
                         [-MAX_EXP, MAX_EXP, -100.0, 100.0, 0.0, np.nextafter(-MAX_EXP, 0), np.nextafter(MAX_EXP, 0)]])
    fs = fs.astype(np.float32)
    lr = np.float32(0.025)
    for positive in (True, False):
        loss, g = grads(fs, positive, lr, sig, logsig)
        for f, l_k, g_k in zip(fs, loss, g):
            x = float(f) if positive else -float(f)
            l_ref = -x if x <= -MAX_EXP else 0.0 if x >= MAX_EXP else -logsig[int((x + MAX_EXP) * half + 0.5)]
            s_ref = sig[0] if f <= -MAX_EXP else sig[TABLE_SIZE] if f >= MAX_EXP else sig[int((f + MAX_EXP) * half + 0.5)]
            g_ref = (np.float32(1.0 if positive else 0.0) - s_ref) * lr
            assert l_k == np.float64(l_ref) and g_k == g_ref, (f, positive)
