"""Parallel, sharded ingest (tasks/ingest.py, workers/graph/ingest_parallel.py) against the one-task
reader (workers/graph/ingest.py:ingest_graph): gathering the shards gives exactly its CSR (indptr,
indices, weights) and node-id map, for S = 1, 2, 3 and an S with empty shards, over int ids (with
and without num_nodes), string ids, weights with every duplicates rule, directed and undirected
graphs, self-loops, several input files and a text file cut into many byte ranges."""
from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlake.config import GraphConfig, InputConfig, SyntheticConfig
from embedlake.errors import InputError, root_cause
from embedlake.lake import Lake
from embedlake.tasks.graph import ingest_sharded
from embedlake.workers.graph.ingest import EdgeSpec, ingest_graph
from embedlake.workers.graph.ingest_parallel import InputRange, iter_range_chunks, line_start, plan_ranges
from embedlake.workers.graph.shards import CSRShard, gather_csr, resolve_shards
from embedlake.workers.graph.store import read_graph

RANGE = 700          # bytes per parse range: every text file below is cut into several


def _edges(path, s, d, w=None, fmt=str, header=None):
    lines = [header] if header else []
    for i in range(len(s)):
        cols = [fmt(s[i]), fmt(d[i])] + ([f"{w[i]:g}"] if w is not None else [])
        lines.append("\t".join(cols))
    data = ("\n".join(lines) + "\n").encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


def _random(seed, m=600, n=80, loops=True):
    rng = np.random.default_rng(seed)
    s, d = rng.integers(0, n, m), rng.integers(0, n, m)
    if not loops:
        d = np.where(s == d, (d + 1) % n, d)
    dup = rng.integers(0, m, m // 5)                      # repeated edges, often with another weight
    s, d = np.concatenate([s, s[dup]]), np.concatenate([d, d[dup]])
    w = rng.integers(1, 9, len(s)) / 4
    return s, d, w


def _gathered(h):
    import ray
    parts = [CSRShard.from_tuple(ray.get(x.csr_ref), x.lo, x.hi, h.num_nodes) for x in h.shards]
    ids = np.concatenate([ray.get(x.ids_ref) for x in h.shards])
    return gather_csr(parts), ids


def _check(tmp_path, uri, S, range_bytes=RANGE, dataset="g", **input_fields):
    """Sharded ingest == one-task ingest (CSR, weights, ids); the lake copy gathers to the same."""
    spec_fields = {k: v for k, v in input_fields.items() if k in EdgeSpec.__dataclass_fields__}
    ref = ingest_graph(uri, EdgeSpec(**spec_fields))
    h = ingest_sharded(str(tmp_path / "lake"), dataset, InputConfig(edges=uri, **input_fields), SyntheticConfig(),
                       GraphConfig(shards=S), max_retries=0, range_bytes=range_bytes)
    assert h.num_shards == S and h.num_nodes == ref.csr.num_nodes
    assert [(x.lo, x.hi) for x in h.shards] == [(s * h.num_nodes // S, (s + 1) * h.num_nodes // S) for s in range(S)]
    csr, ids = _gathered(h)
    np.testing.assert_array_equal(csr.indptr, ref.csr.indptr)
    np.testing.assert_array_equal(csr.indices, ref.csr.indices)
    assert csr.indices.dtype == np.int32 and csr.indptr.dtype == np.int64
    if ref.csr.weights is None:
        assert csr.weights is None
    else:
        assert csr.weights.dtype == np.float32 and csr.weights.tobytes() == ref.csr.weights.tobytes()
    assert ids.dtype == ref.node_ids.dtype and ids.tolist() == ref.node_ids.tolist()
    assert h.meta["stats"] == ref.stats and sum(x.arcs for x in h.shards) == ref.csr.num_arcs
    if S == 1:
        assert h.csr_ref is h.shards[0].csr_ref and h.node_ids_ref is h.shards[0].ids_ref
    else:
        assert h.csr_ref is None and h.node_ids_ref is None
    if not h.meta["reused"]:
        stored, stored_ids, _, meta = read_graph(Lake(str(tmp_path / "lake")), dataset, h.meta["version"])
        np.testing.assert_array_equal(stored.indptr, ref.csr.indptr)
        np.testing.assert_array_equal(stored.indices, ref.csr.indices)
        assert stored_ids.tolist() == ref.node_ids.tolist() and meta.get("shards", 1) == S
    return h


@pytest.fixture(autouse=True)
def _ray(ray_session):
    yield


@pytest.mark.parametrize("S", [1, 2, 3, 200])
def test_int_ids_num_nodes_weighted_undirected(tmp_path, S):
    """num_nodes declared: ids are dense already (isolated nodes 80..99 kept); S=200 > n leaves empty shards."""
    s, d, w = _random(1)
    _edges(tmp_path / "e.tsv", s, d, w)
    _check(tmp_path, str(tmp_path / "e.tsv"), S, weighted=True, num_nodes=100)


@pytest.mark.parametrize("duplicates", ["drop", "sum", "keep"])
@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("self_loops", ["drop", "keep"])
def test_sparse_int_ids_every_rule(tmp_path, duplicates, directed, self_loops):
    """Sparse, negative and large int ids (distributed sort) with each duplicates / self-loop rule."""
    s, d, w = _random(2)
    ids = np.random.default_rng(3).choice(np.arange(-50, 10**12, 7919), size=80, replace=False)
    _edges(tmp_path / "e.tsv", ids[s], ids[d], w)
    for S in (1, 3):
        _check(tmp_path, str(tmp_path / "e.tsv"), S, dataset=f"g{S}", weighted=True, duplicates=duplicates,
               directed=directed, self_loops=self_loops)


@pytest.mark.parametrize("S", [1, 2, 3, 90])
def test_string_ids_sorted_bytewise(tmp_path, S):
    """String ids (with non-ASCII and prefix-sharing names) numbered in byte-wise sorted order."""
    s, d, w = _random(4)
    names = np.array([f"n{i}" for i in range(70)] + ["Z", "a", "ä", "é", "b b", "n1x", "n", "A1", "_", "zz"])
    _edges(tmp_path / "e.tsv", names[s], names[d], w, header="src\tdst\tweight")
    _check(tmp_path, str(tmp_path / "e.tsv"), S, id_type="str", weighted=True, duplicates="sum")


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_several_files_text_gzip_parquet(tmp_path, id_type):
    """A folder of a text file (cut in ranges), a gzip file and a Parquet file, unweighted."""
    s, d, _ = _random(5, m=900, n=150)
    fmt = str if id_type == "int" else (lambda x: f"v{x}")
    folder = tmp_path / "edges"
    folder.mkdir()
    _edges(folder / "a.tsv", s[:400], d[:400], fmt=fmt)
    _edges(folder / "b.tsv.gz", s[400:700], d[400:700], fmt=fmt)
    col = (lambda a: a.astype(np.int64)) if id_type == "int" else (lambda a: np.array([fmt(x) for x in a]))
    pq.write_table(pa.table({"src": col(s[700:]), "dst": col(d[700:])}), folder / "c.parquet", row_group_size=70)
    pq.write_table(pa.table({"src": col(s[:50]), "dst": col(d[:50])}), folder / "d.parquet")
    kinds = [r.kind for r in plan_ranges(str(folder), EdgeSpec(id_type=id_type), RANGE)]
    # c.parquet: 380 rows in row groups of 70 (6 tasks); d.parquet: one group
    assert kinds.count("text") > 2 and kinds.count("stream") == 1 and kinds.count("parquet") == 6 + 1
    for S in (1, 2, 3):
        h = _check(tmp_path, str(folder), S, dataset=f"g{S}", id_type=id_type)
        assert h.meta["ranges"] == len(kinds)


@pytest.mark.parametrize("name,sep,header,comments", [("e.txt", "  ", None, 1), ("e.csv", ",", "src,dst,weight", 1),
                                                      ("e.tsv", "\t", "src\tdst\tweight", 300)])
def test_separator_and_header_of_a_file_cut_in_ranges(tmp_path, name, sep, header, comments):
    """Every range uses the file's separator (detected from its first content line); only the
    range where that line starts may take it for a header, even when comments fill the first
    ranges; runs of spaces and a CSV header read as in one task."""
    s, d, w = _random(7)
    lines = ["% a comment", ""] * comments + ([header] if header else []) + [
        f"{a}{sep}{b}{sep}{c:g}" for a, b, c in zip(s, d, w)]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    for S in (1, 2):
        _check(tmp_path, str(tmp_path / name), S, dataset=f"g{S}", weighted=True)


def test_auto_shards_from_the_budget_and_labels(tmp_path):
    """graph.shards=auto: more shards when the CSR exceeds shard_budget_mb; labels are checked
    against the node ids and stored with the sharded version."""
    import ray
    s, d, w = _random(8)
    names = np.array([f"u{i:03d}" for i in range(80)])
    _edges(tmp_path / "e.tsv", names[s], names[d])
    (tmp_path / "labels.tsv").write_text("".join(f"u{i:03d}\t{'ab'[i % 2]}\n" for i in range(0, 80, 3)))
    cfg = InputConfig(edges=str(tmp_path / "e.tsv"), labels=str(tmp_path / "labels.tsv"), id_type="str")
    h = ingest_sharded(str(tmp_path / "lake"), "g", cfg, SyntheticConfig(), GraphConfig(shard_budget_mb=0.004),
                       max_retries=0, range_bytes=RANGE)
    bound = 2 * int(np.count_nonzero(s != d))               # arcs before dropping duplicates: S is known early
    assert h.num_shards == resolve_shards("auto", 80, bound, False, 0.004) == 2 and h.meta["labelled"]
    ni, li, names_ = ray.get(h.labels_ref)
    assert ni.tolist() == list(range(0, 80, 3)) and names_.tolist() == ["a", "b"]
    _, _, stored_labels, meta = read_graph(Lake(str(tmp_path / "lake")), "g", h.meta["version"])
    assert stored_labels[0].tolist() == ni.tolist() and meta["shards"] == 2
    (tmp_path / "labels.tsv").write_text("u001\ta\nnobody\tb\n")
    with pytest.raises(Exception) as bad:
        ingest_sharded(str(tmp_path / "lake2"), "g", cfg, SyntheticConfig(), GraphConfig(shards=2), max_retries=0)
    assert str(root_cause(bad.value)).endswith("labels.tsv: line 2, field 'node': label for unknown node 'nobody' "
                                               "(not in the edge list)")
    assert not (tmp_path / "lake2").exists()


@pytest.mark.parametrize("ids", ["dense", "sparse", "str"])
def test_labels_numbered_by_bucket_equal_the_one_task_reader(tmp_path, ids):
    """The labels the sharded ingest numbers bucket by bucket (no task holds the whole node-id map)
    equal read_labels on the one-task graph's ids, row for row (so the version's checksum is the
    same), for dense int ids, sparse int ids (numbered by value bucket) and string ids; a label of
    a node that no bucket holds is refused with the first such row's file and line."""
    import ray

    from embedlake.workers.graph.ingest import read_labels
    s, d, _ = _random(5)
    node = {"dense": lambda i: str(i), "sparse": lambda i: str(7 * i + 3), "str": lambda i: f"n{i:03d}"}[ids]
    _edges(tmp_path / "e.tsv", s, d, fmt=node)
    rows = [(node(i), "xyz"[i % 3]) for i in range(79, 0, -2)] + [(node(4), "x"), (node(4), "w")]
    (tmp_path / "labels.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in rows))
    id_type = "str" if ids == "str" else "int"
    extra = {"num_nodes": 80} if ids == "dense" else {}
    cfg = InputConfig(edges=str(tmp_path / "e.tsv"), labels=str(tmp_path / "labels.tsv"), id_type=id_type, **extra)
    h = ingest_sharded(str(tmp_path / "lake"), "g", cfg, SyntheticConfig(), GraphConfig(shards=3), max_retries=0,
                       range_bytes=RANGE)
    ref = read_labels(str(tmp_path / "labels.tsv"), ingest_graph(str(tmp_path / "e.tsv"), EdgeSpec(
        id_type=id_type, **extra)).node_ids, id_type)
    got = ray.get(h.labels_ref)
    assert h.meta["ranges"] > 2 and all(a.tolist() == b.tolist() for a, b in zip(got, ref))
    assert [x.dtype for x in got[:2]] == [np.int32, np.int32]
    with open(tmp_path / "labels.tsv", "a") as f:
        f.write(f"{node(2)}\tx\n{node(200) if ids != 'dense' else '80'}\ty\n")
    with pytest.raises(Exception) as bad:
        ingest_sharded(str(tmp_path / "lake2"), "g", cfg, SyntheticConfig(), GraphConfig(shards=3), max_retries=0,
                       range_bytes=RANGE)
    unknown = node(200) if ids != "dense" else "80"
    assert str(root_cause(bad.value)).endswith(f"labels.tsv: line {len(rows) + 2}, field 'node': label for unknown "
                                               f"node '{unknown}' (not in the edge list)")


def test_range_cuts_keep_every_line_once(tmp_path):
    """Byte ranges cut at line boundaries: every line is read by exactly one range, whatever the cut."""
    text = b"".join(b"%d\t%d\n" % (i, 10**6 + i * 37) for i in range(300)) + b"7\t8"   # no final newline
    path = tmp_path / "e.tsv"
    path.write_bytes(text)
    for size in (1, 5, 13, 64, 1000, len(text)):
        got = []
        with open(path, "rb") as f:
            for a in range(0, len(text), size):
                start = line_start(f, a)
                got += [body for _, body in iter_range_chunks(f, start, min(a + size, len(text)), 1 << 20,
                                                              hashlib.sha256())]
        assert b"".join(got) == text, size


def test_reingest_reuses_and_version_is_shard_independent(tmp_path):
    s, d, w = _random(6)
    _edges(tmp_path / "e.tsv", s, d, w)
    first = _check(tmp_path, str(tmp_path / "e.tsv"), 3, weighted=True)
    again = _check(tmp_path, str(tmp_path / "e.tsv"), 3, weighted=True)
    other = _check(tmp_path, str(tmp_path / "e.tsv"), 1, weighted=True)
    assert not first.meta["reused"] and again.meta["reused"] and other.meta["reused"]
    assert first.meta["version"] == again.meta["version"] == other.meta["version"]
    files = sorted(p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*") if p.is_file())
    base = f"graphs/g/{first.meta['version']}"
    assert files == sorted([f"{base}/meta.json"] + [f"{base}/shards=3/part-{i:04d}/{n}" for i in range(3) for n in
                                                    ("indptr.npy", "indices.npy", "weights.npy", "nodes.parquet")])


def test_bad_row_in_a_later_range_is_named_by_file_and_number(tmp_path):
    """A bad line deep in a file read in byte ranges: the same one-line error as the one-task reader."""
    lines = [f"{i}\t{i + 1}" for i in range(400)]
    lines[333] = "12\tx"
    path = tmp_path / "e.tsv"
    path.write_text("# comment\n" + "\n".join(lines) + "\n")
    with pytest.raises(InputError) as one:
        ingest_graph(str(path), EdgeSpec())
    with pytest.raises(Exception) as sharded:
        ingest_sharded(str(tmp_path / "lake"), "g", InputConfig(edges=str(path)), SyntheticConfig(),
                       GraphConfig(shards=2), max_retries=0, range_bytes=300)
    err = root_cause(sharded.value)
    assert isinstance(err, InputError) and str(err) == str(one.value)
    assert str(err).endswith("e.tsv: line 335, field 'dst': node id 'x' is not an integer (input.id_type=int; "
                             "use -p input.id_type=str for string ids)")
    assert not (tmp_path / "lake").exists() or not any(p.is_file() for p in (tmp_path / "lake").rglob("*"))


def test_bad_weight_in_a_later_parquet_row_group(tmp_path):
    """Each row group is its own task; a bad weight names the row of the file, as the one-file reader."""
    w = np.ones(100)
    w[77] = -1.0
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"src": np.arange(100), "dst": np.arange(1, 101), "weight": w}), path, row_group_size=30)
    assert [r.group for r in plan_ranges(str(path), EdgeSpec(), RANGE)] == [0, 1, 2, 3]
    with pytest.raises(InputError) as one:
        ingest_graph(str(path), EdgeSpec(weighted=True))
    with pytest.raises(Exception) as sharded:
        ingest_sharded(str(tmp_path / "lake"), "g", InputConfig(edges=str(path), weighted=True), SyntheticConfig(),
                       GraphConfig(shards=2), max_retries=0)
    assert str(root_cause(sharded.value)) == str(one.value)
    assert str(one.value).endswith("e.parquet: line 78, field 'weight': weight '-1.0' must be a finite number > 0")


def test_synthetic_graph_split_into_shards(tmp_path):
    import ray
    syn = SyntheticConfig(nodes=300)
    one = ingest_sharded(str(tmp_path / "lake"), "p", InputConfig(), syn, GraphConfig(shards=1), max_retries=0)
    three = ingest_sharded(str(tmp_path / "lake2"), "p", InputConfig(), syn, GraphConfig(shards=3), max_retries=0)
    whole = ray.get(one.csr_ref)
    csr, ids = _gathered(three)
    np.testing.assert_array_equal(csr.indptr, whole[0])
    np.testing.assert_array_equal(csr.indices, whole[1])
    assert ids.tolist() == list(range(300)) and three.meta["version"] == one.meta["version"]
    gathered = ray.get(three.gathered_csr_ref())
    np.testing.assert_array_equal(gathered[1], whole[1])
    assert ray.get(three.gathered_node_ids_ref()).tolist() == list(range(300))

