"""Parallel, sharded ingest: edge lists -> S graph shards, without one task passing over all edges.

The steps (tasks/graph.py runs each as one Ray task per range, bucket or shard):
1. `plan_ranges`: one range per byte range of an uncompressed text file (cut at line boundaries
   by the range readers themselves), per compressed file and per Parquet row group.
2. `parse_range`: reads one range with the one-task reader's own parser (same checks, same error
   lines: a range's local line numbers are rebased by counting the newlines before it, only on
   failure), numbers its distinct ids locally in sorted order, and hashes its bytes.
3. Dense ids by a distributed sort of the distinct ids: `choose_splitters` from small samples of
   every range, `split_ids` cuts each range's sorted ids at the splitters, `bucket_ids` dedupes and
   sorts one value range and says where each range's ids fall in it; prefix sums of the bucket
   sizes give each bucket's first dense id. Integer ids keep numeric order and string ids sort
   byte-wise, so the numbering is exactly `ingest_graph`'s (ids are dense already when num_nodes
   is declared).
4. `route_arcs`: each range maps its edges to dense ids and sends every arc to the shard that owns
   its source row (undirected: the reverse arc to the owner of dst), in input order.
5. `build_shard`: a shard concatenates its arcs in range order (so rows fill in input order, as in
   `csr_from_chunks`), counts, scatters and sorts each row stably with the one-CSR kernels, so
   `duplicates=drop` keeps the first occurrence's weight and gathering the shards gives today's CSR
   bit for bit.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import numba
import numpy as np
import polars as pl
import pyarrow.parquet as pq

from embedlake import storage
from embedlake.errors import InputError
from embedlake.lake import Lake
from embedlake.workers.graph.ingest import (PARSE_ROWS, EdgeSpec, LabelRows, StringIds, check_parquet_columns,
                                            detect_sep, edge_columns, expand_inputs, file_suffixes, iter_line_chunks,
                                            label_rows,
                                            narrow_chunk, parquet_edge_frame, parse_text_chunk, read_parquet_edges,
                                            sort_rows_dedupe, sort_rows_dedupe_weighted, typed_chunk)
from embedlake.workers.graph.shards import CSRShard, owner_of

# Bytes of an uncompressed text file per parse task. Part of the graph version (the checksum is
# built from per-range digests), so it is a constant, not a setting that varies by cluster.
RANGE_BYTES = 64 << 20
SAMPLE_PER_RANGE = 256          # sorted ids each range offers for choosing the bucket splitters
READ_BLOCK = 1 << 22


@dataclass(frozen=True)
class InputRange:
    """One parse task's input: bytes [start, end) of a text file (lines that start there), a
    whole compressed text file (`stream`), or a Parquet file (row group `group`, whose first row is
    row `first_row` of the file; group -1: the whole file)."""
    path: str
    kind: str                       # text | stream | parquet
    start: int = 0
    end: int = -1
    sep: str | None = None          # the file's separator, as its first content line decides it
    group: int = -1
    first_row: int = 1
    holds_first_line: bool = True   # the file's first content line (a header, maybe) starts here


def plan_ranges(uri: str, spec: EdgeSpec, range_bytes: int = RANGE_BYTES) -> list[InputRange]:
    """The parse ranges of an input (file order, then byte order)."""
    out: list[InputRange] = []
    for path in expand_inputs(uri):
        ext, comp = file_suffixes(path)
        if ext == ".parquet":
            out += [InputRange(path, "parquet", group=g, first_row=r) for g, r in parquet_groups(path)]
            continue
        if comp is not None:
            out.append(InputRange(path, "stream", sep=spec.delimiter))
            continue
        fs, p = storage.filesystem(path)
        size = int(fs.size(p))
        cuts = list(range(0, size, range_bytes)) or [0]
        sep, first = spec.delimiter, 0
        if len(cuts) > 1:
            detected, first = first_content_line(path)
            sep = sep or (detect_sep(detected, ext) if detected is not None else None)
        out += [InputRange(path, "text", a, min(a + range_bytes, size), sep,
                           holds_first_line=a <= first < a + range_bytes) for a in cuts]
    return out


def parquet_groups(path: str) -> list[tuple[int, int]]:
    """(row group, its first row number) of a Parquet file with several row groups; [(-1, 1)]
    (read as one) for one group or a footer that does not read (the reader then names the file)."""
    fs, p = storage.filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            meta = pq.ParquetFile(f).metadata
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except Exception:  # noqa: BLE001 - pyarrow raises several types; parse_range reports it
        return [(-1, 1)]
    if meta.num_row_groups <= 1:
        return [(-1, 1)]
    firsts = np.cumsum([1] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    return [(g, int(firsts[g])) for g in range(meta.num_row_groups)]


def column_chunk_start(c) -> int:
    """First byte of a Parquet column chunk (its dictionary page, if any, comes first)."""
    return int(c.dictionary_page_offset if c.has_dictionary_page and c.dictionary_page_offset else c.data_page_offset)


def read_parquet_group(rng: InputRange, spec: EdgeSpec, h) -> pl.DataFrame:
    """One row group of a Parquet file as the one-file reader's frame (rows numbered in the file);
    the row group's bytes (its column chunks) are hashed."""
    fs, p = storage.filesystem(rng.path)
    with fs.open(p, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
            check_parquet_columns(pf.schema_arrow.names, spec, rng.path)
            cols = [pf.metadata.row_group(rng.group).column(i)
                    for i in range(pf.metadata.row_group(rng.group).num_columns)]
            a = min(column_chunk_start(c) for c in cols)
            b = max(column_chunk_start(c) + c.total_compressed_size for c in cols)
            f.seek(a)
            h.update(f.read(b - a))
            t = pf.read_row_group(rng.group, columns=edge_columns(spec))
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types
            raise InputError(f"not a readable Parquet file ({e})", path=rng.path) from None
    return parquet_edge_frame(t, spec, rng.first_row)


def first_content_line(path: str) -> tuple[str | None, int]:
    """(text, byte offset) of an uncompressed text file's first line that is not empty or a
    comment: the line the one-task reader detects the separator from and may take for a header."""
    base = 0
    with contextlib.closing(iter_line_chunks(path, 1)) as chunks:
        for _, body in chunks:
            pos = 0
            for raw in body.split(b"\n"):
                line = raw.decode("utf-8", "replace").rstrip("\r").strip()
                if line and not line.startswith(("#", "%")):
                    return line, base + pos
                pos += len(raw) + 1
            base += len(body)
    return None, 0


def line_start(f, start: int) -> int:
    """The first line start at or after byte `start` of an open binary file (0 stays 0)."""
    if start == 0:
        return 0
    f.seek(start - 1)
    pos = start - 1
    while True:
        block = f.read(1 << 16)
        if not block:
            return pos
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)


def iter_range_chunks(f, start: int, end: int, approx: int, h):
    """(first local line number, whole lines) of the lines that start in [start, end) of an open
    binary file, `start` already at a line start; every byte yielded is hashed into h."""
    f.seek(start)
    pos, line_no, tail = start, 1, b""
    while True:
        block = f.read(min(approx, max(end - pos, 0))) if pos < end else b""
        if block:
            pos += len(block)
        elif tail and not tail.endswith(b"\n"):     # finish the last line past `end`
            more = f.read(1 << 16)
            if more:
                i = more.find(b"\n")
                tail += more if i < 0 else more[:i + 1]
                continue
        if not block:
            if tail:
                h.update(tail)
                yield line_no, tail
            return
        block = tail + block
        cut = block.rfind(b"\n")
        if cut < 0:
            tail = block
            continue
        body, tail = block[:cut + 1], block[cut + 1:]
        h.update(body)
        yield line_no, body
        line_no += body.count(b"\n")


def newlines_before(path: str, offset: int) -> int:
    """Lines that end before byte `offset` of a file (only read to name a bad line of a range)."""
    fs, p = storage.filesystem(path)
    count, pos = 0, 0
    with fs.open(p, "rb") as f:
        while pos < offset:
            block = f.read(min(READ_BLOCK, offset - pos))
            if not block:
                break
            count += block.count(b"\n")
            pos += len(block)
    return count


def rebased(e: InputError, lines_before: int) -> InputError:
    """The same error with its line number moved by `lines_before` (a range's first line)."""
    prefix = str(InputError("", path=e.path, line=e.line, field=e.field))
    message = str(e)[len(prefix):]
    return InputError(message, path=e.path, line=e.line + lines_before, field=e.field)


def read_range(rng: InputRange, spec: EdgeSpec, h, convert) -> tuple[list, int]:
    """The converted chunks of one range and its row count (errors name file and file line)."""
    if rng.kind == "parquet":
        frame = read_parquet_edges(rng.path, spec, h) if rng.group < 0 else read_parquet_group(rng, spec, h)
        df = typed_chunk(frame, rng.path, spec)
        return [convert(df)], df.height
    ext, _ = file_suffixes(rng.path)
    header_state: dict = {} if spec.has_header is not False and rng.holds_first_line else {"done": True}
    if rng.kind == "stream":
        source = iter_line_chunks(rng.path, min(spec.chunk_rows, PARSE_ROWS), h)
        return _parse_chunks(source, rng.path, rng.sep, ext, spec, header_state, convert)
    fs, p = storage.filesystem(rng.path)
    try:
        f = fs.open(p, "rb")
    except FileNotFoundError:
        raise InputError("file not found", path=rng.path) from None
    with f:
        start = line_start(f, rng.start)
        approx = max(min(spec.chunk_rows, PARSE_ROWS) * 16, 1 << 20)
        source = iter_range_chunks(f, start, rng.end, approx, h)
        try:
            chunks, rows = _parse_chunks(source, rng.path, rng.sep, ext, spec, header_state, convert)
        except InputError as e:
            if e.line is None or start == 0:
                raise
            raise rebased(e, newlines_before(rng.path, start)) from None
    return chunks, rows


def _parse_chunks(source, path, sep, ext, spec, header_state, convert) -> tuple[list, int]:
    chunks, rows = [], 0
    for first_line, body in source:
        raw, sep = parse_text_chunk(body, first_line, path, sep, ext, spec, header_state)
        if raw.height:
            df = typed_chunk(raw, path, spec)
            chunks.append(convert(df))
            rows += df.height
    return chunks, rows


def parse_range(rng: InputRange, spec: EdgeSpec) -> tuple[dict, tuple, object]:
    """(info, edges, local ids) of one range. local ids: the range's distinct ids, sorted (int64,
    or a polars String Series); edges: (src, dst) as int32 positions in them, weights or None.
    info: rows, self-loops, the bytes' sha256, a sample of the local ids, min / max (int ids)."""
    h = hashlib.sha256()
    if spec.id_type == "str":
        ids = StringIds()
        chunks, rows = read_range(rng, spec, h, ids.convert)
        local_ids, lookup = ids.finish()
        src = lookup[np.concatenate([c[0] for c in chunks])] if chunks else np.empty(0, np.int32)
        dst = lookup[np.concatenate([c[1] for c in chunks])] if chunks else np.empty(0, np.int32)
    else:
        chunks, rows = read_range(rng, spec, h, narrow_chunk)
        s = np.concatenate([c[0].astype(np.int64) for c in chunks]) if chunks else np.empty(0, np.int64)
        d = np.concatenate([c[1].astype(np.int64) for c in chunks]) if chunks else np.empty(0, np.int64)
        local_ids, src, dst = local_int_ids(s, d)
        del s, d
    w = np.concatenate([c[2] for c in chunks]) if chunks and chunks[0][2] is not None else None
    if spec.weighted and w is None:
        w = np.empty(0, np.float32)
    del chunks
    k = len(local_ids)
    pick = np.unique(np.linspace(0, k - 1, min(k, SAMPLE_PER_RANGE)).astype(np.int64)) if k else np.empty(0, np.int64)
    info = {"path": rng.path, "start": rng.start, "group": rng.group, "rows": int(rows), "digest": h.hexdigest(),
            "loops": int(np.count_nonzero(src == dst)), "distinct": k,
            "sample": local_ids.gather(pick) if isinstance(local_ids, pl.Series) else local_ids[pick]}
    if spec.id_type == "int" and k:
        info["min"], info["max"] = int(local_ids[0]), int(local_ids[-1])
    return info, (src, dst, w), local_ids


def local_int_ids(s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a range's distinct int ids sorted, src and dst as int32 positions in them). Ids in a compact
    value range (the common case) go through a presence bitmap and a lookup table, as
    `ingest_graph` does; sparse ids through one sort."""
    if len(s) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int32)
    lo, hi = min(int(s.min()), int(d.min())), max(int(s.max()), int(d.max()))
    if hi - lo < max(4 * len(s), 1 << 20):
        present = np.zeros(hi - lo + 1, dtype=bool)
        present[s - lo] = True
        present[d - lo] = True
        local = np.flatnonzero(present)
        lookup = np.cumsum(present, dtype=np.int64).astype(np.int32) - 1
        return local + lo, lookup[s - lo], lookup[d - lo]
    local, inverse = np.unique(np.concatenate([s, d]), return_inverse=True)
    inverse = inverse.astype(np.int32)
    return local, inverse[:len(s)], inverse[len(s):]


def combined_checksum(infos: list[dict]) -> str:
    """sha256 over every file's name and its ranges' digests, in input order (the graph version's
    input checksum; ranges are fixed by RANGE_BYTES, so unchanged input gives the same value)."""
    h = hashlib.sha256()
    last = None
    for info in infos:
        if info["path"] != last:
            h.update(info["path"].rsplit("/", 1)[-1].encode())
            last = info["path"]
        h.update(bytes.fromhex(info["digest"]))
    return h.hexdigest()


# ---- dense ids: a distributed sort of the distinct ids ------------------------------------------
def choose_splitters(samples: list, buckets: int):
    """buckets - 1 increasing ids that cut the samples' union into near-equal value ranges."""
    strings = bool(samples) and isinstance(samples[0], pl.Series)
    if strings:
        pool = pl.concat(samples).unique().sort()
    else:
        pool = np.unique(np.concatenate(samples)) if samples else np.empty(0, np.int64)
    if buckets <= 1 or len(pool) == 0:
        return pool[:0]
    at = np.unique(np.arange(1, buckets) * len(pool) // buckets)
    return pool.gather(at).unique().sort() if strings else np.unique(pool[at])


def split_ids(local_ids, splitters) -> list:
    """A range's sorted ids cut at the splitters: piece b holds the ids in [splitter b-1, splitter b)."""
    if isinstance(local_ids, pl.Series):
        cuts = local_ids.search_sorted(splitters, side="left").to_numpy().astype(np.int64)
    else:
        cuts = np.searchsorted(local_ids, splitters, side="left")
    edges = [0, *cuts.tolist(), len(local_ids)]
    return [local_ids[a:b] for a, b in zip(edges[:-1], edges[1:])]


def bucket_ids(pieces: list) -> tuple[object, list[np.ndarray]]:
    """(the bucket's distinct ids sorted, for each range the positions of its piece in them)."""
    if isinstance(pieces[0], pl.Series):
        ids = pl.concat(pieces).unique().sort()
        return ids, [ids.search_sorted(p, side="left").to_numpy().astype(np.int64) for p in pieces]
    ids = np.unique(np.concatenate(pieces))
    return ids, [np.searchsorted(ids, p).astype(np.int64) for p in pieces]


def dense_map(positions: list[np.ndarray], offsets: list[int]) -> np.ndarray:
    """A range's local id -> dense id (its pieces' positions in their buckets plus bucket offsets)."""
    out = np.concatenate([p + off for p, off in zip(positions, offsets)]) if positions else np.empty(0, np.int64)
    return out.astype(np.int32)


def node_ids_of(lo: int, hi: int, buckets: list, offsets: list[int]) -> np.ndarray:
    """The original ids of dense ids [lo, hi) from the sorted buckets that cover them (with their
    first dense ids); strings come back as an object array, as `ingest_graph` gives them."""
    parts = []
    for ids, off in zip(buckets, offsets):
        a, b = max(lo - off, 0), min(hi - off, len(ids))
        if b > a:
            parts.append(ids[a:b])
    if parts and isinstance(parts[0], pl.Series):
        return pl.concat(parts).to_numpy().astype(object)
    if not parts:
        return np.empty(0, dtype=object if buckets and isinstance(buckets[0], pl.Series) else np.int64)
    return np.concatenate(parts).astype(np.int64)


# ---- labels, numbered by id bucket (no task holds the whole node-id map) ----------------------------
def label_bucket_pieces(lake, uri: str, id_type: str, splitters) -> tuple:
    """The label files parsed once, their rows cut by id bucket as the node ids were (`splitters`):
    (the rows without their keys, then per bucket (its rows' keys sorted, those rows' numbers))."""
    with storage.using(Lake(lake).env):
        rows = label_rows(uri, id_type)
    keys = rows.keys
    if isinstance(keys, pl.Series):
        order = keys.arg_sort().to_numpy().astype(np.int64)
        ordered = keys.gather(order)
    else:
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
    pieces, at = [], 0
    for piece in split_ids(ordered, splitters):
        pieces.append((piece, order[at:at + len(piece)]))
        at += len(piece)
    return (LabelRows(None, rows.written, rows.label_idx, rows.names, rows.lines, rows.paths), *pieces)


def label_bucket_ids(piece: tuple, bucket_ids, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers, dense id of each row's node, -1 where the bucket does not hold it) of one
    bucket's label rows (`label_bucket_pieces`), from the bucket's sorted ids and first dense id."""
    keys, rows = piece
    if len(bucket_ids) == 0 or len(keys) == 0:
        return rows, np.full(len(keys), -1, dtype=np.int64)
    if isinstance(bucket_ids, pl.Series):
        pos = np.minimum(bucket_ids.search_sorted(keys, side="left").to_numpy().astype(np.int64), len(bucket_ids) - 1)
        known = (bucket_ids.gather(pos) == keys).fill_null(False).to_numpy()
    else:
        pos = np.minimum(np.searchsorted(bucket_ids, keys), len(bucket_ids) - 1)
        known = bucket_ids[pos] == keys
    return rows, np.where(known, offset + pos, -1)


def dense_label_rows(lake, uri: str, num_nodes: int) -> tuple:
    """`label_bucket_pieces` and `label_bucket_ids` in one for int ids that are dense already
    (0..num_nodes-1): a row's node is its dense id. (rows without keys, (row numbers, dense ids))."""
    with storage.using(Lake(lake).env):
        rows = label_rows(uri, "int")
    inside = (rows.keys >= 0) & (rows.keys < num_nodes)
    return (LabelRows(None, rows.written, rows.label_idx, rows.names, rows.lines, rows.paths),
            (np.arange(len(rows.keys), dtype=np.int64), np.where(inside, rows.keys, -1)))


def merged_labels(rows: LabelRows, *numbered: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node_idx int32, label_idx int32, label names), what read_labels gives on the whole node-id
    map, from the rows and every bucket's (row numbers, dense ids); a row whose node no bucket
    holds is refused, the first in file order, as read_labels refuses it."""
    node_idx = np.full(len(rows.lines), -1, dtype=np.int64)
    for numbers, dense in numbered:
        node_idx[numbers] = dense
    unknown = np.flatnonzero(node_idx < 0)
    if unknown.size:
        raise rows.unknown_node(int(unknown[0]))
    return node_idx.astype(np.int32), rows.label_idx, rows.names


# ---- routing and shard CSR -----------------------------------------------------------------------
def route_arcs(edges: tuple, dense: np.ndarray, starts: np.ndarray, directed: bool,
               keep_loops: bool) -> list[tuple]:
    """Every arc of a range's edges, as (row, col, weight|None) per owning shard, in input order:
    edge i gives u -> v, then (undirected, not a loop) v -> u; a kept self-loop is one arc."""
    src, dst, w = edges
    u, v = dense[src], dense[dst]
    loop = u == v
    fwd = ~loop if not keep_loops else np.ones(len(u), dtype=bool)
    rev = np.zeros(len(u), dtype=bool) if directed else ~loop
    ok = np.stack([fwd, rev], axis=1).ravel()
    rows = np.stack([u, v], axis=1).ravel()[ok]
    cols = np.stack([v, u], axis=1).ravel()[ok]
    ws = None if w is None else np.repeat(w, 2)[ok]
    del u, v, ok
    shards = len(starts) - 1
    if shards == 1:
        return [(rows, cols, ws)]
    order, ends = stable_partition(owner_of(starts, rows), shards)
    out = []
    for s in range(shards):
        sel = order[ends[s]:ends[s + 1]]
        out.append((rows[sel], cols[sel], None if ws is None else ws[sel]))
    return out


@numba.njit(cache=True)
def stable_partition(owner, parts):
    """(order, ends): positions grouped by owner, input order kept within a group (a counting sort);
    group g is order[ends[g]:ends[g + 1]]."""
    ends = np.zeros(parts + 1, dtype=np.int64)
    for i in range(owner.shape[0]):
        ends[owner[i] + 1] += 1
    for g in range(parts):
        ends[g + 1] += ends[g]
    pos = ends[:-1].copy()
    order = np.empty(owner.shape[0], dtype=np.int64)
    for i in range(owner.shape[0]):
        g = owner[i]
        order[pos[g]] = i
        pos[g] += 1
    return order, ends


@numba.njit(cache=True)
def fill_rows(pos, indices, rows, cols, lo):
    for i in range(rows.shape[0]):
        r = rows[i] - lo
        indices[pos[r]] = cols[i]
        pos[r] += 1


@numba.njit(cache=True)
def fill_rows_weighted(pos, indices, weights, rows, cols, w, lo):
    for i in range(rows.shape[0]):
        r = rows[i] - lo
        indices[pos[r]] = cols[i]
        weights[pos[r]] = w[i]
        pos[r] += 1


def build_shard(lo: int, hi: int, num_nodes: int, directed: bool, duplicates: str, weighted: bool,
                pieces: list[tuple]) -> CSRShard:
    """Rows [lo, hi) from the arcs routed to them, pieces in range order: rows fill in input order
    and each row is sorted stably and deduplicated exactly as `csr_from_chunks` does."""
    deg = np.zeros(hi - lo, dtype=np.int64)
    for rows, _, _ in pieces:
        if len(rows):
            deg += np.bincount(rows - lo, minlength=hi - lo)
    indptr = np.zeros(hi - lo + 1, dtype=np.int64)
    np.cumsum(deg, out=indptr[1:])
    del deg
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    weights = np.empty(int(indptr[-1]), dtype=np.float32) if weighted else None
    pos = indptr[:-1].copy()
    for rows, cols, w in pieces:
        if weighted:
            fill_rows_weighted(pos, indices, weights, rows, cols, w, lo)
        else:
            fill_rows(pos, indices, rows, cols, lo)
    if weighted:
        new_indptr = sort_rows_dedupe_weighted(indptr, indices, weights, {"keep": 0, "drop": 1, "sum": 2}[duplicates])
    else:
        new_indptr = sort_rows_dedupe(indptr, indices, duplicates != "keep")
    m = int(new_indptr[-1])
    indices = indices[:m].copy() if m < len(indices) else indices
    if weighted and m < len(weights):
        weights = weights[:m].copy()
    return CSRShard(lo, hi, num_nodes, new_indptr, indices, weights, directed)
