"""SGNS kernels vs gensim, side by side on the SAME DeepWalk walks (issue 4).

BlogCatalog, uniform walks 10 x 80, d=128, window 10, 5 negatives, 1 epoch, 2 threads by default.
gensim runs in the peers venv (../peers-venv beside the checkout) in a subprocess on the walks saved to a temp
file; node classification (DeepWalk protocol, one-vs-rest liblinear LR, top-k labels, 3 seeds)
scores every embedding with the same function from ../shared/bench/peers.py.

usage: python bench/bench_skipgram.py [--dataset blogcatalog] [--threads 2] [--seeds 0 1 2] [--no-torch] [--no-f1]
       [--variant NAME=JSON ...] [--abtt D ... [--abtt-to numba gensim]]
Prints one JSON object (and a short table on stderr). --abtt also scores each of our tables (and gensim's with
--abtt-to gensim) after all-but-the-top with D directions (bench/abtt.py, evaluation only) as abtt{D}_{name},
and adds the paired differences over the seeds to the plain tables (`abtt_minus_plain`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from abtt import abtt_variants  # noqa: E402  (bench/abtt.py)
from peer_venvs import add_peers_option, peer_python  # noqa: E402  (bench/peer_venvs.py)

import numba as nb
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEERS_PY = None   # the peers venv's python: set in main() (bench/peer_venvs.py)

GENSIM_SCRIPT = r"""
import sys, time, json, numpy as np
from gensim.models import Word2Vec
walks_path, out_path, dim, window, neg, threads, n, seed = sys.argv[1:9]
dim, window, neg, threads, n, seed = map(int, (dim, window, neg, threads, n, seed))
W = np.load(walks_path)
walks = [[str(x) for x in row] for row in W]
t0 = time.perf_counter()
m = Word2Vec(vector_size=dim, window=window, min_count=0, sg=1, hs=0, negative=neg, workers=threads,
             epochs=1, seed=seed)
m.build_vocab(walks)
t1, c1 = time.perf_counter(), time.process_time()
m.train(walks, total_examples=len(walks), epochs=1)
t2, c2 = time.perf_counter(), time.process_time()
X = np.zeros((n, dim), np.float32)
for i in range(n):
    k = str(i)
    if k in m.wv.key_to_index:
        X[i] = m.wv[k]
np.save(out_path, X)
print(json.dumps({"vocab_s": t1 - t0, "train_s": t2 - t1, "train_cpu_s": c2 - c1, "steps": int(W.size)}))
"""


def load_peers():
    spec = importlib.util.spec_from_file_location("peers", SHARED / "bench" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@nb.njit(parallel=True, cache=True)
def _uniform_walks(indptr, indices, walks_per_node, length, seed):
    n = indptr.shape[0] - 1
    out = np.empty((walks_per_node * n, length), np.int32)
    for r in nb.prange(walks_per_node * n):
        np.random.seed(seed * 1000003 + r)
        v = r % n
        out[r, 0] = v
        for t in range(1, length):
            d = indptr[v + 1] - indptr[v]
            if d > 0:
                v = indices[indptr[v] + np.random.randint(0, d)]
            out[r, t] = v
    return out


def deepwalk_walks(a, peers) -> tuple[int, object, np.ndarray, float]:
    """The dataset's graph (symmetrised unless directed) and its uniform walks a.walks x a.length
    from every node: (nodes, labels, walks [walks * n, length], walk seconds)."""
    n, e, Y, directed = peers.load(str(SHARED / "datasets" / a.dataset))
    A = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    if not directed:
        A = A + A.T
    A.sort_indices()
    indptr, indices = A.indptr.astype(np.int64), A.indices.astype(np.int32)
    nb.set_num_threads(min(a.threads, nb.config.NUMBA_NUM_THREADS))
    t0 = time.perf_counter()
    walks = _uniform_walks(indptr, indices, a.walks, a.length, 0)
    return n, Y, walks, time.perf_counter() - t0


def run_torch(tokens, offsets, n: int, kw: dict, a) -> tuple[dict, np.ndarray]:
    """The torch kernel on the CPU with the same arguments (--torch-threads, --torch-batch)."""
    from embedlake.workers.train.torch_engine import train_sgns_torch
    tkw = dict(kw, device="cpu")
    if a.torch_threads:
        tkw["threads"] = a.torch_threads
    if a.torch_batch:
        tkw["batch_size"] = a.torch_batch
    Wt, _, stt = train_sgns_torch(tokens, offsets, n, **tkw)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stt.items()}, Wt


def run_gensim(walks_path: str, out_path: str, a, n: int, seed: int, ntok: int) -> tuple[dict, np.ndarray]:
    """gensim Word2Vec (peers venv, subprocess) on the saved walks with one seed: its timings and table."""
    p = subprocess.run([str(PEERS_PY), "-c", GENSIM_SCRIPT, walks_path, out_path, str(a.dim), str(a.window),
                        str(a.negatives), str(a.threads), str(n), str(seed)], capture_output=True, text=True,
                       check=True)
    g = json.loads(p.stdout.strip().splitlines()[-1])
    return ({"seed": seed, "train_s": round(g["train_s"], 3), "vocab_s": round(g["vocab_s"], 3),
             "tokens_per_s": round(ntok / g["train_s"]), "tokens_per_cpu_s": round(ntok / g["train_cpu_s"]),
             "tokens_per_s_incl_vocab": round(ntok / (g["train_s"] + g["vocab_s"]))}, np.load(out_path))


def run_numba(tokens, offsets, n: int, kw: dict) -> tuple[dict, np.ndarray]:
    """Our kernel with these train_sgns arguments: its stats (+ tokens per CPU-second, which a loaded
    machine distorts far less than wall time) and the embeddings."""
    from embedlake.workers.train.skipgram import train_sgns
    c0 = time.process_time()
    W, _, st = train_sgns(tokens, offsets, n, **kw)
    st["tokens_per_cpu_s"] = st["tokens"] / (time.process_time() - c0)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in st.items()}, W


def score(res: dict, embs: dict, peers, Y, a) -> None:
    """Micro/Macro-F1 of every table (peers.node_classification), the differences to gensim, and the
    mean over --seeds of gensim's and our default kernel's F1 (gensim_mean, numba_mean)."""
    f1 = res.setdefault("f1", {})
    for name, X in embs.items():
        t0 = time.perf_counter()
        f1[name] = peers.node_classification(X, Y)
        print(f"f1 {name}: {f1[name]} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    for group in ("gensim", "numba"):
        names = [k for k in f1 if k == group or k.startswith(group + "_s")]
        if names:
            f1[group + "_mean"] = {r: [round(float(np.mean([f1[k][r][i] for k in names])), 4) for i in (0, 1)]
                                   for r in f1[names[0]]}
    if "gensim" in embs:
        ref = f1["gensim_mean"]
        for name in [k for k in f1 if k not in ("gensim", "gensim_mean") and not k.startswith("gensim_s")]:
            res[f"micro_f1_delta_{name}_vs_gensim_mean"] = {r: round(f1[name][r][0] - ref[r][0], 4) for r in ref}
    if "torch_cpu" in embs:
        res["micro_f1_delta_torch_vs_numba"] = {r: round(f1["torch_cpu"][r][0] - f1["numba"][r][0], 4)
                                                for r in f1["numba"]}


def with_abtt(embs: dict, Ds, groups) -> dict:
    """embs plus abtt{D}_{name} for every table of the given groups (name == group or group_s<seed>)."""
    out = dict(embs)
    for name, X in embs.items():
        if any(name == g or name.startswith(g + "_s") for g in groups):
            out.update({f"{k}_{name}": Y for k, Y in abtt_variants(X, Ds).items()})
    return out


def abtt_minus_plain(f1: dict, Ds, groups) -> dict:
    """{abtt{D}: {group: {ratio: [Micro-F1 mean difference, s.e., Macro-F1 mean difference, s.e.]}}}, paired by
    seed (abtt{D}_{name} - name over the group's tables that were scored both ways)."""
    out = {}
    for D in Ds:
        for g in groups:
            names = [k for k in f1 if (k == g or k.startswith(g + "_s")) and f"abtt{D}_{k}" in f1]
            if not names:
                continue
            res = {}
            for r in f1[names[0]]:
                d = np.array([[f1[f"abtt{D}_{k}"][r][i] - f1[k][r][i] for i in (0, 1)] for k in names])
                se = d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.full(2, np.nan)
                res[r] = [round(float(v), 4) for v in (d[:, 0].mean(), se[0], d[:, 1].mean(), se[1])]
            out.setdefault(f"abtt{D}", {})[g] = res
    return out


def parse_args():
    """The command line (module docstring)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="blogcatalog")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--walks", type=int, default=10)
    ap.add_argument("--length", type=int, default=80)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--torch-batch", type=int, default=None)
    ap.add_argument("--torch-threads", type=int, default=None, help="torch CPU threads (default --threads); "
                    "1 avoids OpenMP barrier stalls on a busy machine")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-gensim", action="store_true")
    ap.add_argument("--no-f1", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of gensim and our default "
                    "kernel (same walks); F1 means over them as gensim_mean / numba_mean")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="an extra numba run with these train_sgns keyword arguments, e.g. "
                         "'pairs={\"ablation\": 16}' (repeatable; scored like the others)")
    ap.add_argument("--abtt", type=int, nargs="*", default=[], metavar="D",
                    help="also score the tables after all-but-the-top with D directions (bench/abtt.py)")
    ap.add_argument("--abtt-to", nargs="+", default=["numba"], choices=["numba", "gensim"])
    add_peers_option(ap)
    return ap.parse_args()


def main():
    a = parse_args()
    global PEERS_PY
    PEERS_PY = peer_python("peers", a.peers, required=not a.no_gensim)

    peers = load_peers()
    n, Y, walks, walk_s = deepwalk_walks(a, peers)
    tokens = walks.ravel()
    offsets = np.arange(0, tokens.size + 1, a.length, dtype=np.int64)
    res = {"dataset": a.dataset, "nodes": n, "tokens": int(tokens.size), "threads": a.threads,
           "dim": a.dim, "window": a.window, "negatives": a.negatives, "epochs": a.epochs, "walk_s": round(walk_s, 3)}
    embs = {}

    tmp = tempfile.mkdtemp(prefix="bench_sg_")
    if not a.no_gensim:
        wp = os.path.join(tmp, "walks.npy")
        np.save(wp, walks)
        if a.epochs != 1:
            print("note: gensim runs 1 epoch", file=sys.stderr)
        for seed in a.seeds:
            name = "gensim" if seed == a.seeds[0] else f"gensim_s{seed}"
            res[name], embs[name] = run_gensim(wp, os.path.join(tmp, f"{name}.npy"), a, n, seed, tokens.size)
            print(f"{name}: {res[name]}", file=sys.stderr, flush=True)

    kw = dict(dim=a.dim, window=a.window, negatives=a.negatives, epochs=a.epochs, seed=0, threads=a.threads)
    runs = [("numba" if seed == a.seeds[0] else f"numba_s{seed}", {"seed": seed}) for seed in a.seeds]
    runs += [(spec.split("=", 1)[0], json.loads(spec.split("=", 1)[1])) for spec in a.variant]
    for name, extra in runs:                          # a variant may set the seed
        res[name], embs[name] = run_numba(tokens, offsets, n, {**kw, **extra})
        print(f"{name}: {res[name]}", file=sys.stderr, flush=True)
    if "gensim" in res:
        for k in ("tokens_per_s", "tokens_per_cpu_s"):     # means over the seeds' runs
            ours, peer = (np.mean([v[k] for name, v in res.items() if name == g or name.startswith(g + "_s")])
                          for g in ("numba", "gensim"))
            res[f"numba_vs_gensim_{k}"] = round(float(ours / peer), 3)

    if not a.no_torch:
        res["torch_cpu"], embs["torch_cpu"] = run_torch(tokens, offsets, n, kw, a)
        print(f"torch_cpu: {res['torch_cpu']}", file=sys.stderr, flush=True)
    if not a.no_f1 and Y is not None:
        score(res, with_abtt(embs, a.abtt, a.abtt_to), peers, Y, a)
        if a.abtt:
            res["abtt_minus_plain"] = abtt_minus_plain(res["f1"], a.abtt, a.abtt_to)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
