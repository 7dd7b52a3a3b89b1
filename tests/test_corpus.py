"""Corpus embeddings: tokenisation and vocabulary exactness, long lines, bad input, word evaluation,
and the embed_corpus flow end to end on the Brown corpus (Ray + Prefect, a tmp lake)."""
from __future__ import annotations

import collections
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlake.config import TrainConfig
from embedlake.errors import InputError
from embedlake.workers.corpus import text as wc
from embedlake.workers.evaluate import words as we

TEXT = [
    "The cat sat on the mat .",
    "",
    "the dog  sat\ton the log",
    "   ",
    "A cat and a dog , the end",
    "naïve café über straße — the cat",
    "the the the cat dog mat",
]


def _write(path, lines, end="\n"):
    path.write_text(end.join(lines) + end, encoding="utf-8")
    return path


def _decode(words, tokens, offsets):
    return [[words[t] for t in tokens[a:b]] for a, b in zip(offsets[:-1], offsets[1:])]


def _reference(lines, min_count, lower=False):
    """Single pass in plain Python: the vocabulary counts and the filtered sentences."""
    toks = [(ln.lower() if lower else ln).split() for ln in lines]
    cnt = collections.Counter(t for s in toks for t in s)
    kept = {w: c for w, c in cnt.items() if c >= min_count}
    sents = [[t for t in s if t in kept] for s in toks]
    return kept, [s for s in sents if s]


# ------------------------------------------------------------------------------------ tokenise / vocab

def test_sharded_counts_equal_single_pass(tmp_path):
    """Many small shards (byte ranges, .gz, .zst) merged == one plain-Python pass, in the same order."""
    import zstandard
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)] + ["Ünï", "café", "x-y"]
    lines = [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(400)]
    d = tmp_path / "corpus"
    d.mkdir()
    _write(d / "a.txt", lines[:150])
    (d / "b.txt.gz").write_bytes(gzip.compress(("\n".join(lines[150:300]) + "\n").encode()))
    (d / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines[300:]) + "\n").encode()))
    spec = wc.TextSpec()
    shards = wc.plan_shards(str(d), shard_bytes=512)
    assert len(shards) > 5 and sum(s["compression"] is not None for s in shards) == 2
    kept, sents = _reference(lines, 3)
    for sb in (512, 1 << 30):
        w, c, tok, off, st = wc.tokenise_corpus(str(d), spec, min_count=3, shard_bytes=sb)
        assert dict(zip(w, c.tolist())) == kept
        assert list(c) == sorted(c, reverse=True)
        assert _decode(w, tok, off) == sents
        assert st["raw_tokens"] == sum(len(ln.split()) for ln in lines)
        assert st["empty_lines"] == sum(1 for ln in lines if not ln.split())
    # the merge itself: per-shard vocabularies summed == counting everything at once
    res = [wc.count_shard(s, spec) for s in shards]
    total = collections.Counter()
    for _, (ws, cs), ids, lens in res:
        total.update(dict(zip(ws, cs.tolist())))
        assert len(ids) == lens.sum()
    assert total == collections.Counter(t for ln in lines for t in ln.split())


def test_tokenizers_lowercase_and_empty_lines(tmp_path):
    p = _write(tmp_path / "t.txt", TEXT)
    w, c, tok, off, st = wc.tokenise_corpus(str(p), wc.TextSpec(lowercase=True), min_count=1)
    kept, sents = _reference(TEXT, 1, lower=True)
    assert dict(zip(w, c.tolist())) == kept and _decode(w, tok, off) == sents
    assert st["empty_lines"] == 2 and st["lines"] == len(TEXT) and st["sentences"] == 5
    spec = wc.TextSpec(tokenizer="regex", pattern=r"\w+", lowercase=True)
    w, c, tok, off, _ = wc.tokenise_corpus(str(p), spec, min_count=1)
    assert "." not in w and "," not in w and "—" not in w
    assert dict(zip(w, c.tolist()))["the"] == 9 and "straße" in w and "naïve" in w


def test_crlf_and_missing_final_newline(tmp_path):
    p = tmp_path / "crlf.txt"
    p.write_bytes(b"a b c\r\nb c\r\nc")
    w, c, tok, off, _ = wc.tokenise_corpus(str(p), wc.TextSpec(), min_count=1)
    assert dict(zip(w, c.tolist())) == {"c": 3, "b": 2, "a": 1}
    assert _decode(w, tok, off) == [["a", "b", "c"], ["b", "c"], ["c"]]


def test_long_lines_are_split_not_truncated(tmp_path):
    assert wc.split_long(np.array([25, 0, 3, 10, 11]), 10).tolist() == [10, 10, 5, 3, 10, 10, 1]
    long = " ".join(f"t{i % 7}" for i in range(25))
    p = _write(tmp_path / "long.txt", ["x y", long, "y x"])
    w, c, tok, off, st = wc.tokenise_corpus(str(p), wc.TextSpec(max_sentence_tokens=10), min_count=1)
    assert np.diff(off).tolist() == [2, 10, 10, 5, 2]           # every token kept, in order
    assert _decode(w, tok, off)[1:4] == [long.split()[0:10], long.split()[10:20], long.split()[20:]]
    assert st["long_lines"] == 1 and st["extra_sentences"] == 2 and st["raw_tokens"] == 29
    with pytest.raises(InputError) as e:
        wc.tokenise_corpus(str(p), wc.TextSpec(max_sentence_tokens=10, long_lines="fail"), min_count=1)
    assert str(p) in str(e.value) and "line 2" in str(e.value) and "25 tokens" in str(e.value)
    assert "byte offset 4" in str(e.value)


# ------------------------------------------------------------------------------------ bad input

def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    p = tmp_path / "bad.txt"
    good = b"first line ok\n" * 100
    p.write_bytes(good + b"caf\xe9 au lait\n" + good)
    offset = len(good) + 3
    for sb in (1 << 20, 300):              # one shard, or the bad byte in a later byte-range shard
        with pytest.raises(InputError) as e:
            wc.tokenise_corpus(str(p), wc.TextSpec(), min_count=1, shard_bytes=sb)
        msg = str(e.value)
        assert str(p) in msg and f"byte offset {offset}" in msg and "invalid UTF-8" in msg, msg
    assert e.value.path == str(p)
    w, c, tok, off, st = wc.tokenise_corpus(str(p), wc.TextSpec(encoding_errors="replace"), min_count=1)
    assert st["replaced_invalid_utf8"] == 1 and "caf\ufffd" in w


def test_binary_empty_and_parquet_inputs(tmp_path):
    b = tmp_path / "bin.dat"
    b.write_bytes(b"hello\x00\x01\x02world")
    with pytest.raises(InputError, match=r"bin\.dat: .*byte offset 5: NUL byte.*binary"):
        wc.tokenise_corpus(str(b), wc.TextSpec(encoding_errors="replace"))
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "empty.txt").write_bytes(b"")
    _write(d / "text.txt", ["a b", "", "b c"])
    w, c, tok, off, st = wc.tokenise_corpus(str(d), wc.TextSpec(), min_count=1)
    assert st["empty_files"] == 1 and st["empty_lines"] == 1 and sorted(w) == ["a", "b", "c"]
    only_empty = tmp_path / "nothing"
    only_empty.mkdir()
    (only_empty / "e.txt").write_bytes(b"\n\n  \n")
    spec = wc.TextSpec()
    res = [wc.count_stage(s, spec) for s in wc.plan_shards(str(only_empty))]
    with pytest.raises(InputError, match="no tokens"):
        wc.merge_stage(1, None, [r[0] for r in res], *[r[1] for r in res])
    res = [wc.count_stage(s, spec) for s in wc.plan_shards(str(d))]
    with pytest.raises(InputError, match="min_count=5"):
        wc.merge_stage(5, None, [r[0] for r in res], *[r[1] for r in res])
    # Parquet with a text column (nulls = empty lines), one shard per row group
    pqf = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "body": ["a b", None, "b c", "c c"]}), pqf, row_group_size=2)
    with pytest.raises(InputError, match="no text column 'text'"):
        wc.plan_shards(str(pqf))
    shards = wc.plan_shards(str(pqf), text_column="body")
    assert len(shards) == 2
    w, c, tok, off, st = wc.tokenise_corpus(str(pqf), wc.TextSpec(text_column="body"), min_count=1)
    assert dict(zip(w, c.tolist())) == {"c": 3, "b": 2, "a": 1} and st["empty_lines"] == 1
    with pytest.raises(InputError, match="file not found"):
        wc.plan_shards(str(tmp_path / "missing.txt"))


# ------------------------------------------------------------------------------------ evaluation

def test_word_eval_on_constructed_vectors(tmp_path):
    rng = np.random.default_rng(1)
    words = ["king", "queen", "man", "woman", "paris", "france", "rome", "italy", "King"]
    base = {w: rng.normal(size=32) for w in words}
    g, r = rng.normal(size=32) * 3, rng.normal(size=32) * 3
    base["queen"] = base["king"] + g
    base["woman"] = base["man"] + g
    base["france"] = base["paris"] + r
    base["italy"] = base["rome"] + r
    X = np.stack([base[w] for w in words]).astype(np.float32)
    (tmp_path / "questions-words.txt").write_text(
        ": gender\nking queen man woman\nman woman king queen\n: capitals\nparis france rome italy\n"
        "rome italy paris france\nparis france berlin germany\n")
    # similarity scores that rank pairs exactly as their cosines do: rho = 1
    pairs = [("king", "queen"), ("man", "woman"), ("paris", "rome"), ("king", "italy"), ("man", "zebra")]
    idx = we.WordIndex(words, X)
    sims = [float(idx.V[idx.get(a)] @ idx.V[idx.get(b)]) for a, b in pairs[:4]]
    lines = ["# comment", "# Word 1\tWord 2\tHuman (mean)"] + [f"{a}\t{b}\t{s * 10:.6f}" for (a, b), s in
                                                             zip(pairs, sims + [5.0])]
    (tmp_path / "wordsim353.tsv").write_text("\n".join(lines) + "\n")
    m = we.evaluate_words(words, X, str(tmp_path), counts=np.arange(len(words), 0, -1))
    assert m["wordsim353"]["spearman"] == pytest.approx(1.0)
    assert m["wordsim353"]["oov_pairs"] == 1 and m["wordsim353"]["oov_share"] == pytest.approx(0.2)
    a = m["analogy"]
    assert a["accuracy"] == 1.0 and a["evaluated"] == 4 and a["oov_questions"] == 1
    assert a["sections"]["gender"]["accuracy"] == 1.0 and "simlex999" not in m
    # most_similar: itself excluded, sorted, exact case first, case-insensitive fallback
    top = we.most_similar(words, X, "queen", k=3)
    assert top[0][0] == "king" or top[0][1] >= top[1][1]
    assert "queen" not in [t for t, _ in top] and len(top) == 3
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert we.most_similar(words, X, "KING", k=2) == we.most_similar(words, X, "king", k=2)
    with pytest.raises(KeyError):
        we.most_similar(words, X, "zebra")


# ------------------------------------------------------------------------------------ end to end

@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_embed_corpus_brown_end_to_end(tmp_path, shared):
    import polars as pl

    import embedlake
    from embedlake.config import CorpusPipelineConfig, load_config
    from embedlake.flows.embed_corpus import embed_corpus
    from embedlake.lake import Lake
    from embedlake.reader import most_similar
    brown = shared("corpora", "brown", "brown.txt")
    shared("corpora", "benchmarks", "wordsim353.tsv")
    lake = str(tmp_path / "lake")
    cfg = load_config(None, [f"lake.uri={lake}", f"input.path={brown}", "input.shard_mb=1", "partitions=3",
                             "train.dim=50", "train.epochs=3"], model=CorpusPipelineConfig)
    s = embed_corpus(cfg)
    print(json.dumps({"metrics": {k: v for k, v in s["metrics"].items() if k != "analogy"},
                      "analogy": s["metrics"]["analogy"]["accuracy"], "stages": s["stages"], "train": s["train"]}))
    c = s["corpus"]
    assert s["dataset"] == "brown" and c["shards"] == 6 and c["raw_tokens"] == 1_161_192
    assert c["lines"] == 57_340 and c["long_lines"] == 0 and s["rows"] == 15_173
    # counting on 6 Ray workers gives the single-pass vocabulary
    ref = collections.Counter(t for ln in open(brown, encoding="utf-8") for t in ln.split())
    df = embedlake.read_embeddings(lake, "brown", "skipgram")
    assert df.columns[:3] == ["token", "vector", "count"] and df.height == 15_173
    assert dict(zip(df["token"].to_list(), df["count"].to_list())) == {w: n for w, n in ref.items() if n >= 5}
    assert df.schema["vector"] == pl.Array(pl.Float32, 50)
    assert df["count"].to_list() == sorted(df["count"].to_list(), reverse=True)
    man = Lake(lake).manifest("brown", "skipgram")
    assert man.run_id == s["run_id"] and sum(f["rows"] for f in man.files["embeddings"]) == 15_173
    assert len(man.files["tokens"]) == 7                     # 6 sentence shards + the vocabulary
    ws = man.metrics["wordsim353"]
    # measured here at d=50, 3 epochs, seeds 0-2: WordSim353 rho 0.209 / 0.227 / 0.229, SimLex-999
    # 0.164-0.179 (gensim at d=100, 5 epochs: 0.27 / 0.16); 82 of the 353 pairs are out of vocabulary
    assert ws["spearman"] > 0.17 and ws["oov_share"] == pytest.approx(82 / 353)
    assert man.metrics["simlex999"]["spearman"] > 0.12 and "analogy" in man.metrics
    # token-id shards decode to the corpus sentences (with rare words removed)
    toks = pl.read_parquet(Lake(lake).url(man.files["tokens"][0]["path"]))
    words = df["token"].to_list()
    first = open(brown, encoding="utf-8").readline().split()
    assert [words[i] for i in toks["sentence"][0]] == [t for t in first if ref[t] >= 5]
    near = [w for w, _ in most_similar(lake, "brown", "skipgram", "Monday", k=10)]
    assert len(near) == 10 and "Monday" not in near
    assert {"Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"} & set(near), near


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_embed_corpus_bad_input_commits_nothing(tmp_path, capsys):
    from embedlake.flows.cli import main as cli
    lake = tmp_path / "lake"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a b c\n" * 50 + b"d \xff e\n")
    rc = cli(["embed-corpus", "--input", str(bad), "--lake", str(lake), "-p", "vocab.min_count=1"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "byte offset 302" in err and "invalid UTF-8" in err, err
    assert not lake.exists() or not any(p.is_file() for p in lake.rglob("*")), list(lake.rglob("*"))
    # a failure after the token-id shards were written (training on a device that does not exist)
    from embedlake.config import CorpusPipelineConfig, load_config
    from embedlake.flows.embed_corpus import embed_corpus
    good = tmp_path / "good.txt"
    good.write_text("a b c d\n" * 200)
    cfg = load_config(None, [f"lake.uri={lake}", f"input.path={good}", "train.engine=torch",
                             "train.device=cuda:99", "train.dim=4"], model=CorpusPipelineConfig)
    with pytest.raises(Exception):
        embed_corpus(cfg)
    assert not any(p.is_file() for p in lake.rglob("*")), list(lake.rglob("*"))


def test_s3_input_sharded(s3_env, tmp_path):
    """s3:// folder input: byte-range shards read with seeks, .gz streamed, same result as local."""
    import boto3
    lines = [" ".join(f"w{(i * j) % 17}" for j in range(i % 13)) for i in range(300)]
    body = ("\n".join(lines) + "\n").encode()
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"], region_name="us-east-1")
    s3.put_object(Bucket=s3_env["bucket"], Key="corpus/a.txt", Body=body)
    s3.put_object(Bucket=s3_env["bucket"], Key="corpus/b.txt.gz", Body=gzip.compress(body))
    uri = f"s3://{s3_env['bucket']}/corpus/"
    w, c, tok, off, st = wc.tokenise_corpus(uri, wc.TextSpec(), min_count=2, shard_bytes=400)
    assert st["shards"] > 3
    kept, sents = _reference(lines + lines, 2)
    assert dict(zip(w, c.tolist())) == kept and _decode(w, tok, off) == sents


def test_train_stage_engines(tmp_path):
    """Both engines through the corpus train stage: same contract (table [V, d], stats), seeded init."""
    rng = np.random.default_rng(3)
    lines = [" ".join(f"w{int(x)}" for x in rng.zipf(1.5, size=12) if x < 40) for _ in range(300)]
    p = _write(tmp_path / "z.txt", lines)
    w, c, tok, off, _ = wc.tokenise_corpus(str(p), wc.TextSpec(), min_count=2)
    cfg = dict(dim=8, window=3, negatives=3, ns_exponent=0.75, epochs=2, lr=0.025, min_lr=1e-4, sample=1e-3, seed=0)
    Wn, sn = wc.train_stage(len(w), c, TrainConfig(**cfg, engine="numba"), tok, off, threads=1)
    Wn2, _ = wc.train_stage(len(w), c, TrainConfig(**cfg, engine="numba"), tok, off, threads=1)
    Wt, st = wc.train_stage(len(w), c, TrainConfig(**cfg, engine="torch", device="cpu"), tok, off, threads=1)
    assert Wn.shape == Wt.shape == (len(w), 8) and np.isfinite(Wn).all() and np.isfinite(Wt).all()
    assert np.array_equal(Wn, Wn2)                       # one thread, fixed seed: bit-for-bit
    assert sn["engine"] == "numba" and st["engine"] == "torch" and sn["sentences"] == len(off) - 1
    W0, _ = wc.text_init(len(w), 8, 0)
    assert np.abs(W0).max() <= 1 / 8 and np.abs(W0).max() > 0.9 / 8 and not np.array_equal(Wn, W0)



def test_train_stage_negatives_per_pair(tmp_path):
    """train.negatives_per=pair reaches the kernel as word2vec's per-pair negatives (issue 20): the
    stage's table is train_sgns(shared_negatives=False)'s, and not the shared-negatives default's;
    an engine without that mode refuses the setting at load."""
    from embedlake.workers.train.skipgram import train_sgns
    rng = np.random.default_rng(3)
    lines = [" ".join(f"w{int(x)}" for x in rng.zipf(1.5, size=12) if x < 40) for _ in range(300)]
    p = _write(tmp_path / "z.txt", lines)
    w, c, tok, off, _ = wc.tokenise_corpus(str(p), wc.TextSpec(), min_count=2)
    cfg = dict(dim=8, window=3, negatives=3, epochs=2, sample=1e-3, seed=0)
    Wp, _ = wc.train_stage(len(w), c, TrainConfig(**cfg, negatives_per="pair"), tok, off, threads=1)
    Ws, _ = wc.train_stage(len(w), c, TrainConfig(**cfg), tok, off, threads=1)
    Wk, _, _ = train_sgns(tok, off, len(w), counts=c, threads=1, shared_negatives=False,
                          init=wc.text_init(len(w), 8, 0), **cfg)
    assert np.array_equal(Wp, Wk) and not np.array_equal(Wp, Ws)
    with pytest.raises(ValueError, match="negatives_per=pair"):
        TrainConfig(**cfg, negatives_per="pair", engine="torch")
