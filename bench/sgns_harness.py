"""Speed harness of the skip-gram kernels (issue 20): kernel variants alternated in one process.

    .venv/bin/python bench/sgns_harness.py --variants '{"pair": {"shared_negatives": false}, "window": {}}'
        [--rounds 3] [--threads 1] [--epochs 1]
    .venv/bin/python bench/sgns_harness.py --graph blogcatalog --variants '{"window": {}}' [--graph-walks 10]
    .venv/bin/python bench/sgns_harness.py --pair-grad [--calls 4000000] [--repeats 5]

Why: under the shared machine's load a kernel's speed moves by 2-3x between runs, so two kernels are
only comparable when they run back to back, many times, in one process, and per CPU-second. The
variants are train_sgns keyword arguments (``shared_negatives``, the ``ablation`` bits of
sgns_parts, ``window``, ...): the kernels themselves, never edited copies of them. Brown as in
sgns_quality.py (our tokeniser, min_count 5, d=100, window 5, 5 negatives, sample 1e-3), seed 0.
Each run prints tokens per CPU-second and a checksum of what it trained (the sum of |W_in| and the
last loss figure): at one thread two variants that compute the same numbers print the same checksum.

--graph DATASET trains on bench_skipgram.py's DeepWalk walks of that dataset instead (uniform walks,
--graph-walks per node, 80 steps; BlogCatalog: 10 x 80 = 8.25 M tokens) with bench_skipgram's settings
as the defaults: d=128, window 10, 5 negatives, no subsampling, train_sgns's own initial tables.

--pair-grad times sgns_parts.pair_grad (branch-free) against the if / elif form it replaced, which
is pair_grad_mode with no ablation bit (its mode-0 path is that earlier code), on the same random
scores: the third pass's finding that the branches cost more than the dot products.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sgns_quality import add_corpus_options, tokenised  # noqa: E402

from embedlake.workers.train.sgns_parts import pair_grad, pair_grad_mode, sigmoid_tables  # noqa: E402


@nb.njit(cache=True)
def branch_free_calls(scores, sig_tab, logsig_tab):
    """pair_grad on every score (alternately as the positive and as a negative); returns a sum so
    that nothing is optimised away."""
    acc = 0.0
    for i in range(scores.shape[0]):
        dl, g = pair_grad(scores[i], (i & 1) == 0, np.float32(0.025), sig_tab, logsig_tab)
        acc += dl + g
    return acc


@nb.njit(cache=True)
def branchy_calls(scores, sig_tab, logsig_tab):
    """The same calls on pair_grad_mode with mode 0: the if / elif clamp pair_grad had before."""
    acc = 0.0
    for i in range(scores.shape[0]):
        dl, g = pair_grad_mode(scores[i], (i & 1) == 0, np.float32(0.025), sig_tab, logsig_tab, 0)
        acc += dl + g
    return acc


def time_pair_grad(calls: int, repeats: int) -> dict:
    """ns per call of each form, best of `repeats`, on scores uniform in [-8, 8] (both clamps hit)."""
    sig_tab, logsig_tab = sigmoid_tables()
    scores = np.random.default_rng(0).uniform(-8.0, 8.0, calls).astype(np.float32)
    out = {}
    for name, fn in (("branch_free", branch_free_calls), ("if_elif", branchy_calls)):
        fn(scores[:16], sig_tab, logsig_tab)
        best = float("inf")
        for _ in range(repeats):
            c0 = time.process_time()
            total = fn(scores, sig_tab, logsig_tab)
            best = min(best, time.process_time() - c0)
        out[name] = {"ns_per_call": round(best / calls * 1e9, 2), "sum": round(float(total), 3)}
    return out


def graph_walks(args):
    """(nodes, None, tokens, offsets, None) of bench_skipgram's DeepWalk walks on args.graph."""
    import bench_skipgram
    a = argparse.Namespace(dataset=args.graph, walks=args.graph_walks, length=80, threads=args.threads)
    n, _, walks, _ = bench_skipgram.deepwalk_walks(a, bench_skipgram.load_peers())
    tokens = walks.ravel()
    return list(range(n)), None, tokens, np.arange(0, tokens.size + 1, 80, dtype=np.int64), None


def run_variant(data, args, kw: dict) -> dict:
    """One training run of a variant: tokens per CPU-second and per wall second, and its checksum."""
    from embedlake.workers.corpus.text import text_init
    from embedlake.workers.train.skipgram import train_sgns
    words, counts, tokens, offsets, _ = data
    init = None if args.graph else text_init(len(words), args.dim, 0)
    c0 = time.process_time()
    W, _, st = train_sgns(tokens, offsets, len(words), counts=counts, dim=args.dim, window=args.window,
                          negatives=args.negatives, epochs=args.epochs, sample=args.sample, seed=0,
                          threads=args.threads, init=init, **kw)
    cpu = time.process_time() - c0
    n = len(tokens) * args.epochs
    return {"tokens_per_cpu_s": round(n / cpu), "tokens_per_s": round(n / st["seconds"]),
            "checksum": [round(float(np.abs(W).sum(dtype=np.float64)), 4), round(st["loss_last"], 6)]}


def run_rounds(args) -> None:
    """Every variant once per round, rounds back to back; then the median per variant and its
    ratio to the first variant's median."""
    data = graph_walks(args) if args.graph else tokenised(args)
    variants = json.loads(args.variants)
    words, counts, tokens, offsets, _ = data
    warm = (words, counts, tokens[:offsets[200]], offsets[:201], None)   # compile / load the kernel, untimed
    run_variant(warm, args, next(iter(variants.values())))
    rates: dict[str, list] = {k: [] for k in variants}
    for rnd in range(args.rounds):
        for name, kw in variants.items():
            row = run_variant(data, args, kw)
            rates[name].append(row["tokens_per_cpu_s"])
            print(json.dumps({"round": rnd, "variant": name, "threads": args.threads, **row}), flush=True)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    first = next(iter(med.values()))
    print(json.dumps({"median_tokens_per_cpu_s": {k: round(v) for k, v in med.items()},
                      "vs_first": {k: round(v / first, 3) for k, v in med.items()}}), flush=True)


def parse_args():
    """The command line (module docstring)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default='{"pair": {"shared_negatives": false}, "window": {}}',
                    help='{"name": train_sgns kwargs, ...}, alternated round after round')
    ap.add_argument("--pair-grad", action="store_true", help="time pair_grad against its if / elif form")
    ap.add_argument("--calls", type=int, default=4_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--graph", default=None, metavar="DATASET",
                    help="train on DeepWalk walks of ../shared/datasets/DATASET (bench_skipgram.py's) instead of Brown")
    ap.add_argument("--graph-walks", type=int, default=10, help="--graph: walks per node (80 steps each)")
    add_corpus_options(ap)
    if ap.parse_known_args()[0].graph:                   # bench_skipgram.py's settings unless given
        ap.set_defaults(dim=128, window=10, sample=0.0)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    from embedlake.tasks.runtime import configure_env
    configure_env()
    if args.pair_grad:
        print(json.dumps({"pair_grad": time_pair_grad(args.calls, args.repeats)}), flush=True)
    else:
        run_rounds(args)


if __name__ == "__main__":
    main()
