"""Paired quality runs of skip-gram kernel versions on Brown (issue 20, docs/skipgram.md "Eighth pass").

    .venv/bin/python bench/sgns_paired.py --out /tmp/p.jsonl --seeds 0 1 2 ... \
        --arm new=HEAD@2 --arm old=5845b54@2 [--arm 'aa=HEAD@2:{"block_tokens": 8192}'] [--cache DIR]
    .venv/bin/python bench/sgns_paired.py --summary /tmp/p.jsonl [--base new]

An arm is NAME=REF@THREADS[:JSON]: REF is HEAD (the checkout's workers/train/skipgram.py) or a git
commit, whose skipgram.py and sgns_parts.py are taken with `git show` into a package under
--cache/trees (so two kernel versions run in one process, each with its own numba cache entry; the
rest of the package, e.g. workers/prefetch.py, is the checkout's);
JSON holds extra train_sgns keyword arguments. Every arm trains the per-pair text default
(shared_negatives=False unless JSON says otherwise) with sgns_quality.py's settings (d=100,
window 5, 5 negatives, sample 1e-3, 5 epochs, text_init) and is evaluated on WordSim353 /
SimLex-999 / analogies. Per seed all arms run back to back, their order rotated every second
seed and reversed on odd seeds, so machine load and run position fall on every arm alike. One JSON line
per run (appended to --out). --summary prints each arm's means and its paired differences from
--base (mean, standard error over seeds, seeds where it is ahead). Two arms of the same code
(an A/A pair) measure the Hogwild run-to-run noise at two threads.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sgns_quality import add_corpus_options, tokenised  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("ws353", "simlex", "analogy")


def parse_arm(text: str) -> tuple[str, str, int, dict]:
    """NAME=REF@THREADS[:JSON] -> (name, ref, threads, kwargs); one line naming the arm on bad input."""
    try:
        name, rest = text.split("=", 1)
        ref, rest = rest.split("@", 1)
        th, _, kw = rest.partition(":")
        return name, ref, int(th), json.loads(kw) if kw else {}
    except ValueError as e:
        raise SystemExit(f"sgns_paired: bad --arm {text!r} (want NAME=REF@THREADS[:JSON]): {e}")


def kernel_at(ref: str, cache: str):
    """The skipgram module of `ref`: the checkout's for HEAD, else that commit's two kernel files
    as a package of their own under cache/trees (its sgns_parts import rewritten to it)."""
    if ref == "HEAD":
        return importlib.import_module("embedlake.workers.train.skipgram")
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", ref + "^{commit}"], capture_output=True,
                         text=True)
    if sha.returncode != 0:
        raise SystemExit(f"sgns_paired: unknown git ref {ref!r}")
    sha = sha.stdout.strip()
    pkg = f"sgns_{sha[:12]}"
    base = Path(cache) / "trees"
    d = base / pkg
    if not (d / "skipgram.py").exists():
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").write_text("")
        for f in ("sgns_parts.py", "skipgram.py"):
            got = subprocess.run(["git", "-C", str(ROOT), "show", f"{sha}:workers/train/{f}"], capture_output=True,
                                 text=True)
            if got.returncode != 0:
                raise SystemExit(f"sgns_paired: {ref} has no workers/train/{f}")
            src = got.stdout
            src = src.replace("from embedlake.workers.train.sgns_parts import", f"from {pkg}.sgns_parts import")
            (d / (f + ".part")).write_text(src)
            (d / (f + ".part")).rename(d / f)     # skipgram.py, written last, marks a complete tree
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    return importlib.import_module(f"{pkg}.skipgram")


def run(args) -> None:
    """Every arm on every seed, rotated order; one JSON line per run."""
    from embedlake.tasks.runtime import configure_env
    configure_env()
    from embedlake.workers.corpus.text import text_init
    from embedlake.workers.evaluate.words import evaluate_words
    words, counts, tokens, offsets, _ = tokenised(args)
    arms = args.arm
    mods = {ref: kernel_at(ref, args.cache) for _, ref, _, _ in arms}
    for seed in args.seeds:
        k = (seed // 2) % len(arms)       # rotated every second seed, reversed on odd seeds
        order = arms[k:] + arms[:k]
        for name, ref, th, kw in (order[::-1] if seed % 2 else order):
            kw = {"shared_negatives": False, **kw}
            W, _, st = mods[ref].train_sgns(tokens, offsets, len(words), counts=counts, dim=args.dim,
                                            window=args.window, negatives=args.negatives, epochs=args.epochs,
                                            sample=args.sample, seed=seed, threads=th,
                                            init=text_init(len(words), args.dim, seed), **kw)
            ev = evaluate_words(words, W, counts=counts)
            row = {"arm": name, "seed": seed, "ws353": round(ev["wordsim353"]["spearman"], 5),
                   "simlex": round(ev["simlex999"]["spearman"], 5), "analogy": round(ev["analogy"]["accuracy"], 5),
                   "tokens_per_s": round(st["tokens_per_s"]), "utc": time.strftime("%H:%M:%S", time.gmtime()),
                   "load": round(os.getloadavg()[0], 2)}
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def summary(paths: list[str], base: str | None) -> None:
    """Each arm's means, and its paired differences from `base` over the seeds both ran."""
    by: dict[str, dict[int, dict]] = collections.defaultdict(dict)
    for p in paths:
        for line in open(p):
            if line.strip():
                r = json.loads(line)
                by[r["arm"]][r["seed"]] = r
    base = base or next(iter(by))
    if base not in by:
        raise SystemExit(f"sgns_paired: no arm {base!r} in {', '.join(paths)}")
    for a, v in by.items():
        means = "  ".join(f"{m} {np.mean([x[m] for x in v.values()]):.4f}" for m in METRICS)
        print(f"{a:12s} seeds {len(v):3d}  {means}  median tokens/s {np.median([x['tokens_per_s'] for x in v.values()]):,.0f}"
              f"  load {min(x['load'] for x in v.values()):.1f}-{max(x['load'] for x in v.values()):.1f}")
    for a, v in by.items():
        common = sorted(set(v) & set(by[base]))
        if a == base or len(common) < 2:
            continue
        parts = []
        for m in METRICS:
            d = np.array([v[s][m] - by[base][s][m] for s in common])
            parts.append(f"{m} {d.mean():+.4f} (s.e. {d.std(ddof=1) / np.sqrt(len(d)):.4f}, ahead {int((d > 0).sum())}/{len(d)})")
        print(f"{a} - {base}, {len(common)} seeds: " + "  ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_options(ap)
    ap.add_argument("--arm", action="append", default=[], help="NAME=REF@THREADS[:JSON]")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(12)))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", help="JSON lines are appended here")
    ap.add_argument("--summary", nargs="+", metavar="JSONL")
    ap.add_argument("--base", default=None)
    args = ap.parse_args()
    if args.summary:
        summary(args.summary, args.base)
        return
    if not args.arm or not args.out:
        raise SystemExit("sgns_paired: --arm (at least one) and --out are needed, or --summary FILE")
    args.arm = [parse_arm(a) for a in args.arm]
    run(args)


if __name__ == "__main__":
    main()
