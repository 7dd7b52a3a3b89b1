"""Knowledge-graph input: (head, relation, tail) triples with string ids, as dense int ids.

Files are TSV / CSV / whitespace text (optionally compressed) or Parquet, local or s3://, one
file, a folder or a glob (the graph ingest's readers: workers/graph/ingest.py). Ids are strings;
entities and relations get dense ids in sorted string order, so the same input always gives the
same ids (and tables). Valid and test triples come from their own files, or from a seeded split
of the training triples.

Errors name the file and line: a row without exactly three fields, an empty field, and (unless
`unseen` says otherwise) a valid/test triple whose entity or relation never occurs in training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from embedlake.errors import InputError
from embedlake.workers.graph.ingest import (detect_sep, expand_inputs, file_suffixes, is_parquet, iter_line_chunks,
                                            parquet_column_names)
from embedlake import storage

COLUMNS = ("head", "relation", "tail")
UNSEEN = ("refuse", "drop", "keep")


@dataclass
class RawTriples:
    """String triples of one input and where each came from (for errors)."""
    cols: tuple[np.ndarray, np.ndarray, np.ndarray]
    path: np.ndarray          # index into paths, per row
    line: np.ndarray          # 1-based line (text) or row + 1 (Parquet), per row
    paths: list[str]

    @property
    def rows(self) -> int:
        return int(self.cols[0].shape[0])

    def where(self, i: int) -> tuple[str, int]:
        return self.paths[int(self.path[i])], int(self.line[i])

    def take(self, idx: np.ndarray) -> "RawTriples":
        return RawTriples(tuple(c[idx] for c in self.cols), self.path[idx], self.line[idx], self.paths)


@dataclass
class TripleSet:
    """Dense-id triples (int64, columns head, relation, tail) and the id -> string tables."""
    entities: np.ndarray      # sorted unique strings; entity id i is entities[i]
    relations: np.ndarray
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def num_entities(self) -> int:
        return int(self.entities.shape[0])

    @property
    def num_relations(self) -> int:
        return int(self.relations.shape[0])

    def all_known(self) -> np.ndarray:
        """Every true triple (train + valid + test): what filtered evaluation filters."""
        return np.concatenate([self.train, self.valid, self.test])

    def degrees(self) -> np.ndarray:
        """Entity degree in the training triples (heads and tails), for degree-weighted negatives."""
        return np.bincount(np.concatenate([self.train[:, 0], self.train[:, 2]]),
                           minlength=self.num_entities).astype(np.int64)


# ---- reading -------------------------------------------------------------------------------------
def parse_text(body: bytes, first_line: int, path: str, sep: str | None) -> tuple[list, list, list, list]:
    """Split whole lines into the three fields; blank lines are skipped, a wrong field count or an
    empty field is an InputError naming the line."""
    heads, rels, tails, lines = [], [], [], []
    for n, raw in enumerate(body.decode("utf-8", errors="replace").split("\n"), start=first_line):
        text = raw.rstrip("\r")
        if not text.strip():
            continue
        parts = text.split(sep) if sep != " " else text.split()
        if len(parts) != 3:
            raise InputError(f"expected 3 fields (head, relation, tail), found {len(parts)}", path=path, line=n)
        h, r, t = (p.strip() for p in parts)
        for name, value in zip(COLUMNS, (h, r, t)):
            if not value:
                raise InputError(f"empty {name}", path=path, line=n)
        heads.append(h)
        rels.append(r)
        tails.append(t)
        lines.append(n)
    return heads, rels, tails, lines


def read_text(path: str, delimiter: str | None, has_header: bool | None) -> tuple[list, list, list, list]:
    """The triples of one text file (header: skipped when has_header, or when None and the first
    line's fields are head, relation, tail)."""
    ext, _ = file_suffixes(path)
    cols: tuple[list, list, list, list] = ([], [], [], [])
    sep = delimiter
    for first, body in iter_line_chunks(path, 200_000):
        if sep is None:
            sep = detect_sep(body.split(b"\n", 1)[0].decode("utf-8", errors="replace"), ext)
        if first == 1:
            head_line = body.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
            fields = [f.strip().lower() for f in (head_line.split(sep) if sep != " " else head_line.split())]
            if has_header or (has_header is None and tuple(fields) == COLUMNS):
                nl = body.find(b"\n")
                body, first = (body[nl + 1:], 2) if nl >= 0 else (b"", 2)
        for acc, part in zip(cols, parse_text(body, first, path, sep)):
            acc.extend(part)
    return cols


def read_parquet(path: str) -> tuple[list, list, list, list]:
    """The head / relation / tail columns of a Parquet file, as strings (a null or empty value is an
    InputError naming the row as its line)."""
    import pyarrow.parquet as pq
    names = parquet_column_names(path)
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)} (found {', '.join(names)})", path=path)
    fs, p = storage.filesystem(path)
    with fs.open(p, "rb") as f:
        table = pq.read_table(f, columns=list(COLUMNS))
    cols = [[None if v is None else str(v) for v in table.column(c).to_pylist()] for c in COLUMNS]
    for name, values in zip(COLUMNS, cols):
        for i, v in enumerate(values):
            if v is None or not v.strip():
                raise InputError(f"empty {name}", path=path, line=i + 1)
    return cols[0], cols[1], cols[2], list(range(1, len(cols[0]) + 1))


def read_triples(uri: str, delimiter: str | None = None, has_header: bool | None = None) -> RawTriples:
    """Every triple of a file, folder or glob (local or s3://), in file order."""
    paths = expand_inputs(uri)
    heads, rels, tails, lines, where = [], [], [], [], []
    for k, path in enumerate(paths):
        h, r, t, ln = read_parquet(path) if is_parquet(path) else read_text(path, delimiter, has_header)
        heads += h
        rels += r
        tails += t
        lines += ln
        where += [k] * len(h)
    if not heads:
        raise InputError("no triples", path=uri)
    cols = tuple(np.array(c, dtype=object) for c in (heads, rels, tails))
    return RawTriples(cols, np.array(where, np.int32), np.array(lines, np.int64), paths)


# ---- ids, split and unseen triples -----------------------------------------------------------------
def seeded_split(raw: RawTriples, valid_share: float, test_share: float, seed: int) -> tuple[RawTriples, ...]:
    """(train, valid, test) parts of one input by a seeded permutation. A held-out triple whose
    entity or relation is not in the train part goes back to train, so every split is usable."""
    order = np.random.default_rng(seed).permutation(raw.rows)
    n_valid, n_test = int(round(raw.rows * valid_share)), int(round(raw.rows * test_share))
    test_idx, valid_idx, train_idx = order[:n_test], order[n_test:n_test + n_valid], order[n_test + n_valid:]
    train = raw.take(np.sort(train_idx))
    ents = set(train.cols[0]) | set(train.cols[2])
    rels = set(train.cols[1])
    held, back = [], []
    for idx in (valid_idx, test_idx):
        idx = np.sort(idx)
        ok = np.array([raw.cols[0][i] in ents and raw.cols[2][i] in ents and raw.cols[1][i] in rels for i in idx],
                      bool) if idx.size else np.zeros(0, bool)
        held.append(raw.take(idx[ok]))
        back.append(idx[~ok])
    train = raw.take(np.sort(np.concatenate([train_idx, *back])))
    return train, held[0], held[1]


def encode(raw: RawTriples, ent_ids: dict, rel_ids: dict, unseen: str, role: str) -> np.ndarray:
    """Dense ids of a valid/test part: a triple with an entity or relation missing from `ent_ids` /
    `rel_ids` is refused (InputError at its line) or dropped, as `unseen` says."""
    out = np.empty((raw.rows, 3), np.int64)
    keep = np.ones(raw.rows, bool)
    for i in range(raw.rows):
        h, r, t = raw.cols[0][i], raw.cols[1][i], raw.cols[2][i]
        eh, er, et = ent_ids.get(h), rel_ids.get(r), ent_ids.get(t)
        if eh is None or er is None or et is None:
            if unseen == "drop":
                keep[i] = False
                continue
            what = (f"relation {r!r}" if er is None else f"entity {h if eh is None else t!r}")
            path, line = raw.where(i)
            raise InputError(f"{role} triple's {what} does not occur in the training triples "
                             f"(kg.unseen=drop skips such triples, keep adds their entities untrained)",
                             path=path, line=line)
        out[i] = (eh, er, et)
    return out[keep]


def build_triple_set(train: RawTriples, valid: RawTriples | None, test: RawTriples | None,
                     unseen: str = "refuse") -> TripleSet:
    """Dense ids (sorted strings) of the training entities and relations, and the three parts.
    unseen=keep also gives valid/test-only entities ids (their rows stay untrained, as LibKGE and
    the ConvE files count them); an unseen relation is refused or dropped whatever `unseen` says."""
    if unseen not in UNSEEN:
        raise ValueError(f"unseen must be one of {UNSEEN}, got {unseen!r}")
    held = [p for p in (valid, test) if p is not None]
    ent_strings = set(train.cols[0]) | set(train.cols[2])
    if unseen == "keep":
        for p in held:
            ent_strings |= set(p.cols[0]) | set(p.cols[2])
    entities = np.array(sorted(ent_strings), dtype=object)
    relations = np.array(sorted(set(train.cols[1])), dtype=object)
    ent_ids = {e: i for i, e in enumerate(entities)}
    rel_ids = {r: i for i, r in enumerate(relations)}
    policy = "refuse" if unseen == "keep" else unseen      # keep: only an unseen relation can fail
    parts = [encode(p, ent_ids, rel_ids, policy, role) if p is not None else np.zeros((0, 3), np.int64)
             for p, role in ((valid, "valid"), (test, "test"))]
    train_ids = encode(train, ent_ids, rel_ids, "refuse", "train")
    dropped = {role: (p.rows - part.shape[0]) if p is not None else 0
               for p, part, role in zip((valid, test), parts, ("valid", "test"))}
    info = {"entities": len(entities), "relations": len(relations), "train": int(train_ids.shape[0]),
            "valid": int(parts[0].shape[0]), "test": int(parts[1].shape[0]), "dropped_unseen": dropped,
            "unseen": unseen}
    return TripleSet(entities, relations, train_ids, parts[0], parts[1], info)


def load_triples(train_uri: str, valid_uri: str | None = None, test_uri: str | None = None, *,
                 delimiter: str | None = None, has_header: bool | None = None, unseen: str = "refuse",
                 valid_share: float = 0.05, test_share: float = 0.05, seed: int = 0) -> TripleSet:
    """Read and encode a knowledge graph. Without a test file the training input is split by seed
    (valid_share / test_share); a valid file without a test file is refused (ambiguous)."""
    train = read_triples(train_uri, delimiter, has_header)
    if test_uri is None:
        if valid_uri is not None:
            raise InputError("a valid file needs a test file too (or neither, for a seeded split)", path=valid_uri)
        train, valid, test = seeded_split(train, valid_share, test_share, seed)
        ts = build_triple_set(train, valid, test, unseen)
        ts.info["split"] = {"seed": seed, "valid_share": valid_share, "test_share": test_share}
        return ts
    valid = read_triples(valid_uri, delimiter, has_header) if valid_uri is not None else None
    return build_triple_set(train, valid, read_triples(test_uri, delimiter, has_header), unseen)
