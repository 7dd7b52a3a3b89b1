"""Ingest: edge lists and labels -> dense ids -> CSR, with errors that name file and line.

Inputs: TSV / CSV / whitespace text (optionally .gz / .zst / .bz2) or Parquet; one file, a folder
or a glob of many; local paths or s3:// URLs (fsspec). Text is read in streaming chunks of lines
and parsed by polars; every line keeps its number, so a malformed line is reported as
`file: line N: ...`. Nothing is written here: the caller writes the lake only after ingest
succeeded, so bad input leaves nothing behind.
"""
from __future__ import annotations

import glob as _glob
import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import numba
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from embedlake import storage
from embedlake.errors import InputError
from embedlake.workers.graph import CSRGraph, build_csr

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


def _suffixes(path: str) -> tuple[str, str | None]:
    """(format suffix, compression) of a file name, e.g. ('.tsv', 'gzip')."""
    base = path.rsplit("/", 1)[-1].lower()
    comp = None
    root, ext = os.path.splitext(base)
    if ext in COMPRESSION:
        comp = COMPRESSION[ext]
        root, ext = os.path.splitext(root)
    return ext, comp


def _open(path: str, compression: str | None):
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


class _HashingReader(io.RawIOBase):
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
    ext, comp = _suffixes(path)
    try:
        f = _open(path, comp)
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    approx = max(chunk_rows * 16, 1 << 20)
    line_no = 1
    tail = b""
    try:
        stream = io.BufferedReader(_HashingReader(f, h), 1 << 20) if h is not None else f
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


def _detect_sep(line: str, ext: str) -> str:
    if ext == ".tsv":
        return "\t"
    if ext == ".csv":
        return ","
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    return " "


def _parse_text_chunk(body: bytes, first_line: int, path: str, sep: str | None, ext: str, spec: EdgeSpec,
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
        sep = _detect_sep(lines["line"][0], ext)
    if sep == " ":
        lines = lines.with_columns(pl.col("line").str.replace_all(r"\s+", " "))
    ncols = 3 if spec.weighted else 2
    if not header_state.get("done"):
        header_state["done"] = True
        first = lines["line"][0].split(sep)
        is_header = spec.has_header
        if is_header is None:
            is_header = spec.id_type == "int" and not _looks_numeric(first[0])
            if spec.id_type == "str":
                is_header = [c.strip() for c in first[:2]] == [spec.src_col, spec.dst_col]
        if is_header:
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


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _typed(df: pl.DataFrame, path: str, spec: EdgeSpec) -> pl.DataFrame:
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


def _read_parquet(path: str, spec: EdgeSpec, h) -> pl.DataFrame:
    fs, p = storage.filesystem(path)
    data = fs.cat_file(p)
    if h is not None:
        h.update(data)
    try:
        t = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"not a readable Parquet file ({e})", path=path) from None
    need = [spec.src_col, spec.dst_col] + ([spec.weight_col] if spec.weighted else [])
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise InputError(f"missing column(s) {missing}; has {t.column_names}", path=path)
    df = pl.from_arrow(t.select(need))
    df = df.rename({spec.src_col: "src", spec.dst_col: "dst", **({spec.weight_col: "weight"} if spec.weighted else {})})
    df = df.with_row_index("row", offset=1)
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
        ext, _ = _suffixes(path)
        if ext == ".parquet":
            df = _typed(_read_parquet(path, spec, h), path, spec)
            chunks.append(keep(df))
            rows += df.height
            continue
        sep = spec.delimiter
        header_state: dict = {} if spec.has_header is not False else {"done": True}
        for first_line, body in iter_line_chunks(path, min(spec.chunk_rows, PARSE_ROWS), h):
            raw, sep = _parse_text_chunk(body, first_line, path, sep, ext, spec, header_state)
            del body
            if raw.height:
                df = _typed(raw, path, spec)
                del raw
                chunks.append(keep(df))
                rows += df.height
                del df
                if progress:
                    progress(rows)
    return chunks, files, h.hexdigest(), rows


# ---- streaming CSR for integer ids (unweighted): memory ~ 2x the CSR, not ~15x -----------------
def _narrow(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A typed chunk -> (src, dst) numpy, int32 when the chunk's ids fit (the common case)."""
    s, d = df["src"].to_numpy(), df["dst"].to_numpy()
    lo, hi = min(int(s.min()), int(d.min())), max(int(s.max()), int(d.max()))
    if 0 <= lo and hi < 2**31:
        return s.astype(np.int32), d.astype(np.int32)
    return np.ascontiguousarray(s, dtype=np.int64), np.ascontiguousarray(d, dtype=np.int64)


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
def _sort_rows_dedupe(indptr, indices, dedupe):
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


def _csr_from_chunks(chunks: list, n: int, node_ids: np.ndarray | None, directed: bool, duplicates: str,
                     self_loops: str) -> CSRGraph:
    """Counting sort over the chunks (no global int64 key sort); chunks are mapped to dense ids one
    at a time and freed as they are placed. node_ids: None (ids are dense already), an int32
    lookup table indexed by original id, or the sorted original ids (searchsorted)."""
    drop = self_loops == "drop"
    undirected = not directed

    def dense(a):
        if node_ids is None:
            return a
        if node_ids.dtype == np.int32:           # lookup table: original id -> dense id
            return node_ids[a]
        return np.searchsorted(node_ids, a).astype(np.int32)

    deg = np.zeros(n, dtype=np.int64)
    for s, d in chunks:
        _count_degrees(deg, dense(s), dense(d), undirected, drop)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    del deg
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    pos = indptr[:-1].copy()
    while chunks:
        s, d = chunks.pop(0)
        _scatter(pos, indices, dense(s), dense(d), undirected, drop)
        del s, d
    del pos
    new_indptr = _sort_rows_dedupe(indptr, indices, duplicates != "keep")
    m = int(new_indptr[-1])
    if m < indices.shape[0]:
        indices = indices[:m].copy() if m < 0.9 * indices.shape[0] else indices[:m]
    return CSRGraph(new_indptr, indices, None, directed)


def _ingest_int_streaming(uri: str, spec: EdgeSpec, progress=None):
    chunks, files, checksum, rows = read_edges(uri, spec, progress, convert=_narrow)
    if rows == 0:
        raise InputError("the graph is empty: no edges found", path=uri)
    lo = min(min(int(s.min()), int(d.min())) for s, d in chunks)
    hi = max(max(int(s.max()), int(d.max())) for s, d in chunks)
    n_decl = spec.num_nodes
    if n_decl is not None and hi >= n_decl:
        raise InputError(f"node id {hi} is outside 0..{n_decl - 1} declared by num_nodes", path=uri)
    if n_decl is not None and lo >= 0:
        node_ids, mapping = np.arange(n_decl, dtype=np.int64), None     # dense already (isolated nodes kept)
    elif lo >= 0 and hi < max(4 * rows, 1 << 20):
        # ids in a compact range: a presence bitmap and an int32 lookup table beat sorting
        present = np.zeros(hi + 1, dtype=bool)
        for s, d in chunks:
            present[s] = True
            present[d] = True
        node_ids = np.flatnonzero(present).astype(np.int64)
        del present
        mapping = np.full(hi + 1, -1, dtype=np.int32)
        mapping[node_ids] = np.arange(len(node_ids), dtype=np.int32)
    else:
        uniq = np.empty(0, dtype=np.int64)
        for s, d in chunks:
            uniq = np.union1d(uniq, np.union1d(np.unique(s), np.unique(d)))
        node_ids = uniq.astype(np.int64)
        mapping = node_ids
    csr = _csr_from_chunks(chunks, len(node_ids), mapping, spec.directed, spec.duplicates, spec.self_loops)
    return csr, node_ids, files, checksum, rows


def ingest_graph(uri: str, spec: EdgeSpec, progress=None) -> IngestedGraph:
    """Read, map ids to dense ints, build CSR. Raises InputError for every kind of bad input.

    Unweighted integer-id graphs stream: each chunk becomes int32 arrays at once and the CSR is
    built by a counting sort, so peak memory stays near twice the CSR (bench/bench_scale.py);
    weighted or string-id graphs take the general path below.
    """
    if spec.id_type == "int" and not spec.weighted:
        csr, node_ids, files, checksum, rows = _ingest_int_streaming(uri, spec, progress)
        return _finish(uri, spec, csr, node_ids, files, checksum, rows)
    chunks, files, checksum, rows = read_edges(uri, spec, progress)
    if rows == 0:
        raise InputError("the graph is empty: no edges found", path=uri)
    src_all = pl.concat([c["src"] for c in chunks])
    dst_all = pl.concat([c["dst"] for c in chunks])
    w = pl.concat([c["weight"] for c in chunks]).to_numpy() if spec.weighted else None
    del chunks
    if spec.id_type == "int":
        s = src_all.to_numpy()
        d = dst_all.to_numpy()
        lo = min(s.min(), d.min())
        hi = max(s.max(), d.max())
        n_decl = spec.num_nodes
        if n_decl is not None and lo >= 0 and hi < n_decl:
            node_ids = np.arange(n_decl, dtype=np.int64)      # ids are already dense (isolated nodes kept)
            si, di = s, d
        else:
            if n_decl is not None and hi >= n_decl:
                raise InputError(f"node id {hi} is outside 0..{n_decl - 1} declared by num_nodes", path=uri)
            node_ids = np.unique(np.concatenate([s, d]))
            si, di = np.searchsorted(node_ids, s), np.searchsorted(node_ids, d)
    else:
        uniq = pl.concat([src_all, dst_all]).unique().sort()
        node_ids = uniq.to_numpy().astype(object)
        idx = pl.DataFrame({"id": uniq, "i": np.arange(len(uniq), dtype=np.int64)})
        si = pl.DataFrame({"id": src_all}).join(idx, on="id", how="left", maintain_order="left")["i"].to_numpy()
        di = pl.DataFrame({"id": dst_all}).join(idx, on="id", how="left", maintain_order="left")["i"].to_numpy()
    n = len(node_ids)
    csr = build_csr(si, di, n, w, directed=spec.directed, duplicates=spec.duplicates, self_loops=spec.self_loops)
    return _finish(uri, spec, csr, node_ids, files, checksum, rows)


def _finish(uri, spec, csr, node_ids, files, checksum, rows) -> IngestedGraph:
    n = len(node_ids)
    if csr.num_arcs == 0:
        raise InputError("the graph is empty after dropping self-loops", path=uri)
    stats = {"nodes": n, "input_rows": rows, "arcs": csr.num_arcs, "directed": spec.directed,
             "weighted": spec.weighted, "isolated_nodes": int((csr.degrees() == 0).sum())}
    return IngestedGraph(csr, node_ids, spec.id_type, files, checksum, rows, stats)


def read_labels(uri: str, node_ids: np.ndarray, id_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node_idx int32, label_idx int32, label names) from node<TAB>label rows; unknown nodes refused."""
    spec = EdgeSpec(id_type=id_type, src_col="node", dst_col="label")
    files = expand_inputs(uri)
    nodes, labels, lines, paths = [], [], [], []
    for path in files:
        ext, _ = _suffixes(path)
        header_state: dict = {}
        sep = None
        for first_line, body in iter_line_chunks(path, 1_000_000):
            raw, sep = _parse_text_chunk(body, first_line, path, sep, ext, spec, header_state)
            if raw.height == 0:
                continue
            nodes.append(raw["src"])
            labels.append(raw["dst"])
            lines.append(raw["row"])
            paths.extend([path] * raw.height)
    if not nodes:
        raise InputError("no labels found", path=uri)
    node_s = pl.concat(nodes)
    label_s = pl.concat(labels)
    line_s = pl.concat(lines).to_numpy()
    if id_type == "int":
        nid = node_s.cast(pl.Int64, strict=False)
        bad = nid.is_null()
        if bad.any():
            i = int(bad.arg_max())
            raise InputError(f"node id {node_s[i]!r} is not an integer", path=paths[i], line=int(line_s[i]), field="node")
        keys = nid.to_numpy()
        ref = np.asarray(node_ids, dtype=np.int64)
        pos = np.searchsorted(ref, keys)
        pos_c = np.minimum(pos, len(ref) - 1)
        known = ref[pos_c] == keys
    else:
        ref_df = pl.DataFrame({"id": pl.Series(list(node_ids), dtype=pl.String),
                               "i": np.arange(len(node_ids), dtype=np.int64)})
        j = pl.DataFrame({"id": node_s}).join(ref_df, on="id", how="left", maintain_order="left")["i"]
        known = j.is_not_null().to_numpy()
        pos_c = j.fill_null(0).to_numpy()
    if not known.all():
        i = int(np.argmin(known))
        raise InputError(f"label for unknown node {node_s[i]!r} (not in the edge list)", path=paths[i],
                         line=int(line_s[i]), field="node")
    names, label_idx = np.unique(label_s.to_numpy().astype(str), return_inverse=True)
    return pos_c.astype(np.int32), label_idx.astype(np.int32), names


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
