"""Partial publish (issue 18): a run that changed few rows writes only the hashed partitions whose
rows changed; the other files keep their paths and bytes, the Delta commit keeps their add actions,
and every reader sees the latest version as one table equal to the full new table."""
from __future__ import annotations

import hashlib

import duckdb
import numpy as np
import polars as pl
from deltalake import DeltaTable

import embedlake
from embedlake.lake import (Lake, Manifest, hash_partition_count, hash_partitions, layout_partitions,
                            previous_layout, publish_hashed_partition, publish_summary)
from embedlake.reader import table_uri


def publish(lake: Lake, run_id: str, ids: np.ndarray, X: np.ndarray, previous: Manifest | None,
            partitions: int = 8) -> tuple[Manifest, dict]:
    """What tasks/fastrp.publish_partial does per partition, in one process; then the commit."""
    before = previous.files["embeddings"] if previous else []
    P = layout_partitions(before) or partitions
    assign, old = hash_partitions(ids, P), previous_layout(before)
    results = [publish_hashed_partition(lake, "toy", "fastrp", run_id, p, P, assign, ids, X, old.get(p))
               for p in range(P)]
    entries, stats = publish_summary(results)
    man = Manifest("toy", "fastrp", run_id, files={"embeddings": entries}, extra={"publish": stats})
    lake.commit(man)
    return lake.manifest("toy", "fastrp", run_id), stats


def file_digests(lake: Lake, man: Manifest) -> dict[str, str]:
    return {e["path"]: hashlib.sha256(lake.read_bytes(e["path"])).hexdigest() for e in man.files["embeddings"]}


def sorted_rows(df: pl.DataFrame) -> tuple[list, np.ndarray]:
    df = df.sort("node")
    return df["node"].to_list(), np.stack([np.asarray(v, np.float32) for v in df["vector"].to_list()])


def test_partial_publish_keeps_unchanged_files(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    rng = np.random.default_rng(0)
    ids = np.arange(1000, 1400, dtype=np.int64)
    X = rng.standard_normal((400, 16)).astype(np.float32)
    man1, stats1 = publish(lake, "r1", ids, X, None)
    assert stats1["files_written"] == 8 and stats1["files_kept"] == 0
    old_files = file_digests(lake, man1)

    # version 2: three rows change, one node is removed, two are added (new ids, inserted in id order)
    X2 = X.copy()
    X2[[5, 100, 101]] += 1.0
    ids2 = np.concatenate([np.delete(ids, 200), [1, 5000]])
    X2 = np.concatenate([np.delete(X2, 200, axis=0), rng.standard_normal((2, 16)).astype(np.float32)])
    touched = set(hash_partitions(ids[[5, 100, 101, 200]], 8)) | set(hash_partitions(np.array([1, 5000]), 8))
    man2, stats2 = publish(lake, "r2", ids2, X2, man1)
    assert stats2["files_written"] == len(touched) < 8 and stats2["files_kept"] == 8 - len(touched)
    assert stats2["bytes_written"] < stats1["bytes_written"]

    new_files = file_digests(lake, man2)
    kept = {p: d for p, d in new_files.items() if "run_id=r1/" in p}
    assert len(kept) == 8 - len(touched) and all(old_files[p] == d for p, d in kept.items())   # same paths, same bytes
    written = [p for p in new_files if "run_id=r2/" in p]
    assert sorted(int(p.split("partition=")[1].split("/")[0]) for p in written) == sorted(int(t) for t in touched)

    # the Delta log: the kept add actions are untouched, the changed partitions' old files removed
    uri = table_uri(lake, "toy", "fastrp")
    dt = DeltaTable(uri)
    assert dt.version() == 1 and len(dt.file_uris()) == 8
    want = (sorted(ids2.tolist()), X2[np.argsort(ids2)])
    for df in (pl.scan_delta(uri).collect(), duckdb.sql("SELECT node, vector FROM ds").pl()
               if (ds := dt.to_pyarrow_dataset()) is not None else None,
               embedlake.read_embeddings(lake.uri, "toy", "fastrp")):
        names, M = sorted_rows(df)
        assert names == want[0] and np.array_equal(M, want[1])
    # kept rows keep the run that wrote them in `run_id`; the latest version is both runs' files
    runs = pl.scan_delta(uri).group_by("run_id").len().collect().sort("run_id")
    assert runs["run_id"].to_list() == ["r1", "r2"] and runs["len"].sum() == len(ids2)
    # time travel still gives version 1 whole, and vacuum needs none of the kept files gone
    names, M = sorted_rows(pl.read_delta(uri, version=0))
    assert names == sorted(ids.tolist()) and np.array_equal(M, X[np.argsort(ids)])
    assert not set(lake.vacuum(0, delete=False)[f"embeddings/toy/fastrp"]) & {p.split("fastrp/", 1)[1] for p in kept}


def test_unchanged_table_writes_nothing_and_another_layout_writes_all(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    ids = np.array([f"u{i}" for i in range(120)], dtype=object)
    X = np.random.default_rng(1).standard_normal((120, 8)).astype(np.float32)
    man1, _ = publish(lake, "a", ids, X, None, partitions=4)
    man2, stats = publish(lake, "b", ids, X, man1)
    assert stats["files_written"] == 0 and stats["bytes_written"] == 0 and stats["files_kept"] == 4
    assert file_digests(lake, man2) == file_digests(lake, man1)
    names, M = sorted_rows(embedlake.read_embeddings(lake.uri, "toy", "fastrp"))
    assert names == sorted(ids.tolist()) and np.array_equal(M, X[np.argsort(ids)])
    # a previous run without the hashed layout (row-range files) keeps nothing
    plain = dict(man2.files["embeddings"][0], layout="")
    assert layout_partitions([plain]) is None and previous_layout([plain]) == {}
    assert hash_partition_count(1000, 4 * 128 + 16, target=2**16) == 9
