"""Ingest: edge lists and labels -> dense ids -> CSR, with errors that name file and line.

Inputs: TSV / CSV / whitespace text (optionally .gz / .zst / .bz2) or Parquet; one file, a folder
or a glob of many; local paths or s3:// URLs (fsspec). Text is read in streaming chunks of lines
and parsed by polars; every line keeps its number, so a malformed line is reported as
`file: line N: ...`. Nothing is written here: the caller writes the lake only after ingest
succeeded, so bad input leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import glob as _glob
import hashlib
import io
import json
import mmap
import os
import re
from dataclasses import dataclass, field

import numba
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from embedlake import storage
from embedlake.errors import InputError
from embedlake.workers.graph.csr import CSRGraph

TEXT_SUFFIXES = (".tsv", ".csv", ".txt", ".edges", ".edgelist", ".edg", ".el", "")
# Lines parsed per polars call: parsing holds several string copies of a chunk, so this bounds the
# reader's transient memory (~100 B per line) whatever chunk_rows says; larger adds no speed.
PARSE_ROWS = 131_072
COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}


@dataclass
class EdgeSpec:
    """How to read an edge list (the flat subset of InputConfig the reader needs)."""
    directed: bool = False
    weighted: bool = False
    id_type: str = "int"
    delimiter: str | None = None
    has_header: bool | None = None
    src_col: str = "src"
    dst_col: str = "dst"
    weight_col: str = "weight"
    self_loops: str = "drop"
    duplicates: str = "drop"
    num_nodes: int | None = None
    chunk_rows: int = 2_000_000


@dataclass
class IngestedGraph:
    csr: CSRGraph
    node_ids: np.ndarray                 # original id of dense id i (int64 or object/str)
    id_type: str
    sources: list[str]
    checksum: str                        # sha256 over the input bytes (incremental re-runs)
    input_rows: int
    stats: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
def expand_inputs(uri: str) -> list[str]:
    """A file, a folder (every non-hidden file in it) or a glob; local or s3://."""
    fs, path = storage.filesystem(uri)
    proto = storage.split_protocol(uri)[0]
    pref = "" if proto == "file" else f"{proto}://"
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path)) if proto != "file" else sorted(_glob.glob(path))
    elif fs.isdir(path):
        found = sorted(p for p in fs.find(path) if not os.path.basename(p).startswith((".", "_")))
    elif fs.exists(path):
        found = [path]
    else:
        raise InputError("file not found", path=uri)
    if not found:
        raise InputError("no input files match", path=uri)
    out = []
    for p in found:
        if proto == "file" and not p.startswith("/"):
            p = "/" + p if not os.path.exists(p) else os.path.abspath(p)
        out.append(p if proto == "file" else pref + p)
    return out


def file_suffixes(path: str) -> tuple[str, str | None]:
    """(format suffix, compression) of a file name, e.g. ('.tsv', 'gzip')."""
    base = path.rsplit("/", 1)[-1].lower()
    comp = None
    root, ext = os.path.splitext(base)
    if ext in COMPRESSION:
        comp = COMPRESSION[ext]
        root, ext = os.path.splitext(root)
    return ext, comp


def open_decompressed(path: str, compression: str | None):
    """A binary reader of a local or remote file that decompresses `compression` (as file_suffixes
    names it) on the fly, so callers stream lines without caring how the file is stored."""
    fs, p = storage.filesystem(path)
    raw = fs.open(p, "rb")
    if compression is None:
        return raw
    if compression == "zstd":
        return _ZstdReader(raw)
    if compression == "gzip":
        import gzip
        return gzip.GzipFile(fileobj=raw)
    if compression == "bz2":
        import bz2
        return bz2.BZ2File(raw)
    import lzma
    return lzma.LZMAFile(raw)


class _ZstdReader(io.RawIOBase):
    """Streaming zstd that refuses a truncated stream.

    zstandard's stream_reader ends quietly when the input stops inside a frame, so a cut file would
    ingest as a smaller graph; here the end of input inside a frame raises EOFError (-> InputError).
    Concatenated frames are read one after another.
    """

    def __init__(self, raw, block: int = 1 << 20):
        import zstandard
        self._zstd, self.raw, self.block = zstandard, raw, block
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._started = False            # bytes of the current frame were fed
        self._buf = b""

    def readable(self):
        return True

    def readinto(self, b):
        while not self._buf:
            data = self.raw.read(self.block)
            if not data:
                if self._started and not self._d.eof:
                    raise EOFError("zstd stream ended inside a frame")
                return 0
            while data:
                if self._d.eof:                       # next frame of a multi-frame file
                    self._d = self._zstd.ZstdDecompressor().decompressobj()
                self._started = True
                try:
                    self._buf += self._d.decompress(data)
                except self._zstd.ZstdError as e:
                    raise ValueError(f"corrupt zstd data: {e}") from None
                data = self._d.unused_data if self._d.eof else b""
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self):
        self.raw.close()
        super().close()


class HashingReader(io.RawIOBase):
    """Passes bytes through while hashing them (input checksum without a second pass)."""

    def __init__(self, f, h):
        self.f, self.h = f, h

    def readable(self):
        return True

    def readinto(self, b):
        data = self.f.read(len(b))
        if not data:
            return 0
        self.h.update(data)
        n = len(data)
        b[:n] = data
        return n


def iter_line_chunks(path: str, chunk_rows: int, h=None):
    """Yield (first_line_number, bytes of whole lines) in chunks of about chunk_rows lines."""
    ext, comp = file_suffixes(path)
    try:
        f = open_decompressed(path, comp)
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    approx = max(chunk_rows * 16, 1 << 20)
    line_no = 1
    tail = b""
    try:
        stream = io.BufferedReader(HashingReader(f, h), 1 << 20) if h is not None else f
        while True:
            try:
                block = stream.read(approx)
            except (EOFError, OSError, ValueError) as e:
                # truncated gzip / zstd streams end here
                raise InputError(f"compressed stream is truncated or corrupt ({type(e).__name__}: {e})",
                                 path=path) from None
            if not block:
                break
            block = tail + block
            cut = block.rfind(b"\n")
            if cut < 0:
                tail = block
                continue
            body, tail = block[:cut + 1], block[cut + 1:]
            yield line_no, body
            line_no += body.count(b"\n")
        if tail:
            yield line_no, tail
    finally:
        f.close()


def detect_sep(line: str, ext: str) -> str:
    if ext == ".tsv":
        return "\t"
    if ext == ".csv":
        return ","
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    return " "


def parse_text_chunk(body: bytes, first_line: int, path: str, sep: str | None, ext: str, spec: EdgeSpec,
                      header_state: dict) -> tuple[pl.DataFrame, str]:
    """Parse one chunk of lines into columns src, dst[, weight] (strings), checking every line."""
    try:
        lines = pl.read_csv(io.BytesIO(body), has_header=False, separator="\x1f", quote_char=None,
                            new_columns=["line"], schema={"line": pl.String}, encoding="utf8")
    except Exception as e:  # noqa: BLE001 - polars reports invalid utf-8 and similar here
        line = first_line
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as u:       # name the exact line (failure path only)
            line = first_line + body.count(b"\n", 0, u.start)
        raise InputError(f"cannot decode text ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
                         "edge lists must be UTF-8 text", path=path, line=line) from None
    lines = lines.with_row_index("row").with_columns(
        pl.col("line").str.strip_chars_end("\r").str.strip_chars())
    lines = lines.filter(pl.col("line").is_not_null() & (pl.col("line") != "") & ~pl.col("line").str.starts_with("#")
                         & ~pl.col("line").str.starts_with("%"))
    if lines.height == 0:
        return pl.DataFrame(schema={"src": pl.String, "dst": pl.String, "weight": pl.String, "row": pl.UInt32}), sep
    if sep is None:
        sep = detect_sep(lines["line"][0], ext)
    if sep == " ":
        lines = lines.with_columns(pl.col("line").str.replace_all(r"\s+", " "))
    ncols = 3 if spec.weighted else 2
    if not header_state.get("done"):
        header_state["done"] = True
        if _is_header(lines["line"][0].split(sep), spec):
            lines = lines.slice(1)
    counts = lines.select(pl.col("line").str.count_matches(sep, literal=True).alias("n"), "row")
    if spec.weighted:
        bad = counts.filter(pl.col("n") != ncols - 1)
    else:  # a third column (weight) is tolerated and ignored when not weighted
        bad = counts.filter((pl.col("n") < 1) | (pl.col("n") > 2))
    if bad.height:
        r = bad.row(0, named=True)
        got = r["n"] + 1
        raise InputError(f"expected {ncols} columns separated by {sep!r}, found {got}",
                         path=path, line=first_line + int(r["row"]))
    parts = lines.select(pl.col("line").str.split(sep).alias("f"), "row")
    cols = [pl.col("f").list.get(0).str.strip_chars().alias("src"),
            pl.col("f").list.get(1).str.strip_chars().alias("dst")]
    if spec.weighted:
        cols.append(pl.col("f").list.get(2).str.strip_chars().alias("weight"))
    else:
        cols.append(pl.lit(None, dtype=pl.String).alias("weight"))
    df = parts.select(*cols, "row")
    return df.with_columns((pl.col("row") + first_line).alias("row")), sep


def _is_header(first: list[str], spec: EdgeSpec) -> bool:
    """Whether a file's first content line (split into fields) is a header: has_header, else a
    non-numeric first field (int ids) or exactly the src_col / dst_col names (str ids)."""
    if spec.has_header is not None:
        return spec.has_header
    if spec.id_type == "str":
        return [c.strip() for c in first[:2]] == [spec.src_col, spec.dst_col]
    return not _looks_numeric(first[0])


def text_header(path: str, spec: EdgeSpec) -> tuple[int, list[str]] | None:
    """(line number, fields) of a text edge file's header as read_edges decides it, or None when
    its first content line is data. Reads only the file's first block (the preflight check)."""
    if spec.has_header is False:
        return None
    ext, _ = file_suffixes(path)
    with contextlib.closing(iter_line_chunks(path, 1)) as chunks:
        for first_line, body in chunks:
            for i, raw in enumerate(body.split(b"\n")):
                line = raw.decode("utf-8", "replace").rstrip("\r").strip()
                if not line or line.startswith(("#", "%")):
                    continue
                sep = spec.delimiter or detect_sep(line, ext)
                fields = (re.sub(r"\s+", " ", line) if sep == " " else line).split(sep)
                return (first_line + i, [f.strip() for f in fields]) if _is_header(fields, spec) else None
    return None


def edge_columns(spec: EdgeSpec) -> list[str]:
    """The columns an edge file must name: src_col, dst_col and (weighted) weight_col, in this order."""
    return [spec.src_col, spec.dst_col] + ([spec.weight_col] if spec.weighted else [])


def check_parquet_columns(names: list[str], spec: EdgeSpec, path: str) -> None:
    missing = [c for c in edge_columns(spec) if c not in names]
    if missing:
        raise InputError(f"missing column(s) {missing}; has {names}", path=path)


def parquet_column_names(path: str) -> list[str]:
    """Column names of a Parquet file from its footer (the data is not read)."""
    fs, p = storage.filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            return pq.read_schema(f).names
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise InputError(f"not a readable Parquet file ({e})", path=path) from None


def is_parquet(path: str) -> bool:
    return file_suffixes(path)[0] == ".parquet"


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def typed_chunk(df: pl.DataFrame, path: str, spec: EdgeSpec) -> pl.DataFrame:
    """Cast id and weight columns, naming the first line that does not parse."""
    out = []
    for c in ("src", "dst"):
        if spec.id_type == "int":
            casted = df[c].cast(pl.Int64, strict=False)
            bad = casted.is_null() & df[c].is_not_null() | (df[c] == "")
            if bad.any():
                i = int(bad.arg_max())
                raise InputError(f"node id {df[c][i]!r} is not an integer (input.id_type=int; "
                                 "use -p input.id_type=str for string ids)", path=path, line=int(df["row"][i]), field=c)
            out.append(casted.alias(c))
        else:
            if (df[c] == "").any():
                i = int((df[c] == "").arg_max())
                raise InputError("empty node id", path=path, line=int(df["row"][i]), field=c)
            out.append(df[c])
    if spec.weighted:
        w = df["weight"].cast(pl.Float64, strict=False)
        badw = w.is_null() | w.is_nan() | w.is_infinite() | (w <= 0)
        if badw.any():
            i = int(badw.arg_max())
            raise InputError(f"weight {df['weight'][i]!r} must be a finite number > 0", path=path,
                             line=int(df["row"][i]), field="weight")
        out.append(w.cast(pl.Float32).alias("weight"))
    out.append(df["row"])
    return pl.DataFrame(out)


def read_parquet_edges(path: str, spec: EdgeSpec, h) -> pl.DataFrame:
    fs, p = storage.filesystem(path)
    data = fs.cat_file(p)
    if h is not None:
        h.update(data)
    try:
        t = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"not a readable Parquet file ({e})", path=path) from None
    check_parquet_columns(t.column_names, spec, path)
    return parquet_edge_frame(t, spec, first_row=1)


def parquet_edge_frame(t, spec: EdgeSpec, first_row: int) -> pl.DataFrame:
    """Edge columns of a Parquet table as strings (src, dst, weight, row), rows numbered from
    first_row (1 for a whole file; a row group's first row in its file otherwise)."""
    need = edge_columns(spec)
    df = pl.from_arrow(t.select(need))
    df = df.rename({spec.src_col: "src", spec.dst_col: "dst", **({spec.weight_col: "weight"} if spec.weighted else {})})
    df = df.with_row_index("row", offset=first_row)
    cols = [pl.col("src").cast(pl.String), pl.col("dst").cast(pl.String)]
    cols.append(pl.col("weight").cast(pl.String) if spec.weighted else pl.lit(None, dtype=pl.String).alias("weight"))
    return df.select(*cols, pl.col("row").cast(pl.UInt32))


def read_edges(uri: str, spec: EdgeSpec, progress=None, convert=None) -> tuple[list, list[str], str, int]:
    """Typed edge chunks (src, dst[, weight]) from every input file, checksum, row count.

    `convert(df)` turns each typed chunk into what is kept (e.g. narrow numpy arrays) while the
    chunk's polars frames are dropped at once; default: keep the frames.
    """
    files = expand_inputs(uri)
    h = hashlib.sha256()
    chunks: list = []
    rows = 0
    keep = convert or (lambda df: df.drop("row"))
    for path in files:
        h.update(path.rsplit("/", 1)[-1].encode())
        ext, _ = file_suffixes(path)
        if ext == ".parquet":
            df = typed_chunk(read_parquet_edges(path, spec, h), path, spec)
            chunks.append(keep(df))
            rows += df.height
            continue
        sep = spec.delimiter
        header_state: dict = {} if spec.has_header is not False else {"done": True}
        for first_line, body in iter_line_chunks(path, min(spec.chunk_rows, PARSE_ROWS), h):
            raw, sep = parse_text_chunk(body, first_line, path, sep, ext, spec, header_state)
            del body
            if raw.height:
                df = typed_chunk(raw, path, spec)
                del raw
                chunks.append(keep(df))
                rows += df.height
                del df
                if progress:
                    progress(rows)
    return chunks, files, h.hexdigest(), rows


# ---- streaming CSR: chunks -> narrow arrays at once -> counting sort; memory ~2-3x the CSR ------
def _off_heap(a: np.ndarray, dtype) -> np.ndarray:
    """`a` as `dtype` in its own anonymous mapping, so freeing it returns the pages to the OS at once.

    The CSR build frees each chunk as it is placed while the CSR's pages fill; chunk-sized blocks
    from malloc would stay in the process heap after being freed (glibc's mmap threshold rises to
    their size), so RSS would hold every consumed chunk and the finished CSR together.
    """
    if a.size == 0:
        return np.asarray(a, dtype=dtype).copy()
    out = np.frombuffer(mmap.mmap(-1, a.size * np.dtype(dtype).itemsize), dtype=dtype, count=a.size)
    out[:] = a
    return out


def _narrow_ids(s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 when the chunk's ids fit (the common case), else int64."""
    lo, hi = min(int(s.min()), int(d.min())), max(int(s.max()), int(d.max()))
    t = np.int32 if 0 <= lo and hi < 2**31 else np.int64
    return _off_heap(s, t), _off_heap(d, t)


def _weights(df: pl.DataFrame) -> np.ndarray | None:
    return _off_heap(df["weight"].to_numpy(), np.float32) if "weight" in df.columns else None


def narrow_chunk(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A typed integer-id chunk -> (src, dst, weight float32 or None) numpy."""
    s, d = _narrow_ids(df["src"].to_numpy(), df["dst"].to_numpy())
    return s, d, _weights(df)


class StringIds:
    """Incremental dictionary of string node ids: each chunk's ids become int32 codes at once, so
    no string column outlives its chunk.

    Codes are provisional (first-seen order, from a private polars `Categories`, a hash map over
    the distinct ids only); `finish` sorts the distinct ids, so the dense numbering is the sorted
    order of the ids exactly as it was when ingest concatenated every string and sorted them.
    """

    def __init__(self):
        self.categories = pl.Categories.random()
        self.dtype = pl.Categorical(self.categories)
        self._alive = pl.Series([], dtype=self.dtype)     # a mapping lives while a Series uses it

    def codes(self, s: pl.Series) -> np.ndarray:
        return _off_heap(s.cast(self.dtype).to_physical().to_numpy(), np.int32)

    def convert(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return self.codes(df["src"]), self.codes(df["dst"]), _weights(df)

    def finish(self) -> tuple[pl.Series, np.ndarray]:
        """(distinct ids sorted, int32 table provisional code -> dense id); drops the hash map."""
        ids = self.categories.to_series()
        if ids.null_count():     # a code reserved but never named: cannot happen with a private mapping
            raise RuntimeError("string id dictionary has unnamed codes")
        order = ids.arg_sort().to_numpy()
        lookup = np.empty(len(ids), dtype=np.int32)
        lookup[order] = np.arange(len(ids), dtype=np.int32)
        ids = ids.gather(order)
        del self._alive
        return ids, lookup


@numba.njit(cache=True)
def _count_degrees(deg, s, d, undirected, drop_loops):
    for i in range(s.shape[0]):
        u, v = s[i], d[i]
        if u == v:
            if not drop_loops:
                deg[u] += 1              # a self-loop is stored once
            continue
        deg[u] += 1
        if undirected:
            deg[v] += 1


@numba.njit(cache=True)
def _scatter(pos, indices, s, d, undirected, drop_loops):
    for i in range(s.shape[0]):
        u, v = s[i], d[i]
        if u == v:
            if not drop_loops:
                indices[pos[u]] = v
                pos[u] += 1
            continue
        indices[pos[u]] = v
        pos[u] += 1
        if undirected:
            indices[pos[v]] = u
            pos[v] += 1


@numba.njit(cache=True)
def _scatter_weighted(pos, indices, weights, s, d, w, undirected, drop_loops):
    """_scatter carrying each edge's weight to its arc(s); rows fill in input order."""
    for i in range(s.shape[0]):
        u, v = s[i], d[i]
        if u == v:
            if not drop_loops:
                indices[pos[u]] = v
                weights[pos[u]] = w[i]
                pos[u] += 1
            continue
        indices[pos[u]] = v
        weights[pos[u]] = w[i]
        pos[u] += 1
        if undirected:
            indices[pos[v]] = u
            weights[pos[v]] = w[i]
            pos[v] += 1


@numba.njit(cache=True)
def sort_rows_dedupe(indptr, indices, dedupe):
    """Sort each row in place and (dedupe) drop repeats, compacting forward; returns the new indptr."""
    n = indptr.shape[0] - 1
    out = np.empty(n + 1, dtype=np.int64)
    out[0] = 0
    w = 0
    for r in range(n):
        a, b = indptr[r], indptr[r + 1]
        indices[a:b].sort()
        prev = -1
        for j in range(a, b):
            x = indices[j]
            if dedupe and j > a and x == prev:
                continue
            indices[w] = x           # w <= j: never overwrites an unread entry
            w += 1
            prev = x
        out[r + 1] = w
    return out


@numba.njit(cache=True)
def sort_rows_dedupe_weighted(indptr, indices, weights, mode):
    """Stable sort of each row by column, weights moved along; mode 0 keeps repeats, 1 keeps the
    first (in input order), 2 sums them (in float64). Compacts forward; returns the new indptr."""
    n = indptr.shape[0] - 1
    out = np.empty(n + 1, dtype=np.int64)
    out[0] = 0
    w = 0
    for r in range(n):
        a, b = indptr[r], indptr[r + 1]
        if b - a == 1:
            indices[w] = indices[a]
            weights[w] = weights[a]
            w += 1
        elif b > a:
            order = np.argsort(indices[a:b], kind="mergesort")
            cols = indices[a:b][order]
            ws = weights[a:b][order]
            start = w
            acc = 0.0
            for j in range(cols.shape[0]):
                x = cols[j]
                if mode != 0 and w > start and indices[w - 1] == x:
                    if mode == 2:
                        acc += ws[j]
                    continue
                if mode == 2 and w > start:
                    weights[w - 1] = acc
                indices[w] = x      # w <= a + j: the row was copied out, nothing unread is hit
                weights[w] = ws[j]
                acc = ws[j]
                w += 1
            if mode == 2:
                weights[w - 1] = acc
        out[r + 1] = w
    return out


def csr_from_chunks(chunks: list, n: int, node_ids: np.ndarray | None, directed: bool, duplicates: str,
                     self_loops: str) -> CSRGraph:
    """Counting sort over the chunks (src, dst, weight|None) (no global int64 key sort); chunks are
    mapped to dense ids one at a time and freed as they are placed. node_ids: None (ids are dense
    already), an int32 lookup table indexed by original id / provisional code, or the sorted
    original ids (searchsorted).

    Repeated edges: rows fill in input order and are sorted stably, so `drop` keeps the weight of
    the first occurrence in the file (either direction, for undirected graphs: both arcs of an
    edge get the same weight) and `sum` adds every occurrence's weight.
    """
    drop = self_loops == "drop"
    undirected = not directed
    weighted = bool(chunks) and chunks[0][2] is not None

    def dense(a):
        if node_ids is None:
            return a
        if node_ids.dtype == np.int32:           # lookup table: original id -> dense id
            return node_ids[a]
        return np.searchsorted(node_ids, a).astype(np.int32)

    deg = np.zeros(n, dtype=np.int64)
    for s, d, _ in chunks:
        _count_degrees(deg, dense(s), dense(d), undirected, drop)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    del deg
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    weights = np.empty(int(indptr[-1]), dtype=np.float32) if weighted else None
    pos = indptr[:-1].copy()
    chunks.reverse()                             # pop() from the end: O(1) per chunk
    while chunks:
        s, d, w = chunks.pop()
        if weighted:
            _scatter_weighted(pos, indices, weights, dense(s), dense(d), w, undirected, drop)
        else:
            _scatter(pos, indices, dense(s), dense(d), undirected, drop)
        del s, d, w
    del pos
    if weighted:
        mode = {"keep": 0, "drop": 1, "sum": 2}[duplicates]
        new_indptr = sort_rows_dedupe_weighted(indptr, indices, weights, mode)
    else:
        new_indptr = sort_rows_dedupe(indptr, indices, duplicates != "keep")
    m = int(new_indptr[-1])
    if m < indices.shape[0]:
        shrink = m < 0.9 * indices.shape[0]
        indices = indices[:m].copy() if shrink else indices[:m]
        if weighted:
            weights = weights[:m].copy() if shrink else weights[:m]
    return CSRGraph(new_indptr, indices, weights, directed)


def _int_ids(chunks: list, rows: int, spec: EdgeSpec, uri: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(node_ids int64, mapping for csr_from_chunks) of integer ids, without sorting the edges."""
    lo = min(min(int(s.min()), int(d.min())) for s, d, _ in chunks)
    hi = max(max(int(s.max()), int(d.max())) for s, d, _ in chunks)
    n_decl = spec.num_nodes
    if n_decl is not None and hi >= n_decl:
        raise InputError(f"node id {hi} is outside 0..{n_decl - 1} declared by num_nodes", path=uri)
    if n_decl is not None and lo >= 0:
        return np.arange(n_decl, dtype=np.int64), None        # dense already (isolated nodes kept)
    if lo >= 0 and hi < max(4 * rows, 1 << 20):
        # ids in a compact range: a presence bitmap and an int32 lookup table beat sorting
        present = np.zeros(hi + 1, dtype=bool)
        for s, d, _ in chunks:
            present[s] = True
            present[d] = True
        node_ids = np.flatnonzero(present).astype(np.int64)
        del present
        mapping = np.full(hi + 1, -1, dtype=np.int32)
        mapping[node_ids] = np.arange(len(node_ids), dtype=np.int32)
        return node_ids, mapping
    uniq = np.empty(0, dtype=np.int64)
    for s, d, _ in chunks:
        uniq = np.union1d(uniq, np.union1d(np.unique(s), np.unique(d)))
    node_ids = uniq.astype(np.int64)
    return node_ids, node_ids


def ingest_graph(uri: str, spec: EdgeSpec, progress=None) -> IngestedGraph:
    """Read, map ids to dense ints, build CSR. Raises InputError for every kind of bad input.

    Every input streams: each parsed chunk becomes narrow numpy arrays at once (int32 ids, float32
    weights; string ids through an incremental dictionary) and its polars frames are dropped; the
    CSR is built from the chunks by a counting sort. Peak memory stays within ~3x the CSR
    (bench/bench_scale.py --variant int|weighted|str).

    Dense numbering: integer ids keep their numeric order (ids 0..num_nodes-1 map to themselves
    when num_nodes is known); string ids are numbered in sorted (byte-wise) order.
    """
    if spec.id_type == "int":
        chunks, files, checksum, rows = read_edges(uri, spec, progress, convert=narrow_chunk)
        if rows == 0:
            raise InputError("the graph is empty: no edges found", path=uri)
        node_ids, mapping = _int_ids(chunks, rows, spec, uri)
        csr = csr_from_chunks(chunks, len(node_ids), mapping, spec.directed, spec.duplicates, spec.self_loops)
    else:
        ids = StringIds()
        chunks, files, checksum, rows = read_edges(uri, spec, progress, convert=ids.convert)
        if rows == 0:
            raise InputError("the graph is empty: no edges found", path=uri)
        sorted_ids, lookup = ids.finish()
        del ids
        csr = csr_from_chunks(chunks, len(sorted_ids), lookup, spec.directed, spec.duplicates, spec.self_loops)
        del lookup
        node_ids = sorted_ids.to_numpy().astype(object)       # the published `node` column stays string
        del sorted_ids
    return _finish(uri, spec, csr, node_ids, files, checksum, rows)


def _finish(uri, spec, csr, node_ids, files, checksum, rows) -> IngestedGraph:
    n = len(node_ids)
    if csr.num_arcs == 0:
        raise InputError("the graph is empty after dropping self-loops", path=uri)
    stats = {"nodes": n, "input_rows": rows, "arcs": csr.num_arcs, "directed": spec.directed,
             "weighted": spec.weighted, "isolated_nodes": int((csr.degrees() == 0).sum())}
    return IngestedGraph(csr, node_ids, spec.id_type, files, checksum, rows, stats)


@dataclass
class LabelRows:
    """The rows of label files, in file order: node keys (int64 array for int ids, a String Series
    otherwise), each row's label index into the sorted label names, and where each row is (its
    node as written, its line and file)."""
    keys: object
    written: pl.Series
    label_idx: np.ndarray
    names: np.ndarray
    lines: np.ndarray
    paths: list[str]

    def unknown_node(self, row: int) -> InputError:
        """The error for row `row`, whose node is not in the edge list."""
        return InputError(f"label for unknown node {self.written[row]!r} (not in the edge list)", path=self.paths[row],
                          line=int(self.lines[row]), field="node")


def label_rows(uri: str, id_type: str) -> LabelRows:
    """Parse node<TAB>label rows (every file of `uri`); an int node id that is not an integer is refused."""
    spec = EdgeSpec(id_type=id_type, src_col="node", dst_col="label")
    nodes, labels, lines, paths = [], [], [], []
    for path in expand_inputs(uri):
        ext, _ = file_suffixes(path)
        header_state: dict = {}
        sep = None
        for first_line, body in iter_line_chunks(path, 1_000_000):
            raw, sep = parse_text_chunk(body, first_line, path, sep, ext, spec, header_state)
            if raw.height == 0:
                continue
            nodes.append(raw["src"])
            labels.append(raw["dst"])
            lines.append(raw["row"])
            paths.extend([path] * raw.height)
    if not nodes:
        raise InputError("no labels found", path=uri)
    node_s = pl.concat(nodes)
    line_s = pl.concat(lines).to_numpy()
    names, label_idx = np.unique(pl.concat(labels).to_numpy().astype(str), return_inverse=True)
    if id_type == "int":
        nid = node_s.cast(pl.Int64, strict=False)
        bad = nid.is_null()
        if bad.any():
            i = int(bad.arg_max())
            raise InputError(f"node id {node_s[i]!r} is not an integer", path=paths[i], line=int(line_s[i]), field="node")
        keys = nid.to_numpy()
    else:
        keys = node_s
    return LabelRows(keys, node_s, label_idx.astype(np.int32), names, line_s, paths)


def read_labels(uri: str, node_ids: np.ndarray, id_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node_idx int32, label_idx int32, label names) from node<TAB>label rows; unknown nodes refused."""
    rows = label_rows(uri, id_type)
    if id_type == "int":
        ref = np.asarray(node_ids, dtype=np.int64)
        pos = np.searchsorted(ref, rows.keys)
        pos_c = np.minimum(pos, len(ref) - 1)
        known = ref[pos_c] == rows.keys
    else:
        ref_df = pl.DataFrame({"id": pl.Series(list(node_ids), dtype=pl.String),
                               "i": np.arange(len(node_ids), dtype=np.int64)})
        j = pl.DataFrame({"id": rows.keys}).join(ref_df, on="id", how="left", maintain_order="left")["i"]
        known = j.is_not_null().to_numpy()
        pos_c = j.fill_null(0).to_numpy()
    if not known.all():
        raise rows.unknown_node(int(np.argmin(known)))
    return pos_c.astype(np.int32), rows.label_idx, rows.names


def stats_json_num_nodes(edges_uri: str) -> int | None:
    """num_nodes from a stats.json beside a local edge file (the shared datasets carry one)."""
    if "://" in edges_uri:
        return None
    p = os.path.join(os.path.dirname(os.path.abspath(edges_uri)) if os.path.isfile(edges_uri) else edges_uri,
                     "stats.json")
    if os.path.exists(p):
        try:
            return int(json.load(open(p))["num_nodes"])
        except (KeyError, ValueError, json.JSONDecodeError):
            return None
    return None
