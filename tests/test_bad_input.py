"""Bad input, one table: every case drives the real CLI in-process and must exit with status 2, print
one error line that names the place (file, line, field or config key), and commit nothing (the lake
folder holds no file at all afterwards).

The same table is documented in docs/reliability.md ("Bad input"); `test_docs_table_matches`
keeps the two in step. Lower-level unit tests of the reader live in test_ingest.py.

The second half runs the installed CLI as a subprocess, as a user would: errors the preflight finds
(flows/preflight.py) come back in under 3 s as exactly one stderr line, without Prefect or Ray
imported; an error only the ingest finds (inside a Ray task) comes back as the same one line;
`--debug` adds the traceback; an unexpected exception is one line and exit status 1.
"""
from __future__ import annotations

import bz2
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from embedlake.flows.cli import main as cli

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_session")

REPO = Path(__file__).resolve().parents[1]
TRIANGLE = b"0\t1\n1\t2\n2\t0\n"
# Preflight answers in about a second because it imports neither Prefect nor Ray (asserted by
# test_preflight_imports_neither_prefect_nor_ray). Wall time is only a hang guard here: on a loaded CI
# machine a bare interpreter start can take several seconds.
HANG_GUARD_S = 30.0
LABELS = b"node\tlabel\n0\ta\n1\tb\n2\ta\n"
_BIG = b"".join(b"%d\t%d\n" % (i, i + 1) for i in range(30000))


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _parquet(**columns) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


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
    ("parquet-missing-column", "edges.parquet", _parquet(a=[0, 1], dst=[1, 2]), None, [],
     "edges.parquet: missing column(s) ['src']; has ['a', 'dst']"),
    ("header-missing-column", "edges.csv", b"a,b\n0,1\n", None, ["-p", "input.src_col=from"],
     "edges.csv: line 1: header ['a', 'b'] has no column 'from' (input.src_col)"),
    ("header-swapped-columns", "edges.tsv", b"# from OpenFlights\ndst\tsrc\n0\t1\n", None, [],
     "edges.tsv: line 2: header ['dst', 'src'] has 'src' (input.src_col) as column 2, not 1"),
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


# ---- the installed CLI, as a user runs it ----------------------------------------------------------
ANSI = "\x1b["


def run_cli(args: list[str], cwd: Path, prefix: list[str] = (), timeout: float = 300):
    """`python -m embedlake.flows.cli *args` in cwd: (exit status, stdout, stderr, wall seconds).
    Its own Ray temp dir and the session's Prefect API; Ray's auth mode unset, as for a user."""
    import tempfile

    from prefect.settings import PREFECT_API_URL
    ray_tmp = tempfile.mkdtemp(prefix="elr", dir="/tmp")      # short unix socket paths; never a stranger's Ray
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp, "PREFECT_HOME": str(Path(cwd) / "prefect")}
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "EMBEDLAKE_FAULT"):
        env.pop(k, None)
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    t0 = time.perf_counter()
    try:
        p = subprocess.run([*prefix, sys.executable, "-m", "embedlake.flows.cli", *args], cwd=str(cwd), env=env,
                           capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def _no_commit(lake: Path) -> None:
    assert not lake.exists() or not [p for p in lake.rglob("*") if p.is_file()], "something was written"


def _without_file_permissions() -> list[str]:
    """Command prefix under which a mode-000 file is unreadable: none for a user; for root, its
    capabilities to bypass file permissions dropped (setpriv)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a mode-000 file stays readable")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"]


# id, files {name: bytes}, CLI args after embed-graph, message the one line contains
PREFLIGHT_CASES = [
    ("missing-edges", {}, ["--edges", "nope.tsv"], "error: nope.tsv: file not found"),
    ("unreadable-labels", {"e.tsv": TRIANGLE, "labels.tsv": LABELS}, ["--edges", "e.tsv", "--labels", "labels.tsv"],
     "labels.tsv: cannot read it (Permission denied)"),
    ("missing-labels", {"e.tsv": TRIANGLE}, ["--edges", "e.tsv", "--labels", "nolabels.tsv"],
     "error: nolabels.tsv: file not found"),
    ("parquet-missing-column", {"e.parquet": _parquet(src=[0, 1], to=[1, 2])}, ["--edges", "e.parquet"],
     "e.parquet: missing column(s) ['dst']; has ['src', 'to']"),
    ("csv-header-missing-column", {"e.csv": b"from,to\n0,1\n1,2\n"},
     ["--edges", "e.csv", "-p", "input.src_col=from", "-p", "input.dst_col=dst"],
     "e.csv: line 1: header ['from', 'to'] has no column 'dst' (input.dst_col)"),
    ("bad-config-key", {"e.tsv": TRIANGLE}, ["--edges", "e.tsv", "-p", "train.dimm=8"],
     "error: invalid config (defaults + overrides): train.dimm: unknown key"),
]


@pytest.mark.parametrize("case", PREFLIGHT_CASES, ids=[c[0] for c in PREFLIGHT_CASES])
def test_preflight_error_is_one_line_in_seconds(tmp_path, case):
    """Found before Prefect and Ray start: one line naming the place, status 2, no hang, nothing written."""
    cid, files, args, needle = case
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    prefix = []
    if cid == "unreadable-labels":
        (tmp_path / "labels.tsv").chmod(0)
        prefix = _without_file_permissions()
    rc, out, err, wall = run_cli(["embed-graph", *args, "--lake", str(tmp_path / "lake")], tmp_path, prefix)
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], err
    assert ANSI not in err and "Traceback" not in err
    assert wall < HANG_GUARD_S, f"{wall:.2f}s"
    _no_commit(tmp_path / "lake")


def test_preflight_imports_neither_prefect_nor_ray(tmp_path):
    """The check runs before any flow module is imported: a failing run never loads Prefect or Ray."""
    code = ("import sys\nfrom embedlake.flows.cli import main\nrc = main(['embed-graph', '--edges', 'nope.tsv'])\n"
            "print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'ray'}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["2", "[]"], p.stdout + p.stderr


def test_error_inside_ray_task_is_one_line(tmp_path):
    """A bad line deep in the file is found by the ingest (a Ray task): the same one line, status 2."""
    body = b"".join(b"%d\t%d\n" % (i, i + 1) for i in range(3000))
    (tmp_path / "edges.tsv").write_bytes(body + b"7\n" + b"1\t2\n")
    rc, out, err, _ = run_cli(["embed-graph", "--edges", "edges.tsv", "--lake", str(tmp_path / "lake"),
                               "-p", "walk.length=5", "-p", "walk.walks_per_node=1", "-p", "train.dim=4"], tmp_path)
    assert rc == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'edges.tsv'}: line 3001: expected 2 columns separated by '\\t', found 1"], err
    assert ANSI not in err and "Traceback" not in err and "ray::" not in err, err
    assert "Token authentication" not in err, err        # the local Ray's auth notice
    _no_commit(tmp_path / "lake")


def test_debug_prints_the_traceback(tmp_path):
    rc, out, err, _ = run_cli(["--debug", "embed-graph", "--edges", "nope.tsv"], tmp_path)
    assert rc == 2
    assert "Traceback (most recent call last)" in err and "embedlake.errors.InputError: nope.tsv" in err, err
    assert err.splitlines()[-1] == "error: nope.tsv: file not found"
    rc2, _, err2, _ = run_cli(["embed-graph", "--edges", "nope.tsv", "--debug"], tmp_path)   # after the command too
    assert rc2 == 2 and "Traceback (most recent call last)" in err2, err2


def test_unexpected_error_is_one_line_with_status_1(tmp_path):
    """Not an EmbedlakeError (here: a folder given as the config file): its type and message, status 1."""
    (tmp_path / "cfg").mkdir()
    rc, out, err, _ = run_cli(["config", "--config", "cfg"], tmp_path)
    assert rc == 1, err
    assert err.splitlines() == [f"error: IsADirectoryError: [Errno 21] Is a directory: 'cfg' "
                                "(run with --debug for the traceback)"], err
    rc, out, err, _ = run_cli(["--debug", "config", "--config", "cfg"], tmp_path)
    assert rc == 1 and "Traceback (most recent call last)" in err and "--debug" not in err.splitlines()[-1], err


def test_ray_task_errors_unwrap_to_their_cause():
    """RayTaskError and its as_instanceof_cause() dual (whose str() is the remote traceback) both
    unwrap to the task's own exception; colour codes and `ray::` headers never reach the line."""
    from ray.exceptions import RayTaskError

    from embedlake.errors import InputError, one_line, root_cause, user_error
    cause = InputError("expected 2 columns separated by '\\t', found 1", path="g/edges.tsv", line=7)
    tb = ('Traceback (most recent call last):\n  File "workers/graph/ingest.py", line 9, in read_edges\n'
          "    raise InputError(...)\nembedlake.errors.InputError: g/edges.tsv: line 7: bad")
    wrapped = RayTaskError("ingest_stage", tb, cause, proctitle="ray::ingest_stage")
    dual = wrapped.as_instanceof_cause()
    assert "\x1b[36mray::ingest_stage()" in str(dual) and isinstance(dual, InputError)
    for exc in (wrapped, dual):
        assert root_cause(exc) is cause and user_error(exc) is cause
    try:
        try:
            raise dual
        except InputError as e:
            raise RuntimeError("cleanup failed") from e
    except RuntimeError as outer:
        assert user_error(outer) is cause
    assert user_error(ValueError("x")) is None
    assert one_line(str(dual)) == "embedlake.errors.InputError: g/edges.tsv: line 7: bad"
    assert one_line("invalid config (f.yaml):\n  train.dimm: unknown key\n  walk.lenght: unknown key") == \
        "invalid config (f.yaml): train.dimm: unknown key; walk.lenght: unknown key"


def test_preflight_s3_inputs(s3_env, tmp_path, capsys):
    """On s3:// the same checks: a missing object, a Parquet schema without the column, a header."""
    import boto3
    from embedlake.flows import preflight
    from embedlake.config import load_config
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"], region_name="us-east-1")
    b = s3_env["bucket"]
    s3.put_object(Bucket=b, Key="g/e.parquet", Body=_parquet(src=[0, 1], to=[1, 2]))
    s3.put_object(Bucket=b, Key="h/e.csv", Body=b"from,to\n0,1\n")
    s3.put_object(Bucket=b, Key="ok/e.tsv", Body=TRIANGLE)
    cases = [(f"s3://{b}/nope.tsv", [], f"s3://{b}/nope.tsv: file not found"),
             (f"s3://{b}/g/", [], f"s3://{b}/g/e.parquet: missing column(s) ['dst']; has ['src', 'to']"),
             (f"s3://{b}/h/e.csv", ["-p", "input.src_col=src"], "line 1: header ['from', 'to'] has no column 'src'")]
    for edges, extra, needle in cases:
        rc = cli(["embed-graph", "--edges", edges, "--lake", str(tmp_path / "lake"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.strip().splitlines() == [err.strip()] and needle in err, err
    preflight.check_graph_run(load_config(None, [f"input.edges=s3://{b}/ok/e.tsv"]))     # passes
    _no_commit(tmp_path / "lake")


@pytest.mark.parametrize("name,data,overrides", [
    ("e.tsv", b"0\t1\n1\t2\n", []),                                   # no header
    ("e.tsv", b"source\ttarget\n0\t1\n", []),                         # a header of other names: read by position
    ("e.tsv", b"src\tdst\tweight\n0\t1\t2.0\n", []),                  # the default names, a third column ignored
    ("e.csv", b"from,to,w\n0,1,2.5\n", ["input.src_col=from", "input.dst_col=to", "input.weighted=true",
                                        "input.weight_col=w"]),
    ("e.tsv", b"a\tb\n0\t1\n", ["input.has_header=false", "input.id_type=str", "input.src_col=x"]),  # no header
    ("e.parquet", _parquet(u=[0], v=[1]), ["input.src_col=u", "input.dst_col=v"]),
])
def test_preflight_accepts_good_inputs(tmp_path, name, data, overrides):
    """The checks refuse only what the ingest would misread or fail on."""
    from embedlake.config import load_config
    from embedlake.flows import preflight
    (tmp_path / name).write_bytes(data)
    (tmp_path / "labels.tsv").write_bytes(LABELS)
    preflight.check_graph_run(load_config(None, [f"input.edges={tmp_path / name}",
                                                 f"input.labels={tmp_path / 'labels.tsv'}", *overrides]))


@pytest.mark.parametrize("args,needle", [
    (["embed-corpus", "--input", "nope.txt"], "error: nope.txt: file not found"),
    (["embed-corpus", "--input", "c.parquet"], "c.parquet: no text column 'text' (columns: ['body'])"),
    (["compress", "--from", "karate/deepwalk"], "error: no committed run of karate/deepwalk in"),
])
def test_preflight_corpus_and_compress(tmp_path, args, needle):
    """embed-corpus --input and compress --from are checked before their flows start, too."""
    (tmp_path / "c.parquet").write_bytes(_parquet(body=["a b c"]))
    rc, out, err, wall = run_cli([*args, "--lake", str(tmp_path / "lake")], tmp_path)
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert wall < HANG_GUARD_S, f"{wall:.2f}s"
    _no_commit(tmp_path / "lake")
