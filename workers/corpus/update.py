"""Corpus updates (issue 18, `vocab.update=true`): appending documents grows the vocabulary and
trains on the new text from the previous run's vectors, as gensim's
``model.build_vocab(new_sentences, update=True); model.train(new_sentences, ...)`` does.

Semantics (gensim 4 `prepare_vocab(update=True)` / `update_weights`):
- Old words keep their ids (rows), and their counts grow by their counts in the new text (the noise
  distribution of the update is that of the summed counts, ns_exponent as configured).
- Words new to the vocabulary are kept when they occur at least ``vocab.min_count`` times IN THE
  NEW TEXT, ordered by that count (descending, ties by the word) and appended after the old rows;
  ``vocab.max_vocab`` caps the total (old rows are never dropped).
- Old rows start from the previous run's input vectors (W_in, the published table) and output
  vectors (W_out, the run's internal `corpus_state` file); new rows start as a fresh run's rows of
  those ids do (``text_init``: uniform in [-1/d, 1/d] input, zero output).
- Training runs on the new text only. A word absent from it keeps its input vector bit for bit
  (skip-gram updates an input row only when the word is a centre or context word).
"""
from __future__ import annotations

import numpy as np
import polars as pl

from embedlake.errors import InputError
from embedlake.workers.corpus.text import summarise_counts, text_init

STATE_FILES = "corpus_state"        # the run record's files kind naming the output vectors (w_out.npy)


def update_vocab(old_words: list[str], old_counts: np.ndarray, shard_vocabs: list[tuple[list, np.ndarray]],
                 min_count: int = 5, max_vocab: int | None = None):
    """The grown vocabulary: (words, counts int64, per-shard remaps local id -> global id or -1, stats)."""
    old = pl.DataFrame({"w": pl.Series(list(old_words), dtype=pl.String),
                        "g": np.arange(len(old_words), dtype=np.int64), "c_old": np.asarray(old_counts, np.int64)})
    frames = [pl.DataFrame({"s": np.full(len(w), k, np.int32), "l": np.arange(len(w), dtype=np.int32),
                            "w": pl.Series(w, dtype=pl.String), "c": np.asarray(c, np.int64)})
              for k, (w, c) in enumerate(shard_vocabs)]
    allv = pl.concat(frames) if frames else pl.DataFrame(schema={"s": pl.Int32, "l": pl.Int32, "w": pl.String,
                                                                "c": pl.Int64})
    total = allv.group_by("w").agg(pl.col("c").sum()).join(old, on="w", how="left")
    room = None if max_vocab is None else max(0, max_vocab - len(old_words))
    fresh = total.filter(pl.col("g").is_null() & (pl.col("c") >= min_count)).sort(["c", "w"], descending=[True, False])
    fresh = (fresh if room is None else fresh.head(room)).with_row_index("i")
    fresh = fresh.select("w", "c", (pl.col("i").cast(pl.Int64) + len(old_words)).alias("g"))
    seen = total.filter(pl.col("g").is_not_null()).select("w", "c")
    counts = np.asarray(old_counts, np.int64).copy()
    grown = old.join(seen, on="w", how="left").sort("g")
    counts += grown["c"].fill_null(0).to_numpy().astype(np.int64)
    ids = pl.concat([old.select("w", "g"), fresh.select("w", "g")])
    g = allv.join(ids, on="w", how="left").sort(["s", "l"])["g"].fill_null(-1).to_numpy().astype(np.int32)
    bounds = np.concatenate([[0], np.cumsum([len(w) for w, _ in shard_vocabs])]).astype(np.int64)
    n_tokens, kept_tokens = int(total["c"].sum() or 0), int(seen["c"].sum() or 0) + int(fresh["c"].sum() or 0)
    stats = {"unique_words": total.height, "vocab": len(old_words) + fresh.height, "tokens": n_tokens,
             "kept_tokens": kept_tokens, "kept_token_share": kept_tokens / n_tokens if n_tokens else 0.0,
             "min_count": min_count, "max_vocab": max_vocab, "old_vocab": len(old_words), "new_words": fresh.height,
             "old_words_seen": seen.height}
    words = list(old_words) + fresh["w"].to_list()
    return words, np.concatenate([counts, fresh["c"].to_numpy().astype(np.int64)]), \
        [g[bounds[k]:bounds[k + 1]] for k in range(len(shard_vocabs))], stats


def update_merge_stage(old_words: list[str], old_counts: np.ndarray, min_count: int, max_vocab: int | None,
                       shard_stats: list[dict], *vocabs):
    """text.merge_stage for an update: (summary, words, counts, *remaps) of the grown vocabulary."""
    words, counts, remaps, vstats = update_vocab(old_words, old_counts, list(vocabs), min_count, max_vocab)
    summary = summarise_counts(shard_stats)
    summary.update(vstats)
    summary["shards"] = len(shard_stats)
    if summary["raw_tokens"] == 0:
        raise InputError("the appended corpus has no tokens: every file is empty or blank")
    return (summary, words, counts, *remaps)


def grown_tables(W_in: np.ndarray, W_out: np.ndarray, vocab_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W_in, W_out) for the grown vocabulary: the previous rows, then new rows as a fresh run of
    ``vocab_size`` words would start them (text_init's rows of those ids; zero output rows)."""
    old, dim = W_in.shape
    if W_out.shape != W_in.shape or vocab_size < old:
        raise ValueError(f"previous tables {W_in.shape} / {W_out.shape} do not fit a vocabulary of {vocab_size}")
    fresh_in, fresh_out = text_init(vocab_size, dim, seed)
    fresh_in[:old] = W_in
    fresh_out[:old] = W_out
    return fresh_in, fresh_out


def read_previous_stage(lake, vocab_entry: dict, table_entries: list[dict], w_out_entry: dict
                        ) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(words, counts, W_in, W_out) of the previous committed run: its vocabulary file, its published
    rows (in id order: the table is written in vocabulary row ranges) and its saved output vectors."""
    from embedlake.lake import Lake
    from embedlake.workers.corpus.text import read_vocab_stage
    lake = Lake(lake)
    words, counts = read_vocab_stage(lake, vocab_entry)
    tables = [lake.read_parquet(e["path"], columns=["token", "vector"]) for e in table_entries]
    tokens = [t for tb in tables for t in tb.column("token").to_pylist()]
    if tokens != words:
        raise InputError("the previous run's table rows are not its vocabulary in id order: cannot update it")
    dim = int(len(tables[0].column("vector")[0])) if tables and tables[0].num_rows else 0
    W_in = np.concatenate([tb.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)
                           for tb in tables]).astype(np.float32)
    W_out = lake.read_npy(w_out_entry["path"])
    if W_out.shape != W_in.shape:
        raise InputError(f"{w_out_entry['path']}: output vectors {W_out.shape}, the table has {W_in.shape}")
    return words, counts, W_in, W_out
