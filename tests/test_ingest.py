"""Ingest: formats, id mapping, CSR, and bad input refused with file and line."""
import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from embedlake.errors import InputError
from embedlake.workers.graph import build_csr
from embedlake.workers.ingest import EdgeSpec, ingest_graph, read_labels

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
