"""Corpus embeddings vs gensim, side by side in one run, on the same tokenised sentences.

    .venv/bin/python bench/bench_corpus.py [--corpus ../shared/corpora/brown/brown.txt] [--epochs 5]
        [--threads 2] [--scale 10 --files 20] [--skip-gensim] [--skip-scale]

Part 1 (training, Brown): our tokeniser + vocabulary, then the numba skip-gram kernel (embed-corpus's
default negatives scheme unless --negatives-per says otherwise) and gensim
(peers venv, subprocess, same sentences written as space-joined lines, same hyper-parameters: sg=1,
negative sampling, d=100, window 5, 5 negatives, 5 epochs, min_count 5, sample 1e-3, 2 threads).
tokens/s = in-vocabulary tokens x epochs / training seconds (vocabulary building excluded for both).
Both tables are evaluated by the same code (workers/evaluate/words.py: WordSim353 / SimLex-999 Spearman
rho, analogy accuracy, OOV shares); gensim's own evaluate_word_pairs figure is printed as a check.

Part 2 (scale): the corpus copied `scale` times into `files` files; the vocabulary build (count +
merge + encode) timed serially in-process and fanned out on Ray (2 CPUs); one training epoch
timed at 1x and `scale`x to show linear growth. Prints one JSON object at the end.
polars tokenises with all cores by default; run part 2 as
`POLARS_MAX_THREADS=1 .venv/bin/python bench/bench_corpus.py --skip-train` to compare one core
serially with one core per Ray worker (count_parallelism = sum of shard task times / wall time).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from peer_venvs import add_peers_option, peer_python  # noqa: E402  (bench/peer_venvs.py)

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEERS_PY = None   # the peers venv's python: set in main() (bench/peer_venvs.py)

GENSIM_SCRIPT = r"""
import json, sys, time, numpy as np
from gensim.models import Word2Vec
path, out, dim, window, neg, epochs, threads, min_count, sample, seed = sys.argv[1:11]
sents = [l.split() for l in open(path, encoding="utf-8")]
m = Word2Vec(vector_size=int(dim), window=int(window), sg=1, hs=0, negative=int(neg), min_count=int(min_count),
             sample=float(sample), workers=int(threads), seed=int(seed), epochs=int(epochs))
t0 = time.perf_counter(); m.build_vocab(sents); vocab_s = time.perf_counter() - t0
t0, c0 = time.perf_counter(), time.process_time()
m.train(sents, total_examples=m.corpus_count, epochs=m.epochs)
train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
np.save(out + ".npy", m.wv.vectors.astype(np.float32))
with open(out + ".words", "w", encoding="utf-8") as f:
    f.write("\n".join(m.wv.index_to_key))
own = m.wv.evaluate_word_pairs(sys.argv[11]) if len(sys.argv) > 11 else None
in_vocab = int(sum(m.wv.get_vecattr(w, "count") for w in m.wv.index_to_key))
print(json.dumps({"vocab": len(m.wv), "vocab_s": vocab_s, "train_s": train_s, "in_vocab_tokens": in_vocab,
                  "tokens_per_s": in_vocab * int(epochs) / train_s, "train_cpu_s": train_cpu_s,
                  "tokens_per_cpu_s": in_vocab * int(epochs) / train_cpu_s,
                  "own_wordsim_spearman": None if own is None else float(own[1][0]),
                  "own_wordsim_oov_pct": None if own is None else float(own[2])}))
"""


def write_sentences(corpus: str, spec, path: str) -> str:
    """The corpus tokenised as embedlake does, one sentence per line (raw tokens, before the
    vocabulary filter): what gensim trains on, so both see the same sentences."""
    import polars as pl

    from embedlake.workers.corpus.text import tokenise_lines
    lines = pl.Series("l", Path(corpus).read_text(encoding="utf-8").rstrip("\n").split("\n"))
    flat, lens = tokenise_lines(lines, spec)
    flat_l = flat.to_list()
    with open(path, "w", encoding="utf-8") as f:
        pos = 0
        for n in lens:
            if n:
                f.write(" ".join(flat_l[pos:pos + n]) + "\n")
            pos += n
    return path


def run_gensim(sent_path: str, args, tmp: str, seed: int = 0) -> dict:
    script = os.path.join(tmp, "gensim_peer.py")
    Path(script).write_text(GENSIM_SCRIPT)
    out = os.path.join(tmp, "gensim")
    ws = str(SHARED / "corpora" / "benchmarks" / "wordsim353.tsv")
    cmd = [PEERS_PY, script, sent_path, out, str(args.dim), str(args.window), str(args.negatives), str(args.epochs),
           str(args.threads), str(args.min_count), str(args.sample), str(seed), ws]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"gensim failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    words = Path(out + ".words").read_text(encoding="utf-8").split("\n")
    return res, words, np.load(out + ".npy")


def summarise_eval(m: dict) -> dict:
    out = {}
    for k in ("wordsim353", "simlex999"):
        if k in m:
            out[k] = {"rho": round(m[k]["spearman"], 4), "oov": round(m[k]["oov_share"], 4)}
    if "analogy" in m:
        out["analogy"] = {"acc": round(m["analogy"]["accuracy"], 4), "oov": round(m["analogy"]["oov_share"], 4)}
    return out


def part_train(args, tmp: str) -> dict:
    from embedlake.workers.corpus.text import TextSpec, text_init, tokenise_corpus
    from embedlake.workers.train.skipgram import train_sgns
    from embedlake.workers.evaluate.words import evaluate_words

    spec = TextSpec(lowercase=args.lowercase)
    t0 = time.perf_counter()
    words, counts, tokens, offsets, st = tokenise_corpus(args.corpus, spec, args.min_count)
    vocab_s = time.perf_counter() - t0
    # the same tokenised sentences for gensim (raw tokens, before the vocabulary filter)
    sent_path = write_sentences(args.corpus, spec, os.path.join(tmp, "sentences.txt"))
    res = {"corpus": args.corpus, "sentences": int(len(offsets) - 1), "raw_tokens": st["raw_tokens"],
           "vocab": len(words), "in_vocab_tokens": int(len(tokens)), "threads": args.threads,
           "params": {"dim": args.dim, "window": args.window, "negatives": args.negatives,
                      "negatives_per": args.negatives_per, "epochs": args.epochs,
                      "min_count": args.min_count, "sample": args.sample, "lowercase": args.lowercase}}
    runs: dict[str, list] = {"ours": [], "gensim": []}
    who_all = ["ours"] if args.skip_gensim else ["ours", "gensim"]
    for seed in range(args.seeds):
        for who in (who_all if seed % 2 == 0 else who_all[::-1]):     # alternate the order under load
            if who == "ours":
                W, _, s = train_sgns(tokens, offsets, len(words), counts=counts, dim=args.dim, window=args.window,
                                     negatives=args.negatives, epochs=args.epochs, sample=args.sample, seed=seed,
                                     threads=args.threads, init=text_init(len(words), args.dim, seed),
                                     shared_negatives=args.negatives_per == "window")
                ev = evaluate_words(words, W, counts=counts)
                row = {"seed": seed, "vocab_s": round(vocab_s, 3), "train_s": round(s["seconds"], 3),
                       "tokens_per_s": round(len(tokens) * args.epochs / s["seconds"]),
                       "loss": [round(s["loss_first"], 4), round(s["loss_last"], 4)], **summarise_eval(ev)}
            else:
                g, gw, gX = run_gensim(sent_path, args, tmp, seed)
                ev = evaluate_words(gw, gX)
                row = {"seed": seed, "vocab_s": round(g["vocab_s"], 3), "train_s": round(g["train_s"], 3),
                       "tokens_per_s": round(g["tokens_per_s"]), "vocab": g["vocab"],
                       "own_wordsim_spearman": round(g["own_wordsim_spearman"], 4),
                       "own_wordsim_oov_pct": round(g["own_wordsim_oov_pct"], 2), **summarise_eval(ev)}
            runs[who].append(row)
            print(json.dumps({who: row}), flush=True)
    for who in who_all:
        rows = runs[who]
        res[who] = {"runs": rows, "mean": {
            "tokens_per_s": round(float(np.mean([r["tokens_per_s"] for r in rows]))),
            "wordsim353_rho": round(float(np.mean([r["wordsim353"]["rho"] for r in rows])), 4),
            "wordsim353_rho_sd": round(float(np.std([r["wordsim353"]["rho"] for r in rows])), 4),
            "simlex999_rho": round(float(np.mean([r["simlex999"]["rho"] for r in rows])), 4),
            "analogy_acc": round(float(np.mean([r["analogy"]["acc"] for r in rows])), 4)}}
    if "gensim" in res:
        o, g = res["ours"]["mean"], res["gensim"]["mean"]
        res["ratio_tokens_per_s"] = round(o["tokens_per_s"] / g["tokens_per_s"], 3)
        res["ratio_tokens_per_s_per_seed"] = [round(a["tokens_per_s"] / b["tokens_per_s"], 3)
                                              for a, b in zip(runs["ours"], runs["gensim"])]
        res["delta_wordsim_rho"] = round(o["wordsim353_rho"] - g["wordsim353_rho"], 4)
    return res


def part_scale(args, tmp: str) -> dict:
    """scale x corpus over `files` files: vocabulary build serial vs Ray, training time 1x vs scale x."""
    from embedlake.workers.corpus.text import (TextSpec, concat_sentences, count_shard, encode_shard, plan_shards,
                                          text_init, tokenise_corpus)
    from embedlake.workers.train.skipgram import train_sgns
    text = Path(args.corpus).read_bytes()
    lines = text.rstrip(b"\n").split(b"\n")
    per_file = -(-len(lines) * args.scale // args.files)
    folder = os.path.join(tmp, "scaled")
    os.makedirs(folder)
    allines = lines * args.scale
    for k in range(args.files):
        Path(folder, f"part-{k:03d}.txt").write_bytes(b"\n".join(allines[k * per_file:(k + 1) * per_file]) + b"\n")
    spec = TextSpec(lowercase=args.lowercase)
    out = {"scale": args.scale, "files": args.files, "polars_threads": os.environ.get("POLARS_MAX_THREADS", "all")}
    t0 = time.perf_counter()
    w1, c1, tok1, off1, _ = tokenise_corpus(folder, spec, args.min_count)
    out["vocab_serial_s"] = round(time.perf_counter() - t0, 3)

    import ray
    ray.init(num_cpus=args.threads, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", "")}}
             if os.environ.get("POLARS_MAX_THREADS") else None)
    ray.get([ray.remote(lambda: 0).remote() for _ in range(args.threads)])   # workers up before the clock
    shards = plan_shards(folder)
    t0 = time.perf_counter()
    count = ray.remote(count_shard).options(num_returns=4)
    refs = [count.remote(s, spec) for s in shards]
    shard_stats = ray.get([r[0] for r in refs])
    out["count_ray_wall_s"] = round(time.perf_counter() - t0, 3)
    out["count_task_s_sum"] = round(sum(st["seconds"] for st in shard_stats), 3)
    out["count_parallelism"] = round(out["count_task_s_sum"] / out["count_ray_wall_s"], 2)
    merged = ray.get(ray.remote(_merge_remote).remote(args.min_count, *[r[1] for r in refs]))
    words, counts, remaps = merged
    enc = ray.remote(encode_shard).options(num_returns=2)
    parts = [enc.remote(remaps[i], refs[i][2], refs[i][3]) for i in range(len(shards))]
    parts = [(ray.get(a), ray.get(b)) for a, b in parts]
    tokens, offsets = concat_sentences(parts)
    out["vocab_ray_s"] = round(time.perf_counter() - t0, 3)
    out["vocab_speedup"] = round(out["vocab_serial_s"] / out["vocab_ray_s"], 3)
    out["identical"] = bool(words == w1 and np.array_equal(tokens, tok1) and np.array_equal(offsets, off1))
    ray.shutdown()

    # training time, one epoch: 1x (the first 1/scale of the sentences), scale x, then 1x again
    # (the machine is shared: the two 1x runs bracket the long one)
    S = len(offsets) - 1
    times = []
    for frac in (1, args.scale, 1):
        hi = S * frac // args.scale
        t, o = tokens[:offsets[hi]], offsets[:hi + 1]
        marks: list = []
        t0 = time.perf_counter()
        _, _, s = train_sgns(t, o, len(words), counts=counts, dim=args.dim, window=args.window,
                             negatives=args.negatives, epochs=1, sample=args.sample, seed=0, threads=args.threads,
                             init=text_init(len(words), args.dim, 0),
                             progress=lambda done, total, loss: marks.append((done / total, time.perf_counter() - t0)))
        row = {"size": f"{frac}x", "tokens": int(len(t)), "train_s": round(s["seconds"], 3),
               "tokens_per_s": round(len(t) / s["seconds"])}
        if frac > 1:     # inside the long run: seconds to reach 10 %, 20 %, ... 100 % of the tokens
            row["s_at_decile"] = [round(next(m[1] for m in marks if m[0] >= k / 10 - 1e-9), 2) for k in range(1, 11)]
        times.append(row)
    out["train_1_epoch"] = times
    one = (times[0]["train_s"] + times[2]["train_s"]) / 2
    out["train_time_ratio"] = round(times[1]["train_s"] / one, 3)
    out["tokens_ratio"] = round(times[1]["tokens"] / times[0]["tokens"], 3)
    return out


def _merge_remote(min_count, *vocabs):
    from embedlake.workers.corpus.text import merge_vocab
    w, c, remaps, _ = merge_vocab(list(vocabs), min_count)
    return w, c, remaps


def corpus_negatives_per() -> str:
    """The negatives scheme embed-corpus trains with by default, so the side-by-side measures what a
    corpus run uses (before, this bench called train_sgns with its own default, the graph's shared
    window negatives)."""
    from embedlake.config import CorpusPipelineConfig
    return CorpusPipelineConfig.model_fields["train"].default_factory().negatives_per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(SHARED / "corpora" / "brown" / "brown.txt"))
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--sample", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--negatives-per", choices=("pair", "window"), default=corpus_negatives_per(),
                    help="Our kernel's negatives: per pair (word2vec's order) or shared per window; default: "
                         "embed-corpus's default (train.negatives_per).")
    ap.add_argument("--lowercase", action="store_true")
    ap.add_argument("--seeds", type=int, default=3, help="Training seeds per engine (mean and sd reported).")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--skip-gensim", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    add_peers_option(ap)
    args = ap.parse_args()
    global PEERS_PY
    PEERS_PY = peer_python("peers", args.peers, required=not args.skip_gensim)
    from embedlake.tasks.runtime import configure_env
    configure_env()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_train:
            res["train"] = part_train(args, tmp)
        if not args.skip_scale:
            res["scale"] = part_scale(args, tmp)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
