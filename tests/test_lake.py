"""The lake contract: commit protocol, readers only see committed runs, all readers agree."""
import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import embedlake
from embedlake.errors import CommitConflict, LakeError
from embedlake.lake import Lake, Manifest, embeddings_table
from embedlake.reader import committed_files


def _write_run(lake: Lake, run_id: str, ids, X, parts=2, commit=True):
    files = []
    for p, sl in enumerate(np.array_split(np.arange(len(ids)), parts)):
        rel = Lake.part_path("embeddings", "toy", "deepwalk", run_id, p)
        files.append(lake.write_parquet(rel, embeddings_table(pa.array(ids[sl]), X[sl])).to_dict())
    if commit:
        lake.commit(Manifest("toy", "deepwalk", run_id, files={"embeddings": files}, config={"a": 1}))
    return files


def test_roundtrip_and_readers_agree(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    rng = np.random.default_rng(0)
    ids = np.array([f"n{i}" for i in range(50)], dtype=object)
    X = rng.standard_normal((50, 8)).astype(np.float32)
    _write_run(lake, "r1", ids, X)
    got_ids, got_X = embedlake.load_matrix(lake.uri, "toy", "deepwalk")
    assert list(got_ids) == list(ids) and np.array_equal(got_X, X)
    df = embedlake.read_embeddings(lake.uri, "toy", "deepwalk")
    assert df.schema["vector"] == pl.Array(pl.Float32, 8) and df.schema["node"] == pl.String

    run_dir = lake.url(Lake.run_dir("embeddings", "toy", "deepwalk", "r1"))
    # polars, hive partitions
    pdf = pl.scan_parquet(f"{run_dir}/**/*.parquet", hive_partitioning=True).collect().sort("node")
    # pyarrow.dataset with an explicit hive schema (STACK.md: polars/pyarrow partition types)
    part = ds.partitioning(pa.schema([("partition", pa.int32())]), flavor="hive")
    adf = pl.from_arrow(ds.dataset(run_dir, format="parquet", partitioning=part).to_table()).sort("node")
    # DuckDB
    files = committed_files(lake, "toy", "deepwalk")
    ddf = duckdb.sql(f"SELECT node, vector FROM read_parquet({files!r}) ORDER BY node").pl()
    for other in (adf, ddf):
        assert pdf["node"].to_list() == other["node"].to_list()
        assert np.array_equal(np.stack(pdf["vector"].to_numpy()), np.stack(other["vector"].to_numpy()))
    assert sorted(pdf["partition"].unique().to_list()) == [0, 1]


def test_uncommitted_run_is_invisible_and_latest_moves(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    X = np.ones((4, 2), np.float32)
    _write_run(lake, "r1", np.arange(4), X)
    # a run killed between its data files and its manifest
    _write_run(lake, "r2", np.arange(4), X * 2, commit=False)
    assert lake.manifest("toy", "deepwalk").run_id == "r1"
    _, M = embedlake.load_matrix(lake.uri, "toy", "deepwalk")
    assert np.all(M == 1)
    with pytest.raises(LakeError, match="not committed"):
        embedlake.load_matrix(lake.uri, "toy", "deepwalk", run="r2")
    assert any("run=r2" in p for p in lake.orphans())
    _write_run(lake, "r3", np.arange(4), X * 3)
    assert lake.manifest("toy", "deepwalk").run_id == "r3"
    assert [m.run_id for m in lake.manifests("toy", "deepwalk")] == ["r1", "r3"]


def test_put_if_absent_refuses_second_commit(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    _write_run(lake, "r1", np.arange(3), np.zeros((3, 2), np.float32))
    with pytest.raises(CommitConflict):
        lake.commit(Manifest("toy", "deepwalk", "r1", files={}))
    # the first manifest is intact
    assert lake.manifest("toy", "deepwalk", "r1").config == {"a": 1}


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
    """The same Lake code writes, commits and reads on an S3 server on loopback."""
    lake = Lake(f"s3://{s3_env['bucket']}/prefix")
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    _write_run(lake, "r1", np.arange(6), X)
    _, got = embedlake.load_matrix(lake.uri, "toy", "deepwalk")
    assert np.array_equal(got, X)
    with pytest.raises(CommitConflict):
        lake.commit(Manifest("toy", "deepwalk", "r1", files={}))
    from embedlake.storage import polars_storage_options
    df = pl.scan_parquet(f"{lake.url(Lake.run_dir('embeddings', 'toy', 'deepwalk', 'r1'))}/**/*.parquet",
                         hive_partitioning=True, storage_options=polars_storage_options()).collect()
    assert df.height == 6
