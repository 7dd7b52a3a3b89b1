"""Ingest: formats, id mapping, CSR, and bad input refused with file and line."""
import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from embedlake.errors import InputError
from embedlake.workers.graph.csr import build_csr
from embedlake.workers.graph.ingest import PARSE_ROWS, EdgeSpec, ingest_graph, iter_line_chunks, read_labels

TRIANGLE = "src\tdst\n0\t1\n1\t2\n2\t0\n"


def _w(path, text, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    elif str(path).endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    else:
        path.write_text(text)
    return str(path)


def test_csr_symmetrised_sorted_deduplicated():
    g = build_csr(np.array([2, 0, 0, 1, 1]), np.array([0, 1, 1, 1, 2]), 4)
    assert g.indptr.tolist() == [0, 2, 4, 6, 6]          # self-loop 1-1 dropped, duplicate 0-1 dropped
    assert g.indices.tolist() == [1, 2, 0, 2, 0, 1]
    d = build_csr(np.array([0, 0]), np.array([1, 1]), 2, np.array([1.0, 2.0]), directed=True, duplicates="sum")
    assert d.indices.tolist() == [1] and d.weights.tolist() == [3.0]


@pytest.mark.parametrize("name, text", [
    ("e.tsv", TRIANGLE), ("e.csv", "src,dst\n0,1\n1,2\n2,0\n"), ("e.txt", "# comment\n0 1\n1  2\n\n2 0\n"),
    ("e.tsv.gz", TRIANGLE), ("e.tsv.zst", TRIANGLE), ("e.edges", "0\t1\r\n1\t2\r\n2\t0\r\n"),
])
def test_text_formats(tmp_path, name, text):
    g = ingest_graph(_w(tmp_path / name, text), EdgeSpec())
    assert g.csr.num_nodes == 3 and g.csr.num_arcs == 6 and g.input_rows == 3


def test_parquet_folder_glob_and_string_ids(tmp_path):
    pq.write_table(pa.table({"src": ["a", "b"], "dst": ["b", "c"]}), tmp_path / "d" / "p0.parquet") \
        if (tmp_path / "d").mkdir() is None else None
    pq.write_table(pa.table({"src": ["c"], "dst": ["d"]}), tmp_path / "d" / "p1.parquet")
    g = ingest_graph(str(tmp_path / "d"), EdgeSpec(id_type="str"))
    assert list(g.node_ids) == ["a", "b", "c", "d"] and g.csr.num_arcs == 6
    g2 = ingest_graph(str(tmp_path / "d" / "p*.parquet"), EdgeSpec(id_type="str"))
    assert np.array_equal(g2.csr.indices, g.csr.indices)


def test_sparse_int_ids_are_mapped_and_isolated_nodes_kept(tmp_path):
    g = ingest_graph(_w(tmp_path / "e.tsv", "10\t20\n20\t30000000000\n"), EdgeSpec())
    assert g.node_ids.tolist() == [10, 20, 30000000000]
    g = ingest_graph(_w(tmp_path / "f.tsv", TRIANGLE), EdgeSpec(num_nodes=5))
    assert g.csr.num_nodes == 5 and g.stats["isolated_nodes"] == 2


def test_weighted(tmp_path):
    g = ingest_graph(_w(tmp_path / "w.tsv", "0\t1\t0.5\n1\t2\t2\n"), EdgeSpec(weighted=True))
    assert g.csr.weights.tolist() == [0.5, 0.5, 2.0, 2.0]


@pytest.mark.parametrize("name, text, spec, needle", [
    ("bad.tsv", "src\tdst\n0\t1\n1\n2\t0\n", {}, r"bad.tsv: line 3: expected 2 columns"),
    ("bad.tsv", "0\t1\n1\tx\n", {}, r"bad.tsv: line 2, field 'dst': node id 'x' is not an integer"),
    ("bad.csv", "src,dst\n0,1\n1,2,3,4\n", {}, r"bad.csv: line 3: expected 2 columns"),
    ("w.tsv", "0\t1\t1.0\n1\t2\tnan\n", {"weighted": True}, r"w.tsv: line 2, field 'weight'"),
    ("w.tsv", "0\t1\t-2\n", {"weighted": True}, r"w.tsv: line 1, field 'weight': weight '-2' must be"),
    ("w.tsv", "0\t1\n", {"weighted": True}, r"w.tsv: line 1: expected 3 columns"),
    ("empty.tsv", "", {}, r"empty.tsv: the graph is empty"),
    ("hdr.tsv", "src\tdst\n", {}, r"hdr.tsv: the graph is empty"),
    ("loops.tsv", "1\t1\n2\t2\n", {}, r"empty after dropping self-loops"),
])
def test_bad_input_names_file_and_line(tmp_path, name, text, spec, needle):
    with pytest.raises(InputError, match=needle):
        ingest_graph(_w(tmp_path / name, text), EdgeSpec(**spec))


def test_missing_file_and_truncated_gzip(tmp_path):
    with pytest.raises(InputError, match="nope.tsv: file not found"):
        ingest_graph(str(tmp_path / "nope.tsv"), EdgeSpec())
    data = gzip.compress(("0\t1\n" * 50000).encode())
    (tmp_path / "t.tsv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.tsv.gz: compressed stream is truncated"):
        ingest_graph(str(tmp_path / "t.tsv.gz"), EdgeSpec())


def test_invalid_utf8_names_file(tmp_path):
    (tmp_path / "u.tsv").write_bytes(b"0\t1\n\xff\xfe\t2\n")
    with pytest.raises(InputError, match="u.tsv"):
        ingest_graph(str(tmp_path / "u.tsv"), EdgeSpec(id_type="str"))


def test_labels(tmp_path):
    g = ingest_graph(_w(tmp_path / "e.tsv", TRIANGLE), EdgeSpec())
    ni, li, names = read_labels(_w(tmp_path / "l.tsv", "node\tlabel\n0\tx\n1\ty\n2\tx\n2\ty\n"), g.node_ids, "int")
    assert ni.tolist() == [0, 1, 2, 2] and names[li].tolist() == ["x", "y", "x", "y"]
    with pytest.raises(InputError, match=r"l2.tsv: line 3, field 'node': label for unknown node '7'"):
        read_labels(_w(tmp_path / "l2.tsv", "node\tlabel\n0\tx\n7\ty\n"), g.node_ids, "int")


def test_blogcatalog_shape(shared):
    g = ingest_graph(str(shared("datasets", "blogcatalog", "edges.tsv")), EdgeSpec(num_nodes=10312))
    assert g.csr.num_nodes == 10312 and g.csr.num_arcs == 2 * 333983
    assert np.all(np.diff(g.csr.indices[g.csr.indptr[5]:g.csr.indptr[6]]) > 0)


# ---- streaming weighted / string-id ingest against the reference build_csr -------------------------
def _reference(src, dst, w, n, directed, duplicates, self_loops):
    """build_csr over explicit arcs in input order (edge i gives u->v then v->u), so repeats resolve by
    first occurrence in the file whichever direction it was written in - what streaming ingest does."""
    s, d = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    keep = (s != d) if self_loops == "drop" else np.ones(len(s), bool)
    s, d = s[keep], d[keep]
    ww = None if w is None else np.asarray(w, np.float32)[keep]
    if not directed:
        both = s != d                                   # a self-loop is stored once
        s2 = np.concatenate([s, d[both]])
        d2 = np.concatenate([d, s[both]])
        tag = np.concatenate([np.arange(len(s)) * 2, np.flatnonzero(both) * 2 + 1])
        o = np.argsort(tag, kind="stable")
        s, d = s2[o], d2[o]
        if ww is not None:
            ww = np.concatenate([ww, ww[both]])[o]
    return build_csr(s, d, n, ww, directed=True, duplicates=duplicates, self_loops="keep")


def _random_edges(rng, m, n):
    s = rng.integers(0, n, m)
    d = rng.integers(0, n, m)
    w = np.round(rng.uniform(0.01, 5, m), 3)
    return s, d, w


@pytest.mark.parametrize("directed", [False, True])
@pytest.mark.parametrize("duplicates", ["drop", "sum", "keep"])
@pytest.mark.parametrize("self_loops", ["drop", "keep"])
def test_weighted_chunked_counting_sort_matches_reference(directed, duplicates, self_loops):
    from embedlake.workers.graph.ingest import csr_from_chunks
    rng = np.random.default_rng(7)
    s, d, w = _random_edges(rng, 5000, 300)            # many repeats in both directions and self-loops
    cuts = [0, 1, 1700, 1701, 4000, 5000]
    chunks = [(s[a:b].astype(np.int32), d[a:b].astype(np.int32), w[a:b].astype(np.float32))
              for a, b in zip(cuts[:-1], cuts[1:])]
    g = csr_from_chunks(chunks, 300, None, directed, duplicates, self_loops)
    ref = _reference(s, d, w, 300, directed, duplicates, self_loops)
    assert np.array_equal(g.indptr, ref.indptr) and np.array_equal(g.indices, ref.indices)
    np.testing.assert_allclose(g.weights, ref.weights, rtol=1e-6)
    if duplicates == "drop":
        assert np.array_equal(g.weights, ref.weights)
    if not directed:                                   # both arcs of an edge carry the same weight
        sp = g.to_scipy()
        assert abs(sp - sp.T).max() <= 1e-5 * sp.max()


def _edge_file(path, s, d, w=None, fmt=lambda x: str(x)):
    rows = ["src\tdst" + ("\tweight" if w is not None else "")]
    for i in range(len(s)):
        rows.append(f"{fmt(s[i])}\t{fmt(d[i])}" + (f"\t{w[i]:g}" if w is not None else ""))
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_weighted_file_streams_over_many_chunks(tmp_path):
    """~2.4 MB: the reader cuts it into several chunks (>= 1 MiB each); result equals the reference."""
    rng = np.random.default_rng(3)
    s, d, w = _random_edges(rng, 200_000, 40_000)
    path = _edge_file(tmp_path / "w.tsv", s, d, w)
    assert len(list(iter_line_chunks(path, PARSE_ROWS))) >= 2
    g = ingest_graph(path, EdgeSpec(weighted=True))
    present = np.unique(np.concatenate([s, d]))
    ref = _reference(np.searchsorted(present, s), np.searchsorted(present, d), w, len(present), False, "drop", "drop")
    assert g.node_ids.tolist() == present.tolist() and g.input_rows == 200_000
    assert np.array_equal(g.csr.indptr, ref.indptr) and np.array_equal(g.csr.indices, ref.indices)
    assert g.csr.weights.dtype == np.float32 and np.array_equal(g.csr.weights, ref.weights)


@pytest.mark.parametrize("weighted", [False, True])
def test_string_ids_stream_numbered_in_sorted_order(tmp_path, weighted):
    """String ids: dense id = rank of the id in sorted order (as before streaming), over many chunks;
    node_ids keep the original strings; non-ASCII ids sort by code point."""
    rng = np.random.default_rng(5)
    s, d, w = _random_edges(rng, 150_000, 30_000)
    names = np.array([f"user-{i:x}" if i % 97 else f"é{i}" for i in range(30_000)], dtype=object)
    path = _edge_file(tmp_path / "s.tsv", names[s], names[d], w if weighted else None)
    assert len(list(iter_line_chunks(path, PARSE_ROWS))) >= 2
    g = ingest_graph(path, EdgeSpec(id_type="str", weighted=weighted))
    used = np.unique(np.concatenate([s, d]))
    order = sorted(names[used].tolist())
    assert g.node_ids.dtype == object and g.node_ids.tolist() == order
    rank = {v: i for i, v in enumerate(order)}
    ds = np.array([rank[x] for x in names[s]])
    dd = np.array([rank[x] for x in names[d]])
    ref = _reference(ds, dd, w if weighted else None, len(order), False, "drop", "drop")
    assert np.array_equal(g.csr.indptr, ref.indptr) and np.array_equal(g.csr.indices, ref.indices)
    if weighted:
        assert np.array_equal(g.csr.weights, ref.weights)
    else:
        assert g.csr.weights is None


def test_weighted_bad_weight_in_a_later_chunk_names_its_line(tmp_path):
    rng = np.random.default_rng(4)
    s, d, w = _random_edges(rng, 200_000, 5000)
    w[190_000] = -1.5
    path = _edge_file(tmp_path / "w.tsv", s, d, w)
    assert len(list(iter_line_chunks(path, PARSE_ROWS))) >= 2
    with pytest.raises(InputError, match=r"w.tsv: line 190002, field 'weight': weight '-1.5' must be"):
        ingest_graph(path, EdgeSpec(weighted=True))
