"""Bad input, one table: every case drives the real CLI in-process and must exit with status 2, print
one error line that names the place (file, line, field or config key), and commit nothing (the lake
folder holds no file at all afterwards).

The same table is documented in docs/reliability.md ("Bad input"); `test_docs_table_matches`
keeps the two in step. Lower-level unit tests of the reader live in test_ingest.py.
"""
from __future__ import annotations

import bz2
import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import zstandard

from embedlake.flows.cli import main as cli

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_session")

REPO = Path(__file__).resolve().parents[1]
TRIANGLE = b"0\t1\n1\t2\n2\t0\n"
LABELS = b"node\tlabel\n0\ta\n1\tb\n2\ta\n"
_BIG = b"".join(b"%d\t%d\n" % (i, i + 1) for i in range(30000))


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


# id, edges file name, edges bytes, labels bytes or None, extra CLI args, expected message (substring)
CASES = [
    ("missing-file", "nope.tsv", None, None, [], "nope.tsv: file not found"),
    ("malformed-line", "edges.tsv", b"0\t1\n1\n2\t0\n", None, [],
     "edges.tsv: line 2: expected 2 columns separated by '\\t', found 1"),
    ("too-many-columns", "edges.tsv", b"0\t1\n1\t2\t3\t4\n", None, [],
     "edges.tsv: line 2: expected 2 columns separated by '\\t', found 4"),
    ("csv-wrong-columns", "edges.csv", b"src,dst\n0,1\n1\n", None, [],
     "edges.csv: line 3: expected 2 columns separated by ',', found 1"),
    ("weighted-missing-weight", "edges.tsv", b"0\t1\t1.0\n1\t2\n", None, ["-p", "input.weighted=true"],
     "edges.tsv: line 2: expected 3 columns separated by '\\t', found 2"),
    ("empty-file", "edges.tsv", b"", None, [], "edges.tsv: the graph is empty: no edges found"),
    ("header-only", "edges.tsv", b"src\tdst\n", None, [], "edges.tsv: the graph is empty: no edges found"),
    ("only-self-loops", "edges.tsv", b"1\t1\n2\t2\n", None, [],
     "edges.tsv: the graph is empty after dropping self-loops"),
    ("id-not-integer", "edges.tsv", b"0\t1\n1\t2\nx\t2\n", None, [],
     "edges.tsv: line 3, field 'src': node id 'x' is not an integer"),
    ("id-float", "edges.tsv", b"0\t1\n1\t2.5\n", None, [],
     "edges.tsv: line 2, field 'dst': node id '2.5' is not an integer"),
    ("id-overflow", "edges.tsv", b"0\t1\n99999999999999999999999\t2\n", None, [],
     "edges.tsv: line 2, field 'src': node id '99999999999999999999999' is not an integer"),
    ("id-outside-num-nodes", "edges.tsv", b"0\t1\n1\t7\n", None, ["-p", "input.num_nodes=3"],
     "edges.tsv: node id 7 is outside 0..2 declared by num_nodes"),
    ("weight-nan", "edges.tsv", b"0\t1\t1.0\n1\t2\tnan\n", None, ["-p", "input.weighted=true"],
     "edges.tsv: line 2, field 'weight': weight 'nan' must be a finite number > 0"),
    ("weight-negative", "edges.tsv", b"0\t1\t-2\n", None, ["-p", "input.weighted=true"],
     "edges.tsv: line 1, field 'weight': weight '-2' must be a finite number > 0"),
    ("weight-zero", "edges.tsv", b"0\t1\t1\n1\t2\t0\n", None, ["-p", "input.weighted=true"],
     "edges.tsv: line 2, field 'weight': weight '0' must be a finite number > 0"),
    ("weight-not-number", "edges.tsv", b"0\t1\tabc\n", None, ["-p", "input.weighted=true"],
     "edges.tsv: line 1, field 'weight': weight 'abc' must be a finite number > 0"),
    ("invalid-utf8", "edges.tsv", b"0\t1\n1\t2\n\xff\xfe\t2\n", None, ["-p", "input.id_type=str"],
     "edges.tsv: line 3: cannot decode text"),
    ("truncated-gzip", "edges.tsv.gz", _cut(gzip.compress(_BIG)), None, [],
     "edges.tsv.gz: compressed stream is truncated or corrupt"),
    ("truncated-zstd", "edges.tsv.zst", _cut(zstandard.ZstdCompressor().compress(_BIG)), None, [],
     "edges.tsv.zst: compressed stream is truncated or corrupt"),
    ("truncated-bz2", "edges.tsv.bz2", _cut(bz2.compress(_BIG)), None, [],
     "edges.tsv.bz2: compressed stream is truncated or corrupt"),
    ("not-gzip", "edges.tsv.gz", b"plain text, not gzip\n", None, [],
     "edges.tsv.gz: compressed stream is truncated or corrupt"),
    ("not-parquet", "edges.parquet", b"PAR1 but not parquet", None, [],
     "edges.parquet: not a readable Parquet file"),
    ("label-unknown-node", "edges.tsv", TRIANGLE, b"node\tlabel\n0\ta\n9\tb\n", [],
     "labels.tsv: line 3, field 'node': label for unknown node '9'"),
    ("label-id-not-integer", "edges.tsv", TRIANGLE, b"node\tlabel\n0\ta\nq\tb\n", [],
     "labels.tsv: line 3, field 'node': node id 'q' is not an integer"),
    ("label-missing-column", "edges.tsv", TRIANGLE, b"node\tlabel\n0\ta\n1\n", [],
     "labels.tsv: line 3: expected 2 columns separated by '\\t', found 1"),
    ("labels-empty", "edges.tsv", TRIANGLE, b"", [], "labels.tsv: no labels found"),
    ("config-unknown-key", "edges.tsv", TRIANGLE, None, ["-p", "train.dimm=8"], "train.dimm: unknown key"),
    ("config-out-of-range", "edges.tsv", TRIANGLE, None, ["-p", "train.dim=1"],
     "train.dim: Input should be greater than or equal to 2"),
    ("config-bad-choice", "edges.tsv", TRIANGLE, None, ["-p", "method=word2vec"], "method: Input should be"),
    ("config-file-unknown-key", "edges.tsv", TRIANGLE, None, ["--config", "{cfg}"], "walk.lenght: unknown key"),
    ("bad-dataset-name", "edges.tsv", TRIANGLE, None, ["--dataset", "../escape"],
     "invalid dataset name '../escape'"),
    ("bad-run-id", "edges.tsv", TRIANGLE, None, ["-p", "lake.run_id=../../etc"], "invalid run name '../../etc'"),
]


@pytest.fixture(scope="module", autouse=True)
def _prefect_logging_outside_capsys(ray_session, prefect_session):
    """Prefect binds its console log handler to sys.stderr at its first flow run; run one here, so
    that stream is pytest's session-wide capture and not the first test's capsys (closed after it)."""
    from prefect import flow

    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    assert warm_up() == 1


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_table(tmp_path, capsys, case):
    cid, name, edges, labels, extra, needle = case
    g = tmp_path / "g"
    g.mkdir()
    if edges is not None:
        (g / name).write_bytes(edges)
    args = ["embed-graph", "--edges", str(g / name), "--lake", str(tmp_path / "lake"),
            "-p", "walk.length=5", "-p", "walk.walks_per_node=2", "-p", "train.dim=4", "-p", "eval.repeats=1"]
    if labels is not None:
        (g / "labels.tsv").write_bytes(labels)
        args += ["--labels", str(g / "labels.tsv")]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("walk:\n  lenght: 3\n")
    args += [a.replace("{cfg}", str(cfg)) for a in extra]
    rc = cli(args)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    tail = err[err.rindex("error:"):]
    assert needle in tail, tail
    assert "Traceback" not in tail
    lake = tmp_path / "lake"
    assert not lake.exists() or [p for p in lake.rglob("*") if p.is_file()] == [], "something was written"


def test_docs_table_matches():
    """docs/reliability.md lists exactly these cases, each with its message."""
    doc = (REPO / "docs" / "reliability.md").read_text()
    rows = {m.group(1): line for line in doc.splitlines() if (m := re.match(r"\|\s*`([a-z0-9-]+)`\s*\|", line))}
    assert set(rows) == {c[0] for c in CASES}
    for cid, *_, needle in CASES:
        assert needle in rows[cid].replace("\\|", "|"), (cid, needle)


# ---- nothing read from the lake is unpickled ------------------------------------------------------
class _Payload:
    """Unpickling this creates a folder: proof that pickle data was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.mkdir, (self.marker,))


def test_crafted_object_npy_in_graph_version_is_refused(tmp_path):
    from embedlake.errors import LakeError
    from embedlake.lake import Lake
    from embedlake.workers.graph.csr import build_csr
    from embedlake.workers.graph.store import read_graph, write_graph
    lake = Lake(str(tmp_path / "lake"))
    csr = build_csr(np.array([0, 1]), np.array([1, 2]), 3)
    write_graph(lake, "g", "v-1", csr, np.arange(3), {"sources": [], "checksum": "x", "stats": {}, "id_type": "int"})
    assert read_graph(lake, "g", "v-1")[0].num_arcs == 4
    marker = tmp_path / "pwned"
    evil = np.empty(4, dtype=object)
    evil[:] = [_Payload(str(marker))] * 4
    path = tmp_path / "lake" / "graphs" / "g" / "v-1" / "indptr.npy"
    np.save(path, evil, allow_pickle=True)
    with pytest.raises(LakeError, match=r"indptr.npy: refused: the .npy holds an object array"):
        read_graph(lake, "g", "v-1")
    assert not marker.exists()
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(LakeError, match=r"indptr.npy: not a valid .npy file"):
        read_graph(lake, "g", "v-1")
