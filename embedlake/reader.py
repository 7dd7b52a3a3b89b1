"""Reader API: committed runs as polars frames or numpy arrays, on top of the lake's Delta tables.

    import embedlake
    df = embedlake.read_embeddings("./lake", "karate", "deepwalk")          # latest committed run
    ids, X = embedlake.load_matrix("s3://bucket/lake", "blogcatalog", "deepwalk", run="20261129T...")

A run id resolves to the table version whose commit metadata names it (`Lake.manifest`); the
rows are that version's files (its add actions, in partition order), so a half-written run is
never seen. Vectors come back as fixed-size arrays (the Delta tables hold list<float32>).
Readers without embedlake: `pl.scan_delta(table_uri(...))` (README, "Reading the lake").
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from embedlake.lake import Lake, Manifest, fixed_vectors


def _lake(lake: str | Lake) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(lake)


def table_uri(lake: str | Lake, dataset: str, method: str, kind: str = "embeddings") -> str:
    """The Delta table URI of (kind, dataset, method): what pl.scan_delta / DeltaTable / Spark read."""
    lk = _lake(lake)
    return lk.url(Lake.table_dir(kind, dataset, method))


def committed_files(lake: str | Lake, dataset: str, method: str, run: str = "latest",
                    kind: str = "embeddings") -> list[str]:
    """Full URIs of one committed run's data files (its table version's files)."""
    lk = _lake(lake)
    man = lk.manifest(dataset, method, run)
    return [lk.url(e["path"]) for e in man.files.get(kind, [])]


def read_table(lake: str | Lake, dataset: str, method: str, run: str = "latest",
               kind: str = "embeddings") -> tuple[pa.Table, Manifest]:
    """One committed run's rows of `kind` (vectors as fixed_size_list) and its run record."""
    lk = _lake(lake)
    man = lk.manifest(dataset, method, run)
    entries = man.files.get(kind, [])
    tables = [lk.read_parquet(e["path"]) for e in entries]
    if not tables:
        raise ValueError(f"run {man.run_id} of {dataset}/{method} has no {kind} files")
    return fixed_vectors(pa.concat_tables(tables)), man


def read_embeddings(lake: str | Lake, dataset: str, method: str, run: str = "latest") -> pl.DataFrame:
    """One committed run's embeddings: columns node, vector (Array[f32, d])."""
    table, _ = read_table(lake, dataset, method, run)
    return pl.from_arrow(table)


def load_matrix(lake: str | Lake, dataset: str, method: str, run: str = "latest") -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 matrix [n, d]) of a committed run, in the order the rows were written."""
    table, _ = read_table(lake, dataset, method, run)
    vec = table.column("vector").combine_chunks()
    d = vec.type.list_size
    X = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)
    ids = table.column("node" if "node" in table.column_names else "token").to_numpy(zero_copy_only=False)
    return ids, X


def load_word_vectors(lake: str | Lake, dataset: str, method: str = "skipgram",
                      run: str = "latest") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(tokens, counts int64, float32 matrix [V, d]) of a committed corpus run (rows by count, descending)."""
    table, _ = read_table(lake, dataset, method, run)
    vec = table.column("vector").combine_chunks()
    X = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, vec.type.list_size).astype(np.float32, copy=False)
    return table.column("token").to_pylist(), table.column("count").to_numpy(), X


def most_similar(lake: str | Lake, dataset: str, method: str = "skipgram", word: str = "", k: int = 10,
                 run: str = "latest", case_insensitive: bool = False) -> list[tuple[str, float]]:
    """The k words nearest to `word` (cosine) in a committed corpus run; KeyError if it is not in the vocabulary."""
    from embedlake.workers.evaluate.words import most_similar as _most_similar
    words, _, X = load_word_vectors(lake, dataset, method, run)
    return _most_similar(words, X, word, k, case_insensitive)
