"""Corpus updates (issue 18, vocab.update=true): the vocabulary grows as gensim's
build_vocab(update=True) grows it (old words keep their ids and add their counts, new words are
appended), and training continues from the previous run's vectors on the new text only."""
from __future__ import annotations

import numpy as np
import pytest

from embedlake.workers.corpus.text import text_init
from embedlake.workers.corpus.update import grown_tables, update_vocab


def test_update_vocab_keeps_old_ids_and_appends_new_words():
    old_words, old_counts = ["the", "cat", "dog"], np.array([10, 6, 5])
    shards = [(["the", "bird", "fish", "emu"], np.array([3, 4, 2, 3])),
              (["dog", "bird", "emu", "gnu"], np.array([1, 1, 2, 9]))]
    words, counts, remaps, stats = update_vocab(old_words, old_counts, shards, min_count=3)
    # old rows first, unchanged order; new words with >= 3 in the new text by count, then word
    assert words == ["the", "cat", "dog", "gnu", "bird", "emu"]
    assert counts.tolist() == [13, 6, 6, 9, 5, 5]
    assert remaps[0].tolist() == [0, 4, -1, 5] and remaps[1].tolist() == [2, 4, 5, 3]
    assert stats["old_vocab"] == 3 and stats["new_words"] == 3 and stats["vocab"] == 6
    assert stats["old_words_seen"] == 2 and stats["tokens"] == 25 and stats["kept_tokens"] == 23
    # max_vocab caps the total; old words are never dropped
    words, _, remaps, _ = update_vocab(old_words, old_counts, shards, min_count=3, max_vocab=4)
    assert words == ["the", "cat", "dog", "gnu"] and remaps[0].tolist() == [0, -1, -1, -1]
    assert update_vocab(old_words, old_counts, shards, min_count=3, max_vocab=2)[0] == old_words


def test_grown_tables_keep_old_rows_and_start_new_ones_fresh():
    rng = np.random.default_rng(0)
    W_in, W_out = rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal((5, 8)).astype(np.float32)
    gi, go = grown_tables(W_in, W_out, 9, seed=3)
    fresh_in, _ = text_init(9, 8, 3)
    assert np.array_equal(gi[:5], W_in) and np.array_equal(go[:5], W_out)
    assert np.array_equal(gi[5:], fresh_in[5:]) and not go[5:].any()


def _corpus(path, words: list[str], sentences: int, seed: int):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(rng.choice(words, size=12, p=p)) + "\n" for _ in range(sentences)))
    return path


@pytest.mark.usefixtures("ray_session", "prefect_session")
def test_embed_corpus_update_grows_vocabulary_and_continues(tmp_path):
    from embedlake.config import CorpusPipelineConfig, load_config
    from embedlake.errors import ConfigError
    from embedlake.flows.embed_corpus import embed_corpus
    from embedlake.lake import Lake
    from embedlake.reader import load_word_vectors
    vocab = [f"w{i:03d}" for i in range(240)]
    a = _corpus(tmp_path / "a" / "toy.txt", vocab[:160], 1500, 0)
    b = _corpus(tmp_path / "b" / "toy.txt", vocab[100:], 1500, 1)      # w000-w099 absent, w160-w239 new
    lake = str(tmp_path / "lake")
    over = [f"lake.uri={lake}", "lake.dataset=toy", "train.dim=16", "train.epochs=1", "vocab.min_count=2",
            "eval.benchmarks=/nonexistent"]
    with pytest.raises(ConfigError, match="no committed run"):
        embed_corpus(load_config(None, over + [f"input.path={b}", "vocab.update=true"], model=CorpusPipelineConfig))
    embed_corpus(load_config(None, over + [f"input.path={a}", "lake.run_id=a"], model=CorpusPipelineConfig))
    s = embed_corpus(load_config(None, over + [f"input.path={b}", "lake.run_id=b", "vocab.update=true"],
                                 model=CorpusPipelineConfig))
    w1, c1, X1 = load_word_vectors(lake, "toy", run="a")
    w2, c2, X2 = load_word_vectors(lake, "toy", run="b")
    old = len(w1)
    assert w2[:old] == w1 and len(w2) > old and set(w2[old:]) <= set(vocab[160:])   # old ids kept, vocab grown
    assert s["corpus"]["old_vocab"] == old and s["corpus"]["new_words"] == len(w2) - old
    # counts add up: an old word's count is its count in a plus its count in b
    in_b = {w: n for w, n in zip(*np.unique(b.read_text().split(), return_counts=True))}
    assert c2[:old].tolist() == [int(n) + int(in_b.get(w, 0)) for w, n in zip(w1, c1)]
    # training ran on b only, from a's vectors: words absent from b keep their vectors bit for bit
    absent = [i for i, w in enumerate(w1) if w not in in_b]
    seen = [i for i, w in enumerate(w1) if w in in_b]
    assert absent and np.array_equal(X2[absent], X1[absent]) and not np.array_equal(X2[seen], X1[seen])
    man = Lake(lake).manifest("toy", "skipgram", "b")
    assert Lake(lake).read_npy(man.files["corpus_state"][0]["path"]).shape == X2.shape
