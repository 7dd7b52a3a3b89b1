"""Text corpus -> token-id sentences: sharding, tokenisation, per-shard vocabulary, merge, encoding.

Runs inside Ray workers (no Prefect, no Ray here). The pipeline is three data-parallel steps:

1. ``plan_shards``: every input file becomes one or more shards. Uncompressed text is cut into
   byte ranges that end on a newline (about ``shard_mb`` each), compressed text is one shard per
   file (a stream cannot be entered in the middle), Parquet is one shard per row group.
2. ``count_shard`` (one task per shard): decode, tokenise, count. It returns the shard's local
   vocabulary (word, count) plus the shard's tokens as *local* ids and its sentence lengths, so the
   text is tokenised exactly once; the big arrays stay in the object store.
3. ``merge_vocab`` (one task): sum the local counts, apply ``min_count`` and ``max_vocab``, order
   words by count (descending, ties by the word) and return one local->global remap per shard;
   ``encode_shard`` (one task per shard) applies it and drops the words that are not kept.

Sentence rules (documented in docs/corpus.md):
- one line = one sentence; lines with no token (empty or blank) are skipped and counted;
- a line longer than ``max_sentence_tokens`` raw tokens is split into consecutive sentences of
  ``max_sentence_tokens`` tokens (counted), or refused with ``long_lines="fail"``. Nothing is ever
  truncated silently (gensim cuts sentences at 10,000 tokens without a word);
- out-of-vocabulary words are removed from their sentence before training (word2vec / gensim do
  the same), so windows span over them.
Bad input raises ``InputError`` naming the file and the byte offset (and line when known):
invalid UTF-8 (unless ``encoding_errors="replace"``), NUL bytes (binary files), unreadable
compressed streams, Parquet without the text column. Empty files are skipped and counted; a
corpus with no token at all, or no word reaching ``min_count``, is an error.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from embedlake import storage
from embedlake.config import CorpusInputConfig, TextConfig, TrainConfig, WordEvalConfig
from embedlake.errors import InputError
from embedlake.workers.graph.ingest import open_decompressed, file_suffixes, expand_inputs
from embedlake.workers.run.checkpoints import StageHandle

WHITESPACE_PATTERN = r"\S+"
BLOCK_BYTES = 16 << 20          # decode / tokenise this much text at a time
_SCAN = 1 << 16


@dataclass(frozen=True)
class TextSpec:
    """How to turn text into tokens (the flat subset of TextConfig + CorpusInputConfig workers need).
    Its fields are also the text part of a corpus run's tokens fingerprint (`spec_dict`)."""
    tokenizer: str = "whitespace"
    pattern: str = r"\w+(?:['’-]\w+)*|[^\w\s]"
    lowercase: bool = False
    max_sentence_tokens: int = 10_000
    long_lines: str = "split"
    encoding_errors: str = "fail"
    text_column: str = "text"

    @classmethod
    def from_configs(cls, text_cfg: TextConfig, input_cfg: CorpusInputConfig) -> "TextSpec":
        return cls(tokenizer=text_cfg.tokenizer, pattern=text_cfg.pattern, lowercase=text_cfg.lowercase,
                   max_sentence_tokens=text_cfg.max_sentence_tokens, long_lines=text_cfg.long_lines,
                   encoding_errors=input_cfg.encoding_errors, text_column=input_cfg.text_column)

    @property
    def regex(self) -> str:
        return WHITESPACE_PATTERN if self.tokenizer == "whitespace" else self.pattern


# ------------------------------------------------------------------------------------------- plan

def plan_shards(uri: str, shard_bytes: int = 32 << 20, text_column: str = "text") -> list[dict]:
    """Shards of the input: dicts {path, kind (text|parquet), lo, hi, compression, row_group}."""
    shards: list[dict] = []
    for path in expand_inputs(uri):
        ext, comp = file_suffixes(path)
        fs, p = storage.filesystem(path)
        if ext == ".parquet":
            import pyarrow.parquet as pq
            try:
                with fs.open(p, "rb") as f:
                    pf = pq.ParquetFile(f)
                    names = pf.schema_arrow.names
                    groups = pf.metadata.num_row_groups
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types
                raise InputError(f"not a readable Parquet file ({e})", path=path) from None
            if text_column not in names:
                raise InputError(f"no text column {text_column!r} (columns: {names}); set input.text_column",
                                 path=path)
            shards.extend({"path": path, "kind": "parquet", "lo": 0, "hi": 0, "compression": None, "row_group": g}
                          for g in range(groups))
            continue
        size = int(fs.size(p))
        if comp is not None or size <= shard_bytes:
            shards.append({"path": path, "kind": "text", "lo": 0, "hi": size if comp is None else -1,
                           "compression": comp, "row_group": 0})
            continue
        cuts = [0]
        with fs.open(p, "rb") as f:
            for k in range(1, -(-size // shard_bytes)):
                cut = _next_line_start(f, k * shard_bytes, size)
                if cut > cuts[-1] and cut < size:
                    cuts.append(cut)
        cuts.append(size)
        shards.extend({"path": path, "kind": "text", "lo": a, "hi": b, "compression": None, "row_group": 0}
                      for a, b in zip(cuts[:-1], cuts[1:]))
    return shards


def _next_line_start(f, pos: int, size: int) -> int:
    """First byte offset >= pos that starts a line (the byte after a newline), or size."""
    f.seek(pos - 1)
    at = pos - 1
    while at < size:
        buf = f.read(_SCAN)
        if not buf:
            return size
        i = buf.find(b"\n")
        if i >= 0:
            return at + i + 1
        at += len(buf)
    return size


# ------------------------------------------------------------------------------------------- read

def _text_blocks(shard: dict, block_bytes: int = BLOCK_BYTES):
    """Yield (byte offset of the block in the (decompressed) file, bytes of whole lines)."""
    path, comp = shard["path"], shard["compression"]
    try:
        if comp is None:
            fs, p = storage.filesystem(path)
            f = fs.open(p, "rb")
            f.seek(shard["lo"])
            remaining = shard["hi"] - shard["lo"]
        else:
            f = open_decompressed(path, comp)
            remaining = -1
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    offset = shard["lo"]
    tail = b""
    try:
        while True:
            want = block_bytes if remaining < 0 else min(block_bytes, remaining)
            if want == 0:
                break
            try:
                block = f.read(want)
            except (EOFError, OSError, ValueError) as e:
                raise InputError(f"compressed stream is truncated or corrupt ({type(e).__name__}: {e})",
                                 path=path) from None
            except Exception as e:  # noqa: BLE001 - zstandard.ZstdError and friends
                raise InputError(f"cannot read ({type(e).__name__}: {e})", path=path) from None
            if not block:
                break
            if remaining > 0:
                remaining -= len(block)
            block = tail + block
            cut = block.rfind(b"\n")
            if cut < 0:
                tail = block
                continue
            yield offset, block[:cut + 1]
            offset += cut + 1
            tail = block[cut + 1:]
        if tail:
            yield offset, tail
    finally:
        f.close()


def decode_block(data: bytes, path: str, offset: int, errors: str = "fail",
                 line: int | None = None) -> tuple[str, int]:
    """UTF-8 text of a block and the number of invalid sequences replaced.

    A NUL byte means a binary file and is refused whatever the policy; invalid UTF-8 is refused
    with the absolute byte offset (and line, when the block's first line number is known).
    """
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(f"byte offset {offset + nul}: NUL byte: this looks like a binary file, not UTF-8 text",
                         path=path, line=None if line is None else line + data.count(b"\n", 0, nul))
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as e:
        if errors != "replace":
            bad = data[e.start:e.start + 4]
            raise InputError(f"byte offset {offset + e.start}: invalid UTF-8 ({e.reason}, bytes {bad!r}); "
                             "set input.encoding_errors=replace to replace such bytes with U+FFFD",
                             path=path, line=None if line is None else line + data.count(b"\n", 0, e.start)) from None
    text = data.decode("utf-8", errors="replace")
    return text, text.count("\ufffd") - data.count("\ufffd".encode())


def _parquet_lines(shard: dict, spec: TextSpec) -> pl.Series:
    import pyarrow.parquet as pq
    fs, p = storage.filesystem(shard["path"])
    try:
        with fs.open(p, "rb") as f:
            t = pq.ParquetFile(f).read_row_group(shard["row_group"], columns=[spec.text_column])
    except Exception as e:  # noqa: BLE001
        raise InputError(f"not a readable Parquet file ({e})", path=shard["path"]) from None
    col = t.column(0)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise InputError(f"column {spec.text_column!r} has type {col.type}, expected a string column",
                         path=shard["path"], field=spec.text_column)
    return pl.Series("l", col.combine_chunks() if col.num_chunks else pa.array([], pa.string())).fill_null("")


# ------------------------------------------------------------------------------------------- tokenise

def tokenise_lines(lines: pl.Series, spec: TextSpec) -> tuple[pl.Series, np.ndarray]:
    """(flat token Series, raw tokens per line int64) for a Series of lines."""
    if spec.lowercase:
        lines = lines.str.to_lowercase()
    toks = lines.str.extract_all(spec.regex)
    lens = toks.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = toks.explode().drop_nulls()
    if len(flat) != int(lens.sum()):          # guard against explode semantics changing
        raise AssertionError("token count mismatch while exploding lines")
    return flat, lens


def split_long(lens: np.ndarray, max_tokens: int) -> np.ndarray:
    """Sentence lengths after cutting every line of L > max_tokens tokens into ceil(L / max) pieces.

    Pieces are consecutive: max_tokens each, the remainder last (a 25,000-token line with max
    10,000 -> 10,000 + 10,000 + 5,000). Empty lines (L = 0) are dropped.
    """
    lens = lens[lens > 0]
    pieces = -(-lens // max_tokens)
    if (pieces == 1).all():
        return lens
    rep = np.repeat(lens, pieces)
    start = np.repeat(np.cumsum(pieces) - pieces, pieces)
    k = np.arange(len(rep)) - start
    return np.minimum(max_tokens, rep - k * max_tokens)


def _split_lines(text: str) -> pl.Series:
    if text.endswith("\n"):
        text = text[:-1]
    return pl.Series("l", [text]).str.split("\n").explode()


def count_shard(shard: dict, spec: TextSpec) -> tuple[dict, tuple[list, np.ndarray], np.ndarray, np.ndarray]:
    """Tokenise one shard. Returns (stats, (local words, counts), local ids int32, sentence lengths int64).

    Local ids index the shard's own word list; ``merge_vocab`` maps them to global ids.
    """
    import time
    t0 = time.perf_counter()
    path = shard["path"]
    stats = {"lines": 0, "empty_lines": 0, "raw_tokens": 0, "long_lines": 0, "extra_sentences": 0,
             "replaced_invalid_utf8": 0, "bytes": 0}
    token_parts: list[pl.Series] = []
    len_parts: list[np.ndarray] = []

    def add(lines: pl.Series, first_line: int | None, offset: int, block: bytes | None) -> None:
        flat, sent = _count_lines(lines, spec, stats, path, first_line, offset, block)
        if len(flat):
            token_parts.append(flat)
            len_parts.append(sent)

    if shard["kind"] == "parquet":
        lines = _parquet_lines(shard, spec)
        stats["bytes"] = int(lines.str.len_bytes().sum() or 0)
        add(lines, None, 0, None)
    else:
        line_no = 1 if shard["lo"] == 0 else None
        for offset, block in _text_blocks(shard):
            text, replaced = decode_block(block, path, offset, spec.encoding_errors, line_no)
            stats["replaced_invalid_utf8"] += replaced
            stats["bytes"] += len(block)
            lines = _split_lines(text)
            add(lines, line_no, offset, block)
            if line_no is not None:
                line_no += len(lines)
    stats["empty_file"] = stats["bytes"] == 0
    stats["sentences"] = int(sum(len(x) for x in len_parts))
    if not token_parts:
        return stats, ([], np.zeros(0, np.int64)), np.zeros(0, np.int32), np.zeros(0, np.int64)
    words, counts, ids = _local_vocab(pl.concat(token_parts) if len(token_parts) > 1 else token_parts[0])
    stats["local_vocab"] = len(words)
    stats["seconds"] = time.perf_counter() - t0
    return stats, (words, counts), ids, np.concatenate(len_parts)


def _count_lines(lines: pl.Series, spec: TextSpec, stats: dict, path: str, first_line: int | None, offset: int,
                 block: bytes | None) -> tuple[pl.Series, np.ndarray]:
    """Tokenise a run of lines, apply text.long_lines and add the lines' figures to `stats`.
    Returns (flat tokens, sentence lengths after splitting long lines)."""
    flat, lens = tokenise_lines(lines, spec)
    long = np.flatnonzero(lens > spec.max_sentence_tokens)
    if len(long):
        if spec.long_lines == "fail":
            i = int(long[0])
            where = ""
            if block is not None:
                starts = np.concatenate([[0], np.cumsum(lines.str.len_bytes().to_numpy()[:-1] + 1)])
                where = f"byte offset {offset + int(starts[i])}: "
            raise InputError(f"{where}line has {int(lens[i]):,} tokens, more than text.max_sentence_tokens="
                             f"{spec.max_sentence_tokens:,} (text.long_lines=split cuts such lines into "
                             "consecutive sentences)", path=path,
                             line=None if first_line is None else first_line + i)
        stats["long_lines"] += len(long)
    sent = split_long(lens, spec.max_sentence_tokens)
    stats["extra_sentences"] += int(len(sent) - np.count_nonzero(lens))
    stats["lines"] += len(lens)
    stats["empty_lines"] += int(np.count_nonzero(lens == 0))
    stats["raw_tokens"] += int(lens.sum())
    return flat, sent


def _local_vocab(tokens: pl.Series) -> tuple[list, np.ndarray, np.ndarray]:
    """(words, counts int64, local ids int32 of `tokens`): one shard's own word list and its tokens' ids."""
    df = pl.DataFrame({"w": tokens})
    vocab = df.group_by("w").len(name="c").with_row_index("i")
    ids = df.join(vocab.select("w", "i"), on="w", how="left", maintain_order="left")["i"].to_numpy().astype(np.int32)
    return vocab["w"].to_list(), vocab["c"].to_numpy().astype(np.int64), ids


# ------------------------------------------------------------------------------------------- merge

def merge_vocab(shard_vocabs: list[tuple[list, np.ndarray]], min_count: int = 5, max_vocab: int | None = None):
    """Sum per-shard counts; keep words with count >= min_count (at most max_vocab most frequent).

    Returns (words list[str] ordered by count desc then word, counts int64, remaps per shard
    (int32 local id -> global id, -1 = dropped), stats).
    """
    frames = [pl.DataFrame({"s": np.full(len(w), k, np.int32), "l": np.arange(len(w), dtype=np.int32),
                            "w": pl.Series(w, dtype=pl.String), "c": np.asarray(c, np.int64)})
              for k, (w, c) in enumerate(shard_vocabs)]
    allv = pl.concat(frames) if frames else pl.DataFrame(schema={"s": pl.Int32, "l": pl.Int32, "w": pl.String,
                                                                "c": pl.Int64})
    total = allv.group_by("w").agg(pl.col("c").sum())
    kept = total.filter(pl.col("c") >= min_count).sort(["c", "w"], descending=[True, False])
    if max_vocab is not None:
        kept = kept.head(max_vocab)
    kept = kept.with_row_index("g")
    joined = allv.join(kept.select("w", "g"), on="w", how="left").sort(["s", "l"])
    g = joined["g"].fill_null(-1).to_numpy().astype(np.int32)
    bounds = np.concatenate([[0], np.cumsum([len(w) for w, _ in shard_vocabs])])
    remaps = [g[bounds[k]:bounds[k + 1]] for k in range(len(shard_vocabs))]
    n_tokens = int(total["c"].sum() or 0)
    kept_tokens = int(kept["c"].sum() or 0)
    stats = {"unique_words": total.height, "vocab": kept.height, "tokens": n_tokens, "kept_tokens": kept_tokens,
             "kept_token_share": kept_tokens / n_tokens if n_tokens else 0.0,
             "min_count": min_count, "max_vocab": max_vocab}
    return kept["w"].to_list(), kept["c"].to_numpy().astype(np.int64), remaps, stats


def encode_shard(remap: np.ndarray, ids: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global ids of one shard with dropped words removed: (tokens int32, offsets int64[S + 1]).

    Sentences left empty are removed; offsets are recomputed from the kept-token prefix sums.
    """
    g = remap[ids] if len(ids) else np.zeros(0, np.int32)
    keep = g >= 0
    csum = np.zeros(len(g) + 1, np.int64)
    np.cumsum(keep, out=csum[1:])
    bounds = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=bounds[1:])
    off = csum[bounds]
    nonempty = np.diff(off) > 0
    off = np.concatenate([[0], off[1:][nonempty]]).astype(np.int64)
    return np.ascontiguousarray(g[keep], dtype=np.int32), off


def concat_sentences(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One (tokens, offsets) from per-shard pieces, in shard order."""
    toks = [t for t, _ in parts]
    offs = [np.zeros(1, np.int64)]
    base = 0
    for t, o in parts:
        offs.append(o[1:] + base)
        base += len(t)
    return (np.concatenate(toks) if toks else np.zeros(0, np.int32)).astype(np.int32, copy=False), \
        np.concatenate(offs)


def sentences_table(tokens: np.ndarray, offsets: np.ndarray) -> pa.Table:
    """Token-id shard rows: `sentence` (large_list<int32> of global ids = rows of the vocab file)."""
    return pa.table({"sentence": pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()),
                                                               pa.array(tokens, pa.int32()))})


def vocab_table(words: list[str], counts: np.ndarray) -> pa.Table:
    return pa.table({"id": pa.array(np.arange(len(words), dtype=np.int32)), "token": pa.array(words, pa.string()),
                     "count": pa.array(np.asarray(counts, np.int64))})


def tokenise_corpus(uri: str, spec: TextSpec | None = None, min_count: int = 5, max_vocab: int | None = None,
                    shard_bytes: int = 32 << 20):
    """In-process convenience (tests, benchmarks): the whole path without Ray.

    Returns (words, counts, tokens, offsets, stats)."""
    spec = spec or TextSpec()
    shards = plan_shards(uri, shard_bytes, spec.text_column)
    results = [count_shard(s, spec) for s in shards]
    words, counts, remaps, vstats = merge_vocab([r[1] for r in results], min_count, max_vocab)
    parts = [encode_shard(m, r[2], r[3]) for m, r in zip(remaps, results)]
    tokens, offsets = concat_sentences(parts)
    stats = summarise_counts([r[0] for r in results])
    stats.update(vstats)
    stats["shards"] = len(shards)
    stats["train_sentences"] = len(offsets) - 1
    return words, counts, tokens, offsets, stats


def summarise_counts(shard_stats: list[dict]) -> dict:
    keys = ("lines", "empty_lines", "raw_tokens", "long_lines", "extra_sentences", "replaced_invalid_utf8",
            "bytes", "sentences")
    out = {k: int(sum(s.get(k, 0) for s in shard_stats)) for k in keys}
    out["empty_files"] = int(sum(1 for s in shard_stats if s.get("empty_file")))
    return out


def spec_dict(spec: TextSpec) -> dict:
    return asdict(spec)


# ------------------------------------------------------------------------------------------- stages
# Bodies of the Ray tasks in tasks/corpus.py (plain functions over arrays and lake URIs).

def plan_stage(input_cfg: CorpusInputConfig, env: storage.StorageEnv | None = None) -> list[dict]:
    """`env`: the driver's S3 settings (workers on other nodes do not share its environment)."""
    if not input_cfg.path:
        raise InputError("no corpus given (--input / input.path)")
    with storage.using(env):
        return plan_shards(input_cfg.path, int(input_cfg.shard_mb * (1 << 20)), input_cfg.text_column)


def count_stage(shard: dict, spec: TextSpec, env: storage.StorageEnv | None = None):
    with storage.using(env):
        return count_shard(shard, spec)


def merge_stage(min_count: int, max_vocab: int | None, shard_stats: list[dict], *vocabs):
    """(summary, words, counts, *remaps): the summary merges the shard statistics too."""
    words, counts, remaps, vstats = merge_vocab(list(vocabs), min_count, max_vocab)
    summary = summarise_counts(shard_stats)
    summary.update(vstats)
    summary["shards"] = len(shard_stats)
    if summary["raw_tokens"] == 0:
        raise InputError("the corpus has no tokens: every file is empty or blank")
    if not words:
        raise InputError(f"no word occurs at least vocab.min_count={min_count} times "
                         f"({summary['unique_words']:,} distinct words, {summary['raw_tokens']:,} tokens)")
    return (summary, words, counts, *remaps)


def encode_stage(lake, dataset: str, method: str, run_id: str, shard_index: int, remap: np.ndarray,
                 ids: np.ndarray, lens: np.ndarray):
    """(file entry, tokens, offsets): the shard's token-id sentences, also written to the lake."""
    from embedlake.lake import Lake
    lake = Lake(lake)
    tokens, offsets = encode_shard(remap, ids, lens)
    rel = Lake.part_path("tokens", dataset, method, run_id, shard_index, sub="sentences")
    return lake.write_parquet(rel, sentences_table(tokens, offsets)).to_dict(), tokens, offsets


def write_vocab_stage(lake, dataset: str, method: str, run_id: str, words: list, counts: np.ndarray) -> dict:
    from embedlake.lake import Lake
    lake = Lake(lake)
    rel = f"{Lake.run_dir('tokens', dataset, method, run_id)}/vocab/vocab.parquet"
    return lake.write_parquet(rel, vocab_table(words, counts)).to_dict()


def text_init(vocab_size: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Initial tables for word vectors: input rows uniform in [-1/d, 1/d], output rows zero.

    This is gensim 4's initialisation (word2vec.c and the graph pipeline use half that range).
    On Brown (d=100, 5 epochs, seeds 0-2, same random streams otherwise) it raised WordSim353
    rho by +0.004 / +0.005 / +0.006, so text training starts from it.
    """
    rng = np.random.default_rng(seed)
    W_in = rng.random((vocab_size, dim), dtype=np.float32)
    W_in *= np.float32(2.0)
    W_in -= np.float32(1.0)
    W_in /= np.float32(dim)
    return W_in, np.zeros((vocab_size, dim), np.float32)


def train_stage(vocab_size: int, counts: np.ndarray, train: TrainConfig, *parts: np.ndarray, threads: int = 0,
                progress=None, checkpoint: StageHandle | None = None, init_tables: tuple | None = None,
                save_output: tuple | None = None):
    """Concatenate the shards' sentences (shard order) and train; returns (W_in, stats).

    threads: kernel threads (0 = $EMBEDLAKE_TRAIN_THREADS, else all); progress: reporter(done,
    total, loss=...) of tasks/progress.py, or None. checkpoint (the run's `train` stage,
    tasks/corpus.py `train_words`): the numba engine checkpoints W_in / W_out after every epoch
    and, given the resume state of epoch k, continues at epoch k + 1 (bit-identical with one
    thread); the torch engine has no epoch hook and checkpoints its finished table only
    (workers/train/stages.py's checkpoint helpers write both, so the layout and fault points are
    those of the graph flow).
    init_tables: (W_in, W_out) to start from (a vocabulary update, workers/corpus/update.py) instead
    of text_init; save_output: (lake, dataset, method, run_id): the final W_out is saved as the run's
    state, its file entry in stats["output_state"] (what the next update continues from)."""
    import os

    from embedlake.workers.train.stages import checkpoint_epoch, checkpoint_info, resumed_tables
    ck = checkpoint
    tokens, offsets = concat_sentences(list(zip(parts[0::2], parts[1::2])))
    init, start = resumed_tables(ck)
    kw = dict(counts=counts, dim=train.dim, window=train.window, negatives=train.negatives,
              ns_exponent=train.ns_exponent, epochs=train.epochs, lr=train.lr, min_lr=train.min_lr,
              sample=train.sample, seed=train.seed,
              init=init or init_tables or text_init(vocab_size, train.dim, train.seed))
    threads = threads or int(os.environ.get("EMBEDLAKE_TRAIN_THREADS", "0")) or 0
    if train.engine == "torch":
        from embedlake.workers.train.torch_engine import train_sgns_torch
        W, W_out, stats = train_sgns_torch(tokens, offsets, vocab_size, device=train.device, threads=threads, **kw)
        stats["sentences"] = len(offsets) - 1
        saved_output(stats, save_output, W_out)
        if ck is not None:
            checkpoint_epoch(ck, train.epochs, train.epochs, W, None, stats)
        return W, stats
    from embedlake.workers.train.skipgram import train_sgns
    cb = (lambda done, total, loss: progress(done, total, loss=loss)) if progress else None
    on_epoch = None
    if ck is not None:
        on_epoch = lambda k, W_in, W_out: checkpoint_epoch(ck, k, train.epochs, W_in, W_out, None)  # noqa: E731
    W, W_out, stats = train_sgns(tokens, offsets, vocab_size, threads=threads, progress=cb, start_epoch=start,
                                 on_epoch=on_epoch, shared_negatives=train.negatives_per == "window",
                                 split_negatives=train.split_negatives, **kw)
    stats["sentences"] = len(offsets) - 1
    saved_output(stats, save_output, W_out)
    if ck is not None:           # the final state also carries the training figures
        checkpoint_info(ck, stats)
    return W, stats


def saved_output(stats: dict, save_output: tuple | None, W_out: np.ndarray | None) -> None:
    """Save the final output vectors as the run's state when asked (stats["output_state"]: its entry)."""
    if save_output is not None and W_out is not None:
        from embedlake.lake import Lake
        lake, dataset, method, run_id = save_output
        rel = f"{Lake.run_dir('state', dataset, method, run_id)}/corpus/w_out.npy"
        stats["output_state"] = Lake(lake).write_npy(rel, np.ascontiguousarray(W_out, np.float32)).to_dict()


def _read_checked(lake, entry: dict) -> bytes:
    """A run file's bytes, checked against its FileEntry (size and sha256) before they are reused."""
    import hashlib

    from embedlake.errors import LakeError
    from embedlake.lake import Lake
    lake = Lake(lake)
    data = lake.read_bytes(entry["path"])
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise LakeError(f"{lake.url(entry['path'])}: changed since it was checkpointed (size or sha256 differ); "
                        "re-run with -p train.resume=false to tokenise again")
    return data


def read_sentences_stage(lake, entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32, offsets int64) of a token-id shard written by `encode_stage` (a resumed run)."""
    import io

    import pyarrow.parquet as pq
    col = pq.read_table(io.BytesIO(_read_checked(lake, entry)), columns=["sentence"]).column(0).combine_chunks()
    off = col.offsets.to_numpy().astype(np.int64)
    tokens = col.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return np.ascontiguousarray(tokens), off - off[0]


def read_vocab_stage(lake, entry: dict) -> tuple[list, np.ndarray]:
    """(words in id order, counts int64) of the vocabulary file written by `write_vocab_stage`."""
    import io

    import pyarrow.parquet as pq
    t = pq.read_table(io.BytesIO(_read_checked(lake, entry)))
    ids = t.column("id").to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise AssertionError("vocabulary file rows are not in id order")
    return t.column("token").to_pylist(), t.column("count").to_numpy().astype(np.int64)


def write_words_part(lake, dataset: str, method: str, run_id: str, partition: int, lo: int, hi: int,
                     words: list, counts: np.ndarray, X: np.ndarray) -> dict:
    """One output partition: rows token (string), count (int64), vector (fixed_size_list<float32>)."""
    from embedlake.lake import Lake, embeddings_table
    lake = Lake(lake)
    table = embeddings_table(pa.array(words[lo:hi], pa.string()), X[lo:hi],
                             extra={"count": pa.array(np.asarray(counts[lo:hi], np.int64))}, id_name="token")
    rel = Lake.part_path("embeddings", dataset, method, run_id, partition)
    return lake.write_parquet(rel, table).to_dict()


def evaluate_stage(words: list, counts: np.ndarray, X: np.ndarray, eval_cfg: WordEvalConfig) -> dict:
    from embedlake.workers.evaluate.words import evaluate_words
    return evaluate_words(words, X, eval_cfg.benchmarks, eval_cfg.case_insensitive, eval_cfg.restrict_vocab,
                          eval_cfg.analogies, counts)


# ------------------------------------------------------------------ learned tables (train.table)

COOC_MAX_PAIRS = 20_000_000     # distinct co-occurrence pairs kept in memory (workers/corpus/cooccur.py cap)


def learned_table_stage(vocab_size: int, counts: np.ndarray, codec: str, params: dict, train: TrainConfig, *parts,
                        threads: int = 0, progress=None):
    """Ray worker body of embed-corpus -p train.table=hash|compose|qr|unified: codes for the V words,
    then a K-row table trained by compositional skip-gram on the shards' sentences (shard order,
    the full-table path's stream); the V x d table never exists. Returns (state, info): state
    {"table": K x d} (+ "codes" V x R level-local for compose / qr / unified; hash codes are the
    row position's bucket, recomputed on encode), info {"fit_s", "stats", "codes", ...}.

    compose's codes are the structure codes (codec_compose.structure_codes) of the words'
    co-occurrence graph within train.window (workers/corpus/cooccur.py, counted shard by shard).
    threads: kernel threads (0 = $EMBEDLAKE_TRAIN_THREADS, else all); progress: reporter(done,
    total, loss=...) of tasks/progress.py, or None."""
    import os
    import time

    from embedlake.workers.compress import compose as cc
    from embedlake.workers.compress.hashing import hash_buckets
    t0 = time.perf_counter()
    V = int(vocab_size)
    pairs = list(zip(parts[0::2], parts[1::2]))
    threads = threads or int(os.environ.get("EMBEDLAKE_TRAIN_THREADS", "0")) or 0
    info: dict = {}
    if codec == "hash":         # the hashing trick: R = 1 row per word, weight 1 (codec_hash's layout)
        K = int(params["buckets"])
        lp = {"levels": 1, "level_rows": [K], "offsets": [0], "table_rows": K, "combine": "sum"}
        codes, code_out = hash_buckets(np.arange(V), K, params.get("seed", 0)).reshape(V, 1), None
        info["codes"] = "hash"
    else:
        lp, csr = params, None
        if codec == "compose":
            from embedlake.workers.corpus.cooccur import cooccurrence_csr
            t1 = time.perf_counter()
            indptr, indices, weights, cinfo = cooccurrence_csr(pairs, V, int(train.window),
                                                               max_pairs=COOC_MAX_PAIRS)
            csr = (indptr, indices, weights)
            info["cooccurrence"] = {**cinfo, "seconds": round(time.perf_counter() - t1, 3)}
        codes, code_out, extra = cc.assign_codes(codec, lp, V, csr=csr, seed=params.get("seed", 0),
                                                 sketch_dim=params.get("sketch_dim", 256),
                                                 train_sample=params.get("train_sample", 100_000), threads=threads)
        info.update(extra)
    tokens, offsets = concat_sentences(pairs)
    cb = (lambda done, total, loss: progress(done, total, loss=loss)) if progress else None
    state, stats = cc.train_compositional_tokens(tokens, offsets, V, codec, lp, train, codes, code_out,
                                                 counts=counts, threads=threads, progress=cb)
    stats["sentences"] = len(offsets) - 1
    if codec == "hash":
        state = {"table": state["table"]}
    info["stats"] = stats
    info["fit_s"] = round(time.perf_counter() - t0, 4)
    return state, info


def learned_eval_stage(lake, manifest_fields: dict, words: list, counts: np.ndarray, eval_cfg: WordEvalConfig
                       ) -> dict:
    """Word similarity / analogies on vectors materialised from the WRITTEN codes + table (read back
    from the lake), only for the eval.restrict_vocab most frequent words the evaluators use."""
    import time

    from embedlake.lake import Lake, Manifest
    from embedlake.workers.compress import codecs as cz
    from embedlake.workers.compress.store import table_from_manifest
    t0 = time.perf_counter()
    table = table_from_manifest(Lake(lake), Manifest(**manifest_fields))
    r = min(len(words), int(eval_cfg.restrict_vocab))
    X = cz.decode(table.codec, {k: v[:r] for k, v in table.cols.items()}, table.state, table.params, table.dim)
    m = evaluate_stage(list(words[:r]), np.asarray(counts)[:r], X, eval_cfg)
    if m:
        m["materialised"] = {"rows": r, "of": len(words), "decode_s": round(time.perf_counter() - t0, 4)}
    return m
