"""Quality experiments for the skip-gram kernel against gensim on Brown (issue 20, docs/skipgram.md).

    .venv/bin/python bench/sgns_quality.py --variant base --seeds 0 1 2 [--kw '{"shared_negatives": false}']
        [--gensim] [--epochs 5] [--threads 2] [--lr-per-sentence] [--abtt 0 1 2 3]
    .venv/bin/python bench/sgns_quality.py --speed '{"window": {}, "pair": {"shared_negatives": false}}'
        [--rounds 3] [--thread-counts 1 2]

Tokenises Brown once (our tokeniser, min_count 5, cached under --cache), trains our kernel with the
keyword arguments given in --kw (one variant per call, one change at a time), evaluates WordSim353 /
SimLex-999 / analogies with workers/evaluate/words.py and prints one JSON line per seed and the mean.
--gensim trains gensim instead (peers venv, same sentences, same settings; bench_corpus.run_gensim).
--abtt D ... also scores each seed's vectors after all-but-the-top post-processing with D directions
(bench/abtt.py; gensim's in our index), and the mean line adds the paired differences to the plain
vectors with their standard errors (`abtt_minus_plain`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_corpus
from abtt import abtt_variants  # noqa: E402  (bench/abtt.py)
from peer_venvs import add_peers_option, peer_python  # noqa: E402


def tokenised(args):
    """(words, counts, tokens, offsets, sentence file) for the corpus, cached in args.cache."""
    from embedlake.workers.corpus.text import TextSpec, tokenise_corpus
    os.makedirs(args.cache, exist_ok=True)
    npz, sent_path = os.path.join(args.cache, "brown.npz"), os.path.join(args.cache, "sentences.txt")
    if os.path.exists(npz) and os.path.exists(sent_path):
        z = np.load(npz, allow_pickle=True)
        return list(z["words"]), z["counts"], z["tokens"], z["offsets"], sent_path
    spec = TextSpec(lowercase=False)
    words, counts, tokens, offsets, _ = tokenise_corpus(args.corpus, spec, args.min_count)
    bench_corpus.write_sentences(args.corpus, spec, sent_path)
    np.savez(npz, words=np.array(words, dtype=object), counts=counts, tokens=tokens, offsets=offsets)
    return words, counts, tokens, offsets, sent_path


def add_corpus_options(ap: argparse.ArgumentParser) -> None:
    """The corpus and the settings shared with gensim (also bench/sgns_harness.py's): Brown, d=100,
    window 5, 5 negatives, min_count 5, sample 1e-3; --epochs and --threads are each script's own."""
    ap.add_argument("--corpus", default=str(bench_corpus.SHARED / "corpora" / "brown" / "brown.txt"))
    ap.add_argument("--cache", default="/tmp/sgns")
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--sample", type=float, default=1e-3)


def parse_args():
    """The command line (module docstring)."""
    ap = argparse.ArgumentParser()
    add_corpus_options(ap)
    ap.add_argument("--variant", default="base")
    ap.add_argument("--kw", default="{}", help="JSON keyword arguments for train_sgns")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--gensim", action="store_true")
    ap.add_argument("--speed", default=None, metavar="JSON", help='speed mode: {"name": train_sgns kwargs, ...}; '
                    "rounds of gensim then each variant, train only, seed 0, at each of --thread-counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr-per-sentence", action="store_true",
                    help="learning-rate progress per sentence, as gensim's with total_examples (pads sentences)")
    ap.add_argument("--abtt", type=int, nargs="*", default=[], metavar="D",
                    help="also score the vectors after all-but-the-top with D directions (bench/abtt.py)")
    add_peers_option(ap)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.gensim or args.speed:   # bench_corpus.run_gensim runs gensim with its module's peers python
        bench_corpus.PEERS_PY = peer_python("peers", args.peers)
    from embedlake.tasks.runtime import configure_env
    configure_env()
    if args.speed:
        speed(args)
    else:
        quality(args)


def busy_cores_s() -> float:
    """CPU-seconds the whole machine has been busy (/proc/stat), for `others` below."""
    v = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU-seconds of this process and its waited-for children (gensim's runs)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def speed(args) -> None:
    """tokens/s of gensim and our variants, train only, run back to back in rounds so that each
    round's ratios are taken under the same machine load; prints one JSON line per run (`others`:
    cores used by other processes during it) and the median ratio to gensim per variant and thread
    count, over all rounds and over the quiet ones (others <= 0.15 in the variant's and gensim's runs)."""
    from embedlake.workers.corpus.text import text_init
    from embedlake.workers.train.skipgram import train_sgns
    words, counts, tokens, offsets, sent_path = tokenised(args)
    variants = json.loads(args.speed)
    ratios, quiet = {}, {}
    for rnd in range(args.rounds):
        for th in args.thread_counts:
            args.threads = th
            b0, o0, t0 = busy_cores_s(), own_cpu_s(), time.perf_counter()
            g, _, _ = bench_corpus.run_gensim(sent_path, args, tempfile.mkdtemp(prefix="sgns_speed_"), 0)
            g_others = max(0.0, busy_cores_s() - b0 - (own_cpu_s() - o0)) / (time.perf_counter() - t0)
            print(json.dumps({"round": rnd, "threads": th, "variant": "gensim",
                              "tokens_per_s": round(g["tokens_per_s"]),
                              "tokens_per_cpu_s": round(g["tokens_per_cpu_s"]),
                              "others": round(g_others, 2)}),
                  flush=True)
            for name, kw in variants.items():
                b0, c0, t0 = busy_cores_s(), own_cpu_s(), time.perf_counter()
                _, _, st = train_sgns(tokens, offsets, len(words), counts=counts, dim=args.dim, window=args.window,
                                      negatives=args.negatives, epochs=args.epochs, sample=args.sample, seed=0,
                                      threads=th, init=text_init(len(words), args.dim, 0), **kw)
                n = len(tokens) * args.epochs
                cpu = own_cpu_s() - c0
                others = max(0.0, busy_cores_s() - b0 - cpu) / (time.perf_counter() - t0)
                tps, tpc = n / st["seconds"], n / cpu
                ratios.setdefault(f"{name}@{th}", []).append(tps / g["tokens_per_s"])
                if max(others, g_others) <= 0.15:
                    quiet.setdefault(f"{name}@{th}", []).append(tps / g["tokens_per_s"])
                print(json.dumps({"round": rnd, "threads": th, "variant": name, "tokens_per_s": round(tps),
                                  "tokens_per_cpu_s": round(tpc), "pairs_per_s": round(st["pairs_per_s"]),
                                  "vs_gensim": round(tps / g["tokens_per_s"], 2), "others": round(others, 2)}),
                      flush=True)
    print(json.dumps({"median_vs_gensim": {k: round(float(np.median(v)), 2) for k, v in ratios.items()},
                      "quiet_median_vs_gensim": {k: [round(float(np.median(v)), 2), len(v)]
                                                 for k, v in quiet.items()}}),
          flush=True)


def sentence_progress(tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sentences padded with -1 to one length, so that the kernel's learning rate (linear in the
    position of a token in the stream, padding included) moves by sentences: what gensim does when
    train() gets total_examples (bench_corpus's call), instead of by words. Padding is dropped
    before windowing, so nothing else changes (issue 20, fourth pass)."""
    lens = np.diff(offsets)
    width = int(lens.max())
    padded = np.full((len(lens), width), -1, np.int32)
    padded[np.arange(width)[None, :] < lens[:, None]] = tokens
    return padded.ravel(), np.arange(0, len(lens) * width + 1, width, dtype=np.int64)


MEASURES = {"ws353": ("wordsim353", "spearman"), "simlex": ("simlex999", "spearman"), "analogy": ("analogy", "accuracy")}


def three(ev: dict, suffix: str = "") -> dict:
    """WordSim353 / SimLex-999 / analogies of one evaluate_words result, keys ws353{suffix} etc."""
    return {k + suffix: round(ev[a][b], 4) for k, (a, b) in MEASURES.items()}


def train_and_score(args, seed, words, counts, tokens, offsets, sent_path, out_dir, n_tokens) -> dict:
    """One seed: train ours (or gensim), its three scores, speeds, and the --abtt variants' scores."""
    from embedlake.workers.corpus.text import text_init
    from embedlake.workers.evaluate.words import evaluate_words
    from embedlake.workers.train.skipgram import train_sgns
    row = {"variant": "gensim" if args.gensim else args.variant, "seed": seed}
    if args.gensim:
        g, gw, gX = bench_corpus.run_gensim(sent_path, args, out_dir, seed)
        at = [{w: i for i, w in enumerate(gw)}[w] for w in words]    # gensim's rows in our word order
        X, tps, tpc = gX[at], g["tokens_per_s"], g["tokens_per_cpu_s"]
        row.update(tokens_per_s=round(tps), tokens_per_cpu_s=round(tpc), **three(evaluate_words(gw, gX)))
        # case variants of equal count: our index may pick another variant than gensim's
        row.update(three(evaluate_words(words, X, counts=counts), "_our_index"))
    else:
        c0 = time.process_time()
        X, _, st = train_sgns(tokens, offsets, len(words), counts=counts, dim=args.dim, window=args.window,
                              negatives=args.negatives, epochs=args.epochs, sample=args.sample, seed=seed,
                              threads=args.threads, init=text_init(len(words), args.dim, seed), **json.loads(args.kw))
        row.update(tokens_per_s=round(n_tokens * args.epochs / st["seconds"]),
                   tokens_per_cpu_s=round(n_tokens * args.epochs / (time.process_time() - c0)),
                   **three(evaluate_words(words, X, counts=counts)))
    for name, Y in abtt_variants(X, args.abtt).items():   # gensim's in our index, as *_our_index
        row.update(three(evaluate_words(words, Y, counts=counts), "_" + name))
    return row


def abtt_minus_plain(rows: list[dict], Ds, gensim: bool) -> dict:
    """Per D and measure: [mean paired difference, its standard error, seeds ahead] over the rows."""
    out = {}
    for D in Ds:
        for k in MEASURES:
            plain = k + "_our_index" if gensim else k
            d = np.array([r[f"{k}_abtt{D}"] - r[plain] for r in rows])
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            out.setdefault(f"abtt{D}", {})[k] = [round(float(d.mean()), 4), round(se, 4), int((d > 0).sum())]
    return out


def quality(args) -> None:
    """WordSim353 / SimLex-999 / analogies of one variant (or gensim) per seed, and their mean."""
    words, counts, tokens, offsets, sent_path = tokenised(args)
    n_tokens = len(tokens)
    if args.lr_per_sentence:
        tokens, offsets = sentence_progress(tokens, offsets)
    out_dir = tempfile.mkdtemp(prefix="sgns_quality_")    # per run: two runs at once never share gensim's output
    rows = []
    for seed in args.seeds:
        rows.append(train_and_score(args, seed, words, counts, tokens, offsets, sent_path, out_dir, n_tokens))
        print(json.dumps(rows[-1]), flush=True)
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0] if k not in ("variant", "seed")}
    summary = {"variant": rows[0]["variant"], "kw": args.kw, "seeds": args.seeds, "epochs": args.epochs,
               "threads": args.threads, "mean": mean}
    if args.abtt:
        summary["abtt_minus_plain"] = abtt_minus_plain(rows, args.abtt, args.gensim)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
