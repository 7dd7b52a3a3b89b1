"""The lake contract on Delta tables: commit protocol, readers only see committed runs, every engine
agrees (embedlake, polars, pyarrow, DuckDB, pandas), time travel to the previous run."""
import json

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import embedlake
from embedlake.errors import CommitConflict, LakeError
from embedlake.lake import Lake, Manifest, embeddings_table
from embedlake.reader import table_uri


def _write_run(lake: Lake, run_id: str, ids, X, parts=2, commit=True, table_fn=embeddings_table):
    files = []
    for p, sl in enumerate(np.array_split(np.arange(len(ids)), parts)):
        rel = Lake.part_path("embeddings", "toy", "deepwalk", run_id, p)
        files.append(lake.write_parquet(rel, table_fn(pa.array(ids[sl]), X[sl])).to_dict())
    if commit:
        lake.commit(Manifest("toy", "deepwalk", run_id, files={"embeddings": files}, config={"a": 1},
                             extra={"dim": int(X.shape[1])}))
    return files


def _sorted_rows(df: pl.DataFrame) -> tuple[list, np.ndarray]:
    df = df.sort("node")
    return df["node"].to_list(), np.stack([np.asarray(v, np.float32) for v in df["vector"].to_list()])


def test_same_run_through_every_engine(tmp_path):
    """polars scan_delta, pyarrow (DeltaTable.to_pyarrow_dataset), DuckDB over that dataset, pandas
    and embedlake's reader read the same rows of the latest run."""
    lake = Lake(str(tmp_path / "lake"))
    rng = np.random.default_rng(0)
    ids = np.array([f"n{i}" for i in range(50)], dtype=object)
    X = rng.standard_normal((50, 8)).astype(np.float32)
    _write_run(lake, "r1", ids, X)
    got_ids, got_X = embedlake.load_matrix(lake.uri, "toy", "deepwalk")
    assert list(got_ids) == list(ids) and np.array_equal(got_X, X)
    df = embedlake.read_embeddings(lake.uri, "toy", "deepwalk")
    assert df.schema["vector"] == pl.Array(pl.Float32, 8) and df.schema["node"] == pl.String

    uri = table_uri(lake, "toy", "deepwalk")
    pdf = pl.scan_delta(uri).collect()
    assert pdf.schema["vector"] == pl.List(pl.Float32) and pdf["run_id"].unique().to_list() == ["r1"]
    assert sorted(pdf["partition"].unique().to_list()) == [0, 1]
    assert pdf.select(pl.col("vector").list.to_array(8)).schema["vector"] == pl.Array(pl.Float32, 8)
    dataset = DeltaTable(uri).to_pyarrow_dataset()
    adf = pl.from_arrow(dataset.to_table())
    ddf = duckdb.sql("SELECT node, vector FROM dataset").pl()
    pandas_df = DeltaTable(uri).to_pandas()
    assert isinstance(pandas_df, pd.DataFrame)
    want = (sorted(ids), X[np.argsort(ids)])
    for other in (pdf, adf, ddf, pl.from_pandas(pandas_df[["node", "vector"]])):
        names, M = _sorted_rows(other)
        assert names == want[0] and np.array_equal(M, want[1])
    # the dimension is recorded in the table's schema (field metadata) and the run record
    field = next(f for f in DeltaTable(uri).schema().fields if f.name == "vector")
    assert field.metadata["embedlake.dim"] == "8"
    assert json.loads(DeltaTable(uri).history()[0]["embedlake"]["record"])["extra"]["dim"] == 8


def test_time_travel_to_the_previous_run(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ids = np.arange(6)
    _write_run(lake, "r1", ids, np.ones((6, 3), np.float32))
    _write_run(lake, "r2", ids, np.full((6, 3), 2, np.float32))
    uri = table_uri(lake, "toy", "deepwalk")
    latest = pl.scan_delta(uri).collect()
    previous = pl.scan_delta(uri, version=lake.manifest("toy", "deepwalk", "r1").table_version).collect()
    assert latest["run_id"].unique().to_list() == ["r2"] and latest.height == 6
    assert previous["run_id"].unique().to_list() == ["r1"] and previous.height == 6
    assert np.all(np.stack(previous["vector"].to_list()) == 1) and np.all(np.stack(latest["vector"].to_list()) == 2)
    # embedlake: a run id is the version whose commit names it
    assert np.all(embedlake.load_matrix(lake.uri, "toy", "deepwalk", run="r1")[1] == 1)
    hist = DeltaTable(uri).history()
    assert [h["embedlake"]["run_id"] for h in hist] == ["r2", "r1"]


def test_fixed_size_list_file_is_refused_before_it_breaks_scan_delta(tmp_path):
    """Delta has no fixed-size list: a file holding one passes delta-rs' commit but makes
    pl.scan_delta fail with a schema mismatch, so the commit refuses it, naming the file."""
    def fixed_table(ids, X):
        vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), X.shape[1])
        return pa.table({"node": ids, "vector": vec})

    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(LakeError, match="fixed_size_list.*part-00000.parquet|part-00000.parquet.*fixed_size_list"):
        _write_run(lake, "r1", np.arange(4), np.ones((4, 2), np.float32), table_fn=fixed_table)
    assert not lake.is_committed("toy", "deepwalk", "r1")

    # what the check prevents: the same file committed straight through deltalake
    import deltalake
    from deltalake.transaction import AddAction, create_table_with_add_actions
    files = _write_run(lake, "r2", np.arange(4), np.ones((4, 2), np.float32), table_fn=fixed_table, commit=False)
    list_schema = pa.schema([("node", pa.int64()), ("vector", pa.list_(pa.float32())), ("run_id", pa.string()),
                             ("partition", pa.int32())])
    root = "embeddings/toy/deepwalk/"
    adds = [AddAction(e["path"][len(root):], e["bytes"], {"run_id": "r2", "partition": str(i)}, 0, True,
                      json.dumps({"numRecords": e["rows"]})) for i, e in enumerate(files)]
    create_table_with_add_actions(lake.url(root), deltalake.Schema.from_arrow(list_schema), adds,
                                  partition_by=["run_id", "partition"])
    with pytest.raises(Exception, match="(?i)mismatch|schema"):
        pl.scan_delta(lake.url(root)).collect()


def test_uncommitted_run_is_invisible_and_latest_moves(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    X = np.ones((4, 2), np.float32)
    _write_run(lake, "r1", np.arange(4), X)
    # a run killed between its data files and its commit: files on disk, in no Delta log
    _write_run(lake, "r2", np.arange(4), X * 2, commit=False)
    assert lake.manifest("toy", "deepwalk").run_id == "r1"
    _, M = embedlake.load_matrix(lake.uri, "toy", "deepwalk")
    assert np.all(M == 1)
    assert pl.scan_delta(table_uri(lake, "toy", "deepwalk")).collect()["run_id"].unique().to_list() == ["r1"]
    with pytest.raises(LakeError, match="not committed"):
        embedlake.load_matrix(lake.uri, "toy", "deepwalk", run="r2")
    # vacuum sees the killed run's files (never in the log), removes them only past the retention
    found = lake.vacuum(retention_hours=0, delete=False)["embeddings/toy/deepwalk"]
    assert found and all("run_id=r2" in p for p in found)
    assert lake.vacuum(retention_hours=24, delete=False)["embeddings/toy/deepwalk"] == []
    _write_run(lake, "r3", np.arange(4), X * 3)
    assert lake.manifest("toy", "deepwalk").run_id == "r3"
    assert [m.run_id for m in lake.manifests("toy", "deepwalk")] == ["r1", "r3"]


def test_second_commit_of_a_run_id_is_refused(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    _write_run(lake, "r1", np.arange(3), np.zeros((3, 2), np.float32))
    with pytest.raises(CommitConflict):
        lake.commit(Manifest("toy", "deepwalk", "r1", files={}))
    files = _write_run(lake, "r1", np.arange(3), np.ones((3, 2), np.float32), commit=False)
    with pytest.raises(CommitConflict, match="already committed"):
        lake.commit(Manifest("toy", "deepwalk", "r1", files={"embeddings": files}))
    # the first run is intact
    assert lake.manifest("toy", "deepwalk", "r1").config == {"a": 1}
    assert len(DeltaTable(lake.url("embeddings/toy/deepwalk")).history()) == 1


def test_commit_refuses_missing_files(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    m = Manifest("toy", "deepwalk", "r9", files={"embeddings": [{"path": "embeddings/toy/x.parquet", "rows": 1,
                                                                 "bytes": 1, "sha256": ""}]})
    with pytest.raises(LakeError, match="missing"):
        lake.commit(m)
    assert not lake.is_committed("toy", "deepwalk", "r9")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 200, "a..b"])
def test_names_cannot_escape_the_lake(tmp_path, bad):
    with pytest.raises(LakeError, match="invalid"):
        Lake.run_dir("embeddings", bad, "deepwalk", "r1")


def test_s3_lake_same_code_path(s3_env):
    """The same Lake code writes, commits and reads on an S3 server on loopback; polars reads the
    Delta table with the same settings; no credential lands in the Delta log."""
    lake = Lake(f"s3://{s3_env['bucket']}/prefix")
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    _write_run(lake, "r1", np.arange(6), X)
    _write_run(lake, "r2", np.arange(6), X + 1)
    _, got = embedlake.load_matrix(lake.uri, "toy", "deepwalk")
    assert np.array_equal(got, X + 1)
    with pytest.raises(CommitConflict):
        lake.commit(Manifest("toy", "deepwalk", "r1", files={}))
    opts = {k.lower(): v for k, v in lake.delta_options.items()}
    uri = table_uri(lake, "toy", "deepwalk")
    assert pl.scan_delta(uri, storage_options=opts).collect().height == 6
    assert pl.scan_delta(uri, version=0, storage_options=opts).collect()["run_id"].unique().to_list() == ["r1"]
    log = b"".join(lake.read_bytes(p) for p in lake.list_files("embeddings/toy/deepwalk/_delta_log"))
    assert b"testing-secret-value-123" not in log and b"testing-key" not in log
