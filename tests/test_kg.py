"""Knowledge-graph embeddings: triples input, the chunked-negative kernel against a numpy reference,
filtered evaluation against a brute-force loop, determinism and learning on a tiny graph."""
from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlake.errors import InputError
from embedlake.workers.kg.evaluate import evaluate, filtered_ranks, known_answers, side_ranks
from embedlake.workers.kg.kernels import TrainSettings, new_state
from embedlake.workers.kg.models import HEAD, MODELS, TAIL, KGModel, init_tables
from embedlake.workers.kg.train import train, train_chunk
from embedlake.workers.kg.triples import load_triples, read_triples


# ---- triples ---------------------------------------------------------------------------------------
def write(path, text):
    path.write_text(text)
    return str(path)


def test_string_ids_are_sorted_and_parts_encoded(tmp_path):
    tr = write(tmp_path / "train.tsv", "b\tlikes\ta\na\tknows\tc\nc\tlikes\tb\n")
    va = write(tmp_path / "valid.tsv", "a\tlikes\tb\n")
    te = write(tmp_path / "test.tsv", "c\tknows\ta\n")
    ts = load_triples(tr, va, te)
    assert list(ts.entities) == ["a", "b", "c"] and list(ts.relations) == ["knows", "likes"]
    assert ts.train.tolist() == [[1, 1, 0], [0, 0, 2], [2, 1, 1]]
    assert ts.valid.tolist() == [[0, 1, 1]] and ts.test.tolist() == [[2, 0, 0]]
    assert ts.degrees().tolist() == [2, 2, 2]


def test_csv_with_header_and_parquet_read_the_same(tmp_path):
    csv = write(tmp_path / "kg.csv", "head,relation,tail\nx,r,y\ny,r,z\n")
    path = tmp_path / "kg.parquet"
    pq.write_table(pa.table({"head": ["x", "y"], "relation": ["r", "r"], "tail": ["y", "z"]}), path)
    a, b = read_triples(csv), read_triples(str(path))
    assert [list(c) for c in a.cols] == [list(c) for c in b.cols] == [["x", "y"], ["r", "r"], ["y", "z"]]
    assert a.line.tolist() == [2, 3]


def test_wrong_column_count_names_file_and_line(tmp_path):
    tr = write(tmp_path / "train.tsv", "a\tr\tb\nb\tr\n")
    with pytest.raises(InputError, match=r"train.tsv: line 2: expected 3 fields"):
        load_triples(tr)


def test_empty_relation_names_line(tmp_path):
    tr = write(tmp_path / "train.tsv", "a\tr\tb\n\nb\t \tc\n")
    with pytest.raises(InputError, match=r"line 3: empty relation"):
        load_triples(tr)


def test_unseen_test_entity_refused_dropped_or_kept(tmp_path):
    tr = write(tmp_path / "train.tsv", "a\tr\tb\nb\tr\tc\n")
    te = write(tmp_path / "test.tsv", "a\tr\tc\nz\tr\ta\n")
    with pytest.raises(InputError, match=r"test.tsv: line 2: test triple's entity 'z' does not occur"):
        load_triples(tr, None, te)
    dropped = load_triples(tr, None, te, unseen="drop")
    assert dropped.test.tolist() == [[0, 0, 2]] and dropped.info["dropped_unseen"]["test"] == 1
    kept = load_triples(tr, None, te, unseen="keep")
    assert list(kept.entities) == ["a", "b", "c", "z"] and kept.test.tolist() == [[0, 0, 2], [3, 0, 0]]
    bad_rel = write(tmp_path / "test2.tsv", "a\tq\tb\n")
    with pytest.raises(InputError, match=r"relation 'q'"):
        load_triples(tr, None, bad_rel, unseen="keep")


def test_seeded_split_is_deterministic_and_closed_over_train(tmp_path):
    rng = np.random.default_rng(3)
    lines = "".join(f"e{rng.integers(30)}\tr{rng.integers(3)}\te{rng.integers(30)}\n" for _ in range(400))
    tr = write(tmp_path / "kg.tsv", lines)
    a = load_triples(tr, valid_share=0.1, test_share=0.1, seed=5)
    b = load_triples(tr, valid_share=0.1, test_share=0.1, seed=5)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.train, b.train)
    assert a.train.shape[0] + a.valid.shape[0] + a.test.shape[0] == 400
    seen = set(a.train[:, 0]) | set(a.train[:, 2])
    assert set(a.test[:, 0]) <= seen and set(a.test[:, 2]) <= seen and a.test.shape[0] > 20


# ---- kernel against a numpy reference ------------------------------------------------------------------
def ref_score(model: KGModel, e, r, h, rel, t):
    """Score of (h, rel, t) in float64 from the papers' formulas (complex numbers for ComplEx / RotatE)."""
    hv, rv, tv = e[h], r[rel], e[t]
    k = model.dim // 2
    if model.name == "transe":
        return model.gamma - np.sum(np.abs(hv + rv - tv) ** model.norm) ** (1.0 / model.norm)
    if model.name == "distmult":
        return np.sum(hv * rv * tv)
    hc, tc = hv[:k] + 1j * hv[k:], tv[:k] + 1j * tv[k:]
    if model.name == "complex":
        return np.real(np.sum(hc * (rv[:k] + 1j * rv[k:]) * np.conj(tc)))
    return model.gamma - np.sum(np.abs(hc * np.exp(1j * rv) - tc))


def ref_query_loss(pos, negs, loss, margin):
    negs = np.array(negs)
    if loss == "softmax":
        allv = np.concatenate([[pos], negs])
        return np.log(np.sum(np.exp(allv - allv.max()))) + allv.max() - pos
    return np.sum(np.maximum(0.0, margin - pos + negs))


def ref_chunk_loss(model, e, r, h, rel, t, negs_t, negs_h, s: TrainSettings):
    """The chunk's loss as kernels.py documents it: both sides, the true entity left out of the
    negatives, logistic negatives averaged over the drawn set, N3 on the positives' rows."""
    total = 0.0
    for i in range(len(h)):
        pos = ref_score(model, e, r, h[i], rel[i], t[i])
        for side, negs in ((TAIL, negs_t), (HEAD, negs_h)):
            true = t[i] if side == TAIL else h[i]
            sc = [ref_score(model, e, r, h[i], rel[i], n) if side == TAIL else ref_score(model, e, r, n, rel[i], t[i])
                  for n in negs if n != true]
            if s.loss == "logistic":
                total += np.log1p(np.exp(-pos)) + np.sum(np.log1p(np.exp(sc))) / len(negs)
            else:
                total += ref_query_loss(pos, sc, s.loss, s.margin)
        total += ref_n3(model, e[h[i]], s.reg_weight) + ref_n3(model, e[t[i]], s.reg_weight)
        if model.name != "rotate":
            total += ref_n3(model, r[rel[i]], s.reg_weight) if model.name != "transe" else 0.0
    return total


def ref_n3(model, row, w):
    if model.name == "transe":
        return 0.0
    if model.complex:
        k = model.dim // 2
        return w * np.sum(np.abs(row[:k] + 1j * row[k:]) ** 3)
    return w * np.sum(np.abs(row) ** 3)


def numeric_grad(fn, x, eps=1e-6):
    g = np.zeros_like(x)
    for idx in itertools.product(*map(range, x.shape)):
        old = x[idx]
        x[idx] = old + eps
        up = fn()
        x[idx] = old - eps
        down = fn()
        x[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


CASES = [("transe", 1, "margin"), ("transe", 2, "softmax"), ("distmult", 1, "softmax"), ("distmult", 1, "logistic"),
         ("complex", 1, "softmax"), ("complex", 1, "margin"), ("rotate", 1, "logistic"), ("rotate", 1, "softmax")]


@pytest.mark.parametrize("name,norm,loss", CASES)
def test_one_sgd_step_equals_numpy_reference(name, norm, loss):
    """One chunk update with SGD (lr 1) moves every row by exactly minus the gradient of the
    reference loss (central differences in float64), for every model and loss."""
    model = KGModel(name, 6, norm, gamma=2.0 if name in ("transe", "rotate") else 0.0)
    ent, rel = init_tables(model, 7, 2, seed=1)
    rng = np.random.default_rng(2)
    ent = (ent + rng.normal(0, 0.4, ent.shape)).astype(np.float32)
    rel = (rel + rng.normal(0, 0.4, rel.shape)).astype(np.float32)
    h, r, t = np.array([0, 3, 5]), np.array([0, 1, 1]), np.array([2, 2, 6])
    negs_t, negs_h = np.array([1, 2, 4, 4]), np.array([6, 0, 3, 1])       # repeats, and true entities
    s = TrainSettings(loss=loss, margin=3.0, optimizer="sgd", lr=1.0, regularizer="n3",
                      reg_weight=0.0 if name == "transe" else 0.05)
    e64, r64 = ent.astype(np.float64), rel.astype(np.float64)
    fn = lambda: ref_chunk_loss(model, e64, r64, h, r, t, negs_t, negs_h, s)  # noqa: E731
    g_ent, g_rel = numeric_grad(fn, e64), numeric_grad(fn, r64)
    st = new_state(ent.copy(), rel.copy(), "sgd")
    loss_value = train_chunk(model, st, h, r, t, negs_t, negs_h, s)
    reg = sum(ref_n3(model, e64[x], s.reg_weight) for x in np.concatenate([h, t]))
    reg += sum(ref_n3(model, r64[x], s.reg_weight) for x in r) if name not in ("rotate", "transe") else 0.0
    assert loss_value == pytest.approx(fn() - reg, rel=1e-4)
    np.testing.assert_allclose(ent - st.ent, g_ent, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(rel - st.rel, g_rel, atol=2e-4, rtol=1e-3)


def test_adagrad_steps_follow_their_formulas():
    """Elementwise and row-wise Adagrad scale the SGD step by the accumulated squared gradients."""
    model = KGModel("distmult", 4)
    ent, rel = init_tables(model, 5, 1, seed=0, init_scale=0.3)
    h, r, t, negs = np.array([0]), np.array([0]), np.array([1]), np.array([2, 3])
    sgd = new_state(ent.copy(), rel.copy(), "sgd")
    train_chunk(model, sgd, h, r, t, negs, negs, TrainSettings(optimizer="sgd", lr=1.0, reg_weight=0.0))
    g = ent - sgd.ent
    for opt in ("adagrad", "row_adagrad"):
        st = new_state(ent.copy(), rel.copy(), opt)
        train_chunk(model, st, h, r, t, negs, negs, TrainSettings(optimizer=opt, lr=0.1, reg_weight=0.0))
        acc = g * g if opt == "adagrad" else np.mean(g * g, axis=1, keepdims=True)
        want = np.where(g != 0, ent - 0.1 * g / (np.sqrt(acc) + 1e-10), ent)
        np.testing.assert_allclose(st.ent, want, rtol=1e-5, atol=1e-6)


# ---- training --------------------------------------------------------------------------------------
def tiny_kg(num_entities=40, seed=0):
    """A learnable toy KG: relation 0 maps e -> e+1, relation 1 maps e -> e+2 (chains, no cycle:
    TransE cannot close a cycle)."""
    e = np.arange(num_entities)
    tri = np.concatenate([np.stack([e[:-1], np.zeros(num_entities - 1, int), e[1:]], 1),
                          np.stack([e[:-2], np.ones(num_entities - 2, int), e[2:]], 1)])
    order = np.random.default_rng(seed).permutation(tri.shape[0])
    return tri[order[10:]].astype(np.int64), tri[order[:10]].astype(np.int64)


def run_tiny(name, loss="softmax", epochs=60, seed=0, negatives=0, sampling="uniform", dim=16):
    model = KGModel(name, dim, 1, gamma=4.0 if name in ("transe", "rotate") else 0.0)
    train_tri, test_tri = tiny_kg()
    ent, rel = init_tables(model, 40, 2, seed, init_scale=0.1)
    st = new_state(ent, rel, "adagrad")
    s = TrainSettings(epochs=epochs, batch=16, negatives=negatives, negative_sampling=sampling, loss=loss,
                      lr=0.1, reg_weight=0.0, seed=seed)
    train(model, st, train_tri, s, np.bincount(train_tri[:, [0, 2]].ravel(), minlength=40))
    return model, st, test_tri, np.concatenate([train_tri, test_tri])


@pytest.mark.parametrize("name", MODELS)
def test_every_model_learns_the_tiny_graph(name):
    """Every model fits the training chains; ComplEx and RotatE, which can represent a directed
    chain exactly (DistMult is symmetric; TransE memorises at this size), also rank the held-out
    edges first."""
    model, st, test_tri, known = run_tiny(name, epochs=40)
    fit = evaluate(model, st.ent, st.rel, tiny_kg()[0], known)
    assert fit["mrr"] > 0.75, fit
    if name in ("complex", "rotate"):
        held = evaluate(model, st.ent, st.rel, test_tri, known)
        assert held["mrr"] > 0.95, held


def test_training_is_bit_identical_at_a_seed():
    a = run_tiny("complex", epochs=3, negatives=8, sampling="degree")[1]
    b = run_tiny("complex", epochs=3, negatives=8, sampling="degree")[1]
    c = run_tiny("complex", epochs=3, negatives=8, sampling="degree", seed=1)[1]
    assert np.array_equal(a.ent, b.ent) and np.array_equal(a.rel, b.rel) and not np.array_equal(a.ent, c.ent)
    assert [x["loss"] for x in a.history] == [x["loss"] for x in b.history]


# ---- evaluation ------------------------------------------------------------------------------------
def brute_ranks(model, ent, rel, test, known):
    """Filtered realistic ranks by a plain loop over every entity, scores in float64."""
    true_set = {tuple(x) for x in known.tolist()}
    e64, r64 = ent.astype(np.float64), rel.astype(np.float64)
    out = {"tail": [], "head": []}
    for h, r, t in test.tolist():
        for side in ("tail", "head"):
            cand = [(h, r, x) if side == "tail" else (x, r, t) for x in range(ent.shape[0])]
            true = ref_score(model, e64, r64, h, r, t)
            others = [ref_score(model, e64, r64, *c) for c in cand if c not in true_set]
            higher = sum(o > true + 1e-9 for o in others)
            tied = sum(abs(o - true) <= 1e-9 for o in others)
            out[side].append(1 + higher + tied / 2)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_filtered_ranks_equal_a_brute_force_loop(name):
    model = KGModel(name, 8, 2, gamma=1.0)
    rng = np.random.default_rng(4)
    ent, rel = init_tables(model, 15, 3, seed=4, init_scale=0.5)
    known = np.unique(np.stack([rng.integers(0, 15, 80), rng.integers(0, 3, 80), rng.integers(0, 15, 80)], 1),
                      axis=0)
    test = known[rng.permutation(known.shape[0])[:20]]
    want = brute_ranks(model, ent, rel, test, known)
    for side, name_ in ((TAIL, "tail"), (HEAD, "head")):
        got = side_ranks(model, ent, rel, test, known_answers(known, 3, side), side, batch=7)
        np.testing.assert_array_equal(got, np.array(want[name_]))
    m = evaluate(model, ent, rel, test, known, batch=6)
    allr = np.array(want["tail"] + want["head"])
    assert m["mrr"] == pytest.approx(np.mean(1 / allr), abs=1e-6)
    assert m["hits@10"] == pytest.approx(np.mean(allr <= 10), abs=1e-6)


def test_ties_count_half_and_filtered_answers_do_not_count():
    scores = np.array([[1.0, 3.0, 2.0, 2.0, 5.0]], np.float32)
    # target 2 (score 2): entity 1 and 4 score higher, entity 3 ties; entity 4 is another known answer
    got = filtered_ranks(scores, np.array([2]), np.array([0]), np.array([2]), np.array([2, 4]))
    assert got.tolist() == [1 + 1 + 0.5]


# ---- torch kernel (CPU device) ----------------------------------------------------------------------
@pytest.mark.parametrize("name,norm,loss", CASES)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "row_adagrad"])
def test_torch_chunk_matches_the_numba_chunk(name, norm, loss, optimizer):
    from embedlake.workers.kg.torch_engine import TorchTrainer
    model = KGModel(name, 6, norm, gamma=2.0 if name in ("transe", "rotate") else 0.0)
    ent, rel = init_tables(model, 7, 2, seed=1, init_scale=0.3)
    h, r, t = np.array([0, 3, 5]), np.array([0, 1, 1]), np.array([2, 2, 6])
    negs_t, negs_h = np.array([1, 2, 4, 4]), np.array([6, 0, 3, 1])
    s = TrainSettings(loss=loss, margin=3.0, optimizer=optimizer, lr=0.05, reg_weight=0.05)
    a = new_state(ent.copy(), rel.copy(), optimizer)
    b = new_state(ent.copy(), rel.copy(), optimizer)
    la = train_chunk(model, a, h, r, t, negs_t, negs_h, s)
    tr = TorchTrainer(model, b, s, "cpu")
    lb = tr.chunk(h, r, t, negs_t, negs_h)
    tr.write_back(b)
    assert la == pytest.approx(lb, rel=1e-5)
    for x, y in ((a.ent, b.ent), (a.rel, b.rel), (a.ent_acc, b.ent_acc), (a.rel_acc, b.rel_acc)):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


def test_torch_training_learns_like_numba():
    from embedlake.workers.kg.torch_engine import train_torch
    model = KGModel("complex", 16)
    train_tri, test_tri = tiny_kg()
    ent, rel = init_tables(model, 40, 2, 0, init_scale=0.1)
    s = TrainSettings(epochs=40, batch=16, negatives=0, lr=0.1, reg_weight=0.0)
    st = train_torch(model, new_state(ent, rel, "adagrad"), train_tri, s)
    m = evaluate(model, st.ent, st.rel, test_tri, np.concatenate([train_tri, test_tri]))
    assert m["mrr"] > 0.95 and st.epoch == 40


# ---- partitioned training ----------------------------------------------------------------------------
def test_partitioned_with_one_partition_is_the_one_table_engine():
    from embedlake.workers.kg.partitioned import train_partitioned
    model = KGModel("complex", 8)
    train_tri, _ = tiny_kg()
    ent, rel = init_tables(model, 40, 2, 0, init_scale=0.1)
    s = TrainSettings(epochs=3, batch=16, negatives=8, lr=0.1, reg_weight=0.01)
    a = train(model, new_state(ent.copy(), rel.copy(), "adagrad"), train_tri, s)
    b = train_partitioned(model, new_state(ent.copy(), rel.copy(), "adagrad"), train_tri, s, parts=1, workers=2)
    assert np.array_equal(a.ent, b.ent) and np.array_equal(a.rel, b.rel) and np.array_equal(a.ent_acc, b.ent_acc)


def test_partition_rounds_are_disjoint_and_cover_every_bucket():
    from embedlake.workers.kg.partitioned import chunk_triples, partition, rounds, schedule
    train_tri, _ = tiny_kg()
    plan = partition(40, train_tri, 4, seed=0)
    assert sorted(np.concatenate(plan.members).tolist()) == list(range(40))
    assert sorted(np.concatenate(list(plan.buckets.values())).tolist()) == list(range(train_tri.shape[0]))
    sched = rounds(plan.buckets, 0, 0, workers=2)
    assert sorted(b for r in sched for b in r) == sorted(plan.buckets)
    for r in sched:
        used = [p for b in r for p in {b[0], b[1]}]
        assert len(r) <= 2 and len(used) == len(set(used))
    # edge chunks: every bucket's triples split into 3 disjoint parts, one per pass over the buckets
    passes = schedule(plan.buckets, 0, 0, 2, 3)
    assert [c for c, _ in passes] == [0, 1, 2]
    for b, idx in plan.buckets.items():
        got = np.concatenate([chunk_triples(plan, b, 0, 0, c, 3) for c in range(3)])
        assert sorted(got.tolist()) == sorted(idx.tolist())
    assert np.array_equal(chunk_triples(plan, (0, 1), 0, 0, 0, 1), plan.buckets[(0, 1)])


@pytest.mark.parametrize("lent_rows, negatives, edge_chunks, lowest", [(0, 0, 1, 0.75), (3, 8, 1, 0.99),
                                                                     (10, 8, 2, 0.85)])
def test_partitioned_training_learns_the_tiny_graph(lent_rows, negatives, edge_chunks, lowest):
    """P = 4 on 2 workers. With PBG's rule (lent_rows 0) a bucket's negatives never include the other
    30 of the 40 entities and the held-out MRR stays near .83 (measured; the one-table engine: 1.0);
    with 3 rows lent by each other partition it is 1.0, with 10 and two edge chunks (buckets of ~2
    triples per pass here) .89 (measured: so small a graph says little; FB15k-237 is the test)."""
    from embedlake.workers.kg.partitioned import train_partitioned
    model = KGModel("complex", 16)
    train_tri, test_tri = tiny_kg()
    ent, rel = init_tables(model, 40, 2, 0, init_scale=0.1)
    s = TrainSettings(epochs=60, batch=16, negatives=negatives, lr=0.1, reg_weight=0.0)
    st = train_partitioned(model, new_state(ent, rel, "adagrad"), train_tri, s, parts=4, workers=2,
                           lent_rows=lent_rows, edge_chunks=edge_chunks)
    m = evaluate(model, st.ent, st.rel, test_tri, np.concatenate([train_tri, test_tri]))
    assert m["mrr"] > lowest, m
    if lent_rows == 0:
        assert m["mrr"] < 0.9, m


def test_lent_rows_learn_and_their_changes_go_back():
    """A bucket trains the rows lent to it too and returns their changes; absorb_all adds them to
    the lending partition's rows and Adagrad state at the lent positions, leaving the others."""
    from embedlake.workers.kg.partitioned import absorb_all, lend_rows, train_bucket
    model = KGModel("complex", 8)
    train_tri, _ = tiny_kg()
    ent, rel = init_tables(model, 40, 2, 0, init_scale=0.1)
    st = new_state(ent, rel, "adagrad")
    members = [np.arange(0, 20), np.arange(20, 40)]
    idx, rows, accs = lend_rows(st.ent[members[1]], st.ent_acc[members[1]], 5, 0, 0, 0, 1)
    assert idx.shape == (5,) and np.array_equal(rows, st.ent[members[1]][idx])
    mine = train_tri[(train_tri[:, 0] < 20) & (train_tri[:, 2] < 20)]
    out = train_bucket(model, TrainSettings(batch=8, negatives=10), (0, 0), members[:1], [st.ent[members[0]]],
                       [st.ent_acc[members[0]]], st.rel, st.rel_acc, mine, 0, 2, [(idx, rows, accs)], 40)
    (drow, dacc), = out[5]
    assert np.abs(drow).sum() > 0 and (dacc >= 0).all()
    new_rows, new_accs = absorb_all(st.ent[members[1]], st.ent_acc[members[1]], idx, [(drow, dacc)])
    assert np.array_equal(new_rows[idx], rows + drow) and np.array_equal(new_accs[idx], accs + dacc)
    rest = np.setdiff1d(np.arange(20), idx)
    assert np.array_equal(new_rows[rest], st.ent[members[1]][rest])


def test_bucket_negatives_cover_every_entity_equally():
    """A bucket holding 10 of 40 entities with 10 lent rows draws its own rows a quarter of the time."""
    from embedlake.workers.kg.partitioned import bucket_sampler
    draw = bucket_sampler(10, 10, 40, TrainSettings(negatives=30))
    rng = np.random.default_rng(0)
    got = np.concatenate([draw(rng) for _ in range(200)])
    assert got.shape == (6000,) and got.min() == 0 and got.max() == 19
    assert abs((got < 10).mean() - 0.25) < 0.03


def test_codec_round_trips_keep_the_ranking_close():
    """Entity tables through fp16 / int8 keep MRR within .02 of float32 on the tiny graph; lowrank
    to 2 of 16 columns loses more (the table is measured, not assumed)."""
    from types import SimpleNamespace

    from embedlake.config import CompressConfig
    from embedlake.workers.kg.stages import codec_metrics
    from embedlake.workers.kg.triples import TripleSet
    model, st, test_tri, known = run_tiny("complex", epochs=40)
    ts = TripleSet(np.arange(40).astype(str), np.array(["a", "b"]), tiny_kg()[0], np.zeros((0, 3), np.int64),
                   test_tri)
    kg = SimpleNamespace(model="complex", dim=16, norm=1, gamma=0.0, threads=1, eval_batch=100)
    full = evaluate(model, st.ent, st.rel, test_tri, known)
    got = codec_metrics(ts, kg, ["fp16", "int8", "lowrank"], CompressConfig(lowrank_dim=2), (st.ent, st.rel))
    assert abs(got["fp16"]["mrr"] - full["mrr"]) < 0.02 and abs(got["int8"]["mrr"] - full["mrr"]) < 0.02
    assert got["int8"]["bytes_per_vector"] < 4 * 16 and got["lowrank"]["mrr"] < full["mrr"]
