"""Word-embedding evaluation: word-pair similarity (Spearman rho), analogies (3CosAdd), neighbours.

The protocols follow gensim's ``evaluate_word_pairs`` / ``evaluate_word_analogies`` so figures are
comparable with the literature and with the gensim peer:
- only the ``restrict_vocab`` most frequent words take part; with ``case_insensitive`` a word
  stands for all its case variants and the most frequent variant's vector is used;
- a pair or question with a word outside that vocabulary is skipped and counted as OOV (the
  OOV share is reported beside every figure: a high rho on 20 % of the pairs is not the same
  as on all of them);
- analogies a:b :: c:? predict argmax cos(x, b - a + c) over unit vectors, excluding a, b, c.
Benchmark files: gensim's test-data formats (tab-separated pairs with '#' comments; analogy
sections ``: name`` followed by ``a b c d`` lines).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SIMILARITY_SETS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
ANALOGY_FILE = "questions-words.txt"


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str, float]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 3:
                continue
            try:
                out.append((parts[0], parts[1], float(parts[2])))
            except ValueError:
                continue          # a header row
    return out


def read_analogies(path: str | os.PathLike) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    sections: list[tuple[str, list]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith(":"):
                sections.append((line[1:].strip(), []))
                continue
            parts = line.split()
            if len(parts) == 4 and sections:
                sections[-1][1].append(tuple(parts))
    return sections


class WordIndex:
    """Unit-normalised vectors of the most frequent words, looked up (case-insensitively)."""

    def __init__(self, words, X: np.ndarray, restrict_vocab: int = 300_000, case_insensitive: bool = True,
                 counts=None):
        words = [str(w) for w in words]
        order = np.arange(len(words))
        if counts is not None:               # most frequent first (the lake's rows already are)
            order = np.argsort(-np.asarray(counts), kind="stable")
        order = order[:restrict_vocab]
        self.words = [words[i] for i in order]
        V = np.asarray(X, dtype=np.float32)[order]
        norms = np.linalg.norm(V, axis=1, keepdims=True)
        self.V = V / np.maximum(norms, 1e-12)
        self.case_insensitive = case_insensitive
        self.key = (lambda w: w.lower()) if case_insensitive else (lambda w: w)
        self.index: dict[str, int] = {}
        for i, w in enumerate(self.words):      # first (most frequent) variant wins
            self.index.setdefault(self.key(w), i)
        self.group = np.array([self.index[self.key(w)] for w in self.words], dtype=np.int64)

    def get(self, word: str) -> int | None:
        return self.index.get(self.key(word))


def spearman(a, b) -> float:
    from scipy.stats import spearmanr
    if len(a) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def evaluate_pairs(index: WordIndex, pairs: list[tuple[str, str, float]]) -> dict:
    """Spearman / Pearson between human scores and cosine similarity on the in-vocabulary pairs."""
    gold, sims, oov = [], [], 0
    for a, b, score in pairs:
        ia, ib = index.get(a), index.get(b)
        if ia is None or ib is None:
            oov += 1
            continue
        gold.append(score)
        sims.append(float(index.V[ia] @ index.V[ib]))
    pearson = float(np.corrcoef(gold, sims)[0, 1]) if len(gold) > 1 else float("nan")
    return {"spearman": spearman(gold, sims), "pearson": pearson, "pairs": len(pairs), "evaluated": len(gold),
            "oov_pairs": oov, "oov_share": oov / len(pairs) if pairs else float("nan")}


def evaluate_analogies(index: WordIndex, sections, batch: int = 1024, candidates: int = 10) -> dict:
    """3CosAdd accuracy over the questions whose four words are in the vocabulary."""
    q_idx, q_sec, oov, total = [], [], 0, 0
    names = [name for name, _ in sections]
    for k, (_, qs) in enumerate(sections):
        for quad in qs:
            total += 1
            ids = [index.get(w) for w in quad]
            if any(i is None for i in ids):
                oov += 1
                continue
            q_idx.append(ids)
            q_sec.append(k)
    Q = np.asarray(q_idx, dtype=np.int64).reshape(-1, 4)
    sec = np.asarray(q_sec, dtype=np.int64)
    correct = np.zeros(len(Q), bool)
    V, group = index.V, index.group
    kk = min(candidates, V.shape[0])
    for s in range(0, len(Q), batch):
        q = Q[s:s + batch]
        target = V[q[:, 1]] - V[q[:, 0]] + V[q[:, 2]]
        sims = target @ V.T
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < V.shape[0] else \
            np.tile(np.arange(V.shape[0]), (len(q), 1))
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        for r in range(len(q)):
            ignore = {q[r, 0], q[r, 1], q[r, 2]}
            pred = -1
            for c in top[r]:
                if group[c] not in ignore:
                    pred = group[c]
                    break
            correct[s + r] = pred == q[r, 3]
    per = {}
    for k, name in enumerate(names):
        m = sec == k
        per[name] = {"accuracy": float(correct[m].mean()) if m.any() else float("nan"), "evaluated": int(m.sum())}
    return {"accuracy": float(correct.mean()) if len(Q) else float("nan"), "correct": int(correct.sum()),
            "evaluated": int(len(Q)), "questions": total, "oov_questions": oov,
            "oov_share": oov / total if total else float("nan"), "sections": per}


def default_benchmarks_dir() -> str | None:
    """$EMBEDLAKE_WORD_BENCHMARKS, else ../shared/corpora/benchmarks beside the repository, if present."""
    env = os.environ.get("EMBEDLAKE_WORD_BENCHMARKS")
    if env:
        return env
    p = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "benchmarks"    # <repo>/workers/evaluate/words.py
    return str(p) if p.is_dir() else None


def evaluate_words(words, X: np.ndarray, benchmarks: str | None = None, case_insensitive: bool = True,
                   restrict_vocab: int = 300_000, analogies: bool = True, counts=None) -> dict:
    """Every benchmark found in `benchmarks` (a folder): {set: figures}; {} when there is none."""
    folder = benchmarks or default_benchmarks_dir()
    if not folder or not os.path.isdir(folder):
        return {}
    index = WordIndex(words, X, restrict_vocab, case_insensitive, counts)
    out: dict = {"benchmarks": str(folder)}
    for name, fname in SIMILARITY_SETS.items():
        p = os.path.join(folder, fname)
        if os.path.exists(p):
            out[name] = evaluate_pairs(index, read_pairs(p))
    p = os.path.join(folder, ANALOGY_FILE)
    if analogies and os.path.exists(p):
        out["analogy"] = evaluate_analogies(index, read_analogies(p))
    return out


def most_similar(words, X: np.ndarray, word: str, k: int = 10,
                 case_insensitive: bool = False) -> list[tuple[str, float]]:
    """The k nearest words to `word` by cosine similarity (the word itself excluded).

    Exact match first; with case_insensitive (or when the exact word is absent) the most frequent
    case variant (the lowest row, rows being ordered by count) is used. KeyError if absent.
    """
    words = [str(w) for w in words]
    pos = {w: i for i, w in reversed(list(enumerate(words)))}
    i = None if case_insensitive else pos.get(word)
    if i is None:
        low = word.lower()
        i = next((j for j, w in enumerate(words) if w.lower() == low), None)
    if i is None:
        raise KeyError(f"{word!r} is not in the vocabulary")
    V = np.asarray(X, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(V, axis=1), 1e-12)
    sims = (V @ V[i]) / (norms * norms[i])
    sims[i] = -np.inf
    k = min(k, len(words) - 1)
    top = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
    top = top[np.argsort(-sims[top], kind="stable")]
    return [(words[j], float(sims[j])) for j in top]
